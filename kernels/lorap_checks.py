"""The inputs the LoRAP ops accept, and the ValueErrors that say what is wrong otherwise.

``h`` is ``[N, d]`` float32 / float16 / bfloat16, or int8 codes with an fp32 ``in_scale`` of
shape ``[1]`` (per tensor) or ``[N]`` (per row); the prompt is ``W_phi`` ``[d, k]``, ``P_A``
``[k, r]``, ``P_B`` ``[r, d]`` in a float dtype, on ``h``'s device (taken as one
:class:`Prompt`); the output grid (a :class:`~.quant_grid.QuantGrid`) is checked by
:func:`~.quant_grid.check_grid`. Both paths of :mod:`.lorap_fused` and the CPU path
(:mod:`.lorap_cpu`) run these checks; :mod:`.aggregate_lorap` runs :func:`check_prompt`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .quant_grid import QuantGrid, check_grid

__all__ = [
    "Prompt",
    "check_inputs",
    "check_operands",
    "check_prompt",
    "check_range_inputs",
    "out_dtype",
]


def out_dtype(h: Tensor) -> torch.dtype:
    """The dtype of ``out`` and ``grad_h`` for an input ``h``: its own, fp32 for int8 codes."""
    return torch.float32 if h.dtype == torch.int8 else h.dtype


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)


class Prompt(NamedTuple):
    """LoRAP's parameters, as every launcher, reference and Python entry point of the LoRAP
    ops takes them: ``w_phi`` ``[d, k]``, ``p_a`` ``[k, r]``, ``p_b`` ``[r, d]`` (a plain
    3-tuple is accepted where a function says so)."""

    w_phi: Tensor
    p_a: Tensor
    p_b: Tensor


def check_inputs(
    h: Tensor,
    prompt: Prompt,
    in_scale: Tensor | None,
    grid: QuantGrid,
    check_values: bool = True,
) -> None:
    """Raise a ValueError that names the argument when shapes, dtypes or ranges are wrong
    (the grid's checks are those of :func:`~.quant_grid.check_grid`)."""
    check_operands(h, prompt, in_scale)
    check_grid(*grid, h.device, check_values)


def check_operands(h: Tensor, prompt: Prompt, in_scale: Tensor | None) -> None:
    """The shape, dtype and device checks of :func:`check_inputs`, without the grid."""
    if h.dim() != 2:
        raise ValueError(f"h must be a 2-D [N, d] tensor; got shape {tuple(h.shape)}.")
    n, d = h.shape
    if h.dtype == torch.int8:
        if in_scale is None:
            raise ValueError(
                "h is int8 codes, so in_scale (fp32, shape [1] or [N]) is required to "
                "dequantize it; pass in_scale, or pass a float h."
            )
    elif h.dtype not in _FLOATS:
        raise ValueError(f"h must be float32, float16, bfloat16 or int8; got {h.dtype}.")
    elif in_scale is not None:
        raise ValueError("in_scale is only meaningful for an int8 h; drop it for a float h.")
    if in_scale is not None:
        if in_scale.dtype != torch.float32:
            raise ValueError(f"in_scale must be float32; got {in_scale.dtype}.")
        if in_scale.numel() not in (1, n) or in_scale.dim() > 1:
            raise ValueError(
                f"in_scale must have shape [1] (per tensor) or [N]={n} (per row); got "
                f"{tuple(in_scale.shape)}."
            )
        if in_scale.device != h.device:
            raise ValueError(f"in_scale is on {in_scale.device} but h is on {h.device}.")
    check_prompt(prompt, d, h.device)


def check_prompt(prompt: Prompt, d: int, device: torch.device) -> None:
    """The prompt parameters' checks of :func:`check_operands` for an ``h`` of width ``d``."""
    w_phi, p_a, p_b = prompt
    for name, t in (("w_phi", w_phi), ("p_a", p_a), ("p_b", p_b)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be a 2-D tensor; got shape {tuple(t.shape)}.")
        if t.dtype not in _FLOATS:
            raise ValueError(f"{name} must be float32, float16 or bfloat16; got {t.dtype}.")
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but the data is on {device}.")
    if w_phi.shape[0] != d:
        raise ValueError(f"w_phi must be [d, k] with d={d} (h's width); got {tuple(w_phi.shape)}.")
    k = w_phi.shape[1]
    if k < 1 or p_a.shape[0] != k:
        raise ValueError(
            f"p_a must be [k, r] with k={k} (w_phi's columns); got {tuple(p_a.shape)}."
        )
    r = p_a.shape[1]
    if r < 1 or tuple(p_b.shape) != (r, d):
        raise ValueError(f"p_b must be [r, d] = [{r}, {d}]; got {tuple(p_b.shape)}.")


def check_range_inputs(h: Tensor, prompt: Prompt, in_scale: Tensor | None) -> None:
    """:func:`check_operands` for the range pass, which also needs at least one row."""
    check_operands(h, prompt, in_scale)
    if h.shape[0] == 0:
        raise ValueError("h has no rows, so the range of y is undefined; skip the range pass.")
