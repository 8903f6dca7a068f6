"""The per-tensor affine grid the kernels quantize on, host side: its checks, its codes'
dtype, and its device form ``[scale, 1 / scale, zero_point]`` that the kernels read.

A grid is ``(scale, zero_point, qmin, qmax)``; ``scale`` and ``zero_point`` may be Python
numbers or one-element tensors (the ops' form: an observer's freshly updated range reaches
the kernel without the host reading it, so there is no host sync).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "QuantGrid",
    "check_grid",
    "codes_dtype",
    "grid_tensors",
    "grid_values",
    "inv_scale",
]


class QuantGrid(NamedTuple):
    """A per-tensor affine grid: ``codes = clamp(rint(x / scale) + zero_point, qmin, qmax)``."""

    scale: float | Tensor
    zero_point: int | Tensor
    qmin: int
    qmax: int

    def check(self, device: torch.device, check_values: bool = True, name: str = "") -> None:
        """:func:`check_grid` on this grid."""
        check_grid(*self, device, check_values, name)

    def values(self, device: torch.device) -> Tensor:
        """:func:`grid_values` of this grid: what the kernels read."""
        return grid_values(self.scale, self.zero_point, device)

    def as_tensors(self, device: torch.device) -> QuantGrid:
        """This grid with ``scale`` and ``zero_point`` as the ops' one-element tensors."""
        scale, zero_point = grid_tensors(self.scale, self.zero_point, device)
        return QuantGrid(scale, zero_point, int(self.qmin), int(self.qmax))


def codes_dtype(qmin: int, qmax: int) -> torch.dtype:
    """Storage dtype of the integer codes for the range ``[qmin, qmax]``.

    ``int8`` if it fits in ``[-128, 127]``, ``uint8`` if it fits in ``[0, 255]``, else ``int32``.
    """
    if -128 <= qmin and qmax <= 127:
        return torch.int8
    if 0 <= qmin and qmax <= 255:
        return torch.uint8
    return torch.int32


def check_grid(
    scale: float | Tensor,
    zero_point: int | Tensor,
    qmin: int,
    qmax: int,
    device: torch.device,
    check_values: bool = True,
    name: str = "",
) -> None:
    """Raise a ValueError that names the argument when the grid is malformed; ``name``
    prefixes the argument names (for an op with more than one grid).

    Tensor values are checked only on the CPU, since reading a GPU tensor's value would stall
    the host, and not at all with ``check_values=False`` (fake tensors have no values).
    """
    for arg, value in ((f"{name}scale", scale), (f"{name}zero_point", zero_point)):
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"{arg} must hold one value; got shape {tuple(value.shape)}.")
            if value.device != device and value.device.type != "cpu":
                raise ValueError(f"{arg} is on {value.device} but the data is on {device}.")
    if not qmin < qmax:
        raise ValueError(f"{name}qmin must be below {name}qmax; got {qmin}, {qmax}.")
    if isinstance(scale, Tensor) or isinstance(zero_point, Tensor):
        on_host = all(t.device.type == "cpu" for t in (scale, zero_point) if isinstance(t, Tensor))
        if not (check_values and on_host) or torch.compiler.is_compiling():
            return
    if isinstance(scale, Tensor):
        scale = float(scale)
    if isinstance(zero_point, Tensor):
        zero_point = float(zero_point)
        if zero_point != int(zero_point):
            raise ValueError(f"{name}zero_point must be an integer; got {zero_point}.")
        zero_point = int(zero_point)
    if not (scale > 0.0 and scale < float("inf")):
        raise ValueError(f"{name}scale must be a positive finite number; got {scale}.")
    if not qmin <= zero_point <= qmax:
        raise ValueError(
            f"{name}zero_point must lie in [{name}qmin, {name}qmax] = [{qmin}, {qmax}]; "
            f"got {zero_point}."
        )
    if max(abs(qmin - zero_point), abs(qmax - zero_point)) >= 2**21:
        raise ValueError(
            f"[{name}qmin, {name}qmax] = [{qmin}, {qmax}] is too wide for the fp32 rounding; "
            "use at most 21-bit codes."
        )


def inv_scale(scale: float) -> float:
    """``1 / scale`` rounded to fp32 exactly as ``fake_quantize_per_tensor_affine`` does."""
    s = torch.tensor(scale, dtype=torch.float32)
    return float(torch.ones((), dtype=torch.float32) / s)


def grid_values(scale: float | Tensor, zero_point: int | Tensor, device: torch.device) -> Tensor:
    """``[scale, 1 / scale, zero_point]`` as one fp32 ``[3]`` tensor on ``device``.

    From tensors this stays on their device (no host sync); ``1 / scale`` is the fp32
    division ``fake_quantize_per_tensor_affine`` performs, and a zero point (an integer of
    at most 21 bits, see :func:`check_grid`) is exact in fp32.
    """
    if not isinstance(scale, Tensor) and not isinstance(zero_point, Tensor):
        values = [float(scale), inv_scale(scale), float(zero_point)]
        return torch.tensor(values, dtype=torch.float32, device=device)
    s = torch.as_tensor(scale, dtype=torch.float32, device=device).reshape(1)
    zp = torch.as_tensor(zero_point, device=device).reshape(1).to(torch.float32)
    return torch.cat((s, torch.ones_like(s) / s, zp))


def grid_tensors(
    scale: float | Tensor, zero_point: int | Tensor, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Python numbers as the ops' one-element tensors (fp32 scale, int32 zero point); tensors
    unchanged."""
    if not isinstance(scale, Tensor):
        scale = torch.tensor([float(scale)], dtype=torch.float32, device=device)
    if not isinstance(zero_point, Tensor):
        zero_point = torch.tensor([int(zero_point)], dtype=torch.int32, device=device)
    return scale, zero_point
