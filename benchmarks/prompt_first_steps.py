"""What a LoRAP prompt trained from the first step does to a graph with tiny activations.

One Planetoid run (CiteSeer GAT, MixQ INT4 + LoRAP, seed 3 by default: the seed that
collapsed with the prompt trained from the first step) traced epoch by epoch three times
side by side: with ``train.prompt_warmup: 0``, with the default warm start (the prompt held
still for the first quarter of the epochs), and the scheme alone for reference. Per epoch
and per LoRAP layer, in the training forward:

- ``ratio``: the prompt's mean magnitude over the aggregate's, ``mean|p| / mean|h|``;
- ``shared``: how much of the prompt every node shares, ``mean|mean_i p_i| / mean|p|``
  (1: the same offset for every node);

and the epoch's training loss and training accuracy. The run's test accuracy at its best
validation epoch closes each trace. Writes ``benchmarks/results/prompt_first_steps.json``
and ``prompt_first_steps.md``::

    python benchmarks/prompt_first_steps.py [--dataset CiteSeer] [--model gat] \\
        [--scheme mixq] [--seed 3] [--root data/planetoid]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from accuracy_planetoid import experiment, merged  # noqa: E402
from common import machine, write_report, write_result  # noqa: E402

from lorap_dist import train as training  # noqa: E402
from lorap_dist.config import ExperimentConfig  # noqa: E402
from lorap_dist.prompt.lorap import LoRAP  # noqa: E402

SHOWN = (0, 1, 2, 5, 10, 30, 49, 50, 51, 55, 60, 80, 100, 150)


def trace(config: ExperimentConfig, graph: Any) -> dict[str, Any]:
    """Train ``config`` and record, after every epoch, each LoRAP layer's ``ratio`` and
    ``shared`` (module docstring) from that epoch's last training forward."""
    seen: dict[str, tuple[float, float]] = {}
    build = training.build_quantized_model

    def build_traced(cfg: ExperimentConfig, g: Any) -> Any:
        model = build(cfg, g)
        for name, module in model.named_modules():
            if isinstance(module, LoRAP):

                def record(module: LoRAP, args: tuple, name: str = name) -> None:
                    if module.training:
                        h = args[0].detach()
                        _, prompt = module.weights_and_prompt(h, args[1])
                        size = prompt.abs().mean()
                        shared = prompt.mean(dim=0).abs().mean() / size if size > 0 else 0.0
                        seen[name] = (float(size / h.abs().mean()), float(shared))

                module.register_forward_pre_hook(record)
        return model

    epochs: list[dict[str, Any]] = []

    def on_epoch(report: Any, model: Any) -> None:
        row = {k: report.row[k] for k in ("epoch", "loss", "train")}
        row["layers"] = {n: {"ratio": r, "shared": s} for n, (r, s) in seen.items()}
        epochs.append(row)

    training.build_quantized_model = build_traced
    try:
        result, _ = training.train(config, graph, progress=False, on_epoch=on_epoch)
    finally:
        training.build_quantized_model = build
    return {"epochs": epochs, "test": 100 * result.test_acc, "best_epoch": result.best_epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="CiteSeer")
    parser.add_argument("--model", default="gat", choices=("gcn", "gin", "gat"))
    parser.add_argument("--scheme", default="mixq", choices=("qat", "degree_quant", "a2q", "mixq"))
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--root", default="data/planetoid", help="ROOT/<Name>/raw/ind.*")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = experiment(args.dataset, args.model, args.scheme, 4, "lorap", args.root)
    base = merged(base, {"train": {"seed": args.seed}})
    graph = training.load_graph(ExperimentConfig.from_dict(base))
    runs = {}
    for label, changes in (
        ("from the first step", {"train": {"prompt_warmup": 0}}),
        ("default warm start", {}),
        (f"{args.scheme} alone", {"prompt": {"kind": "none"}}),
    ):
        config = ExperimentConfig.from_dict(merged(base, changes))
        runs[label] = {"prompt_warmup": config.train.prompt_warmup_epochs, **trace(config, graph)}
        print(f"{label}: test {runs[label]['test']:.1f}", flush=True)
    write_result("prompt_first_steps", {"args": vars(args), "machine": machine(), "runs": runs})
    header = ["prompt", "epoch", "train loss", "train acc"]
    layers = sorted({n for run in runs.values() for e in run["epochs"] for n in e["layers"]})
    header += [f"{n} {what}" for n in layers for what in ("ratio", "shared")]
    body = []
    for label, run in runs.items():
        for e in run["epochs"]:
            if e["epoch"] in SHOWN or e is run["epochs"][-1]:
                cells = [label, e["epoch"], f"{e['loss']:.4f}", f"{100 * e['train']:.1f}"]
                for n in layers:
                    layer = e["layers"].get(n, {"ratio": 0.0, "shared": 0.0})
                    cells += [f"{layer['ratio']:.3f}", f"{layer['shared']:.2f}"]
                body.append(cells)
    intro = (
        f"# A prompt's first steps: {args.dataset} {args.model.upper()}, {args.scheme} INT4 + "
        f"LoRAP, seed {args.seed}\n\nCommand: `python benchmarks/prompt_first_steps.py "
        f"--dataset {args.dataset} --model {args.model} --scheme {args.scheme} --seed "
        f"{args.seed}`. Machine: {machine()}.\n\nratio: mean|p| / mean|h| of the layer's "
        "prompt against its aggregate; shared: mean|mean over nodes of p| / mean|p| (1: every "
        "node gets the same prompt)."
    )
    after = "\n" + "\n".join(
        f"- {label}"
        + (f" (prompt still for {run['prompt_warmup']} epochs)" if "alone" not in label else "")
        + f": test {run['test']:.1f} at best epoch {run['best_epoch']}"
        for label, run in runs.items()
    )
    write_report("prompt_first_steps", intro, header, body, after + "\n")


if __name__ == "__main__":
    main()
