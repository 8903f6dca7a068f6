"""Idle OpenMP threads that spin or sleep: ``lorap train`` on a quiet and on a busy machine.

PyTorch's CPU ops meet all their OpenMP threads at the end of every parallel region. By
default the OpenMP runtime (libgomp) lets a thread that arrives early spin for a while; when
other processes hold the cores, the thread it waits for is not running, and the spinning
takes the time slice it needs. ``lorap_dist`` now sets ``OMP_WAIT_POLICY=PASSIVE`` (sleep)
unless the user set a value (``lorap_dist/__init__.py``). This script times the built-in
default run (``lorap train --set train.epochs=E``, a 2-layer GCN at INT4 with LoRAP on the
generated graph, all cores) with the runtime's default (the variable unset and torch imported
before the package, as before this change) and with ``PASSIVE``, on the machine as it is and
with ``--busy N`` processes spinning on the cores beside it, taking turns, medians of the
repeats.

Writes ``benchmarks/results/openmp_wait.json`` (rows: machine_state, policy, seconds,
user_cpu_s; and ``default_vs_passive``, the ratio of the times, per state) and
``benchmarks/results/openmp_wait.md``::

    .venv/bin/python benchmarks/openmp_wait.py [--repeats 3] [--epochs 10] [--busy 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_report, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ("runtime default", "PASSIVE")
#: ``lorap train`` with torch imported first, so that the package's default is not applied.
TORCH_FIRST = "import sys, torch; from lorap_dist.cli import main; sys.exit(main())"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--busy", type=int, default=2, help="spinning processes beside the run")
    return p.parse_args()


def spin() -> None:
    while True:
        pass


def timed_run(policy: str, epochs: int) -> tuple[float, float]:
    """Wall seconds and user CPU seconds of one ``lorap train`` run with ``policy``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy == "PASSIVE":
        env["OMP_WAIT_POLICY"] = policy
    command = [sys.executable, "-c", TORCH_FIRST, "train", "--no-progress"]
    command += ["--set", f"train.epochs={epochs}", "--set", "train.patience=0"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    t0 = time.perf_counter()
    subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True)
    seconds = time.perf_counter() - t0
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before


def measure(args: argparse.Namespace, state: str) -> list[dict]:
    times: dict[str, list[tuple[float, float]]] = {p: [] for p in POLICIES}
    for _ in range(args.repeats):
        for policy in POLICIES:  # taking turns
            times[policy].append(timed_run(policy, args.epochs))
            print(state, policy, f"{times[policy][-1][0]:.1f} s", flush=True)
    return [
        {
            "machine_state": state,
            "policy": policy,
            "seconds": round(statistics.median(t[0] for t in runs), 2),
            "user_cpu_s": round(statistics.median(t[1] for t in runs), 2),
            "runs_s": [round(t[0], 2) for t in runs],
        }
        for policy, runs in times.items()
    ]


def main() -> None:
    args = parse_args()
    rows = measure(args, "as it is")
    busy = [mp.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()
    try:
        rows += measure(args, f"{args.busy} spinning processes beside it")
    finally:
        for p in busy:
            p.terminate()
    ratios = {}
    for state in dict.fromkeys(r["machine_state"] for r in rows):
        by = {r["policy"]: r["seconds"] for r in rows if r["machine_state"] == state}
        ratios[state] = round(by["runtime default"] / by["PASSIVE"], 2)
    write_result(
        "openmp_wait",
        {
            "command": "python benchmarks/openmp_wait.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "cpus": os.cpu_count(),
            "epochs": args.epochs,
            "repeats": args.repeats,
            "rows": rows,
            "default_vs_passive": ratios,
        },
    )
    write_report(
        "openmp_wait",
        f"`lorap train --set train.epochs={args.epochs}` (the built-in default, all "
        f"{os.cpu_count()} cores), median of {args.repeats} runs per policy, taking turns.",
        ["machine", "OMP_WAIT_POLICY", "seconds", "user CPU s", "default / PASSIVE time"],
        [
            [
                r["machine_state"],
                r["policy"],
                r["seconds"],
                r["user_cpu_s"],
                ratios[r["machine_state"]] if r["policy"] == "PASSIVE" else "",
            ]
            for r in rows
        ],
    )


if __name__ == "__main__":
    main()
