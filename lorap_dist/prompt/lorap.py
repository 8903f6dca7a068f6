"""Low-Rank Aggregation Prompting (LoRAP, arXiv 2601.15079): a learned prompt added to a
layer's aggregate, after aggregation and before the update."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lorap_dist.config import PROMPT_UNITS
from lorap_dist.graph.block import NodeInfo
from lorap_dist.kernels.aggregate_lorap import (
    aggregate_lorap_forward,
    aggregate_lorap_forward_range,
)
from lorap_dist.kernels.lorap_checks import Prompt
from lorap_dist.kernels.lorap_fused import lorap_forward, lorap_range
from lorap_dist.kernels.quant_aggregate import CsrBlock
from lorap_dist.kernels.quant_grid import QuantGrid
from lorap_dist.prompt.scale import per_graph_rms
from lorap_dist.prompt.streams import prompt_generator
from lorap_dist.quant.base import Quantizer
from lorap_dist.quant.quantizer import FakeQuantizer


def lorap_prompt(h: Tensor, w_phi: Tensor, p_a: Tensor, p_b: Tensor) -> Tensor:
    r"""Add the low-rank, input-dependent prompt to an aggregate (pure torch).

    .. math::
        \mathbf{w} = \mathrm{softmax}(\mathbf{H} \mathbf{W}_\phi), \qquad
        \mathbf{P} = (\mathbf{w} \mathbf{P}_A) \mathbf{P}_B, \qquad
        \mathbf{H}' = \mathbf{H} + \mathbf{P}

    with the softmax taken over the ``k`` bases of each row.

    Args:
        h: the (dequantized) aggregate.
        w_phi: the shared scoring matrix.
        p_a: first low-rank factor of the bases.
        p_b: second low-rank factor of the bases.

    Shapes:
        ``h [N, d]``, ``w_phi [d, k]``, ``p_a [k, r]``, ``p_b [r, d]`` -> ``[N, d]``.
    """
    weights = torch.softmax(h @ w_phi, dim=-1)  # [N, k]
    return h + (weights @ p_a) @ p_b


class LoRAP(nn.Module):
    r"""Low-Rank Aggregation Prompting, from `"LoRAP" <https://arxiv.org/abs/2601.15079>`_.

    A quantized aggregate carries the quantization error of every neighbour; LoRAP adds a
    prompt chosen per node from ``k`` low-rank bases and re-quantizes the sum:

    .. math::
        \mathbf{h}_i' = Q\Big(\mathbf{h}_i + \mathrm{softmax}(\mathbf{h}_i \mathbf{W}_\phi)
        \, \mathbf{P}_A \mathbf{P}_B\Big)

    ``P_B`` starts at exactly zero, so an untrained prompted layer equals its backbone and
    training starts from the backbone's function; ``W_phi`` and ``P_A`` start Glorot-uniform
    so that the gradient of ``P_B`` is non-zero from the first step, drawn from a stream of
    their own: a model with LoRAP starts from the same backbone weights, and trains
    with the same dropout draws, as the model without it. Parameters:
    ``d*k + r*(k + d)``.

    ``unit`` says what one unit of the bases is worth. ``"value"`` (default): the
    aggregate's own units, the formula above. ``"step"``: the prompt point's quantization
    step, :math:`\mathbf P = (\mathbf w \mathbf P_A) \mathbf P_B \, s` with :math:`s` the
    step of the grid the point held before this call (a per-tensor
    :class:`~lorap_dist.quant.quantizer.FakeQuantizer`: plain QAT, Degree-Quant; ``0``, so
    no prompt, until the point has observed a range) or, for every other quantizer (A2Q's
    per-node steps, MixQ's candidates, per-row grids, none), the root mean square of ``h``
    (of each row's graph in a batch of graphs, ``NodeInfo.graph``, so that a graph's prompt
    does not depend on the others in its batch). :math:`s` takes no gradient. Adam moves
    each entry of ``P_B`` by about one learning rate per step whatever the gradient's size,
    so in value units the prompt's reach is fixed in the aggregate's units; where a few
    large sums (hubs) set a coarse grid, that is a small fraction of a step and the prompt
    changes no rounding. In step units it moves in steps: on IMDB-BINARY (GIN, plain QAT
    INT4, 10 folds, prompt lr 0.05) LoRAP gained 4.8 points over QAT alone in step units and
    0.8 in value units.

    Args:
        channels: width ``d`` of the aggregate.
        k: number of prompt bases (default ``8``).
        r: rank of the bases (default ``4``).
        unit: ``"value"`` (default) or ``"step"``: what the bases are counted in.

    Shapes:
        input ``h [N, d]`` -> output ``[N, d]``.
    """

    def __init__(self, channels: int, k: int = 8, r: int = 4, unit: str = "value") -> None:
        super().__init__()
        for name, value in (("channels", channels), ("k", k), ("r", r)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LoRAP got {name}={value!r}; it must be an integer >= 1.")
        if unit not in PROMPT_UNITS:
            raise ValueError(
                f"LoRAP got unit={unit!r}; use 'value' (the aggregate's units) or 'step' (the "
                "prompt point's quantization step)."
            )
        self.channels, self.k, self.r, self.unit = channels, k, r, unit
        self.w_phi = nn.Parameter(torch.empty(channels, k))
        self.p_a = nn.Parameter(torch.empty(k, r))
        self.p_b = nn.Parameter(torch.empty(r, channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform ``W_phi`` and ``P_A``, zero ``P_B``; drawn from a stream of the
        prompt's own (:func:`~lorap_dist.prompt.streams.prompt_generator`), so the prompt
        leaves the backbone's initial weights and the training's random draws as they are."""
        generator = prompt_generator(self.w_phi)
        for weight in (self.w_phi, self.p_a):
            bound = math.sqrt(6.0 / sum(weight.shape))
            nn.init.uniform_(weight, -bound, bound, generator=generator)
        nn.init.zeros_(self.p_b)

    def forward(self, h: Tensor, quantizer: Quantizer, nodes: NodeInfo | None = None) -> Tensor:
        """``quantizer(h + p, nodes)``: the prompted aggregate, re-quantized by the layer's
        ``"prompt"`` point.

        When ``quantizer`` is a per-tensor :class:`FakeQuantizer` that can hand its grid to a
        kernel (:meth:`FakeQuantizer.fused_grid_available`), the fused op
        :func:`~lorap_dist.kernels.lorap_fused.lorap_forward` computes the prompt and the
        re-quantization in one pass (Triton on CUDA, the pure-torch reference on CPU); in
        training a range pass (:func:`~lorap_dist.kernels.lorap_fused.lorap_range`) first
        feeds ``[min, max]`` of ``h + p`` to the observer, so the result, the observer's range
        and the gradients are those of the unfused path. Every other quantizer gets the
        plain sum: an :class:`~lorap_dist.quant.IdentityQuantizer` has nothing to
        re-quantize, and percentile, per-row, protect-mask or learned-range quantizers need
        the values of ``h + p``. So do float16/bfloat16/float64 inputs (the kernel computes
        in float32, the unfused path in the input's dtype: same math, other rounding). The
        grid goes to the op as device tensors, so the host never waits for the observer and
        ``torch.compile`` traces the fused op without a graph break.
        """
        if self._fused_path(h, quantizer, nodes):
            return self._fused_forward(h, quantizer)
        graph = None if nodes is None else nodes.graph
        if self.unit == "step" and graph is not None and not _has_step(quantizer):
            weights = torch.softmax(h @ self.w_phi, dim=-1)
            prompt = (weights @ self.p_a) @ self.p_b * per_graph_rms(h, graph)
            return quantizer(h + prompt, nodes)
        return quantizer(
            lorap_prompt(h, self.w_phi, self.p_a, self.scaled_p_b(quantizer, h)), nodes
        )

    @torch.no_grad()
    def weights_and_prompt(self, h: Tensor, quantizer: Quantizer) -> tuple[Tensor, Tensor]:
        """``(w, p)`` of :meth:`forward` for ``h`` without re-quantizing: the softmax weights
        ``[N, k]`` and the prompt ``[N, d]`` in the aggregate's units, for diagnostics. Read
        in a forward hook (before the call, ``quantizer`` holds the grid it used)."""
        weights = torch.softmax(h @ self.w_phi, dim=-1)
        return weights, (weights @ self.p_a) @ self.scaled_p_b(quantizer, h)

    def scaled_p_b(self, quantizer: Quantizer, h: Tensor | None = None) -> Tensor:
        """``P_B`` in the aggregate's units: itself with ``unit="value"``, times the step
        :meth:`step_unit` with ``unit="step"`` (computed before ``quantizer`` observes this
        call's values; ``h`` is needed only where the quantizer has no per-tensor grid)."""
        if self.unit == "value":
            return self.p_b
        return self.p_b * self.step_unit(quantizer, h)

    @torch.no_grad()
    def step_unit(self, quantizer: Quantizer, h: Tensor | None = None) -> Tensor:
        """The 0-dim value of one unit of ``P_B`` with ``unit="step"`` (class docstring): the
        per-tensor grid's step (``0`` before a range is observed), else the RMS of ``h``."""
        if _has_step(quantizer):
            grid = quantizer.grid()
            if grid is None:  # nothing observed yet: the prompt stays off for this call
                return self.p_b.new_zeros(())
            return grid[0].reshape(()).to(self.p_b.dtype)
        if h is None:
            raise ValueError(
                "LoRAP with unit='step' needs the aggregate h to count the prompt in its "
                f"RMS: {type(quantizer).__name__} has no per-tensor grid."
            )
        return h.detach().float().pow(2).mean().sqrt().to(self.p_b.dtype)

    def takes_grid(self, quantizer: Quantizer, nodes: NodeInfo | None = None) -> bool:
        """Whether a fused op may prompt and re-quantize on ``quantizer``'s grid: a per-tensor
        :class:`FakeQuantizer` that can hand its grid to a kernel
        (:meth:`FakeQuantizer.fused_grid_available`), and float32 parameters."""
        return (
            isinstance(quantizer, FakeQuantizer)
            and quantizer.fused_grid_available(nodes)
            and all(p.dtype == torch.float32 for p in (self.w_phi, self.p_a, self.p_b))
        )

    def _fused_path(self, h: Tensor, quantizer: Quantizer, nodes: NodeInfo | None) -> bool:
        return (
            self.takes_grid(quantizer, nodes)
            and h.dim() == 2
            and h.shape[0] > 0
            and h.dtype == torch.float32
        )

    def _fused_forward(self, h: Tensor, quantizer: FakeQuantizer) -> Tensor:
        saved = None
        p_b = self.scaled_p_b(quantizer, h)  # the grid before this call observes
        if quantizer.observing:
            # An observed range takes no gradient; the op has no autograd of its own. On
            # CPU it also hands back the prompted sum, which the forward then reuses.
            with torch.no_grad():
                y_range, *saved = lorap_range(h, self.w_phi, self.p_a, p_b)
            quantizer.observe_range(y_range[0], y_range[1])
        scale, zero_point, qmin, qmax = quantizer.grid()  # tensors: no host sync
        prompt = Prompt(self.w_phi, self.p_a, p_b)
        return lorap_forward(h, prompt, QuantGrid(scale, zero_point, qmin, qmax), saved=saved)

    def forward_codes(
        self,
        block: CsrBlock,
        quantizer: FakeQuantizer,
        agg_grid: tuple[Tensor, Tensor, int, int] | None = None,
    ) -> Tensor:
        """``quantizer(h + p)`` for the sum or mean ``h`` of integer source rows over a CSR
        block, computed by one fused op
        (:func:`~lorap_dist.kernels.aggregate_lorap.aggregate_lorap_forward`): gather,
        reduce, optionally fake-quantize ``h`` on ``agg_grid`` (``(scale, zero_point, qmin,
        qmax)``, the aggregate point's grid), prompt and re-quantize. On CUDA (rows up to
        512 wide) ``h`` never reaches memory.

        The caller has checked :meth:`takes_grid` and that the block has destination rows.
        In training a range pass
        (:func:`~lorap_dist.kernels.aggregate_lorap.aggregate_lorap_forward_range`) first
        feeds ``[min, max]`` of ``h + p`` to the observer, as :meth:`forward` does; on CPU the
        forward reuses what it computed. The result, the observed range and the gradients of
        ``W_phi``, ``P_A`` and ``P_B`` are those of aggregating first and calling
        :meth:`forward` on the aggregate.
        """
        prompt = Prompt(self.w_phi, self.p_a, self.scaled_p_b(quantizer))
        saved = None
        if quantizer.observing:  # the range pass detaches the parameters: it takes no gradient
            y_range, saved = aggregate_lorap_forward_range(block, prompt, agg_grid=agg_grid)
            quantizer.observe_range(y_range[0], y_range[1])
        grid = QuantGrid(*quantizer.grid())  # tensors: no host sync
        return aggregate_lorap_forward(block, prompt, grid, agg_grid=agg_grid, saved=saved)

    def __repr__(self) -> str:
        unit = "" if self.unit == "value" else f", unit={self.unit!r}"
        return f"{self.__class__.__name__}({self.channels}, k={self.k}, r={self.r}{unit})"


def _has_step(quantizer: Quantizer) -> bool:
    """Whether ``quantizer`` has one step for the whole tensor (``unit="step"`` counts in it)."""
    return isinstance(quantizer, FakeQuantizer) and not quantizer.per_row
