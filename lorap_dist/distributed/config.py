"""The ``dist`` section of an experiment config: how a run spreads over Ray Train workers.

A config with a ``dist`` section trains on a prepared dataset directory (``data.source: dir``)
with one worker per partition::

    dist:
      num_workers: 2          # = the dataset's num_parts
      storage_path: runs      # checkpoints and results: <storage_path>/<name>/
      max_failures: 1         # restart dead workers from the last checkpoint
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorap_dist.config import check, check_choice
from lorap_dist.distributed.seeds import POLICIES


@dataclass
class FaultInjection:
    """Test-only: worker ``rank`` calls ``os._exit(1)`` before step ``step`` of ``epoch``.

    It fires once: the worker first creates ``marker`` and does not fire again while the
    file exists, so the restarted run goes through.
    """

    rank: int = 1
    epoch: int = 1
    step: int = 0
    marker: str = ""

    def __post_init__(self) -> None:
        check(bool(self.marker), "dist.fault_inject.marker must name a file (fires once).")


@dataclass
class DistConfig:
    """Distributed training with Ray Train.

    Args:
        num_workers: training workers, one per dataset partition.
        use_gpu: one GPU per worker and NCCL (else CPU and gloo).
        cpus_per_worker: CPUs Ray reserves per worker.
        storage_path: where Ray Train keeps results and checkpoints (made absolute).
        name: run name (a directory under ``storage_path``); default ``lorap-<timestamp>``.
        max_failures: worker failures to recover from, each by a restart from the last
            checkpoint (``FailureConfig``); ``-1`` retries forever.
        checkpoint_every: epochs between checkpoints (the last epoch is always saved).
        keep_checkpoints: checkpoints Ray Train keeps (``None``: all).
        seed_policy: ``pad`` or ``cap``, how ranks are given equal step counts
            (:mod:`lorap_dist.distributed.seeds`).
        exchange_bits: ``None`` sends features as stored; ``8`` or ``4`` re-quantizes rows
            for the all_to_all (:mod:`lorap_dist.distributed.exchange`).
        eval_every: epochs between full-graph evaluations (``0``: only after the last;
            ``null``: never, e.g. for throughput benchmarks).
        max_steps_per_epoch: cap on the steps of an epoch (``null``: a full pass over the
            seeds). For benchmarks and smoke runs on graphs whose full epoch takes too long.
        eval_batch_size: destination nodes per chunk of layer-wise inference.
        fault_inject: test-only worker crash (:class:`FaultInjection`).
    """

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = "runs"
    name: str | None = None
    max_failures: int = 0
    checkpoint_every: int = 1
    keep_checkpoints: int | None = None
    seed_policy: str = "pad"
    exchange_bits: int | None = None
    eval_every: int | None = 1
    max_steps_per_epoch: int | None = None
    eval_batch_size: int = 4096
    fault_inject: FaultInjection | None = None

    def __post_init__(self) -> None:
        if isinstance(self.fault_inject, dict):
            self.fault_inject = FaultInjection(**self.fault_inject)
        check(self.num_workers >= 1, f"dist.num_workers={self.num_workers} must be >= 1.")
        check(self.cpus_per_worker > 0, "dist.cpus_per_worker must be > 0.")
        check(self.max_failures >= -1, "dist.max_failures must be >= 0, or -1 (no limit).")
        check(self.checkpoint_every >= 1, "dist.checkpoint_every must be >= 1.")
        check(
            self.keep_checkpoints is None or self.keep_checkpoints >= 1,
            "dist.keep_checkpoints must be >= 1 or null (keep all).",
        )
        check_choice("dist.seed_policy", self.seed_policy, POLICIES)
        check_choice("dist.exchange_bits", self.exchange_bits, (None, 8, 4))
        check(
            self.eval_every is None or self.eval_every >= 0,
            "dist.eval_every must be >= 0 (0: after the last epoch only), or null (never).",
        )
        check(
            self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
            "dist.max_steps_per_epoch must be >= 1, or null (a full pass).",
        )
        check(self.eval_batch_size >= 1, "dist.eval_batch_size must be >= 1.")

    @property
    def storage_dir(self) -> Path:
        """``storage_path`` as an absolute path (Ray Train needs one for local storage)."""
        return Path(self.storage_path).expanduser().resolve()

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DistConfig:
        from lorap_dist.config import from_dict

        return from_dict(cls, data, "dist")
