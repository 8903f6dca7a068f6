"""How much faster is sum / mean aggregation by CSR matmul than PyG's gather-then-scatter
on the CPU? (issue 17, item 2)

Times forward + backward of the aggregation alone (``CSRAggregation`` against the same
sums through ``torch_geometric.utils.scatter`` of the gathered rows, what
``MessagePassing.propagate`` does) and of a whole FP32 GIN / SAGE layer with its CSR path on
and off, side by side in one process (timed in turn, each repeat lasting about 50 ms), median of
repeats, on Cora's graph at the input
width (1,433) and the hidden width (64), and on a generated graph of 100,000 nodes with
average degree 10 at width 128. The first call on a graph builds its CSR matrices (timed
separately: what a mini-batch pays for each new block); later calls reuse them, as a
full-graph run does every step.

Writes ``benchmarks/results/aggregation.json`` (rows: graph, width, what, reduce,
scatter_ms, csr_ms, speedup) and ``benchmarks/results/aggregation.md``.

    .venv/bin/python benchmarks/aggregation.py [--repeats 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import RESULTS, machine, markdown_table, parse_timing, timing_parser, write_result  # noqa: E402
from torch_geometric.utils import scatter  # noqa: E402

from lorap_dist.graph.pyg_source import planetoid_raw_files  # noqa: E402
from lorap_dist.nn import QGINConv, QSAGEConv  # noqa: E402
from lorap_dist.nn.aggregate import CSRAggregation  # noqa: E402


def graphs(root: str) -> dict[str, torch.Tensor]:
    out = {}
    if all(p.exists() for p in planetoid_raw_files(root, "Cora")):
        from lorap_dist.config import ExperimentConfig
        from lorap_dist.train import load_graph

        config = ExperimentConfig.from_dict({"data": {"source": "planetoid", "name": "Cora",
                                                      "root": root}})  # fmt: skip
        out["Cora"] = load_graph(config).edge_index
    else:
        print(f"Cora: raw files not under {root}, skipped", flush=True)
    g = torch.Generator().manual_seed(0)
    n = 100_000
    out["generated 100k"] = torch.randint(n, (2, 10 * n), generator=g)
    return out


def median_ms(fn: Any, repeats: int) -> float:
    return paired_ms(fn, fn, repeats)[0]


def paired_ms(first: Any, second: Any, repeats: int) -> tuple[float, float]:
    """Median ms per call of each, timed in turn; each repeat runs enough calls to last
    about 50 ms, so short calls are not lost in the noise."""
    start = time.perf_counter()
    first()
    calls = max(1, int(0.05 / max(time.perf_counter() - start, 1e-6)))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            out.append((time.perf_counter() - start) / calls)
    return 1000 * statistics.median(times[0]), 1000 * statistics.median(times[1])


def aggregation_rows(name: str, edge_index: torch.Tensor, width: int, args: Any) -> list[dict]:
    n = int(edge_index.max()) + 1
    x = torch.randn(n, width)
    upstream = torch.randn(n, width)
    rows = []
    for reduce in ("sum", "mean"):

        def pyg(reduce: str = reduce) -> None:
            leaf = x.clone().requires_grad_()
            scatter(leaf[edge_index[0]], edge_index[1], 0, dim_size=n, reduce=reduce).backward(
                upstream
            )

        csr = CSRAggregation()

        def ours(csr: CSRAggregation = csr, reduce: str = reduce) -> None:
            leaf = x.clone().requires_grad_()
            csr(leaf, edge_index, n, reduce).backward(upstream)

        build = median_ms(lambda r=reduce: CSRAggregation()(x, edge_index, n, r), 3)
        ours()  # build once
        scatter_ms, csr_ms = paired_ms(pyg, ours, args.repeats)
        rows.append({"graph": name, "width": width, "what": "aggregation", "reduce": reduce,
                     "scatter_ms": scatter_ms, "csr_ms": csr_ms, "speedup": scatter_ms / csr_ms,
                     "first_call_ms": build})  # fmt: skip
    return rows


def layer_rows(name: str, edge_index: torch.Tensor, width: int, args: Any) -> list[dict]:
    n = int(edge_index.max()) + 1
    x = torch.randn(n, width)
    rows = []
    for label, make in (("GIN layer", lambda: QGINConv(width, 64)),
                        ("SAGE layer", lambda: QSAGEConv(width, 64))):  # fmt: skip
        torch.manual_seed(0)
        ours = make()
        theirs = copy.deepcopy(ours)
        theirs.csr_aggregation = lambda *a: None  # PyG's propagate

        def step(layer: Any) -> None:
            layer.zero_grad()
            layer(x, edge_index).sum().backward()

        step(ours)
        scatter_ms, csr_ms = paired_ms(
            lambda layer=theirs: step(layer), lambda layer=ours: step(layer), args.repeats
        )
        rows.append({"graph": name, "width": width, "what": label, "reduce": "-",
                     "scatter_ms": scatter_ms, "csr_ms": csr_ms, "speedup": scatter_ms / csr_ms,
                     "first_call_ms": None})  # fmt: skip
    return rows


def timing_args(doc: str) -> argparse.Namespace:
    """``--root`` (Planetoid's raw files), ``--repeats`` and ``--threads`` (set here) of a
    CPU timing script whose docstring is ``doc``."""
    parser = timing_parser(doc, repeats=9)
    parser.add_argument("--root", default="data/planetoid", help="ROOT/<Name>/raw/ind.*")
    return parse_timing(parser)


def main() -> None:
    args = timing_args(__doc__)
    rows = []
    for name, edge_index in graphs(args.root).items():
        for width in (1433, 64) if name == "Cora" else (128,):
            rows += aggregation_rows(name, edge_index, width, args)
            rows += layer_rows(name, edge_index, width, args)
            for row in rows[-4:]:
                print(f"{row['graph']} d={row['width']} {row['what']} {row['reduce']}: "
                      f"{row['speedup']:.2f}x", flush=True)  # fmt: skip
    write_result("aggregation", {"machine": machine(), "args": vars(args), "rows": rows})
    table = markdown_table(
        ["graph", "width", "what", "reduce", "PyG scatter (ms)", "CSR matmul (ms)", "speed-up",
         "first call, CSR built (ms)"],
        [[r["graph"], r["width"], r["what"], r["reduce"], f"{r['scatter_ms']:.1f}",
          f"{r['csr_ms']:.1f}", f"{r['speedup']:.2f}x",
          "-" if r["first_call_ms"] is None else f"{r['first_call_ms']:.1f}"] for r in rows],
    )  # fmt: skip
    text = f"Forward + backward, median of {args.repeats}, {args.threads} thread(s).\n\n{table}\n"
    (RESULTS / "aggregation.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
