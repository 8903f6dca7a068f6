"""LORAP_TEST_DEVICE: the kernel tests run where it says, or the run stops with a usage error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lorap_dist.kernels import lorap_kernels as lk

from lorap_dist.testing.kernel_device import kernel_test_device, run_on

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cuda(monkeypatch):
    """Pretend the machine has a CUDA device (only the selection logic runs)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_the_cpu_is_the_default_and_cuda_is_taken_when_present(cuda):
    assert kernel_test_device({}) == torch.device("cpu")
    assert kernel_test_device({"LORAP_TEST_DEVICE": ""}) == torch.device("cpu")
    assert kernel_test_device({"LORAP_TEST_DEVICE": "cpu"}) == torch.device("cpu")
    assert kernel_test_device({"LORAP_TEST_DEVICE": "cuda"}) == torch.device("cuda")
    environ = {"LORAP_TEST_DEVICE": "cuda", "TRITON_INTERPRET": "0"}
    assert kernel_test_device(environ) == torch.device("cuda")


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:0", "interpreter"])
def test_an_unknown_device_is_refused(cuda, name):
    message = rf"LORAP_TEST_DEVICE='{name}' is not a test device; use cpu .* or cuda"
    with pytest.raises(pytest.UsageError, match=message):
        kernel_test_device({"LORAP_TEST_DEVICE": name})


def test_cuda_without_a_gpu_is_refused_not_run_on_the_cpu(no_cuda):
    message = r"LORAP_TEST_DEVICE=cuda, but PyTorch sees no CUDA device .* or unset"
    with pytest.raises(pytest.UsageError, match=message):
        kernel_test_device({"LORAP_TEST_DEVICE": "cuda"})


def test_cuda_in_the_interpreter_is_refused(cuda):
    environ = {"LORAP_TEST_DEVICE": "cuda", "TRITON_INTERPRET": "1"}
    with pytest.raises(pytest.UsageError, match=r"not compiled; set TRITON_INTERPRET=0"):
        kernel_test_device(environ)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cuda", "ERROR: LORAP_TEST_DEVICE=cuda, but PyTorch sees no CUDA device"),
        ("gpu", "ERROR: LORAP_TEST_DEVICE='gpu' is not a test device"),
    ],
)
def test_pytest_stops_before_collecting_with_the_usage_error(name, message):
    """The root conftest checks the choice: no test runs, and no traceback is shown."""
    env = os.environ | {"LORAP_TEST_DEVICE": name, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/kernels/test_quant_aggregate.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert message in done.stderr
    assert "passed" not in done.stdout and "Traceback" not in done.stderr


def test_run_on_moves_every_tensor_argument_and_copies_nothing_on_the_cpu():
    """Tensors inside tuples, lists, named tuples and keyword arguments move (to ``meta`` here,
    the one other device a CPU-only machine has); the results' structure is kept."""
    gather = lk.Gather(torch.arange(3), torch.arange(2), 8, True)
    seen = []

    def kernel(*args, **kwargs):
        seen.append((args, kwargs))
        return torch.ones(2), (None, [torch.zeros(1)])

    result = run_on(torch.device("meta"), kernel, torch.ones(1), [torch.ones(1), 5], gather,
                    scale=torch.ones(1))  # fmt: skip
    (h, (codes, five), moved_gather), kwargs = seen[0]
    moved = [h, codes, moved_gather.indptr, moved_gather.indices, kwargs["scale"]]
    assert all(t.is_meta for t in moved) and five == 5
    assert type(moved_gather) is lk.Gather and moved_gather[2:4] == (8, True)
    ones, (none, [zeros]) = result
    assert torch.equal(ones, torch.ones(2)) and none is None and torch.equal(zeros, torch.zeros(1))

    h = torch.ones(3)
    assert run_on(torch.device("cpu"), lambda t: t, h) is h
