r"""A2Q: learned step size and bit width per node (per output channel for weights).

From `"A2Q: Aggregation-Aware Quantization for Graph Neural Networks"
<https://arxiv.org/abs/2302.00193>`_ (Zhu et al., ICLR 2023).
``quantize_(model, A2QConfig(memory_budget=4.0), num_nodes=N)`` gives each node-feature
point a table of ``N`` learned ``(step, bits)`` pairs keyed by global node ID
(``NodeInfo.ids``), and each weight a pair per output channel. Row :math:`i` is quantized
symmetrically with :math:`b_i` rounded in the forward pass:

.. math::

    Q(x_{ic}) = s_i \operatorname{clip}\big(\operatorname{round}(x_{ic} / s_i),
    -2^{b_i - 1}, 2^{b_i - 1} - 1\big)

**Gradients.** The output passes a straight-through gradient to :math:`x`, masked to the
clip range; the quantizer's own parameters get the gradient of the local L1 error instead
of the task loss's (formulas and the autograd function in
:mod:`lorap_dist.quant.schemes.a2q_functional`). Steps are stored as ``log_step``
(:math:`s = e^\theta`, so an optimizer step changes them by a relative amount and they stay
positive); bits are projected onto ``[min_bits, max_bits]`` before each training forward
pass.

**Memory penalty.** Each node-feature point (and each weight point whose bits are learned)
adds :math:`\lambda\, n \operatorname{relu}(\bar b - B)^2` through ``regularization()``,
with :math:`n` its rows, :math:`\bar b` their mean rounded bit width (straight-through
gradient) and :math:`B` = ``memory_budget``. The factor :math:`n` gives every row's bits the
gradient :math:`2 \lambda (\bar b - B)` whatever the size of the graph: without it the pull
toward the budget shrank as :math:`1/n` while each row's local gradient did not, and the
bits overran the budget (Cora INT4: 4.44 average bits for a budget of 4). The training loss
that ``lorap train`` reports is the task's cross-entropy, without this term.

**Step reset (not in the paper).** A row's step starts at the value that just covers its
largest entry when the row is first seen, and then moves only by its optimizer's steps
(Adam: about ``lr`` in ``log s`` per step). When the activations grow faster than that, as
in the first epochs of a network whose inputs are tiny (row-normalised bag-of-words
features put the first aggregates near 1e-3, a bias moved by one Adam step at ``lr`` 0.01
is ten of those steps), most of a row's values clip: they carry no straight-through
gradient, the task cannot train and the steps crawl after the values for hundreds of
epochs (A2Q INT4 on CiteSeer trained to chance that way). So in training a row with more
than ``reset_clipped`` of its non-zero values outside the grid gets its step reset, as at
first sight, to cover its largest value; ``reset_clipped: null`` keeps the paper's rule.
In the steady state the local gradient settles at a few percent of values clipped, far
below the default 0.5, so the reset only acts on rows that have lost their grid.

**Nearest-Neighbour Strategy.** A node without parameters of its own (``NodeInfo.ids`` is
``None``, an ID outside the table, or a node never seen in training) takes the pair of a
learned pool of ``pool_size`` pairs that minimises
:math:`(\max_c |x_{ic}| - 2^{b_j - 1} s_j)^2`. In training every row also updates the pool
entry nearest to it with the local gradient of quantizing the row with that entry (without
changing the row's output), so the pool learns the steps and bits that the nodes need.
``num_nodes=0`` (graph-level tasks, where a test graph's nodes are never seen in training)
keeps no table: every row uses its pool pair, as the paper does for graph-level tasks, and
the memory penalty and ``average_bits`` apply to the pool's bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lorap_dist.graph.block import NodeInfo
from lorap_dist.quant.api import QuantConfig, QuantizeContext, register_scheme, unsupported_role
from lorap_dist.quant.base import NODE, WEIGHT, Quantizer
from lorap_dist.quant.fake_quant import NonzeroIndex, on_nonzeros
from lorap_dist.quant.schemes.a2q_functional import (
    A2QFakeQuantize,
    nearest_pool_entry,
    signed_grid,
)
from lorap_dist.validation import ConfigError, check, check_bits, is_int, is_number

_MIN_STEP = 1e-8
_QUANTILE_MAX_NUMEL = 1 << 24  # torch.quantile refuses more elements


@dataclass
class A2QConfig(QuantConfig):
    """A2Q: learned per-node steps and bit widths, local gradients, memory penalty.

    Args:
        bits: the common spelling of "INT b" that every scheme takes: starts every row at
            ``b`` bits with a memory budget of ``b`` average bits, unless ``init_bits`` or
            ``memory_budget`` say otherwise.
        init_bits: bit width every row starts at (default ``bits``, else 4).
        min_bits: smallest learned bit width (1 to 8; 1 bit is the grid ``{-s, 0}``).
        max_bits: largest learned bit width, at most 8.
        memory_budget: target average bit width ``B`` of each point, in
            ``[min_bits, max_bits]`` (default ``bits``, else ``init_bits``).
        penalty: :math:`\\lambda` of the memory penalty, ``>= 0`` (0 turns it off).
        pool_size: pairs in the Nearest-Neighbour Strategy's pool, ``>= 1``.
        weight_bits: fixed bit width of weights (per-channel steps still learned), or
            ``None`` to learn a bit width per output channel as well.
        reset_clipped: share of a row's non-zero values that may clip before its step is
            reset to cover the row (module docstring), in ``(0, 1]``; ``None`` never resets
            (the paper's rule).
    """

    bits: int | None = None
    init_bits: int | None = None
    min_bits: int = 2
    max_bits: int = 8
    memory_budget: float | None = None
    penalty: float = 1.0
    pool_size: int = 32
    weight_bits: int | None = None
    reset_clipped: float | None = 0.5

    def __post_init__(self) -> None:
        if self.bits is not None:
            check_bits("A2QConfig.bits", self.bits)
        if self.init_bits is None:
            self.init_bits = self.bits if self.bits is not None else 4
        if self.memory_budget is None:
            self.memory_budget = float(self.bits if self.bits is not None else self.init_bits)
        for name in ("init_bits", "min_bits", "max_bits"):
            value = getattr(self, name)
            check(
                is_int(value) and 1 <= value <= 8,
                f"A2QConfig.{name}={value!r} is not a supported bit width; use an integer "
                "from 1 to 8.",
            )
        check(
            self.min_bits <= self.init_bits <= self.max_bits,
            f"A2QConfig.init_bits={self.init_bits} must lie in [min_bits, max_bits] = "
            f"[{self.min_bits}, {self.max_bits}].",
        )
        check(
            is_number(self.memory_budget) and self.min_bits <= self.memory_budget <= self.max_bits,
            f"A2QConfig.memory_budget={self.memory_budget!r} must be a number of bits in "
            f"[min_bits, max_bits] = [{self.min_bits}, {self.max_bits}].",
        )
        check(
            is_number(self.penalty) and self.penalty >= 0,
            f"A2QConfig.penalty={self.penalty!r} must be a number >= 0 (0 turns the memory "
            "penalty off).",
        )
        check(
            is_int(self.pool_size) and self.pool_size >= 1,
            f"A2QConfig.pool_size={self.pool_size!r} must be an integer >= 1 (pairs in the "
            "Nearest-Neighbour Strategy's pool).",
        )
        if self.weight_bits is not None:
            check_bits("A2QConfig.weight_bits", self.weight_bits)
        if self.reset_clipped is not None:
            check(
                is_number(self.reset_clipped) and 0 < self.reset_clipped <= 1,
                f"A2QConfig.reset_clipped={self.reset_clipped!r} must be a share in (0, 1] "
                "(of a row's non-zero values that may clip before its step is reset), or null "
                "to never reset.",
            )


def _distributed() -> bool:
    """Whether this process is one of several ranks of a process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _round_ste(bits: Tensor) -> Tensor:
    return bits + (torch.round(bits) - bits).detach()


class A2QNodeQuantizer(Quantizer):
    """A2Q for a node-feature point: a ``(step, bits)`` pair per global node ID and an NNS
    pool (rules in the module docstring).

    A row with a valid ID gets its table entry initialised, the first time it is seen in
    training with a non-zero value, to ``bits = init_bits`` and the step that just covers
    its largest value, ``s = max|x_i| / (2^(init_bits-1) - 1)``; the pool is initialised
    from the first training batch with reaches spread over the quantiles of the non-zero
    ``max|x_i|``.

    Args:
        num_nodes: rows of the table (nodes of the full graph).
        init_bits: starting bit width.
        min_bits: smallest bit width.
        max_bits: largest bit width.
        memory_budget: target mean bit width of the point.
        penalty: weight of the memory penalty.
        pool_size: pairs in the NNS pool.
        reset_clipped: share of clipped non-zero values that resets a row's step, or
            ``None``.

    Shapes:
        input ``[n, ...]`` with optional ``nodes.ids [n]`` -> output ``[n, ...]``.
    """

    initialized: Tensor
    pool_initialized: Tensor

    def __init__(
        self,
        num_nodes: int,
        init_bits: int = 4,
        min_bits: int = 2,
        max_bits: int = 8,
        memory_budget: float = 4.0,
        penalty: float = 1.0,
        pool_size: int = 32,
        reset_clipped: float | None = 0.5,
    ) -> None:
        super().__init__()
        self.num_nodes = num_nodes
        self.reset_clipped = reset_clipped
        self.init_bits, self.min_bits, self.max_bits = init_bits, min_bits, max_bits
        self.memory_budget, self.penalty = memory_budget, penalty
        self.log_step = nn.Parameter(torch.zeros(num_nodes))
        self.bits = nn.Parameter(torch.full((num_nodes,), float(init_bits)))
        self.pool_log_step = nn.Parameter(torch.zeros(pool_size))
        self.pool_bits = nn.Parameter(torch.full((pool_size,), float(init_bits)))
        self.register_buffer("initialized", torch.zeros(num_nodes, dtype=torch.bool))
        self.register_buffer("pool_initialized", torch.tensor(False))
        self.nonzeros = NonzeroIndex()
        self._written: list[Tensor] = []  # table rows set here since the last share_writes
        self._pool_set = False

    def forward(self, x: Tensor, nodes: NodeInfo | None = None) -> Tensor:
        rows = x.reshape(x.shape[0], -1) if x.dim() != 2 else x  # [n, c]
        if rows.shape[0] == 0 or rows.shape[1] == 0:
            return x
        index = self.nonzeros(rows)  # mostly zeros (bag-of-words): work on the non-zeros
        if index is None:
            max_abs = rows.detach().abs().amax(dim=1)  # [n]
        else:
            row_of = index // rows.shape[1]
            values = rows.detach().reshape(-1)[index].abs()
            max_abs = values.new_zeros(rows.shape[0]).scatter_reduce(0, row_of, values, "amax")
        ids = self._valid_ids(nodes, rows.shape[0], x.device)  # [n], -1 where none
        if self.training:
            self._project_bits()
            self._initialize(max_abs, ids)
        pool_step, pool_bits = self.pool_log_step.exp(), self.pool_bits
        nearest = nearest_pool_entry(max_abs, pool_step.detach(), pool_bits.detach())
        step, bits = pool_step.detach()[nearest], pool_bits.detach()[nearest]
        if self.num_nodes:  # rows with a pair of their own use it (no table: graph level)
            safe_ids = ids.clamp(min=0)
            own = (ids >= 0) & self.initialized[safe_ids]
            if self.training and self.reset_clipped is not None:
                self._reset_clipped_rows(rows.detach(), max_abs, safe_ids, own)
            step = torch.where(own, self.log_step[safe_ids].exp(), step)
            bits = torch.where(own, self.bits[safe_ids], bits)
        pairs = [step.clamp(min=_MIN_STEP), bits.clamp(self.min_bits, self.max_bits)]
        if self.training:
            pairs += [pool_step[nearest], pool_bits[nearest]]
        if index is None:
            out = A2QFakeQuantize.apply(rows, *pairs, *[None] * (4 - len(pairs)))
            return out.reshape(x.shape)

        # Zero is on every grid and adds nothing to the local error: each non-zero is
        # quantized as a row of one value with its row's pair (gathered, so the pair's
        # gradients are summed back per row).
        def quantize(v: Tensor) -> Tensor:
            per_value = [pair[row_of] for pair in pairs] + [None] * (4 - len(pairs))
            return A2QFakeQuantize.apply(v.unsqueeze(1), *per_value).squeeze(1)

        return on_nonzeros(rows, index, quantize).reshape(x.shape)

    def _valid_ids(self, nodes: NodeInfo | None, n: int, device: torch.device) -> Tensor:
        if nodes is None or nodes.ids is None:
            return torch.full((n,), -1, dtype=torch.long, device=device)
        ids = nodes.ids.to(device=device, dtype=torch.long)
        if ids.shape != (n,):
            raise ValueError(
                f"nodes.ids has shape {tuple(ids.shape)} but the input has {n} rows; A2Q "
                "needs one global node ID per row."
            )
        return torch.where((ids >= 0) & (ids < self.num_nodes), ids, -1)

    @torch.no_grad()
    def _project_bits(self) -> None:
        self.bits.clamp_(self.min_bits, self.max_bits)
        self.pool_bits.clamp_(self.min_bits, self.max_bits)

    @torch.no_grad()
    def _reset_clipped_rows(self, rows: Tensor, max_abs: Tensor, ids: Tensor, own: Tensor) -> None:
        """Rows with their own parameters whose non-zero values clip more than
        ``reset_clipped`` of the time get the step that covers their largest value."""
        bits = torch.round(self.bits[ids].clamp(self.min_bits, self.max_bits))  # [n]
        qmin, qmax = signed_grid(bits)
        step = self.log_step[ids].exp().clamp(min=_MIN_STEP)
        reach_codes = torch.round(max_abs / step)
        candidates = (own & (max_abs > 0) & (reach_codes > torch.minimum(-qmin, qmax))).nonzero()
        if candidates.numel() == 0:  # no row clips at all: the common case, one pass over [n]
            return
        candidates = candidates.squeeze(1)
        x = rows[candidates]  # [m, c]
        k = torch.round(x / step[candidates].unsqueeze(1))
        clipped = ((k > qmax[candidates].unsqueeze(1)) | (k < qmin[candidates].unsqueeze(1))).sum(1)
        reset = candidates[clipped > self.reset_clipped * (x != 0).sum(dim=1)]
        if reset.numel():
            reach = qmax[reset].clamp(min=1.0)  # 1 bit: the grid {-s, 0}
            self.log_step[ids[reset]] = torch.log(max_abs[reset] / reach)
            self._record(ids[reset])

    def _record(self, ids: Tensor) -> None:
        if _distributed():  # alone, nothing to share: keep nothing
            self._written.append(ids)

    @torch.no_grad()
    def share_writes(self) -> None:
        """Make every rank's writes since the last call every rank's (a collective: call it
        on every rank of a distributed run, after each optimizer step).

        Training sets table rows in place, outside the gradient: a row first seen (its
        initial step and bits) and a row whose step is reset, each from the rank's own
        batch; the pool from the first batch. DDP keeps parameters equal across ranks only
        through their gradients, so without this the ranks' tables drift apart (a row one
        rank set keeps its zero start on the others). The rows each rank set are applied on
        every rank with their current values, in rank order (a row two ranks set takes the
        last rank's), and the pool from the lowest rank that set it."""
        ids = torch.cat(self._written) if self._written else self.log_step.new_zeros(0).long()
        pool_set, self._written, self._pool_set = self._pool_set, [], False
        if not _distributed():
            return
        world, device = dist.get_world_size(), self.log_step.device
        ids = torch.unique(ids).to(device)
        rows = torch.stack([ids.double(), self.log_step[ids].double(), self.bits[ids].double()], 1)
        facts = torch.tensor([rows.shape[0], int(pool_set)], device=device)
        every_facts = [torch.empty_like(facts) for _ in range(world)]
        dist.all_gather(every_facts, facts)
        longest = max(int(f[0]) for f in every_facts)
        if longest:
            padded = rows.new_zeros((longest, 3))
            padded[: rows.shape[0]] = rows
            every_rows = [torch.empty_like(padded) for _ in range(world)]
            dist.all_gather(every_rows, padded)
            for f, got in zip(every_facts, every_rows, strict=True):
                got = got[: int(f[0])]
                written = got[:, 0].long()
                self.log_step[written] = got[:, 1].to(self.log_step.dtype)
                self.bits[written] = got[:, 2].to(self.bits.dtype)
                self.initialized[written] = True
        setters = [r for r, f in enumerate(every_facts) if int(f[1])]
        if setters:
            for tensor in (self.pool_log_step, self.pool_bits, self.pool_initialized):
                dist.broadcast(tensor.data, setters[0])

    @torch.no_grad()
    def _initialize(self, max_abs: Tensor, ids: Tensor) -> None:
        # A row of zeros has no scale to start from (and quantizes exactly with any step):
        # it stays without parameters, on the pool, until it first carries a value.
        qmax = 2.0 ** (self.init_bits - 1) - 1 if self.init_bits > 1 else 1.0
        new = (ids >= 0) & (max_abs > 0)
        new[new.clone()] = ~self.initialized[ids[new]]
        if new.any():
            self.log_step[ids[new]] = torch.log(max_abs[new] / qmax)
            self.bits[ids[new]] = float(self.init_bits)
            self.initialized[ids[new]] = True
            self._record(ids[new])
        positive = max_abs[max_abs > 0]
        if not bool(self.pool_initialized) and positive.numel() > 0:
            levels = torch.linspace(0.0, 1.0, self.pool_log_step.numel(), device=max_abs.device)
            if positive.numel() > _QUANTILE_MAX_NUMEL:
                positive = positive[torch.randperm(positive.numel())[:_QUANTILE_MAX_NUMEL]]
            reach = torch.quantile(positive.float(), levels)
            self.pool_log_step.copy_(torch.log(reach / 2.0 ** (self.init_bits - 1)))
            self.pool_bits.fill_(float(self.init_bits))
            self.pool_initialized.fill_(True)
            self._pool_set = _distributed()

    def _learned_bits(self) -> Tensor:
        """Rounded-with-STE bits of the rows with parameters of their own (``[0]`` if none);
        without a table (graph level, every node on the pool) those of the pool entries."""
        if self.num_nodes == 0:
            if not bool(self.pool_initialized):
                return self.pool_bits[:0]
            return _round_ste(self.pool_bits.clamp(self.min_bits, self.max_bits))
        return _round_ste(self.bits[self.initialized].clamp(self.min_bits, self.max_bits))

    def regularization(self) -> Tensor | None:
        """:math:`\\lambda n \\operatorname{relu}(\\bar b - B)^2`, or ``None`` when off."""
        bits = self._learned_bits()
        if self.penalty == 0 or bits.numel() == 0:
            return None
        return self.penalty * bits.numel() * torch.relu(bits.mean() - self.memory_budget) ** 2

    def average_bits(self) -> float:
        """Mean rounded bit width of the nodes with parameters, or of the pool without a
        table (``init_bits`` before any)."""
        bits = self._learned_bits()
        return float(bits.detach().mean()) if bits.numel() else float(self.init_bits)

    def extra_repr(self) -> str:
        return (
            f"num_nodes={self.num_nodes}, bits=[{self.min_bits}, {self.max_bits}], "
            f"budget={self.memory_budget}, pool_size={self.pool_log_step.numel()}"
        )


class A2QWeightQuantizer(Quantizer):
    """A2Q for a weight ``[out, in]``: a learned ``(step, bits)`` pair per output channel.

    Steps start at ``max|W_o| / (2^(b-1) - 1)`` of the weight the quantizer is built for.
    With ``fixed_bits`` the bit width is a buffer (not learned) and no penalty applies.

    Args:
        weight: the weight this quantizer serves (for its shape and the initial steps).
        init_bits: starting (or, with ``fixed_bits``, constant) bit width.
        min_bits: smallest bit width.
        max_bits: largest bit width.
        memory_budget: target mean bit width.
        penalty: weight of the memory penalty.
        fixed_bits: keep the bit width at ``init_bits``.
    """

    def __init__(
        self,
        weight: Tensor,
        init_bits: int,
        min_bits: int,
        max_bits: int,
        memory_budget: float,
        penalty: float,
        fixed_bits: bool,
    ) -> None:
        super().__init__()
        self.min_bits, self.max_bits = min_bits, max_bits
        self.memory_budget, self.penalty = memory_budget, penalty
        rows = weight.detach().reshape(weight.shape[0], -1)
        qmax = 2.0 ** (init_bits - 1) - 1 if init_bits > 1 else 1.0
        step = (rows.abs().amax(dim=1) / qmax).clamp(min=_MIN_STEP)
        self.log_step = nn.Parameter(torch.log(step))
        bits = torch.full((weight.shape[0],), float(init_bits))
        if fixed_bits:
            self.register_buffer("bits", bits)
        else:
            self.bits = nn.Parameter(bits)

    def forward(self, x: Tensor, nodes: NodeInfo | None = None) -> Tensor:
        rows = x.reshape(x.shape[0], -1)
        if rows.shape[0] != self.log_step.numel():
            raise ValueError(
                f"A2QWeightQuantizer was built for {self.log_step.numel()} output channels "
                f"but got a weight with {rows.shape[0]}."
            )
        if self.training and isinstance(self.bits, nn.Parameter):
            with torch.no_grad():
                self.bits.clamp_(self.min_bits, self.max_bits)
        bits = self.bits.clamp(self.min_bits, self.max_bits)
        out = A2QFakeQuantize.apply(rows, self.log_step.exp(), bits, None, None)
        return out.reshape(x.shape)

    def regularization(self) -> Tensor | None:
        """The memory penalty on the channels' mean bit width (learned bits only)."""
        if self.penalty == 0 or not isinstance(self.bits, nn.Parameter):
            return None
        bits = _round_ste(self.bits.clamp(self.min_bits, self.max_bits))
        return self.penalty * bits.numel() * torch.relu(bits.mean() - self.memory_budget) ** 2

    def average_bits(self) -> float:
        return float(torch.round(self.bits.detach().clamp(self.min_bits, self.max_bits)).mean())

    def extra_repr(self) -> str:
        return (
            f"channels={self.log_step.numel()}, learned_bits={isinstance(self.bits, nn.Parameter)}"
        )


@register_scheme("a2q", A2QConfig)
def _build_a2q_quantizer(
    config: A2QConfig, module: nn.Module, point: str, role: str, context: QuantizeContext
) -> Quantizer:
    """A per-node table for node points, a per-channel pair for weights."""
    if role == NODE:
        if context.num_nodes is None:
            raise ConfigError(
                "A2Q keeps a (step, bits) pair per node, keyed by global node ID, so it needs "
                "the number of nodes of the full graph: call quantize_(model, A2QConfig(...), "
                "num_nodes=N)."
            )
        return A2QNodeQuantizer(
            num_nodes=context.num_nodes,
            init_bits=config.init_bits,
            min_bits=config.min_bits,
            max_bits=config.max_bits,
            memory_budget=config.memory_budget,
            penalty=config.penalty,
            pool_size=config.pool_size,
            reset_clipped=config.reset_clipped,
        )
    if role == WEIGHT:
        weight = getattr(module, point, None)
        if not isinstance(weight, Tensor):
            raise ConfigError(
                f"A2Q sizes a weight point's per-channel steps from the weight, but "
                f"{type(module).__name__}.{point} is not a tensor; name the weight's "
                "quantization point after the weight attribute."
            )
        fixed = config.weight_bits is not None  # fixed bits: no penalty, nothing to learn
        return A2QWeightQuantizer(
            weight,
            init_bits=config.weight_bits if fixed else config.init_bits,
            min_bits=config.weight_bits if fixed else config.min_bits,
            max_bits=config.weight_bits if fixed else config.max_bits,
            memory_budget=config.memory_budget,
            penalty=0.0 if fixed else config.penalty,
            fixed_bits=fixed,
        )
    raise unsupported_role("a2q", module, point, role)
