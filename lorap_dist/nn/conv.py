"""What the quantized message-passing layers share: their quantization points, how they
read their graph input (any form PyG's layers take, or a :class:`~lorap_dist.graph.Block`),
the aggregation of integer feature rows (:class:`~lorap_dist.quant.integer.QuantizedRows`)
by the fused ``quant_aggregate`` op (or, with LoRAP on, ``aggregate_lorap``), and the optional
LoRAP step.

It is longer than the project's other modules (about 630 lines) because it is one contract:
every layer reads its input, runs its points and aggregates through these pieces, and a
change to one of them (a new graph form, a new row type) must be made with the others in
view."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch_geometric import EdgeIndex
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.inits import zeros
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor, to_edge_index

from lorap_dist.config import PromptConfig
from lorap_dist.graph.block import Block, NodeInfo
from lorap_dist.kernels.quant_aggregate import CsrBlock, quant_aggregate
from lorap_dist.nn.aggregate import CSRAggregation
from lorap_dist.prompt.lorap import LoRAP
from lorap_dist.quant.base import NODE, identity_quantizers
from lorap_dist.quant.integer import QuantizedRows
from lorap_dist.quant.quantizer import FakeQuantizer

#: Node features: one ``[N, F]`` tensor, or PyG's bipartite ``(x_src, x_dst)`` pair.
Features = Tensor | tuple[Tensor, Tensor | None]
#: What SAGE and GIN also take: integer rows with per-row scales, one set of rows.
RowFeatures = Features | QuantizedRows
#: Node facts: of ``x``'s rows, or ``(nodes_src, nodes_dst)`` with a pair of features.
NodeFacts = NodeInfo | tuple[NodeInfo | None, NodeInfo | None] | None
#: The graph forms a layer reads (a ``SparseTensor`` only where torch_sparse is installed).
Graph = Tensor | Block | SparseTensor
#: What a layer does with the values of a sparse adjacency, as its PyG layer does: take them
#: as the edges' weights for its normalisation (GCN), ignore them (GAT), or scale each
#: message by its edge's value before the sum or mean (SAGE, GIN: PyG's ``spmm`` on a
#: ``torch.sparse`` adjacency, repeated entries merged and the mean dividing by the edge
#: count; an adjacency of ones reads as an unweighted graph, and a ``SparseTensor``'s values
#: are dropped, as SAGEConv and GINConv drop them).
SparseValues = Literal["weights", "ignored", "scale"]

_GRAPH_SIZE_NAMES = {
    "block": "the Block",
    "edge_index": "the EdgeIndex's sparse_size",  # a plain edge_index gives no sizes
    "sparse": "the adjacency's shape [num_dst, num_src]",
    "SparseTensor": "the SparseTensor's shape [num_dst, num_src]",
}


@dataclass
class LayerInput:
    """A layer's input in one form, whatever form it came in.

    Args:
        edge_index: ``[2, E]`` plain tensor; row 0 indexes the sources, row 1 the
            destinations.
        num_src: source nodes (rows of ``x_src``).
        num_dst: destination nodes.
        x_src: ``[num_src, F]`` source features.
        x_dst: ``[num_dst, F]`` destination features, or ``None`` (a pair without them).
        pair: whether ``x`` came as ``(x_src, x_dst)``; otherwise the destinations are the
            first ``num_dst`` rows of ``x_src`` (all of them on a full graph).
        nodes_src: facts of the source rows, or ``None``.
        nodes_dst: facts of the destination rows, or ``None``.
        edge_weight: ``[E]`` weights of the edges (the ``edge_weight`` argument, or a sparse
            adjacency's values where the layer uses them: GCN always, SAGE and GIN unless all
            are 1), or ``None``.
        form: what ``graph`` was: ``"edge_index"`` (a tensor or ``EdgeIndex``), ``"block"``,
            ``"sparse"`` (a ``torch.sparse`` adjacency) or ``"SparseTensor"``; PyG's GCN adds
            self loops differently to each.
    """

    edge_index: Tensor
    num_src: int
    num_dst: int
    x_src: Tensor
    x_dst: Tensor | None
    pair: bool
    nodes_src: NodeInfo | None
    nodes_dst: NodeInfo | None
    edge_weight: Tensor | None = None
    form: str = "edge_index"


def layer_input(
    layer: str,
    x: Features,
    graph: Graph,
    nodes: NodeFacts = None,
    *,
    size: tuple[int | None, int | None] | None = None,
    edge_weight: Tensor | None = None,
    pairs: bool = True,
    sparse_values: SparseValues = "scale",
) -> LayerInput:
    """Read a layer's arguments into a :class:`LayerInput`, checking that they fit together.

    ``graph`` is an ``edge_index [2, E]`` (a plain tensor or a
    :class:`torch_geometric.EdgeIndex`), a ``torch.sparse`` adjacency ``adj_t`` of shape
    ``[num_dst, num_src]`` (PyG's convention: entry ``(i, j)`` is the edge ``j -> i``), a
    ``torch_sparse.SparseTensor`` in the same convention where torch_sparse is installed, or
    a :class:`~lorap_dist.graph.Block` (with ``x`` one tensor of its source rows). ``x`` is
    one tensor, or with ``pairs`` PyG's ``(x_src, x_dst)`` with ``x_dst`` possibly ``None``.
    The destinations count as ``size[1]``, else ``x_dst``'s rows, else the adjacency's, else
    ``num_src`` (as in PyG's ``propagate``); every count given must agree.
    """
    x_src, x_dst, pair = _features(layer, x, pairs)
    num_src = x_src.size(0)
    if sparse_values == "scale" and isinstance(graph, Tensor) and graph.layout == torch.sparse_coo:
        graph = graph.coalesce()  # PyG's spmm merges repeated entries, weights summed
    edge_index, implied, form, values = _adjacency(layer, graph)
    if pair and form == "block":
        raise TypeError(
            f"{layer} got x as an (x_src, x_dst) pair with a Block; a Block's destinations "
            "are its first num_dst sources, so pass x as one tensor of its source rows, or "
            "pass the pair with an edge_index."
        )
    if size is not None and not (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(n is None or isinstance(n, int) for n in size)
    ):
        raise TypeError(
            f"{layer} takes size as (num_src, num_dst), got {type(size).__name__} {size!r}."
        )
    rows = "x_src" if pair else "x"
    where = _GRAPH_SIZE_NAMES[form]
    given_src = [("size", None if size is None else size[0]), (where, implied[0])]
    for name, count in given_src:
        if count is not None and count != num_src:
            raise ValueError(
                f"{layer} got {rows} with {num_src} rows, but {name} gives num_src={count}; "
                f"{rows} must hold one row per source node."
            )
    given_dst = [
        ("size", None if size is None else size[1]),
        ("x_dst's rows", None if x_dst is None else x_dst.size(0)),
        (where, implied[1]),
    ]
    known = [(name, count) for name, count in given_dst if count is not None]
    if not pair and form != "block":
        known = [(name, count) for name, count in known if count != num_src]
        if known:
            raise ValueError(
                f"{layer} got x as one tensor of {num_src} rows, so the destinations are "
                f"those rows, but {known[0][0]} gives num_dst={known[0][1]}; pass "
                "(x_src, x_dst), or a Block whose destinations are its first num_dst sources."
            )
        num_dst = num_src
    else:
        num_dst = known[0][1] if known else num_src
        for name, count in known[1:]:
            if count != num_dst:
                raise ValueError(
                    f"{layer} got num_dst={num_dst} from {known[0][0]} but num_dst={count} "
                    f"from {name}; they must agree."
                )
    if edge_weight is not None:
        if form in ("sparse", "SparseTensor"):
            raise ValueError(
                f"{layer} got edge_weight with a sparse adjacency, whose values are its edge "
                "weights; leave edge_weight None, or pass an edge_index."
            )
        if edge_weight.dim() != 1 or edge_weight.numel() != edge_index.size(1):
            raise ValueError(
                f"{layer} needs edge_weight as one weight per edge, [{edge_index.size(1)}], "
                f"got {list(edge_weight.shape)}."
            )
    if values is not None and sparse_values == "weights":
        edge_weight = values
    elif (
        values is not None
        and sparse_values == "scale"
        and form == "sparse"
        and not bool((values == 1).all())
    ):
        if values.dim() != 1 or not values.is_floating_point():
            raise ValueError(
                f"{layer} scales each message by its edge's value in the sparse adjacency, so "
                f"the values must be one float per edge, got {values.dtype} "
                f"{list(values.shape)}; pass an adjacency of float edge weights."
            )
        edge_weight = values
    nodes_src, nodes_dst = _node_facts(layer, nodes, pair, num_dst)
    return LayerInput(
        edge_index=edge_index,
        num_src=num_src,
        num_dst=num_dst,
        x_src=x_src,
        x_dst=x_dst if pair else x_src[:num_dst],
        pair=pair,
        nodes_src=nodes_src,
        nodes_dst=nodes_dst,
        edge_weight=edge_weight,
        form=form,
    )


def positional_nodes(layer: str, argument: Any, nodes: NodeFacts) -> tuple[Any, NodeFacts]:
    """Split a layer's third positional argument from its node facts.

    The third argument is PyG's (``edge_weight`` or ``size``); node facts given there instead
    (a :class:`NodeInfo`, or a pair holding one) are read as ``nodes``.
    """
    facts = isinstance(argument, NodeInfo) or (
        isinstance(argument, tuple) and any(isinstance(a, NodeInfo) for a in argument)
    )
    if not facts:
        return argument, nodes
    if nodes is not None:
        raise TypeError(
            f"{layer} got node facts both as its third argument and as nodes=; pass them once."
        )
    return None, argument


def _features(layer: str, x: Any, pairs: bool) -> tuple[Tensor, Tensor | None, bool]:
    """``(x_src, x_dst, pair)`` from one tensor or an ``(x_src, x_dst)`` pair."""
    if isinstance(x, QuantizedRows):  # a layer that takes them reads them before this
        raise TypeError(
            f"{layer} takes float node features, got QuantizedRows (integer codes with "
            "per-row scales); only QSAGEConv and QGINConv aggregate integer rows directly "
            "(GCN and GAT transform or weigh each message before aggregating it). Pass "
            "rows.dequantize()."
        )
    if isinstance(x, (tuple, list)) and any(isinstance(a, QuantizedRows) for a in x):
        raise TypeError(
            f"{layer} got QuantizedRows inside an (x_src, x_dst) pair; pass integer rows as "
            "one QuantizedRows with an edge_index or a Block (whose destinations are its "
            "first num_dst rows), or pass the pair dequantized."
        )
    if isinstance(x, Tensor) and x.dim() == 2:
        return x, None, False
    if pairs and isinstance(x, (tuple, list)) and len(x) == 2:
        x_src, x_dst = x
        if not (isinstance(x_src, Tensor) and x_src.dim() == 2) or not (
            x_dst is None or (isinstance(x_dst, Tensor) and x_dst.dim() == 2)
        ):
            raise TypeError(
                f"{layer} takes (x_src, x_dst) as a [num_src, channels] tensor and a "
                f"[num_dst, channels] tensor or None, got ({_describe(x_src)}, "
                f"{_describe(x_dst)})."
            )
        if x_dst is not None and x_dst.size(1) != x_src.size(1):
            raise ValueError(
                f"{layer} got x_src with {x_src.size(1)} channels and x_dst with "
                f"{x_dst.size(1)}; both pass through the same weights, so they must match."
            )
        return x_src, x_dst, True
    if pairs:
        raise TypeError(
            f"{layer} takes node features as one [num_nodes, channels] tensor or an "
            f"(x_src, x_dst) pair, got {_describe(x)}."
        )
    raise TypeError(
        f"{layer} takes node features as one [num_nodes, channels] tensor, as its PyG layer "
        f"does, got {_describe(x)}; for bipartite input pass the source rows and a Block "
        "(destinations are its first num_dst sources)."
    )


def _adjacency(
    layer: str, graph: Any
) -> tuple[Tensor, tuple[int | None, int | None], str, Tensor | None]:
    """``(edge_index, (num_src, num_dst) as far as the graph gives them, form, values)``;
    ``values`` are a sparse adjacency's, else ``None``."""
    if isinstance(graph, Block):
        return _edge_index(layer, graph.edge_index), (graph.num_src, graph.num_dst), "block", None
    if WITH_TORCH_SPARSE and isinstance(graph, SparseTensor):
        row, col, values = graph.coo()
        return torch.stack([col, row]), (graph.size(1), graph.size(0)), "SparseTensor", values
    if isinstance(graph, Tensor) and is_torch_sparse_tensor(graph):
        if graph.dim() != 2:
            raise ValueError(
                f"{layer} needs a sparse adjacency as a [num_dst, num_src] matrix, got "
                f"{graph.dim()} dimensions {list(graph.shape)}."
            )
        dst_src, values = to_edge_index(graph)
        return dst_src.flip(0), (graph.size(1), graph.size(0)), "sparse", values
    if isinstance(graph, EdgeIndex):
        return _edge_index(layer, graph.as_tensor()), graph.sparse_size(), "edge_index", None
    if isinstance(graph, Tensor):
        return _edge_index(layer, graph), (None, None), "edge_index", None
    raise TypeError(
        f"{layer} takes its graph as an edge_index tensor, an EdgeIndex, a torch.sparse "
        f"adjacency [num_dst, num_src] or a Block, got {type(graph).__name__}."
    )


def _edge_index(layer: str, edge_index: Tensor) -> Tensor:
    if edge_index.dim() != 2 or edge_index.size(0) != 2 or edge_index.is_floating_point():
        raise ValueError(
            f"{layer} needs edge_index as a [2, E] integer tensor, got "
            f"{edge_index.dtype} {list(edge_index.shape)}."
        )
    return edge_index


def _node_facts(
    layer: str, nodes: Any, pair: bool, num_dst: int
) -> tuple[NodeInfo | None, NodeInfo | None]:
    """``(nodes_src, nodes_dst)``: a pair's own facts, or a prefix of the source facts."""
    if pair:
        if nodes is None:
            return None, None
        if isinstance(nodes, (tuple, list)) and len(nodes) == 2:
            return nodes[0], nodes[1]
        raise TypeError(
            f"{layer} got x as an (x_src, x_dst) pair and nodes as {type(nodes).__name__}; "
            "pass the node facts as a pair too, (nodes_src, nodes_dst), either may be None."
        )
    if nodes is None or isinstance(nodes, NodeInfo):
        return nodes, None if nodes is None else nodes.prefix(num_dst)
    raise TypeError(
        f"{layer} got x as one tensor and nodes as {type(nodes).__name__}; pass one NodeInfo "
        "of x's rows (a (nodes_src, nodes_dst) pair goes with an (x_src, x_dst) pair)."
    )


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return "None" if value is None else type(value).__name__


class QuantizedConv(MessagePassing):
    """Base of the quantized layers: holds the quantization points and the optional LoRAP.

    A subclass calls :meth:`init_quantization` once its own points and the width of its
    aggregate are known, reads its forward's arguments with :meth:`read_input`, and resets
    its own parameters before calling :meth:`reset_parameters`. ``QUANT_POINTS`` is an
    instance attribute because the ``"prompt"`` point exists only when LoRAP is on.

    **Inputs.** Every layer's forward takes PyG's arguments, read by :meth:`read_input`:

    - ``x``: ``[N, in_channels]`` features; where the layer's PyG counterpart takes them
      (all but GCN), the bipartite pair ``(x_src [N_src, in_channels], x_dst [N_dst,
      in_channels] or None)``; for SAGE and GIN also integer rows
      (:class:`~lorap_dist.quant.integer.QuantizedRows`: codes ``int8 [N, in_channels]``,
      scales ``[N]``).
    - ``edge_index``: the graph in any form the PyG counterpart takes (``edge_index [2, E]``
      as a tensor or ``EdgeIndex``, a sparse adjacency ``[N_dst, N_src]``, a
      ``SparseTensor``: :func:`layer_input` lists them), or a
      :class:`~lorap_dist.graph.Block` with ``x`` its source rows.
    - ``size``: ``(N_src, N_dst)`` where the graph and ``x`` do not tell (default ``None``).
    - ``nodes``: node facts for the quantizers: a :class:`~lorap_dist.graph.NodeInfo` of
      ``x``'s rows, or ``(nodes_src, nodes_dst)`` with a pair (default ``None``); a
      ``NodeInfo`` given third is read as ``nodes``.

    The output has one row per destination, ``N_dst`` (``N`` on a full graph).
    """

    QUANT_POINTS: dict[str, str]
    #: The points whose values are the layer's output up to a bias (at the last layer: the
    #: model's logits). A layer that transforms before it aggregates (GCN, GAT) aggregates
    #: its output channels; one that aggregates first (GIN, SAGE) does not.
    TRANSFORMS_FIRST: bool = False
    #: Dropout applied to the rows after the ``input`` point (training only): set by
    #: :class:`~lorap_dist.nn.model.GNN` with ``model.dropout_after_input``, so that the
    #: point observes and rounds the values evaluation sees.
    input_dropout: float = 0.0

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        """``kwargs`` go to :class:`~torch_geometric.nn.MessagePassing` (``aggr``, ...)."""
        super().__init__(**kwargs)
        self.in_channels = in_channels
        self.out_channels = out_channels

    @property
    def output_points(self) -> tuple[str, ...]:
        if self.TRANSFORMS_FIRST:
            return tuple(p for p in ("aggregate", "prompt", "output") if p in self.QUANT_POINTS)
        return ("output",)

    def init_quantization(
        self,
        points: tuple[str, ...],
        aggregate_channels: int,
        prompt: PromptConfig | None,
        bias: bool = False,
    ) -> None:
        """Create the points, the LoRAP prompt (when ``prompt`` turns it on) and, with
        ``bias``, the ``[aggregate_channels]`` bias :meth:`biased_output` adds (GCN, GAT);
        without it ``self.bias`` is ``None``."""
        self.bias = nn.Parameter(torch.empty(aggregate_channels)) if bias else None
        on = prompt is not None and prompt.lorap
        self.lorap = LoRAP(aggregate_channels, prompt.k, prompt.r, prompt.unit) if on else None
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

    def reset_parameters(self) -> None:
        """Reset PyG's aggregation, the bias (zeros) and the LoRAP prompt; a subclass resets
        its own parameters first, so they draw from the random stream before the prompt
        does."""
        super().reset_parameters()
        zeros(self.bias)
        if self.lorap is not None:
            self.lorap.reset_parameters()

    def read_input(
        self,
        x: Features,
        graph: Graph,
        nodes: NodeFacts,
        *,
        size: Any = None,
        edge_weight: Any = None,
        **options: Any,
    ) -> LayerInput:
        """:func:`layer_input` of the forward's arguments, under this layer's name.

        ``size`` or ``edge_weight`` is the forward's third positional argument, PyG's; node
        facts given there instead are read as ``nodes`` (:func:`positional_nodes`).
        ``options`` are :func:`layer_input`'s ``pairs`` and ``sparse_values``.
        """
        layer = type(self).__name__
        size, nodes = positional_nodes(layer, size, nodes)
        edge_weight, nodes = positional_nodes(layer, edge_weight, nodes)
        return layer_input(layer, x, graph, nodes, size=size, edge_weight=edge_weight, **options)

    def aggregate_input(
        self,
        x: RowFeatures,
        graph: Graph,
        nodes: NodeFacts,
        size: Any,
        reduce: str,
    ) -> tuple[LayerInput, Tensor, Tensor | None]:
        r"""``(g, h, x_dst)``: the forward's arguments read (:meth:`read_input`), the sum or
        mean ``h [num_dst, F]`` of the source rows over ``g``'s edges as the update step sees
        it (:meth:`quantize_aggregate`), and the destination rows for the root term (``None``
        for a pair without ``x_dst``). For SAGE and GIN.

        Float features pass through the ``input`` point first (:meth:`quantize_input`) and
        are aggregated by :meth:`aggregate_rows`; where the destinations are the first
        source rows and the CSR matmul applies, the aggregate and the root rows come from
        one op whose backward sums both gradients in one pass
        (:meth:`~lorap_dist.nn.aggregate.CSRAggregation.with_root`).

        **Integer rows.** :class:`QuantizedRows` (codes ``c`` with per-row scales ``s``, e.g.
        INT8 features as the dataset stores them, from
        :meth:`~lorap_dist.distributed.exchange.FeatureExchange.fetch_rows`), with any graph
        form the layer takes, are aggregated as they are, by the fused ``quant_aggregate`` op
        over the CSR form of ``g``'s edges (:meth:`quantize_codes`): :math:`\mathbf{h}_i =
        \sum_{j \in \mathcal{N}(i)} c_j s_j`, divided by :math:`|\mathcal{N}(i)|` for the mean.
        The root term is the dequantized destination rows :math:`c_i s_i`; ``g``'s ``x_src``
        and ``x_dst`` then hold the codes. The stored per-row grid wins: the ``input`` point is
        not applied to integer rows, because a second, per-tensor rounding of values that
        already lie on an integer grid only adds error. The result equals the layer on
        ``rows.dequantize()`` with the ``input`` point bypassed: bit for bit on the CPU for rows
        of at least 32 values (the op adds the same fp32 products in the same order as the
        float path's CSR matmul), to fp32 rounding of the sums otherwise (narrower rows, which
        the float path scatters through PyG, and the CUDA kernel; a later quantization point
        can turn such a difference at one of its rounding boundaries into one step of its
        grid). The codes take no gradient; the weights and LoRAP's parameters get theirs as on
        the float path. With LoRAP on, where the ``prompt`` point can hand its grid to a kernel
        (a per-tensor min/max fake quantizer without protected rows, as plain QAT makes, and
        float32 parameters), aggregation, prompt and re-quantization run as one
        ``aggregate_lorap`` op instead of ``quant_aggregate`` followed by LoRAP (on CUDA the
        aggregate is never written out); with ``prompt.rounding="twice"`` only in evaluation,
        when the ``aggregate`` point's stored grid can go to the op too (:meth:`fuses_prompt`).
        On the CPU the op gives the two steps' output, observed range and gradients bit for
        bit. Other schemes (Degree-Quant, A2Q, MixQ, per-row ranges) keep the two steps. A pair
        of integer rows is refused.
        """
        if not isinstance(x, QuantizedRows):
            g = self.read_input(x, graph, nodes, size=size)
            x_src, x_dst = self.quantize_input(g)
            both = None
            if not g.pair and g.edge_weight is None:  # the root rows are x_src's first rows
                both = self.csr_aggregation.with_root(x_src, g.edge_index, g.num_dst, reduce)
            h, x_dst = both if both is not None else (self.aggregate_rows(x_src, g, reduce), x_dst)
            return g, self.quantize_aggregate(h, g.nodes_dst), x_dst
        rows = x.check(f"{type(self).__name__}'s x")
        dtypes = {p.dtype for p in self.parameters() if p.is_floating_point()}
        if dtypes - {torch.float32}:
            raise TypeError(
                f"{type(self).__name__} has {', '.join(sorted(map(str, dtypes)))} parameters "
                "and got QuantizedRows, whose codes aggregate to float32: keep the layer in "
                "float32 (.float()), or pass rows.dequantize() cast to the layer's dtype."
            )
        g = self.read_input(rows.codes, graph, nodes, size=size)
        if g.edge_weight is not None:
            raise ValueError(
                f"{type(self).__name__} aggregates integer rows over unweighted edges, but the "
                "sparse adjacency's values are not all 1; pass rows.dequantize() to scale the "
                "messages by them, or an adjacency of ones."
            )
        x_dst = rows.rows(slice(0, g.num_dst)).dequantize()  # [num_dst, F]
        return g, self.quantize_codes(rows, g, reduce), x_dst

    def quantize_codes(self, rows: QuantizedRows, g: LayerInput, reduce: str) -> Tensor:
        """:meth:`quantize_aggregate` of :meth:`aggregate_codes`: the ``[num_dst, F]``
        aggregate of the integer source ``rows`` as the update step sees it.

        Where :meth:`fuses_prompt` allows, aggregation, prompt and re-quantization run as one
        ``aggregate_lorap`` op (:meth:`LoRAP.forward_codes
        <lorap_dist.prompt.lorap.LoRAP.forward_codes>`), with the ``aggregate`` point's grid
        where ``prompt.rounding="twice"`` keeps one. On the CPU the op performs the fp32
        operations of the two steps, so the result, the ``prompt`` point's observed range and
        the gradients are bit for bit theirs. Otherwise the steps run one after the other.
        """
        if g.num_dst == 0 or not self.fuses_prompt(g.nodes_dst):
            return self.quantize_aggregate(self.aggregate_codes(rows, g, reduce), g.nodes_dst)
        indptr, indices = self.csr_aggregation.csr(g.edge_index, g.num_src, g.num_dst)
        block = CsrBlock(rows.codes, rows.scales, indptr, indices, 8, reduce)  # INT4 unpacked
        agg_grid = self.quantizers["aggregate"].grid() if "aggregate" in self.quantizers else None
        return self.lorap.forward_codes(block, self.quantizers["prompt"], agg_grid)

    def fuses_prompt(self, nodes_dst: NodeInfo | None) -> bool:
        """Whether one fused op can stand in for :meth:`quantize_aggregate` on integer rows:
        LoRAP is on, its ``prompt`` point can hand its grid to a kernel
        (:meth:`LoRAP.takes_grid <lorap_dist.prompt.lorap.LoRAP.takes_grid>`: a per-tensor
        :class:`~lorap_dist.quant.quantizer.FakeQuantizer` whose observer keeps extremes,
        no protected rows, float32 parameters), and the ``aggregate`` point, where
        ``prompt.rounding="twice"`` keeps one, can too without observing: in evaluation. In
        training it would have to see the aggregate's range before the op runs.

        Degree-Quant (protected rows, percentile ranges), A2Q and MixQ quantizers, per-row
        grids and float64 parameters keep the two steps.
        """
        if self.lorap is None or not self.lorap.takes_grid(self.quantizers["prompt"], nodes_dst):
            return False
        if "aggregate" not in self.quantizers:
            return True
        aggregate = self.quantizers["aggregate"]
        return (
            isinstance(aggregate, FakeQuantizer)
            and not aggregate.observing
            and aggregate.fused_grid_available(nodes_dst)
        )

    def aggregate_codes(self, rows: QuantizedRows, g: LayerInput, reduce: str) -> Tensor:
        """``[num_dst, F]`` fp32 sum or mean of the dequantized source ``rows`` over ``g``'s
        edges, in one pass over the codes
        (:func:`~lorap_dist.kernels.quant_aggregate.quant_aggregate`; INT4 rows travel
        unpacked, as ``int8`` codes). On the CPU the op adds the same fp32 products
        ``code * scale`` in the same edge order as :meth:`aggregate_rows`'s CSR matmul of
        ``rows.dequantize()``. No gradient flows to the rows.
        """
        indptr, indices = self.csr_aggregation.csr(g.edge_index, g.num_src, g.num_dst)
        return quant_aggregate(
            rows.codes, rows.scales, indptr, indices, rows.num_features, 8, reduce
        )

    def aggregate_rows(self, x: Tensor, g: LayerInput, reduce: str) -> Tensor:
        """``propagate``'s sum or mean of ``x``'s rows over ``g``'s edges (messages
        ``x_j``, or ``w_ji x_j`` with ``g``'s edge weights, the mean still dividing by the
        edge count as PyG's ``spmm`` does): unweighted on the CPU as one CSR matmul
        (:mod:`lorap_dist.nn.aggregate`, the same values and gradients), otherwise through
        PyG."""
        out = None
        if g.edge_weight is None:
            out = self.csr_aggregation(x, g.edge_index, g.num_dst, reduce)
        if out is None:
            size = (g.num_src, g.num_dst)
            out = self.propagate(g.edge_index, x=x, edge_weight=g.edge_weight, size=size)
        return out

    def message(self, x_j: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        return x_j if edge_weight is None else edge_weight.unsqueeze(-1) * x_j

    def quantize(self, point: str, x: Tensor, nodes: NodeInfo | None) -> Tensor:
        return self.quantizers[point](x, nodes)

    def quantize_input(self, g: LayerInput) -> tuple[Tensor, Tensor | None]:
        """``Q_in`` of the source rows and of the destination rows (``None`` for a pair
        without ``x_dst``).

        On a graph or a block the destinations are the first ``num_dst`` quantized source
        rows, so the ``input`` point sees one tensor. ``input_dropout`` applies after the
        point. A pair's ``x_dst`` passes through the
        same ``input`` quantizer in a call of its own, with the destination facts.
        """
        x_src = self._drop(self.quantize("input", g.x_src, g.nodes_src))
        if not g.pair:
            return x_src, x_src[: g.num_dst]
        if g.x_dst is None:
            return x_src, None
        return x_src, self._drop(self.quantize("input", g.x_dst, g.nodes_dst))

    def _drop(self, x: Tensor) -> Tensor:
        if not self.input_dropout:
            return x
        return torch.nn.functional.dropout(x, p=self.input_dropout, training=self.training)

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
        unit = "" if self.lorap.unit == "value" else f", unit={self.lorap.unit}"
        return f", lorap=(k={self.lorap.k}, r={self.lorap.r}{unit})"
