"""One distributed training step, free of Ray: what each worker runs per mini-batch.

The Ray Train loop (:mod:`lorap_dist.distributed.worker`) calls :func:`train_batch` for every
batch; ``benchmarks/gpu_check.py`` calls it with a world of one process and the NCCL
backend, which needs neither Ray nor a cluster.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lorap_dist.distributed.exchange import FeatureExchange
from lorap_dist.graph.block import NodeInfo
from lorap_dist.graph.sampler import NeighborSampler
from lorap_dist.train import backward_loss


def train_batch(
    ddp: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: NeighborSampler,
    exchange: FeatureExchange,
    seeds: Tensor,
    labels: Tensor,
    degree: Tensor,
    generator: torch.Generator,
    device: torch.device,
) -> Tensor:
    """Sample ``seeds``' blocks, fetch their features from their owners (a collective),
    run forward and backward through ``ddp`` (gradients all-reduced) and step.

    Args:
        ddp: ``model`` wrapped in ``DistributedDataParallel``.
        model: the model itself (its quantizers' loss terms are read from it).
        labels: ``[len(seeds)]`` labels of the seeds.
        degree: ``[N]`` full-graph in-degree, indexed by global ID.

    Returns:
        ``[loss * seeds, correct, seeds]`` (float64, on the CPU) for the epoch's totals;
        ``loss`` is the cross-entropy, without the quantizers' penalties (as ``lorap train``
        reports it).
    """
    batch = sampler.sample_blocks(seeds, generator)
    x = exchange.fetch(batch.node_ids)  # [num_src, F]
    nodes = NodeInfo(ids=batch.node_ids.to(device), degree=degree[batch.node_ids].to(device))
    logits = ddp(x, [b.to(device) for b in batch.blocks], nodes)  # [seeds, classes]
    y = labels.to(device)
    optimizer.zero_grad()
    loss = backward_loss(model, logits, y)
    optimizer.step()
    return torch.tensor(
        [loss.item() * len(seeds), (logits.argmax(-1) == y).sum().item(), len(seeds)],
        dtype=torch.float64,
    )
