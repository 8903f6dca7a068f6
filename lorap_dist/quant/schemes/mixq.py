r"""MixQ-GNN: each quantization point learns a softmax mixture over candidate bit widths.

From `"MixQ-GNN: Mixed-Precision Quantization of Graph Neural Networks"
<https://arxiv.org/abs/2501.09947>`_ (Moustafa, Kriege, Gansterer; ICDE 2025).
``quantize_(model, MixQConfig(candidate_bits=(2, 4, 8), penalty=0.01))`` gives every point a
:class:`MixQQuantizer` with learnable logits :math:`\mathbf c` over the candidates
:math:`b_1, \dots, b_K`:

.. math::

    \hat x = \sum_{i=1}^{K} \operatorname{softmax}(\mathbf c)_i \,
    \operatorname{fakequant}_{b_i}(x), \qquad
    \mathcal L = \mathcal L_\text{task} + \lambda \sum_\text{points}
    \sum_{i=1}^{K} \operatorname{softmax}(\mathbf c)_i \, b_i

Each candidate has its own scale (and zero point): the range the point's observer tracks,
mapped onto that candidate's grid. The gradient reaches :math:`x` through the
straight-through estimator of each candidate and :math:`\mathbf c` through the mixture
weights. The bit-operations penalty is normalised per value (each point contributes its
expected bit width), so :math:`\lambda` prices one bit of one point against the task loss
whatever the tensor sizes.

Training has two phases, as in the paper's search-then-train recipe. For the first
``search_fraction`` of the epochs the mixture is trained, with the softmax temperature
:math:`T` annealed geometrically from 1 to ``final_temperature`` (weights
:math:`\operatorname{softmax}(\mathbf c / T)`), so the mixture ends close to the one-hot
choice it will become. Then every point is frozen to its top-1 candidate,
:math:`\arg\max_i c_i`, and the rest of the epochs fine-tune the frozen model; the
training loop restarts its best-epoch tracking there, so the reported model is always a
frozen one. Freezing straight after a relaxed search, with no fine-tuning, loses the
accuracy the mixture had (a GIN on the generated graph fell from 47% to 16%).
:func:`freeze_mixq` freezes by hand (``search_fraction=1`` leaves that to the caller) and
:func:`mixq_bits` reports the choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lorap_dist.graph.block import NodeInfo
from lorap_dist.quant.api import QuantConfig, QuantizeContext, register_scheme, unsupported_role
from lorap_dist.quant.base import NODE, WEIGHT, Quantizer, quantizers_of
from lorap_dist.quant.fake_quant import (
    NonzeroIndex,
    calculate_qparams,
    fake_quantize,
    fake_quantize_with_mask,
    on_nonzeros,
    quant_range,
)
from lorap_dist.quant.observers import (
    CurrentRangeObserver,
    EMAObserver,
    MinMaxObserver,
    RangeObserver,
    tail_quantiles,
)
from lorap_dist.validation import check, check_bits, check_choice, is_number

OBSERVERS = ("minmax", "ema")

#: At its first training batch after the freeze, a node point's range grows to cover all but
#: this fraction of that batch's values at each end (see :meth:`MixQQuantizer.freeze`).
FREEZE_COVER = 0.001


@dataclass
class MixQConfig(QuantConfig):
    """MixQ: learned softmax mixture over candidate bit widths at every point.

    Args:
        bits: the common spelling of "INT b" that every scheme takes: the candidates are
            those of 2, 4 and 8 bits that do not exceed ``b`` (``bits: 4`` mixes {2, 4}),
            unless ``candidate_bits`` says otherwise.
        candidate_bits: distinct bit widths (2 to 8) each point mixes (default from
            ``bits``, else [2, 4, 8]).
        penalty: :math:`\\lambda` of the expected-bits penalty, ``>= 0``.
        symmetric: signed grid with zero point 0 for node features (weights are always
            symmetric per output channel).
        observer: node-feature range tracking, ``ema`` (default) or ``minmax``; as for
            plain QAT, running extremes cost accuracy (Cora GCN {2,4,8}: 77.0 with
            ``minmax``, 79.8 with ``ema``, 4 seeds).
        momentum: weight of a new batch for ``ema``, in ``(0, 1]``.
        search_fraction: share of the training epochs that trains the mixture, in
            ``(0, 1]``; at its end every point is frozen to its top-1 bit width and the
            remaining epochs fine-tune. ``1`` searches throughout (freeze with
            :func:`freeze_mixq` afterwards).
        final_temperature: softmax temperature reached at the end of the search, in
            ``(0, 1]``, annealed geometrically from 1; ``1`` turns annealing off.
        search_logits: also search the bit width of the points that hold the class
            logits: the last layer's output, and in a layer that transforms before it
            aggregates (GCN, GAT) also its aggregate and prompt points, which are the
            logits up to a bias. Off by default: those points take the largest candidate,
            because at 2 bits the logits have 4 levels, the argmax over the classes is
            mostly ties, and the relaxed mixture does not see it (a GIN on the generated
            graph fell from 80% to 16% when its logits froze at 2 bits; a Cora GAT + LoRAP
            seed ended at 77.3% with its last prompt point frozen at 2 bits, 80.1% with
            it kept at 8).
    """

    bits: int | None = None
    candidate_bits: tuple[int, ...] | None = None
    penalty: float = 0.01
    symmetric: bool = False
    observer: str = "ema"
    momentum: float = 0.01
    search_fraction: float = 0.5
    final_temperature: float = 0.01
    search_logits: bool = False

    def __post_init__(self) -> None:
        if self.bits is not None:
            check_bits("MixQConfig.bits", self.bits)
        if self.candidate_bits is None:
            limit = 8 if self.bits is None else self.bits
            self.candidate_bits = tuple(b for b in (2, 4, 8) if b <= limit)
        check(
            isinstance(self.candidate_bits, (tuple, list)) and len(self.candidate_bits) >= 1,
            f"MixQConfig.candidate_bits={self.candidate_bits!r} must be a non-empty list of "
            "bit widths, e.g. [2, 4, 8].",
        )
        self.candidate_bits = tuple(self.candidate_bits)
        for bits in self.candidate_bits:
            check_bits(
                f"MixQConfig.candidate_bits entry {bits!r} (in {list(self.candidate_bits)})", bits
            )
        check(
            len(set(self.candidate_bits)) == len(self.candidate_bits),
            f"MixQConfig.candidate_bits={list(self.candidate_bits)} repeats a bit width; list "
            "each candidate once.",
        )
        check(
            is_number(self.penalty) and self.penalty >= 0,
            f"MixQConfig.penalty={self.penalty!r} must be a number >= 0 (0 turns the "
            "bit-operations penalty off).",
        )
        check(
            isinstance(self.symmetric, bool),
            f"MixQConfig.symmetric={self.symmetric!r} must be true or false.",
        )
        check_choice("MixQConfig.observer", self.observer, OBSERVERS)
        check(
            isinstance(self.search_logits, bool),
            f"MixQConfig.search_logits={self.search_logits!r} must be true or false.",
        )
        check(
            is_number(self.momentum) and 0.0 < self.momentum <= 1.0,
            f"MixQConfig.momentum={self.momentum!r} must be a number in (0, 1].",
        )
        for name in ("search_fraction", "final_temperature"):
            value = getattr(self, name)
            check(
                is_number(value) and 0.0 < value <= 1.0,
                f"MixQConfig.{name}={value!r} must be a number in (0, 1].",
            )

    def node_observer(self) -> RangeObserver:
        """A fresh observer for a node-feature point."""
        if self.observer == "ema":
            return EMAObserver(momentum=self.momentum)
        return MinMaxObserver()


class MixQQuantizer(Quantizer):
    """A softmax-weighted mixture of fake quantizers at candidate bit widths (formulas in
    the module docstring); one candidate only once frozen.

    The logits start at zero (a uniform mixture). The buffer ``selected`` is ``-1`` while
    the mixture is trained and the index of the chosen candidate once :meth:`freeze` ran;
    ``temperature`` is the current softmax temperature. All are saved with the
    ``state_dict``, so a resumed run continues the schedule where it stopped.

    Args:
        candidate_bits: the candidate bit widths.
        symmetric: signed grids with zero point 0.
        per_row: one range per row (weights: per output channel).
        observer: range observer shared by the candidates.
        penalty: :math:`\\lambda` of the expected-bits penalty.
        search_fraction: share of the epochs before :meth:`end_epoch` freezes the point.
        final_temperature: softmax temperature at the end of the search.

    Shapes:
        input ``[N, ...]`` -> output ``[N, ...]``.
    """

    selected: Tensor
    temperature: Tensor
    cover_pending: Tensor

    def __init__(
        self,
        candidate_bits: tuple[int, ...],
        symmetric: bool,
        per_row: bool,
        observer: RangeObserver,
        penalty: float,
        search_fraction: float = 1.0,
        final_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.candidate_bits = tuple(candidate_bits)
        self.symmetric, self.per_row, self.penalty = symmetric, per_row, penalty
        self.search_fraction, self.final_temperature = search_fraction, final_temperature
        self.observer = observer
        self.logits = nn.Parameter(torch.zeros(len(self.candidate_bits)))
        self.register_buffer("selected", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("cover_pending", torch.tensor(False))
        self.nonzeros = NonzeroIndex()

    @property
    def frozen(self) -> bool:
        return int(self.selected) >= 0

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Saved before the freeze widened ranges: nothing pending.
        state_dict.setdefault(prefix + "cover_pending", torch.tensor(False))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, nodes: NodeInfo | None = None) -> Tensor:
        if x.numel() == 0:
            return x
        if self.training and not self.per_row and bool(self.cover_pending):  # weights: never
            return self._mixture(x, *self._cover(x))
        index = None if self.per_row else self.nonzeros(x)
        if index is None:
            return self._mixture(x, *self.observer.range_of(x))
        # Mostly zeros: every candidate maps zero to zero, so only the non-zeros change.
        lo, hi = self.observer.range_of_nonzeros(x.detach().reshape(-1)[index], x.numel())
        return on_nonzeros(x, index, lambda values: self._mixture(values, lo, hi))

    def _mixture(self, x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        axis = 0 if self.per_row else None
        if self.frozen:  # one candidate: only its grid
            bits = self.candidate_bits[int(self.selected)]
            return fake_quantize(x, *self._grid(lo, hi, bits), axis=axis)
        grids = [self._grid(lo, hi, bits) for bits in self.candidate_bits]
        return _Mixture.apply(x, self.mixing_weights(), grids, axis)

    def _grid(self, lo: Tensor, hi: Tensor, bits: int) -> tuple[Tensor, Tensor, int, int]:
        """``(scale, zero_point, qmin, qmax)`` of candidate ``bits`` over ``[lo, hi]``."""
        scale, zero_point = calculate_qparams(lo, hi, bits, self.symmetric)
        return (scale, zero_point, *quant_range(bits, self.symmetric))

    def mixing_weights(self) -> Tensor:
        """:math:`\\operatorname{softmax}(\\mathbf c / T)` over the candidates."""
        return torch.softmax(self.logits / self.temperature, dim=0)

    def expected_bits(self) -> Tensor:
        """:math:`\\sum_i \\operatorname{softmax}(\\mathbf c / T)_i b_i` (differentiable)."""
        bits = torch.tensor(self.candidate_bits, dtype=self.logits.dtype, device=self.logits.device)
        return (self.mixing_weights() * bits).sum()

    def search_epochs(self, epochs: int) -> int:
        """How many of ``epochs`` train the mixture (at least one)."""
        return max(1, round(self.search_fraction * epochs))

    @property
    def settled(self) -> bool:
        return self.frozen or self.search_fraction >= 1.0

    @torch.no_grad()
    def end_epoch(self, epoch: int, epochs: int) -> bool:
        """Anneal the temperature; freeze at the end of the search phase."""
        if self.frozen:
            return False
        search = self.search_epochs(epochs)
        done = min(epoch + 1, search) / search
        self.temperature.fill_(self.final_temperature**done)
        if self.search_fraction < 1.0 and epoch + 1 >= search:
            self.freeze()
            return True
        return False

    def chosen_bits(self) -> int:
        """The frozen candidate, or the current top-1 one."""
        index = int(self.selected) if self.frozen else int(torch.argmax(self.logits))
        return self.candidate_bits[index]

    @torch.no_grad()
    def freeze(self) -> int:
        """Fix this point to its top-1 candidate; returns its bit width.

        A node point's range was tracked on values shaped by every point's mixture; once the
        points freeze, a coarse choice upstream changes what this point sees at once, while
        a moving average of momentum 0.01 follows over about a hundred steps, and every value
        outside the stale range is clamped and passes no gradient. On CiteSeer GAT (MixQ
        INT4, seed 3) a 2-bit output upstream left the second layer's values far outside
        their range: the first layer's gradient was exactly zero from the first frozen step,
        weight decay alone moved it, and training fell to chance within 30 epochs.

        So the first training batch after the freeze widens the range to cover all but
        :data:`FREEZE_COVER` of its values at each end (:meth:`_cover`; zeros included,
        mostly-zero inputs too), and the average goes on from there. It widens only: a
        stale range that already covers the bulk keeps clipping the rare extremes, as the
        moving average did during the search. Forgetting the range instead (the next
        batch's extremes) cured CiteSeer GAT as well, but cost Cora GIN, whose sums are
        heavy-tailed (a batch maximum of 667 where 99% of the values lie below 73): its
        8-bit step doubled and MixQ + LoRAP fell from 73.1% to 70.8% (10 seeds).
        Weight points keep their ranges: the weights do not jump at the freeze."""
        self.selected.fill_(int(torch.argmax(self.logits)))
        if not self.per_row:
            self.cover_pending.fill_(True)
        return self.chosen_bits()

    @torch.no_grad()
    def _cover(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The range for the first batch after the freeze: the stored one widened to the
        batch's :data:`FREEZE_COVER` and ``1 - FREEZE_COVER`` quantiles (this batch is not
        also folded into the average)."""
        self.cover_pending.fill_(False)
        if not self.observer.initialized:
            return self.observer.range_of(x)
        self.observer.widen(*tail_quantiles(x.detach().float().reshape(-1), FREEZE_COVER))
        return self.observer.min_val, self.observer.max_val

    def regularization(self) -> Tensor | None:
        """:math:`\\lambda \\cdot` expected bits while mixing; ``None`` once frozen or off."""
        if self.frozen or self.penalty == 0:
            return None
        return self.penalty * self.expected_bits()

    def average_bits(self) -> float:
        """The chosen bit width once frozen, else the expected bit width of the mixture."""
        return float(self.chosen_bits()) if self.frozen else float(self.expected_bits().detach())

    def extra_repr(self) -> str:
        state = f"selected={self.chosen_bits()}" if self.frozen else "mixing"
        return f"candidate_bits={list(self.candidate_bits)}, per_row={self.per_row}, {state}"


class _Mixture(torch.autograd.Function):
    r""":math:`\hat x = \sum_i w_i \operatorname{fakequant}_i(x)` as one autograd node.

    Backward, with :math:`m_i` the in-range mask of candidate :math:`i` (its
    straight-through gradient) and :math:`g` the upstream gradient:

    .. math::

        \frac{\partial L}{\partial x} = g \odot \sum_i w_i m_i, \qquad
        \frac{\partial L}{\partial w_i} = \langle g, \operatorname{fakequant}_i(x) \rangle

    the gradients autograd takes through ``sum(w_i * fake_quantize_i(x))``, in fewer passes
    over ``x``'s size (the sums are ordered differently, so they agree to rounding). Each
    grid is ``(scale, zero_point, qmin, qmax)``.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weights: Tensor,
        grids: list[tuple[Tensor, Tensor, int, int]],
        axis: int | None,
    ) -> Tensor:
        pairs = [fake_quantize_with_mask(x, *grid, axis=axis) for grid in grids]
        outs, masks = [out for out, _ in pairs], [mask for _, mask in pairs]
        mixed = outs[0] * weights[0]
        for out, weight in zip(outs[1:], weights[1:], strict=True):
            mixed.addcmul_(out, weight)
        ctx.save_for_backward(weights, *outs, *masks)
        return mixed

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:
        weights, *saved = ctx.saved_tensors
        outs, masks = saved[: len(saved) // 2], saved[len(saved) // 2 :]
        grad_x = grad_weights = None
        if ctx.needs_input_grad[0]:
            passed = masks[0] * weights[0]  # sum_i w_i m_i
            for mask, weight in zip(masks[1:], weights[1:], strict=True):
                passed.addcmul_(mask, weight)
            grad_x = grad * passed
        if ctx.needs_input_grad[1]:
            flat = grad.reshape(-1)
            grad_weights = torch.stack([torch.dot(flat, out.reshape(-1)) for out in outs])
        return grad_x, grad_weights, None, None


def freeze_mixq(model: nn.Module) -> dict[str, int]:
    """Fix every :class:`MixQQuantizer` of ``model`` to its top-1 bit width.

    Returns:
        the chosen bit width per point (``"<module>.<point>"``), as :func:`mixq_bits`.
    """
    chosen = {name: q.freeze() for name, q in quantizers_of(model) if isinstance(q, MixQQuantizer)}
    if not chosen:
        raise ValueError(
            "freeze_mixq found no MixQ quantizer in the model; apply "
            "quantize_(model, MixQConfig(...)) first."
        )
    return chosen


def mixq_bits(model: nn.Module) -> dict[str, int]:
    """Bit width per MixQ point: the frozen choice, or the current top-1 candidate.

    The model-wide mean is :func:`lorap_dist.quant.average_bits` once frozen.
    """
    return {
        name: q.chosen_bits() for name, q in quantizers_of(model) if isinstance(q, MixQQuantizer)
    }


def _logits_layer(context: QuantizeContext) -> nn.Module | None:
    """The layer whose output points hold the class logits: the model's ``logits_layer``
    (node-level models name it; a graph-level model's logits come from an unquantized head,
    so it has none and no point is kept out of the search)."""
    return getattr(context.model, "logits_layer", None)


@register_scheme("mixq", MixQConfig)
def _build_mixq_quantizer(
    config: MixQConfig, module: nn.Module, point: str, role: str, context: QuantizeContext
) -> Quantizer:
    """Per-tensor mixtures for node points, per-channel symmetric mixtures for weights;
    the points that hold the logits keep the largest candidate unless ``search_logits``."""
    if role == NODE:
        candidates = config.candidate_bits
        if not config.search_logits and module is _logits_layer(context):
            if point in getattr(module, "output_points", ("output",)):
                candidates = (max(candidates),)
        return MixQQuantizer(
            candidates,
            symmetric=config.symmetric,
            per_row=False,
            observer=config.node_observer(),
            penalty=config.penalty,
            search_fraction=config.search_fraction,
            final_temperature=config.final_temperature,
        )
    if role == WEIGHT:
        return MixQQuantizer(
            config.candidate_bits,
            symmetric=True,
            per_row=True,
            observer=CurrentRangeObserver(per_row=True),
            penalty=config.penalty,
            search_fraction=config.search_fraction,
            final_temperature=config.final_temperature,
        )
    raise unsupported_role("mixq", module, point, role)
