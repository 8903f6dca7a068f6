"""Quantized aggregation fused into LoRAP (the Triton path on the test device, and the CPU
path) against the unfused pure-torch composition.

The Triton path runs on ``LORAP_TEST_DEVICE`` (the CPU under TRITON_INTERPRET=1 by default, or
compiled on CUDA); inputs are made on the CPU, and the references run there.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from lorap_dist.kernels import aggregate_lorap as al
from lorap_dist.kernels import lorap_cpu as lc
from lorap_dist.kernels import lorap_fused as lf
from lorap_dist.kernels import lorap_kernels as lk
from lorap_dist.kernels import quant_aggregate as qa
from lorap_dist.kernels.lorap_checks import Prompt
from lorap_dist.kernels.quant_grid import QuantGrid, inv_scale
from test_lorap_fused import CPU, DEVICE, QPARAMS, assert_close_rel, assert_codes_equal, op_grid
from test_quant_aggregate import make_block

from lorap_dist.testing.kernel_device import run_on, triton_on

# (num_src, num_dst, d, k, r): d not a power of two, num_dst not a multiple of the block of
# 16, k and r from 1 to 16.
SHAPES = [
    (30, 37, 24, 1, 1),
    (25, 20, 33, 3, 2),
    (40, 18, 64, 8, 4),
    (12, 9, 17, 16, 16),
]
# The aggregate's own grid (scale, zero_point, qmin, qmax), or None to prompt it in fp32.
AGG_GRIDS = {"agg_fp32": None, "agg_int8": (0.01, 0, -128, 127), "agg_int4": (0.08, 1, -8, 7)}


def make_prompt(d, k, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    w_phi = torch.randn(d, k, generator=g) / d**0.5
    p_a = torch.randn(k, r, generator=g)
    p_b = torch.randn(r, d, generator=g) * 0.3
    return w_phi, p_a, p_b


def make_case(num_src, num_dst, d, k, r, bits, seed=0, max_degree=12):
    block = make_block(num_src, num_dst, d, bits, max_degree=max_degree, seed=seed)
    return block, make_prompt(d, k, r, seed=seed + 1)


def reference_h(block, d, bits, reduce, agg_grid):
    agg = None if agg_grid is None else QuantGrid(*agg_grid)
    return al._aggregate(qa.CsrBlock(*block, bits, reduce), d, agg, oracle=True)


def reference_grads(block, prompt, grad_out, qp, bits, reduce, agg_grid):
    leaves = [t.detach().clone().requires_grad_(True) for t in prompt]
    _, out = al.aggregate_lorap_reference(
        qa.CsrBlock(*block, bits, reduce), leaves, qp, agg_grid=agg_grid
    )
    return torch.autograd.grad(out, leaves, grad_out)


def triton_forward(block, prompt, qp, bits, reduce, agg_grid):
    """``(codes, out)`` of the op's Triton path on the test device, back on the CPU."""
    with triton_on(DEVICE):
        out, codes, *_ = run_on(
            DEVICE, torch.ops.lorap_dist.aggregate_lorap, *block, bits, reduce, *prompt,
            *op_grid(qp), *al._agg_args(agg_grid, "cpu"),
        )  # fmt: skip
    return codes, out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "src{}-dst{}-d{}-k{}-r{}".format(*s))
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("agg", list(AGG_GRIDS))
def test_forward_matches_reference(shape, bits, agg):
    qp, agg_grid = QPARAMS["int8"], AGG_GRIDS[agg]
    reduce = "mean" if shape[2] % 2 else "sum"
    block, prompt = make_case(*shape, bits, seed=shape[2])
    codes, out = triton_forward(block, prompt, qp, bits, reduce, agg_grid)
    ref_codes, ref_out = al.aggregate_lorap_reference(
        qa.CsrBlock(*block, bits, reduce), prompt, qp, agg_grid=agg_grid
    )
    h = reference_h(block, shape[2], bits, reduce, agg_grid)
    v = (h + torch.softmax(h @ prompt[0], 1) @ prompt[1] @ prompt[2]) * inv_scale(qp[0])
    assert_codes_equal(codes, ref_codes, v)
    assert torch.equal(out, (codes.int() - qp[1]).float() * torch.tensor(qp[0]))
    assert_close_rel(out, ref_out)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("agg", list(AGG_GRIDS))
def test_aggregate_in_registers_is_bit_exact(bits, reduce, agg):
    """With a zero prompt, ``y`` is the aggregate itself: the fused op must then equal
    fake_quantize(quant_aggregate(...)) bit for bit, ties included."""
    qp, agg_grid = QPARAMS["int8"], AGG_GRIDS[agg]
    block, (w_phi, p_a, p_b) = make_case(35, 29, 21, 4, 2, bits, seed=7)
    p_b = torch.zeros_like(p_b)
    codes, out = triton_forward(block, (w_phi, p_a, p_b), qp, bits, reduce, agg_grid)
    h = reference_h(block, 21, bits, reduce, agg_grid)
    assert torch.equal(out, torch.fake_quantize_per_tensor_affine(h, *qp))
    assert torch.equal(h[1], torch.zeros(21))  # the destination without edges


@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "src{}-dst{}-d{}-k{}-r{}".format(*s))
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("agg", ["agg_fp32", "agg_int8"])
def test_backward_matches_autograd(shape, bits, agg):
    qp, agg_grid = QPARAMS["int4"], AGG_GRIDS[agg]
    block, prompt = make_case(*shape, bits, seed=3)
    grad_out = torch.randn(shape[1], shape[2], generator=torch.Generator().manual_seed(4))
    expected = reference_grads(block, prompt, grad_out, qp, bits, "mean", agg_grid)
    args = (grad_out, *block, bits, "mean", *prompt, *op_grid(qp), *al._agg_args(agg_grid, "cpu"))
    with triton_on(DEVICE):
        triton_grads = run_on(DEVICE, torch.ops.lorap_dist.aggregate_lorap_backward, *args)
    cpu_grads = torch.ops.lorap_dist.aggregate_lorap_backward(*args)
    for t, c, e in zip(triton_grads, cpu_grads, expected, strict=True):
        assert t.dtype == e.dtype
        assert_close_rel(t, e)
        assert_close_rel(c, e)


def test_backward_is_deterministic_over_persistent_programs():
    """100 rows in blocks of 16 on 3 programs: partial sums reduced in a fixed order."""
    qp = QPARAMS["int8"]
    block, prompt = make_case(50, 100, 24, 4, 4, 8, seed=5)
    gather = al._gather(qa.CsrBlock(*block, 8, "mean"), None)
    grad_out = torch.randn(100, 24, generator=torch.Generator().manual_seed(6))
    runs = [
        run_on(
            DEVICE,
            lk.launch_backward,
            grad_out,
            block[0],
            Prompt(*prompt),
            block[1],
            QuantGrid(*qp),
            gather=gather,
            block_n=16,
            num_programs=3,
        )  # fmt: skip
        for _ in range(2)
    ]
    assert runs[0][0] is None  # integer sources take no gradient
    for a, b in zip(runs[0][1:], runs[1][1:], strict=True):
        assert torch.equal(a, b)
    expected = reference_grads(block, prompt, grad_out, qp, 8, "mean", None)
    for g, e in zip(runs[0][1:], expected, strict=True):
        assert_close_rel(g, e)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("agg", ["agg_fp32", "agg_int4"])
def test_cpu_path_is_the_unfused_composition(bits, agg):
    """On CPU the op is exactly quant_aggregate then (fake-quantize then) lorap_forward."""
    qp, agg_grid = QPARAMS["uint8"], AGG_GRIDS[agg]
    block, prompt = make_case(30, 25, 18, 4, 4, bits, seed=8)
    csr = qa.CsrBlock(*block, bits, "mean")
    out = al.aggregate_lorap_forward(csr, prompt, qp, agg_grid=agg_grid)
    h = qa.quant_aggregate(*block, 18, bits, "mean")
    if agg_grid is not None:
        h = torch.fake_quantize_per_tensor_affine(h, *agg_grid)
    assert torch.equal(out, lf.lorap_forward(h, prompt, qp))
    assert torch.equal(out, al.aggregate_lorap_reference(csr, prompt, qp, agg_grid=agg_grid)[1])


@pytest.mark.parametrize("triton_path", [False, True], ids=["reference", "triton"])
def test_range_pass_and_reuse(triton_path):
    """The reference path is the CPU's; the Triton path runs on the test device."""
    qp, agg_grid = QPARAMS["int8"], AGG_GRIDS["agg_int8"]
    block, prompt = make_case(30, 40, 20, 3, 2, 8, seed=9)
    h = reference_h(block, 20, 8, "mean", agg_grid)
    y = lc.prompted_reference(h, Prompt(*prompt), None)
    device = DEVICE if triton_path else CPU
    context = triton_on(device) if triton_path else contextlib.nullcontext()
    with context:
        csr = qa.CsrBlock(*block, 8, "mean")
        y_range, saved = run_on(
            device, al.aggregate_lorap_forward_range, csr, prompt, agg_grid=agg_grid
        )
        reused = run_on(
            device, al.aggregate_lorap_forward, csr, prompt, qp, agg_grid=agg_grid, saved=saved
        )
        fresh = run_on(device, al.aggregate_lorap_forward, csr, prompt, qp, agg_grid=agg_grid)
    assert_close_rel(y_range, torch.stack(torch.aminmax(y)))
    assert [t.shape[0] for t in saved] == ([0, 0, 0] if triton_path else [40, 40, 40])
    assert torch.equal(reused, fresh)


def test_op_autograd_keeps_residuals_only_for_a_backward():
    qp = QPARAMS["int8"]
    block, prompt = make_case(20, 30, 16, 4, 2, 8, seed=11)
    leaves = [t.clone().requires_grad_(True) for t in prompt]
    args = (*block, 8, "mean")
    _, _, saved_h, saved_w, saved_mask = torch.ops.lorap_dist.aggregate_lorap(
        *args, *leaves, *op_grid(qp)
    )
    assert (saved_h.shape, saved_w.shape, saved_mask.shape) == ((30, 16), (30, 4), (30, 16))
    with torch.no_grad():
        out = al.aggregate_lorap_forward(qa.CsrBlock(*block, 8, "mean"), leaves, qp)
    assert not out.requires_grad
    grad_out = torch.randn(30, 16, generator=torch.Generator().manual_seed(12))
    al.aggregate_lorap_forward(qa.CsrBlock(*block, 8, "mean"), leaves, qp).backward(grad_out)
    expected = reference_grads(block, prompt, grad_out, qp, 8, "mean", None)
    for leaf, e in zip(leaves, expected, strict=True):
        assert_close_rel(leaf.grad, e)


@pytest.mark.parametrize("triton_path", [False, True], ids=["reference", "triton"])
@pytest.mark.parametrize("agg", ["agg_fp32", "agg_int8"])
def test_opcheck(triton_path, agg):
    """The reference path is the CPU's; the Triton path runs on the test device."""
    device = DEVICE if triton_path else CPU
    block, prompt = make_case(15, 18, 12, 3, 2, 8, seed=13)
    block = [t.to(device) for t in block]
    prompt = [t.to(device).requires_grad_(True) for t in prompt]
    grid = op_grid(QPARAMS["int8"], device)
    agg_args = al._agg_args(AGG_GRIDS[agg], device)
    context = triton_on(device) if triton_path else contextlib.nullcontext()
    with context:
        args = (*block, 8, "mean", *prompt, *grid, *agg_args)
        torch.library.opcheck(torch.ops.lorap_dist.aggregate_lorap, args)
        detached = [t.detach() for t in prompt]
        torch.library.opcheck(
            torch.ops.lorap_dist.aggregate_lorap_range, (*block, 8, "mean", *detached, *agg_args)
        )
        grad_out = torch.randn(18, 12).to(device)
        torch.library.opcheck(
            torch.ops.lorap_dist.aggregate_lorap_backward,
            (grad_out, *block, 8, "mean", *detached, *grid, *agg_args),
        )


@pytest.mark.slow
def test_torch_compile_fullgraph():
    block, prompt = make_case(20, 25, 16, 4, 2, 4, seed=14)

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.params = torch.nn.ParameterList(torch.nn.Parameter(t) for t in prompt)

        def forward(self, src_codes, src_scale, indptr, indices):
            csr = qa.CsrBlock(src_codes, src_scale, indptr, indices, bits=4, reduce="mean")
            out = al.aggregate_lorap_forward(csr, tuple(self.params), QPARAMS["int4"])
            return out.relu()

    block = [t.to(DEVICE) for t in block]
    layer = Layer().to(DEVICE)
    compiled = torch.compile(layer, fullgraph=True)
    out = compiled(*block)
    torch.testing.assert_close(out, layer(*block), rtol=0, atol=0)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer(*block).square().sum().backward()
    for g, p in zip(grads, layer.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(bits=5), "bits must be 8"),
        (dict(reduce="max"), "reduce must be one of"),
        (dict(src_codes=torch.zeros(6, 9, dtype=torch.int8)), "src_codes must be torch.int8"),
        (dict(w_phi=torch.zeros(8)), "w_phi must be a 2-D"),
        (dict(p_b=torch.zeros(2, 7)), "p_b must be \\[r, d\\]"),
        (dict(agg_grid=(0.1, None, -8, 7)), "agg_scale and agg_zero_point go together"),
        (dict(agg_grid=(0.0, 0, -8, 7)), "agg_scale must be a positive"),
        (dict(agg_grid=(0.1, 9, -8, 7)), "agg_zero_point must lie"),
        (dict(scale=-1.0), "scale must be a positive"),
    ],
)
def test_bad_inputs_raise_value_error(change, message):
    args = dict(
        src_codes=torch.zeros(6, 8, dtype=torch.int8), src_scale=torch.ones(6),
        indptr=torch.tensor([0, 2, 3]), indices=torch.tensor([0, 5, 1]),
        w_phi=torch.zeros(8, 3), p_a=torch.zeros(3, 2), p_b=torch.zeros(2, 8),
        scale=0.1, zero_point=0, qmin=-128, qmax=127, bits=8, reduce="mean", agg_grid=None,
    )  # fmt: skip
    args.update(change)
    block = qa.CsrBlock(*(args[k] for k in qa.CsrBlock._fields))
    prompt = (args["w_phi"], args["p_a"], args["p_b"])
    grid = (args["scale"], args["zero_point"], args["qmin"], args["qmax"])
    with pytest.raises(ValueError, match=message):
        al.aggregate_lorap_forward(block, prompt, grid, agg_grid=args["agg_grid"])
