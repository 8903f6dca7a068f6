"""Faults the tests inject into a distributed run through its ``step_hook``
(:func:`lorap_dist.distributed.trainer.run_distributed`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KillOnce:
    """Worker ``rank`` ends its process (``os._exit(1)``, as a crash would) before step
    ``step`` of epoch ``epoch``.

    It fires once: the worker first creates ``marker`` and does not fire again while the file
    exists, so the restarted run goes through; the file also tells the test that it fired.
    """

    rank: int
    epoch: int
    step: int
    marker: str

    def __call__(self, rank: int, epoch: int, step: int) -> None:
        if (rank, epoch, step) != (self.rank, self.epoch, self.step):
            return
        marker = Path(self.marker)
        if marker.exists():
            return
        marker.write_text(f"rank {rank} killed at epoch {epoch} step {step}\n")
        os._exit(1)
