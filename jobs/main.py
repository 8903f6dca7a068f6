"""The main job: what the README's first command runs on the built-in default.

Trains the default experiment (``jobs/configs/default.yaml``: a generated power-law graph,
GCN, INT4 QAT with LoRAP) and prints accuracy and throughput. Extra arguments are passed to
``lorap train`` (e.g. ``--set train.epochs=20``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from lorap_dist.cli import main

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"

if __name__ == "__main__":
    main(["train", "--config", str(DEFAULT_CONFIG), *sys.argv[1:]])
