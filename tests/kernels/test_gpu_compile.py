"""The Triton kernels compile for NVIDIA GPUs, not only in the interpreter.

The interpreter accepts code the GPU compiler rejects (``tl.dot`` shapes below 16, reads of
plain module globals, ...). This test compiles every kernel, through its real launcher and
with the launch options CUDA tensors get, ahead of time for sm_90 (H100 / H200) and sm_80
(A100) down to a cubin with the ``ptxas`` shipped in the triton wheel, no GPU needed, and
checks the shared memory each needs against the devices' limit per block. It
runs in a subprocess because the suite's interpreter mode is fixed at the first import of
triton.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TYPES = {
    "float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "int8": "i8", "uint8": "u8",
    "int32": "i32", "int64": "i64", "bool": "i1",
}  # fmt: skip


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90_and_sm80():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    compiled = json.loads(run.stdout.strip().splitlines()[-1])
    kernels = {c["kernel"] for c in compiled}
    assert kernels == {"_lorap_fwd_kernel", "_lorap_bwd_kernel", "_quant_aggregate_fwd_kernel"}
    assert {c["arch"] for c in compiled} == {80, 90}
    assert all(c["cubin_bytes"] > 0 for c in compiled)
    # Shared memory per block within what the devices grant (checked only at launch time).
    limit = {90: 227 * 1024, 80: 163 * 1024}
    too_big = [c for c in compiled if c["shared_bytes"] > limit[c["arch"]]]
    assert not too_big, too_big
    # Both forward passes, the gathered form, INT4 sources and half-precision inputs were built.
    fwd = [c for c in compiled if c["kernel"] == "_lorap_fwd_kernel"]
    assert {c["constexprs"]["RANGE_ONLY"] for c in fwd} == {True, False}
    assert {c["constexprs"]["GATHER"] for c in compiled if "GATHER" in c["constexprs"]} == {
        True,
        False,
    }
    assert any(c["signature"]["h_ptr"] == "*fp16" for c in fwd)
    assert any(c["constexprs"].get("BITS") == 4 and c["constexprs"]["GATHER"] for c in fwd)


def _compile_all() -> list[dict]:
    """Run every launcher on small CPU tensors with each launch compiled for the GPU instead."""
    import torch
    import triton
    from lorap_dist.kernels import aggregate_lorap as al
    from lorap_dist.kernels import lorap_fused as lf
    from lorap_dist.kernels import lorap_kernels as lk
    from lorap_dist.kernels import quant_aggregate as qa
    from lorap_dist.kernels.lorap_checks import Prompt
    from lorap_dist.kernels.quant_grid import QuantGrid
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    compiled: list[dict] = []
    state = {"arch": 90}
    cuda = torch.device("cuda")  # only read for its type: nothing touches a GPU

    class CompileInstead:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                option_names = ("num_warps", "enable_fp_fusion", "num_stages")
                options = {k: kwargs.pop(k) for k in option_names if k in kwargs}
                signature = {}
                for name, value in zip(self.kernel.arg_names, args, strict=False):
                    if isinstance(value, torch.Tensor):
                        signature[name] = "*" + TYPES[str(value.dtype).removeprefix("torch.")]
                    elif isinstance(value, float):
                        signature[name] = "fp32"
                    else:
                        signature[name] = "i32" if abs(int(value)) < 2**31 else "i64"
                signature.update({name: "constexpr" for name in kwargs})
                source = ASTSource(fn=self.kernel, signature=signature, constexprs=kwargs)
                target = GPUTarget("cuda", state["arch"], 32)
                binary = triton.compile(source, target=target, options=options)
                compiled.append({
                    "kernel": self.kernel.__name__, "arch": state["arch"], "signature": signature,
                    "constexprs": kwargs, "options": options,
                    "cubin_bytes": len(binary.asm["cubin"]),
                    "shared_bytes": binary.metadata.shared,
                })  # fmt: skip

            return launch

    # The launchers look their kernels up when they run: compile each instead of launching it.
    lk._lorap_fwd_kernel = CompileInstead(lk._lorap_fwd_kernel)
    lk._lorap_bwd_kernel = CompileInstead(lk._lorap_bwd_kernel)
    qa._quant_aggregate_fwd_kernel = CompileInstead(qa._quant_aggregate_fwd_kernel)
    launch_options, block_n = lk._launch_options, lk._default_block_n
    lk._launch_options = lambda device, *args, **kwargs: launch_options(cuda, *args, **kwargs)
    lk._default_block_n = lambda n, block_d, device: block_n(n, block_d, cuda)
    qa_options = qa._launch_options
    qa._launch_options = lambda device, block_d: qa_options(cuda, block_d)

    g = torch.Generator().manual_seed(0)
    qp = (0.02, 0, -128, 127)
    for arch in (90, 80):
        state["arch"] = arch
        # (n, d, k, r, dtype): k and r of 1 and 16, d not a power of two, fp16 and bf16, and
        # the widest d the kernels take (MAX_TRITON_WIDTH).
        shapes = [(40, 24, 1, 1, torch.float32), (40, 100, 16, 16, torch.float16)]
        shapes += [(40, 256, 8, 4, torch.float32), (40, 500, 16, 16, torch.float32)]
        if arch == 90:
            shapes += [(40, 33, 4, 8, torch.bfloat16)]
        for n, d, k, r, dtype in shapes:
            h = torch.randn(n, d, generator=g).to(dtype)
            w_phi, p_a, p_b = (
                torch.randn(*s, generator=g).to(dtype) for s in ((d, k), (k, r), (r, d))
            )
            lf.lorap_fused_triton(h, (w_phi, p_a, p_b), qp)
            lf.lorap_range_triton(h, (w_phi, p_a, p_b))
            lf.lorap_fused_backward_triton(torch.randn(n, d).to(dtype), h, (w_phi, p_a, p_b), qp)
        codes = torch.randint(-128, 128, (40, 24), dtype=torch.int8)
        w_phi, p_a, p_b = torch.randn(24, 4), torch.randn(4, 2), torch.randn(2, 24)
        lf.lorap_fused_triton(codes, (w_phi, p_a, p_b), qp, torch.rand(40))
        for bits in (8, 4):
            packed = codes if bits == 8 else qa.pack_int4(codes.clamp(-8, 7))
            indptr = torch.arange(0, 41 * 3, 3)[:41]
            indices = torch.randint(0, 40, (int(indptr[-1]),), generator=g)
            block = qa.CsrBlock(packed, torch.rand(40), indptr, indices, bits, "mean")
            qa.quant_aggregate_triton(block, 24)
            agg = QuantGrid(torch.tensor([0.1]), torch.tensor([0]), -128, 127)
            gather = al._gather(block, agg)
            prompt, grid = Prompt(w_phi, p_a, p_b), QuantGrid(*qp)
            lk.launch_forward(packed, prompt, block[1], grid, gather=gather)
            lk.launch_range(packed, prompt, block[1], gather=gather)
            lk.launch_backward(torch.randn(40, 24), packed, prompt, block[1], grid, gather=gather)
    return compiled


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
