"""The two shapes a layer's graph input takes, and the per-row node facts quantizers use.

A *block* (message-flow graph) is the bipartite graph one layer runs on in sampled
training: ``num_src`` source nodes send messages along ``edge_index`` to ``num_dst``
destination nodes. Destination nodes are always the first ``num_dst`` source nodes (the
convention PyG's trimmed loaders and DGL's blocks share), so ``x_dst = x_src[:num_dst]`` and
per-node facts for the destinations are a prefix slice of those for the sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Block:
    """One layer's bipartite graph.

    Args:
        edge_index: ``[2, E]`` long; row 0 indexes source nodes (``0..num_src-1``), row 1
            destination nodes (``0..num_dst-1``).
        num_src: number of source nodes.
        num_dst: number of destination nodes; they are the first ``num_dst`` sources.
    """

    edge_index: Tensor
    num_src: int
    num_dst: int

    def __post_init__(self) -> None:
        if self.num_dst > self.num_src:
            raise ValueError(
                f"Block has num_dst={self.num_dst} > num_src={self.num_src}; destination "
                "nodes must be the first num_dst source nodes."
            )

    def to(self, device: torch.device | str) -> Block:
        return Block(self.edge_index.to(device), self.num_src, self.num_dst)


@dataclass
class NodeInfo:
    """Facts about the nodes whose features occupy the rows of a tensor.

    Quantization schemes that act per node read these: Degree-Quant its protection mask
    (drawn once per forward pass from ``degree``), A2Q its per-node parameters (keyed by
    ``ids``). All fields are optional; a plain QAT model needs none of them.

    Args:
        ids: ``[N]`` global node IDs.
        degree: ``[N]`` in-degree of each node in the *full* graph (not the sample).
        protect: ``[N]`` bool, rows kept at full precision in this forward pass.
        graph: ``[N]`` index of each row's graph in a batch of graphs (PyG's ``batch``):
            prompts counted in a root mean square take it per graph, so a graph's output
            does not depend on the other graphs of its batch.
    """

    ids: Tensor | None = None
    degree: Tensor | None = None
    protect: Tensor | None = None
    graph: Tensor | None = None

    def prefix(self, n: int) -> NodeInfo:
        """The facts of the first ``n`` rows (the destination nodes of a block)."""
        return NodeInfo(
            ids=None if self.ids is None else self.ids[:n],
            degree=None if self.degree is None else self.degree[:n],
            protect=None if self.protect is None else self.protect[:n],
            graph=None if self.graph is None else self.graph[:n],
        )
