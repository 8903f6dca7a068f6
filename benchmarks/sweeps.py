"""Collect the rank and scheme x prompt sweeps into ``benchmarks/results/sweeps.{json,md}``.

The sweeps themselves run with ``lorap sweep`` (see ``benchmarks/results/sweeps.md`` for the
exact commands); this script reads their ``trials.parquet`` files, prints one line per
configuration and the Markdown tables, and writes the JSON (per configuration: scheme,
prompt, bits, r, k, accuracy mean and std over seeds, seed count) and the plots
(``sweeps_<sweep>_*.png``).

    python benchmarks/sweeps.py --rank runs/sweeps/rank-e30/results/trials.parquet \
        --schemes runs/sweeps/schemes-e30/results/trials.parquet
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import pandas as pd
from common import RESULTS, machine, write_result

from lorap_dist.tune import markdown_summary, render_plots, summarize


def nominal_bits(row: dict[str, Any]) -> int | None:
    """The bit width a configuration targets: ``bits``, A2Q's ``init_bits``, MixQ's widest
    candidate; ``None`` for a float model."""
    if row.get("quant.scheme") in (None, "none"):
        return None
    for column in ("quant.options.bits", "quant.options.init_bits"):
        value = row.get(column)
        if value is not None and not pd.isna(value):
            return int(value)
    candidates = row.get("quant.options.candidate_bits")
    return max(json.loads(candidates)) if isinstance(candidates, str) else None


def configurations(trials: pd.DataFrame, sweep: str) -> list[dict[str, Any]]:
    """One record per configuration: the JSON's rows."""
    records = []
    for _, group in trials.groupby("point", sort=False):
        done = group[group["status"] == "completed"]
        first = group.iloc[0].to_dict()
        acc = done["best_test_acc"]
        records.append(
            {
                "sweep": sweep,
                "scheme": first["quant.scheme"],
                "prompt": first["prompt.kind"],
                "bits": nominal_bits(first),
                "avg_bits": None if done.empty else float(done["avg_bits"].mean()),
                "r": int(first["prompt.r"]),
                "k": int(first["prompt.k"]),
                "acc_mean": None if acc.empty else float(acc.mean()),
                "acc_std": None if acc.empty else float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                "n_seeds": int(len(done)),
                "n_failed": int((group["status"] == "failed").sum()),
                "prompt_params": None if done.empty else int(done["params_prompt"].iloc[0]),
                "epochs": int(first["train.epochs"]),
            }
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", required=True, help="trials.parquet of the rank sweep")
    parser.add_argument("--schemes", required=True, help="trials.parquet of the scheme sweep")
    args = parser.parse_args()

    records: list[dict[str, Any]] = []
    tables: dict[str, str] = {}
    notes: dict[str, list[str]] = {}
    for sweep, path in (("rank", args.rank), ("schemes", args.schemes)):
        trials = pd.read_parquet(path)
        records += configurations(trials, sweep)
        tables[sweep] = markdown_summary(summarize(trials))
        _, notes[sweep] = render_plots(trials, RESULTS, prefix=f"sweeps_{sweep}_")
    for record in records:
        acc = "-" if record["acc_mean"] is None else f"{100 * record['acc_mean']:.2f}"
        print(
            f"{record['sweep']:8s} {record['scheme']:13s} {record['prompt']:9s} "
            f"bits={record['bits']} r={record['r']} k={record['k']} acc={acc} "
            f"n={record['n_seeds']}"
        )
    write_result("sweeps", {"machine": machine(), "configurations": records})
    for name, table in tables.items():
        print(f"\n## {name}\n\n{table}\n")
    print(f"wrote {RESULTS / 'sweeps.json'} and the sweeps_*.png plots")
    for sweep, lines in notes.items():
        for line in lines:
            print(f"{sweep}: {line}")


if __name__ == "__main__":
    main()
