"""Every scheme x prompt x layer type trains (forward + backward) on a full graph and on
sampled blocks, its state survives a state_dict round trip, and the training loop runs it."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.config import ExperimentConfig, ModelConfig, PromptConfig
from lorap_dist.graph.block import NodeInfo
from lorap_dist.nn import build_model
from lorap_dist.quant import quantization_loss, quantize_, quantizers_of
from lorap_dist.quant.schemes.a2q import A2QConfig, A2QNodeQuantizer
from lorap_dist.quant.schemes.degree_quant import DegreeQuantConfig
from lorap_dist.quant.schemes.mixq import MixQConfig, MixQQuantizer
from lorap_dist.quant.schemes.qat import QATConfig
from lorap_dist.testing.graphs import in_neighbour_block, random_graph
from lorap_dist.train import train

N, F_IN, CLASSES = 40, 6, 3
SCHEMES = {
    "degree_quant": DegreeQuantConfig(bits=4, low=0.2, high=0.6),
    "a2q": A2QConfig(init_bits=4, memory_budget=3.0),
    "mixq": MixQConfig(),
}
ARCHS = ("gcn", "sage", "gin", "gat")
PROMPTS = ("none", "lorap", "gpf_lorap")


def _graph():
    gen = torch.Generator().manual_seed(3)
    edge_index = random_graph(N, 160, seed=2)
    degree = torch.bincount(edge_index[1], minlength=N)
    return torch.randn(N, F_IN, generator=gen), edge_index, degree


def _model(scheme: str, arch: str, prompt: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(
        F_IN,
        CLASSES,
        ModelConfig(arch=arch, hidden=8, heads=2),
        PromptConfig(kind=prompt, k=4, r=2),
    )
    return quantize_(model, SCHEMES[scheme], num_nodes=N)


def _inputs(blocks: bool):
    x, edge_index, degree = _graph()
    if not blocks:
        return x, edge_index, NodeInfo(ids=torch.arange(N), degree=degree), N
    block1, src1 = in_neighbour_block(edge_index, torch.arange(6))
    block0, src0 = in_neighbour_block(edge_index, src1)
    return x[src0], [block0, block1], NodeInfo(ids=src0, degree=degree[src0]), 6


def _check_scheme_parameters_learn(scheme: str, model) -> None:
    quantizers = [q for _, q in quantizers_of(model)]
    if scheme == "a2q":
        # Points fed values already on a grid (an untrained prompt or zero bias after the
        # aggregate) have no local error and so no gradient; the inputs always have some.
        inputs = [q for n, q in quantizers_of(model) if n.endswith(".input")]
        assert inputs and all(isinstance(q, A2QNodeQuantizer) for q in inputs)
        assert all(q.log_step.grad.abs().sum() > 0 for q in inputs)
    if scheme == "mixq":
        mixq = [q for q in quantizers if isinstance(q, MixQQuantizer)]
        searched = [q for q in mixq if len(q.candidate_bits) > 1]  # the logits are not
        last = model.convs[-1]
        assert len(searched) == len(mixq) - len(last.output_points)
        assert all(q.logits.grad.abs().sum() > 0 for q in searched)


@pytest.mark.parametrize("blocks", [False, True], ids=["full", "blocks"])
@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_forward_backward_on_full_graphs_and_blocks(scheme, arch, prompt, blocks):
    x, graph, nodes, rows = _inputs(blocks)
    model = _model(scheme, arch, prompt).train()
    out = model(x, graph, nodes)
    assert out.shape == (rows, CLASSES) and torch.isfinite(out).all()
    loss = out.square().mean()
    extra = quantization_loss(model)
    (loss if extra is None else loss + extra).backward()
    lorap_params = [p for n, p in model.named_parameters() if "lorap.p_b" in n or "gpf.bases" in n]
    assert len(lorap_params) == {"none": 0, "lorap": 2, "gpf_lorap": 3}[prompt]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lorap_params)
    _check_scheme_parameters_learn(scheme, model)
    model.eval()
    torch.testing.assert_close(model(x, graph, nodes), model(x, graph, nodes))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_state_dict_round_trip_into_a_fresh_model(scheme, arch):
    x, edge_index, nodes, _ = _inputs(blocks=False)
    model = _model(scheme, arch, "gpf_lorap")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        loss = model.train()(x, edge_index, nodes).square().mean()
        extra = quantization_loss(model)
        (loss if extra is None else loss + extra).backward()
        optimizer.step()
    fresh = _model(scheme, arch, "gpf_lorap", seed=1)
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x, edge_index, nodes), model(x, edge_index, nodes))
    # and without ids (A2Q falls back to its learned pool, identically in both)
    torch.testing.assert_close(fresh(x, edge_index), model(x, edge_index))


@pytest.mark.parametrize(
    ("scheme", "options"),
    [
        ("degree_quant", {"bits": 4, "low": 0.1, "high": 0.2}),
        ("a2q", {"memory_budget": 3.0, "pool_size": 8}),
        ("mixq", {"candidate_bits": [2, 4, 8], "penalty": 0.01}),
    ],
)
def test_training_loop_runs_each_scheme_from_its_yaml_name(scheme, options):
    config = ExperimentConfig.from_dict(
        {
            "data": {"synthetic": {"num_nodes": 120, "avg_degree": 5, "num_features": 8}},
            "model": {"arch": "gin", "hidden": 16},
            "prompt": {"kind": "gpf_lorap", "k": 4, "r": 2},
            "quant": {"scheme": scheme, "options": options},
            "train": {"epochs": 3, "patience": 0},
        }
    )
    result, _ = train(config, progress=False)
    # 3 epochs, then one of prompt tuning (the default: a quarter of them, at least 1)
    assert result.epochs_run == 4 and 0.0 <= result.test_acc <= 1.0
    assert result.avg_bits is not None and 2.0 <= result.avg_bits <= 8.0


def test_one_registry_names_every_scheme_and_its_config_class():
    from lorap_dist.config import ConfigError
    from lorap_dist.quant.api import register_scheme, registered_schemes, scheme_config_type

    assert sorted(registered_schemes()) == ["a2q", "degree_quant", "mixq", "qat"]
    assert {scheme_config_type(name) for name in registered_schemes()} == {
        QATConfig,
        *(type(config) for config in SCHEMES.values()),
    }
    with pytest.raises(ValueError, match="'qat' is already registered with QATConfig"):
        register_scheme("qat", dict)(lambda *args: None)
    with pytest.raises(ConfigError, match="quant.scheme='int3' is not known"):
        scheme_config_type("int3")
