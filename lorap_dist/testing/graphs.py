"""Small random graphs and blocks for tests, with the awkward cases switched on by default."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.utils import to_torch_coo_tensor, to_torch_csr_tensor

from lorap_dist.graph.block import Block

#: The graph forms PyG's layers take that tests compare on (see :func:`graph_form`).
GRAPH_FORMS = ("edge_index", "EdgeIndex", "coo", "csr")


def random_graph(
    num_nodes: int,
    num_edges: int,
    seed: int = 0,
    isolated: int = 2,
    self_loops: int = 2,
    duplicates: int = 2,
) -> Tensor:
    """A random directed ``edge_index [2, E]`` on ``num_nodes`` nodes.

    Args:
        num_nodes: number of nodes.
        num_edges: random edges between distinct non-isolated nodes.
        seed: seed of the generator.
        isolated: nodes (chosen at random) with no edge at all.
        self_loops: self loops added on non-isolated nodes.
        duplicates: random edges added a second time.

    Returns:
        ``[2, num_edges + self_loops + duplicates]`` long, in random order.
    """
    if num_nodes - isolated < 2:
        raise ValueError(
            f"random_graph needs at least 2 non-isolated nodes, got num_nodes={num_nodes} "
            f"with isolated={isolated}."
        )
    gen = torch.Generator().manual_seed(seed)
    connected = torch.randperm(num_nodes, generator=gen)[: num_nodes - isolated]
    src_pos = torch.randint(len(connected), (num_edges,), generator=gen)
    # An offset of 1..n-1 positions never lands on the source: no accidental self loops.
    offset = torch.randint(1, len(connected), (num_edges,), generator=gen)
    src, dst = connected[src_pos], connected[(src_pos + offset) % len(connected)]
    loops = connected[torch.randperm(len(connected), generator=gen)[:self_loops]]
    repeat = torch.randint(num_edges, (duplicates,), generator=gen)
    edge_index = torch.cat(
        [
            torch.stack([src, dst]),
            torch.stack([loops, loops]),
            torch.stack([src[repeat], dst[repeat]]),
        ],
        dim=1,
    )
    return edge_index[:, torch.randperm(edge_index.size(1), generator=gen)]


def full_block(edge_index: Tensor, num_nodes: int) -> Block:
    """The whole graph as a block: every node is both a source and a destination."""
    return Block(edge_index, num_nodes, num_nodes)


def in_neighbour_block(edge_index: Tensor, dst_ids: Tensor) -> tuple[Block, Tensor]:
    """The block of every edge into ``dst_ids``, in local IDs.

    Sources are ``dst_ids`` (in that order) followed by their other in-neighbours, so the
    destinations are the first ``len(dst_ids)`` sources.

    Returns:
        ``(block, src_ids)`` where ``src_ids [num_src]`` maps local source IDs to graph IDs.
    """
    keep = torch.isin(edge_index[1], dst_ids)
    src, dst = edge_index[:, keep]
    others = torch.unique(src[~torch.isin(src, dst_ids)])
    src_ids = torch.cat([dst_ids, others])
    num_nodes = int(max(edge_index.max(), dst_ids.max())) + 1
    local = torch.full((num_nodes,), -1, dtype=torch.long)
    local[src_ids] = torch.arange(len(src_ids))
    block = Block(torch.stack([local[src], local[dst]]), len(src_ids), len(dst_ids))
    return block, src_ids


def random_bipartite(num_src: int, num_dst: int, num_edges: int, seed: int = 0) -> Tensor:
    """``edge_index [2, num_edges]`` of distinct random edges from ``num_src`` sources to
    ``num_dst`` destinations, in random order."""
    gen = torch.Generator().manual_seed(seed)
    pairs = torch.randperm(num_src * num_dst, generator=gen)[:num_edges]
    return torch.stack([pairs // num_dst, pairs % num_dst])


def graph_form(
    form: str,
    edge_index: Tensor,
    num_src: int,
    num_dst: int,
    edge_weight: Tensor | None = None,
) -> Tensor:
    """``edge_index`` (sources in row 0) in one of :data:`GRAPH_FORMS`: the tensor itself, an
    ``EdgeIndex`` of sparse size ``(num_src, num_dst)``, or PyG's ``adj_t`` (``[num_dst,
    num_src]``, entry ``(i, j)`` for the edge ``j -> i``) as a ``torch.sparse`` COO or CSR
    tensor whose values are ``edge_weight`` or ones (a repeated edge is one entry, its
    weights summed, as PyG's ``coalesce`` merges them)."""
    if form == "edge_index":
        return edge_index
    if form == "EdgeIndex":
        return EdgeIndex(edge_index, sparse_size=(num_src, num_dst))
    to_sparse = {"coo": to_torch_coo_tensor, "csr": to_torch_csr_tensor}.get(form)
    if to_sparse is None:
        raise ValueError(f"graph_form got form={form!r}; choose one of {list(GRAPH_FORMS)}.")
    return to_sparse(edge_index.flip(0), edge_weight, size=(num_dst, num_src))
