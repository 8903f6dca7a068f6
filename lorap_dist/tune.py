"""The Ray Tune driver: sweeps over any experiment field, with retries, resume and reports.

A sweep file is a base experiment plus a search space over config fields addressed by
dotted path::

    name: rank                          # experiment directory: <storage_path>/<name>/
    base: ../default.yaml               # a mapping, or an experiment YAML (relative to this file)
    space:                              # dotted path -> values
      prompt.r: [1, 2, 4, 8, 16]
    variants:                           # optional explicit override sets, crossed with space
      - {quant.scheme: qat, quant.options: {bits: 4}}
      - {quant.scheme: a2q, quant.options: {init_bits: 4, memory_budget: 4}}
    seeds: [0, 1, 2]                    # repeats: train.seed of every configuration
    mode: grid                          # or random: num_samples draws from space
    asha: {grace_period: 10}            # optional early stopping on best_valid_acc

Following Ray Train v2, each Tune trial runs :func:`run_trial`, a driver function that
builds the trial's :class:`~lorap_dist.config.ExperimentConfig` and either trains in its own
process (:func:`lorap_dist.train.train`, one Tune report per epoch) or, with a ``dist``
section, builds a ``TorchTrainer`` (:func:`lorap_dist.distributed.trainer.build_trainer`) whose
workers report each epoch to Tune through ``TuneReportCallback``. A trial reserves
``cpus_per_trial`` CPUs when it trains in-process; a distributed trial's driver reserves
nothing and its workers reserve ``num_workers x (cpus_per_worker [+ 1 GPU])`` through Ray
Train, so the driver caps concurrency at ``floor(available / per trial)`` (at least 1).

A failing trial is retried ``max_failures`` times, then recorded with its error while the
other trials go on. Tune keeps the sweep's state in the experiment directory; running the
same sweep again restores it (``Tuner.restore``): finished trials are kept, unfinished ones
run, errored ones run again only when asked (``restart_errored``).

Results (:func:`trial_table`, :func:`write_report`): one Parquet row per trial, a Markdown
table of mean and standard deviation over seeds per configuration, and PNG plots.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
import os
import random
import re
import time
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lorap_dist.config import (
    ConfigError,
    DistConfig,
    ExperimentConfig,
    QuantSettings,
    check,
    check_choice,
    from_dict,
    is_int,
    leading_first,
    load_yaml_mapping,
    set_field,
)

if typing.TYPE_CHECKING:
    from lorap_dist.fit import EpochReport

MODES = ("grid", "random")
DISTRIBUTIONS = ("uniform", "loguniform", "randint")
RESULTS_FILE = "trials.parquet"
RUNS_LOG = "trial_runs.jsonl"
SWEEP_COPY = "sweep.yaml"
# Config fields that hold paths: made absolute in the driver, since Tune runs every trial in
# its own working directory.
PATH_FIELDS = ("data.path", "data.root", "dist.storage_path")


# ---------------------------------------------------------------------------------------
# The sweep file


@dataclass
class AshaSettings:
    """ASHA early stopping on ``best_valid_acc`` over epochs (``ASHAScheduler``).

    Args:
        grace_period: epochs every trial runs before it can be stopped.
        reduction_factor: the fraction ``1 / reduction_factor`` of trials goes on at each rung.
        brackets: ASHA brackets.
    """

    grace_period: int = 5
    reduction_factor: float = 2.0
    brackets: int = 1

    def __post_init__(self) -> None:
        check(self.grace_period >= 1, f"asha.grace_period={self.grace_period} must be >= 1.")
        check(self.reduction_factor > 1, "asha.reduction_factor must be > 1 (e.g. 2 or 3).")
        check(self.brackets >= 1, f"asha.brackets={self.brackets} must be >= 1.")


@dataclass
class SweepConfig:
    """A sweep: a base experiment, a search space and how to run it.

    Args:
        name: the experiment directory's name under ``storage_path``.
        base: the base experiment as a plain dict (``ExperimentConfig`` schema).
        space: dotted config path -> list of values (``grid``: every combination;
            ``random``: a choice per sample) or, in ``random`` mode, a distribution
            ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}`` or ``{randint: [lo, hi]}``
            (``hi`` included).
        variants: explicit sets of ``path: value`` overrides, each crossed with the space
            (for fields that go together, such as a scheme and its options).
        seeds: ``train.seed`` values; every configuration runs once per seed.
        mode: ``grid`` or ``random``.
        num_samples: configurations drawn in ``random`` mode.
        sample_seed: seeds the draws of ``random`` mode (the same file draws the same points).
        asha: early stopping (``None``: every trial runs its epochs).
        max_failures: retries of a failing trial before it is recorded as failed.
        max_concurrent_trials: an upper bound on trials at once (``None``: what the
            cluster's free resources allow).
        cpus_per_trial: CPUs a trial that trains in-process reserves.
        storage_path: where Tune keeps the experiment directory (made absolute).
    """

    name: str
    base: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    variants: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    mode: str = "grid"
    num_samples: int = 1
    sample_seed: int = 0
    asha: AshaSettings | None = None
    max_failures: int = 1
    max_concurrent_trials: int | None = None
    cpus_per_trial: float = 1.0
    storage_path: str = "sweeps"

    def __post_init__(self) -> None:
        if isinstance(self.asha, dict):
            self.asha = from_dict(AshaSettings, self.asha, "sweep asha")
        check(
            bool(self.name) and "/" not in self.name,
            f"sweep name={self.name!r} must be a non-empty directory name without '/'.",
        )
        check_choice("sweep mode", self.mode, MODES)
        check(isinstance(self.space, dict), "sweep space must map dotted paths to values.")
        check(
            isinstance(self.variants, list) and all(isinstance(v, dict) for v in self.variants),
            "sweep variants must be a list of mappings of dotted path: value.",
        )
        check(
            isinstance(self.seeds, list)
            and bool(self.seeds)
            and all(is_int(s) for s in self.seeds),
            f"sweep seeds={self.seeds!r} must be a non-empty list of integers.",
        )
        check(len(set(self.seeds)) == len(self.seeds), f"sweep seeds={self.seeds} repeat.")
        check(self.num_samples >= 1, f"sweep num_samples={self.num_samples} must be >= 1.")
        check(self.max_failures >= 0, f"sweep max_failures={self.max_failures} must be >= 0.")
        check(
            self.max_concurrent_trials is None or self.max_concurrent_trials >= 1,
            "sweep max_concurrent_trials must be >= 1, or null (from the cluster's resources).",
        )
        check(self.cpus_per_trial > 0, "sweep cpus_per_trial must be > 0.")
        check(
            "train.seed" not in self.space and all("train.seed" not in v for v in self.variants),
            "sweep: set repeats with `seeds: [...]`, not with train.seed in space or variants.",
        )
        for path, values in self.space.items():
            check_path(path)
            _check_values(path, values, self.mode)
        for variant in self.variants:
            for path in variant:
                check_path(path)
        self.base = ExperimentConfig.from_dict(self.base).to_dict()
        for point in self.points():  # every configuration is valid before anything runs
            experiment_config(self.base, point, self.seeds[0])

    @classmethod
    def from_yaml(
        cls, path: str | Path, overrides: list[tuple[str, Any]] | None = None
    ) -> SweepConfig:
        """Read a sweep file; a ``base`` given as a path is read relative to the file.

        ``overrides`` are ``(dotted key, value)`` pairs set after reading: ``name``,
        ``seeds`` and the other top-level fields, ``base.<config path>`` and
        ``space.<config path>`` (e.g. ``("base.train.epochs", 30)``).
        """
        path = Path(path)
        data = load_yaml_mapping(path, "sweep file")
        base = data.get("base")
        if isinstance(base, str):
            base_path = (path.parent / base).resolve()
            data["base"] = ExperimentConfig.from_yaml(base_path).to_dict()
        for key, value in overrides or []:
            section, _, rest = key.partition(".")
            if section == "space" and rest:
                data.setdefault("space", {})[rest] = value
            else:
                set_path(data, key, value)
        try:
            return from_dict(cls, data, "sweep")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except TypeError as exc:  # a missing required field such as name
            raise ConfigError(f"{path}: sweep file is incomplete: {exc}.") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def points(self) -> list[dict[str, Any]]:
        """Every configuration of the sweep as ``{dotted path: value}`` (seeds excluded)."""
        if self.mode == "grid":
            keys = list(self.space)
            draws = [
                dict(zip(keys, combo, strict=True))
                for combo in itertools.product(*(self.space[k] for k in keys))
            ]
        else:
            rng = random.Random(self.sample_seed)
            draws = [
                {k: _draw(v, rng) for k, v in self.space.items()} for _ in range(self.num_samples)
            ]
        variants = self.variants or [{}]
        return [resolve_paths({**draw, **variant}) for draw in draws for variant in variants]

    @property
    def experiment_dir(self) -> Path:
        return Path(self.storage_path).expanduser().resolve() / self.name


def load_sweep(path: str | Path, overrides: list[tuple[str, Any]] | None = None) -> SweepConfig:
    """The sweep file at ``path`` with ``overrides`` (see :meth:`SweepConfig.from_yaml`),
    validated, with relative paths made absolute."""
    sweep = SweepConfig.from_yaml(path, overrides)
    sweep.base = resolve_paths(sweep.base, nested=True)
    sweep.storage_path = str(Path(sweep.storage_path).expanduser().resolve())
    return sweep


def _check_values(path: str, values: Any, mode: str) -> None:
    if isinstance(values, list):
        check(bool(values), f"sweep space {path}: the list of values is empty.")
        return
    check(
        mode == "random" and isinstance(values, dict) and len(values) == 1,
        f"sweep space {path}={values!r}: give a list of values"
        + (
            f", or one distribution {{name: [lo, hi]}} with name in {list(DISTRIBUTIONS)}."
            if mode == "random"
            else " (distributions need mode: random)."
        ),
    )
    ((name, bounds),) = values.items()
    check_choice(f"sweep space {path} distribution", name, DISTRIBUTIONS)
    check(
        isinstance(bounds, list) and len(bounds) == 2 and bounds[0] < bounds[1],
        f"sweep space {path}: {name} needs [lo, hi] with lo < hi, got {bounds!r}.",
    )
    check(name != "loguniform" or bounds[0] > 0, f"sweep space {path}: loguniform needs lo > 0.")


def _draw(values: Any, rng: random.Random) -> Any:
    if isinstance(values, list):
        return rng.choice(values)
    ((name, (lo, hi)),) = values.items()
    if name == "uniform":
        return rng.uniform(lo, hi)
    if name == "loguniform":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return rng.randint(lo, hi)


# ---------------------------------------------------------------------------------------
# Dotted paths into the experiment config


def check_path(path: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` names a field of the experiment config.

    Fields under ``quant.options`` depend on the scheme and are checked when the
    configurations are built.
    """
    parts = path.split(".")
    cls: type = ExperimentConfig
    where = "config"
    for index, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        known = sorted(f.name for f in dataclasses.fields(cls))
        check(
            part in known,
            f"sweep path {path!r}: {where} has no field {part!r}; known fields are {known}.",
        )
        # ExperimentConfig.dist is typed Any (the dist layer sits above config.py)
        sub = (
            DistConfig if (cls, part) == (ExperimentConfig, "dist") else _dataclass_in(hints[part])
        )
        rest = parts[index + 1 :]
        if not rest:
            return
        if sub is None:
            check(
                (cls, part) == (QuantSettings, "options"),
                f"sweep path {path!r}: {where}.{part} is a value, not a section.",
            )
            return  # scheme options: checked when the configs are built
        cls, where = sub, f"{where}.{part}" if where != "config" else part


def _dataclass_in(annotation: Any) -> type | None:
    candidates = typing.get_args(annotation) or (annotation,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` (dotted) in the plain config dict ``data``, creating sections, by
    :func:`lorap_dist.config.set_field`'s rules (a scheme switch keeps only ``bits``)."""
    set_field(data, path, value)


def resolve_paths(data: dict[str, Any], nested: bool = False) -> dict[str, Any]:
    """``data`` with the relative paths of :data:`PATH_FIELDS` made absolute.

    ``nested`` says whether ``data`` is a config dict (sections) or ``{dotted path: value}``.
    """
    data = copy.deepcopy(data)
    for path in PATH_FIELDS:
        if nested:
            *sections, last = path.split(".")
            node = data
            for part in sections:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and isinstance(node.get(last), str):
                node[last] = str(Path(node[last]).expanduser().resolve())
        elif isinstance(data.get(path), str):
            data[path] = str(Path(data[path]).expanduser().resolve())
    return data


def point_key(point: dict[str, Any]) -> str:
    """A stable, readable name of a configuration: ``path=value`` pairs, sorted."""
    return ",".join(f"{k}={json.dumps(point[k], sort_keys=True)}" for k in sorted(point))


def experiment_config(base: dict[str, Any], point: dict[str, Any], seed: int) -> ExperimentConfig:
    """The experiment of one trial: ``base`` with ``point``'s overrides and ``train.seed``."""
    data = copy.deepcopy(base)
    for path in leading_first(list(point)):
        set_path(data, path, point[path])
    set_path(data, "train.seed", seed)
    try:
        return ExperimentConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"sweep configuration {point_key(point) or '(base)'}: {exc}") from None


# ---------------------------------------------------------------------------------------
# One trial


def trial_resources(experiment: ExperimentConfig, cpus_per_trial: float) -> dict[str, float]:
    """What one trial occupies: its own CPUs in-process, else its Ray Train workers'."""
    settings = experiment.dist
    if settings is None:
        return {"CPU": cpus_per_trial}
    resources = {"CPU": settings.num_workers * settings.cpus_per_worker}
    if settings.use_gpu:
        resources["GPU"] = float(settings.num_workers)
    return resources


def _driver_resources(config: dict[str, Any], base: dict[str, Any], cpus: float) -> dict:
    experiment = experiment_config(base, config["point"], config["seed"])
    # A distributed trial's driver only waits on its TorchTrainer, whose workers reserve
    # their own resources through Ray Train; reserving a CPU here would starve them.
    return {"CPU": 0} if experiment.dist is not None else {"CPU": cpus}


def run_trial(config: dict[str, Any], base: dict[str, Any], runs_log: str) -> None:
    """Tune's function for one trial: train ``base`` + ``config["point"]`` with its seed.

    Every report carries ``epoch``, ``valid_acc``/``test_acc`` (that epoch),
    ``best_valid_acc``/``best_test_acc`` (the best validation epoch so far) and, from the
    in-process trainer, the parameter counts, ``avg_bits``, ``seeds_per_s`` and ``wall_s``.
    """
    import ray.tune

    experiment = experiment_config(base, config["point"], config["seed"])
    context = ray.tune.get_context()
    _append_jsonl(
        runs_log,
        {
            "trial_id": context.get_trial_id(),
            "point": point_key(config["point"]),
            "seed": config["seed"],
            "pid": os.getpid(),
            "time": time.time(),
        },
    )
    if experiment.dist is None:
        _train_in_process(experiment)
    else:
        _train_distributed(experiment, context.get_trial_name())


def _append_jsonl(path: str, record: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:  # one short line per write: appends do not interleave
        handle.write(json.dumps(record) + "\n")


class _EpochReporter:
    """The ``on_epoch`` hook of :func:`lorap_dist.train.train`: one Tune report per epoch.

    The best epoch and the stop decision are :func:`~lorap_dist.train.train`'s own
    (:class:`~lorap_dist.tracking.BestEpoch`), so a trial reports what ``lorap train``
    would: after a MixQ freeze, the frozen model's best.
    """

    def __init__(self, train_nodes: int) -> None:
        self.train_nodes = train_nodes
        self.start = self.last = time.perf_counter()

    def __call__(self, report: EpochReport, model: Any) -> None:
        import ray.tune

        from lorap_dist.nn import parameter_counts
        from lorap_dist.quant import average_bits

        now = time.perf_counter()
        row, best = report.row, report.best
        counts = parameter_counts(model)
        ray.tune.report(
            {
                "epoch": int(row["epoch"]) + 1,
                "loss": row["loss"],
                "train_acc": row["train"],
                "valid_acc": row["valid"],
                "test_acc": row["test"],
                "best_valid_acc": best.valid,
                "best_test_acc": best.test,
                "best_epoch": best.epoch + 1,
                **{f"params_{kind}": n for kind, n in counts.items()},
                "avg_bits": average_bits(model),
                # training nodes (graphs, graph level) per second of the epoch, evaluation
                # included
                "seeds_per_s": self.train_nodes / max(now - self.last, 1e-9),
                "wall_s": now - self.start,
                "trial_done": report.last,
            }
        )
        self.last = now


def _train_in_process(experiment: ExperimentConfig) -> None:
    from lorap_dist.train import load_graph, train, training_items

    graph = load_graph(experiment)
    reporter = _EpochReporter(training_items(experiment, graph))
    train(experiment, graph, progress=False, on_epoch=reporter)


def _train_distributed(experiment: ExperimentConfig, trial_name: str) -> None:
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lorap_dist.distributed.trainer import RAY_ENV, build_trainer, validate_dataset

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    settings = dataclasses.replace(experiment.dist, name=trial_name)
    validate_dataset(experiment.data.path, settings.num_workers)
    start = time.perf_counter()
    ray.tune.report({"epoch": 0, "best_valid_acc": -1.0, **_static_facts(experiment)})
    trainer = build_trainer(experiment, settings)
    trainer.run_config.callbacks = [*(trainer.run_config.callbacks or []), TuneReportCallback()]
    result = trainer.fit()
    last = dict(result.metrics or {})
    ray.tune.report(
        {
            **last,
            "train_acc": last.get("train_acc_sampled"),
            **_static_facts(experiment),
            "wall_s": time.perf_counter() - start,
            "trial_done": True,
        }
    )


def _static_facts(experiment: ExperimentConfig) -> dict[str, Any]:
    """Parameter counts and configured average bits of a distributed trial's model."""
    from lorap_dist.graph.storage import read_meta
    from lorap_dist.nn import build_model, parameter_counts
    from lorap_dist.quant import average_bits, quantize_

    meta = read_meta(Path(experiment.data.path))
    model = build_model(
        int(meta["num_features"]), int(meta["num_classes"]), experiment.model, experiment.prompt
    )
    scheme = experiment.quant.build()
    if scheme is not None:
        quantize_(model, scheme, num_nodes=int(meta["num_nodes"]))
    counts = parameter_counts(model)
    return {**{f"params_{k}": n for k, n in counts.items()}, "avg_bits": average_bits(model)}


# ---------------------------------------------------------------------------------------
# The sweep


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` leaves: the trial table and the files it wrote."""

    trials: Any  # pandas.DataFrame, one row per trial
    experiment_dir: Path
    files: dict[str, Path]
    notes: list[str]


def max_concurrent_trials(
    available: dict[str, float], per_trial: Iterable[dict[str, float]], cap: int | None = None
) -> int:
    """``floor(available / per trial)`` for the most demanding trial, at least 1.

    Args:
        available: the cluster's free resources (``ray.available_resources()``).
        per_trial: each trial's resources (:func:`trial_resources`).
        cap: an upper bound (the sweep's ``max_concurrent_trials``).
    """
    worst: dict[str, float] = {}
    for resources in per_trial:
        for name, amount in resources.items():
            worst[name] = max(worst.get(name, 0.0), amount)
    fits = [
        math.floor(available.get(name, 0.0) / amount) for name, amount in worst.items() if amount
    ]
    count = max(1, min(fits, default=1))
    return count if cap is None else min(count, cap)


def run_sweep(
    sweep: SweepConfig,
    *,
    resume: bool | None = None,
    restart_errored: bool = False,
    out_dir: str | Path | None = None,
    verbose: int = 1,
) -> SweepOutcome:
    """Run (or resume) ``sweep`` on the Ray cluster and write its results.

    Args:
        sweep: the sweep (:func:`load_sweep`).
        resume: ``None`` restores the experiment directory when it holds a sweep, else starts
            one; ``True`` requires a sweep to restore; ``False`` requires none.
        restart_errored: on restore, also run the trials that failed, from scratch.
        out_dir: where the Parquet file, table and plots go (default
            ``<experiment dir>/results``).
        verbose: Tune's console verbosity (0 to 3).

    Raises:
        ConfigError: resuming asks for a directory that holds no sweep, or holds another one.
    """
    import ray
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler

    from lorap_dist.distributed.trainer import RAY_ENV

    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    experiment_dir = sweep.experiment_dir
    restorable = ray.tune.Tuner.can_restore(str(experiment_dir))
    _check_resume(sweep, experiment_dir, restorable, resume)
    if not ray.is_initialized():
        ray.init(runtime_env={"env_vars": dict(RAY_ENV)})

    runs_log = str(experiment_dir / RUNS_LOG)
    driver_cpus = functools.partial(_driver_resources, base=sweep.base, cpus=sweep.cpus_per_trial)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, base=sweep.base, runs_log=runs_log), driver_cpus
    )
    points = sweep.points()
    if restorable:
        tuner = ray.tune.Tuner.restore(
            str(experiment_dir),
            trainable=trainable,
            resume_unfinished=True,
            restart_errored=restart_errored,
        )
    else:
        experiment_dir.mkdir(parents=True, exist_ok=True)
        (experiment_dir / SWEEP_COPY).write_text(yaml.safe_dump(sweep.to_dict(), sort_keys=False))
        demand = [
            trial_resources(experiment_config(sweep.base, p, sweep.seeds[0]), sweep.cpus_per_trial)
            for p in points
        ]
        _check_fits(demand, ray.cluster_resources())
        epochs = max(experiment_config(sweep.base, p, 0).train.epochs for p in points)
        scheduler = (
            None
            if sweep.asha is None
            else ASHAScheduler(
                time_attr="epoch",
                metric="best_valid_acc",
                mode="max",
                max_t=epochs,
                grace_period=min(sweep.asha.grace_period, epochs),
                reduction_factor=sweep.asha.reduction_factor,
                brackets=sweep.asha.brackets,
            )
        )
        tuner = ray.tune.Tuner(
            trainable,
            param_space={
                "point": ray.tune.grid_search(points),
                "seed": ray.tune.grid_search(sweep.seeds),
            },
            tune_config=ray.tune.TuneConfig(
                scheduler=scheduler,
                trial_dirname_creator=_trial_dirname,
                max_concurrent_trials=max_concurrent_trials(
                    ray.available_resources(), demand, sweep.max_concurrent_trials
                ),
            ),
            run_config=ray.tune.RunConfig(
                name=sweep.name,
                storage_path=str(experiment_dir.parent),
                failure_config=ray.tune.FailureConfig(max_failures=sweep.max_failures),
                verbose=verbose,
            ),
        )
    grid = tuner.fit()
    trials = trial_table(grid, sweep)
    out = Path(out_dir) if out_dir is not None else experiment_dir / "results"
    files, notes = write_report(trials, out)
    return SweepOutcome(trials=trials, experiment_dir=experiment_dir, files=files, notes=notes)


def _check_fits(demand: list[dict[str, float]], cluster: dict[str, float]) -> None:
    """A trial that needs more than the whole cluster would wait forever: say so instead."""
    for resources in demand:
        short = {k: v for k, v in resources.items() if v > cluster.get(k, 0.0)}
        if short:
            raise ConfigError(
                f"a trial of this sweep needs {resources} but the Ray cluster has "
                f"{ {k: cluster.get(k, 0.0) for k in short} }; lower dist.num_workers, "
                "dist.cpus_per_worker (fractions are allowed) or cpus_per_trial, or add nodes."
            )


def _trial_dirname(trial: Any) -> str:
    """A trial's directory is named by its id (the ``trial_id`` column of the results).

    Ray appends ``_`` and four hex digits when a directory of that name already exists: a
    trial that had made its directory when the driver was killed gets a new one on resume.
    """
    return trial.trial_id


_DIR_SUFFIX = re.compile(r"_[0-9a-f]{4}$")


def result_trial_id(result: Any) -> str:
    """The trial id of a Tune ``Result``: the one Ray reports with every result, else (a
    trial that never reported) its directory's name without Ray's uniqueness suffix."""
    reported = (result.metrics or {}).get("trial_id")
    if reported:
        return str(reported)
    name = Path(result.path).name
    return _DIR_SUFFIX.sub("", name) if name.count("_") > 1 else name


def _check_resume(
    sweep: SweepConfig, experiment_dir: Path, restorable: bool, resume: bool | None
) -> None:
    if resume and not restorable:
        raise ConfigError(
            f"--resume: {experiment_dir} holds no sweep to resume; run without --resume to "
            "start it."
        )
    if resume is False and restorable:
        raise ConfigError(
            f"{experiment_dir} already holds sweep {sweep.name!r}; resume it (--resume), or "
            "give the sweep another name."
        )
    saved = experiment_dir / SWEEP_COPY
    if restorable and saved.is_file():
        if yaml.safe_load(saved.read_text()) != yaml.safe_load(yaml.safe_dump(sweep.to_dict())):
            raise ConfigError(
                f"{experiment_dir} holds sweep {sweep.name!r} with another config ({saved}); "
                "Tune cannot resume a changed search space: give the sweep another name, or "
                "delete the directory to start over."
            )


# ---------------------------------------------------------------------------------------
# Results


METRIC_COLUMNS = (
    "epochs",
    "final_valid_acc",
    "final_test_acc",
    "best_valid_acc",
    "best_test_acc",
    "params_backbone",
    "params_prompt",
    "params_quantizer",
    "params_total",
    "avg_bits",
    "seeds_per_s",
    "wall_s",
)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name != "quant.options":
            flat |= _flatten(value, f"{name}.")
        elif isinstance(value, dict) and name == "quant.options":
            flat |= {f"{name}.{k}": _cell(v) for k, v in value.items()}
        else:
            flat[name] = _cell(value)
    return flat


def _cell(value: Any) -> Any:
    """Lists and mappings as JSON text, so every Parquet column has one type."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _error_text(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def trial_table(grid: Any, sweep: SweepConfig) -> Any:
    """One row per trial of a Tune ``ResultGrid``: config, metrics, status and error.

    ``status`` is ``completed`` (ran its epochs or stopped on patience), ``stopped`` (by
    ASHA), ``failed`` (after its retries; ``error`` says why) or ``unfinished``.
    """
    import pandas as pd

    rows = []
    for result in grid:
        config = result.config or {}
        point, seed = config.get("point", {}), config.get("seed")
        metrics = dict(result.metrics or {})
        history = result.metrics_dataframe
        for column in ("params_backbone", "params_prompt", "params_quantizer", "params_total"):
            if metrics.get(column) is None and history is not None and column in history:
                known = history[column].dropna()
                metrics[column] = known.iloc[-1] if len(known) else None
        if result.error is not None:
            status, error = "failed", _error_text(result.error)
        elif metrics.get("trial_done"):
            status, error = "completed", None
        elif metrics:
            status, error = "stopped", None
        else:
            status, error = "unfinished", None
        experiment = experiment_config(sweep.base, point, seed)
        rows.append(
            {
                "sweep": sweep.name,
                "trial_id": result_trial_id(result),
                "point": point_key(point),
                "seed": seed,
                "status": status,
                "error": error,
                **_flatten(experiment.to_dict()),
                "epochs": metrics.get("epoch"),
                "final_valid_acc": metrics.get("valid_acc"),
                "final_test_acc": metrics.get("test_acc"),
                **{c: metrics.get(c) for c in METRIC_COLUMNS[3:]},
            }
        )
    frame = pd.DataFrame(rows)
    for column in METRIC_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.sort_values(["point", "seed"], kind="stable").reset_index(drop=True)


CONFIG_PREFIXES = ("data.", "model.", "prompt.", "quant.", "train.", "dist")


REPEATS = ("train.seed", "data.fold")  # what the summary averages over


def swept_columns(trials: Any) -> list[str]:
    """Config columns whose value differs between trials, except :data:`REPEATS`: seeds,
    and the folds of a cross-validated dataset of graphs (``data.fold`` in ``space``), which
    the summary averages over."""
    return [
        c
        for c in trials.columns
        if c.startswith(CONFIG_PREFIXES)
        and c not in REPEATS
        and trials[c].map(_label).nunique() > 1
    ]


def summarize(trials: Any) -> Any:
    """Mean and standard deviation over seeds (and folds) per configuration (completed
    trials)."""
    import pandas as pd

    axes = swept_columns(trials) or ["point"]
    keyed = trials.assign(**{c: trials[c].map(_label) for c in axes})
    groups = []
    for key, group in keyed.groupby(axes, sort=False, dropna=False):
        done = group[group["status"] == "completed"]
        key = key if isinstance(key, tuple) else (key,)
        groups.append(
            {
                **dict(zip(axes, key, strict=True)),
                "n_seeds": len(done),
                "n_failed": int((group["status"] == "failed").sum()),
                "acc_mean": done["best_test_acc"].mean(),
                "acc_std": done["best_test_acc"].std(ddof=1) if len(done) > 1 else 0.0,
                "valid_mean": done["best_valid_acc"].mean(),
                "params_prompt": done["params_prompt"].mean(),
                "params_backbone": done["params_backbone"].mean(),
                "avg_bits": done["avg_bits"].mean(),
                "seeds_per_s": done["seeds_per_s"].mean(),
                "wall_s": done["wall_s"].mean(),
            }
        )
    return pd.DataFrame(groups)


def _label(value: Any) -> str:
    """A config cell as table text; a missing value (``None``, NaN) reads ``null``."""
    return (
        "null"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (str(value))
    )


def markdown_summary(summary: Any) -> str:
    """The summary as a Markdown table (accuracy as mean ± std in percent)."""
    axes = [c for c in summary.columns if c.startswith(CONFIG_PREFIXES) or c == "point"]
    header = [*axes, "test acc (%)", "n", "failed", "prompt params", "avg bits", "seeds/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.to_dict("records"):
        acc = f"{100 * row['acc_mean']:.2f} ± {100 * row['acc_std']:.2f}" if row["n_seeds"] else "-"
        cells = [
            *(str(row[a]) for a in axes),
            acc,
            str(row["n_seeds"]),
            str(row["n_failed"]),
            _fmt(row["params_prompt"], "{:.0f}"),
            _fmt(row["avg_bits"], "{:.2f}"),
            _fmt(row["seeds_per_s"], "{:.0f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: Any, pattern: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (pattern.format(value))
    )


def write_report(
    trials: Any, out_dir: str | Path, prefix: str = "", write_trials: bool = True
) -> tuple[dict[str, Path], list[str]]:
    """Write ``trials.parquet`` (unless ``write_trials`` is false), ``summary.md`` and the
    plots into ``out_dir``, each file name starting with ``prefix``.

    Returns:
        The files written by name, and a note for each plot the sweep has no axis for.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if write_trials:
        files["trials"] = out / f"{prefix}{RESULTS_FILE}"
        trials.to_parquet(files["trials"], index=False)
    plots, notes = render_plots(trials, out, prefix)
    files |= plots
    summary = summarize(trials)
    failed = trials[trials["status"] == "failed"]
    text = [
        f"# Sweep {', '.join(sorted(set(trials['sweep'])))}",
        "",
        f"{len(trials)} trials: "
        + ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
        + ". Accuracy: test accuracy at the best validation epoch, mean ± std over seeds.",
        "",
        markdown_summary(summary),
        "",
    ]
    if len(failed):
        text += ["## Failed trials", ""]
        text += [f"- {r.point} seed {r.seed}: {r.error}" for r in failed.itertuples()]
        text.append("")
    text += ["## Plots", ""]
    text += [f"- {name}: {path.name}" for name, path in plots.items()]
    text += [f"- {note}" for note in notes]
    files["summary"] = out / f"{prefix}summary.md"
    files["summary"].write_text("\n".join(text) + "\n")
    return files, notes


def _lorap(kind: str) -> bool:
    return kind in ("lorap", "gpf_lorap")


def render_plots(trials: Any, out_dir: Path, prefix: str = "") -> tuple[dict[str, Path], list[str]]:
    """Accuracy vs rank, accuracy vs bits per scheme, throughput vs workers (PNG).

    A plot whose axis the sweep does not vary is skipped with a note.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = trials[trials["status"] == "completed"]
    swept = set(swept_columns(done)) if len(done) else set()
    files: dict[str, Path] = {}
    notes: list[str] = []

    def plot(frame: Any, name: str, x: str, y: str, series: list[str], labels: tuple) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        others = [c for c in series if c in frame.columns]
        groups = frame.groupby(others, dropna=False) if others else [((), frame)]
        for key, group in groups:
            stats = group.groupby(x)[y].agg(["mean", "std"]).sort_index()
            key = key if isinstance(key, tuple) else (key,)
            label = ", ".join(f"{c.split('.')[-1]}={v}" for c, v in zip(others, key, strict=True))
            style = (
                "-"
                if "prompt.kind" not in others
                else (
                    "-" if _lorap(str(dict(zip(others, key, strict=True))["prompt.kind"])) else "--"
                )
            )
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"].fillna(0),
                marker="o",
                linestyle=style,
                capsize=3,
                label=label or None,
            )
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize=7)
        fig.tight_layout()
        files[name] = out_dir / f"{prefix}{name}.png"
        fig.savefig(files[name], dpi=120)
        plt.close(fig)

    rest = sorted(swept - {"prompt.r"})
    if "prompt.r" in swept:
        plot(done, "accuracy_vs_rank", "prompt.r", "best_test_acc", rest, ("rank r", "test acc"))
    else:
        notes.append("accuracy_vs_rank skipped: the sweep does not vary prompt.r.")
    if len(done) and done["avg_bits"].round(2).nunique() > 1:
        bits = done.assign(bits=done["avg_bits"].round(2))
        bits = bits[bits["quant.scheme"] != "none"]
        series = ["quant.scheme", "prompt.kind"]
        plot(bits, "accuracy_vs_bits", "bits", "best_test_acc", series, ("avg bits", "test acc"))
    else:
        notes.append("accuracy_vs_bits skipped: every completed trial has the same bit width.")
    if "dist.num_workers" in swept:
        plot(
            done,
            "throughput_vs_workers",
            "dist.num_workers",
            "seeds_per_s",
            sorted(swept - {"dist.num_workers"}),
            ("workers", "training seeds / s"),
        )
    else:
        notes.append("throughput_vs_workers skipped: the sweep does not vary dist.num_workers.")
    return files, notes


def report(
    results: str | Path, out_dir: str | Path | None = None, prefix: str = ""
) -> tuple[dict[str, Path], list[str]]:
    """Render the table and plots of an existing results Parquet file (``lorap report``).

    Raises:
        ConfigError: ``results`` is not a readable Parquet file of sweep trials.
    """
    import pandas as pd

    path = Path(results)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise ConfigError(
            f"results file {path} does not exist; give the {RESULTS_FILE} a sweep wrote "
            "(in <experiment dir>/results/)."
        )
    try:
        trials = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ConfigError(f"results file {path} is not a readable Parquet file: {exc}") from None
    missing = {"status", "point", "best_test_acc"} - set(trials.columns)
    if missing:
        raise ConfigError(
            f"results file {path} lacks the columns {sorted(missing)}; is it a sweep's "
            f"{RESULTS_FILE}?"
        )
    out = Path(out_dir) if out_dir is not None else path.parent
    return write_report(trials, out, prefix, write_trials=False)
