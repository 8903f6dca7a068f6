"""A stack of quantized message-passing layers with the prompts the config asks for."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.typing import WITH_TORCH_SPARSE, SparseTensor

from lorap_dist.config import ModelConfig, PromptConfig
from lorap_dist.graph.block import Block, NodeInfo
from lorap_dist.nn.conv import Graph, QuantizedConv
from lorap_dist.nn.gat import QGATConv
from lorap_dist.nn.gcn import QGCNConv
from lorap_dist.nn.gin import QGINConv
from lorap_dist.nn.sage import QSAGEConv
from lorap_dist.prompt.gpf import GPFPlus
from lorap_dist.prompt.lorap import LoRAP
from lorap_dist.quant.base import Quantizer
from lorap_dist.quant.integer import QuantizedRows


def unit_repr(prompt: PromptConfig) -> str:
    """``", unit=step"`` where LoRAP counts in steps (the default prints nothing)."""
    return f", unit={prompt.unit}" if prompt.lorap and prompt.unit != "value" else ""


class PromptedStack(nn.Module):
    """What the node-level and graph-level stacks share: their configs, the GPF-plus input
    prompt, the ``node_transform`` hook, the layers (``convs``) with the norms of the hidden
    ones (``norms``), and the check of GAT's head split.

    Args:
        in_channels: input feature width.
        model: the stack's :class:`~lorap_dist.config.ModelConfig`.
        prompt: the :class:`~lorap_dist.config.PromptConfig` (default: no prompt).
        out_channels: width of the last layer when it is the output layer (a bare
            convolution; GAT averages its heads); ``None`` when every layer is a hidden layer
            of width ``model.hidden``, followed by a norm.
    """

    def __init__(
        self,
        in_channels: int,
        model: ModelConfig,
        prompt: PromptConfig | None,
        out_channels: int | None,
    ) -> None:
        super().__init__()
        prompt = prompt or PromptConfig()
        hidden_layers = model.layers if out_channels is None else model.layers - 1
        if model.arch == "gat" and model.hidden % model.heads != 0 and hidden_layers > 0:
            raise ValueError(
                f"model.hidden={model.hidden} is not divisible by model.heads={model.heads}; "
                "GAT's hidden layers split the hidden width across the heads."
            )
        self.config = model
        self.prompt_config = prompt
        self.node_transform: Callable[[NodeInfo | None], NodeInfo | None] | None = None
        self.gpf = GPFPlus(in_channels, prompt.k, prompt.gpf_support) if prompt.gpf else None
        widths = [in_channels] + [model.hidden] * hidden_layers
        if out_channels is not None:
            widths.append(out_channels)
        self.convs = nn.ModuleList(
            build_conv(model, prompt, widths[l], widths[l + 1], last=l >= hidden_layers)
            for l in range(model.layers)
        )
        self.norms = nn.ModuleList(
            build_norm(model.resolved_norm, model.hidden) for _ in range(hidden_layers)
        )

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()


class GNN(PromptedStack):
    r"""``model.layers`` quantized layers of one architecture, with optional prompts.

    .. math::
        \mathbf{X}^{(0)} = \mathrm{GPF}(\mathbf{X}) \text{ (when on)}, \qquad
        \mathbf{X}^{(l+1)} = \mathrm{Dropout}\big(\mathrm{ReLU}\big(\mathrm{Norm}\big(
        \mathrm{Conv}_l(\mathbf{X}^{(l)}, \mathcal{G}_l)\big)\big)\big)

    The last layer is the bare convolution (no norm, activation or dropout). With
    ``model.dropout_after_input`` each dropout applies after the next layer's ``input``
    point instead (:class:`~lorap_dist.config.ModelConfig` says why). Hidden layers
    have width ``model.hidden``; GAT's hidden layers concatenate ``model.heads`` heads of
    ``hidden // heads`` channels and its last layer averages ``model.heads`` heads. With
    ``prompt.lorap`` every layer carries LoRAP, with ``prompt.gpf`` the input passes
    through :class:`~lorap_dist.prompt.GPFPlus`.

    ``node_transform`` (default ``None``) is called as ``nodes = node_transform(nodes)`` at
    the start of every forward pass, with the ``nodes`` given (possibly ``None``);
    Degree-Quant sets it to draw the protection mask once per pass.

    **Integer input rows.** With SAGE or GIN layers ``x`` may be a
    :class:`~lorap_dist.quant.integer.QuantizedRows` (INT8 or INT4 codes with per-row
    scales, e.g. from :meth:`~lorap_dist.distributed.exchange.FeatureExchange.fetch_rows`):
    the first layer aggregates the codes with the fused op and does not round them again
    at its ``input`` point
    (:meth:`~lorap_dist.nn.conv.QuantizedConv.aggregate_input` says why), so the output is
    the stack's on ``x.dequantize()`` with that point bypassed. The stack applies no
    dropout to its input (dropout acts between layers only), so the codes reach the first
    layer as they are. GPF-plus adds a float prompt to the input features, so with it on
    the rows are dequantized first and the first layer takes floats through its ``input``
    point, as for float features. GCN and GAT stacks refuse integer rows. Feed a model the
    same form in training and evaluation: on integer rows the first layer's ``input`` point
    is never called, so it never observes a range (nor, with A2Q or MixQ, learns its
    parameters), and float features given later would be rounded on an untrained grid.

    Args:
        in_channels: input feature width.
        out_channels: output width (number of classes).
        model: the stack's :class:`~lorap_dist.config.ModelConfig`.
        prompt: the :class:`~lorap_dist.config.PromptConfig` (default: no prompt).

    Shapes:
        - input: ``x [N, in_channels]`` (or ``QuantizedRows`` of ``N`` rows, SAGE and GIN
          only) with one graph every layer runs on, in any form the layers take
          (``edge_index [2, E]``, a :class:`torch_geometric.EdgeIndex`, a
          ``torch.sparse`` adjacency ``[N, N]``), or ``x [blocks[0].num_src, in_channels]``
          with one ``Block`` per layer, where ``blocks[l + 1].num_src ==
          blocks[l].num_dst``; optional ``NodeInfo`` of ``x``'s rows
        - output: ``[N, out_channels]``, or ``[blocks[-1].num_dst, out_channels]``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        model: ModelConfig,
        prompt: PromptConfig | None = None,
    ) -> None:
        super().__init__(in_channels, model, prompt, out_channels)
        self.dropout = model.dropout
        if model.dropout_after_input:  # each hidden layer's dropout moves into the next conv
            for conv in self.convs[1:]:
                conv.input_dropout = model.dropout

    @property
    def logits_layer(self) -> QuantizedConv:
        """The layer whose output points hold the logits (``quantize_``'s ``float_logits``
        leaves them at full precision, MixQ keeps them at its widest width)."""
        return self.convs[-1]

    def forward(
        self,
        x: Tensor | QuantizedRows,
        graph: Graph | Sequence[Block],
        nodes: NodeInfo | None = None,
    ) -> Tensor:
        if isinstance(x, QuantizedRows) and self.config.arch not in ("sage", "gin"):
            raise TypeError(
                f"GNN with arch={self.config.arch} got QuantizedRows as x; only SAGE and GIN "
                "layers aggregate integer rows directly. Pass x.dequantize()."
            )
        if self.node_transform is not None:
            nodes = self.node_transform(nodes)
        graphs = self._per_layer(graph)
        if self.gpf is not None:
            if isinstance(x, QuantizedRows):  # GPF-plus prompts float features
                x = x.dequantize()
            x = self.gpf(x)
        for l, (conv, layer_graph) in enumerate(zip(self.convs, graphs, strict=True)):
            x = conv(x, layer_graph, nodes=nodes)
            if isinstance(layer_graph, Block) and nodes is not None:
                nodes = nodes.prefix(layer_graph.num_dst)
            if l < len(self.norms):
                x = F.relu(self.norms[l](x))
                if not self.config.dropout_after_input:
                    x = F.dropout(x, p=self.dropout, training=self.training)
        return x

    def _per_layer(self, graph: Graph | Sequence[Block]) -> list[Graph]:
        layers = len(self.convs)
        if isinstance(graph, Tensor) or (WITH_TORCH_SPARSE and isinstance(graph, SparseTensor)):
            return [graph] * layers
        blocks = [graph] if isinstance(graph, Block) else list(graph)
        if len(blocks) != layers or not all(isinstance(b, Block) for b in blocks):
            raise ValueError(
                f"GNN with {layers} layers got {len(blocks)} graph(s) of types "
                f"{sorted({type(b).__name__ for b in blocks})}; pass one graph for every "
                f"layer (an edge_index, an EdgeIndex or a sparse adjacency) or a list of "
                f"exactly {layers} Blocks."
            )
        for l in range(layers - 1):
            if blocks[l + 1].num_src != blocks[l].num_dst:
                raise ValueError(
                    f"blocks[{l + 1}].num_src={blocks[l + 1].num_src} differs from "
                    f"blocks[{l}].num_dst={blocks[l].num_dst}; each layer's sources must be "
                    "the previous layer's destinations."
                )
        return blocks

    def __repr__(self) -> str:
        prompt = self.prompt_config
        return (
            f"{self.__class__.__name__}(arch={self.config.arch}, layers={len(self.convs)}, "
            f"hidden={self.config.hidden}, prompt={prompt.kind}, k={prompt.k}, r={prompt.r}"
            f"{unit_repr(prompt)})"
        )


def build_conv(
    model: ModelConfig, prompt: PromptConfig, width_in: int, width_out: int, last: bool
) -> QuantizedConv:
    """Layer ``model.arch`` from ``width_in`` to ``width_out`` channels; GAT's hidden layers
    concatenate ``model.heads`` heads, its ``last`` layer averages them."""
    if model.arch == "gcn":
        return QGCNConv(width_in, width_out, prompt=prompt)
    if model.arch == "sage":
        return QSAGEConv(width_in, width_out, prompt=prompt)
    if model.arch == "gin":
        return QGINConv(width_in, width_out, prompt=prompt)
    if last:
        return QGATConv(width_in, width_out, heads=model.heads, concat=False, prompt=prompt)
    return QGATConv(width_in, width_out // model.heads, heads=model.heads, prompt=prompt)


def build_norm(kind: str, channels: int) -> nn.Module:
    """The normalisation ``model.norm`` names (``none`` is the identity)."""
    if kind == "batch":
        return nn.BatchNorm1d(channels)
    if kind == "layer":
        return nn.LayerNorm(channels)
    return nn.Identity()


def build_model(
    in_channels: int, num_classes: int, model_cfg: ModelConfig, prompt_cfg: PromptConfig
) -> GNN:
    """The :class:`GNN` for ``model_cfg`` and ``prompt_cfg`` with ``num_classes`` outputs."""
    return GNN(in_channels, num_classes, model_cfg, prompt_cfg)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameter counts of ``model`` by kind.

    ``prompt`` counts the parameters of LoRAP and GPF-plus modules, ``quantizer`` those of
    quantizers (learned step sizes, bit-width logits), ``backbone`` the rest; every
    parameter is counted once.
    """
    kind_of: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, (LoRAP, GPFPlus)):
            kind = "prompt"
        elif isinstance(module, Quantizer):
            kind = "quantizer"
        else:
            continue
        for parameter in module.parameters():
            kind_of.setdefault(id(parameter), kind)
    counts = {"backbone": 0, "prompt": 0, "quantizer": 0}
    for parameter in model.parameters():
        counts[kind_of.get(id(parameter), "backbone")] += parameter.numel()
    counts["total"] = sum(counts.values())
    return counts
