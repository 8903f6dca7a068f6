"""Which epoch a run reports, and when it stops: one rule for every training loop.

``lorap train`` (:mod:`lorap_dist.train`), the distributed worker and the Tune reporter all
report the model of the epoch with the best validation accuracy and stop early on the same
rule, through one :class:`BestEpoch`:

- an epoch is the new best when its validation accuracy is strictly higher (its validation
  error strictly lower, for a regression's mean absolute error);
- when a quantization schedule changes the model (MixQ freezing its bit widths),
  :meth:`BestEpoch.restart` forgets the best, so the reported model is the final one;
- a run stops once ``patience`` epochs have passed without a new best, but never while a
  quantization schedule is still to change the model;
- its prompt-tuning phase stops on the same patience, counted from the phase's start until
  a tuned epoch beats the scheme's best (:meth:`PromptTuning.should_stop`).

Beside it, :class:`PromptStart` records the first epoch that trained the prompts, so every
loop can say when the reported model's prompts never trained
(:func:`lorap_dist.fit.untrained_prompts`), and :class:`PromptTuning` where the run's
prompt-tuning phase (``train.prompt_tuning_epochs``) begins and ends.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class BestEpoch:
    """The best-validation epoch so far and the early-stopping rule (module docstring).

    Args:
        patience: stop after this many epochs without a new best; ``0`` never stops early.
        valid: validation accuracy of the best epoch (``-1`` before any).
        test: test accuracy of the best epoch.
        epoch: the best epoch, 0-based (``-1`` before any).
        higher_is_better: ``False`` for a validation error (regression's MAE).
    """

    patience: int = 0
    valid: float = -1.0
    test: float = math.nan
    epoch: int = -1
    higher_is_better: bool = True

    def update(self, epoch: int, valid: float, test: float) -> bool:
        """Record epoch ``epoch``'s accuracies; ``True`` when it is the new best."""
        if self.higher_is_better:
            better = valid > self.valid
        else:  # an error: the first finite one is the best so far
            better = valid < self.valid or (self.epoch < 0 and math.isfinite(valid))
        if better:
            self.valid, self.test, self.epoch = valid, test, epoch
            return True
        return False

    def restart(self) -> None:
        """Forget the best: the model changed (e.g. MixQ froze), earlier epochs do not count."""
        self.valid, self.test, self.epoch = -1.0, math.nan, -1

    def should_stop(self, epoch: int, settled: bool = True) -> bool:
        """Whether training stops after epoch ``epoch``: patience has run out since the best
        and no quantization schedule is still to change the model (``settled``)."""
        return bool(self.patience) and settled and epoch - self.epoch >= self.patience

    def state_dict(self) -> dict[str, Any]:
        state = asdict(self)
        del state["higher_is_better"]  # configured, like patience
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (``patience`` and ``higher_is_better`` stay as
        configured)."""
        self.valid = float(state.get("valid", -1.0))
        self.test = float(state.get("test", math.nan))
        self.epoch = int(state.get("epoch", -1))


@dataclass
class PromptStart:
    """The first epoch whose learning rate moved the prompts, and whether a bit-width
    search (MixQ's) ran during the run; both survive a checkpoint.

    Args:
        epoch: the first epoch that trained the prompts, 0-based (``None`` before any).
        searched: a bit-width search ran in some epoch so far.
    """

    epoch: int | None = None
    searched: bool = False

    def record(self, epoch: int, prompts_train: bool, searching: bool) -> None:
        """Note epoch ``epoch``: whether its schedule trains the prompts and whether a
        bit-width search is still running in it."""
        self.searched = self.searched or searching
        if self.epoch is None and prompts_train:
            self.epoch = epoch

    def trained_by(self, epoch: int) -> bool:
        """Whether the model after epoch ``epoch`` (0-based) holds trained prompts: that
        epoch is the first that trained them or a later one."""
        return self.epoch is not None and epoch >= self.epoch

    def reported(self, best: BestEpoch, prompted: bool) -> bool | None:
        """Whether the reported (best-validation) model holds trained prompts; ``None`` for
        a model without prompts or before any evaluation."""
        return self.trained_by(best.epoch) if prompted and best.epoch >= 0 else None

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (an older checkpoint without it: nothing yet)."""
        epoch = state.get("epoch")
        self.epoch = None if epoch is None else int(epoch)
        self.searched = bool(state.get("searched", False))


@dataclass
class PromptTuning:
    """The prompt-tuning phase of a run (``train.prompt_tuning_epochs``): after the run's
    last epoch, or its early stop, only the prompts train on its best model for ``epochs``
    more epochs, the epoch numbers carrying on, or fewer when the run's patience runs out
    first (:meth:`should_stop`). It survives a checkpoint, so a run resumed
    inside the phase ends where the uninterrupted one does.

    Args:
        epochs: epochs of prompt tuning (``0``: none, as for a model without prompts).
        start: the first tuning epoch, 0-based (``None`` before the phase began).
        before: the scheme alone's best when the phase began (``epoch``, ``valid``,
            ``test``): the run's own comparison without the prompt.
    """

    epochs: int = 0
    start: int | None = None
    before: dict[str, float] | None = None

    @property
    def active(self) -> bool:
        """Whether the phase has begun: only the prompts train."""
        return self.start is not None

    def end(self, run_epochs: int) -> int:
        """The epoch count the run ends at: ``run_epochs`` (``train.epochs``) before the
        phase, its start plus ``epochs`` once it began."""
        return run_epochs if self.start is None else self.start + self.epochs

    def due(self, run_over: bool) -> bool:
        """Whether the phase begins after this epoch: the run is over (its last epoch, or
        stopped early) and the phase is configured and has not begun."""
        return run_over and self.epochs > 0 and self.start is None

    def should_stop(self, epoch: int, best: BestEpoch) -> bool:
        """Whether the phase stops after epoch ``epoch``: ``best.patience`` of its epochs
        have passed without a new best, counted from its start while the best is still the
        scheme's (so a long phase whose prompt does not win ends early, and one shorter
        than the patience always runs out). ``False`` before the phase."""
        if self.start is None or not best.patience:
            return False
        return epoch - max(best.epoch, self.start - 1) >= best.patience

    def begin(self, epoch: int, best: BestEpoch) -> None:
        """Begin the phase after epoch ``epoch`` (0-based), recording ``best``."""
        self.start = epoch + 1
        self.before = {"epoch": best.epoch, "valid": best.valid, "test": best.test}

    def state_dict(self) -> dict[str, Any]:
        """The phase's state; ``epochs`` rides along for a resumed run that leaves
        ``train.prompt_tuning_epochs`` to the default
        (:func:`~lorap_dist.distributed.resume.saved_prompt_tuning`)."""
        return {"epochs": self.epochs, "start": self.start, "before": self.before}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (``epochs`` stays as configured; an older
        checkpoint without ``start``: the phase has not begun)."""
        start = state.get("start")
        self.start = None if start is None else int(start)
        self.before = state.get("before")
