"""The fused LoRAP kernels against the pure-torch reference.

The kernels run on the test device (``LORAP_TEST_DEVICE``: the CPU under TRITON_INTERPRET=1 by
default, or compiled on CUDA); inputs are made on the CPU, and the references run there.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from lorap_dist.kernels import lorap_cpu as lc
from lorap_dist.kernels import lorap_fused as lf
from lorap_dist.kernels import lorap_kernels as lk
from lorap_dist.kernels.lorap_checks import Prompt
from lorap_dist.kernels.quant_grid import QuantGrid, inv_scale

from lorap_dist.testing.kernel_device import kernel_test_device, run_on, triton_on

DEVICE = kernel_test_device()
CPU = torch.device("cpu")

# (n, d, k, r): d not a power of two, N not a multiple of the block, k and r from 1 to 16.
SHAPES = [
    (37, 24, 1, 1),
    (50, 40, 3, 2),
    (64, 33, 8, 4),
    (21, 100, 16, 16),
    (5, 17, 5, 7),
    (70, 48, 4, 8),
]
# (scale, zero_point, qmin, qmax): INT8 signed, INT4 signed, UINT8 (asymmetric).
QPARAMS = {
    "int8": (0.02, 3, -128, 127),
    "int4": (0.3, -1, -8, 7),
    "uint8": (0.02, 128, 0, 255),
}


def op_grid(qp, device=CPU):
    """The registered ops take scale and zero point as one-element tensors."""
    scale, zero_point, qmin, qmax = qp
    return (
        torch.tensor([scale], device=device),
        torch.tensor([zero_point], dtype=torch.int32, device=device),
        qmin,
        qmax,
    )


def make_inputs(n, d, k, r, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g)
    w_phi = torch.randn(d, k, generator=g) / d**0.5
    p_a = torch.randn(k, r, generator=g)
    p_b = torch.randn(r, d, generator=g) * 0.5
    return tuple(t.to(dtype) for t in (h, w_phi, p_a, p_b))


def reference_prequant(h, w_phi, p_a, p_b, scale, in_scale=None):
    """``y * (1/scale)`` of the reference: where it sits within 1e-3 of a rounding tie, a
    different (equally correct) fp32 summation order may round the other way."""
    hf = lc._dequantize(h, in_scale)
    w = torch.softmax(hf @ w_phi.float(), dim=1)
    y = hf + (w @ p_a.float()) @ p_b.float()
    return y * inv_scale(scale)


def assert_codes_equal(codes, ref_codes, v):
    """Codes equal exactly, except at most by one step at a near-tie of the pre-rounding value."""
    assert codes.dtype == ref_codes.dtype
    diff = (codes.int() - ref_codes.int()).abs()
    near_tie = ((v - v.floor()) - 0.5).abs() < 1e-3
    assert int(diff.max()) <= 1 if diff.numel() else True
    assert not bool((diff > 0)[~near_tie].any()), "codes differ away from a rounding tie"


def assert_close_rel(actual, expected, rtol=1e-5):
    atol = rtol * max(float(expected.abs().max()), 1.0)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def reference_grads(h, w_phi, p_a, p_b, grad_out, qp, in_scale=None):
    leaves = [t.detach().clone().requires_grad_(True) for t in (w_phi, p_a, p_b)]
    if h.is_floating_point():
        leaves.insert(0, h.detach().clone().requires_grad_(True))
        args = leaves
    else:
        args = [h, *leaves]
    _, out = lf.lorap_reference(args[0], args[1:], qp, in_scale=in_scale)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return grads if h.is_floating_point() else (None, *grads)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "n{}-d{}-k{}-r{}".format(*s))
@pytest.mark.parametrize("qname", list(QPARAMS))
def test_forward_matches_reference(shape, qname):
    qp = QPARAMS[qname]
    h, w_phi, p_a, p_b = make_inputs(*shape)
    codes, out = run_on(DEVICE, lf.lorap_fused_triton, h, (w_phi, p_a, p_b), qp, block_n=16)
    ref_codes, ref_out = lf.lorap_reference(h, (w_phi, p_a, p_b), qp)
    assert codes.dtype == lf.codes_dtype(qp[2], qp[3])
    assert_codes_equal(codes, ref_codes, reference_prequant(h, w_phi, p_a, p_b, qp[0]))
    scale, zp = qp[0], qp[1]
    # out is exactly (codes - zp) * scale, as in fake_quantize_per_tensor_affine.
    assert torch.equal(out, (codes.int() - zp).float() * torch.tensor(scale))
    assert_close_rel(out, ref_out)


def test_reference_matches_fake_quantize_exactly():
    h, w_phi, p_a, p_b = make_inputs(40, 24, 4, 4)
    qp = QPARAMS["int8"]
    codes, out = lf.lorap_reference(h, (w_phi, p_a, p_b), qp)
    y = h + torch.softmax(h @ w_phi, 1) @ p_a @ p_b
    assert torch.equal(out, torch.fake_quantize_per_tensor_affine(y, *qp))
    assert torch.equal(out, (codes.int() - qp[1]).float() * torch.tensor(qp[0]))


@pytest.mark.parametrize("qname", ["int8", "int4"])
def test_rounding_ties_bit_exact(qname):
    """With P_B = 0 the prompt is exactly 0, so y = h; put h on and near half-steps."""
    scale, zp, qmin, qmax = QPARAMS[qname]
    n, d, k, r = 40, 20, 4, 4
    steps = torch.arange(n * d, dtype=torch.float32).reshape(n, d) % (2 * (qmax - qmin)) + (
        qmin - zp - (qmax - qmin) // 2
    )
    offsets = torch.tensor([0.5, -0.5, 0.49999, 0.0, 0.25])[torch.arange(d) % 5]
    h = (steps + offsets) * scale
    _, w_phi, p_a, _ = make_inputs(n, d, k, r)
    p_b = torch.zeros(r, d)
    codes, out = run_on(
        DEVICE, lf.lorap_fused_triton, h, (w_phi, p_a, p_b), (scale, zp, qmin, qmax)
    )
    ref_codes, ref_out = lf.lorap_reference(h, (w_phi, p_a, p_b), (scale, zp, qmin, qmax))
    assert torch.equal(codes, ref_codes)
    assert torch.equal(out, ref_out)
    assert torch.equal(out, torch.fake_quantize_per_tensor_affine(h, scale, zp, qmin, qmax))
    # The op's CPU path (rounds once, reads the output back from the codes) agrees too.
    op_out, op_codes, *_ = torch.ops.lorap_dist.lorap_fused(
        h, w_phi, p_a, p_b, None, *op_grid(QPARAMS[qname])
    )
    assert torch.equal(op_codes, ref_codes)
    assert torch.equal(op_out, ref_out)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "n{}-d{}-k{}-r{}".format(*s))
@pytest.mark.parametrize("qname", ["int8", "int4"])
def test_backward_matches_autograd(shape, qname):
    qp = QPARAMS[qname]
    h, w_phi, p_a, p_b = make_inputs(*shape, seed=1)
    grad_out = torch.randn(h.shape, generator=torch.Generator().manual_seed(2))
    expected = reference_grads(h, w_phi, p_a, p_b, grad_out, qp)
    got = run_on(
        DEVICE, lf.lorap_fused_backward_triton, grad_out, h, (w_phi, p_a, p_b), qp,
        block_n=16, num_programs=2,
    )  # fmt: skip
    closed_form = lc.lorap_backward_cpu(grad_out, h, Prompt(w_phi, p_a, p_b), None, QuantGrid(*qp))
    for name, g, c, e in zip(("h", "w_phi", "p_a", "p_b"), got, closed_form, expected, strict=True):
        assert g.dtype == e.dtype, name
        assert_close_rel(g, e)
        assert_close_rel(c, e)


def test_backward_is_deterministic_and_loops_over_blocks():
    """7 row blocks on 3 persistent programs: each program walks more than one block."""
    qp = QPARAMS["int8"]
    h, w_phi, p_a, p_b = make_inputs(100, 24, 4, 4, seed=3)
    grad_out = torch.randn(h.shape, generator=torch.Generator().manual_seed(4))
    runs = [
        run_on(
            DEVICE,
            lf.lorap_fused_backward_triton,
            grad_out,
            h,
            (w_phi, p_a, p_b),
            qp,
            block_n=16,
            num_programs=3,
        )  # fmt: skip
        for _ in range(2)
    ]
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
    for g, e in zip(runs[0], reference_grads(h, w_phi, p_a, p_b, grad_out, qp), strict=True):
        assert_close_rel(g, e)


@pytest.mark.parametrize("per_row", [False, True], ids=["per_tensor", "per_row"])
def test_int8_input_dequantized_in_kernel(per_row):
    n, d, k, r = 45, 20, 6, 3
    g = torch.Generator().manual_seed(5)
    h = torch.randint(-128, 128, (n, d), generator=g, dtype=torch.int8)
    in_scale = torch.rand(n if per_row else 1, generator=g) * 0.02 + 0.005
    _, w_phi, p_a, p_b = make_inputs(n, d, k, r)
    qp = QPARAMS["int4"]
    codes, out = run_on(
        DEVICE, lf.lorap_fused_triton, h, (w_phi, p_a, p_b), qp, in_scale, block_n=32
    )
    ref_codes, ref_out = lf.lorap_reference(h, (w_phi, p_a, p_b), qp, in_scale=in_scale)
    assert out.dtype == torch.float32
    assert_codes_equal(codes, ref_codes, reference_prequant(h, w_phi, p_a, p_b, qp[0], in_scale))
    assert_close_rel(out, ref_out)

    grad_out = torch.randn(n, d, generator=g)
    got = run_on(
        DEVICE, lf.lorap_fused_backward_triton, grad_out, h, (w_phi, p_a, p_b), qp, in_scale
    )
    expected = reference_grads(h, w_phi, p_a, p_b, grad_out, qp, in_scale=in_scale)
    for g_got, g_ref in zip(got[1:], expected[1:], strict=True):
        assert_close_rel(g_got, g_ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(dtype):
    qp = QPARAMS["int8"]
    h, w_phi, p_a, p_b = make_inputs(30, 24, 8, 4, dtype=dtype, seed=6)
    codes, out = run_on(DEVICE, lf.lorap_fused_triton, h, (w_phi, p_a, p_b), qp)
    ref_codes, ref_out = lf.lorap_reference(h, (w_phi, p_a, p_b), qp)
    assert out.dtype == dtype
    assert_codes_equal(codes, ref_codes, reference_prequant(h, w_phi, p_a, p_b, qp[0]))
    same = codes == ref_codes
    if dtype == torch.float16:
        assert torch.equal(out[same], ref_out[same])
    else:
        # The interpreter's fp32 -> bf16 cast truncates instead of rounding to nearest (the
        # GPU rounds): allow one bf16 step.
        assert_close_rel(out[same].float(), ref_out[same].float(), rtol=2**-7)

    grad_out = torch.randn(h.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    got = run_on(DEVICE, lf.lorap_fused_backward_triton, grad_out, h, (w_phi, p_a, p_b), qp)
    expected = reference_grads(h, w_phi, p_a, p_b, grad_out, qp)
    for g_got, g_ref in zip(got, expected, strict=True):
        assert g_got.dtype == dtype
        assert_close_rel(g_got.float(), g_ref.float(), rtol=1e-2)


def test_op_autograd_through_triton():
    qp = QPARAMS["int8"]
    h, w_phi, p_a, p_b = make_inputs(33, 20, 5, 3, seed=8)
    grad_out = torch.randn(h.shape, generator=torch.Generator().manual_seed(9))
    leaves = [t.to(DEVICE, copy=True).requires_grad_(True) for t in (h, w_phi, p_a, p_b)]
    with triton_on(DEVICE):
        out = lf.lorap_forward(leaves[0], leaves[1:], qp)
        got = torch.autograd.grad(out, leaves, grad_out.to(DEVICE))
    for g_got, g_ref in zip(got, reference_grads(h, w_phi, p_a, p_b, grad_out, qp), strict=True):
        assert_close_rel(g_got.cpu(), g_ref)


@pytest.mark.parametrize("qname", ["int8", "int4"])
def test_cpu_path_keeps_its_residuals_and_its_backward_reads_them(qname):
    qp = QPARAMS[qname]
    h, w_phi, p_a, p_b = make_inputs(40, 20, 5, 3, seed=11)
    h = h * 4  # push part of y outside the grid, so the mask has zeros
    _, _, saved_w, saved_mask = torch.ops.lorap_dist.lorap_fused(
        h, w_phi, p_a, p_b, None, *op_grid(qp)
    )
    torch.testing.assert_close(saved_w, torch.softmax(h @ w_phi, dim=1))
    c = torch.round(reference_prequant(h, w_phi, p_a, p_b, qp[0])) + qp[1]
    assert torch.equal(saved_mask, (c >= qp[2]) & (c <= qp[3]))
    assert 0 < saved_mask.sum() < saved_mask.numel()
    # The CPU op's autograd (residuals kept) equals autograd of the reference.
    grad_out = torch.randn(h.shape, generator=torch.Generator().manual_seed(12))
    leaves = [t.clone().requires_grad_(True) for t in (h, w_phi, p_a, p_b)]
    got = torch.autograd.grad(lf.lorap_forward(leaves[0], leaves[1:], qp), leaves, grad_out)
    for g_got, g_ref in zip(got, reference_grads(h, w_phi, p_a, p_b, grad_out, qp), strict=True):
        assert_close_rel(g_got, g_ref)
    # The backward uses what it is handed: with an all-false mask g_y = 0, so every
    # gradient is zero.
    args = (grad_out, h, w_phi, p_a, p_b, None, *op_grid(qp))
    blocked = lf.lorap_fused_backward(*args, saved_w, torch.zeros_like(saved_mask))
    assert all(torch.count_nonzero(g) == 0 for g in blocked)
    recomputed = lf.lorap_fused_backward(*args)
    for a, b in zip(lf.lorap_fused_backward(*args, saved_w, saved_mask), recomputed, strict=True):
        torch.testing.assert_close(a, b)


def test_residuals_are_kept_only_when_a_backward_can_follow(monkeypatch):
    qp = QPARAMS["int8"]
    h, w_phi, p_a, p_b = make_inputs(30, 12, 4, 3, seed=15)
    args = (h, w_phi, p_a, p_b, None, *op_grid(qp))
    kept = torch.ops.lorap_dist.lorap_fused(*args)
    dropped = torch.ops.lorap_dist.lorap_fused(*args, None, None, False)
    assert torch.equal(kept[0], dropped[0]) and torch.equal(kept[1], dropped[1])
    assert kept[2].shape == (30, 4) and dropped[2].shape == (0, 4)
    assert kept[3].shape == (30, 12) and dropped[3].shape == (0, 12)
    # lorap_forward asks for them only with autograd on and a leaf that wants a gradient.
    seen = []
    original = lf.lorap_fused

    def spy(*op_args):
        seen.append(op_args[-1])
        return original(*op_args)

    monkeypatch.setattr(lf, "lorap_fused", spy)
    lf.lorap_forward(h, (w_phi, p_a, p_b), qp)
    leaves = [t.clone().requires_grad_(True) for t in (h, w_phi, p_a, p_b)]
    with torch.no_grad():
        lf.lorap_forward(leaves[0], leaves[1:], qp)
    out = lf.lorap_forward(leaves[0], leaves[1:], qp)
    assert seen == [False, False, True]
    grad_out = torch.randn(h.shape, generator=torch.Generator().manual_seed(16))
    got = torch.autograd.grad(out, leaves, grad_out)
    for g_got, g_ref in zip(got, reference_grads(h, w_phi, p_a, p_b, grad_out, qp), strict=True):
        assert_close_rel(g_got, g_ref)


def test_lorap_forward_cpu_path_is_the_reference():
    qp = QPARAMS["int4"]
    h, w_phi, p_a, p_b = make_inputs(20, 12, 4, 4)
    assert torch.equal(
        lf.lorap_forward(h, (w_phi, p_a, p_b), qp), lf.lorap_reference(h, (w_phi, p_a, p_b), qp)[1]
    )


@pytest.mark.parametrize("triton_path", [False, True], ids=["reference", "triton"])
@pytest.mark.parametrize("int8_input", [False, True], ids=["float_h", "int8_h"])
def test_opcheck(triton_path, int8_input):
    """The reference path is the CPU's; the Triton path runs on the test device."""
    qp = QPARAMS["int8"]
    device = DEVICE if triton_path else CPU
    h, w_phi, p_a, p_b = (t.to(device) for t in make_inputs(18, 12, 3, 2, seed=10))
    grid = op_grid(qp, device)
    in_scale = None
    if int8_input:
        h = (h * 40).round().clamp(-128, 127).to(torch.int8)
        in_scale = torch.tensor([0.025], device=device)
    else:
        h.requires_grad_(True)
    for t in (w_phi, p_a, p_b):
        t.requires_grad_(True)
    context = triton_on(device) if triton_path else contextlib.nullcontext()
    with context:
        torch.library.opcheck(
            torch.ops.lorap_dist.lorap_fused, (h, w_phi, p_a, p_b, in_scale, *grid)
        )
        grad_out = torch.randn(h.shape).to(device)
        backward_args = (grad_out, h.detach(), w_phi.detach(), p_a.detach(), p_b.detach())
        torch.library.opcheck(
            torch.ops.lorap_dist.lorap_fused_backward, (*backward_args, in_scale, *grid)
        )
        _, _, saved_w, saved_mask = torch.ops.lorap_dist.lorap_fused(
            *backward_args[1:], in_scale, *grid
        )
        torch.library.opcheck(
            torch.ops.lorap_dist.lorap_fused_backward,
            (*backward_args, in_scale, *grid, saved_w, saved_mask),
        )


@pytest.mark.parametrize(
    "shape",
    [(37, 24, 1, 1), (50, 40, 3, 2), (5, 17, 5, 7)],
    ids=lambda s: "n{}-d{}-k{}-r{}".format(*s),
)
def test_range_pass_matches_reference(shape):
    """Blocks of 16 rows: the last block is partial, so masked rows must not reach the range.

    Not bit-exact: the kernel's ``tl.dot`` sums in another order than torch's matmul,
    so ``y`` (and its extremes) may differ in the last ulp; 1e-6 relative covers that.
    """
    h, w_phi, p_a, p_b = make_inputs(*shape, seed=11)
    # Padded rows (h = 0) give y = the prompt of a zero row, well below min(y) once h is
    # shifted up by 20, so an unmasked pad would show; the last, partial block holds the max.
    h = h + 20.0
    h[-1] += 5.0
    got = run_on(DEVICE, lf.lorap_range_triton, h, (w_phi, p_a, p_b), block_n=16)
    y = reference_prequant(h, w_phi, p_a, p_b, 1.0)
    expected = torch.stack(torch.aminmax(y))
    assert got.dtype == torch.float32 and got.shape == (2,)
    assert float(expected[0]) > 10.0
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    cpu_range, saved_y, saved_w = lf.lorap_range(h, w_phi, p_a, p_b)  # CPU: the reference
    assert torch.equal(cpu_range, expected)
    assert torch.equal(saved_y, y) and torch.equal(saved_w, torch.softmax(h @ w_phi, dim=1))
    with triton_on(DEVICE):
        triton_range, empty_y, empty_w = run_on(DEVICE, lf.lorap_range, h, w_phi, p_a, p_b)
    torch.testing.assert_close(triton_range, expected, rtol=1e-6, atol=0)
    assert empty_y.shape == (0, shape[1]) and empty_w.shape == (0, shape[2])


@pytest.mark.parametrize("qname", ["int8", "int4"])
def test_forward_reusing_the_range_pass_is_bit_identical(qname):
    qp = QPARAMS[qname]
    h, w_phi, p_a, p_b = make_inputs(30, 20, 5, 3, seed=14)
    _, saved_y, saved_w = lf.lorap_range(h, w_phi, p_a, p_b)
    fresh = torch.ops.lorap_dist.lorap_fused(h, w_phi, p_a, p_b, None, *op_grid(qp))
    reused = torch.ops.lorap_dist.lorap_fused(
        h, w_phi, p_a, p_b, None, *op_grid(qp), saved_y, saved_w
    )
    for a, b in zip(fresh, reused, strict=True):
        assert torch.equal(a, b)
    # What is handed in is what is used (a stale y gives other codes) ...
    stale = torch.ops.lorap_dist.lorap_fused(
        h, w_phi, p_a, p_b, None, *op_grid(qp), saved_y + 1, saved_w
    )
    assert not torch.equal(stale[1], fresh[1])
    # ... and a residual of the wrong shape is refused, naming both.
    with pytest.raises(ValueError, match=r"saved_y \(29, 20\) and saved_w"):
        lf.lorap_forward(h, (w_phi, p_a, p_b), qp, saved=(saved_y[:29], saved_w))


@pytest.mark.parametrize("per_row", [False, True], ids=["per_tensor", "per_row"])
def test_range_pass_int8_input(per_row):
    n, d, k, r = 45, 20, 6, 3
    g = torch.Generator().manual_seed(12)
    h = torch.randint(-128, 128, (n, d), generator=g, dtype=torch.int8)
    in_scale = torch.rand(n if per_row else 1, generator=g) * 0.02 + 0.005
    _, w_phi, p_a, p_b = make_inputs(n, d, k, r)
    got = run_on(DEVICE, lf.lorap_range_triton, h, (w_phi, p_a, p_b), in_scale, block_n=16)
    expected = lf.lorap_range_reference(h, (w_phi, p_a, p_b), in_scale)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_range_pass_rejects_empty_input():
    _, w_phi, p_a, p_b = make_inputs(1, 8, 3, 2)
    with pytest.raises(ValueError, match="no rows"):
        lf.lorap_range(torch.zeros(0, 8), w_phi, p_a, p_b)


@pytest.mark.parametrize("triton_path", [False, True], ids=["reference", "triton"])
def test_range_opcheck(triton_path):
    """The reference path is the CPU's; the Triton path runs on the test device."""
    device = DEVICE if triton_path else CPU
    h, w_phi, p_a, p_b = (t.to(device) for t in make_inputs(18, 12, 3, 2, seed=13))
    context = triton_on(device) if triton_path else contextlib.nullcontext()
    with context:
        torch.library.opcheck(torch.ops.lorap_dist.lorap_range, (h, w_phi, p_a, p_b, None))
        _, saved_y, saved_w = lf.lorap_range(h, w_phi, p_a, p_b)
        grid = op_grid(QPARAMS["int4"], device)
        leaves = [t.clone().requires_grad_(True) for t in (h, w_phi, p_a, p_b)]
        torch.library.opcheck(
            torch.ops.lorap_dist.lorap_fused, (*leaves, None, *grid, saved_y, saved_w)
        )


@pytest.mark.slow
def test_torch_compile_fullgraph():
    class Prompt(torch.nn.Module):
        def __init__(self, d, k, r):
            super().__init__()
            _, w_phi, p_a, p_b = make_inputs(1, d, k, r)
            self.w_phi, self.p_a, self.p_b = (torch.nn.Parameter(t) for t in (w_phi, p_a, p_b))

        def forward(self, h):
            return lf.lorap_forward(h.relu(), (self.w_phi, self.p_a, self.p_b), QPARAMS["int8"])

    module = Prompt(16, 4, 2).to(DEVICE)
    compiled = torch.compile(module, fullgraph=True)
    h = torch.randn(25, 16).to(DEVICE)
    out = compiled(h)
    torch.testing.assert_close(out, module(h), rtol=0, atol=0)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    module(h).square().sum().backward()
    for g, p in zip(grads, module.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(h=torch.zeros(4, 8, 1)), "h must be a 2-D"),
        (dict(h=torch.zeros(4, 8, dtype=torch.int32)), "h must be float32"),
        (dict(h=torch.zeros(4, 8, dtype=torch.int8)), "in_scale"),
        (dict(w_phi=torch.zeros(7, 3)), "w_phi must be \\[d, k\\]"),
        (dict(p_a=torch.zeros(4, 2)), "p_a must be \\[k, r\\]"),
        (dict(p_b=torch.zeros(2, 9)), "p_b must be \\[r, d\\]"),
        (dict(scale=0.0), "scale must be a positive"),
        (dict(zero_point=200), "zero_point must lie"),
        (dict(qmin=5, qmax=5, zero_point=5), "qmin must be below qmax"),
    ],
)
def test_bad_inputs_raise_value_error(change, message):
    args = dict(
        h=torch.zeros(4, 8), w_phi=torch.zeros(8, 3), p_a=torch.zeros(3, 2), p_b=torch.zeros(2, 8),
        scale=0.1, zero_point=0, qmin=-128, qmax=127,
    )  # fmt: skip
    args.update(change)
    prompt = (args["w_phi"], args["p_a"], args["p_b"])
    grid = (args["scale"], args["zero_point"], args["qmin"], args["qmax"])
    with pytest.raises(ValueError, match=message):
        lf.lorap_forward(args["h"], prompt, grid)


def test_rows_wider_than_the_kernels_take_run_the_torch_path():
    """Beyond MAX_TRITON_WIDTH the backward kernel would exceed a block's shared memory, so the
    ops run the pure-torch path on the input's device (the test device, where the reference
    runs too), with consistent fake shapes."""
    qp = QPARAMS["int8"]
    h, w_phi, p_a, p_b = (t.to(DEVICE) for t in make_inputs(6, lk.MAX_TRITON_WIDTH + 3, 2, 2))
    with triton_on(DEVICE):
        assert lk.takes_triton(h[:, :16], 16)
        assert not lk.takes_triton(h, h.shape[1])
        args = (h, w_phi, p_a, p_b, None, *op_grid(qp, DEVICE))
        out, _, saved_w, _ = torch.ops.lorap_dist.lorap_fused(*args)
        torch.library.opcheck(torch.ops.lorap_dist.lorap_fused, args)
    assert saved_w.shape == (6, 2)  # residuals kept: the torch path ran
    assert torch.equal(out, lf.lorap_reference(h, (w_phi, p_a, p_b), qp)[1])
