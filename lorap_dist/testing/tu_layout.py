"""Write small datasets of graphs in the TU collection's exact raw layout, so tests run
PyG's real ``TUDataset`` reader offline."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TUGraph:
    """One graph: ``num_nodes`` nodes, undirected ``edges`` (pairs of 0-based local IDs,
    each listed once), a class ``label`` or regression ``target``, optional node labels."""

    num_nodes: int
    edges: list[tuple[int, int]]
    label: int | None = None
    target: list[float] | None = None
    node_labels: list[int] | None = None
    node_attributes: list[list[float]] = field(default_factory=list)


def write_tu_dataset(root: str | Path, name: str, graphs: list[TUGraph]) -> Path:
    """Write ``graphs`` as ``root/name/raw/name_*.txt`` and return the raw directory.

    Edges go in both directions (as the TU files list them), node IDs are 1-based and
    global, nodes are numbered graph by graph. Graph labels are written when every graph
    has a ``label``, attributes when every graph has a ``target``; node labels and
    attributes when the first graph has them.
    """
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    edge_lines, indicator, node_labels, node_attributes = [], [], [], []
    offset = 0
    for g, graph in enumerate(graphs, 1):
        for a, b in graph.edges:
            edge_lines += [
                f"{a + offset + 1}, {b + offset + 1}",
                f"{b + offset + 1}, {a + offset + 1}",
            ]
        indicator += [str(g)] * graph.num_nodes
        node_labels += [str(v) for v in graph.node_labels or []]
        node_attributes += [", ".join(f"{v:g}" for v in row) for row in graph.node_attributes]
        offset += graph.num_nodes
    files = {"A": edge_lines, "graph_indicator": indicator}
    if all(graph.label is not None for graph in graphs):
        files["graph_labels"] = [str(graph.label) for graph in graphs]
    if all(graph.target is not None for graph in graphs):
        files["graph_attributes"] = [", ".join(f"{v:g}" for v in graph.target) for graph in graphs]
    if graphs and graphs[0].node_labels:
        files["node_labels"] = node_labels
    if graphs and graphs[0].node_attributes:
        files["node_attributes"] = node_attributes
    for kind, lines in files.items():
        (raw / f"{name}_{kind}.txt").write_text("".join(line + "\n" for line in lines))
    return raw


def two_shapes(num_graphs: int, seed: int = 0, node_labels: bool = True) -> list[TUGraph]:
    """A learnable two-class dataset: class 0 graphs are cycles, class 1 graphs are stars
    (one hub joined to every other node), 5 to 12 nodes each; node labels (when asked)
    are 0 or 1 at random, so they carry no class information."""
    rng = np.random.default_rng(seed)
    graphs = []
    for g in range(num_graphs):
        n = int(rng.integers(5, 13))
        label = g % 2
        if label == 0:
            edges = [(i, (i + 1) % n) for i in range(n)]
        else:
            edges = [(0, i) for i in range(1, n)]
        labels = rng.integers(0, 2, n).tolist() if node_labels else None
        graphs.append(TUGraph(n, edges, label=label, node_labels=labels))
    return graphs


def edge_count_targets(num_graphs: int, seed: int = 0) -> list[TUGraph]:
    """A regression dataset: random graphs of 4 to 10 nodes whose one target is their number
    of edges divided by 10 (a sum readout can learn it exactly)."""
    rng = np.random.default_rng(seed)
    graphs = []
    for _ in range(num_graphs):
        n = int(rng.integers(4, 11))
        pairs = [(a, b) for a in range(n) for b in range(a + 1, n) if rng.random() < 0.4]
        graphs.append(TUGraph(n, pairs, target=[len(pairs) / 10], node_labels=[0] * n))
    return graphs
