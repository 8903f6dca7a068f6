"""Integer codes: agreement with fake quantization, per-row INT8/INT4 storage, INT4 packing."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.quant import (
    QuantizedRows,
    dequantize,
    dequantize_rows,
    fake_quantize,
    pack_int4,
    quant_range,
    quantize,
    quantize_rows,
    unpack_int4,
)

BITS = list(range(2, 9))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_per_tensor_codes_dequantize_to_fake_quantize(bits, symmetric):
    qmin, qmax = quant_range(bits, symmetric)
    x = torch.randn(50, 9, generator=torch.Generator().manual_seed(bits))
    scale, zero_point = torch.tensor(3.0 / (qmax - qmin)), (0 if symmetric else qmax // 3)
    codes = quantize(x, scale, zero_point, qmin, qmax)
    assert codes.dtype == (torch.int8 if symmetric else torch.uint8)
    assert int(codes.min()) == qmin and int(codes.max()) == qmax  # clipping is exercised
    assert torch.equal(
        dequantize(codes, scale, zero_point), fake_quantize(x, scale, zero_point, qmin, qmax)
    )


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("axis", [0, 1])
def test_per_channel_codes_dequantize_to_fake_quantize(bits, symmetric, axis):
    qmin, qmax = quant_range(bits, symmetric)
    gen = torch.Generator().manual_seed(bits + 10 * axis)
    x = torch.randn(12, 7, generator=gen)
    channels = x.shape[axis]
    scale = torch.rand(channels, generator=gen) / (qmax - qmin) + 1e-3
    zero_point = (
        torch.zeros(channels, dtype=torch.int32)
        if symmetric
        else torch.randint(qmin, qmax + 1, (channels,), generator=gen, dtype=torch.int32)
    )
    codes = quantize(x, scale, zero_point, qmin, qmax, axis=axis)
    assert torch.equal(
        dequantize(codes, scale, zero_point, axis=axis),
        fake_quantize(x, scale, zero_point, qmin, qmax, axis=axis),
    )


def test_quantize_rejects_grids_wider_than_a_byte():
    with pytest.raises(ValueError, match="int8"):
        quantize(torch.zeros(3), 1.0, 0, -200, 100)
    with pytest.raises(ValueError, match="uint8"):
        quantize(torch.zeros(3), 1.0, 0, 0, 511)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(40, 17), (6, 3, 5), (9,)])
def test_quantize_rows_error_is_at_most_half_a_step(bits, shape):
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(shape, generator=gen) * torch.logspace(-3, 3, shape[0]).reshape(
        -1, *[1] * (len(shape) - 1)
    )
    codes, scales = quantize_rows(x, bits)
    qmax = 2 ** (bits - 1) - 1
    rows = x.reshape(shape[0], -1)
    assert codes.dtype == torch.int8 and codes.shape == x.shape
    assert scales.dtype == torch.float32 and scales.shape == (shape[0],)
    assert int(codes.abs().max()) == qmax
    assert torch.equal(scales, rows.abs().amax(dim=1) / qmax)
    error = (dequantize_rows(codes, scales) - x).abs().reshape(shape[0], -1)
    assert (error <= scales[:, None] / 2 * (1 + 1e-6)).all()


def test_quantize_rows_keeps_each_rows_largest_magnitude_exactly():
    x = torch.tensor([[0.3, -1.7, 0.1], [2.5, 0.0, -0.5]])
    codes, scales = quantize_rows(x, 8)
    assert codes.tolist() == [[22, -127, 7], [127, 0, -25]]
    restored = dequantize_rows(codes, scales)
    assert torch.equal(restored.abs().amax(dim=1), x.abs().amax(dim=1))


def test_quantize_rows_of_zero_rows_are_zero_codes_and_finite_scales():
    x = torch.zeros(3, 4)
    x[1] = torch.tensor([1e-30, -2e-30, 0.0, 5e-31])  # tiny but nonzero: kept
    codes, scales = quantize_rows(x, 8)
    assert torch.isfinite(scales).all() and (scales > 0).all()
    assert codes[0].eq(0).all() and codes[2].eq(0).all()
    assert torch.allclose(dequantize_rows(codes, scales)[1], x[1], rtol=0.01, atol=0)


@pytest.mark.parametrize("bits", [1, 9])
def test_quantize_rows_rejects_unsupported_bits(bits):
    with pytest.raises(ValueError, match=f"bits={bits}"):
        quantize_rows(torch.randn(2, 2), bits)


@pytest.mark.parametrize("n", [1, 2, 15, 16, 17])
def test_every_signed_int4_value_round_trips(n):
    values = torch.arange(-8, 8, dtype=torch.int8)
    codes = values.repeat(3, 2)[:, :n]  # [3, n], every value when n >= 16
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (3, (n + 1) // 2)
    assert torch.equal(unpack_int4(packed, n), codes)


@pytest.mark.parametrize("n", [1, 15, 16, 33])
def test_every_unsigned_int4_value_round_trips(n):
    codes = torch.arange(16, dtype=torch.uint8).repeat(2, 3)[..., :n].reshape(2, 1, n)
    packed = pack_int4(codes)
    assert packed.shape == (2, 1, (n + 1) // 2)
    assert torch.equal(unpack_int4(packed, n, signed=False), codes)


def test_pack_int4_layout_is_low_nibble_first():
    assert pack_int4(torch.tensor([1, 2, 3], dtype=torch.uint8)).tolist() == [0x21, 0x03]
    assert pack_int4(torch.tensor([-1, -8], dtype=torch.int8)).tolist() == [0x8F]


def test_quantize_rows_int4_codes_survive_packing():
    codes, scales = quantize_rows(torch.randn(20, 11), bits=4)
    restored = unpack_int4(pack_int4(codes), codes.shape[-1])
    assert torch.equal(restored, codes)
    assert torch.equal(dequantize_rows(restored, scales), dequantize_rows(codes, scales))


def test_pack_int4_rejects_codes_outside_four_bits():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(torch.tensor([8], dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_int4(torch.tensor([16], dtype=torch.uint8))
    with pytest.raises(ValueError, match="int8 or uint8"):
        pack_int4(torch.tensor([1]))


def test_unpack_int4_checks_the_byte_count():
    with pytest.raises(ValueError, match="needs 3 bytes"):
        unpack_int4(torch.zeros(2, dtype=torch.uint8), 5)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_rows_dequantize_is_dequantize_rows(bits):
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(bits))
    rows = QuantizedRows.from_float(x, bits)
    codes, scales = quantize_rows(x, bits)
    assert rows.bits == bits and (rows.num_rows, rows.num_features) == (9, 6)
    assert torch.equal(rows.codes, codes) and torch.equal(rows.scales, scales)
    assert torch.equal(rows.dequantize(), dequantize_rows(codes, scales))
    picked = rows.rows(torch.tensor([4, 4, 0]))
    assert torch.equal(picked.dequantize(), rows.dequantize()[[4, 4, 0]])
    assert torch.equal(rows.rows(slice(0, 3)).scales, scales[:3])


def test_quantized_rows_check_names_what_is_wrong():
    rows = QuantizedRows.from_float(torch.randn(4, 3))
    checked = rows.check()
    assert checked.codes is rows.codes and checked.bits == 8
    assert torch.equal(checked.scales, rows.scales)
    scales = rows.scales.clone().requires_grad_()
    assert not QuantizedRows(rows.codes, scales).check().scales.requires_grad
    with pytest.raises(ValueError, match=r"x.codes must be an int8 \[N, F\] tensor"):
        QuantizedRows(rows.codes.float(), rows.scales).check("x")
    with pytest.raises(ValueError, match=r"rows.scales must be float32 \[N\] = \[4\]"):
        QuantizedRows(rows.codes, rows.scales[:3]).check()
    with pytest.raises(ValueError, match="rows.bits=9 is not supported"):
        QuantizedRows(rows.codes, rows.scales, 9).check()
    with pytest.raises(ValueError, match=r"needs x as \[N, F\] rows"):
        QuantizedRows.from_float(torch.randn(4))
