"""Does a first layer that reads INT8 rows as codes beat dequantizing them first? (issue 17,
item 1)

Times forward + backward of a SAGE and a GIN layer quantized with plain QAT (INT8 and INT4),
with and without LoRAP, given the same INT8 rows (per-row scales) two ways, side by side in
one process (timed in turn, median of repeats):

- ``float``: what a worker did before ``dist.feature_rows: codes``: the rows dequantized to
  float32, rounded at the layer's ``input`` point, aggregated by CSR matmul, then LoRAP;
- ``codes``: the rows as ``QuantizedRows``: aggregated by the fused ``quant_aggregate`` op,
  or, with LoRAP, aggregation + prompt + re-quantization in one ``aggregate_lorap`` op; no
  ``input`` point.

The two compute different things by design (``codes`` skips the ``input`` point's second
rounding, as documented in ``QuantizedConv.aggregate_input``), so this measures speed only;
the tests check that ``codes`` equals the float path without the ``input`` point.

Graphs: Cora's (its 1,433-wide bag-of-words input) when its raw files are under ``--root``,
and a generated one of 100,000 nodes with average degree 10 at width 128.

Writes ``benchmarks/results/integer_rows.json`` (rows: graph, width, layer, bits, prompt,
float_ms, codes_ms, speedup) and ``benchmarks/results/integer_rows.md``.

    .venv/bin/python benchmarks/integer_rows.py [--repeats 9] [--threads 1]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from aggregation import graphs, paired_ms, timing_args  # noqa: E402
from common import machine, write_report, write_result  # noqa: E402

from lorap_dist.config import PromptConfig  # noqa: E402
from lorap_dist.nn import QGINConv, QSAGEConv  # noqa: E402
from lorap_dist.quant import QuantizedRows, quantize_  # noqa: E402
from lorap_dist.quant.schemes.qat import QATConfig  # noqa: E402

LAYERS = {"SAGE": QSAGEConv, "GIN": QGINConv}


def layer_rows(name: str, edge_index: torch.Tensor, width: int, args: Any) -> list[dict]:
    n = int(edge_index.max()) + 1
    rows = QuantizedRows.from_float(torch.randn(n, width), bits=8)
    x = rows.dequantize()
    out = []
    for label, make in LAYERS.items():
        for bits in (8, 4):
            for prompt in ("none", "lorap"):
                torch.manual_seed(0)
                layer = make(width, 64, prompt=PromptConfig(kind=prompt, k=8, r=4))
                quantize_(layer, QATConfig(bits=bits))
                layer.train()

                def step(inputs: Any, layer: Any = layer) -> None:
                    layer.zero_grad()
                    layer(inputs, edge_index).sum().backward()

                step(x)  # observe the input point's range, build the CSR
                step(rows)
                float_ms, codes_ms = paired_ms(lambda: step(x), lambda: step(rows), args.repeats)
                out.append({"graph": name, "width": width, "layer": label, "bits": bits,
                            "prompt": prompt, "float_ms": float_ms, "codes_ms": codes_ms,
                            "speedup": float_ms / codes_ms})  # fmt: skip
                print(f"{name} d={width} {label} INT{bits} {prompt}: "
                      f"{float_ms:.1f} -> {codes_ms:.1f} ms", flush=True)  # fmt: skip
    return out


def main() -> None:
    args = timing_args(__doc__)
    rows = []
    for name, edge_index in graphs(args.root).items():
        rows += layer_rows(name, edge_index, 1433 if name == "Cora" else 128, args)
    write_result("integer_rows", {"machine": machine(), "args": vars(args), "rows": rows})
    write_report(
        "integer_rows",
        f"Forward + backward of one layer (output width 64), median of {args.repeats}, "
        f"{args.threads} thread(s), {machine()['torch']}.",
        ["graph", "width", "layer", "QAT", "prompt", "float rows (ms)", "INT8 codes (ms)",
         "speed-up"],
        [[r["graph"], r["width"], r["layer"], f"INT{r['bits']}", r["prompt"],
          f"{r['float_ms']:.1f}", f"{r['codes_ms']:.1f}", f"{r['speedup']:.2f}x"]
         for r in rows],
    )  # fmt: skip


if __name__ == "__main__":
    main()
