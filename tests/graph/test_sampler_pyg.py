"""NeighborSampler inside PyG: NodeLoader batches, edge features, trim_to_layer, SAGEConv."""

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.loader import NodeLoader
from torch_geometric.nn import GraphSAGE, SAGEConv

from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.csr import csr_from_edge_index
from lorap_dist.graph.sampler import NeighborSampler
from lorap_dist.graph.synthetic import generate_synthetic


@pytest.fixture(scope="module")
def data() -> Data:
    g = generate_synthetic(SyntheticConfig(num_nodes=500, avg_degree=10, seed=1))
    # Shuffle the edge columns so CSR order differs from edge order (exercises edge_ids).
    perm = torch.randperm(g.num_edges, generator=torch.Generator().manual_seed(0))
    edge_index = g.edge_index[:, perm]
    edge_attr = torch.arange(g.num_edges, dtype=torch.float).unsqueeze(1)
    return Data(x=g.x, y=g.y, edge_index=edge_index, edge_attr=edge_attr, train_idx=g.train_idx)


@pytest.fixture(scope="module")
def sampler(data: Data) -> NeighborSampler:
    csr = csr_from_edge_index(data.edge_index, data.num_nodes)
    return NeighborSampler.from_csr(csr, [5, 3], generator=torch.Generator().manual_seed(2))


def test_node_loader_batches_hold_sampled_subgraph(data, sampler):
    loader = NodeLoader(data, node_sampler=sampler, input_nodes=data.train_idx, batch_size=64)
    seen = []
    for batch in loader:
        n = batch.batch_size
        seen.append(batch.n_id[:n])
        assert torch.equal(batch.x, data.x[batch.n_id])
        assert torch.equal(batch.y, data.y[batch.n_id])
        assert torch.equal(batch.n_id[:n], data.train_idx[batch.input_id])
        # Every batch edge is the original edge e_id, with its own attribute.
        global_edges = batch.n_id[batch.edge_index]
        assert torch.equal(global_edges, data.edge_index[:, batch.e_id])
        assert torch.equal(batch.edge_attr, data.edge_attr[batch.e_id])
        assert sum(batch.num_sampled_nodes) == batch.num_nodes
        assert sum(batch.num_sampled_edges) == batch.num_edges
        assert batch.num_sampled_nodes[0] == n
    assert torch.equal(torch.cat(seen).sort().values, data.train_idx)


def test_pyg_trim_to_layer_agrees_with_untrimmed_model(data, sampler):
    """PyG's hop-wise trimming relies on the hop-ordered nodes and edges we return."""
    loader = NodeLoader(data, node_sampler=sampler, input_nodes=data.train_idx[:40], batch_size=40)
    batch = next(iter(loader))
    torch.manual_seed(0)
    model = GraphSAGE(data.num_features, 16, num_layers=2).eval()
    full = model(batch.x, batch.edge_index)[: batch.batch_size]
    trimmed = model(
        batch.x,
        batch.edge_index,
        num_sampled_nodes_per_hop=batch.num_sampled_nodes,
        num_sampled_edges_per_hop=batch.num_sampled_edges,
    )[: batch.batch_size]
    torch.testing.assert_close(trimmed, full)


def test_blocks_through_sageconv_equal_pyg_on_the_sampled_subgraph(data, sampler):
    """SAGEConv on trimmed blocks gives the seeds' outputs of the untrimmed subgraph loop."""
    seeds = data.train_idx[:30]
    batch = sampler.sample_blocks(seeds, torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    convs = [SAGEConv(data.num_features, 16), SAGEConv(16, 7)]
    x = data.x[batch.node_ids]
    h = x
    for conv, block in zip(convs, batch.blocks, strict=True):
        h = conv((h, h[: block.num_dst]), block.edge_index, size=(block.num_src, block.num_dst))
    # The same edges as one subgraph over all sampled nodes, every layer on every node.
    edge_index = batch.blocks[0].edge_index
    full = x
    for conv in convs:
        full = conv(full, edge_index)
    torch.testing.assert_close(h, full[: batch.seed_count])


def test_sample_from_edges_is_refused_with_a_sentence(sampler):
    with pytest.raises(NotImplementedError, match="seed nodes"):
        sampler.sample_from_edges(None)
