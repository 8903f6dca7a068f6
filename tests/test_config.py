from pathlib import Path

import pytest

from lorap_dist.cli import apply_overrides, load_config
from lorap_dist.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    PromptConfig,
    QuantSettings,
    SyntheticConfig,
    TrainConfig,
    to_dict,
)


def test_default_round_trips_through_dict():
    config = ExperimentConfig()
    assert ExperimentConfig.from_dict(config.to_dict()) == config


def test_nested_fields_and_tuples_round_trip():
    data = {
        "model": {"arch": "gin", "layers": 3},
        "prompt": {"kind": "gpf_lorap", "k": 4, "r": 2},
        "train": {"fanout": [10, 5, -1]},
        "data": {"synthetic": {"num_nodes": 100}},
    }
    config = ExperimentConfig.from_dict(data)
    assert config.model.arch == "gin" and config.model.layers == 3
    assert config.prompt.lorap and config.prompt.gpf
    assert config.train.fanout == (10, 5, -1)
    assert config.data.synthetic.num_nodes == 100
    assert ExperimentConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: PromptConfig(k=0), ["prompt.k", ">= 1"]),
        (lambda: PromptConfig(r=0), ["prompt.r", ">= 1"]),
        (lambda: PromptConfig(kind="lora"), ["prompt.kind", "'lorap'"]),
        (lambda: PromptConfig(gpf_support="dense"), ["prompt.gpf_support", "'nonzero'"]),
        (lambda: PromptConfig(unit="bits"), ["prompt.unit", "'value'", "'step'"]),
        (lambda: ModelConfig(arch="mlp"), ["model.arch", "'gcn'"]),
        (lambda: ModelConfig(dropout=1.0), ["model.dropout"]),
        (lambda: TrainConfig(fanout=(10, 0)), ["train.fanout", "-1"]),
        (lambda: SyntheticConfig(degree_exponent=1.0), ["degree_exponent", "> 1"]),
        (lambda: QuantSettings(scheme="fp4"), ["quant.scheme", "'qat'"]),
    ],
)
def test_invalid_values_name_the_field_and_the_allowed_values(build, words):
    with pytest.raises(ConfigError) as info:
        build()
    for word in words:
        assert word in str(info.value)


def test_unknown_field_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['hiden'\].*'hidden'"):
        ExperimentConfig.from_dict({"model": {"hiden": 3}})


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  arch: transformer\n")
    with pytest.raises(ConfigError, match=str(path)):
        ExperimentConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        ExperimentConfig.from_yaml(tmp_path / "missing.yaml")


def test_overrides_parse_values_as_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  arch: sage\n")
    config = load_config(str(path), ["model.hidden=16", "train.fanout=[5, 5]", "prompt.kind=lorap"])
    assert config.model.arch == "sage" and config.model.hidden == 16
    assert config.train.fanout == (5, 5) and config.prompt.kind == "lorap"
    with pytest.raises(ConfigError, match="section.field=value"):
        apply_overrides({}, ["novalue"])


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["train.epochs=abc"], "train.epochs='abc' (str) must be an integer."),
        (["train.lr=fast"], "train.lr='fast' (str) must be a number."),
        (["train.fanout=10"], "train.fanout=10 (int) must be a list of integers (or null)."),
        (["model.hidden=1.5"], "model.hidden=1.5 (float) must be an integer."),
        (["model.norm=true"], "model.norm=True (bool) must be a string"),
        (["data.synthetic=5"], "data.synthetic=5 (int) must be a mapping of field: value."),
        (
            ["quant.scheme=qat", "quant.options.bits=four"],
            "quant.options (qat).bits='four' (str) must be an integer.",
        ),
        (["dist.num_workers=two"], "dist.num_workers='two' (str) must be an integer."),
    ],
)
def test_wrong_types_are_one_line_errors_naming_field_value_and_type(sets, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, sets)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_quoted_number_in_yaml_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('train:\n  epochs: "20"\n')
    with pytest.raises(
        ConfigError, match=r"c\.yaml: train\.epochs='20' \(str\) must be an integer"
    ):
        ExperimentConfig.from_yaml(path)


def test_integers_are_accepted_where_numbers_are_asked_for():
    config = load_config(None, ["train.lr=1", "train.weight_decay=0", "train.fanout=[5, -1]"])
    assert (config.train.lr, config.train.weight_decay, config.train.fanout) == (1, 0, (5, -1))


def test_the_built_in_default_is_default_yaml_int4_qat_with_lorap():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = ExperimentConfig()
    assert config == ExperimentConfig.from_yaml(root / "jobs/configs/default.yaml")
    assert (config.quant.scheme, config.quant.options, config.prompt.kind) == (
        "qat",
        {"bits": 4},
        "lorap",
    )


def test_options_are_never_silently_ignored():
    with pytest.raises(ConfigError, match=r"QATConfig\.bits=1 is not a supported bit width"):
        load_config(None, ["quant.options.bits=1"])
    with pytest.raises(ConfigError, match=r"options=\{'bits': 4\} are given but quant.scheme"):
        QuantSettings(scheme="none", options={"bits": 4})
    readme = load_config(None, ["model.arch=gin", "quant.options.bits=8"])
    assert (readme.quant.scheme, readme.quant.build().bits, readme.prompt.kind) == (
        "qat",
        8,
        "lorap",
    )


@pytest.mark.parametrize(
    "sets",
    [
        ["quant.scheme=degree_quant", "quant.options.bits=8"],
        ["quant.options.bits=8", "quant.scheme=degree_quant"],
    ],
)
def test_switching_scheme_drops_the_old_options_and_keeps_the_new(sets):
    config = load_config(None, sets)
    assert (config.quant.scheme, config.quant.options) == ("degree_quant", {"bits": 8})


def test_fp32_baseline_from_the_command_line():
    config = load_config(None, ["quant.scheme=none", "prompt.kind=none"])
    assert (config.quant.scheme, config.quant.options, config.prompt.kind) == ("none", {}, "none")


@pytest.mark.parametrize(
    ("scheme", "field", "value"),
    [
        ("qat", "bits", 8),
        ("degree_quant", "bits", 8),
        ("a2q", "memory_budget", 8.0),
        ("mixq", "candidate_bits", (2, 4, 8)),
    ],
)
def test_every_scheme_takes_the_common_bits(scheme, field, value):
    built = load_config(None, [f"quant.scheme={scheme}", "quant.options.bits=8"]).quant.build()
    assert getattr(built, field) == value
    kept = load_config(None, [f"quant.scheme={scheme}"]).quant  # the default's INT4 carries over
    assert kept.options == {"bits": 4}
    if scheme == "mixq":
        assert kept.build().candidate_bits == (2, 4)


def test_a_partial_section_changes_only_the_fields_it_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("prompt:\n  r: 8\nquant:\n  scheme: mixq\n")
    config = ExperimentConfig.from_yaml(path)
    assert (config.prompt.kind, config.prompt.r) == ("lorap", 8)  # LoRAP stays on
    assert config.quant.options == {"bits": 4} and config.quant.build().candidate_bits == (2, 4)


def test_switching_the_source_forgets_the_old_name_and_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  source: planetoid:Cora\n")
    config = load_config(str(path), ["data.source=planetoid:CiteSeer"])
    assert (config.data.source, config.data.name) == ("planetoid", "CiteSeer")
    config = load_config(str(path), ["data.source=dir:/data/mine"])
    assert (config.data.source, config.data.name, config.data.path) == ("dir", None, "/data/mine")


def test_nested_optional_sections_round_trip():
    from lorap_dist.config import DistConfig

    experiment = ExperimentConfig(dist=DistConfig(num_workers=3, keep_checkpoints=2))
    assert ExperimentConfig.from_dict(to_dict(experiment)) == experiment
    assert ExperimentConfig.from_dict(to_dict(ExperimentConfig())).dist is None
    with pytest.raises(ConfigError, match=r"num_workers='two' \(str\) must be an integer"):
        ExperimentConfig.from_dict({"dist": {"num_workers": "two"}})


def test_feature_rows_defaults_to_float_and_codes_round_trip():
    from lorap_dist.config import DistConfig

    assert DistConfig().feature_rows == "float"
    config = load_config(
        None, ["model.arch=gin", "dist.feature_rows=codes", "dist.exchange_bits=4"]
    )
    assert (config.dist.feature_rows, config.prompt.kind) == ("codes", "lorap")
    assert ExperimentConfig.from_dict(to_dict(config)) == config
    with pytest.raises(ConfigError, match=r"dist.feature_rows='ints' is not allowed; choose one"):
        load_config(None, ["dist.feature_rows=ints"])


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["model.arch=gcn"],
            "dist.feature_rows='codes' with model.arch='gcn': only SAGE and GIN layers "
            "aggregate integer rows",
        ),
        (["model.arch=gat"], "set model.arch: sage or gin, or dist.feature_rows: float."),
        (
            ["model.arch=sage", "prompt.kind=gpf_lorap"],
            "dist.feature_rows='codes' with prompt.kind='gpf_lorap': GPF-plus prompts float "
            "features",
        ),
        (["model.arch=gin", "prompt.kind=gpf"], "set prompt.kind: none or lorap, or dist."),
        (
            ["model.arch=gin", "data.source=tu", "data.name=PROTEINS"],
            "dist.feature_rows='codes' with data.source='tu': integer rows come from the "
            "feature exchange of a node-level run",
        ),
    ],
)
def test_codes_with_a_model_that_cannot_take_them_is_a_config_error(sets, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [*sets, "dist.feature_rows=codes"])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_every_shipped_config_file_loads():
    from pathlib import Path

    from lorap_dist.tune import load_sweep

    root = Path(__file__).resolve().parents[1] / "jobs" / "configs"
    for path in sorted(root.glob("*.yaml")):
        ExperimentConfig.from_yaml(path)
    for path in sorted((root / "sweeps").glob("*.yaml")):
        load_sweep(path)


def test_every_shipped_config_and_sweep_file_loads():
    from lorap_dist.tune import load_sweep

    root = Path(__file__).resolve().parents[1] / "jobs" / "configs"
    configs = sorted(root.glob("*.yaml"))
    assert {"default.yaml", "reddit-binary-gin.yaml", "proteins-gin.yaml"} <= {
        p.name for p in configs
    }
    for path in configs:
        ExperimentConfig.from_yaml(path)
    graph = ExperimentConfig.from_yaml(root / "reddit-binary-gin.yaml")
    assert graph.data.graph_level and graph.model.readout == "mean"
    assert graph.train.lr_decay_every == 50
    for path in sorted((root / "sweeps").glob("*.yaml")):
        load_sweep(path)
