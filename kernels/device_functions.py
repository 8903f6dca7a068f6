"""Triton device functions shared by the kernels of :mod:`.lorap_kernels` and
:mod:`.quant_aggregate`, and the ``jit`` and ``tl`` every kernel module is written with.

Quantization grid (``grid_ptr`` points at ``[scale, 1 / scale, zero_point]`` fp32, see
:func:`~.quant_grid.grid_values`)::

    round_code(y)    = rint(y * (1 / scale)) + zero_point   (half to even; before the clamp)
    codes            = clamp(round_code(y), qmin, qmax)
    fake_quantize(y) = (codes, (codes - zero_point) * scale)

Aggregation of integer source rows over a CSR block (``bits`` 8: int8 rows; 4: uint8 rows of
two signed nibbles, low nibble first)::

    h[i] = sum_{e in [indptr[i], indptr[i+1])} q[indices[e]] * s[indices[e]]    (/ deg(i) for mean)

LoRAP's prompt on a row block of ``h`` (read from memory, or that aggregate), in fp32::

    w = softmax(h @ W_phi, dim=1)       t = w @ P_A       y = h + t @ P_B

Importing this module imports triton, which fixes its interpret mode (``TRITON_INTERPRET``
is read when ``triton.language`` is first imported): set it before importing the op modules.
Triton is optional; without it ``jit`` leaves the functions as they are and launching a
kernel raises the error of :func:`~._triton.load_triton`, which says what to install.
"""

from __future__ import annotations

from ._triton import TritonMissing

try:
    import triton.language as tl
    from triton import jit
except ImportError:  # no triton: CPU tensors take the pure-torch references
    tl = None
    jit = TritonMissing

__all__ = [
    "fake_quantize",
    "jit",
    "load_codes",
    "load_h",
    "load_prompt",
    "prompted",
    "round_code",
    "tl",
]


@jit
def round_code(y, grid_ptr, qmin, qmax):
    """``rint(y / scale) + zero_point`` on the grid at ``grid_ptr`` (``[scale, 1 / scale,
    zero_point]``), before the clamp to ``[qmin, qmax]``.

    Clamping to one step outside ``[qmin, qmax]`` first keeps ``|v|`` small for the rint trick
    and changes neither the clamped code nor the straight-through mask.
    """
    inv_scale = tl.load(grid_ptr + 1)
    zero_point = tl.load(grid_ptr + 2)
    # Adding then subtracting 1.5 * 2**23 rounds an fp32 |x| < 2**22 to the nearest integer,
    # ties to even (the FPU's rounding mode), without libdevice (which the interpreter
    # lacks). A local, not a module constant: compiled kernels may read no plain globals.
    rint_magic = 12582912.0
    v = y * inv_scale
    v = tl.minimum(tl.maximum(v, (qmin - zero_point - 1) * 1.0), (qmax - zero_point + 1) * 1.0)
    return ((v + rint_magic) - rint_magic) + zero_point


@jit
def fake_quantize(y, grid_ptr, qmin, qmax):
    """``(codes, dequantized)`` of ``y`` on the grid at ``grid_ptr``, as fp32 tiles."""
    code = round_code(y, grid_ptr, qmin, qmax)
    code = tl.minimum(tl.maximum(code, qmin * 1.0), qmax * 1.0)
    return code, (code - tl.load(grid_ptr + 2)) * tl.load(grid_ptr)


@jit
def load_codes(codes_ptr, src, row_bytes, offs_d, mask, BITS: tl.constexpr):
    """The ``[len(src), len(offs_d)]`` fp32 values of the integer codes of source rows ``src``
    (int64) at columns ``offs_d``; 0 where ``mask`` is off.

    ``BITS == 8``: one int8 per column. ``BITS == 4``: column ``j`` is the signed nibble in
    bits ``4 * (j % 2)`` to ``4 * (j % 2) + 3`` of byte ``j // 2`` (two's complement).
    """
    if BITS == 8:
        q = tl.load(codes_ptr + src[:, None] * row_bytes + offs_d[None, :], mask=mask, other=0)
        q = q.to(tl.float32)
    else:
        byte = tl.load(
            codes_ptr + src[:, None] * row_bytes + (offs_d // 2)[None, :], mask=mask, other=0
        ).to(tl.int32)
        nibble = (byte >> ((offs_d % 2) * 4)[None, :]) & 0xF
        q = tl.where(nibble >= 8, nibble - 16, nibble).to(tl.float32)
    return q


@jit
def load_h(
    h_ptr,  # [N, d] float / int8 codes; with GATHER the source codes [num_src, row_bytes]
    in_scale_ptr,  # [N] or [1] fp32; with GATHER [num_src] or [1]
    in_scale_stride,
    indptr_ptr,  # [N + 1] CSR offsets over the rows (GATHER only)
    indices_ptr,  # [E] source row of each edge (GATHER only)
    row_bytes,  # int8 (BITS=8) or packed uint8 (BITS=4) bytes of a source row (GATHER only)
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
    With ``GATHER`` it is the quantized aggregation of :mod:`.quant_aggregate`, built in
    registers (no ``h`` is written): every row walks its CSR edges in order (the block loops
    to its largest degree, shorter rows masked), gathers the source codes with their scales,
    sums in fp32 and divides by the degree for ``MEAN``; ``QUANT_AGG`` then fake-quantizes
    the aggregate on the grid at ``agg_grid_ptr``.
    """
    if GATHER:
        rows64 = rows.to(tl.int64)
        start = tl.load(indptr_ptr + rows64, mask=row_mask, other=0).to(tl.int64)
        deg = tl.load(indptr_ptr + rows64 + 1, mask=row_mask, other=0).to(tl.int64) - start
        h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
        for j in range(0, tl.max(deg, axis=0)):
            e_mask = j < deg
            # int64 before the stride multiply: src * row_bytes overflows int32 on big graphs.
            src = tl.load(indices_ptr + start + j, mask=e_mask, other=0).to(tl.int64)
            s = tl.load(in_scale_ptr + src * in_scale_stride, mask=e_mask, other=0.0)
            q_mask = e_mask[:, None] & d_mask[None, :]
            q = load_codes(h_ptr, src, row_bytes, offs_d, q_mask, BITS)
            h += q * s[:, None]
        if MEAN:
            h = h / tl.maximum(deg, 1).to(tl.float32)[:, None]
        if QUANT_AGG:
            _, h = fake_quantize(h, agg_grid_ptr, agg_qmin, agg_qmax)
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
def load_prompt(w_phi_ptr, p_a_ptr, p_b_ptr, d, k, r, offs_d, offs_k, offs_r):
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
def prompted(h, w_phi, p_a, p_b, k_mask):
    """``(w, t, y)``: softmax weights, ``w @ P_A`` and ``y = h + t @ P_B`` of a row block;
    padded ``k`` columns get logits of ``-inf``, so weight 0."""
    logits = tl.dot(h, w_phi, input_precision="ieee")
    logits = tl.where(k_mask[None, :], logits, float("-inf"))
    e = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    w = e / tl.sum(e, axis=1)[:, None]
    t = tl.dot(w, p_a, input_precision="ieee")
    return w, t, h + tl.dot(t, p_b, input_precision="ieee")
