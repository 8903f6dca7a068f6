"""LoRAP's CPU path in pure torch: the prompted sum, the forward and the closed-form backward
that the ops of :mod:`.lorap_fused` and :mod:`.aggregate_lorap` run on the tensors the Triton
kernels do not take (CPU tensors, and rows wider than
:data:`~.lorap_kernels.MAX_TRITON_WIDTH`; see :func:`~.lorap_kernels.takes_triton`).

The forward keeps the softmax weights and the straight-through mask for the backward (only
when one can follow) and reuses the prompted sum a range pass computed, so a CPU training
step through the ops does less work than the unfused torch operations. The forward's values
are those of :func:`~.lorap_fused.lorap_reference`, the differentiable test oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lorap_checks import Prompt, check_inputs, out_dtype
from .quant_grid import QuantGrid, codes_dtype

__all__ = [
    "has_rows",
    "lorap_backward_cpu",
    "lorap_forward_cpu",
    "no_residuals",
    "prompted_reference",
]


def _dequantize(h: Tensor, in_scale: Tensor | None) -> Tensor:
    if in_scale is None:
        return h.float()
    s = in_scale.reshape(-1, 1) if in_scale.numel() > 1 else in_scale.reshape(1, 1)
    return h.float() * s


def prompted_reference(
    h: Tensor, prompt: Prompt, in_scale: Tensor | None, with_weights: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """``y = h + softmax(h W_phi) P_A P_B`` in fp32, with the operations (and so the values)
    of :func:`lorap_dist.prompt.lorap_prompt` on fp32 inputs; ``(y, w)`` with the softmax
    weights ``w`` when ``with_weights``."""
    hf = _dequantize(h, in_scale)
    w = torch.softmax(hf @ prompt.w_phi.float(), dim=1)
    y = hf + (w @ prompt.p_a.float()) @ prompt.p_b.float()
    return (y, w) if with_weights else y


def lorap_backward_cpu(
    grad_out: Tensor,
    h: Tensor,
    prompt: Prompt,
    in_scale: Tensor | None,
    grid: QuantGrid,
    saved_w: Tensor | None = None,
    saved_mask: Tensor | None = None,
    need_grad_h: bool = True,
) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    """Closed-form backward of :mod:`.lorap_kernels`' docstring, in pure torch (the CPU
    backward), for the output ``grid``.

    With the forward's softmax weights ``saved_w`` and straight-through mask ``saved_mask``
    (what :func:`lorap_forward_cpu` keeps) the forward is not recomputed; without them it is.
    ``grad_h`` is ``None`` when not ``need_grad_h``.
    """
    hf = _dequantize(h, in_scale)
    w_phi, p_a, p_b = prompt
    wf, af, bf = w_phi.float(), p_a.float(), p_b.float()
    if has_rows(saved_w) and has_rows(saved_mask):
        w, mask = saved_w, saved_mask
        t = w @ af
    else:
        w = torch.softmax(hf @ wf, dim=1)
        t = w @ af
        y = hf + t @ bf
        _, inv, zp = grid.values(h.device)
        c = torch.round(y * inv) + zp
        mask = (c >= grid.qmin) & (c <= grid.qmax)
    g_y = grad_out.float() * mask
    g_t = g_y @ bf.T
    g_w = g_t @ af.T
    g_l = w * (g_w - (w * g_w).sum(dim=1, keepdim=True))
    g_h = torch.addmm(g_y, g_l, wf.T).to(out_dtype(h)) if need_grad_h else None
    # The weight gradients as (narrow^T @ wide)^T: ``hf.T @ g_l`` ([d, N] @ [N, k]) runs 12x
    # slower on CPU than ``(g_l.T @ hf).T`` at N = 100k, d = 64, k = 8.
    return (
        g_h,
        (g_l.T @ hf).T.contiguous().to(w_phi.dtype),
        (w.T @ g_t).to(p_a.dtype),
        (t.T @ g_y).to(p_b.dtype),
    )


def has_rows(t: Tensor | None) -> bool:
    """Whether a residual was passed and kept (``None`` and 0 rows mean: recompute it)."""
    return t is not None and t.shape[0] > 0


def no_residuals(h: Tensor, w_phi: Tensor) -> tuple[Tensor, Tensor]:
    """The 0-row ``saved_w`` and ``saved_mask``: what the ops return when nothing is kept for
    the backward (the Triton path, or a forward no backward follows)."""
    return (
        h.new_empty((0, w_phi.shape[1]), dtype=torch.float32),
        h.new_empty((0, h.shape[1]), dtype=torch.bool),
    )


@torch.no_grad()
def lorap_forward_cpu(
    h: Tensor,
    prompt: Prompt,
    in_scale: Tensor | None,
    grid: QuantGrid,
    saved_y: Tensor | None = None,
    saved_w: Tensor | None = None,
    keep_residuals: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The values of :func:`~.lorap_fused.lorap_reference` without its autograd graph: the
    CPU forward, on the output ``grid``.

    Returns ``(codes, out, w, mask)``: the softmax weights and the straight-through mask are
    kept for the backward. ``saved_y`` and ``saved_w`` from the CPU range pass
    (:func:`~.lorap_fused.lorap_range`) are used instead of computing ``y`` and ``w`` again.
    The codes are rounded once and the output is read back from them, the operations
    ``fake_quantize_per_tensor_affine`` performs, so ``out`` is bit-identical to it while the
    rounding pass is not done twice (fake-quantizing ``y`` and then rounding it again for the
    codes cost 1.6x the forward on a 100k x 64 aggregate).
    """
    check_inputs(h, prompt, in_scale, grid)
    qmin, qmax = grid.qmin, grid.qmax
    grid_scale, inv, zp = grid.values(h.device)
    if has_rows(saved_y) and has_rows(saved_w):
        n, k = h.shape[0], prompt.w_phi.shape[1]
        if saved_y.shape != h.shape or tuple(saved_w.shape) != (n, k):
            raise ValueError(
                f"saved_y {tuple(saved_y.shape)} and saved_w {tuple(saved_w.shape)} must be "
                f"[N, d] = {tuple(h.shape)} and [N, k] = {(n, k)}: pass what lorap_range "
                "returned for this h and these parameters."
            )
        y, w = saved_y * inv, saved_w.clone()  # outputs may not alias inputs
    else:
        y, w = prompted_reference(h, prompt, in_scale, with_weights=True)
        y.mul_(inv)
    codes = torch.round(y).add_(zp)
    if keep_residuals:
        clamped = codes.clamp(qmin, qmax)
        mask = clamped == codes  # inside [qmin, qmax]: the straight-through mask
        codes = clamped
    else:  # no backward follows: clamp in place, keep nothing
        codes.clamp_(qmin, qmax)
        w, mask = no_residuals(h, prompt.w_phi)
    out = (codes - zp).mul_(grid_scale)
    return codes.to(codes_dtype(qmin, qmax)), out.to(out_dtype(h)), w, mask
