"""Degree-Quant: config validation, protection frequency against the degree CDF, histogram
counting, no protection at evaluation, percentile ranges, unclipped STE, model hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorap_dist.config import ConfigError, ModelConfig, PromptConfig, QuantSettings
from lorap_dist.graph.block import NodeInfo
from lorap_dist.nn import build_model
from lorap_dist.quant import quantize_, quantizers_of
from lorap_dist.quant.observers import PercentileObserver
from lorap_dist.quant.schemes.degree_quant import (
    DegreeProtection,
    DegreeQuantConfig,
    DegreeQuantQuantizer,
)
from lorap_dist.testing.graphs import in_neighbour_block, random_graph


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"bits": 1}, "DegreeQuantConfig.bits=1"),
        ({"weight_bits": 9}, "DegreeQuantConfig.weight_bits=9"),
        ({"low": -0.1}, "DegreeQuantConfig.low=-0.1"),
        ({"low": 0.5, "high": 0.2}, "DegreeQuantConfig.high=0.2"),
        ({"high": 1.5}, "DegreeQuantConfig.high=1.5"),
        ({"percentile": 0.5}, "DegreeQuantConfig.percentile=0.5"),
        ({"percentile": 0.0}, "DegreeQuantConfig.percentile=0.0"),
        ({"subsample": 0}, "DegreeQuantConfig.subsample=0"),
        ({"grad_clip": "yes"}, "DegreeQuantConfig.grad_clip='yes'"),
        ({"momentum": 0.0}, "DegreeQuantConfig.momentum=0.0"),
    ],
)
def test_invalid_fields_are_named(options, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.").replace("(", r"\(")):
        DegreeQuantConfig(**options)


def test_percentile_defaults_follow_the_paper_and_configs_build_from_yaml_dicts():
    assert DegreeQuantConfig(bits=8).resolved_percentile == 0.001
    assert DegreeQuantConfig(bits=4).resolved_percentile == 0.01
    assert DegreeQuantConfig(bits=4, percentile=0.05).resolved_percentile == 0.05
    built = QuantSettings(scheme="degree_quant", options={"bits": 4, "high": 0.3}).build()
    assert built == DegreeQuantConfig(bits=4, high=0.3)


def test_protection_rate_follows_low_plus_span_times_degree_cdf():
    # 10 degree values, 20 nodes each: CDF(d) = (d + 1) / 10.
    degree = torch.arange(200) % 10
    ids = torch.arange(200)
    low, high, draws = 0.1, 0.6, 1500
    protection = DegreeProtection(low, high, num_nodes=200).train()
    hits = torch.zeros(200)
    for _ in range(draws):
        hits += protection(NodeInfo(ids=ids, degree=degree)).protect.float()
    for d in range(10):
        expected = low + (high - low) * (d + 1) / 10
        trials = 20 * draws
        rate = hits[degree == d].sum() / trials
        std = (expected * (1 - expected) / trials) ** 0.5
        assert abs(rate - expected) < 5 * std, (d, float(rate), expected)


def test_cdf_is_the_full_graph_empirical_cdf_after_one_full_pass():
    degree = torch.randint(0, 40, (300,))
    protection = DegreeProtection(0.0, 1.0, num_nodes=300).train()
    protection(NodeInfo(ids=torch.arange(300), degree=degree))
    expected = (degree[None, :] <= degree[:, None]).float().mean(dim=1)
    torch.testing.assert_close(protection.cdf(degree), expected)


def test_sampled_batches_count_each_node_once():
    degree = torch.randint(0, 30, (200,))
    protection = DegreeProtection(0.0, 0.1, num_nodes=200).train()
    for ids in (torch.arange(100), torch.arange(100), torch.arange(50, 200), torch.tensor([3, 3])):
        protection(NodeInfo(ids=ids, degree=degree[ids]))
    torch.testing.assert_close(protection.degree_counts, torch.bincount(degree))


def test_without_ids_the_cdf_is_that_of_the_degrees_passed():
    degree = torch.tensor([0, 1, 1, 3])
    cdf = DegreeProtection(0.0, 1.0, num_nodes=None).cdf(degree)
    torch.testing.assert_close(cdf, torch.tensor([0.25, 0.75, 0.75, 1.0]))


def test_nothing_is_protected_at_evaluation():
    protection = DegreeProtection(1.0, 1.0, num_nodes=4).eval()
    nodes = NodeInfo(
        ids=torch.arange(4), degree=torch.ones(4), protect=torch.ones(4, dtype=torch.bool)
    )
    assert protection(nodes).protect is None
    assert protection.train()(nodes).protect.all()


def test_training_needs_degrees():
    with pytest.raises(ValueError, match="NodeInfo\\(degree=...\\)"):
        DegreeProtection(0.0, 0.1).train()(NodeInfo(ids=torch.arange(3)))


def _model(arch: str = "gcn", prompt: str = "none", **options) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(6, 3, ModelConfig(arch=arch, hidden=8), PromptConfig(kind=prompt))
    return quantize_(model, DegreeQuantConfig(**options), num_nodes=30)


def _graph():
    edge_index = random_graph(30, 120, seed=1)
    degree = torch.bincount(edge_index[1], minlength=30)
    return torch.randn(30, 6), edge_index, degree


def test_all_protected_nodes_skip_every_node_quantizer_in_training_but_not_in_eval():
    x, edge_index, degree = _graph()
    model = _model("gin", "lorap", bits=4, low=1.0, high=1.0).train()
    model(x, edge_index, NodeInfo(ids=torch.arange(30), degree=degree))
    node_observers = [q.observer for name, q in quantizers_of(model) if not name.endswith("weight")]
    assert node_observers and not any(o.initialized for o in node_observers)
    assert isinstance(model.node_transform, DegreeProtection)
    model.eval()
    fp = build_model(6, 3, ModelConfig(arch="gin", hidden=8), PromptConfig(kind="lorap"))
    fp.load_state_dict(model.state_dict(), strict=False)
    quantized = model(x, edge_index, NodeInfo(ids=torch.arange(30), degree=degree))
    assert not torch.allclose(quantized, fp.eval()(x, edge_index))


def test_block_masks_are_prefix_slices_of_the_source_mask():
    x, edge_index, degree = _graph()
    block1, src1 = in_neighbour_block(edge_index, torch.arange(5))
    block0, src0 = in_neighbour_block(edge_index, src1)
    model = _model("sage", "lorap", bits=4, low=0.3, high=0.8).train()
    seen: dict[str, torch.Tensor] = {}

    def record(name):
        return lambda module, args: seen.__setitem__(name, args[1].protect.clone())

    for name, quantizer in quantizers_of(model):
        if not name.endswith("weight"):
            quantizer.register_forward_pre_hook(record(name))
    model(x[src0], [block0, block1], NodeInfo(ids=src0, degree=degree[src0]))
    source = seen["convs.0.input"]
    assert source.shape == (block0.num_src,)
    for point in ("aggregate", "prompt"):  # LoRAP rounding once: no aggregate point
        if f"convs.0.{point}" in seen:
            assert torch.equal(seen[f"convs.0.{point}"], source[: block0.num_dst])
    assert "convs.0.prompt" in seen
    assert torch.equal(seen["convs.1.input"], source[: block1.num_src])
    assert torch.equal(seen["convs.1.output"], source[: block1.num_dst])


def test_percentile_ranges_match_torch_quantile_on_unprotected_rows():
    quantizer = DegreeQuantQuantizer(
        bits=4,
        symmetric=False,
        per_row=False,
        observer=PercentileObserver(percentile=0.01, momentum=0.25),
    ).train()
    x1, x2 = torch.randn(400, 5), 3 * torch.randn(400, 5)
    protect = torch.rand(400) < 0.3
    quantizer(x1, NodeInfo(protect=protect))
    lo1, hi1 = torch.quantile(x1[~protect].flatten(), torch.tensor([0.01, 0.99]))
    torch.testing.assert_close(quantizer.observer.min_val, lo1)
    torch.testing.assert_close(quantizer.observer.max_val, hi1)
    quantizer(x2)
    lo2, hi2 = torch.quantile(x2.flatten(), torch.tensor([0.01, 0.99]))
    torch.testing.assert_close(quantizer.observer.min_val, 0.75 * lo1 + 0.25 * lo2)
    torch.testing.assert_close(quantizer.observer.max_val, 0.75 * hi1 + 0.25 * hi2)
    built = _model(bits=4)
    node_quantizer = dict(quantizers_of(built))["convs.0.input"]
    assert node_quantizer.observer.percentile == 0.01


@pytest.mark.parametrize("grad_clip", [True, False])
def test_grad_clip_masks_the_straight_through_gradient_outside_the_range(grad_clip):
    quantizer = DegreeQuantQuantizer(
        bits=4,
        symmetric=False,
        per_row=False,
        observer=PercentileObserver(percentile=0.1, momentum=1.0),
        grad_clip=grad_clip,
    ).train()
    x = torch.linspace(-5, 5, 101, requires_grad=True)
    quantizer(x.unsqueeze(1)).sum().backward()
    outside = (x < quantizer.observer.min_val - 0.6) | (x > quantizer.observer.max_val + 0.6)
    assert outside.any()
    expected = 0.0 if grad_clip else 1.0
    assert torch.all(x.grad[outside] == expected)
    assert torch.all(x.grad[~outside].abs().sum() > 0)


def test_model_without_node_transform_is_a_config_error():
    class Plain(nn.Module):
        QUANT_POINTS = {"input": "node"}

        def __init__(self):
            super().__init__()
            from lorap_dist.quant.base import identity_quantizers

            self.quantizers = identity_quantizers(self.QUANT_POINTS)

    with pytest.raises(ConfigError, match="node_transform"):
        quantize_(Plain(), DegreeQuantConfig())


def test_histogram_and_ranges_round_trip_through_state_dict():
    x, edge_index, degree = _graph()
    model = _model("gcn", "gpf_lorap", bits=4).train()
    model(x, edge_index, NodeInfo(ids=torch.arange(30), degree=degree))
    fresh = _model("gcn", "gpf_lorap", bits=4)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.node_transform.degree_counts, torch.bincount(degree))
    nodes = NodeInfo(ids=torch.arange(30), degree=degree)
    torch.testing.assert_close(
        fresh.eval()(x, edge_index, nodes), model.eval()(x, edge_index, nodes)
    )
