"""The per-worker loop of a distributed graph-level run: data parallel over graphs.

Ray Train runs ``graph_loop_per_worker(config)`` on every rank with the same ``config`` as
:func:`lorap_dist.distributed.worker.train_loop_per_worker`. A dataset of many small graphs
fits on every worker, so there is no partitioning and no feature exchange: every rank
loads the whole dataset (the driver has processed its raw files once before the workers
start), and each epoch

1. draws one permutation of the training graphs from ``(train.seed, epoch)``, the same on
   every rank, and gives rank ``r`` the graphs at positions ``r, r + W, r + 2W, ...``
   (the last ``< W`` graphs of the permutation wait for another epoch, so every rank runs
   the same number of steps);
2. trains on batches of ``ceil(train.batch_size / W)`` graphs per rank, gradients averaged
   by DDP, so one step sees about ``train.batch_size`` graphs as on one process;
3. scores the validation and test graphs, each rank its ``r::W`` share, summed across ranks
   (exact, whatever the number of workers);
4. reports once per epoch and checkpoints like node-level runs (rank 0 writes, every rank's
   RNG streams saved, a restarted or ``--resume``-d run continues exactly).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lorap_dist.distributed.checkpoint import restore_rng
from lorap_dist.distributed.model_state import broadcast_buffers, share_quantizer_writes
from lorap_dist.distributed.progress import Rank, RankProgress
from lorap_dist.distributed.seeds import seed_rank
from lorap_dist.distributed.worker import epoch_metrics, rank_context, restore_training
from lorap_dist.optim import build_optimizer
from lorap_dist.train_graphs import (
    GraphBatchRunner,
    build_graph_model,
    graph_splits,
    load_graph_set,
)

SHUFFLE_STREAM = 7919  # added to the epoch's seed: the permutation's own stream


def rank_share(train: Tensor, seed: int, epoch: int, rank: int, world_size: int) -> Tensor:
    """Rank ``rank``'s training graphs for ``epoch`` (step 1 of the module docstring)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + SHUFFLE_STREAM)
    order = train[torch.randperm(train.numel(), generator=generator)]
    usable = order.numel() - order.numel() % world_size
    return order[:usable][rank::world_size]


def graph_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one rank's share of the graphs; see the module docstring."""
    from torch_geometric.loader import DataLoader

    experiment, settings, rank, world_size, device = rank_context(config)
    train_cfg = experiment.train
    step_hook = config.get("step_hook")  # None unless a test installed one

    graphs = load_graph_set(experiment)
    splits = graph_splits(experiment, graphs)
    per_rank = max(1, math.ceil(train_cfg.batch_size / world_size))
    runner = GraphBatchRunner(  # its forward and scores; loaders are built per epoch here
        graphs, {}, per_rank, train_cfg.seed, device
    )
    torch.manual_seed(train_cfg.seed)
    model = build_graph_model(experiment, graphs).to(device)
    optimizer = build_optimizer(model, train_cfg)
    facts = {
        "num_features": graphs.num_features,
        "num_classes": graphs.num_outputs,  # outputs: classes, or regression targets
        "num_graphs": len(graphs),
    }

    reporter = Rank(rank, world_size, experiment, facts, settings.checkpoint_every)
    progress = RankProgress(reporter, optimizer, higher_is_better=runner.higher_is_better)
    start_epoch, step, restored_rng = restore_training(config, model, optimizer, progress)
    ddp = DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,  # e.g. MixQ's frozen logits; the models are small
    )
    seed_rank(train_cfg.seed, rank)  # each rank's own dropout draws from here on
    if restored_rng is not None:
        restore_rng(restored_rng)  # last: nothing above may draw from the restored streams
    shares = {
        split: splits[split][rank::world_size] for split in ("valid", "test")
    }  # fixed: evaluation shares

    for epoch in progress.epochs(start_epoch):  # train.epochs, then prompt tuning's
        progress.begin_epoch(model, optimizer, epoch)
        ddp.train()
        started = time.perf_counter()
        own = rank_share(splits["train"], train_cfg.seed, epoch, rank, world_size)
        loader = DataLoader(graphs.dataset[own], batch_size=per_rank, shuffle=False)
        totals = torch.zeros(3, dtype=torch.float64)  # loss * graphs, score sum, graphs
        for index, batch in enumerate(loader):
            if step_hook is not None:
                step_hook(rank, epoch, index)
            totals += runner.step(ddp, optimizer, batch)
            share_quantizer_writes(model)  # e.g. A2Q's pool, set from each rank's batch
            step += 1
        elapsed = time.perf_counter() - started
        progress.model_changed(model, epoch)  # e.g. MixQ froze (DDP finds unused parameters)
        metrics = epoch_metrics(epoch, step, totals, elapsed, bytes_sent=0)
        # seeds_per_s: training graphs per second here
        evaluated = progress.evaluation_due(epoch, settings.eval_every)
        if evaluated:
            metrics |= evaluate(model, graphs, shares, runner)
            progress.scored(model, epoch, metrics)
        stop, _ = progress.close_epoch(model, optimizer, metrics, epoch, evaluated)
        if stop:  # every rank: the same all-reduced scores decided it
            break


@torch.no_grad()
def evaluate(
    model: nn.Module, graphs: Any, shares: dict[str, Tensor], runner: GraphBatchRunner
) -> dict[str, float]:
    """Validation and test score over every rank's share (a collective)."""
    from torch_geometric.loader import DataLoader

    broadcast_buffers(model)  # batch-norm statistics, ranges: rank 0's, as saved
    model.eval()
    sums = []
    for split in ("valid", "test"):
        sums += runner.score_totals(model, DataLoader(graphs.dataset[shares[split]], 256))
    totals = torch.tensor(sums, dtype=torch.float64)
    dist.all_reduce(totals)
    return {
        f"{split}_acc": float(totals[2 * i] / totals[2 * i + 1]) if totals[2 * i + 1] else math.nan
        for i, split in enumerate(("valid", "test"))
    }
