"""quantize_'s typed config and its filter_fn, which keeps chosen layers at full precision."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from lorap_dist.config import ModelConfig, PromptConfig
from lorap_dist.nn import QLinear, build_model
from lorap_dist.quant import (
    FakeQuantizer,
    IdentityQuantizer,
    QATConfig,
    QuantConfig,
    quantize_,
    quantizers_of,
    register_scheme,
    registered_schemes,
)
from lorap_dist.quant.api import quantizable_layers, scheme_config_type
from lorap_dist.quant.schemes.degree_quant import DegreeQuantConfig
from lorap_dist.testing.graphs import random_graph

IN, OUT, N = 5, 3, 14
FP32_LAYERS = {"convs.0", "convs.2"}


def keep_first_and_last(layer: nn.Module, fqn: str) -> bool:
    return fqn not in FP32_LAYERS


@pytest.mark.parametrize("arch", ["gcn", "sage", "gin", "gat"])
@pytest.mark.parametrize("config", [QATConfig(bits=4), DegreeQuantConfig(bits=4)])
def test_filter_keeps_the_first_and_last_layers_fp32(arch: str, config: QuantConfig) -> None:
    torch.manual_seed(0)
    model_cfg = ModelConfig(arch=arch, hidden=8, layers=3, dropout=0.0, heads=2)
    model = build_model(IN, OUT, model_cfg, PromptConfig(kind="lorap"))
    reference = copy.deepcopy(model)
    quantize_(model, config, filter_fn=keep_first_and_last, num_nodes=N)

    for name, quantizer in quantizers_of(model):
        layer = ".".join(name.split(".")[:2])
        kind = IdentityQuantizer if layer in FP32_LAYERS else FakeQuantizer
        assert isinstance(quantizer, kind), name
    assert any(name.startswith("convs.1.lin") for name, _ in quantizers_of(model))

    edge_index, x = random_graph(N, 40, seed=1), torch.randn(N, IN)
    hidden = torch.randn(N, 8)
    first, last = model.convs[0], model.convs[2]
    assert torch.equal(first(x, edge_index), reference.convs[0](x, edge_index))
    assert torch.equal(last(hidden, edge_index), reference.convs[2](hidden, edge_index))
    assert not torch.allclose(
        model.convs[1](hidden, edge_index), reference.convs[1](hidden, edge_index), atol=1e-3
    )


def test_filter_is_asked_once_per_layer_with_its_name() -> None:
    """A layer's own linears are part of it: the filter sees ``convs.1``, never
    ``convs.1.lin``; a linear outside any layer is a layer of its own."""
    torch.manual_seed(0)
    gnn = build_model(IN, OUT, ModelConfig(arch="gcn", hidden=8, layers=2), PromptConfig())
    model = nn.ModuleDict({"gnn": gnn, "head": QLinear(OUT, 2)})
    asked = []

    def record(layer: nn.Module, fqn: str) -> bool:
        asked.append((fqn, layer))
        return fqn != "gnn.convs.1"

    quantize_(model, QATConfig(bits=4), filter_fn=record)
    assert asked == [
        ("gnn.convs.0", gnn.convs[0]),
        ("gnn.convs.1", gnn.convs[1]),
        ("head", model["head"]),
    ]
    assert [fqn for fqn, _ in quantizable_layers(model)] == [fqn for fqn, _ in asked]
    quantized = {name for name, q in quantizers_of(model) if isinstance(q, FakeQuantizer)}
    assert "gnn.convs.0.lin.weight" in quantized and "head.weight" in quantized
    assert not {name for name in quantized if name.startswith("gnn.convs.1.")}


def test_a_quantizable_root_is_one_layer() -> None:
    layer = QLinear(4, 2)
    assert quantizable_layers(layer) == [("", layer)]
    assert isinstance(quantize_(layer, QATConfig()).quantizers["weight"], FakeQuantizer)
    fp32 = quantize_(QLinear(4, 2), QATConfig(), filter_fn=lambda layer, fqn: False)
    assert isinstance(fp32.quantizers["weight"], IdentityQuantizer)


def test_config_must_be_a_registered_quant_config() -> None:
    model = QLinear(4, 2)
    with pytest.raises(
        TypeError, match=r"got a dict, which is not .* \(a2q: A2QConfig, degree_quant: "
    ):
        quantize_(model, {"bits": 4})

    @dataclass
    class Unregistered(QuantConfig):
        bits: int = 4

    with pytest.raises(TypeError, match="no scheme registered; register its handler"):
        quantize_(model, Unregistered())

    @dataclass
    class FinerQAT(QATConfig):  # a subclass of a registered config uses its scheme
        note: str = ""

    assert isinstance(quantize_(model, FinerQAT(bits=3)).quantizers["weight"], FakeQuantizer)


def test_every_scheme_config_derives_from_quant_config() -> None:
    assert all(issubclass(scheme_config_type(name), QuantConfig) for name in registered_schemes())
    with pytest.raises(
        TypeError, match="'int3' registers 'dict' .* does not derive from QuantConfig"
    ):
        register_scheme("int3", dict)(lambda *args: None)
    assert "int3" not in registered_schemes()
