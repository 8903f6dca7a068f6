"""Gather a batch's feature rows into one buffer that lives across batches.

Every training step gathers the feature rows of its sampled nodes, about 94 MB per batch on an
ogbn-products-sized graph (235,000 rows of 100 float32 values). A fresh tensor that large is
served by ``mmap`` (glibc takes every block above 32 MiB from it and gives it back on free), so
each batch page-faults its rows in again, which on the CPU costs twice the copy itself.
:class:`RowGather` keeps one buffer and copies into it: the same rows, about 3x faster
(``benchmarks/gather.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor


class RowGather:
    """``gather(source, ids)`` returns ``source.index_select(0, ids)``, written into a buffer
    that the next call overwrites.

    The result is a view of that buffer: use it within one training step, whose backward
    runs before the next gather (as in :class:`~lorap_dist.train.MiniBatchRunner` and
    :func:`~lorap_dist.distributed.step.train_batch`). Anything kept longer must be cloned.
    Should a graph that saved the rows for backward outlive the next gather, autograd refuses
    its backward ("modified by an inplace operation") instead of using the new rows.

    The buffer grows to ``slack`` times the largest batch so far (sampled batches vary in
    size by a few percent), and is made again when the source's dtype, row shape or device
    changes. A source that requires grad is gathered into a fresh tensor, so that its
    gradient flows.

    Args:
        slack: the buffer's rows as a multiple of the batch that made it grow (``>= 1``).
    """

    def __init__(self, slack: float = 1.25) -> None:
        if not slack >= 1.0:
            raise ValueError(f"slack={slack!r} must be at least 1 (a multiple of the rows).")
        self.slack = slack
        self.buffer: Tensor | None = None

    def __call__(self, source: Tensor, ids: Tensor) -> Tensor:
        """``[len(ids), *source.shape[1:]]`` rows of ``source`` (``ids`` a 1-D index on
        ``source``'s device)."""
        if source.requires_grad and torch.is_grad_enabled():
            return source.index_select(0, ids)
        n = ids.numel()
        buffer = self.buffer
        fits = (
            buffer is not None
            and buffer.dtype == source.dtype
            and buffer.device == source.device
            and buffer.shape[1:] == source.shape[1:]
            and buffer.size(0) >= n
        )
        if not fits:
            rows = max(n, int(n * self.slack))
            self.buffer = buffer = source.new_empty((rows, *source.shape[1:]))
        out = buffer[:n]
        torch.index_select(source, 0, ids, out=out)
        return out
