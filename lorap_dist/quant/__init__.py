"""Fake quantization with straight-through gradients, integer packing, range observers, and
the ``quantize_(model, config)`` entry point with its registry of schemes."""

from lorap_dist.quant.api import (
    QuantConfig,
    QuantizeContext,
    quantize_,
    register_scheme,
    registered_schemes,
)
from lorap_dist.quant.base import (
    IdentityQuantizer,
    Quantizer,
    average_bits,
    budget_overruns,
    collapsed_points,
    end_epoch,
    quantization_loss,
    quantization_settled,
    quantizers_of,
)
from lorap_dist.quant.fake_quant import calculate_qparams, fake_quantize, quant_range
from lorap_dist.quant.integer import (
    QuantizedRows,
    dequantize,
    dequantize_rows,
    pack_int4,
    quantize,
    quantize_rows,
    unpack_int4,
)
from lorap_dist.quant.observers import (
    CurrentRangeObserver,
    EMAObserver,
    MinMaxObserver,
    PercentileObserver,
    RangeObserver,
)
from lorap_dist.quant.quantizer import FakeQuantizer
from lorap_dist.quant.schemes.a2q import A2QConfig
from lorap_dist.quant.schemes.degree_quant import DegreeQuantConfig
from lorap_dist.quant.schemes.mixq import MixQConfig, freeze_mixq, mixq_bits
from lorap_dist.quant.schemes.qat import QATConfig

__all__ = [
    "A2QConfig",
    "DegreeQuantConfig",
    "CurrentRangeObserver",
    "EMAObserver",
    "FakeQuantizer",
    "IdentityQuantizer",
    "budget_overruns",
    "collapsed_points",
    "MinMaxObserver",
    "MixQConfig",
    "PercentileObserver",
    "QATConfig",
    "QuantConfig",
    "QuantizeContext",
    "QuantizedRows",
    "Quantizer",
    "RangeObserver",
    "average_bits",
    "calculate_qparams",
    "dequantize",
    "dequantize_rows",
    "end_epoch",
    "fake_quantize",
    "freeze_mixq",
    "mixq_bits",
    "pack_int4",
    "quant_range",
    "quantization_loss",
    "quantization_settled",
    "quantize",
    "quantize_",
    "quantize_rows",
    "quantizers_of",
    "register_scheme",
    "registered_schemes",
    "unpack_int4",
]
