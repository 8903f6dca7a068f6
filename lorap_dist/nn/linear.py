"""A linear layer whose weight passes through a quantization point."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lorap_dist.quant.base import WEIGHT, identity_quantizers


class QLinear(nn.Module):
    r"""``y = x Q(W)^T + b``: :class:`torch.nn.Linear` with a weight quantization point.

    The bias stays at full precision (integer inference keeps it in the 32-bit accumulator).
    Initialization matches :class:`torch_geometric.nn.Linear` with ``weight_initializer=
    "glorot"`` so that layers built on it can copy PyG's parameters one to one.

    Args:
        in_channels: input width.
        out_channels: output width.
        bias: add a learnable bias (default ``True``).

    Shapes:
        input ``[N, in_channels]`` -> output ``[N, out_channels]``.
    """

    QUANT_POINTS = {"weight": WEIGHT}

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.quantizers = identity_quantizers(self.QUANT_POINTS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = math.sqrt(6.0 / (self.in_channels + self.out_channels))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantizers["weight"](self.weight), self.bias)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"bias={self.bias is not None})"
        )
