r"""Sum and mean aggregation on the CPU as one CSR sparse-dense matmul.

PyG's ``propagate`` gathers one message row per edge (an ``E x d`` tensor) and scatters it
onto the destinations. On the CPU the same sums come from one matmul with the adjacency
held as a CSR matrix, without the ``E x d`` messages:

.. math::

    \mathbf{h} = \mathbf{A} \mathbf{x}, \qquad
    \frac{\partial L}{\partial \mathbf{x}} = \mathbf{A}^\top \frac{\partial L}{\partial \mathbf{h}}

with :math:`A_{ij} = 1` for each edge ``j -> i`` (``[num_dst, num_src]``), and the mean
dividing by the in-degree clamped at 1, as PyG's ``scatter`` does. Each destination's row
sums its sources in edge order, and the backward's :math:`\mathbf{A}^\top` is a CSR matrix
whose rows (sources) keep edge order too, so on one thread values and gradients are those
of PyG's gather-then-scatter bit for bit (tested against PyG; with several threads either
side may split a long row's sum, and they agree to rounding). That holds for rows of at least
:data:`MIN_WIDTH` values: for narrower rows whose width is a multiple of 4 PyTorch's CSR
kernel accumulates in another order (values differ in the last bit), and narrow rows gain
little anyway, so they go through PyG. The two CSR matrices are
built once per ``edge_index`` tensor and remembered while it is alive and unchanged (a
full-graph run passes the same one every step).

SAGE and GIN also read their destinations' own rows ``x[:num_dst]`` (the root term). On a
sampled block, :meth:`CSRAggregation.with_root` hands them out with the aggregate (a copy;
on a full graph, where they are all of ``x``, the layer slices as before) and adds their
gradient into the matmul's in place, where autograd would fill a zero ``[num_src, d]``
gradient for the slice and add the two: the same sums, two fewer passes over the step's
largest tensor (5-10% of a sampled 3-layer SAGE step on one core, ``step_floor``).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any

import torch
from torch import Tensor

from lorap_dist.graph.csr import csr_from_edge_index

#: Narrowest rows aggregated by CSR matmul (narrower ones go through PyG's scatter).
MIN_WIDTH = 32


class _Adjacency:
    """The CSR matrix of one ``edge_index`` (``[num_dst, num_src]``), its transpose (built
    the first time a gradient needs it) and the in-degrees clamped at 1 (``[num_dst, 1]``)."""

    def __init__(self, edge_index: Tensor, num_src: int, num_dst: int, dtype: torch.dtype):
        self.edge_index, self.num_src, self.dtype = edge_index, num_src, dtype
        self.forward = _csr(edge_index, num_dst, num_src, dtype)
        self.degree = self.forward.crow_indices().diff().clamp(min=1).to(dtype).unsqueeze(1)
        self._transpose: Tensor | None = None

    def transpose(self) -> Tensor:
        if self._transpose is None:
            rows, cols = self.forward.shape
            self._transpose = _csr(self.edge_index.flip(0), cols, rows, self.dtype)
        return self._transpose


class _Matmul(torch.autograd.Function):
    """``adjacency.forward @ x`` with the gradient ``adjacency.transpose() @ grad``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, adjacency: _Adjacency) -> Tensor:
        ctx.adjacency = adjacency
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            return adjacency.forward @ x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            return ctx.adjacency.transpose() @ grad.contiguous(), None


class _MatmulWithRoot(torch.autograd.Function):
    """``(adjacency.forward @ x, x[:num_dst])``, the aggregate and the destinations' own rows
    (a copy), with one backward for both: ``adjacency.transpose() @ grad`` with the root's
    gradient added to its first ``num_dst`` rows in place. Autograd would otherwise fill a
    zero ``[num_src, d]`` gradient for the slice and add it to the matmul's, two more passes
    over the largest tensor of the step; the sums are the same (an fp32 add of zero changes
    nothing)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, adjacency: _Adjacency, num_dst: int) -> tuple[Tensor, Tensor]:
        ctx.adjacency, ctx.num_dst = adjacency, num_dst
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            return adjacency.forward @ x, x[:num_dst].clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor, grad_root: Tensor) -> tuple[Tensor, None, None]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            out = ctx.adjacency.transpose() @ grad.contiguous()
        out[: ctx.num_dst] += grad_root
        return out, None, None


def _csr(edge_index: Tensor, rows: int, cols: int, dtype: torch.dtype) -> Tensor:
    """Sparse CSR ``[rows, cols]`` with a one at ``(edge_index[1], edge_index[0])``; each
    row's entries in edge order."""
    csr = csr_from_edge_index(edge_index, max(rows, cols), torch.int64)
    ones = torch.ones(csr.indices.numel(), dtype=dtype, device=edge_index.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            csr.indptr[: rows + 1], csr.indices, ones, size=(rows, cols), check_invariants=False
        )


class CSRAggregation:
    """Sum or mean aggregation of ``x``'s rows along ``edge_index`` by CSR matmul, for the
    CPU; it remembers the adjacency of the ``edge_index`` it saw last.

    Calling it returns ``[num_dst, d]``, or ``None`` where the matmul does not apply (a
    tensor off the CPU, not floating point, narrower than :data:`MIN_WIDTH`, or without
    edges): the caller then aggregates as before. :meth:`csr` hands out the remembered
    adjacency's CSR arrays, on any device, for aggregations of their own (the fused
    aggregation of integer rows). Not saved or copied with its module.
    """

    def __init__(self) -> None:
        self._seen: tuple[Any, int, tuple[int, int], torch.dtype, _Adjacency] | None = None

    def __call__(self, x: Tensor, edge_index: Tensor, num_dst: int, reduce: str) -> Tensor | None:
        if not self.applies(x, edge_index, reduce):
            return None
        adjacency = self._adjacency(edge_index, x.size(0), num_dst, x.dtype)
        out = _Matmul.apply(x.contiguous(), adjacency)
        return out if reduce == "sum" else out / adjacency.degree

    def with_root(
        self, x: Tensor, edge_index: Tensor, num_dst: int, reduce: str
    ) -> tuple[Tensor, Tensor] | None:
        """``(aggregate, x[:num_dst])`` as :meth:`__call__` and slicing give them (the root
        rows a copy), with the two gradients into ``x`` summed in one pass
        (:class:`_MatmulWithRoot`); ``None`` where the matmul does not apply, or where the
        root is all of ``x`` (a full graph), whose copy would cost more memory than the pass
        saves."""
        if num_dst >= x.size(0) or not self.applies(x, edge_index, reduce):
            return None
        adjacency = self._adjacency(edge_index, x.size(0), num_dst, x.dtype)
        out, root = _MatmulWithRoot.apply(x.contiguous(), adjacency, num_dst)
        return (out if reduce == "sum" else out / adjacency.degree), root

    @staticmethod
    def applies(x: Tensor, edge_index: Tensor, reduce: str) -> bool:
        """Whether the CSR matmul aggregates ``x``: on the CPU, floating point, 2-D, at
        least :data:`MIN_WIDTH` wide, with edges."""
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce={reduce!r}; CSRAggregation sums or averages.")
        return (
            x.device.type == "cpu"
            and x.is_floating_point()
            and x.dim() == 2
            and x.size(1) >= MIN_WIDTH
            and edge_index.numel() > 0
        )

    def csr(self, edge_index: Tensor, num_src: int, num_dst: int) -> tuple[Tensor, Tensor]:
        """``(indptr [num_dst + 1], indices [E])``, int64: the sources of each destination's
        in-edges, in edge order (the adjacency :meth:`__call__` multiplies by)."""
        adjacency = self._adjacency(edge_index, num_src, num_dst, torch.float32)
        return adjacency.forward.crow_indices(), adjacency.forward.col_indices()

    def _adjacency(
        self, edge_index: Tensor, num_src: int, num_dst: int, dtype: torch.dtype
    ) -> _Adjacency:
        key = (num_src, num_dst)
        if self._seen is not None:
            ref, version, seen_key, seen_dtype, adjacency = self._seen
            if (ref() is edge_index and version == edge_index._version and seen_key == key
                    and seen_dtype == dtype):  # fmt: skip
                return adjacency
        if edge_index.numel() and (
            int(edge_index[0].max()) >= num_src or int(edge_index[1].max()) >= num_dst
        ):
            raise ValueError(
                f"edge_index points outside the layer's input: sources must be below "
                f"{num_src} (rows of x) and destinations below {num_dst}."
            )
        adjacency = _Adjacency(edge_index, num_src, num_dst, dtype)
        self._seen = (weakref.ref(edge_index), edge_index._version, key, dtype, adjacency)
        return adjacency

    def __getstate__(self) -> dict[str, Any]:
        return {"_seen": None}

    def __deepcopy__(self, memo: dict[int, Any]) -> CSRAggregation:
        return CSRAggregation()
