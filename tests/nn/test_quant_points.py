"""Every declared quantization point sees the tensor it claims, with the right node facts,
and what it returns is what the layer goes on with."""

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import GATConv, GCNConv
from torch_geometric.utils import scatter

from lorap_dist.config import PromptConfig
from lorap_dist.graph import NodeInfo
from lorap_dist.nn import QGATConv, QGCNConv, QGINConv, QSAGEConv
from lorap_dist.nn.conv import QuantizedConv
from lorap_dist.quant import quantizers_of
from lorap_dist.testing.fake_quant import GridQuantizer, RecordingQuantizer
from lorap_dist.testing.graphs import in_neighbour_block, random_bipartite, random_graph
from lorap_dist.testing.layers import copy_parameters

N, IN, OUT = 12, 5, 6
SOURCE_POINTS = {"input", "message"}


def make(arch: str, rounding: str = "twice") -> QuantizedConv:
    torch.manual_seed(0)
    prompt = PromptConfig(kind="lorap", k=3, r=2, rounding=rounding)
    layer = {
        "gcn": lambda: QGCNConv(IN, OUT, prompt=prompt),
        "sage": lambda: QSAGEConv(IN, OUT, prompt=prompt),
        "gin": lambda: QGINConv(IN, OUT, hidden_channels=7, eps=0.4, prompt=prompt),
        "gat": lambda: QGATConv(IN, 3, heads=2, prompt=prompt),
    }[arch]().eval()
    torch.nn.init.normal_(layer.lorap.p_b)  # a non-zero prompt, so "prompt" != "aggregate"
    for name in ("bias", "lin_l.bias", "lin1.bias"):
        if name in dict(layer.named_parameters()):
            torch.nn.init.normal_(layer.get_parameter(name))
    return layer


def expected_points(arch: str, layer: QuantizedConv, x: Tensor, edge_index: Tensor) -> dict:
    """Each point's tensor, computed from PyG's layers and plain formulas."""
    src, dst = edge_index
    points = {"input": x}
    if arch == "gcn":
        points["message"] = x @ layer.lin.weight.t()
        reference = GCNConv(IN, OUT, bias=False)
        copy_parameters(reference, layer, {"lin.weight": "lin.weight"})
        aggregate = reference(x, edge_index)
    elif arch == "gat":
        points["message"] = x @ layer.lin.weight.t()
        reference = GATConv(IN, 3, heads=2, bias=False)
        names = {"lin.weight": "lin.weight", "att_src": "att_src", "att_dst": "att_dst"}
        copy_parameters(reference, layer, names)
        aggregate = reference(x, edge_index)
    else:
        aggregate = scatter(x[src], dst, 0, N, reduce="mean" if arch == "sage" else "sum")
    points["aggregate"] = aggregate
    lorap = layer.lorap
    prompted = aggregate + torch.softmax(aggregate @ lorap.w_phi, -1) @ lorap.p_a @ lorap.p_b
    points["prompt"] = prompted
    if arch == "gin":
        points["hidden"] = F.relu(
            F.linear((1 + layer.eps) * x + prompted, layer.lin1.weight, layer.lin1.bias)
        )
    return points


ARCHS = ["gcn", "sage", "gin", "gat"]


@pytest.mark.parametrize("rounding", ["once", "twice"])
@pytest.mark.parametrize("arch", ARCHS)
def test_each_point_sees_its_tensor_once(arch: str, rounding: str) -> None:
    layer = make(arch, rounding)
    recorders = {point: RecordingQuantizer() for point in layer.QUANT_POINTS}
    layer.quantizers.update(recorders)
    edge_index = random_graph(N, 30, seed=1)
    x = torch.randn(N, IN)
    ids = torch.randperm(N) + 100
    with torch.no_grad():
        out = layer(x, edge_index, NodeInfo(ids=ids))
        expected = expected_points(arch, layer, x, edge_index)
    expected["output"] = out
    if rounding == "once":  # one rounding: the prompt's point replaces the aggregate's
        del expected["aggregate"]
    assert set(expected) == set(layer.QUANT_POINTS)
    for point, recorder in recorders.items():
        assert len(recorder.calls) == 1, f"{point} was called {len(recorder.calls)} times"
        seen, nodes = recorder.calls[0]
        torch.testing.assert_close(
            seen, expected[point], atol=1e-5, rtol=1e-5, msg=lambda m, p=point: f"point {p}: {m}"
        )
        torch.testing.assert_close(nodes.ids, ids)


@pytest.mark.parametrize("arch", ARCHS)
def test_points_get_the_node_facts_of_their_rows_on_a_block(arch: str) -> None:
    layer = make(arch)
    recorders = {point: RecordingQuantizer() for point in layer.QUANT_POINTS}
    layer.quantizers.update(recorders)
    edge_index = random_graph(N, 30, seed=2)
    block, src_ids = in_neighbour_block(edge_index, torch.tensor([1, 4, 7]))
    nodes = NodeInfo(ids=src_ids, degree=torch.arange(block.num_src), protect=None)
    layer(torch.randn(block.num_src, IN), block, nodes)
    for point, recorder in recorders.items():
        ((seen, info),) = recorder.calls
        rows = block.num_src if point in SOURCE_POINTS else block.num_dst
        assert seen.size(0) == rows, point
        torch.testing.assert_close(info.ids, src_ids[:rows])
        torch.testing.assert_close(info.degree, torch.arange(rows))


@pytest.mark.parametrize("with_x_dst", [True, False])
@pytest.mark.parametrize("arch", ["sage", "gin", "gat"])
def test_a_pairs_destinations_pass_the_source_points_with_their_own_facts(
    arch: str, with_x_dst: bool
) -> None:
    layer = make(arch)
    recorders = {point: RecordingQuantizer() for point in layer.QUANT_POINTS}
    layer.quantizers.update(recorders)
    x_src, x_dst = torch.randn(9, IN), torch.randn(4, IN)
    nodes_src, nodes_dst = NodeInfo(ids=torch.arange(9)), NodeInfo(ids=torch.arange(4) + 50)
    with torch.no_grad():
        layer(
            (x_src, x_dst if with_x_dst else None),
            random_bipartite(9, 4, 15, seed=4),
            size=(9, 4),
            nodes=(nodes_src, nodes_dst),
        )
    for point, recorder in recorders.items():
        calls = recorder.calls
        if point not in SOURCE_POINTS:
            ((seen, info),) = calls
            assert seen.size(0) == 4 and info is nodes_dst, point
            continue
        assert len(calls) == (2 if with_x_dst else 1), point
        assert calls[0][0].size(0) == 9 and calls[0][1] is nodes_src, point
        if with_x_dst:
            seen, info = calls[1]
            assert info is nodes_dst, point
            expected = x_dst if point == "input" else x_dst @ layer.lin.weight.t()
            torch.testing.assert_close(seen, expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_what_a_point_returns_is_used(arch: str) -> None:
    layer = make(arch)
    edge_index = random_graph(N, 30, seed=3)
    x = torch.randn(N, IN)
    reference = layer(x, edge_index)
    names = [name for name, _ in quantizers_of(layer)]
    assert {"lin.weight", "lin_l.weight", "lin1.weight"} & set(names)
    for name in names:
        module_name, _, point = name.rpartition(".")
        quantizers = (
            layer.get_submodule(module_name).quantizers if module_name else layer.quantizers
        )
        original = quantizers[point]
        quantizers[point] = GridQuantizer(0.5)
        out = layer(x, edge_index)
        quantizers[point] = original
        assert not torch.allclose(out, reference, atol=1e-3), f"{name} had no effect"
        if name == "output":
            torch.testing.assert_close(out, torch.round(reference / 0.5) * 0.5)
