import pytest
import torch
from torch_geometric.nn import GCNConv

from lorap_dist.config import PromptConfig
from lorap_dist.graph import Block, NodeInfo
from lorap_dist.nn import QGCNConv, block_gcn_norm
from lorap_dist.testing.graphs import (
    GRAPH_FORMS,
    full_block,
    graph_form,
    in_neighbour_block,
    random_graph,
)
from lorap_dist.testing.layers import assert_same_outputs_and_grads, copy_parameters

NAMES = {"lin.weight": "lin.weight", "bias": "bias"}


def pair(in_channels: int, out_channels: int, seed: int) -> tuple[QGCNConv, GCNConv]:
    torch.manual_seed(seed)
    ours, theirs = QGCNConv(in_channels, out_channels), GCNConv(in_channels, out_channels)
    torch.nn.init.normal_(theirs.bias)  # PyG starts it at zero, which would hide a bias bug
    copy_parameters(ours, theirs, NAMES)
    return ours, theirs


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("channels", [(5, 3), (8, 16)])
def test_matches_pyg_gcnconv(seed: int, channels: tuple[int, int]) -> None:
    ours, theirs = pair(*channels, seed)
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


@pytest.mark.parametrize("form", GRAPH_FORMS)
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_pyg_gcnconv_on_each_graph_form(form: str, weighted: bool) -> None:
    """Self loops and repeated edges included: PyG adds a unit loop on top of a sparse
    adjacency's diagonal entry but keeps an edge_index's own loop, and so must we."""
    ours, theirs = pair(6, 4, seed=5)
    edge_index = random_graph(13, 30, seed=5)
    weight = torch.rand(edge_index.size(1)) + 0.5 if weighted else None
    graph = graph_form(form, edge_index, 13, 13, weight)
    args = (graph,) if form in ("coo", "csr") else (graph, weight)  # sparse: weights as values
    assert_same_outputs_and_grads(
        ours, theirs, NAMES, torch.randn(13, 6), lambda m, x: m(x, *args), lambda m, x: m(x, *args)
    )


def test_edge_weight_on_a_block_normalises_like_pyg_on_the_sampled_subgraph() -> None:
    ours, theirs = pair(6, 4, seed=6)
    edge_index = random_graph(15, 35, seed=6)
    block, src_ids = in_neighbour_block(edge_index, torch.tensor([0, 5, 9, 14]))
    weight = torch.rand(block.edge_index.size(1)) + 0.5
    x_src = torch.randn(block.num_src, 6)
    expected = theirs(x_src, block.edge_index, weight)[: block.num_dst]
    torch.testing.assert_close(ours(x_src, block, weight), expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(ours(x_src, block), expected, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 3])
def test_full_block_equals_full_graph(seed: int) -> None:
    layer = QGCNConv(6, 4, prompt=PromptConfig(kind="lorap", k=3, r=2))
    torch.nn.init.normal_(layer.lorap.p_b)
    edge_index = random_graph(11, 25, seed)
    x = torch.randn(11, 6)
    torch.testing.assert_close(layer(x, full_block(edge_index, 11)), layer(x, edge_index))


@pytest.mark.parametrize("seed", [0, 4])
def test_block_normalises_like_pyg_on_the_sampled_subgraph(seed: int) -> None:
    """Sources that are not destinations have no in-edges in the block, so their degree is 1
    (their self loop), as for PyG's GCNConv on the sampled subgraph."""
    ours, theirs = pair(6, 4, seed)
    edge_index = random_graph(15, 35, seed)
    x = torch.randn(15, 6)
    block, src_ids = in_neighbour_block(edge_index, torch.tensor([0, 5, 9, 14]))
    assert block.num_src > block.num_dst
    x_src = x[src_ids]
    expected = theirs(x_src, block.edge_index)[: block.num_dst]
    torch.testing.assert_close(ours(x_src, block), expected, atol=1e-6, rtol=1e-5)
    full_graph = ours(x, edge_index)[torch.tensor([0, 5, 9, 14])]
    assert not torch.allclose(ours(x_src, block), full_graph, atol=1e-4)


def test_block_norm_drops_only_the_self_loops_of_pure_sources() -> None:
    edge_index = torch.tensor([[2, 3, 1, 3], [0, 0, 1, 1]])
    index, weight = block_gcn_norm(edge_index, size=(4, 2))
    pairs = {(int(s), int(d)): float(w) for (s, d), w in zip(index.t(), weight, strict=True)}
    # degrees with self loops: node 0 -> 3, node 1 -> 2 (its own loop is not added twice),
    # sources 2 and 3 -> 1 (no in-edges in the block)
    expected = {
        (2, 0): 3**-0.5,
        (3, 0): 3**-0.5,
        (0, 0): 1 / 3,
        (1, 1): 1 / 2,
        (3, 1): 2**-0.5,
    }
    assert pairs.keys() == expected.keys()
    for key, value in expected.items():
        assert pairs[key] == pytest.approx(value)


def test_errors_name_the_input() -> None:
    layer = QGCNConv(3, 2)
    with pytest.raises(ValueError, match="num_src=5"):
        layer(torch.randn(4, 3), Block(torch.zeros(2, 0, dtype=torch.long), 5, 2))
    with pytest.raises(TypeError, match="Block"):
        layer((torch.randn(4, 3), torch.randn(2, 3)), torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        layer(torch.randn(4, 3), torch.zeros(3, 1, dtype=torch.long))
    edge_index = random_graph(4, 5, seed=0, isolated=0)
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"edge_weight as one weight per edge, \[9\]"):
        layer(x, edge_index, torch.ones(8))
    adj = graph_form("coo", edge_index, 4, 4)
    with pytest.raises(ValueError, match="values are its edge weights; leave edge_weight None"):
        layer(x, adj, torch.ones(9))
    with pytest.raises(ValueError, match="one tensor of 4 rows.*num_dst=3"):
        layer(x, graph_form("csr", edge_index[:, edge_index[1] < 3], 4, 3))
    with pytest.raises(ValueError, match="x with 4 rows, but the adjacency's shape"):
        layer(x, graph_form("coo", edge_index, 5, 5))
    with pytest.raises(TypeError, match="QGCNConv got node facts both as its third argument"):
        layer(x, edge_index, NodeInfo(), nodes=NodeInfo())
    with pytest.raises(TypeError, match="takes its graph as an edge_index tensor"):
        layer(x, edge_index.tolist())


def test_reset_repr_and_points() -> None:
    layer = QGCNConv(3, 2, prompt=PromptConfig(kind="lorap", k=4, r=2))
    assert layer.QUANT_POINTS == dict.fromkeys(["input", "message", "prompt", "output"], "node")
    twice = QGCNConv(3, 2, prompt=PromptConfig(kind="lorap", rounding="twice"))
    assert list(twice.QUANT_POINTS) == ["input", "message", "aggregate", "prompt", "output"]
    assert set(QGCNConv(3, 2).QUANT_POINTS) == {"input", "message", "aggregate", "output"}
    assert repr(layer) == "QGCNConv(3, 2, lorap=(k=4, r=2))"
    with torch.no_grad():
        layer.bias.fill_(1.0)
        layer.lorap.p_b.fill_(1.0)
    weight = layer.lin.weight.clone()
    layer.reset_parameters()
    assert torch.all(layer.bias == 0) and torch.all(layer.lorap.p_b == 0)
    assert not torch.equal(layer.lin.weight, weight)


def loop_free(num_nodes: int, num_edges: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random graph without self loops (repeated edges kept) and its in-degrees."""
    edge_index = random_graph(num_nodes, num_edges, seed)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    return edge_index, torch.bincount(edge_index[1], minlength=num_nodes)


@pytest.mark.parametrize("seed", [0, 4])
def test_a_block_given_full_degrees_gives_the_full_graph_outputs(seed: int) -> None:
    """With the full graph's degrees in NodeInfo, a block holding every in-edge of its
    destinations gives them PyG's full-graph GCNConv outputs, though its pure sources have
    no in-edges in the block."""
    ours, theirs = pair(6, 4, seed)
    edge_index, degree = loop_free(15, 35, seed)
    dst = torch.tensor([0, 5, 9, 14])
    block, src_ids = in_neighbour_block(edge_index, dst)
    assert block.num_src > block.num_dst
    x = torch.randn(15, 6)
    out = ours(x[src_ids], block, nodes=NodeInfo(degree=degree[src_ids]))
    torch.testing.assert_close(out, theirs(x, edge_index)[dst], atol=1e-6, rtol=1e-5)


def test_full_degrees_weigh_a_sampled_destination_by_its_kept_share() -> None:
    # destination 0 kept 2 of its 4 in-edges (from sources 2 and 3, of degrees 1 and 3)
    index, weight = block_gcn_norm(
        torch.tensor([[2, 3], [0, 0]]), size=(4, 1), degree=torch.tensor([4, 0, 1, 3])
    )
    pairs = {(int(s), int(d)): float(w) for (s, d), w in zip(index.t(), weight, strict=True)}
    expected = {(2, 0): 2 * (5 * 2) ** -0.5, (3, 0): 2 * (5 * 4) ** -0.5, (0, 0): 1 / 5}
    assert pairs.keys() == expected.keys()
    for key, value in expected.items():
        assert pairs[key] == pytest.approx(value)


def test_over_every_sample_of_its_in_edges_a_destination_averages_its_full_graph_output() -> None:
    """Uniform sampling without replacement keeps each in-edge with probability s / d, which
    the weight d / s undoes: the mean over all samples of s in-edges is the exact output."""
    from itertools import combinations

    ours, theirs = pair(5, 3, seed=7)
    edge_index, degree = loop_free(12, 40, seed=7)
    node = int(torch.argmax(degree))
    into = edge_index[:, edge_index[1] == node]
    assert into.size(1) >= 4
    x = torch.randn(12, 5)
    ids = torch.cat([torch.tensor([node]), into[0]])  # the destination first, then sources
    outputs = []
    for kept in combinations(range(into.size(1)), 2):
        sources = torch.tensor([k + 1 for k in kept])
        block = Block(torch.stack([sources, torch.zeros(2, dtype=torch.long)]), ids.numel(), 1)
        outputs.append(ours(x[ids], block, nodes=NodeInfo(degree=degree[ids])))
    expected = theirs(x, edge_index)[node]
    torch.testing.assert_close(torch.stack(outputs).mean(0)[0], expected, atol=1e-5, rtol=1e-5)
