"""Write small datasets in OGB's exact on-disk layout, so tests run OGB's real loader offline.

OGB's ``NodePropPredDataset`` skips the download when ``root/<name>/RELEASE_v<version>.txt``
and the raw files exist, and builds its ``processed/`` cache from the raw files. These
helpers write exactly those files from arrays, and can break them on purpose.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from lorap_dist.graph.data import GraphData


def write_csv_gz(path: Path, rows: np.ndarray | list[str]) -> None:
    """A headerless ``.csv.gz``: a 1-D/2-D array, or ready-made text lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(rows, list):
        import gzip

        with gzip.open(path, "wt") as f:
            f.write("".join(line + "\n" for line in rows))
        return
    rows = np.asarray(rows)
    pd.DataFrame(rows.reshape(len(rows), -1)).to_csv(
        path, header=False, index=False, compression="gzip"
    )


def write_ogb_files(
    directory: str | Path,
    edge_index: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    splits: Mapping[str, np.ndarray],
    split_type: str = "random",
    extra_node_files: tuple[str, ...] = (),
) -> Path:
    """Write ``raw/`` and ``split/<split_type>/`` of one node dataset into ``directory``.

    Args:
        edge_index: ``[2, E]`` edges as the file lists them (one line per column).
        x: ``[N, F]`` features; y: ``[N]`` labels.
        splits: ``train``, ``valid``, ``test`` -> node IDs.
        extra_node_files: names of OGB's "additional node files" (e.g. ``node_year``),
            written as a column of zeros.
    """
    directory = Path(directory)
    raw = directory / "raw"
    edge_index = np.asarray(edge_index)
    write_csv_gz(raw / "edge.csv.gz", edge_index.T)
    write_csv_gz(raw / "node-feat.csv.gz", np.asarray(x, dtype=np.float32))
    write_csv_gz(raw / "node-label.csv.gz", np.asarray(y).reshape(-1, 1))
    write_csv_gz(raw / "num-node-list.csv.gz", np.array([[len(x)]]))
    write_csv_gz(raw / "num-edge-list.csv.gz", np.array([[edge_index.shape[1]]]))
    for extra in extra_node_files:
        write_csv_gz(raw / f"{extra}.csv.gz", np.zeros((len(x), 1), dtype=np.int64))
    for name in ("train", "valid", "test"):
        write_csv_gz(directory / "split" / split_type / f"{name}.csv.gz", np.asarray(splits[name]))
    (directory / "processed").mkdir(parents=True, exist_ok=True)
    return directory


def write_ogb_dataset(root: str | Path, name: str, graph: GraphData) -> Path:
    """Write ``graph`` as OGB dataset ``name`` under ``root``, as OGB's download unpacks it.

    The graph's edges are written once per undirected pair (``src < dst``) when OGB adds
    the inverse edges itself (``add_inverse_edge``, e.g. ogbn-products), else as given.
    Returns the dataset directory ``root/<name with underscores>``.
    """
    from lorap_dist.graph.ogb_source import ogb_meta

    meta = ogb_meta(name)
    edges = graph.edge_index.numpy()
    if meta["add_inverse_edge"] == "True":
        edges = edges[:, edges[0] < edges[1]]
    extra = meta["additional node files"]
    directory = write_ogb_files(
        Path(root) / name.replace("-", "_"),
        edges,
        graph.x.numpy(),
        graph.y.numpy(),
        {"train": graph.train_idx, "valid": graph.valid_idx, "test": graph.test_idx},
        split_type=meta["split"],
        extra_node_files=tuple(extra.split(",")) if extra != "None" else (),
    )
    (directory / f"RELEASE_v{meta['version']}.txt").write_text(f"{name} v{meta['version']}\n")
    return directory
