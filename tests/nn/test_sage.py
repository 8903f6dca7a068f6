import pytest
import torch
from torch_geometric.nn import SAGEConv

from lorap_dist.config import PromptConfig
from lorap_dist.nn import QSAGEConv
from lorap_dist.testing.graphs import full_block, in_neighbour_block, random_graph
from lorap_dist.testing.layers import assert_same_outputs_and_grads, copy_parameters

NAMES = {
    "lin_l.weight": "lin_l.weight",
    "lin_l.bias": "lin_l.bias",
    "lin_r.weight": "lin_r.weight",
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("channels", [(5, 3), (8, 16)])
def test_matches_pyg_sageconv(seed: int, channels: tuple[int, int]) -> None:
    torch.manual_seed(seed)
    ours, theirs = QSAGEConv(*channels), SAGEConv(*channels)
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


@pytest.mark.parametrize("seed", [0, 3])
def test_full_block_equals_full_graph(seed: int) -> None:
    layer = QSAGEConv(6, 4, prompt=PromptConfig(kind="lorap", k=3, r=2))
    torch.nn.init.normal_(layer.lorap.p_b)
    edge_index = random_graph(11, 25, seed)
    x = torch.randn(11, 6)
    torch.testing.assert_close(layer(x, full_block(edge_index, 11)), layer(x, edge_index))


@pytest.mark.parametrize("seed", [0, 4])
def test_block_with_all_in_neighbours_gives_full_graph_outputs(seed: int) -> None:
    layer = QSAGEConv(6, 4, prompt=PromptConfig(kind="lorap", k=3, r=2))
    torch.nn.init.normal_(layer.lorap.p_b)
    edge_index = random_graph(15, 35, seed)
    x = torch.randn(15, 6)
    dst_ids = torch.tensor([0, 5, 9, 14])
    block, src_ids = in_neighbour_block(edge_index, dst_ids)
    assert block.num_src > block.num_dst
    torch.testing.assert_close(layer(x[src_ids], block), layer(x, edge_index)[dst_ids])


def test_reset_repr_and_points() -> None:
    layer = QSAGEConv(3, 2)
    assert layer.QUANT_POINTS == dict.fromkeys(["input", "aggregate", "output"], "node")
    assert "prompt" in QSAGEConv(3, 2, prompt=PromptConfig(kind="lorap", k=2, r=4)).QUANT_POINTS
    assert repr(layer) == "QSAGEConv(3, 2, aggr=mean)"
    with torch.no_grad():
        layer.lin_l.bias.fill_(1.0)
    layer.reset_parameters()
    assert torch.all(layer.lin_l.bias == 0)
