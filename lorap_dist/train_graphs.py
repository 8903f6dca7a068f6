"""Graph-level training on one process: classification or regression of whole graphs.

The same steps as :mod:`lorap_dist.train` (the epoch loop is :func:`lorap_dist.fit.fit`),
over a dataset of many small graphs (``data.source: tu``):

1. load the dataset, split it into ``data.folds`` stratified folds (test: ``data.fold``,
   validation: the fold before, training: the rest);
2. build a :class:`~lorap_dist.nn.GraphGNN` and apply the quantization scheme;
3. train with Adam on mini-batches of ``train.batch_size`` graphs (PyG's ``DataLoader``
   batches them into one disconnected graph), cross-entropy for classes, L1 for targets;
4. evaluate every epoch, keep the best validation state, stop early;
5. report accuracy (or mean absolute error) on the three splits at the best epoch.

Quantization schemes see a batch of graphs as they see a graph: Degree-Quant protects
nodes by their in-degree within their graph, ranked among the batch's nodes (no node has
a global ID across graphs); A2Q has no per-node table (a node of a test graph was never
seen in training) and quantizes every node with the pair its nearest-neighbour pool picks,
the paper's strategy for graph-level tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorap_dist.config import ConfigError, ExperimentConfig
from lorap_dist.fit import EpochReport, TrainResult, fit, resolve_device
from lorap_dist.graph.block import NodeInfo
from lorap_dist.graph.tu_source import GraphSet, tu_graph_set
from lorap_dist.nn import GraphGNN
from lorap_dist.quant import quantization_loss

FOLD_SEED = 12345  # the folds are one fixed draw: every run of a fold sees the same graphs


def load_graph_set(config: ExperimentConfig) -> GraphSet:
    """The dataset of graphs named by ``config.data``."""
    data = config.data
    if data.source == "tu":
        return tu_graph_set(data.name, data.root, data.resolved_transform)
    raise ConfigError(f"data.source={data.source!r} is not a dataset of graphs; use 'tu'.")


def fold_splits(labels: Tensor | None, num_graphs: int, folds: int, fold: int) -> dict[str, Tensor]:
    """``train`` / ``valid`` / ``test`` graph indices: fold ``fold`` of ``folds`` tests, the
    fold before it (cyclically) validates, the rest train.

    With class ``labels`` the folds are stratified: each class's graphs, in one fixed
    random order (:data:`FOLD_SEED`), are dealt to the folds in turn, so every fold holds
    each class in proportion (to one graph). Without labels (regression) the graphs are
    dealt the same way.
    """
    if num_graphs < folds:
        raise ConfigError(
            f"data.folds={folds}, but the dataset has only {num_graphs} graphs; use at most "
            f"{num_graphs} folds."
        )
    generator = torch.Generator().manual_seed(FOLD_SEED)
    order = torch.randperm(num_graphs, generator=generator)
    if labels is not None:
        order = order[torch.argsort(labels[order], stable=True)]  # class by class
    assignment = torch.empty(num_graphs, dtype=torch.long)
    assignment[order] = torch.arange(num_graphs) % folds
    valid = (fold - 1) % folds  # the fold before, as Degree-Quant's protocol does
    return {
        "train": torch.nonzero((assignment != fold) & (assignment != valid)).view(-1),
        "valid": torch.nonzero(assignment == valid).view(-1),
        "test": torch.nonzero(assignment == fold).view(-1),
    }


def graph_splits(config: ExperimentConfig, graphs: GraphSet) -> dict[str, Tensor]:
    """The split of ``graphs`` for ``config.data.fold`` (:func:`fold_splits`)."""
    return fold_splits(graphs.labels, len(graphs), config.data.folds, config.data.fold)


def training_split_check(config: ExperimentConfig, graphs: GraphSet) -> dict[str, Tensor]:
    """The run's split (:func:`graph_splits`), after the checks every graph-level run makes
    before training: no neighbour fanout, no per-row node ranges, enough graphs for the
    folds."""
    if config.train.fanout is not None:
        raise ConfigError(
            "train.fanout samples neighbourhoods of one large graph; graph-level training "
            "batches whole graphs (train.batch_size graphs per step). Drop train.fanout."
        )
    if config.quant.options.get("per_row"):
        raise ConfigError(
            "quant.options.per_row keeps one range per node row, which needs the same nodes "
            "in every forward pass; graph-level batches hold other graphs' nodes each time. "
            "Drop quant.options.per_row (one range per tensor)."
        )
    return graph_splits(config, graphs)


def build_graph_model(config: ExperimentConfig, graphs: GraphSet) -> nn.Module:
    """The configured :class:`GraphGNN` with its quantization scheme applied."""
    model = GraphGNN(graphs.num_features, graphs.num_outputs, config.model, config.prompt)
    return config.quant.apply(model, num_nodes=0)  # no node is the same node in two graphs


class GraphBatchRunner:
    """Each epoch walks the training graphs in shuffled mini-batches.

    Args:
        graphs: the dataset.
        splits: graph indices per split (:func:`fold_splits`).
        batch_size: graphs per batch.
        seed: seeds the shuffling.
        device: where the model runs.
    """

    def __init__(
        self,
        graphs: GraphSet,
        splits: dict[str, Tensor],
        batch_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        from torch_geometric.loader import DataLoader

        self.task = graphs.task
        self.train_score: float | None = None
        self.higher_is_better = graphs.task == "classification"
        self.device = device
        generator = torch.Generator().manual_seed(seed)
        self.loaders = {
            split: DataLoader(
                graphs.dataset[index],
                batch_size=batch_size,
                shuffle=split == "train",
                generator=generator if split == "train" else None,
            )
            for split, index in splits.items()
        }

    def forward(self, model: nn.Module, batch) -> tuple[Tensor, Tensor]:
        """``model``'s outputs for a PyG batch of graphs, and their targets."""
        batch = batch.to(self.device)
        degree = torch.bincount(batch.edge_index[1], minlength=batch.num_nodes)
        nodes = NodeInfo(degree=degree)
        out = model(batch.x, batch.edge_index, batch.batch, batch.num_graphs, nodes)
        return out, batch.y

    def task_loss(self, out: Tensor, y: Tensor) -> Tensor:
        if self.task == "classification":
            return F.cross_entropy(out, y.view(-1))
        return F.l1_loss(out, y.view_as(out).to(out.dtype))

    def train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> float:
        """One epoch; returns the task loss averaged over the training graphs, and keeps
        the training pass's own score (accuracy or error, in training mode) for
        :meth:`evaluate`."""
        model.train()
        totals = torch.zeros(3, dtype=torch.float64)
        for batch in self.loaders["train"]:
            totals += self.step(model, optimizer, batch)
        loss_sum, score_sum, count = totals.tolist()
        self.train_score = score_sum / count if count else float("nan")
        return loss_sum / max(count, 1)

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch) -> Tensor:
        """One optimizer step on ``batch``: the task loss plus every quantizer's penalty.
        Returns ``[loss * graphs, score sum, graphs]`` (float64) for the epoch's totals.
        ``model`` may be a DDP wrapper (its penalties are its module's)."""
        optimizer.zero_grad()
        out, y = self.forward(model, batch)
        task = self.task_loss(out, y)
        extra = quantization_loss(model)
        (task if extra is None else task + extra).backward()
        optimizer.step()
        count = out.size(0)
        row = [float(task.detach()) * count, self.score_sum(out.detach(), y), count]
        return torch.tensor(row, dtype=torch.float64)

    def score_sum(self, out: Tensor, y: Tensor) -> float:
        """Correct predictions (classification) or summed absolute errors (regression)."""
        if self.task == "classification":
            return float((out.argmax(-1) == y.view(-1)).sum())
        return float((out - y.view_as(out)).abs().mean(-1).sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, final: bool = False) -> dict[str, float]:
        """Accuracy (classification) or mean absolute error (regression) per split.

        Between epochs the training graphs are not passed again: ``train`` is the score of
        the epoch's training pass (dropout and Degree-Quant's protection on, the weights
        moving), which saves most of the evaluation's time. ``final`` evaluates the training
        graphs too, as the reported result needs.
        """
        model.eval()
        scores = {}
        for split, loader in self.loaders.items():
            if split == "train" and not final and self.train_score is not None:
                scores[split] = self.train_score
                continue
            total, count = self.score_totals(model, loader)
            scores[split] = total / count if count else float("nan")
        return scores

    @torch.no_grad()
    def score_totals(self, model: nn.Module, loader) -> tuple[float, int]:
        """``(score sum, graphs)`` of ``model`` over ``loader``'s batches (see
        :meth:`score_sum`); the caller puts the model in eval mode."""
        total, count = 0.0, 0
        for batch in loader:
            out, y = self.forward(model, batch)
            total += self.score_sum(out, y)
            count += out.size(0)
        return total, count


def train_graphs(
    config: ExperimentConfig,
    graphs: GraphSet | None = None,
    *,
    progress: bool = True,
    on_epoch: Callable[[EpochReport, nn.Module], None] | None = None,
) -> tuple[TrainResult, nn.Module]:
    """Train ``config`` on a dataset of graphs on one process; see the module docstring.

    Args:
        config: the experiment (``data.source: tu``).
        graphs: an already loaded dataset (else ``config.data`` is loaded).
        progress: show a progress bar over epochs.
        on_epoch: as in :func:`lorap_dist.train.train`.
    """
    start = time.perf_counter()
    device = resolve_device(config.train.device)
    graphs = graphs if graphs is not None else load_graph_set(config)
    if not isinstance(graphs, GraphSet):
        raise ConfigError(
            f"graph-level training needs a dataset of many graphs (data.source: tu), got "
            f"{type(graphs).__name__}."
        )
    splits = training_split_check(config, graphs)
    torch.manual_seed(config.train.seed)
    model = build_graph_model(config, graphs).to(device)
    runner = GraphBatchRunner(graphs, splits, config.train.batch_size, config.train.seed, device)
    classes = graphs.num_outputs if graphs.task == "classification" else None
    return fit(config, model, runner, classes, progress, on_epoch, start)
