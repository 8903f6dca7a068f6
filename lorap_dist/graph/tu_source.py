"""Datasets of many small graphs (graph classification and regression), read offline.

``tu:NAME`` reads a dataset of the TU collection (REDDIT-BINARY, PROTEINS, IMDB-BINARY,
NCI1, MUTAG, ...) through :class:`torch_geometric.datasets.TUDataset` from PyG's raw
layout::

    root/NAME/raw/NAME_A.txt                 one edge per line: "i, j" (1-based node IDs)
    root/NAME/raw/NAME_graph_indicator.txt   line i: the graph of node i (1-based)
    root/NAME/raw/NAME_graph_labels.txt      line g: the class of graph g (classification)
    root/NAME/raw/NAME_graph_attributes.txt  line g: the target(s) of graph g (regression)
    root/NAME/raw/NAME_node_labels.txt       optional, line i: node i's label(s)
    root/NAME/raw/NAME_node_attributes.txt   optional, line i: node i's features
    root/NAME/processed/                     (PyG caches its processed tensors here)

Nothing is downloaded: a missing file is an error naming it and where the files are kept.
Before PyG processes the raw files (once; it caches the result) every line is checked, so
a malformed file is an error naming the file and the line rather than a parse failure deep
inside PyG; the files are also checked against each other (an edge between two graphs, a
node ID past the last node, one label per graph).

Node features are PyG's: the one-hot node labels. Graphs without node labels or attributes
(REDDIT-BINARY, IMDB-BINARY) get degree features by Degree-Quant's rule (see
:func:`node_features`), unless ``data.transform`` asks for others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import InMemoryDataset

from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.pyg_source import offline_dataset_class

TU_WHERE = (
    "the TU collection (chrsmrrs.github.io/datasets) publishes every dataset as one zip of "
    "these text files; several public repositories keep the unzipped files"
)
TASKS = ("classification", "regression")


@dataclass
class GraphSet:
    """A dataset of many graphs, as graph-level training reads it.

    Args:
        name: what it is (``tu:PROTEINS``).
        dataset: the PyG dataset; ``dataset[i]`` is graph ``i`` as a
            :class:`torch_geometric.data.Data` with ``x``, ``edge_index`` and ``y``.
        task: ``classification`` (``y`` one class per graph) or ``regression`` (``y`` one
            or more targets per graph).
        num_features: width of ``x``.
        num_outputs: classes (classification) or targets (regression).
    """

    name: str
    dataset: object
    task: str
    num_features: int
    num_outputs: int

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> Tensor | None:
        """``[G]`` class of each graph, for stratified folds (``None`` for regression)."""
        return self.dataset.y.view(-1) if self.task == "classification" else None


def tu_raw_dir(root: str | Path, name: str) -> Path:
    return Path(root) / name / "raw"


def check_tu_raw(root: str | Path, name: str) -> None:
    """Raise :class:`DatasetError` unless ``root/name/raw`` holds a readable TU dataset.

    Checks that the required files exist, that every line of every file parses with the
    same number of columns, and that the files agree: node IDs within the nodes of
    ``graph_indicator``, graphs numbered ``1..G`` in order, no edge between two graphs, one
    line per node (node files) and per graph (graph files).
    """
    raw = tu_raw_dir(root, name)
    path_of = {kind: raw / f"{name}_{kind}.txt" for kind in _FILES}
    missing = [path_of[k].name for k in ("A", "graph_indicator") if not path_of[k].is_file()]
    has_target = path_of["graph_labels"].is_file() or path_of["graph_attributes"].is_file()
    if not has_target:
        missing.append(f"{name}_graph_labels.txt (or {name}_graph_attributes.txt)")
    if missing:
        raise DatasetError(
            f"TU dataset {name} needs its raw files in {raw}; missing: {', '.join(missing)}. "
            f"This project never downloads at run time: copy them there ({TU_WHERE})."
        )
    indicator = _read_column(path_of["graph_indicator"], int)
    if indicator.size == 0:
        raise DatasetError(f"{path_of['graph_indicator']} is empty: the dataset has no nodes.")
    step = np.diff(indicator)
    bad = np.flatnonzero((step < 0) | (step > 1))
    if indicator[0] != 1 or bad.size:
        line = 1 if indicator[0] != 1 else int(bad[0]) + 2
        raise DatasetError(
            f"{path_of['graph_indicator']} line {line}: graph IDs must start at 1 and go up by "
            f"0 or 1 from line to line (nodes listed graph by graph), got "
            f"{indicator[line - 1]} after "
            f"{'nothing' if line == 1 else indicator[line - 2]}."
        )
    num_nodes, num_graphs = indicator.size, int(indicator[-1])
    edges = _read_table(path_of["A"], int, columns=2)
    out_of_range = np.flatnonzero((edges < 1).any(1) | (edges > num_nodes).any(1))
    if out_of_range.size:
        j = int(out_of_range[0])
        raise DatasetError(
            f"{path_of['A']} line {j + 1}: edge {edges[j, 0]}, {edges[j, 1]} names a node "
            f"outside 1..{num_nodes} (the nodes of {path_of['graph_indicator'].name})."
        )
    across = np.flatnonzero(indicator[edges[:, 0] - 1] != indicator[edges[:, 1] - 1])
    if across.size:
        j = int(across[0])
        a, b = edges[j]
        raise DatasetError(
            f"{path_of['A']} line {j + 1}: edge {a}, {b} joins graph {indicator[a - 1]} to "
            f"graph {indicator[b - 1]}; an edge must stay inside one graph."
        )
    for kind, dtype, count, what in (
        ("graph_labels", int, num_graphs, "graph"),
        ("graph_attributes", float, num_graphs, "graph"),
        ("node_labels", int, num_nodes, "node"),
        ("node_attributes", float, num_nodes, "node"),
    ):
        if path_of[kind].is_file():
            rows = _read_table(path_of[kind], dtype).shape[0]
            if rows != count:
                raise DatasetError(
                    f"{path_of[kind]} has {rows} lines, but the dataset has {count} "
                    f"{what}s (from {path_of['graph_indicator'].name}); it needs one line per "
                    f"{what}."
                )


_FILES = (
    "A",
    "graph_indicator",
    "graph_labels",
    "graph_attributes",
    "node_labels",
    "node_attributes",
)


def _read_table(path: Path, dtype: type, columns: int | None = None) -> np.ndarray:
    """Every line of ``path`` as comma-separated numbers of ``dtype``, all with the same
    number of columns (``columns`` when given); an error names the first bad line."""
    rows: list[list[int | float]] = []
    width = columns
    lines = path.read_text().split("\n")
    while lines and not lines[-1].strip():  # blank lines at the end are harmless
        lines.pop()
    for number, line in enumerate(lines, 1):
        text = line.strip()
        fields = [f.strip() for f in text.split(",")]
        try:
            values = [dtype(f) for f in fields]
        except ValueError:
            kind = "integers" if dtype is int else "numbers"
            raise DatasetError(
                f"{path} line {number}: {text!r} is not comma-separated {kind}."
            ) from None
        if width is None:
            width = len(values)
        if len(values) != width:
            raise DatasetError(
                f"{path} line {number}: {text!r} has {len(values)} value(s), expected "
                f"{width} as on {'every line' if columns else 'the first line'}."
            )
        rows.append(values)
    return np.asarray(rows, dtype=np.int64 if dtype is int else np.float64).reshape(
        len(rows), width or 0
    )


def _read_column(path: Path, dtype: type) -> np.ndarray:
    return _read_table(path, dtype, columns=1)[:, 0]


def load_tu_dataset(name: str, root: str | Path = "data", use_node_attr: bool = False):
    """PyG's ``TUDataset`` ``name`` under ``root``, offline, raw files checked first."""
    from torch_geometric.datasets import TUDataset

    processed = Path(root) / name / "processed" / "data.pt"
    if not processed.is_file():  # PyG reads the raw files only to process them
        check_tu_raw(root, name)
    try:
        return offline_dataset_class(TUDataset, TU_WHERE)(
            str(root), name, use_node_attr=use_node_attr
        )
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(
            f"TUDataset {name} under {root}: PyG could not read it ({type(exc).__name__}: "
            f"{exc}). Replace the raw files with intact copies and delete {processed.parent}."
        ) from exc


def tu_graph_set(name: str, root: str | Path = "data", transform: str = "none") -> GraphSet:
    """TU dataset ``name`` as a :class:`GraphSet`, with node features made by ``transform``
    (:func:`node_features`)."""
    dataset = load_tu_dataset(name, root)
    if len(dataset) == 0:
        raise DatasetError(f"TU dataset {name} under {root} holds no graphs.")
    if dataset[0].y is None:
        raise DatasetError(f"TU dataset {name} has no graph labels or attributes to learn.")
    task = "regression" if dataset.y.is_floating_point() else "classification"
    features = node_features(dataset, transform)
    dataset = FeaturedGraphs([features(graph) for graph in dataset])  # once, not per batch
    first = dataset[0]
    outputs = int(dataset.y.max()) + 1 if task == "classification" else first.y.numel()
    return GraphSet(
        name=f"tu:{name}",
        dataset=dataset,
        task=task,
        num_features=first.x.size(-1),
        num_outputs=outputs,
    )


class FeaturedGraphs(InMemoryDataset):
    """The graphs of a dataset with their node features made once, collated in memory as
    PyG's own datasets are (indexing by a tensor of graph IDs, ``.y`` over all graphs)."""

    def __init__(self, graphs: list) -> None:
        super().__init__()
        self.data, self.slices = self.collate(graphs)


DEGREE_ONE_HOT_LIMIT = 1000  # Degree-Quant: one-hot degrees below this largest degree


def node_features(dataset, transform: str):
    """The per-graph transform that gives ``dataset``'s graphs float32 node features ``x``
    (applied once when the dataset is loaded).

    - ``none``: PyG's own (one-hot node labels); a dataset without any gets ``degree``;
    - ``normalize_features``: PyG's own, rows scaled to sum 1;
    - ``one_hot_degree``: PyG's ``OneHotDegree`` up to the dataset's largest degree;
    - ``standardized_degree``: one feature, the node's degree minus the mean over every
      node of the dataset, divided by their standard deviation;
    - ``degree``: Degree-Quant's rule for datasets without node features: the one-hot
      degree when the largest degree is below :data:`DEGREE_ONE_HOT_LIMIT`, else the
      standardized degree (REDDIT-BINARY's largest degree is 3,062).
    """
    from torch_geometric import transforms as T

    if transform == "none" and dataset._data.x is None:
        transform = "degree"
    if transform in ("one_hot_degree", "standardized_degree", "degree"):
        degrees = torch.cat([_degree(graph) for graph in dataset])
        largest = int(degrees.max()) if degrees.numel() else 0
        if transform == "one_hot_degree" or (
            transform == "degree" and largest < DEGREE_ONE_HOT_LIMIT
        ):
            return T.Compose([_DropFeatures(), T.OneHotDegree(largest), _Float32()])
        mean, std = degrees.double().mean(), degrees.double().std().clamp(min=1e-12)
        return _StandardizedDegree(float(mean), float(std))
    if transform not in ("none", "normalize_features"):
        raise DatasetError(
            f"data.transform={transform!r} does not apply to a dataset of graphs; use none, "
            "normalize_features, one_hot_degree, standardized_degree or degree."
        )
    steps = [T.NormalizeFeatures()] if transform == "normalize_features" else []
    return T.Compose([*steps, _Float32()])


def _degree(graph) -> Tensor:
    """Each node's out-degree (the TU graphs list both directions of every edge)."""
    return torch.bincount(graph.edge_index[0], minlength=graph.num_nodes)


class _StandardizedDegree:
    def __init__(self, mean: float, std: float) -> None:
        self.mean, self.std = mean, std

    def __call__(self, data):
        data = data.clone()
        data.x = ((_degree(data).double() - self.mean) / self.std).to(torch.float32)[:, None]
        return data


class _DropFeatures:
    def __call__(self, data):
        data = data.clone()
        data.x = None
        return data


class _Float32:
    def __call__(self, data):
        if data.x is not None and data.x.dtype != torch.float32:
            data.x = data.x.to(torch.float32)
        return data
