import pytest
import torch
from torch_geometric.nn import SAGEConv

from lorap_dist.config import PromptConfig
from lorap_dist.graph import NodeInfo
from lorap_dist.nn import QSAGEConv
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


def pyg_pair(seed: int) -> tuple[QSAGEConv, SAGEConv]:
    torch.manual_seed(seed)
    ours, theirs = QSAGEConv(6, 40), SAGEConv(6, 40)  # 40 wide: the CSR aggregation path
    copy_parameters(ours, theirs, NAMES)
    return ours, theirs


@pytest.mark.parametrize("form", GRAPH_FORMS)
def test_matches_pyg_sageconv_on_each_graph_form(form: str) -> None:
    ours, theirs = pyg_pair(seed=5)
    graph = graph_form(form, random_graph(13, 30, seed=5, duplicates=0), 13, 13)
    assert_same_outputs_and_grads(
        ours, theirs, NAMES, torch.randn(13, 6), lambda m, x: m(x, graph), lambda m, x: m(x, graph)
    )


@pytest.mark.parametrize("form", GRAPH_FORMS)
@pytest.mark.parametrize("dst", ["x_dst", "None", "None with size"])
def test_matches_pyg_sageconv_on_bipartite_pairs(form: str, dst: str) -> None:
    """``x_dst`` rows are some of ``x``'s rows, so the gradient reaches ``x`` both ways."""
    ours, theirs = pyg_pair(seed=6)
    graph = graph_form(form, random_bipartite(9, 5, 20, seed=6), 9, 5)
    dst_rows = torch.tensor([3, 0, 7, 1, 5])
    size = (9, 5) if dst == "None with size" else None

    def run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        x_dst = x[dst_rows] if dst == "x_dst" else None
        return module((x, x_dst), graph, size=size)

    assert_same_outputs_and_grads(ours, theirs, NAMES, torch.randn(9, 6), run, run)


def test_pair_errors_name_the_input() -> None:
    layer = QSAGEConv(3, 2)
    edge_index = random_bipartite(6, 4, 10)
    x_src, x_dst = torch.randn(6, 3), torch.randn(4, 3)
    with pytest.raises(ValueError, match="num_dst=4 from size but num_dst=3 from x_dst's rows"):
        layer((x_src, x_dst[:3]), edge_index, size=(6, 4))
    with pytest.raises(ValueError, match="x_src with 6 rows, but the EdgeIndex's sparse_size"):
        layer((x_src, x_dst), graph_form("EdgeIndex", edge_index, 7, 4))
    with pytest.raises(ValueError, match="x_src with 3 channels and x_dst with 2"):
        layer((x_src, x_dst[:, :2]), edge_index)
    with pytest.raises(TypeError, match="pair with a Block"):
        layer((x_src, x_dst), full_block(edge_index, 6))
    with pytest.raises(TypeError, match="pass the node facts as a pair too"):
        layer((x_src, x_dst), edge_index, nodes=NodeInfo())
    with pytest.raises(TypeError, match=r"size as \(num_src, num_dst\)"):
        layer((x_src, x_dst), edge_index, size=torch.ones(4))
    with pytest.raises(ValueError, match="values must be one float per edge, got torch.int64"):
        layer((x_src, x_dst), graph_form("coo", edge_index, 6, 4, torch.full((10,), 2)))


@pytest.mark.parametrize("form", ["coo", "csr"])
@pytest.mark.parametrize("pair", [False, True])
@pytest.mark.parametrize("width", [6, 40])
def test_weighted_sparse_adjacency_matches_pyg(form: str, pair: bool, width: int) -> None:
    """SAGEConv scales each message by its edge's value and divides the sum by the edge
    count (PyG's ``spmm`` mean), not by the summed weights."""
    torch.manual_seed(7)
    ours, theirs = QSAGEConv(width, 5), SAGEConv(width, 5)
    copy_parameters(ours, theirs, NAMES)
    num_src, num_dst = (9, 5) if pair else (13, 13)
    edges = random_bipartite(9, 5, 20, seed=7) if pair else random_graph(13, 30, 7, duplicates=0)
    weights = torch.rand(edges.size(1)) * 2 + 0.25
    graph = graph_form(form, edges, num_src, num_dst, weights)

    def run(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return module((x, x[:num_dst] * 0.5) if pair else x, graph)

    assert_same_outputs_and_grads(ours, theirs, NAMES, torch.randn(num_src, width), run, run)
    unweighted = graph_form(form, edges, num_src, num_dst)
    x = torch.randn(num_src, width)
    inputs = (x, x[:num_dst]) if pair else x
    assert not torch.allclose(ours(inputs, graph), ours(inputs, unweighted))


@pytest.mark.parametrize("weighted", [False, True])
def test_repeated_entries_of_an_uncoalesced_adjacency_merge_as_in_pyg(weighted: bool) -> None:
    """PyG's spmm sums a repeated entry's weights and counts it once in the mean; the
    caller's tensor is left as it was."""
    torch.manual_seed(10)
    ours, theirs = QSAGEConv(40, 3), SAGEConv(40, 3)
    copy_parameters(ours, theirs, NAMES)
    index = torch.tensor([[0, 0, 1, 2, 0], [1, 1, 0, 0, 2]])  # (dst, src); (0, 1) twice
    values = torch.tensor([0.5, 2.0, 1.0, 3.0, 1.5]) if weighted else torch.ones(5)
    adj = torch.sparse_coo_tensor(index, values, (3, 3))
    x = torch.randn(3, 40)
    torch.testing.assert_close(ours(x, adj), theirs(x, adj))
    assert not adj.is_coalesced()


def test_an_adjacency_of_ones_reads_as_unweighted() -> None:
    """Ones take the unweighted path (the CPU's CSR matmul), not per-edge scaling."""
    edges = random_graph(13, 30, 8, duplicates=0).unique(dim=1)  # no entry merges two edges
    layer = QSAGEConv(40, 3)
    g = layer.read_input(torch.randn(13, 40), graph_form("csr", edges, 13, 13), None)
    assert g.edge_weight is None
    weighted = graph_form("csr", edges, 13, 13, torch.full((edges.size(1),), 0.5))
    g = layer.read_input(torch.randn(13, 40), weighted, None)
    assert g.edge_weight is not None and torch.all(g.edge_weight == 0.5)


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
