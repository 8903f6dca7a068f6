"""Shared Triton plumbing for the kernels: lazy import and jit, CPU routing for tests.

Triton is an optional dependency (extra ``gpu``): CPU tensors always have a pure-torch path,
and nothing imports triton until a kernel launches.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from types import ModuleType

import torch

__all__ = ["cdiv", "jit", "load_triton", "next_power_of_2", "triton_on_cpu", "use_triton"]

_FORCE_TRITON_ON_CPU = False
_JITTED_HELPERS: set[tuple[str, str]] = set()


def load_triton() -> ModuleType:
    """Import triton on first use, never at module import.

    Importing triton fixes its interpret mode: ``triton.language``'s own jitted helpers
    (``tl.max``, ``tl.sum``) are built then, for the GPU or for the interpreter according to
    ``TRITON_INTERPRET``. Importing late lets tests turn the interpreter on first.
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


@functools.cache
def jit(kernel: Callable) -> Callable:
    """``triton.jit(kernel)``, done on first launch rather than at import.

    The kernel's module names ``tl`` as a placeholder global (``None``); it is bound to
    ``triton.language`` here, before jitting, so the kernel body resolves ``tl.*``. Device
    functions the kernels call are named in the module's ``_JIT_HELPERS`` and jitted here too.
    """
    triton = load_triton()
    module = kernel.__globals__
    module["tl"] = triton.language
    for name in module.get("_JIT_HELPERS", ()):
        # Bound in place of the plain function, once per module and name.
        if (module["__name__"], name) not in _JITTED_HELPERS:
            module[name] = triton.jit(module[name])
            _JITTED_HELPERS.add((module["__name__"], name))
    return triton.jit(kernel)


@contextlib.contextmanager
def triton_on_cpu() -> Iterator[None]:
    """Route the registered kernel ops' CPU tensors through the Triton kernels (tests only).

    Needs ``TRITON_INTERPRET=1`` in the environment before the first launch.
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "triton_on_cpu() needs TRITON_INTERPRET=1 in the environment before any kernel is "
            "first launched; set it, or use CUDA tensors."
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
