"""Where A2Q INT4 half-collapses on REDDIT-BINARY, and what the input-dependent prompt does.

On REDDIT-BINARY (GIN, Degree-Quant's INT4 recipe) A2Q alone scores 53-63% on 8 of 10
folds, and LoRAP tuned on its frozen backbone (the shipped default) gains +8.5 points, most
of it lost when every node gets the same prompt (``accuracy_graph_level --variant
uniform_weights``). This script trains that run (20 epochs, then 5 of prompt tuning) on the
chosen folds, one process per fold, one thread each, and measures on each fold's test
graphs:

1. **The collapse.** Test accuracy per true class, for the scheme alone (every layer's
   ``P_B`` set to zero: the backbone the prompts were tuned on, as the run itself scores it
   before tuning) and the prompted model.
2. **Which layers' prompts matter.** Test accuracy with one layer's prompt removed, and with
   one layer's prompt alone.
3. **What the prompt does to A2Q's grid.** A2Q gives each row of a point the pair (step,
   bits) of its pool whose reach ``2^(b-1) s`` is nearest the row's largest value, so adding
   the prompt before the ``prompt`` point can move a row to another pair. Per layer and
   in-degree bin: rows, the aggregate's mean ``|h|``, the prompt's ``|p| / |h|``, the share
   of rows whose pair the prompt changes and the median ratio of the new step to the old
   one, and the softmax weights' dominant basis (the basis most rows weigh highest, and
   that share): whether the prompt treats hubs and leaves differently.

Writes ``benchmarks/results/a2q_prompt_diagnosis.json`` (per fold: ``accuracy`` rows of
setting, test, per-class test; ``layers`` rows of layer, degree bin, rows, mean_h,
p_over_h, pair_moved, step_ratio, dominant_basis, dominant_share) and
``a2q_prompt_diagnosis.md``. Raw files as for ``accuracy_graph_level`` (BENCHMARKS.md)::

    python benchmarks/a2q_prompt_diagnosis.py [--folds 2,9] [--jobs 2] [--root data/tu]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from accuracy_graph_level import experiment  # noqa: E402
from common import machine, markdown_table, write_report, write_result  # noqa: E402

NAME = "a2q_prompt_diagnosis"
DATASET = "REDDIT-BINARY"
#: In-degree bins ``[low, high]`` (REDDIT-BINARY: most nodes are leaves of a few hubs).
DEGREE_BINS = [(0, 1), (2, 4), (5, 31), (32, 255), (256, 1 << 30)]


def bin_label(low: int, high: int) -> str:
    return f"{low}+" if high >= 1 << 30 else (f"{low}" if low == high else f"{low}-{high}")


@torch.no_grad()
def predictions(model: torch.nn.Module, runner: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted class, true class)`` of every test graph, in evaluation, batched and
    passed as the run's own runner (a ``GraphBatchRunner``) scores them."""
    model.eval()
    outputs = [runner.forward(model, batch) for batch in runner.loaders["test"]]
    return torch.cat([o.argmax(-1) for o, _ in outputs]), torch.cat(
        [y.view(-1) for _, y in outputs]
    )


def accuracy_row(setting: str, model: torch.nn.Module, runner: Any) -> dict[str, Any]:
    pred, true = predictions(model, runner)
    per_class = [
        100 * float((pred[true == c] == c).float().mean()) for c in range(int(true.max()) + 1)
    ]
    return {"setting": setting, "test": 100 * float((pred == true).float().mean()),
            "per_class": per_class}  # fmt: skip


@contextlib.contextmanager
@torch.no_grad()
def prompts_kept(prompts: list[Any], keep: set[int]) -> Iterator[None]:
    """Inside, every prompt's ``P_B`` is zero but those of layers ``keep``."""
    saved = [lorap.p_b.clone() for lorap in prompts]
    for layer, lorap in enumerate(prompts):
        if layer not in keep:
            lorap.p_b.zero_()
    try:
        yield
    finally:
        for lorap, p_b in zip(prompts, saved, strict=True):
            lorap.p_b.copy_(p_b)


@torch.no_grad()
def layer_rows(model: torch.nn.Module, prompts: list[Any], runner: Any) -> list[dict[str, Any]]:
    """Section 3 of the module docstring, every test graph, per layer and degree bin."""
    from lorap_dist.quant.schemes.a2q import A2QNodeQuantizer
    from lorap_dist.quant.schemes.a2q_functional import nearest_pool_entry

    seen: dict[int, list[dict[str, torch.Tensor]]] = {i: [] for i in range(len(prompts))}

    def hook(layer: int):
        def record(lorap: Any, args: tuple, kwargs: dict, _output: Any) -> None:
            names = ("h", "quantizer", "nodes")  # LoRAP.forward's, by position or name
            h, quantizer, nodes = (*args, *(kwargs.get(name) for name in names[len(args) :]))
            if not isinstance(quantizer, A2QNodeQuantizer):
                raise TypeError(f"layer {layer}'s prompt point is not A2Q's: {quantizer}")
            weights, p = lorap.weights_and_prompt(h, quantizer)
            step, bits = quantizer.pool_log_step.exp(), quantizer.pool_bits  # as its forward
            before = nearest_pool_entry(h.abs().amax(1), step, bits)
            after = nearest_pool_entry((h + p).abs().amax(1), step, bits)
            seen[layer].append({
                "degree": nodes.degree,
                "h": h.abs().mean(1),
                "p": p.abs().mean(1),
                "moved": (before != after).float(),
                "step_ratio": step[after] / step[before],
                "basis": weights.argmax(1),
            })  # fmt: skip

        return record

    handles = [
        lorap.register_forward_hook(hook(i), with_kwargs=True) for i, lorap in enumerate(prompts)
    ]
    try:
        predictions(model, runner)
    finally:
        for handle in handles:
            handle.remove()
    rows = []
    for layer, parts in seen.items():
        cat = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        for low, high in DEGREE_BINS:
            mask = (cat["degree"] >= low) & (cat["degree"] <= high)
            if not mask.any():
                continue
            basis = torch.bincount(cat["basis"][mask], minlength=prompts[layer].k)
            mean_h = float(cat["h"][mask].mean())
            rows.append({
                "layer": layer,
                "degree": bin_label(low, high),
                "rows": int(mask.sum()),
                "mean_h": mean_h,
                "p_over_h": float(cat["p"][mask].mean()) / mean_h if mean_h else float("nan"),
                "pair_moved": float(cat["moved"][mask].mean()),
                "step_ratio": float(cat["step_ratio"][mask].median()),
                "dominant_basis": int(basis.argmax()),
                "dominant_share": float(basis.max()) / float(basis.sum()),
            })  # fmt: skip
    return rows


def diagnose(task: tuple[str, int, int]) -> dict[str, Any]:
    """Train fold ``fold`` and measure it (module docstring)."""
    from lorap_dist.config import ExperimentConfig
    from lorap_dist.prompt.lorap import LoRAP
    from lorap_dist.train_graphs import GraphBatchRunner, graph_splits, load_graph_set, train_graphs

    root, fold, epochs = task
    torch.set_num_threads(1)
    config = experiment(DATASET, root, "a2q", 4, "lorap", epochs, prompt_tuning_epochs=epochs // 4)
    config["data"]["fold"] = fold
    config = ExperimentConfig.from_dict(config)
    graphs = load_graph_set(config)
    result, model = train_graphs(config, graphs, progress=False)
    test = {"test": graph_splits(config, graphs)["test"]}
    runner = GraphBatchRunner(graphs, test, config.train.batch_size, 0, torch.device("cpu"))
    prompts = [m for m in model.modules() if isinstance(m, LoRAP)]
    kept = result.best_epoch >= epochs  # a tuning epoch won on validation
    label = "as reported" if kept else "not kept: the run reports the scheme alone"
    accuracy = [accuracy_row(f"prompted ({label})", model, runner)]
    variants = [("scheme alone (every P_B zero)", set())]
    variants += [(f"without layer {i}'s prompt", set(range(len(prompts))) - {i})
                 for i in range(len(prompts))]  # fmt: skip
    variants += [(f"layer {i}'s prompt only", {i}) for i in range(len(prompts))]
    for setting, keep in variants:
        with prompts_kept(prompts, keep):
            accuracy.append(accuracy_row(setting, model, runner))
    return {
        "fold": fold,
        "reported_test": 100 * result.test_acc,
        "scheme_test": 100 * result.before_tuning["test"],
        "kept": kept,
        "accuracy": accuracy,
        "layers": layer_rows(model, prompts, runner),
    }


def report(folds: list[dict[str, Any]], command: str) -> None:
    accuracy = [
        [f["fold"], r["setting"], f"{r['test']:.1f}",
         " / ".join(f"{a:.1f}" for a in r["per_class"])]
        for f in folds for r in f["accuracy"]
    ]  # fmt: skip
    layers = [
        [f["fold"], r["layer"], r["degree"], r["rows"], f"{r['mean_h']:.3g}",
         f"{r['p_over_h']:.2f}", f"{100 * r['pair_moved']:.0f}%", f"{r['step_ratio']:.2f}",
         f"b{r['dominant_basis']} ({100 * r['dominant_share']:.0f}%)"]
        for f in folds for r in f["layers"]
    ]  # fmt: skip
    mean_gain = statistics.fmean(f["reported_test"] - f["scheme_test"] for f in folds)
    after = (
        f"\nMean gain over these folds: {mean_gain:+.1f} points.\n\nPer layer and in-degree bin "
        "(every test graph):\n\n" + markdown_table(
            ["fold", "layer", "in-degree", "rows", r"mean \|h\|", r"\|p\| / \|h\|",
             "rows whose A2Q pair moves", "median new step / old", "dominant basis (rows)"],
            layers,
        ) + "\n"
    )  # fmt: skip
    write_report(
        NAME,
        f"`{command}` ({DATASET}, GIN, A2Q INT4 + LoRAP tuned on the frozen backbone, the "
        "shipped default)\n\nTest accuracy, % (per true class: class 0 / class 1):",
        ["fold", "model", "test %", "per class"],
        accuracy,
        after,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/tu", help="ROOT/REDDIT-BINARY/raw/*.txt")
    parser.add_argument("--folds", default="2,9", help="comma-separated folds (0-9)")
    parser.add_argument("--epochs", type=int, default=20, help="then a quarter as many tuning")
    parser.add_argument("--jobs", type=int, default=2, help="folds trained at once")
    args = parser.parse_args()
    folds = [int(f) for f in args.folds.split(",")]
    if any(not 0 <= f <= 9 for f in folds):
        parser.error(f"--folds {args.folds!r}: each fold must be 0-9")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        results = list(pool.map(diagnose, [(args.root, f, args.epochs) for f in folds]))
    write_result(NAME, {"epochs": args.epochs, "machine": machine(), "folds": results})
    command = f"python benchmarks/a2q_prompt_diagnosis.py --folds {args.folds} --jobs {args.jobs}"
    report(results, command)


if __name__ == "__main__":
    main()
