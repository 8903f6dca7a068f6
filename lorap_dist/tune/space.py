"""The sweep file and its search space, in Ray Tune's own terms.

:class:`SweepConfig` validates a sweep file (:func:`load_sweep`); :func:`param_space` turns
its ``space``, ``variants`` and ``seeds`` into a Tune ``param_space`` of Tune's own search
space objects, and :func:`search_algorithm` is the seeded ``BasicVariantGenerator`` that
draws from it. Each ``space`` entry maps one to one onto a Tune domain:

- ``[v1, v2, ...]``: ``tune.grid_search([v1, v2, ...])`` in ``grid`` mode,
  ``tune.choice([v1, v2, ...])`` in ``random`` mode;
- ``{uniform: [lo, hi]}``: ``tune.uniform(lo, hi)``;
- ``{loguniform: [lo, hi]}``: ``tune.loguniform(lo, hi)``;
- ``{randint: [lo, hi]}``: ``tune.randint(lo, hi + 1)`` (the file includes ``hi``, Tune
  excludes its upper bound).

``variants`` and ``seeds`` are grid searches crossed with every draw: a trial's Tune config
is ``{"point": {path: value}, "variant": {path: value}, "seed": s}``
(:func:`trial_point` merges the first two). The search algorithm samples ``space`` once per
``num_samples`` and keeps the draw over the variants and seeds (``constant_grid_search``),
from a generator seeded with ``sample_seed``: the same file draws the same points, and
:meth:`SweepConfig.points` lists them before anything runs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.tune
from ray.tune.search import BasicVariantGenerator
from ray.tune.search.variant_generator import generate_variants

from lorap_dist.config import (
    ConfigError,
    DistConfig,
    ExperimentConfig,
    QuantSettings,
    check,
    check_choice,
    from_dict,
    is_int,
    leading_first,
    load_yaml_mapping,
    set_field,
)

MODES = ("grid", "random")
DISTRIBUTIONS = ("uniform", "loguniform", "randint")
# Config fields that hold paths: made absolute in the driver, since Tune runs every trial in
# its own working directory.
PATH_FIELDS = ("data.path", "data.root", "dist.storage_path")


# ---------------------------------------------------------------------------------------
# The sweep file


@dataclass
class AshaSettings:
    """ASHA early stopping on ``best_valid_acc`` over epochs (``ASHAScheduler``).

    Args:
        grace_period: epochs every trial runs before it can be stopped.
        reduction_factor: the fraction ``1 / reduction_factor`` of trials goes on at each rung.
        brackets: ASHA brackets.
    """

    grace_period: int = 5
    reduction_factor: float = 2.0
    brackets: int = 1

    def __post_init__(self) -> None:
        check(self.grace_period >= 1, f"asha.grace_period={self.grace_period} must be >= 1.")
        check(self.reduction_factor > 1, "asha.reduction_factor must be > 1 (e.g. 2 or 3).")
        check(self.brackets >= 1, f"asha.brackets={self.brackets} must be >= 1.")


@dataclass
class SweepConfig:
    """A sweep: a base experiment, a search space and how to run it.

    Args:
        name: the experiment directory's name under ``storage_path``.
        base: the base experiment as a plain dict (``ExperimentConfig`` schema).
        space: dotted config path -> list of values (``grid``: every combination;
            ``random``: a choice per sample) or, in ``random`` mode, a distribution
            ``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}`` or ``{randint: [lo, hi]}``
            (``hi`` included).
        variants: explicit sets of ``path: value`` overrides, each crossed with the space
            (for fields that go together, such as a scheme and its options).
        seeds: ``train.seed`` values; every configuration runs once per seed.
        mode: ``grid`` or ``random``.
        num_samples: configurations drawn in ``random`` mode.
        sample_seed: seeds the draws of ``random`` mode (the same file draws the same points).
        asha: early stopping (``None``: every trial runs its epochs).
        max_failures: retries of a failing trial before it is recorded as failed.
        max_concurrent_trials: an upper bound on trials at once (``None``: what the
            cluster's free resources allow).
        cpus_per_trial: CPUs a trial that trains in-process reserves.
        storage_path: where Tune keeps the experiment directory (made absolute).
    """

    name: str
    base: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)
    variants: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    mode: str = "grid"
    num_samples: int = 1
    sample_seed: int = 0
    asha: AshaSettings | None = None
    max_failures: int = 1
    max_concurrent_trials: int | None = None
    cpus_per_trial: float = 1.0
    storage_path: str = "sweeps"

    def __post_init__(self) -> None:
        if isinstance(self.asha, dict):
            self.asha = from_dict(AshaSettings, self.asha, "sweep asha")
        check(
            bool(self.name) and "/" not in self.name,
            f"sweep name={self.name!r} must be a non-empty directory name without '/'.",
        )
        check_choice("sweep mode", self.mode, MODES)
        check(isinstance(self.space, dict), "sweep space must map dotted paths to values.")
        check(
            isinstance(self.variants, list) and all(isinstance(v, dict) for v in self.variants),
            "sweep variants must be a list of mappings of dotted path: value.",
        )
        check(
            isinstance(self.seeds, list)
            and bool(self.seeds)
            and all(is_int(s) for s in self.seeds),
            f"sweep seeds={self.seeds!r} must be a non-empty list of integers.",
        )
        check(len(set(self.seeds)) == len(self.seeds), f"sweep seeds={self.seeds} repeat.")
        check(self.num_samples >= 1, f"sweep num_samples={self.num_samples} must be >= 1.")
        check(self.max_failures >= 0, f"sweep max_failures={self.max_failures} must be >= 0.")
        check(
            self.max_concurrent_trials is None or self.max_concurrent_trials >= 1,
            "sweep max_concurrent_trials must be >= 1, or null (from the cluster's resources).",
        )
        check(self.cpus_per_trial > 0, "sweep cpus_per_trial must be > 0.")
        check(
            "train.seed" not in self.space and all("train.seed" not in v for v in self.variants),
            "sweep: set repeats with `seeds: [...]`, not with train.seed in space or variants.",
        )
        for path, values in self.space.items():
            check_path(path)
            _check_values(path, values, self.mode)
        for variant in self.variants:
            for path in variant:
                check_path(path)
        self.base = ExperimentConfig.from_dict(self.base).to_dict()
        for point in self.points():  # every configuration is valid before anything runs
            experiment_config(self.base, point, self.seeds[0])

    @classmethod
    def from_yaml(
        cls, path: str | Path, overrides: list[tuple[str, Any]] | None = None
    ) -> SweepConfig:
        """Read a sweep file; a ``base`` given as a path is read relative to the file.

        ``overrides`` are ``(dotted key, value)`` pairs set after reading: ``name``,
        ``seeds`` and the other top-level fields, ``base.<config path>`` and
        ``space.<config path>`` (e.g. ``("base.train.epochs", 30)``).
        """
        path = Path(path)
        data = load_yaml_mapping(path, "sweep file")
        base = data.get("base")
        if isinstance(base, str):
            base_path = (path.parent / base).resolve()
            data["base"] = ExperimentConfig.from_yaml(base_path).to_dict()
        for key, value in overrides or []:
            section, _, rest = key.partition(".")
            if section == "space" and rest:
                data.setdefault("space", {})[rest] = value
            else:
                set_path(data, key, value)
        try:
            return from_dict(cls, data, "sweep")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except TypeError as exc:  # a missing required field such as name
            raise ConfigError(f"{path}: sweep file is incomplete: {exc}.") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def points(self) -> list[dict[str, Any]]:
        """Every configuration of the sweep as ``{dotted path: value}`` (seeds excluded), as
        Tune's search algorithm draws them (:func:`trial_configs`)."""
        first_seed = self.seeds[0]
        return [trial_point(c) for c in trial_configs(self) if c["seed"] == first_seed]

    @property
    def experiment_dir(self) -> Path:
        return Path(self.storage_path).expanduser().resolve() / self.name


def load_sweep(path: str | Path, overrides: list[tuple[str, Any]] | None = None) -> SweepConfig:
    """The sweep file at ``path`` with ``overrides`` (see :meth:`SweepConfig.from_yaml`),
    validated, with relative paths made absolute."""
    sweep = SweepConfig.from_yaml(path, overrides)
    sweep.base = resolve_paths(sweep.base, nested=True)
    sweep.storage_path = str(Path(sweep.storage_path).expanduser().resolve())
    return sweep


def _check_values(path: str, values: Any, mode: str) -> None:
    if isinstance(values, list):
        check(bool(values), f"sweep space {path}: the list of values is empty.")
        return
    check(
        mode == "random" and isinstance(values, dict) and len(values) == 1,
        f"sweep space {path}={values!r}: give a list of values"
        + (
            f", or one distribution {{name: [lo, hi]}} with name in {list(DISTRIBUTIONS)}."
            if mode == "random"
            else " (distributions need mode: random)."
        ),
    )
    ((name, bounds),) = values.items()
    check_choice(f"sweep space {path} distribution", name, DISTRIBUTIONS)
    check(
        isinstance(bounds, list) and len(bounds) == 2 and bounds[0] < bounds[1],
        f"sweep space {path}: {name} needs [lo, hi] with lo < hi, got {bounds!r}.",
    )
    check(name != "loguniform" or bounds[0] > 0, f"sweep space {path}: loguniform needs lo > 0.")
    check(
        name != "randint" or all(is_int(b) for b in bounds),
        f"sweep space {path}: randint needs integer bounds, got {bounds!r}.",
    )


# ---------------------------------------------------------------------------------------
# The sweep as a Tune search space


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """The sweep as a Tune ``param_space``: ``point`` maps each ``space`` path to its Tune
    domain (the table in this module's docstring), ``variant`` (when the sweep has variants)
    and ``seed`` are grid searches. Path fields (:data:`PATH_FIELDS`) are made absolute."""
    space: dict[str, Any] = {
        "point": {path: _domain(path, values, sweep.mode) for path, values in sweep.space.items()}
    }
    if sweep.variants:
        space["variant"] = ray.tune.grid_search([resolve_paths(v) for v in sweep.variants])
    space["seed"] = ray.tune.grid_search(list(sweep.seeds))
    return space


def _domain(path: str, values: Any, mode: str) -> Any:
    """One ``space`` entry as a Tune search space object."""
    if isinstance(values, list):
        values = [_absolute(path, v) for v in values]
        return ray.tune.grid_search(values) if mode == "grid" else ray.tune.choice(values)
    ((name, (lo, hi)),) = values.items()
    if name == "uniform":
        return ray.tune.uniform(lo, hi)
    if name == "loguniform":
        return ray.tune.loguniform(lo, hi)
    return ray.tune.randint(lo, hi + 1)  # Tune's upper bound is exclusive, the file's is not


def num_samples(sweep: SweepConfig) -> int:
    """Tune's ``num_samples``: draws of the random space (a grid is enumerated once)."""
    return sweep.num_samples if sweep.mode == "random" else 1


def search_algorithm(sweep: SweepConfig, max_concurrent: int = 0) -> BasicVariantGenerator:
    """Tune's variant generator for ``sweep``: seeded with ``sample_seed``, one draw of the
    random space per sample kept over the grid of variants and seeds.

    Args:
        sweep: the sweep.
        max_concurrent: trials at once (``0``: no bound); Tune ignores
            ``TuneConfig.max_concurrent_trials`` when it is given a search algorithm.
    """
    return BasicVariantGenerator(
        max_concurrent=max_concurrent,
        constant_grid_search=True,
        random_state=sweep.sample_seed,
    )


def trial_configs(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Every trial's Tune config, in Tune's order, drawn as :func:`search_algorithm` draws
    them: ``BasicVariantGenerator`` turns its integer seed into ``numpy.random.default_rng``
    and resolves each sample with :func:`~ray.tune.search.variant_generator.generate_variants`
    (a test checks the two agree)."""
    spec = {"config": param_space(sweep)}
    random_state = np.random.default_rng(sweep.sample_seed)
    return [
        config["config"]
        for _ in range(num_samples(sweep))
        for _, config in generate_variants(
            spec, constant_grid_search=True, random_state=random_state
        )
    ]


def trial_point(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's configuration ``{dotted path: value}``: its draw with its variant on top."""
    return {**config.get("point", {}), **config.get("variant", {})}


# ---------------------------------------------------------------------------------------
# Dotted paths into the experiment config


def check_path(path: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` names a field of the experiment config.

    Fields under ``quant.options`` depend on the scheme and are checked when the
    configurations are built.
    """
    parts = path.split(".")
    cls: type = ExperimentConfig
    where = "config"
    for index, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        known = sorted(f.name for f in dataclasses.fields(cls))
        check(
            part in known,
            f"sweep path {path!r}: {where} has no field {part!r}; known fields are {known}.",
        )
        # ExperimentConfig.dist is typed Any (the dist layer sits above config.py)
        sub = (
            DistConfig if (cls, part) == (ExperimentConfig, "dist") else _dataclass_in(hints[part])
        )
        rest = parts[index + 1 :]
        if not rest:
            return
        if sub is None:
            check(
                (cls, part) == (QuantSettings, "options"),
                f"sweep path {path!r}: {where}.{part} is a value, not a section.",
            )
            return  # scheme options: checked when the configs are built
        cls, where = sub, f"{where}.{part}" if where != "config" else part


def _dataclass_in(annotation: Any) -> type | None:
    candidates = typing.get_args(annotation) or (annotation,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` (dotted) in the plain config dict ``data``, creating sections, by
    :func:`lorap_dist.config.set_field`'s rules (a scheme switch keeps only ``bits``)."""
    set_field(data, path, value)


def resolve_paths(data: dict[str, Any], nested: bool = False) -> dict[str, Any]:
    """``data`` with the relative paths of :data:`PATH_FIELDS` made absolute.

    ``nested`` says whether ``data`` is a config dict (sections) or ``{dotted path: value}``.
    """
    data = copy.deepcopy(data)
    for path in PATH_FIELDS:
        if nested:
            *sections, last = path.split(".")
            node = data
            for part in sections:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and last in node:
                node[last] = _absolute(path, node[last])
        elif path in data:
            data[path] = _absolute(path, data[path])
    return data


def _absolute(path: str, value: Any) -> Any:
    """``value`` made an absolute path when ``path`` is one of :data:`PATH_FIELDS` (a URI
    such as ``s3://...`` stays as it is)."""
    if path in PATH_FIELDS and isinstance(value, str) and "://" not in value:
        return str(Path(value).expanduser().resolve())
    return value


def point_key(point: dict[str, Any]) -> str:
    """A stable, readable name of a configuration: ``path=value`` pairs, sorted."""
    return ",".join(f"{k}={json.dumps(point[k], sort_keys=True)}" for k in sorted(point))


def experiment_config(base: dict[str, Any], point: dict[str, Any], seed: int) -> ExperimentConfig:
    """The experiment of one trial: ``base`` with ``point``'s overrides and ``train.seed``."""
    data = copy.deepcopy(base)
    for path in leading_first(list(point)):
        set_path(data, path, point[path])
    set_path(data, "train.seed", seed)
    try:
        return ExperimentConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"sweep configuration {point_key(point) or '(base)'}: {exc}") from None
