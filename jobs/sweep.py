"""Entry point for ``ray job submit ... -- python jobs/sweep.py --config FILE``.

Same flags as ``lorap sweep``.
"""

from __future__ import annotations

import sys

from lorap_dist.cli import main

if __name__ == "__main__":
    main(["sweep", *sys.argv[1:]])
