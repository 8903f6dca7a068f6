"""Host-side Triton plumbing for the kernels: sizes, the stand-in for a missing triton, CPU
routing for tests.

Triton is an optional dependency (extra ``gpu``): CPU tensors always have a pure-torch path.
This module never imports triton, so ``lorap_dist.testing.kernel_device`` (imported by the
root conftest before it sets ``TRITON_INTERPRET``) can use it; the kernel modules import
triton through :mod:`.device_functions`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from types import ModuleType

import torch

__all__ = [
    "TritonMissing",
    "cdiv",
    "load_triton",
    "next_power_of_2",
    "triton_on_cpu",
    "use_triton",
]

_FORCE_TRITON_ON_CPU = False


def load_triton() -> ModuleType:
    """``triton``, or a RuntimeError that says how to install it.

    Importing triton fixes its interpret mode: ``triton.language``'s own jitted helpers
    (``tl.max``, ``tl.sum``) are built then, for the GPU or for the interpreter according to
    ``TRITON_INTERPRET``.
    """
    try:
        import triton
        import triton.language  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            "The Triton kernels need the triton package; install it with "
            "`pip install lorap-dist[gpu]`, or use CPU tensors, which take the pure-torch "
            "reference."
        ) from error
    return triton


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints (``triton.cdiv`` without importing triton)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two ``>= n`` (``triton.next_power_of_2`` without importing triton)."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


class TritonMissing:
    """What the decorator ``jit`` is without triton: the kernel modules still import (CPU
    tensors take the references), and launching a kernel raises :func:`load_triton`'s error,
    which says what to install."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __getitem__(self, grid: object) -> Callable:
        load_triton()
        raise AssertionError("unreachable: load_triton raises without triton")


@contextlib.contextmanager
def triton_on_cpu() -> Iterator[None]:
    """Route the registered kernel ops' CPU tensors through the Triton kernels (tests only).

    Needs ``TRITON_INTERPRET=1`` in the environment before triton is imported (the op
    modules import it, through :mod:`.device_functions`).
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "triton_on_cpu() needs TRITON_INTERPRET=1 in the environment before the kernel "
            "modules are imported (they import triton); set it, or use CUDA tensors."
        )
    global _FORCE_TRITON_ON_CPU
    previous, _FORCE_TRITON_ON_CPU = _FORCE_TRITON_ON_CPU, True
    try:
        yield
    finally:
        _FORCE_TRITON_ON_CPU = previous


def use_triton(t: torch.Tensor) -> bool:
    """Whether an op on ``t`` takes the Triton kernels (CUDA, or CPU inside triton_on_cpu)."""
    return t.is_cuda or (t.device.type == "cpu" and _FORCE_TRITON_ON_CPU)
