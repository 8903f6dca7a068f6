"""From a source's edge chunks to a clean CSR: validate, symmetrize, deduplicate.

The CSR is built in two streaming passes over the edge chunks, so the edge list is never
held whole in any other form than the result:

1. count the in-degree of every node (both directions when symmetrizing, self loops
   dropped), checking every node ID on the way;
2. scatter each chunk's sources into their destination rows (``indptr[v] + running count``).

Then rows are sorted and deduplicated block by block (about 16 M edges per block) and
compacted in place. Peak memory is the ``[E]`` index array (int32 when N < 2^31), the
``[N + 1]`` int64 row pointer, and a few block-sized temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lorap_dist.graph.errors import DatasetError
from lorap_dist.graph.graph_source import EDGE_CHUNK, GraphSource
from lorap_dist.graph.storage import index_dtype

DEDUP_BLOCK = 1 << 24  # edges sorted at a time while deduplicating


@dataclass
class CSRArrays:
    """In-edge CSR: row ``v`` lists the sources of the edges into ``v``, sorted, unique.

    Args:
        indptr: ``[N + 1]`` int64.
        indices: ``[E]`` int32 (int64 when N >= 2^31); may be a memory map.
    """

    indptr: np.ndarray
    indices: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.indptr) - 1

    @property
    def num_edges(self) -> int:
        return int(self.indptr[-1])

    def rows(self) -> np.ndarray:
        """``[E]`` int64 destination of every entry (materialized; for small graphs)."""
        return np.repeat(np.arange(self.num_nodes), np.diff(self.indptr))


def check_edge_chunk(source: GraphSource, chunk: np.ndarray, offset: int) -> np.ndarray:
    """``[2, k]`` int64 edges of a chunk, after checking every ID is a node of the graph."""
    if chunk.ndim != 2 or chunk.shape[0] != 2:
        raise DatasetError(f"{source.where_edge(offset)}: edges must be pairs (2 columns).")
    if chunk.dtype.kind not in "iu":
        raise DatasetError(
            f"{source.where_edge(offset)}: node IDs must be integers, got {chunk.dtype}."
        )
    bad = np.flatnonzero(((chunk < 0) | (chunk >= source.num_nodes)).any(axis=0))
    if len(bad):
        j = int(bad[0])
        raise DatasetError(
            f"{source.where_edge(offset + j)}: edge ({chunk[0, j]}, {chunk[1, j]}) names a node "
            f"outside 0..{source.num_nodes - 1}; node IDs must be below the node count "
            "(num-node-list)."
        )
    return chunk.astype(np.int64, copy=False)


def check_feature_rows(source: GraphSource, rows: np.ndarray, start: int) -> None:
    """Raise naming the first node whose feature row has a NaN or infinite value."""
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        i = int(np.flatnonzero(~finite)[0])
        value = rows[i][~np.isfinite(rows[i])][0]
        hint = " (a line with fewer values than the others reads as NaN)" if np.isnan(value) else ""
        raise DatasetError(
            f"{source.where_node(start + i)}: feature value {value} is not finite{hint}; "
            "replace NaN and infinite features before preparing."
        )


def _directed(chunk: np.ndarray, symmetrize: bool, drop_self_loops: bool) -> tuple:
    src, dst = chunk[0], chunk[1]
    if symmetrize:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    if drop_self_loops:
        keep = src != dst
        src, dst = src[keep], dst[keep]
    return src, dst


def build_csr(
    source: GraphSource,
    symmetrize: bool = True,
    drop_self_loops: bool = True,
    workdir: str | Path | None = None,
    progress: bool = False,
) -> CSRArrays:
    """The validated, deduplicated in-edge CSR of ``source`` over its original node IDs.

    Args:
        symmetrize: add the reverse of every edge.
        drop_self_loops: drop edges ``(v, v)``.
        workdir: if set, the first pass spills the edges there for the second to read back
            (rather than drawing a generated graph twice), and the index array lives in a
            memory-mapped file there (other processes can map it) instead of anonymous
            memory.
        progress: show a progress bar per pass.
    """
    n = source.num_nodes
    degree = np.zeros(n, dtype=np.int64)
    total = 0
    spill = None if workdir is None else open(Path(workdir) / "edges.bin", "wb")
    for chunk in tqdm(source.edge_chunks(), desc="count edges", unit="chunk", disable=not progress):
        chunk = check_edge_chunk(source, chunk, total)
        total += chunk.shape[1]
        if spill is not None:  # the second pass reads this back instead of regenerating
            spill.write(np.ascontiguousarray(chunk.T, dtype=index_dtype(n)).tobytes())
        _, dst = _directed(chunk, symmetrize, drop_self_loops)
        degree += np.bincount(dst, minlength=n)
    if total == 0:
        if spill is not None:
            spill.close()
            Path(spill.name).unlink()
        raise DatasetError(
            f"{source.name} has no edges: a graph neural network aggregates over edges, so "
            "there is nothing to train on beyond the features. Add the edge list (for an "
            "OGB-layout directory, raw/edge.csv.gz with one 'source,destination' per line)."
        )
    if spill is not None:
        spill.close()
        spilled = np.memmap(spill.name, dtype=index_dtype(n), mode="r", shape=(total, 2))
        chunks = (spilled[s : s + EDGE_CHUNK].T for s in range(0, total, EDGE_CHUNK))
    else:
        chunks = source.edge_chunks()
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(degree, out=indptr[1:])
    del degree
    size = max(int(indptr[-1]), 1)
    if workdir is None:
        indices = np.empty(size, dtype=index_dtype(n))
    else:
        indices = np.lib.format.open_memmap(
            Path(workdir) / "csr_indices.npy", mode="w+", dtype=index_dtype(n), shape=(size,)
        )
    cursor = indptr[:-1].copy()
    for chunk in tqdm(chunks, desc="fill CSR", unit="chunk", disable=not progress):
        src, dst = _directed(chunk.astype(np.int64, copy=False), symmetrize, drop_self_loops)
        order = np.argsort(dst, kind="stable")
        dst, src = dst[order], src[order]
        first = np.flatnonzero(np.r_[True, dst[1:] != dst[:-1]])
        counts = np.diff(np.r_[first, len(dst)])
        rank = np.arange(len(dst)) - np.repeat(first, counts)  # position within its row
        heads = dst[first]
        indices[cursor[dst] + rank] = src
        cursor[heads] += counts
    del cursor, chunks
    if spill is not None:
        Path(spill.name).unlink()
    return _sort_unique_rows(CSRArrays(indptr, indices), progress)


def _sort_unique_rows(csr: CSRArrays, progress: bool) -> CSRArrays:
    """Sort every row and drop repeated entries, compacting ``indices`` in place."""
    n, indptr, indices = csr.num_nodes, csr.indptr, csr.indices
    new_degree = np.zeros(n, dtype=np.int64)
    write = 0
    bounds = [0]
    while bounds[-1] < n:  # row blocks of about DEDUP_BLOCK edges (at least one row)
        target = indptr[bounds[-1]] + DEDUP_BLOCK
        bounds.append(max(int(np.searchsorted(indptr, target, side="right")) - 1, bounds[-1] + 1))
        bounds[-1] = min(bounds[-1], n)
    for r0, r1 in tqdm(
        list(zip(bounds[:-1], bounds[1:], strict=True)),
        desc="deduplicate",
        unit="block",
        disable=not progress,
    ):
        a, b = int(indptr[r0]), int(indptr[r1])
        rows = np.repeat(np.arange(r1 - r0, dtype=np.int64), np.diff(indptr[r0 : r1 + 1]))
        key = rows * n + indices[a:b]
        key.sort()
        key = key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key
        new_degree[r0:r1] = np.bincount(key // n, minlength=r1 - r0)
        indices[write : write + len(key)] = key % n
        write += len(key)
    new_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(new_degree, out=new_indptr[1:])
    return CSRArrays(new_indptr, indices[:write])


def edge_cut(csr: CSRArrays, parts: np.ndarray, block: int = 1 << 24) -> float:
    """Fraction of CSR entries (directed edges) whose two ends lie in different parts."""
    if csr.num_edges == 0:
        return 0.0
    cut = 0
    rows_per_block = max(1, block // max(1, csr.num_edges // csr.num_nodes))
    for start in range(0, csr.num_nodes, rows_per_block):
        stop = min(start + rows_per_block, csr.num_nodes)
        a, b = int(csr.indptr[start]), int(csr.indptr[stop])
        dst_part = np.repeat(parts[start:stop], np.diff(csr.indptr[start : stop + 1]))
        cut += int(np.count_nonzero(parts[csr.indices[a:b]] != dst_part))
    return cut / csr.num_edges
