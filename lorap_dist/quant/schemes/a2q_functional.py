r"""A2Q's row-wise fake quantization and the local gradients its steps and bits learn from,
as plain functions (the quantizer modules are in :mod:`lorap_dist.quant.schemes.a2q`).

The output passes a straight-through gradient to :math:`x`, masked to the clip range. The
quantizer's own parameters do *not* follow the task loss: they receive the
gradient of the local L1 error :math:`E = \sum_{i,c} |x_{ic} - Q(x_{ic})|` (the error of
each row depends only on that row's parameters). The custom autograd function
:class:`A2QFakeQuantize` returns :math:`\partial E / \partial s_i` and
:math:`\partial E / \partial b_i` from its backward in place of the chain rule, so
``loss.backward()`` on the task loss puts them in ``.grad`` and the model's optimizer
steps them with everything else. With :math:`e = x - Q(x)`,
:math:`k = \operatorname{round}(x / s)` and :math:`q_{\max} = 2^{b-1}-1`,
:math:`q_{\min} = -2^{b-1}`:

.. math::

    \frac{\partial E}{\partial s_i} = -\sum_c \operatorname{sign}(e_{ic})
    \begin{cases} k_{ic} - x_{ic}/s_i & q_{\min} \le k_{ic} \le q_{\max} \\
    q_{\max} & k_{ic} > q_{\max} \\ q_{\min} & k_{ic} < q_{\min} \end{cases}
    \qquad
    \frac{\partial E}{\partial b_i} = -\sum_c \operatorname{sign}(e_{ic})
    \begin{cases} 0 & q_{\min} \le k_{ic} \le q_{\max} \\
    s_i 2^{b_i-1} \ln 2 & k_{ic} > q_{\max} \\ -s_i 2^{b_i-1} \ln 2 & k_{ic} < q_{\min}
    \end{cases}

These are the exact derivatives of the surrogate
:math:`\tilde E(s, b) = \sum |x - s \operatorname{clip}(x/s + \delta, -2^{b-1}, 2^{b-1}-1)|`
with the rounding residual :math:`\delta = \operatorname{round}(x/s) - x/s` held fixed
(the straight-through estimator of ``round``, as in LSQ) and :math:`b` continuous in the clip
bounds (the straight-through estimator of the rounding of :math:`b`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lorap_dist.quant.fake_quant import SPARSE_SHARE

_LN2 = math.log(2.0)


def signed_grid(bits: Tensor) -> tuple[Tensor, Tensor]:
    """``(qmin, qmax) = (-2^(b-1), 2^(b-1) - 1)`` of integer-valued ``bits``."""
    half = torch.exp2(bits - 1)
    return -half, half - 1


def a2q_reference(x: Tensor, step: Tensor, bits: Tensor) -> Tensor:
    """``s * clip(round(x / s), -2^(b-1), 2^(b-1) - 1)`` per row, ``b`` rounded (no autograd
    rules; the test oracle and the value of :class:`A2QFakeQuantize`).

    Shapes:
        ``x [n, c]``, ``step [n]``, ``bits [n]`` -> ``[n, c]``.
    """
    qmin, qmax = signed_grid(torch.round(bits).unsqueeze(1))
    s = step.unsqueeze(1)
    return torch.minimum(torch.maximum(torch.round(x / s), qmin), qmax) * s


def local_error_gradients(x: Tensor, step: Tensor, bits: Tensor) -> tuple[Tensor, Tensor]:
    """``(dE/ds, dE/db)`` per row of the L1 error ``E = sum |x - Q(x)|`` (formulas in the
    module docstring; ``b`` rounded, the gradient taken as for continuous ``b``).

    A zero entry quantizes exactly and adds nothing, so a mostly-zero ``x`` (bag-of-words
    features) is summed over its non-zero entries only.

    Shapes:
        ``x [n, c]``, ``step [n]``, ``bits [n]`` -> ``[n]``, ``[n]``.
    """
    if x.numel() and x.count_nonzero() < SPARSE_SHARE * x.numel():
        rows, cols = x.nonzero(as_tuple=True)
        ds, db = _error_terms(x[rows, cols], step[rows], bits[rows])
        zeros = torch.zeros_like(step)
        return zeros.index_add(0, rows, ds), zeros.index_add(0, rows, db)
    ds, db = _error_terms(x, step.unsqueeze(1), bits.unsqueeze(1))
    return ds.sum(dim=1), db.sum(dim=1)


def _error_terms(x: Tensor, s: Tensor, bits: Tensor) -> tuple[Tensor, Tensor]:
    """Each entry's terms of ``dE/ds`` and ``dE/db`` (``s`` and ``bits`` broadcast to ``x``).

    With ``u = x / s`` and ``k = round(u)``, ``-sign(x - Q) dQ/ds`` is ``|u - k|`` inside the
    grid, ``-qmax`` above it and ``qmin`` below it (there ``x - Q`` has the sign of the side);
    ``-sign(x - Q) dQ/db`` is ``-2^(b-1) s ln 2`` on either side outside and 0 inside.
    """
    b = torch.round(bits)
    qmin, qmax = signed_grid(b)
    u = x / s
    k = torch.round(u)
    above, below = k > qmax, k < qmin
    ds = torch.where(above, -qmax, torch.where(below, qmin, (u - k).abs_()))
    db = (above | below) * (-_LN2 * s * torch.exp2(b - 1))
    return ds, db


def row_error_gradients(
    x: Tensor, step: Tensor, bits: Tensor, with_output: bool = True
) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """``(output, inside, dE/ds, dE/db)`` of quantizing each row of ``x`` with its
    ``(step, bits)``: the output, ``1.0`` where an entry is inside the grid and ``0.0`` where
    it clips, and the local gradients, in one pass.

    The same values as :func:`a2q_reference` and :func:`local_error_gradients` (their sums
    in another order): inside the grid an entry adds ``|u - k|`` to ``dE/ds`` and nothing to
    ``dE/db``; every entry above adds ``-qmax`` and every one below ``qmin`` to ``dE/ds``,
    and each of them ``-2^(b-1) s ln 2`` to ``dE/db``, so the outside counts per row give
    both sums. The masks are floats: on the CPU, comparisons into a float tensor and
    multiplying by it are several times faster than boolean masks and ``masked_fill``.

    Shapes:
        ``x [n, c]``, ``step [n]``, ``bits [n]`` -> ``[n, c]``, ``[n, c]``, ``[n]``, ``[n]``.
    """
    b = torch.round(bits)
    qmin, qmax = signed_grid(b.unsqueeze(1))
    s = step.unsqueeze(1)
    u = x / s
    k = torch.round(u)
    clipped_k = torch.minimum(k, qmax).clamp_(min=qmin)  # a broadcast clamp is slower
    out = clipped_k * s if with_output else None  # the probe's output is not used
    inside = torch.eq(k, clipped_k, out=torch.empty_like(u))
    inside_error = u.sub_(k).abs_().mul_(inside).sum(dim=1)
    n_outside = x.shape[1] - inside.sum(dim=1)
    n_above = torch.gt(k, qmax, out=clipped_k).sum(dim=1)
    n_below = n_outside - n_above
    ds = inside_error - qmax.squeeze(1) * n_above + qmin.squeeze(1) * n_below
    db = n_outside * (-_LN2 * step * torch.exp2(b - 1))
    return out, inside, ds, db


class A2QFakeQuantize(torch.autograd.Function):
    r"""Row-wise A2Q fake quantization whose step and bits get the local L1-error gradient.

    Forward: :func:`a2q_reference` with ``(step, bits)``. Backward: ``x`` gets the upstream
    gradient masked to the clip range (straight-through); ``step`` and ``bits`` get
    :func:`local_error_gradients` (the upstream gradient is not used for them); the optional
    probe pair ``(probe_step, probe_bits)`` gets the local gradient of quantizing each row
    with it, without taking part in the output (this is how the NNS pool learns).

    The local gradients do not depend on the upstream gradient, so the forward takes them
    as per-row sums (:func:`row_error_gradients`) while it has ``x / s`` at hand, and only
    those and the clip mask are kept for the backward, not ``x``.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        step: Tensor,
        bits: Tensor,
        probe_step: Tensor | None,
        probe_bits: Tensor | None,
    ) -> Tensor:
        needs = ctx.needs_input_grad
        inside, local, probe = None, (None, None), (None, None)
        if needs[0] or needs[1] or needs[2]:
            out, inside, *local = row_error_gradients(x, step, bits)
        else:
            out = a2q_reference(x, step, bits)
        if probe_step is not None and (needs[3] or needs[4]):
            _, _, *probe = row_error_gradients(x, probe_step, probe_bits, with_output=False)
        ctx.save_for_backward(inside, *local, *probe)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple:
        inside, *local = ctx.saved_tensors
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        needed = ctx.needs_input_grad[1:]
        return grad_x, *(g if need else None for g, need in zip(local, needed, strict=True))


def nearest_pool_entry(max_abs: Tensor, step: Tensor, bits: Tensor) -> Tensor:
    """Index of the pool pair minimising ``(max_abs - 2^(b-1) * s)^2`` for each row.

    Ties go to the pair with the smaller reach ``2^(b-1) * s``.

    Shapes:
        ``max_abs [n]``, pool ``step [m]``, ``bits [m]`` -> ``[n]`` long.
    """
    reach = torch.exp2(torch.round(bits) - 1) * step  # [m]
    order = torch.argsort(reach)
    sorted_reach = reach[order]
    if reach.numel() == 1:
        return torch.zeros_like(max_abs, dtype=torch.long)
    right = torch.searchsorted(sorted_reach, max_abs).clamp(1, reach.numel() - 1)
    left = right - 1
    take_right = (sorted_reach[right] - max_abs) < (max_abs - sorted_reach[left])
    return order[torch.where(take_right, right, left)]
