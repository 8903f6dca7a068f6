"""The per-worker training loop Ray Train runs on every rank: ``train_loop_per_worker(config)``.

``config`` is the dict :func:`lorap_dist.distributed.trainer.worker_config` builds: the experiment
(``ExperimentConfig.to_dict()``), the ``dist`` section, the dataset directory and an optional
checkpoint to resume from, and the run's ``step_hook`` (``None`` unless a test installed one:
``step_hook(rank, epoch, step)`` is called before every training step, e.g.
:class:`lorap_dist.testing.faults.KillOnce`). Every rank runs the same number of steps and
calls ``ray.train.report`` once per epoch; rank 0 writes the checkpoints.
"""

from __future__ import annotations

import copy
import math
import resource
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lorap_dist.config import DistConfig, ExperimentConfig
from lorap_dist.distributed.checkpoint import (
    CheckpointError,
    architecture,
    latest_good_checkpoint,
    load_checkpoint,
    load_optimizer_state,
    restore_rng,
    verify_checkpoint,
)
from lorap_dist.distributed.exchange import FeatureExchange
from lorap_dist.distributed.inference import layerwise_inference
from lorap_dist.distributed.model_state import (
    broadcast_buffers,
    check_same_resume_point,
    count_full_graph,
)
from lorap_dist.distributed.progress import Rank, RankProgress
from lorap_dist.distributed.resume import keep_prompt_warmup
from lorap_dist.distributed.seeds import SeedSchedule, epoch_generator, seed_rank
from lorap_dist.distributed.step import train_batch
from lorap_dist.fit import freeze_backbone, tuning_epochs
from lorap_dist.graph.block import NodeInfo
from lorap_dist.graph.gather import RowGather
from lorap_dist.graph.sampler import NeighborSampler
from lorap_dist.graph.storage import Dataset, open_dataset
from lorap_dist.nn.model import build_model
from lorap_dist.optim import build_optimizer
from lorap_dist.quant import QuantizedRows
from lorap_dist.train import backward_loss

SAMPLING_STREAM = 1  # epoch_generator stream of the neighbour sampler (0 orders the seeds)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one rank's share; see the module docstring for ``config``."""
    experiment, settings, rank, world_size, device = rank_context(config)
    train_cfg = experiment.train
    step_hook = config.get("step_hook")

    # 1. Open the dataset (memory-mapped) and this rank's feature shard.
    dataset = open_dataset(config["dataset_path"])
    part = dataset.part(rank)
    degree = dataset.indptr.diff()  # [N] full-graph in-degree
    exchange = FeatureExchange(
        dataset.partition_book,
        part.features,
        part.scales,
        payload_bits=settings.exchange_bits,
        device=device,
    )
    fanouts = train_cfg.fanout or [-1] * experiment.model.layers  # None: full neighbourhoods
    sampler = NeighborSampler(dataset.indptr, dataset.indices, fanouts)
    train_counts = [dataset.part(q).split_ids("train").numel() for q in range(world_size)]
    schedule = SeedSchedule(train_counts, train_cfg.batch_size, settings.seed_policy)
    own_seeds = part.split_ids("train")

    # 2. Build the model (same initial weights on every rank) and wrap it in DDP.
    torch.manual_seed(train_cfg.seed)
    model = build_model(
        dataset.num_features, dataset.num_classes, experiment.model, experiment.prompt
    )
    experiment.quant.apply(model, num_nodes=dataset.num_nodes)  # A2Q: per-node parameters
    count_full_graph(model, degree)  # Degree-Quant: the same histogram on every rank
    model.to(device)
    optimizer = build_optimizer(model, train_cfg)
    dataset_facts = {
        "num_features": dataset.num_features,
        "num_classes": dataset.num_classes,
        "num_nodes": dataset.num_nodes,
    }

    # 3. Resume: Ray Train's checkpoint after a restart, else the --resume path.
    reporter = Rank(rank, world_size, experiment, dataset_facts, settings.checkpoint_every)
    progress = RankProgress(reporter, optimizer)
    start_epoch, step, restored_rng = restore_training(config, model, optimizer, progress)

    def data_parallel() -> DistributedDataParallel:
        # Asked again whenever a scheme changes the model: after MixQ freezes, its logits
        # take no gradient, and a DDP told otherwise fails at the next step.
        unused = _has_unused_parameters(
            model, sampler, exchange, part, own_seeds, degree, device, settings.feature_rows
        )
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=unused)

    ddp = data_parallel()
    seed_rank(train_cfg.seed, rank)  # each rank's own dropout draws from here on
    if restored_rng is not None:
        restore_rng(restored_rng)  # last: nothing above may draw from the restored streams

    # 4. Train: the same number of steps on every rank, each rank's loss weighted by its
    # share of the step's seeds (a short last batch would otherwise count as a full one).
    rows = RowGather()  # each batch's feature rows, in one buffer kept across batches
    weights = schedule.loss_weights(rank)
    for epoch in progress.epochs(start_epoch):  # train.epochs, then prompt tuning's
        progress.begin_epoch(model, optimizer, epoch)
        ddp.train()
        started = time.perf_counter()
        bytes_before = exchange.bytes_sent
        batches = schedule.batches(own_seeds, rank, epoch, train_cfg.seed)
        batches = batches[: settings.max_steps_per_epoch]  # the same count on every rank
        generator = epoch_generator(train_cfg.seed, epoch, rank, SAMPLING_STREAM)
        totals = torch.zeros(3, dtype=torch.float64)  # loss * seeds, correct, seeds
        for index, seeds in enumerate(batches):
            if step_hook is not None:
                step_hook(rank, epoch, index)
            labels = part.labels[seeds - part.start]
            totals += train_batch(
                ddp,
                model,
                optimizer,
                sampler,
                exchange,
                seeds,
                labels,
                degree,
                generator,
                device,
                feature_rows=settings.feature_rows,
                rows=rows,
                loss_weight=weights[index],
            )
            step += 1
        elapsed = time.perf_counter() - started
        if progress.model_changed(model, epoch):  # e.g. MixQ froze: a different model
            del ddp  # its reducer's hooks go with it
            ddp = data_parallel()
        metrics = epoch_metrics(epoch, step, totals, elapsed, exchange.bytes_sent - bytes_before)

        # 5. Evaluate exactly (full neighbourhoods, layer by layer) on every partition.
        evaluated = progress.evaluation_due(epoch, settings.eval_every)
        if evaluated:
            metrics |= evaluate(model, dataset, part, degree, exchange, settings, device)
            progress.scored(model, epoch, metrics)

        # 6. Stop early or begin prompt tuning; every rank reports, rank 0 checkpoints.
        stop, began = progress.close_epoch(model, optimizer, metrics, epoch, evaluated)
        if began:  # the backbone in evaluation mode: ask again which parameters train
            del ddp
            ddp = data_parallel()
        if stop:  # every rank: the same all-reduced scores decided it
            break


def epoch_metrics(
    epoch: int, step: int, totals: Tensor, elapsed: float, bytes_sent: int
) -> dict[str, Any]:
    """An epoch's report (a collective): ``totals`` (``[loss * seeds, correct, seeds]``,
    summed here over the ranks) and ``bytes_sent`` summed, the largest worker's peak
    resident set."""
    sent = torch.tensor([bytes_sent], dtype=torch.float64)
    dist.all_reduce(totals)
    dist.all_reduce(sent)
    peak_rss = torch.tensor([peak_rss_bytes()], dtype=torch.float64)
    dist.all_reduce(peak_rss, op=dist.ReduceOp.MAX)
    return {
        "epoch": epoch + 1,
        "step": step,
        "loss": float(totals[0] / totals[2]),
        "train_acc_sampled": float(totals[1] / totals[2]),
        "seeds_per_s": float(totals[2]) / max(elapsed, 1e-9),
        "bytes_exchanged": int(sent.item()),
        "epoch_s": elapsed,
        "peak_rss_gib": float(peak_rss) / 2**30,  # the largest worker's
    }


def rank_context(
    config: dict[str, Any],
) -> tuple[ExperimentConfig, DistConfig, int, int, torch.device]:
    """The experiment, the ``dist`` section, this rank, the world size and the device."""
    context = ray.train.get_context()
    return (
        ExperimentConfig.from_dict(config["experiment"]),
        DistConfig.from_dict(config["dist"]),
        context.get_world_rank(),
        context.get_world_size(),
        ray.train.torch.get_device(),
    )


def restore_training(
    config: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: RankProgress,
) -> tuple[int, int, Any]:
    """Load the checkpoint a (re)started run resumes from (:func:`resume_directory`) into
    ``model``, ``optimizer`` and ``progress`` (its trackers and best model, as
    :meth:`RankProgress.report` saved them; and the checkpoint's warm start and prompt
    tuning into the experiment's ``train`` where it leaves them to the default:
    :func:`~lorap_dist.distributed.resume.keep_prompt_warmup`); returns the epoch and
    step to continue from and this rank's saved RNG state (``(0, 0, None)`` for a fresh
    run, whose best model is the initial one). A run resumed inside prompt tuning has its
    backbone frozen again. The RNG state is for the caller to restore last, once nothing
    else draws from the streams. A collective: it raises on every rank when the ranks
    found different checkpoints."""
    checkpoint_dir = resume_directory(config.get("resume"), config.get("run_dir"))
    progress.best_state = copy.deepcopy(model.state_dict())
    if checkpoint_dir is None:
        check_same_resume_point(0, 0)
        return 0, 0, None
    experiment, facts = progress.rank.experiment, progress.rank.facts
    with checkpoint_dir as directory:
        state = load_checkpoint(
            directory, expected_architecture=architecture(experiment.to_dict(), facts)
        )
    keep_prompt_warmup(experiment.train, state.config, directory, state.extra.get("tuning"))
    progress.tuning.epochs = tuning_epochs(experiment.train, optimizer)  # as kept
    model.load_state_dict(state.model)
    load_optimizer_state(optimizer, state.optimizer, directory)
    for key, tracker in progress.trackers.items():  # a checkpoint without one: its fresh state
        tracker.load_state_dict(state.extra.get(key, {}))
    tuning, best = progress.tuning, progress.best
    if tuning.epochs and best.epoch >= 0 and not state.best_model:
        raise CheckpointError(
            f"checkpoint {directory} holds no best model (it was written before checkpoints "
            f"kept it), which train.prompt_tuning_epochs={tuning.epochs} starts from; resume "
            "it with train.prompt_tuning_epochs: 0, or start a new run without --resume."
        )
    # a checkpoint written before checkpoints kept it: its model, the best there is to say
    progress.best_state = state.best_model or copy.deepcopy(model.state_dict())
    if tuning.active:
        freeze_backbone(model)
    check_same_resume_point(state.epoch, state.step)
    return state.epoch, state.step, state.rng[progress.rank.rank]


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    part: Any,
    degree: Tensor,
    exchange: FeatureExchange,
    settings: DistConfig,
    device: torch.device,
) -> dict[str, float]:
    """Exact train/valid/test accuracy over all partitions (a collective) of rank 0's model
    (its buffers first broadcast: each rank's last pass left its own ranges); the first layer
    reads its input as training does (``dist.feature_rows``: float rows, or ``exchange``'s
    integer rows)."""
    broadcast_buffers(model)  # one model: rank 0's ranges and statistics, as it saves them
    features = exchange if settings.feature_rows == "codes" else part.features_fp32()
    logits = layerwise_inference(
        model,
        features,
        dataset.partition_book,
        dataset.indptr,
        dataset.indices,
        degree,
        batch_size=settings.eval_batch_size,
        device=device,
    )
    predicted = logits.argmax(-1)
    counts = []
    for code in (1, 2, 3):  # train, valid, test (storage.SPLIT_CODES)
        mask = part.split == code
        counts += [int((predicted[mask] == part.labels[mask]).sum()), int(mask.sum())]
    totals = torch.tensor(counts, dtype=torch.float64)
    dist.all_reduce(totals)
    return {
        f"{name}_acc": float(totals[2 * i] / totals[2 * i + 1]) if totals[2 * i + 1] else math.nan
        for i, name in enumerate(("train", "valid", "test"))
    }


class _Directory:
    """A context manager giving a local directory for a Ray checkpoint or a plain path."""

    def __init__(self, checkpoint: ray.train.Checkpoint | None, path: Path | None) -> None:
        self.checkpoint, self.path, self._inner = checkpoint, path, None

    def __enter__(self) -> str:
        if self.checkpoint is None:
            return str(self.path)
        self._inner = self.checkpoint.as_directory()
        return self._inner.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._inner is not None:
            self._inner.__exit__(*exc)


def resume_directory(resume: str | None, run_dir: str | None) -> _Directory | None:
    """Where a (re)started worker group resumes from.

    After a restart, the newer of Ray Train's registered checkpoint and the newest complete,
    checksummed checkpoint in the run directory: a worker killed right after a checkpoint
    reached the disk, but before Ray registered it, costs no epochs. Otherwise ``resume``.
    """
    checkpoint = ray.train.get_checkpoint()
    on_disk = newer_checkpoint_on_disk(checkpoint, run_dir)
    if on_disk is not None:
        return _Directory(None, on_disk)
    if checkpoint is not None:
        return _Directory(checkpoint, None)
    if resume is None:
        return None
    return _Directory(None, resolve_resume_path(resume))


def newer_checkpoint_on_disk(
    registered: ray.train.Checkpoint | None, run_dir: str | Path | None
) -> Path | None:
    """The newest good checkpoint under ``run_dir`` when it is newer than ``registered``
    (Ray Train's latest), else ``None``; ``None`` too before any checkpoint was registered
    (a fresh run)."""
    if registered is None or run_dir is None:
        return None
    newest = latest_good_checkpoint(run_dir)
    if newest is None or newest.name <= Path(registered.path).name:  # names sort by epoch
        return None
    return newest


def resolve_resume_path(resume: str | Path) -> Path:
    """A checkpoint directory itself (verified: a truncated or corrupt one is refused here,
    before any worker starts), or the newest good checkpoint under a run directory."""
    path = Path(resume)
    if (path / "manifest.json").is_file():
        verify_checkpoint(path)
        return path
    found = latest_good_checkpoint(path)
    if found is None:
        raise CheckpointError(
            f"--resume {path}: no usable checkpoint there (neither a checkpoint directory "
            "with manifest.json nor a run directory holding checkpoint_epoch_* ones)."
        )
    return found


def _has_unused_parameters(
    model: nn.Module,
    sampler: NeighborSampler,
    exchange: FeatureExchange,
    part: Any,
    own_seeds: Tensor,
    degree: Tensor,
    device: torch.device,
    feature_rows: str = "float",
) -> bool:
    """Whether a training step leaves some parameter without a gradient, found on a copy
    of the model with one local batch (own rows only, so no collective), RNG untouched,
    its rows in the form training gives them (``feature_rows``, as in :func:`train_batch`).

    DDP needs ``find_unused_parameters=True`` exactly then, and it costs a graph traversal
    per step otherwise. On integer rows the first layer's ``input`` point is never called:
    its parameters (A2Q's) get no gradient, unless a penalty gives them one (MixQ's
    expected bits, while it searches).
    """
    probe = copy.deepcopy(model).train()
    seeds = own_seeds[: min(len(own_seeds), 8)]
    with torch.random.fork_rng(devices=[]):
        batch = sampler.sample_blocks(seeds, torch.Generator().manual_seed(0))
        local = batch.node_ids
        owned = (local >= part.start) & (local < part.end)
        x = torch.zeros(len(local), exchange.num_features)
        x[owned] = part.features_fp32(local[owned] - part.start)
        if feature_rows == "codes":
            x = QuantizedRows.from_float(x, 8 if exchange.payload == "int8" else 4)
        nodes = NodeInfo(ids=local.to(device), degree=degree[local].to(device))
        logits = probe(x.to(device), [b.to(device) for b in batch.blocks], nodes)
        backward_loss(probe, logits, part.labels[seeds - part.start].to(device))
    return any(p.requires_grad and p.grad is None for p in probe.parameters())


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
