"""Exact full-neighbourhood inference, layer by layer, over the partitioned graph.

Sampled mini-batches give noisy evaluation numbers; these are exact. Every rank computes
layer ``l`` for the nodes it owns over their *full* in-neighbourhood, reading the layer
``l - 1`` rows of neighbours owned elsewhere through a :class:`FeatureExchange`:

.. math::

    \\mathbf{H}^{(l)}_{V_r} = \\mathrm{Conv}_l\\big(\\mathbf{H}^{(l-1)}_{V_r \\cup
    \\mathcal{N}(V_r)}, \\mathcal{G}[\\mathcal{N}(V_r) \\to V_r]\\big)

so each layer costs one exchange of ``|N(V_r) \\ V_r|`` rows instead of the
``L``-hop neighbourhood a whole-model forward per seed would need.

The first layer reads its input in the form training gave it: float rows, or, when training
fetched integer rows (``dist.feature_rows: codes``), the same
:class:`~lorap_dist.quant.integer.QuantizedRows` from the training exchange. On integer
rows the first layer's ``input`` point is never called, so it never observed a range:
float rows here would be rounded on an untrained grid. Later layers read float rows.

GCN normalises an edge ``j -> i`` by ``1 / sqrt(d_i d_j)``; a source that is not a
destination has no in-edges in the one-hop block, so the layer reads every ``d_j`` from
``NodeInfo.degree`` (the full graph's), and the one-hop block gives exact outputs for GCN too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorap_dist.distributed.exchange import FeatureExchange
from lorap_dist.graph.block import Block, NodeInfo


def ordered_unique(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Unique values of ``ids`` in order of first occurrence, and each element's index there."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((unique.numel(),), ids.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(ids.numel()), reduce="amin")
    order = torch.argsort(first)
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(order.numel())
    return unique[order], rank_of[inverse]


def in_edges(dst: Tensor, indptr: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """``(sources [E], local destination index [E])`` of every in-edge of ``dst``."""
    starts = indptr[dst]
    counts = indptr[dst + 1] - starts
    local_dst = torch.repeat_interleave(torch.arange(dst.numel()), counts)
    offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts
    )
    positions = torch.repeat_interleave(starts, counts) + offsets
    return indices[positions].to(torch.int64), local_dst


def full_block(dst: Tensor, indptr: Tensor, indices: Tensor) -> tuple[Block, Tensor]:
    """The block of ``dst``'s complete in-neighbourhood and the global IDs of its sources
    (``dst`` first, so destinations are a prefix of the sources)."""
    sources, local_dst = in_edges(dst, indptr, indices)
    src_ids, local = ordered_unique(torch.cat([dst, sources]))
    edge_index = torch.stack([local[dst.numel() :], local_dst])
    return Block(edge_index, num_src=src_ids.numel(), num_dst=dst.numel()), src_ids


@torch.no_grad()
def layerwise_inference(
    model: nn.Module,
    features: Tensor | FeatureExchange,
    partition_book: Tensor,
    indptr: Tensor,
    indices: Tensor,
    degree: Tensor,
    *,
    batch_size: int = 4096,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Final-layer outputs ``[n_r, C]`` of the nodes this rank owns; a collective.

    Args:
        model: a :class:`lorap_dist.nn.model.GNN` (unwrapped from DDP); run in eval mode.
        features: ``[n_r, F]`` float32 input features of this rank's nodes, or the
            :class:`FeatureExchange` of the input rows whose
            :meth:`~FeatureExchange.fetch_rows` the first layer reads (integer rows, as
            training with ``dist.feature_rows: codes`` reads them; a SAGE or GIN model
            without GPF-plus).
        partition_book: ``[P, 2]`` owned global ID ranges, rank ``r`` owns row ``r``.
        indptr, indices: in-edge CSR of the whole graph over global IDs.
        degree: ``[N]`` in-degree of every node (for the quantizers' ``NodeInfo``).
        batch_size: destination nodes per chunk (bounds memory).
        device: where the layers run.
    """
    codes = isinstance(features, FeatureExchange)
    if codes and getattr(model, "gpf", None) is not None:
        raise ValueError(
            "layerwise_inference got a FeatureExchange of integer rows for a model with "
            "GPF-plus, which prompts float features; pass the float features instead."
        )
    was_training = model.training
    model.eval()
    book = torch.as_tensor(partition_book, dtype=torch.int64)
    start, end = (int(v) for v in book[torch.distributed.get_rank()])
    own = torch.arange(start, end)
    # Every rank must make the same number of (collective) fetches per layer.
    chunks = max(1, -(-int((book[:, 1] - book[:, 0]).max()) // batch_size))
    pieces = [own[i * batch_size : (i + 1) * batch_size] for i in range(chunks)]
    h = None if codes else features.to(torch.float32)
    if getattr(model, "gpf", None) is not None:
        h = model.gpf(h.to(device)).cpu()  # a per-node prompt: no neighbours needed
    num_layers = len(model.convs)
    for l, conv in enumerate(model.convs):
        if l == 0 and codes:
            fetch = features.fetch_rows  # the training exchange's integer rows
        else:
            fetch = FeatureExchange(book, h, device=device).fetch
        out = []
        for piece in pieces:
            block, src_ids = full_block(piece, indptr, indices)
            x_src = fetch(src_ids).to(device)  # [num_src, F] rows, or QuantizedRows
            nodes = NodeInfo(ids=src_ids.to(device), degree=degree[src_ids].to(device))
            if model.node_transform is not None:
                nodes = model.node_transform(nodes)
            y = conv(x_src, block.to(device), nodes)
            if l < num_layers - 1:
                y = F.relu(model.norms[l](y))
            out.append(y.cpu())
        h = torch.cat(out)
    model.train(was_training)
    return h
