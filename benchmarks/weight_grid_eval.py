"""Evaluating on the current weights' grid against the grid stored at the last step.

A weight's quantizer stores the range of the weights it saw in the last training forward;
the optimizer's step then moves the weights. Evaluation used to round the moved weights on
that stored (one step old) grid, clipping any weight that grew past it; it now rounds them
on their own grid (:class:`lorap_dist.quant.CurrentRangeObserver`), as an integer export
of the same weights would. This script measures what the change does to the reported
accuracy: every run trains once and, after each epoch's evaluation (the current grid),
evaluates again on the stored grid; each rule then picks its own best validation epoch
(early stopping follows the current grid's scores). Planetoid, public split, the project's
defaults, prompt off, seeds 0..n-1.

Writes ``benchmarks/results/weight_grid_eval.json`` (rows: dataset, model, scheme, bits,
test on each grid (mean ± std), the paired difference, how many seeds pick the same epoch,
and the largest per-epoch change in test accuracy)::

    python benchmarks/weight_grid_eval.py [--seeds 10] [--jobs 2] [--root data/planetoid]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from accuracy_planetoid import experiment, mean_sem, merged  # noqa: E402
from common import mean_std, write_report, write_result  # noqa: E402

from lorap_dist.config import ExperimentConfig  # noqa: E402

NAME = "weight_grid_eval"
CELLS = [  # (dataset, model, scheme, bits)
    ("Cora", "gcn", "qat", 4),
    ("Cora", "gcn", "degree_quant", 4),
    ("Cora", "gin", "qat", 4),
    ("Cora", "gin", "degree_quant", 4),
    ("CiteSeer", "gcn", "qat", 4),
    ("CiteSeer", "gat", "qat", 4),
    ("Cora", "gcn", "qat", 8),
]


def on_stored_grid(model: Any, graph: Any, nodes: Any) -> dict[str, float]:
    """Accuracy per split with every weight rounded on its stored (last step's) grid."""
    from lorap_dist.quant.observers import CurrentRangeObserver
    from lorap_dist.train import FullBatchRunner

    observers = [m for m in model.modules() if isinstance(m, CurrentRangeObserver)]
    was_training = model.training
    for observer in observers:
        observer.follows_input = False
    try:
        return FullBatchRunner(graph, nodes).evaluate(model)  # as train() evaluates
    finally:
        for observer in observers:
            observer.follows_input = True
        model.train(was_training)


def _run(task: tuple[dict[str, Any], int]) -> dict[str, Any]:
    from lorap_dist.graph.block import NodeInfo
    from lorap_dist.train import load_graph, train

    config_dict, seed = task
    torch.set_num_threads(1)
    changes = {"train": {"seed": seed, "device": "cpu"}}  # the graph stays on the CPU
    config = ExperimentConfig.from_dict(merged(config_dict, changes))
    graph = load_graph(config)
    nodes = NodeInfo(ids=torch.arange(graph.num_nodes), degree=graph.in_degree())
    epochs: list[dict[str, float]] = []

    def both_grids(report: Any, model: Any) -> None:
        stored = on_stored_grid(model, graph, nodes)
        row = report.row
        epochs.append(
            {"epoch": row["epoch"], "valid": row["valid"], "test": row["test"]}
            | {f"stored_{k}": v for k, v in stored.items()}
        )

    result, _ = train(config, graph, progress=False, on_epoch=both_grids)
    # each rule's best validation epoch: the first with the highest score (BestEpoch's rule)
    stored_best = max(epochs, key=lambda e: e["stored_valid"])
    return {
        "current": 100 * result.test_acc,
        "stored": 100 * stored_best["stored_test"],
        "same_epoch": stored_best["epoch"] == result.best_epoch,
        "largest_change": 100 * max(abs(e["test"] - e["stored_test"]) for e in epochs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--root", default="data/planetoid")
    args = parser.parse_args()
    tasks = [
        (experiment(dataset, model, scheme, bits, "none", args.root), seed)
        for dataset, model, scheme, bits in CELLS
        for seed in range(args.seeds)
    ]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        outcomes = list(pool.map(_run, tasks))
    rows, table = [], []
    for i, (dataset, model, scheme, bits) in enumerate(CELLS):
        runs = outcomes[i * args.seeds : (i + 1) * args.seeds]
        current, stored = [r["current"] for r in runs], [r["stored"] for r in runs]
        row = {
            "dataset": dataset,
            "model": model,
            "scheme": scheme,
            "bits": bits,
            "current_grid": mean_std(current),
            "stored_grid": mean_std(stored),
            "current_minus_stored": mean_sem([c - s for c, s in zip(current, stored, strict=True)]),
            "same_epoch": sum(r["same_epoch"] for r in runs),
            "largest_change": max(r["largest_change"] for r in runs),
            "n_seeds": args.seeds,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        table.append(
            [
                dataset,
                model,
                f"{scheme} INT{bits}",
                "{:.1f} ± {:.1f}".format(*row["current_grid"]),
                "{:.1f} ± {:.1f}".format(*row["stored_grid"]),
                row["current_minus_stored"],
                f"{row['same_epoch']}/{args.seeds}",
                f"{row['largest_change']:.1f}",
            ]
        )
    write_result(NAME, {"rows": rows, "seeds": args.seeds})
    header = [
        "dataset",
        "model",
        "scheme",
        "test %, current grid (now)",
        "test %, stored grid (before)",
        "current minus stored, paired",
        "same best epoch",
        "largest change at one epoch (points)",
    ]
    intro = (
        f"Test accuracy (%) at each rule's best validation epoch, mean ± std over "
        f"{args.seeds} seeds; paired: mean ± standard error of the per-seed differences."
    )
    write_report(NAME, intro, header, table)


if __name__ == "__main__":
    main()
