"""Triton kernels, importable as ``lorap_dist.kernels``; one op per module (its kernels,
launchers, registered ops and pure-torch reference, the CPU path and the test oracle), and
what several ops share in modules of its own.

- :mod:`lorap_dist.kernels.lorap_fused`: LoRAP prompt injection and re-quantization
  (ops ``lorap_dist::lorap_fused``, ``lorap_dist::lorap_fused_backward`` and
  ``lorap_dist::lorap_range``, their checked Triton launchers and the references
  ``lorap_reference`` / ``lorap_range_reference``);
  :func:`~lorap_dist.kernels.lorap_fused.lorap_forward` is the entry the LoRAP module calls.
- :mod:`lorap_dist.kernels.quant_aggregate`: CSR gather of INT8 / packed-INT4 rows with
  per-row scales, dequantized and summed or averaged (op ``lorap_dist::quant_aggregate``).
- :mod:`lorap_dist.kernels.aggregate_lorap`: that aggregation handed to LoRAP in registers,
  the aggregate never written (ops ``lorap_dist::aggregate_lorap``, ``..._backward`` and
  ``..._range``; the Triton path is the ``GATHER`` form of the LoRAP kernels).

Shared by the two LoRAP ops:

- :mod:`lorap_dist.kernels.lorap_kernels`: the LoRAP forward (with its range pass) and
  backward kernels, with the formulas, and their unchecked launchers ``launch_forward`` /
  ``launch_range`` / ``launch_backward`` (``h`` read from memory or gathered, ``Gather``).
- :mod:`lorap_dist.kernels.lorap_cpu`: LoRAP's pure-torch CPU path (the prompted sum, the
  forward that keeps its residuals, the closed-form backward).
- :mod:`lorap_dist.kernels.lorap_checks`: the inputs the LoRAP ops accept, and the errors
  that say what is wrong.

Shared by all kernels:

- :mod:`lorap_dist.kernels.device_functions`: the ``@triton.jit`` device functions the
  kernels share (fake quantization, INT8 / INT4 decoding, the gathered aggregate, LoRAP's
  row-block loads and prompt).
- :mod:`lorap_dist.kernels.quant_grid`: the quantization grid on the host (checks, codes'
  dtype, the ``[scale, 1 / scale, zero_point]`` the kernels read).
- :mod:`lorap_dist.kernels._triton`: host-side plumbing that never imports triton.

Triton is optional: CPU tensors take the references. The op modules import triton when it
is installed, which fixes its interpret mode: set ``TRITON_INTERPRET`` before importing them
(the root conftest does, before collection). This package imports none of them.
"""
