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

# Ray Train's controller polls its workers every 2 s by default, so each of the suite's
# ~25 distributed runs starts and ends a poll or two late; a quarter second saves about 5 s
# a run. The variable reaches every Ray process the suite starts (ray.init and `ray start`
# inherit this environment).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def pytest_configure(config: pytest.Config) -> None:
    kernel_test_device()  # a pytest.UsageError that names the variable and what to set
