"""lorap-dist: distributed training of quantized GNNs with Low-Rank Aggregation Prompting.

The package reads in the order data flows: ``graph`` (sources, partitioning, storage,
sampling) -> ``quant`` + ``prompt`` + ``nn`` (the model) -> ``distributed`` (workers,
exchange, checkpoints) -> ``tune`` -> the ``jobs/`` entry points. Lower floors never import
higher ones.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

__version__ = "0.1.0"

# Idle OpenMP threads sleep instead of spinning. PyTorch's CPU ops meet all their threads at
# the end of every parallel region; threads that spin there while other work holds the cores
# made `lorap train` about 2x slower on a busy machine (README, "Using it"). The OpenMP runtime
# reads this once, when torch loads it, so it takes effect where this package is imported
# before torch (the `lorap` command and the jobs); a value already set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# ``lorap_dist.kernels`` is the top-level ``kernels/`` folder. An installed build carries it
# inside the package (pyproject's package-dir), and then nothing below applies. Imported from a
# source tree instead (a checkout run with ``PYTHONPATH=.``, or the working directory that
# ``ray job submit --working-dir .`` uploads, which the job puts first on its path), the
# package has no ``kernels/`` of its own: this finder maps the name to the ``kernels/`` beside
# the package, ahead of every other finder, so the kernels always come from the same tree as
# the package. Without it the name would resolve through whatever install the node has (an
# editable install of another checkout maps it to that checkout's folder), or not at all.
_PACKAGE = Path(__file__).resolve().parent
_KERNELS = _PACKAGE.parent / "kernels"


class _SourceTreeKernels(importlib.abc.MetaPathFinder):
    """Finds ``lorap_dist.kernels`` in the ``kernels/`` folder beside this package."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != f"{__name__}.kernels":
            return None
        return importlib.util.spec_from_file_location(
            fullname, _KERNELS / "__init__.py", submodule_search_locations=[str(_KERNELS)]
        )


def _in_source_tree() -> bool:
    return not (_PACKAGE / "kernels").is_dir() and (_KERNELS / "__init__.py").is_file()


if _in_source_tree() and not any(isinstance(f, _SourceTreeKernels) for f in sys.meta_path):
    sys.meta_path.insert(0, _SourceTreeKernels())
