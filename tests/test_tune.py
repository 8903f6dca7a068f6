"""The Tune sweep driver: sweep-file validation, a tiny sweep end to end, a failing trial,
and a sweep resumed after its driver was killed.

One local Ray instance (2 CPUs) serves the module. Trials train single-process for 1 to 3
epochs on a 200-node generated graph, so the Ray and Tune overheads dominate.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lorap_dist.cli import main
from lorap_dist.config import ConfigError
from lorap_dist.testing.tune_log import ExecutionLog
from lorap_dist.tune import (
    SweepConfig,
    check_path,
    experiment_config,
    load_sweep,
    max_concurrent_trials,
    num_samples,
    param_space,
    report,
    run_sweep,
    search_algorithm,
    trial_configs,
    trial_point,
    trial_resources,
)

BASE = {
    "data": {
        "source": "synthetic",
        "synthetic": {"num_nodes": 200, "avg_degree": 6, "num_classes": 4, "num_features": 8},
    },
    "model": {"hidden": 8},
    "prompt": {"kind": "lorap", "k": 4, "r": 2},
    "quant": {"scheme": "qat", "options": {"bits": 4}},
    "train": {"epochs": 1, "patience": 0},
}


def write_sweep(tmp_path: Path, **fields) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = {"name": "tiny", "storage_path": str(tmp_path / "sweeps"), "base": BASE} | fields
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --- the sweep file ---------------------------------------------------------------------


def test_unknown_path_names_the_path_and_the_known_fields():
    with pytest.raises(ConfigError, match=r"'prompt.rank'.*prompt has no field 'rank'.*'r'"):
        check_path("prompt.rank")
    with pytest.raises(ConfigError, match=r"known fields are \['data', 'dist'"):
        check_path("optim.lr")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        check_path("train.lr.x")
    for path in ("prompt.r", "quant.options.bits", "dist.num_workers", "data.synthetic.seed"):
        check_path(path)


def test_grid_points_cross_space_and_variants():
    sweep = SweepConfig(
        name="s",
        base=BASE,
        space={"prompt.r": [1, 2], "prompt.kind": ["none", "lorap"]},
        variants=[{"quant.options.bits": 4}, {"quant.options.bits": 8}],
    )
    points = sweep.points()
    assert len(points) == 8
    assert {(p["prompt.r"], p["prompt.kind"], p["quant.options.bits"]) for p in points} == {
        (r, k, b) for r in (1, 2) for k in ("none", "lorap") for b in (4, 8)
    }
    config = experiment_config(sweep.base, points[-1], seed=7)
    assert (config.prompt.r, config.quant.options["bits"], config.train.seed) == (2, 8, 7)


def test_random_points_are_drawn_reproducibly():
    def sweep() -> SweepConfig:
        return SweepConfig(
            name="s",
            base=BASE,
            mode="random",
            num_samples=5,
            space={"train.lr": {"loguniform": [1e-3, 1e-1]}, "prompt.r": [1, 2, 4]},
        )

    first, second = sweep().points(), sweep().points()
    assert first == second and len(first) == 5
    assert all(1e-3 <= p["train.lr"] <= 1e-1 and p["prompt.r"] in (1, 2, 4) for p in first)


def test_grid_space_is_tunes_grid_search():
    variants = [{"quant.options.bits": 4}, {"quant.options.bits": 8}]
    sweep = SweepConfig(
        name="s",
        base=BASE,
        space={"prompt.r": [1, 2], "train.fanout": [None, [4]]},
        variants=variants,
        seeds=[0, 1],
    )
    assert param_space(sweep) == {
        "point": {
            "prompt.r": {"grid_search": [1, 2]},
            "train.fanout": {"grid_search": [None, [4]]},
        },
        "variant": {"grid_search": variants},
        "seed": {"grid_search": [0, 1]},
    }
    assert num_samples(sweep) == 1
    assert len(trial_configs(sweep)) == 2 * 2 * 2 * 2 and len(sweep.points()) == 8


def test_random_space_is_tunes_own_domains():
    from ray.tune.search import sample

    sweep = SweepConfig(
        name="s",
        base=BASE,
        mode="random",
        num_samples=3,
        space={
            "train.lr": {"loguniform": [1e-3, 1e-1]},
            "model.dropout": {"uniform": [0.0, 0.5]},
            "prompt.r": {"randint": [1, 4]},
            "prompt.k": [2, 4],
        },
    )
    space = param_space(sweep)["point"]
    lr, dropout, rank, k = (space[p] for p in ("train.lr", "model.dropout", "prompt.r", "prompt.k"))
    assert isinstance(lr, sample.Float) and isinstance(lr.get_sampler(), sample.LogUniform)
    assert (lr.lower, lr.upper) == (1e-3, 1e-1)
    assert isinstance(dropout, sample.Float) and isinstance(dropout.get_sampler(), sample.Uniform)
    assert (dropout.lower, dropout.upper) == (0.0, 0.5)
    # the file's randint includes hi; Tune's upper bound is exclusive
    assert isinstance(rank, sample.Integer) and (rank.lower, rank.upper) == (1, 5)
    assert isinstance(k, sample.Categorical) and k.categories == [2, 4]
    assert param_space(sweep)["seed"] == {"grid_search": [0]}
    assert num_samples(sweep) == 3


def test_points_are_the_draws_of_tunes_search_algorithm(tmp_path):
    """What :meth:`SweepConfig.points` validates before a sweep runs is what the seeded
    ``BasicVariantGenerator`` hands Tune: one draw per sample, kept over variants and seeds."""
    from ray.tune.experiment import Experiment

    def sweep(sample_seed: int) -> SweepConfig:
        return SweepConfig(
            name="s",
            base=BASE,
            mode="random",
            num_samples=4,
            sample_seed=sample_seed,
            space={"train.lr": {"loguniform": [1e-3, 1e-1]}, "prompt.r": {"randint": [1, 4]}},
            variants=[{"quant.options.bits": 4}, {"quant.options.bits": 8}],
            seeds=[0, 1],
        )

    def drawn(sweep: SweepConfig) -> list[dict]:
        generator = search_algorithm(sweep)
        generator.add_configurations(
            Experiment(
                "s",
                lambda config: None,
                config=param_space(sweep),
                num_samples=num_samples(sweep),
                storage_path=str(tmp_path),
            )
        )
        configs = []
        while (trial := generator.next_trial()) is not None:
            configs.append(trial.config)
        return configs

    configs = drawn(sweep(0))
    assert configs == trial_configs(sweep(0)) and len(configs) == 4 * 2 * 2
    draws = [c["point"] for c in configs]
    assert all(draws[i] == draws[i - i % 4] for i in range(len(draws)))  # kept over the grid
    assert len({json.dumps(d) for d in draws}) == 4
    assert all(1 <= d["prompt.r"] <= 4 and 1e-3 <= d["train.lr"] <= 1e-1 for d in draws)
    assert sweep(0).points() == [trial_point(c) for c in configs if c["seed"] == 0]
    assert drawn(sweep(1)) != configs


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"space": {"prompt.r": [1, 0]}},
            r"configuration prompt.r=0: prompt.r=0 must be an integer >= 1",
        ),
        ({"space": {"train.seed": [0, 1]}}, "seeds: \\[...\\]"),
        ({"space": {"train.lr": {"uniform": [0.1, 0.2]}}}, "distributions need mode: random"),
        ({"space": {"prompt.r": []}}, "empty"),
        ({"space": {"quant.options.bitz": [4]}}, r"unknown field\(s\) \['bitz'\]"),
        ({"mode": "bayes"}, r"sweep mode='bayes' is not allowed"),
        ({"seeds": []}, "non-empty list"),
    ],
)
def test_invalid_sweeps_fail_before_running(fields, message):
    with pytest.raises(ConfigError, match=message):
        SweepConfig(name="s", base=BASE, **fields)


def test_sweep_file_reads_base_relative_to_itself(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    path = tmp_path / "configs" / "sweep.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"name": "s", "base": "../base.yaml", "space": {}}))
    assert load_sweep(path).base["prompt"]["k"] == 4
    path.write_text(yaml.safe_dump({"name": "s", "spaces": {}}))
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['spaces'\]"):
        load_sweep(path)


def test_relative_paths_are_made_absolute_but_uris_are_kept(tmp_path, monkeypatch):
    from lorap_dist.tune.space import resolve_paths

    monkeypatch.chdir(tmp_path)
    config = {"data": {"root": "data"}, "dist": {"storage_path": "s3://bucket/runs"}}
    resolved = resolve_paths(config, nested=True)
    assert resolved["dist"]["storage_path"] == "s3://bucket/runs"
    assert resolved["data"]["root"] == str(tmp_path.resolve() / "data")
    flat = resolve_paths({"dist.storage_path": "gs://b/r", "data.root": "d"})
    assert flat == {"dist.storage_path": "gs://b/r", "data.root": str(tmp_path.resolve() / "d")}


def test_concurrency_follows_resources_per_trial():
    base = SweepConfig(name="s", base=BASE).base
    single = trial_resources(experiment_config(base, {}, 0), cpus_per_trial=1)
    dist = trial_resources(
        experiment_config(base, {"dist.num_workers": 4, "dist.use_gpu": True}, 0), 1
    )
    assert single == {"CPU": 1} and dist == {"CPU": 4.0, "GPU": 4.0}
    assert max_concurrent_trials({"CPU": 16.0, "GPU": 8.0}, [single, dist]) == 2
    assert max_concurrent_trials({"CPU": 16.0}, [single]) == 16
    assert max_concurrent_trials({"CPU": 16.0}, [single], cap=2) == 2
    assert max_concurrent_trials({"CPU": 1.0}, [dist]) == 1  # at least one


# --- sweeps on Ray ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0"  # save the sweep's state at every step
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        runtime_env={"env_vars": {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}},
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.mark.slow
def test_sweep_end_to_end_writes_table_and_plots(ray_cluster, tmp_path, capsys):
    path = write_sweep(
        tmp_path, space={"prompt.r": [1, 2], "quant.options.bits": [4, 8]}, max_failures=0
    )
    outcome = run_sweep(load_sweep(path), verbose=0)

    trials = pd.read_parquet(outcome.files["trials"])
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}
    assert sorted(zip(trials["prompt.r"], trials["quant.options.bits"], strict=True)) == [
        (1, 4),
        (1, 8),
        (2, 4),
        (2, 8),
    ]
    assert trials["best_test_acc"].between(0, 1).all()
    assert (trials["avg_bits"] == trials["quant.options.bits"]).all()
    assert (trials["params_prompt"] > 0).all() and (trials["params_backbone"] > 0).all()
    # a bigger rank adds r * (k + d) prompt parameters per layer
    by_rank = trials.groupby("prompt.r")["params_prompt"].first()
    assert by_rank[2] > by_rank[1]
    summary = outcome.files["summary"].read_text()
    assert "| prompt.r | quant.options.bits | test acc (%) |" in summary
    assert {"accuracy_vs_rank", "accuracy_vs_bits"} <= set(outcome.files)
    assert outcome.files["accuracy_vs_rank"].read_bytes()[:4] == b"\x89PNG"
    assert any("throughput_vs_workers skipped" in note for note in outcome.notes)

    # `lorap report` renders the same table from the Parquet file alone
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(outcome.files["trials"]), "--out", str(out), "--prefix", "r_"])
    assert exit_info.value.code == 0
    table = summary.split("## Plots")[0]
    assert (out / "r_summary.md").read_text().split("## Plots")[0] == table
    assert (out / "r_accuracy_vs_bits.png").is_file()
    with pytest.raises(ConfigError, match="does not exist"):
        report(tmp_path / "missing.parquet")


def _terminated(experiment_dir: Path) -> set[str]:
    """Trial ids the sweep's saved state records as finished."""
    done = set()
    for state in experiment_dir.glob("experiment_state-*.json"):
        try:
            data = json.loads(state.read_text())
        except (json.JSONDecodeError, OSError):  # caught mid-write
            continue
        for trial_json, _ in data["trial_data"]:
            trial = json.loads(trial_json)
            if trial["status"] == "TERMINATED":
                done.add(trial["trial_id"])
    return done


@pytest.mark.slow
def test_failed_trial_is_reported_and_killed_sweep_resumes_unfinished(ray_cluster, tmp_path):
    # model.layers x train.fanout: layers=2 with a one-entry fanout fails inside the trial.
    path = write_sweep(
        tmp_path,
        base=BASE | {"train": {"epochs": 3, "patience": 0}},
        space={"model.layers": [1, 2], "train.fanout": [None, [4]]},
        max_failures=1,
        max_concurrent_trials=1,
    )
    experiment_dir = load_sweep(path).experiment_dir
    executions = ExecutionLog(str(tmp_path / "executions.jsonl"))

    # 1. The driver runs in its own process on this Ray cluster and is killed as soon as
    #    its saved state holds a finished trial.
    driver_code = (
        "from lorap_dist.testing.tune_log import ExecutionLog; "
        "from lorap_dist.tune import load_sweep, run_sweep; "
        f"run_sweep(load_sweep({str(path)!r}), verbose=0, on_trial_start={executions!r})"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", driver_code],
        env=os.environ | {"RAY_ADDRESS": ray_cluster},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # A guard against a hung driver, not a speed check: a loaded machine can take minutes
    # to start Ray's first trial.
    deadline = time.monotonic() + 600
    finished: set[str] = set()
    while not finished and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        finished = _terminated(experiment_dir)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert finished, "the sweep recorded no finished trial before the deadline"
    assert len(finished) < 4, "the driver finished every trial before it was killed"
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--config", str(write_sweep(tmp_path / "other", space={}))] + ["--resume"])
    assert exit_info.value.code == 2  # nothing to resume there

    # 2. Resume: finished trials are kept, the others run.
    outcome = run_sweep(load_sweep(path), resume=True, verbose=0, on_trial_start=executions)
    trials = outcome.trials
    assert len(trials) == 4
    failed = trials[trials["status"] == "failed"]
    assert len(failed) == 1 and (failed["model.layers"] == 2).all()
    assert "train.fanout=(4,) needs one entry per layer" in failed["error"].iloc[0]
    assert (trials[trials["status"] != "failed"]["status"] == "completed").all()

    runs = pd.DataFrame(executions.records())["trial_id"].value_counts()
    assert set(runs.index) == set(trials["trial_id"])  # no trial was started anew
    for trial_id in finished:
        assert runs[trial_id] == 1, f"finished trial {trial_id} ran again"
    # the failing trial ran once plus its one retry (twice more if the kill cut it short)
    assert runs[failed["trial_id"].iloc[0]] in (2, 3)


def test_a_mixq_trial_reports_its_frozen_models_accuracy(monkeypatch):
    """The Tune reporter reports train()'s own best epoch: after MixQ's freeze, the frozen
    model's, and it does not end the trial before the freeze (patience waits for it)."""
    import ray.tune

    from lorap_dist.config import ExperimentConfig
    from lorap_dist.train import load_graph, train
    from lorap_dist.tune import _EpochReporter

    experiment = ExperimentConfig.from_dict(
        {
            "data": {"synthetic": {"num_nodes": 300}},
            "quant": {"scheme": "mixq", "options": {"candidate_bits": [2, 4], "penalty": 0.0}},
            "prompt": {"kind": "none"},
            "train": {"epochs": 12, "patience": 1, "lr": 0.05},
        }
    )
    reports: list[dict] = []
    monkeypatch.setattr(ray.tune, "report", lambda metrics: reports.append(metrics))
    graph = load_graph(experiment)
    result, _ = train(experiment, graph, progress=False, on_epoch=_EpochReporter(300))
    # search_fraction 0.5 of 12 epochs: six epochs search (indices 0-5) and the points freeze
    # at the end of epoch 5, before it is evaluated, so epoch 5 is the first frozen model's
    first_frozen = 5
    assert result.best_epoch >= first_frozen
    assert len(reports) >= first_frozen + 1  # patience 1 did not stop the search early
    assert reports[-1]["trial_done"] and not any(r["trial_done"] for r in reports[:-1])
    assert reports[-1]["best_test_acc"] == result.test_acc
    assert reports[-1]["best_epoch"] == result.best_epoch + 1


def test_a_prompt_tuning_trial_reports_every_epoch_of_both_phases(monkeypatch):
    """With ``train.prompt_tuning_epochs`` a trial reports the run's epochs and then the
    tuning epochs (no more than the patience, so the phase runs out), ends only after the
    last of them, and reports train()'s own result."""
    import ray.tune

    from lorap_dist.config import ExperimentConfig
    from lorap_dist.train import load_graph, train
    from lorap_dist.tune import _EpochReporter

    experiment = ExperimentConfig.from_dict(
        {
            "data": {"synthetic": {"num_nodes": 300}},
            "quant": {"scheme": "qat", "options": {"bits": 4}},
            "prompt": {"kind": "lorap", "k": 4, "r": 2},
            "train": {"epochs": 30, "patience": 2, "prompt_tuning_epochs": 2, "lr": 0.05},
        }
    )
    reports: list[dict] = []
    monkeypatch.setattr(ray.tune, "report", lambda metrics: reports.append(metrics))
    result, _ = train(experiment, load_graph(experiment), progress=False,
                      on_epoch=_EpochReporter(300))  # fmt: skip
    assert result.prompt_start_epoch < 30  # early stopping ended the run, then tuning began
    assert len(reports) == result.epochs_run == result.prompt_start_epoch + 2
    assert reports[-1]["trial_done"] and not any(r["trial_done"] for r in reports[:-1])
    assert reports[-1]["best_test_acc"] == result.test_acc
    assert reports[-1]["prompt_trained"] == (result.best_epoch >= result.prompt_start_epoch)


def test_trial_id_survives_rays_directory_suffix():
    """A trial restarted after the driver was killed may get the directory ``<id>_<4 hex>``
    (its first one exists); its row keeps the trial's own id."""
    from types import SimpleNamespace

    from lorap_dist.tune import result_trial_id

    reported = SimpleNamespace(metrics={"trial_id": "79ae4_00001"}, path="/s/79ae4_00001_123d")
    silent = SimpleNamespace(metrics={}, path="/s/79ae4_00001_123d")
    plain = SimpleNamespace(metrics=None, path="/s/79ae4_00002")
    assert result_trial_id(reported) == "79ae4_00001"
    assert result_trial_id(silent) == "79ae4_00001"
    assert result_trial_id(plain) == "79ae4_00002"


def test_folds_are_averaged_like_seeds_in_the_summary():
    from lorap_dist.tune import summarize

    rows = []
    for scheme, base in (("qat", 0.5), ("degree_quant", 0.7)):
        for fold in range(3):
            rows.append(
                {
                    "point": scheme,
                    "status": "completed",
                    "quant.scheme": scheme,
                    "data.fold": fold,
                    "train.seed": 0,
                    "best_test_acc": base + 0.1 * fold,
                    "best_valid_acc": base,
                    **dict.fromkeys(
                        ["params_prompt", "params_backbone", "avg_bits", "seeds_per_s", "wall_s"],
                        1.0,
                    ),
                }
            )
    table = summarize(pd.DataFrame(rows))
    assert list(table["quant.scheme"]) == ["qat", "degree_quant"]
    assert "data.fold" not in table.columns
    assert list(table["n_seeds"]) == [3, 3]
    assert table["acc_mean"].round(6).tolist() == [0.6, 0.8]


def test_the_summary_counts_the_seeds_whose_reported_model_trained_its_prompts():
    """A prompted seed whose best validation epoch came before the warm start ended reports
    its scheme alone; the summary says how many seeds report a trained prompt."""
    from lorap_dist.tune.report import markdown_summary, summarize

    rows = []
    for kind, trained in (("lorap", [1.0, 0.0, 1.0]), ("none", [float("nan")] * 3)):
        for seed, flag in enumerate(trained):
            rows.append(
                {
                    "point": kind,
                    "status": "completed",
                    "prompt.kind": kind,
                    "train.seed": seed,
                    "best_test_acc": 0.5,
                    "best_valid_acc": 0.5,
                    "prompt_trained": flag,
                    **dict.fromkeys(
                        ["params_prompt", "params_backbone", "avg_bits", "seeds_per_s", "wall_s"],
                        1.0,
                    ),
                }
            )
    table = summarize(pd.DataFrame(rows))
    assert table["prompt_trained"].iloc[0] == 2 and pd.isna(table["prompt_trained"].iloc[1])
    lines = markdown_summary(table).splitlines()
    assert "trained prompt" in lines[0]
    assert "| 2/3 |" in lines[2] and "| - |" in lines[3]
    # a table written before the column existed still summarises
    old = summarize(pd.DataFrame(rows).drop(columns="prompt_trained"))
    assert old["prompt_trained"].isna().all()


def test_a_trial_reports_whether_its_best_epoch_trained_the_prompts(monkeypatch):
    import ray.tune

    from lorap_dist.config import ModelConfig, PromptConfig
    from lorap_dist.fit import EpochReport
    from lorap_dist.nn import build_model
    from lorap_dist.tracking import BestEpoch, PromptStart
    from lorap_dist.tune.trial import _EpochReporter

    reports = []
    monkeypatch.setattr(ray.tune, "report", reports.append)
    best = BestEpoch()
    best.update(1, 0.5, 0.5)  # the best validation epoch is epoch 1
    row = {"epoch": 3, "loss": 1.0, "train": 0.5, "valid": 0.4, "test": 0.4}
    prompted = build_model(6, 3, ModelConfig(hidden=8), PromptConfig(kind="lorap"))
    plain = build_model(6, 3, ModelConfig(hidden=8), PromptConfig())
    reporter = _EpochReporter(train_nodes=10)
    for model, start in ((prompted, 2), (prompted, 1), (plain, None)):
        reporter(EpochReport(row, best, False, PromptStart(epoch=start)), model)
    reporter(EpochReport(row, BestEpoch(), False, PromptStart(epoch=0)), prompted)  # no best yet
    assert [r["prompt_trained"] for r in reports] == [False, True, None, None]


def test_accuracy_vs_bits_draws_a_curve_per_prompt_unit_not_their_average():
    from lorap_dist.tune.report import bits_series, curves

    rows = []
    for bits, unit, acc in [
        (4, "value", 0.5),
        (4, "step", 0.7),
        (8, "value", 0.8),
        (8, "step", 0.9),
    ]:
        for seed in range(2):
            rows.append(
                {
                    "status": "completed",
                    "quant.scheme": "qat",
                    "quant.options.bits": bits,
                    "prompt.kind": "lorap",
                    "prompt.unit": unit,
                    "train.seed": seed,
                    "avg_bits": float(bits),
                    "best_test_acc": acc + 0.01 * seed,
                }
            )
    done = pd.DataFrame(rows).assign(bits=lambda f: f["avg_bits"])
    swept = {"quant.options.bits", "prompt.unit"}
    # the unit varies at one bit width: a curve of its own; the bit width is the x axis
    assert bits_series(done, swept) == ["quant.scheme", "prompt.kind", "prompt.unit"]
    drawn = {
        values["prompt.unit"]: stats
        for values, stats in curves(done, "bits", "best_test_acc", bits_series(done, swept))
    }
    assert set(drawn) == {"value", "step"}
    assert drawn["step"]["mean"].round(3).tolist() == [0.705, 0.905]
    assert drawn["value"]["mean"].round(3).tolist() == [0.505, 0.805]


def test_render_plots_draws_every_plot_the_sweep_varies(tmp_path):
    from lorap_dist.tune.report import render_plots

    rows = [
        {
            "status": "completed",
            "quant.scheme": "qat",
            "prompt.kind": kind,
            "prompt.r": r,
            "quant.options.bits": bits,
            "train.seed": 0,
            "avg_bits": float(bits),
            "best_test_acc": 0.5 + 0.01 * r,
            "seeds_per_s": 1.0,
        }
        for kind in ("none", "lorap")
        for r in (1, 2)
        for bits in (4, 8)
    ]
    files, notes = render_plots(pd.DataFrame(rows), tmp_path)
    assert set(files) == {"accuracy_vs_rank", "accuracy_vs_bits"}
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in files.values())
    assert notes == ["throughput_vs_workers skipped: the sweep does not vary dist.num_workers."]
