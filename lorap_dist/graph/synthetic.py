"""Generated graphs with planted classes, class-correlated features and power-law degrees.

The model is a degree-corrected stochastic block model (Chung-Lu weights inside planted
classes):

.. math::

    \\theta_i \\sim \\mathrm{Pareto}(\\alpha - 1), \\qquad
    P(u = i) \\propto \\theta_i, \\qquad
    P(v = j \\mid u) \\propto \\theta_j \\cdot \\begin{cases}
        h / Z_{y_u} & y_j = y_u \\\\
        (1 - h) / Z & \\text{any class}
    \\end{cases}

so expected degrees follow a power law with exponent ``alpha`` (``degree_exponent``) and a
fraction ``h`` (``homophily``) of edges stays inside a class. Features are
``x_i = mu_{y_i} + sigma * eps_i`` with class centroids ``mu_c ~ N(0, I)``.

Everything is drawn in chunks from generators seeded by ``(seed, chunk)``, so a graph of any
size is generated without holding more than a chunk of random numbers at a time, and the
same config always gives the same graph.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.data import GraphData

# Streams of the per-purpose generators, so that changing one draw never shifts another.
_LABELS, _WEIGHTS, _EDGES, _CENTROIDS, _FEATURES, _SPLIT = range(6)


def _generator(seed: int, stream: int, chunk: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, stream, chunk)) & 0x7FFF_FFFF_FFFF_FFFF)


def synthetic_labels(cfg: SyntheticConfig) -> Tensor:
    """``[N]`` long planted class of every node."""
    return torch.randint(cfg.num_classes, (cfg.num_nodes,), generator=_generator(cfg.seed, _LABELS))


def synthetic_weights(cfg: SyntheticConfig) -> Tensor:
    """``[N]`` float64 Chung-Lu weights, Pareto-tailed with exponent ``degree_exponent - 1``.

    Capped at ``sqrt(N * avg_degree)`` (the structural cut-off), above which the expected
    number of repeated edges between hubs would make the realised degrees fall short.
    """
    u = torch.rand(cfg.num_nodes, generator=_generator(cfg.seed, _WEIGHTS), dtype=torch.float64)
    theta = (1.0 - u).pow(-1.0 / (cfg.degree_exponent - 1.0))
    return theta.clamp_(max=(cfg.num_nodes * cfg.avg_degree) ** 0.5)


def iter_synthetic_edges(cfg: SyntheticConfig, chunk_edges: int = 1 << 22) -> Iterator[Tensor]:
    """Yield ``[2, <= chunk_edges]`` long chunks of *undirected* edges, one direction each.

    Chunks may contain self loops and repeated edges; :func:`generate_synthetic` removes
    them (as the dataset pipeline's preprocessing does for any source).
    """
    y = synthetic_labels(cfg)
    theta = synthetic_weights(cfg)
    order = torch.argsort(y, stable=True)  # nodes grouped by class
    sorted_cum = torch.cumsum(theta[order], 0)
    class_end = torch.cumsum(torch.bincount(y, minlength=cfg.num_classes), 0)
    class_start = class_end - torch.bincount(y, minlength=cfg.num_classes)
    # Cumulative weight just before each class block and at its end.
    padded = torch.cat([torch.zeros(1, dtype=torch.float64), sorted_cum])
    lo, hi = padded[class_start], padded[class_end]
    total = sorted_cum[-1]

    def draw(u: Tensor, low: Tensor, high: Tensor) -> Tensor:
        # Inverse-CDF sampling on the class-sorted cumulative weights.
        pos = torch.searchsorted(sorted_cum, low + u * (high - low), right=True)
        return order[pos.clamp_(max=cfg.num_nodes - 1)]

    num_edges = int(round(cfg.num_nodes * cfg.avg_degree / 2))
    for chunk, start in enumerate(range(0, num_edges, chunk_edges)):
        n = min(chunk_edges, num_edges - start)
        gen = _generator(cfg.seed, _EDGES, chunk)
        src = draw(torch.rand(n, generator=gen, dtype=torch.float64), torch.zeros(()), total)
        same = torch.rand(n, generator=gen) < cfg.homophily
        c = y[src]
        low = torch.where(same, lo[c], torch.zeros(()))
        high = torch.where(same, hi[c], total)
        dst = draw(torch.rand(n, generator=gen, dtype=torch.float64), low, high)
        yield torch.stack([src, dst])


def synthetic_centroids(cfg: SyntheticConfig) -> Tensor:
    """``[C, F]`` class centroids."""
    return torch.randn(
        cfg.num_classes, cfg.num_features, generator=_generator(cfg.seed, _CENTROIDS)
    )


def synthetic_features(cfg: SyntheticConfig, y: Tensor, start: int = 0) -> Tensor:
    """``[len(y), F]`` features of nodes ``start .. start+len(y)-1`` with labels ``y``.

    Seeded by ``start``, so generating features chunk by chunk with the same chunk
    boundaries is reproducible.
    """
    noise = torch.randn(len(y), cfg.num_features, generator=_generator(cfg.seed, _FEATURES, start))
    return synthetic_centroids(cfg)[y] + cfg.feature_noise * noise


def synthetic_split(cfg: SyntheticConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Random train / valid / test node indices in the configured fractions."""
    perm = torch.randperm(cfg.num_nodes, generator=_generator(cfg.seed, _SPLIT))
    n_train = max(1, int(cfg.train_fraction * cfg.num_nodes))
    n_valid = int(cfg.valid_fraction * cfg.num_nodes)
    return (
        perm[:n_train].sort().values,
        perm[n_train : n_train + n_valid].sort().values,
        perm[n_train + n_valid :].sort().values,
    )


def symmetrize(edge_index: Tensor, num_nodes: int, drop_self_loops: bool = True) -> Tensor:
    """Both directions of every edge, each directed edge once, sorted by (dst, src)."""
    both = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    if drop_self_loops:
        both = both[:, both[0] != both[1]]
    key = torch.unique(both[1] * num_nodes + both[0])
    return torch.stack([key % num_nodes, key // num_nodes])


def generate_synthetic(cfg: SyntheticConfig | None = None) -> GraphData:
    """The whole generated graph in memory: symmetric, no self loops, no repeated edges."""
    cfg = cfg or SyntheticConfig()
    y = synthetic_labels(cfg)
    edges = torch.cat(list(iter_synthetic_edges(cfg)), dim=1)
    train_idx, valid_idx, test_idx = synthetic_split(cfg)
    return GraphData(
        edge_index=symmetrize(edges, cfg.num_nodes),
        x=synthetic_features(cfg, y),
        y=y,
        train_idx=train_idx,
        valid_idx=valid_idx,
        test_idx=test_idx,
        num_classes=cfg.num_classes,
    )
