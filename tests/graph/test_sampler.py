"""NeighborSampler: exactness against a brute-force sampler, uniformity, block structure."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import lorap_dist.graph.sampler as sampler_module
from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.csr import CSR, csr_from_edge_index
from lorap_dist.graph.sampler import MiniBatch, NeighborSampler, iter_minibatches
from lorap_dist.graph.synthetic import generate_synthetic

P_MIN = 1e-3  # loose chi-square threshold; every draw below uses a fixed seed


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def graph() -> tuple[CSR, int]:
    g = generate_synthetic(SyntheticConfig(num_nodes=600, avg_degree=12, seed=3))
    return csr_from_edge_index(g.edge_index, g.num_nodes), g.num_nodes


def star(num_leaves: int, num_hubs: int = 1) -> CSR:
    """``num_hubs`` hub nodes (IDs ``0..num_hubs-1``), each with the same in-neighbours."""
    leaves = torch.arange(num_hubs, num_hubs + num_leaves)
    src = leaves.repeat(num_hubs)
    dst = torch.arange(num_hubs).repeat_interleave(num_leaves)
    return csr_from_edge_index(torch.stack([src, dst]), num_hubs + num_leaves)


def brute_force(csr: CSR, seeds: list[int], choose) -> dict:
    """Directional multi-hop sampling, one node at a time in plain Python.

    ``choose(hop, v)`` returns the CSR positions of the in-edges node ``v`` keeps at ``hop``.
    New nodes of a hop get local indices in ascending global-ID order, as the sampler does.
    """
    local = {v: i for i, v in enumerate(seeds)}
    nodes, frontier = list(seeds), list(seeds)
    row, col, edge, n_nodes, n_edges = [], [], [], [len(seeds)], []
    for hop in range(choose.hops):
        drawn = [(v, p, int(csr.indices[p])) for v in frontier for p in choose(hop, v)]
        new = sorted({u for _, _, u in drawn if u not in local})
        for u in new:
            local[u] = len(nodes)
            nodes.append(u)
        for v, p, u in drawn:
            row.append(local[u])
            col.append(local[v])
            edge.append(p)
        n_nodes.append(len(new))
        n_edges.append(len(drawn))
        frontier = new
    return dict(node=nodes, row=row, col=col, edge=edge, n_nodes=n_nodes, n_edges=n_edges)


class TakeAll:
    def __init__(self, csr: CSR, hops: int) -> None:
        self.csr, self.hops = csr, hops

    def __call__(self, hop: int, v: int) -> range:
        return range(int(self.csr.indptr[v]), int(self.csr.indptr[v + 1]))


class Replay:
    """The CSR positions a sampler output chose for each (hop, destination)."""

    def __init__(self, out, hops: int) -> None:
        self.hops, self.chosen = hops, {}
        ends = np.cumsum([0, *out.num_sampled_edges])
        for hop in range(hops):
            for i in range(ends[hop], ends[hop + 1]):
                dst = int(out.node[out.col[i]])
                self.chosen.setdefault((hop, dst), []).append(int(out.edge[i]))

    def __call__(self, hop: int, v: int) -> list[int]:
        return self.chosen.get((hop, v), [])


def assert_matches(out, ref: dict) -> None:
    assert out.node.tolist() == ref["node"]
    assert out.row.tolist() == ref["row"]
    assert out.col.tolist() == ref["col"]
    assert out.edge.tolist() == ref["edge"]
    assert out.num_sampled_nodes == ref["n_nodes"]
    assert out.num_sampled_edges == ref["n_edges"]


def test_csr_from_edge_index_groups_in_edges_by_destination():
    edge_index = torch.tensor([[1, 2, 0, 2, 3], [0, 0, 1, 3, 0]])
    csr = csr_from_edge_index(edge_index, 5)
    assert csr.indptr.tolist() == [0, 3, 4, 4, 5, 5]
    assert csr.indices.tolist() == [1, 2, 3, 0, 2]
    assert csr.indices.dtype == torch.int32
    assert edge_index[:, csr.edge_ids].tolist() == [[1, 2, 3, 0, 2], [0, 0, 0, 1, 3]]
    assert csr.in_degree().tolist() == [3, 1, 0, 1, 0]


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("hops", [1, 2, 3])
def test_fanout_all_equals_brute_force(graph, index_dtype, hops):
    csr, _ = graph
    csr = CSR(csr.indptr, csr.indices.to(index_dtype))
    seeds = [17, 3, 250, 99, 511]
    out = NeighborSampler.from_csr(csr, [-1] * hops).sample(torch.tensor(seeds))
    assert_matches(out, brute_force(csr, seeds, TakeAll(csr, hops)))


@pytest.mark.parametrize("fanouts", [[5, 3, 2], [2, 2], [4, -1]])
def test_random_sample_equals_brute_force_given_same_choices(graph, fanouts):
    csr, _ = graph
    seeds = [5, 40, 41, 300, 7, 599]
    out = NeighborSampler.from_csr(csr, fanouts).sample(torch.tensor(seeds), gen(1))
    assert_matches(out, brute_force(csr, seeds, Replay(out, len(fanouts))))


@pytest.mark.parametrize("force_sort", [False, True])
@pytest.mark.parametrize("fanouts", [[6, 4, 3], [1, 1]])
def test_fanout_respected_edges_exist_no_repeats(graph, monkeypatch, force_sort, fanouts):
    if force_sort:
        monkeypatch.setattr(sampler_module, "FLOYD_MAX_FANOUT", 0)
    csr, _ = graph
    seeds = torch.randperm(600, generator=gen(2))[:64]
    out = NeighborSampler.from_csr(csr, fanouts).sample(seeds, gen(3))
    deg = csr.in_degree()
    # Every edge exists: its CSR position lies in the destination's row and holds the source.
    src, dst = out.node[out.row], out.node[out.col]
    assert torch.equal(csr.indices[out.edge].long(), src)
    assert bool(((csr.indptr[dst] <= out.edge) & (out.edge < csr.indptr[dst + 1])).all())
    assert out.node[: len(seeds)].tolist() == seeds.tolist()
    assert torch.unique(out.node).numel() == out.node.numel()
    # Each frontier node draws min(deg, fanout) distinct in-edges.
    node_ends = np.cumsum(out.num_sampled_nodes)
    edge_ends = np.cumsum([0, *out.num_sampled_edges])
    for hop, fanout in enumerate(fanouts):
        frontier = torch.arange(node_ends[hop] - out.num_sampled_nodes[hop], node_ends[hop])
        hop_col = out.col[edge_ends[hop] : edge_ends[hop + 1]]
        hop_edge = out.edge[edge_ends[hop] : edge_ends[hop + 1]]
        counts = torch.bincount(hop_col - int(frontier[0]), minlength=frontier.numel())
        assert torch.equal(counts, deg[out.node[frontier]].clamp(max=fanout))
        pairs = torch.stack([hop_col, hop_edge]).T
        assert torch.unique(hop_edge).numel() == hop_edge.numel() == pairs.size(0)


def test_replace_draws_exactly_fanout_per_node_with_neighbors():
    csr = star(3, num_hubs=4)
    out = NeighborSampler.from_csr(csr, [10], replace=True).sample(torch.arange(5), gen())
    assert torch.bincount(out.col, minlength=5).tolist() == [10, 10, 10, 10, 0]
    assert bool((csr.indices[out.edge].long() == out.node[out.row]).all())


@pytest.mark.parametrize("force_sort", [False, True])
@pytest.mark.parametrize("degree,fanout", [(6, 3), (5, 1), (7, 6)])
def test_every_subset_equally_likely(monkeypatch, force_sort, degree, fanout):
    """Chi-square over all C(degree, fanout) subsets a hub can draw."""
    if force_sort:
        monkeypatch.setattr(sampler_module, "FLOYD_MAX_FANOUT", 0)
    hubs = 400
    csr = star(degree, num_hubs=hubs)
    sampler = NeighborSampler.from_csr(csr, [fanout])
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(degree), fanout))}
    counts = np.zeros(len(subsets))
    g = gen(11)
    for _ in range(10):
        out = sampler.sample(torch.arange(hubs), g)
        offsets = (out.edge - csr.indptr[out.node[out.col]]).view(hubs, fanout)
        for row in offsets.sort(1).values.tolist():
            counts[subsets[tuple(row)]] += 1
    assert chisquare(counts).pvalue > P_MIN


@pytest.mark.parametrize("fanout", [15, sampler_module.FLOYD_MAX_FANOUT + 72])
def test_high_degree_node_draws_each_neighbor_equally_often(fanout):
    degree, hubs = 3000, 40
    csr = star(degree, num_hubs=hubs)
    sampler = NeighborSampler.from_csr(csr, [fanout])
    counts = torch.zeros(degree)
    g = gen(5)
    for _ in range(25 if fanout == 15 else 3):
        out = sampler.sample(torch.arange(hubs), g)
        offsets = out.edge - csr.indptr[out.node[out.col]]
        assert torch.unique(out.edge).numel() == out.edge.numel() == hubs * fanout
        counts += torch.bincount(offsets, minlength=degree)
    assert chisquare(counts.numpy()).pvalue > P_MIN


def test_star_graph_leaves_reached_uniformly():
    csr = star(12)
    sampler = NeighborSampler.from_csr(csr, [4])
    counts = np.zeros(13)
    g = gen(9)
    for _ in range(3000):
        counts[sampler.sample(torch.tensor([0]), g).node[1:]] += 1
    assert counts[0] == 0
    assert chisquare(counts[1:]).pvalue > P_MIN


def check_blocks(batch: MiniBatch, seeds: torch.Tensor, csr: CSR, hops: int) -> None:
    blocks = batch.blocks
    assert len(blocks) == hops
    assert batch.seed_count == seeds.numel() == blocks[-1].num_dst
    assert blocks[0].num_src == batch.node_ids.numel()
    assert torch.equal(batch.node_ids[: seeds.numel()], seeds)
    for layer, block in enumerate(blocks):
        ei = block.edge_index
        assert ei.dtype == torch.int64
        assert bool((ei[0] < block.num_src).all()) and bool((ei[1] < block.num_dst).all())
        src, dst = batch.node_ids[ei[0]], batch.node_ids[ei[1]]
        pos = batch.edge_ids[: ei.size(1)]
        assert torch.equal(csr.indices[pos].long(), src)
        assert bool(((csr.indptr[dst] <= pos) & (pos < csr.indptr[dst + 1])).all())
        if layer + 1 < hops:
            assert block.num_dst == blocks[layer + 1].num_src
            assert ei.size(1) >= blocks[layer + 1].edge_index.size(1)


def mean_sage(x: torch.Tensor, edge_index: torch.Tensor, num_dst: int, w: torch.Tensor):
    """``x_dst + mean_{src -> dst} x_src`` then a linear map: a minimal SAGE layer."""
    agg = torch.zeros(num_dst, x.size(1), dtype=x.dtype).index_add_(
        0, edge_index[1], x[edge_index[0]]
    )
    deg = torch.bincount(edge_index[1], minlength=num_dst).clamp(min=1).unsqueeze(1)
    return torch.tanh((x[:num_dst] + agg / deg) @ w)


def test_blocks_with_all_neighbors_reproduce_full_graph_model(graph):
    csr, n = graph
    hops = 3
    seeds = torch.tensor([8, 100, 3, 420])
    batch = NeighborSampler.from_csr(csr, [-1] * hops).sample_blocks(seeds)
    check_blocks(batch, seeds, csr, hops)
    x = torch.randn(n, 8, generator=gen(), dtype=torch.float64)
    ws = [torch.randn(8, 8, generator=gen(i), dtype=torch.float64) for i in range(hops)]
    full_ei = torch.stack([csr.indices.long(), torch.arange(n).repeat_interleave(csr.in_degree())])
    full, h = x, x[batch.node_ids]
    for w, block in zip(ws, batch.blocks, strict=True):
        full = mean_sage(full, full_ei, n, w)
        h = mean_sage(h, block.edge_index, block.num_dst, w)
    torch.testing.assert_close(h, full[seeds])


def test_sampled_blocks_consistent(graph):
    csr, _ = graph
    seeds = torch.randperm(600, generator=gen(4))[:50]
    batch = NeighborSampler.from_csr(csr, [7, 4, 2]).sample_blocks(seeds, gen(6))
    check_blocks(batch, seeds, csr, 3)


def test_isolated_seed_gives_empty_blocks():
    csr = star(3)
    batch = NeighborSampler.from_csr(csr, [2, 2]).sample_blocks(torch.tensor([2]))
    assert [(b.num_src, b.num_dst, b.edge_index.size(1)) for b in batch.blocks] == [
        (1, 1, 0),
        (1, 1, 0),
    ]


def test_same_generator_seed_same_batch(graph):
    csr, _ = graph
    sampler = NeighborSampler.from_csr(csr, [5, 5])
    seeds = torch.arange(0, 600, 7)
    a, b = sampler.sample(seeds, gen(42)), sampler.sample(seeds, gen(42))
    c = sampler.sample(seeds, gen(43))
    assert torch.equal(a.node, b.node) and torch.equal(a.edge, b.edge)
    assert not torch.equal(a.edge, c.edge)
    d = NeighborSampler.from_csr(csr, [5, 5], generator=gen(42)).sample(seeds)
    assert torch.equal(a.edge, d.edge)


def test_iter_minibatches_covers_seeds_once_and_reproduces(graph):
    csr, _ = graph
    sampler = NeighborSampler.from_csr(csr, [3, 2])
    seeds = torch.arange(100, 203)
    batches = list(iter_minibatches(sampler, seeds, 25, gen(1)))
    assert [b.seed_count for b in batches] == [25, 25, 25, 25, 3]
    firsts = torch.cat([b.node_ids[: b.seed_count] for b in batches])
    assert sorted(firsts.tolist()) == seeds.tolist()
    again = list(iter_minibatches(sampler, seeds, 25, gen(1)))
    assert all(torch.equal(a.edge_ids, b.edge_ids) for a, b in zip(batches, again, strict=True))
    dropped = list(iter_minibatches(sampler, seeds, 25, gen(1), drop_last=True))
    assert len(dropped) == 4
    ordered = list(iter_minibatches(sampler, seeds, 50, shuffle=False))
    assert torch.equal(ordered[0].node_ids[:50], seeds[:50])


def test_memory_mapped_csr_is_read_in_place(graph, tmp_path):
    csr, _ = graph
    np.save(tmp_path / "indptr.npy", csr.indptr.numpy())
    np.save(tmp_path / "indices.npy", csr.indices.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays: torch warns once
        indptr = torch.from_numpy(np.load(tmp_path / "indptr.npy", mmap_mode="r"))
        indices = torch.from_numpy(np.load(tmp_path / "indices.npy", mmap_mode="r"))
    sampler = NeighborSampler(indptr, indices, [4, 3])
    assert sampler.indices.data_ptr() == indices.data_ptr()
    seeds = torch.tensor([1, 2, 3, 500])
    mapped = sampler.sample_blocks(seeds, gen(8))
    memory = NeighborSampler.from_csr(csr, [4, 3]).sample_blocks(seeds, gen(8))
    assert torch.equal(mapped.node_ids, memory.node_ids)
    assert torch.equal(mapped.blocks[0].edge_index, memory.blocks[0].edge_index)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fanouts", [[-1, -1], [6, 3, 2], [200]])
def test_cuda_matches_cpu_with_the_same_generator(graph, fanouts):
    csr, _ = graph
    seeds = torch.arange(0, 600, 11)
    cpu = NeighborSampler.from_csr(csr, fanouts).sample_blocks(seeds, gen(3))
    cuda_sampler = NeighborSampler(csr.indptr.cuda(), csr.indices.cuda(), fanouts)
    cuda = cuda_sampler.sample_blocks(seeds.cuda(), gen(3))  # CPU generator: same draws
    assert torch.equal(cuda.node_ids.cpu(), cpu.node_ids)
    assert torch.equal(cuda.edge_ids.cpu(), cpu.edge_ids)
    for a, b in zip(cuda.blocks, cpu.blocks, strict=True):
        assert torch.equal(a.edge_index.cpu(), b.edge_index)
    on_device = cuda_sampler.sample_blocks(seeds.cuda(), torch.Generator("cuda").manual_seed(3))
    check_blocks(on_device.to("cpu"), seeds, csr, len(fanouts))


def test_bad_inputs_raise_sentences(graph):
    csr, _ = graph
    with pytest.raises(ValueError, match="fanouts"):
        NeighborSampler.from_csr(csr, [5, 0])
    with pytest.raises(ValueError, match="fanouts"):
        NeighborSampler.from_csr(csr, [])
    with pytest.raises(ValueError, match="indptr\\[-1\\]"):
        NeighborSampler(csr.indptr, csr.indices[:-1], [2])
    with pytest.raises(ValueError, match="int64"):
        NeighborSampler(csr.indptr.int(), csr.indices, [2])
    sampler = NeighborSampler.from_csr(csr, [2])
    with pytest.raises(ValueError, match="repeated"):
        sampler.sample(torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="600 nodes"):
        sampler.sample(torch.tensor([600]))
    with pytest.raises(ValueError, match="empty"):
        sampler.sample(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_minibatches(sampler, torch.arange(4), 0))
