"""Quantized graph isomorphism convolution with a two-layer MLP and optional LoRAP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lorap_dist.config import PromptConfig
from lorap_dist.graph.block import Block, NodeInfo
from lorap_dist.nn.conv import QuantizedConv, layer_input
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
    whose ``nn`` is ``Sequential(Linear, ReLU, Linear)``. On a
    :class:`~lorap_dist.graph.Block` the root term uses ``x[:num_dst]``, so a block holding
    every in-neighbour of its destinations gives them their full-graph outputs.

    Quantization points (all node role): ``input`` (source rows), ``aggregate``, ``prompt``
    (LoRAP only), ``hidden`` (the MLP's inner activation) and ``output`` (destination
    rows); weights live in ``lin1`` and ``lin2``.

    Args:
        in_channels: input width.
        out_channels: output width.
        hidden_channels: width of the MLP's inner layer (default ``out_channels``).
        eps: initial :math:`\epsilon` (default ``0.0``).
        train_eps: learn :math:`\epsilon` (default ``False``).
        prompt: a :class:`~lorap_dist.config.PromptConfig`; LoRAP is on when its ``kind``
            is ``lorap`` or ``gpf_lorap``, sized by its ``k`` and ``r`` (default ``None``: off).

    Shapes:
        - input: ``x [N_src, in_channels]``, ``edge_index [2, E]`` or a ``Block``,
          optional ``NodeInfo`` of the ``N_src`` rows
        - output: ``[N_dst, out_channels]`` (``N_dst = N_src`` on a full graph)
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
        super().__init__(aggr="add")
        self.in_channels = in_channels
        self.out_channels = out_channels
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
        super().reset_parameters()
        self.lin1.reset_parameters()
        self.lin2.reset_parameters()
        self.eps.data.fill_(self.initial_eps)
        if self.lorap is not None:
            self.lorap.reset_parameters()

    def forward(self, x: Tensor, graph: Tensor | Block, nodes: NodeInfo | None = None) -> Tensor:
        g = layer_input(type(self).__name__, x, graph, nodes)
        x = self.quantize("input", x, g.nodes_src)
        h = self.aggregate_rows(x, g, "sum")
        h = self.quantize_aggregate(h, g.nodes_dst)  # [N_dst, in]
        z = torch.relu(self.lin1((1 + self.eps) * x[: g.num_dst] + h))
        z = self.quantize("hidden", z, g.nodes_dst)  # [N_dst, hidden]
        return self.quantize("output", self.lin2(z), g.nodes_dst)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"hidden={self.hidden_channels}, train_eps={isinstance(self.eps, nn.Parameter)}"
            f"{self.lorap_repr()})"
        )
