"""One distributed training step, free of Ray: what each worker runs per mini-batch.

The Ray Train loop (:mod:`lorap_dist.distributed.worker`) calls :func:`train_batch` for every
batch; ``benchmarks/gpu_check.py`` calls it with a world of one process and the NCCL
backend, which needs neither Ray nor a cluster.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lorap_dist.distributed.exchange import FeatureExchange
from lorap_dist.distributed.model_state import share_quantizer_writes
from lorap_dist.graph.block import NodeInfo
from lorap_dist.graph.gather import RowGather
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
    *,
    feature_rows: str = "float",
    rows: RowGather | None = None,
    loss_weight: float = 1.0,
) -> Tensor:
    """Sample ``seeds``' blocks, fetch their features from their owners (a collective),
    run forward and backward through ``ddp`` (gradients all-reduced), step, and share the
    quantizers' in-place writes across the ranks (a collective,
    :func:`~lorap_dist.distributed.model_state.share_quantizer_writes`).

    Args:
        ddp: ``model`` wrapped in ``DistributedDataParallel``.
        model: the model itself (its quantizers' loss terms are read from it).
        labels: ``[len(seeds)]`` labels of the seeds.
        degree: ``[N]`` full-graph in-degree, indexed by global ID.
        feature_rows: ``float`` gives the model the fetched rows as float32
            (:meth:`FeatureExchange.fetch`); ``codes`` as integer rows
            (:meth:`FeatureExchange.fetch_rows`, a SAGE or GIN model; ``dist.feature_rows``).
        rows: the buffer float rows are fetched into, kept by the caller across batches
            (:class:`~lorap_dist.graph.gather.RowGather`); ``None`` fetches into new tensors.
        loss_weight: this rank's cross-entropy factor, so that DDP's mean of the ranks'
            gradients is the gradient of the mean over every seed of the step, whatever the
            ranks' batch sizes (:meth:`~lorap_dist.distributed.seeds.SeedSchedule.loss_weights`;
            1 when they are equal).

    Returns:
        ``[loss * seeds, correct, seeds]`` (float64, on the CPU) for the epoch's totals;
        ``loss`` is the cross-entropy, without the quantizers' penalties (as ``lorap train``
        reports it).
    """
    if feature_rows not in ("float", "codes"):
        raise ValueError(f"feature_rows={feature_rows!r} is not known; use 'float' or 'codes'.")
    batch = sampler.sample_blocks(seeds, generator)
    if feature_rows == "codes":
        x = exchange.fetch_rows(batch.node_ids).to(device)  # QuantizedRows of num_src rows
    else:
        x = exchange.fetch(batch.node_ids, into=rows)  # [num_src, F]
    nodes = NodeInfo(ids=batch.node_ids.to(device), degree=degree[batch.node_ids].to(device))
    logits = ddp(x, [b.to(device) for b in batch.blocks], nodes)  # [seeds, classes]
    y = labels.to(device)
    optimizer.zero_grad()
    loss = backward_loss(model, logits, y, loss_weight)
    optimizer.step()
    share_quantizer_writes(model)  # e.g. A2Q rows first seen on one rank: now on every rank
    return torch.tensor(
        [loss.item() * len(seeds), (logits.argmax(-1) == y).sum().item(), len(seeds)],
        dtype=torch.float64,
    )
