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
Fused, the LoRAP kernels of :mod:`.lorap_kernels` (launched through
:func:`~.lorap_kernels.launch_forward` / :func:`~.lorap_kernels.launch_backward` with a
:class:`~.lorap_kernels.Gather`) build each row block's ``h`` in registers from the gathered
codes (:func:`~.device_functions.load_h`), so the aggregate never reaches memory;
the backward kernel gathers it again rather than storing it.

The aggregation (order of the sum, the division by the degree, the optional fake
quantization) is the one of :func:`~.quant_aggregate.quant_aggregate_reference` followed by
``torch.fake_quantize_per_tensor_affine``, so ``h`` is bit-identical to the unfused
composition, and everything after it is :mod:`.lorap_fused`'s forward and backward.

Gradients flow to ``W_phi``, ``P_A`` and ``P_B``. The sources are integer codes, which take
no gradient, and their scales come from an observer, not from the loss.

Entry points: :func:`aggregate_lorap_forward` and :func:`aggregate_lorap_forward_range`,
which take the sources as one :class:`~.quant_aggregate.CsrBlock`, the prompt as one
:class:`~.lorap_checks.Prompt` and each grid as one :class:`~.quant_grid.QuantGrid` (of
Python numbers or tensors), the ops ``torch.ops.lorap_dist.aggregate_lorap``,
``aggregate_lorap_backward`` and ``aggregate_lorap_range``, and the pure-torch
:func:`aggregate_lorap_reference` (the test oracle), which takes what the entry points take.
CUDA tensors take the Triton kernels, CPU tensors the pure-torch path, unless
:func:`~._triton.triton_on_cpu` is active.

The registered ops keep flat schemas (``torch.library`` schemas hold tensors and scalars, not
tuples; 21 inputs for the forward) and rebuild the three tuples at once; the autograd reads
the inputs by name (:class:`_ForwardInputs`). The module is one op (reference, CPU path,
launchers, registration and autograd beside each other, as the other ops' files are).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .lorap_checks import Prompt, check_prompt
from .lorap_cpu import (
    has_rows,
    lorap_backward_cpu,
    lorap_forward_cpu,
    no_residuals,
    prompted_reference,
)
from .lorap_fused import lorap_reference
from .lorap_kernels import Gather, launch_backward, launch_forward, launch_range, takes_triton
from .quant_aggregate import CsrBlock, quant_aggregate_cpu, quant_aggregate_reference
from .quant_grid import QuantGrid, codes_dtype, grid_tensors

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


def _aggregate(block: CsrBlock, d: int, agg: QuantGrid | None, oracle: bool = False) -> Tensor:
    """The ``[num_dst, d]`` fp32 aggregate ``h``, fake-quantized on ``agg`` when given: the
    CPU path (``oracle=False``, :func:`~.quant_aggregate.quant_aggregate_cpu`) or the test
    oracle (:func:`~.quant_aggregate.quant_aggregate_reference`), equal bit for bit."""
    h = (quant_aggregate_reference if oracle else quant_aggregate_cpu)(block, d)
    if agg is None:
        return h
    if isinstance(agg.scale, Tensor) or isinstance(agg.zero_point, Tensor):
        scale = torch.as_tensor(agg.scale, dtype=torch.float32, device=h.device).reshape(1)
        zp = torch.as_tensor(agg.zero_point, device=h.device).reshape(1).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(h, scale, zp, agg.qmin, agg.qmax)
    return torch.fake_quantize_per_tensor_affine(
        h, float(agg.scale), int(agg.zero_point), agg.qmin, agg.qmax
    )


def _gather(block: CsrBlock, agg: QuantGrid | None) -> Gather:
    """The block as the kernels of :mod:`.lorap_kernels` aggregate it in registers."""
    return Gather(block.indptr, block.indices, block.bits, block.reduce == "mean", agg)


def _agg_grid(
    agg_scale: Tensor | float | None,
    agg_zero_point: Tensor | int | None,
    agg_qmin: int,
    agg_qmax: int,
) -> QuantGrid | None:
    """The aggregate's grid from the ops' four inputs; ``None`` (the fp32 aggregate) when
    neither ``agg_scale`` nor ``agg_zero_point`` is given (one alone fails :func:`_check`)."""
    if agg_scale is None and agg_zero_point is None:
        return None
    return QuantGrid(agg_scale, agg_zero_point, agg_qmin, agg_qmax)


def _check(
    block: CsrBlock, prompt: Prompt, agg: QuantGrid | None, check_values: bool = True
) -> None:
    """Raise a ValueError naming the argument when the block, the prompt or the aggregate's
    grid is malformed (the output grid is checked by the callers that have one)."""
    w_phi = prompt.w_phi
    if w_phi.dim() != 2:
        raise ValueError(f"w_phi must be a 2-D [d, k] tensor; got shape {tuple(w_phi.shape)}.")
    d = w_phi.shape[0]
    block.check(d)
    check_prompt(prompt, d, block.src_codes.device)
    if agg is not None:
        if agg.scale is None or agg.zero_point is None:
            raise ValueError(_AGG_PAIR)
        agg.check(block.src_codes.device, check_values, "agg_")


def aggregate_lorap_reference(
    block: CsrBlock, prompt: Prompt, grid: QuantGrid, agg_grid: QuantGrid | None = None
) -> tuple[Tensor, Tensor]:
    """Pure-torch aggregation then LoRAP: ``(codes, out)``, differentiable in the prompt's
    ``w_phi``, ``p_a`` and ``p_b``; the test oracle. ``block``, ``prompt`` and the output
    ``grid`` as :func:`aggregate_lorap_forward` takes them; ``agg_grid`` is the aggregate's
    ``(scale, zero_point, qmin, qmax)``, or ``None`` to leave it in fp32."""
    block, prompt = CsrBlock(*block), Prompt(*prompt)
    agg = None if agg_grid is None else _agg_grid(*agg_grid)
    _check(block, prompt, agg)
    h = _aggregate(block, prompt.w_phi.shape[0], agg, oracle=True)
    return lorap_reference(h, prompt, grid)


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
        src_codes, src_scale, indptr, indices, bits, reduce: the CSR block and its sources
            (:class:`~.quant_aggregate.CsrBlock`; ``d`` is ``w_phi``'s row count).
        w_phi, p_a, p_b: the prompt, ``[d, k]``, ``[k, r]``, ``[r, d]``.
        scale, zero_point, qmin, qmax: the output grid (one-element tensors, no host sync).
        agg_scale, agg_zero_point, agg_qmin, agg_qmax: the aggregate's grid, or ``None`` to
            prompt the fp32 aggregate.
        saved_h, saved_y, saved_w: what :func:`aggregate_lorap_range` returned for the same
            inputs; the CPU path reuses them, the Triton path ignores them.
        keep_residuals: keep what the backward needs (the CPU path only).

    ``out`` is ``[num_dst, d]`` fp32 and ``codes`` ``[num_dst, d]`` in
    :func:`~.quant_grid.codes_dtype`. The residuals (``h`` ``[N, d]`` fp32, the softmax
    weights ``[N, k]`` fp32, the straight-through mask ``[N, d]`` bool) are kept by the CPU
    path when ``keep_residuals``; the Triton path returns them with 0 rows, its backward
    gathers ``h`` again.
    """
    block = CsrBlock(src_codes, src_scale, indptr, indices, bits, reduce)
    agg = _agg_grid(agg_scale, agg_zero_point, agg_qmin, agg_qmax)
    prompt, grid = Prompt(w_phi, p_a, p_b), QuantGrid(scale, zero_point, qmin, qmax)
    _check(block, prompt, agg)
    grid.check(src_codes.device)
    d = w_phi.shape[0]
    if takes_triton(src_codes, d):
        codes, out = launch_forward(src_codes, prompt, src_scale, grid, gather=_gather(block, agg))
        return out, codes, _no_rows(src_codes, d), *no_residuals(out, w_phi)
    h = saved_h if has_rows(saved_h) else _aggregate(block, d, agg)
    codes, out, w, mask = lorap_forward_cpu(h, prompt, None, grid, saved_y, saved_w, keep_residuals)
    # Outputs may not alias inputs: a reused saved_h is handed on as a copy.
    h = h.clone() if h is saved_h else h
    return out, codes, h if keep_residuals else _no_rows(src_codes, d), w, mask


@aggregate_lorap.register_fake
def _(src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, scale, zero_point,
      qmin, qmax, agg_scale=None, agg_zero_point=None, agg_qmin=0, agg_qmax=1, saved_h=None,
      saved_y=None, saved_w=None, keep_residuals=True):  # fmt: skip
    block = CsrBlock(src_codes, src_scale, indptr, indices, bits, reduce)
    agg = _agg_grid(agg_scale, agg_zero_point, agg_qmin, agg_qmax)
    _check(block, Prompt(w_phi, p_a, p_b), agg, check_values=False)
    n, d, k = block.num_dst, w_phi.shape[0], w_phi.shape[1]
    out = src_codes.new_empty((n, d), dtype=torch.float32)
    codes = src_codes.new_empty((n, d), dtype=codes_dtype(qmin, qmax))
    if takes_triton(src_codes, d) or not keep_residuals:
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
    block = CsrBlock(src_codes, src_scale, indptr, indices, bits, reduce)
    agg = _agg_grid(agg_scale, agg_zero_point, agg_qmin, agg_qmax)
    prompt, grid = Prompt(w_phi, p_a, p_b), QuantGrid(scale, zero_point, qmin, qmax)
    _check(block, prompt, agg)
    num_dst, d = block.num_dst, w_phi.shape[0]
    if tuple(grad_out.shape) != (num_dst, d):
        raise ValueError(
            f"grad_out must be [num_dst, d] = [{num_dst}, {d}]; got {tuple(grad_out.shape)}."
        )
    if takes_triton(src_codes, d):
        _, *grads = launch_backward(
            grad_out, src_codes, prompt, src_scale, grid, gather=_gather(block, agg)
        )
        return tuple(grads)
    h = saved_h if has_rows(saved_h) else _aggregate(block, d, agg)
    _, *grads = lorap_backward_cpu(
        grad_out, h, prompt, None, grid, saved_w, saved_mask, need_grad_h=False
    )
    return tuple(grads)


@aggregate_lorap_backward.register_fake
def _(grad_out, src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, scale,
      zero_point, qmin, qmax, agg_scale=None, agg_zero_point=None, agg_qmin=0, agg_qmax=1,
      saved_h=None, saved_w=None, saved_mask=None):  # fmt: skip
    return torch.empty_like(w_phi), torch.empty_like(p_a), torch.empty_like(p_b)


class _ForwardInputs(NamedTuple):
    """The inputs of :func:`aggregate_lorap`, by name, in its schema's order (all of them:
    the autograd receives every input, defaults filled in)."""

    src_codes: Tensor
    src_scale: Tensor
    indptr: Tensor
    indices: Tensor
    bits: int
    reduce: str
    w_phi: Tensor
    p_a: Tensor
    p_b: Tensor
    scale: Tensor
    zero_point: Tensor
    qmin: int
    qmax: int
    agg_scale: Tensor | None
    agg_zero_point: Tensor | None
    agg_qmin: int
    agg_qmax: int
    saved_h: Tensor | None
    saved_y: Tensor | None
    saved_w: Tensor | None
    keep_residuals: bool


_NO_GRADIENTS = _ForwardInputs(*(None,) * len(_ForwardInputs._fields))


def _setup_context(ctx, inputs, output) -> None:
    inputs = _ForwardInputs(*inputs)
    _, _, saved_h, saved_w, saved_mask = output
    ctx.mark_non_differentiable(saved_h, saved_w, saved_mask)
    ctx.save_for_backward(
        inputs.src_codes, inputs.src_scale, inputs.indptr, inputs.indices, inputs.w_phi,
        inputs.p_a, inputs.p_b, inputs.scale, inputs.zero_point, inputs.agg_scale,
        inputs.agg_zero_point, saved_h, saved_w, saved_mask,
    )  # fmt: skip
    ctx.options = (inputs.bits, inputs.reduce, inputs.qmin, inputs.qmax, inputs.agg_qmin,
                   inputs.agg_qmax)  # fmt: skip


def _backward(ctx, grad_out, grad_codes, grad_h, grad_w, grad_mask):
    if grad_out is None:
        return tuple(_NO_GRADIENTS)
    (src_codes, src_scale, indptr, indices, w_phi, p_a, p_b, scale, zero_point, agg_scale,
     agg_zero_point, saved_h, saved_w, saved_mask) = ctx.saved_tensors  # fmt: skip
    bits, reduce, qmin, qmax, agg_qmin, agg_qmax = ctx.options
    g_w_phi, g_p_a, g_p_b = aggregate_lorap_backward(
        grad_out, src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, scale,
        zero_point, qmin, qmax, agg_scale, agg_zero_point, agg_qmin, agg_qmax, saved_h, saved_w,
        saved_mask,
    )  # fmt: skip
    return tuple(_NO_GRADIENTS._replace(w_phi=g_w_phi, p_a=g_p_a, p_b=g_p_b))


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
    block = CsrBlock(src_codes, src_scale, indptr, indices, bits, reduce)
    agg = _agg_grid(agg_scale, agg_zero_point, agg_qmin, agg_qmax)
    prompt = Prompt(w_phi, p_a, p_b)
    _check(block, prompt, agg)
    d, k = w_phi.shape
    if block.num_dst == 0:
        raise ValueError("the block has no destination rows, so the range of y is undefined.")
    if takes_triton(src_codes, d):
        y_range = launch_range(src_codes, prompt, src_scale, gather=_gather(block, agg))
        return y_range, _no_rows(src_codes, d), _no_rows(src_codes, d), _no_rows(src_codes, k)
    h = _aggregate(block, d, agg)
    y, w = prompted_reference(h, prompt, None, with_weights=True)
    return torch.stack(torch.aminmax(y)), h, y, w


@aggregate_lorap_range.register_fake
def _(src_codes, src_scale, indptr, indices, bits, reduce, w_phi, p_a, p_b, agg_scale=None,
      agg_zero_point=None, agg_qmin=0, agg_qmax=1):  # fmt: skip
    block = CsrBlock(src_codes, src_scale, indptr, indices, bits, reduce)
    agg = _agg_grid(agg_scale, agg_zero_point, agg_qmin, agg_qmax)
    _check(block, Prompt(w_phi, p_a, p_b), agg, check_values=False)
    n, (d, k) = block.num_dst, w_phi.shape
    y_range = src_codes.new_empty((2,), dtype=torch.float32)
    if takes_triton(src_codes, d):
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


def _agg_args(agg_grid: QuantGrid | None, device: torch.device) -> tuple:
    """The ops' four aggregate-grid inputs ``(agg_scale, agg_zero_point, agg_qmin, agg_qmax)``
    for an ``agg_grid`` of Python numbers or tensors (a 4-tuple is accepted)."""
    if agg_grid is None:
        return None, None, 0, 1
    agg = QuantGrid(*agg_grid)
    if agg.scale is None or agg.zero_point is None:
        raise ValueError(_AGG_PAIR)
    return tuple(agg.as_tensors(device))


def aggregate_lorap_forward_range(
    block: CsrBlock, prompt: Prompt, *, agg_grid: QuantGrid | None = None
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """``(y_range, saved)``: the range pass of :func:`aggregate_lorap_forward`, on detached
    prompt parameters; pass ``saved`` to the forward on the same inputs."""
    block = CsrBlock(*block)
    agg = _agg_args(agg_grid, block.src_codes.device)
    params = tuple(t.detach() for t in prompt)
    y_range, *saved = torch.ops.lorap_dist.aggregate_lorap_range(*block, *params, *agg)
    return y_range, tuple(saved)


def aggregate_lorap_forward(
    block: CsrBlock,
    prompt: Prompt,
    grid: QuantGrid,
    *,
    agg_grid: QuantGrid | None = None,
    saved: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """Aggregate the integer sources over the CSR block, add the LoRAP prompt, re-quantize:
    the dequantized ``[num_dst, d]`` output, differentiable in the prompt's ``w_phi``,
    ``p_a`` and ``p_b``.

    Args:
        block: the sources and the CSR block (:class:`~.quant_aggregate.CsrBlock`; ``d`` is
            ``w_phi``'s row count).
        prompt: ``(w_phi [d, k], p_a [k, r], p_b [r, d])``.
        grid: the output grid ``(scale, zero_point, qmin, qmax)``.
        agg_grid: the aggregate's grid (``None``: no quantization between aggregation and
            prompt).
        saved: what :func:`aggregate_lorap_forward_range` returned for the same inputs
            (reused on CPU).

    Grids may hold Python numbers or one-element tensors; tuples are accepted for all three.
    """
    block, (w_phi, p_a, p_b), (scale, zero_point, qmin, qmax) = CsrBlock(*block), prompt, grid
    device = block.src_codes.device
    scale, zero_point = grid_tensors(scale, zero_point, device)
    saved_h, saved_y, saved_w = saved if saved is not None else (None, None, None)
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in (w_phi, p_a, p_b))
    inputs = _ForwardInputs(
        *block, w_phi, p_a, p_b, scale, zero_point, int(qmin), int(qmax),
        *_agg_args(agg_grid, device), saved_h, saved_y, saved_w, keep,
    )  # fmt: skip
    return aggregate_lorap(*inputs)[0]
