"""Quantized GraphSAGE convolution (mean aggregation, root weight) with optional LoRAP."""

from __future__ import annotations

from torch import Tensor
from torch_geometric.typing import Size

from lorap_dist.config import PromptConfig
from lorap_dist.nn.conv import Graph, NodeFacts, QuantizedConv, RowFeatures
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
    (mean aggregation, ``root_weight=True``), on every graph form SAGEConv takes and with its
    bipartite ``(x_src, x_dst)`` pairs. On a :class:`~lorap_dist.graph.Block` the root term
    uses the destination's own row, ``x[:num_dst]``, so a block holding every in-neighbour
    of its destinations gives them their full-graph outputs; with a pair it uses ``x_dst``.
    A ``torch.sparse`` adjacency's values scale the messages, as in SAGEConv:
    :math:`\mathbf{h}_i = \frac{1}{|\mathcal{N}(i)|} \sum_j w_{j,i} Q_\text{in}(\mathbf{x}_j)`
    (the sum of the scaled messages over the edge count, PyG's ``spmm`` mean, repeated entries
    merged); an adjacency of ones is the unweighted mean, and a ``SparseTensor``'s values are
    dropped, as SAGEConv drops them.

    **Integer rows.** ``x`` may also be a :class:`~lorap_dist.quant.integer.QuantizedRows`
    (codes ``c`` with per-row scales ``s``), with any graph form the layer takes. The neighbour
    mean is then computed from the codes by a fused op, :math:`\mathbf{h}_i =
    \frac{1}{|\mathcal{N}(i)|} \sum_{j \in \mathcal{N}(i)} c_j s_j`, the root term uses the
    dequantized destination rows :math:`c_i s_i`, and :math:`Q_\text{in}` is not applied to
    integer rows: the result equals the layer on ``rows.dequantize()`` with
    :math:`Q_\text{in}` bypassed, bit for bit on the CPU for rows of at least 32 values. How
    close it is otherwise, why :math:`Q_\text{in}` is skipped and when LoRAP runs fused with the
    aggregation: :meth:`~lorap_dist.nn.conv.QuantizedConv.aggregate_input`. A pair of integer
    rows is refused, and so is a weighted adjacency with them (the op sums unweighted; pass
    ``rows.dequantize()``).

    Quantization points (all node role): ``input`` (source rows; a pair's ``x_dst`` passes
    through it in a second call with the destination facts), ``aggregate``, ``prompt``
    (LoRAP only) and ``output`` (destination rows); weights live in ``lin_l`` (with bias)
    and ``lin_r``.

    Args:
        in_channels: input width.
        out_channels: output width.
        prompt: LoRAP's :class:`~lorap_dist.config.PromptConfig` (default ``None``: off).

    Shapes:
        - input: ``x [N, in_channels]``, a pair or ``QuantizedRows``, and a graph
          (:class:`~lorap_dist.nn.conv.QuantizedConv` lists the forms)
        - output: ``[N_dst, out_channels]``
    """

    def __init__(
        self, in_channels: int, out_channels: int, prompt: PromptConfig | None = None
    ) -> None:
        super().__init__(in_channels, out_channels, aggr="mean")
        self.lin_l = QLinear(in_channels, out_channels, bias=True)
        self.lin_r = QLinear(in_channels, out_channels, bias=False)
        self.init_quantization(("input", "aggregate", "output"), in_channels, prompt)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_l.reset_parameters()
        self.lin_r.reset_parameters()
        super().reset_parameters()

    def forward(
        self, x: RowFeatures, edge_index: Graph, size: Size = None, nodes: NodeFacts = None
    ) -> Tensor:
        """Convolve ``x`` over the graph; the arguments take the forms
        :class:`~lorap_dist.nn.conv.QuantizedConv` lists, as SAGEConv's do.

        A pair without ``x_dst`` (``None``) leaves the root term out, as in SAGEConv; a sparse
        adjacency's values scale the messages; integer rows skip the ``input`` point (see the
        class docstring).
        """
        g, h, x_dst = self.aggregate_input(x, edge_index, nodes, size, "mean")  # [N_dst, in]
        out = self.lin_l(h)
        if x_dst is not None:
            out = out + self.lin_r(x_dst)
        return self.quantize("output", out, g.nodes_dst)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"aggr=mean{self.lorap_repr()})"
        )
