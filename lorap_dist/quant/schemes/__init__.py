"""Quantization schemes, each a config dataclass plus a handler registered with
:func:`lorap_dist.quant.register_scheme`.

``SCHEMES`` maps the name used in YAML configs (``quant.scheme``) to the module and config
class that implement it; modules are imported on first use.
"""

from __future__ import annotations

import importlib

from lorap_dist.config import ConfigError

SCHEMES: dict[str, tuple[str, str]] = {
    "qat": ("lorap_dist.quant.schemes.qat", "QATConfig"),
    "degree_quant": ("lorap_dist.quant.schemes.degree_quant", "DegreeQuantConfig"),
    "a2q": ("lorap_dist.quant.schemes.a2q", "A2QConfig"),
    "mixq": ("lorap_dist.quant.schemes.mixq", "MixQConfig"),
}


def scheme_config_type(name: str) -> type:
    """The config class of scheme ``name`` (importing its module registers its handler)."""
    if name not in SCHEMES:
        raise ConfigError(
            f"quant.scheme={name!r} is not known; choose one of {['none', *SCHEMES]}."
        )
    module_name, class_name = SCHEMES[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"quant.scheme={name!r} is not available in this build: {exc}") from exc
    return getattr(module, class_name)
