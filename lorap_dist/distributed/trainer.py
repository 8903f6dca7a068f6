"""Build the Ray Train ``TorchTrainer`` for a distributed run, and run it.

:func:`run_distributed` is what ``lorap train`` calls for a config with a ``dist`` section:
it checks the dataset directory before any worker starts, builds the trainer
(:func:`build_trainer`), runs it, and returns the final numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lorap_dist.config import (
    ConfigError,
    DistConfig,
    ExperimentConfig,
    TrainConfig,
    check_feature_rows,
)
from lorap_dist.fit import untrained_prompts
from lorap_dist.graph.errors import DatasetError
from lorap_dist.locks import LockHeld, try_lock
from lorap_dist.ray_session import offline_defaults
from lorap_dist.tracking import PromptStart, PromptTuning


def validate_dataset(path: str | Path | None, num_workers: int) -> Path:
    """Check the dataset directory before any worker starts.

    Raises:
        DatasetError: the directory is missing, its ``meta.json`` is missing or unreadable or
            of another format version, or its partition count differs from ``num_workers``.
    """
    from lorap_dist.graph.storage import read_meta

    if not path:
        raise DatasetError(
            "distributed training reads a prepared dataset directory: set data.source: dir "
            "and data.path: DIR (create it with `lorap prepare --out DIR ...`)."
        )
    directory = Path(path).expanduser().resolve()
    if not directory.is_dir():
        raise DatasetError(
            f"dataset directory {directory} does not exist; create it with "
            "`lorap prepare --out DIR ...` or fix data.path."
        )
    meta = read_meta(directory)  # names a missing/unreadable meta.json or another version
    parts = int(meta.get("num_parts", -1))
    if parts != num_workers:
        raise DatasetError(
            f"dataset {directory} has num_parts={parts} but dist.num_workers={num_workers}; "
            f"each worker trains one partition: set dist.num_workers: {parts}, or prepare "
            f"the dataset again with {num_workers} parts."
        )
    return directory


class DistributedRunError(RuntimeError):
    """A distributed run failed for good; the message names the last good checkpoint and
    the command that resumes from it."""


#: Called by every worker before each training step as ``hook(rank, epoch, step)``; the
#: seam through which tests kill a worker (:class:`lorap_dist.testing.faults.KillOnce`).
StepHook = Callable[[int, int, int], None]


def worker_config(
    experiment: ExperimentConfig,
    settings: DistConfig,
    resume: str | Path | None = None,
    run_dir: str | Path | None = None,
    step_hook: StepHook | None = None,
) -> dict[str, Any]:
    """The dict every worker receives (``train_loop_per_worker(config)``): plain data, and
    ``step_hook`` (pickled to the workers; ``None`` outside tests)."""
    return {
        "experiment": experiment.to_dict(),
        "dist": _plain(settings),
        "dataset_path": str(Path(experiment.data.path or "").expanduser().resolve()),
        "resume": None if resume is None else str(Path(resume).expanduser().resolve()),
        "run_dir": None if run_dir is None else str(run_dir),
        "step_hook": step_hook,
    }


def run_name(settings: DistConfig) -> str:
    """The run's name under ``dist.storage_path``: ``dist.name``, or one from the clock."""
    return settings.name or time.strftime("lorap-%Y%m%d-%H%M%S")


def _plain(settings: DistConfig) -> dict[str, Any]:
    from lorap_dist.config import to_dict

    return to_dict(settings)


def worker_env(settings: DistConfig) -> dict[str, str]:
    """The environment every worker starts with: one OpenMP thread per CPU it holds, and idle
    OpenMP threads that sleep (``OMP_WAIT_POLICY=PASSIVE``, as the package sets where it is
    imported first; a value set in the driver's environment is passed on instead)."""
    return {
        "OMP_NUM_THREADS": str(int(settings.cpus_per_worker) or 1),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }


#: The environment variable through which Ray Train's controller learns how often to poll the
#: workers (Ray's default 2 s). The controller collects an epoch's report when it polls, and
#: a worker's next report waits until the last one is collected, so a run with epochs
#: shorter than the interval spends the rest of each epoch waiting
#: (``benchmarks/report_interval.py``).
CONTROLLER_POLL_INTERVAL = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"

#: Worker polls a second the controller makes at most under :func:`controller_polling`.
WORKER_POLLS_PER_S = 20.0

#: Ray Train's own interval, which :func:`poll_interval` never exceeds.
RAY_POLL_INTERVAL_S = 2.0


def poll_interval(num_workers: int) -> float:
    """Seconds between the controller's polls for ``num_workers`` workers: 0.1 s for 2,
    growing with the worker count so that the controller makes at most
    :data:`WORKER_POLLS_PER_S` worker polls a second, and never above Ray's 2 s."""
    return min(RAY_POLL_INTERVAL_S, max(1, num_workers) / WORKER_POLLS_PER_S)


@contextlib.contextmanager
def controller_polling(num_workers: int) -> Iterator[None]:
    """Within the block, trainers started in this process poll their ``num_workers``
    workers every :func:`poll_interval` seconds (Ray Train passes the driver's
    :data:`CONTROLLER_POLL_INTERVAL` on to its controller when ``fit`` starts it). A value
    the user has set is kept; the variable is removed again at the end of the block.

    A missed poll is not a failure: the controller keeps waiting on it, and only a worker
    silent for Ray's worker health-check timeout (10 minutes) counts as lost.
    """
    if CONTROLLER_POLL_INTERVAL in os.environ:
        yield
        return
    os.environ[CONTROLLER_POLL_INTERVAL] = f"{poll_interval(num_workers):g}"
    try:
        yield
    finally:
        os.environ.pop(CONTROLLER_POLL_INTERVAL, None)


def build_trainer(
    experiment: ExperimentConfig,
    settings: DistConfig,
    resume: str | Path | None = None,
    name: str | None = None,
    step_hook: StepHook | None = None,
) -> Any:
    """The ``ray.train.torch.TorchTrainer`` for this run (not started)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if experiment.data.graph_level:
        from lorap_dist.distributed.graph_worker import graph_loop_per_worker as loop
    else:
        from lorap_dist.distributed.worker import train_loop_per_worker as loop

    name = name or run_name(settings)
    run_dir = _local_run_dir(settings, name)
    return TorchTrainer(
        loop,
        train_loop_config=worker_config(experiment, settings, resume, run_dir, step_hook),
        torch_config=TorchConfig(backend="nccl" if settings.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=settings.num_workers,
            use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": settings.cpus_per_worker}
            | ({"GPU": 1} if settings.use_gpu else {}),
        ),
        run_config=RunConfig(
            name=name,
            storage_path=settings.storage_uri,
            failure_config=FailureConfig(max_failures=settings.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=settings.keep_checkpoints),
            worker_runtime_env={"env_vars": worker_env(settings)},
        ),
    )


def failure_message(error: BaseException, run_dir: Path | None) -> str:
    """One line: what failed, the last good checkpoint and how to resume from it."""
    from lorap_dist.distributed.checkpoint import latest_good_checkpoint

    cause = " ".join(str(error).split())[:300] or type(error).__name__
    found = None if run_dir is None else latest_good_checkpoint(run_dir)
    if found is None:
        return (
            f"distributed training failed ({type(error).__name__}: {cause}); no checkpoint "
            "was written, so run it again from the start."
        )
    return (
        f"distributed training failed ({type(error).__name__}: {cause}); the last good "
        f"checkpoint is {found}: resume with `lorap train ... --resume {found}` (same config, "
        "another dist.name), or raise dist.max_failures to let Ray restart the workers."
    )


LOCK_FILE = ".lorap-run.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path | None) -> Iterator[None]:
    """Hold ``run_dir`` for this run: a second run with the same ``dist.name`` and storage
    path started while this one lives is refused (Ray Train would interleave the two as
    one run). The lock is an ``flock`` on ``run_dir/.lorap-run.lock``: the system releases
    it when the process ends, however it ends, so a killed run never blocks the next.
    Remote storage (``s3://``) is not locked."""
    if run_dir is None:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        handle = try_lock(run_dir / LOCK_FILE)
    except LockHeld as held:
        raise ConfigError(
            f"another run ({held.holder}) is using {run_dir} now; give this run another "
            "dist.name (a run of the same name and storage path is the continuation of "
            "that one)."
        ) from None
    try:
        yield
    finally:
        handle.close()


def _local_run_dir(settings: DistConfig, name: str) -> Path | None:
    """The run directory when the storage is a local (or mounted) path, else ``None``."""
    if settings.remote_storage:
        return None
    return settings.storage_dir / name


def check_node_level_run(experiment: ExperimentConfig, settings: DistConfig) -> None:
    """What a node-level run needs before any worker starts: a prepared dataset directory
    with one partition per worker, prepared with the configured transform, whose rows
    travel as integer codes when ``dist.feature_rows`` is ``codes``."""
    if experiment.data.source != "dir":
        raise ConfigError(
            f"data.source={experiment.data.source!r}: distributed training reads a prepared "
            "dataset directory; run `lorap prepare` and set data.source: dir, data.path: DIR "
            "(datasets of many graphs, data.source: tu, are read directly)."
        )
    from lorap_dist.train import check_fanout

    check_fanout(experiment)  # the same one-line errors as a single-process run, before Ray
    directory = validate_dataset(experiment.data.path, settings.num_workers)
    from lorap_dist.graph.storage import read_meta
    from lorap_dist.train import check_prepared_transform

    meta = read_meta(directory)
    check_prepared_transform(experiment.data.transform, meta, directory)
    encoding = meta.get("feature_encoding", "fp32")
    if settings.feature_rows == "codes" and settings.exchange_bits is None and encoding != "int8":
        raise ConfigError(
            f"dist.feature_rows='codes' needs rows that travel as integer codes, but "
            f"{directory} stores {encoding} features and dist.exchange_bits is null (rows "
            "are sent as stored); set dist.exchange_bits: 8 or 4, prepare the dataset with "
            "--features int8, or set dist.feature_rows: float."
        )


def check_graph_level_run(experiment: ExperimentConfig) -> ExperimentConfig:
    """Load a dataset of graphs once in the driver before any worker starts: its errors come
    first, and PyG processes its raw files here (the workers then read PyG's cache instead
    of processing them at once). Returns ``experiment`` with ``data.root`` absolute, as the
    workers, started elsewhere, must read it."""
    from lorap_dist.train_graphs import load_graph_set, training_split_check

    graphs = load_graph_set(experiment)
    training_split_check(experiment, graphs)
    data = experiment.to_dict()
    data["data"]["root"] = str(Path(experiment.data.root).expanduser().resolve())
    return ExperimentConfig.from_dict(data)


def run_distributed(
    experiment: ExperimentConfig,
    settings: DistConfig,
    resume: str | Path | None = None,
    *,
    step_hook: StepHook | None = None,
) -> dict[str, Any]:
    """Train ``experiment`` on ``settings.num_workers`` Ray Train workers.

    Args:
        experiment: the run: ``data.source: dir`` with ``data.path`` (node level, one
            partition per worker), or a dataset of many graphs (``data.source: tu``; every
            worker holds it, data parallel over graphs:
            :mod:`lorap_dist.distributed.graph_worker`).
        settings: the ``dist`` section.
        resume: a checkpoint directory, or a run directory whose newest good checkpoint is
            used (damaged newer ones are skipped with a warning).
        step_hook: called by every worker before each training step (tests only:
            :class:`lorap_dist.testing.faults.KillOnce` kills a worker there).

    Returns:
        ``valid_acc``/``test_acc`` (last evaluation), ``best_valid_acc``/``best_test_acc``
        and ``best_epoch`` (0-based) of the best validation epoch, ``seeds_per_s``,
        ``bytes_exchanged``, ``epoch_s`` and ``peak_rss_gib`` (the largest worker's peak
        resident set so far) of the last epoch, ``epochs`` (trained), ``stopped_early``
        (``train.patience`` epochs passed without a better validation score, the rule of
        ``lorap train``), ``steps``, ``checkpoint`` (path of the last checkpoint),
        ``run_dir``, ``prompt_start_epoch`` (the first epoch that trained the prompts),
        ``prompt_trained`` (the best epoch's model holds trained prompts; ``None`` without
        prompts), with ``train.prompt_tuning_epochs`` ``tuning_start_epoch`` (its first
        epoch, 0-based) and ``before_tuning`` (the scheme alone's best when it began:
        ``epoch``, ``valid``, ``test``), and ``warnings`` (each also raised as a
        :class:`UserWarning`: the reported model's prompts never trained, as ``lorap train``
        says it). The last checkpoint holds the best-validation model under ``best_model``.

    Raises:
        DatasetError: the dataset directory is unusable (before any worker starts).
        CheckpointError: ``resume`` holds no usable checkpoint.
        DistributedRunError: training failed after ``settings.max_failures`` restarts; the
            message names the last good checkpoint and how to resume from it.
    """
    check_feature_rows(experiment, settings)  # settings need not be experiment.dist
    experiment = without_unselectable_tuning(experiment, settings)
    if prompt_tuning_epochs(experiment.train, experiment) and settings.eval_every is None:
        raise ConfigError(
            f"train.prompt_tuning_epochs={experiment.train.prompt_tuning_epochs} starts from "
            "the run's best-validation model and keeps the prompt only if it beats it on "
            "validation, but dist.eval_every is null (never evaluate); set dist.eval_every "
            "(e.g. 1), or train.prompt_tuning_epochs: 0."
        )
    if experiment.data.graph_level:
        experiment = check_graph_level_run(experiment)
    else:
        check_node_level_run(experiment, settings)
    if resume is not None:
        from lorap_dist.distributed.worker import resolve_resume_path

        resume = resolve_resume_path(resume)
        check_epochs_left(experiment, resume)
    offline_defaults()
    name = run_name(settings)
    run_dir = _local_run_dir(settings, name)
    with run_lock(run_dir):
        try:
            with controller_polling(settings.num_workers):
                result = build_trainer(experiment, settings, resume, name, step_hook).fit()
            error = result.error
        except Exception as exc:  # Ray Train raises once max_failures restarts are used up
            if type(exc).__module__.split(".")[0] != "ray":
                raise
            error = exc
    if error is not None:
        raise DistributedRunError(failure_message(error, run_dir)) from error
    metrics = dict(result.metrics or {})
    notes = untrained_prompt_notes(experiment, metrics)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return {
        "valid_acc": metrics.get("valid_acc"),
        "test_acc": metrics.get("test_acc"),
        "train_acc": metrics.get("train_acc"),
        "best_valid_acc": metrics.get("best_valid_acc"),
        "best_test_acc": metrics.get("best_test_acc"),
        "best_epoch": metrics.get("best_epoch"),
        "stopped_early": metrics.get("stopped_early"),
        "loss": metrics.get("loss"),
        "seeds_per_s": metrics.get("seeds_per_s"),
        "bytes_exchanged": metrics.get("bytes_exchanged"),
        "epoch_s": metrics.get("epoch_s"),
        "peak_rss_gib": metrics.get("peak_rss_gib"),
        "epochs": metrics.get("epoch"),
        "steps": metrics.get("step"),
        "checkpoint": None if result.checkpoint is None else result.checkpoint.path,
        "run_dir": str(result.path),
        "prompt_start_epoch": metrics.get("prompt_start_epoch"),
        "prompt_trained": metrics.get("prompt_trained"),
        "tuning_start_epoch": metrics.get("tuning_start_epoch"),
        "before_tuning": before_tuning(metrics),
        "warnings": notes,
    }


def prompt_tuning_epochs(train: TrainConfig, experiment: ExperimentConfig) -> int:
    """The epochs of prompt tuning the workers will run: ``train.tuning_epochs``, or ``0``
    for a model without prompts (as :func:`lorap_dist.fit.tuning_epochs` finds from the
    optimizer, which the driver does not build)."""
    return train.tuning_epochs if experiment.prompt.kind != "none" else 0


def check_epochs_left(experiment: ExperimentConfig, checkpoint: Path) -> None:
    """A run resumed from ``checkpoint`` must have epochs left to train, counted as the
    workers will count them (the checkpoint's warm start and prompt tuning kept where
    ``experiment`` leaves them to the default, and its tuning phase if it began); else a
    :class:`~lorap_dist.distributed.checkpoint.CheckpointError` saying what to set,
    before any worker starts (the workers would otherwise train nothing and report
    nothing)."""
    from lorap_dist.distributed.checkpoint import STATE_FILE, CheckpointError
    from lorap_dist.distributed.resume import keep_prompt_warmup

    saved = json.loads((checkpoint / STATE_FILE).read_text())
    saved_tuning = saved["extra"].get("tuning", {})
    train = dataclasses.replace(experiment.train)
    keep_prompt_warmup(train, saved["config"], checkpoint, saved_tuning)
    tuning = PromptTuning(prompt_tuning_epochs(train, experiment))
    tuning.load_state_dict(saved_tuning)
    end = tuning.end(train.epochs)
    if saved["epoch"] < end:
        return
    if tuning.active:
        what = (
            f"its prompt tuning, from epoch {tuning.start}, ends there with "
            f"train.prompt_tuning_epochs={tuning.epochs}; raise that to tune the prompts longer"
        )
    else:
        what = f"train.epochs={train.epochs} ends there; raise it to train on"
    raise CheckpointError(
        f"checkpoint {checkpoint} was taken after {saved['epoch']} epochs, and this run "
        f"would end after {end}: {what}, or start a new run without --resume."
    )


def without_unselectable_tuning(
    experiment: ExperimentConfig, settings: DistConfig
) -> ExperimentConfig:
    """A run that never evaluates (``dist.eval_every: null``) has no best model to tune
    the prompts on and no validation score to keep them by: where ``experiment`` leaves
    ``train.prompt_tuning_epochs`` to the default, it trains them together with the
    backbone (``0``) instead. Returns a copy; an explicit value is kept (and refused)."""
    if settings.eval_every is not None or experiment.train.prompt_tuning_epochs is not None:
        return experiment
    data = experiment.to_dict()
    data["train"]["prompt_tuning_epochs"] = 0
    return ExperimentConfig.from_dict(data)


def before_tuning(metrics: dict[str, Any]) -> dict[str, float] | None:
    """The scheme alone's best when prompt tuning began (``epoch``, ``valid``, ``test``, as
    :class:`~lorap_dist.fit.TrainResult` has it), from the last epoch's report; ``None``
    without prompt tuning."""
    if metrics.get("tuning_start_epoch") is None:
        return None
    return {key: metrics[f"before_tuning_{key}"] for key in ("epoch", "valid", "test")}


def untrained_prompt_notes(experiment: ExperimentConfig, metrics: dict[str, Any]) -> list[str]:
    """``lorap train``'s note when the reported (best-validation) model's prompts never
    trained (:func:`lorap_dist.fit.untrained_prompts`), from the last epoch's report; none
    for a model without prompts or a run that never evaluated."""
    best_epoch = metrics.get("best_epoch")
    if not metrics.get("prompted") or best_epoch is None or best_epoch < 0:
        return []
    prompts = PromptStart(metrics.get("prompt_start_epoch"), bool(metrics.get("prompts_searched")))
    return untrained_prompts(experiment.train, best_epoch, prompts, int(metrics["epoch"]))
