"""LoRAP on the real Planetoid graphs: the reproduction, the ablations and the diagnosis.

Three parts, each over the same seeds (public split, test accuracy at the best validation
epoch; the recipe is the project's defaults, which follow the GCN paper: hidden 64, dropout
0.5, Adam lr 0.01, weight decay 5e-4 on the backbone, 200 epochs, early stop after 50
without a better validation accuracy, features row-normalised):

- ``main``: Cora and CiteSeer (PubMed when its raw files are present) x GCN, GIN, GAT x
  FP32, and INT4 and INT8 x {qat, degree_quant, a2q, mixq} x {none, lorap, gpf_lorap},
  every scheme with the shipped defaults (INT4 cells first);
- ``ablation``: GCN at INT4 on Cora and CiteSeer, one cause at a time away from LoRAP as
  shipped before the warm start became the default (the prompt trained from the first
  step; every row of this part and the next two keeps that base unless it says otherwise):
  the warm start itself, rounding twice, the prompt at the backbone's learning rate, the
  prompt decayed, all three (the earlier LoRAP), k and r, the range observer, the prompt
  point's range taken from the aggregate alone, prompt weights scored from the
  RMS-normalised aggregate, and Degree-Quant's range momentum; with
  :func:`lorap_dist.prompt.diagnostics.lorap_diagnostics` of every prompted run;
- ``diagnosis``: the same measures for that LoRAP and the earlier one on Cora GIN;
- ``points``: Cora GIN with plain QAT INT4 quantized at some of its points only (weights,
  input, aggregate, hidden and output), with and without LoRAP: which rounding costs the
  accuracy, and whether LoRAP recovers the aggregate's.
- ``tuning``: prompt tuning on a frozen backbone (``train.prompt_tuning_epochs``): each
  run is its scheme alone for the recipe's epochs, then only the prompt trains on the
  scheme's best model, which it replaces only by beating it on validation. Both figures
  come from the same run, so the paired difference needs no second run: the scheme alone's
  is the best model before the prompt trained. The prompts tune at
  ``--tuning-prompt-lr-scale`` x lr (``train.prompt_tuning_lr_scale``, default the
  package's); rows record it as ``tuning_lr_scale``. ``--tuning-variant`` changes LoRAP in
  one place (one prompt for every node; weights from the RMS-normalised aggregate); rows
  keep it as ``variant``, and the targets use the rows without one.

The scheme options per bit width: ``qat`` ``{bits}``; ``degree_quant`` ``{bits}`` (the
paper's protection recipe and percentile follow the bit width); ``a2q``
``{init_bits: b, memory_budget: b}``; ``mixq`` ``{4, 8}`` at INT8 and ``{2, 4, 8}`` at INT4,
penalty 1e-4 (the reported accuracy and bits are the frozen model's).

Writes ``benchmarks/results/accuracy_planetoid.json`` (rows: dataset, model, scheme, prompt,
bits, acc_mean, acc_std, avg_bits, n_seeds), ``accuracy_planetoid_ablation.json`` and
``accuracy_planetoid.md``. Rows are written as settings finish; ``--resume`` keeps finished
rows with the same seed count. The raw files are Planetoid's own (see BENCHMARKS.md):

    python benchmarks/accuracy_planetoid.py --part main|ablation|diagnosis|points|tuning \\
        [--seeds 10] [--jobs 2] [--root data/planetoid] [--models gcn,gin,gat] [--bits 4,8]
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import functools
import json
import math
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import (  # noqa: E402
    PROMPT_VARIANT_NAMES,
    PROMPT_VARIANTS,
    RESULTS,
    TRAINED_TOGETHER,
    machine,
    markdown_table,
    mean_sem,
    mean_std,
    prompt_start,
    run_figures,
    same_start,
    scheme_alone,
    scheme_facts,
    scheme_options,
    start_mark,
    start_notes,
    start_suffix,
    write_result,
)

from lorap_dist.config import (  # noqa: E402
    DEFAULT_TUNING_PROMPT_LR_SCALE,
    ExperimentConfig,
    TrainConfig,
)
from lorap_dist.graph.pyg_source import planetoid_raw_files  # noqa: E402
from lorap_dist.tracking import PromptStart  # noqa: E402

SCHEMES = ("qat", "degree_quant", "a2q", "mixq")
MODELS = {
    "gcn": {"arch": "gcn"},
    "gin": {"arch": "gin"},  # batch norm by default
    "gat": {"arch": "gat"},
}
COLLAPSE = 10.0  # a prompted seed this far below its scheme's mean is reported as collapsed


def experiment(
    dataset: str, model: str, scheme: str | None, bits: int | None, prompt: str, root: str
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "data": {"source": "planetoid", "name": dataset, "root": root},
        "model": dict(MODELS[model]),
        "prompt": {"kind": prompt},
        "train": dict(TRAINED_TOGETHER),  # the tuning part replaces it
    }
    config["quant"] = (
        {"scheme": "none"}
        if scheme is None
        else {"scheme": scheme, "options": scheme_options(scheme, bits)}
    )
    return config


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------------------
# Variants that are not config options: LoRAP changed in one place, for the ablation only.


def _range_from_aggregate(lorap: Any, h: Any, quantizer: Any, nodes: Any) -> Any:
    """The prompt point's observer sees the aggregate ``h``, not ``h + p``: the prompt moves
    values inside the aggregate's grid and can never widen it."""
    from lorap_dist.prompt.lorap import lorap_prompt

    observer = getattr(quantizer, "observer", None)
    if observer is None or not observer.training:
        return quantizer(lorap_prompt(h, lorap.w_phi, lorap.p_a, lorap.p_b), nodes)
    protect = None if nodes is None else nodes.protect
    observer(h if protect is None else h[~protect])
    observer.eval()
    try:
        return quantizer(lorap_prompt(h, lorap.w_phi, lorap.p_a, lorap.p_b), nodes)
    finally:
        observer.train()


LORAP_VARIANTS = {"range_from_aggregate": _range_from_aggregate, **PROMPT_VARIANTS}


def _percentile_without_fallback(observer: Any, x: Any) -> Any:
    """Degree-Quant's clipped range as the paper has it, even where it has zero width."""
    return observer._quantiles(observer._values(x))


def _percentile_minmax_fallback(observer: Any, x: Any) -> Any:
    """Where the clipped range has zero width, the batch's min/max instead."""
    values = observer._values(x)
    lo, hi = observer._quantiles(values)
    rows = values if observer.per_row else values.unsqueeze(0)
    low, high = rows.amin(-1).reshape(lo.shape), rows.amax(-1).reshape(hi.shape)
    degenerate = (hi == lo) & (high > low)
    return torch.where(degenerate, low, lo), torch.where(degenerate, high, hi)


OBSERVER_VARIANTS = {
    "no_fallback": _percentile_without_fallback,
    "minmax_fallback": _percentile_minmax_fallback,
}


class _Stop(Exception):
    """Ends a layer's forward once its aggregate is captured."""


def _with_aggregation_objective(build: Any, weight: float, config: Any, graph: Any) -> Any:
    """The configured model whose prompts also train on the paper's objective, the
    aggregation error: in training each prompted layer adds
    ``weight * ||p(h) - (h_fp - h)||^2 / ||h_fp||^2`` to the loss, ``h`` its aggregate
    (held constant: only the prompt learns from this term) and ``h_fp`` the aggregate of the
    same layer's inputs and messages at full precision (its weights stay quantized),
    computed in a second pass without gradient. The prompt learns to add back what the
    quantized aggregate lost."""
    from lorap_dist.nn.conv import QuantizedConv
    from lorap_dist.prompt.lorap import lorap_prompt
    from lorap_dist.quant.base import IdentityQuantizer

    def objective(conv: Any) -> None:
        forward, quantize_aggregate = conv.forward, conv.quantize_aggregate

        def full_precision_aggregate(*args: Any, **kwargs: Any) -> Any:
            saved = {p: conv.quantizers[p] for p in ("input", "message") if p in conv.quantizers}
            captured = {}

            def capture(h: Any, nodes_dst: Any) -> Any:
                captured["h"] = h
                raise _Stop

            conv.quantizers.update({p: IdentityQuantizer() for p in saved})
            conv.quantize_aggregate = capture
            try:
                forward(*args, **kwargs)
            except _Stop:
                pass
            finally:
                conv.quantizers.update(saved)
                conv.quantize_aggregate = quantize_aggregate
            return captured["h"]

        def trained(*args: Any, **kwargs: Any) -> Any:
            if not conv.training:
                return forward(*args, **kwargs)
            with torch.no_grad():
                target = full_precision_aggregate(*args, **kwargs)

            def prompted(h: Any, nodes_dst: Any) -> Any:
                lorap, fixed = conv.lorap, h.detach()
                prompt = lorap_prompt(fixed, lorap.w_phi, lorap.p_a, lorap.p_b) - fixed
                error = (prompt - (target - fixed)).pow(2).sum()
                conv.aggregation_objective = weight * error / target.pow(2).sum().clamp_min(1e-12)
                return quantize_aggregate(h, nodes_dst)

            conv.quantize_aggregate = prompted
            try:
                return forward(*args, **kwargs)
            finally:
                conv.quantize_aggregate = quantize_aggregate

        conv.forward = trained

    model = build(config, graph)
    for module in model.modules():
        if isinstance(module, QuantizedConv) and module.lorap is not None:
            objective(module)
    return model


def _loss_with_aggregation_objective(quantization_loss: Any, model: Any) -> Any:
    """Every quantizer's regularization plus the prompted layers' aggregation objective."""
    terms = [module.__dict__.pop("aggregation_objective", None) for module in model.modules()]
    terms = [t for t in terms if t is not None]
    extra = quantization_loss(model)
    if extra is not None:
        terms.append(extra)
    return torch.stack([t.reshape(()) for t in terms]).sum() if terms else None


def _only_points(build: Any, points: frozenset[str], config: Any, graph: Any) -> Any:
    """The configured model with every quantization point outside ``points`` (names such
    as ``input``, ``aggregate``, ``prompt``, ``hidden``, ``output``, ``weight``) left at
    full precision."""
    from lorap_dist.quant.base import IdentityQuantizer

    model = build(config, graph)
    for module in model.modules():
        quantizers = getattr(module, "quantizers", None)
        if isinstance(quantizers, torch.nn.ModuleDict):
            for point in list(quantizers):
                if point not in points:
                    quantizers[point] = IdentityQuantizer()
    return model


# ---------------------------------------------------------------------------------------
# One run per (setting, seed), in a pool of single-threaded processes.

_GRAPHS: dict[str, Any] = {}


def _run(task: tuple[dict[str, Any], str | None, int, bool | str]) -> dict[str, Any]:
    """One seed of one setting. ``diagnose``: ``True`` adds the prompt's diagnostics;
    ``"kept"`` adds them only where the reported model carries the trained prompt (prompt
    tuning reports the scheme alone, without its prompt, when the prompt did not win)."""
    import types

    import lorap_dist.train as training
    from lorap_dist.prompt.diagnostics import lorap_diagnostics
    from lorap_dist.prompt.lorap import LoRAP

    config_dict, variant, seed, diagnose = task
    torch.set_num_threads(1)
    config = ExperimentConfig.from_dict(merged(config_dict, {"train": {"seed": seed}}))
    key = json.dumps(config_dict["data"], sort_keys=True)
    if key not in _GRAPHS:
        _GRAPHS[key] = training.load_graph(config)
    graph = _GRAPHS[key]
    build = training.build_quantized_model
    quantization_loss = training.quantization_loss

    def build_variant(cfg: ExperimentConfig, g: Any) -> Any:
        model = build(cfg, g)
        for module in model.modules():
            if isinstance(module, LoRAP):
                function = LORAP_VARIANTS[variant]
                module.forward = types.MethodType(
                    lambda self, h, q, nodes=None, f=function: f(self, h, q, nodes), module
                )
        return model

    from lorap_dist.quant.observers import PercentileObserver

    batch_range = PercentileObserver.batch_range
    if variant in LORAP_VARIANTS:
        training.build_quantized_model = build_variant
    elif variant is not None and variant.startswith("objective:"):
        weight = float(variant.removeprefix("objective:"))
        training.build_quantized_model = functools.partial(
            _with_aggregation_objective, build, weight
        )
        training.quantization_loss = functools.partial(
            _loss_with_aggregation_objective, quantization_loss
        )
    elif variant is not None and variant.startswith("points:"):
        points = frozenset(filter(None, variant.removeprefix("points:").split(",")))
        training.build_quantized_model = functools.partial(_only_points, build, points)
    elif variant is not None:
        PercentileObserver.batch_range = OBSERVER_VARIANTS[variant]
    try:
        result, model = training.train(config, graph, progress=False)
    finally:
        training.build_quantized_model = build
        training.quantization_loss = quantization_loss
        PercentileObserver.batch_range = batch_range
    out = run_figures(result) | {
        "prompt_start": result.prompt_start_epoch,
        "tied": 100 * tied_share(model, graph),
    }
    for module in model.modules():  # the objective's wrappers, gone before diagnostics copy
        for name in ("forward", "quantize_aggregate"):
            module.__dict__.pop(name, None)
    kept = reports_trained_prompt(result.best_epoch, result.prompt_start_epoch)
    if diagnose and config.prompt.lorap and (diagnose != "kept" or kept):
        out["diagnostics"] = lorap_diagnostics(model, graph)
    return out


@torch.no_grad()
def tied_share(model: Any, graph: Any) -> float:
    """Share of test nodes whose largest logit is shared by another class (on a grid of
    few values classes tie, and ``argmax`` then takes the first of them)."""
    from lorap_dist.graph import NodeInfo

    model.eval()
    nodes = NodeInfo(ids=torch.arange(graph.num_nodes), degree=graph.in_degree())
    logits = model(graph.x, graph.edge_index, nodes)[graph.test_idx]
    top = logits.max(dim=-1, keepdim=True).values
    return (logits == top).sum(dim=-1).gt(1).float().mean().item()


def run_settings(
    settings: list[dict[str, Any]],
    seeds: int,
    jobs: int,
    on_row: Any,
    diagnose: bool | str = False,
) -> None:
    """Run every setting over ``seeds`` seeds; ``on_row(setting, outcomes)`` as each ends."""
    tasks = [
        (s["config"], s.get("variant"), seed, diagnose) for s in settings for seed in range(seeds)
    ]
    context = multiprocessing.get_context("spawn")
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        outcomes: list[dict[str, Any]] = []
        for index, outcome in enumerate(pool.map(_run, tasks)):
            outcomes.append(outcome)
            if len(outcomes) == seeds:
                setting = settings[index // seeds]
                on_row(setting, outcomes)
                accs = [o["test"] for o in outcomes]
                print(
                    f"{setting['label']}: {statistics.fmean(accs):.2f} "
                    f"[{time.perf_counter() - start:.0f} s]",
                    flush=True,
                )
                outcomes = []


def summary(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    accs = [o["test"] for o in outcomes]
    mean, std = mean_std(accs)
    bits = [o["avg_bits"] for o in outcomes if o["avg_bits"] is not None]
    return {
        "acc_mean": round(mean, 2),
        "acc_std": round(std, 2),
        "valid_mean": round(statistics.fmean(o["valid"] for o in outcomes), 2),
        "avg_bits": round(statistics.fmean(bits), 2) if bits else 32.0,
        "n_seeds": len(outcomes),
        "accs": [round(a, 1) for a in accs],
        "tied_mean": round(statistics.fmean(o["tied"] for o in outcomes), 2),
        "best_epochs": [o["best_epoch"] for o in outcomes],
        "prompt_starts": [o.get("prompt_start") for o in outcomes],
    } | tuning_summary(outcomes)


def tuning_summary(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """A prompt-tuning row's scheme alone, taken from the same runs (empty otherwise)."""
    if not all("scheme_test" in o for o in outcomes):
        return {}
    return scheme_alone(outcomes) | {
        "scheme_valid_mean": round(statistics.fmean(o["scheme_valid"] for o in outcomes), 2),
        "scheme_accs": [round(o["scheme_test"], 1) for o in outcomes],
        # per seed, to judge a margin on validation afterwards
        "valids": [round(o["valid"], 1) for o in outcomes],
        "scheme_valids": [round(o["scheme_valid"], 1) for o in outcomes],
    }


def mean_diagnostics(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    per_layer = [o["diagnostics"] for o in outcomes if "diagnostics" in o]
    if not per_layer:
        return []
    rows = []
    for layer in range(len(per_layer[0])):
        entries = [run[layer] for run in per_layer]
        row: dict[str, Any] = {"layer": entries[0]["layer"]}
        for key in entries[0]:
            if key != "layer":
                row[key] = round(statistics.fmean(e[key] for e in entries), 4)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# The parts


def datasets(root: str) -> list[str]:
    names = ["Cora", "CiteSeer"]
    if all(p.exists() for p in planetoid_raw_files(root, "PubMed")):
        names.append("PubMed")
    return names


def main_settings(args: Any) -> list[dict[str, Any]]:
    """FP32 and INT4 cells of every (dataset, model) first, then the INT8 cells."""
    int4 = [(None, None, "none")]
    int4 += [(s, 4, p) for s in SCHEMES for p in ("none", "lorap", "gpf_lorap")]
    int8 = [(s, 8, p) for s in SCHEMES for p in ("none", "lorap", "gpf_lorap")]
    settings = []
    for cells in [int4] * (4 in args.bits) + [int8] * (8 in args.bits):
        for dataset in args.datasets or datasets(args.root):
            for model in args.models or list(MODELS):
                for scheme, bits, prompt in cells:
                    key = {
                        "dataset": dataset,
                        "model": model,
                        "scheme": scheme or "fp32",
                        "prompt": prompt,
                        "bits": bits or 32,
                    }
                    config = experiment(dataset, model, scheme, bits, prompt, args.root)
                    label = " ".join(map(str, key.values()))
                    settings.append({"key": key, "config": config, "label": label})
    return settings


#: The ablation, diagnosis and points parts were measured before the prompt's warm start
#: became the default: their base trains the prompt from the first step, and a row that
#: holds it still says so.
WITHOUT_WARMUP = {"train": {"prompt_warmup": 0, "prompt_after_search": False}}

ABLATIONS: list[tuple[str, str, dict[str, Any], str | None]] = [
    # (label, prompt, config changes, LoRAP variant)
    ("QAT INT4 alone", "none", {}, None),
    ("+ LoRAP, no warm start (rounding once, prompt lr x0.1, no prompt decay)", "lorap", {}, None),
    ("+ LoRAP, rounding twice", "lorap", {"prompt": {"rounding": "twice"}}, None),
    ("+ LoRAP, prompt at the backbone's lr", "lorap", {"train": {"prompt_lr_scale": 1.0}}, None),
    ("+ LoRAP, prompt decayed (5e-4)", "lorap", {"train": {"prompt_weight_decay": 5e-4}}, None),
    (
        "+ LoRAP, earlier recipe (twice, lr x1, decayed)",
        "lorap",
        {
            "prompt": {"rounding": "twice"},
            "train": {"prompt_lr_scale": 1.0, "prompt_weight_decay": 5e-4},
        },
        None,
    ),
    ("+ LoRAP, warm start (prompt still for 50 epochs)", "lorap",
     {"train": {"prompt_warmup": 50}}, None),
    ("+ LoRAP, k=4 r=2", "lorap", {"prompt": {"k": 4, "r": 2}}, None),
    ("+ LoRAP, k=16 r=8", "lorap", {"prompt": {"k": 16, "r": 8}}, None),
    ("+ LoRAP, prompt point's range from the aggregate", "lorap", {}, "range_from_aggregate"),
    ("+ LoRAP, weights from the RMS-normalised aggregate", "lorap", {}, "rms_scores"),
    ("+ LoRAP, also trained on the aggregation error (weight 1)", "lorap", {}, "objective:1"),
    ("QAT INT4 alone, range momentum 0.1", "none", {"momentum": 0.1}, None),
    ("+ LoRAP, range momentum 0.1", "lorap", {"momentum": 0.1}, None),
    ("+ GPF + LoRAP, range momentum 0.1", "gpf_lorap", {"momentum": 0.1}, None),
    ("QAT INT4 alone, logits in float", "none", {"quant": {"float_logits": True}}, None),
    ("+ LoRAP, logits in float", "lorap", {"quant": {"float_logits": True}}, None),
    ("+ GPF + LoRAP, logits in float", "gpf_lorap", {"quant": {"float_logits": True}}, None),
    ("QAT INT4 alone, dropout after the input point", "none",
     {"model": {"dropout_after_input": True}}, None),
    ("+ LoRAP, dropout after the input point", "lorap",
     {"model": {"dropout_after_input": True}}, None),
    ("QAT INT4 alone, min/max observer (earlier default)", "none", {"observer": "minmax"}, None),
    ("+ LoRAP, min/max observer", "lorap", {"observer": "minmax"}, None),
    (
        "+ LoRAP, min/max observer, earlier recipe",
        "lorap",
        {
            "observer": "minmax",
            "prompt": {"rounding": "twice"},
            "train": {"prompt_lr_scale": 1.0, "prompt_weight_decay": 5e-4},
        },
        None,
    ),
    ("+ LoRAP in step units", "lorap", {"prompt": {"unit": "step"}}, None),
    ("+ LoRAP in step units, prompt lr x5", "lorap",
     {"prompt": {"unit": "step"}, "train": {"prompt_lr_scale": 5.0}}, None),
    ("Degree-Quant INT4 alone", "none", {"scheme": "degree_quant"}, None),
    ("Degree-Quant INT4 + LoRAP", "lorap", {"scheme": "degree_quant"}, None),
    ("Degree-Quant INT4 + LoRAP in step units, prompt lr x5", "lorap",
     {"scheme": "degree_quant", "prompt": {"unit": "step"}, "train": {"prompt_lr_scale": 5.0}},
     None),
    ("Degree-Quant INT4 alone, sparse ranges not repaired (the paper's percentile)", "none",
     {"scheme": "degree_quant"}, "no_fallback"),
    ("Degree-Quant INT4 alone, zero-width ranges fall back to min/max", "none",
     {"scheme": "degree_quant"}, "minmax_fallback"),
    ("Degree-Quant INT4 alone, momentum 0.01 (earlier default)", "none",
     {"scheme": "degree_quant", "momentum": 0.01}, None),
    ("Degree-Quant INT4 + LoRAP, momentum 0.01", "lorap",
     {"scheme": "degree_quant", "momentum": 0.01}, None),
    ("MixQ INT4 + LoRAP, warm start (prompt still for 50 epochs)", "lorap",
     {"scheme": "mixq", "train": {"prompt_warmup": 50}}, None),
]  # fmt: skip


def ablation_settings(args: Any, model: str = "gcn") -> list[dict[str, Any]]:
    settings = []
    for dataset in args.datasets or ["Cora", "CiteSeer"]:
        for label, prompt, changes, variant in ABLATIONS:
            changes = dict(changes)
            scheme = changes.pop("scheme", "qat")
            options = {
                **scheme_options(scheme, 4),
                **{k: changes.pop(k) for k in list(changes) if k in ("observer", "momentum")},
            }
            config = experiment(dataset, model, scheme, 4, prompt, args.root)
            config["quant"]["options"] = options
            config = merged(merged(config, WITHOUT_WARMUP), changes)
            key = {"dataset": dataset, "model": model, "variant": label}
            settings.append({"key": key, "config": config, "variant": variant,
                             "label": f"{dataset} {model} {label}"})  # fmt: skip
    return settings


def diagnosis_settings(args: Any) -> list[dict[str, Any]]:
    chosen = {
        "QAT INT4 alone",
        "+ LoRAP, no warm start (rounding once, prompt lr x0.1, no prompt decay)",
        "+ LoRAP, earlier recipe (twice, lr x1, decayed)",
        "+ LoRAP, also trained on the aggregation error (weight 1)",
    }
    args = copy.copy(args)
    args.datasets = ["Cora"]
    return [s for s in ablation_settings(args, "gin") if s["key"]["variant"] in chosen]


def tuning_settings(args: Any) -> list[dict[str, Any]]:
    """Prompt tuning on the frozen backbone, INT4, every scheme, LoRAP and GPF + LoRAP."""
    settings = []
    for dataset in args.datasets or datasets(args.root):
        for model in args.models or ["gcn"]:
            for scheme in SCHEMES:
                for prompt in ("lorap", "gpf_lorap"):
                    config = experiment(dataset, model, scheme, 4, prompt, args.root)
                    config["train"] = {"prompt_tuning_epochs": args.tuning_epochs}
                    key = {
                        "dataset": dataset,
                        "model": model,
                        "scheme": scheme,
                        "prompt": prompt,
                        "bits": 4,
                        "tuning_epochs": args.tuning_epochs,
                    }
                    scale = args.tuning_prompt_lr_scale
                    config["train"]["prompt_tuning_lr_scale"] = key["tuning_lr_scale"] = scale
                    label = (f"{dataset} {model} {scheme} {prompt} tuned {args.tuning_epochs} "
                             f"prompt lr {scale:g}")  # fmt: skip
                    # None for the shipped LoRAP: a key matches rows without the field, and
                    # rows are written without it (on_row drops None).
                    key["variant"] = args.tuning_variant
                    if args.tuning_variant:
                        label += f" variant {args.tuning_variant}"
                    settings.append({"key": key, "config": config, "label": label,
                                     "variant": args.tuning_variant})  # fmt: skip
    return settings  # fmt: skip


#: The points part's reference rows, taken from the main part (the same configs and seeds).
EVERY_POINT = {"none": "every point (QAT INT4 alone)", "lorap": "every point + LoRAP"}
POINTS: list[tuple[str, str, tuple[str, ...]]] = [
    # (label, prompt, the quantization points at INT4), the most telling first
    ("aggregate only", "none", ("aggregate",)),
    ("aggregate only + LoRAP (its one rounding after the prompt)", "lorap", ("prompt",)),
    ("every point but the aggregate", "none", ("weight", "input", "hidden", "output")),
    ("no point (full precision, same training path)", "none", ()),
    ("input only", "none", ("input",)),
    ("hidden and output only", "none", ("hidden", "output")),
    ("weights only", "none", ("weight",)),
]


def points_settings(args: Any) -> list[dict[str, Any]]:
    """GIN with plain QAT INT4, quantized at some of its points only: which rounding costs
    the accuracy, and does LoRAP recover the aggregate's (the error it is built for)."""
    settings = []
    for dataset in args.datasets or ["Cora"]:
        for label, prompt, points in POINTS:
            key = {"dataset": dataset, "model": "gin", "variant": label}
            settings.append({
                "key": key,
                "config": merged(experiment(dataset, "gin", "qat", 4, prompt, args.root),
                                 WITHOUT_WARMUP),
                "variant": "points:" + ",".join(points),
                "label": f"{dataset} gin {label}",
            })  # fmt: skip
    return settings


# ---------------------------------------------------------------------------------------
# Results


def load_rows(name: str) -> list[dict[str, Any]]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else []


def key_of(row: dict[str, Any], key: dict[str, Any]) -> bool:
    return all(row.get(k) == v for k, v in key.items())


def run_part(name: str, settings: list[dict[str, Any]], args: Any, diagnose: bool | str) -> None:
    rows = load_rows(name) if args.resume else []
    done = [
        s
        for s in settings
        if any(key_of(r, s["key"]) and r["n_seeds"] == args.seeds and same_start(r) for r in rows)
    ]
    todo = [s for s in settings if s not in done or args.redo]
    if args.only:
        todo = [s for s in todo if any(part in s["label"] for part in args.only)]
    print(f"{name}: {len(done)} settings kept, {len(todo)} to run", flush=True)

    def on_row(setting: dict[str, Any], outcomes: list[dict[str, Any]]) -> None:
        row = {k: v for k, v in setting["key"].items() if v is not None} | summary(outcomes)
        if "prompt" in setting["key"]:
            row.update(prompt_start(setting["key"]["prompt"], setting["key"].get("scheme")))
        row.update(scheme_facts(setting["key"].get("scheme")))
        if diagnose:
            row["diagnostics"] = mean_diagnostics(outcomes)
            row["diagnosed_seeds"] = sum("diagnostics" in o for o in outcomes)
        # Runs of other settings (other models, datasets) may write the same file meanwhile:
        # read it again under a lock and replace only this row.
        RESULTS.mkdir(parents=True, exist_ok=True)
        with open(RESULTS / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = load_rows(name) if args.resume else rows
            current = [r for r in current if not key_of(r, setting["key"])] + [row]
            rows[:] = current
            write_result(name, current)
            write_report(args)

    run_settings(todo, args.seeds, args.jobs, on_row, diagnose)


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return f"{row['acc_mean']:.1f} ± {row['acc_std']:.1f}{start_suffix(row)}"


def main_tables(rows: list[dict[str, Any]]) -> str:
    out = []
    index = {(r["dataset"], r["model"], r["scheme"], r["prompt"], r["bits"]): r for r in rows}
    for bits in sorted({r["bits"] for r in rows if r["bits"] != 32}):
        prompts = ("none", "lorap", "gpf_lorap")
        header = ["dataset", "model", "FP32"] + [
            f"{s} {'alone' if p == 'none' else '+ ' + p}" for s in SCHEMES for p in prompts
        ]
        body = []
        for dataset, model in dict.fromkeys((r["dataset"], r["model"]) for r in rows):
            cells = [_cell(index.get((dataset, model, "fp32", "none", 32)))]
            cells += [
                _cell(index.get((dataset, model, s, p, bits))) for s in SCHEMES for p in prompts
            ]
            body.append([dataset, model, *cells])
        out.append(f"### INT{bits}\n\n" + markdown_table(header, body))
    bits_rows = [
        [r["dataset"], r["model"], r["scheme"], r["prompt"], r["bits"], r["avg_bits"]]
        for r in rows
        if r["scheme"] in ("a2q", "mixq")
    ]
    if bits_rows:
        header = ["dataset", "model", "scheme", "prompt", "bits row", "avg bits"]
        table = markdown_table(header, bits_rows)
        out.append("### Average bits of the learned schemes\n\n" + table)
    return "\n\n".join(out)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each stated as met or not with its numbers."""
    index = {(r["dataset"], r["model"], r["scheme"], r["prompt"], r["bits"]): r for r in rows}
    lines = []
    worse, collapsed = [], []
    for (dataset, model, scheme, prompt, bits), row in index.items():
        if prompt == "none" or scheme == "fp32":
            continue
        alone = index.get((dataset, model, scheme, "none", bits))
        if alone is None:
            continue
        if bits == 4 and prompt == "lorap" and row["acc_mean"] < alone["acc_mean"] - 0.5:
            worse.append(
                f"{dataset} {model} {scheme}: {row['acc_mean']:.2f} vs {alone['acc_mean']:.2f}"
            )
        low = [a for a in row["accs"] if a < alone["acc_mean"] - COLLAPSE]
        if low:
            collapsed.append(f"{dataset} {model} {scheme} INT{bits} {prompt}: {low}")
    lines.append(
        "LoRAP never more than 0.5 point below its scheme alone (INT4): "
        + ("met" if not worse else f"NOT met in {len(worse)} cells: " + "; ".join(worse))
    )
    for model in ("gcn", "gin"):
        fp32 = index.get(("Cora", model, "fp32", "none", 32))
        alone = index.get(("Cora", model, "qat", "none", 4))
        prompted = index.get(("Cora", model, "qat", "lorap", 4))
        if fp32 and alone and prompted:
            gap = fp32["acc_mean"] - alone["acc_mean"]
            recovered = prompted["acc_mean"] - alone["acc_mean"]
            share = recovered / gap if gap > 0 else float("nan")
            lines.append(
                f"Cora {model}: QAT INT4 gap to FP32 {gap:.2f}, LoRAP recovers {recovered:.2f} "
                f"({share:.0%}); at least half: " + ("met" if share >= 0.5 else "NOT met")
            )
    best = max(
        (index[k]["acc_mean"], k[2]) for k in index
        if k[:2] == ("Cora", "gcn") and k[3] == "lorap" and k[4] == 4
    ) if any(k[:2] == ("Cora", "gcn") and k[3] == "lorap" for k in index) else None  # fmt: skip
    if best:
        lines.append(
            f"Cora GCN INT4 + LoRAP, best scheme {best[1]}: {best[0]:.2f} vs the paper's 79.1: "
            + ("met" if best[0] >= 79.1 else "NOT met")
        )
    for model in ("gcn", "gin", "gat"):
        fp32 = index.get(("CiteSeer", model, "fp32", "none", 32))
        prompted = [
            index[k]
            for k in index
            if k[:2] == ("CiteSeer", model) and k[3] == "lorap" and k[4] == 4
        ]
        if fp32 and prompted:
            top = max(prompted, key=lambda r: r["acc_mean"])
            lines.append(
                f"CiteSeer {model} INT4 + LoRAP best ({top['scheme']}) {top['acc_mean']:.2f} vs "
                f"FP32 {fp32['acc_mean']:.2f}: within 1 point "
                + ("met" if fp32["acc_mean"] - top["acc_mean"] <= 1.0 else "NOT met")
            )
    lines.append(
        "No prompted seed collapses (more than 10 points below its scheme's mean): "
        + ("met" if not collapsed else "NOT met: " + "; ".join(collapsed))
    )
    return lines


#: The recipe's prompt-tuning phase under the shipped default (``train.prompt_tuning_epochs:
#: null`` with the recipe's 200 epochs and patience 50: half of them).
SHIPPED_TUNING_EPOCHS = TrainConfig().tuning_epochs
#: The phase's length under the earlier default, a quarter of the epochs.
EARLIER_TUNING_EPOCHS = 50


def shipped_rate(row: dict[str, Any]) -> bool:
    """Whether a tuning row's prompts tuned at the shipped rate
    (``train.prompt_tuning_lr_scale``'s default)."""
    return row["tuning_lr_scale"] == DEFAULT_TUNING_PROMPT_LR_SCALE


def default_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One LoRAP row per cell at the shipped rate: the one with the shipped phase length
    where measured, else the one with the earlier default's (the phase ends on patience
    first in the seeds whose prompt stopped improving, so the two differ only in seeds
    whose prompt was still improving at epoch 50 of the phase)."""
    lengths = (EARLIER_TUNING_EPOCHS, SHIPPED_TUNING_EPOCHS)
    chosen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for length in lengths:  # the shipped length last: it replaces the earlier one
        for r in rows:
            if (
                r["prompt"] == "lorap"
                and shipped_rate(r)
                and r["tuning_epochs"] == length
                and not r.get("variant")
            ):
                chosen[r["dataset"], r["model"], r["scheme"]] = r
    return list(chosen.values())


def tuning_targets(rows: list[dict[str, Any]], main_rows: list[dict[str, Any]]) -> list[str]:
    """The issue's LoRAP targets for the shipped default, prompt tuning on the frozen
    backbone (the tuning part's rows, each against its runs' own scheme alone; FP32 from
    the main part)."""
    fp32 = {(r["dataset"], r["model"]): r["acc_mean"] for r in main_rows if r["scheme"] == "fp32"}
    lorap = default_rows(rows)
    if not lorap:
        return []
    at_shipped = sum(r["tuning_epochs"] == SHIPPED_TUNING_EPOCHS for r in lorap)
    cells = {(d, m, s) for d in ("Cora", "CiteSeer") for m in MODELS for s in SCHEMES}
    worse = [
        f"{r['dataset']} {r['model']} {r['scheme']}: {r['acc_mean']:.2f} vs "
        f"{r['scheme_acc_mean']:.2f}"
        for r in lorap
        if r["acc_mean"] < r["scheme_acc_mean"] - 0.5
    ]
    lengths = (
        f"all with the shipped {SHIPPED_TUNING_EPOCHS}-epoch phase"
        if at_shipped == len(lorap)
        else f"{at_shipped} with the shipped {SHIPPED_TUNING_EPOCHS}-epoch phase, the rest "
        f"with the earlier {EARLIER_TUNING_EPOCHS}"
    )
    lines = [
        f"With the default, prompt tuning ({len(lorap)} of the {len(cells)} INT4 LoRAP cells "
        f"measured, {lengths}), LoRAP never more than 0.5 point below its scheme alone: "
        + ("met" if not worse else "NOT met: " + "; ".join(worse))
    ]
    for r in lorap:
        gap = fp32.get((r["dataset"], r["model"]), math.nan) - r["scheme_acc_mean"]
        if r["dataset"] == "Cora" and r["scheme"] == "qat" and r["model"] in ("gcn", "gin"):
            gained = r["acc_mean"] - r["scheme_acc_mean"]
            lines.append(
                f"With the default, Cora {r['model']}: QAT INT4 gap to FP32 {gap:.2f}, the tuned "
                f"prompt ({r['tuning_epochs']}-epoch phase) recovers {gained:.2f} "
                f"({gained / gap:.0%}); at least half: "
                + ("met" if gained >= gap / 2 else "NOT met")
            )
    cora_gcn = [r["acc_mean"] for r in lorap if (r["dataset"], r["model"]) == ("Cora", "gcn")]
    if cora_gcn:
        lines.append(
            f"With the default, Cora GCN INT4 + LoRAP best {max(cora_gcn):.2f} vs the paper's "
            "79.1: " + ("met" if max(cora_gcn) >= 79.1 else "NOT met")
        )
    for model in MODELS:
        tuned = [r for r in lorap if (r["dataset"], r["model"]) == ("CiteSeer", model)]
        if tuned and ("CiteSeer", model) in fp32:
            top = max(tuned, key=lambda r: r["acc_mean"])
            lines.append(
                f"With the default, CiteSeer {model} INT4 + LoRAP best ({top['scheme']}) "
                f"{top['acc_mean']:.2f} vs FP32 {fp32['CiteSeer', model]:.2f}: within 1 point "
                + ("met" if fp32["CiteSeer", model] - top["acc_mean"] <= 1.0 else "NOT met")
            )
    collapsed = [
        f"{r['dataset']} {r['model']} {r['scheme']}"
        for r in lorap
        if any(a < r["scheme_acc_mean"] - COLLAPSE for a in r["accs"])
    ]
    lines.append(
        "With the default, no prompted seed more than 10 points below its scheme's mean: "
        + ("met" if not collapsed else "NOT met: " + "; ".join(collapsed))
    )
    return lines


def paired(row: dict[str, Any], reference: dict[str, Any] | None) -> str:
    """Mean ± standard error of the per-seed differences (the same seeds run both)."""
    if reference is None or reference is row or len(reference["accs"]) != len(row["accs"]):
        return "-"
    return mean_sem([a - b for a, b in zip(row["accs"], reference["accs"], strict=True)])


def reports_trained_prompt(best_epoch: int, prompt_start: int | None) -> bool:
    """Whether a run's reported model holds a trained prompt: its best validation epoch is
    at or after the first epoch that trained the prompt (``None``: none did)."""
    return PromptStart(prompt_start).trained_by(best_epoch)


def ablation_reference(variant: str) -> str:
    """The row an ablation is compared with: its scheme and observer without the change."""
    changed_backbones = ("range momentum 0.1", "logits in float", "dropout after the input point")
    for change in changed_backbones:  # prompts on a changed backbone
        if variant.startswith("+") and variant.endswith(f", {change}"):
            return f"QAT INT4 alone, {change}"
    if "momentum 0.01" in variant:
        return "Degree-Quant INT4 alone, momentum 0.01 (earlier default)"
    if variant.startswith("Degree-Quant") and variant != "Degree-Quant INT4 alone":
        return "Degree-Quant INT4 alone"
    if variant.startswith("MixQ") and variant != "MixQ INT4 alone":
        return "MixQ INT4 alone"
    if variant.startswith("+ LoRAP, min/max"):
        return "QAT INT4 alone, min/max observer (earlier default)"
    return "QAT INT4 alone"


def points_reference(variant: str) -> str:
    """A points row is compared with every point quantized; the aggregate with LoRAP with
    the aggregate alone."""
    return "aggregate only" if variant.startswith("aggregate only +") else EVERY_POINT["none"]


def with_every_point(points_rows: list[dict[str, Any]], main_rows: list[dict[str, Any]]) -> list:
    """The points rows after their references, plain QAT INT4 GIN with and without LoRAP
    from the main part."""
    references = [
        {**row, "variant": EVERY_POINT[row["prompt"]]}
        for row in main_rows
        if row["model"] == "gin" and row["scheme"] == "qat" and row["bits"] == 4
        and row["prompt"] in EVERY_POINT
        and any(r["dataset"] == row["dataset"] for r in points_rows)
    ]  # fmt: skip
    return references + points_rows


def with_main_references(rows: list[dict[str, Any]], main_rows: list[dict[str, Any]]) -> list:
    """The ablation rows, after the references a model's ablation did not run itself (``QAT
    INT4 alone``, ``Degree-Quant INT4 alone``), taken from the main part's cell of the same
    config and seeds."""
    have = {(r["dataset"], r["model"], r["variant"]) for r in rows}
    extra = []
    for dataset, model in dict.fromkeys((r["dataset"], r["model"]) for r in rows):
        for label, scheme in (
            ("QAT INT4 alone", "qat"),
            ("Degree-Quant INT4 alone", "degree_quant"),
            ("MixQ INT4 alone", "mixq"),
        ):
            cell = (dataset, model, scheme, "none", 4)
            main = [
                m
                for m in main_rows
                if (m["dataset"], m["model"], m["scheme"], m["prompt"], m["bits"]) == cell
            ]
            needed = any(
                (r["dataset"], r["model"]) == (dataset, model)
                and ablation_reference(r["variant"]) == label
                for r in rows
            )
            if needed and (dataset, model, label) not in have and main:
                extra.append({**main[0], "variant": f"{label} (main part)"})
    return extra + rows


def ablation_table(rows: list[dict[str, Any]], reference: Any = ablation_reference) -> str:
    """One row per setting, each against its reference row (or that row's copy from the
    main part, :func:`with_main_references`)."""
    index = {(r["dataset"], r["model"], r["variant"]): r for r in rows}

    def reference_row(r: dict[str, Any]) -> dict[str, Any] | None:
        label = reference(r["variant"])
        own = index.get((r["dataset"], r["model"], label))
        return own or index.get((r["dataset"], r["model"], f"{label} (main part)"))

    body = [
        [r["dataset"], r["model"], r["variant"], _cell(r), paired(r, reference_row(r)),
         f"{r['valid_mean']:.1f}", _number(r.get("tied_mean"), 1),
         " ".join(f"{a:.0f}" for a in r["accs"])]
        for r in rows
    ]  # fmt: skip
    header = ["dataset", "model", "setting", "test %", "minus its reference, paired",
              "valid %", "test nodes tied %", "seeds"]  # fmt: skip
    return markdown_table(header, body)


def prompted_cells(rows: list[dict[str, Any]]) -> list[tuple[tuple, dict, dict]]:
    """``(key, prompted row, its scheme alone)`` for every prompted cell whose scheme alone
    ran, ``key`` = ``(dataset, model, scheme, prompt, bits)``."""
    index = {(r["dataset"], r["model"], r["scheme"], r["prompt"], r["bits"]): r for r in rows}
    cells = []
    for key, row in index.items():
        alone = index.get((*key[:3], "none", key[4]))
        if key[3] != "none" and alone is not None:
            cells.append((key, row, alone))
    return cells


def pooled_effect(rows: list[dict[str, Any]]) -> list[str]:
    """The prompt's effect over every measured cell, one line per (prompt, bits, start
    mark): the mean of the cells' paired differences ± its standard error over the cells
    (cells share datasets and seeds, so this is a summary, not an independent test), how
    many cells are above their scheme alone, and the range. Rows measured another way than
    today's defaults (:func:`start_mark`) are pooled apart, under their mark."""
    effects: dict[tuple[str, int, str], list[float]] = {}
    for (_, _, _, prompt, bits), row, alone in prompted_cells(rows):
        if len(row["accs"]) == len(alone["accs"]):
            diffs = [a - b for a, b in zip(row["accs"], alone["accs"], strict=True)]
            key = (prompt, bits, start_mark(row))
            effects.setdefault(key, []).append(statistics.fmean(diffs))
    lines = []
    for (prompt, bits, mark), cell_means in sorted(effects.items()):
        n = len(cell_means)
        above = sum(m > 0 for m in cell_means)
        how = f" {mark}" if mark else " (the defaults)"
        if n == 1:
            lines.append(f"{prompt} at INT{bits}{how}: {cell_means[0]:+.2f} points in 1 cell")
            continue
        sem = statistics.stdev(cell_means) / n**0.5
        lines.append(
            f"{prompt} at INT{bits}{how}: {statistics.fmean(cell_means):+.2f} ± {sem:.2f} "
            f"points over {n} cells, {above} of {n} above their scheme alone, from "
            f"{min(cell_means):+.2f} to {max(cell_means):+.2f}"
        )
    return lines


def trained_prompt_seeds(row: dict[str, Any]) -> str:
    """How many seeds report a model whose prompt had trained (its best validation epoch
    at or after the first epoch that trained the prompt), as "k/n"; "-" for rows measured
    before the runs recorded it. A seed that reports an untrained prompt reports its scheme
    alone: the warm start (``train.prompt_warmup``) ended after its best epoch."""
    starts = row.get("prompt_starts")
    if starts is None:
        return "-"
    trained = sum(map(reports_trained_prompt, row["best_epochs"], starts))
    return f"{trained}/{len(starts)}"


def prompt_effect_table(rows: list[dict[str, Any]]) -> str:
    """Every prompted cell minus its scheme alone, paired by seed."""
    body = []
    for (dataset, model, scheme, prompt, bits), row, alone in prompted_cells(rows):
        worst = min(a - alone["acc_mean"] for a in row["accs"])
        body.append([dataset, model, f"INT{bits}", scheme, prompt, _cell(alone), _cell(row),
                     paired(row, alone), f"{worst:+.1f}", trained_prompt_seeds(row)])  # fmt: skip
    header = ["dataset", "model", "bits", "scheme", "prompt", "alone", "prompted",
              "prompted minus alone, paired", "worst seed minus alone's mean",
              "seeds reporting a trained prompt"]  # fmt: skip
    return markdown_table(header, body)


def _number(value: float | None, digits: int) -> str:
    """A figure, or "-" where there is none (a float point has no step to compare with)."""
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def diagnosis_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        for d in r.get("diagnostics", []):
            body.append([
                f"{r['dataset']} {r['model']}", r["variant"], d["layer"],
                f"{d['prompt_to_aggregate']:.3f}", _number(d["prompt_to_step"], 3),
                f"{d['weight_entropy']:.3f}", f"{d['prompt_range_to_aggregate_range']:.2f}",
                f"{d['error_without_prompt']:.4f}", f"{d['error_with_prompt']:.4f}",
                _number(d.get("error_of_exact_rounding"), 4),
            ])  # fmt: skip
    header = [
        "graph", "setting", "layer", "‖p‖/‖h‖", "mean \\|p\\| / step", "weight entropy",
        "prompt range / aggregate range", "agg. error without p", "agg. error with p",
        "error of rounding the exact aggregate",
    ]  # fmt: skip
    return markdown_table(header, body)


def tuning_label(row: dict[str, Any]) -> str:
    """A tuning row's prompt, phase length, rate and variant, as the tables name them."""
    rate = row["tuning_lr_scale"]
    label = f"{row['prompt']}, {row['tuning_epochs']} epochs, prompt lr {rate:g} x lr"
    if row.get("variant"):
        label += f", {PROMPT_VARIANT_NAMES[row['variant']]}"
    return label


def tuning_table(rows: list[dict[str, Any]], main_rows: list[dict[str, Any]]) -> str:
    """Each prompt-tuning row against its scheme alone from the same runs, beside the main
    part's scheme alone (the same seeds and recipe: equal seed by seed when both are current)
    and the main part's prompt trained with the backbone."""
    index = {(r["dataset"], r["model"], r["scheme"], r["prompt"], r["bits"]): r
             for r in main_rows}  # fmt: skip
    body = []
    for r in rows:
        cell = (r["dataset"], r["model"], r["scheme"])
        alone_main = index.get((*cell, "none", 4))
        joint = index.get((*cell, r["prompt"], 4))
        same = "-"
        if alone_main is not None and len(alone_main["accs"]) == len(r["scheme_accs"]):
            equal = sum(a == b for a, b in zip(alone_main["accs"], r["scheme_accs"], strict=True))
            same = f"{equal}/{len(r['scheme_accs'])}"
        won = sum(
            reports_trained_prompt(epoch, start)
            for epoch, start in zip(r["best_epochs"], r["prompt_starts"], strict=True)
        )
        alone = {"acc_mean": r["scheme_acc_mean"], "acc_std": r["scheme_acc_std"],
                 "accs": r["scheme_accs"]}  # fmt: skip
        prompt = tuning_label(r)
        body.append([
            r["dataset"], r["model"], r["scheme"], prompt, _cell(alone), _cell(r),
            paired(r, alone), f"{won}/{r['n_seeds']}", same,
            paired(joint, alone_main) if joint is not None else "-",
        ])  # fmt: skip
    header = ["dataset", "model", "scheme", "prompt", "scheme alone (same runs)",
              "+ prompt tuned on the frozen backbone", "tuned minus alone, paired",
              "seeds whose prompt won on validation", "seeds equal to the main part's alone",
              "main part: prompt trained with the backbone, paired"]  # fmt: skip
    return markdown_table(header, body)


def write_report(args: Any) -> None:
    main_rows = load_rows("accuracy_planetoid")
    ablation_rows = load_rows("accuracy_planetoid_ablation")
    diagnosis_rows = load_rows("accuracy_planetoid_diagnosis")
    points_rows = load_rows("accuracy_planetoid_points")
    tuning_rows = load_rows("accuracy_planetoid_tuning")
    command = (
        "python benchmarks/accuracy_planetoid.py "
        f"--part {{main,ablation,diagnosis,points,tuning}} --seeds {args.seeds} --jobs {args.jobs} "
        f"--root {args.root}"
    )
    parts = [
        "# LoRAP on Planetoid (Cora, CiteSeer)\n",
        f"Command:\n\n```\n{command}\n```\n\nMachine: {machine()}.\n",
    ]
    if main_rows:
        note = "".join(f"\n\n{line}" for line in start_notes(main_rows))
        parts.append(
            "## Reproduction (test %, mean ± std over seeds)\n\n" + main_tables(main_rows) + note
        )
        parts.append(
            "## The prompt's effect (mean ± standard error of the per-seed differences)\n\n"
            + prompt_effect_table(main_rows)
            + "\n\nThe last column: a seed reports a trained prompt when its best validation "
            "epoch is at or after the first epoch that trained the prompt; the others report "
            "their scheme alone (the warm start ended after their best epoch), so their "
            'difference is zero by construction. "-": measured before runs recorded it '
            "(`benchmarks/prompt_in_reported_model.py` measures it side by side)."
            + "\n\nPooled over the cells (each cell's paired mean difference):\n\n"
            + "\n".join(f"- {line}" for line in pooled_effect(main_rows))
        )
        lines = tuning_targets(tuning_rows, main_rows) + [
            f"Trained with the backbone (the main part): {line}" for line in targets(main_rows)
        ]
        parts.append("## Targets\n\n" + "\n".join(f"- {line}" for line in lines))
    if ablation_rows:
        rows = with_main_references(ablation_rows, main_rows)
        parts.append("## Ablation (INT4)\n\n" + ablation_table(rows))
    if points_rows:
        parts.append(
            "## Which rounding breaks GIN at INT4 (plain QAT, the other points at full "
            "precision)\n\n"
            + ablation_table(with_every_point(points_rows, main_rows), points_reference)
        )
    if tuning_rows:
        parts.append(
            "## Prompt tuning on the frozen backbone (INT4, mean ± std; paired: mean ± "
            "standard error of the per-seed differences)\n\n" + tuning_table(tuning_rows, main_rows)
        )
    if ablation_rows or diagnosis_rows:
        table = diagnosis_table(ablation_rows + diagnosis_rows)
        parts.append("## Diagnosis (per layer, mean over seeds)\n\n" + table)
    tuned = [
        {
            **r,
            "variant": f"{r['scheme']}, {tuning_label(r)} "
            f"({r['diagnosed_seeds']} seeds whose prompt won)",
        }
        for r in tuning_rows
        if r.get("diagnostics")
    ]
    if tuned:
        parts.append(
            "## Diagnosis of the tuned prompts (per layer, mean over the seeds whose prompt "
            "won on validation)\n\n" + diagnosis_table(tuned)
        )
    (RESULTS / "accuracy_planetoid.md").write_text("\n\n".join(parts) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part",
        choices=("main", "ablation", "diagnosis", "points", "tuning", "report"),
        required=True,
        help="report: rewrite accuracy_planetoid.md from the JSON files without running",
    )
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument("--root", default="data/planetoid", help="ROOT/<Name>/raw/ind.*")
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=None)
    parser.add_argument(
        "--models",
        type=lambda s: s.split(","),
        default=None,
        help="main part: the models to run (default: all); ablation part: the models to "
        "ablate (default: gcn)",
    )
    parser.add_argument("--resume", action="store_true", help="keep finished rows")
    parser.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=None,
        help="run only the settings whose label contains one of these strings",
    )
    parser.add_argument(
        "--redo",
        action="store_true",
        help="with --resume: run the chosen settings again even where finished (e.g. after a "
        "change to a scheme), replacing their rows",
    )
    parser.add_argument(
        "--bits",
        type=lambda s: [int(b) for b in s.split(",")],
        default=[4, 8],
        help="main part: the bit widths to run (FP32 runs with 4)",
    )
    parser.add_argument(
        "--tuning-epochs",
        type=int,
        default=SHIPPED_TUNING_EPOCHS,
        help="tuning part: epochs of prompt tuning after the run, ending early on the "
        f"recipe's patience (default {SHIPPED_TUNING_EPOCHS}, the shipped default for the "
        "recipe's 200 epochs; the earlier default was 50)",
    )
    parser.add_argument(
        "--tuning-prompt-lr-scale",
        type=float,
        default=DEFAULT_TUNING_PROMPT_LR_SCALE,
        help="tuning part: the prompts' learning rate as a multiple of lr while they tune "
        "(train.prompt_tuning_lr_scale; default: the shipped one, "
        f"{DEFAULT_TUNING_PROMPT_LR_SCALE:g}); rows keep it as tuning_lr_scale",
    )
    parser.add_argument(
        "--tuning-variant",
        choices=sorted(PROMPT_VARIANT_NAMES),
        default=None,
        help="tuning part: LoRAP changed in one place (rows keep it as variant; the targets "
        "use rows without one): "
        + "; ".join(f"{name}: {text}" for name, text in PROMPT_VARIANT_NAMES.items()),
    )
    args = parser.parse_args()
    if args.part == "main":
        run_part("accuracy_planetoid", main_settings(args), args, diagnose=False)
    elif args.part == "ablation":
        settings = [s for m in args.models or ["gcn"] for s in ablation_settings(args, m)]
        run_part("accuracy_planetoid_ablation", settings, args, diagnose=True)
    elif args.part == "diagnosis":
        run_part("accuracy_planetoid_diagnosis", diagnosis_settings(args), args, diagnose=True)
    elif args.part == "points":
        run_part("accuracy_planetoid_points", points_settings(args), args, diagnose=False)
    elif args.part == "tuning":
        # The prompt's diagnostics where it won (a variant's would misread its weights).
        diagnose = "kept" if args.tuning_variant is None else False
        run_part("accuracy_planetoid_tuning", tuning_settings(args), args, diagnose)
    write_report(args)
    print((RESULTS / "accuracy_planetoid.md").read_text())


if __name__ == "__main__":
    main()
