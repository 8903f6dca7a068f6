r"""The fake quantizer of plain quantization-aware training: observe a range, fake-quantize.

.. math::

    (m, M) &= \text{observer}(x) \quad \text{(training only; stored range in evaluation)} \\
    (s, z) &= \text{qparams}(m, M, b) \\
    \hat x &= \operatorname{fake\_quantize}(x; s, z, q_{\min}, q_{\max})
            \quad \text{with the straight-through gradient}

Rows that a :class:`~lorap_dist.graph.NodeInfo` marks in ``protect`` stay at full precision
(gradient 1) and are left out of the observed range, which is how Degree-Quant keeps
high-degree nodes from both suffering and distorting the quantization of the others.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lorap_dist.graph.block import NodeInfo
from lorap_dist.quant.base import Quantizer
from lorap_dist.quant.fake_quant import (
    NonzeroIndex,
    calculate_qparams,
    fake_quantize,
    on_nonzeros,
    quant_range,
)
from lorap_dist.quant.observers import MinMaxObserver, RangeObserver


class FakeQuantizer(Quantizer):
    """Fake quantization with a range from an observer (formulas in the module docstring).

    In training mode each call first folds the input's range into the observer, then
    quantizes with the updated range. In evaluation mode the stored range is used as it is;
    until one has been observed or loaded, the current input's range is used (and not
    stored), so a freshly quantized model can be evaluated before it is trained.

    Args:
        bits: bit width, 2 to 8.
        symmetric: signed grid ``[-2^(b-1), 2^(b-1)-1]`` with zero point 0 (else unsigned
            ``[0, 2^b-1]`` with a zero point).
        per_row: one range, scale and zero point per row (index of axis 0), e.g. per output
            channel of a weight ``[out, in]``; the number of rows must not change.
        observer: the range observer; a :class:`MinMaxObserver` by default. Its ``per_row``
            must equal ``per_row``.

    Shapes:
        input ``[N, ...]`` and optional ``nodes.protect`` ``[N]`` -> output ``[N, ...]``.
    """

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = False,
        per_row: bool = False,
        observer: RangeObserver | None = None,
    ) -> None:
        super().__init__()
        self.qmin, self.qmax = quant_range(bits, symmetric)
        self.bits = bits
        self.symmetric = symmetric
        self.per_row = per_row
        self.observer = MinMaxObserver(per_row=per_row) if observer is None else observer
        if self.observer.per_row != per_row:
            raise ValueError(
                f"FakeQuantizer(per_row={per_row}) got an observer with "
                f"per_row={self.observer.per_row}; give both the same value."
            )
        self.nonzeros = NonzeroIndex()

    def forward(self, x: Tensor, nodes: NodeInfo | None = None) -> Tensor:
        protect = None if nodes is None else nodes.protect
        if protect is not None:
            if self.per_row:
                raise ValueError(
                    "a per-row FakeQuantizer cannot protect rows: its ranges are fixed per "
                    "row; use a per-tensor quantizer for node features with a protect mask."
                )
            protect = protect.to(device=x.device, dtype=torch.bool)
            if protect.shape != x.shape[:1]:
                raise ValueError(
                    f"nodes.protect has shape {tuple(protect.shape)} but the input has "
                    f"{x.shape[0]} rows; it needs one flag per row."
                )
        index = None if self.per_row else self.nonzeros(x)
        if index is not None:
            return self._forward_nonzeros(x, protect, index)
        observed = x if protect is None else x[~protect]
        if observed.numel() == 0:
            return x  # every row protected (or no rows): nothing to quantize
        lo, hi = self.observer.range_of(observed)
        scale, zero_point = calculate_qparams(lo, hi, self.bits, self.symmetric)
        out = fake_quantize(
            x, scale, zero_point, self.qmin, self.qmax, axis=0 if self.per_row else None
        )
        if protect is None:
            return out
        return torch.where(protect.reshape(-1, *[1] * (x.dim() - 1)), x, out)

    def _forward_nonzeros(self, x: Tensor, protect: Tensor | None, index: Tensor) -> Tensor:
        """:meth:`forward` of a mostly-zero ``x`` (bag-of-words features) at the cost of its
        non-zeros at flat ``index``: zero is on every grid, so only they change, and the
        range is observed from them and the number of zeros."""
        row_length = x[0].numel()
        values = x.detach().reshape(-1)[index]
        kept = None if protect is None else protect[index // row_length]
        if kept is None:
            lo, hi = self.observer.range_of_nonzeros(values, x.numel())
        else:
            numel = int((~protect).sum()) * row_length
            if numel == 0:
                return x
            lo, hi = self.observer.range_of_nonzeros(values[~kept], numel)
        scale, zero_point = calculate_qparams(lo, hi, self.bits, self.symmetric)

        def quantize(v: Tensor) -> Tensor:
            out = fake_quantize(v, scale, zero_point, self.qmin, self.qmax)
            return out if kept is None else torch.where(kept, v, out)

        return on_nonzeros(x, index, quantize)

    def average_bits(self) -> float:
        return float(self.bits)

    def fused_grid_available(self, nodes: NodeInfo | None = None) -> bool:
        """Whether a fused kernel may quantize this call's input on the per-tensor grid of
        :meth:`qparams`, after :meth:`observe_range` has folded the input's extremes in.

        True when that gives exactly what :meth:`forward` gives: per tensor, an observer whose
        batch range is the extremes (not a
        :class:`~lorap_dist.quant.observers.PercentileObserver`, which needs the values), no
        protected rows in ``nodes``, :meth:`forward` not overridden by a subclass, and a range
        to quantize with (stored, or observed in this call because the observer is training;
        :meth:`forward` of an untrained quantizer in evaluation, or of one whose observer
        follows its input, uses the input's range, which a fused kernel does not have).
        """
        return (
            type(self).forward is FakeQuantizer.forward
            and not self.per_row
            and self.observer.range_from_extremes
            and (nodes is None or nodes.protect is None)
            and (self.observer.training or self.observer.range_is_stored)
        )

    @property
    def observing(self) -> bool:
        """Whether :meth:`forward` folds its input's range into the observer (training)."""
        return self.observer.training

    def observe_range(self, batch_min: Tensor, batch_max: Tensor) -> None:
        """Fold an input's extremes into the observer when training, as :meth:`forward`
        folds its input's range (see :meth:`RangeObserver.observe_range`)."""
        self.observer.observe_range(batch_min, batch_max)

    def qparams(self) -> tuple[float, int, int, int] | None:
        """``(scale, zero_point, qmin, qmax)`` of the stored range; ``None`` when per row,
        before a range has been observed, or when :meth:`grid` is ``None``."""
        grid = self.grid()
        if grid is None:
            return None
        scale, zero_point, qmin, qmax = grid
        return float(scale), int(zero_point), qmin, qmax

    def grid(self) -> tuple[Tensor, Tensor, int, int] | None:
        """:meth:`qparams` with ``scale`` (fp32) and ``zero_point`` (int32) as one-element
        tensors on the observer's device: what a kernel reads without a host sync. ``None``
        also in evaluation when the observer follows its input (weights): :meth:`forward`
        then rounds on the input's own range, which no stored grid holds."""
        if self.per_row or not self.observer.range_is_stored:
            return None
        scale, zero_point = calculate_qparams(
            self.observer.min_val, self.observer.max_val, self.bits, self.symmetric
        )
        return scale.reshape(1), zero_point.reshape(1), self.qmin, self.qmax

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}, per_row={self.per_row}"
