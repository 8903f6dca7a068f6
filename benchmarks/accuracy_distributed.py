"""Real citation graphs through the distributed path, against one process training full-batch.

Cora and CiteSeer (Planetoid's raw files, public split) are prepared into 2 parts (metis,
Arrow, the features row-normalised as for full-batch training) and trained two ways on the
same prepared dataset, seed by seed:

- **1 process, full batch**: ``lorap train`` on the prepared directory (one Adam step an
  epoch over the whole graph);
- **2 Ray Train workers, sampled**: one partition each, neighbour-sampled blocks (fanout
  [10, 10]) whose remote rows come through the feature exchange, gradients all-reduced by
  DDP, evaluated exactly on full neighbourhoods every epoch (``dist.eval_every: 1``). A
  worker's training seeds fit in one batch (``train.batch_size: 512``), so both ways take
  one optimiser step an epoch and differ by the sampling, the partitioning and the
  data-parallel step.

Both use the package's defaults for a 2-layer GCN (``--arch gin``: GIN; hidden 64, dropout
0.5, Adam lr 0.01, weight decay 5e-4, 200 epochs, patience 50) and its default prompt
training: LoRAP tuned on the frozen backbone after the run (at 10 x lr full-batch and 0.1 x
lr sampled, the package's defaults for each), reported only when it beats the scheme alone
on validation. So one prompted run gives the scheme alone (``before_tuning``, its best epoch
before tuning) and the run as reported: the LoRAP effect is paired within each run.

Writes ``benchmarks/results/accuracy_distributed.json`` (rows: dataset, mode, scheme, seed,
test_acc (the reported model), alone_test_acc, valid_acc, alone_valid_acc, prompt_kept,
best_epoch, epochs, wall_s; and per dataset and scheme ``distributed_minus_full_batch`` and
``lorap_minus_alone``, means ± standard errors over seeds) and
``benchmarks/results/accuracy_distributed.md``::

    .venv/bin/python benchmarks/accuracy_distributed.py [--seeds 5] [--datasets Cora,CiteSeer]
        [--arch gcn|gin]

``--name`` writes ``<name>.{json,md}`` instead (``accuracy_distributed_block_degrees`` holds
Cora measured before GCN read the full graph's degrees on sampled blocks;
``accuracy_distributed_gin_weighted_sums`` GIN with its sums over a block weighted by the
full graph's degrees, a change measured at commit ffc63b9 and reverted);
``--resume`` keeps the runs a file already holds. Raw files under ``<planetoid-root>/<Name>/raw/``
(BENCHMARKS.md says where they came from).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RESULTS,
    machine,
    mean_sem,
    prepared_once,
    write_report,
    write_result,
)

PREPARED = REPO / "data" / "prepared"
WORKERS = 2
#: scheme -> (quant, prompt) sections; INT4, LoRAP on the quantized ones.
SCHEMES = {
    "fp32": ({"scheme": "none", "options": {}}, {"kind": "none"}),
    "qat": ({"scheme": "qat", "options": {"bits": 4}}, {"kind": "lorap", "k": 8, "r": 4}),
    "degree_quant": (
        {"scheme": "degree_quant", "options": {"bits": 4}},
        {"kind": "lorap", "k": 8, "r": 4},
    ),
}
MODES = ("full_batch", "distributed")


def prepared(name: str, root: Path) -> Path:
    """``name`` prepared into :data:`WORKERS` parts, once."""
    out = PREPARED / f"{name.lower()}-{WORKERS}p"
    return prepared_once(out, source=f"planetoid:{name}", root=str(root), parts=WORKERS)


def experiment(path: Path, scheme: str, seed: int, mode: str, storage: str, arch: str) -> Any:
    from lorap_dist.config import ExperimentConfig

    quant, prompt = SCHEMES[scheme]
    config = ExperimentConfig().to_dict()  # the built-in default's model and recipe
    config["model"]["arch"] = arch
    config["data"] = {"source": "dir", "path": str(path)}
    config["quant"], config["prompt"] = quant, prompt
    config["train"]["seed"] = seed
    if mode == "distributed":
        config["train"] |= {"fanout": [10, 10], "batch_size": 512}
        config["dist"] = {
            "num_workers": WORKERS,
            "cpus_per_worker": 1,
            "storage_path": storage,
            "name": f"{path.name}-{arch}-{scheme}-{seed}",
            "eval_every": 1,
            "checkpoint_every": 1000,
            "keep_checkpoints": 1,
            "max_failures": 0,
        }
    return ExperimentConfig.from_dict(config)


def one_run(
    path: Path, scheme: str, seed: int, mode: str, storage: str, arch: str
) -> dict[str, Any]:
    """Train once; the reported model's figures and, with a prompt, the scheme alone's."""
    config = experiment(path, scheme, seed, mode, storage, arch)
    started = time.perf_counter()
    if mode == "distributed":
        from lorap_dist.distributed.trainer import run_distributed

        summary = run_distributed(config, config.dist)
        test, valid = summary["best_test_acc"], summary["best_valid_acc"]
        before = summary.get("before_tuning")
    else:
        from lorap_dist.train import train

        result = train(config, progress=False)[0].to_dict()
        summary, test, valid = result, result["test_acc"], result["valid_acc"]
        before = result.get("before_tuning")
    row = {
        "mode": mode,
        "scheme": scheme,
        "seed": seed,
        "test_acc": test,
        "valid_acc": valid,
        "alone_test_acc": before["test"] if before else test,
        "alone_valid_acc": before["valid"] if before else valid,
        "best_epoch": summary["best_epoch"],
        "epochs": summary.get("epochs_run", summary.get("epochs")),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    # The prompted model is reported only when it won on validation: its epoch is then a
    # tuning epoch, not the scheme's best.
    row["prompt_kept"] = before is not None and row["best_epoch"] != before["epoch"]
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset and scheme: each mode's means and the paired differences over seeds."""
    out: dict[str, Any] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for scheme in SCHEMES:
            cell = {
                m: {
                    r["seed"]: r
                    for r in rows
                    if (r["dataset"], r["scheme"], r["mode"]) == (dataset, scheme, m)
                }
                for m in MODES
            }
            seeds = sorted(set(cell["full_batch"]) & set(cell["distributed"]))
            if not seeds:
                continue
            entry: dict[str, Any] = {"seeds": seeds}
            for mode in MODES:
                runs = [cell[mode][s] for s in seeds]
                entry[mode] = {
                    "test": round(100 * statistics.fmean(r["test_acc"] for r in runs), 2),
                    "alone": round(100 * statistics.fmean(r["alone_test_acc"] for r in runs), 2),
                    "kept": sum(r["prompt_kept"] for r in runs),
                    "lorap_minus_alone": mean_sem(
                        [100 * (r["test_acc"] - r["alone_test_acc"]) for r in runs]
                    ),
                }
            for key, prefix in (("test_acc", ""), ("alone_test_acc", "alone_")):
                entry[f"{prefix}distributed_minus_full_batch"] = mean_sem(
                    [
                        100 * (cell["distributed"][s][key] - cell["full_batch"][s][key])
                        for s in seeds
                    ]
                )
            out[f"{dataset} {scheme}"] = entry
    return out


def report(name: str, summary: dict[str, Any], arch: str) -> None:
    table = []
    for key, e in summary.items():
        prompted = SCHEMES[key.split()[1]][1]["kind"] != "none"
        fb, di = e["full_batch"], e["distributed"]
        table.append(
            [
                key,
                len(e["seeds"]),
                f"{fb['alone']:.2f}" if prompted else "-",
                f"{fb['test']:.2f}",
                f"{di['alone']:.2f}" if prompted else "-",
                f"{di['test']:.2f}",
                e["alone_distributed_minus_full_batch"] if prompted else "-",
                e["distributed_minus_full_batch"],
                f"{fb['lorap_minus_alone']} ({fb['kept']})" if prompted else "-",
                f"{di['lorap_minus_alone']} ({di['kept']})" if prompted else "-",
            ]
        )
    write_report(
        name,
        f"Test accuracy (%), mean over seeds, {arch.upper()} INT4 (FP32 for `fp32`); 'alone' is "
        "the scheme's best epoch before prompt tuning, in the same run; the reported model is "
        "the prompted one only where it beat that on validation (how many seeds: in "
        "brackets). Differences are paired by seed, mean ± standard error.",
        [
            "dataset, scheme",
            "seeds",
            "1 process: alone",
            "1 process: reported",
            "2 workers: alone",
            "2 workers: reported",
            "2 workers - 1 process, alone",
            "2 workers - 1 process, reported",
            "LoRAP - alone, 1 process",
            "LoRAP - alone, 2 workers",
        ],
        table,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--datasets", default="Cora,CiteSeer")
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--arch", default="gcn", choices=("gcn", "gin"), help="the model")
    parser.add_argument("--planetoid-root", type=Path, default=REPO / "data" / "planetoid")
    parser.add_argument("--resume", action="store_true", help="keep the runs already written")
    parser.add_argument("--name", default="accuracy_distributed", help="result file name")
    args = parser.parse_args()

    from lorap_dist.ray_session import ray_session

    path = RESULTS / f"{args.name}.json"
    rows = json.loads(path.read_text())["rows"] if args.resume and path.is_file() else []
    if any(r.get("arch", "gcn") != args.arch for r in rows):
        parser.error(f"{path} holds runs of another model than --arch {args.arch}; use --name")
    done = {(r["dataset"], r["mode"], r["scheme"], r["seed"]) for r in rows}
    with tempfile.TemporaryDirectory() as storage, ray_session(WORKERS, join=False):
        for dataset in args.datasets.split(","):
            data = prepared(dataset, args.planetoid_root)
            for seed in range(args.seeds):
                for scheme in args.schemes.split(","):
                    for mode in MODES:
                        if (dataset, mode, scheme, seed) in done:
                            continue
                        run = one_run(data, scheme, seed, mode, storage, args.arch)
                        row = {"dataset": dataset, "arch": args.arch} | run
                        print(f"[accuracy_distributed] {row}", flush=True)
                        rows.append(row)
                        summary = summarise(rows)
                        write_result(
                            args.name,
                            {
                                "machine": machine(),
                                "workers": WORKERS,
                                "arch": args.arch,
                                "summary": summary,
                                "rows": rows,
                            },
                        )
    report(args.name, summarise(rows), args.arch)


if __name__ == "__main__":
    main()
