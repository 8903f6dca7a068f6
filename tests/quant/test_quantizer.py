"""FakeQuantizer: observe-then-quantize in training, frozen range in eval, protected rows."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.graph.block import NodeInfo
from lorap_dist.quant import (
    CurrentRangeObserver,
    EMAObserver,
    FakeQuantizer,
    PercentileObserver,
    calculate_qparams,
    quant_range,
)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_training_forward_is_torch_fake_quant_with_the_observed_range(bits, symmetric):
    quantizer = FakeQuantizer(bits=bits, symmetric=symmetric)
    x = (_randn(20, 6, seed=bits) + 0.7).requires_grad_()
    y = quantizer(x)
    scale, zero_point = calculate_qparams(x.detach().min(), x.detach().max(), bits, symmetric)
    qmin, qmax = quant_range(bits, symmetric)
    ref = x.detach().clone().requires_grad_()
    y_ref = torch.fake_quantize_per_tensor_affine(ref, float(scale), int(zero_point), qmin, qmax)
    assert torch.equal(y, y_ref)
    grad = _randn(20, 6, seed=99)
    y.backward(grad)
    y_ref.backward(grad)
    assert torch.equal(x.grad, ref.grad)
    assert quantizer.qparams() == (float(scale), int(zero_point), qmin, qmax)


def test_gradient_is_straight_through_inside_the_range_and_zero_outside():
    quantizer = FakeQuantizer(bits=4, observer=EMAObserver(momentum=0.5))
    quantizer(torch.tensor([0.0, 1.0]))  # range [0, 1]
    x = torch.tensor([0.2, 0.9, 5.0, -3.0], requires_grad=True)
    y = quantizer(x)  # range becomes [-1.5, 3.0]: 5.0 is clipped, -3.0 is clipped
    y.backward(torch.ones(4))
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert float(quantizer.observer.min_val) == -1.5
    assert float(quantizer.observer.max_val) == 3.0
    assert y[2] < 5.0 and y[3] > -3.0


def test_eval_uses_the_frozen_range():
    quantizer = FakeQuantizer(bits=8)
    quantizer(torch.tensor([-1.0, 1.0]))
    quantizer.eval()
    y = quantizer(torch.tensor([-4.0, 0.5, 4.0]))
    assert (float(quantizer.observer.min_val), float(quantizer.observer.max_val)) == (-1.0, 1.0)
    scale, zero_point, _, _ = quantizer.qparams()
    assert y[0] == (0 - zero_point) * torch.tensor(scale)  # clipped to the trained range
    assert y[2] == (255 - zero_point) * torch.tensor(scale)
    assert abs(float(y[1]) - 0.5) <= scale / 2


def test_eval_before_training_uses_the_inputs_range_without_storing_it():
    quantizer = FakeQuantizer(bits=8).eval()
    x = _randn(10, 3, seed=1) * 5
    y = quantizer(x)
    assert not quantizer.observer.initialized
    assert quantizer.qparams() is None
    assert (y - x).abs().max() <= (x.max() - x.min()) / 255 / 2 * 1.001


def test_protected_rows_stay_full_precision_and_are_not_observed():
    x = _randn(6, 4, seed=2)
    x[1] = 100.0  # a protected outlier: must not widen the range
    protect = torch.tensor([False, True, False, False, True, False])
    quantizer = FakeQuantizer(bits=4)
    x = x.requires_grad_()
    y = quantizer(x, NodeInfo(protect=protect))
    unprotected = x.detach()[~protect]
    assert float(quantizer.observer.max_val) == float(unprotected.max())
    assert torch.equal(y[protect], x.detach()[protect])
    expected = FakeQuantizer(bits=4)(unprotected)
    assert torch.equal(y[~protect], expected)
    assert not torch.equal(y[~protect], unprotected)  # the others are quantized
    y.backward(torch.full_like(y, 2.0))
    assert (x.grad[protect] == 2.0).all()


def test_all_rows_protected_returns_the_input_and_observes_nothing():
    x = _randn(3, 2)
    quantizer = FakeQuantizer()
    y = quantizer(x, NodeInfo(protect=torch.ones(3, dtype=torch.bool)))
    assert y is x
    assert not quantizer.observer.initialized


def test_protect_mask_must_have_one_flag_per_row():
    with pytest.raises(ValueError, match="one flag per row"):
        FakeQuantizer()(_randn(3, 2), NodeInfo(protect=torch.ones(4, dtype=torch.bool)))
    with pytest.raises(ValueError, match="per-row FakeQuantizer cannot protect"):
        FakeQuantizer(per_row=True)(_randn(3, 2), NodeInfo(protect=torch.zeros(3, dtype=bool)))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_per_row_weight_quantizer_matches_torch_per_channel(bits):
    weight = _randn(7, 13, seed=bits)
    quantizer = FakeQuantizer(bits=bits, symmetric=True, per_row=True)
    y = quantizer(weight)
    lo, hi = torch.aminmax(weight, dim=1)
    scale, zero_point = calculate_qparams(lo, hi, bits, symmetric=True)
    qmin, qmax = quant_range(bits, True)
    expected = torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, qmin, qmax)
    assert torch.equal(y, expected)
    assert quantizer.qparams() is None  # not a per-tensor quantizer


@pytest.mark.parametrize("scheme", ["qat", "degree_quant", "mixq"])
def test_evaluation_rounds_the_weights_it_evaluates_on_their_own_grid(scheme):
    """After an optimizer step the stored weight range is that of the weights before it;
    evaluation quantizes the current weights on their own per-channel grid, as
    ``torch.fake_quantize_per_channel_affine`` does with their exact range (an integer export
    of the same weights), and the next training step still starts from the stored range."""
    from lorap_dist.config import ModelConfig, PromptConfig
    from lorap_dist.nn import build_model
    from lorap_dist.quant import DegreeQuantConfig, MixQConfig, QATConfig, quantize_

    config = {"qat": QATConfig, "degree_quant": DegreeQuantConfig, "mixq": MixQConfig}[scheme]
    model = build_model(13, 3, ModelConfig(arch="gcn", hidden=7), PromptConfig())
    quantize_(model, config(bits=4), num_nodes=5)
    lin = model.convs[0].lin
    weight, quantizer = lin.weight, lin.quantizers["weight"]
    if scheme == "mixq":
        quantizer.freeze()  # one grid: the chosen width's
    quantizer(weight)  # a training forward stores the range of these weights
    stored = quantizer.observer.max_val.clone()
    with torch.no_grad():
        weight.mul_(1.25)  # the step: every row's extremes grow
    quantizer.eval()
    bits = quantizer.chosen_bits() if scheme == "mixq" else 4
    lo, hi = torch.aminmax(weight.detach(), dim=1)
    scale, zero_point = calculate_qparams(lo, hi, int(bits), symmetric=True)
    qmin, qmax = quant_range(int(bits), True)
    expected = torch.fake_quantize_per_channel_affine(
        weight.detach(), scale, zero_point, 0, qmin, qmax
    )
    assert torch.equal(quantizer(weight).detach(), expected)
    assert torch.equal(quantizer.observer.max_val, stored)  # evaluation stored nothing


def test_observer_per_row_must_match():
    with pytest.raises(ValueError, match="per_row"):
        FakeQuantizer(per_row=True, observer=PercentileObserver())


def test_bits_are_validated_and_reported():
    with pytest.raises(ValueError, match="bits=9"):
        FakeQuantizer(bits=9)
    assert FakeQuantizer(bits=3).average_bits() == 3.0


def test_state_dict_carries_the_range_into_a_fresh_quantizer():
    trained = FakeQuantizer(bits=4, observer=EMAObserver(momentum=0.1))
    for seed in range(3):
        trained(_randn(5, 5, seed=seed))
    state = trained.state_dict()
    assert set(state) == {"observer.min_val", "observer.max_val"}
    fresh = FakeQuantizer(bits=4, observer=EMAObserver(momentum=0.1))
    fresh.load_state_dict(state)
    x = _randn(5, 5, seed=7) * 3
    assert torch.equal(fresh.eval()(x), trained.eval()(x))


def test_repr_shows_bits_scheme_and_observer():
    text = repr(FakeQuantizer(bits=4, symmetric=True, observer=EMAObserver(momentum=0.05)))
    assert "bits=4, symmetric=True, per_row=False" in text
    assert "EMAObserver(momentum=0.05" in text


def test_fused_grid_available_only_for_a_fixed_per_tensor_grid() -> None:
    quantizer = FakeQuantizer(bits=4)
    assert quantizer.fused_grid_available() and quantizer.observing
    assert quantizer.fused_grid_available(NodeInfo(ids=torch.arange(3)))
    assert not quantizer.fused_grid_available(NodeInfo(protect=torch.zeros(3, dtype=torch.bool)))
    assert not FakeQuantizer(per_row=True).fused_grid_available()
    assert not FakeQuantizer(observer=PercentileObserver()).fused_grid_available()
    quantizer.eval()  # nothing stored yet: forward would use the input's own range
    assert not quantizer.fused_grid_available() and not quantizer.observing
    quantizer.train()(_randn(5, 3))
    assert quantizer.eval().fused_grid_available()

    class Subclass(FakeQuantizer):
        def forward(self, x, nodes=None):
            return x

    assert not Subclass().fused_grid_available()
    # a weight's quantizer evaluates on the weights' own range: no stored grid describes it
    weights = FakeQuantizer(bits=4, symmetric=True, observer=CurrentRangeObserver())
    weights(_randn(5, 3))
    assert weights.fused_grid_available() and weights.grid() is not None
    weights.eval()
    assert not weights.fused_grid_available()
    assert weights.grid() is None and weights.qparams() is None


def test_observe_range_then_qparams_equals_forward() -> None:
    x = _randn(20, 6, seed=4) * 3
    by_forward, by_range = (FakeQuantizer(bits=8, observer=EMAObserver(0.5)) for _ in range(2))
    out = by_forward(x)
    by_range.observe_range(*torch.aminmax(x))
    assert by_range.qparams() == by_forward.qparams()
    assert torch.equal(torch.fake_quantize_per_tensor_affine(x, *by_range.qparams()), out)
