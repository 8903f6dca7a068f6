r"""Fake quantization with a straight-through estimator (STE), and the range-to-qparams rule.

Fake quantization rounds a float tensor onto the grid of a ``b``-bit integer type and maps
it back to float, so training sees the quantization error while every tensor stays float:

.. math::

    q = \operatorname{round}(x \cdot s^{-1}) + z, \qquad
    \hat x = (\operatorname{clamp}(q, q_{\min}, q_{\max}) - z) \cdot s

with scale :math:`s`, zero point :math:`z`, ``round`` rounding half to even. The gradient is
the straight-through estimator masked to the representable range:

.. math::

    \frac{\partial L}{\partial x} = \frac{\partial L}{\partial \hat x} \cdot
    \mathbb{1}[q_{\min} \le q \le q_{\max}]

The operations run in the order and dtype of PyTorch's CPU kernels for
:func:`torch.fake_quantize_per_tensor_affine` and
:func:`torch.fake_quantize_per_channel_affine` (``inv_scale = 1 / scale`` in float32, then
``x * inv_scale``, round half to even, ``+ z``, clamp, ``- z``, ``* scale``), so the values
and gradients are bit-equal to theirs: float16, bfloat16 and float32 inputs are computed
in float32 (as C++ promotes them), float64 inputs in float64, and the result is cast back.
One deliberate exception: for float64 inputs per tensor, PyTorch 2.13 rounds the final
product ``(q - z) * s`` to float32; here it stays float64 (the grid value and the gradient
are still equal, the value differs by at most a float32 rounding). Non-finite inputs are
outside the contract (PyTorch casts ``q`` to int64 first, which this module does not
imitate).

Range conventions (those of ``torch.ao`` observers), for a range :math:`[m, M]`:

- affine: grid :math:`[0, 2^b - 1]`,
  :math:`s = (M^+ - m^-) / (q_{\max} - q_{\min})`,
  :math:`z = q_{\min} - \operatorname{round}(m^- / s)` clamped to the grid;
- symmetric: grid :math:`[-2^{b-1}, 2^{b-1} - 1]`,
  :math:`s = \max(-m^-, M^+) / ((q_{\max} - q_{\min}) / 2)`, :math:`z = 0`;

where :math:`m^- = \min(m, 0)` and :math:`M^+ = \max(M, 0)` (the range always includes
zero, so zero is exact), and the scale is at least ``eps`` (float32 machine epsilon) so
that a constant tensor never divides by zero. The symmetric scale divides by
:math:`(q_{\max} - q_{\min}) / 2 = 2^{b-1} - \tfrac12`, as ``torch.ao`` does, so
:math:`\max|x|` lands half a step beyond :math:`q_{\max}` and is clipped by at most half a
step; the whole signed grid is in use.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: A grid's scale: one value, or per-channel values of shape ``[x.shape[axis]]``.
Scale = Tensor | float
#: A grid's zero point, integer valued, shaped like its :data:`Scale`.
ZeroPoint = Tensor | int

EPS = torch.finfo(torch.float32).eps
#: Below this share of non-zero entries a tensor is handled through its non-zeros only.
SPARSE_SHARE = 0.25
#: Tensors smaller than this are always handled densely (finding the non-zeros costs more).
SPARSE_MIN_NUMEL = 1 << 16


def quant_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of a ``bits``-bit grid: signed ``[-2^(b-1), 2^(b-1)-1]`` when
    ``symmetric``, else unsigned ``[0, 2^b - 1]``."""
    if not (isinstance(bits, int) and 2 <= bits <= 8):
        raise ValueError(f"bits={bits!r} is not supported; use an integer from 2 to 8.")
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def calculate_qparams(
    min_val: Tensor, max_val: Tensor, bits: int, symmetric: bool, eps: float = EPS
) -> tuple[Tensor, Tensor]:
    """Scale and zero point that map the range ``[min_val, max_val]`` onto the grid.

    Follows ``torch.ao.quantization`` observers (see the module docstring for the formulas):
    the range is widened to include zero, the scale is at least ``eps``.

    Args:
        min_val: range minimum, any shape (``[]`` per tensor, ``[C]`` per channel).
        max_val: range maximum, same shape.
        bits: bit width, 2 to 8.
        symmetric: signed grid with zero point 0, else unsigned grid with a zero point.
        eps: smallest scale.

    Returns:
        ``(scale, zero_point)``: float32 and int32 tensors of the shape of ``min_val``.
    """
    qmin, qmax = quant_range(bits, symmetric)
    min_neg = torch.clamp(min_val.float(), max=0.0)
    max_pos = torch.clamp(max_val.float(), min=0.0)
    if symmetric:
        scale = torch.maximum(-min_neg, max_pos) / (float(qmax - qmin) / 2)
        scale = torch.clamp(scale, min=eps)
        return scale, torch.zeros_like(scale, dtype=torch.int32)
    scale = torch.clamp((max_pos - min_neg) / float(qmax - qmin), min=eps)
    zero_point = qmin - torch.round(min_neg / scale).to(torch.int32)
    return scale, torch.clamp(zero_point, qmin, qmax)


def _broadcast(param: Tensor, x: Tensor, axis: int | None) -> Tensor:
    """``param`` (``[]`` or ``[x.shape[axis]]``) viewed so it broadcasts along ``axis``."""
    if axis is None:
        if param.numel() != 1:
            raise ValueError(
                f"a per-tensor quantization parameter must hold one value, got shape "
                f"{tuple(param.shape)}; pass axis= for per-channel parameters."
            )
        return param.reshape(())
    axis = axis % x.dim()
    if param.shape != (x.shape[axis],):
        raise ValueError(
            f"per-channel parameters along axis {axis} need shape ({x.shape[axis]},) for an "
            f"input of shape {tuple(x.shape)}, got {tuple(param.shape)}."
        )
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.reshape(shape)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype PyTorch's kernels compute in: float64 for float64 inputs, else float32
    (half and bfloat16 promote to float32 in C++ arithmetic)."""
    return torch.promote_types(x.dtype, torch.float32)


def quantize_codes(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None = None
) -> tuple[Tensor, Tensor]:
    """Unclamped grid values ``q = round(x / s) + z`` and the in-range mask.

    ``q`` is in :func:`compute_dtype` of ``x``; ``1 / s`` is always computed in float32.

    This is the first half of :func:`fake_quantize`, shared with the integer quantizer so
    that ``dequantize(quantize(x)) == fake_quantize(x)`` bit for bit.
    """
    q, _ = _grid_values(x, scale, zero_point, axis)
    return q, (q >= qmin) & (q <= qmax)


def _grid_values(
    x: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None
) -> tuple[Tensor, Tensor]:
    """``(q, z)``: ``q = round(x * (1 / s)) + z`` in a fresh tensor of :func:`compute_dtype`,
    and ``z`` broadcast to ``x`` in that dtype (``1 / s`` in float32)."""
    dtype = compute_dtype(x)
    inv_scale = torch.reciprocal(_broadcast(scale.to(x.device, torch.float32), x, axis))
    z = _broadcast(zero_point.to(x.device, dtype), x, axis)
    return torch.mul(x.to(dtype), inv_scale.to(dtype)).round_().add_(z), z


class _FakeQuantizeSTE(torch.autograd.Function):
    """``Function.apply`` behind :func:`fake_quantize`; saves only the in-range mask."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        scale: Tensor,
        zero_point: Tensor,
        qmin: int,
        qmax: int,
        axis: int | None,
    ) -> Tensor:
        out, mask = _fake_quantize_codes(x, scale, zero_point, qmin, qmax, axis)
        ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None, None, None, None, None


def _fake_quantize_codes(
    x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int | None
) -> tuple[Tensor, Tensor]:
    """The fake-quantized ``x`` and its in-range mask, by the formulas (any dtype, device).

    :func:`quantize_codes`'s grid values, then ``(clamp(q) - z) * s`` in place. On the CPU
    the mask is a float tensor (1 inside the grid, 0 outside): comparing into a float tensor,
    and multiplying a gradient by it, are several times faster there than boolean masks, and
    forward plus backward is 1.6-2.6x faster than PyTorch's fused
    ``fake_quantize_per_tensor_affine`` CPU kernel (``benchmarks/fake_quant.py``). Elsewhere
    the mask is boolean, a quarter of the memory.
    """
    q, z = _grid_values(x, scale, zero_point, axis)
    s = _broadcast(scale.to(x.device, torch.float32), x, axis).to(q.dtype)
    clamped = torch.clamp(q, qmin, qmax)
    if x.device.type == "cpu":
        mask = torch.eq(q, clamped, out=q)  # q is not needed any more: reuse its memory
    else:
        mask = q == clamped
    return clamped.sub_(z).mul_(s).to(x.dtype), mask


def fake_quantize_with_mask(
    x: Tensor, scale: Scale, zero_point: ZeroPoint, qmin: int, qmax: int, axis: int | None = None
) -> tuple[Tensor, Tensor]:
    """``(fake_quantize(x, ...), mask)`` without autograd, ``mask`` the in-range mask (1
    inside the grid, 0 outside; float on the CPU, boolean elsewhere) through which
    :func:`fake_quantize` passes its gradient: for autograd functions that combine several
    quantizations of one tensor (MixQ's mixture). The same values as :func:`fake_quantize`."""
    x = x.detach()
    scale, zero_point = _parameters(x, scale, zero_point, qmin, qmax, axis)
    return _fake_quantize_codes(x, scale, zero_point, qmin, qmax, axis)


def fake_quantize(
    x: Tensor, scale: Scale, zero_point: ZeroPoint, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """Fake-quantize ``x`` with a straight-through gradient (formulas in the module docstring).

    Args:
        x: input of any shape.
        scale: per-tensor scale (a float or one-element tensor), or per-channel scales of
            shape ``[x.shape[axis]]``. Gradients do not flow into it.
        zero_point: like ``scale``, integer valued.
        qmin: smallest grid value.
        qmax: largest grid value.
        axis: the channel axis of per-channel parameters; ``None`` for per tensor.

    Returns:
        a tensor like ``x``, bit-equal to :func:`torch.fake_quantize_per_tensor_affine`
        (``axis=None``) or :func:`torch.fake_quantize_per_channel_affine` (but see the
        module docstring for float64 per tensor).
    """
    scale, zero_point = _parameters(x, scale, zero_point, qmin, qmax, axis)
    return _FakeQuantizeSTE.apply(x, scale, zero_point, qmin, qmax, axis)


def _parameters(
    x: Tensor, scale: Scale, zero_point: ZeroPoint, qmin: int, qmax: int, axis: int | None
) -> tuple[Tensor, Tensor]:
    """``scale`` (float32) and ``zero_point`` as detached tensors on ``x``'s device, checked
    against the grid and against ``x`` along ``axis``."""
    if qmin > qmax:
        raise ValueError(f"qmin={qmin} must not exceed qmax={qmax}.")
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device).detach()
    zero_point = torch.as_tensor(zero_point, device=x.device).detach()
    _broadcast(scale, x, axis)  # the shape errors, before any kernel sees them
    return scale, zero_point


class NonzeroIndex:
    """Flat indices of the non-zero entries of a large, mostly-zero CPU tensor, remembered
    for the tensor seen last, so that an input that is the same tensor at every step (a
    first layer's bag-of-words features) is searched once.

    Calling it with ``x`` returns the indices when ``x`` is on the CPU, has at least
    :data:`SPARSE_MIN_NUMEL` entries and fewer than :data:`SPARSE_SHARE` of them non-zero,
    else ``None``. The memory holds a weak reference to ``x`` and its version counter, so a
    different tensor, or ``x`` changed in place, is searched again. On GPUs it always answers
    ``None``: counting would wait on the device. Not saved or copied with its module.
    """

    def __init__(self) -> None:
        self._seen: tuple[Any, int, Tensor | None] | None = None

    def __call__(self, x: Tensor) -> Tensor | None:
        if x.device.type != "cpu" or x.numel() < SPARSE_MIN_NUMEL:
            return None
        if self._seen is not None:
            ref, version, index = self._seen
            if ref() is x and x._version == version:
                return index
        index = None
        if int(torch.count_nonzero(x)) < SPARSE_SHARE * x.numel():
            index = x.reshape(-1).nonzero().squeeze(1)
        self._seen = (weakref.ref(x), x._version, index)
        return index

    def __getstate__(self) -> dict[str, Any]:
        return {"_seen": None}

    def __deepcopy__(self, memo: dict[int, Any]) -> NonzeroIndex:
        return NonzeroIndex()


def on_nonzeros(x: Tensor, index: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """``x`` with ``fn`` applied to the entries at the flat ``index`` (its non-zeros): what
    applying ``fn`` to all of ``x`` gives when ``fn`` maps 0 to 0 with gradient 1 (a fake
    quantizer whose grid holds zero, with its straight-through gradient), at the cost of the
    non-zeros. Differentiable: the other entries pass their gradient unchanged."""
    flat = x.reshape(-1)
    return flat.index_put((index,), fn(flat[index])).reshape(x.shape)
