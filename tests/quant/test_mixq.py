"""MixQ: config validation, the mixture against its formula, gradients of the mixing logits,
the expected-bits penalty, top-1 selection and the reported bits."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.config import ConfigError, ModelConfig, PromptConfig, QuantSettings, to_dict
from lorap_dist.nn import build_model
from lorap_dist.quant import (
    average_bits,
    calculate_qparams,
    fake_quantize,
    quant_range,
    quantize_,
    quantizers_of,
)
from lorap_dist.quant.observers import MinMaxObserver
from lorap_dist.quant.schemes.mixq import MixQConfig, MixQQuantizer, freeze_mixq, mixq_bits


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"candidate_bits": ()}, "MixQConfig.candidate_bits=()"),
        ({"candidate_bits": (1, 4)}, "MixQConfig.candidate_bits entry 1"),
        ({"candidate_bits": (4, 4)}, "MixQConfig.candidate_bits=[4, 4]"),
        ({"candidate_bits": 4}, "MixQConfig.candidate_bits=4"),
        ({"penalty": -0.1}, "MixQConfig.penalty=-0.1"),
        ({"observer": "percentile"}, "MixQConfig.observer='percentile'"),
        ({"momentum": 0.0}, "MixQConfig.momentum=0.0"),
        ({"symmetric": 1}, "MixQConfig.symmetric=1"),
    ],
)
def test_invalid_fields_are_named(options, named):
    with pytest.raises(
        ConfigError,
        match=named.replace(".", r"\.")
        .replace("(", r"\(")
        .replace(")", r"\)")
        .replace("[", r"\[")
        .replace("]", r"\]"),
    ):
        MixQConfig(**options)


def test_config_round_trips_through_a_dict():
    config = MixQConfig(candidate_bits=(2, 8), penalty=0.1, observer="ema")
    built = QuantSettings(scheme="mixq", options=to_dict(config)).build()
    assert built == config and built.candidate_bits == (2, 8)


def _quantizer(bits=(2, 4, 8), penalty=0.1) -> MixQQuantizer:
    return MixQQuantizer(
        bits, symmetric=False, per_row=False, observer=MinMaxObserver(), penalty=penalty
    )


def _fq(x: torch.Tensor, bits: int) -> torch.Tensor:
    scale, zero_point = calculate_qparams(x.min(), x.max(), bits, symmetric=False)
    return fake_quantize(x, scale, zero_point, *quant_range(bits, False))


def test_mixture_value_and_the_gradient_of_the_mixing_logits():
    torch.manual_seed(0)
    quantizer = _quantizer().train()
    with torch.no_grad():
        quantizer.logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
    x = torch.randn(20, 6)
    upstream = torch.randn(20, 6)
    out = quantizer(x)
    weights = torch.softmax(quantizer.logits.detach(), 0)
    candidates = [_fq(x, b) for b in (2, 4, 8)]
    torch.testing.assert_close(out, sum(w * c for w, c in zip(weights, candidates, strict=True)))
    (out * upstream).sum().backward()
    inner = torch.stack([(upstream * c).sum() for c in candidates])
    expected = weights * (inner - (weights * inner).sum())  # softmax Jacobian
    torch.testing.assert_close(quantizer.logits.grad, expected)


def test_penalty_alone_lowers_the_expected_bits():
    quantizer = _quantizer(penalty=0.5)
    optimizer = torch.optim.SGD([quantizer.logits], lr=0.5)
    start = float(quantizer.expected_bits())
    assert start == pytest.approx(14 / 3)
    for _ in range(10):
        optimizer.zero_grad()
        quantizer.regularization().backward()
        optimizer.step()
    assert float(quantizer.expected_bits()) < start - 1
    assert quantizer.chosen_bits() == 2


def test_freeze_selects_the_argmax_and_quantizes_with_it_alone():
    quantizer = _quantizer().train()
    with torch.no_grad():
        quantizer.logits.copy_(torch.tensor([0.1, 2.0, -1.0]))
    x = torch.randn(30, 4)
    quantizer(x)
    assert quantizer.freeze() == 4
    torch.testing.assert_close(quantizer.eval()(x), _fq(x, 4))
    assert quantizer.regularization() is None and quantizer.average_bits() == 4.0


def test_model_level_selection_and_reported_bits():
    torch.manual_seed(0)
    model = build_model(5, 3, ModelConfig(arch="sage", hidden=6), PromptConfig(kind="lorap"))
    quantize_(model, MixQConfig())
    points = dict(quantizers_of(model))
    choice = {}
    for i, (name, quantizer) in enumerate(points.items()):
        with torch.no_grad():
            quantizer.logits.zero_()
            quantizer.logits[i % 3] = 1.0
        choice[name] = (2, 4, 8)[i % 3]
    assert mixq_bits(model) == choice
    assert freeze_mixq(model) == choice
    assert average_bits(model) == pytest.approx(sum(choice.values()) / len(choice))
    assert all(int(q.selected) >= 0 for q in points.values())
    with pytest.raises(ValueError, match="no MixQ quantizer"):
        freeze_mixq(build_model(5, 3, ModelConfig(), PromptConfig()))
