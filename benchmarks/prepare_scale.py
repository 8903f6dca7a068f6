"""Claim: `lorap prepare` handles an ogbn-products-sized graph in minutes and bounded memory,
and its cost per edge stays flat as the graph grows.

Each configuration runs as its own child process (the whole prepare pipeline, Ray included,
on a generated graph shaped like ogbn-products: 2,449,029 nodes, about 61.9 M undirected
edges, 100-dim features, 47 classes, at ``--scale`` times that size). The parent polls the
child's whole process tree (driver, raylet, Ray workers) and records the peak of the summed
proportional set size (PSS: shared pages split between the processes that map them, so
memory-mapped files are not counted twice).

    python benchmarks/prepare_scale.py --scale 1 --partitioner stream
    python benchmarks/prepare_scale.py --scale 1 --partitioner metis

Rows are merged into ``benchmarks/results/prepare_scale.json`` and the Markdown table is
rewritten into ``benchmarks/results/prepare_scale.md``. Run configurations one at a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

PRODUCTS_NODES = 2_449_029
PRODUCTS_UNDIRECTED_EDGES = 61_859_140
RESULTS = Path(__file__).parent / "results"


def run_one(scale: float, partitioner: str, parts: int, workdir: Path) -> dict:
    """Child: prepare one generated graph and report what meta.json says (no memory)."""
    from lorap_dist.config import SyntheticConfig
    from lorap_dist.graph.prepare import PrepareOptions, prepare
    from lorap_dist.graph.storage import read_meta

    nodes = int(PRODUCTS_NODES * scale)
    cfg = SyntheticConfig(
        num_nodes=nodes,
        avg_degree=2 * PRODUCTS_UNDIRECTED_EDGES / PRODUCTS_NODES,
        num_features=100,
        num_classes=47,
        homophily=0.8,
        train_fraction=0.1,
        valid_fraction=0.02,
    )
    out = workdir / "dataset"
    started = time.perf_counter()
    prepare(
        PrepareOptions(
            out=out,
            parts=parts,
            partitioner=partitioner,
            synthetic=cfg,
            overwrite=True,
            progress=True,
            workers=2,
        )
    )
    wall = time.perf_counter() - started
    meta = read_meta(out)
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    shutil.rmtree(out)
    return {
        "nodes": nodes,
        "edges": meta["num_edges"],
        "parts": parts,
        "partitioner": partitioner,
        "wall_s": round(wall, 1),
        "edge_cut": meta["edge_cut"],
        "disk_gib": round(disk / 2**30, 2),
    }


def tree_pss(root: psutil.Process) -> int:
    """Summed PSS (bytes) of a process and all its descendants."""
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def measure(scale: float, partitioner: str, parts: int) -> dict:
    """Parent: run one configuration in a child process and poll its memory."""
    workdir = Path(tempfile.mkdtemp(prefix="prepare-scale-"))
    command = [
        sys.executable,
        __file__,
        "--child",
        "--scale",
        str(scale),
        "--partitioner",
        partitioner,
        "--parts",
        str(parts),
        "--workdir",
        str(workdir),
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    root = psutil.Process(child.pid)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_pss(root))
        time.sleep(1.0)
    output = child.stdout.read()
    shutil.rmtree(workdir, ignore_errors=True)
    if child.returncode != 0:
        raise SystemExit(f"prepare failed (exit {child.returncode}) at scale {scale}")
    row = json.loads(output.strip().splitlines()[-1])
    row["peak_rss_gib"] = round(peak / 2**30, 2)
    row["us_per_edge"] = round(row["wall_s"] / row["edges"] * 1e6, 3)
    return row


def write_results(row: dict) -> None:
    path = RESULTS / "prepare_scale.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    rows = [
        r
        for r in rows
        if (r["nodes"], r["partitioner"], r["parts"])
        != (row["nodes"], row["partitioner"], row["parts"])
    ] + [row]
    rows.sort(key=lambda r: (r["partitioner"], r["nodes"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        "| nodes | edges (directed) | parts | partitioner | wall (s) | peak PSS (GiB) "
        "| edge cut | us / edge | disk (GiB) |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['nodes']:,} | {r['edges']:,} | {r['parts']} | {r['partitioner']} | "
            f"{r['wall_s']} | {r['peak_rss_gib']} | {r['edge_cut']:.3f} | "
            f"{r['us_per_edge']} | {r['disk_gib']} |"
        )
    (RESULTS / "prepare_scale.md").write_text(
        "## prepare at scale (generated ogbn-products-shaped graphs, 2-core machine)\n\n"
        + "\n".join(lines)
        + "\n\nCommand (one configuration at a time):\n\n"
        "    .venv/bin/python benchmarks/prepare_scale.py "
        "--scale S --partitioner {stream,metis}\n\n"
        "Edges are directed CSR entries after symmetrizing and deduplicating (about twice "
        "the undirected count). Peak PSS is summed over the driver, raylet and Ray workers.\n"
    )
    print(lines[0], lines[1], lines[-1], sep="\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="times ogbn-products' size")
    parser.add_argument("--partitioner", default="stream", choices=["stream", "metis", "random"])
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.scale, args.partitioner, args.parts, args.workdir)))
        return
    write_results(measure(args.scale, args.partitioner, args.parts))


if __name__ == "__main__":
    main()
