"""Entry point for ``ray job submit ... -- python jobs/train.py --config FILE``.

Same flags as ``lorap train``.
"""

from __future__ import annotations

import sys

from lorap_dist.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
