"""What the quantized message-passing layers share: their quantization points, how they
read a full graph or a :class:`~lorap_dist.graph.Block`, and the optional LoRAP step."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torch_geometric.nn import MessagePassing

from lorap_dist.config import PromptConfig
from lorap_dist.graph.block import Block, NodeInfo
from lorap_dist.nn.aggregate import CSRAggregation
from lorap_dist.prompt.lorap import LoRAP
from lorap_dist.quant.base import NODE, identity_quantizers


@dataclass
class LayerInput:
    """A layer's graph input in one form, whether it came as a full graph or a block.

    Args:
        edge_index: ``[2, E]``; row 0 indexes ``x``'s rows, row 1 the destinations.
        num_src: rows of ``x`` (source nodes).
        num_dst: destination nodes, the first ``num_dst`` sources (``num_src`` on a full graph).
        nodes_src: facts of the source rows, or ``None``.
        nodes_dst: facts of the destination rows, or ``None``.
    """

    edge_index: Tensor
    num_src: int
    num_dst: int
    nodes_src: NodeInfo | None
    nodes_dst: NodeInfo | None


def layer_input(layer: str, x: Tensor, graph: Tensor | Block, nodes: NodeInfo | None) -> LayerInput:
    """Read ``graph`` (an ``edge_index`` over ``x``'s rows, or a block whose sources are
    ``x``'s rows) into a :class:`LayerInput`, checking that it fits ``x``."""
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise TypeError(
            f"{layer} takes node features as one [num_nodes, channels] tensor, got "
            f"{type(x).__name__}{'' if not isinstance(x, Tensor) else list(x.shape)}; for "
            "bipartite input pass the source rows and a Block (destinations are its first "
            "num_dst sources)."
        )
    num_src = x.size(0)
    if isinstance(graph, Block):
        if graph.num_src != num_src:
            raise ValueError(
                f"{layer} got x with {num_src} rows for a Block with num_src={graph.num_src}; "
                "x must hold one row per source node of the block."
            )
        edge_index, num_dst = graph.edge_index, graph.num_dst
    elif isinstance(graph, Tensor):
        edge_index, num_dst = graph, num_src
    else:
        raise TypeError(
            f"{layer} takes an edge_index tensor or a Block as its graph, got "
            f"{type(graph).__name__}."
        )
    if edge_index.dim() != 2 or edge_index.size(0) != 2 or edge_index.is_floating_point():
        raise ValueError(
            f"{layer} needs edge_index as a [2, E] integer tensor, got "
            f"{edge_index.dtype} {list(edge_index.shape)}."
        )
    return LayerInput(
        edge_index=edge_index,
        num_src=num_src,
        num_dst=num_dst,
        nodes_src=nodes,
        nodes_dst=None if nodes is None else nodes.prefix(num_dst),
    )


class QuantizedConv(MessagePassing):
    """Base of the quantized layers: holds the quantization points and the optional LoRAP.

    A subclass calls :meth:`init_quantization` once its own points and the width of its
    aggregate are known. ``QUANT_POINTS`` is an instance attribute because the ``"prompt"``
    point exists only when LoRAP is on.
    """

    QUANT_POINTS: dict[str, str]

    def init_quantization(
        self,
        points: tuple[str, ...],
        aggregate_channels: int,
        prompt: PromptConfig | None,
    ) -> None:
        on = prompt is not None and prompt.lorap
        self.lorap = LoRAP(aggregate_channels, prompt.k, prompt.r) if on else None
        rounding = (prompt or PromptConfig()).rounding
        names = list(points)
        if self.lorap is not None:
            at = names.index("aggregate")
            if rounding == "once":  # the prompt sees the exact aggregate; one rounding after
                names[at] = "prompt"
            else:  # the aggregate is rounded, prompted and rounded again
                names.insert(at + 1, "prompt")
        self.QUANT_POINTS = dict.fromkeys(names, NODE)
        self.quantizers = identity_quantizers(self.QUANT_POINTS)
        self.csr_aggregation = CSRAggregation()

    def aggregate_rows(self, x: Tensor, g: LayerInput, reduce: str) -> Tensor:
        """``propagate``'s sum or mean of ``x``'s rows over ``g``'s edges (messages
        ``x_j``): on the CPU as one CSR matmul (:mod:`lorap_dist.nn.aggregate`, the same
        values and gradients), elsewhere through PyG."""
        out = self.csr_aggregation(x, g.edge_index, g.num_dst, reduce)
        if out is None:
            out = self.propagate(g.edge_index, x=x, size=(g.num_src, g.num_dst))
        return out

    def quantize(self, point: str, x: Tensor, nodes: NodeInfo | None) -> Tensor:
        return self.quantizers[point](x, nodes)

    def quantize_aggregate(self, h: Tensor, nodes_dst: NodeInfo | None) -> Tensor:
        """The aggregate as the update step sees it.

        Without LoRAP: ``Q_aggregate(h)``. With LoRAP and ``prompt.rounding="once"``:
        ``Q_prompt(h + p(h))``, the prompt computed from the exact aggregate (the paper's
        "aggregate -> dequantize -> prompt -> quantize"). With ``"twice"``:
        ``Q_prompt(h' + p(h'))`` with ``h' = Q_aggregate(h)``.
        """
        if "aggregate" in self.quantizers:
            h = self.quantize("aggregate", h, nodes_dst)
        if self.lorap is None:
            return h
        return self.lorap(h, self.quantizers["prompt"], nodes_dst)

    def biased_output(self, h: Tensor, nodes_dst: NodeInfo | None) -> Tensor:
        """``Q_output(aggregate + bias)``: the aggregate as :meth:`quantize_aggregate` gives
        it, plus the layer's ``bias`` when it has one (GCN and GAT)."""
        h = self.quantize_aggregate(h, nodes_dst)
        if self.bias is not None:
            h = h + self.bias
        return self.quantize("output", h, nodes_dst)

    def lorap_repr(self) -> str:
        if self.lorap is None:
            return ""
        return f", lorap=(k={self.lorap.k}, r={self.lorap.r})"
