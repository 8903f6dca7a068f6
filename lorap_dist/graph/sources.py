"""Graph sources by name: :func:`open_source` opens any of them as a
:class:`~lorap_dist.graph.graph_source.GraphSource`. These kinds exist:

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

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.graph_source import EDGE_CHUNK, FEATURE_CHUNK, GraphSource
from lorap_dist.graph.ogb_source import dir_source, ogb_source
from lorap_dist.graph.pyg_source import pyg_source
from lorap_dist.graph.synthetic import (
    iter_synthetic_edges,
    synthetic_features,
    synthetic_labels,
    synthetic_split,
)

#: How each kind of source is named (the module docstring says what each reads).
SOURCE_FORMS = ("synthetic", "ogbn-NAME", "dir:PATH", "planetoid:NAME", "pyg:CLASS[:NAME]")


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
    """The source named by ``spec``, in one of the :data:`SOURCE_FORMS`.

    Args:
        spec: which source.
        root: where OGB datasets live (``root/ogbn_NAME``; downloaded there when absent) and
            where PyG datasets keep their raw files (``root/<Name>/raw``; never downloaded).
        synthetic: the generator's config for ``synthetic``.
        split_type: the ``split/<type>`` folder to use (default: OGB's own, or the only one).
    """
    if spec == "synthetic":
        return synthetic_source(synthetic or SyntheticConfig())
    if spec.startswith("ogbn-"):
        return ogb_source(spec, root, split_type)
    if spec.startswith("dir:") and len(spec) > 4:
        return dir_source(spec[4:], split_type)
    kind, _, rest = spec.partition(":")
    if kind in ("planetoid", "pyg") and rest:
        if kind == "planetoid":
            return pyg_source("Planetoid", rest, root)
        class_name, _, name = rest.partition(":")
        return pyg_source(class_name, name or None, root)
    raise DatasetError(
        f"source {spec!r} is not known; use 'synthetic', an OGB node dataset name such as "
        "'ogbn-arxiv', 'dir:PATH' for a directory in OGB's layout, 'planetoid:Cora' "
        "(CiteSeer, PubMed) or 'pyg:CLASS:NAME' for a PyG dataset class."
    )
