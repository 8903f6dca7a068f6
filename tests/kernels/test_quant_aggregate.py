"""The fused quantized aggregation kernel against its pure-torch reference.

The kernel runs on the test device (``LORAP_TEST_DEVICE``: the CPU under TRITON_INTERPRET=1 by
default, or compiled on CUDA); inputs are made on the CPU, and the reference runs there.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from lorap_dist.kernels import quant_aggregate as qa

from lorap_dist.testing.kernel_device import kernel_test_device, run_on, triton_on

DEVICE = kernel_test_device()


def make_block(num_src, num_dst, d, bits, max_degree=40, seed=0, index_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    deg = torch.randint(0, max_degree + 1, (num_dst,), generator=g)
    if num_dst > 2:
        deg[1] = 0  # a destination without edges
    indptr = torch.cat([torch.zeros(1, dtype=torch.int64), deg.cumsum(0)])
    indices = torch.randint(0, num_src, (int(deg.sum()),), generator=g).to(index_dtype)
    scale = torch.rand(num_src, generator=g) * 0.1 + 0.01
    if bits == 8:
        codes = torch.randint(-128, 128, (num_src, d), generator=g, dtype=torch.int8)
    else:
        codes = qa.pack_int4(torch.randint(-8, 8, (num_src, d), generator=g, dtype=torch.int8))
    return codes, scale, indptr, indices


def assert_close_rel(actual, expected, rtol=1e-5):
    atol = rtol * max(float(expected.abs().max()) if expected.numel() else 0.0, 1.0)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("d", [1, 7, 33, 64])
def test_int4_pack_roundtrip_low_nibble_first(d):
    codes = torch.randint(-8, 8, (5, d), dtype=torch.int8)
    packed = qa.pack_int4(codes)
    assert packed.shape == (5, (d + 1) // 2) and packed.dtype == torch.uint8
    assert torch.equal(qa.unpack_int4(packed, d), codes)
    assert int(packed[0, 0]) & 0xF == int(codes[0, 0]) & 0xF


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("d", [7, 33, 64])
def test_matches_reference(bits, reduce, d):
    codes, scale, indptr, indices = make_block(30, 12, d, bits, seed=d)
    block = qa.CsrBlock(codes, scale, indptr, indices, bits, reduce)
    out = run_on(DEVICE, qa.quant_aggregate_triton, block, d, block_e=8)
    expected = qa.quant_aggregate_reference(block, d)
    assert out.dtype == torch.float32 and out.shape == (12, d)
    assert_close_rel(out, expected)
    assert torch.equal(out[1], torch.zeros(d))


def test_reference_equals_dequantize_then_index_add():
    codes, scale, indptr, indices = make_block(20, 6, 10, 8)
    dense = codes.float() * scale[:, None]
    deg = indptr.diff()
    dst = torch.repeat_interleave(torch.arange(6), deg)
    expected = torch.zeros(6, 10).index_add_(0, dst, dense[indices])
    out = qa.quant_aggregate_reference(qa.CsrBlock(codes, scale, indptr, indices), 10)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("index_dtypes", [(torch.int64, torch.int64), (torch.int32, torch.int32),
                                          (torch.int64, torch.int32)])  # fmt: skip
def test_cpu_path_is_the_reference_bit_for_bit(bits, reduce, index_dtypes):
    """The CPU path (one CSR matmul over dequantized sources) sums the same products in the
    same order as the gather + index_add_ oracle."""
    codes, scale, indptr, indices = make_block(300, 120, 37, bits, seed=3)
    indptr, indices = indptr.to(index_dtypes[0]), indices.to(index_dtypes[1])
    out = qa.quant_aggregate(codes, scale, indptr, indices, 37, bits, reduce)
    expected = qa.quant_aggregate_reference(
        qa.CsrBlock(codes, scale, indptr, indices, bits, reduce), 37
    )
    assert torch.equal(out, expected)
    assert torch.equal(out[1], torch.zeros(37))


def test_cpu_path_without_edges_or_rows():
    codes, scale, _, _ = make_block(10, 5, 9, 8)
    no_edges = qa.quant_aggregate(codes, scale, torch.zeros(6, dtype=torch.int64),
                                  torch.zeros(0, dtype=torch.int64), 9, 8, "mean")  # fmt: skip
    assert torch.equal(no_edges, torch.zeros(5, 9))
    no_rows = qa.quant_aggregate(codes, scale, torch.zeros(1, dtype=torch.int64),
                                 torch.zeros(0, dtype=torch.int64), 9)  # fmt: skip
    assert no_rows.shape == (0, 9)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_int32_indices_and_no_edges(index_dtype):
    codes, scale, indptr, indices = make_block(10, 5, 9, 8, index_dtype=index_dtype)
    indptr = indptr.to(index_dtype)
    block = qa.CsrBlock(codes, scale, indptr, indices)
    out = run_on(DEVICE, qa.quant_aggregate_triton, block, 9)
    assert_close_rel(out, qa.quant_aggregate_reference(block, 9))
    empty = qa.CsrBlock(codes, scale, torch.zeros(6, dtype=index_dtype), indices[:0], 8, "mean")
    none = run_on(DEVICE, qa.quant_aggregate_triton, empty, 9)
    assert torch.equal(none, torch.zeros(5, 9))


@pytest.mark.parametrize("triton_path", [False, True], ids=["reference", "triton"])
@pytest.mark.parametrize("bits", [8, 4])
def test_opcheck(triton_path, bits):
    """The reference path is the CPU's; the Triton path runs on the test device."""
    device = DEVICE if triton_path else torch.device("cpu")
    codes, scale, indptr, indices = (
        t.to(device) for t in make_block(16, 6, 11, bits, max_degree=6)
    )
    with triton_on(device) if triton_path else contextlib.nullcontext():
        torch.library.opcheck(
            torch.ops.lorap_dist.quant_aggregate, (codes, scale, indptr, indices, 11, bits, "mean")
        )


@pytest.mark.slow
def test_torch_compile_fullgraph():
    codes, scale, indptr, indices = (t.to(DEVICE) for t in make_block(16, 6, 11, 4, max_degree=6))

    def layer(codes, scale, indptr, indices):
        return qa.quant_aggregate(codes, scale, indptr, indices, 11, 4, "mean").relu()

    compiled = torch.compile(layer, fullgraph=True)
    torch.testing.assert_close(
        compiled(codes, scale, indptr, indices), layer(codes, scale, indptr, indices)
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(bits=3), "bits must be 8"),
        (dict(reduce="max"), "reduce must be one of"),
        (dict(src_codes=torch.zeros(4, 8, dtype=torch.uint8)), "src_codes must be torch.int8"),
        (
            dict(src_codes=torch.zeros(4, 8, dtype=torch.uint8), bits=4),
            "src_codes must be torch.uint8",
        ),
        (dict(src_scale=torch.zeros(3)), "src_scale must be float32"),
        (dict(indices=torch.zeros(2, 2, dtype=torch.int64)), "indices must be a 1-D"),
        (dict(indptr=torch.zeros(3)), "indptr must be a 1-D"),
    ],
)
def test_bad_inputs_raise_value_error(change, message):
    args = dict(
        src_codes=torch.zeros(4, 8, dtype=torch.int8), src_scale=torch.ones(4),
        indptr=torch.tensor([0, 1, 2]), indices=torch.tensor([0, 3]), d=8, bits=8, reduce="sum",
    )  # fmt: skip
    args.update(change)
    with pytest.raises(ValueError, match=message):
        qa.quant_aggregate(**args)
