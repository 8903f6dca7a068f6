"""The LoRAP Triton kernels and their launchers, shared by two ops: :mod:`.lorap_fused` reads
``h`` from memory, :mod:`.aggregate_lorap` aggregates it in registers from integer source
rows (a :class:`Gather`).

Forward, per row block (all arithmetic in fp32, whatever the storage dtype)::

    h      = h                      (float input)
           = codes_in * s_in        (int8 input, s_in per tensor [1] or per row [N])
           = gathered aggregate     (GATHER, see :func:`~.device_functions.load_h`)
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

The backward kernel recomputes ``w`` and the mask from ``h`` (a re-read of ``h`` costs less
than writing and reading ``N x (k + d)`` residuals; the CPU path, :mod:`.lorap_cpu`, keeps
them from its forward instead). The weight gradients are sums over rows: each backward
program walks a fixed, strided set of row blocks, writes its partial sums to a
``[num_programs, ...]`` fp32 buffer, and ``torch.sum`` reduces the buffer afterwards:
deterministic, no atomics.

``tl.dot`` on NVIDIA needs inner dimensions of at least 16 (fp16) or 8 (fp32), and LoRAP's
``k`` and ``r`` are often 4 or 8, so ``d``, ``k`` and ``r`` are padded to powers of two of at
least 16 with masked loads: padded ``W_phi`` columns give logits of ``-inf`` (weight 0 after
the softmax) and padded ``P_A``/``P_B`` entries are 0, so padding changes no result.

The launchers :func:`launch_forward`, :func:`launch_range` and :func:`launch_backward` own the
grid and block sizes and check nothing (the ops check their inputs, :mod:`.lorap_checks`);
:func:`takes_triton` says which tensors take the kernels. They run on CUDA tensors, and on
CPU tensors under ``TRITON_INTERPRET=1`` (tests). The kernels read the output grid from
device memory (``[scale, 1 / scale, zero_point]``, :mod:`.quant_grid`), so no host waits for
an observer. Device functions shared with the other kernels live in :mod:`.device_functions`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ._triton import cdiv, next_power_of_2, use_triton
from .device_functions import fake_quantize, jit, load_h, load_prompt, prompted, round_code, tl
from .lorap_checks import Prompt
from .quant_grid import QuantGrid, codes_dtype

__all__ = [
    "MAX_TRITON_WIDTH",
    "Gather",
    "launch_backward",
    "launch_forward",
    "launch_range",
    "takes_triton",
]


# ----------------------------------------------------------------------------------------
# The kernels (their device functions are in ``device_functions``).
# ----------------------------------------------------------------------------------------


@jit
def _lorap_fwd_kernel(
    h_ptr,  # [N, d] float, or int8 codes when HAS_IN_SCALE; source codes with GATHER
    in_scale_ptr,  # [N] or [1] fp32 (read with stride in_scale_stride)
    in_scale_stride,
    indptr_ptr,  # GATHER only, see load_h
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

    w_phi, p_a, p_b = load_prompt(w_phi_ptr, p_a_ptr, p_b_ptr, d, k, r, offs_d, offs_k, offs_r)
    h = load_h(
        h_ptr, in_scale_ptr, in_scale_stride, indptr_ptr, indices_ptr, row_bytes, agg_grid_ptr,
        agg_qmin, agg_qmax, rows, row_mask, offs_d, d_mask, d,
        HAS_IN_SCALE, GATHER, BITS, MEAN, QUANT_AGG, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    _, _, y = prompted(h, w_phi, p_a, p_b, k_mask)

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
    indptr_ptr,  # GATHER only, see load_h
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

    w_phi, p_a, p_b = load_prompt(w_phi_ptr, p_a_ptr, p_b_ptr, d, k, r, offs_d, offs_k, offs_r)

    acc_w_phi = tl.zeros((BLOCK_D, BLOCK_K), dtype=tl.float32)
    acc_p_a = tl.zeros((BLOCK_K, BLOCK_R), dtype=tl.float32)
    acc_p_b = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)

    for block in range(pid, num_blocks, num_programs):
        rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < n_rows
        tile_mask = row_mask[:, None] & d_mask[None, :]
        tile = rows.to(tl.int64)[:, None] * d + offs_d[None, :]

        # Recompute the forward: cheaper than storing w, t and the STE mask.
        h = load_h(
            h_ptr, in_scale_ptr, in_scale_stride, indptr_ptr, indices_ptr, row_bytes,
            agg_grid_ptr, agg_qmin, agg_qmax, rows, row_mask, offs_d, d_mask, d,
            HAS_IN_SCALE, GATHER, BITS, MEAN, QUANT_AGG, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        w, t, y = prompted(h, w_phi, p_a, p_b, k_mask)
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
# Which tensors take the kernels, where they read h from, block sizes and launch options.
# ----------------------------------------------------------------------------------------


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
    :func:`~.device_functions.load_h`): the CSR block over the ``h`` rows, the
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


# ----------------------------------------------------------------------------------------
# The launchers.
# ----------------------------------------------------------------------------------------


def launch_forward(
    h: Tensor,
    prompt: Prompt,
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
    w_phi, p_a, p_b = (t.contiguous() for t in prompt)
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
    prompt: Prompt,
    in_scale: Tensor | None,
    *,
    gather: Gather | None = None,
    block_n: int | None = None,
) -> Tensor:
    """The range pass of :func:`launch_forward`, unchecked: ``[min(y), max(y)]``, fp32."""
    return launch_forward(h, prompt, in_scale, None, gather=gather, block_n=block_n)


def launch_backward(
    grad_out: Tensor,
    h: Tensor,
    prompt: Prompt,
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
    grad_out, h, w_phi, p_a, p_b = (t.contiguous() for t in (grad_out, h, *prompt))
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
