"""What the prepare pipeline reads, whatever the graph came from: :class:`GraphSource`.

A source hands the pipeline node counts, labels and splits in memory, and edges and feature
rows in chunks, so a generated graph of any size never has to exist in memory at once. The
kinds of source and the function that opens one by name are in
:mod:`lorap_dist.graph.sources`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from lorap_dist.graph.data import GraphData
from lorap_dist.graph.synthetic import symmetrize

EDGE_CHUNK = 1 << 22  # edges per chunk: 64 MiB of int64 pairs
FEATURE_CHUNK = 1 << 16  # feature rows per chunk


@dataclass
class GraphSource:
    """A node-classification graph as the prepare pipeline reads it.

    Args:
        name: what it is (``synthetic``, ``ogbn-arxiv``, a directory).
        num_nodes: N; node IDs are ``0 .. N-1``.
        num_features: F.
        num_classes: C; labels are ``0 .. C-1`` or -1 (unlabelled).
        labels: ``[N]`` int64.
        splits: ``train``, ``valid``, ``test`` -> int64 node IDs.
        edge_chunks: returns a fresh iterator of ``[2, k]`` integer edge chunks (row 0 source,
            row 1 destination), original IDs, in a fixed order; called once per pass.
        feature_rows: ``(start, end) -> [end - start, F]`` float32 features of those nodes.
        where_edge: ``j -> "file line n"`` naming where edge ``j`` (in chunk order) came from.
        where_node: ``i -> "file line n"`` naming where node ``i``'s features came from.
        undirected: whether the source lists each undirected edge once (OGB's
            ``add_inverse_edge``), so symmetrizing restores the real graph.
    """

    name: str
    num_nodes: int
    num_features: int
    num_classes: int
    labels: np.ndarray
    splits: dict[str, np.ndarray]
    edge_chunks: Callable[[], Iterator[np.ndarray]]
    feature_rows: Callable[[int, int], np.ndarray]
    where_edge: Callable[[int], str]
    where_node: Callable[[int], str]
    undirected: bool = True

    def to_graph_data(self) -> GraphData:
        """The whole source in memory (single-process training): edges symmetrized when the
        source is undirected, self loops and repeated edges removed."""
        import torch

        edges = torch.cat([torch.as_tensor(c, dtype=torch.int64) for c in self.edge_chunks()], 1)
        if self.undirected:
            edge_index = symmetrize(edges, self.num_nodes)
        else:
            edges = edges[:, edges[0] != edges[1]]
            key = torch.unique(edges[1] * self.num_nodes + edges[0])
            edge_index = torch.stack([key % self.num_nodes, key // self.num_nodes])
        return GraphData(
            edge_index=edge_index,
            x=torch.from_numpy(np.ascontiguousarray(self.feature_rows(0, self.num_nodes))),
            y=torch.as_tensor(self.labels, dtype=torch.int64),
            train_idx=torch.as_tensor(self.splits["train"], dtype=torch.int64),
            valid_idx=torch.as_tensor(self.splits["valid"], dtype=torch.int64),
            test_idx=torch.as_tensor(self.splits["test"], dtype=torch.int64),
            num_classes=self.num_classes,
        )
