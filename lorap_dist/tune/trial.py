"""What runs inside one Tune trial.

Following Ray Train v2, each Tune trial runs :func:`run_trial`, a driver function that
builds the trial's :class:`~lorap_dist.config.ExperimentConfig` and either trains in its own
process (:func:`lorap_dist.train.train`, one Tune report per epoch through
:class:`_EpochReporter`) or, with a ``dist`` section, builds a ``TorchTrainer``
(:func:`lorap_dist.distributed.trainer.build_trainer`) whose workers report each epoch to
Tune through ``TuneReportCallback``. :func:`trial_resources` says what a trial occupies.
"""

from __future__ import annotations

import dataclasses
import os
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray.tune

from lorap_dist.config import ExperimentConfig
from lorap_dist.ray_session import offline_defaults
from lorap_dist.tune.space import experiment_config, point_key, trial_point

if typing.TYPE_CHECKING:
    from lorap_dist.fit import EpochReport

#: Called in the trial's process as ``hook(record)`` each time a trial starts (retries and
#: restores included), ``record`` holding ``trial_id``, ``point``, ``seed``, ``pid`` and
#: ``time``; the seam through which tests count executions
#: (:class:`lorap_dist.testing.tune_log.ExecutionLog`).
TrialStartHook = Callable[[dict[str, Any]], None]


def trial_resources(experiment: ExperimentConfig, cpus_per_trial: float) -> dict[str, float]:
    """What one trial occupies: its own CPUs in-process, else its Ray Train workers'."""
    settings = experiment.dist
    if settings is None:
        return {"CPU": cpus_per_trial}
    resources = {"CPU": settings.num_workers * settings.cpus_per_worker}
    if settings.use_gpu:
        resources["GPU"] = float(settings.num_workers)
    return resources


def driver_resources(config: dict[str, Any], base: dict[str, Any], cpus: float) -> dict:
    """What Tune reserves for the trial with Tune config ``config`` (``with_resources``)."""
    experiment = experiment_config(base, trial_point(config), config["seed"])
    # A distributed trial's driver only waits on its TorchTrainer, whose workers reserve
    # their own resources through Ray Train; reserving a CPU here would starve them.
    return {"CPU": 0} if experiment.dist is not None else {"CPU": cpus}


def run_trial(
    config: dict[str, Any], base: dict[str, Any], on_start: TrialStartHook | None = None
) -> None:
    """Tune's function for one trial: train ``base`` + the trial's point with its seed;
    ``on_start`` (tests only) is told that the trial started.

    Every report carries ``epoch``, ``valid_acc``/``test_acc`` (that epoch),
    ``best_valid_acc``/``best_test_acc`` (the best validation epoch so far),
    ``prompt_trained`` (whether that epoch's model holds trained prompts, ``None`` without
    prompts) and, from the in-process trainer, the parameter counts, ``avg_bits``,
    ``seeds_per_s`` and ``wall_s``.
    """
    point = trial_point(config)
    experiment = experiment_config(base, point, config["seed"])
    context = ray.tune.get_context()
    if on_start is not None:
        on_start(
            {
                "trial_id": context.get_trial_id(),
                "point": point_key(point),
                "seed": config["seed"],
                "pid": os.getpid(),
                "time": time.time(),
            }
        )
    if experiment.dist is None:
        _train_in_process(experiment)
    else:
        _train_distributed(experiment, context.get_trial_name())


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
                # the prompts' warm start: a best epoch before it reports the scheme alone
                "prompt_trained": report.prompts.reported(best, counts["prompt"] > 0),
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
    from ray.tune.integration.ray_train import TuneReportCallback

    from lorap_dist.distributed.trainer import (
        build_trainer,
        controller_polling,
        validate_dataset,
    )

    offline_defaults()
    settings = dataclasses.replace(experiment.dist, name=trial_name)
    validate_dataset(experiment.data.path, settings.num_workers)
    start = time.perf_counter()
    ray.tune.report({"epoch": 0, "best_valid_acc": -1.0, **_static_facts(experiment)})
    trainer = build_trainer(experiment, settings)
    trainer.run_config.callbacks = [*(trainer.run_config.callbacks or []), TuneReportCallback()]
    with controller_polling(settings.num_workers):
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
    from lorap_dist.quant import average_bits

    meta = read_meta(Path(experiment.data.path))
    model = build_model(
        int(meta["num_features"]), int(meta["num_classes"]), experiment.model, experiment.prompt
    )
    experiment.quant.apply(model, num_nodes=int(meta["num_nodes"]))
    counts = parameter_counts(model)
    return {**{f"params_{k}": n for k, n in counts.items()}, "avg_bits": average_bits(model)}
