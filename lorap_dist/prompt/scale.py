"""The scale a prompt is counted in, taken per graph in a batch of graphs."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def per_graph_rms(x: Tensor, graph: Tensor) -> Tensor:
    """``[N, 1]``: for each row of ``x`` (``[N, d]``), the root mean square of every entry
    of the rows of its graph (``graph [N]``, PyG's ``batch``), in ``x``'s dtype.

    Over one graph this is ``x.pow(2).mean().sqrt()``; per graph it keeps a graph's prompt
    independent of the other graphs in its batch (their sizes, their hubs, the batch size).
    """
    if x.shape[0] == 0:
        return x.new_zeros((0, 1))
    per_row = x.detach().float().pow(2).mean(dim=1)
    num_graphs = int(graph.max()) + 1
    mean = per_row.new_zeros(num_graphs).index_reduce_(
        0, graph, per_row, "mean", include_self=False
    )
    return mean.sqrt()[graph].unsqueeze(1).to(x.dtype)
