"""Feature transforms applied when a graph is loaded (``data.transform``).

``normalize_features`` is PyG's :class:`~torch_geometric.transforms.NormalizeFeatures`, the
recipe of the GCN paper on the Planetoid graphs: shift the features by their global minimum
(a no-op for non-negative bag-of-words features), then scale each row to sum to 1 (rows
that sum to less than 1, such as all-zero rows, are divided by 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import Tensor

from lorap_dist.graph.graph_source import FEATURE_CHUNK, GraphSource

TRANSFORMS = ("none", "normalize_features")


def normalize_features(x: Tensor) -> Tensor:
    """``x`` as PyG's ``NormalizeFeatures`` returns it (a new tensor; ``x`` is unchanged)."""
    from torch_geometric.data import Data
    from torch_geometric.transforms import NormalizeFeatures

    return NormalizeFeatures()(Data(x=x.clone())).x


def apply_transform(x: Tensor, transform: str) -> Tensor:
    """Node features ``x`` after ``transform`` (one of :data:`TRANSFORMS`)."""
    if transform == "none":
        return x
    if transform == "normalize_features":
        return normalize_features(x)
    raise ValueError(f"transform {transform!r} is not known; choose one of {list(TRANSFORMS)}.")


def transform_source(source: GraphSource, transform: str) -> GraphSource:
    """``source`` whose feature rows come out transformed, chunk by chunk.

    ``normalize_features`` needs the global minimum first, so the rows are read once more
    (in chunks) before the first chunk is served; the result equals :func:`normalize_features`
    of the whole matrix.
    """
    if transform == "none":
        return source
    if transform != "normalize_features":
        raise ValueError(f"transform {transform!r} is not known; choose one of {list(TRANSFORMS)}.")
    read = source.feature_rows
    shift: list[float] = []

    def global_min() -> float:
        if not shift:
            # Over finite values: a NaN or infinite feature is the pipeline's to report, at
            # its own node, not a reason to turn every row into NaN.
            lows = []
            for start in range(0, source.num_nodes, FEATURE_CHUNK):
                rows = np.asarray(read(start, min(start + FEATURE_CHUNK, source.num_nodes)))
                lows.append(rows[np.isfinite(rows)].min(initial=np.inf))
            low = min(lows, default=np.inf)
            shift.append(float(low) if np.isfinite(low) else 0.0)
        return shift[0]

    def feature_rows(start: int, end: int) -> np.ndarray:
        rows = torch.from_numpy(np.asarray(read(start, end), dtype=np.float32)) - global_min()
        return rows.div_(rows.sum(dim=-1, keepdim=True).clamp_(min=1.0)).numpy()

    return dataclasses.replace(source, feature_rows=feature_rows)
