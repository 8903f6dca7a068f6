"""The ``lorap`` command: ``train``, ``prepare``, ``sweep`` and ``report``.

Every sub-command has ``--help``. Configs are YAML files (see ``jobs/configs/``); any field
can be overridden on the command line with ``--set section.field=value``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from lorap_dist.config import (
    ConfigError,
    ExperimentConfig,
    SyntheticConfig,
    leading_first,
    set_field,
)
from lorap_dist.graph.partition import PARTITIONERS
from lorap_dist.graph.prepare import RAY_MIN_NODES, PrepareOptions, prepare
from lorap_dist.graph.sources import SOURCE_FORMS
from lorap_dist.graph.storage import FEATURE_ENCODINGS, open_dataset
from lorap_dist.graph.transforms import TRANSFORMS


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``section.field=value`` pairs in a config dict (values parsed as YAML).

    :func:`~lorap_dist.config.set_field`'s rules apply, in any order of the pairs:
    switching ``quant.scheme`` keeps the common ``bits`` option and drops the other
    options of the scheme it replaces; switching ``data.source`` forgets ``data.name`` and
    ``data.path``.
    """
    parsed: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not of the form section.field=value.")
        parsed[key] = yaml.safe_load(raw)
    for key in leading_first(list(parsed)):
        try:
            set_field(data, key, parsed[key])
        except ConfigError as exc:
            raise ConfigError(f"--set {key}: {exc}") from None
    return data


def load_config(path: str | None, overrides: list[str]) -> ExperimentConfig:
    """The config at ``path`` (or the built-in default) with ``overrides`` applied."""
    base = ExperimentConfig.from_yaml(path) if path is not None else ExperimentConfig()
    return ExperimentConfig.from_dict(apply_overrides(base.to_dict(), overrides))


def _write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str))


def _train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    if config.dist is not None:
        from lorap_dist.distributed.trainer import run_distributed

        if args.seeds is not None or args.folds is not None:
            raise ConfigError(
                "--seeds and --folds repeat single-process training; for a distributed run, "
                "repeat it with a sweep (`lorap sweep`, seeds: [0, 1, 2], or a grid over "
                "data.fold)."
            )
        summary = run_distributed(config, config.dist, resume=args.resume)
        print(json.dumps(summary, indent=2, default=str))
        _write_json(args.out, summary)
        return 0
    if args.resume:
        raise ConfigError(
            "--resume needs a distributed run (a `dist` section in the config); single-process "
            "runs keep no checkpoints."
        )
    from lorap_dist.train import load_graph, train

    if args.seeds is None and args.folds is None:
        result, _ = train(config, progress=not args.no_progress)
        print(json.dumps({k: v for k, v in result.to_dict().items() if k != "history"}, indent=2))
        _write_json(args.out, result.to_dict())
        return 0
    folds = _chosen_folds(config, args.folds)
    seeds = args.seeds if args.seeds is not None else [config.train.seed]
    graph = load_graph(config)
    runs = []
    for fold in folds:
        for seed in seeds:
            config.train.seed = seed
            if fold is not None:
                config.data.fold = fold
            result, _ = train(config, graph, progress=not args.no_progress)
            runs.append({"seed": seed, **({} if fold is None else {"fold": fold})})
            runs[-1] |= result.to_dict()
    summary = seed_summary(runs)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    _write_json(args.out, summary)
    return 0


def _chosen_folds(config: ExperimentConfig, folds: str | None) -> list[int | None]:
    """``--folds`` as fold numbers (``[None]`` without it)."""
    if folds is None:
        return [None]
    if not config.data.graph_level:
        raise ConfigError(
            f"--folds cross-validates a dataset of graphs (data.source: tu); "
            f"data.source={config.data.source!r} has its own split."
        )
    if folds == "all":
        return list(range(config.data.folds))
    try:
        chosen = _seed_list(folds, what="fold")
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"--folds: {exc}") from None
    bad = [f for f in chosen if not 0 <= f < config.data.folds]
    if bad:
        raise ConfigError(
            f"--folds {folds}: fold(s) {bad} are outside 0..{config.data.folds - 1} "
            f"(data.folds={config.data.folds})."
        )
    return chosen


def seed_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample standard deviation of each accuracy over the runs (seeds, or folds
    and seeds)."""
    import statistics

    summary: dict[str, Any] = {"seeds": [run["seed"] for run in runs]}
    if any("fold" in run for run in runs):
        summary["folds"] = [run.get("fold") for run in runs]
    for key in ("train_acc", "valid_acc", "test_acc"):
        values = [run[key] for run in runs]
        summary[f"{key}_mean"] = statistics.fmean(values)
        summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[key] = values
    summary["metric"] = runs[0].get("metric", "accuracy")
    return summary | {"runs": runs}


def _seed_list(text: str, what: str = "seed") -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integer {what}s, e.g. 0,1,2"
        ) from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"give at least one {what}, e.g. --{what}s 0,1,2")
    return seeds


def _sweep(args: argparse.Namespace) -> int:
    from lorap_dist.tune import load_sweep, run_sweep

    overrides = []
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not of the form key=value.")
        overrides.append((key, yaml.safe_load(raw)))
    outcome = run_sweep(
        load_sweep(args.config, overrides),
        resume=True if args.resume else None,
        restart_errored=args.restart_errored,
        out_dir=args.out,
    )
    counts = outcome.trials["status"].value_counts().to_dict()
    print(f"sweep {outcome.experiment_dir}: {counts}")
    for name, path in outcome.files.items():
        print(f"  {name}: {path}")
    for note in outcome.notes:
        print(f"  note: {note}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from lorap_dist.tune import report

    files, notes = report(args.results, args.out, args.prefix)
    for name, path in files.items():
        print(f"{name}: {path}")
    for note in notes:
        print(f"note: {note}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    out = run_prepare(args)
    print(f"prepared dataset: {out}")
    return 0


# --- lorap prepare ----------------------------------------------------------------------

#: The :class:`~lorap_dist.config.SyntheticConfig` fields ``lorap prepare`` takes as flags
#: (``--num-nodes`` ...); the generator's seed is ``--seed``.
SYNTHETIC_FLAGS = ("num_nodes", "avg_degree", "num_features", "num_classes", "homophily")


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``lorap prepare`` flags to ``parser``."""
    forms = " | ".join(SOURCE_FORMS)
    parser.add_argument("--source", default="synthetic", help=f"{forms} (default: synthetic)")
    parser.add_argument("--out", required=True, help="dataset directory to create")
    parser.add_argument("--parts", type=int, default=1, help="number of parts (default: 1)")
    parser.add_argument("--partitioner", default="metis", choices=sorted(PARTITIONERS))
    parser.add_argument(
        "--features",
        default="fp32",
        choices=list(FEATURE_ENCODINGS),
        help="feature encoding: fp32, or int8 with a per-row fp32 scale",
    )
    parser.add_argument(
        "--root",
        default="data",
        help="where OGB datasets live/download, and where PyG datasets keep their raw files "
        "(ROOT/<Name>/raw)",
    )
    parser.add_argument(
        "--transform",
        choices=list(TRANSFORMS),
        default=None,
        help="feature transform baked into the dataset (default: normalize_features for "
        "Planetoid, none otherwise)",
    )
    parser.add_argument("--split-type", default=None, help="split/<type> folder to use")
    parser.add_argument(
        "--no-symmetrize",
        dest="symmetrize",
        action="store_false",
        help="keep edge directions as given (default: add reverse edges)",
    )
    parser.add_argument(
        "--keep-self-loops",
        dest="drop_self_loops",
        action="store_false",
        help="keep edges (v, v) (default: drop them)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--workers", type=int, default=2, help="CPUs of a local Ray instance")
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (default: RAY_ADDRESS if set, else a private local instance)",
    )
    parser.add_argument(
        "--ray",
        dest="use_ray",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"write the parts in Ray tasks (default: only for several parts of a graph of "
        f"at least {RAY_MIN_NODES:,} nodes)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (random partitioner, synthetic)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    synthetic = parser.add_argument_group("synthetic source")
    defaults = SyntheticConfig()
    for name in SYNTHETIC_FLAGS:
        default = getattr(defaults, name)
        synthetic.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)


def options_from_args(args: argparse.Namespace) -> PrepareOptions:
    """:class:`PrepareOptions` from parsed ``lorap prepare`` arguments: each field from the
    flag of its name, ``synthetic`` from :data:`SYNTHETIC_FLAGS` and ``--seed``."""
    options = {
        f.name: getattr(args, f.name) for f in fields(PrepareOptions) if f.name != "synthetic"
    }
    synthetic = SyntheticConfig(
        seed=args.seed, **{name: getattr(args, name) for name in SYNTHETIC_FLAGS}
    )
    return PrepareOptions(**options, synthetic=synthetic)


def run_prepare(args: argparse.Namespace) -> Path:
    """``lorap prepare``: run the pipeline from parsed arguments and print a summary."""
    out = prepare(options_from_args(args))
    print(open_dataset(out))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lorap",
        description="Train quantized GNNs with Low-Rank Aggregation Prompting (LoRAP).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser(
        "train",
        help="train a model from a config file (built-in default: a generated graph)",
        description="Train a (quantized, prompted) GNN. Without --config the built-in default "
        "runs (jobs/configs/default.yaml): a 2-layer GCN at INT4 plain QAT with LoRAP on a "
        "generated power-law graph with planted classes.",
        epilog="The result (printed, and written by --out): train_acc, valid_acc and test_acc "
        "of the epoch with the best validation accuracy (best_epoch, 0-based), whose weights "
        "the run ends with; epochs_run; before_tuning, with prompt tuning (the default for a "
        "prompted model: train.prompt_tuning_epochs), the scheme alone's best epoch, valid "
        "and test accuracy when the prompts began training on its frozen backbone; params "
        "(backbone, prompt, quantizer); avg_bits, the "
        "mean stored bit width over the quantization points (MixQ: of the frozen model; null "
        "for FP32); history, one row per epoch (--out only). With --seeds (and/or --folds): "
        "each accuracy's mean and std over the runs, the per-run values, and every run. "
        "Graph-level runs (data.source: tu) report accuracy over graphs, or the mean "
        "absolute error for regression (metric: mae).",
    )
    train.add_argument("--config", help="YAML experiment config (see jobs/configs/)")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set quant.scheme=qat --set quant.options.bits=4",
    )
    train.add_argument("--out", help="write the full result (with per-epoch history) as JSON here")
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    train.add_argument(
        "--seeds",
        type=_seed_list,
        metavar="S,S,...",
        help="train once per seed (e.g. 0,1,2) and report the mean and std of each accuracy",
    )
    train.add_argument(
        "--folds",
        metavar="all|F,F,...",
        help="cross-validate a dataset of graphs: train once per fold (all of data.folds, "
        "or the listed ones), each testing on its fold, and report the mean and std",
    )
    train.add_argument(
        "--resume",
        help="resume a distributed run from a checkpoint directory, or from the newest good "
        "checkpoint of a run directory",
    )
    train.set_defaults(func=_train)

    sweep = sub.add_parser(
        "sweep",
        help="run a Ray Tune sweep over config fields (see jobs/configs/sweeps/)",
        description="Run every configuration of a sweep file as a Ray Tune trial and write "
        "a Parquet file of trials, a summary table and plots. Running a sweep whose "
        "experiment directory exists resumes it: finished trials are kept.",
    )
    sweep.add_argument("--config", required=True, help="YAML sweep file")
    sweep.add_argument(
        "--resume", action="store_true", help="require an interrupted sweep to resume"
    )
    sweep.add_argument(
        "--restart-errored",
        action="store_true",
        help="when resuming, also run the trials that failed, from scratch",
    )
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a sweep field, e.g. --set seeds=[0,1] --set base.train.epochs=30 "
        "--set space.prompt.kind=[none,lorap]",
    )
    sweep.add_argument("--out", help="results directory (default <experiment dir>/results)")
    sweep.set_defaults(func=_sweep)

    report = sub.add_parser(
        "report",
        help="render the table and plots of a sweep's results Parquet file",
        description="Write summary.md and the PNG plots for an existing trials.parquet.",
    )
    report.add_argument("results", help="a sweep's trials.parquet (or its directory)")
    report.add_argument("--out", help="output directory (default: beside the Parquet file)")
    report.add_argument("--prefix", default="", help="prefix for the file names written")
    report.set_defaults(func=_report)

    prepare = sub.add_parser(
        "prepare",
        help="partition a graph into an Arrow dataset directory",
        description="Load a source graph (OGB, a local OGB-layout directory, or the "
        "generator), partition it and write a memory-mappable Arrow dataset directory.",
    )
    add_prepare_arguments(prepare)
    prepare.set_defaults(func=_prepare)
    return parser


def main(argv: list[str] | None = None) -> None:
    from lorap_dist.distributed.checkpoint import CheckpointError
    from lorap_dist.distributed.trainer import DistributedRunError
    from lorap_dist.graph.errors import DatasetError

    # The errors a command reports in one line: how the line names each, and the exit code.
    reported = {
        ConfigError: ("config error: ", 2),
        DatasetError: ("dataset error: ", 2),
        CheckpointError: ("checkpoint error: ", 2),
        DistributedRunError: ("", 1),
    }
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except tuple(reported) as exc:
        label, code = next(reported[kind] for kind in reported if isinstance(exc, kind))
        print(f"lorap {args.command}: {label}{exc}", file=sys.stderr)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
