"""The sweep driver: runs (or resumes) a sweep on the Ray cluster and writes its results.

:func:`run_sweep` hands Tune the sweep's search space (:func:`~lorap_dist.tune.space.param_space`)
with its seeded search algorithm, one :func:`~lorap_dist.tune.trial.run_trial` per trial and,
with ``asha``, an ``ASHAScheduler``. A trial reserves ``cpus_per_trial`` CPUs when it trains
in-process; a distributed trial's driver reserves nothing and its workers reserve
``num_workers x (cpus_per_worker [+ 1 GPU])`` through Ray Train, so the driver caps
concurrency at ``floor(available / per trial)`` (at least 1).

A failing trial is retried ``max_failures`` times, then recorded with its error while the
other trials go on. Tune keeps the sweep's state in the experiment directory; running the
same sweep again restores it (``Tuner.restore``): finished trials are kept, unfinished ones
run, errored ones run again only when asked (``restart_errored``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.tune
import yaml
from ray.tune.schedulers import ASHAScheduler

from lorap_dist.config import ConfigError
from lorap_dist.ray_session import RAY_ENV, offline_defaults
from lorap_dist.tune.report import trial_table, write_report
from lorap_dist.tune.space import (
    SweepConfig,
    experiment_config,
    num_samples,
    param_space,
    search_algorithm,
)
from lorap_dist.tune.trial import TrialStartHook, driver_resources, run_trial, trial_resources

SWEEP_COPY = "sweep.yaml"  # the sweep as run, next to Tune's state: a resume must match it


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
        per_trial: each trial's resources (:func:`~lorap_dist.tune.trial.trial_resources`).
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
    on_trial_start: TrialStartHook | None = None,
) -> SweepOutcome:
    """Run (or resume) ``sweep`` on the Ray cluster and write its results.

    Args:
        sweep: the sweep (:func:`~lorap_dist.tune.space.load_sweep`).
        resume: ``None`` restores the experiment directory when it holds a sweep, else starts
            one; ``True`` requires a sweep to restore; ``False`` requires none.
        restart_errored: on restore, also run the trials that failed, from scratch.
        out_dir: where the Parquet file, table and plots go (default
            ``<experiment dir>/results``).
        verbose: Tune's console verbosity (0 to 3).
        on_trial_start: called in the trial's process each time a trial starts (tests only:
            :class:`lorap_dist.testing.tune_log.ExecutionLog` counts executions).

    Raises:
        ConfigError: resuming asks for a directory that holds no sweep, or holds another one.
    """
    # 1. The cluster, and whether the experiment directory holds this sweep to resume.
    offline_defaults()
    experiment_dir = sweep.experiment_dir
    restorable = ray.tune.Tuner.can_restore(str(experiment_dir))
    _check_resume(sweep, experiment_dir, restorable, resume)
    if not ray.is_initialized():
        ray.init(runtime_env={"env_vars": dict(RAY_ENV)})  # Ray's own choice of cluster

    # 2. One trainable for every trial, with the resources its configuration needs.
    reserve = functools.partial(driver_resources, base=sweep.base, cpus=sweep.cpus_per_trial)
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(run_trial, base=sweep.base, on_start=on_trial_start), reserve
    )

    # 3. Restore the saved sweep, or start it: Tune's search space and search algorithm,
    #    concurrency from the cluster's free resources, ASHA when asked.
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
        points = sweep.points()
        demand = [
            trial_resources(experiment_config(sweep.base, p, sweep.seeds[0]), sweep.cpus_per_trial)
            for p in points
        ]
        _check_fits(demand, ray.cluster_resources())
        concurrency = max_concurrent_trials(
            ray.available_resources(), demand, sweep.max_concurrent_trials
        )
        tuner = ray.tune.Tuner(
            trainable,
            param_space=param_space(sweep),
            tune_config=ray.tune.TuneConfig(
                search_alg=search_algorithm(sweep, max_concurrent=concurrency),
                num_samples=num_samples(sweep),
                scheduler=_asha(sweep, points),
                trial_dirname_creator=_trial_dirname,
            ),
            run_config=ray.tune.RunConfig(
                name=sweep.name,
                storage_path=str(experiment_dir.parent),
                failure_config=ray.tune.FailureConfig(max_failures=sweep.max_failures),
                verbose=verbose,
            ),
        )

    # 4. Run, then one table row per trial, the summary and the plots.
    grid = tuner.fit()
    trials = trial_table(grid, sweep)
    out = Path(out_dir) if out_dir is not None else experiment_dir / "results"
    files, notes = write_report(trials, out)
    return SweepOutcome(trials=trials, experiment_dir=experiment_dir, files=files, notes=notes)


def _asha(sweep: SweepConfig, points: list[dict[str, Any]]) -> ASHAScheduler | None:
    """The sweep's ASHA scheduler over epochs, up to its longest configuration's."""
    if sweep.asha is None:
        return None
    epochs = max(experiment_config(sweep.base, p, 0).train.epochs for p in points)
    return ASHAScheduler(
        time_attr="epoch",
        metric="best_valid_acc",
        mode="max",
        max_t=epochs,
        grace_period=min(sweep.asha.grace_period, epochs),
        reduction_factor=sweep.asha.reduction_factor,
        brackets=sweep.asha.brackets,
    )


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
