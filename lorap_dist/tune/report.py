"""A sweep's results: one row per trial, a summary over seeds, a Markdown table and plots.

:func:`trial_table` turns Tune's ``ResultGrid`` into a table (one Parquet row per trial),
:func:`summarize` averages it over seeds (and folds) per configuration, :func:`write_report`
writes the Parquet file, a Markdown table of mean and standard deviation and PNG plots
(:func:`render_plots`), and :func:`report` renders them again from a Parquet file alone
(``lorap report``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from lorap_dist.config import ConfigError
from lorap_dist.tune.space import SweepConfig, experiment_config, point_key, trial_point

RESULTS_FILE = "trials.parquet"

METRIC_COLUMNS = (
    "epochs",
    "final_valid_acc",
    "final_test_acc",
    "best_valid_acc",
    "best_test_acc",
    "params_backbone",
    "params_prompt",
    "params_quantizer",
    "params_total",
    "avg_bits",
    "seeds_per_s",
    "wall_s",
    "prompt_trained",  # 1: the reported model's prompts trained, 0: before the warm start
)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and name != "quant.options":
            flat |= _flatten(value, f"{name}.")
        elif isinstance(value, dict) and name == "quant.options":
            flat |= {f"{name}.{k}": _cell(v) for k, v in value.items()}
        else:
            flat[name] = _cell(value)
    return flat


def _cell(value: Any) -> Any:
    """Lists and mappings as JSON text, so every Parquet column has one type."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _error_text(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


_DIR_SUFFIX = re.compile(r"_[0-9a-f]{4}$")


def result_trial_id(result: Any) -> str:
    """The trial id of a Tune ``Result``: the one Ray reports with every result, else (a
    trial that never reported) its directory's name without Ray's uniqueness suffix."""
    reported = (result.metrics or {}).get("trial_id")
    if reported:
        return str(reported)
    name = Path(result.path).name
    return _DIR_SUFFIX.sub("", name) if name.count("_") > 1 else name


def trial_table(grid: Any, sweep: SweepConfig) -> Any:
    """One row per trial of a Tune ``ResultGrid``: config, metrics, status and error.

    ``status`` is ``completed`` (ran its epochs or stopped on patience), ``stopped`` (by
    ASHA), ``failed`` (after its retries; ``error`` says why) or ``unfinished``.
    """
    import pandas as pd

    rows = []
    for result in grid:
        config = result.config or {}
        point, seed = trial_point(config), config.get("seed")
        metrics = dict(result.metrics or {})
        history = result.metrics_dataframe
        for column in ("params_backbone", "params_prompt", "params_quantizer", "params_total"):
            if metrics.get(column) is None and history is not None and column in history:
                known = history[column].dropna()
                metrics[column] = known.iloc[-1] if len(known) else None
        if result.error is not None:
            status, error = "failed", _error_text(result.error)
        elif metrics.get("trial_done"):
            status, error = "completed", None
        elif metrics:
            status, error = "stopped", None
        else:
            status, error = "unfinished", None
        experiment = experiment_config(sweep.base, point, seed)
        rows.append(
            {
                "sweep": sweep.name,
                "trial_id": result_trial_id(result),
                "point": point_key(point),
                "seed": seed,
                "status": status,
                "error": error,
                **_flatten(experiment.to_dict()),
                "epochs": metrics.get("epoch"),
                "final_valid_acc": metrics.get("valid_acc"),
                "final_test_acc": metrics.get("test_acc"),
                **{c: metrics.get(c) for c in METRIC_COLUMNS[3:]},
            }
        )
    frame = pd.DataFrame(rows)
    for column in METRIC_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.sort_values(["point", "seed"], kind="stable").reset_index(drop=True)


CONFIG_PREFIXES = ("data.", "model.", "prompt.", "quant.", "train.", "dist")


REPEATS = ("train.seed", "data.fold")  # what the summary averages over


def swept_columns(trials: Any) -> list[str]:
    """Config columns whose value differs between trials, except :data:`REPEATS`: seeds,
    and the folds of a cross-validated dataset of graphs (``data.fold`` in ``space``), which
    the summary averages over."""
    return [
        c
        for c in trials.columns
        if c.startswith(CONFIG_PREFIXES)
        and c not in REPEATS
        and trials[c].map(_label).nunique() > 1
    ]


def summarize(trials: Any) -> Any:
    """Mean and standard deviation over seeds (and folds) per configuration (completed
    trials)."""
    import pandas as pd

    axes = swept_columns(trials) or ["point"]
    keyed = trials.assign(**{c: trials[c].map(_label) for c in axes})
    groups = []
    for key, group in keyed.groupby(axes, sort=False, dropna=False):
        done = group[group["status"] == "completed"]
        key = key if isinstance(key, tuple) else (key,)
        groups.append(
            {
                **dict(zip(axes, key, strict=True)),
                "n_seeds": len(done),
                "n_failed": int((group["status"] == "failed").sum()),
                "acc_mean": done["best_test_acc"].mean(),
                "acc_std": done["best_test_acc"].std(ddof=1) if len(done) > 1 else 0.0,
                "valid_mean": done["best_valid_acc"].mean(),
                "params_prompt": done["params_prompt"].mean(),
                "params_backbone": done["params_backbone"].mean(),
                "avg_bits": done["avg_bits"].mean(),
                "prompt_trained": _trained_count(done),
                "seeds_per_s": done["seeds_per_s"].mean(),
                "wall_s": done["wall_s"].mean(),
            }
        )
    return pd.DataFrame(groups)


def _label(value: Any) -> str:
    """A config cell as table text; a missing value (``None``, NaN) reads ``null``."""
    return (
        "null"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (str(value))
    )


def markdown_summary(summary: Any) -> str:
    """The summary as a Markdown table (accuracy as mean ± std in percent)."""
    axes = [c for c in summary.columns if c.startswith(CONFIG_PREFIXES) or c == "point"]
    header = [
        *axes, "test acc (%)", "n", "failed", "prompt params", "trained prompt", "avg bits",
        "seeds/s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary.to_dict("records"):
        acc = f"{100 * row['acc_mean']:.2f} ± {100 * row['acc_std']:.2f}" if row["n_seeds"] else "-"
        cells = [
            *(str(row[a]) for a in axes),
            acc,
            str(row["n_seeds"]),
            str(row["n_failed"]),
            _fmt(row["params_prompt"], "{:.0f}"),
            _trained(row["prompt_trained"], row["n_seeds"]),
            _fmt(row["avg_bits"], "{:.2f}"),
            _fmt(row["seeds_per_s"], "{:.0f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _trained_count(done: Any) -> int | None:
    """How many of the completed trials ``done`` report a model whose prompts trained
    (``None`` when none has prompts, or the table predates the column)."""
    if "prompt_trained" not in done or not done["prompt_trained"].notna().any():
        return None
    return int(done["prompt_trained"].sum())


def _trained(count: Any, n_seeds: int) -> str:
    """``k/n``: of ``n`` completed seeds, ``k`` report a model whose prompts trained."""
    missing = count is None or (isinstance(count, float) and math.isnan(count))
    return "-" if missing else f"{int(count)}/{n_seeds}"


def _fmt(value: Any, pattern: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (pattern.format(value))
    )


def write_report(
    trials: Any, out_dir: str | Path, prefix: str = "", write_trials: bool = True
) -> tuple[dict[str, Path], list[str]]:
    """Write ``trials.parquet`` (unless ``write_trials`` is false), ``summary.md`` and the
    plots into ``out_dir``, each file name starting with ``prefix``.

    Returns:
        The files written by name, and a note for each plot the sweep has no axis for.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if write_trials:
        files["trials"] = out / f"{prefix}{RESULTS_FILE}"
        trials.to_parquet(files["trials"], index=False)
    plots, notes = render_plots(trials, out, prefix)
    files |= plots
    summary = summarize(trials)
    failed = trials[trials["status"] == "failed"]
    text = [
        f"# Sweep {', '.join(sorted(set(trials['sweep'])))}",
        "",
        f"{len(trials)} trials: "
        + ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
        + ". Accuracy: test accuracy at the best validation epoch, mean ± std over seeds.",
        "",
        markdown_summary(summary),
        "",
    ]
    if len(failed):
        text += ["## Failed trials", ""]
        text += [f"- {r.point} seed {r.seed}: {r.error}" for r in failed.itertuples()]
        text.append("")
    text += ["## Plots", ""]
    text += [f"- {name}: {path.name}" for name, path in plots.items()]
    text += [f"- {note}" for note in notes]
    files["summary"] = out / f"{prefix}summary.md"
    files["summary"].write_text("\n".join(text) + "\n")
    return files, notes


def _lorap(kind: str) -> bool:
    return kind in ("lorap", "gpf_lorap")


def curves(frame: Any, x: str, y: str, series: list[str]) -> list[tuple[dict[str, str], Any]]:
    """One curve per combination of the ``series`` columns' values: ``(values, stats)``,
    ``values`` the combination (column -> text) and ``stats`` the mean and standard
    deviation of ``y`` indexed by ``x``, sorted."""
    others = [c for c in series if c in frame.columns]
    keyed = frame.assign(**{c: frame[c].map(_label) for c in others})
    groups = keyed.groupby(others, sort=True) if others else [((), keyed)]
    out = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        stats = group.groupby(x)[y].agg(["mean", "std"]).sort_index()
        out.append((dict(zip(others, key, strict=True)), stats))
    return out


def bits_series(done: Any, swept: set[str]) -> list[str]:
    """The curves of accuracy against average bits: one per scheme and prompt kind, and one
    per value of every other swept setting that varies among trials of the same bit width
    (a prompt's unit, rounding or rank, a learning rate), so that no curve averages over
    them. A setting that only moves the bit width (``quant.options.bits``, A2Q's memory
    budget) is the x axis, not a curve."""
    series = ["quant.scheme", "prompt.kind"]
    for column in sorted(swept - set(series)):
        per_width = done.assign(_v=done[column].map(_label)).groupby("bits")["_v"].nunique()
        if (per_width > 1).any():
            series.append(column)
    return series


def render_plots(trials: Any, out_dir: Path, prefix: str = "") -> tuple[dict[str, Path], list[str]]:
    """Accuracy vs rank, accuracy vs bits per scheme, throughput vs workers (PNG).

    A plot whose axis the sweep does not vary is skipped with a note.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = trials[trials["status"] == "completed"]
    swept = set(swept_columns(done)) if len(done) else set()
    files: dict[str, Path] = {}
    notes: list[str] = []

    def plot(frame: Any, name: str, x: str, y: str, series: list[str], labels: tuple) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = curves(frame, x, y, series)
        for values, stats in drawn:
            label = ", ".join(f"{c.split('.')[-1]}={v}" for c, v in values.items())
            dashed = "prompt.kind" in values and not _lorap(values["prompt.kind"])
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"].fillna(0),
                marker="o",
                linestyle="--" if dashed else "-",
                capsize=3,
                label=label or None,
            )
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
        ax.grid(alpha=0.3)
        if any(values for values, _ in drawn):
            ax.legend(fontsize=7)
        fig.tight_layout()
        files[name] = out_dir / f"{prefix}{name}.png"
        fig.savefig(files[name], dpi=120)
        plt.close(fig)

    rest = sorted(swept - {"prompt.r"})
    if "prompt.r" in swept:
        plot(done, "accuracy_vs_rank", "prompt.r", "best_test_acc", rest, ("rank r", "test acc"))
    else:
        notes.append("accuracy_vs_rank skipped: the sweep does not vary prompt.r.")
    if len(done) and done["avg_bits"].round(2).nunique() > 1:
        bits = done.assign(bits=done["avg_bits"].round(2))
        bits = bits[bits["quant.scheme"] != "none"]
        series = bits_series(bits, swept)
        plot(bits, "accuracy_vs_bits", "bits", "best_test_acc", series, ("avg bits", "test acc"))
    else:
        notes.append("accuracy_vs_bits skipped: every completed trial has the same bit width.")
    if "dist.num_workers" in swept:
        plot(
            done,
            "throughput_vs_workers",
            "dist.num_workers",
            "seeds_per_s",
            sorted(swept - {"dist.num_workers"}),
            ("workers", "training seeds / s"),
        )
    else:
        notes.append("throughput_vs_workers skipped: the sweep does not vary dist.num_workers.")
    return files, notes


def report(
    results: str | Path, out_dir: str | Path | None = None, prefix: str = ""
) -> tuple[dict[str, Path], list[str]]:
    """Render the table and plots of an existing results Parquet file (``lorap report``).

    Raises:
        ConfigError: ``results`` is not a readable Parquet file of sweep trials.
    """
    import pandas as pd

    path = Path(results)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise ConfigError(
            f"results file {path} does not exist; give the {RESULTS_FILE} a sweep wrote "
            "(in <experiment dir>/results/)."
        )
    try:
        trials = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise ConfigError(f"results file {path} is not a readable Parquet file: {exc}") from None
    missing = {"status", "point", "best_test_acc"} - set(trials.columns)
    if missing:
        raise ConfigError(
            f"results file {path} lacks the columns {sorted(missing)}; is it a sweep's "
            f"{RESULTS_FILE}?"
        )
    out = Path(out_dir) if out_dir is not None else path.parent
    return write_report(trials, out, prefix, write_trials=False)
