"""Triton kernels, importable as ``lorap_dist.kernels``; one op per module, each beside its
pure-torch reference (the CPU path and the test oracle).

- :mod:`lorap_dist.kernels.lorap_fused`: LoRAP prompt injection and re-quantization
  (ops ``lorap_dist::lorap_fused`` and ``lorap_dist::lorap_fused_backward``);
  :func:`~lorap_dist.kernels.lorap_fused.lorap_forward` is the entry the LoRAP module calls.
- :mod:`lorap_dist.kernels.quant_aggregate`: CSR gather of INT8 / packed-INT4 rows with
  per-row scales, dequantized and summed or averaged (op ``lorap_dist::quant_aggregate``).
- :mod:`lorap_dist.kernels.aggregate_lorap`: that aggregation handed to LoRAP in registers,
  the aggregate never written (ops ``lorap_dist::aggregate_lorap``, ``..._backward`` and
  ``..._range``; the Triton path is the ``GATHER`` form of :mod:`.lorap_fused`'s kernels).

Triton is optional: CPU tensors take the references, and the kernels are jitted only on
their first launch (so ``TRITON_INTERPRET=1`` can be set late, in tests).
"""
