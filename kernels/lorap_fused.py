"""Fused LoRAP prompt injection: softmax-weighted low-rank prompt, add, re-quantize.

LoRAP (Low-Rank Aggregation Prompting, arXiv 2601.15079) adds a learned, input-dependent
prompt to a quantized aggregate and re-quantizes the sum. Unfused this is six kernels
(GEMM, softmax, GEMM, GEMM, add, fake-quantize), each writing an ``N x d`` or ``N x k``
intermediate; fused, every row block reads ``h`` once and writes the codes and the
dequantized values once::

    h     = h  (float)  or  codes_in * s_in  (int8, s_in per tensor [1] or per row [N])
    y     = h + softmax(h @ W_phi, dim=1) @ P_A @ P_B
    codes = clamp(rint(y / scale) + zero_point, qmin, qmax)
    out   = (codes - zero_point) * scale = fake_quantize_per_tensor_affine(y, ...)

The gradient is the straight-through estimator's. The kernels, with the forward, range-pass
and backward formulas, are in :mod:`.lorap_kernels` (shared with :mod:`.aggregate_lorap`);
CPU tensors take the pure-torch path of :mod:`.lorap_cpu`, which keeps the softmax weights
and the straight-through mask from its forward for its backward. The checks every path runs
are in :mod:`.lorap_checks`.

Conventions:

- codes are stored as ``int8`` when ``[qmin, qmax]`` fits in ``[-128, 127]``, ``uint8`` when
  it fits in ``[0, 255]`` and ``int32`` otherwise (:func:`~.quant_grid.codes_dtype`);
- ``out`` has ``h``'s dtype for float ``h`` and ``float32`` for ``int8`` ``h``; gradients have
  the dtype of the tensor they belong to (``float32`` for the dequantized ``int8`` ``h``);
- an ``int8`` input is dequantized symmetrically (no zero point): ``h = codes_in * s_in``.

Entry points: :func:`lorap_forward` (what :mod:`lorap_dist.prompt.lorap` calls), the op
``torch.ops.lorap_dist.lorap_fused`` (:func:`lorap_fused`, returns ``(out, codes)`` and the
residuals its backward reads) and its backward op ``torch.ops.lorap_dist.lorap_fused_backward``,
the range op ``torch.ops.lorap_dist.lorap_range`` (:func:`lorap_range`), the pure-torch
:func:`lorap_reference` / :func:`lorap_range_reference` (the test oracles), and the checked
launchers :func:`lorap_fused_triton` / :func:`lorap_fused_backward_triton` /
:func:`lorap_range_triton`, which also run on CPU tensors under ``TRITON_INTERPRET=1``
(tests). CUDA tensors take the Triton kernels, CPU tensors the pure-torch path, unless
:func:`~._triton.triton_on_cpu` is active.

The ops take the output grid (``scale``, ``zero_point``) as one-element device tensors and
the kernels read it from memory (with ``1 / scale`` computed on the device by the same fp32
division): an observer's freshly updated range never has to reach the host, so a training
step has no host sync here and ``torch.compile`` traces the op without a graph break. The
launchers and :func:`lorap_forward` also accept Python numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .lorap_checks import Prompt, check_inputs, check_operands, check_range_inputs, out_dtype
from .lorap_cpu import lorap_backward_cpu, lorap_forward_cpu, no_residuals, prompted_reference
from .lorap_kernels import launch_backward, launch_forward, launch_range, takes_triton
from .quant_grid import QuantGrid, codes_dtype, grid_tensors, inv_scale

__all__ = [
    "lorap_forward",
    "lorap_fused",
    "lorap_fused_backward",
    "lorap_fused_backward_triton",
    "lorap_fused_triton",
    "lorap_range",
    "lorap_range_reference",
    "lorap_range_triton",
    "lorap_reference",
]


# ----------------------------------------------------------------------------------------
# The pure-torch references (the test oracles).
# ----------------------------------------------------------------------------------------


def lorap_reference(
    h: Tensor, prompt: Prompt, grid: QuantGrid, in_scale: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Pure-torch LoRAP forward, the test oracle (the op's CPU path is the tuned
    :func:`~lorap_dist.kernels.lorap_cpu.lorap_forward_cpu`, checked against it).

    Same formulas and conventions as the module docstring; differentiable (autograd through
    ``torch.fake_quantize_per_tensor_affine`` gives the straight-through gradient).

    Args:
        h: ``[N, d]`` float aggregate, or ``int8`` codes dequantized with ``in_scale``.
        prompt: ``(w_phi [d, k], p_a [k, r], p_b [r, d])``, a :class:`Prompt` or a 3-tuple.
        grid: the output quantizer ``(scale, zero_point, qmin, qmax)`` (per-tensor affine), a
            :class:`~.quant_grid.QuantGrid` or a 4-tuple.
        in_scale: ``[1]`` or ``[N]`` fp32 scale of an ``int8`` ``h``; ``None`` for float ``h``.

    Returns:
        ``(codes, out)``: ``[N, d]`` codes in :func:`codes_dtype` and ``[N, d]`` dequantized
        values in ``h``'s float dtype (``float32`` for ``int8`` ``h``).
    """
    prompt, grid = Prompt(*prompt), QuantGrid(*grid)
    check_inputs(h, prompt, in_scale, grid)
    y = prompted_reference(h, prompt, in_scale)
    out = torch.fake_quantize_per_tensor_affine(y, *grid)
    with torch.no_grad():
        codes = torch.round(y * inv_scale(grid.scale)) + grid.zero_point
        codes = torch.clamp(codes, grid.qmin, grid.qmax)
    return codes.to(codes_dtype(grid.qmin, grid.qmax)), out.to(out_dtype(h))


def lorap_range_reference(h: Tensor, prompt: Prompt, in_scale: Tensor | None = None) -> Tensor:
    """``[min(y), max(y)]`` (fp32, shape ``[2]``) of the prompted sum: the test oracle of
    :func:`lorap_range` (whose CPU path takes the extremes of the same prompted sum)."""
    prompt = Prompt(*prompt)
    check_range_inputs(h, prompt, in_scale)
    return torch.stack(torch.aminmax(prompted_reference(h, prompt, in_scale)))


# ----------------------------------------------------------------------------------------
# The checked Triton launchers: the ops' Triton path. They take what the references take.
# ----------------------------------------------------------------------------------------


def lorap_fused_triton(
    h: Tensor,
    prompt: Prompt,
    grid: QuantGrid,
    in_scale: Tensor | None = None,
    *,
    block_n: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Launch the forward kernel directly: ``(codes, out)``.

    Runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before
    triton was imported. ``block_n`` overrides the rows per program (a power of two, >= 16).
    """
    prompt, grid = Prompt(*prompt), QuantGrid(*grid)
    check_inputs(h, prompt, in_scale, grid)
    return launch_forward(h, prompt, in_scale, grid, block_n=block_n, out_dtype=out_dtype(h))


def lorap_range_triton(
    h: Tensor, prompt: Prompt, in_scale: Tensor | None = None, *, block_n: int | None = None
) -> Tensor:
    """Launch the forward kernel's range pass directly: ``[min(y), max(y)]``, fp32 ``[2]``."""
    prompt = Prompt(*prompt)
    check_range_inputs(h, prompt, in_scale)
    return launch_range(h, prompt, in_scale, block_n=block_n)


def lorap_fused_backward_triton(
    grad_out: Tensor,
    h: Tensor,
    prompt: Prompt,
    grid: QuantGrid,
    in_scale: Tensor | None = None,
    *,
    block_n: int | None = None,
    num_programs: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Launch the backward kernel directly: ``(grad_h, grad_w_phi, grad_p_a, grad_p_b)``.

    ``num_programs`` overrides the persistent grid (default: 4 per SM on CUDA, at most 8 under
    the interpreter); each program loops over every ``num_programs``-th row block.
    """
    prompt, grid = Prompt(*prompt), QuantGrid(*grid)
    check_inputs(h, prompt, in_scale, grid)
    if tuple(grad_out.shape) != tuple(h.shape):
        raise ValueError(
            f"grad_out must have h's shape {tuple(h.shape)}; got {tuple(grad_out.shape)}."
        )
    return launch_backward(
        grad_out, h, prompt, in_scale, grid,
        block_n=block_n, num_programs=num_programs, grad_h_dtype=out_dtype(h),
    )  # fmt: skip


# ----------------------------------------------------------------------------------------
# The registered ops.
# ----------------------------------------------------------------------------------------


@torch.library.custom_op("lorap_dist::lorap_fused", mutates_args=())
def lorap_fused(
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    saved_y: Tensor | None = None,
    saved_w: Tensor | None = None,
    keep_residuals: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """LoRAP forward as one op: ``(out, codes, saved_w, saved_mask)`` (see the module
    docstring).

    ``scale`` and ``zero_point`` are one-element tensors (fp32 and any real dtype) on ``h``'s
    device: the grid an observer has just updated goes to the kernel without the host ever
    reading it, and ``torch.compile`` traces the op without a graph break.

    ``saved_y`` and ``saved_w`` (inputs) are what :func:`lorap_range` returned for the same
    ``h`` and parameters: the CPU path then skips computing the prompt again; the Triton path
    ignores them.

    ``out`` comes first, unlike :func:`lorap_reference`: autograd tooling (``opcheck``) sums
    the outputs in order, and an integer first output makes that sum an integer tensor.
    ``saved_w`` (``[N, k]`` fp32 softmax weights) and ``saved_mask`` (``[N, d]`` bool
    straight-through mask) are what the backward needs besides the inputs; they take no
    gradient. The CPU path keeps them, so its backward does not recompute the forward; the
    Triton path returns them with 0 rows: its backward kernel recomputes them from ``h``,
    which costs less GPU memory traffic than writing and reading them. So does the CPU path
    with ``keep_residuals=False``, for a forward no backward will follow (inference).
    """
    prompt, grid = Prompt(w_phi, p_a, p_b), QuantGrid(scale, zero_point, qmin, qmax)
    if takes_triton(h, h.shape[1]):
        codes, out = lorap_fused_triton(h, prompt, grid, in_scale)
        saved_w, saved_mask = no_residuals(h, w_phi)
    else:
        codes, out, saved_w, saved_mask = lorap_forward_cpu(
            h, prompt, in_scale, grid, saved_y, saved_w, keep_residuals
        )
    return out, codes, saved_w, saved_mask


@lorap_fused.register_fake
def _(h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax, saved_y=None, saved_w=None,
      keep_residuals=True):  # fmt: skip
    prompt, grid = Prompt(w_phi, p_a, p_b), QuantGrid(scale, zero_point, qmin, qmax)
    check_inputs(h, prompt, in_scale, grid, check_values=False)
    out = h.new_empty(h.shape, dtype=out_dtype(h))
    codes = h.new_empty(h.shape, dtype=codes_dtype(qmin, qmax))
    if takes_triton(h, h.shape[1]) or not keep_residuals:
        return out, codes, *no_residuals(h, w_phi)
    saved_w = h.new_empty((h.shape[0], w_phi.shape[1]), dtype=torch.float32)
    return out, codes, saved_w, h.new_empty(h.shape, dtype=torch.bool)


@torch.library.custom_op("lorap_dist::lorap_fused_backward", mutates_args=())
def lorap_fused_backward(
    grad_out: Tensor,
    h: Tensor,
    w_phi: Tensor,
    p_a: Tensor,
    p_b: Tensor,
    in_scale: Tensor | None,
    scale: Tensor,
    zero_point: Tensor,
    qmin: int,
    qmax: int,
    saved_w: Tensor | None = None,
    saved_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """LoRAP backward as one op: ``(grad_h, grad_w_phi, grad_p_a, grad_p_b)``.

    ``saved_w`` and ``saved_mask`` are the forward's residuals (see :func:`lorap_fused`);
    when absent or empty the backward recomputes them.
    """
    prompt, grid = Prompt(w_phi, p_a, p_b), QuantGrid(scale, zero_point, qmin, qmax)
    if takes_triton(h, h.shape[1]):
        return lorap_fused_backward_triton(grad_out, h, prompt, grid, in_scale)
    check_inputs(h, prompt, in_scale, grid)
    return lorap_backward_cpu(grad_out, h, prompt, in_scale, grid, saved_w, saved_mask)


@lorap_fused_backward.register_fake
def _(grad_out, h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax, saved_w=None,
      saved_mask=None):  # fmt: skip
    return (
        h.new_empty(h.shape, dtype=out_dtype(h)),
        torch.empty_like(w_phi),
        torch.empty_like(p_a),
        torch.empty_like(p_b),
    )


def _setup_context(ctx, inputs, output) -> None:
    h, w_phi, p_a, p_b, in_scale, scale, zero_point, qmin, qmax, _, _, _ = inputs
    _, _, saved_w, saved_mask = output
    ctx.mark_non_differentiable(saved_w, saved_mask)
    ctx.save_for_backward(h, w_phi, p_a, p_b, in_scale, scale, zero_point, saved_w, saved_mask)
    ctx.qrange = (qmin, qmax)
    ctx.h_is_codes = h.dtype == torch.int8


def _backward(ctx, grad_out, grad_codes, grad_saved_w, grad_saved_mask):
    h, w_phi, p_a, p_b, in_scale, scale, zero_point, saved_w, saved_mask = ctx.saved_tensors
    if grad_out is None:
        return (None,) * 12
    g_h, g_w_phi, g_p_a, g_p_b = lorap_fused_backward(
        grad_out, h, w_phi, p_a, p_b, in_scale, scale, zero_point, *ctx.qrange, saved_w, saved_mask
    )
    # Integer codes have no gradient; g_h is then w.r.t. the dequantized aggregate only.
    g_h = None if ctx.h_is_codes else g_h
    return g_h, g_w_phi, g_p_a, g_p_b, *(None,) * 8


lorap_fused.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("lorap_dist::lorap_range", mutates_args=())
def lorap_range(
    h: Tensor, w_phi: Tensor, p_a: Tensor, p_b: Tensor, in_scale: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y_range, saved_y, saved_w)``: ``[min(y), max(y)]`` (fp32, shape ``[2]``) of
    ``y = h + softmax(h W_phi) P_A P_B``, and what the forward may reuse.

    The range pass that lets a quantizer observe ``y`` before :func:`lorap_forward`
    quantizes it. The Triton path never writes ``y`` out and returns ``saved_y``
    (``[0, d]``) and ``saved_w`` (``[0, k]``) empty; the CPU path has computed ``y`` and the
    softmax weights anyway and returns them (``[N, d]``, ``[N, k]``, fp32), so that
    :func:`lorap_forward` does not compute them a second time. Not differentiable: call it
    on detached inputs (an observed range takes no gradient).
    """
    prompt = Prompt(w_phi, p_a, p_b)
    if takes_triton(h, h.shape[1]):
        return lorap_range_triton(h, prompt, in_scale), *_no_saved_prompt(h, w_phi)
    check_range_inputs(h, prompt, in_scale)
    y, w = prompted_reference(h, prompt, in_scale, with_weights=True)
    return torch.stack(torch.aminmax(y)), y, w


@lorap_range.register_fake
def _(h, w_phi, p_a, p_b, in_scale=None):
    check_operands(h, Prompt(w_phi, p_a, p_b), in_scale)
    y_range = h.new_empty((2,), dtype=torch.float32)
    if takes_triton(h, h.shape[1]):
        return y_range, *_no_saved_prompt(h, w_phi)
    f32 = dict(dtype=torch.float32)
    return y_range, h.new_empty(h.shape, **f32), h.new_empty((h.shape[0], w_phi.shape[1]), **f32)


def _no_saved_prompt(h: Tensor, w_phi: Tensor) -> tuple[Tensor, Tensor]:
    """The empty ``saved_y`` and ``saved_w`` of the Triton range pass."""
    f32 = dict(dtype=torch.float32)
    return h.new_empty((0, h.shape[1]), **f32), h.new_empty((0, w_phi.shape[1]), **f32)


def lorap_forward(
    h: Tensor,
    prompt: Prompt,
    grid: QuantGrid,
    in_scale: Tensor | None = None,
    saved: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """LoRAP prompt injection and re-quantization: the dequantized ``[N, d]`` output.

    Differentiable in ``h`` (float) and the ``prompt``'s ``w_phi``, ``p_a`` and ``p_b``; the
    Triton kernels run for CUDA tensors, the pure-torch reference for CPU tensors. ``saved``
    is ``(saved_y, saved_w)`` from :func:`lorap_range` on the same inputs, reused on CPU.
    ``grid``'s ``scale`` and ``zero_point`` may be Python numbers or one-element tensors (kept
    on the device: no host sync).
    """
    w_phi, p_a, p_b = prompt
    scale, zero_point, qmin, qmax = grid
    saved_y, saved_w = saved if saved is not None else (None, None)
    scale, zero_point = grid_tensors(scale, zero_point, h.device)
    keep = torch.is_grad_enabled() and any(t.requires_grad for t in (h, w_phi, p_a, p_b))
    return lorap_fused(
        h, w_phi, p_a, p_b, in_scale, scale, zero_point, int(qmin), int(qmax), saved_y, saved_w,
        keep,
    )[0]  # fmt: skip
