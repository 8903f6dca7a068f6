"""The optimizer every training loop builds: Adam over three parameter groups.

=========== ================================ =========================== =======================
group       what                             learning rate               weight decay
=========== ================================ =========================== =======================
backbone    layer weights and biases, norms  ``train.lr``                ``train.weight_decay``
prompt      LoRAP and GPF-plus parameters    ``lr * prompt_lr_scale``    ``prompt_weight_decay``
quantizer   learned quantizer state (A2Q     ``lr * quantizer_lr_scale`` 0
            steps and bit widths, MixQ
            logits)
=========== ================================ =========================== =======================

Quantizer state is never decayed: pulling A2Q's steps or MixQ's logits toward zero is a
bias toward a degenerate grid, not a regulariser. The prompt gets its own, smaller learning
rate: at the backbone's rate the prompt moves the prompted point's range from step to step
faster than the backbone adapts to it (measured in ``benchmarks/accuracy_planetoid.py``).
Quantizer state may take a larger rate than the backbone's (A2Q's recipes train its steps
and bit widths at several times the backbone's rate).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lorap_dist.config import TrainConfig
from lorap_dist.prompt.gpf import GPFPlus
from lorap_dist.prompt.lorap import LoRAP
from lorap_dist.quant.base import Quantizer


def parameter_groups(model: nn.Module, train: TrainConfig) -> list[dict[str, Any]]:
    """``model``'s parameters as Adam's groups (table in the module docstring); empty groups
    are left out. Every parameter is in exactly one group, named by its ``"name"`` key."""
    kind_of: dict[int, str] = {}
    for module in model.modules():
        kind = (
            "prompt"
            if isinstance(module, (LoRAP, GPFPlus))
            else "quantizer"
            if isinstance(module, Quantizer)
            else None
        )
        if kind is not None:
            for parameter in module.parameters():
                kind_of.setdefault(id(parameter), kind)
    settings = {
        "backbone": {"lr": train.lr, "weight_decay": train.weight_decay},
        "prompt": {
            "lr": train.lr * train.prompt_lr_scale,
            "weight_decay": train.prompt_weight_decay,
        },
        "quantizer": {"lr": train.lr * train.quantizer_lr_scale, "weight_decay": 0.0},
    }
    groups = {name: {"name": name, "params": [], **values} for name, values in settings.items()}
    for parameter in model.parameters():
        if parameter.requires_grad:
            groups[kind_of.get(id(parameter), "backbone")]["params"].append(parameter)
    return [group for group in groups.values() if group["params"]]


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Adam:
    """Adam over :func:`parameter_groups` of ``model``."""
    return torch.optim.Adam(parameter_groups(model, train), lr=train.lr)


def schedule_lr(
    optimizer: torch.optim.Optimizer,
    epoch: int,
    train: TrainConfig,
    searching: bool = False,
    tuning: bool = False,
) -> None:
    """Set every group's learning rate for epoch ``epoch`` (0-based), a function of the
    epoch and of ``searching`` (whether a scheme's search still runs,
    ``not quantization_settled(model)``; both are in a checkpoint, so a resumed run continues
    the schedule exactly):

    - step decay: every rate times ``train.lr_decay ** (epoch // train.lr_decay_every)``
      (off when ``lr_decay_every`` is 0; Degree-Quant's graph-level recipe halves it every
      50 epochs);
    - warm start: the prompt group trains at rate 0 for the first
      ``train.prompt_warmup_epochs`` (a quarter of the epochs by default: the backbone and
      its quantizers settle first), and while ``searching`` when
      ``train.prompt_after_search`` (MixQ's prompts start when its bit widths freeze), then
      at its own rate;
    - prompt tuning (``train.tuning_epochs > 0``, the default): the prompt group stays at rate 0
      for the whole run, and in the tuning epochs after it (``tuning``) only the prompt
      group trains, at ``lr * train.tuning_prompt_lr_scale``, every other group at rate 0.
    """
    every = train.lr_decay_every
    factor = train.lr_decay ** (epoch // every) if every else 1.0
    if train.tuning_epochs:
        held = not tuning
    else:
        held = epoch < train.prompt_warmup_epochs or (searching and train.prompts_wait_for_search)
    frozen = 0.0 if tuning else 1.0
    prompt_scale = train.tuning_prompt_lr_scale if tuning else train.prompt_lr_scale
    rates = {
        "backbone": frozen * train.lr,
        "quantizer": frozen * train.lr * train.quantizer_lr_scale,
        "prompt": 0.0 if held else train.lr * prompt_scale,
    }
    for group in optimizer.param_groups:
        group["lr"] = rates.get(group.get("name"), train.lr) * factor


def prompt_rate(optimizer: torch.optim.Optimizer) -> float | None:
    """The prompt group's learning rate as :func:`schedule_lr` set it last (``0`` while the
    prompts are held still), or ``None`` when the optimizer has no prompt group."""
    rates = [group["lr"] for group in optimizer.param_groups if group.get("name") == "prompt"]
    return rates[0] if rates else None
