"""Every subpackage of lorap_dist is listed in pyproject.toml, so a wheel (or any
non-editable install) carries it: setuptools installs only the packages listed."""

from __future__ import annotations

import tomllib
from pathlib import Path

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
