"""Packaging: every subpackage of lorap_dist is listed in pyproject.toml, so a wheel (or any
non-editable install) carries it (setuptools installs only the packages listed); and
``lorap_dist.kernels`` comes from the same tree as the package, whatever else is installed."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lorap_dist.testing.source_tree import copy_source_tree, install_build

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_in_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "lorap_dist").rglob("__init__.py")
    }
    assert on_disk - listed == set(), f"packages missing from pyproject.toml: {on_disk - listed}"
    assert "lorap_dist.kernels" in listed and setuptools["package-dir"]["lorap_dist.kernels"] == (
        "kernels"
    )


WHERE_KERNELS = (
    "import lorap_dist, lorap_dist.kernels as k, lorap_dist.kernels.quant_grid as g; "
    "print(k.BUILD_MARK, lorap_dist.__file__, g.__file__)"
)


def where_kernels(cwd: Path, pythonpath: list[Path]) -> tuple[str, Path, Path]:
    """(kernels' BUILD_MARK, lorap_dist's file, a kernel module's file) as ``python -c`` sees
    them, run in ``cwd`` with ``pythonpath`` first."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    done = subprocess.run(
        [sys.executable, "-c", WHERE_KERNELS],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    mark, package, module = done.stdout.split()
    return mark, Path(package), Path(module)


@pytest.fixture(scope="module")
def installed_build(tmp_path_factory) -> Path:
    """A non-editable build of a copy of the tree whose kernels are marked "installed"."""
    root = tmp_path_factory.mktemp("build")
    return install_build(copy_source_tree(root / "src", "installed"), root / "site")


def test_installed_build_carries_its_own_kernels(installed_build, tmp_path):
    mark, package, module = where_kernels(tmp_path, [installed_build])
    assert mark == "installed"
    assert package.is_relative_to(installed_build) and module.is_relative_to(installed_build)


def test_source_tree_kernels_win_over_every_installed_build(installed_build, tmp_path):
    """Run from a source tree (as a ``ray job submit`` upload is), the package and its kernels
    come from that tree, though a non-editable build is on the path and this interpreter's
    own install (editable in a checkout) maps ``lorap_dist.kernels`` elsewhere."""
    tree = copy_source_tree(tmp_path / "upload", "uploaded")
    mark, package, module = where_kernels(tree, [tree, installed_build])
    assert mark == "uploaded"
    assert package.is_relative_to(tree) and module.is_relative_to(tree / "kernels")


@pytest.mark.parametrize(("preset", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_package_makes_idle_openmp_threads_sleep_unless_told_otherwise(preset, expected):
    """Imported before torch (as the ``lorap`` command does), the package sets
    ``OMP_WAIT_POLICY=PASSIVE`` for the OpenMP runtime torch loads; a user's value is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    code = (
        "import os, sys; import lorap_dist; assert 'torch' not in sys.modules; import torch; "
        "print(os.environ['OMP_WAIT_POLICY'])"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == expected
