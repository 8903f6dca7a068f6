"""The prepared GPU check runs end to end in dry-run mode, without ray, ogb or pymetis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def blocked_packages(directory: Path) -> Path:
    """Packages named ray, ogb and pymetis that refuse to import (a lent GPU machine has none)."""
    for name in ("ray", "ogb", "pymetis"):
        (directory / name).mkdir(parents=True)
        (directory / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not on the GPU machine')\n"
        )
    return directory


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_its_figures(tmp_path):
    blockers = blocked_packages(tmp_path / "blocked")
    env = os.environ | {"PYTHONPATH": str(blockers), "TRITON_INTERPRET": "0"}
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((out / "gpu_check.json").read_text())
    steps = result["steps"]
    assert list(steps) == [
        "correctness",
        "kernels",
        "sampler",
        "train_step",
        "nccl",
        "kernel_tests",
    ]
    for name, step in steps.items():
        assert step["status"] == "ok", (name, step.get("error"), step.get("log_tail"))
    checks = {c["op"]: c for c in steps["correctness"]["kernel_checks"]}
    assert checks["quant_aggregate"]["max_error"] == 0.0
    kernel_tests = steps["kernel_tests"]["kernel_tests"]
    assert kernel_tests["device"] == "cpu" and not kernel_tests["timed_out"]
    assert kernel_tests["exit"] == 0, kernel_tests["tail"]
    assert re.search(r"\b6 passed\b", kernel_tests["tail"]), kernel_tests["tail"]
    assert steps["kernels"]["lorap"][0]["compiled_ms"] > 0
    assert steps["sampler"]["sampled_edges_per_s"] > 0
    assert set(steps["train_step"]["steps"]) == {"fp32", "int4", "int4_lorap"}
    assert steps["nccl"]["exchange"]["max_error"] == 0.0
    assert steps["nccl"]["ddp_step"]["parameters_updated"] > 0


def test_a_failing_step_is_recorded_and_the_run_goes_on(tmp_path):
    """Without --dry-run on a machine without CUDA every step fails, each recorded."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--only", "sampler,nccl", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert [s["status"] for s in steps.values()] == ["failed", "failed"]
    assert "no CUDA device" in steps["sampler"]["error"]


def test_kernels_resolve_from_a_source_checkout_without_an_install(tmp_path):
    """``PYTHONPATH=.`` alone must find ``lorap_dist.kernels`` (the top-level kernels/)."""
    import site

    code = (
        "import sys; sys.path += " + repr(site.getsitepackages()) + "\n"
        "import lorap_dist.kernels.lorap_fused as m\n"
        "print(m.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],  # -S: no site, so no installed mapping
        cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(ROOT / "kernels" / "lorap_fused.py")
