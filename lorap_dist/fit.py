"""The epoch loop every single-process run shares, node level and graph level alike.

:func:`fit` trains a built model with a *runner* that knows the data: it steps the
optimizer over an epoch (``runner.train_epoch``), scores the splits (``runner.evaluate``)
and says whether a higher score is better. Around that it keeps the rules every run follows:
the learning-rate schedule, the best-validation epoch and early stopping
(:class:`~lorap_dist.tracking.BestEpoch`), the quantization schedules (MixQ's freeze), the
``on_epoch`` hook the Tune reporter uses, and the warnings for a diverging or stalled run.
With ``train.prompt_tuning_epochs`` the run is followed by prompt tuning: the best model is
restored, its backbone frozen (:func:`freeze_backbone`), and only the prompts train, the
same best-epoch rule deciding whether the prompted model is the one reported.
:mod:`lorap_dist.train` (one graph) and :mod:`lorap_dist.train_graphs` (many graphs)
supply the runners.
"""

from __future__ import annotations

import copy
import math
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lorap_dist.config import ConfigError, ExperimentConfig, TrainConfig
from lorap_dist.nn import parameter_counts
from lorap_dist.optim import build_optimizer, prompt_rate, schedule_lr
from lorap_dist.prompt.gpf import GPFPlus
from lorap_dist.prompt.lorap import LoRAP
from lorap_dist.quant import (
    average_bits,
    budget_overruns,
    collapsed_points,
    end_epoch,
    quantization_settled,
)
from lorap_dist.tracking import BestEpoch, PromptStart, PromptTuning


@dataclass
class TrainResult:
    """What a run reports.

    ``valid_acc`` and ``test_acc`` are those of the epoch with the best validation accuracy
    (whose weights the returned model holds). ``metric`` names what the ``*_acc`` fields
    hold: ``accuracy`` (fractions), or ``mae`` (mean absolute error; graph regression, the
    best epoch having the lowest validation error). ``warnings`` lists what went wrong without
    stopping the run (a learned bit width above its budget, a diverging first epoch, a loss
    that never fell below guessing, a reported model whose prompts had not trained yet);
    each is also raised as a :class:`UserWarning`. ``prompt_start_epoch`` is the first epoch
    the prompts trained in (``train.prompt_warmup`` and MixQ's search hold them still
    before it), ``None`` without prompts or when they never trained: a ``best_epoch`` below
    it reports the model without a trained prompt. ``before_tuning`` is, with
    ``train.prompt_tuning_epochs``, the scheme alone's best epoch when prompt tuning began
    (``epoch``, ``valid``, ``test``): the run's own comparison without the prompt.
    """

    train_acc: float
    valid_acc: float
    test_acc: float
    best_epoch: int
    epochs_run: int
    wall_s: float
    params: dict[str, int]
    avg_bits: float | None
    history: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    metric: str = "accuracy"
    prompt_start_epoch: int | None = None
    before_tuning: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A first epoch whose loss exceeds this many times ln(classes) (uniform guessing) is diverging.
BLOWUP = 20.0
# A run of at least STALL_EPOCHS whose training loss never fell below STALL x ln(classes)
# and whose training accuracy never beat guessing (1 / classes) by STALL_MARGIN did not learn
# (e.g. A2Q INT4 on CiteSeer before its step reset: the loss stayed at ln 6 and the accuracy
# at chance while every range was non-zero). The accuracy test matters: a quantized model
# can rank the classes right with logits too flat to lower the loss (67% on CiteSeer with a
# loss of 1.68 > 0.9 ln 6).
STALL, STALL_EPOCHS, STALL_MARGIN = 0.9, 20, 0.1


def resolve_device(spec: str) -> torch.device:
    """``train.device`` as a :class:`torch.device`; ``auto`` is the first CUDA device when
    PyTorch sees one, else the CPU. A CUDA device this machine lacks is a
    :class:`~lorap_dist.config.ConfigError`."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={spec!r}, but PyTorch {torch.__version__} sees no CUDA device on "
            "this machine; use train.device: cpu (or auto, which picks CUDA when present)."
        )
    count = torch.cuda.device_count()
    if (device.index or 0) >= count:
        raise ConfigError(
            f"train.device={spec!r}, but this machine has {count} CUDA device(s) "
            f"(cuda:0 .. cuda:{count - 1})."
        )
    return torch.device("cuda", device.index or 0)


@dataclass
class EpochReport:
    """What :func:`train` hands its ``on_epoch`` hook after every epoch.

    Args:
        row: the epoch's history row (``epoch``, ``loss``, ``train``, ``valid``, ``test``).
        best: the best-validation epoch so far (after this epoch's update).
        last: whether training ends after this epoch (its last, or stopped early).
        prompts: the first epoch that trained the prompts so far.
    """

    row: dict[str, float]
    best: BestEpoch
    last: bool
    prompts: PromptStart = field(default_factory=PromptStart)


def fit(
    config: ExperimentConfig,
    model: nn.Module,
    runner: Any,
    num_classes: int | None,
    progress: bool,
    on_epoch: Callable[[EpochReport, nn.Module], None] | None,
    start: float,
) -> tuple[TrainResult, nn.Module]:
    """Steps 3 to 5 of the module docstring for any ``runner`` (an object with
    ``train_epoch(model, optimizer, epoch) -> loss``, ``evaluate(model, final=False) ->
    {train, valid, test}`` and ``higher_is_better``): the node-level runners here and the
    graph-level one of :mod:`lorap_dist.train_graphs`. ``num_classes`` (``None`` for
    regression) sizes the checks for a diverging or stalled run."""
    optimizer = build_optimizer(model, config.train)
    best = BestEpoch(patience=config.train.patience, higher_is_better=runner.higher_is_better)
    best_state = copy.deepcopy(model.state_dict())
    notes: list[str] = []
    history: list[dict[str, float]] = []
    # Prompt tuning: after the run, only the prompts train on its best model.
    tuning = PromptTuning(tuning_epochs(config.train, optimizer))
    bar = tqdm(
        total=config.train.epochs + tuning.epochs, desc="train", unit="epoch", disable=not progress
    )
    epoch, prompts = -1, PromptStart()
    while epoch + 1 < tuning.end(config.train.epochs):
        epoch += 1
        # 3. one epoch of training
        schedule_epoch(model, optimizer, epoch, config.train, prompts, tuning.active)
        loss = runner.train_epoch(model, optimizer, epoch)
        if epoch == 0 and num_classes is not None:
            notes += diverging(loss, num_classes)
        if not tuning.active and end_epoch(model, epoch, config.train.epochs):
            best.restart()  # e.g. MixQ froze its bit widths: a different model now
        # 4. validation, best state, early stop
        accs = runner.evaluate(model)
        history.append({"epoch": epoch, "loss": loss, **accs})
        if best.update(epoch, accs["valid"], accs["test"]):
            best_state = copy.deepcopy(model.state_dict())
        stop = stops_early(model, best, tuning, epoch)
        last = stop or epoch + 1 == tuning.end(config.train.epochs)
        start_tuning = tuning.due(last)
        if on_epoch is not None:
            on_epoch(EpochReport(history[-1], best, last and not start_tuning, prompts), model)
        bar.update()
        bar.set_postfix(loss=f"{loss:.3f}", valid=f"{accs['valid']:.3f}", best=f"{best.valid:.3f}")
        if start_tuning:  # the scheme's best model, its prompts still untrained
            tuning.begin(epoch, best)
            begin_prompt_tuning(model, optimizer, best_state)
        elif stop:
            break
    bar.close()
    if tuning.active:
        thaw_backbone(model)
    # 5. report the best epoch
    model.load_state_dict(best_state)
    accs = runner.evaluate(model, final=True)
    if num_classes is not None:
        notes += stalled(history, num_classes)
    notes += budget_overruns(model) + collapsed_points(model)
    if prompt_rate(optimizer) is not None:
        notes += untrained_prompts(config.train, best.epoch, prompts, epoch + 1)
    for note in notes:
        warnings.warn(note, stacklevel=3)
    result = TrainResult(
        train_acc=accs["train"],
        valid_acc=accs["valid"],
        test_acc=accs["test"],
        best_epoch=best.epoch,
        epochs_run=epoch + 1,
        wall_s=time.perf_counter() - start,
        params=parameter_counts(model),
        avg_bits=average_bits(model),
        history=history,
        warnings=notes,
        metric="accuracy" if runner.higher_is_better else "mae",
        prompt_start_epoch=prompts.epoch,
        before_tuning=tuning.before,
    )
    return result, model


def schedule_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    train: TrainConfig,
    prompts: PromptStart,
    tuning: bool = False,
) -> None:
    """Every training loop's first step of epoch ``epoch``: set the learning rates
    (:func:`~lorap_dist.optim.schedule_lr`, told whether a scheme's search still runs and
    whether the epoch is one of prompt tuning's) and record in ``prompts`` whether they train
    the prompts."""
    searching = not quantization_settled(model)
    schedule_lr(optimizer, epoch, train, searching=searching, tuning=tuning)
    prompts.record(epoch, bool(prompt_rate(optimizer)), searching)


def stops_early(model: nn.Module, best: BestEpoch, tuning: PromptTuning, epoch: int) -> bool:
    """Every loop's early stop after epoch ``epoch``: inside prompt tuning on the phase's
    patience (:meth:`PromptTuning.should_stop`), else on the run's
    (:meth:`BestEpoch.should_stop`), never while a quantization schedule (MixQ's freeze) is
    still to change the model."""
    if tuning.active:
        return tuning.should_stop(epoch, best)
    return best.should_stop(epoch, quantization_settled(model))


def tuning_epochs(train: TrainConfig, optimizer: torch.optim.Optimizer) -> int:
    """Epochs of prompt tuning after the run: ``train.tuning_epochs`` (resolved from
    ``train.prompt_tuning_epochs``), or ``0`` for a model without prompts."""
    return train.tuning_epochs if prompt_rate(optimizer) is not None else 0


def begin_prompt_tuning(
    model: nn.Module, optimizer: torch.optim.Optimizer, best_state: dict[str, Any]
) -> None:
    """Every loop's switch to prompt tuning: the scheme's best model (``best_state``, its
    prompts still untrained) back in ``model``, the prompts' Adam moments dropped and the
    backbone frozen."""
    model.load_state_dict(best_state)
    forget_prompt_moments(optimizer)
    freeze_backbone(model)


def freeze_backbone(model: nn.Module) -> None:
    """From here on ``model.train()`` leaves every module but the prompts in evaluation
    mode: prompt tuning trains the prompts on the model that evaluation runs (no dropout, no
    Degree-Quant protection, batch norm on its running statistics, and no quantization
    range or A2Q step moving), so nothing but the prompts changes what the model computes.
    :func:`thaw_backbone` undoes it."""

    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        nn.Module.train(self, False)
        for module in self.modules():
            if isinstance(module, (LoRAP, GPFPlus)):
                module.train(mode)
        return self

    model.train = types.MethodType(train, model)  # type: ignore[method-assign]


def thaw_backbone(model: nn.Module) -> None:
    """Undo :func:`freeze_backbone`: ``model.train()`` is the module's own again."""
    model.__dict__.pop("train", None)


def forget_prompt_moments(optimizer: torch.optim.Optimizer) -> None:
    """Drop Adam's moments of the prompt group. Held still at rate 0, the prompts still
    took gradients, and their moments describe the run's last epochs rather than the best
    model that prompt tuning starts from."""
    for group in optimizer.param_groups:
        if group.get("name") == "prompt":
            for parameter in group["params"]:
                optimizer.state.pop(parameter, None)


def untrained_prompts(
    train: TrainConfig, best_epoch: int, prompts: PromptStart, epochs_run: int
) -> list[str]:
    """A note when the reported model's prompts never trained: the best validation epoch
    came before the first epoch that trained them (``prompts.epoch``, ``None`` when none
    did). The run then reports its scheme alone, and a comparison with it measures no
    prompt. ``prompts.searched``: a bit-width search ran during the run (MixQ's), which
    holds the prompts too when ``train.prompt_after_search``."""
    if prompts.trained_by(best_epoch):
        return []
    if train.tuning_epochs:
        return [
            f"prompt tuning ({train.tuning_epochs} epochs, train.prompt_tuning_epochs) "
            "did not raise the validation accuracy above that of the scheme's best epoch "
            f"({best_epoch}), so the reported model is the scheme without a prompt."
        ]
    prompt_start, searched = prompts.epoch, prompts.searched
    epochs = train.prompt_warmup_epochs
    held = f"train.prompt_warmup holds them still for the first {epochs} epochs"
    if searched and train.prompts_wait_for_search:
        held += " and until a bit-width search freezes (train.prompt_after_search)"
    if prompt_start is None:
        when = f"the prompts never trained: {held}, and the run ended after {epochs_run} epochs"
    else:
        when = (
            f"the best validation epoch ({best_epoch}) came before the prompts started "
            f"training (epoch {prompt_start}; {held})"
        )
    return [
        f"{when}, so the reported model is its scheme without a trained prompt. To let a "
        "prompted model compete, lower train.prompt_warmup or raise train.patience "
        f"(now {train.patience})."
    ]


def diverging(loss: float, num_classes: int) -> list[str]:
    """A note when the first epoch's loss is far above that of guessing uniformly."""
    uniform = math.log(max(num_classes, 2))
    if loss < BLOWUP * uniform:
        return []
    return [
        f"the first epoch's training loss is {loss:.1f}, above {BLOWUP:g}x that of "
        f"guessing uniformly (ln {num_classes} = {uniform:.2f}): activations are blowing up. "
        "Normalise between layers (model.norm: batch; sum aggregation over high-degree nodes "
        "needs it) or lower train.lr."
    ]


def stalled(history: list[dict[str, float]], num_classes: int) -> list[str]:
    """A note when neither the training loss nor the training accuracy ever moved clearly
    away from those of guessing uniformly."""
    uniform = math.log(max(num_classes, 2))
    losses = [row["loss"] for row in history]
    if len(losses) < STALL_EPOCHS or not all(map(math.isfinite, losses)):
        return []  # too short to tell, or diverged (not the same failure)
    lowest = min(losses)
    if lowest < STALL * uniform:
        return []
    best = max((row["train"] for row in history if math.isfinite(row["train"])), default=0.0)
    if best >= 1 / max(num_classes, 1) + STALL_MARGIN:
        return []
    return [
        f"the training loss never fell below {lowest:.3f} in {len(history)} epochs, against "
        f"{uniform:.3f} for guessing uniformly (ln {num_classes}), and the training accuracy "
        f"never passed {best:.1%}: the model did not learn. "
        "A quantization point may be clipping away the gradient (compare with quant.scheme: "
        "none, or try another scheme or more bits), or train.lr is too low."
    ]
