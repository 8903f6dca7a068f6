r"""Degree-Quant: stochastic protection of high in-degree nodes, percentile ranges.

From `"Degree-Quant: Quantization-Aware Training for Graph Neural Networks"
<https://arxiv.org/abs/2008.05000>`_ (Tailor, Fernandez-Marques, Lane; ICLR 2021).
``quantize_(model, DegreeQuantConfig(bits=4))`` does two things:

1. every quantization point gets a :class:`DegreeQuantQuantizer`: fake quantization whose
   node-feature ranges track the ``percentile`` and ``1 - percentile`` quantiles (moving
   average with ``momentum``), and whose weights use their exact per-channel range;
2. the model's ``node_transform`` hook becomes a :class:`DegreeProtection`, which draws,
   once per training forward pass, which nodes stay at full precision:

.. math::

    \text{protect}_i \sim \operatorname{Bernoulli}(p_i), \qquad
    p_i = p_\text{low} + (p_\text{high} - p_\text{low}) \, F(d_i)

with :math:`d_i` the node's in-degree in the *full* graph (``NodeInfo.degree``) and
:math:`F` the empirical CDF of the full graph's in-degrees. A protected node's rows pass
every node point of every layer unquantized (message, aggregate, update) and are left out
of the observed ranges; on a sampled block the destinations are a prefix of the sources, so
``NodeInfo.prefix`` slices the same mask. In evaluation nothing is protected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from lorap_dist.graph.block import NodeInfo
from lorap_dist.quant.api import QuantConfig, QuantizeContext, register_scheme, unsupported_role
from lorap_dist.quant.base import NODE, WEIGHT, Quantizer
from lorap_dist.quant.observers import (
    CurrentRangeObserver,
    PercentileObserver,
    RangeObserver,
)
from lorap_dist.quant.quantizer import FakeQuantizer
from lorap_dist.validation import ConfigError, check, check_bits, is_number


@dataclass
class DegreeQuantConfig(QuantConfig):
    """Degree-Quant: protect nodes by in-degree, percentile range tracking.

    Args:
        bits: bit width of node features, 2 to 8.
        weight_bits: bit width of weights (symmetric, per output channel); ``None`` uses
            ``bits``.
        low: protection probability of the lowest-degree nodes, in ``[0, 1]``; ``None``
            follows the bit width: the paper's INT8 recipe ``0`` above 4 bits, its INT4
            recipe ``0.1`` at 4 bits or fewer.
        high: protection probability of the highest-degree nodes, in ``[low, 1]``
            (``p = low + (high - low) * CDF(in-degree)``); ``None`` follows the bit width:
            ``0.1`` above 4 bits, ``0.2`` at 4 bits or fewer.
        percentile: fraction clipped from each tail of node features, in ``(0, 0.5)``;
            ``None`` picks the paper's 0.001 for more than 4 bits and 0.01 for 4 or fewer.
        subsample: estimate the quantiles from at most this many values per batch (drawn
            uniformly), or ``None`` for all values.
        grad_clip: zero the straight-through gradient of values outside the quantization
            range (``True``, default) or pass every gradient through unchanged.
        momentum: weight of a new batch in the moving average of the ranges, in ``(0, 1]``
            (default 0.1). At 0.01 a full-batch run, one batch per epoch, keeps its first
            epoch's ranges for about 100 epochs; with clipped straight-through gradients
            the logits cannot outgrow that range: on Cora GCN INT4 2 of 10 seeds trained to
            13-49% alone and 2 of 10 to 22-29% with LoRAP; at 0.1, none (81.2 and 81.7;
            ``benchmarks/accuracy_planetoid.py``, ablation table).
        symmetric: signed grid with zero point 0 for node features (default affine).
    """

    bits: int = 8
    weight_bits: int | None = None
    low: float | None = None
    high: float | None = None
    percentile: float | None = None
    subsample: int | None = None
    grad_clip: bool = True
    momentum: float = 0.1
    symmetric: bool = False

    def __post_init__(self) -> None:
        check_bits("DegreeQuantConfig.bits", self.bits)
        if self.weight_bits is not None:
            check_bits("DegreeQuantConfig.weight_bits", self.weight_bits)
        check(
            self.low is None or (is_number(self.low) and 0.0 <= self.low <= 1.0),
            f"DegreeQuantConfig.low={self.low!r} must be a probability in [0, 1], or null to "
            "follow the bit width.",
        )
        low = self.resolved_low
        check(
            self.high is None or (is_number(self.high) and low <= self.high <= 1.0),
            f"DegreeQuantConfig.high={self.high!r} must be a probability in "
            f"[low, 1] = [{low}, 1]; p = low + (high - low) * CDF(in-degree).",
        )
        check(
            low <= self.resolved_high,
            f"DegreeQuantConfig.low={low} is above high={self.resolved_high}; give both.",
        )
        check(
            self.percentile is None or (is_number(self.percentile) and 0.0 < self.percentile < 0.5),
            f"DegreeQuantConfig.percentile={self.percentile!r} must be a number in (0, 0.5) "
            "(the fraction clipped from each tail), or null for 0.001 above 4 bits and 0.01 "
            "at 4 bits or fewer.",
        )
        check(
            self.subsample is None
            or (
                isinstance(self.subsample, int)
                and not isinstance(self.subsample, bool)
                and self.subsample >= 1
            ),
            f"DegreeQuantConfig.subsample={self.subsample!r} must be an integer >= 1 (values "
            "per quantile estimate), or null to use every value.",
        )
        for name in ("grad_clip", "symmetric"):
            value = getattr(self, name)
            check(
                isinstance(value, bool),
                f"DegreeQuantConfig.{name}={value!r} must be true or false.",
            )
        check(
            is_number(self.momentum) and 0.0 < self.momentum <= 1.0,
            f"DegreeQuantConfig.momentum={self.momentum!r} must be a number in (0, 1] "
            "(0.01 averages over about 100 batches; 1 keeps only the latest).",
        )

    def _paper_recipe(self, value: float | None, above_4_bits: float, at_4_bits: float) -> float:
        """``value``, or the paper's recipe for ``bits``: ``above_4_bits`` for more than 4
        bits, ``at_4_bits`` for 4 bits or fewer."""
        if value is not None:
            return value
        return above_4_bits if self.bits > 4 else at_4_bits

    @property
    def resolved_percentile(self) -> float:
        """``percentile``, or the paper's default for ``bits`` (0.001 above 4 bits, 0.01 at 4
        or fewer)."""
        return self._paper_recipe(self.percentile, 0.001, 0.01)

    @property
    def resolved_low(self) -> float:
        """``low``, or the paper's recipe for ``bits`` (0 above 4 bits, 0.1 at 4 or fewer)."""
        return self._paper_recipe(self.low, 0.0, 0.1)

    @property
    def resolved_high(self) -> float:
        """``high``, or the paper's recipe for ``bits`` (0.1 above 4 bits, 0.2 at 4 or fewer)."""
        return self._paper_recipe(self.high, 0.1, 0.2)

    @property
    def resolved_weight_bits(self) -> int:
        """``weight_bits``, or ``bits`` when it is ``None``."""
        return self.bits if self.weight_bits is None else self.weight_bits

    def finalize_model(self, model: nn.Module, context: QuantizeContext) -> None:
        """Install a :class:`DegreeProtection` as ``model.node_transform``."""
        if not hasattr(model, "node_transform"):
            raise ConfigError(
                f"Degree-Quant draws its protection mask in the model's node_transform hook, "
                f"and {type(model).__name__} has none; quantize a lorap_dist.nn.GNN, or give "
                "the model a node_transform attribute called as nodes = node_transform(nodes) "
                "at the start of forward."
            )
        current = model.node_transform
        if current is not None and not isinstance(current, DegreeProtection):
            raise ConfigError(
                f"{type(model).__name__}.node_transform is already set to "
                f"{type(current).__name__}; Degree-Quant needs the hook for its protection "
                "mask. Remove the other transform first."
            )
        model.node_transform = DegreeProtection(
            self.resolved_low, self.resolved_high, context.num_nodes
        )


class DegreeProtection(nn.Module):
    r"""Draws the Degree-Quant protection mask into ``NodeInfo.protect`` (training only).

    .. math::

        p_i = p_\text{low} + (p_\text{high} - p_\text{low}) \, F(d_i), \qquad
        F(d) = \frac{|\{v : d_v \le d\}|}{|V|}

    :math:`F` is kept as a histogram of in-degrees (buffer ``degree_counts``,
    ``degree_counts[d]`` = nodes of in-degree ``d``) to which each global node ID is added
    once, the first time it appears in a training batch (buffer ``counted``, one flag per
    node). On a full graph the first forward pass therefore counts every node and ``F`` is
    exactly the full graph's in-degree CDF; with sampled blocks it is the CDF over the nodes
    sampled so far, which reaches the full graph's once every node has appeared. Without
    ``num_nodes`` or without ``NodeInfo.ids`` nodes cannot be told apart, and ``F`` is the
    empirical CDF of the degrees passed in that call. Degrees above every counted one have
    :math:`F = 1`.

    Args:
        low: :math:`p_\text{low}`.
        high: :math:`p_\text{high}`.
        num_nodes: nodes of the full graph (size of ``counted``), or ``None``.

    Shapes:
        ``nodes.degree [N]`` (and ``nodes.ids [N]``) -> ``protect [N]`` bool.
    """

    degree_counts: Tensor
    counted: Tensor

    def __init__(self, low: float, high: float, num_nodes: int | None = None) -> None:
        super().__init__()
        self.low, self.high = float(low), float(high)
        self.num_nodes = num_nodes
        self.register_buffer("degree_counts", torch.zeros(0, dtype=torch.long))
        self.register_buffer("counted", torch.zeros(num_nodes or 0, dtype=torch.bool))

    def forward(self, nodes: NodeInfo | None) -> NodeInfo | None:
        if not self.training:
            return nodes if nodes is None or nodes.protect is None else _unprotected(nodes)
        if nodes is None or nodes.degree is None:
            raise ValueError(
                "Degree-Quant needs each node's full-graph in-degree in training: pass "
                "NodeInfo(degree=...) to the model's forward (lorap_dist.train does)."
            )
        degree = nodes.degree.to(torch.long)
        cdf = self.cdf(degree, nodes.ids)
        probability = self.low + (self.high - self.low) * cdf
        protect = torch.rand(probability.shape, device=probability.device) < probability
        return replace(nodes, protect=protect)

    @torch.no_grad()
    def count_graph(self, degree: Tensor) -> None:
        """Count every node of the full graph now (``degree [num_nodes]``, each node's
        in-degree): :math:`F` is the full graph's CDF from the first pass. A distributed
        run does this on every rank: its ranks sample different nodes, and histograms
        counted from them would differ in values and in length."""
        if degree.dim() != 1 or degree.numel() != self.counted.numel():
            raise ValueError(
                f"count_graph needs one in-degree per node of the graph ({self.counted.numel()}"
                f" nodes); got a tensor of shape {tuple(degree.shape)}."
            )
        counts = torch.bincount(degree.clamp(min=0).to(torch.long))
        self.degree_counts = counts.to(self.counted.device)
        self.counted.fill_(True)

    @torch.no_grad()
    def cdf(self, degree: Tensor, ids: Tensor | None = None) -> Tensor:
        """:math:`F(d)` for each entry of ``degree``, after counting the new ``ids``."""
        if ids is None or self.counted.numel() == 0:
            counts = torch.bincount(degree.clamp(min=0))
        else:
            self._count(degree, ids.to(torch.long))
            counts = self.degree_counts
        total = counts.sum()
        if total == 0:
            return torch.ones_like(degree, dtype=torch.float32)
        cumulative = torch.cumsum(counts, 0).to(torch.float32) / total
        index = degree.clamp(0, counts.numel() - 1)
        return torch.where(degree >= counts.numel(), 1.0, cumulative.to(degree.device)[index])

    def _count(self, degree: Tensor, ids: Tensor) -> None:
        inside = (ids >= 0) & (ids < self.counted.numel())
        ids, degree = ids[inside], degree[inside]
        new = ~self.counted[ids]
        new_ids, new_degree = ids[new], degree[new]
        if new_ids.numel() == 0:
            return
        unique_ids, first = _first_occurrence(new_ids)
        self.counted[unique_ids] = True
        added = torch.bincount(new_degree[first].clamp(min=0))
        size = max(added.numel(), self.degree_counts.numel())
        counts = torch.zeros(size, dtype=torch.long, device=self.degree_counts.device)
        counts[: self.degree_counts.numel()] += self.degree_counts
        counts[: added.numel()] += added.to(counts.device)
        self.degree_counts = counts

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The histogram's length is the largest degree counted so far: take the saved one.
        saved = state_dict.get(prefix + "degree_counts")
        if saved is not None and saved.shape != self.degree_counts.shape:
            self.degree_counts = torch.empty_like(saved, device=self.degree_counts.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}, num_nodes={self.num_nodes}"


def _unprotected(nodes: NodeInfo) -> NodeInfo:
    return replace(nodes, protect=None)


def _first_occurrence(values: Tensor) -> tuple[Tensor, Tensor]:
    """Unique values and the index of one occurrence of each."""
    unique, inverse = torch.unique(values, return_inverse=True)
    position = torch.arange(values.numel(), device=values.device)
    first = torch.full((unique.numel(),), values.numel(), dtype=torch.long, device=values.device)
    first.scatter_reduce_(0, inverse, position, reduce="amin")
    return unique, first


class DegreeQuantQuantizer(FakeQuantizer):
    r""":class:`~lorap_dist.quant.quantizer.FakeQuantizer` with an optional unclipped
    straight-through gradient.

    With ``grad_clip=True`` the gradient of a value outside the quantization range is zero
    (the fake quantizer's rule); with ``grad_clip=False`` every value's gradient passes
    unchanged, :math:`\partial \hat x / \partial x = 1`.

    Args:
        bits: bit width.
        symmetric: signed grid with zero point 0.
        per_row: one range per row.
        observer: the range observer.
        grad_clip: mask the gradient to the quantization range.
    """

    def __init__(
        self,
        bits: int,
        symmetric: bool,
        per_row: bool,
        observer: RangeObserver,
        grad_clip: bool = True,
    ) -> None:
        super().__init__(bits=bits, symmetric=symmetric, per_row=per_row, observer=observer)
        self.grad_clip = grad_clip

    def forward(self, x: Tensor, nodes: NodeInfo | None = None) -> Tensor:
        out = super().forward(x, nodes)
        return out if self.grad_clip else x + (out - x).detach()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, grad_clip={self.grad_clip}"


@register_scheme("degree_quant", DegreeQuantConfig)
def _build_degree_quant_quantizer(
    config: DegreeQuantConfig, module: nn.Module, point: str, role: str, context: QuantizeContext
) -> Quantizer:
    """Percentile-tracked node points, exact-range per-channel weights."""
    if role == NODE:
        observer = PercentileObserver(
            percentile=config.resolved_percentile,
            momentum=config.momentum,
            max_samples=config.subsample,
        )
        return DegreeQuantQuantizer(
            bits=config.bits,
            symmetric=config.symmetric,
            per_row=False,
            observer=observer,
            grad_clip=config.grad_clip,
        )
    if role == WEIGHT:
        return DegreeQuantQuantizer(
            bits=config.resolved_weight_bits,
            symmetric=True,
            per_row=True,
            observer=CurrentRangeObserver(per_row=True),
            grad_clip=config.grad_clip,
        )
    raise unsupported_role("degree_quant", module, point, role)
