import json
import math

import pytest
import torch

from lorap_dist.cli import main
from lorap_dist.config import ConfigError, ExperimentConfig
from lorap_dist.fit import untrained_prompts
from lorap_dist.graph.synthetic import generate_synthetic
from lorap_dist.tracking import PromptStart
from lorap_dist.train import train

SMALL = {
    "data": {"synthetic": {"num_nodes": 600, "avg_degree": 8, "feature_noise": 1.5}},
    "model": {"hidden": 32},
    "train": {"epochs": 60, "patience": 0, "lr": 0.02},
}


def small_config(**sections) -> ExperimentConfig:
    data = json.loads(json.dumps(SMALL))
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return ExperimentConfig.from_dict(data)


@pytest.mark.parametrize("arch", ["gcn", "sage", "gin", "gat"])
def test_full_batch_training_learns_the_planted_classes(arch):
    config = small_config(model={"arch": arch})
    result, _ = train(config, progress=False)
    chance = 1 / config.data.synthetic.num_classes
    assert result.test_acc > chance + 0.3
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_int4_lorap_run_reports_bits_and_prompt_parameters():
    config = small_config(
        prompt={"kind": "lorap", "k": 4, "r": 2},
        quant={"scheme": "qat", "options": {"bits": 4}},
        train={"epochs": 5},
    )
    result, _ = train(config, progress=False)
    assert result.avg_bits is not None and result.avg_bits <= 8
    hidden, classes = config.model.hidden, config.data.synthetic.num_classes
    per_layer = [d * 4 + 2 * (4 + d) for d in (hidden, classes)]
    assert result.params["prompt"] == sum(per_layer)


@pytest.mark.parametrize(("scheme", "expected_still"), [("qat", 3), ("mixq", 6)])
def test_trained_together_a_prompted_run_trains_as_its_scheme_alone_until_the_prompt_starts(
    scheme, expected_still
):
    """The default warm start of a prompt trained together with the backbone
    (``train.prompt_tuning_epochs: 0``): while the prompt is held still (``P_B`` stays
    zero) the prompted model is its scheme's model, step for step; the prompt trains from
    epoch ``epochs // 4`` on, and with MixQ not before its search freezes the bit widths
    (half the epochs), so the search picks the widths it picks alone."""
    options = {"bits": 4} if scheme == "qat" else {"candidate_bits": [2, 4, 8]}
    train_section = {"epochs": 12, "prompt_tuning_epochs": 0}
    sections = {"quant": {"scheme": scheme, "options": options}, "train": train_section}
    config = small_config(prompt={"kind": "none"}, **sections)  # the default has LoRAP
    graph = generate_synthetic(config.data.synthetic)
    alone, _ = train(config, graph, progress=False)
    moved = []

    def prompt_moved(report, model):
        moved.append(any(bool(m.p_b.abs().sum() > 0) for m in model.modules() if hasattr(m, "p_b")))

    prompted_config = small_config(prompt={"kind": "lorap"}, **sections)
    prompted, _ = train(prompted_config, graph, progress=False, on_epoch=prompt_moved)
    still = expected_still
    assert prompted_config.train.prompt_warmup_epochs == 3
    assert moved == [False] * still + [True] * (12 - still)
    # epoch e's loss is taken before its step: up to epoch `still` the prompt is zero
    assert [h["loss"] for h in prompted.history[: still + 1]] == [
        h["loss"] for h in alone.history[: still + 1]
    ]
    assert [h["valid"] for h in prompted.history[:still]] == [
        h["valid"] for h in alone.history[:still]
    ]
    if scheme == "mixq":  # the search picked the widths it picks alone
        assert prompted.avg_bits == alone.avg_bits
    assert (prompted.prompt_start_epoch, alone.prompt_start_epoch) == (still, None)


@pytest.mark.parametrize(
    ("epochs", "patience", "arch", "phase"), [(14, 0, "gcn", 5), (30, 2, "gin", 2)]
)
def test_prompt_tuning_trains_only_the_prompts_on_the_scheme_alones_best_model(
    epochs, patience, arch, phase
):
    """``train.prompt_tuning_epochs``: the run is its scheme alone's, step for step (cut
    short by early stopping or not); then only the prompts train, on the scheme's best
    model, whose weights, quantization ranges and norms stay as they were, and the prompted
    model is reported only if it beats that model on validation. GIN has batch norm. A
    phase no longer than the patience always runs out."""
    sections = {
        "quant": {"scheme": "qat", "options": {"bits": 4}},
        "train": {"epochs": epochs, "patience": patience},
        "model": {"arch": arch},
    }
    config = small_config(prompt={"kind": "none"}, **sections)
    graph = generate_synthetic(config.data.synthetic)
    alone, alone_model = train(config, graph, progress=False)
    # weights, ranges, batch-norm statistics: everything but the prompts
    backbone = {k: v.clone() for k, v in alone_model.state_dict().items()}
    seen = []

    def record(report, model):
        state = model.state_dict()
        prompt = [v for k, v in model.named_parameters() if k not in backbone]
        seen.append(
            (
                [torch.equal(state[k], v) for k, v in backbone.items() if k in state],
                any(bool(v.abs().sum() > 0) for v in prompt if v.shape[0] != 0),
                report.last,
            )
        )

    tuned_config = small_config(
        prompt={"kind": "lorap", "k": 4, "r": 2},
        **{**sections, "train": {**sections["train"], "prompt_tuning_epochs": phase}},
    )
    tuned, _ = train(tuned_config, graph, progress=False, on_epoch=record)
    ran = alone.epochs_run
    assert ran < epochs if patience else ran == epochs  # stopped early, or not
    assert alone.best_epoch < ran - 1  # restoring the best model is not the last one
    assert tuned.epochs_run == ran + phase and tuned.prompt_start_epoch == ran
    best_alone = alone.history[alone.best_epoch]
    assert tuned.before_tuning == {
        "epoch": alone.best_epoch,
        "valid": best_alone["valid"],
        "test": best_alone["test"],
    }
    assert [(h["loss"], h["valid"]) for h in tuned.history[:ran]] == [
        (h["loss"], h["valid"]) for h in alone.history
    ]
    # every tuning epoch starts from the scheme's best backbone and leaves it unchanged
    frozen = [flags for flags, _, _ in seen[ran:]]
    assert len(frozen[0]) > len(backbone) // 2  # LoRAP takes over the aggregate's point
    assert [all(flags) for flags in frozen] == [True] * phase
    assert [last for _, _, last in seen] == [False] * (ran + phase - 1) + [True]
    assert seen[-1][1]  # the prompts trained
    if tuned.best_epoch < ran:  # prompt tuning did not win on validation
        assert (tuned.valid_acc, tuned.test_acc) == (alone.valid_acc, alone.test_acc)
        assert any(w.startswith(f"prompt tuning ({phase} epochs") for w in tuned.warnings)
    else:
        assert tuned.valid_acc > alone.valid_acc


def test_prompt_tuning_reports_the_prompted_model_when_it_wins_on_validation():
    """The selection rule with a prompt that does win: a model whose best epoch is a tuning
    epoch holds the prompt trained up to that epoch."""
    sections = {
        "quant": {"scheme": "qat", "options": {"bits": 4}},
        "train": {"epochs": 2, "patience": 0, "prompt_tuning_epochs": 40},
        "prompt": {"kind": "lorap", "k": 4, "r": 2},
    }
    tuned, model = train(small_config(**sections), progress=False)
    assert tuned.best_epoch >= 2, "the prompt never beat 2 epochs of INT4 QAT on validation"
    best_row = tuned.history[tuned.best_epoch]
    assert tuned.valid_acc == best_row["valid"] > max(h["valid"] for h in tuned.history[:2])
    assert not any(w.startswith("prompt tuning") for w in tuned.warnings)


def test_prompt_tuning_stops_once_patience_runs_out_without_a_new_best():
    """A phase whose prompt cannot beat the scheme's best (its rate so small that the
    prompted model predicts as the scheme does) ends ``train.patience`` epochs after it
    began, not after ``train.prompt_tuning_epochs``, and reports the scheme alone
    (``test_tracking`` has the rule once a tuned epoch wins)."""
    sections = {
        "quant": {"scheme": "qat", "options": {"bits": 4}},
        "prompt": {"kind": "lorap", "k": 4, "r": 2},
    }
    still = small_config(
        **sections,
        train={
            "epochs": 8,
            "patience": 3,
            "prompt_tuning_epochs": 20,
            "prompt_tuning_lr_scale": 1e-12,
        },
    )
    result, _ = train(still, progress=False)
    start = result.prompt_start_epoch
    assert result.before_tuning is not None and start == len(result.history) - 3
    assert result.epochs_run == start + 3 < start + 20
    assert result.best_epoch < start
    assert [h["valid"] for h in result.history[start:]] == [result.valid_acc] * 3


def test_a_run_that_stops_before_its_prompts_train_says_the_prompt_never_trained():
    """Early stopping inside the warm start reports the scheme alone: the run says so,
    with the settings that change it, and a prompt that trains from the first epoch does
    not get the note."""
    prompt = {"kind": "lorap", "k": 4, "r": 2}
    held = small_config(prompt=prompt, train={"epochs": 200, "patience": 3, "prompt_warmup": 150})
    with pytest.warns(UserWarning) as raised:
        result, _ = train(held, progress=False)
    assert result.epochs_run < 150 and result.prompt_start_epoch is None
    notes = [w for w in result.warnings if w.startswith("the prompts never trained: ")]
    assert len(notes) == 1 and notes[0] in [str(w.message) for w in raised]
    assert "first 150 epochs" in notes[0] and "train.patience (now 3)" in notes[0]
    assert "bit-width search" not in notes[0]  # plain QAT has none
    free = small_config(prompt=prompt, train={"epochs": 20, "patience": 3, "prompt_warmup": 0})
    result, _ = train(free, progress=False)
    assert result.prompt_start_epoch == 0
    assert not any("prompt" in w for w in result.warnings)


def test_the_untrained_prompt_note_names_the_epochs_and_the_search():
    train_cfg = small_config(train={"epochs": 100, "prompt_warmup": 25}).train
    started = PromptStart(epoch=25)
    assert untrained_prompts(train_cfg, best_epoch=25, prompts=started, epochs_run=90) == []
    (early,) = untrained_prompts(train_cfg, best_epoch=12, prompts=started, epochs_run=90)
    assert early.startswith("the best validation epoch (12) came before the prompts started")
    assert "(epoch 25; train.prompt_warmup holds them still for the first 25 epochs)" in early
    (never,) = untrained_prompts(train_cfg, 12, PromptStart(), 20)
    assert never.startswith("the prompts never trained") and "after 20 epochs" in never
    (search,) = untrained_prompts(train_cfg, 49, PromptStart(50, searched=True), 90)
    assert "until a bit-width search freezes (train.prompt_after_search)" in search
    train_cfg.prompt_after_search = False
    (no_wait,) = untrained_prompts(train_cfg, 12, PromptStart(25, searched=True), 90)
    assert "bit-width search" not in no_wait
    tuned_cfg = small_config(train={"epochs": 100, "prompt_tuning_epochs": 30}).train
    (not_better,) = untrained_prompts(tuned_cfg, 71, PromptStart(100), 130)
    assert not_better.startswith("prompt tuning (30 epochs, train.prompt_tuning_epochs) did not")
    assert "scheme's best epoch (71)" in not_better and "prompt_warmup" not in not_better
    assert untrained_prompts(tuned_cfg, 104, PromptStart(100), 130) == []


def test_prompt_start_keeps_the_first_training_epoch_and_any_search_across_a_checkpoint():
    prompts = PromptStart()
    prompts.record(0, prompts_train=False, searching=True)  # held: warm start, search
    prompts.record(1, prompts_train=True, searching=False)
    prompts.record(2, prompts_train=True, searching=False)
    assert (prompts.epoch, prompts.searched) == (1, True)
    restored = PromptStart()
    restored.load_state_dict(prompts.state_dict())
    assert restored == prompts
    restored.load_state_dict({})  # a checkpoint from before it was saved
    assert restored == PromptStart()


def test_a_model_holds_trained_prompts_from_the_first_epoch_that_trained_them():
    assert [PromptStart(epoch=2).trained_by(e) for e in range(4)] == [False, False, True, True]
    assert not PromptStart().trained_by(10)  # they never trained


def test_early_stopping_stops_and_keeps_the_best_epoch():
    config = small_config(
        train={"epochs": 300, "patience": 5, "lr": 0.05, "prompt_tuning_epochs": 0}
    )
    result, _ = train(config, progress=False)
    assert result.epochs_run < 300
    assert result.epochs_run - 1 - result.best_epoch == 5
    best_valid = max(h["valid"] for h in result.history)
    assert result.valid_acc == pytest.approx(best_valid)


def test_same_seed_same_result():
    config = small_config(train={"epochs": 10})
    graph = generate_synthetic(config.data.synthetic)
    a, model_a = train(config, graph, progress=False)
    b, model_b = train(config, graph, progress=False)
    assert a.test_acc == b.test_acc
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_cli_train_with_overrides_writes_the_result(tmp_path, capsys):
    out = tmp_path / "result.json"
    args = ["train", "--no-progress", "--out", str(out), "--set", "train.epochs=3"]
    args += ["--set", "data.synthetic.num_nodes=300", "--set", "prompt.kind=gpf_lorap"]
    with pytest.raises(SystemExit) as code:
        main(args)
    assert code.value.code == 0
    saved = json.loads(out.read_text())
    # by default the prompts are tuned after the run, for a quarter of its epochs (>= 1)
    assert saved["epochs_run"] == 4 and len(saved["history"]) == 4
    assert saved["before_tuning"]["epoch"] in (0, 1, 2)
    assert "test_acc" in json.loads(capsys.readouterr().out)


def test_cli_bad_config_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as code:
        main(["train", "--set", "quant.options.bits=9", "--set", "quant.scheme=qat"])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert "bits=9" in err and "2 to 8" in err


@pytest.mark.parametrize("arch", ["sage", "gin"])
def test_sampled_minibatch_training_learns(arch):
    # GIN's sum over heavy-tailed neighbourhoods needs normalisation to train reliably (without
    # it the run sits near the threshold and flips with rounding-level changes).
    config = small_config(
        model={"arch": arch, "norm": "batch" if arch == "gin" else "none"},
        prompt={"kind": "lorap"},
        quant={"scheme": "qat", "options": {"bits": 8}},
        train={"epochs": 15, "fanout": [5, 5], "batch_size": 64},
    )
    result, _ = train(config, progress=False)
    assert result.test_acc > 1 / config.data.synthetic.num_classes + 0.3
    assert result.history[-1]["loss"] < result.history[0]["loss"]


class FreshRows:
    """What the trainer gathered with before :class:`RowGather`: a new tensor every batch."""

    def __call__(self, source, ids):
        return source.index_select(0, ids)


def test_sampled_training_on_one_reused_row_buffer_equals_fresh_rows(monkeypatch):
    """Each batch's rows overwrite the last batch's buffer; the run is the same, bit for bit,
    as with a fresh tensor per batch."""
    import lorap_dist.train as train_module

    config = small_config(
        model={"arch": "sage"},
        prompt={"kind": "lorap"},
        quant={"scheme": "qat", "options": {"bits": 4}},
        train={"epochs": 3, "fanout": [5, 5], "batch_size": 64},
    )
    reused, _ = train(config, progress=False)
    monkeypatch.setattr(train_module, "RowGather", FreshRows)
    fresh, _ = train(config, progress=False)
    assert [h["loss"] for h in reused.history] == [h["loss"] for h in fresh.history]
    assert reused.test_acc == fresh.test_acc


def test_fanout_must_have_one_entry_per_layer():
    config = small_config(train={"fanout": [5], "epochs": 1})
    with pytest.raises(ConfigError, match=r"one entry per layer \(model.layers=2\)"):
        train(config, progress=False)


def test_trains_from_an_ogb_layout_dataset_and_a_prepared_directory(tmp_path):
    from lorap_dist.graph.prepare import PrepareOptions, prepare
    from lorap_dist.testing.ogb_layout import write_ogb_dataset

    synthetic = small_config().data.synthetic
    graph = generate_synthetic(synthetic)
    write_ogb_dataset(tmp_path / "ogb", "ogbn-arxiv", graph)
    from_ogb = small_config(
        data={"source": "ogbn-arxiv", "root": str(tmp_path / "ogb")}, train={"epochs": 30}
    )
    result, _ = train(from_ogb, progress=False)
    assert result.test_acc > 1 / synthetic.num_classes + 0.3

    out = prepare(
        PrepareOptions(
            out=tmp_path / "prepared",
            source="synthetic",
            parts=2,
            partitioner="random",
            synthetic=synthetic,
            use_ray=False,
            progress=False,
        )
    )
    prepared = small_config(data={"source": "dir", "path": str(out)}, train={"epochs": 30})
    result, _ = train(prepared, progress=False)
    assert result.test_acc > 1 / synthetic.num_classes + 0.3


def test_one_spelling_for_an_ogb_layout_directory_in_prepare_and_train(tmp_path):
    from lorap_dist.testing.ogb_layout import write_ogb_dataset
    from lorap_dist.train import load_graph

    graph = generate_synthetic(small_config().data.synthetic)
    directory = write_ogb_dataset(tmp_path, "ogbn-arxiv", graph)
    config = small_config(data={"source": f"dir:{directory}"})
    assert (config.data.source, config.data.path) == ("dir", str(directory))
    loaded = load_graph(config)  # read from the OGB layout, as `lorap prepare` reads it
    assert torch.equal(loaded.x, graph.x) and torch.equal(loaded.y, graph.y)


def test_cli_repeats_training_over_seeds_and_reports_mean_and_std(tmp_path, capsys):
    import json

    from lorap_dist.cli import main

    out = tmp_path / "seeds.json"
    sets = ["data.synthetic.num_nodes=200", "train.epochs=2", "model.hidden=8"]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--no-progress", "--seeds", "0,1,2", "--out", str(out)]
             + [f"--set={s}" for s in sets])  # fmt: skip
    assert exit_info.value.code == 0
    summary = json.loads(out.read_text())
    assert summary["seeds"] == [0, 1, 2] and len(summary["runs"]) == 3
    accs = summary["test_acc"]
    assert summary["test_acc_mean"] == pytest.approx(sum(accs) / 3)
    assert [run["seed"] for run in summary["runs"]] == [0, 1, 2]
    assert len({tuple(r["history"][-1].values()) for r in summary["runs"]}) == 3  # seeds differ


def _quiet_train(config: ExperimentConfig):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, _ = train(config, progress=False)
    return result, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_a_diverging_first_epoch_is_reported_and_gin_trains_by_default():
    graph = {"synthetic": {"num_nodes": 1000, "avg_degree": 20}}
    float_gin = {"quant": {"scheme": "none"}, "prompt": {"kind": "none"}, "train": {"epochs": 2}}
    no_norm = ExperimentConfig.from_dict(
        {"data": graph, "model": {"arch": "gin", "norm": "none"}, **float_gin}
    )
    result, raised = _quiet_train(no_norm)
    assert len(result.warnings) == 1 and "activations are blowing up" in result.warnings[0]
    assert result.warnings[0] in raised
    default = ExperimentConfig.from_dict({"data": graph, "model": {"arch": "gin"}, **float_gin})
    assert default.model.resolved_norm == "batch"
    result, _ = _quiet_train(default)
    assert result.warnings == []


def test_a_run_that_does_not_learn_is_reported():
    from lorap_dist.train import STALL_EPOCHS, stalled

    base = {
        "data": {"synthetic": {"num_nodes": 300}},
        "quant": {"scheme": "none"},
        "prompt": {"kind": "none"},
    }
    frozen = ExperimentConfig.from_dict(
        {**base, "train": {"epochs": STALL_EPOCHS, "lr": 1e-9, "patience": 100}}
    )
    result, raised = _quiet_train(frozen)
    assert len(result.warnings) == 1 and "the model did not learn" in result.warnings[0]
    assert result.warnings[0] in raised
    learning = ExperimentConfig.from_dict({**base, "train": {"epochs": STALL_EPOCHS}})
    result, _ = _quiet_train(learning)
    assert result.warnings == []
    # the rule itself: enough epochs, a lowest loss at or above 0.9 ln(classes), and a
    # training accuracy that never beat guessing (1/4) by 10 points
    flat = [{"loss": math.log(4), "train": 0.3} for _ in range(STALL_EPOCHS)]
    assert stalled(flat, 4) and not stalled(flat[:-1], 4)
    assert not stalled(flat[:-1] + [{"loss": 0.85 * math.log(4), "train": 0.3}], 4)
    assert stalled(flat[:-1] + [{"loss": float("nan"), "train": 0.3}], 4) == []  # diverged
    # flat logits that rank the classes right: the loss stays high, but it learned
    assert not stalled(flat[:-1] + [{"loss": math.log(4), "train": 0.36}], 4)


def test_a2q_missing_its_budget_is_reported():
    config = ExperimentConfig.from_dict(
        {
            "data": {"synthetic": {"num_nodes": 300}},
            "quant": {
                "scheme": "a2q",
                "options": {"init_bits": 8, "memory_budget": 4.0, "penalty": 0.0},
            },
            "train": {"epochs": 2, "prompt_tuning_epochs": 0},
        }
    )
    result, raised = _quiet_train(config)
    assert result.avg_bits == 8.0
    assert len(result.warnings) == 1
    assert "ended above their memory budget (worst:" in result.warnings[0]
    assert "at 8.00 average bits for a budget of 4" in result.warnings[0]
    assert result.warnings[0] in raised
