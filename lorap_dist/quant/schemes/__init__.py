"""The built-in quantization schemes, each a config dataclass plus a handler registered
under its ``quant.scheme`` name with :func:`lorap_dist.quant.api.register_scheme`: plain
QAT, Degree-Quant, A2Q and MixQ. Importing this package registers them."""

from lorap_dist.quant.api import scheme_config_type
from lorap_dist.quant.schemes import a2q, degree_quant, mixq, qat

__all__ = ["a2q", "degree_quant", "mixq", "qat", "scheme_config_type"]
