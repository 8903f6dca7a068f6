"""Probes the tests install in a distributed run through its ``step_hook``
(:func:`lorap_dist.distributed.trainer.run_distributed`): they record what a worker holds
at a step without changing it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class RecordRngState:
    """Before every training step each worker writes a digest of its global torch
    generator's state (read, not drawn from) to ``<directory>/<epoch>-<step>-<rank>.txt``."""

    directory: str

    def __call__(self, rank: int, epoch: int, step: int) -> None:
        digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()
        (Path(self.directory) / f"{epoch}-{step}-{rank}.txt").write_text(digest)

    def read(self, rank: int, epoch: int, step: int) -> str:
        """The digest worker ``rank`` wrote before ``step`` of ``epoch``."""
        return (Path(self.directory) / f"{epoch}-{step}-{rank}.txt").read_text()
