"""How long a distributed run waits for Ray Train to collect its epoch reports.

Ray Train's controller collects a worker's epoch report when it polls the workers, every
``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` seconds (2 by Ray's default), and a worker's next
report waits until the last one has been collected: a run whose epochs are shorter than the
interval waits out the rest of every epoch. ``lorap train`` and the Tune trials now poll
every :func:`lorap_dist.distributed.trainer.poll_interval` seconds (0.1 for 2 workers)
unless the user set the variable. This script runs the main job's config
(``jobs/configs/distributed-default.yaml``: 2 workers, GCN, INT4 QAT + LoRAP, 20 epochs
with the last 5 tuning the prompts) on real Cora and on the main job's generated graph,
with Ray's interval and with the package's, taking turns, in one Ray instance, and reports
the median wall time of each (Ray already started; the worker group's start included) and
whether both gave the same run.

Writes ``benchmarks/results/report_interval.json`` (rows: graph, interval, repeat, wall_s,
epochs, epoch_s, best_test_acc, best_valid_acc, best_epoch; and per graph ``ray_default_s``,
``package_s``, ``speedup`` and ``same_results``) and ``benchmarks/results/report_interval.md``::

    .venv/bin/python benchmarks/report_interval.py [--repeats 3] [--planetoid-root data/planetoid]

Cora's raw Planetoid files go under ``<planetoid-root>/Cora/raw/`` (BENCHMARKS.md says where
they came from); both graphs are prepared into 2 parts under ``data/prepared/`` once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, prepared_once, write_report, write_result  # noqa: E402

CONFIG = REPO / "jobs" / "configs" / "distributed-default.yaml"
PREPARED = REPO / "data" / "prepared"
RAY_DEFAULT = "2"  # Ray Train's DEFAULT_HEALTH_CHECK_INTERVAL_S
RESULT_KEYS = ("epochs", "epoch_s", "best_test_acc", "best_valid_acc", "best_epoch")


def prepared(graph: str, config: Any, planetoid_root: Path) -> Path:
    """The graph's 2-part dataset directory, prepared on first use."""
    out = PREPARED / f"{graph}-{config.dist.num_workers}p"
    parts = config.dist.num_workers
    if graph == "cora":
        return prepared_once(out, source="planetoid:Cora", root=str(planetoid_root), parts=parts)
    synthetic = config.data.synthetic
    return prepared_once(
        out, source="synthetic", synthetic=synthetic, seed=synthetic.seed, parts=parts
    )


def one_run(graph: str, path: Path, interval: str | None, repeat: int, storage: str) -> dict:
    """The main job's config on ``path``; ``interval`` ``None`` leaves the package's."""
    from lorap_dist.cli import load_config
    from lorap_dist.distributed.trainer import CONTROLLER_POLL_INTERVAL, run_distributed

    config = load_config(str(CONFIG), [])
    config.data.path = str(path)
    config.dist.storage_path = storage
    config.dist.name = f"{graph}-{interval or 'package'}-{repeat}"
    if interval is not None:
        os.environ[CONTROLLER_POLL_INTERVAL] = interval  # as a user would set it
    try:
        started = time.perf_counter()
        summary = run_distributed(config, config.dist)
        wall = time.perf_counter() - started
    finally:
        os.environ.pop(CONTROLLER_POLL_INTERVAL, None)
    row = {"graph": graph, "interval": interval or "package", "repeat": repeat, "wall_s": wall}
    row |= {key: summary[key] for key in RESULT_KEYS}
    print(f"[report_interval] {row}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--graphs", default="cora,synthetic", help="cora and/or synthetic")
    parser.add_argument("--planetoid-root", type=Path, default=REPO / "data" / "planetoid")
    args = parser.parse_args()

    from lorap_dist.cli import load_config
    from lorap_dist.distributed.trainer import poll_interval
    from lorap_dist.ray_session import ray_session

    config = load_config(str(CONFIG), [])
    graphs = {g: prepared(g, config, args.planetoid_root) for g in args.graphs.split(",")}
    package = f"{poll_interval(config.dist.num_workers):g}"
    rows = []
    with tempfile.TemporaryDirectory() as storage, ray_session(2, join=False):
        for repeat in range(args.repeats):
            for graph, path in graphs.items():
                for interval in (RAY_DEFAULT, None):
                    rows.append(one_run(graph, path, interval, repeat, storage))

    summary = {}
    for graph in graphs:
        mine = [r for r in rows if r["graph"] == graph]
        ray_s = statistics.median(r["wall_s"] for r in mine if r["interval"] == RAY_DEFAULT)
        ours_s = statistics.median(r["wall_s"] for r in mine if r["interval"] == "package")
        runs = {tuple(r[k] for k in RESULT_KEYS if k != "epoch_s") for r in mine}
        summary[graph] = {
            "ray_default_s": round(ray_s, 1),
            "package_s": round(ours_s, 1),
            "speedup": round(ray_s / ours_s, 2),
            "same_results": len(runs) == 1,
        }
    write_result(
        "report_interval",
        {
            "machine": machine(),
            "config": str(CONFIG.relative_to(REPO)),
            "repeats": args.repeats,
            "package_interval_s": float(package),
            "ray_default_interval_s": float(RAY_DEFAULT),
            "graphs": summary,
            "rows": rows,
        },
    )
    table = [
        [
            graph,
            next(r["epochs"] for r in rows if r["graph"] == graph),
            s["ray_default_s"],
            s["package_s"],
            f"{s['speedup']:.2f}x",
            "yes" if s["same_results"] else "no",
            next(f"{r['best_test_acc']:.3f}" for r in rows if r["graph"] == graph),
        ]
        for graph, s in summary.items()
    ]
    write_report(
        "report_interval",
        f"The main job's config on 2 workers, median wall seconds of {args.repeats} runs each "
        f"(taking turns, one Ray instance), polling every {RAY_DEFAULT} s (Ray's default) and "
        f"every {package} s (the package's for 2 workers).",
        [
            "graph",
            "epochs",
            f"{RAY_DEFAULT} s poll: s",
            f"{package} s poll: s",
            "speedup",
            "same runs",
            "test acc",
        ],
        table,
    )


if __name__ == "__main__":
    main()
