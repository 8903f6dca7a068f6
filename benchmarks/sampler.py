"""Claim: our vectorized sampler beats PyG's NeighborLoader >= 5x, trimmed training >= 3x.

On an ogbn-products-sized generated graph (2.4 M nodes, ~122 M directed edges, 100-dim
features), fanouts [15, 10, 5], batch 1024, on the same seed batches:

1. sampling throughput *including the feature gather* ``x[node_ids]``: sampled edges/s and
   nodes/s for ``NeighborSampler.sample_blocks`` and for PyG's ``NeighborLoader``;
2. one FP32 training step of a 3-layer GraphSAGE (hidden 256, mean aggregation): ours runs
   PyG's ``SAGEConv`` on the trimmed blocks (layer l computes only what layer l+1 reads),
   PyG runs the standard ``NeighborLoader`` + ``SAGEConv`` loop on the whole sampled
   subgraph at every layer;
3. the without-replacement draw (Floyd vs sorted random keys) on a real hop-3 frontier,
   the measurement behind ``sampler.FLOYD_MAX_FANOUT``.

PyG's NeighborLoader needs torch-sparse (or pyg-lib), which the project venv lacks, so the
PyG half runs in a subprocess with a separate benchmark venv (``--pyg-python``) on the same
cached CSR, features and seed batches. The graph is generated once and cached as ``.npy``
under ``--cache``. Run under the machine's heavy-work lock::

    .venv/bin/python benchmarks/sampler.py
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-nodes", type=int, default=2_400_000)
    p.add_argument("--avg-degree", type=float, default=58.5)  # -> 122.6 M directed edges
    p.add_argument("--num-features", type=int, default=100)
    p.add_argument("--fanouts", type=int, nargs="+", default=[15, 10, 5])
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--sample-batches", type=int, default=12, help="timed, after 1 warm-up")
    p.add_argument("--step-batches", type=int, default=3, help="timed, after 1 warm-up")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path("/tmp/lorap-bench"))
    p.add_argument("--pyg-python", default="/tmp/lorap-bench/pyg-venv/bin/python")
    p.add_argument("--prepare-only", action="store_true")
    p.add_argument("--pyg-worker", type=Path, help=argparse.SUPPRESS)  # graph dir (internal)
    return p.parse_args()


# 1. The cached graph -------------------------------------------------------------------


def graph_dir(args: argparse.Namespace) -> Path:
    name = f"synthetic-n{args.num_nodes}-d{args.avg_degree:g}-f{args.num_features}-s{args.seed}"
    return args.cache / name


def prepare(args: argparse.Namespace) -> Path:
    """Generate the graph straight into CSR form (int64 indptr, int32 indices) and cache it.

    The symmetrized edges are deduplicated as ``dst * N + src`` keys, whose sorted order is
    already the CSR order, so no edge_index is ever materialised.
    """
    from lorap_dist.config import SyntheticConfig
    from lorap_dist.graph.synthetic import (
        iter_synthetic_edges,
        synthetic_features,
        synthetic_labels,
    )

    out = graph_dir(args)
    if (out / "done").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    n = args.num_nodes
    cfg = SyntheticConfig(
        num_nodes=n, avg_degree=args.avg_degree, num_features=args.num_features, seed=args.seed
    )
    t0 = time.perf_counter()
    keys = []
    for chunk in iter_synthetic_edges(cfg):
        chunk = chunk[:, chunk[0] != chunk[1]]
        keys += [chunk[1] * n + chunk[0], chunk[0] * n + chunk[1]]
    key = torch.cat(keys)
    del keys
    key = torch.unique(key)
    np.save(out / "indices.npy", (key % n).to(torch.int32).numpy())
    indptr = torch.zeros(n + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(key // n, minlength=n), 0, out=indptr[1:])
    del key
    np.save(out / "indptr.npy", indptr.numpy())
    y = synthetic_labels(cfg)
    np.save(out / "y.npy", y.numpy())
    x = np.lib.format.open_memmap(out / "x.npy", "w+", np.float32, (n, args.num_features))
    step = 1 << 18
    for start in range(0, n, step):
        x[start : start + step] = synthetic_features(cfg, y[start : start + step], start).numpy()
    x.flush()
    del x
    (out / "done").write_text(f"{time.perf_counter() - t0:.1f} s\n")
    return out


def seed_batches(args: argparse.Namespace, count: int) -> list[torch.Tensor]:
    """The same ``count`` seed batches for both samplers: disjoint random node IDs."""
    perm = torch.randperm(args.num_nodes, generator=torch.Generator().manual_seed(args.seed))
    return list(perm[: count * args.batch_size].split(args.batch_size))


def load(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``indptr, indices`` memory-mapped; ``x, y`` read into memory (as PyG's Data holds them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only maps: we never write them
        indptr = torch.from_numpy(np.load(path / "indptr.npy", mmap_mode="r"))
        indices = torch.from_numpy(np.load(path / "indices.npy", mmap_mode="r"))
    x = torch.from_numpy(np.load(path / "x.npy"))
    return indptr, indices, x, torch.from_numpy(np.load(path / "y.npy"))


# 2. Ours -----------------------------------------------------------------------------


def throughput(
    edges: list[int], nodes: list[int], secs: list[float], step_secs: list[float]
) -> dict:
    """What both loaders report: sampled edges and nodes per second of sampling, the mean
    batch time and size, and the mean training step."""
    return {
        "edges_per_s": sum(edges) / sum(secs),
        "nodes_per_s": sum(nodes) / sum(secs),
        "batch_s": sum(secs) / len(secs),
        "mean_edges_per_batch": sum(edges) / len(edges),
        "mean_nodes_per_batch": sum(nodes) / len(nodes),
        "step_s": sum(step_secs) / len(step_secs),
    }


def make_convs(args: argparse.Namespace, num_classes: int) -> torch.nn.ModuleList:
    from torch_geometric.nn import SAGEConv

    torch.manual_seed(args.seed)
    dims = [args.num_features] + [args.hidden] * (len(args.fanouts) - 1) + [num_classes]
    return torch.nn.ModuleList(
        SAGEConv(a, b, aggr="mean") for a, b in zip(dims[:-1], dims[1:], strict=True)
    )


def run_ours(args: argparse.Namespace, path: Path) -> dict:
    from lorap_dist.graph.sampler import NeighborSampler

    indptr, indices, x, y = load(path)
    sampler = NeighborSampler(indptr, indices, args.fanouts)
    batches = seed_batches(args, 1 + max(args.sample_batches, args.step_batches))
    gen = torch.Generator().manual_seed(args.seed)

    edges, nodes, secs = [], [], []
    for i, seeds in enumerate(batches[: 1 + args.sample_batches]):
        t0 = time.perf_counter()
        batch = sampler.sample_blocks(seeds, gen)
        feats = x[batch.node_ids]
        dt = time.perf_counter() - t0
        if i:
            edges.append(batch.blocks[0].edge_index.size(1))
            nodes.append(feats.size(0))
            secs.append(dt)

    convs = make_convs(args, int(y.max()) + 1)
    opt = torch.optim.Adam(convs.parameters(), lr=1e-3)
    step_secs, block_sizes = [], None
    for i, seeds in enumerate(batches[: 1 + args.step_batches]):
        batch = sampler.sample_blocks(seeds, gen)
        feats, labels = x[batch.node_ids], y[seeds]
        t0 = time.perf_counter()
        h = feats
        for layer, (conv, block) in enumerate(zip(convs, batch.blocks, strict=True)):
            h = conv((h, h[: block.num_dst]), block.edge_index, size=(block.num_src, block.num_dst))
            h = h.relu() if layer + 1 < len(convs) else h
        loss = torch.nn.functional.cross_entropy(h, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            step_secs.append(time.perf_counter() - t0)
        block_sizes = [(b.num_src, b.num_dst, b.edge_index.size(1)) for b in batch.blocks]

    draw = measure_draws(sampler, batches[0], gen)
    return {
        **throughput(edges, nodes, secs, step_secs),
        "step_blocks_src_dst_edges": block_sizes,
        "draw_strategy": draw,
    }


def measure_draws(sampler, seeds: torch.Tensor, gen: torch.Generator) -> dict:
    """Time both without-replacement draws on the over-full nodes of a real hop-3 frontier."""
    from lorap_dist.graph.sampler import _floyd_offsets, _sorted_key_offsets

    out = sampler.sample(seeds, gen)
    ends = np.cumsum(out.num_sampled_nodes)
    frontier = out.node[ends[-3] : ends[-2]][:50_000]  # (part of) the nodes the last hop expands
    deg = sampler.indptr[frontier + 1] - sampler.indptr[frontier]
    table = {"frontier_nodes": frontier.numel(), "mean_degree": float(deg.float().mean())}
    for fanout in (15, 64, 128, 256):
        full = deg[deg > fanout]
        row = {"over_full_nodes": full.numel()}
        for name, draw in (("floyd_s", _floyd_offsets), ("sort_s", _sorted_key_offsets)):
            t0 = time.perf_counter()
            draw(full, fanout, gen)
            row[name] = time.perf_counter() - t0
        table[f"fanout_{fanout}"] = row
    return table


# 3. PyG (runs in the benchmark venv) --------------------------------------------------


def run_pyg(args: argparse.Namespace, path: Path) -> dict:
    import torch_geometric.typing
    from torch_geometric.data import Data
    from torch_geometric.loader import NeighborLoader
    from torch_sparse import SparseTensor

    indptr, indices, x, y = load(path)
    n = indptr.numel() - 1
    # adj_t[dst, src]: its CSR is our in-edge CSR, so NeighborLoader skips its own sort.
    adj_t = SparseTensor(
        rowptr=indptr, col=indices.long(), sparse_sizes=(n, n), is_sorted=True, trust_data=True
    )
    data = Data(x=x, y=y, adj_t=adj_t, num_nodes=n)
    batches = seed_batches(args, 1 + max(args.sample_batches, args.step_batches))
    torch.manual_seed(args.seed)

    def loader(count: int):
        return NeighborLoader(
            data,
            num_neighbors=args.fanouts,
            input_nodes=torch.cat(batches[:count]),
            batch_size=args.batch_size,
            shuffle=False,
        )

    edges, nodes, secs = [], [], []
    it = iter(loader(1 + args.sample_batches))
    for i in range(1 + args.sample_batches):
        t0 = time.perf_counter()
        batch = next(it)
        dt = time.perf_counter() - t0
        if i:
            edges.append(batch.adj_t.nnz())
            nodes.append(batch.x.size(0))
            secs.append(dt)

    convs = make_convs(args, int(y.max()) + 1)
    opt = torch.optim.Adam(convs.parameters(), lr=1e-3)
    step_secs = []
    for i, batch in enumerate(loader(1 + args.step_batches)):
        t0 = time.perf_counter()
        h = batch.x
        for layer, conv in enumerate(convs):
            h = conv(h, batch.adj_t)
            h = h.relu() if layer + 1 < len(convs) else h
        loss = torch.nn.functional.cross_entropy(h[: batch.batch_size], batch.y[: batch.batch_size])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            step_secs.append(time.perf_counter() - t0)
        del h, loss, batch
    return {
        **throughput(edges, nodes, secs, step_secs),
        "backend": "torch-sparse" if torch_geometric.typing.WITH_TORCH_SPARSE else "pyg-lib",
        "torch_sparse_version": __import__("torch_sparse").__version__,
    }


# 4. Report ---------------------------------------------------------------------------


def write_results(
    args: argparse.Namespace, path: Path, ours: dict, pyg: dict | None, note: str
) -> dict:
    indptr = np.load(path / "indptr.npy", mmap_mode="r")
    result = {
        "command": ".venv/bin/python benchmarks/sampler.py " + " ".join(sys.argv[1:]),
        "graph": {
            "num_nodes": int(indptr.shape[0] - 1),
            "num_directed_edges": int(indptr[-1]),
            "num_features": args.num_features,
            "generator": f"SyntheticConfig(num_nodes={args.num_nodes}, "
            f"avg_degree={args.avg_degree}, num_features={args.num_features}, "
            f"seed={args.seed}), symmetrized + deduplicated",
        },
        "fanouts": args.fanouts,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "sample_batches": args.sample_batches,
        "step_batches": args.step_batches,
        "ours_edges_per_s": ours["edges_per_s"],
        "ours_nodes_per_s": ours["nodes_per_s"],
        "ours_step_s": ours["step_s"],
        "pyg_edges_per_s": pyg["edges_per_s"] if pyg else None,
        "pyg_nodes_per_s": pyg["nodes_per_s"] if pyg else None,
        "pyg_step_s": pyg["step_s"] if pyg else None,
        "sampling_ratio": ours["edges_per_s"] / pyg["edges_per_s"] if pyg else None,
        "step_ratio": pyg["step_s"] / ours["step_s"] if pyg else None,
        "ours": ours,
        "pyg": pyg,
        "note": note,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sampler.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "sampler.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    """The result as the Markdown table recorded beside the JSON."""
    ours, pyg = r["ours"], r["pyg"] or {}

    def fmt(v, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    g = r["graph"]
    lines = [
        "# Neighbour sampling and training step vs PyG NeighborLoader",
        "",
        f"Graph: {g['num_nodes']:,} nodes, {g['num_directed_edges']:,} directed edges, "
        f"{g['num_features']} features ({g['generator']}). Fanouts {r['fanouts']}, "
        f"batch {r['batch_size']}, {r['threads']} CPU threads, means over "
        f"{r['sample_batches']} sampling / {r['step_batches']} step batches after one warm-up.",
        "",
        "| | ours | PyG | ratio |",
        "|---|---|---|---|",
        f"| sampled edges/s (incl. x[node_ids]) | {fmt(r['ours_edges_per_s'], ',.0f')} | "
        f"{fmt(r['pyg_edges_per_s'], ',.0f')} | {fmt(r['sampling_ratio'], '.1f')}x |",
        f"| sampled nodes/s (incl. x[node_ids]) | {fmt(r['ours_nodes_per_s'], ',.0f')} | "
        f"{fmt(r['pyg_nodes_per_s'], ',.0f')} | "
        f"{fmt(r['ours_nodes_per_s'] / r['pyg_nodes_per_s'] if pyg else None, '.1f')}x |",
        f"| seconds per sampled batch | {ours['batch_s']:.3f} | "
        f"{fmt(pyg.get('batch_s'), '.3f')} | |",
        f"| edges / nodes per batch | {ours['mean_edges_per_batch']:,.0f} / "
        f"{ours['mean_nodes_per_batch']:,.0f} | {fmt(pyg.get('mean_edges_per_batch'), ',.0f')} / "
        f"{fmt(pyg.get('mean_nodes_per_batch'), ',.0f')} | |",
        f"| training step, s (3-layer SAGE, hidden 256, FP32) | {r['ours_step_s']:.3f} | "
        f"{fmt(r['pyg_step_s'], '.3f')} | {fmt(r['step_ratio'], '.1f')}x |",
        "",
        f"Our trimmed blocks (src, dst, edges) per layer: {ours['step_blocks_src_dst_edges']}.",
        "",
        "Without-replacement draw on the over-full nodes of a hop-3 frontier "
        f"({ours['draw_strategy']['frontier_nodes']:,} nodes, mean in-degree "
        f"{ours['draw_strategy']['mean_degree']:.0f}; one timing each, so single rows are noisy):",
        "",
        "| fanout | over-full nodes | Floyd, s | sorted keys, s |",
        "|---|---|---|---|",
    ]
    for key, row in ours["draw_strategy"].items():
        if key.startswith("fanout_"):
            lines.append(
                f"| {key[7:]} | {row['over_full_nodes']:,} | {row['floyd_s']:.3f} | "
                f"{row['sort_s']:.3f} |"
            )
    lines += ["", f"Note: {r['note']}", "", "Command:", "", "```", r["command"], "```", ""]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.pyg_worker:
        print(json.dumps(run_pyg(args, args.pyg_worker)))
        return
    path = prepare(args)
    if args.prepare_only:
        print(path)
        return
    ours = run_ours(args, path)
    print("ours", json.dumps(ours, indent=1), flush=True)
    gc.collect()  # release our features before the PyG worker loads its own copy
    cmd = [args.pyg_python, __file__, "--pyg-worker", str(path)] + sys.argv[1:]
    note = (
        "ours: plain PyG SAGEConv on trimmed blocks (the lab's quantized layers are not used); "
        "PyG: NeighborLoader (torch-sparse backend) + SAGEConv over the whole sampled subgraph "
        "at every layer (torch-sparse returns no per-hop counts, so PyG's trim_to_layer "
        "cannot be used without pyg-lib). Sampling times include x[node_ids]."
    )
    pyg = None
    if not Path(args.pyg_python).exists():
        note += f" PyG baseline unavailable: no benchmark venv at {args.pyg_python}."
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode == 0:
            pyg = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            note += f" PyG baseline unavailable: worker failed: {proc.stderr.strip()[-2000:]}"
    result = write_results(args, path, ours, pyg, note)
    print(json.dumps({k: v for k, v in result.items() if k not in ("ours", "pyg")}, indent=1))


if __name__ == "__main__":
    main()
