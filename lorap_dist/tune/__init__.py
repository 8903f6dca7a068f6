"""The Ray Tune driver: sweeps over any experiment field, with retries, resume and reports.

A sweep file is a base experiment plus a search space over config fields addressed by
dotted path::

    name: rank                          # experiment directory: <storage_path>/<name>/
    base: ../default.yaml               # a mapping, or an experiment YAML (relative to this file)
    space:                              # dotted path -> values
      prompt.r: [1, 2, 4, 8, 16]
    variants:                           # optional explicit override sets, crossed with space
      - {quant.scheme: qat, quant.options: {bits: 4}}
      - {quant.scheme: a2q, quant.options: {init_bits: 4, memory_budget: 4}}
    seeds: [0, 1, 2]                    # repeats: train.seed of every configuration
    mode: grid                          # or random: num_samples draws from space
    asha: {grace_period: 10}            # optional early stopping on best_valid_acc

The sweep maps onto Tune's own search space (:func:`param_space`): in ``grid`` mode each
``space`` entry is a ``tune.grid_search``; in ``random`` mode a list is a ``tune.choice`` and
``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{randint: [lo, hi]}`` (``hi``
included) are ``tune.uniform``, ``tune.loguniform`` and ``tune.randint``. ``variants`` and
``seeds`` are grid searches crossed with every draw, and a ``BasicVariantGenerator`` seeded
with ``sample_seed`` (:func:`search_algorithm`) draws ``num_samples`` points, the same ones
for the same file (:meth:`SweepConfig.points`).

Following Ray Train v2, each Tune trial runs :func:`run_trial`, a driver function that
builds the trial's :class:`~lorap_dist.config.ExperimentConfig` and either trains in its own
process (:func:`lorap_dist.train.train`, one Tune report per epoch) or, with a ``dist``
section, builds a ``TorchTrainer`` (:func:`lorap_dist.distributed.trainer.build_trainer`) whose
workers report each epoch to Tune through ``TuneReportCallback``. A trial reserves
``cpus_per_trial`` CPUs when it trains in-process; a distributed trial's driver reserves
nothing and its workers reserve ``num_workers x (cpus_per_worker [+ 1 GPU])`` through Ray
Train, so the driver caps concurrency at ``floor(available / per trial)`` (at least 1).

A failing trial is retried ``max_failures`` times, then recorded with its error while the
other trials go on. Tune keeps the sweep's state in the experiment directory; running the
same sweep again restores it (``Tuner.restore``): finished trials are kept, unfinished ones
run, errored ones run again only when asked (``restart_errored``).

Results (:func:`trial_table`, :func:`write_report`): one Parquet row per trial, a Markdown
table of mean and standard deviation over seeds per configuration, and PNG plots.

The modules, in the order data flows: :mod:`~lorap_dist.tune.space` (the sweep file and its
Tune search space), :mod:`~lorap_dist.tune.trial` (what runs inside one trial),
:mod:`~lorap_dist.tune.report` (the trial table, summary and plots) and
:mod:`~lorap_dist.tune.driver` (:func:`run_sweep`).
"""

from lorap_dist.tune.driver import SWEEP_COPY, SweepOutcome, max_concurrent_trials, run_sweep
from lorap_dist.tune.report import (
    CONFIG_PREFIXES,
    METRIC_COLUMNS,
    REPEATS,
    RESULTS_FILE,
    markdown_summary,
    render_plots,
    report,
    result_trial_id,
    summarize,
    swept_columns,
    trial_table,
    write_report,
)
from lorap_dist.tune.space import (
    DISTRIBUTIONS,
    MODES,
    PATH_FIELDS,
    AshaSettings,
    SweepConfig,
    check_path,
    experiment_config,
    load_sweep,
    num_samples,
    param_space,
    point_key,
    resolve_paths,
    search_algorithm,
    set_path,
    trial_configs,
    trial_point,
)
from lorap_dist.tune.trial import TrialStartHook, run_trial, trial_resources

# One trial's pieces, for tests that run them without Tune.
from lorap_dist.tune.trial import _EpochReporter as _EpochReporter
from lorap_dist.tune.trial import _train_in_process as _train_in_process

__all__ = [
    "CONFIG_PREFIXES",
    "DISTRIBUTIONS",
    "METRIC_COLUMNS",
    "MODES",
    "PATH_FIELDS",
    "REPEATS",
    "RESULTS_FILE",
    "SWEEP_COPY",
    "AshaSettings",
    "SweepConfig",
    "SweepOutcome",
    "TrialStartHook",
    "check_path",
    "experiment_config",
    "load_sweep",
    "markdown_summary",
    "max_concurrent_trials",
    "num_samples",
    "param_space",
    "point_key",
    "render_plots",
    "report",
    "resolve_paths",
    "result_trial_id",
    "run_sweep",
    "run_trial",
    "search_algorithm",
    "set_path",
    "summarize",
    "swept_columns",
    "trial_configs",
    "trial_point",
    "trial_resources",
    "trial_table",
    "write_report",
]
