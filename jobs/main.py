"""The main job: what the README's first command (``bash jobs/quickstart.sh run``) runs.

1. Prepare the generated default graph (``data.synthetic`` of
   ``jobs/configs/distributed-default.yaml``) into one part per worker under ``data.path``
   (``data/synthetic-2p``), unless that directory already holds a dataset prepared with the
   same options (they are recorded in ``<data.path>/prepare_options.json``).
2. Start a local Ray instance (2 CPUs, no dashboard) and train on it with 2 Ray Train workers
   (``lorap train`` with the config's ``dist`` section).
3. Print the reported (best validation epoch's) test accuracy beside the last epoch's,
   training throughput (seeds/s) and the checkpoint path.

Extra arguments are ``lorap train`` overrides, e.g. ``--set train.epochs=5``::

    python jobs/main.py [--config FILE] [--set KEY=VALUE ...] [--resume PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "jobs" / "configs" / "distributed-default.yaml"
OPTIONS_FILE = "prepare_options.json"


def prepare_options(config: Any) -> dict[str, Any]:
    """What the dataset directory must have been prepared with, as a plain dict."""
    from lorap_dist.config import to_dict

    return {
        "source": "synthetic",
        "parts": config.dist.num_workers,
        "partitioner": "metis",
        "features": "fp32",
        "synthetic": to_dict(config.data.synthetic),
    }


def ensure_prepared(config: Any) -> tuple[Path, bool]:
    """Prepare ``config.data.path`` unless it holds the same preparation already.

    Returns:
        The dataset directory and whether it was (re)prepared by this call.
    """
    from lorap_dist.config import SyntheticConfig
    from lorap_dist.graph.prepare import PrepareOptions, prepare

    wanted = prepare_options(config)
    out = (REPO / config.data.path).resolve()
    recorded = out / OPTIONS_FILE
    if (out / "meta.json").is_file() and recorded.is_file():
        if json.loads(recorded.read_text()) == wanted:
            return out, False
    options = {key: value for key, value in wanted.items() if key != "synthetic"}
    prepare(
        PrepareOptions(
            out=out,
            synthetic=SyntheticConfig(**wanted["synthetic"]),
            seed=config.data.synthetic.seed,
            overwrite=True,  # absent, or prepared with other options: (re)build it
            use_ray=False,  # a few MB: Ray tasks would cost more than they save
            progress=False,
            **options,
        )
    )
    recorded.write_text(json.dumps(wanted, indent=2) + "\n")
    return out, True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="main", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", default=None)
    args = parser.parse_args(argv)

    from lorap_dist.cli import load_config
    from lorap_dist.distributed.trainer import run_distributed
    from lorap_dist.ray_session import ray_session

    started = time.perf_counter()
    config = load_config(args.config, args.set)
    if config.dist is None:
        parser.error(f"{args.config} has no dist section; the main job trains distributed.")
    # 1. Prepare (idempotent).
    dataset, built = ensure_prepared(config)
    prepared_s = time.perf_counter() - started
    print(
        f"[main] dataset {dataset}: {'prepared' if built else 'already prepared'} "
        f"({prepared_s:.1f} s)",
        flush=True,
    )

    # 2. A local Ray instance of its own: it never joins another cluster on this machine.
    cpus = int(config.dist.num_workers * config.dist.cpus_per_worker)
    with ray_session(cpus, join=False, who="[main]"):
        config.data.path = str(dataset)
        if "://" not in config.dist.storage_path:  # relative paths: under the repository
            config.dist.storage_path = str(REPO / Path(config.dist.storage_path).expanduser())
        summary = run_distributed(config, config.dist, resume=args.resume)

    # 3. The figures.
    wall = time.perf_counter() - started
    print(
        f"[main] {summary['epochs']} epochs, {summary['steps']} steps on "
        f"{config.dist.num_workers} workers\n"
        f"{accuracy_line(summary)}{tuning_line(summary)}"
        f"[main] throughput {summary['seeds_per_s']:.0f} seeds/s (last epoch), "
        f"{summary['bytes_exchanged'] / 1e6:.2f} MB feature exchange per epoch\n"
        f"[main] checkpoint {summary['checkpoint']}\n"
        f"[main] wall time {wall:.1f} s",
        flush=True,
    )
    return 0


def accuracy_line(summary: dict) -> str:
    """The run's accuracy in one line: the reported model's, that of the best validation
    epoch (a prompt-tuning phase whose prompt lost ends on a model the run does not report),
    then the last epoch's."""
    return (
        f"[main] test accuracy {summary['best_test_acc']:.4f} (best validation epoch "
        f"{summary['best_epoch']}, valid {summary['best_valid_acc']:.4f}: the reported model); "
        f"last epoch: test {summary['test_acc']:.4f}, valid {summary['valid_acc']:.4f}\n"
    )


def tuning_line(summary: dict) -> str:
    """The prompt-tuning phase in one line (empty without it): where it began, the scheme
    alone's best it had to beat, and whether the prompted model is the one reported."""
    before = summary.get("before_tuning")
    if before is None:
        return ""
    kept = (
        "kept: it beat"
        if summary["best_epoch"] >= summary["tuning_start_epoch"]
        else "not kept: it did not beat"
    )
    return (
        f"[main] prompt tuning on the frozen backbone from epoch {summary['tuning_start_epoch']}"
        f"; the prompted model {kept} the scheme alone's best valid {before['valid']:.4f} "
        f"(test {before['test']:.4f})\n"
    )


if __name__ == "__main__":
    from lorap_dist.config import ConfigError
    from lorap_dist.distributed.checkpoint import CheckpointError
    from lorap_dist.graph.errors import DatasetError

    try:
        raise SystemExit(main(sys.argv[1:]))
    except (ConfigError, DatasetError, CheckpointError) as err:
        print(f"main: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
