"""Single-process training: full-batch, or mini-batch over sampled blocks.

This is what a user runs on one machine (``lorap train`` without workers); a dataset of
many graphs goes to :mod:`lorap_dist.train_graphs`, and steps 3 to 5 are
:func:`lorap_dist.fit.fit`, shared by both. It reads top to bottom:

1. load the graph named by ``config.data``;
2. build the model, apply the quantization scheme (``quantize_``);
3. train with Adam, the scheme's extra loss terms added to the cross-entropy;
4. evaluate on the validation split every epoch, keep the best state, stop early;
5. report train / valid / test accuracy of the best epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorap_dist.config import ConfigError, ExperimentConfig
from lorap_dist.fit import (  # noqa: F401  (re-exported: the names users import from here)
    BLOWUP,
    STALL,
    STALL_EPOCHS,
    STALL_MARGIN,
    EpochReport,
    TrainResult,
    diverging,
    fit,
    resolve_device,
    stalled,
)
from lorap_dist.graph.block import NodeInfo
from lorap_dist.graph.csr import csr_from_edge_index
from lorap_dist.graph.data import GraphData
from lorap_dist.graph.gather import RowGather
from lorap_dist.graph.sampler import NeighborSampler, iter_minibatches
from lorap_dist.graph.tu_source import GraphSet
from lorap_dist.nn import build_model
from lorap_dist.quant import quantization_loss
from lorap_dist.train_graphs import graph_splits, load_graph_set, train_graphs


def load_graph(config: ExperimentConfig) -> GraphData | GraphSet:
    """The in-memory graph named by ``config.data``, with its feature transform applied
    (a :class:`~lorap_dist.graph.tu_source.GraphSet` for a dataset of many graphs).

    A prepared directory holds its features as prepared (``lorap prepare --transform``):
    they are taken as they are, and a ``data.transform`` that differs from the one recorded
    in the directory is an error rather than a second transform.
    """
    from lorap_dist.graph.transforms import apply_transform

    data = config.data
    if data.graph_level:  # a dataset of many graphs
        return load_graph_set(config)
    if data.source == "synthetic":
        from lorap_dist.graph.synthetic import generate_synthetic

        graph = generate_synthetic(data.synthetic)
    elif data.source == "dir" and (Path(data.path) / "meta.json").is_file():
        from lorap_dist.graph.storage import open_dataset

        dataset = open_dataset(data.path)  # prepared by `lorap prepare`
        check_prepared_transform(data.transform, dataset.meta, data.path)
        return dataset.to_graph_data()
    else:
        from lorap_dist.graph.sources import open_source

        spec = f"dir:{data.path}" if data.source == "dir" else data.spec  # OGB layout
        graph = open_source(spec, data.root).to_graph_data()
    graph.x = apply_transform(graph.x, data.resolved_transform)
    return graph


def training_items(config: ExperimentConfig, graph: GraphData | GraphSet) -> int:
    """What one epoch trains on: training nodes, or training graphs of the configured fold."""
    if isinstance(graph, GraphSet):
        return int(graph_splits(config, graph)["train"].numel())
    return int(graph.train_idx.numel())


def check_prepared_transform(transform: str | None, meta: dict[str, Any], path: Any) -> None:
    """Raise unless ``data.transform`` (when set) is the one the directory was prepared with."""
    prepared = meta.get("transform", "none")
    if transform is not None and transform != prepared:
        raise ConfigError(
            f"data.transform={transform!r}, but {path} was prepared with transform "
            f"{prepared!r}; prepare it again with --transform {transform}, or drop "
            "data.transform."
        )


def check_fanout(config: ExperimentConfig) -> None:
    """Raise :class:`ConfigError` unless ``train.fanout`` (when set) has one entry per layer."""
    fanout = config.train.fanout
    if fanout is not None and len(fanout) != config.model.layers:
        raise ConfigError(
            f"train.fanout={fanout} needs one entry per layer (model.layers="
            f"{config.model.layers}), e.g. {[10] * config.model.layers}."
        )


def build_quantized_model(config: ExperimentConfig, graph: GraphData) -> nn.Module:
    """The configured model with its quantization scheme applied."""
    model = build_model(graph.x.size(1), graph.num_classes, config.model, config.prompt)
    return config.quant.apply(model, num_nodes=graph.num_nodes)


def accuracy(logits: Tensor, y: Tensor) -> float:
    return (logits.argmax(dim=-1) == y).float().mean().item() if y.numel() else float("nan")


def backward_loss(model: nn.Module, logits: Tensor, y: Tensor, task_weight: float = 1.0) -> Tensor:
    """Back-propagate the cross-entropy (times ``task_weight``) plus every quantizer's
    regularization term (A2Q, MixQ penalties) and return the cross-entropy alone, the loss
    that is reported (the penalties are no measure of learning). ``task_weight`` lets a
    data-parallel rank weigh its batch by its share of the step's seeds
    (:meth:`~lorap_dist.distributed.seeds.SeedSchedule.loss_weights`)."""
    task = F.cross_entropy(logits, y)
    extra = quantization_loss(model)
    weighted = task if task_weight == 1.0 else task * task_weight
    (weighted if extra is None else weighted + extra).backward()
    return task.detach()


def train(
    config: ExperimentConfig,
    graph: GraphData | GraphSet | None = None,
    *,
    progress: bool = True,
    on_epoch: Callable[[EpochReport, nn.Module], None] | None = None,
) -> tuple[TrainResult, nn.Module]:
    """Train ``config`` on one process and return the result and the best model.

    Args:
        config: the experiment.
        graph: an already loaded graph (else ``config.data`` is loaded); a dataset of many
            graphs trains graph-level (:mod:`lorap_dist.train_graphs`).
        progress: show a progress bar over epochs.
        on_epoch: called after every epoch's validation with an :class:`EpochReport` and
            the model; the sweep driver reports to Ray Tune through it.
    """
    start = time.perf_counter()
    device = resolve_device(config.train.device)  # a bad device fails before any work
    if config.data.graph_level or isinstance(graph, GraphSet):  # a dataset of many graphs
        return train_graphs(config, graph, progress=progress, on_epoch=on_epoch)
    # 1. data
    host_graph = graph if graph is not None else load_graph(config)
    torch.manual_seed(config.train.seed)
    # 2. model, and everything on the device
    model = build_quantized_model(config, host_graph).to(device)
    graph = host_graph.to(device)
    degree = host_graph.in_degree().to(device)  # counted on the host: a data-dependent size
    nodes = NodeInfo(ids=torch.arange(graph.num_nodes, device=device), degree=degree)
    runner: FullBatchRunner = (
        FullBatchRunner(graph, nodes)
        if config.train.fanout is None
        else MiniBatchRunner(graph, nodes, config, host_graph)
    )
    return fit(config, model, runner, graph.num_classes, progress, on_epoch, start)


class FullBatchRunner:
    """Every epoch is one step on the whole graph."""

    higher_is_better = True  # accuracy

    def __init__(self, graph: GraphData, nodes: NodeInfo) -> None:
        self.graph = graph
        self.nodes = nodes

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        """One epoch; returns its cross-entropy on the training nodes (the quantizers'
        penalties are trained but not reported: they are no measure of learning)."""
        g = self.graph
        model.train()
        optimizer.zero_grad()
        logits = model(g.x, g.edge_index, self.nodes)
        loss = backward_loss(model, logits[g.train_idx], g.y[g.train_idx])
        optimizer.step()
        return loss.item()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, final: bool = False) -> dict[str, float]:
        """Accuracy per split on the whole graph (``final``: the reported evaluation, the
        same here)."""
        g = self.graph
        model.eval()
        logits = model(g.x, g.edge_index, self.nodes)
        return {
            split: accuracy(logits[idx], g.y[idx])
            for split, idx in (("train", g.train_idx), ("valid", g.valid_idx), ("test", g.test_idx))
        }


class MiniBatchRunner(FullBatchRunner):
    """Each epoch walks the training nodes in shuffled mini-batches of sampled blocks.

    Layer ``l`` runs on ``blocks[l]`` and computes only the nodes layer ``l + 1`` consumes
    (trimmed message-flow graphs). Evaluation is exact: full-neighbourhood inference on the
    whole graph, as :class:`FullBatchRunner` does.

    With ``train.sampler_device: device`` the CSR, the seeds and the features live on the
    training device and the blocks are drawn there; with ``cpu`` they stay on the CPU
    (``host_graph``) and each batch's blocks, features and labels go to the device from
    pinned memory. The draws come from a CPU generator either way, so both places sample
    the same blocks for a seed.
    """

    def __init__(
        self,
        graph: GraphData,
        nodes: NodeInfo,
        config: ExperimentConfig,
        host_graph: GraphData | None = None,
    ) -> None:
        super().__init__(graph, nodes)
        fanout = config.train.fanout
        if fanout is None:
            raise ConfigError("mini-batch training needs train.fanout, one entry per layer.")
        check_fanout(config)
        on_device = config.train.sampler_device == "device" or host_graph is None
        self.source = graph if on_device else host_graph  # where blocks and rows come from
        self.degree = nodes.degree if on_device else host_graph.in_degree()
        csr = csr_from_edge_index(self.source.edge_index, self.source.num_nodes)
        self.sampler = NeighborSampler.from_csr(csr, fanout)
        self.batch_size = config.train.batch_size
        self.generator = torch.Generator().manual_seed(config.train.seed)
        self.device = graph.x.device
        self.pinned = not on_device and self.device.type == "cuda"
        self.rows = RowGather()  # each batch's feature rows, in one buffer across batches

    def _to_device(self, tensor: Tensor) -> Tensor:
        if tensor.device == self.device:
            return tensor
        if self.pinned:
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        g = self.source
        model.train()
        losses = []
        batches = iter_minibatches(self.sampler, g.train_idx, self.batch_size, self.generator)
        for batch in batches:
            ids = batch.node_ids
            x = self._to_device(self.rows(g.x, ids))  # [num_src, F]
            y = self._to_device(g.y[ids[: batch.seed_count]])
            nodes = NodeInfo(ids=self._to_device(ids), degree=self._to_device(self.degree[ids]))
            blocks = [
                block if block.edge_index.device == self.device else block.to(self.device)
                for block in batch.blocks
            ]
            optimizer.zero_grad()
            logits = model(x, blocks, nodes)  # [seed_count, classes]
            loss = backward_loss(model, logits, y)
            optimizer.step()
            losses.append(loss.item())
        return sum(losses) / len(losses)
