"""Quantized graph convolution (Kipf & Welling) with optional LoRAP."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.typing import OptTensor
from torch_geometric.utils import add_self_loops, remove_self_loops

from lorap_dist.config import PromptConfig
from lorap_dist.nn.conv import Graph, LayerInput, NodeFacts, QuantizedConv
from lorap_dist.nn.linear import QLinear


def block_gcn_norm(
    edge_index: Tensor,
    size: tuple[int, int],
    edge_weight: OptTensor = None,
    degree: OptTensor = None,
) -> tuple[Tensor, Tensor]:
    r"""Symmetric GCN normalisation of a block of ``size = (num_src, num_dst)`` (PyG's
    order), with a self loop on every destination.

    The block is normalised as PyG's :func:`gcn_norm` normalises the graph on its
    ``num_src`` nodes (self loops added where missing, repeated self loops kept once), so
    :math:`\hat{d}_j = 1 + \text{in-degree of } j \text{ in the block}`; a source that is not
    a destination has no in-edges in the block and so :math:`\hat{d}_j = 1`. Edges into
    sources that are not destinations (their added self loops) are dropped. On a full graph
    (``num_dst == num_src``) this is exactly :func:`gcn_norm`.

    With ``edge_weight`` (``[E]``) the degrees sum weights instead of counting edges, as in
    :func:`gcn_norm`: an added self loop weighs 1, one already in the graph keeps its weight.

    With ``degree`` (``[num_src]``, each source's in-degree :math:`d` in the full graph, self
    loops not counted) and no ``edge_weight``, the block stands for the full graph instead:
    :math:`\hat{d}_j = 1 + d_j` for every source, and a destination ``i`` that kept
    :math:`s_i` of its :math:`d_i` in-edges weighs each by :math:`d_i / s_i`, so the sum over
    a uniform sample of its in-neighbours is an unbiased estimate of the full graph's, and
    equals it where every in-edge was kept. Self loops in ``edge_index`` are dropped and one
    of weight :math:`1 / \hat{d}_i` is added to every destination. This is how a sampled
    block trains like the full graph it is evaluated on.

    Returns:
        ``(edge_index [2, E'], edge_weight [E'])`` with
        :math:`w_{ji} \hat{d}_j^{-1/2} \hat{d}_i^{-1/2}` per edge ``j -> i`` (times
        :math:`d_i / s_i` with ``degree``).
    """
    num_src, num_dst = size
    if degree is not None and edge_weight is None:
        return _full_graph_norm(edge_index, num_dst, degree)
    edge_index, weight = gcn_norm(edge_index, edge_weight, num_src, add_self_loops=True)
    if num_dst < num_src:
        keep = edge_index[1] < num_dst
        edge_index, weight = edge_index[:, keep], weight[keep]
    return edge_index, weight


def _full_graph_norm(edge_index: Tensor, num_dst: int, degree: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`block_gcn_norm` with the full graph's ``degree`` of every source."""
    edge_index, _ = remove_self_loops(edge_index)
    src, dst = edge_index
    d = degree.to(torch.float32)
    inv_sqrt = (d + 1).rsqrt()  # [num_src]
    kept = torch.bincount(dst, minlength=num_dst).clamp_(min=1)  # s_i
    weight = (d[:num_dst] / kept)[dst] * inv_sqrt[src] * inv_sqrt[dst]
    loops = torch.arange(num_dst, device=edge_index.device)
    edge_index = torch.cat([edge_index, torch.stack([loops, loops])], dim=1)
    return edge_index, torch.cat([weight, inv_sqrt[:num_dst].square()])


def normalised_edges(g: LayerInput) -> tuple[Tensor, Tensor]:
    """The edges and GCN weights of a layer's input, self loops added as PyG's
    :func:`gcn_norm` adds them to its form: to an ``edge_index`` where missing (one already
    there keeps its weight), to every diagonal entry of a ``torch.sparse`` adjacency (summed
    with one already there), and in place of the diagonal of a ``SparseTensor``."""
    edge_index, weight = g.edge_index, g.edge_weight
    if g.form == "sparse":
        edge_index, weight = add_self_loops(edge_index, weight, fill_value=1.0, num_nodes=g.num_src)
        return gcn_norm(edge_index, weight, g.num_src, add_self_loops=False)
    if g.form == "SparseTensor":
        edge_index, weight = remove_self_loops(edge_index, weight)
    degree = None
    if g.form == "block" and g.nodes_src is not None:
        degree = g.nodes_src.degree  # the full graph's: a sampled block trains like it
    return block_gcn_norm(edge_index, (g.num_src, g.num_dst), weight, degree)


class QGCNConv(QuantizedConv):
    r"""Quantized graph convolution from `"Semi-supervised Classification with Graph
    Convolutional Networks" <https://arxiv.org/abs/1609.02907>`_, with optional LoRAP
    (`arXiv 2601.15079 <https://arxiv.org/abs/2601.15079>`_) after aggregation.

    .. math::
        \mathbf{m}_j &= Q_\text{msg}\big(Q_\text{in}(\mathbf{x}_j) \, Q(\mathbf{W})^\top\big)

        \mathbf{h}_i &= Q_\text{agg}\Big(\sum_{j \in \mathcal{N}(i) \cup \{ i \}}
        \frac{e_{j,i}}{\sqrt{\hat{d}_j \hat{d}_i}} \mathbf{m}_j\Big), \qquad
        \hat{d}_i = 1 + \sum_{j \in \mathcal{N}(i)} e_{j,i}

        \mathbf{h}_i &\leftarrow Q_\text{prompt}(\mathbf{h}_i + \mathbf{p}_i)
        \quad \text{(LoRAP, when on)}

        \mathbf{x}_i' &= Q_\text{out}(\mathbf{h}_i + \mathbf{b})

    :math:`e_{j,i}` is the weight of edge ``j -> i`` (1 without ``edge_weight``). With
    identity quantizers and no LoRAP this is :class:`torch_geometric.nn.GCNConv` (self loops
    added, symmetric normalisation) on each graph form it takes, self loops included: PyG
    adds one to an ``edge_index`` node that has none (an existing one keeps its weight) but
    a unit loop to every diagonal entry of a ``torch.sparse`` adjacency, and so does this
    layer (see :func:`normalised_edges`). Like GCNConv it takes no ``(x_src, x_dst)`` pair.
    On a :class:`~lorap_dist.graph.Block` each destination ``i`` gets a self loop from
    source ``i`` (itself). Its degrees are those of the full graph when ``nodes`` gives them
    (:class:`~lorap_dist.graph.NodeInfo` ``degree``, as the trainers do), each kept in-edge
    weighted by :math:`d_i / s_i` for the :math:`s_i` of :math:`d_i` the sampler kept, so a
    sampled block estimates the full-graph output it is evaluated with (exact where every
    in-edge was kept); without them they are the block's, as PyG's GCNConv normalises the
    sampled subgraph (see :func:`block_gcn_norm`).

    Quantization points (all node role): ``input`` (source rows), ``message`` (the
    transformed source rows ``x W``), ``aggregate``, ``prompt`` (LoRAP only) and ``output``
    (destination rows); the weight's point lives in ``lin``.

    Args:
        in_channels: input width.
        out_channels: output width.
        bias: add a learnable bias (default ``True``).
        prompt: LoRAP's :class:`~lorap_dist.config.PromptConfig` (default ``None``: off).

    Shapes:
        - input: ``x [N_src, in_channels]``; ``edge_index [2, E]`` (tensor or
          ``EdgeIndex``), a sparse adjacency ``[N, N]`` or a ``Block``; optional
          ``edge_weight [E]``; optional ``NodeInfo`` of the ``N_src`` rows
        - output: ``[N_dst, out_channels]`` (``N_dst = N_src`` except on a block)
    """

    TRANSFORMS_FIRST = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        prompt: PromptConfig | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, aggr="add")
        self.lin = QLinear(in_channels, out_channels, bias=False)
        points = ("input", "message", "aggregate", "output")
        self.init_quantization(points, out_channels, prompt, bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        super().reset_parameters()

    def forward(
        self, x: Tensor, edge_index: Graph, edge_weight: OptTensor = None, nodes: NodeFacts = None
    ) -> Tensor:
        """Convolve ``x`` over the graph.

        Args:
            x: ``[N_src, in_channels]`` node features.
            edge_index: the graph in any form PyG's GCNConv takes: an ``edge_index [2, E]``
                (a tensor or a :class:`torch_geometric.EdgeIndex`), a square
                ``torch.sparse`` adjacency ``adj_t`` (COO, CSR or CSC; entry ``(i, j)`` is
                the edge ``j -> i`` and its value the edge's weight), or a
                ``torch_sparse.SparseTensor`` where torch_sparse is installed; or a
                :class:`~lorap_dist.graph.Block`.
            edge_weight: ``[E]`` weights of the edges of an ``edge_index`` or a block
                (default ``None``: all 1).
            nodes: :class:`~lorap_dist.graph.NodeInfo` of the ``N_src`` rows for the
                quantizers (default ``None``); a ``NodeInfo`` given third is read as
                ``nodes``.
        """
        g = self.read_input(
            x, edge_index, nodes, edge_weight=edge_weight, pairs=False, sparse_values="weights"
        )
        edge_index, weight = normalised_edges(g)
        x, _ = self.quantize_input(g)
        messages = self.quantize("message", self.lin(x), g.nodes_src)  # [N_src, out]
        h = self.propagate(edge_index, x=messages, edge_weight=weight, size=(g.num_src, g.num_dst))
        return self.biased_output(h, g.nodes_dst)  # [N_dst, out]

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.unsqueeze(-1) * x_j

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}{self.lorap_repr()})"
        )
