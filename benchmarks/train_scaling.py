"""Distributed training throughput, LoRAP's overhead, exchange bytes and worker memory
(issue 7, item 8).

On a generated graph (100-dim features, 47 classes, like ogbn-products), prepared into 1 and 2
parts (metis), with the ogbn-products GraphSAGE recipe (3 layers, hidden 256, fanout
[15, 10, 5], batch 1024):

* training throughput (seeds/s) with 1 and 2 Ray Train workers (1 CPU each), FP32 and
  INT4 QAT + LoRAP; INT4 QAT alone, for LoRAP's overhead;
* feature-exchange bytes with FP32 and INT8 payloads (``dist.exchange_bits: 8``);
* INT4 QAT with and without LoRAP on integer rows (``dist.feature_rows: codes`` over an INT8
  exchange: the first layer aggregates the codes with the fused ops), for LoRAP's overhead
  on that path and its throughput against float rows;
* the largest worker's peak resident set (``ru_maxrss``; memory-mapped dataset pages a worker
  touched count too);
* the single-process PyG baseline (``NeighborLoader`` + ``SAGEConv``, FP32, the same graph,
  fanouts and batch size, 2 threads), run by ``--pyg-python`` (a venv with torch-sparse).

Each run trains ``--epochs`` epochs of ``--steps`` steps per worker; throughput is that of the
last epoch (the first warms up). Every run is repeated ``--repeats`` times, the repeats of all
runs interleaved (so a slow spell of the machine hits every variant alike), and the median
repeat is reported. Bytes are per step, and scaled to a full epoch.
Writes ``benchmarks/results/train_scaling.{json,md}``. Run it alone on the machine:

    .venv/bin/python benchmarks/train_scaling.py \\
        [--num-nodes 200000] [--avg-degree 30] [--steps 2] \\
        [--pyg-python runs/bench/pyg-venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, TRAINED_TOGETHER, machine, markdown_table, write_result  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FANOUT = [15, 10, 5]
BATCH = 1024
HIDDEN = 256
LAYERS = 3
VARIANTS = {  # name: (prompt, quant bits or None, exchange bits, first layer's rows)
    "fp32": ("none", None, None, "float"),
    "int4": ("none", 4, None, "float"),
    "int4_lorap": ("lorap", 4, None, "float"),
    "fp32_x8": ("none", None, 8, "float"),
    "int4_codes": ("none", 4, 8, "codes"),
    "int4_lorap_codes": ("lorap", 4, 8, "codes"),
}
RUNS = [  # (variant, workers)
    ("fp32", 1),
    ("fp32", 2),
    ("int4_lorap", 1),
    ("int4_lorap", 2),
    ("int4", 2),
    ("fp32_x8", 2),
    ("int4_codes", 2),
    ("int4_lorap_codes", 2),
]
TARGETS = {
    "fp32_vs_pyg": 3.0,
    "int4_lorap_vs_pyg": 2.0,
    "lorap_overhead": 0.10,
    "int8_bytes_ratio": 0.3,
}


# --- The PyG baseline (runs in the PyG venv: no lorap_dist, no pyarrow there) ---------------


def pyg_baseline(export: Path, warmup: int, steps: int, threads: int) -> dict[str, Any]:
    """Seeds/s of PyG ``NeighborLoader`` + 3-layer ``GraphSAGE`` (FP32) on the exported CSR."""
    import numpy as np
    import torch
    from torch_geometric.data import Data
    from torch_geometric.loader import NeighborLoader
    from torch_geometric.nn import GraphSAGE
    from torch_sparse import SparseTensor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    indptr = torch.from_numpy(np.load(export / "indptr.npy")).long()
    indices = torch.from_numpy(np.load(export / "indices.npy")).long()
    x = torch.from_numpy(np.load(export / "x.npy"))
    y = torch.from_numpy(np.load(export / "y.npy"))
    train = torch.from_numpy(np.load(export / "train.npy"))
    n = x.size(0)
    # The dataset's CSR lists each node's in-neighbours: that is adj_t (row = target).
    data = Data(x=x, y=y, adj_t=SparseTensor(rowptr=indptr, col=indices, sparse_sizes=(n, n)))
    loader = NeighborLoader(
        data, num_neighbors=FANOUT, batch_size=BATCH, input_nodes=train, shuffle=True
    )
    model = GraphSAGE(x.size(1), HIDDEN, LAYERS, int(y.max()) + 1, dropout=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    model.train()
    seeds, started = 0, None

    def endless():  # a small graph may hold fewer batches than warm-up + measured steps
        while True:
            yield from loader

    for index, batch in enumerate(endless()):
        if index == warmup:
            started = time.perf_counter()
        logits = model(batch.x, batch.adj_t)[: batch.batch_size]
        loss = torch.nn.functional.cross_entropy(logits, batch.y[: batch.batch_size])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if started is not None:
            seeds += batch.batch_size
        if index + 1 == warmup + steps:
            break
    elapsed = time.perf_counter() - started
    return {"seeds_per_s": seeds / elapsed, "steps": steps, "threads": threads}


def run_pyg(python: str, dataset: Path, work: Path, warmup: int, steps: int) -> dict[str, Any]:
    """Export the 1-part dataset as .npy files and time the baseline in ``python``."""
    import numpy as np

    from lorap_dist.graph.storage import open_dataset

    if not Path(python).is_file():
        return {"available": False, "reason": f"{python} does not exist (see --pyg-python)"}
    probe = subprocess.run(
        [python, "-c", "import torch_sparse, torch_geometric"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or ["not runnable"])[-1]
        return {"available": False, "reason": f"{python}: {reason}"}
    source = open_dataset(dataset)
    part = source.part(0)
    export = work / "pyg-export"
    export.mkdir(parents=True, exist_ok=True)
    np.save(export / "indptr.npy", source.indptr.numpy())
    np.save(export / "indices.npy", source.indices.numpy())
    np.save(export / "x.npy", part.features_fp32().numpy())
    np.save(export / "y.npy", part.labels.numpy())
    np.save(export / "train.npy", part.split_ids("train").numpy())
    done = subprocess.run(
        [
            python,
            __file__,
            "--pyg-baseline",
            str(export),
            "--steps",
            str(steps),
            "--warmup",
            str(warmup),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return {"available": False, "reason": done.stderr.strip().splitlines()[-1][-300:]}
    return {"available": True} | json.loads(done.stdout.strip().splitlines()[-1])


# --- Our runs --------------------------------------------------------------------------------


def synthetic(args: argparse.Namespace):
    from lorap_dist.config import SyntheticConfig

    return SyntheticConfig(
        num_nodes=args.num_nodes,
        avg_degree=args.avg_degree,
        num_features=100,
        num_classes=47,
        train_fraction=0.1,
        valid_fraction=0.05,
        seed=0,
    )


def prepared(args: argparse.Namespace, parts: int) -> Path:
    """The dataset in ``parts`` parts under ``--data``, prepared once per graph config."""
    from lorap_dist.config import to_dict
    from lorap_dist.graph.prepare import PrepareOptions, prepare

    spec = to_dict(synthetic(args)) | {"parts": parts, "partitioner": "metis"}
    out = Path(args.data) / f"n{args.num_nodes}-d{args.avg_degree:g}-{parts}p"
    stamp = out / "prepare_options.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return out
    started = time.perf_counter()
    prepare(
        PrepareOptions(
            out=out,
            parts=parts,
            partitioner="metis",
            synthetic=synthetic(args),
            overwrite=True,
            use_ray=False,
            progress=False,
        )
    )
    stamp.write_text(json.dumps(spec) + "\n")
    print(f"prepared {out} in {time.perf_counter() - started:.0f} s", flush=True)
    return out


def run_ours(
    dataset: Path,
    variant: str,
    workers: int,
    args: argparse.Namespace,
    storage: Path,
    repeat: int = 0,
) -> dict[str, Any]:
    from lorap_dist.config import ExperimentConfig
    from lorap_dist.distributed.trainer import run_distributed

    prompt, bits, exchange_bits, feature_rows = VARIANTS[variant]
    quant = {"scheme": "none"} if bits is None else {"scheme": "qat", "options": {"bits": bits}}
    experiment = ExperimentConfig.from_dict(
        {
            "data": {"source": "dir", "path": str(dataset)},
            "model": {"arch": "sage", "hidden": HIDDEN, "layers": LAYERS, "dropout": 0.5},
            "prompt": {"kind": prompt, "k": 8, "r": 4},
            "quant": quant,
            "train": {
                "epochs": args.epochs,
                "lr": 0.003,
                "fanout": FANOUT,
                "batch_size": BATCH,
                "seed": 0,
                **TRAINED_TOGETHER,
            },
            "dist": {
                "num_workers": workers,
                "cpus_per_worker": 1,
                "storage_path": str(storage),
                "name": f"{variant}-{workers}w-r{repeat}",
                "checkpoint_every": args.epochs,
                "keep_checkpoints": 1,
                "eval_every": None,
                "max_steps_per_epoch": args.steps,
                "exchange_bits": exchange_bits,
                "feature_rows": feature_rows,
            },
        }
    )
    started = time.perf_counter()
    summary = run_distributed(experiment, experiment.dist)
    summary["run_s"] = time.perf_counter() - started
    print(
        f"{variant} x{workers} (repeat {repeat}): {summary['seeds_per_s']:.1f} seeds/s, "
        f"{summary['bytes_exchanged']} B/epoch, peak RSS {summary['peak_rss_gib']:.2f} GiB, "
        f"run {summary['run_s']:.0f} s",
        flush=True,
    )
    return summary


def median_run(repeats: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat with the median throughput (the lower middle one for an even count), with
    every repeat's throughput and the largest peak RSS of all repeats."""
    ordered = sorted(repeats, key=lambda run: run["seeds_per_s"])
    middle = dict(ordered[(len(ordered) - 1) // 2])
    middle["seeds_per_s_repeats"] = [run["seeds_per_s"] for run in repeats]
    middle["peak_rss_gib"] = max(run["peak_rss_gib"] for run in repeats)
    return middle


def _size_note(nodes: int, undirected_edges: int) -> str:
    """How the generated graph compares with ogbn-products."""
    products = "ogbn-products is 2.4 M nodes / 61.9 M undirected edges"
    if nodes >= 2_400_000:
        return (
            f"{products}; this graph matches its node count and has "
            f"{undirected_edges / 1e6:.1f} M undirected edges (deduplication removes the "
            "repeated hub edges of the generated heavy-tailed degrees)"
        )
    return f"{products}; this graph is smaller, to keep the script short on a shared machine"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-nodes", type=int, default=200_000)
    parser.add_argument("--avg-degree", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=2, help="steps per epoch and worker")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="PyG warm-up batches")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of every run (median)")
    parser.add_argument("--data", default=str(REPO / "data" / "bench-train-scaling"))
    parser.add_argument(
        "--pyg-python", default="runs/bench/pyg-venv/bin/python", help="PyG venv python"
    )
    parser.add_argument("--pyg-baseline", help=argparse.SUPPRESS)  # internal: run the baseline
    parser.add_argument("--name", default="train_scaling", help="result file name")
    args = parser.parse_args()
    if args.pyg_baseline:
        print(json.dumps(pyg_baseline(Path(args.pyg_baseline), args.warmup, args.steps, 2)))
        return

    import ray

    from lorap_dist.graph.storage import open_dataset
    from lorap_dist.ray_session import offline_defaults

    started = time.perf_counter()
    datasets = {parts: prepared(args, parts) for parts in (1, 2)}
    meta = open_dataset(datasets[2]).meta
    offline_defaults()
    work = Path(tempfile.mkdtemp(prefix="train-scaling-"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    repeats: dict[str, list[dict[str, Any]]] = {f"{v}@{w}": [] for v, w in RUNS}
    try:
        for repeat in range(args.repeats):
            for variant, workers in RUNS:
                repeats[f"{variant}@{workers}"].append(
                    run_ours(datasets[workers], variant, workers, args, work / "runs", repeat)
                )
    finally:
        ray.shutdown()
    runs = {key: median_run(done) for key, done in repeats.items()}
    pyg = run_pyg(args.pyg_python, datasets[1], work, args.warmup, args.steps)
    print(f"pyg: {pyg}", flush=True)

    # Figures and targets.
    full_steps = -(-max(meta["train_per_part"]) // BATCH)  # steps of a full epoch, 2 workers
    measured_steps = min(args.steps, full_steps)

    def per_epoch(run: str) -> int:
        return round(runs[run]["bytes_exchanged"] / measured_steps * full_steps)

    fp32 = {w: runs[f"fp32@{w}"]["seeds_per_s"] for w in (1, 2)}
    int4_lorap = {w: runs[f"int4_lorap@{w}"]["seeds_per_s"] for w in (1, 2)}
    overhead = runs["int4@2"]["seeds_per_s"] / runs["int4_lorap@2"]["seeds_per_s"] - 1
    overhead_codes = (
        runs["int4_codes@2"]["seeds_per_s"] / runs["int4_lorap_codes@2"]["seeds_per_s"] - 1
    )
    bytes_fp32, bytes_int8 = per_epoch("fp32@2"), per_epoch("fp32_x8@2")
    pyg_rate = pyg.get("seeds_per_s")
    checks = {
        "fp32_vs_pyg": None if pyg_rate is None else fp32[2] / pyg_rate,
        "int4_lorap_vs_pyg": None if pyg_rate is None else int4_lorap[2] / pyg_rate,
        "lorap_overhead": overhead,
        "int8_bytes_ratio": bytes_int8 / bytes_fp32,
    }
    met = {
        key: None
        if value is None
        else (
            value <= TARGETS[key]
            if key in ("lorap_overhead", "int8_bytes_ratio")
            else value >= TARGETS[key]
        )
        for key, value in checks.items()
    }
    graph = {
        "generator": "lorap_dist synthetic (degree-corrected SBM, power-law degrees)",
        "num_nodes": meta["num_nodes"],
        "num_directed_edges": meta["num_edges"],
        "num_undirected_edges": meta["num_edges"] // 2,
        "num_features": meta["num_features"],
        "num_classes": meta["num_classes"],
        "partitioner": "metis",
        "edge_cut_2p": meta.get("edge_cut"),
        "train_per_part_2p": meta["train_per_part"],
        "note": _size_note(meta["num_nodes"], meta["num_edges"] // 2),
    }
    payload = {
        "graph": graph,
        "recipe": {
            "model": "sage",
            "layers": LAYERS,
            "hidden": HIDDEN,
            "fanout": FANOUT,
            "batch_size": BATCH,
            "epochs": args.epochs,
            "steps_per_epoch": args.steps,
            "repeats": args.repeats,
        },
        "pyg_seeds_per_s": pyg_rate,
        "pyg": pyg,
        "ours_fp32_seeds_per_s": fp32,
        "ours_int4_lorap_seeds_per_s": int4_lorap,
        "ours_int4_seeds_per_s": {2: runs["int4@2"]["seeds_per_s"]},
        "lorap_overhead": overhead,
        "lorap_overhead_repeats": [
            alone / prompted - 1
            for alone, prompted in zip(
                runs["int4@2"]["seeds_per_s_repeats"],
                runs["int4_lorap@2"]["seeds_per_s_repeats"],
                strict=True,
            )
        ],
        "ours_int4_codes_seeds_per_s": {2: runs["int4_codes@2"]["seeds_per_s"]},
        "ours_int4_lorap_codes_seeds_per_s": {2: runs["int4_lorap_codes@2"]["seeds_per_s"]},
        "lorap_overhead_codes": overhead_codes,
        "codes_vs_float_int4_lorap": runs["int4_lorap_codes@2"]["seeds_per_s"]
        / runs["int4_lorap@2"]["seeds_per_s"],
        "bytes_fp32": bytes_fp32,
        "bytes_int8": bytes_int8,
        "bytes_per_step_fp32": runs["fp32@2"]["bytes_exchanged"] / measured_steps,
        "bytes_per_step_int8": runs["fp32_x8@2"]["bytes_exchanged"] / measured_steps,
        "full_epoch_steps_2w": full_steps,
        "peak_rss_gib_per_worker": {key: run["peak_rss_gib"] for key, run in runs.items()},
        "ratios": checks,
        "targets": TARGETS,
        "targets_met": met,
        "runs": runs,
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine() | {"cpus": os.cpu_count()},
        "command": " ".join([".venv/bin/python", *sys.argv]),
    }
    write_result(args.name, payload)
    write_markdown(args.name, payload)
    print((RESULTS / f"{args.name}.md").read_text())


def write_markdown(name: str, p: dict[str, Any]) -> None:
    g, r, pyg = p["graph"], p["ratios"], p["pyg_seeds_per_s"]

    def rate(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.0f}"

    def ratio(key: str, op: str) -> str:
        value = r[key]
        met = p["targets_met"][key]
        if value is None:
            return f"n/a (target {op} {p['targets'][key]})"
        return f"{value:.2f} (target {op} {p['targets'][key]}: {'met' if met else 'NOT met'})"

    rss = p["peak_rss_gib_per_worker"]

    def line(label: str, precision: str, run: str, megabytes: str = "") -> list[str]:
        seeds = rate(p["runs"][run]["seeds_per_s"])
        return [label, precision, seeds, megabytes, f"{rss[run]:.2f}"]

    codes = "ours, 2 workers, INT8 rows as codes into the first layer"
    megabytes_int8 = f"{p['bytes_int8'] / 1e6:,.1f}"
    rows = [
        ["PyG NeighborLoader + SAGEConv, 1 process, 2 threads", "FP32", rate(pyg), "", ""],
        line("ours, 1 worker", "FP32", "fp32@1"),
        line("ours, 2 workers", "FP32", "fp32@2", f"{p['bytes_fp32'] / 1e6:,.1f}"),
        line("ours, 2 workers, INT8 exchange", "FP32", "fp32_x8@2", megabytes_int8),
        line("ours, 1 worker", "INT4 QAT + LoRAP", "int4_lorap@1"),
        line("ours, 2 workers", "INT4 QAT + LoRAP", "int4_lorap@2"),
        line("ours, 2 workers", "INT4 QAT", "int4@2"),
        line(codes, "INT4 QAT + LoRAP", "int4_lorap_codes@2"),
        line(codes, "INT4 QAT", "int4_codes@2"),
    ]
    reason = "" if p["pyg"].get("available") else f" PyG baseline unavailable: {p['pyg']['reason']}"
    text = f"""# Distributed training throughput (issue 7, item 8)

Graph: generated, {g["num_nodes"]:,} nodes, {g["num_undirected_edges"]:,} undirected edges
({g["num_directed_edges"]:,} directed), {g["num_features"]} features, {g["num_classes"]} classes,
metis into 2 parts (edge cut {g["edge_cut_2p"]}). {g["note"]}.
Recipe: GraphSAGE {p["recipe"]["layers"]} layers, hidden {p["recipe"]["hidden"]}, fanout
{p["recipe"]["fanout"]}, batch {p["recipe"]["batch_size"]}; each run {p["recipe"]["epochs"]}
epochs of {p["recipe"]["steps_per_epoch"]} steps per worker, throughput of the last epoch;
every run repeated {p["recipe"]["repeats"]} times (repeats of all runs interleaved), the median
repeat shown. Workers have 1 CPU each (gloo); the machine has {p["machine"]["cpus"]} cores,
shared with other jobs, so figures are noisy.{reason}

{markdown_table(["run", "precision", "seeds/s", "exchange MB/epoch", "peak RSS GiB/worker"], rows)}

| claim | measured |
|---|---|
| FP32, 2 workers vs PyG | {ratio("fp32_vs_pyg", ">=")} |
| INT4 + LoRAP, 2 workers vs PyG | {ratio("int4_lorap_vs_pyg", ">=")} |
| LoRAP overhead (INT4 vs INT4 + LoRAP, 2 workers) | {ratio("lorap_overhead", "<=")} |
| INT8 / FP32 exchange bytes | {ratio("int8_bytes_ratio", "<=")} |
| LoRAP overhead, integer rows (codes, 2 workers) | {p["lorap_overhead_codes"]:.2f} |
| INT4 + LoRAP, integer / float rows (2 workers) | {p["codes_vs_float_int4_lorap"]:.2f} |

Exchange bytes are all ranks' sends per epoch, measured over {p["recipe"]["steps_per_epoch"]}
steps and scaled to a full epoch ({p["full_epoch_steps_2w"]} steps):
{p["bytes_per_step_fp32"]:,.0f} B/step FP32, {p["bytes_per_step_int8"]:,.0f} B/step INT8.
LoRAP's overhead in each repeat (INT4 alone / INT4 + LoRAP - 1, 2 workers):
{", ".join(f"{v:.3f}" for v in p["lorap_overhead_repeats"])}.
Peak RSS is `ru_maxrss` of the largest worker and includes the memory-mapped dataset pages it
touched. Total wall time {p["wall_s"]} s.

Command:

```
{p["command"]}
```
"""
    (RESULTS / f"{name}.md").write_text(text)


if __name__ == "__main__":
    main()
