import pytest
import torch
from torch_geometric.nn import GATConv

from lorap_dist.config import PromptConfig
from lorap_dist.nn import QGATConv
from lorap_dist.testing.graphs import full_block, in_neighbour_block, random_graph
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
