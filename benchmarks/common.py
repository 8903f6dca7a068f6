"""Helpers shared by the benchmark scripts: result files and Markdown tables."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"

#: How a prompted row's model started: ``"forked"`` since prompts draw their initial values
#: from a stream of their own (``lorap_dist.prompt.streams``), so the row's backbone weights
#: and training draws equal its scheme row's seed by seed. Prompted rows without the key
#: were measured before, when the prompt's draws shifted the backbone's initial weights:
#: their pairing with the scheme row compares two backbones as well as the prompt.
PROMPT_INIT = "forked"
OLD_START = "†"
OLD_START_NOTE = (
    f"{OLD_START}: measured before prompts drew from a stream of their own; the "
    "prompted model started from other backbone weights than its scheme's row, so the "
    "difference also carries the initialisation's noise."
)
#: When a prompted row's prompt started to train: ``"quarter"`` since ``train.prompt_warmup``
#: holds the prompts still for the first quarter of the epochs by default. Prompted rows
#: without the key trained the prompt from the first step, the earlier default.
PROMPT_WARMUP = "quarter"
NO_WARMUP = "‡"
NO_WARMUP_NOTE = (
    f"{NO_WARMUP}: measured before the prompt's warm start became the default: the prompt "
    "trained from the first step (`train.prompt_warmup: 0`), not after the first quarter "
    "of the epochs. Not what the shipped defaults do; a run with `--resume` measures it again."
)

#: Whether a prompted MixQ row's prompt waited for the bit-width search to freeze
#: (``train.prompt_after_search``, the default since it was measured on CiteSeer GIN). Rows
#: without the key trained the prompt during the search, from the first quarter on.
PROMPT_AFTER_SEARCH = True
IN_SEARCH = "¶"
IN_SEARCH_NOTE = (
    f"{IN_SEARCH}: MixQ with a prompt measured before the prompt waited for MixQ's search to "
    "freeze the bit widths: it trained during the search (from the first quarter of the "
    "epochs on) and shifted which widths the search picked. A run with `--resume` measures "
    "it again."
)


#: How a MixQ row's points froze: ``"covered"`` since a point's range widens, at the first
#: batch after the freeze, to cover all but 0.1% of that batch's values at each end
#: (``MixQQuantizer.freeze``). Rows with ``"reranged"`` forgot the range instead (the
#: next batch's extremes); rows without the key kept the range tracked on the mixture.
MIXQ_FREEZE = "covered"
OLD_MIXQ = "§"
OLD_MIXQ_NOTE = (
    f"{OLD_MIXQ}: MixQ measured before a point's range widened to cover the values the "
    "frozen model sends it: either kept as tracked on the mixture (it could clamp the "
    "frozen model's values and pass them no gradient, so the fine-tuning could fall to "
    "chance) or forgotten at the freeze (the next batch's extremes, which stretch the grid "
    "over heavy tails: Cora GIN lost 1-2 points). A run with `--resume` measures it again."
)


#: LoRAP trained together with the backbone (``train.prompt_tuning_epochs: 0``), after its
#: warm start: the paper's recipe, and the default until prompt tuning on the frozen
#: backbone replaced it. The benchmarks that measure LoRAP so pin it, so their commands
#: still give their tables' figures; ``accuracy_planetoid.py --part tuning`` and
#: ``accuracy_graph_level.py --prompt-tuning-epochs`` measure the default.
TRAINED_TOGETHER = {"prompt_tuning_epochs": 0}

#: ``--prompt-training`` of ``accuracy_lorap`` and ``accuracy_schemes``: ``together`` pins
#: :data:`TRAINED_TOGETHER` (their first tables), ``tuned`` leaves the prompts to the
#: shipped default (tuned on the frozen backbone after the run; each prompted run then
#: reports its own scheme alone, the model the tuning started from).
PROMPT_TRAINING = {"together": TRAINED_TOGETHER, "tuned": {}}


def add_prompt_training(parser: argparse.ArgumentParser) -> None:
    """``--prompt-training`` (see :data:`PROMPT_TRAINING`)."""
    parser.add_argument(
        "--prompt-training",
        choices=tuple(PROMPT_TRAINING),
        default="together",
        help="together: LoRAP trained with the backbone (the paper's recipe, the default "
        "table); tuned: the shipped default, tuned on the frozen backbone, each run paired "
        "with its own scheme alone (written to <name>_tuned.json / .md)",
    )


def scheme_facts(scheme: str | None) -> dict[str, str]:
    """The row keys that record how the scheme's code ran (empty but for MixQ)."""
    return {"mixq_freeze": MIXQ_FREEZE} if scheme == "mixq" else {}


def prompt_start(prompt: str, scheme: str | None = None) -> dict[str, Any]:
    """The row keys that record how a prompted run's prompt started (empty without one)."""
    if prompt == "none":
        return {}
    facts: dict[str, Any] = {"prompt_init": PROMPT_INIT, "prompt_warmup": PROMPT_WARMUP}
    if scheme == "mixq":
        facts["prompt_after_search"] = PROMPT_AFTER_SEARCH
    return facts


def start_mark(row: dict[str, Any]) -> str:
    """``""`` for a row measured as the benchmarks run today, else the mark of the first
    way it differs: :data:`OLD_START` (another backbone start), :data:`NO_WARMUP` (the
    prompt trained from the first step), :data:`IN_SEARCH` (a MixQ prompt trained during
    the search) or :data:`OLD_MIXQ` (MixQ froze by an older rule)."""
    if row.get("prompt", "none") != "none":
        if row.get("prompt_init") != PROMPT_INIT:
            return OLD_START
        if row.get("prompt_warmup") != PROMPT_WARMUP:
            return NO_WARMUP
        if row.get("scheme") == "mixq" and row.get("prompt_after_search") != PROMPT_AFTER_SEARCH:
            return IN_SEARCH
    if row.get("scheme") == "mixq" and row.get("mixq_freeze") != MIXQ_FREEZE:
        return OLD_MIXQ
    return ""


def start_suffix(row: dict[str, Any]) -> str:
    """``row``'s :func:`start_mark` as a suffix for a table cell: ``" ‡"``, or ``""``."""
    mark = start_mark(row)
    return f" {mark}" if mark else ""


def same_start(row: dict[str, Any]) -> bool:
    """Whether ``row`` was measured as the benchmarks run today: from its scheme row's
    backbone, with the prompt's default warm start (or it has no prompt)."""
    return start_mark(row) == ""


def start_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The notes of the marks :func:`start_mark` gives any of ``rows``."""
    marks = {start_mark(r) for r in rows}
    notes = {
        OLD_START: OLD_START_NOTE,
        NO_WARMUP: NO_WARMUP_NOTE,
        IN_SEARCH: IN_SEARCH_NOTE,
        OLD_MIXQ: OLD_MIXQ_NOTE,
    }
    return [note for mark, note in notes.items() if mark in marks]


def run_figures(result: Any) -> dict[str, Any]:
    """A training run's figures (a :class:`lorap_dist.fit.TrainResult`), accuracies in %:
    test, valid, best epoch, average bits, wall time; with prompt tuning also the same
    run's scheme alone when tuning began (``scheme_test``, ``scheme_valid``)."""
    out = {
        "test": 100 * result.test_acc,
        "valid": 100 * result.valid_acc,
        "best_epoch": result.best_epoch,
        "avg_bits": result.avg_bits,
        "wall_s": result.wall_s,
    }
    if result.before_tuning is not None:
        out["scheme_test"] = 100 * result.before_tuning["test"]
        out["scheme_valid"] = 100 * result.before_tuning["valid"]
    return out


def scheme_alone(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Prompt-tuned runs' scheme alone, the model each tuning started from
    (:func:`run_figures`' ``scheme_test``): ``scheme_acc_mean`` and ``scheme_acc_std``."""
    mean, std = mean_std([r["scheme_test"] for r in runs])
    return {"scheme_acc_mean": round(mean, 2), "scheme_acc_std": round(std, 2)}


def against_scheme_alone(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Prompt-tuned runs against the same runs' scheme alone: :func:`scheme_alone`,
    ``minus_alone`` (mean ± standard error of the per-seed test differences) and ``kept``
    (the seeds whose tuned prompt won on validation, so the run reports it)."""
    return scheme_alone(runs) | {
        "minus_alone": mean_sem([r["test"] - r["scheme_test"] for r in runs]),
        "kept": sum(r["valid"] > r["scheme_valid"] for r in runs),
    }


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def prepared_once(out: Path, **options: Any) -> Path:
    """The dataset directory ``out``, prepared with ``lorap_dist``'s ``PrepareOptions`` of
    ``options`` (in this process, no progress bars) unless it already holds a dataset."""
    from lorap_dist.graph.prepare import PrepareOptions, prepare

    if not (out / "meta.json").is_file():
        prepare(PrepareOptions(out=out, use_ray=False, progress=False, **options))
    return out


def write_result(name: str, payload: Any) -> Path:
    """Write ``benchmarks/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def mean_sem(diffs: Sequence[float]) -> str:
    """``diffs``' mean ± its standard error ("-" when empty; one difference stands alone)."""
    if not diffs:
        return "-"
    if len(diffs) == 1:
        return f"{diffs[0]:+.2f} (1 seed)"
    sem = statistics.stdev(diffs) / len(diffs) ** 0.5
    return f"{statistics.fmean(diffs):+.2f} ± {sem:.2f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(name: str, intro: str, header: Sequence[str], rows: Sequence[Sequence[Any]],
                 after: str = "") -> str:  # fmt: skip
    """Write ``benchmarks/results/<name>.md``, ``intro``, the table and ``after``, and print
    it; returns the text."""
    text = f"{intro}\n\n{markdown_table(header, rows)}\n{after}"
    (RESULTS / f"{name}.md").write_text(text)
    print(text)
    return text


def scheme_options(scheme: str, bits: int) -> dict[str, Any]:
    """The options that make ``scheme`` an INT``bits`` run in the accuracy benchmarks: the
    bit width for qat and degree_quant; A2Q learned bits from ``bits`` with that memory
    budget; MixQ choosing among {4, 8} at INT8 and {2, 4, 8} at INT4, penalty 1e-4."""
    if scheme in ("qat", "degree_quant"):
        return {"bits": bits}
    if scheme == "a2q":
        return {"init_bits": bits, "memory_budget": float(bits)}
    return {"candidate_bits": [4, 8] if bits == 8 else [2, 4, 8], "penalty": 1e-4}


def timing_parser(doc: str, repeats: int) -> argparse.ArgumentParser:
    """The argument parser of a timing benchmark, described by ``doc``'s first paragraph,
    with ``--repeats`` (each timing is the median of this many) and ``--threads`` (torch's
    intra-op threads; 1 by default, so other jobs on the machine disturb it less); add the
    script's own arguments, then call :func:`parse_timing`."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=repeats, help="median of this many")
    parser.add_argument("--threads", type=int, default=1, help="torch's intra-op threads")
    return parser


def parse_timing(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse the command line and set torch's threads to ``--threads``."""
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    return args


# ---------------------------------------------------------------------------------------
# LoRAP changed in one place, for ablations only (not config options): each replaces
# ``LoRAP.forward(h, quantizer, nodes)`` with the value-unit prompt computed otherwise.


def rms_scores(lorap: Any, h: Any, quantizer: Any, nodes: Any) -> Any:
    """Softmax weights from ``h / rms(h)`` per row: scale-free, so they are node-specific."""
    scaled = h / h.pow(2).mean(-1, keepdim=True).add(1e-12).sqrt()
    weights = torch.softmax(scaled @ lorap.w_phi, dim=-1)
    return quantizer(h + (weights @ lorap.p_a) @ lorap.p_b, nodes)


def uniform_weights(lorap: Any, h: Any, quantizer: Any, nodes: Any) -> Any:
    """Every node's softmax weights ``1 / k``: one prompt, the same for every node (a
    learned offset per channel before the rounding), so whatever it gains owes nothing to
    the prompt's dependence on the input."""
    weights = h.new_full((h.shape[0], lorap.k), 1.0 / lorap.k)
    return quantizer(h + (weights @ lorap.p_a) @ lorap.p_b, nodes)


PROMPT_VARIANTS = {"rms_scores": rms_scores, "uniform_weights": uniform_weights}
#: What each of :data:`PROMPT_VARIANTS` does, as the tables name it.
PROMPT_VARIANT_NAMES = {
    "uniform_weights": "one prompt for every node (softmax weights 1/k)",
    "rms_scores": "weights from the RMS-normalised aggregate",
}
