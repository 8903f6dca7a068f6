"""A graph-level model: quantized message-passing layers, a readout, a quantized MLP head."""

from __future__ import annotations

from dataclasses import replace

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter

from lorap_dist.config import ModelConfig, PromptConfig
from lorap_dist.graph.block import NodeInfo
from lorap_dist.nn.linear import QLinear
from lorap_dist.nn.model import PromptedStack, unit_repr
from lorap_dist.quant.base import NODE, identity_quantizers


class GraphHead(nn.Module):
    r"""The classifier (or regressor) after the readout, with activation quantization points.

    .. math::
        \mathbf{y} = \mathbf{W}_2\, \mathrm{Dropout}\big(Q_\text{hidden}\big(\mathrm{ReLU}
        (\mathbf{W}_1 Q_\text{input}(\mathbf{g}) + \mathbf{b}_1)\big)\big) + \mathbf{b}_2

    Rows are graphs, not nodes: the points take no :class:`NodeInfo` (Degree-Quant protects
    nothing here, A2Q quantizes each row with the pair its nearest-neighbour pool picks).
    The logits stay at full precision, as the last layer's output of a node-level model is
    the loss's input.

    Args:
        in_channels: readout width.
        hidden_channels: inner width.
        out_channels: classes, or regression targets.
        dropout: dropout probability before the last linear layer.
    """

    QUANT_POINTS = {"input": NODE, "hidden": NODE}

    def __init__(
        self, in_channels: int, hidden_channels: int, out_channels: int, dropout: float
    ) -> None:
        super().__init__()
        self.lin1 = QLinear(in_channels, hidden_channels)
        self.lin2 = QLinear(hidden_channels, out_channels)
        self.dropout = dropout
        self.quantizers = identity_quantizers(self.QUANT_POINTS)

    def forward(self, g: Tensor) -> Tensor:
        z = F.relu(self.lin1(self.quantizers["input"](g)))
        z = self.quantizers["hidden"](z)
        return self.lin2(F.dropout(z, p=self.dropout, training=self.training))


class GraphGNN(PromptedStack):
    r"""``model.layers`` quantized layers, a readout over each graph's nodes and a head.

    .. math::
        \mathbf{X}^{(0)} = \mathrm{GPF}(\mathbf{X}) \text{ (when on)}, \qquad
        \mathbf{X}^{(l+1)} = \mathrm{ReLU}\big(\mathrm{Norm}\big(
        \mathrm{Conv}_l(\mathbf{X}^{(l)}, \mathcal{G})\big)\big), \qquad
        \mathbf{g}_k = \mathrm{Readout}_{i \in \mathcal{G}_k} \mathbf{X}^{(L)}_i, \qquad
        \mathbf{y}_k = \mathrm{Head}(\mathbf{g}_k)

    Every layer has width ``model.hidden`` (GAT: ``model.heads`` concatenated heads of
    ``hidden // heads``) and is followed by the norm and ReLU; ``model.dropout`` acts in the
    head only, as in the GIN paper's graph classifiers. ``model.readout`` (sum, mean, max)
    pools each graph's nodes; :class:`GraphHead` maps the pooled vector to the outputs.
    Prompts as in :class:`~lorap_dist.nn.GNN`: LoRAP in every layer, GPF-plus on the input.

    Args:
        in_channels: node feature width.
        out_channels: classes, or regression targets.
        model: the stack's :class:`~lorap_dist.config.ModelConfig`.
        prompt: the :class:`~lorap_dist.config.PromptConfig` (default: no prompt).

    Shapes:
        - input: ``x [N, in_channels]`` of a batch of graphs, ``edge_index [2, E]``,
          ``batch [N]`` (each node's graph, ``0 .. num_graphs - 1``), optional ``NodeInfo``
        - output: ``[num_graphs, out_channels]``
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        model: ModelConfig,
        prompt: PromptConfig | None = None,
    ) -> None:
        super().__init__(in_channels, model, prompt, out_channels=None)
        self.readout = model.readout
        self.head = GraphHead(model.hidden, model.hidden, out_channels, model.dropout)

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor,
        num_graphs: int,
        nodes: NodeInfo | None = None,
    ) -> Tensor:
        nodes = replace(nodes or NodeInfo(), graph=batch)
        if self.node_transform is not None:
            nodes = self.node_transform(nodes)
        if self.gpf is not None:
            x = self.gpf(x, batch)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.relu(norm(conv(x, edge_index, nodes=nodes)))
        pooled = scatter(x, batch, dim=0, dim_size=num_graphs, reduce=self.readout)
        return self.head(pooled)

    def __repr__(self) -> str:
        prompt = self.prompt_config
        return (
            f"{self.__class__.__name__}(arch={self.config.arch}, layers={len(self.convs)}, "
            f"hidden={self.config.hidden}, readout={self.readout}, prompt={prompt.kind}, "
            f"k={prompt.k}, r={prompt.r}{unit_repr(prompt)})"
        )
