"""Why LoRAP and MixQ behave as they do on IMDB-BINARY: two measurements on one fold.

Both train ``accuracy_graph_level``'s GIN (Degree-Quant's INT4 recipe, 20 epochs) on one
fold of IMDB-BINARY, one process, one thread:

1. **The prompt against the grid.** Plain QAT INT4 + LoRAP at several prompt units and
   learning rates; after training, the dataset's first 128 graphs run as one batch in
   evaluation and each layer reports its prompt's mean magnitude ``mean |p|``, the
   aggregate's ``mean |h|`` and the ``prompt`` point's INT4 step: ``|p| / step`` is how far
   the trained prompt can move a value across the rounding grid.
2. **MixQ's search.** MixQ INT4 (candidates {2, 4, 8}, penalty 1e-4, the benchmark's
   setting) against the same fold with the penalty at 0 and 1e-5, and with candidates
   {4, 8} and {8}: test accuracy, the lowest training loss, how many of the points prefer
   2 bits after the first epoch and are frozen at 2 bits, and the average bits.

Writes ``benchmarks/results/graph_level_diagnosis.json`` (``prompt``: rows of setting,
test, layer, mean_p, mean_h, step, p_over_step; ``mixq``: rows of setting, test,
min_loss, two_bit_after_epoch_0, two_bit_frozen, points, avg_bits) and
``graph_level_diagnosis.md``. Raw files as for ``accuracy_graph_level`` (BENCHMARKS.md)::

    python benchmarks/graph_level_diagnosis.py [--fold 3] [--root data/tu]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from accuracy_graph_level import experiment  # noqa: E402
from common import machine, markdown_table, write_report, write_result  # noqa: E402

from lorap_dist.config import ExperimentConfig  # noqa: E402
from lorap_dist.graph.block import NodeInfo  # noqa: E402
from lorap_dist.prompt.lorap import LoRAP  # noqa: E402
from lorap_dist.quant.schemes.mixq import mixq_bits  # noqa: E402
from lorap_dist.train_graphs import load_graph_set, train_graphs  # noqa: E402

NAME = "graph_level_diagnosis"
DATASET = "IMDB-BINARY"
#: (label, prompt.unit, train.prompt_lr_scale) of the QAT INT4 + LoRAP runs.
PROMPTS = [
    ("value units, prompt lr x0.1 (default)", None, None),
    ("value units, prompt lr x10", None, 10.0),
    ("step units, prompt lr x50", "step", 50.0),
]
#: (label, MixQ options over the benchmark's) of the MixQ INT4 runs.
MIXQ = [
    ("{2,4,8}, penalty 1e-4 (benchmark)", {}),
    ("{2,4,8}, penalty 0", {"penalty": 0.0}),
    ("{2,4,8}, penalty 1e-5", {"penalty": 1e-5}),
    ("{4,8}, penalty 1e-4", {"candidate_bits": [4, 8]}),
    ("{8}, penalty 1e-4", {"candidate_bits": [8]}),
]


def config_for(args: Any, scheme: str, prompt: str, **changes: Any) -> ExperimentConfig:
    """``accuracy_graph_level``'s INT4 config for ``scheme`` on the chosen fold."""
    config = experiment(
        DATASET, args.root, scheme, 4, prompt, args.epochs,
        prompt_unit=changes.get("prompt_unit"), prompt_lr_scale=changes.get("prompt_lr_scale"),
    )  # fmt: skip
    config["quant"]["options"].update(changes.get("options", {}))
    config["data"]["fold"] = args.fold
    return ExperimentConfig.from_dict(config)


@torch.no_grad()
def prompt_sizes(model: torch.nn.Module, graphs: Any) -> list[dict[str, float]]:
    """Per LoRAP layer: ``mean |p|``, ``mean |h|`` and the prompt point's step on the first
    128 graphs, in evaluation (no observer moves)."""
    from torch_geometric.loader import DataLoader

    seen: list[dict[str, float]] = []

    def hook(lorap: LoRAP, inputs: tuple, _output: torch.Tensor) -> None:
        h, quantizer = inputs[0], inputs[1]
        _, p = lorap.weights_and_prompt(h, quantizer)
        grid = quantizer.grid()
        step = float(grid[0]) if grid is not None else float("nan")
        mean_p, mean_h = float(p.abs().mean()), float(h.abs().mean())
        seen.append(
            {"mean_p": mean_p, "mean_h": mean_h, "step": step, "p_over_step": mean_p / step}
        )

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, LoRAP)]
    try:
        model.eval()
        batch = next(iter(DataLoader(graphs.dataset[:128], batch_size=128)))
        degree = torch.bincount(batch.edge_index[1], minlength=batch.num_nodes)
        model(batch.x, batch.edge_index, batch.batch, batch.num_graphs, NodeInfo(degree=degree))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def run_prompts(args: Any, graphs: Any) -> list[dict[str, Any]]:
    rows = []
    for label, unit, scale in PROMPTS:
        config = config_for(args, "qat", "lorap", prompt_unit=unit, prompt_lr_scale=scale)
        result, model = train_graphs(config, graphs, progress=False)
        for layer, sizes in enumerate(prompt_sizes(model, graphs)):
            rows.append({"setting": label, "test": 100 * result.test_acc, "layer": layer, **sizes})
        print(f"QAT INT4 + LoRAP, {label}: {100 * result.test_acc:.1f}", flush=True)
    return rows


def run_mixq(args: Any, graphs: Any) -> list[dict[str, Any]]:
    rows = []
    for label, options in MIXQ:
        config = config_for(args, "mixq", "none", options=options)
        first: dict[str, int] = {}
        losses: list[float] = []

        def on_epoch(
            report: Any, model: torch.nn.Module, first: dict = first, losses: list = losses
        ) -> None:
            losses.append(report.row["loss"])
            if not first:
                first.update(mixq_bits(model))

        result, model = train_graphs(config, graphs, progress=False, on_epoch=on_epoch)
        frozen = mixq_bits(model)
        rows.append({
            "setting": label,
            "test": 100 * result.test_acc,
            "min_loss": min(losses),
            "two_bit_after_epoch_0": sum(b == 2 for b in first.values()),
            "two_bit_frozen": sum(b == 2 for b in frozen.values()),
            "points": len(frozen),
            "avg_bits": result.avg_bits,
        })  # fmt: skip
        print(f"MixQ INT4, {label}: {100 * result.test_acc:.1f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/tu", help="ROOT/IMDB-BINARY/raw/IMDB-BINARY_*.txt")
    parser.add_argument("--fold", type=int, default=3, help="the fold to train (0-9)")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    graphs = load_graph_set(config_for(args, "qat", "none"))
    prompt_rows, mixq_rows = run_prompts(args, graphs), run_mixq(args, graphs)
    write_result(NAME, {"fold": args.fold, "epochs": args.epochs, "machine": machine(),
                        "prompt": prompt_rows, "mixq": mixq_rows})  # fmt: skip
    command = f"python benchmarks/graph_level_diagnosis.py --fold {args.fold} --root {args.root}"
    prompt_table = [
        [r["setting"], f"{r['test']:.1f}", r["layer"], f"{r['mean_p']:.2g}",
         f"{r['mean_h']:.3g}", f"{r['step']:.3g}", f"{r['p_over_step']:.2g}"]
        for r in prompt_rows
    ]  # fmt: skip
    mixq_table = [
        [r["setting"], f"{r['test']:.1f}", f"{r['min_loss']:.3f}",
         f"{r['two_bit_after_epoch_0']}/{r['points']}", f"{r['two_bit_frozen']}/{r['points']}",
         f"{r['avg_bits']:.2f}"]
        for r in mixq_rows
    ]  # fmt: skip
    after = "\nMixQ INT4 on the same fold:\n\n" + markdown_table(
        ["setting", "test %", "lowest training loss", "2-bit points after epoch 0",
         "2-bit points frozen", "avg bits"], mixq_table,
    ) + "\n"  # fmt: skip
    write_report(
        NAME,
        f"`{command}` ({DATASET} fold {args.fold}, GIN, {args.epochs} epochs, INT4; "
        "one batch of 128 graphs for the prompt sizes)\n\nQAT INT4 + LoRAP, per layer:",
        ["setting", "test %", "layer", r"mean \|p\|", r"mean \|h\|", "step", r"\|p\| / step"],
        prompt_table,
        after,
    )


if __name__ == "__main__":
    main()
