"""``float_logits``: a node-level model's logits (the points of its last layer that hold them:
``output``, and in GCN and GAT the aggregate or prompt before the bias) stay at full
precision while every other point is quantized."""

from __future__ import annotations

import copy

import pytest
import torch

from lorap_dist.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    PromptConfig,
    QuantSettings,
)
from lorap_dist.nn import GraphGNN, build_model
from lorap_dist.quant import (
    A2QConfig,
    DegreeQuantConfig,
    IdentityQuantizer,
    MixQConfig,
    QATConfig,
    QuantConfig,
    quantize_,
    quantizers_of,
)
from lorap_dist.testing.graphs import random_graph
from lorap_dist.train import train

IN, OUT, N = 6, 3, 20
SCHEMES = [
    QATConfig(bits=4),
    DegreeQuantConfig(bits=4),
    A2QConfig(init_bits=4, memory_budget=4.0),
    MixQConfig(candidate_bits=(2, 4, 8)),
]


def kinds(model: torch.nn.Module) -> dict[str, type]:
    return {name: type(quantizer) for name, quantizer in quantizers_of(model)}


LOGIT_POINTS = {  # the last layer's points that hold the logits, with LoRAP rounding once
    "gcn": {"prompt", "output"},
    "gat": {"prompt", "output"},
    "sage": {"output"},
    "gin": {"output"},
}


@pytest.mark.parametrize("arch", ["gcn", "sage", "gin", "gat"])
@pytest.mark.parametrize("config", SCHEMES, ids=lambda c: type(c).__name__)
def test_only_the_points_holding_the_logits_stay_float(arch: str, config: QuantConfig) -> None:
    torch.manual_seed(0)
    model = build_model(IN, OUT, ModelConfig(arch=arch, hidden=8, layers=3, heads=2),
                        PromptConfig(kind="lorap"))  # fmt: skip
    default = quantize_(copy.deepcopy(model), config, num_nodes=N)
    floated = quantize_(model, config, num_nodes=N, float_logits=True)

    assert model.logits_layer is model.convs[2]
    expected = kinds(default)
    for point in LOGIT_POINTS[arch]:
        assert expected[f"convs.2.{point}"] is not IdentityQuantizer
        expected[f"convs.2.{point}"] = IdentityQuantizer
    assert kinds(floated) == expected


@pytest.mark.parametrize("arch", ["gcn", "gat"])
@pytest.mark.parametrize("prompt", ["none", "lorap"])
def test_gcn_and_gat_logits_leave_the_grid_that_holds_them_before_the_bias(
    arch: str, prompt: str
) -> None:
    """In a layer that aggregates its transformed rows, the aggregate (or the prompt) holds
    the logits less the bias: with only ``output`` float, each class would still take at
    most 16 values on an INT4 grid."""
    torch.manual_seed(0)
    model = build_model(IN, OUT, ModelConfig(arch=arch, hidden=8, layers=2, dropout=0.0),
                        PromptConfig(kind=prompt))  # fmt: skip
    default = quantize_(copy.deepcopy(model), QATConfig(bits=4), num_nodes=N)
    floated = quantize_(model, QATConfig(bits=4), num_nodes=N, float_logits=True)
    edge_index, x = random_graph(N, 60, seed=1), torch.randn(N, IN)
    default(x, edge_index), floated(x, edge_index)
    default.eval(), floated.eval()
    with torch.no_grad():
        rounded, logits = default(x, edge_index), floated(x, edge_index)
    for c in range(OUT):
        assert rounded[:, c].unique().numel() <= 16 < logits[:, c].unique().numel()


def test_the_float_logits_are_what_the_quantized_model_rounds() -> None:
    """Same weights and observed ranges: the float logits are the values the default
    model's last quantizer receives, and only they escape the INT4 grid's 16 values (a SAGE
    layer's output is a linear map of its inputs, not an aggregate on a grid plus a bias)."""
    torch.manual_seed(0)
    model = build_model(IN, OUT, ModelConfig(arch="sage", hidden=8, layers=2, dropout=0.0),
                        PromptConfig(kind="lorap"))  # fmt: skip
    default = quantize_(copy.deepcopy(model), QATConfig(bits=4), num_nodes=N)
    floated = quantize_(model, QATConfig(bits=4), num_nodes=N, float_logits=True)
    edge_index, x = random_graph(N, 60, seed=1), torch.randn(N, IN)
    default(x, edge_index)  # one training-mode pass: the observers see the same values
    floated(x, edge_index)
    default.eval(), floated.eval()

    seen = []
    default.convs[1].quantizers["output"].register_forward_hook(
        lambda module, args, out: seen.append(args[0])
    )
    rounded, logits = default(x, edge_index), floated(x, edge_index)
    assert torch.equal(logits, seen[0])
    assert rounded.unique().numel() <= 16 < logits.unique().numel()


def test_graph_level_logits_are_never_quantized_so_the_flag_changes_nothing() -> None:
    torch.manual_seed(0)
    model = GraphGNN(IN, OUT, ModelConfig(arch="gin", hidden=8, layers=2))
    default = quantize_(copy.deepcopy(model), QATConfig(bits=4), num_nodes=0)
    floated = quantize_(model, QATConfig(bits=4), num_nodes=0, float_logits=True)
    assert kinds(floated) == kinds(default)
    assert not hasattr(model, "logits_layer")


def test_quant_float_logits_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match=r"quant.float_logits='yes' must be true or false"):
        QuantSettings(scheme="qat", options={"bits": 4}, float_logits="yes")


def test_training_with_float_logits_keeps_them_float_and_counts_only_quantized_points() -> None:
    config = ExperimentConfig.from_dict({
        "data": {"synthetic": {"num_nodes": 300, "avg_degree": 6}},
        "model": {"hidden": 16},
        "quant": {"scheme": "qat", "options": {"bits": 4}, "float_logits": True},
        "train": {"epochs": 3},
    })  # fmt: skip
    result, model = train(config, progress=False)
    last = model.convs[-1]
    assert "output" in last.output_points
    assert all(isinstance(last.quantizers[p], IdentityQuantizer) for p in last.output_points)
    others = [q for point, q in last.quantizers.items() if point not in last.output_points]
    assert others and not any(isinstance(q, IdentityQuantizer) for q in others)
    assert result.avg_bits == 4.0
