"""Quantized aggregation handed straight to LoRAP: gather, reduce, prompt, re-quantize.

The fused form of a message-passing layer's middle for sources that arrive as integer codes
(the INT8 / INT4 features of the feature exchange)::

    h     = AGG_{e in [indptr[i], indptr[i+1])} q[indices[e]] * s[indices[e]]   (sum or mean)
    h     = fake_quantize(h, agg_scale, agg_zero_point, agg_qmin, agg_qmax)    (optional)
    y     = h + softmax(h @ W_phi) @ P_A @ P_B
    codes = clamp(rint(y / scale) + zero_point, qmin, qmax)
    out   = (codes - zero_point) * scale

Unfused this is :mod:`.quant_aggregate` writing the ``N x d`` fp32 aggregate and
:mod:`.lorap_fused` reading it back (twice in training: the range pass and the forward).
Fused, the Triton kernels of :mod:`.lorap_fused` build each row block's ``h`` in registers
from the gathered codes (their ``GATHER`` path), so the aggregate never reaches memory; the
backward kernel gathers it again rather than storing it.

The aggregation (order of the sum, the division by the degree, the optional fake
quantization) is the one of :func:`~.quant_aggregate.quant_aggregate_reference` followed by
``torch.fake_quantize_per_tensor_affine``, so ``h`` is bit-identical to the unfused
composition, and everything after it is :mod:`.lorap_fused`'s forward and backward.

Gradients flow to ``W_phi``, ``P_A`` and ``P_B``. The sources are integer codes, which take
no gradient, and their scales come from an observer, not from the loss.

Entry points: :func:`aggregate_lorap_forward` and :func:`aggregate_lorap_forward_range`
(Python numbers or tensors for the grids), the ops ``torch.ops.lorap_dist.aggregate_lorap``,
``aggregate_lorap_backward`` and ``aggregate_lorap_range``, and the pure-torch
:func:`aggregate_lorap_reference` (the test oracle). CUDA tensors take the Triton kernels,
CPU tensors the pure-torch path, unless :func:`~._triton.triton_on_cpu` is active.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import lorap_fused as lf
from . import quant_aggregate as qa

__all__ = [
    "aggregate_lorap",
    "aggregate_lorap_backward",
    "aggregate_lorap_forward",
    "aggregate_lorap_forward_range",
    "aggregate_lorap_range",
    "aggregate_lorap_reference",
]

_AGG_PAIR = (
    "agg_scale and agg_zero_point go together: pass both to quantize the aggregate, or neither."
)


def _check(
    src_codes: Tensor,
    src_scale: Tensor,
    indptr: Tensor,
    indices: Tensor,
    bits: int,
    reduce: str,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    agg_scale: Tensor | float | None,
    agg_zero_point: Tensor | int | None,
    agg_qmin: int,
    agg_qmax: int,
    check_values: bool = True,
) -> None:
    """Raise a ValueError naming the argument when the block, the prompt or the aggregate's
    grid is malformed (the output grid is checked by the callers that have one)."""
    if w_phi.dim() != 2:
        raise ValueError(f"w_phi must be a 2-D [d, k] tensor; got shape {tuple(w_phi.shape)}.")
    d = w_phi.shape[0]
    qa._check_inputs(src_codes, src_scale, indptr, indices, d, bits, reduce)
    lf.check_prompt(w_phi, p_a, p_b, d, src_codes.device)
    if (agg_scale is None) != (agg_zero_point is None):
        raise ValueError(_AGG_PAIR)
    if agg_scale is not None:
        lf.check_grid(
            agg_scale, agg_zero_point, agg_qmin, agg_qmax, src_codes.device, check_values, "agg_"
        )


def _aggregate(
    src_codes: Tensor,
    src_scale: Tensor,
    indptr: Tensor,
    indices: Tensor,
    d: int,
    bits: int,
    reduce: str,
    agg_scale: Tensor | float | None,
    agg_zero_point: Tensor | int | None,
    agg_qmin: int,
    agg_qmax: int,
    oracle: bool = False,
) -> Tensor:
    """The ``[num_dst, d]`` fp32 aggregate ``h``, fake-quantized when a grid is given: the
    CPU path (``oracle=False``, :func:`~.quant_aggregate.quant_aggregate_cpu`) or the test
    oracle (:func:`~.quant_aggregate.quant_aggregate_reference`), equal bit for bit."""
    aggregate = qa.quant_aggregate_reference if oracle else qa.quant_aggregate_cpu
    h = aggregate(src_codes, src_scale, indptr, indices, d, bits, reduce)
    if agg_scale is None:
        return h
    if isinstance(agg_scale, Tensor) or isinstance(agg_zero_point, Tensor):
        scale = torch.as_tensor(agg_scale, dtype=torch.float32, device=h.device).reshape(1)
        zp = torch.as_tensor(agg_zero_point, device=h.device).reshape(1).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(h, scale, zp, agg_qmin, agg_qmax)
    return torch.fake_quantize_per_tensor_affine(
        h, float(agg_scale), int(agg_zero_point), agg_qmin, agg_qmax
    )


def aggregate_lorap_reference(
    src_codes: Tensor,
    src_scale: Tensor,
    indptr: Tensor,
    indices: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    scale: float,
    zero_point: int,
    qmin: int,
    qmax: int,
    bits: int = 8,
    reduce: str = "mean",
    agg_grid: tuple[float, int, int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Pure-torch aggregation then LoRAP: ``(codes, out)``, differentiable in ``w_phi``,
    ``p_a`` and ``p_b``; the test oracle. ``agg_grid`` is the aggregate's
    ``(scale, zero_point, qmin, qmax)``, or ``None`` to leave it in fp32."""
    agg = (None, None, 0, 1) if agg_grid is None else agg_grid
    _check(src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, *agg)
    h = _aggregate(
        src_codes, src_scale, indptr, indices, w_phi.shape[0], bits, reduce, *agg, oracle=True
    )
    return lf.lorap_reference(h, w_phi, p_a, p_b, scale, zero_point, qmin, qmax)


def _gather(
    indptr: Tensor,
    indices: Tensor,
    bits: int,
    reduce: str,
    agg_scale: Tensor | None,
    agg_zero_point: Tensor | None,
    agg_qmin: int,
    agg_qmax: int,
) -> lf.Gather:
    agg_grid = None
    if agg_scale is not None:
        agg_grid = lf._grid(agg_scale, agg_zero_point, indptr.device)
    return lf.Gather(indptr, indices, bits, reduce == "mean", agg_grid, agg_qmin, agg_qmax)


def _no_rows(src_codes: Tensor, cols: int, dtype: torch.dtype = torch.float32) -> Tensor:
    return src_codes.new_empty((0, cols), dtype=dtype)


# ----------------------------------------------------------------------------------------
# The registered ops.
# ----------------------------------------------------------------------------------------


@torch.library.custom_op("lorap_dist::aggregate_lorap", mutates_args=())
def aggregate_lorap(
    src_codes: Tensor,
    src_scale: Tensor,
    indptr: Tensor,
    indices: Tensor,
    bits: int,
    reduce: str,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    agg_scale: Tensor | None = None,
    agg_zero_point: Tensor | None = None,
    agg_qmin: int = 0,
    agg_qmax: int = 1,
    saved_h: Tensor | None = None,
    saved_y: Tensor | None = None,
    saved_w: Tensor | None = None,
    keep_residuals: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Aggregation and LoRAP as one op: ``(out, codes, saved_h, saved_w, saved_mask)``.

    Args:
        src_codes, src_scale, indptr, indices, bits, reduce: the CSR block and its sources,
            as :func:`~.quant_aggregate.quant_aggregate` takes them (``d`` is ``w_phi``'s
            row count).
        w_phi, p_a, p_b: the prompt, ``[d, k]``, ``[k, r]``, ``[r, d]``.
        scale, zero_point, qmin, qmax: the output grid (one-element tensors, no host sync).
        agg_scale, agg_zero_point, agg_qmin, agg_qmax: the aggregate's grid, or ``None`` to
            prompt the fp32 aggregate.
        saved_h, saved_y, saved_w: what :func:`aggregate_lorap_range` returned for the same
            inputs; the CPU path reuses them, the Triton path ignores them.
        keep_residuals: keep what the backward needs (the CPU path only).

    ``out`` is ``[num_dst, d]`` fp32 and ``codes`` ``[num_dst, d]`` in
    :func:`~.lorap_fused.codes_dtype`. The residuals (``h`` ``[N, d]`` fp32, the softmax
    weights ``[N, k]`` fp32, the straight-through mask ``[N, d]`` bool) are kept by the CPU
    path when ``keep_residuals``; the Triton path returns them with 0 rows, its backward
    gathers ``h`` again.
    """
    agg = (agg_scale, agg_zero_point, agg_qmin, agg_qmax)
    _check(src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, *agg)
    lf.check_grid(scale, zero_point, qmin, qmax, src_codes.device)
    num_dst, d = indptr.shape[0] - 1, w_phi.shape[0]
    if lf.takes_triton(src_codes, w_phi.shape[0]):
        out_grid = lf._grid(scale, zero_point, src_codes.device)
        codes, out = lf._launch_forward(
            src_codes, w_phi, p_a, p_b, src_scale, num_dst, out_grid, qmin, qmax,
            _gather(indptr, indices, bits, reduce, *agg), None, torch.float32,
        )  # fmt: skip
        return out, codes, _no_rows(src_codes, d), *lf._no_residuals(out, w_phi)
    h = saved_h
    if not lf._has_rows(h):
        h = _aggregate(src_codes, src_scale, indptr, indices, d, bits, reduce, *agg)
    codes, out, w, mask = lf._reference_forward(
        h, w_phi, p_a, p_b, None, scale, zero_point, qmin, qmax, saved_y, saved_w, keep_residuals
    )
    # Outputs may not alias inputs: a reused saved_h is handed on as a copy.
    h = h.clone() if h is saved_h else h
    return out, codes, h if keep_residuals else _no_rows(src_codes, d), w, mask


@aggregate_lorap.register_fake
def _(src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, scale, zero_point,
      qmin, qmax, agg_scale=None, agg_zero_point=None, agg_qmin=0, agg_qmax=1, saved_h=None,
      saved_y=None, saved_w=None, keep_residuals=True):  # fmt: skip
    agg = (agg_scale, agg_zero_point, agg_qmin, agg_qmax)
    _check(src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, *agg, False)
    n, d, k = indptr.shape[0] - 1, w_phi.shape[0], w_phi.shape[1]
    out = src_codes.new_empty((n, d), dtype=torch.float32)
    codes = src_codes.new_empty((n, d), dtype=lf.codes_dtype(qmin, qmax))
    if lf.takes_triton(src_codes, w_phi.shape[0]) or not keep_residuals:
        empty = (_no_rows(src_codes, d), _no_rows(src_codes, k), _no_rows(src_codes, d, torch.bool))
        return out, codes, *empty
    saved_h = src_codes.new_empty((n, d), dtype=torch.float32)
    saved_w = src_codes.new_empty((n, k), dtype=torch.float32)
    return out, codes, saved_h, saved_w, src_codes.new_empty((n, d), dtype=torch.bool)


@torch.library.custom_op("lorap_dist::aggregate_lorap_backward", mutates_args=())
def aggregate_lorap_backward(
    grad_out: Tensor,
    src_codes: Tensor,
    src_scale: Tensor,
    indptr: Tensor,
    indices: Tensor,
    bits: int,
    reduce: str,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    agg_scale: Tensor | None = None,
    agg_zero_point: Tensor | None = None,
    agg_qmin: int = 0,
    agg_qmax: int = 1,
    saved_h: Tensor | None = None,
    saved_w: Tensor | None = None,
    saved_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_w_phi, grad_p_a, grad_p_b)`` of :func:`aggregate_lorap`; the residuals are
    its outputs, and with none (0 rows) the backward gathers ``h`` and recomputes the rest."""
    agg = (agg_scale, agg_zero_point, agg_qmin, agg_qmax)
    _check(src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, *agg)
    num_dst, d = indptr.shape[0] - 1, w_phi.shape[0]
    if tuple(grad_out.shape) != (num_dst, d):
        raise ValueError(
            f"grad_out must be [num_dst, d] = [{num_dst}, {d}]; got {tuple(grad_out.shape)}."
        )
    if lf.takes_triton(src_codes, w_phi.shape[0]):
        out_grid = lf._grid(scale, zero_point, src_codes.device)
        _, *grads = lf._launch_backward(
            grad_out, src_codes, w_phi, p_a, p_b, src_scale, out_grid, qmin, qmax,
            _gather(indptr, indices, bits, reduce, *agg), None, None, torch.float32,
        )  # fmt: skip
        return tuple(grads)
    h = saved_h
    if not lf._has_rows(h):
        h = _aggregate(src_codes, src_scale, indptr, indices, d, bits, reduce, *agg)
    _, *grads = lf._lorap_backward_reference(
        grad_out, h, w_phi, p_a, p_b, None, scale, zero_point, qmin, qmax, saved_w, saved_mask,
        need_grad_h=False,
    )  # fmt: skip
    return tuple(grads)


@aggregate_lorap_backward.register_fake
def _(grad_out, src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, scale,
      zero_point, qmin, qmax, agg_scale=None, agg_zero_point=None, agg_qmin=0, agg_qmax=1,
      saved_h=None, saved_w=None, saved_mask=None):  # fmt: skip
    return torch.empty_like(w_phi), torch.empty_like(p_a), torch.empty_like(p_b)


_BLOCK_ARGS = 6  # src_codes, src_scale, indptr, indices, bits, reduce
_NUM_INPUTS = 21


def _setup_context(ctx, inputs, output) -> None:
    block = inputs[:_BLOCK_ARGS]
    w_phi, p_a, p_b, scale, zero_point, qmin, qmax = inputs[_BLOCK_ARGS : _BLOCK_ARGS + 7]
    agg_scale, agg_zero_point, agg_qmin, agg_qmax = inputs[_BLOCK_ARGS + 7 : _BLOCK_ARGS + 11]
    _, _, saved_h, saved_w, saved_mask = output
    ctx.mark_non_differentiable(saved_h, saved_w, saved_mask)
    ctx.save_for_backward(
        *block[:4], w_phi, p_a, p_b, scale, zero_point, agg_scale, agg_zero_point, saved_h,
        saved_w, saved_mask,
    )  # fmt: skip
    ctx.options = (block[4], block[5], qmin, qmax, agg_qmin, agg_qmax)


def _backward(ctx, grad_out, grad_codes, grad_h, grad_w, grad_mask):
    if grad_out is None:
        return (None,) * _NUM_INPUTS
    (src_codes, src_scale, indptr, indices, w_phi, p_a, p_b, scale, zero_point, agg_scale,
     agg_zero_point, saved_h, saved_w, saved_mask) = ctx.saved_tensors  # fmt: skip
    bits, reduce, qmin, qmax, agg_qmin, agg_qmax = ctx.options
    grads = aggregate_lorap_backward(
        grad_out, src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, scale,
        zero_point, qmin, qmax, agg_scale, agg_zero_point, agg_qmin, agg_qmax, saved_h, saved_w,
        saved_mask,
    )  # fmt: skip
    nones = (None,) * _NUM_INPUTS
    return (*nones[:_BLOCK_ARGS], *grads, *nones[_BLOCK_ARGS + 3 :])


aggregate_lorap.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("lorap_dist::aggregate_lorap_range", mutates_args=())
def aggregate_lorap_range(
    src_codes: Tensor,
    src_scale: Tensor,
    indptr: Tensor,
    indices: Tensor,
    bits: int,
    reduce: str,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    agg_scale: Tensor | None = None,
    agg_zero_point: Tensor | None = None,
    agg_qmin: int = 0,
    agg_qmax: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(y_range, saved_h, saved_y, saved_w)``: ``[min(y), max(y)]`` (fp32 ``[2]``) of the
    prompted aggregate, for the output quantizer to observe before the forward.

    The CPU path returns the aggregate, ``y`` and the softmax weights it computed on the way,
    for :func:`aggregate_lorap` to reuse; the Triton path writes none of them (0 rows).
    Not differentiable: an observed range takes no gradient.
    """
    agg = (agg_scale, agg_zero_point, agg_qmin, agg_qmax)
    _check(src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, *agg)
    num_dst, d, k = indptr.shape[0] - 1, w_phi.shape[0], w_phi.shape[1]
    if num_dst == 0:
        raise ValueError("the block has no destination rows, so the range of y is undefined.")
    if lf.takes_triton(src_codes, w_phi.shape[0]):
        y_range = lf._launch_forward(
            src_codes, w_phi, p_a, p_b, src_scale, num_dst, None, 0, 1,
            _gather(indptr, indices, bits, reduce, *agg), None, torch.float32,
        )  # fmt: skip
        return y_range, _no_rows(src_codes, d), _no_rows(src_codes, d), _no_rows(src_codes, k)
    h = _aggregate(src_codes, src_scale, indptr, indices, d, bits, reduce, *agg)
    y, w = lf._prompted_reference(h, w_phi, p_a, p_b, None, with_weights=True)
    return torch.stack(torch.aminmax(y)), h, y, w


@aggregate_lorap_range.register_fake
def _(src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, agg_scale=None,
      agg_zero_point=None, agg_qmin=0, agg_qmax=1):  # fmt: skip
    agg = (agg_scale, agg_zero_point, agg_qmin, agg_qmax)
    _check(src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, *agg, False)
    n, d, k = indptr.shape[0] - 1, w_phi.shape[0], w_phi.shape[1]
    y_range = src_codes.new_empty((2,), dtype=torch.float32)
    if lf.takes_triton(src_codes, w_phi.shape[0]):
        return y_range, _no_rows(src_codes, d), _no_rows(src_codes, d), _no_rows(src_codes, k)
    f32 = dict(dtype=torch.float32)
    return (
        y_range,
        src_codes.new_empty((n, d), **f32),
        src_codes.new_empty((n, d), **f32),
        src_codes.new_empty((n, k), **f32),
    )


# ----------------------------------------------------------------------------------------
# Python entry points.
# ----------------------------------------------------------------------------------------


def _agg_args(
    agg_grid: tuple[float | Tensor, int | Tensor, int, int] | None, device: torch.device
) -> tuple:
    if agg_grid is None:
        return None, None, 0, 1
    agg_scale, agg_zero_point, agg_qmin, agg_qmax = agg_grid
    if agg_scale is None or agg_zero_point is None:
        raise ValueError(_AGG_PAIR)
    agg_scale, agg_zero_point = lf._as_grid_tensors(agg_scale, agg_zero_point, device)
    return agg_scale, agg_zero_point, int(agg_qmin), int(agg_qmax)


def aggregate_lorap_forward_range(
    src_codes: Tensor,
    src_scale: Tensor,
    indptr: Tensor,
    indices: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    *,
    bits: int = 8,
    reduce: str = "mean",
    agg_grid: tuple[float | Tensor, int | Tensor, int, int] | None = None,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """``(y_range, saved)``: the range pass of :func:`aggregate_lorap_forward`, on detached
    prompt parameters; pass ``saved`` to the forward on the same inputs."""
    agg = _agg_args(agg_grid, src_codes.device)
    params = (w_phi.detach(), p_a.detach(), p_b.detach())
    y_range, *saved = torch.ops.lorap_dist.aggregate_lorap_range(
        src_codes, src_scale, indptr, indices, bits, reduce, *params, *agg
    )
    return y_range, tuple(saved)


def aggregate_lorap_forward(
    src_codes: Tensor,
    src_scale: Tensor,
    indptr: Tensor,
    indices: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    scale: float | Tensor,
    zero_point: int | Tensor,
    qmin: int,
    qmax: int,
    *,
    bits: int = 8,
    reduce: str = "mean",
    agg_grid: tuple[float | Tensor, int | Tensor, int, int] | None = None,
    saved: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """Aggregate the integer sources over the CSR block, add the LoRAP prompt, re-quantize:
    the dequantized ``[num_dst, d]`` output, differentiable in ``w_phi``, ``p_a`` and ``p_b``.

    ``agg_grid`` is the aggregate's ``(scale, zero_point, qmin, qmax)`` (``None``: no
    quantization between aggregation and prompt); ``saved`` is what
    :func:`aggregate_lorap_forward_range` returned for the same inputs (reused on CPU). Grids may be
    Python numbers or one-element tensors.
    """
    device = src_codes.device
    scale, zero_point = lf._as_grid_tensors(scale, zero_point, device)
    saved_h, saved_y, saved_w = saved if saved is not None else (None, None, None)
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in (w_phi, p_a, p_b))
    return aggregate_lorap(
        src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, scale, zero_point,
        int(qmin), int(qmax), *_agg_args(agg_grid, device), saved_h, saved_y, saved_w, keep,
    )[0]  # fmt: skip
