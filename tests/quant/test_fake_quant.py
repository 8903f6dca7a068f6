"""fake_quantize against PyTorch's own fake quantization, bit for bit, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

from lorap_dist.quant import calculate_qparams, fake_quantize, quant_range

BITS = list(range(2, 9))


def _hard_input(shape, scale, zero_point, qmin, qmax, axis, seed):
    """Values spread over the grid and a little beyond, a third of them exactly on ``.5``
    boundaries, 5% far out of range. ``scale``/``zero_point`` are scalars, or per channel
    along ``axis``."""
    gen = torch.Generator().manual_seed(seed)
    if axis is not None:
        view = [1] * len(shape)
        view[axis] = -1
        scale, zero_point = scale.reshape(view), zero_point.reshape(view)
    centre = (qmin + qmax) / 2 - zero_point
    spread = torch.randn(shape, generator=gen) * (qmax - qmin) * 0.4
    halves = torch.randint(qmin - 3, qmax + 3, shape, generator=gen) - zero_point + 0.5
    pick = torch.rand(shape, generator=gen)
    x = torch.where(pick < 0.33, halves, centre + spread) * scale
    return torch.where(pick > 0.95, x * 100, x)


def _zero_point(symmetric: bool, qmin: int, qmax: int, size: tuple[int, ...], gen):
    if symmetric:
        return torch.zeros(size, dtype=torch.int32)
    return torch.randint(qmin, qmax + 1, size, generator=gen, dtype=torch.int32)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("shape", [(37,), (16, 33), (3, 5, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_per_tensor_matches_torch(bits, symmetric, shape, dtype):
    qmin, qmax = quant_range(bits, symmetric)
    gen = torch.Generator().manual_seed(bits * 100 + len(shape))
    scale = torch.rand((), generator=gen) * 0.2 + 0.003
    zero_point = _zero_point(symmetric, qmin, qmax, (), gen)
    x = _hard_input(shape, scale, zero_point, qmin, qmax, None, seed=bits).to(dtype)
    zero_point = int(zero_point)
    ours = x.clone().requires_grad_()
    ref = x.clone().requires_grad_()

    y = fake_quantize(ours, scale, zero_point, qmin, qmax)
    y_ref = torch.fake_quantize_per_tensor_affine(ref, float(scale), zero_point, qmin, qmax)
    grad = torch.randn(shape, generator=gen).to(dtype)
    y.backward(grad)
    y_ref.backward(grad)

    assert y.dtype == dtype
    assert torch.equal(y, y_ref)
    assert torch.equal(ours.grad, ref.grad)
    assert (ours.grad == 0).any() and (ours.grad != 0).any()  # both sides of the mask occur


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize(("shape", "axis"), [((16, 33), 0), ((16, 33), 1), ((4, 6, 5), 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_per_channel_matches_torch(bits, symmetric, shape, axis, dtype):
    qmin, qmax = quant_range(bits, symmetric)
    gen = torch.Generator().manual_seed(bits * 10 + axis)
    channels = shape[axis]
    scale = torch.rand(channels, generator=gen) * 0.2 + 0.003
    zero_point = _zero_point(symmetric, qmin, qmax, (channels,), gen)
    x = _hard_input(shape, scale, zero_point, qmin, qmax, axis, seed=bits + 7).to(dtype)
    ours = x.clone().requires_grad_()
    ref = x.clone().requires_grad_()

    y = fake_quantize(ours, scale, zero_point, qmin, qmax, axis=axis)
    y_ref = torch.fake_quantize_per_channel_affine(ref, scale, zero_point, axis, qmin, qmax)
    grad = torch.randn(shape, generator=gen).to(dtype)
    y.backward(grad)
    y_ref.backward(grad)

    assert y.dtype == dtype
    assert torch.equal(y, y_ref)
    assert torch.equal(ours.grad, ref.grad)


@pytest.mark.parametrize("symmetric", [False, True])
def test_per_tensor_float64_differs_from_torch_only_by_its_float32_product(symmetric):
    qmin, qmax = quant_range(4, symmetric)
    scale, zero_point = torch.tensor(0.0371), torch.tensor(0 if symmetric else 5)
    x = _hard_input((4000,), scale, zero_point, qmin, qmax, None, seed=3).double()
    ours = x.clone().requires_grad_()
    ref = x.clone().requires_grad_()
    y = fake_quantize(ours, scale, zero_point, qmin, qmax)
    y_ref = torch.fake_quantize_per_tensor_affine(ref, float(scale), int(zero_point), qmin, qmax)
    y.sum().backward()
    y_ref.sum().backward()
    assert y.dtype == torch.float64
    assert torch.equal(y.float(), y_ref.float())  # same grid value, rounded alike
    assert torch.equal(ours.grad, ref.grad)


def test_rounds_half_to_even_and_masks_gradient_outside_the_grid():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 14.5, 15.4, 15.6, -1.0], requires_grad=True)
    y = fake_quantize(x, 1.0, 0, 0, 15)
    y.sum().backward()
    assert y.tolist() == [0.0, 2.0, 2.0, 0.0, 14.0, 15.0, 15.0, 0.0]
    # 15.6 rounds to 16 and -1.0 to -1: both outside [0, 15], so no gradient.
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_scale_and_zero_point_get_no_gradient():
    scale = torch.tensor(0.1, requires_grad=True)
    x = torch.randn(10, requires_grad=True)
    fake_quantize(x, scale, 3, 0, 15).sum().backward()
    assert scale.grad is None
    assert x.grad is not None


@pytest.mark.parametrize("bits", BITS)
def test_quant_range(bits):
    assert quant_range(bits, symmetric=True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert quant_range(bits, symmetric=False) == (0, 2**bits - 1)


@pytest.mark.parametrize("bits", [1, 9, 8.0])
def test_quant_range_rejects_unsupported_bits(bits):
    with pytest.raises(ValueError, match="bits="):
        quant_range(bits, symmetric=False)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize(("low", "high"), [(-1.3, 2.7), (0.4, 2.0), (-3.0, -0.2), (-0.8, 0.8)])
def test_qparams_match_torch_ao_observer(bits, symmetric, low, high):
    qmin, qmax = quant_range(bits, symmetric)
    observer = MinMaxObserver(
        dtype=torch.qint8 if symmetric else torch.quint8,
        qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine,
        quant_min=qmin,
        quant_max=qmax,
    )
    observer(torch.tensor([low, high]))
    scale_ref, zero_point_ref = observer.calculate_qparams()

    scale, zero_point = calculate_qparams(torch.tensor(low), torch.tensor(high), bits, symmetric)
    assert scale.dtype == torch.float32 and zero_point.dtype == torch.int32
    assert torch.equal(scale, scale_ref.reshape(()))
    assert int(zero_point) == int(zero_point_ref)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_per_channel_qparams_match_torch_ao_observer(bits, symmetric):
    qmin, qmax = quant_range(bits, symmetric)
    x = (
        torch.randn(6, 20, generator=torch.Generator().manual_seed(bits))
        * torch.arange(1, 7)[:, None]
    )
    x[2] = x[2].abs()  # a channel without negatives: its range still includes zero
    observer = PerChannelMinMaxObserver(
        ch_axis=0,
        dtype=torch.qint8 if symmetric else torch.quint8,
        qscheme=torch.per_channel_symmetric if symmetric else torch.per_channel_affine,
        quant_min=qmin,
        quant_max=qmax,
    )
    observer(x)
    scale_ref, zero_point_ref = observer.calculate_qparams()
    lo, hi = torch.aminmax(x, dim=1)
    scale, zero_point = calculate_qparams(lo, hi, bits, symmetric)
    assert torch.equal(scale, scale_ref)
    assert torch.equal(zero_point.long(), zero_point_ref.long())


@pytest.mark.parametrize("symmetric", [False, True])
def test_qparams_of_a_constant_zero_range_are_finite(symmetric):
    scale, zero_point = calculate_qparams(torch.tensor(0.0), torch.tensor(0.0), 8, symmetric)
    assert float(scale) == torch.finfo(torch.float32).eps
    x = torch.zeros(5)
    assert torch.equal(fake_quantize(x, scale, zero_point, *quant_range(8, symmetric)), x)


def test_per_channel_parameters_must_match_the_axis():
    with pytest.raises(ValueError, match="axis 0 need shape"):
        fake_quantize(torch.randn(4, 3), torch.ones(3), torch.zeros(3), 0, 15, axis=0)
    with pytest.raises(ValueError, match="per-tensor"):
        fake_quantize(torch.randn(4, 3), torch.ones(4), torch.zeros(4), 0, 15)
