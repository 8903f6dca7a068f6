"""OGB node-property datasets, through OGB's own loader, and directories in OGB's layout.

OGB's on-disk layout of a homogeneous node dataset (``ogbn-arxiv``, ``ogbn-products``)::

    root/ogbn_arxiv/RELEASE_v1.txt
    root/ogbn_arxiv/raw/{edge, node-feat, node-label, num-node-list, num-edge-list}.csv.gz
    root/ogbn_arxiv/raw/node_year.csv.gz          (the dataset's "additional node files")
    root/ogbn_arxiv/split/time/{train, valid, test}.csv.gz
    root/ogbn_arxiv/processed/                    (OGB caches ``data_processed`` here)

Every ``.csv.gz`` has no header; line ``i`` of a node file is node ``i - 1``. ``ogbn-NAME``
sources run ``ogb.nodeproppred.NodePropPredDataset``, which downloads only when the raw files
are absent. OGB 1.3.6 reads its cache with ``torch.load``, which refuses numpy arrays since
torch 2.6 made ``weights_only=True`` the default, so the loader runs under
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``.

``dir:PATH`` sources read the same files with a strict reader of their own, because they are
hand-made: any malformed line is reported by file and line.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.graph_source import EDGE_CHUNK, GraphSource

SPLITS = ("train", "valid", "test")
RAW_FILES = ("edge", "node-feat", "node-label", "num-node-list", "num-edge-list")


@contextlib.contextmanager
def _legacy_torch_load() -> Iterator[None]:
    """Let OGB 1.3.6's ``torch.load`` of its numpy cache work on torch >= 2.6 (quietly)."""
    old = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
            # A short CSV line reaches OGB's int cast as NaN; it is diagnosed afterwards.
            warnings.filterwarnings("ignore", message="invalid value encountered in cast")
            yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = old


def ogb_meta(name: str) -> pd.Series:
    """OGB's own metadata (``master.csv``) for node dataset ``name``."""
    import ogb.nodeproppred

    master = pd.read_csv(
        Path(ogb.nodeproppred.__file__).parent / "master.csv", index_col=0, keep_default_na=False
    )
    if name not in master:
        raise DatasetError(
            f"source {name!r} is not an OGB node-property dataset; OGB knows "
            f"{', '.join(master.columns)}. For your own data use 'dir:PATH'."
        )
    return master[name]


def ogb_source(name: str, root: str | Path = "data", split_type: str | None = None) -> GraphSource:
    """OGB dataset ``name`` under ``root``, loaded by OGB's ``NodePropPredDataset``.

    Downloads into ``root`` when ``root/<name with underscores>`` does not exist; refuses a
    directory that exists but is incomplete, rather than downloading over it.
    """
    meta = ogb_meta(name)
    if meta["is hetero"] == "True":
        raise DatasetError(
            f"{name} is a heterogeneous graph; prepare supports homogeneous node datasets "
            "(ogbn-arxiv, ogbn-products, ogbn-papers100M)."
        )
    if int(meta["num tasks"]) != 1:
        raise DatasetError(
            f"{name} has {meta['num tasks']} label columns; prepare supports single-label "
            "multi-class datasets."
        )
    directory = Path(root) / name.replace("-", "_")
    binary = meta["binary"] == "True"
    if directory.exists():
        _check_complete(directory, meta, binary)
    from ogb.nodeproppred import NodePropPredDataset

    with _legacy_torch_load():
        try:
            dataset = NodePropPredDataset(name=name, root=str(root))
            split = dataset.get_idx_split(split_type)
        except FileNotFoundError as err:
            raise DatasetError(
                f"{err.filename} is missing; the OGB directory {directory} is "
                "incomplete, so delete it to download again."
            ) from err
        except (ValueError, OSError, EOFError, zlib.error) as err:
            raise _diagnose_raw(directory / "raw", err) from err
    graph, labels = dataset[0]
    edges, num_nodes = graph["edge_index"], int(graph["num_nodes"])
    if not binary and edges.size and (edges.min() < 0 or edges.max() >= num_nodes):
        # OGB casts a short line's NaN to a garbage integer; name the line if that is it.
        found = diagnose_csv(directory / "raw" / "edge.csv.gz", 2, integer=True)
        if found is not None:
            raise found
    if graph["node_feat"] is None:
        raise DatasetError(f"{name} has no node features (raw/node-feat); prepare needs them.")
    split_dir = directory / "split" / (split_type or meta["split"])
    suffix = "npz" if binary else "csv.gz"
    return _source(
        name=name,
        raw=directory / "raw",
        edge_index=edges,
        features=graph["node_feat"],
        labels=labels,
        splits={s: np.asarray(split[s]) for s in SPLITS},
        split_files={s: split_dir / f"{s}.csv.gz" for s in SPLITS},
        num_nodes=num_nodes,
        num_classes=int(meta["num classes"]),
        inverse_added=meta["add_inverse_edge"] == "True",
        files=(f"edge.{suffix}" if not binary else "data.npz", "node-feat." + suffix),
    )


def _check_complete(directory: Path, meta: pd.Series, binary: bool) -> None:
    release = directory / f"RELEASE_v{meta['version']}.txt"
    if not release.is_file():
        raise DatasetError(
            f"{release} is missing: {directory} is an incomplete or outdated OGB download. "
            "Delete the directory to download again, or restore the file."
        )
    if (directory / "processed" / "data_processed").is_file():
        return
    raw = directory / "raw"
    needed = ["data.npz", "node-label.npz"] if binary else [f"{f}.csv.gz" for f in RAW_FILES]
    extra = meta["additional node files"]
    if not binary and extra != "None":
        needed += [f"{f}.csv.gz" for f in extra.split(",")]
    for file in needed:
        if not (raw / file).is_file():
            raise DatasetError(
                f"{raw / file} is missing, so {directory} is incomplete; delete the directory "
                "to download it again (or add the file)."
            )


def dir_source(path: str | Path, split_type: str | None = None) -> GraphSource:
    """Your own dataset directory in OGB's layout (``raw/*.csv.gz`` and ``split/<type>/``).

    ``node-label.csv.gz`` may write ``nan`` (or leave the line empty) for an unlabelled node. The
    number of classes is the largest label plus one.
    """
    directory = Path(path)
    raw = directory / "raw"
    if not directory.is_dir():
        raise DatasetError(f"dataset directory {directory} does not exist.")
    for file in RAW_FILES:
        if not (raw / f"{file}.csv.gz").is_file():
            raise DatasetError(
                f"{raw / (file + '.csv.gz')} is missing; a dataset directory needs raw/"
                f"{{{', '.join(RAW_FILES)}}}.csv.gz in OGB's layout."
            )
    split_root = directory / "split"
    types = (
        sorted(p.name for p in split_root.iterdir() if p.is_dir()) if split_root.is_dir() else []
    )
    if split_type is None:
        if len(types) != 1:
            raise DatasetError(
                f"{split_root} must hold exactly one split folder, or name one with "
                f"--split-type; found {types or 'none'}."
            )
        split_type = types[0]
    split_dir = split_root / split_type
    split_files = {s: split_dir / f"{s}.csv.gz" for s in SPLITS}
    for file in split_files.values():
        if not file.is_file():
            raise DatasetError(
                f"{file} is missing; each split folder needs train, valid and "
                "test .csv.gz files of node IDs."
            )
    counts = read_csv_strict(raw / "num-node-list.csv.gz", 1, integer=True)
    if counts.shape[0] != 1:
        raise DatasetError(
            f"{raw / 'num-node-list.csv.gz'} lists {counts.shape[0]} graphs; a "
            "node dataset has exactly one line, the node count."
        )
    edges = read_csv_strict(raw / "edge.csv.gz", 2, integer=True)
    edge_counts = read_csv_strict(raw / "num-edge-list.csv.gz", 1, integer=True)
    if int(edge_counts.sum()) != edges.shape[0]:
        raise DatasetError(
            f"{raw / 'num-edge-list.csv.gz'} says {int(edge_counts.sum())} edges but "
            f"{raw / 'edge.csv.gz'} has {edges.shape[0]} lines; make them agree."
        )
    labels = read_csv_strict(raw / "node-label.csv.gz", 1, integer=False, float_dtype=np.float64)
    known = labels[~np.isnan(labels)]
    bad = np.flatnonzero(~np.isnan(labels[:, 0]) & ((labels[:, 0] < 0) | (labels[:, 0] % 1 != 0)))
    if len(bad):
        raise DatasetError(
            f"{raw / 'node-label.csv.gz'} line {bad[0] + 1}: label "
            f"{float(labels[bad[0], 0]):g} is not a non-negative integer class."
        )
    return _source(
        name=str(directory),
        raw=raw,
        edge_index=edges.T,
        features=read_csv_strict(raw / "node-feat.csv.gz", None, integer=False),
        labels=labels,
        splits={s: read_csv_strict(f, 1, integer=True)[:, 0] for s, f in split_files.items()},
        split_files=split_files,
        num_nodes=int(counts[0, 0]),
        num_classes=int(known.max()) + 1 if len(known) else 0,
        inverse_added=False,
        files=("edge.csv.gz", "node-feat.csv.gz"),
    )


def _source(
    name: str,
    raw: Path,
    edge_index: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    splits: dict[str, np.ndarray],
    split_files: dict[str, Path],
    num_nodes: int,
    num_classes: int,
    inverse_added: bool,
    files: tuple[str, str],
) -> GraphSource:
    """Check counts, labels and splits of loaded arrays and wrap them as a source.

    Edge IDs and feature values are checked later, chunk by chunk, by the pipeline.
    """
    label_file = raw / "node-label.csv.gz"
    if num_nodes < 1:
        raise DatasetError(f"{raw / 'num-node-list.csv.gz'}: the node count is {num_nodes}.")
    if features.shape[0] != num_nodes:
        raise DatasetError(
            f"{raw / files[1]} has {features.shape[0]} rows but the graph has "
            f"{num_nodes} nodes (num-node-list); it needs one row per node."
        )
    labels = np.asarray(labels).reshape(len(labels), -1)
    if labels.shape != (num_nodes, 1):
        raise DatasetError(
            f"{label_file} has {labels.shape[0]} rows of {labels.shape[1]} "
            f"labels but the graph has {num_nodes} nodes; it needs one label "
            "per node."
        )
    labels = labels[:, 0]
    if labels.dtype.kind == "f":
        labels = np.where(np.isnan(labels), -1, labels)
    labels = labels.astype(np.int64)
    wrong = np.flatnonzero((labels < -1) | (labels >= num_classes))
    if len(wrong):
        raise DatasetError(
            f"{label_file} line {wrong[0] + 1}: label {labels[wrong[0]]} is not "
            f"in 0..{num_classes - 1}."
        )
    check_classes(labels, num_classes, label_file)
    for split, ids in splits.items():
        ids = np.asarray(ids, dtype=np.int64)
        outside = np.flatnonzero((ids < 0) | (ids >= num_nodes))
        if len(outside):
            raise DatasetError(
                f"{split_files[split]} line {outside[0] + 1}: node {ids[outside[0]]}"
                f" is out of range 0..{num_nodes - 1}."
            )
        splits[split] = ids
    edge_index = np.asarray(edge_index)
    # OGB's loader interleaves the reverse of every edge when add_inverse_edge is set.
    per_line = 2 if inverse_added else 1

    def edge_chunks() -> Iterator[np.ndarray]:
        for start in range(0, edge_index.shape[1], EDGE_CHUNK):
            yield edge_index[:, start : start + EDGE_CHUNK]

    return GraphSource(
        name=name,
        num_nodes=num_nodes,
        num_features=int(features.shape[1]),
        num_classes=num_classes,
        labels=labels,
        splits=splits,
        edge_chunks=edge_chunks,
        feature_rows=lambda start, end: np.asarray(features[start:end], dtype=np.float32),
        where_edge=lambda j: f"{raw / files[0]} line {j // per_line + 1}",
        where_node=lambda i: f"{raw / files[1]} line {i + 1}",
        undirected=inverse_added,
    )


def read_csv_strict(
    path: Path, columns: int | None, integer: bool, float_dtype: type = np.float32
) -> np.ndarray:
    """A headerless ``.csv.gz`` as a ``[lines, columns]`` array, or an error naming the line.

    Args:
        path: the file.
        columns: how many comma-separated values each line must have (``None``: as many as
            the first line).
        integer: values must be integers (int64); otherwise numbers (``float_dtype``).
    """
    dtype = np.int64 if integer else float_dtype
    try:
        values = pd.read_csv(
            path, header=None, dtype=dtype, compression="gzip", skip_blank_lines=False
        ).to_numpy()
    except pd.errors.EmptyDataError:
        return np.zeros((0, columns or 0), dtype=dtype)
    except (ValueError, pd.errors.ParserError, OSError, EOFError, zlib.error) as err:
        raise diagnose_csv(path, columns, integer) or DatasetError(
            f"{path} could not be read ({err})."
        ) from err
    if columns is not None and values.shape[1] != columns:
        raise DatasetError(
            f"{path} line 1: expected {columns} comma-separated values per "
            f"line, found {values.shape[1]}."
        )
    if not integer and np.isnan(values).any():  # a short line reads as NaN: name it
        found = diagnose_csv(path, columns or values.shape[1], integer)
        if found is not None:
            raise found
    return values


def diagnose_csv(path: Path, columns: int | None, integer: bool) -> DatasetError | None:
    """Scan a ``.csv.gz`` line by line for the first malformed line (slow; errors only)."""
    kind = "an integer" if integer else "a number"
    try:
        with gzip.open(path, "rt") as lines:
            for number, line in enumerate(lines, start=1):
                fields = line.rstrip("\r\n").split(",")
                columns = columns or len(fields)
                if len(fields) != columns:
                    return DatasetError(
                        f"{path} line {number}: expected {columns} comma-separated values, "
                        f"found {len(fields)} ({line.strip()[:80]!r})."
                    )
                for field in fields:
                    try:
                        int(field) if integer else float(field or "nan")
                    except ValueError:
                        text = line.strip()[:80]
                        return DatasetError(
                            f"{path} line {number}: {field!r} is not {kind} ({text!r})."
                        )
    except (OSError, EOFError, zlib.error) as err:
        return DatasetError(f"{path} is not a readable gzip file ({err}); replace it.")
    return None


def check_classes(labels: np.ndarray, num_classes: int, label_file: Path) -> None:
    """Refuse a class count that cannot be meant; warn about classes without a node.

    A class ID at or above the node count makes more classes than nodes: almost surely a
    typo (one label of 1000000 would make the model's last layer a million wide).
    """
    labelled = labels >= 0
    if num_classes > max(len(labels), 2):
        line = int(np.flatnonzero(labels == labels.max())[0]) + 1
        raise DatasetError(
            f"{label_file} line {line}: label {int(labels.max())} makes {num_classes} classes "
            f"for a graph of {len(labels)} nodes; class IDs must run from 0 to C-1 with C at "
            "most the node count. Fix the label (or renumber the classes contiguously)."
        )
    empty = np.flatnonzero(np.bincount(labels[labelled], minlength=num_classes) == 0)
    if len(empty):
        warnings.warn(
            f"{label_file}: {len(empty)} of {num_classes} classes have no node (e.g. "
            f"{empty[:5].tolist()}); the model still gets {num_classes} outputs. Renumber the "
            "classes contiguously if that is not intended.",
            stacklevel=2,
        )


def _has_no_lines(path: Path) -> bool:
    try:
        with gzip.open(path, "rt") as lines:
            return not any(line.strip() for line, _ in zip(lines, range(1), strict=False))
    except (OSError, EOFError, zlib.error):
        return False


def _diagnose_raw(raw: Path, err: Exception) -> DatasetError:
    """The error OGB's loader met, located in the raw file that caused it."""
    checks = [
        ("edge", 2, True),
        ("num-node-list", 1, True),
        ("num-edge-list", 1, True),
        ("node-label", 1, False),
        ("node-feat", None, False),
    ]
    edges = raw / "edge.csv.gz"
    if edges.is_file() and _has_no_lines(edges):
        return DatasetError(
            f"{edges} is empty: the graph has no edges: a graph neural network aggregates "
            "over edges, so there is nothing to train on beyond the features. Add the edge "
            "list, one 'source,destination' per line."
        )
    for file, columns, integer in checks:
        path = raw / f"{file}.csv.gz"
        if path.is_file() and (found := diagnose_csv(path, columns, integer)):
            return found
    return DatasetError(f"OGB's loader could not read {raw} ({err}).")
