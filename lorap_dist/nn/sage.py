"""Quantized GraphSAGE convolution (mean aggregation, root weight) with optional LoRAP."""

from __future__ import annotations

from torch import Tensor

from lorap_dist.config import PromptConfig
from lorap_dist.graph.block import Block, NodeInfo
from lorap_dist.nn.conv import QuantizedConv, layer_input
from lorap_dist.nn.linear import QLinear


class QSAGEConv(QuantizedConv):
    r"""Quantized GraphSAGE convolution from `"Inductive Representation Learning on Large
    Graphs" <https://arxiv.org/abs/1706.02216>`_, with optional LoRAP
    (`arXiv 2601.15079 <https://arxiv.org/abs/2601.15079>`_) after aggregation.

    .. math::
        \mathbf{h}_i &= Q_\text{agg}\Big(\frac{1}{|\mathcal{N}(i)|}
        \sum_{j \in \mathcal{N}(i)} Q_\text{in}(\mathbf{x}_j)\Big)
        \quad (\mathbf{0} \text{ if } \mathcal{N}(i) = \emptyset)

        \mathbf{h}_i &\leftarrow Q_\text{prompt}(\mathbf{h}_i + \mathbf{p}_i)
        \quad \text{(LoRAP, when on)}

        \mathbf{x}_i' &= Q_\text{out}\big(\mathbf{W}_l \mathbf{h}_i + \mathbf{b}
        + \mathbf{W}_r Q_\text{in}(\mathbf{x}_i)\big)

    :math:`\mathcal{N}(i)` counts repeated edges as often as they occur. With identity
    quantizers and no LoRAP this is :class:`torch_geometric.nn.SAGEConv` with its defaults
    (mean aggregation, ``root_weight=True``). On a :class:`~lorap_dist.graph.Block` the root
    term uses the destination's own row, ``x[:num_dst]``, so a block holding every
    in-neighbour of its destinations gives them their full-graph outputs.

    Quantization points (all node role): ``input`` (source rows), ``aggregate``, ``prompt``
    (LoRAP only) and ``output`` (destination rows); weights live in ``lin_l`` (with bias)
    and ``lin_r``.

    Args:
        in_channels: input width.
        out_channels: output width.
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
        prompt: PromptConfig | None = None,
    ) -> None:
        super().__init__(aggr="mean")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.lin_l = QLinear(in_channels, out_channels, bias=True)
        self.lin_r = QLinear(in_channels, out_channels, bias=False)
        self.init_quantization(("input", "aggregate", "output"), in_channels, prompt)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin_l.reset_parameters()
        self.lin_r.reset_parameters()
        if self.lorap is not None:
            self.lorap.reset_parameters()

    def forward(self, x: Tensor, graph: Tensor | Block, nodes: NodeInfo | None = None) -> Tensor:
        g = layer_input(type(self).__name__, x, graph, nodes)
        x = self.quantize("input", x, g.nodes_src)
        h = self.aggregate_rows(x, g, "mean")
        h = self.quantize_aggregate(h, g.nodes_dst)  # [N_dst, in]
        out = self.lin_l(h) + self.lin_r(x[: g.num_dst])
        return self.quantize("output", out, g.nodes_dst)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"aggr=mean{self.lorap_repr()})"
        )
