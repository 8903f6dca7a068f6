"""Model state that each rank changes outside the gradient, made the same on every rank.

DDP keeps parameters equal across ranks through their all-reduced gradients, and copies
rank 0's buffers to the others at the start of each forward pass. State a rank sets from
its own batch escapes both: A2Q's table rows set when first seen or reset, Degree-Quant's
in-degree histogram counted from the nodes a rank has sampled, and the ranges and batch
statistics each rank's last forward pass left behind; and the checkpoint each rank resumed
from. Each function here is a collective unless it says otherwise.
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


def check_same_resume_point(epoch: int, step: int) -> None:
    """Raise unless every rank resumes from the same ``(epoch, step)`` (``(0, 0)`` for a
    fresh start). Each rank finds its checkpoint on its own disk view of the run directory;
    ranks that found different ones would train different models under one DDP and
    silently average their gradients."""
    mine = torch.tensor([epoch, step], dtype=torch.int64)
    points = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(points, mine)
    found = [(int(p[0]), int(p[1])) for p in points]
    if len(set(found)) > 1:
        listed = ", ".join(f"rank {r}: epoch {e} step {s}" for r, (e, s) in enumerate(found))
        raise RuntimeError(
            f"ranks would resume from different checkpoints ({listed}; epoch 0 step 0 is a "
            "fresh start). Every worker must see the same run directory: put it on storage "
            "every node reads (RunConfig's storage_path), or pass --resume a checkpoint "
            "every node can read."
        )
