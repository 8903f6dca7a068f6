"""Write small graphs in the Planetoid raw format, so tests run PyG's real ``Planetoid``.

The Planetoid files (Yang et al., 2016) are Python pickles: ``x``, ``tx`` and ``allx`` are
scipy CSR feature matrices (training rows, test rows, every non-test row), ``y``, ``ty`` and
``ally`` one-hot label arrays, ``graph`` a dict ``node -> [neighbours]``, and ``test.index``
a text file with one test node ID per line. PyG's public split takes the first ``len(y)``
nodes for training and the next 500 for validation, so a graph needs at least
``len(y) + 500`` non-test nodes.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def write_planetoid_raw(
    root: str | Path,
    name: str,
    features: np.ndarray,
    labels: np.ndarray,
    edges: np.ndarray,
    num_train: int,
    num_test: int,
    seed: int = 0,
) -> Path:
    """Write ``root/<name>/raw/ind.<name lower>.*`` for one graph; returns the raw folder.

    The last ``num_test`` nodes are the test nodes; they are listed in ``test.index`` in a
    shuffled order (as the real files are), and ``tx``/``ty`` hold them in that order.

    Args:
        features: ``[N, F]`` features (stored sparse).
        labels: ``[N]`` class IDs.
        edges: ``[2, E]`` undirected edges, each listed once.
        num_train: labelled training nodes (the first ones).
        num_test: test nodes (the last ones).
    """
    n, classes = len(labels), int(labels.max()) + 1
    if n - num_test < num_train + 500:
        raise ValueError("PyG's public split needs len(y) + 500 non-test nodes.")
    one_hot = np.eye(classes, dtype=np.int32)[labels]
    order = np.random.default_rng(seed).permutation(np.arange(n - num_test, n))
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    graph: dict[int, list[int]] = defaultdict(list)
    for a, b in np.asarray(edges).T.tolist():
        graph[a].append(b)
        graph[b].append(a)
    for i in range(n):
        graph.setdefault(i, [])
    objects = {
        "x": sp.csr_matrix(features[:num_train]),
        "y": one_hot[:num_train],
        "allx": sp.csr_matrix(features[: n - num_test]),
        "ally": one_hot[: n - num_test],
        "tx": sp.csr_matrix(features[order]),
        "ty": one_hot[order],
        "graph": graph,
    }
    prefix = f"ind.{name.lower()}"
    for suffix, value in objects.items():
        with open(raw / f"{prefix}.{suffix}", "wb") as f:
            pickle.dump(value, f)
    (raw / f"{prefix}.test.index").write_text("".join(f"{i}\n" for i in order))
    return raw
