"""Mostly-zero inputs are quantized through their non-zeros only, with the dense result."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from lorap_dist.graph.block import NodeInfo
from lorap_dist.quant.fake_quant import (
    SPARSE_MIN_NUMEL,
    NonzeroIndex,
    calculate_qparams,
    on_nonzeros,
)
from lorap_dist.quant.observers import EMAObserver, PercentileObserver
from lorap_dist.quant.quantizer import FakeQuantizer
from lorap_dist.quant.schemes.mixq import MixQQuantizer

ROWS, COLS = 300, 400  # 120,000 entries: above SPARSE_MIN_NUMEL


def bag_of_words(density: float = 0.02, seed: int = 0, signed: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(ROWS, COLS, generator=g) * 3
    if signed:
        values = values - 1.0
    return values * (torch.rand(ROWS, COLS, generator=g) < density)


def assert_same_step(sparse, dense, x, nodes, upstream) -> None:
    """Both quantizers give equal outputs and equal input gradients for ``x``."""
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_sparse, out_dense = sparse(a, nodes), dense(b, nodes)
    assert torch.equal(out_sparse, out_dense)
    out_sparse.backward(upstream)
    out_dense.backward(upstream)
    assert torch.equal(a.grad, b.grad)


def test_the_inputs_here_take_the_non_zero_path():
    assert ROWS * COLS >= SPARSE_MIN_NUMEL
    assert NonzeroIndex()(bag_of_words()) is not None
    assert NonzeroIndex()(bag_of_words(density=0.5)) is None  # dense enough: dense path
    assert NonzeroIndex()(bag_of_words()[:10]) is None  # too small


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("protect", [False, True])
def test_fake_quantizer_on_non_zeros_equals_torch_fake_quantize_bit_for_bit(symmetric, protect):
    x = bag_of_words(signed=symmetric).requires_grad_()
    mask = torch.rand(ROWS, generator=torch.Generator().manual_seed(1)) < 0.2
    nodes = NodeInfo(protect=mask) if protect else None
    quantizer = FakeQuantizer(bits=4, symmetric=symmetric, observer=EMAObserver(0.1))
    out = quantizer(x, nodes)
    upstream = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(2))
    out.backward(upstream)

    observed = x.detach()[~mask] if protect else x.detach()
    lo, hi = torch.aminmax(observed)
    scale, zero_point = calculate_qparams(lo, hi, 4, symmetric)
    qmin, qmax = (-8, 7) if symmetric else (0, 15)
    reference_x = x.detach().clone().requires_grad_()
    reference = torch.fake_quantize_per_tensor_affine(
        reference_x, scale.reshape(1), zero_point.reshape(1), qmin, qmax
    )
    if protect:
        reference = torch.where(mask[:, None], reference_x, reference)
    reference.backward(upstream)
    assert torch.equal(out, reference)
    assert torch.equal(x.grad, reference_x.grad)
    assert (out != x).any()  # something was rounded


def test_percentile_quantizer_on_non_zeros_equals_the_dense_computation():
    x = bag_of_words(density=0.01)
    quantizer = FakeQuantizer(bits=4, observer=PercentileObserver(percentile=0.01, momentum=1))
    out = quantizer(x)
    lo, hi = quantizer.observer.min_val, quantizer.observer.max_val
    scale, zero_point = calculate_qparams(lo, hi, 4, False)
    expected = torch.fake_quantize_per_tensor_affine(
        x, scale.reshape(1), zero_point.reshape(1), 0, 15
    )
    assert torch.equal(out, expected)


def test_mixq_mixture_on_non_zeros_matches_the_dense_mixture():
    x = bag_of_words().requires_grad_()
    quantizer = MixQQuantizer((2, 4, 8), symmetric=False, per_row=False,
                              observer=EMAObserver(1.0), penalty=0.0)  # fmt: skip
    with torch.no_grad():
        quantizer.logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
    upstream = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(3))
    quantizer(x).backward(upstream)

    reference_x = x.detach().clone().requires_grad_()
    logits = quantizer.logits.detach().clone().requires_grad_()
    lo, hi = torch.aminmax(reference_x.detach())
    weights = torch.softmax(logits, 0)
    reference = 0
    for w, bits in zip(weights, (2, 4, 8), strict=True):
        scale, zero_point = calculate_qparams(lo, hi, bits, False)
        reference = reference + w * torch.fake_quantize_per_tensor_affine(
            reference_x, scale.reshape(1), zero_point.reshape(1), 0, (1 << bits) - 1
        )
    reference.backward(upstream)
    torch.testing.assert_close(quantizer(x.detach()), reference.detach())
    torch.testing.assert_close(x.grad, reference_x.grad)
    torch.testing.assert_close(quantizer.logits.grad, logits.grad)


def test_on_nonzeros_passes_the_gradient_of_zeros_unchanged():
    x = torch.tensor([[0.0, 2.0], [3.0, 0.0]], requires_grad=True)
    index = x.detach().reshape(-1).nonzero().squeeze(1)
    out = on_nonzeros(x, index, lambda v: 10 * v)
    assert torch.equal(out, torch.tensor([[0.0, 20.0], [30.0, 0.0]]))
    out.backward(torch.ones(2, 2))
    assert torch.equal(x.grad, torch.tensor([[1.0, 10.0], [10.0, 1.0]]))


def test_nonzero_index_is_remembered_for_the_same_unchanged_tensor_only():
    finder = NonzeroIndex()
    x = bag_of_words()
    first = finder(x)
    assert finder(x) is first  # the same tensor: not searched again
    x[0, 0] = 5.0  # changed in place: searched again, and the new entry found
    again = finder(x)
    assert again is not first and 0 in again.tolist()
    other = bag_of_words(seed=4)
    assert torch.equal(finder(other), other.reshape(-1).nonzero().squeeze(1))


def test_nonzero_index_is_neither_saved_nor_copied():
    quantizer = FakeQuantizer(bits=4)
    x = bag_of_words()
    quantizer(x)
    assert quantizer.nonzeros._seen is not None
    for clone in (copy.deepcopy(quantizer), pickle.loads(pickle.dumps(quantizer))):
        assert clone.nonzeros._seen is None
        assert torch.equal(clone(x), quantizer(x))


@pytest.mark.parametrize(
    "observer",
    [
        lambda: EMAObserver(0.1),
        lambda: PercentileObserver(percentile=0.01),  # bag-of-words at 2%: quantile is not 0
        lambda: PercentileObserver(percentile=0.001),
        lambda: PercentileObserver(percentile=0.3),  # below the non-zeros: the sparse repair
    ],
)
@pytest.mark.parametrize("signed", [False, True])
def test_a_range_from_the_non_zeros_equals_the_range_of_the_whole_tensor(observer, signed):
    x = bag_of_words(signed=signed).reshape(-1)
    values = x[x != 0]
    shuffled = values[torch.randperm(values.numel(), generator=torch.Generator().manual_seed(5))]
    expected = observer().batch_range(x)
    got = observer().nonzeros_range(shuffled, x.numel())
    assert torch.equal(torch.stack(got), torch.stack(expected))
    assert got[1] > 0


@pytest.mark.parametrize("protect", [False, True])
def test_degree_quant_points_on_non_zeros_equal_their_dense_path(protect):
    """The oracle: the same quantizer with the non-zero path switched off."""
    from lorap_dist.quant.schemes.degree_quant import DegreeQuantQuantizer

    def make():
        return DegreeQuantQuantizer(4, False, False, PercentileObserver(0.01, momentum=0.1))

    sparse, dense = make(), make()
    dense.nonzeros = lambda x: None
    mask = torch.rand(ROWS, generator=torch.Generator().manual_seed(6)) < 0.15
    nodes = NodeInfo(protect=mask) if protect else None
    upstream = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(7))
    for step in range(3):  # the moving average folds three batches
        x = bag_of_words(seed=step)
        assert_same_step(sparse, dense, x, nodes, upstream)
    assert torch.equal(sparse.observer.max_val, dense.observer.max_val)
    sparse.eval()
    dense.eval()
    x = bag_of_words(seed=9)
    assert torch.equal(sparse(x), dense(x))  # evaluation: the stored range, not observed


def test_a2q_node_points_on_non_zeros_match_their_dense_path():
    """Values bit for bit; the steps', bits' and pool's local gradients to rounding."""
    from lorap_dist.quant.schemes.a2q import A2QNodeQuantizer

    sparse, dense = A2QNodeQuantizer(ROWS), A2QNodeQuantizer(ROWS)
    dense.nonzeros = lambda x: None
    nodes = NodeInfo(ids=torch.arange(ROWS))
    upstream = torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(8))
    moved = set()
    for step in range(3):
        x = bag_of_words(seed=step) * (1 + step)  # growing values: some clip
        assert_same_step(sparse, dense, x, nodes, upstream)
        for (name, p), q in zip(sparse.named_parameters(), dense.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, msg=name)
            if p.grad.abs().sum() > 0:
                moved.add(name)
            with torch.no_grad():  # the same update on both
                p -= 0.01 * p.grad
                q -= 0.01 * p.grad
            p.grad = q.grad = None
    assert moved == {"log_step", "bits", "pool_log_step", "pool_bits"}
    sparse.eval()
    dense.eval()
    x = bag_of_words(seed=9)
    assert torch.equal(sparse(x, nodes), dense(x, nodes))
