"""Quantized graph attention convolution with optional LoRAP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.inits import glorot
from torch_geometric.typing import Size
from torch_geometric.utils import add_self_loops, remove_self_loops, softmax

from lorap_dist.config import PromptConfig
from lorap_dist.nn.conv import Features, Graph, NodeFacts, QuantizedConv
from lorap_dist.nn.linear import QLinear


class QGATConv(QuantizedConv):
    r"""Quantized graph attention from `"Graph Attention Networks"
    <https://arxiv.org/abs/1710.10903>`_, with optional LoRAP
    (`arXiv 2601.15079 <https://arxiv.org/abs/2601.15079>`_) after aggregation.

    Per head :math:`h` (``H`` heads of width ``C``):

    .. math::
        \mathbf{m}_j &= Q_\text{msg}\big(Q_\text{in}(\mathbf{x}_j) \, Q(\mathbf{W})^\top\big)

        \alpha_{ij}^h &= \mathrm{softmax}_{j \in \mathcal{N}(i) \cup \{i\}}\Big(
        \mathrm{LeakyReLU}\big(\mathbf{a}_\text{src}^{h\top} \mathbf{m}_j^h
        + \mathbf{a}_\text{dst}^{h\top} \mathbf{m}_i^h\big)\Big)

        \mathbf{h}_i &= Q_\text{agg}\Big(\big\Vert_{h=1}^{H} \text{ (or mean over } h)
        \sum_{j} \alpha_{ij}^h \mathbf{m}_j^h\Big)

        \mathbf{h}_i &\leftarrow Q_\text{prompt}(\mathbf{h}_i + \mathbf{p}_i)
        \quad \text{(LoRAP, when on)}

        \mathbf{x}_i' &= Q_\text{out}(\mathbf{h}_i + \mathbf{b})

    With identity quantizers and no LoRAP this is :class:`torch_geometric.nn.GATConv` with
    ``int`` ``in_channels`` (existing self loops removed, one added per node), on every graph
    form GATConv takes and with its bipartite ``(x_src, x_dst)`` pairs, whose two sides
    share the weight ``W``; edge features (GATConv's ``edge_attr`` with ``edge_dim``) are
    not supported. Self loops join source ``i`` to destination ``i`` for ``i`` below
    ``min(N_src, N_dst)``. (One difference: given ``(x_src, None)`` and an ``EdgeIndex`` of
    sparse size ``(N_src, N_dst)`` with ``N_dst < N_src`` but no ``size``, GATConv loops every
    source and returns ``N_src`` rows; this layer keeps the ``N_dst`` destinations.) On a
    :class:`~lorap_dist.graph.Block` the self loop of destination ``i`` comes from source
    ``i`` (itself), so a block holding every in-neighbour of its destinations gives them
    their full-graph outputs. LoRAP acts on the combined heads (width ``H*C`` when
    concatenating, ``C`` when averaging).

    Quantization points (all node role): ``input`` and ``message`` (source rows; a pair's
    ``x_dst`` and ``x_dst W`` pass through them in second calls with the destination facts),
    ``aggregate``, ``prompt`` (LoRAP only) and ``output`` (destination rows); the weight's
    point lives in ``lin``. Attention logits are computed from the quantized messages.

    Args:
        in_channels: input width.
        out_channels: width ``C`` of each head.
        heads: number of heads ``H`` (default ``1``).
        concat: concatenate the heads (``True``, default) or average them.
        negative_slope: LeakyReLU slope of the attention logits (default ``0.2``).
        dropout: dropout probability of the attention coefficients in training
            (default ``0.0``).
        add_self_loops: give every node that is both a source and a destination a self
            loop (default ``True``).
        bias: add a learnable bias (default ``True``).
        prompt: LoRAP's :class:`~lorap_dist.config.PromptConfig` (default ``None``: off).

    Shapes:
        - input: ``x [N, in_channels]`` or a pair, and a graph
          (:class:`~lorap_dist.nn.conv.QuantizedConv` lists the forms)
        - output: ``[N_dst, H * C]`` when concatenating, else ``[N_dst, C]``
    """

    TRANSFORMS_FIRST = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        bias: bool = True,
        prompt: PromptConfig | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, aggr="add", node_dim=0)
        self.heads = heads
        self.concat = concat
        self.negative_slope = negative_slope
        self.dropout = dropout
        self.add_self_loops = add_self_loops
        width = heads * out_channels if concat else out_channels
        self.lin = QLinear(in_channels, heads * out_channels, bias=False)
        self.att_src = nn.Parameter(torch.empty(1, heads, out_channels))
        self.att_dst = nn.Parameter(torch.empty(1, heads, out_channels))
        self.init_quantization(("input", "message", "aggregate", "output"), width, prompt, bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        glorot(self.att_src)
        glorot(self.att_dst)
        super().reset_parameters()

    def forward(
        self, x: Features, edge_index: Graph, size: Size = None, nodes: NodeFacts = None
    ) -> Tensor:
        """Attend over the graph; the arguments take the forms
        :class:`~lorap_dist.nn.conv.QuantizedConv` lists, as GATConv's do.

        A pair without ``x_dst`` (``None``) gives logits without a destination term, as in
        GATConv; a sparse adjacency's values are not used, as in GATConv. GATConv's ``size``
        is its fourth argument, after ``edge_attr``, which this layer does not take.
        """
        g = self.read_input(x, edge_index, nodes, size=size, sparse_values="ignored")
        H, C = self.heads, self.out_channels
        edge_index = g.edge_index
        if self.add_self_loops:  # node i's loop joins source i and destination i
            edge_index, _ = remove_self_loops(edge_index)
            edge_index, _ = add_self_loops(edge_index, num_nodes=min(g.num_src, g.num_dst))
        x_src, x_dst = self.quantize_input(g)
        messages = self.quantize("message", self.lin(x_src), g.nodes_src).view(-1, H, C)
        if not g.pair:
            messages_dst = messages[: g.num_dst]
        elif x_dst is not None:
            messages_dst = self.quantize("message", self.lin(x_dst), g.nodes_dst).view(-1, H, C)
        else:
            messages_dst = None
        src, dst = edge_index
        alpha = (messages * self.att_src).sum(dim=-1)[src]  # [E, H]
        if messages_dst is not None:
            alpha = alpha + (messages_dst * self.att_dst).sum(dim=-1)[dst]
        alpha = F.leaky_relu(alpha, self.negative_slope)
        alpha = softmax(alpha, dst, num_nodes=g.num_dst)  # [E, H]
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        h = self.propagate(edge_index, x=messages, alpha=alpha, size=(g.num_src, g.num_dst))
        h = h.reshape(-1, H * C) if self.concat else h.mean(dim=1)
        return self.biased_output(h, g.nodes_dst)

    def message(self, x_j: Tensor, alpha: Tensor) -> Tensor:
        return alpha.unsqueeze(-1) * x_j

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"heads={self.heads}, concat={self.concat}{self.lorap_repr()})"
        )
