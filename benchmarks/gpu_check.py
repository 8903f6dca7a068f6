"""Every GPU claim of the project, measured in one short run on one lent GPU.

A GPU machine is lent now and then for about 15 minutes, its start included, so the GPU
work is prepared here and runs as one command (the measurements take at most about 7
minutes on one H100/H200, the kernel test suite, last, at most about 5 more; a run cut
short keeps every step it finished, and ``--only`` picks steps)::

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out gpu-out

It needs only what such a machine has (torch with CUDA, triton, torch_geometric, numpy,
pyarrow, pyyaml, pytest; no ray, ogb or pymetis) and runs from the repository root without
an install.
Steps, in order, each in its own process with a time limit, each writing its figures as
soon as it ends (a killed run keeps what it had) into ``<out>/gpu_check.json``:

1. ``correctness``: the sampler's CUDA tests (pytest), and the Triton kernels on the GPU
   against their pure-torch references (LoRAP forward and backward, ``quant_aggregate``,
   ``aggregate_lorap``);
2. ``kernels``: the device's measured copy bandwidth, then fused LoRAP vs the unfused ops vs
   ``torch.compile`` of the unfused ops (fwd, fwd + bwd, train) for N up to 4 M rows and
   d in {64, 128, 256}, with the bandwidth the fused op reaches as a fraction of the copy
   bandwidth; ``quant_aggregate`` vs gather + ``index_add_``; ``aggregate_lorap`` vs the
   unfused ops and vs the two ops;
3. ``sampler``: sampled edges/s with feature gather on a generated graph of 2 M nodes;
4. ``train_step``: a 3-layer GraphSAGE step (fanout [15, 10, 5], batch 1024), FP32 vs INT4
   QAT vs INT4 + LoRAP: seeds/s and LoRAP's overhead;
5. ``nccl``: ``torch.distributed`` with NCCL in a world of one process: the feature
   exchange's all_to_all with INT8 payloads, and one DDP step through the distributed
   worker's own step function (:func:`lorap_dist.distributed.step.train_batch`);
6. ``kernel_tests``: the kernel test suite, ``tests/kernels``, compiled on the GPU (pytest
   with ``LORAP_TEST_DEVICE=cuda TRITON_INTERPRET=0``; its exit code and the tail of its
   output are recorded; ``--dry-run`` runs a few of its tests on the CPU in Triton's
   interpreter). Last, because compiling its ~130 kernel variants takes minutes.

A failing step records its error and the run goes on. ``--dry-run`` runs every step's
set-up on the CPU at toy sizes (gloo instead of NCCL); CI runs it, so the script cannot rot.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Seconds each step may take on the GPU (about 7 minutes for the measurements, process
# starts included, then the kernel test suite's KERNEL_TESTS_SECONDS and its start).
BUDGET = {
    "correctness": 80,
    "kernels": 150,
    "sampler": 50,
    "train_step": 90,
    "nccl": 50,
    "kernel_tests": 280,
}
STEPS = tuple(BUDGET)
# The kernel test suite on the GPU compiles about 130 kernel variants, one by one, so it
# takes minutes. It leaves out test_gpu_compile, which cross-compiles the kernels for sm_80
# and sm_90 without a GPU (2 minutes on a cold cache; CI runs it): here they compile for the
# device itself.
KERNEL_TESTS = ["tests/kernels", "--ignore", "tests/kernels/test_gpu_compile.py"]
KERNEL_TESTS_SECONDS = 240
# What --dry-run runs of it, in Triton's interpreter: a bit-exact test of each kernel.
QUICK_KERNEL_TESTS = (
    "test_rounding_ties_bit_exact or test_int32_indices_and_no_edges"
    " or (test_aggregate_in_registers_is_bit_exact and agg_int8 and sum)"
)


# ---------------------------------------------------------------------------------------
# The driver: one child process per step.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for gpu_check.json")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes (CI)")
    parser.add_argument("--only", default=",".join(STEPS), help="comma-separated steps")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # a child running one step
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.step:
        run_step(args.step, out, args.dry_run)
        return
    result_path = out / "gpu_check.json"
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {}}
    result["dry_run"] = args.dry_run
    for name in args.only.split(","):
        if name not in BUDGET:
            raise SystemExit(f"--only: unknown step {name!r}; steps are {list(STEPS)}.")
        limit = BUDGET[name] * (3 if args.dry_run else 1)
        began = time.perf_counter()
        command = [sys.executable, __file__, "--step", name, "--out", str(out)]
        command += ["--dry-run"] if args.dry_run else []
        env = os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        try:
            done = subprocess.run(
                command, cwd=ROOT, env=env, timeout=limit, capture_output=True, text=True
            )
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
            log = (done.stdout + done.stderr)[-3000:]
        except subprocess.TimeoutExpired as expired:
            status = f"timed out after {limit} s"
            log = ((expired.stdout or b"") + (expired.stderr or b"")).decode(errors="replace")
            log = log[-3000:]
        step_file = out / f"{name}.json"
        figures = json.loads(step_file.read_text()) if step_file.exists() else {}
        result["steps"][name] = {
            "status": status if figures.get("error") is None else "failed",
            "seconds": round(time.perf_counter() - began, 1),
            **figures,
        }
        if result["steps"][name]["status"] != "ok":
            result["steps"][name]["log_tail"] = log
        result_path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"{name}: {result['steps'][name]['status']} ({result['steps'][name]['seconds']} s)")
    print(f"wrote {result_path}")


def run_step(name: str, out: Path, dry_run: bool) -> None:
    """Run step ``name`` in this process, saving its figures after every measurement."""
    import torch

    figures: dict[str, Any] = {"machine": _machine(torch)}
    path = out / f"{name}.json"

    def save(key: str, value: Any) -> None:
        figures[key] = value
        path.write_text(json.dumps(figures, indent=1) + "\n")

    if not dry_run and not torch.cuda.is_available():
        save("error", "no CUDA device: run with --dry-run on a machine without a GPU")
        raise SystemExit(1)
    device = torch.device("cpu" if dry_run else "cuda")
    try:
        STEP_FUNCTIONS[name](device, dry_run, save)
    except Exception:
        save("error", traceback.format_exc()[-3000:])
        raise


def _machine(torch: Any) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }


def _median_ms(fn: Callable[[], object], device: Any, repeats: int = 10, warmup: int = 2) -> float:
    from kernel_lorap import median_ms

    return median_ms(fn, repeats, warmup, cuda=device.type == "cuda")


# ---------------------------------------------------------------------------------------
# 1. Correctness on the GPU


def step_correctness(device: Any, dry_run: bool, save: Callable[[str, Any], None]) -> None:
    import torch
    from lorap_dist.kernels import aggregate_lorap as al
    from lorap_dist.kernels import lorap_fused as lf
    from lorap_dist.kernels import quant_aggregate as qa

    sampler_tests = ["tests/graph/test_sampler.py", "-k", "cuda"]
    save("sampler_cuda_tests", run_pytest(sampler_tests, {"TRITON_INTERPRET": "0"}, seconds=60))

    checks = []
    for n, d, (scale, zp, qmin, qmax) in [
        (1000, 64, (0.05, 0, -128, 127)),
        (777, 100, (0.3, -1, -8, 7)),
        (4096 if not dry_run else 64, 256, (0.05, 3, -128, 127)),
    ]:
        g = torch.Generator().manual_seed(n)
        h = torch.randn(n, d, generator=g)
        w_phi, p_a = torch.randn(d, 8, generator=g) / d**0.5, torch.randn(8, 4, generator=g)
        p_b = torch.randn(4, d, generator=g) * 0.5
        grad = torch.randn(n, d, generator=g)
        leaves_ref = [t.clone().requires_grad_(True) for t in (h, w_phi, p_a, p_b)]
        _, ref = lf.lorap_reference(leaves_ref[0], leaves_ref[1:], (scale, zp, qmin, qmax))
        ref_grads = torch.autograd.grad(ref, leaves_ref, grad)
        leaves = [t.to(device).requires_grad_(True) for t in (h, w_phi, p_a, p_b)]
        grid = (torch.tensor([scale], device=device), torch.tensor([zp], dtype=torch.int32,
                device=device), qmin, qmax)  # fmt: skip
        out = lf.lorap_forward(leaves[0], leaves[1:], grid)
        grads = torch.autograd.grad(out, leaves, grad.to(device))
        steps_off = ((out.detach().cpu() - ref.detach()) / scale).abs()
        checks.append(
            {
                "op": "lorap_forward",
                "n": n,
                "d": d,
                "max_steps_off": float(steps_off.max()),
                "share_off": float((steps_off > 0.5).float().mean()),  # near-ties may flip
                "max_grad_error": max(
                    float((a.cpu() - b).abs().max() / b.abs().max().clamp_min(1e-12))
                    for a, b in zip(grads, ref_grads, strict=True)
                ),
            }
        )
        save("kernel_checks", checks)

    g = torch.Generator().manual_seed(1)
    n, d, degree = 2000 if not dry_run else 50, 96, 10
    codes = torch.randint(-128, 128, (n, d), generator=g, dtype=torch.int8)
    src_scale = torch.rand(n, generator=g) * 0.01 + 0.001
    indices = torch.randint(0, n, (n * degree,), generator=g)
    indptr = torch.arange(0, n * degree + 1, degree)
    block = [t.to(device) for t in (codes, src_scale, indptr, indices)]
    ref_agg = qa.quant_aggregate_reference(
        qa.CsrBlock(codes, src_scale, indptr, indices, 8, "mean"), d
    )
    agg = qa.quant_aggregate(*block, d, 8, "mean")
    checks.append(
        {"op": "quant_aggregate", "n": n, "d": d,
         "max_error": float((agg.cpu() - ref_agg).abs().max())}
    )  # fmt: skip
    w_phi, p_a = torch.randn(d, 8, generator=g) / d**0.5, torch.randn(8, 4, generator=g)
    p_b = torch.randn(4, d, generator=g) * 0.5
    prompt = [t.to(device) for t in (w_phi, p_a, p_b)]
    grid = (0.05, 0, -128, 127)
    fused = al.aggregate_lorap_forward(qa.CsrBlock(*block, 8, "mean"), prompt, grid)
    two_ops = lf.lorap_forward(agg, prompt, grid)
    checks.append(
        {"op": "aggregate_lorap", "n": n, "d": d,
         "max_steps_off_two_ops": float(((fused - two_ops) / 0.05).abs().max())}
    )  # fmt: skip
    save("kernel_checks", checks)


# ---------------------------------------------------------------------------------------
# 6. The kernel test suite on the GPU


def step_kernel_tests(device: Any, dry_run: bool, save: Callable[[str, Any], None]) -> None:
    tests = KERNEL_TESTS + (["-k", QUICK_KERNEL_TESTS] if dry_run else [])
    interpret = "1" if device.type == "cpu" else "0"
    env = {"LORAP_TEST_DEVICE": device.type, "TRITON_INTERPRET": interpret}
    save("kernel_tests", {"device": device.type, **run_pytest(tests, env, KERNEL_TESTS_SECONDS)})


def run_pytest(args: list[str], env: dict[str, str], seconds: float) -> dict[str, Any]:
    """Run pytest on ``args`` with ``env`` added: its exit code and the tail of its output.

    At the time limit pytest gets SIGINT rather than SIGKILL, so that it still prints the
    failures so far and its counts.
    """
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    env = os.environ | env
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as tests:
        try:
            output, _ = tests.communicate(timeout=seconds)
            timed_out = False
        except subprocess.TimeoutExpired:
            tests.send_signal(signal.SIGINT)
            try:
                output, _ = tests.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                tests.kill()
                output, _ = tests.communicate()
            timed_out = True
    return {"exit": tests.returncode, "timed_out": timed_out, "tail": output[-3000:]}


# ---------------------------------------------------------------------------------------
# 2. Kernel speed


def copy_bandwidth(device: Any, numel: int) -> float:
    """Bytes per second of a device-to-device copy (read + write), median of repeats."""
    import torch

    src = torch.empty(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device, repeats=10, warmup=3)
    return 2 * 4 * numel / (ms / 1e3)


def step_kernels(device: Any, dry_run: bool, save: Callable[[str, Any], None]) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import kernel_lorap as kl

    sizes = [256] if dry_run else [262_144, 1_048_576, 4_194_304]
    dims = [16] if dry_run else [64, 128, 256]
    bandwidth = copy_bandwidth(device, 4096 if dry_run else 1 << 28)
    save("copy_bandwidth_GBps", round(bandwidth / 1e9, 1))
    repeats = (lambda n: (2, 1)) if dry_run else (lambda n: (10, 2))
    kl.BANDWIDTH_REFERENCE = bandwidth
    rows: list[dict] = []
    for n in sizes:  # one size at a time, so a timed-out step keeps the smaller ones
        rows += kl.lorap_rows(device.type, [n], dims, repeats, compiled=True)
        save("lorap", rows)
    if device.type == "cuda":
        save("quant_aggregate", kl.aggregate_rows(sizes, dims))
    agg_rows: list[dict] = []
    for n in sizes[:2]:  # the unfused side materialises E x d messages: 41 GB at 4 M x 256
        agg_rows += kl.aggregate_lorap_rows(device.type, [n], dims, repeats)
        save("aggregate_lorap", agg_rows)
    big = [r for r in rows if r["n"] >= 1_048_576 or dry_run]
    if big:
        save(
            "targets",
            {
                "fused_over_unfused_min": min(r["unfused_ms"] / r["fused_ms"] for r in big),
                "bandwidth_fraction_min": min(r.get("bandwidth_fraction", 0) for r in big),
                "compiled_over_fused_min": min(
                    r["compiled_ms"] / r["fused_ms"] for r in big if "compiled_ms" in r
                ),
            },
        )


# ---------------------------------------------------------------------------------------
# 3. Sampler and 4. training step on a generated graph


def random_graph(num_nodes: int, avg_degree: int, features: int, device: Any, seed: int = 0):
    """A CSR with power-law-ish in-degrees, and random features and labels, on ``device``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(num_nodes, generator=g).pow(-0.5)  # heavy tail
    degree = (weights / weights.mean() * avg_degree).round().long().clamp(1, 10_000)
    indptr = torch.zeros(num_nodes + 1, dtype=torch.int64)
    indptr[1:] = degree.cumsum(0)
    indices = torch.randint(0, num_nodes, (int(indptr[-1]),), generator=g, dtype=torch.int32)
    x = torch.randn(num_nodes, features, generator=g)
    y = torch.randint(0, 16, (num_nodes,), generator=g)
    return [t.to(device) for t in (indptr, indices, x, y)]


def step_sampler(device: Any, dry_run: bool, save: Callable[[str, Any], None]) -> None:
    import torch

    from lorap_dist.graph.sampler import NeighborSampler

    n = 2_000 if dry_run else 2_000_000
    indptr, indices, x, _ = random_graph(n, 20, 100, device)
    sampler = NeighborSampler(indptr, indices, [15, 10, 5])
    batch = 64 if dry_run else 1024
    gen = torch.Generator(device=device).manual_seed(0)
    seeds = [  # distinct seeds per batch, as the training loops draw them
        torch.randperm(n, device=device, generator=gen)[:batch] for _ in range(30)
    ]
    edges = []

    def one(i: int) -> None:
        sample = sampler.sample_blocks(seeds[i % len(seeds)], gen)
        _ = x[sample.node_ids]
        edges.append(sum(b.edge_index.size(1) for b in sample.blocks))

    for i in range(3):
        one(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    edges.clear()
    start = time.perf_counter()
    for i in range(20):
        one(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    save("graph", {"nodes": n, "edges": int(indptr[-1]), "features": 100})
    save("sampled_edges_per_s", round(sum(edges) / seconds))
    save("batches_per_s", round(20 / seconds, 2))


def step_train_step(device: Any, dry_run: bool, save: Callable[[str, Any], None]) -> None:
    import torch
    import torch.nn.functional as F

    from lorap_dist.config import ModelConfig, PromptConfig, TrainConfig
    from lorap_dist.graph.block import NodeInfo
    from lorap_dist.graph.sampler import NeighborSampler
    from lorap_dist.nn import build_model
    from lorap_dist.optim import build_optimizer
    from lorap_dist.quant import quantize_
    from lorap_dist.quant.schemes.qat import QATConfig

    n = 2_000 if dry_run else 2_000_000
    indptr, indices, x, y = random_graph(n, 20, 100, device, seed=1)
    degree = indptr.diff()
    sampler = NeighborSampler(indptr, indices, [15, 10, 5])
    batch = 64 if dry_run else 1024
    hidden = 32 if dry_run else 256
    gen = torch.Generator(device=device).manual_seed(0)
    rows = {}
    for name, bits, prompt in (("fp32", None, "none"), ("int4", 4, "none"),
                               ("int4_lorap", 4, "lorap")):  # fmt: skip
        torch.manual_seed(0)
        model = build_model(
            100, 16, ModelConfig(arch="sage", hidden=hidden, layers=3), PromptConfig(kind=prompt)
        )
        if bits is not None:
            quantize_(model, QATConfig(bits=bits), num_nodes=n)
        model.to(device).train()
        optimizer = build_optimizer(model, TrainConfig())

        def step(model: torch.nn.Module = model, optimizer: Any = optimizer) -> None:
            seeds = torch.randperm(n, device=device, generator=gen)[:batch]
            sample = sampler.sample_blocks(seeds, gen)
            ids = sample.node_ids
            logits = model(x[ids], sample.blocks, NodeInfo(ids=ids, degree=degree[ids]))
            loss = F.cross_entropy(logits, y[ids[:batch]])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        ms = _median_ms(step, device, repeats=3 if dry_run else 10, warmup=1 if dry_run else 3)
        rows[name] = {"step_ms": round(ms, 2), "seeds_per_s": round(batch / (ms / 1e3))}
        save("steps", rows)
    overhead = rows["int4_lorap"]["step_ms"] / rows["int4"]["step_ms"] - 1
    save("lorap_overhead", round(overhead, 3))


# ---------------------------------------------------------------------------------------
# 5. NCCL


def step_nccl(device: Any, dry_run: bool, save: Callable[[str, Any], None]) -> None:
    import datetime
    import tempfile

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lorap_dist.config import ModelConfig, PromptConfig, TrainConfig
    from lorap_dist.distributed.exchange import FeatureExchange
    from lorap_dist.distributed.step import train_batch
    from lorap_dist.graph.sampler import NeighborSampler
    from lorap_dist.nn import build_model
    from lorap_dist.optim import build_optimizer
    from lorap_dist.quant import quantize_
    from lorap_dist.quant.integer import quantize_rows
    from lorap_dist.quant.schemes.qat import QATConfig

    backend = "gloo" if dry_run else "nccl"
    # A file store, not a TCP port picked in advance: another process can take a free port
    # before the group binds it, and the group then waits for a peer that never comes.
    store = Path(tempfile.mkdtemp(prefix="lorap-gpu-check-")) / "store"
    dist.init_process_group(
        backend,
        init_method=f"file://{store}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        n = 2_000 if dry_run else 200_000
        indptr, indices, x, y = (t.cpu() for t in random_graph(n, 10, 64, "cpu", seed=2))
        codes, scales = quantize_rows(x)
        exchange = FeatureExchange(
            torch.tensor([[0, n]]), codes, scales,
            device=device,
        )  # fmt: skip
        ids = torch.randint(0, n, (50_000 if not dry_run else 500,))
        fetched = exchange.fetch(ids)
        expected = codes[ids].float() * scales[ids, None]
        save("exchange", {
            "backend": backend, "payload": exchange.payload, "rows": int(ids.numel()),
            "max_error": float((fetched.cpu() - expected).abs().max()),
            "fetch_ms": round(_median_ms(lambda: exchange.fetch(ids), device, 5, 1), 3),
        })  # fmt: skip
        model = build_model(64, 16, ModelConfig(arch="sage", hidden=64), PromptConfig("lorap"))
        quantize_(model, QATConfig(bits=4))
        model.to(device)
        ddp = DistributedDataParallel(model, device_ids=[0] if device.type == "cuda" else None)
        optimizer = build_optimizer(model, TrainConfig())
        sampler = NeighborSampler(indptr, indices, [10, 5])
        seeds = torch.randperm(n)[:256]
        before = [p.detach().clone() for p in model.parameters()]
        totals = train_batch(
            ddp, model, optimizer, sampler, exchange, seeds, y[seeds], indptr.diff(),
            torch.Generator().manual_seed(0), device,
        )  # fmt: skip
        after = list(model.parameters())
        moved = sum(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
        save("ddp_step", {"loss": float(totals[0] / totals[2]), "parameters_updated": moved})
    finally:
        dist.destroy_process_group()
        import shutil

        shutil.rmtree(store.parent, ignore_errors=True)


STEP_FUNCTIONS = {
    "correctness": step_correctness,
    "kernel_tests": step_kernel_tests,
    "kernels": step_kernels,
    "sampler": step_sampler,
    "train_step": step_train_step,
    "nccl": step_nccl,
}

if __name__ == "__main__":
    main()
