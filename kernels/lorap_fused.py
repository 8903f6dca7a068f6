"""Fused LoRAP prompt injection: softmax-weighted low-rank prompt, add, re-quantize.

LoRAP (Low-Rank Aggregation Prompting, arXiv 2601.15079) adds a learned, input-dependent
prompt to a quantized aggregate and re-quantizes the sum. Unfused this is six kernels
(GEMM, softmax, GEMM, GEMM, add, fake-quantize), each writing an ``N x d`` or ``N x k``
intermediate; fused, every row block reads ``h`` once and writes the codes and the
dequantized values once.

Forward, per row block (all arithmetic in fp32, whatever the storage dtype)::

    h      = h                      (float input)
           = codes_in * s_in        (int8 input, s_in per tensor [1] or per row [N])
    logits = h @ W_phi              # N x k
    w      = softmax(logits, dim=1)  # N x k
    t      = w @ P_A                 # N x r
    y      = h + t @ P_B             # N x d
    c      = rint(y * (1 / scale)) + zero_point   (round half to even, 1/scale in fp32)
    codes  = clamp(c, qmin, qmax)
    out    = (codes - zero_point) * scale

``out`` is bit-identical to ``torch.fake_quantize_per_tensor_affine(y, scale, zero_point,
qmin, qmax)`` on CPU whenever ``y`` is.

Range pass (the same kernel with ``RANGE_ONLY``): a quantizer that observes its input in
training needs ``[min(y), max(y)]`` before it can fix the grid ``y`` is quantized on, so
training runs the kernel twice: first writing only each program's ``(min y, max y)`` over
its valid entries to a ``[num_programs, 2]`` fp32 buffer, reduced by ``amin``/``amax``
(deterministic, no atomics), then quantizing with the updated range. Recomputing ``y``
costs a second read of ``h``; storing it would cost a write and a read of ``N x d``.

Backward (straight-through estimator, as the gradient of ``fake_quantize_per_tensor_affine``)::

    g_y    = g_out * [qmin <= c <= qmax]
    g_t    = g_y @ P_B^T                                  # N x r
    g_w    = g_t @ P_A^T                                  # N x k
    g_l    = w * (g_w - rowsum(w * g_w))                  # softmax backward, N x k
    g_h    = g_y + g_l @ W_phi^T                          # N x d (w.r.t. the dequantized h)
    g_W_phi = h^T @ g_l        g_P_A = w^T @ g_t        g_P_B = t^T @ g_y

The CPU path keeps ``w`` and the mask from its forward for the backward; the Triton
backward recomputes them from ``h`` (a re-read of ``h`` costs less than writing and reading
``N x (k + d)`` residuals). The weight gradients are sums over rows: each backward program
walks a fixed, strided set of row blocks, writes its partial sums to a
``[num_programs, ...]`` fp32 buffer, and ``torch.sum`` reduces the buffer afterwards:
deterministic, no atomics.

Conventions:

- codes are stored as ``int8`` when ``[qmin, qmax]`` fits in ``[-128, 127]``, ``uint8`` when
  it fits in ``[0, 255]`` and ``int32`` otherwise (:func:`codes_dtype`);
- ``out`` has ``h``'s dtype for float ``h`` and ``float32`` for ``int8`` ``h``; gradients have
  the dtype of the tensor they belong to (``float32`` for the dequantized ``int8`` ``h``);
- an ``int8`` input is dequantized symmetrically (no zero point): ``h = codes_in * s_in``;
- ``tl.dot`` on NVIDIA needs inner dimensions of at least 16 (fp16) or 8 (fp32), and LoRAP's
  ``k`` and ``r`` are often 4 or 8, so ``d``, ``k`` and ``r`` are padded to powers of two of at
  least 16 with masked loads: padded ``W_phi`` columns give logits of ``-inf`` (weight 0 after
  the softmax) and padded ``P_A``/``P_B`` entries are 0, so padding changes no result.

Entry points: :func:`lorap_forward` (what :mod:`lorap_dist.prompt.lorap` calls), the op
``torch.ops.lorap_dist.lorap_fused`` (:func:`lorap_fused`, returns ``(out, codes)`` and the
residuals its backward reads) and its backward op ``torch.ops.lorap_dist.lorap_fused_backward``,
the range op ``torch.ops.lorap_dist.lorap_range`` (:func:`lorap_range`), the pure-torch
:func:`lorap_reference` / :func:`lorap_range_reference`, the checked launchers
:func:`lorap_fused_triton` / :func:`lorap_fused_backward_triton` / :func:`lorap_range_triton`,
and the unchecked :func:`launch_forward` / :func:`launch_range` / :func:`launch_backward`,
which also take a :class:`Gather` (the form :mod:`.aggregate_lorap` launches). All launchers
also run on CPU tensors under ``TRITON_INTERPRET=1`` (tests). CUDA tensors take the Triton
kernels, CPU tensors the reference, unless :func:`triton_on_cpu` is active. Device functions
shared with the other kernels live in :mod:`.device_functions`, the grid's host side in
:mod:`.quant_grid`.

The ops take the output grid (``scale``, ``zero_point``) as one-element device tensors and
the kernels read it from memory (with ``1 / scale`` computed on the device by the same fp32
division): an observer's freshly updated range never has to reach the host, so a training
step has no host sync here and ``torch.compile`` traces the op without a graph break. The
launchers and :func:`lorap_forward` also accept Python numbers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._triton import cdiv, next_power_of_2, triton_on_cpu, use_triton
from .device_functions import fake_quantize, gather_aggregate, jit, round_code, tl
from .quant_grid import QuantGrid, check_grid, codes_dtype, grid_tensors, grid_values, inv_scale

__all__ = [
    "MAX_TRITON_WIDTH",
    "Gather",
    "check_prompt",
    "codes_dtype",
    "launch_backward",
    "launch_forward",
    "launch_range",
    "lorap_backward_cpu",
    "lorap_forward",
    "lorap_forward_cpu",
    "lorap_fused",
    "lorap_fused_backward",
    "lorap_fused_backward_triton",
    "lorap_fused_triton",
    "lorap_range",
    "lorap_range_reference",
    "lorap_range_triton",
    "lorap_reference",
    "no_residuals",
    "prompted_reference",
    "takes_triton",
    "triton_on_cpu",
]


# ----------------------------------------------------------------------------------------
# Triton kernels and their device functions (shared ones in ``device_functions``).
# ----------------------------------------------------------------------------------------


@jit
def _load_h(
    h_ptr,  # [N, d] float / int8 codes; with GATHER the source codes [num_src, row_bytes]
    in_scale_ptr,  # [N] or [1] fp32; with GATHER [num_src] or [1]
    in_scale_stride,
    indptr_ptr,  # [N + 1] CSR offsets over the rows (GATHER only)
    indices_ptr,  # [E] source row of each edge (GATHER only)
    row_bytes,
    agg_grid_ptr,  # [3] fp32 grid of the aggregate's quantizer (QUANT_AGG only)
    agg_qmin,
    agg_qmax,
    rows,
    row_mask,
    offs_d,
    d_mask,
    d,
    HAS_IN_SCALE: tl.constexpr,
    GATHER: tl.constexpr,
    BITS: tl.constexpr,
    MEAN: tl.constexpr,
    QUANT_AGG: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The fp32 ``[BLOCK_N, BLOCK_D]`` tile of ``h`` for ``rows`` (0 outside the tensor).

    Without ``GATHER`` it is read from ``h`` (dequantized with ``in_scale`` for int8 codes).
    With ``GATHER`` it is the quantized aggregation of :mod:`.quant_aggregate`, done in
    registers by :func:`~.device_functions.gather_aggregate`: no ``h`` is written.
    """
    if GATHER:
        h = gather_aggregate(
            h_ptr, in_scale_ptr, in_scale_stride, indptr_ptr, indices_ptr, row_bytes,
            agg_grid_ptr, agg_qmin, agg_qmax, rows, row_mask, offs_d, d_mask,
            BITS, MEAN, QUANT_AGG, BLOCK_N, BLOCK_D,
        )  # fmt: skip
    else:
        tile = rows.to(tl.int64)[:, None] * d + offs_d[None, :]
        h = tl.load(h_ptr + tile, mask=row_mask[:, None] & d_mask[None, :], other=0)
        h = h.to(tl.float32)
        if HAS_IN_SCALE:
            s_in = tl.load(
                in_scale_ptr + rows.to(tl.int64) * in_scale_stride, mask=row_mask, other=0.0
            )
            h = h * s_in[:, None]
    return h


@jit
def _load_prompt(w_phi_ptr, p_a_ptr, p_b_ptr, d, k, r, offs_d, offs_k, offs_r):
    """``W_phi``, ``P_A``, ``P_B`` as fp32 tiles padded with zeros to the blocks."""
    d_mask, k_mask, r_mask = offs_d < d, offs_k < k, offs_r < r
    w_phi = tl.load(
        w_phi_ptr + offs_d[:, None] * k + offs_k[None, :],
        mask=d_mask[:, None] & k_mask[None, :],
        other=0.0,
    ).to(tl.float32)
    p_a = tl.load(
        p_a_ptr + offs_k[:, None] * r + offs_r[None, :],
        mask=k_mask[:, None] & r_mask[None, :],
        other=0.0,
    ).to(tl.float32)
    p_b = tl.load(
        p_b_ptr + offs_r[:, None] * d + offs_d[None, :],
        mask=r_mask[:, None] & d_mask[None, :],
        other=0.0,
    ).to(tl.float32)
    return w_phi, p_a, p_b


@jit
def _prompted(h, w_phi, p_a, p_b, k_mask):
    """``(w, t, y)``: softmax weights, ``w @ P_A`` and ``y = h + t @ P_B`` of a row block;
    padded ``k`` columns get logits of ``-inf``, so weight 0."""
    logits = tl.dot(h, w_phi, input_precision="ieee")
    logits = tl.where(k_mask[None, :], logits, float("-inf"))
    e = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    w = e / tl.sum(e, axis=1)[:, None]
    t = tl.dot(w, p_a, input_precision="ieee")
    return w, t, h + tl.dot(t, p_b, input_precision="ieee")


@jit
def _lorap_fwd_kernel(
    h_ptr,  # [N, d] float, or int8 codes when HAS_IN_SCALE; source codes with GATHER
    in_scale_ptr,  # [N] or [1] fp32 (read with stride in_scale_stride)
    in_scale_stride,
    indptr_ptr,  # GATHER only, see _load_h
    indices_ptr,
    row_bytes,
    agg_grid_ptr,
    agg_qmin,
    agg_qmax,
    w_phi_ptr,  # [d, k]
    p_a_ptr,  # [k, r]
    p_b_ptr,  # [r, d]
    codes_ptr,  # [N, d] int8 / uint8 / int32 (unused when RANGE_ONLY)
    out_ptr,  # [N, d] (unused when RANGE_ONLY)
    range_part_ptr,  # [num_programs, 2] fp32 (only written when RANGE_ONLY)
    n_rows,
    d,
    k,
    r,
    grid_ptr,  # [3] fp32: scale, 1 / scale, zero point (unused when RANGE_ONLY)
    qmin,
    qmax,
    HAS_IN_SCALE: tl.constexpr,
    RANGE_ONLY: tl.constexpr,
    GATHER: tl.constexpr,
    BITS: tl.constexpr,
    MEAN: tl.constexpr,
    QUANT_AGG: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Forward: ``y = h + softmax(h W_phi) P_A P_B`` of a row block, fake-quantized to
    ``(codes, out)``; with ``RANGE_ONLY`` only the block's ``(min y, max y)``."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, BLOCK_R)
    row_mask = rows < n_rows
    d_mask = offs_d < d
    k_mask = offs_k < k
    tile_mask = row_mask[:, None] & d_mask[None, :]
    # int64 before the stride multiply: rows * d overflows int32 beyond 2**31 elements.
    tile = rows.to(tl.int64)[:, None] * d + offs_d[None, :]

    w_phi, p_a, p_b = _load_prompt(w_phi_ptr, p_a_ptr, p_b_ptr, d, k, r, offs_d, offs_k, offs_r)
    h = _load_h(
        h_ptr, in_scale_ptr, in_scale_stride, indptr_ptr, indices_ptr, row_bytes, agg_grid_ptr,
        agg_qmin, agg_qmax, rows, row_mask, offs_d, d_mask, d,
        HAS_IN_SCALE, GATHER, BITS, MEAN, QUANT_AGG, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    _, _, y = _prompted(h, w_phi, p_a, p_b, k_mask)

    if RANGE_ONLY:
        # The range pass: this block's min and max of y over valid entries, nothing else.
        y_min = tl.min(tl.min(tl.where(tile_mask, y, float("inf")), axis=1), axis=0)
        y_max = tl.max(tl.max(tl.where(tile_mask, y, float("-inf")), axis=1), axis=0)
        tl.store(range_part_ptr + pid.to(tl.int64) * 2, y_min)
        tl.store(range_part_ptr + pid.to(tl.int64) * 2 + 1, y_max)
    else:
        # The grid is read from device memory, so no host ever waits for the observer.
        code, out = fake_quantize(y, grid_ptr, qmin, qmax)
        tl.store(codes_ptr + tile, code.to(codes_ptr.dtype.element_ty), mask=tile_mask)
        tl.store(out_ptr + tile, out.to(out_ptr.dtype.element_ty), mask=tile_mask)


@jit
def _lorap_bwd_kernel(
    h_ptr,  # [N, d] float, or int8 codes when HAS_IN_SCALE; source codes with GATHER
    in_scale_ptr,  # [N] or [1] fp32
    in_scale_stride,
    indptr_ptr,  # GATHER only, see _load_h
    indices_ptr,
    row_bytes,
    agg_grid_ptr,
    agg_qmin,
    agg_qmax,
    grad_out_ptr,  # [N, d]
    w_phi_ptr,  # [d, k]
    p_a_ptr,  # [k, r]
    p_b_ptr,  # [r, d]
    grad_h_ptr,  # [N, d] (not written with GATHER: integer sources take no gradient)
    grad_w_phi_part_ptr,  # [num_programs, d, k] fp32
    grad_p_a_part_ptr,  # [num_programs, k, r] fp32
    grad_p_b_part_ptr,  # [num_programs, r, d] fp32
    n_rows,
    d,
    k,
    r,
    grid_ptr,  # [3] fp32: scale, 1 / scale, zero point
    qmin,
    qmax,
    HAS_IN_SCALE: tl.constexpr,
    GATHER: tl.constexpr,
    BITS: tl.constexpr,
    MEAN: tl.constexpr,
    QUANT_AGG: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Backward (straight-through): ``g_h`` per row block and this program's partial sums of
    ``g_W_phi``, ``g_P_A``, ``g_P_B`` over every ``num_programs``-th block."""
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    num_blocks = tl.cdiv(n_rows, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, BLOCK_R)
    d_mask = offs_d < d
    k_mask = offs_k < k
    r_mask = offs_r < r
    dk_mask = d_mask[:, None] & k_mask[None, :]
    kr_mask = k_mask[:, None] & r_mask[None, :]
    rd_mask = r_mask[:, None] & d_mask[None, :]

    w_phi, p_a, p_b = _load_prompt(w_phi_ptr, p_a_ptr, p_b_ptr, d, k, r, offs_d, offs_k, offs_r)

    acc_w_phi = tl.zeros((BLOCK_D, BLOCK_K), dtype=tl.float32)
    acc_p_a = tl.zeros((BLOCK_K, BLOCK_R), dtype=tl.float32)
    acc_p_b = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)

    for block in range(pid, num_blocks, num_programs):
        rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < n_rows
        tile_mask = row_mask[:, None] & d_mask[None, :]
        tile = rows.to(tl.int64)[:, None] * d + offs_d[None, :]

        # Recompute the forward: cheaper than storing w, t and the STE mask.
        h = _load_h(
            h_ptr, in_scale_ptr, in_scale_stride, indptr_ptr, indices_ptr, row_bytes,
            agg_grid_ptr, agg_qmin, agg_qmax, rows, row_mask, offs_d, d_mask, d,
            HAS_IN_SCALE, GATHER, BITS, MEAN, QUANT_AGG, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        w, t, y = _prompted(h, w_phi, p_a, p_b, k_mask)
        code = round_code(y, grid_ptr, qmin, qmax)
        keep = (code >= qmin * 1.0) & (code <= qmax * 1.0) & tile_mask

        g_out = tl.load(grad_out_ptr + tile, mask=tile_mask, other=0.0).to(tl.float32)
        # Rows outside the tensor get g_y = 0, so every product below vanishes for them.
        g_y = tl.where(keep, g_out, 0.0)
        g_t = tl.dot(g_y, tl.trans(p_b), input_precision="ieee")
        g_w = tl.dot(g_t, tl.trans(p_a), input_precision="ieee")
        g_l = w * (g_w - tl.sum(w * g_w, axis=1)[:, None])
        if not GATHER:
            g_h = g_y + tl.dot(g_l, tl.trans(w_phi), input_precision="ieee")
            tl.store(grad_h_ptr + tile, g_h.to(grad_h_ptr.dtype.element_ty), mask=tile_mask)

        acc_p_b += tl.dot(tl.trans(t), g_y, input_precision="ieee")
        acc_p_a += tl.dot(tl.trans(w), g_t, input_precision="ieee")
        acc_w_phi += tl.dot(tl.trans(h), g_l, input_precision="ieee")

    base = pid.to(tl.int64)
    tl.store(
        grad_w_phi_part_ptr + base * d * k + offs_d[:, None] * k + offs_k[None, :],
        acc_w_phi,
        mask=dk_mask,
    )
    tl.store(
        grad_p_a_part_ptr + base * k * r + offs_k[:, None] * r + offs_r[None, :],
        acc_p_a,
        mask=kr_mask,
    )
    tl.store(
        grad_p_b_part_ptr + base * r * d + offs_r[:, None] * d + offs_d[None, :],
        acc_p_b,
        mask=rd_mask,
    )


# ----------------------------------------------------------------------------------------
# Checks, reference and launchers.
# ----------------------------------------------------------------------------------------


def _out_dtype(h: Tensor) -> torch.dtype:
    return torch.float32 if h.dtype == torch.int8 else h.dtype


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def _check_inputs(
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    scale: float,
    zero_point: int,
    qmin: int,
    qmax: int,
    check_values: bool = True,
) -> None:
    """Raise a ValueError that names the argument when shapes, dtypes or ranges are wrong
    (the grid's checks are those of :func:`~.quant_grid.check_grid`)."""
    _check_operands(h, w_phi, p_a, p_b, in_scale)
    check_grid(scale, zero_point, qmin, qmax, h.device, check_values)


def _check_operands(
    h: Tensor, w_phi: Tensor, p_a: Tensor, p_b: Tensor, in_scale: Tensor | None
) -> None:
    """The shape, dtype and device checks of :func:`_check_inputs`, without the grid."""
    if h.dim() != 2:
        raise ValueError(f"h must be a 2-D [N, d] tensor; got shape {tuple(h.shape)}.")
    n, d = h.shape
    if h.dtype == torch.int8:
        if in_scale is None:
            raise ValueError(
                "h is int8 codes, so in_scale (fp32, shape [1] or [N]) is required to "
                "dequantize it; pass in_scale, or pass a float h."
            )
    elif h.dtype not in _FLOATS:
        raise ValueError(f"h must be float32, float16, bfloat16 or int8; got {h.dtype}.")
    elif in_scale is not None:
        raise ValueError("in_scale is only meaningful for an int8 h; drop it for a float h.")
    if in_scale is not None:
        if in_scale.dtype != torch.float32:
            raise ValueError(f"in_scale must be float32; got {in_scale.dtype}.")
        if in_scale.numel() not in (1, n) or in_scale.dim() > 1:
            raise ValueError(
                f"in_scale must have shape [1] (per tensor) or [N]={n} (per row); got "
                f"{tuple(in_scale.shape)}."
            )
        if in_scale.device != h.device:
            raise ValueError(f"in_scale is on {in_scale.device} but h is on {h.device}.")
    check_prompt(w_phi, p_a, p_b, d, h.device)


def check_prompt(w_phi: Tensor, p_a: Tensor, p_b: Tensor, d: int, device: torch.device) -> None:
    """The prompt parameters' checks of :func:`_check_operands` for an ``h`` of width ``d``."""
    for name, t in (("w_phi", w_phi), ("p_a", p_a), ("p_b", p_b)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor; got shape {tuple(t.shape)}.")
        if t.dtype not in _FLOATS:
            raise ValueError(f"{name} must be float32, float16 or bfloat16; got {t.dtype}.")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but the data is on {device}.")
    if w_phi.shape[0] != d:
        raise ValueError(f"w_phi must be [d, k] with d={d} (h's width); got {tuple(w_phi.shape)}.")
    k = w_phi.shape[1]
    if k < 1 or p_a.shape[0] != k:
        raise ValueError(
            f"p_a must be [k, r] with k={k} (w_phi's columns); got {tuple(p_a.shape)}."
        )
    r = p_a.shape[1]
    if r < 1 or tuple(p_b.shape) != (r, d):
        raise ValueError(f"p_b must be [r, d] = [{r}, {d}]; got {tuple(p_b.shape)}.")


def _dequantize(h: Tensor, in_scale: Tensor | None) -> Tensor:
    if in_scale is None:
        return h.float()
    s = in_scale.reshape(-1, 1) if in_scale.numel() > 1 else in_scale.reshape(1, 1)
    return h.float() * s


def prompted_reference(
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    with_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``y = h + softmax(h W_phi) P_A P_B`` in fp32, with the operations (and so the values)
    of :func:`lorap_dist.prompt.lorap_prompt` on fp32 inputs; ``(y, w)`` with the softmax
    weights ``w`` when ``with_weights``."""
    hf = _dequantize(h, in_scale)
    w = torch.softmax(hf @ w_phi.float(), dim=1)
    y = hf + (w @ p_a.float()) @ p_b.float()
    return (y, w) if with_weights else y


def lorap_range_reference(
    h: Tensor, w_phi: Tensor, p_a: Tensor, p_b: Tensor, in_scale: Tensor | None = None
) -> Tensor:
    """``[min(y), max(y)]`` (fp32, shape ``[2]``) of the prompted sum: the CPU path of
    :func:`lorap_range` and its test oracle."""
    _check_range_inputs(h, w_phi, p_a, p_b, in_scale)
    return torch.stack(torch.aminmax(prompted_reference(h, w_phi, p_a, p_b, in_scale)))


def _check_range_inputs(
    h: Tensor, w_phi: Tensor, p_a: Tensor, p_b: Tensor, in_scale: Tensor | None
) -> None:
    _check_operands(h, w_phi, p_a, p_b, in_scale)
    if h.shape[0] == 0:
        raise ValueError("h has no rows, so the range of y is undefined; skip the range pass.")


def lorap_reference(
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    scale: float,
    zero_point: int,
    qmin: int,
    qmax: int,
    in_scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Pure-torch LoRAP forward: the CPU path and the test oracle.

    Same formulas and conventions as the module docstring; differentiable (autograd through
    ``torch.fake_quantize_per_tensor_affine`` gives the straight-through gradient).

    Args:
        h: ``[N, d]`` float aggregate, or ``int8`` codes dequantized with ``in_scale``.
        w_phi: ``[d, k]``; p_a: ``[k, r]``; p_b: ``[r, d]``.
        scale, zero_point, qmin, qmax: the output quantizer (per-tensor affine).
        in_scale: ``[1]`` or ``[N]`` fp32 scale of an ``int8`` ``h``; ``None`` for float ``h``.

    Returns:
        ``(codes, out)``: ``[N, d]`` codes in :func:`codes_dtype` and ``[N, d]`` dequantized
        values in ``h``'s float dtype (``float32`` for ``int8`` ``h``).
    """
    _check_inputs(h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax)
    y = prompted_reference(h, w_phi, p_a, p_b, in_scale)
    out = torch.fake_quantize_per_tensor_affine(y, scale, zero_point, qmin, qmax)
    with torch.no_grad():
        codes = torch.clamp(torch.round(y * inv_scale(scale)) + zero_point, qmin, qmax)
    return codes.to(codes_dtype(qmin, qmax)), out.to(_out_dtype(h))


def lorap_backward_cpu(
    grad_out: Tensor,
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    scale: float | Tensor,
    zero_point: int | Tensor,
    qmin: int,
    qmax: int,
    saved_w: Tensor | None = None,
    saved_mask: Tensor | None = None,
    need_grad_h: bool = True,
) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """Closed-form backward of the module docstring, in pure torch (the CPU backward).

    With the forward's softmax weights ``saved_w`` and straight-through mask ``saved_mask``
    (what :func:`lorap_forward_cpu` keeps) the forward is not recomputed; without them it is.
    ``grad_h`` is ``None`` when not ``need_grad_h``.
    """
    hf = _dequantize(h, in_scale)
    wf, af, bf = w_phi.float(), p_a.float(), p_b.float()
    if _has_rows(saved_w) and _has_rows(saved_mask):
        w, mask = saved_w, saved_mask
        t = w @ af
    else:
        w = torch.softmax(hf @ wf, dim=1)
        t = w @ af
        y = hf + t @ bf
        _, inv, zp = grid_values(scale, zero_point, h.device)
        c = torch.round(y * inv) + zp
        mask = (c >= qmin) & (c <= qmax)
    g_y = grad_out.float() * mask
    g_t = g_y @ bf.T
    g_w = g_t @ af.T
    g_l = w * (g_w - (w * g_w).sum(dim=1, keepdim=True))
    g_h = torch.addmm(g_y, g_l, wf.T).to(_out_dtype(h)) if need_grad_h else None
    # The weight gradients as (narrow^T @ wide)^T: ``hf.T @ g_l`` ([d, N] @ [N, k]) runs 12x
    # slower on CPU than ``(g_l.T @ hf).T`` at N = 100k, d = 64, k = 8.
    return (
        g_h,
        (g_l.T @ hf).T.contiguous().to(w_phi.dtype),
        (w.T @ g_t).to(p_a.dtype),
        (t.T @ g_y).to(p_b.dtype),
    )


def _has_rows(t: Tensor | None) -> bool:
    return t is not None and t.shape[0] > 0


def _default_block_n(n: int, block_d: int, device: torch.device) -> int:
    if device.type != "cuda":
        # The interpreter costs ~0.4 ms per program and per loop trip: few, large blocks.
        return max(16, min(256, next_power_of_2(n)))
    # Keep the [BLOCK_N, BLOCK_D] fp32 tiles (h, y, grad) within registers: 8192 elements.
    return max(16, min(128, 8192 // block_d))


def _launch_options(device: torch.device, block_d: int, backward: bool = False) -> dict:
    if device.type != "cuda":
        return {}
    # No FMA contraction: y * inv_scale must round before the +1.5*2**23 of the rint trick,
    # as it does in fake_quantize_per_tensor_affine.
    options = {"num_warps": 8 if block_d >= 256 else 4, "enable_fp_fusion": False}
    if backward and block_d >= 256:
        # The backward's row-block loop is software-pipelined 3 deep by default: at d = 256
        # that takes 205 KB of shared memory per block, over the A100's 163 KB (and at
        # d = 512, 233 KB, over the H100's 227 KB). Without pipelining: 121 KB and 149 KB.
        options["num_stages"] = 1
    return options


# The widest h the Triton kernels take: each row block holds whole rows (BLOCK_D =
# next_power_of_2(d)), and beyond 512 the backward's shared memory exceeds what a block may
# use. Wider inputs run the pure-torch path on their own device.
MAX_TRITON_WIDTH = 512


def takes_triton(t: Tensor, d: int) -> bool:
    """Whether an op on ``t`` (rows of width ``d``) runs the Triton kernels."""
    return use_triton(t) and d <= MAX_TRITON_WIDTH


class Gather(NamedTuple):
    """Where the kernels' ``h`` comes from when it is aggregated in registers (see
    :func:`~.device_functions.gather_aggregate`): the CSR block over the ``h`` rows, the
    source codes' width, the reduction, and the aggregate's quantizer (``None``: the fp32
    aggregate is prompted)."""

    indptr: Tensor
    indices: Tensor
    bits: int
    mean: bool
    agg: QuantGrid | None = None

    @property
    def num_rows(self) -> int:
        return self.indptr.shape[0] - 1


class _RowSource(NamedTuple):
    """The kernels' leading arguments, in their order: where and how to read ``h``."""

    h: Tensor  # h_ptr
    in_scale: Tensor  # in_scale_ptr, [N] / [num_src] or [1] fp32
    in_scale_stride: int  # 1 per row, 0 per tensor
    indptr: Tensor  # indptr_ptr ...
    indices: Tensor
    row_bytes: int
    agg_grid: Tensor
    agg_qmin: int
    agg_qmax: int  # ... to agg_qmax: read with GATHER only


def _row_source(
    h: Tensor, in_scale: Tensor | None, gather: Gather | None
) -> tuple[_RowSource, dict[str, int | bool]]:
    """``(arguments, constexprs)`` with which the kernels read ``h``: as it is (with
    ``in_scale`` for int8 codes), or aggregated from the source codes ``h`` over ``gather``."""
    if in_scale is None:
        s_in, s_in_stride = torch.ones(1, dtype=torch.float32, device=h.device), 0
    else:
        s_in = in_scale.reshape(-1).contiguous()
        s_in_stride = 1 if s_in.numel() > 1 else 0
    if gather is None:
        # Without GATHER the kernels never read indptr, indices or agg_grid: h and the scale
        # stand in for them.
        source = _RowSource(h, s_in, s_in_stride, h, h, 0, s_in, 0, 1)
        flags = dict(HAS_IN_SCALE=in_scale is not None, GATHER=False, BITS=8, MEAN=False,
                     QUANT_AGG=False)  # fmt: skip
        return source, flags
    agg = gather.agg
    source = _RowSource(
        h, s_in, s_in_stride, gather.indptr.contiguous(), gather.indices.contiguous(),
        h.shape[1], s_in if agg is None else agg.values(h.device),
        0 if agg is None else int(agg.qmin), 1 if agg is None else int(agg.qmax),
    )  # fmt: skip
    flags = dict(HAS_IN_SCALE=True, GATHER=True, BITS=gather.bits, MEAN=gather.mean,
                 QUANT_AGG=agg is not None)  # fmt: skip
    return source, flags


def _prompt_blocks(w_phi: Tensor, p_a: Tensor) -> dict[str, int]:
    """The kernels' ``BLOCK_D``, ``BLOCK_K`` and ``BLOCK_R``: powers of two of at least 16."""
    d, (k, r) = w_phi.shape[0], p_a.shape
    block_d, block_k, block_r = (max(16, next_power_of_2(x)) for x in (d, k, r))
    return dict(BLOCK_D=block_d, BLOCK_K=block_k, BLOCK_R=block_r)


def launch_forward(
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    grid: QuantGrid | None,
    *,
    gather: Gather | None = None,
    block_n: int | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor] | Tensor:
    """Run the forward kernel, unchecked: ``(codes, out)`` on ``grid``, or with ``grid=None``
    the range pass, ``[min(y), max(y)]`` fp32.

    ``h`` is the ``[N, d]`` input (float, or int8 codes with ``in_scale``), or with
    ``gather`` the source codes aggregated over its CSR block (``in_scale`` then holds their
    per-row scales and ``N`` is the block's row count). ``block_n`` overrides the rows per
    program (a power of two, >= 16).

    Every range program writes the extremes of its row block to a ``[num_programs, 2]``
    buffer (padding masked with ``+inf``/``-inf``), reduced afterwards with ``amin``/``amax``:
    deterministic, no atomics.
    """
    w_phi, p_a, p_b = (t.contiguous() for t in (w_phi, p_a, p_b))
    h = h.contiguous()
    n = h.shape[0] if gather is None else gather.num_rows
    d = w_phi.shape[0]
    k, r = p_a.shape
    blocks = _prompt_blocks(w_phi, p_a)
    block_n = block_n or _default_block_n(n, blocks["BLOCK_D"], h.device)
    launch = (cdiv(n, block_n),)
    range_only = grid is None
    if range_only:
        parts = torch.empty((launch[0], 2), dtype=torch.float32, device=h.device)
        # codes_ptr, out_ptr and grid_ptr are never read with RANGE_ONLY: pass the buffer.
        codes = out = grid_ptr = parts
        qmin, qmax = 0, 1
    else:
        qmin, qmax = int(grid.qmin), int(grid.qmax)
        grid_ptr = grid.values(h.device)
        codes = torch.empty((n, d), dtype=codes_dtype(qmin, qmax), device=h.device)
        out = parts = torch.empty((n, d), dtype=out_dtype, device=h.device)
        if n == 0:
            return codes, out
    source, flags = _row_source(h, in_scale, gather)
    _lorap_fwd_kernel[launch](
        *source, w_phi, p_a, p_b, codes, out, parts, n, d, k, r, grid_ptr, qmin, qmax,
        RANGE_ONLY=range_only, **flags, BLOCK_N=block_n, **blocks,
        **_launch_options(h.device, blocks["BLOCK_D"]),
    )  # fmt: skip
    if range_only:
        return torch.stack((parts[:, 0].amin(), parts[:, 1].amax()))
    return codes, out


def launch_range(
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    *,
    gather: Gather | None = None,
    block_n: int | None = None,
) -> Tensor:
    """The range pass of :func:`launch_forward`, unchecked: ``[min(y), max(y)]``, fp32."""
    return launch_forward(h, w_phi, p_a, p_b, in_scale, None, gather=gather, block_n=block_n)


def launch_backward(
    grad_out: Tensor,
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    grid: QuantGrid,
    *,
    gather: Gather | None = None,
    block_n: int | None = None,
    num_programs: int | None = None,
    grad_h_dtype: torch.dtype = torch.float32,
) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """Run the backward kernel, unchecked: ``(grad_h, grad_w_phi, grad_p_a, grad_p_b)``, with
    ``grad_h`` ``None`` for a gathered ``h`` (integer sources take no gradient).

    ``h``, ``in_scale`` and ``gather`` as for :func:`launch_forward`. ``num_programs``
    overrides the persistent grid (default: 4 per SM on CUDA, at most 8 under the
    interpreter); each program loops over every ``num_programs``-th row block.
    """
    grad_out, h, w_phi, p_a, p_b = (t.contiguous() for t in (grad_out, h, w_phi, p_a, p_b))
    n, d = grad_out.shape
    k, r = p_a.shape
    grad_h = None
    if gather is None:
        grad_h = torch.empty((n, d), dtype=grad_h_dtype, device=h.device)
    if n == 0:
        return grad_h, torch.zeros_like(w_phi), torch.zeros_like(p_a), torch.zeros_like(p_b)
    blocks = _prompt_blocks(w_phi, p_a)
    block_n = block_n or _default_block_n(n, blocks["BLOCK_D"], h.device)
    num_blocks = cdiv(n, block_n)
    if num_programs is None:
        if h.device.type == "cuda":
            sms = torch.cuda.get_device_properties(h.device).multi_processor_count
            num_programs = 4 * sms
        else:
            num_programs = 8
    num_programs = max(1, min(num_programs, num_blocks))
    f32 = dict(dtype=torch.float32, device=h.device)
    part_w_phi = torch.empty((num_programs, d, k), **f32)
    part_p_a = torch.empty((num_programs, k, r), **f32)
    part_p_b = torch.empty((num_programs, r, d), **f32)
    source, flags = _row_source(h, in_scale, gather)
    _lorap_bwd_kernel[(num_programs,)](
        *source, grad_out, w_phi, p_a, p_b, grad_out if grad_h is None else grad_h,
        part_w_phi, part_p_a, part_p_b, n, d, k, r,
        grid.values(h.device), int(grid.qmin), int(grid.qmax),
        **flags, BLOCK_N=block_n, **blocks,
        **_launch_options(h.device, blocks["BLOCK_D"], backward=True),
    )  # fmt: skip
    return (
        grad_h,
        part_w_phi.sum(dim=0).to(w_phi.dtype),
        part_p_a.sum(dim=0).to(p_a.dtype),
        part_p_b.sum(dim=0).to(p_b.dtype),
    )


def lorap_fused_triton(
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    scale: float | Tensor,
    zero_point: int | Tensor,
    qmin: int,
    qmax: int,
    *,
    block_n: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel directly: ``(codes, out)``.

    Runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before
    triton was imported. ``block_n`` overrides the rows per program (a power of two, >= 16).
    """
    _check_inputs(h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax)
    grid = QuantGrid(scale, zero_point, qmin, qmax)
    return launch_forward(
        h, w_phi, p_a, p_b, in_scale, grid, block_n=block_n, out_dtype=_out_dtype(h)
    )


def lorap_range_triton(
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    *,
    block_n: int | None = None,
) -> Tensor:
    """Launch the forward kernel's range pass directly: ``[min(y), max(y)]``, fp32 ``[2]``."""
    _check_range_inputs(h, w_phi, p_a, p_b, in_scale)
    return launch_range(h, w_phi, p_a, p_b, in_scale, block_n=block_n)


def lorap_fused_backward_triton(
    grad_out: Tensor,
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    scale: float | Tensor,
    zero_point: int | Tensor,
    qmin: int,
    qmax: int,
    *,
    block_n: int | None = None,
    num_programs: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Launch the backward kernel directly: ``(grad_h, grad_w_phi, grad_p_a, grad_p_b)``.

    ``num_programs`` overrides the persistent grid (default: 4 per SM on CUDA, at most 8 under
    the interpreter); each program loops over every ``num_programs``-th row block.
    """
    _check_inputs(h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax)
    if tuple(grad_out.shape) != tuple(h.shape):
        raise ValueError(
            f"grad_out must have h's shape {tuple(h.shape)}; got {tuple(grad_out.shape)}."
        )
    return launch_backward(
        grad_out, h, w_phi, p_a, p_b, in_scale, QuantGrid(scale, zero_point, qmin, qmax),
        block_n=block_n, num_programs=num_programs, grad_h_dtype=_out_dtype(h),
    )  # fmt: skip


# ----------------------------------------------------------------------------------------
# The registered ops.
# ----------------------------------------------------------------------------------------


@torch.library.custom_op("lorap_dist::lorap_fused", mutates_args=())
def lorap_fused(
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    saved_y: Tensor | None = None,
    saved_w: Tensor | None = None,
    keep_residuals: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """LoRAP forward as one op: ``(out, codes, saved_w, saved_mask)`` (see the module
    docstring).

    ``scale`` and ``zero_point`` are one-element tensors (fp32 and any real dtype) on ``h``'s
    device: the grid an observer has just updated goes to the kernel without the host ever
    reading it, and ``torch.compile`` traces the op without a graph break.

    ``saved_y`` and ``saved_w`` (inputs) are what :func:`lorap_range` returned for the same
    ``h`` and parameters: the CPU path then skips computing the prompt again; the Triton path
    ignores them.

    ``out`` comes first, unlike :func:`lorap_reference`: autograd tooling (``opcheck``) sums
    the outputs in order, and an integer first output makes that sum an integer tensor.
    ``saved_w`` (``[N, k]`` fp32 softmax weights) and ``saved_mask`` (``[N, d]`` bool
    straight-through mask) are what the backward needs besides the inputs; they take no
    gradient. The CPU path keeps them, so its backward does not recompute the forward; the
    Triton path returns them with 0 rows: its backward kernel recomputes them from ``h``,
    which costs less GPU memory traffic than writing and reading them. So does the CPU path
    with ``keep_residuals=False``, for a forward no backward will follow (inference).
    """
    if takes_triton(h, h.shape[1]):
        codes, out = lorap_fused_triton(h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax)
        saved_w, saved_mask = no_residuals(h, w_phi)
    else:
        codes, out, saved_w, saved_mask = lorap_forward_cpu(
            h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax, saved_y, saved_w,
            keep_residuals,
        )  # fmt: skip
    return out, codes, saved_w, saved_mask


def no_residuals(h: Tensor, w_phi: Tensor) -> tuple[Tensor, Tensor]:
    """The 0-row ``saved_w`` and ``saved_mask`` of the Triton path."""
    return (
        h.new_empty((0, w_phi.shape[1]), dtype=torch.float32),
        h.new_empty((0, h.shape[1]), dtype=torch.bool),
    )


@torch.no_grad()
def lorap_forward_cpu(
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    scale: float | Tensor,
    zero_point: int | Tensor,
    qmin: int,
    qmax: int,
    saved_y: Tensor | None = None,
    saved_w: Tensor | None = None,
    keep_residuals: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The values of :func:`lorap_reference` without its autograd graph: the CPU forward.

    Returns ``(codes, out, w, mask)``: the softmax weights and the straight-through mask are
    kept for the backward. ``saved_y`` and ``saved_w`` from the CPU range pass
    (:func:`lorap_range`) are used instead of computing ``y`` and ``w`` again. The codes are
    rounded once and the output is read back from them, the operations
    ``fake_quantize_per_tensor_affine`` performs, so ``out`` is bit-identical to it while the
    rounding pass is not done twice (fake-quantizing ``y`` and then rounding it again for the
    codes cost 1.6x the forward on a 100k x 64 aggregate).
    """
    _check_inputs(h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax)
    grid_scale, inv, zp = grid_values(scale, zero_point, h.device)
    if _has_rows(saved_y) and _has_rows(saved_w):
        n, k = h.shape[0], w_phi.shape[1]
        if saved_y.shape != h.shape or tuple(saved_w.shape) != (n, k):
            raise ValueError(
                f"saved_y {tuple(saved_y.shape)} and saved_w {tuple(saved_w.shape)} must be "
                f"[N, d] = {tuple(h.shape)} and [N, k] = {(n, k)}: pass what lorap_range "
                "returned for this h and these parameters."
            )
        y, w = saved_y * inv, saved_w.clone()  # outputs may not alias inputs
    else:
        y, w = prompted_reference(h, w_phi, p_a, p_b, in_scale, with_weights=True)
        y.mul_(inv)
    codes = torch.round(y).add_(zp)
    if keep_residuals:
        clamped = codes.clamp(qmin, qmax)
        mask = clamped == codes  # inside [qmin, qmax]: the straight-through mask
        codes = clamped
    else:  # no backward follows: clamp in place, keep nothing
        codes.clamp_(qmin, qmax)
        w, mask = no_residuals(h, w_phi)
    out = (codes - zp).mul_(grid_scale)
    return codes.to(codes_dtype(qmin, qmax)), out.to(_out_dtype(h)), w, mask


@lorap_fused.register_fake
def _(h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax, saved_y=None, saved_w=None,
      keep_residuals=True):  # fmt: skip
    _check_inputs(h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax, check_values=False)
    out = h.new_empty(h.shape, dtype=_out_dtype(h))
    codes = h.new_empty(h.shape, dtype=codes_dtype(qmin, qmax))
    if takes_triton(h, h.shape[1]) or not keep_residuals:
        return out, codes, *no_residuals(h, w_phi)
    saved_w = h.new_empty((h.shape[0], w_phi.shape[1]), dtype=torch.float32)
    return out, codes, saved_w, h.new_empty(h.shape, dtype=torch.bool)


@torch.library.custom_op("lorap_dist::lorap_fused_backward", mutates_args=())
def lorap_fused_backward(
    grad_out: Tensor,
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    saved_w: Tensor | None = None,
    saved_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """LoRAP backward as one op: ``(grad_h, grad_w_phi, grad_p_a, grad_p_b)``.

    ``saved_w`` and ``saved_mask`` are the forward's residuals (see :func:`lorap_fused`);
    when absent or empty the backward recomputes them.
    """
    args = (grad_out, h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax)
    if takes_triton(h, h.shape[1]):
        return lorap_fused_backward_triton(*args)
    _check_inputs(h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax)
    return lorap_backward_cpu(*args, saved_w, saved_mask)


@lorap_fused_backward.register_fake
def _(grad_out, h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax, saved_w=None,
      saved_mask=None):  # fmt: skip
    return (
        h.new_empty(h.shape, dtype=_out_dtype(h)),
        torch.empty_like(w_phi),
        torch.empty_like(p_a),
        torch.empty_like(p_b),
    )


def _setup_context(ctx, inputs, output) -> None:
    h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax, _, _, _ = inputs
    _, _, saved_w, saved_mask = output
    ctx.mark_non_differentiable(saved_w, saved_mask)
    ctx.save_for_backward(h, w_phi, p_a, p_b, in_scale, scale, zero_point, saved_w, saved_mask)
    ctx.qrange = (qmin, qmax)
    ctx.h_is_codes = h.dtype == torch.int8


def _backward(ctx, grad_out, grad_codes, grad_saved_w, grad_saved_mask):
    h, w_phi, p_a, p_b, in_scale, scale, zero_point, saved_w, saved_mask = ctx.saved_tensors
    if grad_out is None:
        return (None,) * 12
    g_h, g_w_phi, g_p_a, g_p_b = lorap_fused_backward(
        grad_out, h, w_phi, p_a, p_b, in_scale, scale, zero_point, *ctx.qrange, saved_w, saved_mask
    )
    # Integer codes have no gradient; g_h is then w.r.t. the dequantized aggregate only.
    g_h = None if ctx.h_is_codes else g_h
    return g_h, g_w_phi, g_p_a, g_p_b, *(None,) * 8


lorap_fused.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("lorap_dist::lorap_range", mutates_args=())
def lorap_range(
    h: Tensor, w_phi: Tensor, p_a: Tensor, p_b: Tensor, in_scale: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y_range, saved_y, saved_w)``: ``[min(y), max(y)]`` (fp32, shape ``[2]``) of
    ``y = h + softmax(h W_phi) P_A P_B``, and what the forward may reuse.

    The range pass that lets a quantizer observe ``y`` before :func:`lorap_forward`
    quantizes it. The Triton path never writes ``y`` out and returns ``saved_y``
    (``[0, d]``) and ``saved_w`` (``[0, k]``) empty; the CPU path has computed ``y`` and the
    softmax weights anyway and returns them (``[N, d]``, ``[N, k]``, fp32), so that
    :func:`lorap_forward` does not compute them a second time. Not differentiable: call it
    on detached inputs (an observed range takes no gradient).
    """
    if takes_triton(h, h.shape[1]):
        return lorap_range_triton(h, w_phi, p_a, p_b, in_scale), *_no_saved_prompt(h, w_phi)
    _check_range_inputs(h, w_phi, p_a, p_b, in_scale)
    y, w = prompted_reference(h, w_phi, p_a, p_b, in_scale, with_weights=True)
    return torch.stack(torch.aminmax(y)), y, w


@lorap_range.register_fake
def _(h, w_phi, p_a, p_b, in_scale=None):
    _check_operands(h, w_phi, p_a, p_b, in_scale)
    y_range = h.new_empty((2,), dtype=torch.float32)
    if takes_triton(h, h.shape[1]):
        return y_range, *_no_saved_prompt(h, w_phi)
    f32 = dict(dtype=torch.float32)
    return y_range, h.new_empty(h.shape, **f32), h.new_empty((h.shape[0], w_phi.shape[1]), **f32)


def _no_saved_prompt(h: Tensor, w_phi: Tensor) -> tuple[Tensor, Tensor]:
    """The empty ``saved_y`` and ``saved_w`` of the Triton range pass."""
    f32 = dict(dtype=torch.float32)
    return h.new_empty((0, h.shape[1]), **f32), h.new_empty((0, w_phi.shape[1]), **f32)


def lorap_forward(
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    scale: float | Tensor,
    zero_point: int | Tensor,
    qmin: int,
    qmax: int,
    in_scale: Tensor | None = None,
    saved: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """LoRAP prompt injection and re-quantization: the dequantized ``[N, d]`` output.

    Differentiable in ``h`` (float), ``w_phi``, ``p_a`` and ``p_b``; the Triton kernels run
    for CUDA tensors, the pure-torch reference for CPU tensors. ``saved`` is
    ``(saved_y, saved_w)`` from :func:`lorap_range` on the same inputs, reused on CPU.
    ``scale`` and ``zero_point`` may be Python numbers or one-element tensors (kept on the
    device: no host sync).
    """
    saved_y, saved_w = saved if saved is not None else (None, None)
    scale, zero_point = grid_tensors(scale, zero_point, h.device)
    differentiable = (h, w_phi, p_a, p_b)
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in differentiable)
    return lorap_fused(
        h, w_phi, p_a, p_b, in_scale, scale, zero_point, int(qmin), int(qmax), saved_y, saved_w,
        keep,
    )[0]  # fmt: skip
