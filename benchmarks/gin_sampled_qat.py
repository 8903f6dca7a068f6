"""Does sampling in training protect plain QAT INT4 GIN? One process, Cora, side by side.

``accuracy_distributed --arch gin`` found 2-worker sampled training 13 points above
1-process full-batch training for plain QAT INT4 GIN on Cora, and the gain gone once the
sampled sums were weighted to estimate the full-graph ones. This asks, on one process and
the same prepared dataset (Planetoid's raw files, 2 metis parts, as there), which of these
gives the gain, seed by seed (the scheme alone: no prompt):

- ``full_batch``: the package's defaults (plain QAT INT4, ``ema`` range observer);
- ``full_batch_percentile``: the same with the ``percentile`` observer, whose ranges leave
  the extreme values (the hubs' sums among them) out;
- ``sampled``: one process, neighbour-sampled blocks (fanout [10, 10], every training seed
  in one batch of 512, so still one Adam step an epoch), evaluated exactly on the full
  graph.

FP32 runs of the first and last setting are the reference. Writes
``benchmarks/results/gin_sampled_qat.{json,md}`` (rows: setting, scheme, seed, test_acc,
valid_acc, best_epoch; per setting the mean and, against ``full_batch``, the paired
difference)::

    .venv/bin/python benchmarks/gin_sampled_qat.py [--seeds 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_distributed import prepared  # noqa: E402
from common import machine, mean_sem, write_report, write_result  # noqa: E402

NAME = "gin_sampled_qat"
#: setting -> (quant options added to plain QAT INT4, train fields)
SETTINGS = {
    "full_batch": ({}, {}),
    "full_batch_percentile": ({"observer": "percentile"}, {}),
    "sampled": ({}, {"fanout": [10, 10], "batch_size": 512}),
}
SCHEMES = ("qat", "fp32")


def one_run(path: Path, setting: str, scheme: str, seed: int) -> dict[str, Any]:
    from lorap_dist.config import ExperimentConfig
    from lorap_dist.train import train

    options, train_fields = SETTINGS[setting]
    config = ExperimentConfig().to_dict()
    config["data"] = {"source": "dir", "path": str(path)}
    config["model"]["arch"] = "gin"
    config["prompt"] = {"kind": "none"}
    if scheme == "qat":
        config["quant"] = {"scheme": "qat", "options": {"bits": 4, **options}}
    else:
        config["quant"] = {"scheme": "none", "options": {}}
    config["train"] |= {"seed": seed, **train_fields}
    result = train(ExperimentConfig.from_dict(config), progress=False)[0].to_dict()
    return {
        "setting": setting,
        "scheme": scheme,
        "seed": seed,
        "test_acc": result["test_acc"],
        "valid_acc": result["valid_acc"],
        "best_epoch": result["best_epoch"],
    }


def summarise(rows: list[dict[str, Any]]) -> list[list[Any]]:
    table = []
    for scheme in SCHEMES:
        base = {r["seed"]: r for r in rows if (r["scheme"], r["setting"]) == (scheme, "full_batch")}
        for setting in SETTINGS:
            runs = {r["seed"]: r for r in rows if (r["scheme"], r["setting"]) == (scheme, setting)}
            if not runs:
                continue
            seeds = sorted(set(runs) & set(base))
            diff = mean_sem([100 * (runs[s]["test_acc"] - base[s]["test_acc"]) for s in seeds])
            table.append(
                [
                    "FP32" if scheme == "fp32" else "plain QAT INT4",
                    setting,
                    len(runs),
                    f"{100 * statistics.fmean(r['test_acc'] for r in runs.values()):.2f}",
                    "-" if setting == "full_batch" else diff,
                    statistics.median(r["best_epoch"] for r in runs.values()),
                ]
            )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--planetoid-root", type=Path, default=REPO / "data" / "planetoid")
    args = parser.parse_args()
    path = prepared("Cora", args.planetoid_root)
    rows = []
    for seed in range(args.seeds):
        for scheme in SCHEMES:
            for setting in SETTINGS:
                if scheme == "fp32" and setting == "full_batch_percentile":
                    continue  # no observer in FP32
                rows.append(one_run(path, setting, scheme, seed))
                print(f"[{NAME}] {rows[-1]}", flush=True)
                write_result(NAME, {"machine": machine(), "rows": rows})
    table = summarise(rows)
    write_result(NAME, {"machine": machine(), "rows": rows, "table": table})
    write_report(
        NAME,
        "Cora, 2-layer GIN, one process, the scheme alone (no prompt); test accuracy (%), "
        "mean over seeds; the difference to `full_batch` is paired by seed (mean ± standard "
        "error).",
        ["model", "setting", "seeds", "test %", "minus full_batch", "median best epoch"],
        table,
    )


if __name__ == "__main__":
    main()
