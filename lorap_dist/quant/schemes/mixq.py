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
whatever the tensor sizes. After training :func:`freeze_mixq` fixes every point to its
top-1 candidate, :math:`\arg\max_i c_i`, and :func:`mixq_bits` reports the choice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lorap_dist.config import ConfigError, check, check_bits, check_choice
from lorap_dist.graph.block import NodeInfo
from lorap_dist.quant.api import QuantizeContext, register_scheme
from lorap_dist.quant.base import NODE, WEIGHT, Quantizer, quantizers_of
from lorap_dist.quant.fake_quant import calculate_qparams, fake_quantize, quant_range
from lorap_dist.quant.observers import EMAObserver, MinMaxObserver, RangeObserver

OBSERVERS = ("minmax", "ema")


@dataclass
class MixQConfig:
    """MixQ: learned softmax mixture over candidate bit widths at every point.

    Args:
        candidate_bits: distinct bit widths (2 to 8) each point mixes.
        penalty: :math:`\\lambda` of the expected-bits penalty, ``>= 0``.
        symmetric: signed grid with zero point 0 for node features (weights are always
            symmetric per output channel).
        observer: node-feature range tracking, ``minmax`` or ``ema``.
        momentum: weight of a new batch for ``ema``, in ``(0, 1]``.
    """

    candidate_bits: tuple[int, ...] = (2, 4, 8)
    penalty: float = 0.01
    symmetric: bool = False
    observer: str = "minmax"
    momentum: float = 0.01

    def __post_init__(self) -> None:
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
            isinstance(self.penalty, (int, float))
            and not isinstance(self.penalty, bool)
            and self.penalty >= 0,
            f"MixQConfig.penalty={self.penalty!r} must be a number >= 0 (0 turns the "
            "bit-operations penalty off).",
        )
        check(
            isinstance(self.symmetric, bool),
            f"MixQConfig.symmetric={self.symmetric!r} must be true or false.",
        )
        check_choice("MixQConfig.observer", self.observer, OBSERVERS)
        check(
            isinstance(self.momentum, (int, float))
            and not isinstance(self.momentum, bool)
            and 0.0 < self.momentum <= 1.0,
            f"MixQConfig.momentum={self.momentum!r} must be a number in (0, 1].",
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
    both are saved with the ``state_dict``.

    Args:
        candidate_bits: the candidate bit widths.
        symmetric: signed grids with zero point 0.
        per_row: one range per row (weights: per output channel).
        observer: range observer shared by the candidates.
        penalty: :math:`\\lambda` of the expected-bits penalty.

    Shapes:
        input ``[N, ...]`` -> output ``[N, ...]``.
    """

    selected: Tensor

    def __init__(
        self,
        candidate_bits: tuple[int, ...],
        symmetric: bool,
        per_row: bool,
        observer: RangeObserver,
        penalty: float,
    ) -> None:
        super().__init__()
        self.candidate_bits = tuple(candidate_bits)
        self.symmetric, self.per_row, self.penalty = symmetric, per_row, penalty
        self.observer = observer
        self.logits = nn.Parameter(torch.zeros(len(self.candidate_bits)))
        self.register_buffer("selected", torch.tensor(-1, dtype=torch.long))

    @property
    def frozen(self) -> bool:
        return int(self.selected) >= 0

    def forward(self, x: Tensor, nodes: NodeInfo | None = None) -> Tensor:
        if x.numel() == 0:
            return x
        self.observer(x)
        if self.observer.initialized:
            lo, hi = self.observer.min_val, self.observer.max_val
        else:
            lo, hi = self.observer.batch_range(x)
        if self.frozen:
            return self._fake_quantize(x, lo, hi, self.candidate_bits[int(self.selected)])
        weights = torch.softmax(self.logits, dim=0)
        return sum(
            w * self._fake_quantize(x, lo, hi, bits)
            for w, bits in zip(weights, self.candidate_bits, strict=True)
        )

    def _fake_quantize(self, x: Tensor, lo: Tensor, hi: Tensor, bits: int) -> Tensor:
        qmin, qmax = quant_range(bits, self.symmetric)
        scale, zero_point = calculate_qparams(lo, hi, bits, self.symmetric)
        return fake_quantize(x, scale, zero_point, qmin, qmax, axis=0 if self.per_row else None)

    def expected_bits(self) -> Tensor:
        """:math:`\\sum_i \\operatorname{softmax}(\\mathbf c)_i b_i` (differentiable)."""
        bits = torch.tensor(self.candidate_bits, dtype=self.logits.dtype, device=self.logits.device)
        return (torch.softmax(self.logits, dim=0) * bits).sum()

    def chosen_bits(self) -> int:
        """The frozen candidate, or the current top-1 one."""
        index = int(self.selected) if self.frozen else int(torch.argmax(self.logits))
        return self.candidate_bits[index]

    @torch.no_grad()
    def freeze(self) -> int:
        """Fix this point to its top-1 candidate; returns its bit width."""
        self.selected.fill_(int(torch.argmax(self.logits)))
        return self.chosen_bits()

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


@register_scheme(MixQConfig)
def _build_mixq_quantizer(
    config: MixQConfig, module: nn.Module, point: str, role: str, context: QuantizeContext
) -> Quantizer:
    """Per-tensor mixtures for node points, per-channel symmetric mixtures for weights."""
    if role == NODE:
        return MixQQuantizer(
            config.candidate_bits,
            symmetric=config.symmetric,
            per_row=False,
            observer=config.node_observer(),
            penalty=config.penalty,
        )
    if role == WEIGHT:
        return MixQQuantizer(
            config.candidate_bits,
            symmetric=True,
            per_row=True,
            observer=EMAObserver(momentum=1.0, per_row=True),
            penalty=config.penalty,
        )
    raise ConfigError(
        f"{type(module).__name__}.QUANT_POINTS[{point!r}] has role {role!r}; the mixq scheme "
        f"quantizes the roles {[NODE, WEIGHT]}."
    )
