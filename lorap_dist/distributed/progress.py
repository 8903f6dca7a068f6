"""Where one rank's run stands, and what follows each of its epochs.

Both worker loops (node level, :mod:`lorap_dist.distributed.worker`; graph level,
:mod:`lorap_dist.distributed.graph_worker`) keep one :class:`RankProgress`: the
best-validation epoch and its model, the first epoch that trained the prompts, and prompt
tuning's phase (``train.prompt_tuning_epochs``). Every score it is given is all-reduced over
the ranks, so every rank decides alike when the run stops early and when prompt tuning
begins; it reports each epoch to Ray Train, and its trackers and the best model travel in
the checkpoints rank 0 writes, so a resumed run decides as the uninterrupted one would. The
rules are ``lorap train``'s (:func:`lorap_dist.fit.fit`).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist
from torch import Tensor, nn

from lorap_dist.config import ExperimentConfig
from lorap_dist.distributed.checkpoint import (
    TrainingState,
    capture_rng,
    checkpoint_name,
    save_checkpoint,
)
from lorap_dist.fit import begin_prompt_tuning, schedule_epoch, stops_early, tuning_epochs
from lorap_dist.optim import prompt_rate
from lorap_dist.quant import end_epoch
from lorap_dist.tracking import BestEpoch, PromptStart, PromptTuning


@dataclass
class Rank:
    """What a rank reports with: its rank and the world size, the run's experiment (as
    resumed), the dataset facts its checkpoints record, and ``dist.checkpoint_every``."""

    rank: int
    world_size: int
    experiment: ExperimentConfig
    facts: dict[str, int]
    checkpoint_every: int


class RankProgress:
    """One rank's record of its run (module docstring).

    Args:
        rank: who reports, and with what (:class:`Rank`); ``rank.experiment.train`` is the
            run's ``train`` section, as resumed (the checkpoint's warm start and prompt
            tuning kept where it leaves them to the default).
        optimizer: the run's optimizer; without a prompt group there is no prompt tuning.
        higher_is_better: ``False`` when the validation score is an error (regression).
    """

    def __init__(
        self, rank: Rank, optimizer: torch.optim.Optimizer, higher_is_better: bool = True
    ) -> None:
        self.rank, self.train = rank, rank.experiment.train
        self.prompted = prompt_rate(optimizer) is not None
        self.best = BestEpoch(patience=self.train.patience, higher_is_better=higher_is_better)
        self.prompts = PromptStart()
        self.tuning = PromptTuning(tuning_epochs(self.train, optimizer))
        self.best_state: dict[str, Tensor] = {}  # the best epoch's model, once evaluated

    @property
    def trackers(self) -> dict[str, Any]:
        """What a checkpoint keeps by name (each has ``state_dict``/``load_state_dict``)."""
        return {"best": self.best, "prompts": self.prompts, "tuning": self.tuning}

    def epochs(self, start: int) -> Iterator[int]:
        """The epochs from ``start`` (0-based): up to ``train.epochs``, then prompt
        tuning's, whose end is known once it begins."""
        epoch = start
        while epoch < self.tuning.end(self.train.epochs):
            yield epoch
            epoch += 1

    def begin_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Set epoch ``epoch``'s learning rates (:func:`~lorap_dist.fit.schedule_epoch`)."""
        schedule_epoch(model, optimizer, epoch, self.train, self.prompts, self.tuning.active)

    def model_changed(self, model: nn.Module, epoch: int) -> bool:
        """After epoch ``epoch``'s steps: whether a quantization schedule changed the model
        (MixQ froze its bit widths; never inside prompt tuning), so the best is forgotten
        and the caller sets DDP up again."""
        if self.tuning.active or not end_epoch(model, epoch, self.train.epochs):
            return False
        self.best.restart()
        return True

    def evaluation_due(self, epoch: int, every: int | None) -> bool:
        """Whether the evaluation runs after epoch ``epoch`` (:func:`evaluation_due`; the
        last is the run's, or prompt tuning's once it began)."""
        return evaluation_due(epoch, self.is_last(epoch), every)

    def is_last(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (0-based) is the run's last: ``train.epochs``' last, or
        prompt tuning's once it began."""
        return epoch + 1 == self.tuning.end(self.train.epochs)

    def scored(self, model: nn.Module, epoch: int, metrics: dict[str, Any]) -> None:
        """Record epoch ``epoch``'s all-reduced ``valid_acc`` and ``test_acc``, keeping
        ``model``'s state when it is the new best (its buffers are rank 0's, broadcast by
        the evaluation, so every rank keeps the same)."""
        if self.best.update(epoch, metrics["valid_acc"], metrics["test_acc"]):
            self.best_state = copy.deepcopy(model.state_dict())

    def close_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        metrics: dict[str, Any],
        epoch: int,
        evaluated: bool,
    ) -> tuple[bool, bool]:
        """After epoch ``epoch`` (and its evaluation, if ``evaluated``): decide whether the
        run stops early (:func:`stop_early`) and whether prompt
        tuning begins, when the run is over (its last epoch, or stopped early) and the config
        asks for it (``model`` then holds the best model again with its backbone frozen,
        :func:`~lorap_dist.fit.begin_prompt_tuning`, and the run goes on); then report the
        epoch, ``metrics`` with :meth:`metrics`, and write a checkpoint when one is due (the
        last epoch, an early stop, the start of prompt tuning, or every
        ``dist.checkpoint_every``). Returns ``(stop, began)``; a collective."""
        last = self.is_last(epoch)
        stop = not last and stop_early(model, self.best, self.tuning, epoch, evaluated)
        began = self.tuning.due(last or stop)
        if began:
            self.tuning.begin(epoch, self.best)
            begin_prompt_tuning(model, optimizer, self.best_state)
        stop = stop and not began
        due = last or stop or began or (epoch + 1) % self.rank.checkpoint_every == 0
        self.report(metrics | self.metrics(stop), due, model, optimizer)
        return stop, began

    def report(
        self,
        metrics: dict[str, Any],
        checkpoint: bool,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
    ) -> None:
        """Report the epoch (``metrics["epoch"]`` done, ``metrics["step"]`` steps) from every
        rank; with ``checkpoint``, rank 0 also writes the :class:`TrainingState`, with every
        rank's RNG streams, the trackers saved under their keys and the best model."""
        if not checkpoint:
            ray.train.report(metrics)
            return
        rng_states: list[Any] = [None] * self.rank.world_size
        dist.all_gather_object(rng_states, capture_rng())
        state = TrainingState(
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            config=self.rank.experiment.to_dict(),
            epoch=metrics["epoch"],
            step=metrics["step"],
            rng=rng_states,
            dataset=self.rank.facts,
            extra={key: tracker.state_dict() for key, tracker in self.trackers.items()},
            best_model=self.best_state,
        )
        report_with_checkpoint(metrics, state, self.rank.rank)

    def metrics(self, stopped_early: bool) -> dict[str, Any]:
        """An epoch report's view of the run so far: the best-validation epoch
        (``best_epoch`` 0-based, ``-1`` before any evaluation; ``best_valid_acc``,
        ``best_test_acc``), whether the run stops early here, the prompts' start
        (``prompted``; ``prompt_start_epoch``, 0-based, ``None`` before any epoch trained
        them; ``prompts_searched``, a bit-width search ran; ``prompt_trained``, the best
        epoch's model holds trained prompts, ``None`` without prompts or before any
        evaluation), from which the driver says when the reported model's prompts never
        trained, and prompt tuning (``tuning_start_epoch``, 0-based, and the scheme alone's
        best when it began, ``before_tuning_epoch``, ``_valid``, ``_test``; ``None``
        before the phase)."""
        best, before = self.best, self.tuning.before or {}
        return {
            "best_valid_acc": best.valid,
            "best_test_acc": best.test,
            "best_epoch": best.epoch,
            "stopped_early": stopped_early,
            "prompted": self.prompted,
            "prompt_start_epoch": self.prompts.epoch,
            "prompts_searched": self.prompts.searched,
            "prompt_trained": self.prompts.reported(best, self.prompted),
            "tuning_start_epoch": self.tuning.start,
        } | {f"before_tuning_{key}": before.get(key) for key in ("epoch", "valid", "test")}


def evaluation_due(epoch: int, last: bool, every: int | None) -> bool:
    """Whether the full evaluation runs after epoch ``epoch`` (0-based): ``dist.eval_every``
    epochs apart and after the last, ``0`` only after the last, ``None`` never."""
    return every is not None and (last or (every > 0 and (epoch + 1) % every == 0))


def stop_early(
    model: nn.Module, best: BestEpoch, tuning: PromptTuning, epoch: int, evaluated: bool
) -> bool:
    """Whether the run stops after epoch ``epoch``: the rule of ``lorap train``
    (:func:`~lorap_dist.fit.stops_early`), only after an evaluation. Every rank decides
    alike: ``best`` holds scores all-reduced over the ranks."""
    return evaluated and stops_early(model, best, tuning, epoch)


def report_with_checkpoint(metrics: dict[str, Any], state: TrainingState, rank: int) -> None:
    """Ray Train's report of an epoch with a checkpoint: rank 0 writes ``state`` and hands
    it over, the other ranks report under the same checkpoint name."""
    name = checkpoint_name(state.epoch)
    if rank != 0:
        ray.train.report(metrics, checkpoint_dir_name=name)
        return
    with tempfile.TemporaryDirectory(prefix="lorap-ckpt-") as tmp:
        path = save_checkpoint(state, Path(tmp) / name)
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(path)),
            checkpoint_dir_name=name,
        )
