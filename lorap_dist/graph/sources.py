"""Graph sources: what the prepare pipeline reads, whatever the graph came from.

A :class:`GraphSource` hands the pipeline node counts, labels and splits in memory, and edges
and feature rows in chunks, so a generated graph of any size never has to exist in memory
at once. These kinds exist:

- ``synthetic`` -- :mod:`lorap_dist.graph.synthetic`, drawn chunk by chunk;
- ``ogbn-NAME`` -- any homogeneous OGB node-property dataset, through OGB's own
  ``NodePropPredDataset`` (downloaded on a machine with internet);
- ``dir:PATH`` -- your own dataset directory in OGB's on-disk layout;
- ``planetoid:NAME`` -- Cora, CiteSeer or PubMed from their raw files, through PyG's
  ``Planetoid``; ``pyg:CLASS:NAME`` -- another single-graph dataset class of PyG.

``ogbn-NAME`` and ``dir:PATH`` live in :mod:`lorap_dist.graph.ogb_source`, the PyG datasets
in :mod:`lorap_dist.graph.pyg_source`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.data import GraphData
from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.synthetic import (
    iter_synthetic_edges,
    synthetic_features,
    synthetic_labels,
    synthetic_split,
)

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

        from lorap_dist.graph.synthetic import symmetrize

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


def synthetic_source(cfg: SyntheticConfig) -> GraphSource:
    """The generated graph of ``cfg``, edges and features drawn chunk by chunk.

    Features are drawn in blocks of :data:`FEATURE_CHUNK` rows (seeded by each block's first
    node), so a graph of at most that many nodes has exactly the features of
    :func:`~lorap_dist.graph.synthetic.generate_synthetic`.
    """
    labels_t = synthetic_labels(cfg)
    labels = labels_t.numpy()
    train, valid, test = (s.numpy() for s in synthetic_split(cfg))

    def edge_chunks() -> Iterator[np.ndarray]:
        for chunk in iter_synthetic_edges(cfg, chunk_edges=EDGE_CHUNK):
            yield chunk.numpy()

    def feature_rows(start: int, end: int) -> np.ndarray:
        blocks = []
        first = start - start % FEATURE_CHUNK
        for block in range(first, end, FEATURE_CHUNK):
            stop = min(block + FEATURE_CHUNK, cfg.num_nodes)
            rows = synthetic_features(cfg, labels_t[block:stop], block).numpy()
            blocks.append(rows[max(start - block, 0) : end - block])
        return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]

    return GraphSource(
        name="synthetic",
        num_nodes=cfg.num_nodes,
        num_features=cfg.num_features,
        num_classes=cfg.num_classes,
        labels=labels,
        splits={"train": train, "valid": valid, "test": test},
        edge_chunks=edge_chunks,
        feature_rows=feature_rows,
        where_edge=lambda j: f"synthetic edge {j}",
        where_node=lambda i: f"synthetic node {i}",
    )


def open_source(
    spec: str,
    root: str | Path = "data",
    synthetic: SyntheticConfig | None = None,
    split_type: str | None = None,
) -> GraphSource:
    """The source named by ``spec``: ``synthetic``, ``ogbn-NAME``, ``dir:PATH``,
    ``planetoid:NAME`` or ``pyg:CLASS[:NAME]``.

    Args:
        spec: which source.
        root: where OGB datasets live (``root/ogbn_NAME``; downloaded there when absent) and
            where PyG datasets keep their raw files (``root/<Name>/raw``; never downloaded).
        synthetic: the generator's config for ``synthetic``.
        split_type: the ``split/<type>`` folder to use (default: OGB's own, or the only one).
    """
    from lorap_dist.graph.ogb_source import dir_source, ogb_source

    if spec == "synthetic":
        return synthetic_source(synthetic or SyntheticConfig())
    if spec.startswith("ogbn-"):
        return ogb_source(spec, root, split_type)
    if spec.startswith("dir:") and len(spec) > 4:
        return dir_source(spec[4:], split_type)
    kind, _, rest = spec.partition(":")
    if kind in ("planetoid", "pyg") and rest:
        from lorap_dist.graph.pyg_source import pyg_source

        if kind == "planetoid":
            return pyg_source("Planetoid", rest, root)
        class_name, _, name = rest.partition(":")
        return pyg_source(class_name, name or None, root)
    raise DatasetError(
        f"source {spec!r} is not known; use 'synthetic', an OGB node dataset name such as "
        "'ogbn-arxiv', 'dir:PATH' for a directory in OGB's layout, 'planetoid:Cora' "
        "(CiteSeer, PubMed) or 'pyg:CLASS:NAME' for a PyG dataset class."
    )
