"""Where the Triton kernel tests run: on the CPU in Triton's interpreter, or compiled on a GPU.

``LORAP_TEST_DEVICE`` chooses. ``cpu`` (the default) runs the kernels in Triton's interpreter,
which ``TRITON_INTERPRET=1`` must switch on before anything imports triton (the root conftest
sets it). ``cuda`` runs them compiled, as a lent GPU machine does::

    LORAP_TEST_DEVICE=cuda TRITON_INTERPRET=0 pytest tests/kernels

The root conftest checks the choice before collection and stops the run with a usage error
when it cannot be honoured: a kernel test never falls back to the CPU silently.

The tests make their inputs on the CPU with seeded generators, so both devices see the same
values; :func:`run_on` runs a kernel on the test device and hands its results back to the CPU,
where the pure-torch references run and the comparisons are made.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch  # does not import triton, so the interpreter can still be switched on after

from lorap_dist.kernels._triton import triton_on_cpu

TEST_DEVICE_VARIABLE = "LORAP_TEST_DEVICE"
TEST_DEVICES = ("cpu", "cuda")


def requested_test_device(environ: Mapping[str, str] = os.environ) -> str:
    """The device ``LORAP_TEST_DEVICE`` names, unchecked: ``cpu`` when it is unset or empty."""
    return environ.get(TEST_DEVICE_VARIABLE) or "cpu"


def kernel_test_device(environ: Mapping[str, str] = os.environ) -> torch.device:
    """The device the kernel tests run on.

    Raises a ``pytest.UsageError`` that says what to set when ``LORAP_TEST_DEVICE`` names no
    test device, names ``cuda`` on a machine where PyTorch sees none, or names ``cuda`` with
    ``TRITON_INTERPRET=1`` (the kernels would then run in the interpreter, not compiled).
    """
    name = requested_test_device(environ)
    if name not in TEST_DEVICES:
        raise pytest.UsageError(
            f"{TEST_DEVICE_VARIABLE}={name!r} is not a test device; use cpu (the default: the "
            "Triton kernels run in Triton's interpreter) or cuda (compiled, on the GPU)."
        )
    if name == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(
            f"{TEST_DEVICE_VARIABLE}=cuda, but PyTorch sees no CUDA device on this machine; run "
            f"on a machine with a GPU, or unset {TEST_DEVICE_VARIABLE} to test the kernels on the "
            "CPU in Triton's interpreter."
        )
    if name == "cuda" and environ.get("TRITON_INTERPRET") == "1":
        raise pytest.UsageError(
            f"{TEST_DEVICE_VARIABLE}=cuda with TRITON_INTERPRET=1 would run the kernels in "
            "Triton's interpreter, not compiled; set TRITON_INTERPRET=0."
        )
    return torch.device(name)


def run_on(device: torch.device, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with every tensor argument moved to ``device``, and every tensor
    it returns moved to the CPU; tensors inside tuples and lists move too. On the CPU nothing
    is copied."""
    return _moved(fn(*_moved(args, device), **_moved(kwargs, device)), torch.device("cpu"))


def _moved(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _moved(item, device) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_moved(item, device) for item in value))
    if isinstance(value, tuple | list):
        return type(value)(_moved(item, device) for item in value)
    return value


def triton_on(device: torch.device) -> contextlib.AbstractContextManager:
    """The context in which the registered kernel ops on ``device`` take the Triton kernels:
    :func:`~lorap_dist.kernels._triton.triton_on_cpu` on the CPU; none on CUDA, where they
    always do."""
    return triton_on_cpu() if device.type == "cpu" else contextlib.nullcontext()
