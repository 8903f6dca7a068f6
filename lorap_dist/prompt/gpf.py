"""GPF-plus: a learned prompt added to the input node features (the node-prompt baseline)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class GPFPlus(nn.Module):
    r"""GPF-plus, from `"Universal Prompt Tuning for Graph Neural Networks"
    <https://arxiv.org/abs/2209.15240>`_: each node adds its own mix of ``k`` learned bases.

    .. math::
        \mathbf{x}_i' = \mathbf{x}_i + \mathrm{softmax}(\mathbf{x}_i \mathbf{W}) \, \mathbf{P}

    ``P`` starts at exactly zero so that an untrained prompted model equals its backbone:
    adding the prompt to a trained (or quantized) model does not move its predictions until
    the prompt learns something. ``W`` starts Glorot-uniform so the gradient of ``P`` is
    non-zero from the first step. Parameters: ``2 * d * k``.

    Args:
        channels: feature width ``d``.
        k: number of bases (default ``8``).

    Shapes:
        input ``[N, d]`` -> output ``[N, d]``.
    """

    def __init__(self, channels: int, k: int = 8) -> None:
        super().__init__()
        for name, value in (("channels", channels), ("k", k)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPFPlus got {name}={value!r}; it must be an integer >= 1.")
        self.channels, self.k = channels, k
        self.weight = nn.Parameter(torch.empty(channels, k))
        self.bases = nn.Parameter(torch.empty(k, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = math.sqrt(6.0 / (self.channels + self.k))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bases)

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.softmax(x @ self.weight, dim=-1) @ self.bases

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, k={self.k})"
