r"""Real integer quantization: codes stored as ``int8`` / ``uint8``, and INT4 packing.

:func:`quantize` / :func:`dequantize` use the grid and arithmetic of
:func:`~lorap_dist.quant.fake_quant.fake_quantize`, so
``dequantize(quantize(x, ...), ...)`` equals ``fake_quantize(x, ...)`` bit for bit.

:func:`quantize_rows` / :func:`dequantize_rows` are the storage format of node features in
the dataset directory and in the feature exchange: symmetric, one float32 scale per row,

.. math::

    s_i = \frac{\max_j |x_{ij}|}{2^{b-1} - 1}, \qquad
    c_{ij} = \operatorname{round}(x_{ij} / s_i) \in [-(2^{b-1} - 1),\ 2^{b-1} - 1], \qquad
    \hat x_{ij} = c_{ij} \, s_i .

Unlike the training-time symmetric grid, this one is *restricted* (``-2^(b-1)`` is unused)
so that each row's largest magnitude is exact and nothing is clipped: the error is at most
half a step, :math:`|x_{ij} - \hat x_{ij}| \le s_i / 2`. A row of zeros gets the smallest
normal float32 as its scale (and codes 0), never a division by zero.

:func:`pack_int4` stores two 4-bit codes per byte (element ``2i`` in the low nibble,
``2i+1`` in the high nibble), halving the bytes of an INT4 payload.

:class:`QuantizedRows` carries such rows as one value (codes, scales and their bit width):
what :meth:`~lorap_dist.distributed.exchange.FeatureExchange.fetch_rows` returns and what
the SAGE and GIN layers aggregate without dequantizing first.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from lorap_dist.quant.fake_quant import Scale, ZeroPoint, _broadcast, quantize_codes


def quantize(
    x: Tensor, scale: Scale, zero_point: ZeroPoint, qmin: int, qmax: int, axis: int | None = None
) -> Tensor:
    """Integer codes ``clamp(round(x / scale) + zero_point, qmin, qmax)``.

    Args:
        x: float input.
        scale: one value, or ``[x.shape[axis]]`` values for per-channel quantization.
        zero_point: like ``scale``, integer valued.
        qmin: smallest code, ``>= -128``.
        qmax: largest code, ``<= 255``.
        axis: channel axis of per-channel parameters, ``None`` for per tensor.

    Returns:
        codes like ``x``: ``int8`` when ``qmin < 0``, else ``uint8``.
    """
    if qmin < 0:
        dtype = torch.int8
        if qmin < -128 or qmax > 127:
            raise ValueError(f"a signed grid [{qmin}, {qmax}] does not fit int8 [-128, 127].")
    else:
        dtype = torch.uint8
        if qmax > 255:
            raise ValueError(f"an unsigned grid [{qmin}, {qmax}] does not fit uint8 [0, 255].")
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    zero_point = torch.as_tensor(zero_point, device=x.device)
    q, _ = quantize_codes(x.detach(), scale, zero_point, qmin, qmax, axis)
    return torch.clamp(q, qmin, qmax).to(dtype)


def dequantize(
    codes: Tensor, scale: Scale, zero_point: ZeroPoint, axis: int | None = None
) -> Tensor:
    """Float32 values ``(codes - zero_point) * scale`` of integer ``codes``."""
    scale = torch.as_tensor(scale, dtype=torch.float32, device=codes.device)
    zero_point = torch.as_tensor(zero_point, device=codes.device)
    s = _broadcast(scale, codes, axis)
    z = _broadcast(zero_point.to(torch.float32), codes, axis)
    return (codes.to(torch.float32) - z) * s


def quantize_rows(x: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Symmetric per-row quantization of ``x`` (formula in the module docstring).

    Args:
        x: ``[N, ...]`` float; each row ``x[i]`` gets its own scale.
        bits: 2 to 8.

    Returns:
        ``(codes, scales)``: ``int8`` codes shaped like ``x`` and float32 scales ``[N]``.
    """
    if not (isinstance(bits, int) and 2 <= bits <= 8):
        raise ValueError(f"bits={bits!r} is not supported; use an integer from 2 to 8.")
    if x.dim() < 1:
        raise ValueError("quantize_rows needs a tensor with at least one dimension (rows).")
    qmax = (1 << (bits - 1)) - 1
    x = x.detach().to(torch.float32)
    rows = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # [N, values per row]
    amax = rows.abs().amax(dim=1) if rows.shape[1] else rows.new_zeros(len(rows))
    scales = torch.clamp(amax / qmax, min=torch.finfo(torch.float32).tiny)
    codes = quantize(x, scales, torch.zeros_like(scales, dtype=torch.int32), -qmax, qmax, axis=0)
    return codes, scales


def dequantize_rows(codes: Tensor, scales: Tensor) -> Tensor:
    """Float32 ``codes * scales`` with one scale per row: the inverse of :func:`quantize_rows`.

    Args:
        codes: ``[N, ...]`` integer codes.
        scales: ``[N]`` float scales.
    """
    return codes.to(torch.float32) * _broadcast(scales.to(torch.float32), codes, 0)


def pack_int4(codes: Tensor) -> Tensor:
    """Pack 4-bit codes two per byte along the last dimension.

    Args:
        codes: ``[..., n]`` ``int8`` codes in ``[-8, 7]`` or ``uint8`` codes in ``[0, 15]``.

    Returns:
        ``[..., ceil(n / 2)]`` ``uint8``; byte ``i`` holds code ``2i`` in its low nibble and
        code ``2i+1`` (0 padding when ``n`` is odd) in its high nibble.
    """
    if codes.dtype == torch.int8:
        low, high = -8, 7
    elif codes.dtype == torch.uint8:
        low, high = 0, 15
    else:
        raise ValueError(f"pack_int4 takes int8 or uint8 codes, got {codes.dtype}.")
    if codes.dim() == 0:
        raise ValueError("pack_int4 needs a tensor with at least one dimension.")
    if codes.numel() and (codes.min() < low or codes.max() > high):
        raise ValueError(
            f"pack_int4 got {codes.dtype} codes in [{int(codes.min())}, {int(codes.max())}]; "
            f"4-bit {codes.dtype} codes must lie in [{low}, {high}]."
        )
    nibbles = codes.to(torch.int16) & 0xF  # two's complement low nibble of signed codes
    if nibbles.shape[-1] % 2:
        nibbles = torch.nn.functional.pad(nibbles, (0, 1))
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: Tensor, n: int, signed: bool = True) -> Tensor:
    """Inverse of :func:`pack_int4`.

    Args:
        packed: ``[..., ceil(n / 2)]`` ``uint8``.
        n: number of codes along the last dimension.
        signed: return ``int8`` codes in ``[-8, 7]``; else ``uint8`` codes in ``[0, 15]``.

    Returns:
        ``[..., n]`` codes.
    """
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4 takes uint8 bytes, got {packed.dtype}.")
    if packed.dim() == 0 or packed.shape[-1] != (n + 1) // 2:
        raise ValueError(
            f"unpack_int4 of n={n} codes needs {(n + 1) // 2} bytes in the last dimension, "
            f"got shape {tuple(packed.shape)}."
        )
    wide = packed.to(torch.int16)
    nibbles = torch.stack((wide & 0xF, wide >> 4), dim=-1).flatten(-2)[..., :n]
    if signed:
        return (nibbles - ((nibbles & 0x8) << 1)).to(torch.int8)  # sign-extend bit 3
    return nibbles.to(torch.uint8)


class QuantizedRows(NamedTuple):
    r"""Node feature rows as integer codes with one float32 scale per row: row ``i`` is
    ``codes[i] * scales[i]`` (the grid of :func:`quantize_rows`).

    A layer that takes this form (:class:`~lorap_dist.nn.QSAGEConv`,
    :class:`~lorap_dist.nn.QGINConv`) aggregates the codes directly; the codes and scales
    are data and take no gradient. INT4 rows are held unpacked, one ``int8`` code per value.

    Args:
        codes: ``int8 [N, F]`` codes, ``|codes| <= 2^(bits-1) - 1``.
        scales: ``float32 [N]`` per-row scales.
        bits: the bit width the codes were rounded to, 2 to 8 (default 8).

    Shapes:
        - :meth:`dequantize`: ``[N, F]`` float32
    """

    codes: Tensor
    scales: Tensor
    bits: int = 8

    @classmethod
    def from_float(cls, x: Tensor, bits: int = 8) -> QuantizedRows:
        """``x [N, F]`` quantized by :func:`quantize_rows` at ``bits``."""
        if x.dim() != 2:
            raise ValueError(
                f"QuantizedRows.from_float needs x as [N, F] rows, got shape {list(x.shape)}."
            )
        codes, scales = quantize_rows(x, bits)
        return cls(codes, scales, bits)

    @property
    def num_rows(self) -> int:
        return self.codes.size(0)

    @property
    def num_features(self) -> int:
        return self.codes.size(1)

    def dequantize(self) -> Tensor:
        """``[N, F]`` float32 ``codes * scales``, bit for bit :func:`dequantize_rows`."""
        return dequantize_rows(self.codes, self.scales)

    def rows(self, index: Tensor | slice) -> QuantizedRows:
        """The rows at ``index`` (IDs or a slice), with their scales."""
        return QuantizedRows(self.codes[index], self.scales[index], self.bits)

    def to(self, device: torch.device | str) -> QuantizedRows:
        return QuantizedRows(self.codes.to(device), self.scales.to(device), self.bits)

    def check(self, name: str = "rows") -> QuantizedRows:
        """Raise a ValueError naming ``name`` unless the dtypes, shapes, devices and ``bits``
        fit together (the codes' values are not scanned); return the rows with their scales
        detached (they take no gradient)."""
        codes, scales, bits = self
        if not (isinstance(codes, Tensor) and codes.dtype == torch.int8 and codes.dim() == 2):
            raise ValueError(
                f"{name}.codes must be an int8 [N, F] tensor, got {_describe(codes)}; "
                "build the rows with QuantizedRows.from_float or quantize_rows."
            )
        if not (
            isinstance(scales, Tensor)
            and scales.dtype == torch.float32
            and tuple(scales.shape) == (codes.size(0),)
        ):
            raise ValueError(
                f"{name}.scales must be float32 [N] = [{codes.size(0)}] (one per row of "
                f"codes), got {_describe(scales)}."
            )
        if scales.device != codes.device:
            raise ValueError(
                f"{name}.scales is on {scales.device} but {name}.codes on {codes.device}; "
                "move both with rows.to(device)."
            )
        if not (isinstance(bits, int) and 2 <= bits <= 8):
            raise ValueError(f"{name}.bits={bits!r} is not supported; use an integer 2 to 8.")
        return QuantizedRows(codes, scales.detach(), bits)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} of shape {list(value.shape)}"
    return type(value).__name__
