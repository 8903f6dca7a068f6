"""Compressed in-edge adjacency (CSR over destinations) built from an ``edge_index``.

The sampler walks edges *into* a node (messages flow source -> destination), so row ``v`` of
this CSR lists the sources of the edges that end at ``v``:
``indices[indptr[v]:indptr[v + 1]]``. This is PyG's CSC (``colptr``/``row``) layout and the
``topology/indptr, indices`` layout of the Arrow dataset directory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CSR:
    """In-edge adjacency of a graph.

    Args:
        indptr: ``[N + 1]`` int64; the in-edges of node ``v`` are positions
            ``indptr[v] .. indptr[v + 1] - 1``.
        indices: ``[E]`` int32 or int64 source node of each in-edge.
        edge_ids: ``[E]`` int64 column of the original ``edge_index`` each CSR position came
            from (edge features are looked up through it), or ``None`` when the CSR order is
            the original order.
    """

    indptr: Tensor
    indices: Tensor
    edge_ids: Tensor | None = None

    @property
    def num_nodes(self) -> int:
        return self.indptr.numel() - 1

    @property
    def num_edges(self) -> int:
        return self.indices.numel()

    def in_degree(self) -> Tensor:
        """``[N]`` int64 in-degree of every node."""
        return self.indptr[1:] - self.indptr[:-1]


def csr_from_edge_index(
    edge_index: Tensor, num_nodes: int, index_dtype: torch.dtype = torch.int32
) -> CSR:
    """Group the edges of ``edge_index`` by destination (row 1) into a :class:`CSR`.

    Within a destination, edges keep their ``edge_index`` order (stable sort), so a graph
    already sorted by ``(dst, src)`` (what :func:`~lorap_dist.graph.synthetic.symmetrize`
    returns) gets sources in ascending order.

    Args:
        edge_index: ``[2, E]`` long, row 0 sources, row 1 destinations.
        num_nodes: number of nodes ``N``; every ID must be below it.
        index_dtype: ``torch.int32`` (half the memory; needs ``N < 2**31``) or ``torch.int64``.
    """
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(
            f"edge_index has shape {tuple(edge_index.shape)}; expected [2, E] "
            "(row 0 sources, row 1 destinations)."
        )
    if index_dtype not in (torch.int32, torch.int64):
        raise ValueError(f"index_dtype={index_dtype} is not supported; use torch.int32 or int64.")
    if index_dtype == torch.int32 and num_nodes >= 2**31:
        raise ValueError(
            f"num_nodes={num_nodes} does not fit int32 indices; pass index_dtype=torch.int64."
        )
    if edge_index.numel() and int(edge_index.max()) >= num_nodes:
        raise ValueError(
            f"edge_index holds node {int(edge_index.max())} but num_nodes={num_nodes}; "
            "pass the graph's node count."
        )
    src, dst = edge_index[0], edge_index[1]
    order = torch.argsort(dst, stable=True)
    counts = torch.bincount(dst, minlength=num_nodes)
    indptr = torch.zeros(num_nodes + 1, dtype=torch.int64, device=edge_index.device)
    torch.cumsum(counts, 0, out=indptr[1:])
    return CSR(indptr=indptr, indices=src[order].to(index_dtype), edge_ids=order)
