"""Quantized graph classification with LoRAP on real TU datasets, Degree-Quant's recipe.

GIN as Degree-Quant trains it on REDDIT-BINARY (``camlsys/degree-quant``,
``reddit_binary/``): 5 layers of width 64 (sum aggregation, batch norm after each; epsilon
fixed at 0 where Degree-Quant learns it from 0), mean readout, a head Linear(64, 64) -
ReLU - dropout 0.5 - Linear; Adam, batches of 128 graphs, the learning rate halved every
50 epochs, 10 stratified folds (fold i tests, fold i - 1 validates, the other 8 train),
test accuracy at the best validation epoch of each fold, mean and standard deviation over
the folds. Learning rate and weight decay per bit width are Degree-Quant's for its own
runs (INT8: 0.005, 2e-4; INT4: 0.001, 4e-5), used for every scheme at that width (FP32
takes INT8's); Degree-Quant's protection probabilities follow the bit width (INT8: 0 to
0.1, INT4: 0.1 to 0.2), as in its scripts.
Node features: the datasets' one-hot node labels; REDDIT-BINARY has none and gets its
standardised node degree (Degree-Quant's rule for a largest degree above 1,000).

Where this differs from Degree-Quant's code (written down in BENCHMARKS.md): its GIN MLP
ends Linear - ReLU - BatchNorm (here the norm comes before the ReLU, outside the MLP), its
first layer's first Linear is not quantized (here every weight is), it picks the epoch of
the lowest validation loss (here the best validation accuracy) and it trains all 200
epochs (``--epochs`` may shorten the run; the table says how many ran).

Writes ``benchmarks/results/accuracy_graph_level.json`` (rows: dataset, model, scheme,
prompt, bits, acc_mean, acc_std, avg_bits, n_folds, epochs, accs) and
``accuracy_graph_level.md``. Raw files in PyG's TU layout under ``--root`` (see
BENCHMARKS.md for where they came from)::

    python benchmarks/accuracy_graph_level.py --datasets PROTEINS,REDDIT-BINARY \\
        [--bits 4,8] [--schemes qat,degree_quant,a2q,mixq] [--prompts none,lorap] \\
        [--folds 0-9] [--epochs 200] [--seed 0] [--jobs 2] [--resume] [--only LABEL]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    PROMPT_VARIANT_NAMES,
    PROMPT_VARIANTS,
    RESULTS,
    markdown_table,
    mean_sem,
    mean_std,
    run_figures,
    scheme_options,
    write_result,
)

from lorap_dist.config import DEFAULT_TUNING_PROMPT_LR_SCALE  # noqa: E402

NAME = "accuracy_graph_level"
PAPER = {  # Degree-Quant, GIN on REDDIT-BINARY (paper; public code's rerun in brackets)
    ("REDDIT-BINARY", "qat", 8): "76.0",
    ("REDDIT-BINARY", "degree_quant", 8): "91.8",
    ("REDDIT-BINARY", "qat", 4): "54.1",
    ("REDDIT-BINARY", "degree_quant", 4): "81.3 (86.2)",
}
COLLAPSE = 10.0  # plain QAT this far below FP32 has collapsed (the +20 target's condition)
RECIPE = {8: {"lr": 0.005, "weight_decay": 2e-4}, 4: {"lr": 0.001, "weight_decay": 4e-5}}


def experiment(
    dataset: str,
    root: str,
    scheme: str | None,
    bits: int,
    prompt: str,
    epochs: int,
    *,
    prompt_unit: str | None = None,
    seed: int = 0,
    **train: Any,
) -> dict[str, Any]:
    """The run's config as a plain dict (scheme ``None``: FP32, with INT8's recipe).

    ``prompt_unit`` ``None`` is the package's default; ``seed`` is ``train.seed``, which
    seeds the weights, dropout and batch order, not the folds. ``train`` sets other train
    fields (``prompt_lr_scale``, ``quantizer_lr_scale``, ``prompt_tuning_lr_scale`` ...), a
    ``None`` leaving the package's default; ``prompt_tuning_epochs`` is 0 unless given (the
    prompt trained with the backbone, :data:`common.TRAINED_TOGETHER`).
    """
    quant = (
        {"scheme": "none"}
        if scheme is None
        else {"scheme": scheme, "options": scheme_options(scheme, bits)}
    )
    return {
        "data": {"source": "tu", "name": dataset, "root": root, "folds": 10},
        "model": {"arch": "gin", "layers": 5, "hidden": 64, "readout": "mean", "dropout": 0.5},
        "prompt": {"kind": prompt, **({} if prompt_unit is None else {"unit": prompt_unit})},
        "quant": quant,
        "train": {
            **RECIPE[bits],
            "epochs": epochs,
            "patience": 0,
            "batch_size": 128,
            "lr_decay_every": 50,
            "lr_decay": 0.5,
            "device": "cpu",
            "seed": seed,
            "prompt_tuning_epochs": 0,  # common.TRAINED_TOGETHER
            **{field: value for field, value in train.items() if value is not None},
        },
    }


_GRAPHS: dict[str, Any] = {}


def _run(task: tuple[dict[str, Any], int, str | None]) -> dict[str, Any]:
    from lorap_dist.config import ExperimentConfig
    from lorap_dist.prompt.lorap import LoRAP
    from lorap_dist.train_graphs import load_graph_set, train_graphs

    config_dict, fold, variant = task
    torch.set_num_threads(1)
    config_dict = json.loads(json.dumps(config_dict))
    config_dict["data"]["fold"] = fold
    config = ExperimentConfig.from_dict(config_dict)
    key = json.dumps(config_dict["data"] | {"fold": None}, sort_keys=True)
    if key not in _GRAPHS:
        _GRAPHS[key] = load_graph_set(config)
    forward = LoRAP.forward
    if variant is not None:  # this process runs one task at a time
        function = PROMPT_VARIANTS[variant]
        LoRAP.forward = lambda self, h, q, nodes=None: function(self, h, q, nodes)
    try:
        result, _ = train_graphs(config, _GRAPHS[key], progress=False)
    finally:
        LoRAP.forward = forward
    return run_figures(result)


def settings(args: Any) -> list[dict[str, Any]]:
    out = []
    for dataset in args.datasets:
        grid: list[tuple[str | None, int, str]] = [(None, 8, "none")]
        for bits in args.bits:
            grid += [(s, bits, p) for s in args.schemes for p in args.prompts]
        for scheme, bits, prompt in grid:
            key = {
                "dataset": dataset,
                "model": "gin",
                "scheme": scheme or "fp32",
                "prompt": prompt,
                "bits": 32 if scheme is None else bits,
            }
            scale = args.prompt_lr_scale if prompt != "none" else None
            unit = args.prompt_unit if prompt != "none" else None
            # only schemes with learned quantizer state (A2Q's steps and bits, MixQ's logits)
            learned = args.quantizer_lr_scale if scheme in LEARNED_STATE else None
            learned = None if learned == 1 else learned  # the package's default
            tuning = args.prompt_tuning_epochs if prompt != "none" else None
            variants = (("prompt_lr_scale", scale), ("prompt_unit", unit))
            # the rate the prompts tune at, recorded (its default changed once)
            tuning_rate = args.tuning_prompt_lr_scale if tuning else None
            variants += (("prompt_tuning_epochs", tuning), ("tuning_lr_scale", tuning_rate))
            variants += (("variant", args.variant if prompt != "none" else None),)
            variants += (("seed", args.seed),)  # 0, the tables' seed, is left out
            key |= {k: v for k, v in (*variants, ("quantizer_lr_scale", learned)) if v}
            width = "FP32" if scheme is None else f"INT{bits}"
            label = f"{dataset} {key['scheme']} {width} {prompt_label(key)}"
            config = experiment(
                dataset, args.root, scheme, bits, prompt, args.epochs, prompt_unit=unit,
                seed=args.seed, prompt_lr_scale=scale, quantizer_lr_scale=learned,
                prompt_tuning_epochs=tuning, prompt_tuning_lr_scale=tuning_rate,
            )  # fmt: skip
            out.append({"key": key, "label": label, "config": config})
    return out


#: Row keys that set a prompt or optimizer option away from the package's default.
VARIANTS = (
    "prompt_lr_scale",
    "prompt_unit",
    "quantizer_lr_scale",
    "prompt_tuning_epochs",
    "tuning_lr_scale",
    "variant",
    "seed",
)
#: What a row tuned on the frozen backbone may hold besides its tuning epochs (a row of
#: another seed is a second sample of the same setting).
TUNING = ("prompt_tuning_epochs", "tuning_lr_scale", "seed")
#: The schemes whose quantizers hold learned state (``train.quantizer_lr_scale`` applies).
LEARNED_STATE = ("a2q", "mixq")


def prompt_label(row: dict[str, Any]) -> str:
    """The prompt, with its unit and learning rate (and the quantizer state's) where a row
    sets them."""
    parts = [row["prompt"]]
    if row.get("backbone_of"):
        parts.append(f"the frozen backbone of the runs tuned {row['backbone_of']} epochs")
    if row.get("prompt_unit"):
        parts.append(f"in {row['prompt_unit']} units")
    if row.get("prompt_lr_scale") is not None:
        parts.append(f"prompt lr {row['prompt_lr_scale']:g} x lr")
    if row.get("quantizer_lr_scale") is not None:
        parts.append(f"quantizer lr {row['quantizer_lr_scale']:g} x lr")
    if row.get("prompt_tuning_epochs"):
        parts.append(
            f"tuned {row['prompt_tuning_epochs']} epochs on the frozen backbone at "
            f"{row['tuning_lr_scale']:g} x lr"
        )
    if row.get("variant"):
        parts.append(PROMPT_VARIANT_NAMES[row["variant"]])
    if row.get("seed"):
        parts.append(f"seed {row['seed']}")
    return ", ".join(parts)


def load_rows() -> list[dict[str, Any]]:
    path = RESULTS / f"{NAME}.json"
    return json.loads(path.read_text()) if path.exists() else []


def same(row: dict[str, Any], key: dict[str, Any]) -> bool:
    return all(row.get(k) == v for k, v in key.items()) and all(
        row.get(k) == key.get(k) for k in VARIANTS
    )


def same_run(row: dict[str, Any], key: dict[str, Any], epochs: int) -> bool:
    """Whether ``row`` measured setting ``key`` at ``epochs`` (a new run of it replaces the
    row; rows of other epoch counts stay beside it)."""
    return same(row, key) and row["epochs"] == epochs


def plan(args: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The settings still to run, each with the folds it lacks.

    A kept row (same setting, epochs and prompt start) that holds every requested fold is
    done; one that holds some of them is extended by the others, so ``--folds 0-4
    --resume`` adds folds 1-4 to a row measured on fold 0 instead of re-running it. With
    ``--resume`` :func:`run` writes each fold as it finishes, so a run stopped part-way
    leaves such a row.
    """
    out = []
    for setting in settings(args):
        kept = next(
            (
                r
                for r in rows
                if same_run(r, setting["key"], args.epochs)
                and common.same_start(r)
                and set(r["folds"]) <= set(args.folds)
            ),
            None,
        )
        have = set(kept["folds"]) if kept else set()
        if any(
            same_run(r, setting["key"], args.epochs)
            and common.same_start(r)
            and set(args.folds) <= set(r["folds"])
            for r in rows
        ):
            continue
        missing = [f for f in args.folds if f not in have]
        out.append({**setting, "kept": kept, "folds": missing})
    return out


def scheme_alone_of(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """A prompt-tuning row's scheme alone per fold, from the same runs (else nothing)."""
    if not all("scheme_test" in o for o in outcomes):
        return {}
    return {"scheme_accs": [round(o["scheme_test"], 1) for o in outcomes]}


def merge_folds(kept: dict[str, Any] | None, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` (new folds) joined with ``kept`` (earlier folds of the same setting), in
    fold order; means over folds weighted by how many folds each side holds."""
    if kept is None:
        return row
    n_old, n_new = kept["n_folds"], row["n_folds"]

    def weighted(key: str) -> float:
        return round((kept[key] * n_old + row[key] * n_new) / (n_old + n_new), 2)

    by_fold = {
        f: (a, e)
        for side in (kept, row)
        for f, a, e in zip(side["folds"], side["accs"], side["best_epochs"], strict=True)
    }
    folds = sorted(by_fold)
    accs = [by_fold[f][0] for f in folds]
    mean, std = mean_std(accs)
    if "scheme_accs" in row and "scheme_accs" not in kept:
        row = {key: value for key, value in row.items() if key != "scheme_accs"}
    if "scheme_accs" in row:  # prompt tuning's scheme alone, from the same runs
        alone = {
            f: a
            for side in (kept, row)
            for f, a in zip(side["folds"], side["scheme_accs"], strict=True)
        }
        row = {**row, "scheme_accs": [alone[f] for f in folds]}
    return {
        **row,
        "acc_mean": round(mean, 2),
        "acc_std": round(std, 2),
        "valid_mean": weighted("valid_mean"),
        "avg_bits": weighted("avg_bits"),
        "n_folds": len(folds),
        "folds": folds,
        "accs": accs,
        "best_epochs": [by_fold[f][1] for f in folds],
        "wall_s_per_fold": weighted("wall_s_per_fold"),
    }


def run(args: Any) -> None:
    rows = load_rows() if args.resume else []
    todo = plan(args, rows)
    if args.only:
        todo = [s for s in todo if any(part in s["label"] for part in args.only)]
    runs = ", ".join(f"{s['label']}: folds {span(s['folds'])}" for s in todo)
    print(f"{NAME}: {len(todo)} settings to run ({runs})", flush=True)
    tasks = [(s["config"], fold, s["key"].get("variant")) for s in todo for fold in s["folds"]]
    owner = [i for i, s in enumerate(todo) for _ in s["folds"]]
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
        outcomes: list[dict[str, Any]] = []
        for index, outcome in enumerate(pool.map(_run, tasks)):
            outcomes.append(outcome)
            setting = todo[owner[index]]
            done = len(outcomes) == len(setting["folds"])
            if not (done or args.resume):  # --resume also keeps each fold as it finishes
                continue
            accs = [o["test"] for o in outcomes]
            mean, std = mean_std(accs)
            bits = [o["avg_bits"] for o in outcomes if o["avg_bits"] is not None]
            row = {
                **setting["key"],
                "acc_mean": round(mean, 2),
                "acc_std": round(std, 2),
                "valid_mean": round(statistics.fmean(o["valid"] for o in outcomes), 2),
                "avg_bits": round(statistics.fmean(bits), 2) if bits else 32.0,
                "n_folds": len(outcomes),
                "folds": list(setting["folds"][: len(outcomes)]),
                "epochs": args.epochs,
                "accs": [round(a, 1) for a in accs],
                "best_epochs": [o["best_epoch"] for o in outcomes],
                "wall_s_per_fold": round(statistics.fmean(o["wall_s"] for o in outcomes), 1),
                **scheme_alone_of(outcomes),
                **common.prompt_start(setting["key"]["prompt"], setting["key"]["scheme"]),
                **common.scheme_facts(setting["key"]["scheme"]),
            }
            row = merge_folds(setting["kept"], row)
            RESULTS.mkdir(parents=True, exist_ok=True)
            with open(RESULTS / f".{NAME}.lock", "w") as lock:  # other processes may write
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = [
                    r for r in load_rows() if not same_run(r, setting["key"], args.epochs)
                ] + [row]
                write_result(NAME, current)
                write_report()
            print(
                f"{setting['label']}: {row['acc_mean']:.2f} ± {row['acc_std']:.2f} over folds "
                f"{row['folds']} [{time.perf_counter() - start:.0f} s]",
                flush=True,
            )
            if done:
                outcomes = []


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not run"
    return f"{row['acc_mean']:.1f} ± {row['acc_std']:.1f}{common.start_suffix(row)}"


def paired(row: dict[str, Any], alone: dict[str, Any] | None) -> str:
    """A row against its reference fold by fold, mean ± standard error: a prompted row
    against its scheme alone (at the same quantizer rate; a prompt-tuning row against the
    scheme alone of its own runs), a scheme alone at another quantizer rate against the
    scheme alone at the default one."""
    if "scheme_accs" in row:  # prompt tuning: its scheme alone ran in the same runs
        alone = {"folds": row["folds"], "accs": row["scheme_accs"]}
    if alone is None or alone is row or alone["folds"] != row["folds"]:
        return ""
    diffs = [b - a for a, b in zip(alone["accs"], row["accs"], strict=True)]
    if len(diffs) < 2:
        return f"{diffs[0]:+.1f} (one fold)"
    error = statistics.stdev(diffs) / len(diffs) ** 0.5
    return f"{statistics.fmean(diffs):+.2f} ± {error:.2f}"


def tuned_targets(rows: list[dict[str, Any]]) -> list[str]:
    """ "LoRAP at least as good as its scheme alone" for the prompt tuned on the frozen
    backbone (rows with ``prompt_tuning_epochs`` and no variant but its rate and seed), each
    against the scheme alone of its own runs, per tuning rate and seed; the shipped rate is
    the default."""

    def setting(r: dict[str, Any]) -> tuple[Any, ...]:
        return (
            r["dataset"],
            r["epochs"],
            r["prompt_tuning_epochs"],
            r["tuning_lr_scale"],
            r.get("seed", 0),
        )

    tuned = tuned_rows(rows)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {setting(r): [] for r in tuned}
    for r in sorted(tuned, key=lambda r: (r["scheme"], r["bits"])):
        groups[setting(r)].append(r)
    lines = []
    for (dataset, epochs, tuning, rate, seed), group in groups.items():
        cells = [
            (
                f"{r['scheme']} INT{r['bits']}",
                statistics.mean(r["accs"]) - statistics.mean(r["scheme_accs"]),
            )
            for r in group
        ]
        worse = [f"{cell} ({diff:+.1f})" for cell, diff in cells if diff < -1e-9]
        shipped = "the default" if rate == DEFAULT_TUNING_PROMPT_LR_SCALE else "not the default"
        shipped += f", seed {seed}" if seed else ""
        # Every fold of every cell: whether the cells that fall short are the scatter of
        # an effect near zero or a loss.
        diffs = [b - a for r in group for a, b in zip(r["scheme_accs"], r["accs"], strict=True)]
        pooled = (
            f"; over all {len(cells)} cells' {len(diffs)} folds, paired: {mean_sem(diffs)} "
            f"({sum(d > 0 for d in diffs)} folds up, {sum(d < 0 for d in diffs)} down)"
            if len(cells) > 1
            else ""
        )
        lines.append(
            f"- {dataset} ({epochs} epochs + {tuning} of prompt tuning at {rate:g} x lr, "
            f"{shipped}): LoRAP at least as good as its scheme alone of the same runs (mean): "
            + ("met in every cell" if not worse else "NOT met: " + ", ".join(worse))
            + pooled
        )
    return lines


def tuned_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows tuned on the frozen backbone, with no variant but the tuning's rate and the
    seed, whose scheme alone ran in the same runs."""
    return [
        r
        for r in rows
        if r.get("prompt_tuning_epochs") and "scheme_accs" in r
        and not any(k in r for k in VARIANTS if k not in TUNING)
    ]  # fmt: skip


def backbone_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scheme alone of each tuned row's own runs (the frozen backbone the prompt was
    tuned on), as a row of its own where no run of the scheme alone at those epochs and
    folds stands in the table: the prompted row's "vs scheme alone" then has its reference
    beside it, with the paper's figure."""

    def run(r: dict[str, Any]) -> tuple[Any, ...]:
        folds = tuple(r["folds"])
        return r["dataset"], r["scheme"], r["bits"], r["epochs"], folds, r.get("seed", 0)

    measured = {run(r) for r in rows if r["prompt"] == "none" and not any(k in r for k in VARIANTS)}
    backbones: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in tuned_rows(rows):
        key = run(r)
        if key in measured or key in backbones:
            continue
        mean, std = mean_std(r["scheme_accs"])
        backbones[key] = {
            **{k: r[k] for k in ("dataset", "scheme", "bits", "epochs", "folds", "n_folds")},
            **{k: r[k] for k in ("avg_bits", "mixq_freeze", "seed") if k in r},
            "prompt": "none",
            "backbone_of": r["prompt_tuning_epochs"],
            "accs": r["scheme_accs"],
            "acc_mean": round(mean, 2),
            "acc_std": round(std, 2),
        }
    return list(backbones.values())


def against_longer(rows: list[dict[str, Any]]) -> list[str]:
    """Each tuned row against its scheme alone trained for as many epochs as the row's
    backbone and prompt together, fold by fold over the folds both hold: whether the prompt
    beats spending its epochs on training the whole model instead."""
    lines = []
    for r in tuned_rows(rows):
        if r.get("seed"):  # the longer runs are the tables' seed
            continue
        total = r["epochs"] + r["prompt_tuning_epochs"]
        longer = next(
            (
                a
                for a in rows
                if (a["dataset"], a["scheme"], a["bits"], a["prompt"], a["epochs"])
                == (r["dataset"], r["scheme"], r["bits"], "none", total)
                and not any(k in a for k in VARIANTS)
            ),
            None,
        )
        if longer is None:
            continue
        theirs = dict(zip(longer["folds"], longer["accs"], strict=True))
        folds = [f for f in r["folds"] if f in theirs]
        if not folds:
            continue
        ours = dict(zip(r["folds"], r["accs"], strict=True))
        alone = dict(zip(r["folds"], r["scheme_accs"], strict=True))
        lines.append(
            f"- {r['dataset']} {r['scheme']} INT{r['bits']}, folds {span(folds)}: "
            f"LoRAP ({r['epochs']} epochs + {r['prompt_tuning_epochs']} of prompt tuning) "
            f"{statistics.fmean(ours[f] for f in folds):.1f}, the scheme alone at "
            f"{r['epochs']} epochs {statistics.fmean(alone[f] for f in folds):.1f} and at "
            f"{total} epochs {statistics.fmean(theirs[f] for f in folds):.1f}; LoRAP minus "
            f"the scheme alone at {total} epochs, paired: "
            + mean_sem([ours[f] - theirs[f] for f in folds])
        )
    return lines


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's two targets, as far as the rows measure them."""
    lines = tuned_targets(rows)
    rows = [r for r in rows if not any(k in r for k in VARIANTS)]  # the defaults
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    runs = sorted(
        {(r["dataset"], r["epochs"]) for r in rows}, key=lambda de: (datasets.index(de[0]), de[1])
    )
    for dataset, epochs in runs:
        get = {
            (r["scheme"], r["prompt"], r["bits"]): r
            for r in rows
            if r["dataset"] == dataset and r["epochs"] == epochs
        }
        qat, dq = get.get(("qat", "none", 4)), get.get(("degree_quant", "none", 4))
        # FP32 at the same epochs, else the longest FP32 run (its epochs said).
        fp32s = [r for r in rows if r["dataset"] == dataset and r["scheme"] == "fp32"]
        fp32 = get.get(("fp32", "none", 32)) or max(fp32s, key=lambda r: r["epochs"], default=None)
        several = sum(d == dataset for d, _ in runs) > 1  # say which epoch count this is
        name = f"{dataset} ({epochs} epochs)" if several else dataset
        if qat and dq and fp32:
            gap = dq["acc_mean"] - qat["acc_mean"]
            at = "" if fp32["epochs"] == epochs else f" at {fp32['epochs']} epochs"
            over = (
                f"folds {span(qat['folds'])}"
                if qat["folds"] == dq["folds"]
                else f"folds {span(qat['folds'])} and {span(dq['folds'])}"
            )
            head = (
                f"- {name}: Degree-Quant INT4 {dq['acc_mean']:.1f} vs plain QAT INT4 "
                f"{qat['acc_mean']:.1f} ({gap:+.1f} points, {over}; "
                f"FP32 {fp32['acc_mean']:.1f}{at})"
            )
            if qat["acc_mean"] > fp32["acc_mean"] - COLLAPSE:
                lines.append(f"{head}: QAT does not collapse here, the +20 target does not apply")
            else:
                verdict = "met" if gap >= 20 else "NOT met"
                lines.append(f"{head}: QAT collapses; target at least +20: {verdict}")
        worse = []
        for (scheme, prompt, bits), row in sorted(get.items()):
            alone = get.get((scheme, "none", bits))
            if prompt != "none" and alone is not None:
                if row["acc_mean"] < alone["acc_mean"]:
                    worse.append(f"{scheme} INT{bits} ({row['acc_mean'] - alone['acc_mean']:+.1f})")
        if not any(prompt != "none" for _, prompt, _ in get):
            continue
        lines.append(
            f"- {name}: LoRAP at least as good as its scheme alone (mean): "
            + ("met in every cell" if not worse else "NOT met: " + ", ".join(worse))
        )
    return lines


def reference_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """The key of the row ``row`` is compared with (see :func:`paired`)."""
    rate = row.get("quantizer_lr_scale") if row["prompt"] != "none" else None
    return row["scheme"], row["bits"], row["epochs"], rate, row.get("seed", 0)


def span(folds: list[int]) -> str:
    """``0-9`` for a run of folds, else the list."""
    if folds == list(range(folds[0], folds[-1] + 1)):
        return f"{folds[0]}-{folds[-1]}"
    return ",".join(str(f) for f in folds)


def write_report() -> None:
    rows = load_rows()
    order = {"fp32": 0, "qat": 1, "degree_quant": 2, "a2q": 3, "mixq": 4}
    prompts = {"none": 0, "lorap": 1, "gpf_lorap": 2}
    lines = []
    shown = rows + backbone_rows(rows)
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        subset = [r for r in shown if r["dataset"] == dataset]
        subset.sort(
            key=lambda r: (
                -r["bits"],
                order.get(r["scheme"], 9),
                prompts[r["prompt"]],
                r.get("prompt_unit", ""),
                r.get("prompt_lr_scale", 0),
                r.get("quantizer_lr_scale", 0),
                r["epochs"],
                r.get("seed", 0),
            )
        )
        alone = {
            (r["scheme"], r["bits"], r["epochs"], r.get("quantizer_lr_scale"), r.get("seed", 0)): r
            for r in subset
            if r["prompt"] == "none"
        }
        table = []
        for r in subset:
            paper = (
                PAPER.get((dataset, r["scheme"], r["bits"]), "") if r["prompt"] == "none" else ""
            )
            table.append(
                [
                    "FP32" if r["bits"] == 32 else f"INT{r['bits']}",
                    r["scheme"],
                    prompt_label(r),
                    _cell(r),
                    paired(r, alone.get(reference_key(r))),
                    paper,
                    f"{r['avg_bits']:.2f}",
                    f"{r['n_folds']} ({span(r['folds'])})",
                    r["epochs"],
                    " ".join(f"{a:.1f}" for a in r["accs"]),
                ]
            )
        header = [
            "bits",
            "scheme",
            "prompt",
            "test % (mean ± std)",
            "vs scheme alone",
            "paper",
            "avg bits",
            "folds",
            "epochs",
            "per fold",
        ]
        lines += [f"### {dataset}, GIN", "", markdown_table(header, table), ""]
    for note in common.start_notes(rows):
        lines += [note, ""]
    lines += ["### Targets", "", *targets(rows), ""]
    longer = against_longer(rows)
    if longer:
        heading = "### The prompt's epochs against as many more epochs of training"
        lines += [heading, "", *longer, ""]
    (RESULTS / f"{NAME}.md").write_text("\n".join(lines))


def _folds(text: str) -> list[int]:
    if "-" in text:
        first, last = (int(v) for v in text.split("-"))
        return list(range(first, last + 1))
    return [int(v) for v in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="PROTEINS,REDDIT-BINARY")
    parser.add_argument("--root", default="data/tu", help="ROOT/<NAME>/raw/<NAME>_*.txt")
    parser.add_argument("--bits", default="4,8")
    parser.add_argument("--schemes", default="qat,degree_quant,a2q,mixq")
    parser.add_argument("--prompts", default="none,lorap")
    parser.add_argument(
        "--prompt-lr-scale",
        type=float,
        default=None,
        help="the prompts' learning rate as a fraction of lr (default: the package's, 0.1); "
        "rows that set it are kept apart from the default's",
    )
    parser.add_argument(
        "--prompt-unit",
        choices=("value", "step"),
        default=None,
        help="what LoRAP's bases count in (prompt.unit; default: the package's, value); "
        "rows that set it are kept apart from the default's",
    )
    parser.add_argument(
        "--quantizer-lr-scale",
        type=float,
        default=None,
        help="learned quantizer state's learning rate (A2Q's steps and bits, MixQ's logits) "
        "as a multiple of lr (train.quantizer_lr_scale; default: the package's, 1); rows "
        "that set it are kept apart from the default's",
    )
    parser.add_argument(
        "--prompt-tuning-epochs",
        type=int,
        default=None,
        help="prompted rows: tune the prompt for this many epochs on the frozen backbone "
        "after the run (train.prompt_tuning_epochs; default: 0, the prompt trains with the "
        "backbone, as the tables were measured); such rows are paired with the scheme "
        "alone of their own runs and kept apart from the others",
    )
    parser.add_argument(
        "--tuning-prompt-lr-scale",
        type=float,
        default=DEFAULT_TUNING_PROMPT_LR_SCALE,
        help="with --prompt-tuning-epochs: the prompts' rate while they tune, as a multiple "
        "of lr (train.prompt_tuning_lr_scale; default: the package's, "
        f"{DEFAULT_TUNING_PROMPT_LR_SCALE:g}); rows keep it as tuning_lr_scale",
    )
    parser.add_argument(
        "--variant",
        choices=sorted(PROMPT_VARIANTS),
        default=None,
        help="prompted rows: LoRAP changed in one place, for the ablation ("
        + "; ".join(f"{name}: {text}" for name, text in PROMPT_VARIANT_NAMES.items())
        + "); rows keep it as variant, apart from the others",
    )
    parser.add_argument("--folds", default="0-9", help="which of the 10 folds to run")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="train.seed: the weights, dropout and batch order (the folds stay); rows of "
        "another seed than 0 are kept apart, a second sample of their setting",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel, one thread each")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep finished rows; a row holding some of --folds gains the others, each "
        "fold written as it finishes (an interrupted run keeps its finished folds)",
    )
    parser.add_argument("--only", default=None, help="labels containing one of these")
    parser.add_argument("--report", action="store_true", help="rewrite the table only")
    args = parser.parse_args()
    if args.report:
        write_report()
        return
    if args.variant and not args.prompt_tuning_epochs:
        parser.error("--variant changes the prompt tuned on the frozen backbone: give "
                     "--prompt-tuning-epochs too")  # fmt: skip
    args.datasets = args.datasets.split(",")
    args.bits = [int(b) for b in args.bits.split(",") if b]
    args.schemes = [s for s in args.schemes.split(",") if s]
    args.prompts = args.prompts.split(",")
    args.folds = _folds(args.folds)
    args.only = args.only.split(",") if args.only else None
    run(args)


if __name__ == "__main__":
    main()
