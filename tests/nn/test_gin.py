import pytest
import torch
from torch import nn
from torch_geometric.nn import GINConv

from lorap_dist.config import PromptConfig
from lorap_dist.nn import QGINConv
from lorap_dist.testing.graphs import (
    GRAPH_FORMS,
    full_block,
    graph_form,
    in_neighbour_block,
    random_bipartite,
    random_graph,
)
from lorap_dist.testing.layers import assert_same_outputs_and_grads, copy_parameters

NAMES = {
    "lin1.weight": "nn.0.weight",
    "lin1.bias": "nn.0.bias",
    "lin2.weight": "nn.2.weight",
    "lin2.bias": "nn.2.bias",
    "eps": "eps",
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("train_eps", [False, True])
@pytest.mark.parametrize("channels", [(5, 7, 3), (8, 4, 16)])
def test_matches_pyg_ginconv(seed: int, train_eps: bool, channels: tuple[int, int, int]) -> None:
    torch.manual_seed(seed)
    in_channels, hidden, out_channels = channels
    mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, out_channels))
    theirs = GINConv(mlp, eps=0.3, train_eps=train_eps)
    ours = QGINConv(in_channels, out_channels, hidden, eps=0.3, train_eps=train_eps)
    copy_parameters(ours, theirs, NAMES)
    edge_index = random_graph(13, 30, seed)
    x = torch.randn(13, in_channels)
    assert_same_outputs_and_grads(
        ours,
        theirs,
        NAMES,
        x,
        lambda m, x: m(x, edge_index),
        lambda m, x: m(x, edge_index),
    )
    if train_eps:
        assert ours.eps.grad is not None and ours.eps.grad.abs().item() > 0


def pyg_pair(seed: int) -> tuple[QGINConv, GINConv]:
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(40, 7), nn.ReLU(), nn.Linear(7, 3))  # 40 wide: CSR path
    theirs = GINConv(mlp, eps=0.3, train_eps=True)
    ours = QGINConv(40, 3, 7, eps=0.3, train_eps=True)
    copy_parameters(ours, theirs, NAMES)
    return ours, theirs


@pytest.mark.parametrize("form", GRAPH_FORMS)
def test_matches_pyg_ginconv_on_each_graph_form(form: str) -> None:
    ours, theirs = pyg_pair(seed=5)
    graph = graph_form(form, random_graph(13, 30, seed=5, duplicates=0), 13, 13)
    assert_same_outputs_and_grads(
        ours, theirs, NAMES, torch.randn(13, 40), lambda m, x: m(x, graph), lambda m, x: m(x, graph)
    )


@pytest.mark.parametrize("form", GRAPH_FORMS)
@pytest.mark.parametrize("dst", ["x_dst", "None", "None with size"])
def test_matches_pyg_ginconv_on_bipartite_pairs(form: str, dst: str) -> None:
    """``x_dst`` rows are some of ``x``'s rows, so the gradient reaches ``x`` both ways."""
    ours, theirs = pyg_pair(seed=6)
    graph = graph_form(form, random_bipartite(9, 5, 20, seed=6), 9, 5)
    dst_rows = torch.tensor([3, 0, 7, 1, 5])
    size = (9, 5) if dst == "None with size" else None

    def run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x_dst = x[dst_rows] if dst == "x_dst" else None
        return module((x, x_dst), graph, size=size)

    assert_same_outputs_and_grads(ours, theirs, NAMES, torch.randn(9, 40), run, run)


@pytest.mark.parametrize("form", ["coo", "csr"])
@pytest.mark.parametrize("pair", [False, True])
def test_weighted_sparse_adjacency_matches_pyg(form: str, pair: bool) -> None:
    """GINConv sums the messages scaled by their edges' values."""
    ours, theirs = pyg_pair(seed=9)
    num_src, num_dst = (9, 5) if pair else (13, 13)
    edges = random_bipartite(9, 5, 20, seed=9) if pair else random_graph(13, 30, 9, duplicates=0)
    weights = torch.rand(edges.size(1)) * 2 + 0.25
    graph = graph_form(form, edges, num_src, num_dst, weights)

    def run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module((x, x[:num_dst] * 0.5) if pair else x, graph)

    assert_same_outputs_and_grads(ours, theirs, NAMES, torch.randn(num_src, 40), run, run)
    x = torch.randn(num_src, 40)
    inputs = (x, x[:num_dst]) if pair else x
    unweighted = graph_form(form, edges, num_src, num_dst)
    assert not torch.allclose(ours(inputs, graph), ours(inputs, unweighted))


@pytest.mark.parametrize("seed", [0, 3])
def test_full_block_equals_full_graph(seed: int) -> None:
    layer = QGINConv(6, 4, prompt=PromptConfig(kind="lorap", k=3, r=2))
    torch.nn.init.normal_(layer.lorap.p_b)
    edge_index = random_graph(11, 25, seed)
    x = torch.randn(11, 6)
    torch.testing.assert_close(layer(x, full_block(edge_index, 11)), layer(x, edge_index))


@pytest.mark.parametrize("seed", [0, 4])
def test_block_with_all_in_neighbours_gives_full_graph_outputs(seed: int) -> None:
    layer = QGINConv(6, 4, eps=0.5, prompt=PromptConfig(kind="lorap", k=3, r=2))
    torch.nn.init.normal_(layer.lorap.p_b)
    edge_index = random_graph(15, 35, seed)
    x = torch.randn(15, 6)
    dst_ids = torch.tensor([0, 5, 9, 14])
    block, src_ids = in_neighbour_block(edge_index, dst_ids)
    assert block.num_src > block.num_dst
    torch.testing.assert_close(layer(x[src_ids], block), layer(x, edge_index)[dst_ids])


def test_reset_repr_and_points() -> None:
    layer = QGINConv(3, 2, hidden_channels=5, eps=0.1, train_eps=True)
    assert layer.QUANT_POINTS == dict.fromkeys(["input", "aggregate", "hidden", "output"], "node")
    assert repr(layer) == "QGINConv(3, 2, hidden=5, train_eps=True)"
    assert isinstance(layer.eps, nn.Parameter)
    assert "eps" in dict(QGINConv(3, 2).named_buffers())
    with torch.no_grad():
        layer.eps.fill_(2.0)
    layer.reset_parameters()
    assert layer.eps.item() == pytest.approx(0.1)
