"""QATConfig validation and dict round trip; quantize_ with it on a tiny module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorap_dist.config import ConfigError, QuantSettings, from_dict, to_dict
from lorap_dist.quant import (
    CurrentRangeObserver,
    EMAObserver,
    FakeQuantizer,
    IdentityQuantizer,
    MinMaxObserver,
    PercentileObserver,
    QATConfig,
    average_bits,
    quantize_,
    quantizers_of,
)
from lorap_dist.quant.base import identity_quantizers


class TinyLinear(nn.Module):
    """``Q_node(x) @ Q_weight(W)^T``: one point of each role."""

    QUANT_POINTS = {"input": "node", "weight": "weight"}

    def __init__(self, in_channels: int = 5, out_channels: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels))
        self.quantizers = identity_quantizers(self.QUANT_POINTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizers["input"](x) @ self.quantizers["weight"](self.weight).T


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(TinyLinear(), nn.ReLU(), TinyLinear(3, 2))


@pytest.mark.parametrize(
    ("options", "named", "allowed"),
    [
        ({"bits": 1}, "QATConfig.bits=1", "from 2 to 8"),
        ({"bits": 9}, "QATConfig.bits=9", "from 2 to 8"),
        ({"bits": "8"}, "QATConfig.bits='8'", "from 2 to 8"),
        ({"weight_bits": 16}, "QATConfig.weight_bits=16", "from 2 to 8"),
        ({"observer": "max"}, "QATConfig.observer='max'", "choose one of"),
        ({"momentum": 0.0}, "QATConfig.momentum=0.0", "(0, 1]"),
        ({"momentum": 1.5}, "QATConfig.momentum=1.5", "(0, 1]"),
        ({"percentile": 0.0}, "QATConfig.percentile=0.0", "(0, 0.5)"),
        ({"percentile": 0.5}, "QATConfig.percentile=0.5", "(0, 0.5)"),
        ({"symmetric": "yes"}, "QATConfig.symmetric='yes'", "true or false"),
        ({"weight_per_row": 1}, "QATConfig.weight_per_row=1", "true or false"),
    ],
)
def test_invalid_fields_are_named_with_the_value_and_what_is_allowed(options, named, allowed):
    with pytest.raises(ConfigError) as error:
        QATConfig(**options)
    assert named in str(error.value)
    assert allowed in str(error.value)


def test_unknown_observer_lists_the_choices():
    with pytest.raises(ConfigError, match=r"\['minmax', 'ema', 'percentile'\]"):
        QATConfig(observer="mse")


@pytest.mark.parametrize(
    "config",
    [
        QATConfig(),
        QATConfig(bits=4, weight_bits=2, observer="percentile", percentile=0.01),
        QATConfig(symmetric=True, per_row=True, observer="ema", momentum=1.0),
        QATConfig(weight_symmetric=False, weight_per_row=False),
    ],
)
def test_dict_round_trip(config):
    data = to_dict(config)
    assert data["bits"] == config.bits
    assert from_dict(QATConfig, data) == config


def test_experiment_settings_build_a_qat_config():
    settings = QuantSettings(scheme="qat", options={"bits": 4, "observer": "ema"})
    assert settings.build() == QATConfig(bits=4, observer="ema")
    with pytest.raises(ConfigError, match="QATConfig.bits=12"):
        QuantSettings(scheme="qat", options={"bits": 12})


def test_weight_bits_default_to_bits():
    assert QATConfig(bits=3).resolved_weight_bits == 3
    assert QATConfig(bits=3, weight_bits=8).resolved_weight_bits == 8


def test_quantize_replaces_both_points_with_fake_quantizers():
    model = _tiny_model()
    assert all(isinstance(q, IdentityQuantizer) for _, q in quantizers_of(model))
    quantize_(model, QATConfig(bits=4, weight_bits=6))
    quantizers = dict(quantizers_of(model))
    assert set(quantizers) == {"0.input", "0.weight", "2.input", "2.weight"}
    for name, quantizer in quantizers.items():
        assert isinstance(quantizer, FakeQuantizer)
        if name.endswith("input"):
            assert (quantizer.bits, quantizer.symmetric, quantizer.per_row) == (4, False, False)
            assert type(quantizer.observer) is EMAObserver  # the default: moving average
            assert quantizer.observer.momentum == 0.01
        else:
            assert (quantizer.bits, quantizer.symmetric, quantizer.per_row) == (6, True, True)
            # the current weights' range, in evaluation too
            assert type(quantizer.observer) is CurrentRangeObserver
            assert quantizer.observer.momentum == 1.0
    assert average_bits(model) == 5.0


@pytest.mark.parametrize(
    ("observer", "kind"),
    [("minmax", MinMaxObserver), ("ema", EMAObserver), ("percentile", PercentileObserver)],
)
def test_observer_field_picks_the_node_observer(observer, kind):
    model = quantize_(_tiny_model(), QATConfig(observer=observer, momentum=0.2, percentile=0.05))
    node_observer = model[0].quantizers["input"].observer
    assert type(node_observer) is kind
    if kind is not MinMaxObserver:
        assert node_observer.momentum == 0.2
    if kind is PercentileObserver:
        assert node_observer.percentile == 0.05


def test_quantized_model_trains_and_its_ranges_live_in_the_state_dict():
    model = quantize_(_tiny_model(), QATConfig(bits=4))
    x = torch.randn(16, 5)
    out = model(x)
    out.square().mean().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    assert not torch.allclose(out, _tiny_model()(x))  # quantization changed the output

    state = model.state_dict()
    for key in (
        "0.quantizers.input.observer.min_val",
        "0.quantizers.input.observer.max_val",
        "0.quantizers.weight.observer.min_val",
        "2.quantizers.weight.observer.max_val",
    ):
        assert key in state
    assert state["0.quantizers.weight.observer.min_val"].shape == (3,)  # per output row

    restored = quantize_(_tiny_model(seed=1), QATConfig(bits=4))
    restored.load_state_dict(state)
    x_eval = torch.randn(8, 5) * 4
    assert torch.equal(restored.eval()(x_eval), model.eval()(x_eval))


def test_unknown_role_is_a_config_error():
    class OddModule(TinyLinear):
        QUANT_POINTS = {"input": "edge"}

    with pytest.raises(ConfigError, match="role 'edge'"):
        quantize_(OddModule(), QATConfig())
