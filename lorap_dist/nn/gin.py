"""Quantized graph isomorphism convolution with a two-layer MLP and optional LoRAP."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.typing import Size

from lorap_dist.config import PromptConfig
from lorap_dist.nn.conv import Graph, NodeFacts, QuantizedConv, RowFeatures
from lorap_dist.nn.linear import QLinear


class QGINConv(QuantizedConv):
    r"""Quantized graph isomorphism convolution from `"How Powerful are Graph Neural
    Networks?" <https://arxiv.org/abs/1810.00826>`_, with optional LoRAP
    (`arXiv 2601.15079 <https://arxiv.org/abs/2601.15079>`_) after aggregation.

    .. math::
        \mathbf{h}_i &= Q_\text{agg}\Big(\sum_{j \in \mathcal{N}(i)}
        Q_\text{in}(\mathbf{x}_j)\Big)

        \mathbf{h}_i &\leftarrow Q_\text{prompt}(\mathbf{h}_i + \mathbf{p}_i)
        \quad \text{(LoRAP, when on)}

        \mathbf{z}_i &= Q_\text{hidden}\Big(\mathrm{ReLU}\big(\mathbf{W}_1
        \big((1 + \epsilon) Q_\text{in}(\mathbf{x}_i) + \mathbf{h}_i\big)
        + \mathbf{b}_1\big)\Big)

        \mathbf{x}_i' &= Q_\text{out}(\mathbf{W}_2 \mathbf{z}_i + \mathbf{b}_2)

    With identity quantizers and no LoRAP this is :class:`torch_geometric.nn.GINConv`
    whose ``nn`` is ``Sequential(Linear, ReLU, Linear)``, on every graph form GINConv takes
    and with its bipartite ``(x_src, x_dst)`` pairs (like GINConv it takes no
    ``edge_weight``; a ``torch.sparse`` adjacency's values scale the messages, :math:`\sum_j
    w_{j,i} Q_\text{in}(\mathbf{x}_j)`, and a ``SparseTensor``'s are dropped, as in GINConv).
    On a :class:`~lorap_dist.graph.Block` the root term uses ``x[:num_dst]``, so a block
    holding every in-neighbour of its destinations gives them their full-graph outputs; with
    a pair it uses ``x_dst``. On a sampled block the sum is the block's own, as GINConv sums a
    sampled subgraph: weighing it by :math:`d_i / s_i` to estimate the full-graph sum (as
    :class:`~lorap_dist.nn.QGCNConv` does) was measured and left out, since it cost plain
    QAT INT4 12 points on Cora and gained nothing in FP32 or Degree-Quant (BENCHMARKS.md,
    ``accuracy_distributed``, GIN).

    **Integer rows.** ``x`` may also be a :class:`~lorap_dist.quant.integer.QuantizedRows`
    (codes ``c`` with per-row scales ``s``), with any graph form the layer takes. The neighbour
    sum is then computed from the codes by a fused op, :math:`\mathbf{h}_i = \sum_{j \in
    \mathcal{N}(i)} c_j s_j`, the root term uses :math:`c_i s_i`, and :math:`Q_\text{in}` is
    not applied: the result equals the layer on ``rows.dequantize()`` with :math:`Q_\text{in}`
    bypassed, bit for bit on the CPU for rows of at least 32 values. How close it is otherwise,
    why :math:`Q_\text{in}` is skipped and when LoRAP runs fused with the aggregation:
    :meth:`~lorap_dist.nn.conv.QuantizedConv.aggregate_input`. A pair of integer rows is
    refused, and so is a weighted adjacency with them (the op sums unweighted; pass
    ``rows.dequantize()``).

    Quantization points (all node role): ``input`` (source rows; a pair's ``x_dst`` passes
    through it in a second call with the destination facts), ``aggregate``, ``prompt``
    (LoRAP only), ``hidden`` (the MLP's inner activation) and ``output`` (destination
    rows); weights live in ``lin1`` and ``lin2``.

    Args:
        in_channels: input width.
        out_channels: output width.
        hidden_channels: width of the MLP's inner layer (default ``out_channels``).
        eps: initial :math:`\epsilon` (default ``0.0``).
        train_eps: learn :math:`\epsilon` (default ``False``).
        prompt: LoRAP's :class:`~lorap_dist.config.PromptConfig` (default ``None``: off).

    Shapes:
        - input: ``x [N, in_channels]``, a pair or ``QuantizedRows``, and a graph
          (:class:`~lorap_dist.nn.conv.QuantizedConv` lists the forms)
        - hidden: ``[N_dst, hidden_channels]``
        - output: ``[N_dst, out_channels]``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int | None = None,
        eps: float = 0.0,
        train_eps: bool = False,
        prompt: PromptConfig | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, aggr="add")
        self.hidden_channels = hidden_channels or out_channels
        self.initial_eps = eps
        self.lin1 = QLinear(in_channels, self.hidden_channels)
        self.lin2 = QLinear(self.hidden_channels, out_channels)
        if train_eps:
            self.eps = nn.Parameter(torch.empty(1))
        else:
            self.register_buffer("eps", torch.empty(1))
        self.init_quantization(("input", "aggregate", "hidden", "output"), in_channels, prompt)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin1.reset_parameters()
        self.lin2.reset_parameters()
        self.eps.data.fill_(self.initial_eps)
        super().reset_parameters()

    def forward(
        self, x: RowFeatures, edge_index: Graph, size: Size = None, nodes: NodeFacts = None
    ) -> Tensor:
        """Convolve ``x`` over the graph; the arguments take the forms
        :class:`~lorap_dist.nn.conv.QuantizedConv` lists, as GINConv's do.

        A pair without ``x_dst`` (``None``) leaves the ``(1 + eps)`` root term out, as in
        GINConv; a sparse adjacency's values scale the messages; integer rows skip the
        ``input`` point (see the class docstring).
        """
        g, h, x_dst = self.aggregate_input(x, edge_index, nodes, size, "sum")  # [N_dst, in]
        if x_dst is not None:
            h = (1 + self.eps) * x_dst + h
        z = torch.relu(self.lin1(h))
        z = self.quantize("hidden", z, g.nodes_dst)  # [N_dst, hidden]
        return self.quantize("output", self.lin2(z), g.nodes_dst)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"hidden={self.hidden_channels}, train_eps={isinstance(self.eps, nn.Parameter)}"
            f"{self.lorap_repr()})"
        )
