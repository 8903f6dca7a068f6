"""LoRAP diagnostics: each measure against what it must be on hand-set prompts."""

from __future__ import annotations

import math

import pytest
import torch

from lorap_dist.config import ModelConfig, PromptConfig
from lorap_dist.graph.data import GraphData
from lorap_dist.nn import build_model
from lorap_dist.prompt.diagnostics import lorap_diagnostics
from lorap_dist.quant import quantize_
from lorap_dist.quant.schemes.qat import QATConfig
from lorap_dist.testing.graphs import random_graph

N = 40


def graph() -> GraphData:
    torch.manual_seed(0)
    idx = torch.arange(N)
    return GraphData(
        edge_index=random_graph(N, 120, seed=0), x=torch.randn(N, 5), y=idx % 3,
        train_idx=idx, valid_idx=idx, test_idx=idx, num_classes=3,
    )  # fmt: skip


def model(bits: int | None, rounding: str = "once"):
    torch.manual_seed(1)
    prompt = PromptConfig(kind="lorap", k=4, r=2, rounding=rounding)
    net = build_model(5, 3, ModelConfig(arch="gcn", hidden=6), prompt)
    if bits is not None:
        quantize_(net, QATConfig(bits=bits))
        net.train()
        net(graph().x, graph().edge_index)  # observe ranges
    return net


@pytest.mark.parametrize("rounding", ["once", "twice"])
def test_a_zero_prompt_changes_nothing(rounding):
    rows = lorap_diagnostics(model(4, rounding), graph())
    assert [r["layer"] for r in rows] == ["convs.0", "convs.1"]
    for row in rows:
        assert row["prompt_to_aggregate"] == 0.0 and row["prompt_to_step"] == 0.0
        assert row["error_with_prompt"] == row["error_without_prompt"] > 0.01  # INT4 error


def test_a_float_model_has_no_aggregation_error_and_uniform_weights_at_zero_scores():
    net = model(None)
    for conv in net.convs:
        conv.lorap.w_phi.data.zero_()  # every node scores every basis 0
        torch.nn.init.normal_(conv.lorap.p_b)
    rows = lorap_diagnostics(net, graph())
    for row in rows:
        assert row["weight_entropy"] == pytest.approx(1.0)
        assert row["error_without_prompt"] == 0.0
        assert row["error_with_prompt"] > 0.0  # the prompt moved the float aggregate
        assert row["prompt_to_aggregate"] > 0.0


def test_prompt_size_is_measured_in_rounding_steps_of_the_prompt_point():
    net = model(4)
    conv = net.convs[1]
    conv.lorap.p_a.data.fill_(1.0)
    conv.lorap.p_b.data.fill_(0.5)  # every basis is 2 * 0.5 = 1 in every channel: p = 1
    step = conv.quantizers["prompt"].qparams()[0]
    row = lorap_diagnostics(net, graph())[1]
    assert row["prompt_to_step"] == pytest.approx(1.0 / step, rel=1e-5)
    assert not math.isnan(row["prompt_range_to_aggregate_range"])
    assert [p.sum().item() for p in conv.lorap.p_b] == [1.5, 1.5]  # the model is untouched


def test_rounding_of_the_exact_aggregate_is_the_prompt_points_grid_on_the_float_aggregate():
    from lorap_dist.quant.fake_quant import fake_quantize

    net = model(4)
    float_net = model(None)
    float_net.load_state_dict(net.state_dict(), strict=False)
    captured = []
    hook = float_net.convs[1].lorap.register_forward_hook(lambda m, a, o: captured.append(a[0]))
    float_net.eval()
    with torch.no_grad():
        float_net(graph().x, graph().edge_index)
    hook.remove()
    exact = captured[0]  # the float aggregate of layer 1 with the trained weights
    quantizer = net.convs[1].quantizers["prompt"]
    scale, zero_point, qmin, qmax = quantizer.qparams()
    rounded = fake_quantize(exact, scale, zero_point, qmin, qmax)
    expected = float(torch.linalg.norm(rounded - exact) / torch.linalg.norm(exact))
    row = lorap_diagnostics(net, graph())[1]
    assert row["error_of_exact_rounding"] == pytest.approx(expected, rel=1e-5)
    assert 0.0 < row["error_of_exact_rounding"] <= row["error_without_prompt"]
    assert quantizer.training  # left as it was
