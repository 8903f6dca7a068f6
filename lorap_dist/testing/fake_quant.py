"""Test-only quantizers: one that records what reaches a quantization point, one that rounds."""

from __future__ import annotations

import torch
from torch import Tensor

from lorap_dist.graph.block import NodeInfo
from lorap_dist.quant.base import Quantizer


class RecordingQuantizer(Quantizer):
    """Returns its input unchanged and keeps a copy of every tensor and ``NodeInfo`` it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Tensor, NodeInfo | None]] = []

    def forward(self, x: Tensor, nodes: NodeInfo | None = None) -> Tensor:
        self.calls.append((x.detach().clone(), nodes))
        return x


class GridQuantizer(Quantizer):
    """Rounds to multiples of ``step`` with a straight-through gradient."""

    def __init__(self, step: float = 0.25) -> None:
        super().__init__()
        self.step = step

    def forward(self, x: Tensor, nodes: NodeInfo | None = None) -> Tensor:
        rounded = torch.round(x / self.step) * self.step
        return x + (rounded - x).detach()
