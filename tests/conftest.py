"""Suite-wide settings.

The Triton kernels are tested on the device ``LORAP_TEST_DEVICE`` names
(:mod:`lorap_dist.testing.kernel_device`). On the CPU, the default, they run in Triton's
interpreter; its variable must be set before anything imports triton (``import
torch._dynamo`` does), so it is set here, first. On ``cuda`` they run compiled, and a choice
the machine cannot honour stops the run before collection.
"""

import os

import pytest

from lorap_dist.testing.kernel_device import kernel_test_device, requested_test_device

if requested_test_device() == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config: pytest.Config) -> None:
    kernel_test_device()  # a pytest.UsageError that names the variable and what to set
