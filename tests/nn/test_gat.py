import pytest
import torch
from torch_geometric.nn import GATConv

from lorap_dist.config import PromptConfig
from lorap_dist.nn import QGATConv
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
    "lin.weight": "lin.weight",
    "att_src": "att_src",
    "att_dst": "att_dst",
    "bias": "bias",
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("channels", [(5, 3), (8, 4)])
def test_matches_pyg_gatconv(
    seed: int, heads: int, concat: bool, channels: tuple[int, int]
) -> None:
    torch.manual_seed(seed)
    ours = QGATConv(*channels, heads=heads, concat=concat).eval()
    theirs = GATConv(*channels, heads=heads, concat=concat).eval()
    torch.nn.init.normal_(theirs.bias)  # PyG starts it at zero, which would hide a bias bug
    copy_parameters(ours, theirs, NAMES)
    edge_index = random_graph(13, 30, seed)
    x = torch.randn(13, channels[0])
    assert_same_outputs_and_grads(
        ours,
        theirs,
        NAMES,
        x,
        lambda m, x: m(x, edge_index),
        lambda m, x: m(x, edge_index),
    )


def pyg_pair(seed: int) -> tuple[QGATConv, GATConv]:
    torch.manual_seed(seed)
    ours, theirs = QGATConv(6, 4, heads=2).eval(), GATConv(6, 4, heads=2).eval()
    torch.nn.init.normal_(theirs.bias)
    copy_parameters(ours, theirs, NAMES)
    return ours, theirs


@pytest.mark.parametrize("form", GRAPH_FORMS)
def test_matches_pyg_gatconv_on_each_graph_form(form: str) -> None:
    """A sparse adjacency's values play no part, as in GATConv (here 2 for repeated edges)."""
    ours, theirs = pyg_pair(seed=5)
    edge_index = random_graph(13, 30, seed=5)
    graph = graph_form(form, edge_index, 13, 13, torch.ones(edge_index.size(1)))
    assert_same_outputs_and_grads(
        ours, theirs, NAMES, torch.randn(13, 6), lambda m, x: m(x, graph), lambda m, x: m(x, graph)
    )


@pytest.mark.parametrize("form", GRAPH_FORMS)
@pytest.mark.parametrize("dst", ["x_dst", "None", "None with size"])
def test_matches_pyg_gatconv_on_bipartite_pairs(form: str, dst: str) -> None:
    """Self loops join source i to destination i for i < min(N_src, N_dst), as in GATConv;
    ``x_dst`` rows are some of ``x``'s rows, so the gradient reaches ``x`` both ways.

    One difference: without ``x_dst`` and ``size``, GATConv gives every source a self loop
    and, on an ``EdgeIndex`` of sparse size ``(9, 5)``, so returns 9 rows; this layer keeps
    the 5 destinations the ``EdgeIndex`` gives, as SAGEConv and GINConv do, and matches
    GATConv told ``size=(9, 5)``.
    """
    ours, theirs = pyg_pair(seed=6)
    graph = graph_form(form, random_bipartite(9, 5, 20, seed=6), 9, 5)
    dst_rows = torch.tensor([3, 0, 7, 1, 5])
    size = (9, 5) if dst == "None with size" else None
    size_theirs = (9, 5) if dst == "None" and form == "EdgeIndex" else size

    def run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        x_dst = x[dst_rows] if dst == "x_dst" else None
        return module((x, x_dst), graph, size=size_theirs if module is theirs else size)

    assert_same_outputs_and_grads(ours, theirs, NAMES, torch.randn(9, 6), run, run)


@pytest.mark.parametrize("concat", [True, False])
def test_full_block_equals_full_graph(concat: bool) -> None:
    layer = QGATConv(6, 4, heads=2, concat=concat, prompt=PromptConfig(kind="lorap", k=3, r=2))
    torch.nn.init.normal_(layer.lorap.p_b)
    edge_index = random_graph(11, 25, seed=3)
    x = torch.randn(11, 6)
    torch.testing.assert_close(layer(x, full_block(edge_index, 11)), layer(x, edge_index))


@pytest.mark.parametrize("seed", [0, 4])
def test_block_with_all_in_neighbours_gives_full_graph_outputs(seed: int) -> None:
    layer = QGATConv(6, 4, heads=2, prompt=PromptConfig(kind="lorap", k=3, r=2))
    torch.nn.init.normal_(layer.lorap.p_b)
    edge_index = random_graph(15, 35, seed)
    x = torch.randn(15, 6)
    dst_ids = torch.tensor([0, 5, 9, 14])
    block, src_ids = in_neighbour_block(edge_index, dst_ids)
    assert block.num_src > block.num_dst
    torch.testing.assert_close(layer(x[src_ids], block), layer(x, edge_index)[dst_ids])


def test_lorap_width_follows_head_combination() -> None:
    assert (
        QGATConv(
            3, 4, heads=2, concat=True, prompt=PromptConfig(kind="lorap", k=2, r=4)
        ).lorap.channels
        == 8
    )
    assert (
        QGATConv(
            3, 4, heads=2, concat=False, prompt=PromptConfig(kind="lorap", k=2, r=4)
        ).lorap.channels
        == 4
    )


def test_reset_repr_and_points() -> None:
    layer = QGATConv(3, 2, heads=2)
    assert layer.QUANT_POINTS == dict.fromkeys(["input", "message", "aggregate", "output"], "node")
    assert repr(layer) == "QGATConv(3, 2, heads=2, concat=True)"
    with torch.no_grad():
        layer.bias.fill_(1.0)
    att = layer.att_src.clone()
    layer.reset_parameters()
    assert torch.all(layer.bias == 0) and not torch.equal(layer.att_src, att)
