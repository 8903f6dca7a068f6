"""``ray job submit`` end to end: a real local head, a training job, and a second job that
resumes the first one's run.

The head is started and stopped with ``cluster/start_local.sh`` / ``cluster/stop_local.sh``
(its own temp dir and free ports on 127.0.0.1; the stop ends only that head's processes).
The working directory is uploaded with ``cluster/runtime_env.yaml``'s excludes (no .venv,
data, runs); the head is started with this interpreter's bin directory first on PATH, so a
job's ``python`` is this virtual environment's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from lorap_dist.config import SyntheticConfig
from lorap_dist.graph.prepare import PrepareOptions, prepare
from lorap_dist.testing.multiprocess import free_ports
from lorap_dist.testing.source_tree import copy_source_tree, install_build

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 600


# Ports a Ray head takes by default besides the two it is given (client server, dashboard
# agent); a port equal to one of them, or the same port twice, makes `ray start` refuse to run.
RAY_DEFAULT_PORTS = frozenset({10001, 52365})


@pytest.fixture(scope="module")
def head():
    """A Ray head on 127.0.0.1 with 2 CPUs; yields (job server address, environment)."""
    # Short: Ray's unix sockets live under the temp dir (path limit 107 bytes).
    temp_dir = tempfile.mkdtemp(prefix="ray-job-", dir="/tmp")
    ray_port, dashboard_port = free_ports(2, avoid=RAY_DEFAULT_PORTS)
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_PORT": str(ray_port),
        "DASHBOARD_PORT": str(dashboard_port),
        "NUM_CPUS": "2",
        "RAY_TEMP_DIR": temp_dir,
        "RAY": str(BIN / "ray"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",  # the head's mode: the CLI sends ~/.ray/auth_token
    }
    env.pop("RAY_ADDRESS", None)
    try:
        subprocess.run(
            ["bash", str(REPO / "cluster/start_local.sh")], env=env, check=True, timeout=240
        )
        yield f"http://127.0.0.1:{env['DASHBOARD_PORT']}", env
    finally:
        # Ray's own graceful shutdown of a head keeps it alive ~30 s after SIGTERM, the stop
        # script's default wait; the test's head holds nothing worth it.
        stop_env = env | {"WAIT_S": "5"}
        subprocess.run(["bash", str(REPO / "cluster/stop_local.sh")], env=stop_env, timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)


def submit(
    address: str,
    env: dict[str, str],
    *entrypoint: str,
    working_dir: Path = REPO,
    env_vars: dict[str, str] | None = None,
) -> str:
    """Submit a job uploading ``working_dir`` (default the repository root) with
    ``cluster/runtime_env.yaml`` (plus ``env_vars``), wait for it; returns its logs."""
    runtime_env = yaml.safe_load((REPO / "cluster/runtime_env.yaml").read_text())
    runtime_env["env_vars"] |= env_vars or {}
    runtime_env.pop("working_dir")
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(working_dir),
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        *entrypoint,
    ]
    done = subprocess.run(
        command, env=env, cwd=working_dir, capture_output=True, text=True, timeout=JOB_TIMEOUT_S
    )
    logs = done.stdout + done.stderr
    assert done.returncode == 0, logs[-4000:]
    assert "succeeded" in logs.lower(), logs[-4000:]
    return logs


def test_runtime_env_uploads_repo_and_uses_venv_python(head):
    address, env = head
    logs = submit(
        address,
        env,
        "python",
        "-c",
        "import os, sys, lorap_dist; print('EXE', sys.executable); "
        "print('VENV', os.path.isdir('.venv'), 'DATA', os.path.isdir('data'))",
    )
    assert f"EXE {sys.executable}" in logs or f"EXE {BIN}" in logs, logs[-2000:]
    assert "VENV False DATA False" in logs, logs[-2000:]


KERNELS_IN_JOB = """
import ray
import lorap_dist.kernels as kernels
import lorap_dist.kernels.quant_grid as grid


@ray.remote
def kernels_on_worker():
    import lorap_dist.kernels as kernels
    import lorap_dist.kernels.quant_grid as grid

    return kernels.BUILD_MARK, grid.__file__


print("DRIVER", kernels.BUILD_MARK, grid.__file__)
print("WORKER", *ray.get(kernels_on_worker.remote()))
"""


def test_job_runs_the_uploaded_kernels_over_another_installed_build(head, tmp_path):
    """The nodes have another, non-editable build of the package on their path (and this
    interpreter's own install): the job's driver and its Ray tasks still run the kernels of
    the uploaded working directory."""
    address, env = head
    site = install_build(copy_source_tree(tmp_path / "other", "installed"), tmp_path / "site")
    upload = copy_source_tree(tmp_path / "upload", "uploaded")
    (upload / "where_kernels.py").write_text(KERNELS_IN_JOB)
    logs = submit(
        address,
        env,
        "python",
        "where_kernels.py",
        working_dir=upload,
        env_vars={"PYTHONPATH": str(site)},
    )
    lines = {line.split()[0]: line.split()[1:] for line in logs.splitlines()
             if line.startswith(("DRIVER ", "WORKER "))}  # fmt: skip
    assert set(lines) == {"DRIVER", "WORKER"}, logs[-3000:]
    for where, (mark, module) in lines.items():
        assert mark == "uploaded", (where, logs[-3000:])
        assert not Path(module).is_relative_to(site) and not Path(module).is_relative_to(REPO)


def test_submitted_run_resumes_from_checkpoint(head, tmp_path):
    address, env = head
    dataset = prepare(
        PrepareOptions(
            out=tmp_path / "tiny-2p",
            source="synthetic",
            parts=2,
            partitioner="random",
            synthetic=SyntheticConfig(num_nodes=300, avg_degree=6, num_classes=4, num_features=8),
            use_ray=False,
            progress=False,
        )
    )
    storage = tmp_path / "runs"
    config = {
        "data": {"source": "dir", "path": str(dataset)},
        "model": {"arch": "gcn", "hidden": 8, "layers": 2, "dropout": 0.5},
        "prompt": {"kind": "lorap", "k": 4, "r": 2},
        "quant": {"scheme": "qat", "options": {"bits": 4}},
        # trained together with the backbone: a finished run continues by raising its epochs
        "train": {
            "epochs": 2,
            "lr": 0.01,
            "fanout": [4, 4],
            "batch_size": 32,
            "prompt_tuning_epochs": 0,
        },
        "dist": {
            "num_workers": 2,
            "storage_path": str(storage),
            "name": "first",
            "checkpoint_every": 1,
            "eval_every": 0,
        },
    }
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))

    # 1. Two epochs.
    first_out = tmp_path / "first.json"
    submit(
        address,
        env,
        "python",
        "jobs/train.py",
        "--config",
        str(config_path),
        "--out",
        str(first_out),
    )
    first = json.loads(first_out.read_text())
    assert first["epochs"] == 2 and first["steps"] > 0
    assert Path(first["checkpoint"]).name == "checkpoint_epoch_000002"

    # 2. A second job continues that run to four epochs.
    second_out = tmp_path / "second.json"
    submit(
        address,
        env,
        "python",
        "jobs/train.py",
        "--config",
        str(config_path),
        "--set",
        "train.epochs=4",
        "--set",
        "dist.name=second",
        "--resume",
        first["run_dir"],
        "--out",
        str(second_out),
    )
    second = json.loads(second_out.read_text())
    assert second["epochs"] == 4
    # Every epoch has the same number of steps: 2 restored + 2 run here.
    assert second["steps"] == 2 * first["steps"]
    # It trained epochs 3 and 4 only: its own run holds no checkpoint of epochs 1 or 2.
    saved = sorted(p.name for p in (storage / "second").glob("checkpoint_epoch_*"))
    assert saved == ["checkpoint_epoch_000003", "checkpoint_epoch_000004"]
    assert 0.0 <= second["test_acc"] <= 1.0
