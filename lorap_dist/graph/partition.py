"""Partitioners behind one interface, and the relabelling that gives each part an ID range.

Every partitioner maps an undirected in-edge CSR to a part per node, balancing two weights
per node: one (node count) and whether it is a training seed, so every rank gets about the
same number of seeds (collectives need equal step counts, see ARCHITECTURE.md).

- ``metis``: METIS multi-constraint k-way (pymetis). Best cuts; needs the whole graph and
  several times its size in memory.
- ``random``: a seeded balanced assignment. Cuts ``1 - 1/P`` of the edges; a baseline.
- ``stream``: Fennel-style streaming (Tsourakakis et al., WSDM 2014), vectorized over
  chunks of nodes and restreamed a few passes. Node ``v`` goes to

  .. math::

      \\arg\\max_i \\; |N(v) \\cap P_i| - \\alpha \\gamma |P_i|^{\\gamma - 1},
      \\qquad \\alpha = \\sqrt{P} \\, E / N^{3/2}, \\ \\gamma = 1.5,

  where all nodes of a chunk are scored against the assignment as it stood before the chunk
  and then placed greedily under a per-chunk quota of ``(1 + slack) / P`` of the chunk per
  part (separately for training seeds and other nodes), so every chunk, and hence the whole
  partition, stays balanced. Memory is ``O(N)`` beyond the CSR itself.

After partitioning, :func:`relabel` orders nodes by (part, original ID): part ``r`` owns the
contiguous global IDs ``[book[r, 0], book[r, 1])`` and ``node_map[original] = global``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.preprocess import CSRArrays


class Partitioner(ABC):
    """Assigns every node of a graph to one of ``num_parts`` parts."""

    name: str = ""

    def partition(self, csr: CSRArrays, num_parts: int, train_mask: np.ndarray) -> np.ndarray:
        """``[N]`` int32 part of every node.

        Args:
            csr: the symmetric in-edge CSR of the graph (no self loops).
            num_parts: P, at most the node count.
            train_mask: ``[N]`` bool, the training seeds to spread evenly.
        """
        if not 1 <= num_parts <= csr.num_nodes:
            raise DatasetError(
                f"--parts {num_parts} is not possible for a graph of {csr.num_nodes} nodes; "
                f"use 1 to {csr.num_nodes} parts."
            )
        parts = self._partition(csr, num_parts, np.asarray(train_mask, dtype=bool))
        return np.asarray(parts, dtype=np.int32)

    @abstractmethod
    def _partition(self, csr: CSRArrays, num_parts: int, train_mask: np.ndarray) -> np.ndarray:
        """The partition itself; arguments are already checked."""


class MetisPartitioner(Partitioner):
    """METIS k-way with two balance constraints (nodes, training seeds)."""

    name = "metis"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _partition(self, csr: CSRArrays, num_parts: int, train_mask: np.ndarray) -> np.ndarray:
        import pymetis

        if num_parts == 1:
            return np.zeros(csr.num_nodes, dtype=np.int32)
        weights = np.stack([np.ones(csr.num_nodes, np.int64), train_mask.astype(np.int64)], 1)
        if not train_mask.any():
            weights = weights[:, :1]
        options = pymetis.Options(seed=self.seed)
        _, parts = pymetis.part_graph(
            num_parts,
            pymetis.CSRAdjacency(csr.indptr, csr.indices),
            vweights=weights.reshape(-1),
            options=options,
        )
        return np.asarray(parts, dtype=np.int32)


class RandomPartitioner(Partitioner):
    """Seeded random parts, exactly balanced in nodes and in training seeds."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _partition(self, csr: CSRArrays, num_parts: int, train_mask: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        parts = np.empty(csr.num_nodes, dtype=np.int32)
        offset = 0
        for group in (train_mask, ~train_mask):
            ids = np.flatnonzero(group)
            # Continue the round robin where the previous group stopped, so totals stay even.
            parts[rng.permutation(ids)] = (np.arange(len(ids)) + offset) % num_parts
            offset += len(ids)
        return parts


class StreamPartitioner(Partitioner):
    """Fennel-style streaming partitioner, vectorized over chunks of nodes.

    Args:
        chunk_nodes: nodes scored together against the previous assignment.
        passes: streaming passes; later passes restream with the full assignment known.
        slack: allowed per-part excess over an even share, per chunk.
        gamma: Fennel's load exponent.
    """

    name = "stream"

    def __init__(
        self,
        chunk_nodes: int = 8192,
        passes: int = 3,
        slack: float = 0.02,
        gamma: float = 1.5,
        progress: bool = False,
    ) -> None:
        self.chunk_nodes = chunk_nodes
        self.passes = passes
        self.slack = slack
        self.gamma = gamma
        self.progress = progress

    def _partition(self, csr: CSRArrays, num_parts: int, train_mask: np.ndarray) -> np.ndarray:
        n, p = csr.num_nodes, num_parts
        alpha = math.sqrt(p) * max(csr.num_edges, 1) / n**1.5
        parts = np.full(n, -1, dtype=np.int32)
        load = np.zeros(p, dtype=np.float64)
        chunks = [(s, min(s + self.chunk_nodes, n)) for s in range(0, n, self.chunk_nodes)]
        steps = tqdm(
            total=len(chunks) * self.passes,
            desc="stream partition",
            unit="chunk",
            disable=not self.progress,
        )
        for _ in range(self.passes):
            for start, stop in chunks:
                own = parts[start:stop]
                load -= np.bincount(own[own >= 0], minlength=p)
                a, b = int(csr.indptr[start]), int(csr.indptr[stop])
                neighbour_part = parts[csr.indices[a:b]]
                row = np.repeat(np.arange(stop - start), np.diff(csr.indptr[start : stop + 1]))
                known = neighbour_part >= 0
                counts = np.bincount(
                    row[known] * p + neighbour_part[known], minlength=(stop - start) * p
                ).reshape(stop - start, p)
                score = counts - alpha * self.gamma * load ** (self.gamma - 1)
                chosen = np.empty(stop - start, dtype=np.int32)
                for group in (train_mask[start:stop], ~train_mask[start:stop]):
                    members = np.flatnonzero(group)
                    quota = math.ceil(len(members) / p * (1 + self.slack))
                    chosen[members] = _place_under_quota(score[members], quota)
                parts[start:stop] = chosen
                load += np.bincount(chosen, minlength=p)
                steps.update()
        steps.close()
        return parts


def _place_under_quota(score: np.ndarray, quota: int) -> np.ndarray:
    """Give each row its best-scoring column, at most ``quota`` rows per column.

    Rounds: every unplaced row proposes its best open column; each column keeps its
    highest-scoring proposers up to its remaining quota and closes when full. Each round
    closes at least one column, so there are at most ``columns`` rounds.
    """
    rows, columns = score.shape
    placed = np.full(rows, -1, dtype=np.int32)
    remaining = np.full(columns, quota, dtype=np.int64)
    score = score.astype(np.float64, copy=True)
    waiting = np.arange(rows)
    while len(waiting):
        best = np.argmax(score[waiting], axis=1)
        value = score[waiting, best]
        order = np.lexsort((-value, best))  # by column, best score first
        best_sorted = best[order]
        first = np.searchsorted(best_sorted, np.arange(columns))
        rank = np.arange(len(order)) - first[best_sorted]
        accept = rank < remaining[best_sorted]
        placed[waiting[order[accept]]] = best_sorted[accept]
        remaining -= np.bincount(best_sorted[accept], minlength=columns)
        score[:, remaining == 0] = -np.inf
        waiting = waiting[order[~accept]]
    return placed


PARTITIONERS: dict[str, type[Partitioner]] = {
    "metis": MetisPartitioner,
    "random": RandomPartitioner,
    "stream": StreamPartitioner,
}


def get_partitioner(name: str, **options: object) -> Partitioner:
    """The partitioner called ``name`` (``metis``, ``random``, ``stream``)."""
    if name not in PARTITIONERS:
        raise DatasetError(
            f"partitioner {name!r} is not known; choose one of {sorted(PARTITIONERS)}."
        )
    return PARTITIONERS[name](**options)  # type: ignore[arg-type]


@dataclass
class Relabeling:
    """New global IDs after partitioning.

    Args:
        node_map: ``[N]`` int64 global ID of every original ID.
        original: ``[N]`` int64 original ID of every global ID (the inverse).
        book: ``[P, 2]`` int64, part ``r`` owns global IDs ``[book[r, 0], book[r, 1])``.
    """

    node_map: np.ndarray
    original: np.ndarray
    book: np.ndarray


def relabel(parts: np.ndarray, num_parts: int) -> Relabeling:
    """Order nodes by (part, original ID), so every part owns a contiguous ID range."""
    original = np.argsort(parts, kind="stable").astype(np.int64)
    node_map = np.empty_like(original)
    node_map[original] = np.arange(len(original), dtype=np.int64)
    ends = np.cumsum(np.bincount(parts, minlength=num_parts)).astype(np.int64)
    book = np.stack([np.r_[0, ends[:-1]], ends], axis=1).astype(np.int64)
    return Relabeling(node_map=node_map, original=original, book=book)


def relabel_csr(
    csr: CSRArrays,
    relabeling: Relabeling,
    out_indices: np.ndarray,
    block_edges: int = 1 << 24,
    progress: bool = False,
) -> np.ndarray:
    """The CSR over global IDs: row ``g`` is old row ``original[g]``, entries mapped.

    Writes the ``[E]`` indices (each row sorted) into ``out_indices`` block by block and
    returns the ``[N + 1]`` int64 row pointer.
    """
    original, node_map = relabeling.original, relabeling.node_map
    n = csr.num_nodes
    degree = np.diff(csr.indptr)[original]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(degree, out=indptr[1:])
    rows_per_block = max(1, block_edges // max(1, csr.num_edges // max(n, 1)))
    for r0 in tqdm(
        range(0, n, rows_per_block), desc="relabel CSR", unit="block", disable=not progress
    ):
        r1 = min(r0 + rows_per_block, n)
        lengths = degree[r0:r1]
        a, b = int(indptr[r0]), int(indptr[r1])
        # Position in the old indices of every new entry of this block.
        old_start = csr.indptr[original[r0:r1]]
        gather = np.repeat(old_start - (indptr[r0:r1] - a), lengths) + np.arange(b - a)
        row = np.repeat(np.arange(r1 - r0, dtype=np.int64), lengths)
        key = row * n + node_map[csr.indices[gather]]
        key.sort()
        out_indices[a:b] = key - row * n
    return indptr
