"""Is the project's fake quantization faster than PyTorch's fused CPU kernel, and equal to it?

``lorap_dist.quant.fake_quant.fake_quantize`` (one in-place pass by the formulas, a float
in-range mask for the gradient) against ``torch.fake_quantize_per_tensor_affine`` (the
fused CPU kernel the project used before), forward and backward, per tensor, float32, on
the tensor sizes of this project's steps: Cora's prompted GIN aggregate (2708 x 1433), a
sampled batch's first layer (20000 x 600) and a hidden layer (2708 x 64). Both run in turn
in one process, each figure the median of the repeats; the outputs and gradients are
checked bit-equal first.

Writes ``benchmarks/results/fake_quant.json`` (rows: shape, ours_ms, torch_ms, speedup,
bit_equal) and ``benchmarks/results/fake_quant.md``.

    .venv/bin/python benchmarks/fake_quant.py [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import machine, parse_timing, timing_parser, write_report, write_result  # noqa: E402

from lorap_dist.quant.fake_quant import calculate_qparams, fake_quantize  # noqa: E402

SHAPES = [(2708, 1433), (20000, 600), (2708, 64)]
BITS = 4


def _ours(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return fake_quantize(x, scale, zero_point, 0, 2**BITS - 1)


def _torch(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    return torch.fake_quantize_per_tensor_affine(
        x, scale.reshape(1), zero_point.reshape(1).to(torch.int32), 0, 2**BITS - 1
    )


def _step(fn: Any, x: torch.Tensor, grad: torch.Tensor, *qparams: torch.Tensor) -> float:
    x.grad = None
    start = time.perf_counter()
    fn(x, *qparams).backward(grad)
    return time.perf_counter() - start


def measure(shape: tuple[int, int], repeats: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen).requires_grad_()
    grad = torch.randn(*shape, generator=gen)
    # a range that clips the tails, so both halves of the mask are exercised
    scale, zero_point = calculate_qparams(
        torch.tensor(-1.5), torch.tensor(1.5), BITS, symmetric=False
    )
    ours, theirs = _ours(x, scale, zero_point), _torch(x, scale, zero_point)
    ours.backward(grad)
    ours_grad, x.grad = x.grad.clone(), None
    theirs.backward(grad)
    equal = torch.equal(ours, theirs) and torch.equal(ours_grad, x.grad)
    times: dict[str, list[float]] = {"ours": [], "torch": []}
    for _ in range(repeats):  # in turn, so drift of the machine touches both alike
        times["ours"].append(_step(_ours, x, grad, scale, zero_point))
        times["torch"].append(_step(_torch, x, grad, scale, zero_point))
    ours_ms = statistics.median(times["ours"]) * 1e3
    torch_ms = statistics.median(times["torch"]) * 1e3
    return {
        "shape": list(shape),
        "ours_ms": round(ours_ms, 2),
        "torch_ms": round(torch_ms, 2),
        "speedup": round(torch_ms / ours_ms, 2),
        "bit_equal": equal,
    }


def main() -> None:
    args = parse_timing(timing_parser(__doc__, repeats=15))
    rows = []
    for shape in SHAPES:
        rows.append(measure(shape, args.repeats))
        print(rows[-1], flush=True)
    write_result("fake_quant", {"machine": machine(), "repeats": args.repeats, "rows": rows})
    write_report(
        "fake_quant",
        f"Forward + backward of INT4 per-tensor fake quantization, float32, median of "
        f"{args.repeats} repeats, {args.threads} thread(s).",
        ["shape", "ours, ms", "PyTorch kernel, ms", "speedup", "bit-equal"],
        [
            [
                " x ".join(map(str, r["shape"])),
                r["ours_ms"],
                r["torch_ms"],
                r["speedup"],
                r["bit_equal"],
            ]
            for r in rows
        ],  # fmt: skip
    )


if __name__ == "__main__":
    main()
