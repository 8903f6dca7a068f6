r"""Range observers: modules that track the ``[min, max]`` range a quantizer maps to its grid.

An observer sees each tensor that passes the quantization point in training mode (in
evaluation mode it leaves its range as it is) and keeps the range in two buffers,
``min_val`` and ``max_val``, so the range is saved and restored with the model's
``state_dict``. Per tensor the buffers are scalars; per row (``per_row=True``) they hold one
value per index of axis 0, which is reduced over all other axes. Before the first
observation the buffers are empty (shape ``[0]``); loading a ``state_dict`` resizes them.

With :math:`m_t, M_t` the range of batch :math:`t`:

- :class:`MinMaxObserver`: running extremes :math:`\min_t m_t`, :math:`\max_t M_t`;
- :class:`EMAObserver`: :math:`r_1 = (m_1, M_1)`,
  :math:`r_t = (1 - \mu)\, r_{t-1} + \mu\, (m_t, M_t)`;
- :class:`PercentileObserver`: as :class:`EMAObserver`, with :math:`m_t, M_t` the
  :math:`p` and :math:`1 - p` quantiles of the batch instead of its extremes;
- :class:`CurrentRangeObserver`: the range of the tensor it is given, in evaluation too
  (weights: evaluation quantizes the weights it evaluates on their own grid, as an integer
  export of those weights would, not on the grid of the weights before the last step).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lorap_dist.quant.fake_quant import SPARSE_MIN_NUMEL


class RangeObserver(nn.Module):
    """Base class: reduces a batch to a range and folds it into the stored one.

    Subclasses implement :meth:`_fold` and may override :meth:`_batch_range`.

    Args:
        per_row: one range per index of axis 0 instead of one for the whole tensor.
    """

    min_val: Tensor
    max_val: Tensor

    #: Whether the batch range is the batch's extremes, so that a kernel that computes only
    #: ``(min, max)`` can hand it to :meth:`observe_range` (quantiles need the values).
    range_from_extremes: bool = True
    #: Whether evaluation also takes the range of the tensor it is given instead of the
    #: stored one (:class:`CurrentRangeObserver`); the stored range then is only training's.
    follows_input: bool = False

    def __init__(self, per_row: bool = False) -> None:
        super().__init__()
        self.per_row = per_row
        self.register_buffer("min_val", torch.empty(0))
        self.register_buffer("max_val", torch.empty(0))

    @property
    def initialized(self) -> bool:
        """Whether a range has been observed (or loaded)."""
        return self.min_val.numel() > 0

    @property
    def range_is_stored(self) -> bool:
        """Whether the range a quantizer rounds with now is the stored one: one has been
        observed, and this is training or an observer that keeps it for evaluation."""
        return self.initialized and (self.training or not self.follows_input)

    @torch.no_grad()
    def widen(self, lo: Tensor, hi: Tensor) -> None:
        """Grow the stored range to include ``[lo, hi]`` (one-element tensors; per tensor),
        or take it when none is stored."""
        if self.per_row:
            raise ValueError(
                f"{type(self).__name__}(per_row=True) holds one range per row; widen takes one "
                "range for the whole tensor."
            )
        lo, hi = lo.reshape(()).float(), hi.reshape(()).float()
        if self.initialized:
            lo, hi = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)
        self.min_val, self.max_val = lo, hi

    def forward(self, x: Tensor) -> Tensor:
        """Fold the range of ``x`` into the stored range when training; return ``x``."""
        if self.training and x.numel() > 0:
            self.observe(x)
        return x

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Fold the range of ``x`` into the stored range, whatever the mode."""
        self._fold_and_store(*self.batch_range(x))

    def _fold_and_store(self, batch_min: Tensor, batch_max: Tensor) -> None:
        if self.initialized and batch_min.shape != self.min_val.shape:
            raise ValueError(
                f"{type(self).__name__} holds ranges of shape {tuple(self.min_val.shape)} but "
                f"got a batch with ranges of shape {tuple(batch_min.shape)}; a per-row observer "
                "needs the same number of rows every call (weights), so observe node features "
                "per tensor."
            )
        if self.initialized:
            batch_min, batch_max = self._fold(batch_min, batch_max)
        self.min_val = batch_min
        self.max_val = batch_max

    @torch.no_grad()
    def observe_range(self, batch_min: Tensor, batch_max: Tensor) -> None:
        """Fold a batch range given directly when training: what :meth:`forward` does for a
        tensor whose extremes are ``batch_min`` and ``batch_max``.

        For per-tensor observers whose batch range is the extremes (``range_from_extremes``),
        e.g. when a fused kernel computed the extremes without writing the tensor out.

        Args:
            batch_min: one-element tensor, the batch's minimum.
            batch_max: one-element tensor, the batch's maximum.
        """
        if self.per_row or not self.range_from_extremes:
            raise ValueError(
                f"{type(self).__name__}(per_row={self.per_row}) cannot observe a range given "
                "as (min, max): it needs one range per row or the values themselves; call it "
                "on the tensor instead."
            )
        if batch_min.numel() != 1 or batch_max.numel() != 1:
            raise ValueError(
                f"observe_range takes one-element tensors; got shapes {tuple(batch_min.shape)} "
                f"and {tuple(batch_max.shape)}."
            )
        if not self.training:
            return
        self._fold_and_store(batch_min.reshape(()).float(), batch_max.reshape(()).float())

    def range_of(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Fold ``x`` in when training (as :meth:`forward`) and return the range to quantize
        ``x`` with: the stored one, or before any was observed ``x``'s own."""
        self(x)
        if self.initialized:
            return self.min_val, self.max_val
        return self.batch_range(x)

    def range_of_nonzeros(self, values: Tensor, numel: int) -> tuple[Tensor, Tensor]:
        """:meth:`range_of` for a tensor of ``numel`` entries given by its non-zero entries
        ``values`` (in any order; the others are zero), at the cost of the non-zeros.
        Per tensor only."""
        if self.per_row:
            raise ValueError(
                f"{type(self).__name__}(per_row=True) needs each row's values; a tensor given "
                "by its non-zeros has no rows."
            )
        values = values.detach().to(torch.float32).reshape(-1)
        if not self.initialized or (self.training and numel > 0):
            batch = self.nonzeros_range(values, numel)
            if not self.training or numel == 0:
                return batch
            self._fold_and_store(*batch)
        return self.min_val, self.max_val

    def nonzeros_range(self, values: Tensor, numel: int) -> tuple[Tensor, Tensor]:
        """:meth:`batch_range` of the tensor of ``numel`` entries whose non-zero entries
        are ``values`` (float32, flat) and whose other entries are zero."""
        if values.numel() == numel:
            return self.batch_range(values)
        zero = values.new_zeros(())
        if values.numel() == 0:
            return zero, zero
        lo, hi = torch.aminmax(values)
        return torch.minimum(lo, zero), torch.maximum(hi, zero)

    def batch_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(min, max)`` of ``x``: float32 scalars, or ``[x.shape[0]]`` when per row."""
        values = self._values(x)
        lo, hi = torch.aminmax(values, dim=-1 if self.per_row else None)
        return lo, hi

    def _values(self, x: Tensor) -> Tensor:
        """``x`` as float32, flat, or ``[rows, values per row]`` when per row."""
        x = x.detach().to(torch.float32)
        if not self.per_row:
            return x.reshape(-1)
        if x.dim() == 0:
            raise ValueError("a per-row observer needs a tensor with at least one dimension.")
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def _fold(self, batch_min: Tensor, batch_max: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The range's shape is only known once observed: take the saved one.
        for name in ("min_val", "max_val"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"per_row={self.per_row}"


class MinMaxObserver(RangeObserver):
    """Running extremes: the range covers every value seen in training.

    Args:
        per_row: one range per index of axis 0.
    """

    def _fold(self, batch_min: Tensor, batch_max: Tensor) -> tuple[Tensor, Tensor]:
        return torch.minimum(self.min_val, batch_min), torch.maximum(self.max_val, batch_max)


class EMAObserver(RangeObserver):
    r"""Exponential moving average of the batch extremes.

    .. math::

        r_t = (1 - \mu)\, r_{t-1} + \mu\, r^{\text{batch}}_t, \qquad r_1 = r^{\text{batch}}_1

    ``momentum=1`` keeps the latest batch's range (in evaluation the stored one; the
    quantizers of weights use :class:`CurrentRangeObserver`, which takes the current
    weights' range in evaluation too).

    Args:
        momentum: :math:`\mu \in (0, 1]`, weight of the new batch (default 0.01).
        per_row: one range per index of axis 0.
    """

    def __init__(self, momentum: float = 0.01, per_row: bool = False) -> None:
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum={momentum!r} must be in (0, 1].")
        super().__init__(per_row=per_row)
        self.momentum = momentum

    def _fold(self, batch_min: Tensor, batch_max: Tensor) -> tuple[Tensor, Tensor]:
        m = self.momentum
        return (1 - m) * self.min_val + m * batch_min, (1 - m) * self.max_val + m * batch_max

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}, per_row={self.per_row}"


class CurrentRangeObserver(EMAObserver):
    """The range of the tensor it is given, in training and in evaluation: what the
    quantizers of weights use.

    Training stores each range (an :class:`EMAObserver` with momentum 1), so it is saved
    with the model. Evaluation takes the range of the tensor itself rather than the stored
    one: the stored range is that of the weights before the optimizer's last step, so
    evaluating with it would clip weights that grew in that step and round all of them on
    a grid the weights no longer have, unlike an integer export of the same weights.

    ``follows_input`` set to ``False`` on an instance evaluates on the stored range
    instead (what weights did before; ``benchmarks/weight_grid_eval.py`` compares the two).

    Args:
        per_row: one range per index of axis 0 (per output channel of a weight).
    """

    follows_input = True

    def __init__(self, per_row: bool = False) -> None:
        super().__init__(momentum=1.0, per_row=per_row)

    def range_of(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training or not self.follows_input:
            return super().range_of(x)
        return self.batch_range(x)

    def range_of_nonzeros(self, values: Tensor, numel: int) -> tuple[Tensor, Tensor]:
        if self.training or not self.follows_input or self.per_row:  # per row: it raises
            return super().range_of_nonzeros(values, numel)
        return self.nonzeros_range(values.detach().to(torch.float32).reshape(-1), numel)

    def extra_repr(self) -> str:
        return f"per_row={self.per_row}"


class PercentileObserver(EMAObserver):
    r"""Moving average of the batch's :math:`p` and :math:`1 - p` quantiles (Degree-Quant).

    Clipping the outer ``percentile`` of each tail spends the grid on the bulk of the
    values instead of on rare outliers. Where that range has zero width although the values
    are not all equal -- a sparse tensor whose non-zeros are fewer than ``percentile`` of
    its entries, such as bag-of-words features with under 1% non-zeros at INT4 -- every
    value would round to one code and the network would never see its input; the range is
    then taken from the quantiles of the non-zero values (zero stays on the grid, since
    the range always includes it). Tensors whose clipped range is not degenerate keep the
    paper's range exactly. Quantiles are :func:`torch.quantile`'s (linear interpolation),
    found by selection (:func:`tail_quantiles`), so their cost is linear in the non-zeros
    and any size is exact. Where a batch (or a row, per row) holds more than
    ``max_samples`` values, the quantiles are estimated from ``max_samples`` of them drawn
    uniformly with replacement (the same columns for every row).

    Args:
        percentile: :math:`p \in (0, 0.5)`, the fraction clipped from each tail
            (default 0.001; Degree-Quant uses 0.01 at INT4).
        momentum: weight of the new batch in the moving average, in ``(0, 1]``.
        max_samples: at most this many values per range estimate, or ``None``.
        per_row: one range per index of axis 0.
    """

    range_from_extremes = False

    def __init__(
        self,
        percentile: float = 0.001,
        momentum: float = 0.01,
        max_samples: int | None = None,
        per_row: bool = False,
    ) -> None:
        if not 0.0 < percentile < 0.5:
            raise ValueError(f"percentile={percentile!r} must be in (0, 0.5).")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples={max_samples!r} must be >= 1 or None.")
        super().__init__(momentum=momentum, per_row=per_row)
        self.percentile = percentile
        self.max_samples = max_samples

    def batch_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        values = self._values(x)  # [n] or [rows, n]
        lo, hi = self._quantiles(values)
        rows = values if self.per_row else values.unsqueeze(0)  # [rows, n]
        los, his = lo.reshape(-1).clone(), hi.reshape(-1).clone()
        degenerate = (his == los) & (rows.amax(-1) > rows.amin(-1))
        for r in torch.nonzero(degenerate).flatten().tolist():  # rare: sparse tensors only
            nonzero = rows[r][rows[r] != 0]
            nonzero_lo, nonzero_hi = self._quantiles(nonzero)
            los[r] = torch.minimum(los[r], nonzero_lo)
            his[r] = torch.maximum(his[r], nonzero_hi)
        return los.reshape(lo.shape), his.reshape(hi.shape)

    def nonzeros_range(self, values: Tensor, numel: int) -> tuple[Tensor, Tensor]:
        zeros = numel - values.numel()
        if self.max_samples is not None and numel > self.max_samples:
            # Uniform draws from the whole tensor: a draw past the non-zeros is a zero.
            picks = torch.randint(numel, (self.max_samples,), device=values.device)
            taken = values[picks.clamp(max=max(values.numel() - 1, 0))] if values.numel() else 0
            return self.batch_range(torch.where(picks < values.numel(), taken, 0.0))
        lo, hi = tail_quantiles(values, self.percentile, zeros=zeros)
        spread = values.numel() > 0 and (zeros > 0 or bool(values.amax() > values.amin()))
        if spread and bool(lo == hi):  # the sparse-tensor repair of batch_range
            nonzero_lo, nonzero_hi = tail_quantiles(values, self.percentile)
            lo, hi = torch.minimum(lo, nonzero_lo), torch.maximum(hi, nonzero_hi)
        return lo, hi

    def _quantiles(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """The ``percentile`` and ``1 - percentile`` quantiles along the last axis."""
        if self.max_samples is not None and values.shape[-1] > self.max_samples:
            picks = torch.randint(values.shape[-1], (self.max_samples,), device=values.device)
            values = values[..., picks]
        return tail_quantiles(values, self.percentile)

    def extra_repr(self) -> str:
        return (
            f"percentile={self.percentile}, momentum={self.momentum}, "
            f"max_samples={self.max_samples}, per_row={self.per_row}"
        )


def tail_quantiles(values: Tensor, p: float, zeros: int = 0) -> tuple[Tensor, Tensor]:
    """``torch.quantile(values, [p, 1 - p], dim=-1)`` (linear interpolation), bit for bit,
    by selection instead of a full sort, and without ``torch.quantile``'s limit of
    :math:`2^{24}` elements; with ``zeros``, the quantiles of ``values`` and that many
    zeros more (1-D only).

    Each quantile needs the values at two ranks, found with :func:`torch.kthvalue` (linear
    time). A flat tensor is first split by sign: ranks that fall among the zeros are zero
    without a search, and the others are searched among the negatives or the positives
    only, so a sparse or rectified tensor costs a pass over its non-zeros. Tensors with NaN
    go to :func:`torch.quantile` (whose answer is NaN).

    Args:
        values: ``[n]`` or ``[rows, n]`` float tensor, ``n >= 1``.
        p: the lower quantile, in ``[0, 1]``.

    Returns:
        ``(lo, hi)``: scalars, or ``[rows]`` for a 2-D input.
    """
    n = values.shape[-1] + zeros
    q = torch.tensor([p, 1.0 - p], device=values.device)
    # torch.quantile's arithmetic: float32 ranks, floor and ceil, torch.lerp between them.
    ranks = q * (n - 1)
    below, above = ranks.to(torch.long), ranks.ceil().to(torch.long)
    weights = ranks - below
    wanted = sorted(set(below.tolist() + above.tolist()))
    if values.dim() == 1:
        found = (
            _select_flat(values, wanted, zeros)
            if zeros or values.numel() < SPARSE_MIN_NUMEL
            else _select_dense(values, wanted)
        )
        if found is None:
            nan = values.new_full((), float("nan"))
            return nan, nan.clone()
    else:
        if zeros:
            raise ValueError("tail_quantiles: zeros= is for 1-D values only.")
        found = {k: torch.kthvalue(values, k + 1, dim=-1).values for k in wanted}
    lo, hi = (
        torch.lerp(found[int(b)], found[int(a)], w)
        for b, a, w in zip(below.tolist(), above.tolist(), weights, strict=True)
    )
    return lo, hi


def _select_dense(values: Tensor, ranks: list[int]) -> dict[int, Tensor] | None:
    """The value at each 0-based rank of sorted ``values`` (1-D); ``None`` if any is NaN.
    The ranks come in adjacent pairs near the ends, each pair selected on its own."""
    on_cpu = values.device.type == "cpu"
    if bool(np.isnan(values.numpy()).any() if on_cpu else values.isnan().any()):
        return None
    middle = values.numel() // 2
    found: dict[int, Tensor] = {}
    for group in ([r for r in ranks if r < middle], [r for r in ranks if r >= middle]):
        if group:
            found.update(zip(group, values_at_ranks(values, group), strict=True))
    return found


def _select_flat(values: Tensor, ranks: list[int], zeros: int = 0) -> dict[int, Tensor] | None:
    """The value at each 0-based rank of sorted ``values`` and ``zeros`` zeros more (1-D);
    ``None`` if any is NaN."""
    nonzero = values[values != 0]  # one pass over values; the rest is over the non-zeros
    if bool(nonzero.isnan().any()):
        return None
    zeros += values.numel() - nonzero.numel()
    below_zero = nonzero < 0
    negatives = int(torch.count_nonzero(below_zero))
    found = {r: values.new_zeros(()) for r in ranks if negatives <= r < negatives + zeros}
    lower = [r for r in ranks if r < negatives]
    if lower:
        found.update(zip(lower, values_at_ranks(nonzero[below_zero], lower), strict=True))
    upper = [r for r in ranks if r >= negatives + zeros]
    if upper:
        positives = nonzero[~below_zero]
        shifted = [r - negatives - zeros for r in upper]
        found.update(zip(upper, values_at_ranks(positives, shifted), strict=True))
    return found


_SAMPLE = 4096  # entries in the strided sample that places a tail's threshold
_TAIL = 8  # ranks within 1/_TAIL of either end count as a tail


def values_at_ranks(values: Tensor, ranks: list[int]) -> list[Tensor]:
    """The values at 0-based ``ranks`` of sorted ``values`` (1-D, no NaN), exactly.

    On the CPU, through NumPy (its selection and boolean compress are several times
    faster there than :func:`torch.kthvalue` and masked indexing), and ranks near one end
    of a long array (Degree-Quant's percentiles) are selected among the values beyond a
    threshold read off an evenly strided sample, placed with a margin so that it lies
    outside the ranks asked for: a pass and a small selection instead of a selection over
    everything. Where many values tie at the threshold (zeros of a rectified tensor) and
    the ranks fall among them, the answer is the threshold itself. Whether the threshold
    holds the ranks is checked by counting, and where it does not (an unlucky sample) the
    selection runs over everything, so the answer never depends on the sample. Elsewhere,
    :func:`torch.kthvalue`.
    """
    if values.device.type != "cpu":
        return [torch.kthvalue(values, r + 1).values for r in ranks]
    chosen = _ranks_of_array(values.numpy(), ranks)
    return [torch.tensor(v, dtype=values.dtype) for v in chosen]


def _ranks_of_array(a: np.ndarray, ranks: list[int]) -> list[Any]:
    m = a.size
    lo, hi = min(ranks), max(ranks)
    low = hi < m // _TAIL
    if m < SPARSE_MIN_NUMEL or not (low or lo >= m - m // _TAIL):
        return list(np.partition(a, ranks)[ranks])
    depth = hi + 1 if low else m - lo  # ranks to go from the end to reach all asked
    sample = a[:: max(1, m // _SAMPLE)]
    s = sample.size
    at = min(s - 1, depth * s // m + 8 + int(3 * math.sqrt(depth * s / m)))
    threshold = np.partition(sample, at if low else s - 1 - at)[at if low else s - 1 - at]
    inside = a <= threshold if low else a >= threshold
    held = int(np.count_nonzero(inside))  # the values at ranks [0, held) or [m - held, m)
    if held < depth:  # an unlucky sample: select over everything
        return list(np.partition(a, ranks)[ranks])
    if held > 2 * depth + s:  # a block of ties at the threshold: are the ranks in it?
        strict = int(np.count_nonzero(a < threshold if low else a > threshold))
        if (lo >= strict) if low else (hi < m - strict):
            return [threshold] * len(ranks)
    offset = 0 if low else m - held
    shifted = [r - offset for r in ranks]
    return list(np.partition(a[inside], shifted)[shifted])
