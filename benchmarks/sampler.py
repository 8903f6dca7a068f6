"""Target: our sampler >= 2x the fastest peer that installs, the training step >= 1.5x.

On an ogbn-products-sized generated graph (2.4 M nodes, ~122 M directed edges, 100-dim
features), fanouts [15, 10, 5], batch 1024, on the same seed batches:

1. sampling throughput *including the feature gather*, each side as its trainer gathers:
   ours ``index_select`` into one buffer kept across batches (``RowGather``, as the project's
   trainers and workers do; ``--fresh-rows``: a new tensor per batch), DGL
   ``x.index_select(0, input_nodes)`` into a new tensor, as its loader does: sampled edges/s
   and nodes/s and the time per batch, with and without the gather, for
   ``NeighborSampler.sample_blocks``, DGL's ``NeighborSampler`` and PyG's ``NeighborLoader``;
2. one FP32 training step of a 3-layer GraphSAGE (hidden 256, mean aggregation): ours runs
   the project's own ``QSAGEConv`` with quantization off (what ``lorap train`` runs in FP32;
   mean aggregation by one CSR matmul on the CPU) on the trimmed blocks (layer l computes
   only what layer l+1 reads),
   DGL runs ``dgl.nn.SAGEConv`` on its message-flow-graph blocks (trimmed by construction),
   PyG runs the standard ``NeighborLoader`` + ``SAGEConv`` loop on the whole sampled
   subgraph at every layer;
3. the without-replacement draw (Floyd vs sorted random keys) on a real hop-3 frontier,
   the measurement behind ``sampler.FLOYD_MAX_FANOUT``.

DGL and PyG's NeighborLoader (torch-sparse or pyg-lib) are not in the project venv, so each
peer runs in a subprocess under its own benchmark venv (``--dgl-python``, ``--pyg-python``;
a peer whose interpreter is missing is skipped) on the same cached CSR, features and seed
batches. With ``--rounds R`` ours and the peers take turns R times and each side keeps its
fastest round, which damps interference from other work on a shared machine. The graph is
generated once and cached as ``.npy`` under ``--cache``. Run under the machine's heavy-work
lock::

    .venv/bin/python benchmarks/sampler.py --dgl-python <dgl-venv>/bin/python
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
    p.add_argument("--cache", type=Path, default=Path("runs/bench"))
    p.add_argument(
        "--fresh-rows",
        action="store_true",
        help="ours gathers each batch's rows into a new tensor (as before RowGather)",
    )
    p.add_argument("--dgl-python", default="runs/bench/dgl-venv/bin/python")
    p.add_argument("--pyg-python", default="runs/bench/pyg-venv/bin/python")
    p.add_argument("--rounds", type=int, default=1, help="turns per side; the fastest is kept")
    p.add_argument("--prepare-only", action="store_true")
    p.add_argument("--dgl-worker", type=Path, help=argparse.SUPPRESS)  # graph dir (internal)
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
    edges: list[int],
    nodes: list[int],
    secs: list[float],
    step_secs: list[float],
    sample_secs: list[float] | None = None,
) -> dict:
    """What both loaders report: sampled edges and nodes per second of sampling, the mean
    batch time (and of its sampling alone, without the feature gather) and size, and the
    mean training step."""
    return {
        "edges_per_s": sum(edges) / sum(secs),
        "nodes_per_s": sum(nodes) / sum(secs),
        "batch_s": sum(secs) / len(secs),
        "sample_only_s": None if not sample_secs else sum(sample_secs) / len(sample_secs),
        "mean_edges_per_batch": sum(edges) / len(edges),
        "mean_nodes_per_batch": sum(nodes) / len(nodes),
        "step_s": sum(step_secs) / len(step_secs),
    }


def layer_dims(args: argparse.Namespace, num_classes: int) -> list[tuple[int, int]]:
    """``(in, out)`` of each SAGE layer, the same for every side."""
    torch.manual_seed(args.seed)
    dims = [args.num_features] + [args.hidden] * (len(args.fanouts) - 1) + [num_classes]
    return list(zip(dims[:-1], dims[1:], strict=True))


def timed_step(convs, blocks, apply, feats, labels, opt) -> float:
    """Seconds for one SAGE training step (forward with ReLU between layers, cross-entropy,
    backward, Adam) over ``blocks``, input layer first; ``apply(conv, block, h)`` calls a
    layer in its library's convention. The same step for every side."""
    t0 = time.perf_counter()
    h = feats
    for layer, (conv, block) in enumerate(zip(convs, blocks, strict=True)):
        h = apply(conv, block, h)
        h = h.relu() if layer + 1 < len(convs) else h
    loss = torch.nn.functional.cross_entropy(h, labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def make_convs(args: argparse.Namespace, num_classes: int) -> torch.nn.ModuleList:
    from torch_geometric.nn import SAGEConv

    dims = layer_dims(args, num_classes)
    return torch.nn.ModuleList(SAGEConv(a, b, aggr="mean") for a, b in dims)


def make_our_convs(args: argparse.Namespace, num_classes: int) -> torch.nn.ModuleList:
    """The project's own SAGE layers, quantization off: what ``lorap train`` runs in FP32
    (on the CPU their mean aggregation is one CSR matmul, :mod:`lorap_dist.nn.aggregate`)."""
    from lorap_dist.nn.sage import QSAGEConv

    dims = layer_dims(args, num_classes)
    return torch.nn.ModuleList(QSAGEConv(a, b) for a, b in dims)


def run_ours(args: argparse.Namespace, path: Path, measure_draw: bool = True) -> dict:
    """Our sampler, and the feature gather as the project's trainers do it: into one buffer
    kept across batches (:class:`~lorap_dist.graph.gather.RowGather`; ``--fresh-rows``
    gathers into a new tensor per batch, as DGL's loader does)."""
    from lorap_dist.graph.gather import RowGather
    from lorap_dist.graph.sampler import NeighborSampler

    indptr, indices, x, y = load(path)
    sampler = NeighborSampler(indptr, indices, args.fanouts)
    batches = seed_batches(args, 1 + max(args.sample_batches, args.step_batches))
    gen = torch.Generator().manual_seed(args.seed)
    gather = (lambda x, ids: x.index_select(0, ids)) if args.fresh_rows else RowGather()

    edges, nodes, secs, sample_secs = [], [], [], []
    for i, seeds in enumerate(batches[: 1 + args.sample_batches]):
        t0 = time.perf_counter()
        batch = sampler.sample_blocks(seeds, gen)
        t1 = time.perf_counter()
        feats = gather(x, batch.node_ids)
        dt = time.perf_counter() - t0
        if i:
            edges.append(batch.blocks[0].edge_index.size(1))
            nodes.append(feats.size(0))
            secs.append(dt)
            sample_secs.append(t1 - t0)

    convs = make_our_convs(args, int(y.max()) + 1)
    opt = torch.optim.Adam(convs.parameters(), lr=1e-3)
    step_secs, block_sizes = [], None
    for i, seeds in enumerate(batches[: 1 + args.step_batches]):
        batch = sampler.sample_blocks(seeds, gen)
        feats, labels = gather(x, batch.node_ids), y[seeds]
        # [num_dst, out]: the destinations are the first num_dst rows of a block's sources
        elapsed = timed_step(convs, batch.blocks, lambda conv, b, h: conv(h, b), feats, labels, opt)
        if i:
            step_secs.append(elapsed)
        block_sizes = [(b.num_src, b.num_dst, b.edge_index.size(1)) for b in batch.blocks]

    draw = measure_draws(sampler, batches[0], gen) if measure_draw else None
    return {
        **throughput(edges, nodes, secs, step_secs, sample_secs),
        "rows": "fresh tensor per batch" if args.fresh_rows else "RowGather (reused buffer)",
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


# 3. DGL (runs in its benchmark venv) --------------------------------------------------


def run_dgl(args: argparse.Namespace, path: Path) -> dict:
    """DGL's ``NeighborSampler`` (fused CPU path) into MFG blocks, and ``dgl.nn.SAGEConv``.

    ``sample_blocks`` is called directly, as ours is; DGL's ``DataLoader`` with
    ``num_workers=0`` wraps the same call and was no faster on a 200 k-node graph.
    """
    import dgl
    from dgl.nn import SAGEConv

    dgl.utils.set_num_threads(args.threads)  # DGL's own OpenMP pool, beside torch's
    dgl.seed(args.seed)
    indptr, indices, x, y = load(path)
    n = indptr.numel() - 1
    # Our in-edge CSR is DGL's CSC (columns are destinations); empty edge IDs mean 0..E-1.
    # int64 IDs: with int32 ones DGL 1.1.3's fused sampler returns wrongly merged blocks.
    no_eids = torch.empty(0, dtype=torch.int64)
    g = dgl.graph(("csc", (indptr, indices.long(), no_eids)), num_nodes=n)
    # DGL's fanouts run from the input layer to the output layer; ours (as PyG's) from the
    # seeds outwards. DGL draws every block afresh: a node that is the destination of several
    # blocks draws its neighbours once per block (replace=False within each draw).
    sampler = dgl.dataloading.NeighborSampler(args.fanouts[::-1])
    batches = seed_batches(args, 1 + max(args.sample_batches, args.step_batches))

    edges, nodes, secs, sample_secs = [], [], [], []
    for i, seeds in enumerate(batches[: 1 + args.sample_batches]):
        t0 = time.perf_counter()
        input_nodes, _, blocks = sampler.sample_blocks(g, seeds)
        t1 = time.perf_counter()
        feats = x.index_select(0, input_nodes)
        dt = time.perf_counter() - t0
        if i:
            edges.append(sum(block.num_edges() for block in blocks))
            nodes.append(feats.size(0))
            secs.append(dt)
            sample_secs.append(t1 - t0)

    dims = layer_dims(args, int(y.max()) + 1)
    convs = torch.nn.ModuleList(SAGEConv(a, b, "mean") for a, b in dims)
    opt = torch.optim.Adam(convs.parameters(), lr=1e-3)
    step_secs, block_sizes = [], None
    for i, seeds in enumerate(batches[: 1 + args.step_batches]):
        input_nodes, output_nodes, blocks = sampler.sample_blocks(g, seeds)
        feats, labels = x.index_select(0, input_nodes), y[output_nodes]
        # destinations are the first num_dst_nodes() sources
        elapsed = timed_step(convs, blocks, lambda conv, b, h: conv(b, h), feats, labels, opt)
        if i:
            step_secs.append(elapsed)
        block_sizes = [(b.num_src_nodes(), b.num_dst_nodes(), b.num_edges()) for b in blocks]
    return {
        **throughput(edges, nodes, secs, step_secs, sample_secs),
        "step_blocks_src_dst_edges": block_sizes,
        "dgl_version": dgl.__version__,
        "torch_version": torch.__version__,
    }


# 4. PyG (runs in its benchmark venv) --------------------------------------------------


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


# 5. Report ---------------------------------------------------------------------------

SAMPLING_KEYS = (
    "edges_per_s",
    "nodes_per_s",
    "batch_s",
    "sample_only_s",
    "mean_edges_per_batch",
    "mean_nodes_per_batch",
)


def fastest(rounds: list[dict]) -> dict:
    """One side's figures: sampling from its fastest sampling round, the step from its fastest
    step round; each round's two headline figures are kept under ``rounds``."""
    best = dict(min(rounds, key=lambda r: r["step_s"]))
    best.update({k: max(rounds, key=lambda r: r["edges_per_s"])[k] for k in SAMPLING_KEYS})
    if "draw_strategy" in rounds[0]:
        best["draw_strategy"] = rounds[0]["draw_strategy"]  # measured in the first round only
    best["rounds"] = [{"edges_per_s": r["edges_per_s"], "step_s": r["step_s"]} for r in rounds]
    return best


def run_peer(
    args: argparse.Namespace, name: str, python: str, path: Path
) -> tuple[dict | None, str]:
    """Run ``--<name>-worker`` under the peer's interpreter: its figures, or why there are none."""
    if not Path(python).exists():
        return None, f"no benchmark venv at {python}"
    cmd = [python, __file__, f"--{name}-worker", str(path)] + sys.argv[1:]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return None, f"worker failed: {proc.stderr.strip()[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def previous_pyg(result: dict) -> dict | None:
    """The results file's PyG figures when they were measured on this graph, fanouts and batch."""
    old_file = RESULTS / "sampler.json"
    if not old_file.exists():
        return None
    old = json.loads(old_file.read_text())
    setup = ("graph", "fanouts", "batch_size")
    if not old.get("pyg") or any(old.get(k) != result[k] for k in setup):
        return None
    return old


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None else None


def write_results(
    args: argparse.Namespace, path: Path, ours: dict, dgl: dict | None, pyg: dict | None, note: str
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
        "rounds": args.rounds,
        "ours_edges_per_s": ours["edges_per_s"],
        "ours_nodes_per_s": ours["nodes_per_s"],
        "ours_step_s": ours["step_s"],
        "pyg_edges_per_s": pyg["edges_per_s"] if pyg else None,
        "pyg_nodes_per_s": pyg["nodes_per_s"] if pyg else None,
        "pyg_step_s": pyg["step_s"] if pyg else None,
        "sampling_ratio": ratio(ours["edges_per_s"], pyg and pyg["edges_per_s"]),
        "step_ratio": ratio(pyg and pyg["step_s"], ours["step_s"]),
        "pyg_run": "this run" if pyg else None,
        "dgl_edges_per_s": dgl["edges_per_s"] if dgl else None,
        "dgl_nodes_per_s": dgl["nodes_per_s"] if dgl else None,
        "dgl_step_s": dgl["step_s"] if dgl else None,
        "sampling_vs_dgl": ratio(ours["edges_per_s"], dgl and dgl["edges_per_s"]),
        "sampling_nodes_vs_dgl": ratio(ours["nodes_per_s"], dgl and dgl["nodes_per_s"]),
        "batch_time_vs_dgl": ratio(dgl and dgl["batch_s"], ours["batch_s"]),
        "sample_only_vs_dgl": ratio(dgl and dgl.get("sample_only_s"), ours["sample_only_s"]),
        "ours_rows": ours["rows"],
        "step_vs_dgl": ratio(dgl and dgl["step_s"], ours["step_s"]),
        "ours": ours,
        "dgl": dgl,
        "pyg": pyg,
        "note": note,
    }
    old = None if pyg else previous_pyg(result)
    if old:  # keep the last measured PyG figures, with the ratios of the run that made them
        for key in ("pyg_edges_per_s", "pyg_nodes_per_s", "pyg_step_s", "pyg"):
            result[key] = old[key]
        result["sampling_ratio"], result["step_ratio"] = old["sampling_ratio"], old["step_ratio"]
        result["pyg_run"] = (
            old["pyg_run"]
            if isinstance(old.get("pyg_run"), dict)
            else {
                "command": old["command"],
                "threads": old["threads"],
                "ours_edges_per_s": old["ours_edges_per_s"],
                "ours_step_s": old["ours_step_s"],
            }
        )
    peers = {name: result[name] for name in ("dgl", "pyg") if result[name]}
    if peers:
        sampler_peer = max(peers, key=lambda k: peers[k]["edges_per_s"])
        step_peer = min(peers, key=lambda k: peers[k]["step_s"])
        sampling = result["sampling_vs_dgl" if sampler_peer == "dgl" else "sampling_ratio"]
        step = result["step_vs_dgl" if step_peer == "dgl" else "step_ratio"]
        result["targets"] = {
            "fastest_sampling_peer": sampler_peer,
            "sampling_ratio": sampling,
            "sampling_met": sampling >= 2.0,
            "fastest_step_peer": step_peer,
            "step_ratio": step,
            "step_met": step >= 1.5,
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sampler.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "sampler.md").write_text(markdown(result))
    return result


def markdown(r: dict) -> str:
    """The result as the Markdown table recorded beside the JSON."""
    ours, dgl, pyg = r["ours"], r["dgl"] or {}, r["pyg"] or {}

    def fmt(v, spec: str) -> str:
        return "n/a" if v is None else format(v, spec)

    def times(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}x"

    def row(label: str, key: str, spec: str, dgl_ratio: str | None, pyg_ratio: str | None) -> str:
        cells = [
            label,
            fmt(ours[key], spec),
            fmt(dgl.get(key), spec),
            times(r.get(dgl_ratio)) if dgl_ratio else "",
            fmt(pyg.get(key), spec),
            times(r.get(pyg_ratio)) if pyg_ratio else "",
        ]
        return "| " + " | ".join(cells) + " |"

    g = r["graph"]
    if isinstance(r["pyg_run"], dict):
        pyg_from = (
            f"PyG figures and ratios from an earlier run (`{r['pyg_run']['command']}`, "
            f"{r['pyg_run']['threads']} threads; ours "
            f"there: {r['pyg_run']['ours_edges_per_s']:,.0f} edges/s, step "
            f"{r['pyg_run']['ours_step_s']:.3f} s), not re-measured."
        )
    else:
        pyg_from = "PyG measured in this run." if r["pyg"] else "PyG not measured."
    lines = [
        "# Neighbour sampling and training step vs DGL and PyG",
        "",
        f"Graph: {g['num_nodes']:,} nodes, {g['num_directed_edges']:,} directed edges, "
        f"{g['num_features']} features ({g['generator']}). Fanouts {r['fanouts']}, "
        f"batch {r['batch_size']}, {r['threads']} CPU threads, means over "
        f"{r['sample_batches']} sampling / {r['step_batches']} step batches after one warm-up; "
        f"each side's fastest of {r['rounds']} alternating round(s). {pyg_from}",
        "",
        "| | ours | DGL | ours vs DGL | PyG (untrimmed) | ours vs PyG |",
        "|---|---|---|---|---|---|",
        row(
            "sampled edges/s (incl. the feature gather)",
            "edges_per_s",
            ",.0f",
            "sampling_vs_dgl",
            "sampling_ratio",
        ),
        row(
            "sampled nodes/s (incl. the feature gather)",
            "nodes_per_s",
            ",.0f",
            "sampling_nodes_vs_dgl",
            None,
        ),
        row("seconds per sampled batch", "batch_s", ".3f", "batch_time_vs_dgl", None),
        row(
            "of which sampling alone (without the feature gather)",
            "sample_only_s",
            ".3f",
            "sample_only_vs_dgl",
            None,
        ),
        row("edges per batch", "mean_edges_per_batch", ",.0f", None, None),
        row("nodes per batch", "mean_nodes_per_batch", ",.0f", None, None),
        row(
            "training step, s (3-layer SAGE, hidden 256, FP32)",
            "step_s",
            ".3f",
            "step_vs_dgl",
            "step_ratio",
        ),
        "",
        f"Blocks (src, dst, edges), input layer first: ours {ours['step_blocks_src_dst_edges']}; "
        f"DGL {dgl.get('step_blocks_src_dst_edges', 'n/a')}.",
        "",
    ]
    if "targets" in r:
        t = r["targets"]
        verdict = {True: "met", False: "NOT met"}
        lines += [
            f"Targets: sampling {t['sampling_ratio']:.1f}x the fastest sampling peer "
            f"({t['fastest_sampling_peer']}; target 2x: {verdict[t['sampling_met']]}), "
            f"training step {t['step_ratio']:.1f}x the fastest step peer "
            f"({t['fastest_step_peer']}; target 1.5x: {verdict[t['step_met']]}).",
            "",
        ]
    if ours.get("draw_strategy"):
        draw = ours["draw_strategy"]
        lines += [
            "Without-replacement draw on the over-full nodes of a hop-3 frontier "
            f"({draw['frontier_nodes']:,} nodes, mean in-degree {draw['mean_degree']:.0f}; "
            "one timing each, so single rows are noisy):",
            "",
            "| fanout | over-full nodes | Floyd, s | sorted keys, s |",
            "|---|---|---|---|",
        ]
        for key, row_ in draw.items():
            if key.startswith("fanout_"):
                lines.append(
                    f"| {key[7:]} | {row_['over_full_nodes']:,} | {row_['floyd_s']:.3f} | "
                    f"{row_['sort_s']:.3f} |"
                )
    lines += ["", f"Note: {r['note']}", "", "Command:", "", "```", r["command"], "```", ""]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.dgl_worker:
        print(json.dumps(run_dgl(args, args.dgl_worker)))
        return
    if args.pyg_worker:
        print(json.dumps(run_pyg(args, args.pyg_worker)))
        return
    path = prepare(args)
    if args.prepare_only:
        print(path)
        return
    peers = {"dgl": args.dgl_python, "pyg": args.pyg_python}
    runs: dict[str, list[dict]] = {"ours": [], "dgl": [], "pyg": []}
    why_not: dict[str, str] = {}
    for r in range(args.rounds):
        runs["ours"].append(run_ours(args, path, measure_draw=r == 0))
        print(f"round {r} ours", json.dumps(runs["ours"][-1]), flush=True)
        gc.collect()  # release our features before a peer's worker loads its own copy
        for name, python in peers.items():
            if name in why_not:
                continue
            figures, why = run_peer(args, name, python, path)
            if figures is None:
                why_not[name] = why
                continue
            runs[name].append(figures)
            print(f"round {r} {name}", json.dumps(figures), flush=True)
    note = (
        "ours: the project's QSAGEConv, quantization off (CSR-matmul mean aggregation on the "
        "CPU), on trimmed blocks; "
        "each node's neighbourhood drawn once and shared by the layers; "
        "DGL: dgl.dataloading.NeighborSampler (fused CPU path, sample_blocks called directly) "
        "+ dgl.nn.SAGEConv on its MFG blocks, every block drawn afresh; "
        "PyG: NeighborLoader (torch-sparse backend) + SAGEConv over the whole sampled subgraph "
        "at every layer (torch-sparse returns no per-hop counts, so PyG's trim_to_layer "
        "cannot be used without pyg-lib). Sampling times include the feature gather: "
        + (
            "x.index_select(0, input nodes) into a new tensor per batch on every side."
            if args.fresh_rows
            else "ours index_select into one buffer kept across batches (RowGather, as the "
            "project's trainers gather), DGL's and PyG's x.index_select(0, input nodes) "
            "into a new tensor per batch, as their loaders do."
        )
    )
    for name, why in why_not.items():
        note += f" {name} baseline unavailable: {why}."
    dgl = fastest(runs["dgl"]) if runs["dgl"] else None
    pyg = fastest(runs["pyg"]) if runs["pyg"] else None
    result = write_results(args, path, fastest(runs["ours"]), dgl, pyg, note)
    skip = ("ours", "dgl", "pyg")
    print(json.dumps({k: v for k, v in result.items() if k not in skip}, indent=1))


if __name__ == "__main__":
    main()
