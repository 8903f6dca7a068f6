"""Is a trained prompt in the model a prompted run reports? And when it is, does it help?

A run reports the model of its best validation epoch. The prompts' warm start
(``train.prompt_warmup``, a quarter of the epochs by default) holds them still, at an
output of zero, for the first epochs; a run whose best epoch falls inside it reports its
scheme without a trained prompt, and its "prompted" accuracy is its scheme alone's, seed
for seed. This script runs, side by side over the same seeds on the Planetoid graphs (GCN,
INT4, the shipped defaults otherwise):

- the scheme alone;
- + LoRAP with the default warm start;
- + LoRAP trained from the first step (``train.prompt_warmup: 0``), whose best epoch always
  has a trained prompt;

and reports for each prompted arm its paired difference with the scheme alone, how many
seeds report a trained prompt (best epoch at or after the first epoch that trained it,
``TrainResult.prompt_start_epoch``), their best epochs, and the paired difference over
those seeds only. Writes ``benchmarks/results/prompt_in_reported_model.{json,md}``:

    python benchmarks/prompt_in_reported_model.py [--datasets Cora,CiteSeer] \\
        [--schemes qat,degree_quant] [--seeds 10] [--jobs 2] [--root data/planetoid]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy_planetoid import (  # noqa: E402
    experiment,
    mean_sem,
    merged,
    reports_trained_prompt,
    run_settings,
)
from common import machine, write_report, write_result  # noqa: E402

ARMS = {
    "alone": ("none", {}),
    "+ LoRAP, warm start (default)": ("lorap", {}),
    "+ LoRAP from the first step": ("lorap", {"train": {"prompt_warmup": 0}}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=["Cora", "CiteSeer"])
    parser.add_argument("--schemes", type=lambda s: s.split(","), default=["qat", "degree_quant"])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--root", default="data/planetoid", help="Planetoid raw files")
    args = parser.parse_args()

    settings = []
    for dataset in args.datasets:
        for scheme in args.schemes:
            for arm, (prompt, changes) in ARMS.items():
                config = merged(experiment(dataset, "gcn", scheme, 4, prompt, args.root), changes)
                key = {"dataset": dataset, "scheme": scheme, "arm": arm}
                settings.append(
                    {"key": key, "config": config, "label": f"{dataset} gcn {scheme} {arm}"}
                )
    outcomes: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    run_settings(
        settings,
        args.seeds,
        args.jobs,
        lambda setting, runs: outcomes.__setitem__(tuple(setting["key"].values()), list(runs)),
    )

    rows, table = [], []
    for dataset in args.datasets:
        for scheme in args.schemes:
            alone = outcomes[(dataset, scheme, "alone")]
            for arm in list(ARMS)[1:]:
                runs = outcomes[(dataset, scheme, arm)]
                diffs = [r["test"] - a["test"] for r, a in zip(runs, alone, strict=True)]
                kept = [
                    d
                    for d, r in zip(diffs, runs, strict=True)
                    if reports_trained_prompt(r["best_epoch"], r["prompt_start"])
                ]
                row = {
                    "dataset": dataset,
                    "model": "gcn",
                    "scheme": scheme,
                    "bits": 4,
                    "arm": arm,
                    "acc_mean": round(statistics.fmean(r["test"] for r in runs), 2),
                    "alone_mean": round(statistics.fmean(a["test"] for a in alone), 2),
                    "paired_mean": round(statistics.fmean(diffs), 2),
                    "seeds_trained": len(kept),
                    "paired_mean_trained": round(statistics.fmean(kept), 2) if kept else None,
                    "best_epochs": [r["best_epoch"] for r in runs],
                    "alone_best_epochs": [a["best_epoch"] for a in alone],
                    "prompt_starts": [r["prompt_start"] for r in runs],
                    "accs": [round(r["test"], 1) for r in runs],
                    "alone_accs": [round(a["test"], 1) for a in alone],
                    "n_seeds": len(runs),
                }
                rows.append(row)
                epochs = sorted(row["best_epochs"])
                table.append([
                    dataset, scheme, arm, f"{row['alone_mean']:.1f}", f"{row['acc_mean']:.1f}",
                    mean_sem(diffs), f"{len(kept)}/{len(runs)}", mean_sem(kept),
                    " ".join(str(e) for e in epochs),
                ])  # fmt: skip
    write_result("prompt_in_reported_model", {"machine": machine(), "rows": rows})
    header = ["dataset", "scheme", "arm", "alone", "prompted", "minus alone, paired",
              "seeds reporting a trained prompt", "minus alone over those seeds",
              "best epochs (sorted)"]  # fmt: skip
    write_report(
        "prompt_in_reported_model",
        f"GCN, INT4, {args.seeds} seeds, test % at the best validation epoch",
        header,
        table,
    )


if __name__ == "__main__":
    main()
