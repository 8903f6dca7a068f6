"""The interface every quantization scheme implements, and the modules that carry it.

A quantizable module (a layer, a linear) declares its *quantization points* in the class
attribute ``QUANT_POINTS``, a mapping from point name to its role, and holds one
:class:`Quantizer` per point in ``self.quantizers`` (an ``nn.ModuleDict``). A fresh module
holds :class:`IdentityQuantizer` everywhere, so an unquantized model is the float model.
:func:`lorap_dist.quant.quantize_` replaces them according to a scheme config.

Roles:

- ``"node"``: rows of the tensor are nodes (input features, messages, aggregates, outputs);
  the quantizer receives a :class:`~lorap_dist.graph.NodeInfo` for those rows.
- ``"weight"``: a weight matrix ``[out, in]``; rows are output channels.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from lorap_dist.graph.block import NodeInfo

NODE = "node"
WEIGHT = "weight"


class Quantizer(nn.Module):
    """Base class of every fake quantizer.

    Subclasses implement :meth:`forward`. Schemes that add a term to the training loss
    (A2Q's memory penalty, MixQ's bit-operations penalty) override :meth:`regularization`;
    schemes whose bit width is learned override :meth:`average_bits`.
    """

    def forward(self, x: Tensor, nodes: NodeInfo | None = None) -> Tensor:  # noqa: D102
        raise NotImplementedError

    def regularization(self) -> Tensor | None:
        """Extra loss term contributed by this quantizer, or ``None``."""
        return None

    def average_bits(self) -> float | None:
        """Bit width this quantizer stores values at (averaged where it varies), or ``None``
        when it does not quantize."""
        return None

    def end_epoch(self, epoch: int, epochs: int) -> bool:
        """Called after training epoch ``epoch`` (0-based) of ``epochs``; schemes with a
        schedule (MixQ's search, then freeze) advance it here.

        Returns:
            ``True`` when what the quantizer computes changed in a way that makes the model
            a different model from here on (earlier validation scores no longer describe it).
        """
        return False

    @property
    def settled(self) -> bool:
        """``False`` while a schedule still has to change this quantizer (early stopping
        waits for it)."""
        return True

    def qparams(self) -> tuple[float, int, int, int] | None:
        """``(scale, zero_point, qmin, qmax)`` of a per-tensor affine quantizer, or ``None``.

        The fused LoRAP kernel reads these to re-quantize inside the kernel.
        """
        return None


class IdentityQuantizer(Quantizer):
    """Leaves values at full precision: the quantizer of every point of a float model."""

    def forward(self, x: Tensor, nodes: NodeInfo | None = None) -> Tensor:
        return x


def identity_quantizers(points: Mapping[str, str]) -> nn.ModuleDict:
    """An ``nn.ModuleDict`` with an :class:`IdentityQuantizer` for each point name."""
    return nn.ModuleDict({name: IdentityQuantizer() for name in points})


def quantizable_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every module in ``model`` with quantization points."""
    for name, module in model.named_modules():
        if hasattr(module, "QUANT_POINTS") and isinstance(
            getattr(module, "quantizers", None), nn.ModuleDict
        ):
            yield name, module


def quantizers_of(model: nn.Module) -> Iterator[tuple[str, Quantizer]]:
    """``("<module>.<point>", quantizer)`` for every quantization point in ``model``."""
    for name, module in quantizable_modules(model):
        for point, quantizer in module.quantizers.items():
            yield (f"{name}.{point}" if name else point), quantizer


def quantization_loss(model: nn.Module) -> Tensor | None:
    """Sum of every quantizer's :meth:`Quantizer.regularization`, or ``None`` if none adds one."""
    terms = [t for _, q in quantizers_of(model) if (t := q.regularization()) is not None]
    if not terms:
        return None
    return torch.stack([t.reshape(()) for t in terms]).sum()


def end_epoch(model: nn.Module, epoch: int, epochs: int) -> bool:
    """Advance every quantizer's schedule after epoch ``epoch`` of ``epochs``
    (:meth:`Quantizer.end_epoch`); ``True`` when any of them changed the model."""
    changed = [q.end_epoch(epoch, epochs) for _, q in quantizers_of(model)]
    return any(changed)


def quantization_settled(model: nn.Module) -> bool:
    """``True`` when no quantizer's schedule will change the model any more."""
    return all(q.settled for _, q in quantizers_of(model))


def average_bits(model: nn.Module) -> float | None:
    """Mean stored bit width over the quantization points that quantize, or ``None``."""
    bits = [b for _, q in quantizers_of(model) if (b := q.average_bits()) is not None]
    return sum(bits) / len(bits) if bits else None


def budget_overruns(model: nn.Module, tolerance: float = 0.05) -> list[str]:
    """A sentence (in a list; empty when all is well) naming the quantization points whose
    learned bit width ended above their memory budget by more than ``tolerance`` bits. A2Q's
    penalty is soft, so a budget can be missed."""
    over = []
    for name, quantizer in quantizers_of(model):
        budget = getattr(quantizer, "memory_budget", None)
        bits = quantizer.average_bits()
        if budget is not None and bits is not None and bits > budget + tolerance:
            over.append((bits - budget, name, bits, budget))
    if not over:
        return []
    _, name, bits, budget = max(over)
    return [
        f"{len(over)} quantization point(s) ended above their memory budget (worst: {name} at "
        f"{bits:.2f} average bits for a budget of {budget:g}); raise quant.options.penalty "
        "to hold the budget more firmly."
    ]


def collapsed_points(model: nn.Module) -> list[str]:
    """A sentence (in a list; empty when all is well) naming the quantization points whose
    observed range has zero width: every value there rounds to one code, so what comes after
    sees a constant (a percentile range of a sparse tensor, for instance)."""
    dead = []
    for name, quantizer in quantizers_of(model):
        observer = getattr(quantizer, "observer", None)
        # Per tensor only: one constant row of a per-row range (a zero feature row) is fine.
        if observer is None or not observer.initialized or observer.min_val.numel() != 1:
            continue
        if bool(observer.max_val == observer.min_val):
            dead.append((name, float(observer.min_val)))
    if not dead:
        return []
    names = ", ".join(f"{name} [{value:g}, {value:g}]" for name, value in dead[:4])
    more = f" and {len(dead) - 4} more" if len(dead) > 4 else ""
    return [
        f"quantization point(s) {names}{more} have a zero-width range: every value there "
        "rounds to one code and the layers after it see a constant. Use more bits or a range "
        "that keeps the extremes (qat and mixq: quant.options.observer: ema or minmax), or "
        "check that the input is not constant."
    ]
