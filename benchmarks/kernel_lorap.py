"""Latency of the fused LoRAP op against the unfused sequence of torch ops.

Claim measured: fusing LoRAP's prompt injection (GEMM, softmax, GEMM, GEMM, add,
re-quantize) into one kernel lowers its latency (the paper reports about 2x on GPU).

- CPU: the op's CPU path (``lorap_forward``: the pure-torch reference, which also computes the
  integer codes, and its closed-form backward) against the naive unfused composition (each of
  matmul, softmax, matmul, matmul, add, ``fake_quantize_per_tensor_affine`` materialised,
  backward by autograd). Passes: ``fwd`` (no autograd), ``fwd_bwd`` (fixed grid), and
  ``train``: the :class:`LoRAP` layer with an observing INT8 quantizer, as in a training
  step (range pass, forward, backward), against ``quantizer(lorap_prompt(...))``.
- GPU (when one is present): the Triton kernels against the same unfused composition, with
  the fraction of the device's peak memory bandwidth the fused kernels reach, and the fused
  quantized aggregation against gather + dequantize + ``index_add_``.
- Aggregation handed to LoRAP (``aggregate_lorap``, CPU and GPU): INT8 sources, mean over
  ``DEGREE`` neighbours, then the prompt and INT8 re-quantization, against the unfused
  sequence (float messages materialised, ``index_add_``, the unfused prompt) and against the
  two ops back to back (``quant_aggregate`` writing the fp32 aggregate, then the LoRAP op).
  Passes ``fwd`` (fixed grid, no autograd) and ``train`` (range pass, forward, backward to
  the prompt's parameters).

Writes ``benchmarks/results/kernel_lorap.json`` and prints a Markdown table. Run the CPU part
under the shared lock on the 2-core dev machine::

    .venv/bin/python benchmarks/kernel_lorap.py
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from lorap_dist.kernels.aggregate_lorap import (
    aggregate_lorap_forward,
    aggregate_lorap_forward_range,
)
from lorap_dist.kernels.lorap_fused import lorap_forward, lorap_range
from lorap_dist.kernels.quant_aggregate import CsrBlock, quant_aggregate

from lorap_dist.prompt.lorap import LoRAP, lorap_prompt
from lorap_dist.quant.quantizer import FakeQuantizer

RESULTS = Path(__file__).parent / "results" / "kernel_lorap.json"
REPORT = RESULTS.with_suffix(".md")  # the printed tables, for BENCHMARKS.md
COMMAND = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/kernel_lorap.py"
K, R = 8, 4
DEGREE = 10  # neighbours per destination row in the aggregation benchmarks
# CPU rows whose unfused E x d fp32 messages would exceed this many bytes are skipped.
CPU_MESSAGE_BYTES = 3 * 2**30
QPARAMS = (0.02, 0, -128, 127)  # INT8: scale, zero point, qmin, qmax
# The bandwidth the fused kernels' traffic is compared with: the device's copy bandwidth
# measured in the same run when a caller sets it (benchmarks/gpu_check.py does), else the
# datasheet peak below.
BANDWIDTH_REFERENCE: float | None = None
# Peak HBM bandwidth in bytes/s, keyed on a substring of torch.cuda.get_device_name().
PEAK_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,
    "A100-SXM4-80GB": 2.04e12,
    "A100": 1.94e12,
    "L40S": 0.864e12,
    "A10G": 0.6e12,
}


def fused_lorap(h, w_phi, p_a, p_b, scale, zero_point, qmin, qmax):
    """The op (``lorap_forward``) with the arguments of :func:`unfused_lorap`."""
    return lorap_forward(h, (w_phi, p_a, p_b), (scale, zero_point, qmin, qmax))


def unfused_lorap(h, w_phi, p_a, p_b, scale, zero_point, qmin, qmax):
    """The unfused sequence: every intermediate is materialised."""
    logits = h @ w_phi
    w = torch.softmax(logits, dim=1)
    t = w @ p_a
    p = t @ p_b
    y = h + p
    return torch.fake_quantize_per_tensor_affine(y, scale, zero_point, qmin, qmax)


def _step(fn: Callable, leaves: list[torch.Tensor], grad: torch.Tensor | None) -> object:
    """One forward (``grad`` None, no autograd graph) or forward + backward."""
    if grad is None:
        with torch.no_grad():
            return fn(*leaves, *QPARAMS)
    return torch.autograd.grad(fn(*leaves, *QPARAMS), leaves, grad)


def _train_step(fused: bool, leaves: list[torch.Tensor], grad: torch.Tensor) -> Callable:
    """What a training step runs: the :class:`LoRAP` layer with an observing INT8
    quantizer (range pass, forward, backward) or its unfused equivalent."""
    h, w_phi, p_a, p_b = leaves
    d = h.shape[1]
    lorap = LoRAP(d, K, R).to(h.device)
    with torch.no_grad():
        for param, value in zip(lorap.parameters(), (w_phi, p_a, p_b), strict=True):
            param.copy_(value)
    quantizer = FakeQuantizer(bits=8).to(h.device).train()
    inputs = [h, *lorap.parameters()]

    def step() -> object:
        if fused:
            out = lorap(h, quantizer)
        else:
            out = quantizer(lorap_prompt(h, lorap.w_phi, lorap.p_a, lorap.p_b))
        return torch.autograd.grad(out, inputs, grad)

    return step


def median_ms(fn: Callable[[], object], repeats: int, warmup: int, cuda: bool) -> float:
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def median_times(
    steps: dict[str, Callable[[], object]], repeats: int, warmup: int, cuda: bool
) -> dict[str, float]:
    """:func:`median_ms` of each step, collecting garbage between them."""
    timings = {}
    for name, step in steps.items():
        timings[name] = median_ms(step, repeats, warmup, cuda)
        gc.collect()
    return timings


def timing_row(n: int, d: int, pass_: str, timings: dict[str, float], moved: int | None) -> dict:
    """One result row: each variant's median milliseconds, in the order timed, and with the
    bytes ``moved`` by the fused op, the fraction of the peak bandwidth it reached."""
    row = {"n": n, "d": d, "pass": pass_}
    row.update({f"{name}_ms": round(ms, 3) for name, ms in timings.items()})
    if moved is not None:
        row["bandwidth_fraction"] = round(moved / (timings["fused"] / 1e3) / peak_bandwidth(), 3)
    return row


def _lorap_bytes(n: int, d: int, pass_: str) -> int:
    """Bytes the fused LoRAP op moves: it reads h and writes out (fp32) and codes (int8); the
    backward reads grad_out and h and writes grad_h. Weights are negligible."""
    elements = n * d
    moved = elements * (4 + 4 + 1)
    if pass_ != "fwd":
        moved += elements * (4 + 4 + 4)
    if pass_ == "train":
        moved += elements * 4  # the range pass reads h once more
    return moved


def _aggregate_lorap_bytes(n: int, d: int, pass_: str) -> int:
    """Bytes the fused aggregation + LoRAP op moves: in the forward, per edge an int8 row, its
    index and scale, per row the fp32 output and the int8 codes. Training gathers twice more
    (range pass, backward) and reads grad_out."""
    gather = n * DEGREE * (d + 8 + 4)
    moved = gather + n * d * (4 + 1)
    if pass_ == "train":
        moved += 2 * gather + n * d * 4
    return moved


def lorap_rows(device: str, sizes, dims, repeats_for, compiled: bool = False) -> list[dict]:
    """Fused vs unfused LoRAP per (N, d, pass); with ``compiled``, also ``torch.compile``
    of the unfused ops (fwd and fwd_bwd; inductor on CUDA, the eager backend on CPU, where
    only the set-up is checked)."""
    cuda = device == "cuda"
    rows = []
    compiled_fn = (
        torch.compile(unfused_lorap, dynamic=True, backend="inductor" if cuda else "eager")
        if compiled
        else None
    )
    for n in sizes:
        for d in dims:
            g = torch.Generator(device=device).manual_seed(0)
            h = torch.randn(n, d, device=device, generator=g)
            w_phi = torch.randn(d, K, device=device, generator=g) / d**0.5
            p_a = torch.randn(K, R, device=device, generator=g)
            p_b = torch.randn(R, d, device=device, generator=g) * 0.5
            grad = torch.randn(n, d, device=device, generator=g)
            leaves = [t.requires_grad_(True) for t in (h, w_phi, p_a, p_b)]
            repeats, warmup = repeats_for(n)
            for pass_ in ("fwd", "fwd_bwd", "train"):
                if pass_ == "train":
                    steps = {
                        name: _train_step(name == "fused", leaves, grad)
                        for name in ("fused", "unfused")
                    }
                else:
                    variants = {"fused": fused_lorap, "unfused": unfused_lorap}
                    if compiled_fn is not None:
                        variants["compiled"] = compiled_fn
                    backward = grad if pass_ == "fwd_bwd" else None
                    steps = {
                        name: functools.partial(_step, fn, leaves, backward)
                        for name, fn in variants.items()
                    }
                timings = median_times(steps, repeats, warmup, cuda)
                moved = _lorap_bytes(n, d, pass_) if cuda else None
                row = timing_row(n, d, pass_, timings, moved)
                rows.append(row)
                print(row, flush=True)
            del h, w_phi, p_a, p_b, grad, leaves
            gc.collect()
    return rows


def peak_bandwidth() -> float:
    if BANDWIDTH_REFERENCE is not None:
        return BANDWIDTH_REFERENCE
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BANDWIDTH.items():
        if key in name:
            return value
    raise SystemExit(f"No peak bandwidth known for {name!r}; add it to PEAK_BANDWIDTH.")


def aggregate_rows(sizes, dims, degree: int = 10) -> list[dict]:
    """GPU only: fused INT8 aggregation against gather + dequantize + index_add_."""
    rows = []
    for n in sizes:
        for d in dims:
            g = torch.Generator(device="cuda").manual_seed(0)
            codes = torch.randint(-128, 128, (n, d), device="cuda", generator=g, dtype=torch.int8)
            scale = torch.rand(n, device="cuda", generator=g) * 0.1
            indices = torch.randint(0, n, (n * degree,), device="cuda", generator=g)
            indptr = torch.arange(0, n * degree + 1, degree, device="cuda")
            dst = torch.arange(n, device="cuda").repeat_interleave(degree)

            fused = functools.partial(quant_aggregate, codes, scale, indptr, indices, d, 8, "sum")
            unfused = functools.partial(_gather_index_add, codes, scale, indices, dst)
            fused_ms = median_ms(fused, 20, 3, True)
            unfused_ms = median_ms(unfused, 20, 3, True)
            moved = n * degree * (d + 8 + 4) + n * d * 4  # codes, index + scale per edge, out
            timings = {"fused": fused_ms, "unfused": unfused_ms}
            rows.append(timing_row(n, d, "fwd", timings, moved))
            print(rows[-1], flush=True)
    return rows


def _gather_index_add(codes, scale, indices, dst) -> torch.Tensor:
    """The unfused aggregation: materialise E x d float messages, then index_add_."""
    messages = codes[indices].float() * scale[indices, None]
    out = torch.zeros(codes.shape[0], codes.shape[1], device=codes.device)
    return out.index_add_(0, dst, messages)


def _int8_block(n: int, d: int, device: str):
    """INT8 sources with per-row scales, ``DEGREE`` random in-edges per destination."""
    g = torch.Generator(device=device).manual_seed(0)
    codes = torch.randint(-128, 128, (n, d), device=device, generator=g, dtype=torch.int8)
    scale = torch.rand(n, device=device, generator=g) * 0.01 + 0.001
    indices = torch.randint(0, n, (n * DEGREE,), device=device, generator=g)
    indptr = torch.arange(0, n * DEGREE + 1, DEGREE, device=device)
    return codes, scale, indptr, indices


def _observed_grid(y_range: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An INT8 min/max grid from ``[min, max]``, on the device (no host sync)."""
    lo, hi = y_range[0].clamp(max=0), y_range[1].clamp(min=0)
    scale = ((hi - lo) / 255).clamp(min=1e-8).reshape(1)
    zero_point = (-128 - torch.round(lo / scale)).clamp(-128, 127).to(torch.int32).reshape(1)
    return scale, zero_point


def _agg_lorap_steps(block, prompt, grad, d: int, train: bool) -> dict[str, Callable]:
    """The three ways to run aggregation + LoRAP: one step each (see the module docstring)."""
    codes, scale, indptr, indices = block
    csr = CsrBlock(*block, 8, "mean")
    dst = torch.arange(codes.shape[0], device=codes.device).repeat_interleave(DEGREE)

    def fused() -> object:
        if not train:
            with torch.no_grad():
                return aggregate_lorap_forward(csr, prompt, QPARAMS)
        y_range, saved = aggregate_lorap_forward_range(csr, prompt)
        grid = (*_observed_grid(y_range), -128, 127)
        out = aggregate_lorap_forward(csr, prompt, grid, saved=saved)
        return torch.autograd.grad(out, prompt, grad)

    def two_ops() -> object:
        h = quant_aggregate(*block, d, 8, "mean")
        if not train:
            with torch.no_grad():
                return lorap_forward(h, prompt, QPARAMS)
        y_range, *saved = lorap_range(h, *(t.detach() for t in prompt))
        grid = (*_observed_grid(y_range), -128, 127)
        out = lorap_forward(h, prompt, grid, saved=tuple(saved))
        return torch.autograd.grad(out, prompt, grad)

    def unfused() -> object:
        with torch.set_grad_enabled(train):
            h = _gather_index_add(codes, scale, indices, dst) / DEGREE
            y = h + (torch.softmax(h @ prompt[0], dim=1) @ prompt[1]) @ prompt[2]
            if not train:
                return torch.fake_quantize_per_tensor_affine(y, *QPARAMS)
            grid = _observed_grid(torch.stack(torch.aminmax(y.detach())))
            out = torch.fake_quantize_per_tensor_affine(y, *grid, -128, 127)
            return torch.autograd.grad(out, prompt, grad)

    return {"fused": fused, "two_ops": two_ops, "unfused": unfused}


def aggregate_lorap_rows(device: str, sizes, dims, repeats_for) -> list[dict]:
    """Aggregation + LoRAP: the fused op against two ops and against unfused torch."""
    cuda = device == "cuda"
    rows = []
    for n in sizes:
        for d in dims:
            if not cuda and n * DEGREE * d * 4 > CPU_MESSAGE_BYTES:
                print(f"skip n={n} d={d}: unfused messages exceed {CPU_MESSAGE_BYTES} bytes")
                continue
            block = _int8_block(n, d, device)
            g = torch.Generator(device=device).manual_seed(1)
            prompt = [
                (torch.randn(d, K, device=device, generator=g) / d**0.5).requires_grad_(True),
                torch.randn(K, R, device=device, generator=g).requires_grad_(True),
                (torch.randn(R, d, device=device, generator=g) * 0.1).requires_grad_(True),
            ]
            grad = torch.randn(n, d, device=device, generator=g)
            repeats, warmup = repeats_for(n)
            for pass_ in ("fwd", "train"):
                steps = _agg_lorap_steps(block, prompt, grad, d, pass_ == "train")
                timings = median_times(steps, repeats, warmup, cuda)
                moved = _aggregate_lorap_bytes(n, d, pass_) if cuda else None
                row = timing_row(n, d, pass_, timings, moved)
                rows.append(row)
                print(row, flush=True)
            del block, prompt, grad
            gc.collect()
    return rows


def markdown(rows: list[dict], title: str) -> str:
    """A Markdown table of timing rows; a ``two_ops_ms`` column and a bandwidth column when
    the rows have them."""
    two_ops = any("two_ops_ms" in r for r in rows)
    has_bw = any("bandwidth_fraction" in r for r in rows)
    head = ["N", "d", "pass", "fused ms"] + (["two ops ms"] if two_ops else [])
    head += ["unfused ms"] + (["two ops / fused"] if two_ops else []) + ["unfused / fused"]
    head += ["fused bandwidth / peak"] if has_bw else []
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |"]
    lines.append("|" + "|".join("---" if h == "pass" else "---:" for h in head) + "|")
    for r in rows:
        cells = [f"{r['n']:,}", str(r["d"]), r["pass"], f"{r['fused_ms']:.2f}"]
        cells += [f"{r['two_ops_ms']:.2f}"] if two_ops else []
        cells += [f"{r['unfused_ms']:.2f}"]
        cells += [f"{r['two_ops_ms'] / r['fused_ms']:.2f}x"] if two_ops else []
        cells += [f"{r['unfused_ms'] / r['fused_ms']:.2f}x"]
        cells += [f"{r['bandwidth_fraction']:.2f}"] if has_bw else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument(
        "--only-aggregate",
        action="store_true",
        help="run only the aggregation + LoRAP rows; keep the other CPU rows of the last run",
    )
    args = parser.parse_args()

    def cpu_repeats(n: int) -> tuple[int, int]:
        return (9, 2) if n <= 10_000 else (5, 1) if n <= 100_000 else (3, 1)

    result: dict = {
        "k": K,
        "r": R,
        "qparams": list(QPARAMS),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    tables = []
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if not args.skip_cpu and not args.only_aggregate:
        result["cpu"] = lorap_rows("cpu", args.sizes, args.dims, cpu_repeats)
    else:
        result["cpu"] = previous.get("cpu")
    if result["cpu"]:
        tables.append(markdown(result["cpu"], "CPU: the op's reference path vs unfused torch ops"))
    if not args.skip_cpu:
        result["cpu_aggregate_lorap"] = aggregate_lorap_rows(
            "cpu", args.sizes, args.dims, cpu_repeats
        )
        tables.append(
            markdown(
                result["cpu_aggregate_lorap"],
                f"CPU: aggregation (INT8, mean of {DEGREE}) + LoRAP, the op vs two ops vs unfused",
            )
        )
    if torch.cuda.is_available():
        result["gpu_device"] = torch.cuda.get_device_name()
        result["gpu"] = lorap_rows("cuda", args.sizes, args.dims, lambda n: (20, 3))
        result["gpu_quant_aggregate"] = aggregate_rows(args.sizes, args.dims)
        tables.append(
            markdown(result["gpu"], f"GPU ({result['gpu_device']}): Triton fused vs unfused")
        )
        tables.append(markdown(result["gpu_quant_aggregate"], "GPU: quant_aggregate vs index_add_"))
        result["gpu_aggregate_lorap"] = aggregate_lorap_rows(
            "cuda", args.sizes, args.dims, lambda n: (20, 3)
        )
        tables.append(
            markdown(
                result["gpu_aggregate_lorap"],
                f"GPU: aggregation (INT8, mean of {DEGREE}) + LoRAP, fused vs two ops vs unfused",
            )
        )
    else:
        result["gpu"] = None
        result["gpu_reason"] = "torch.cuda.is_available() is False on the machine that ran this."
        tables.append(f"GPU: not measured ({result['gpu_reason']})")
    report = "\n\n".join(tables)
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    REPORT.write_text(
        "## Fused LoRAP kernel latency (`benchmarks/kernel_lorap.py`)\n\n"
        f"Command: `{COMMAND}` (k={K}, r={R}, INT8 output, fp32, "
        f"{result['cpu_threads']} CPU threads, torch {result['torch']}).\n\n"
        'On CPU the "fused" column is the op\'s CPU path, the pure-torch reference (it also '
        "computes the integer codes; its closed-form backward reads the softmax weights and "
        "STE mask its forward kept; in training it reuses the range pass's prompted sum), so "
        "the CPU ratio measures the op's implementation, not kernel fusion; the fusion claim "
        "is the GPU table. In the aggregation table, the op and the two ops run the same "
        "computation on CPU; 'unfused' materialises per-edge float messages for index_add_."
        "\n\n" + report + "\n"
    )


if __name__ == "__main__":
    main()
