"""Model state that each rank changes outside the gradient, made the same on every rank.

DDP keeps parameters equal across ranks through their all-reduced gradients, and copies
rank 0's buffers to the others at the start of each forward pass. State a rank sets from
its own batch escapes both: A2Q's table rows set when first seen or reset, Degree-Quant's
in-degree histogram counted from the nodes a rank has sampled, and the ranges and batch
statistics each rank's last forward pass left behind. Each function here is a collective.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lorap_dist.quant.schemes.degree_quant import DegreeProtection


def count_full_graph(model: nn.Module, degree: Tensor) -> None:
    """Degree-Quant: count every node's in-degree (``degree [N]``, the full graph's) before
    training, on every rank, so the protection probabilities are the full graph's and the
    same everywhere (not a collective: every rank computes the same histogram)."""
    for module in model.modules():
        if isinstance(module, DegreeProtection):
            module.count_graph(degree)


def share_quantizer_writes(model: nn.Module) -> None:
    """After an optimizer step: every quantizer's in-place writes of the step, from every
    rank, on every rank (A2Q's :meth:`~lorap_dist.quant.schemes.a2q.A2QNodeQuantizer.
    share_writes`); a no-op in a single process."""
    for module in model.modules():
        share = getattr(module, "share_writes", None)
        if callable(share):
            share()


@torch.no_grad()
def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Rank ``src``'s buffers (observer ranges, batch-norm statistics, A2Q's flags) on
    every rank: what the next training pass would start from, and what rank 0 saves, so
    that every rank evaluates one model."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src)
