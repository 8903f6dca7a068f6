import torch

from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.synthetic import generate_synthetic, iter_synthetic_edges, symmetrize


def test_same_config_same_graph_and_other_seed_other_graph():
    cfg = SyntheticConfig(num_nodes=500, seed=3)
    a, b = generate_synthetic(cfg), generate_synthetic(cfg)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)
    c = generate_synthetic(SyntheticConfig(num_nodes=500, seed=4))
    assert not torch.equal(a.edge_index, c.edge_index)


def test_graph_is_symmetric_without_self_loops_or_repeats():
    g = generate_synthetic(SyntheticConfig(num_nodes=400))
    src, dst = g.edge_index
    assert not (src == dst).any()
    keys = src * g.num_nodes + dst
    assert keys.unique().numel() == keys.numel()
    reverse = dst * g.num_nodes + src
    assert torch.equal(keys.sort().values, reverse.sort().values)


def test_homophily_and_heavy_tailed_degrees():
    cfg = SyntheticConfig(num_nodes=4000, homophily=0.8, avg_degree=12)
    g = generate_synthetic(cfg)
    same = (g.y[g.edge_index[0]] == g.y[g.edge_index[1]]).float().mean().item()
    # Edges leaving the class still land in it with probability 1/C.
    expected = cfg.homophily + (1 - cfg.homophily) / cfg.num_classes
    assert abs(same - expected) < 0.05
    deg = g.in_degree().float()
    assert deg.max() > 10 * deg.median()  # hubs
    assert abs(deg.mean().item() - cfg.avg_degree) < 0.35 * cfg.avg_degree


def test_features_carry_the_class():
    g = generate_synthetic(SyntheticConfig(num_nodes=2000, feature_noise=0.5))
    centroids = torch.stack([g.x[g.y == c].mean(0) for c in range(g.num_classes)])
    nearest = torch.cdist(g.x, centroids).argmin(1)
    assert (nearest == g.y).float().mean() > 0.9


def test_splits_partition_the_nodes():
    g = generate_synthetic(SyntheticConfig(num_nodes=1000))
    every = torch.cat([g.train_idx, g.valid_idx, g.test_idx]).sort().values
    assert torch.equal(every, torch.arange(1000))


def test_chunks_cover_the_requested_edge_count():
    cfg = SyntheticConfig(num_nodes=1000, avg_degree=8)
    chunks = list(iter_synthetic_edges(cfg, chunk_edges=700))
    assert all(c.size(1) <= 700 for c in chunks)
    assert sum(c.size(1) for c in chunks) == 4000


def test_symmetrize_dedups_and_drops_loops():
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 1, 0]])
    out = symmetrize(ei, 3)
    assert sorted(map(tuple, out.t().tolist())) == [(0, 1), (0, 2), (1, 0), (2, 0)]
