"""lorap-dist: distributed training of quantized GNNs with Low-Rank Aggregation Prompting.

The package reads in the order data flows: ``graph`` (sources, partitioning, storage,
sampling) -> ``quant`` + ``prompt`` + ``nn`` (the model) -> ``distributed`` (workers,
exchange, checkpoints) -> ``tune`` -> the ``jobs/`` entry points. Lower floors never import
higher ones.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

# ``lorap_dist.kernels`` is the top-level ``kernels/`` folder: an install maps it there
# (pyproject's package-dir). Run from a source checkout without an install
# (``PYTHONPATH=.``, as on a lent GPU machine), this finder maps it; it comes last on
# ``sys.meta_path``, so an install's own mapping always wins.
_KERNELS = Path(__file__).resolve().parent.parent / "kernels"


class _SourceCheckoutKernels(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != f"{__name__}.kernels" or not (_KERNELS / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, _KERNELS / "__init__.py", submodule_search_locations=[str(_KERNELS)]
        )


if not any(isinstance(finder, _SourceCheckoutKernels) for finder in sys.meta_path):
    sys.meta_path.append(_SourceCheckoutKernels())
