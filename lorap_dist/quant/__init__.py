"""Fake quantization with straight-through gradients, integer packing, range observers, and
the ``quantize_(model, config)`` entry point with its registry of schemes."""

from lorap_dist.quant.api import QuantizeContext, quantize_, register_scheme, registered_schemes
from lorap_dist.quant.base import (
    IdentityQuantizer,
    Quantizer,
    average_bits,
    quantization_loss,
    quantizers_of,
)

__all__ = [
    "IdentityQuantizer",
    "QuantizeContext",
    "Quantizer",
    "average_bits",
    "quantization_loss",
    "quantize_",
    "quantizers_of",
    "register_scheme",
    "registered_schemes",
]
