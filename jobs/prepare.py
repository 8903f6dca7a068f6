"""Prepare a dataset directory; runnable directly or with ``ray job submit``.

    ray job submit --working-dir . -- python jobs/prepare.py \\
        --source ogbn-products --out /data/products-4 --parts 4 --partitioner metis

Inside a Ray job the pipeline joins the cluster (``RAY_ADDRESS`` is set); run by hand it
starts a small local Ray instance, except for small graphs (one part, or few nodes), which
are written in-process as ``lorap prepare`` writes them. Flags are those of ``lorap prepare``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lorap_dist.cli import add_prepare_arguments, run_prepare


def main(argv: list[str] | None = None) -> Path:
    """Parse ``argv`` (default: the command line) and run the prepare pipeline."""
    parser = argparse.ArgumentParser(prog="prepare", description=__doc__.splitlines()[0])
    add_prepare_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_prepare(args)
    except ValueError as err:  # DatasetError and ConfigError: sentences for the user
        parser.exit(2, f"prepare: error: {err}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
