"""How much slower than plain QAT does each quantization scheme train, and where does the
time go? (issue 17, item 5)

One full-batch training step (forward, backward with the schemes' penalties, Adam step) of
GCN and GIN at INT4 on each graph, for FP32, plain QAT, Degree-Quant, A2Q and MixQ. Beside
them, the same schemes the way they ran before: "(dense)" quantizes mostly-zero inputs
entry by entry (``NonzeroIndex`` switched off), and "(dense, torch.quantile)" also takes
Degree-Quant's percentile ranges by a full sort instead of the selection in
``lorap_dist.quant.observers.tail_quantiles``. Every model is built once; the repeats go
round the variants in turn, so drift of the machine touches all of them alike, and each
figure is the median over repeats.

Where the time goes: a second pass times every quantizer's forward (and Degree-Quant's
protection draw) with forward hooks, and reports the share of the step spent there and the
points that cost most. Backward is not split by point.

Graphs: Cora and CiteSeer from ``--root`` (PyG's raw Planetoid layout; skipped when the raw
files are absent) and the generated heavy-tailed graph of ``accuracy_schemes`` (3000 nodes).
Schemes use ``accuracy_planetoid``'s options (A2Q budget 4 bits, MixQ {2, 4, 8}).

Writes ``benchmarks/results/scheme_speed.json`` (rows: graph, model, scheme, ms_per_step,
ratio_to_qat, quantizer_share, top_points) and ``benchmarks/results/scheme_speed.md``.

    .venv/bin/python benchmarks/scheme_speed.py [--repeats 7] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from accuracy_planetoid import SCHEMES, scheme_options  # noqa: E402
from accuracy_schemes import GRAPH  # noqa: E402
from common import RESULTS, machine, markdown_table, parse_timing, timing_parser, write_result  # noqa: E402

import lorap_dist.quant.observers as observers  # noqa: E402
from lorap_dist.config import ExperimentConfig  # noqa: E402
from lorap_dist.graph.block import NodeInfo  # noqa: E402
from lorap_dist.graph.pyg_source import planetoid_raw_files  # noqa: E402
from lorap_dist.optim import build_optimizer  # noqa: E402
from lorap_dist.quant.base import Quantizer  # noqa: E402
from lorap_dist.quant.fake_quant import NonzeroIndex  # noqa: E402
from lorap_dist.quant.schemes.degree_quant import DegreeProtection  # noqa: E402
from lorap_dist.train import FullBatchRunner, build_quantized_model, load_graph  # noqa: E402

DENSE = " (dense)"
SORTED = "degree_quant (dense, torch.quantile)"
VARIANTS = ["fp32", *SCHEMES, *(s + DENSE for s in ("qat", "degree_quant", "mixq")), SORTED]
TARGET = 2.0  # every scheme's step within this factor of plain QAT's


def _sorted_tail_quantiles(values: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    q = torch.tensor([p, 1.0 - p], device=values.device)
    lo, hi = torch.quantile(values, q, dim=-1 if values.dim() > 1 else None)
    return lo, hi


def data_configs(root: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in ("Cora", "CiteSeer"):
        if all(path.exists() for path in planetoid_raw_files(root, name)):
            out[name] = {"source": "planetoid", "name": name, "root": root}
        else:
            print(f"{name}: raw files not under {root}, skipped", flush=True)
    out["generated"] = {"synthetic": dict(GRAPH)}
    return out


def build(data: dict[str, Any], model: str, scheme: str) -> ExperimentConfig:
    arch = {"arch": model}  # GIN: batch norm by default
    quant = (
        {"scheme": "none"}
        if scheme == "fp32"
        else {"scheme": scheme.split()[0], "options": scheme_options(scheme.split()[0], 4)}
    )
    return ExperimentConfig.from_dict(
        {"data": data, "model": arch, "quant": quant, "train": {"seed": 0}}
    )


class Case:
    """One (graph, model, scheme): its model, optimizer and training step."""

    def __init__(self, config: ExperimentConfig, graph: Any, variant: str) -> None:
        torch.manual_seed(0)
        self.model = build_quantized_model(config, graph)
        self.optimizer = build_optimizer(self.model, config.train)
        degree = graph.in_degree()
        nodes = NodeInfo(ids=torch.arange(graph.num_nodes), degree=degree)
        self.runner = FullBatchRunner(graph, nodes)
        self.sorted_ranges = variant == SORTED
        self.dense = variant == SORTED or variant.endswith(DENSE)

    def steps(self, n: int) -> float:
        """Seconds for ``n`` training steps."""
        select, find = observers.tail_quantiles, NonzeroIndex.__call__
        if self.sorted_ranges:
            observers.tail_quantiles = _sorted_tail_quantiles
        if self.dense:
            NonzeroIndex.__call__ = lambda self, x: None
        try:
            start = time.perf_counter()
            for _ in range(n):
                self.runner.train_epoch(self.model, self.optimizer, 0)
            return time.perf_counter() - start
        finally:
            observers.tail_quantiles, NonzeroIndex.__call__ = select, find

    def point_times(self, n: int) -> tuple[float, dict[str, float]]:
        """``(seconds for n steps, seconds per timed module)`` with forward hooks on."""
        spent: dict[str, float] = {}
        started: dict[str, float] = {}
        handles = []
        for name, module in self.model.named_modules():
            if isinstance(module, (Quantizer, DegreeProtection)):

                def before(_m: Any, _a: Any, name: str = name) -> None:
                    started[name] = time.perf_counter()

                def after(_m: Any, _a: Any, _o: Any, name: str = name) -> None:
                    spent[name] = spent.get(name, 0.0) + time.perf_counter() - started[name]

                handles += [
                    module.register_forward_pre_hook(before),
                    module.register_forward_hook(after),
                ]
        try:
            total = self.steps(n)
        finally:
            for handle in handles:
                handle.remove()
        return total, spent


def measure(args: Any) -> list[dict[str, Any]]:
    rows = []
    for graph_name, data in data_configs(args.root).items():
        for model in ("gcn", "gin"):
            graph = load_graph(build(data, model, "fp32"))
            cases = {
                variant: Case(build(data, model, variant), graph, variant) for variant in VARIANTS
            }
            for case in cases.values():
                case.steps(1)  # warm-up: first-sight initialisation (A2Q, observers)
            times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
            for _ in range(args.repeats):
                for scheme, case in cases.items():
                    times[scheme].append(case.steps(args.steps) / args.steps)
            qat = statistics.median(times["qat"])
            for scheme, case in cases.items():
                total, spent = case.point_times(args.steps)
                top = sorted(spent.items(), key=lambda kv: -kv[1])[:3]
                step = statistics.median(times[scheme])
                rows.append(
                    {
                        "graph": graph_name,
                        "model": model,
                        "scheme": scheme,
                        "ms_per_step": 1000 * step,
                        "ratio_to_qat": step / qat,
                        "quantizer_share": sum(spent.values()) / total,
                        "top_points": [
                            {"point": name, "share": seconds / total} for name, seconds in top
                        ],
                    }
                )
                print(
                    f"{graph_name} {model} {scheme}: {1000 * step:.1f} ms ({step / qat:.2f}x QAT)",
                    flush=True,
                )
    return rows


def report(rows: list[dict[str, Any]], args: Any) -> str:
    table = markdown_table(
        ["graph", "model", "scheme", "ms / step", "x plain QAT", "in quantizers' forward",
         "costliest points (share of step)"],
        [
            [
                r["graph"],
                r["model"],
                r["scheme"],
                f"{r['ms_per_step']:.1f}",
                f"{r['ratio_to_qat']:.2f}",
                f"{100 * r['quantizer_share']:.0f}%",
                ", ".join(f"{p['point']} {100 * p['share']:.0f}%" for p in r["top_points"]),
            ]
            for r in rows
        ],
    )  # fmt: skip
    worst = max((r for r in rows if r["scheme"] in SCHEMES), key=lambda r: r["ratio_to_qat"])
    verdict = "met" if worst["ratio_to_qat"] <= TARGET else "NOT met"
    return (
        f"Median of {args.repeats} repeats of {args.steps} full-batch training steps, "
        f"{args.threads} thread(s); INT4.\n\n{table}\n\n"
        f"Target: every scheme's step within {TARGET:g}x plain QAT's: **{verdict}** (worst: "
        f"{worst['scheme']} on {worst['graph']} {worst['model']}, "
        f"{worst['ratio_to_qat']:.2f}x).\n"
    )


def main() -> None:
    parser = timing_parser(__doc__, repeats=7)
    parser.add_argument("--root", default="data/planetoid", help="ROOT/<Name>/raw/ind.*")
    parser.add_argument("--steps", type=int, default=5, help="training steps per repeat")
    args = parse_timing(parser)
    rows = measure(args)
    write_result("scheme_speed", {"machine": machine(), "args": vars(args), "rows": rows})
    text = report(rows, args)
    (RESULTS / "scheme_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
