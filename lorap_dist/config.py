"""Typed, validated configs for data, model, prompt, quantization and training.

Every config is a dataclass that checks itself in ``__post_init__`` and raises a
:class:`ConfigError` saying which field is wrong, what it got and what is allowed. Configs
round-trip through plain dicts (``to_dict`` / ``from_dict``, in :mod:`lorap_dist.config_dicts`
and re-exported here) so they can live in YAML files, checkpoints and Tune result tables.
This module is the schema a user writes against: one dataclass per section, each with its
fields documented and checked, in the order of a config file. It is longer than the
project's other modules (about 800 lines) for that reason: every field a config file can
hold is documented and checked here, in one place; the dict round trip and the shared
checks live in :mod:`lorap_dist.config_dicts` and :mod:`lorap_dist.validation`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorap_dist.config_dicts import (  # noqa: F401  (re-exported: part of the config API)
    LEADING_FIELDS,
    check_type,
    from_dict,
    leading_first,
    load_yaml_mapping,
    set_field,
    to_dict,
)
from lorap_dist.quant.api import quantize_, scheme_config_type
from lorap_dist.validation import (  # noqa: F401  (re-exported: part of the config API)
    ConfigError,
    check,
    check_bits,
    check_choice,
    is_int,
    is_number,
)


@dataclass
class SyntheticConfig:
    """A generated graph with planted classes (the built-in default dataset).

    Degrees follow a power law (Chung-Lu weights drawn from a Pareto distribution with
    exponent ``degree_exponent``); an edge stays inside its source's class with probability
    ``homophily``; features are the class centroid plus Gaussian noise of scale
    ``feature_noise``.
    """

    num_nodes: int = 3000
    avg_degree: float = 10.0
    degree_exponent: float = 2.1
    num_classes: int = 8
    num_features: int = 32
    homophily: float = 0.7
    feature_noise: float = 2.0
    train_fraction: float = 0.5
    valid_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        check(self.num_nodes >= 2, f"data.synthetic.num_nodes={self.num_nodes} must be >= 2.")
        check(self.avg_degree > 0, f"data.synthetic.avg_degree={self.avg_degree} must be > 0.")
        check(
            self.degree_exponent > 1.0,
            f"data.synthetic.degree_exponent={self.degree_exponent} must be > 1 "
            "(2 to 3 is like real graphs).",
        )
        check(self.num_classes >= 2, f"data.synthetic.num_classes={self.num_classes} must be >= 2.")
        check(self.num_features >= 1, "data.synthetic.num_features must be >= 1.")
        check(0.0 <= self.homophily <= 1.0, "data.synthetic.homophily must be in [0, 1].")
        check(self.feature_noise >= 0.0, "data.synthetic.feature_noise must be >= 0.")
        check(
            0 < self.train_fraction
            and 0 <= self.valid_fraction
            and self.train_fraction + self.valid_fraction < 1,
            "data.synthetic.train_fraction and valid_fraction must be positive and sum to < 1.",
        )


DATA_TRANSFORMS = (
    "none",
    "normalize_features",
    "one_hot_degree",  # datasets of graphs only, like the two below
    "standardized_degree",
    "degree",
)
GRAPH_SOURCES = ("tu",)  # datasets of many graphs: graph-level training


@dataclass
class DataConfig:
    """Where the graph comes from.

    Args:
        source: ``"synthetic"`` (generated from ``synthetic``), an OGB name such as
            ``"ogbn-arxiv"``, ``"planetoid"`` (with ``name``: Cora, CiteSeer or PubMed, read
            from their raw files under ``root``; ``"planetoid:Cora"`` is the same),
            ``"pyg:CLASS:NAME"`` for another single-graph PyG dataset class, ``"tu"`` (with
            ``name``: a TU dataset of many graphs such as PROTEINS or REDDIT-BINARY, read
            from its raw files under ``root``; graph-level training), or ``"dir"``
            with ``path`` (``"dir:PATH"`` is the same): a prepared dataset directory
            (``lorap prepare`` output), or a directory in OGB's layout (what
            ``lorap prepare --source dir:PATH`` reads).
        name: the dataset's name for ``planetoid`` and ``tu`` (and ``CLASS[:NAME]`` for
            ``pyg``).
        root: where OGB datasets live (downloaded there on a machine with internet) and
            where PyG datasets keep their raw files (``root/<Name>/raw``; never downloaded).
        path: a prepared dataset directory (``lorap prepare`` output).
        transform: ``none`` or ``normalize_features`` (PyG's ``NormalizeFeatures``: rows
            sum to 1); ``None`` (default) picks ``normalize_features`` for Planetoid, as
            the GCN paper does, and ``none`` otherwise. Datasets of graphs also take
            ``one_hot_degree``, ``standardized_degree`` and ``degree`` (node features from
            the node degree; see :func:`lorap_dist.graph.tu_source.node_features`); under
            ``none`` those without node features get ``degree``, Degree-Quant's choice.
        folds: graph-level datasets without a split of their own are split into ``folds``
            stratified folds (a fixed draw, the same for every run).
        fold: which fold is the test set; the one before (cyclically) is the validation
            set, the others train (Degree-Quant's protocol).
    """

    source: str = "synthetic"
    name: str | None = None
    root: str = "data"
    path: str | None = None
    transform: str | None = None
    folds: int = 10
    fold: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        check(
            isinstance(self.source, str),
            f"data.source={self.source!r} must be a string such as 'synthetic' or 'planetoid'.",
        )
        kind, sep, rest = self.source.partition(":")
        if sep and kind == "dir" and rest:  # the spelling `lorap prepare --source` takes
            check(
                self.path in (None, rest),
                f"data.source={self.source!r} names a directory and data.path={self.path!r} "
                "names another; give it once.",
            )
            self.source, self.path = "dir", rest
        if sep and kind in ("planetoid", "pyg", "tu"):
            check(
                self.name in (None, rest),
                f"data.source={self.source!r} names the dataset and data.name={self.name!r} "
                "names another; give it once.",
            )
            self.source, self.name = kind, rest
        check(
            self.source in ("synthetic", "dir", "planetoid", "pyg", *GRAPH_SOURCES)
            or self.source.startswith("ogbn-"),
            f"data.source={self.source!r} is not known; use 'synthetic', 'dir' (with "
            "data.path), 'planetoid' (with data.name), 'pyg:CLASS:NAME', 'tu' (with "
            "data.name) or an OGB node dataset name such as 'ogbn-arxiv'.",
        )
        check(
            self.source != "dir" or bool(self.path),
            "data.source='dir' needs data.path, the prepared dataset directory.",
        )
        check(
            self.source not in ("planetoid", "pyg", "tu") or bool(self.name),
            f"data.source={self.source!r} needs data.name, e.g. "
            + {"planetoid": "'Cora'.", "tu": "'PROTEINS'."}.get(
                self.source, "'WikiCS' or 'Amazon:Photo'."
            ),
        )
        check(
            is_int(self.folds) and self.folds >= 3,
            f"data.folds={self.folds!r} must be an integer >= 3 (one fold tests, one "
            "validates, the others train).",
        )
        check(
            is_int(self.fold) and 0 <= self.fold < self.folds,
            f"data.fold={self.fold!r} must be an integer in [0, data.folds={self.folds}).",
        )
        check(
            self.transform not in DATA_TRANSFORMS[2:] or self.graph_level,
            f"data.transform={self.transform!r} makes node features from degrees for datasets "
            "of many graphs (data.source: tu) only; use none or normalize_features.",
        )
        if self.transform is not None:
            check_choice("data.transform", self.transform, DATA_TRANSFORMS)

    @property
    def spec(self) -> str:
        """The source as :func:`lorap_dist.graph.sources.open_source` names it."""
        if self.source in ("planetoid", "pyg", "tu"):
            return f"{self.source}:{self.name}"
        return self.source

    @property
    def graph_level(self) -> bool:
        """Whether the source is a dataset of many graphs (graph-level training)."""
        return self.source in GRAPH_SOURCES

    @property
    def resolved_transform(self) -> str:
        """``transform``, or the dataset's default when it is ``None``."""
        if self.transform is not None:
            return self.transform
        return "normalize_features" if self.source == "planetoid" else "none"


ARCHS = ("gcn", "sage", "gin", "gat")
NORMS = ("none", "batch", "layer")
READOUTS = ("sum", "mean", "max")
PROMPTS = ("none", "lorap", "gpf", "gpf_lorap")
GPF_SUPPORTS = ("nonzero", "all")
ROUNDINGS = ("once", "twice")
PROMPT_UNITS = ("value", "step")


@dataclass
class PromptConfig:
    """Which prompt the model carries and its sizes.

    Args:
        kind: ``none``, ``lorap`` (after aggregation, every layer), ``gpf`` (GPF-plus on the
            input features) or ``gpf_lorap`` (both).
        k: number of prompt bases mixed by the softmax weights.
        r: rank of LoRAP's low-rank factorisation.
        rounding: where LoRAP's layers round the aggregate: ``once`` (the prompt is added
            to the exact aggregate, then one quantization point, ``prompt``) or ``twice``
            (the aggregate is quantized, prompted, and quantized again).
        gpf_support: where GPF-plus adds its prompt: ``nonzero`` (default), only to the
            input's non-zero entries, so a sparse input stays sparse; ``all``, to every entry
            as in the GPF-plus paper. On sparse bag-of-words features a prompt on every
            entry turns the zeros into small dense values that then set the input point's
            range (:class:`~lorap_dist.prompt.GPFPlus` gives the measurements).
        unit: what LoRAP's bases are counted in: ``value`` (default), the aggregate's own
            units; ``step``, the prompt point's quantization step, so that the prompt moves
            in rounding steps whatever the aggregate's scale (a per-tensor grid's step;
            other quantizers, and none, count in the aggregate's root mean square; see
            :class:`~lorap_dist.prompt.LoRAP`). Where sums over hubs make the steps far
            wider than most aggregates (IMDB-BINARY GIN at INT4: steps of 10 to 15 against
            aggregates of 2 to 4), a prompt in value units stays a small fraction of a step
            and changes no rounding.
    """

    kind: str = "none"
    k: int = 8
    r: int = 4
    rounding: str = "once"
    gpf_support: str = "nonzero"
    unit: str = "value"

    def __post_init__(self) -> None:
        check_choice("prompt.kind", self.kind, PROMPTS)
        check_choice("prompt.rounding", self.rounding, ROUNDINGS)
        check_choice("prompt.gpf_support", self.gpf_support, GPF_SUPPORTS)
        check_choice("prompt.unit", self.unit, PROMPT_UNITS)
        check(
            isinstance(self.k, int) and self.k >= 1,
            f"prompt.k={self.k!r} must be an integer >= 1 (the paper uses 4 to 16).",
        )
        check(
            isinstance(self.r, int) and self.r >= 1,
            f"prompt.r={self.r!r} must be an integer >= 1 (the paper's elbow is 4 to 8).",
        )

    @property
    def lorap(self) -> bool:
        return self.kind in ("lorap", "gpf_lorap")

    @property
    def gpf(self) -> bool:
        return self.kind in ("gpf", "gpf_lorap")


@dataclass
class ModelConfig:
    """The GNN stack.

    Args:
        arch: layer type, one of ``gcn``, ``sage``, ``gin``, ``gat``.
        hidden: hidden width.
        layers: number of message-passing layers (>= 1).
        dropout: dropout probability between layers.
        norm: ``none``, ``batch`` or ``layer`` normalisation between layers; ``None``
            (default) is ``batch`` for GIN, whose sum aggregation over high-degree nodes
            does not train without it (FP32 GIN on a heavy-tailed graph: 28% without, 88%
            with), and ``none`` for the others.
        heads: attention heads (GAT only; hidden layers concatenate heads).
        readout: how graph-level models pool each graph's node states into one vector:
            ``sum``, ``mean`` or ``max`` (node-level training ignores it).
        dropout_after_input: apply a node-level model's dropout between layers after the
            next layer's ``input`` quantization point rather than before it (default
            ``False``, as PyG's models and the papers place it). Before it, the point
            observes the kept values scaled by ``1 / (1 - dropout)``, so at evaluation the
            values fill only part of the range it learned (about half the grid at dropout
            0.5). At full precision the two orders give the same values and draws.
    """

    arch: str = "gcn"
    hidden: int = 64
    layers: int = 2
    dropout: float = 0.5
    norm: str | None = None
    heads: int = 2
    readout: str = "sum"
    dropout_after_input: bool = False

    def __post_init__(self) -> None:
        check_choice("model.arch", self.arch, ARCHS)
        check(
            isinstance(self.dropout_after_input, bool),
            f"model.dropout_after_input={self.dropout_after_input!r} must be true or false.",
        )
        check_choice("model.readout", self.readout, READOUTS)
        if self.norm is not None:
            check_choice("model.norm", self.norm, NORMS)
        check(self.hidden >= 1, f"model.hidden={self.hidden} must be >= 1.")
        check(self.layers >= 1, f"model.layers={self.layers} must be >= 1.")
        check(0.0 <= self.dropout < 1.0, f"model.dropout={self.dropout} must be in [0, 1).")
        check(self.heads >= 1, f"model.heads={self.heads} must be >= 1.")

    @property
    def resolved_norm(self) -> str:
        """``norm``, or the architecture's default when it is ``None``."""
        if self.norm is not None:
            return self.norm
        return "batch" if self.arch == "gin" else "none"


#: ``train.prompt_tuning_lr_scale``'s default without ``train.fanout`` (full-batch node
#: training, and batches of whole graphs): the prompts' rate during prompt tuning on the
#: frozen backbone, as a multiple of ``train.lr`` (measured in
#: ``benchmarks/accuracy_planetoid.py``, the ``tuning`` part).
DEFAULT_TUNING_PROMPT_LR_SCALE = 10.0
#: Its default with ``train.fanout`` (sampled training, many steps an epoch; measured with
#: the main job, ``jobs/main.py``).
SAMPLED_TUNING_PROMPT_LR_SCALE = 0.1


@dataclass
class TrainConfig:
    """Optimisation.

    Args:
        epochs: maximum epochs.
        lr: Adam learning rate of the backbone.
        weight_decay: Adam weight decay of the backbone (quantizer state is never decayed;
            see :mod:`lorap_dist.optim`).
        prompt_lr_scale: the prompts' (LoRAP, GPF-plus) learning rate as a fraction of
            ``lr`` (default 0.1, measured in ``benchmarks/accuracy_planetoid.py``).
        prompt_tuning_lr_scale: the prompts' learning rate as a multiple of ``lr`` while
            they tune on the frozen backbone (``prompt_tuning_epochs``); ``None`` (the
            default, :attr:`tuning_prompt_lr_scale`): 10 without ``fanout`` (full-batch
            node training, graph batches), 0.1 with it (sampled). With the backbone
            frozen nothing else moves, so the prompts can take a far larger step than
            beside a training backbone. At ``prompt_lr_scale``'s 0.1 x lr
            they barely moved in the 50 epochs of the 200-epoch recipe and gained nothing.
            At 10 x lr plain QAT INT4 GIN gained 4.5 points on Cora and 2.0 on CiteSeer,
            and GCN was unchanged (10 seeds). At 20 x lr and above the prompt never won
            (``benchmarks/accuracy_planetoid.py``, the ``tuning`` part). Those runs are
            full-batch, one step an epoch. Sampled training takes many steps an epoch: in
            the main job (``jobs/main.py``) the prompt won on validation at 0.1 and 1 x lr
            and lost at 3 and 10, so sampled runs keep 0.1.
        prompt_weight_decay: the prompts' weight decay (default 0).
        quantizer_lr_scale: the learning rate of learned quantizer state (A2Q's steps and
            bit widths, MixQ's logits) as a multiple of ``lr`` (default 1). A2Q's own recipes
            train its steps and bits at 2-20 times the backbone's rate; at the graph-level
            recipe's ``lr`` 0.001 and rate 1 A2Q's bit widths barely move (measured in
            ``benchmarks/accuracy_graph_level.py``).
        prompt_warmup: with the prompts trained together with the backbone
            (``prompt_tuning_epochs: 0``; setting ``prompt_warmup`` makes that the
            default), epochs at the start during which the prompts do not train (a warm
            start: the quantized backbone first, then the prompt). ``None`` (the default)
            holds them still for a quarter of ``epochs`` (:attr:`prompt_warmup_epochs`);
            ``0`` trains them from the first step. Measured in
            ``benchmarks/accuracy_planetoid.py``: trained from the first step, the prompt's
            first steps can stop a run on a graph whose activations are a few hundredths
            (CiteSeer GAT, MixQ INT4: one seed of ten at 24.5% where MixQ alone reaches
            65.7%); held still for 50 of 200 epochs, no seed collapses.
        prompt_after_search: also hold the prompts still while a scheme is still searching
            (MixQ's bit-width search, until it freezes). ``None`` (the default) means
            ``True`` (:attr:`prompts_wait_for_search`); a resumed run that leaves it to the
            default keeps its checkpoint's choice. A prompt that trains during the search
            shifts which widths the search picks, and it learns against a mixture of grids
            that the freeze replaces; held still (its output is zero until it trains), the
            run is the scheme alone's up to the freeze. Measured in
            ``benchmarks/accuracy_planetoid.py`` (CiteSeer GIN, MixQ INT4). A search that
            never freezes by itself (MixQ's ``search_fraction: 1``) counts as settled, so
            its prompts train from the warm start on.
        prompt_tuning_epochs: train the prompts on a frozen backbone instead of beside it
            (prompt tuning). ``N > 0``: the prompts stay still for the whole run, which is
            then the scheme alone; its best-validation model is restored, and for ``N``
            more epochs only the prompts train (every other learning rate is 0, and the
            backbone runs as in evaluation: no dropout, its ranges and norms fixed), fewer
            when ``patience`` of them pass without a new best. The prompted model is
            reported only when its validation accuracy beats the scheme's best, so the run
            reports the scheme alone unless the prompt helps on validation. ``0`` trains
            the prompts together with the backbone after the warm start
            (``prompt_warmup``), as the LoRAP paper does. ``None`` (the default,
            :attr:`tuning_epochs`): half of ``epochs`` with ``patience`` (at least 1), a
            quarter without it, or ``0`` where ``prompt_warmup`` is set (a warm start asks
            for training together); a resumed run that leaves it to the default keeps its
            checkpoint's length (a quarter of its ``epochs`` for checkpoints written before
            they kept it, the default then). Half with ``patience``, which ends the phase
            once the prompt has stopped improving on validation: on Cora GIN (plain QAT
            INT4) a quarter, 50 epochs, cut the phase short in the seeds whose prompt was
            still improving (10 seeds, tuned minus alone: +4.48 with 50 epochs, +5.59 with
            100; CiteSeer GIN +2.01 and +3.13). Without ``patience`` every epoch of the
            phase runs, so it stays a quarter. The default
            since the measurements showed that trained together with the backbone, LoRAP
            falls up to 1.8 points below its scheme alone, and tuned on the frozen backbone
            never more than 0.3 (``benchmarks/accuracy_planetoid.py``, the ``tuning`` part;
            ``benchmarks/accuracy_graph_level.py --prompt-tuning-epochs``). Every kind of
            run: ``lorap train``, Tune trials and distributed runs (which keep the best
            model in their checkpoints and resume inside the tuning phase; one that never
            evaluates, ``dist.eval_every: null``, takes ``0`` for the default).
        lr_decay_every: multiply every learning rate by ``lr_decay`` every this many epochs
            (0, the default, keeps it constant).
        lr_decay: the factor of the step decay (default 0.5).
        patience: stop after this many epochs without a better validation accuracy
            (0 disables early stopping).
        seed: seeds parameters, dropout and sampling.
        fanout: per-layer neighbour fanouts for sampled training (``-1`` = all); ``None``
            trains full-batch.
        batch_size: seed nodes per mini-batch (sampled training).
        device: where single-process training runs: ``auto`` (the first CUDA device when
            there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        sampler_device: where sampled training draws its blocks: ``device`` (graph and
            seeds on ``device``) or ``cpu`` (sampled on the CPU, features gathered there and
            sent in pinned memory).
    """

    epochs: int = 200
    lr: float = 0.01
    weight_decay: float = 5e-4
    prompt_lr_scale: float = 0.1
    prompt_tuning_lr_scale: float | None = None
    prompt_weight_decay: float = 0.0
    quantizer_lr_scale: float = 1.0
    prompt_warmup: int | None = None
    prompt_after_search: bool | None = None
    prompt_tuning_epochs: int | None = None
    lr_decay_every: int = 0
    lr_decay: float = 0.5
    patience: int = 50
    seed: int = 0
    fanout: tuple[int, ...] | None = None
    batch_size: int = 1024
    device: str = "auto"
    sampler_device: str = "device"

    def __post_init__(self) -> None:
        check(self.epochs >= 1, f"train.epochs={self.epochs} must be >= 1.")
        check(self.lr > 0, f"train.lr={self.lr} must be > 0.")
        check(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay} must be >= 0.")
        check(
            self.prompt_lr_scale > 0,
            f"train.prompt_lr_scale={self.prompt_lr_scale} must be > 0 (1 trains the prompts "
            "at train.lr).",
        )
        check(
            self.prompt_tuning_lr_scale is None
            or (is_number(self.prompt_tuning_lr_scale) and self.prompt_tuning_lr_scale > 0),
            f"train.prompt_tuning_lr_scale={self.prompt_tuning_lr_scale!r} must be a number > 0 "
            "(the prompts' rate during prompt tuning as a multiple of train.lr), or null for "
            f"the default ({DEFAULT_TUNING_PROMPT_LR_SCALE:g} in full-batch training, "
            f"{SAMPLED_TUNING_PROMPT_LR_SCALE:g} with train.fanout).",
        )
        check(
            self.prompt_weight_decay >= 0,
            f"train.prompt_weight_decay={self.prompt_weight_decay} must be >= 0.",
        )
        check(
            is_number(self.quantizer_lr_scale) and self.quantizer_lr_scale > 0,
            f"train.quantizer_lr_scale={self.quantizer_lr_scale!r} must be a number > 0 (1 "
            "trains learned quantizer state at train.lr).",
        )
        check(
            self.prompt_warmup is None
            or (is_int(self.prompt_warmup) and 0 <= self.prompt_warmup < self.epochs),
            f"train.prompt_warmup={self.prompt_warmup!r} must be a whole number of epochs in "
            f"[0, train.epochs={self.epochs}), or null for the default (a quarter of the "
            "epochs).",
        )
        check(
            self.prompt_after_search is None or isinstance(self.prompt_after_search, bool),
            f"train.prompt_after_search={self.prompt_after_search!r} must be true, false or "
            "null (the default, true).",
        )
        check(
            self.prompt_tuning_epochs is None
            or (is_int(self.prompt_tuning_epochs) and self.prompt_tuning_epochs >= 0),
            f"train.prompt_tuning_epochs={self.prompt_tuning_epochs!r} must be a whole number "
            ">= 0 (0 trains the prompts together with the backbone), or null for the default "
            "(half of the epochs with train.patience, a quarter without).",
        )
        check(
            not (self.prompt_tuning_epochs and self.prompt_warmup),
            f"train.prompt_tuning_epochs={self.prompt_tuning_epochs} already holds the prompts "
            f"still for the whole run; train.prompt_warmup={self.prompt_warmup} would not "
            "change anything. Leave train.prompt_warmup unset (or 0) with prompt tuning.",
        )
        check(
            self.lr_decay_every >= 0,
            f"train.lr_decay_every={self.lr_decay_every} must be >= 0 (0 keeps the rate).",
        )
        check(0 < self.lr_decay <= 1, f"train.lr_decay={self.lr_decay} must be in (0, 1].")
        check(self.patience >= 0, f"train.patience={self.patience} must be >= 0.")
        check(self.batch_size >= 1, f"train.batch_size={self.batch_size} must be >= 1.")
        check(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            f"train.device={self.device!r} is not a device; use auto, cpu, cuda or cuda:N.",
        )
        check_choice("train.sampler_device", self.sampler_device, ("device", "cpu"))
        if self.fanout is not None:
            self.fanout = tuple(self.fanout)
            check(
                all(isinstance(f, int) and (f >= 1 or f == -1) for f in self.fanout),
                f"train.fanout={list(self.fanout)} must hold integers >= 1 or -1 (all).",
            )

    @property
    def tuning_prompt_lr_scale(self) -> float:
        """The prompts' rate during prompt tuning as a multiple of ``lr``:
        ``prompt_tuning_lr_scale``, or where it is ``None``
        ``DEFAULT_TUNING_PROMPT_LR_SCALE`` (10) without ``fanout`` and
        ``SAMPLED_TUNING_PROMPT_LR_SCALE`` (0.1) with it."""
        if self.prompt_tuning_lr_scale is not None:
            return self.prompt_tuning_lr_scale
        if self.fanout is None:
            return DEFAULT_TUNING_PROMPT_LR_SCALE
        return SAMPLED_TUNING_PROMPT_LR_SCALE

    @property
    def prompts_wait_for_search(self) -> bool:
        """``prompt_after_search``, with ``None`` (the default) read as ``True``."""
        return self.prompt_after_search is not False

    @property
    def tuning_epochs(self) -> int:
        """The epochs of prompt tuning after the run: ``prompt_tuning_epochs``, or where it
        is ``None`` half of ``epochs`` with ``patience`` (which ends the phase once the
        prompt stops improving) and a quarter without (rounded down, at least 1), and ``0``
        when ``prompt_warmup`` is set."""
        if self.prompt_tuning_epochs is not None:
            return self.prompt_tuning_epochs
        if self.prompt_warmup is not None:
            return 0
        return max(1, self.epochs // (2 if self.patience else 4))

    @property
    def prompt_warmup_epochs(self) -> int:
        """The epochs the prompts are held still: ``prompt_warmup``, or a quarter of
        ``epochs`` (rounded down) when it is ``None``."""
        return self.epochs // 4 if self.prompt_warmup is None else self.prompt_warmup


@dataclass
class QuantSettings:
    """Which quantization scheme to apply and its arguments.

    ``scheme`` is ``none`` (float) or a registered scheme name (``qat``, and the schemes
    added under ``lorap_dist/quant/schemes``); ``options`` are the scheme config's fields,
    e.g. ``{bits: 4, observer: ema}``. ``float_logits`` (default ``False``) keeps a
    node-level model's logits at full precision: its last layer's points that hold them
    (``output``; in GCN and GAT also ``aggregate`` or ``prompt``, the logits less the bias;
    :func:`~lorap_dist.quant.quantize_` says why one would).
    """

    scheme: str = "none"
    options: dict[str, Any] = field(default_factory=dict)
    float_logits: bool = False

    def __post_init__(self) -> None:
        check(isinstance(self.options, dict), "quant.options must be a mapping of field: value.")
        check(
            isinstance(self.float_logits, bool),
            f"quant.float_logits={self.float_logits!r} must be true or false.",
        )
        check(
            self.scheme != "none" or not self.options,
            f"quant.options={self.options} are given but quant.scheme is 'none' (no "
            "quantization), so nothing would use them; set quant.scheme (qat, degree_quant, "
            "a2q, mixq) or drop the options.",
        )
        if self.scheme != "none":
            self.build()  # validate eagerly, so a bad config fails before any training

    def build(self) -> Any:
        """The scheme config object, or ``None`` for ``scheme: none``."""
        if self.scheme == "none":
            return None
        return from_dict(
            scheme_config_type(self.scheme), self.options, f"quant.options ({self.scheme})"
        )

    def apply(self, model: Any, num_nodes: int | None) -> Any:
        """``model`` with the scheme applied in place (unchanged for ``scheme: none``);
        ``num_nodes``: nodes of the full graph, for schemes with per-node parameters."""
        scheme = self.build()
        if scheme is not None:
            quantize_(model, scheme, num_nodes=num_nodes, float_logits=self.float_logits)
        return model


SEED_POLICIES = ("pad", "cap")  # lorap_dist.distributed.seeds
FEATURE_ROWS = ("float", "codes")  # what the first layer of a node-level run is given


@dataclass
class DistConfig:
    """Distributed training with Ray Train: the ``dist`` section of an experiment config.

    A node-level run trains on a prepared dataset directory (``data.source: dir``) with one
    worker per partition; a graph-level run (``data.source: tu``) gives every worker the
    whole dataset and deals out the graphs::

        dist:
          num_workers: 2          # = the dataset's num_parts (node level)
          storage_path: runs      # checkpoints and results: <storage_path>/<name>/
          max_failures: 1         # restart dead workers from the last checkpoint

    Args:
        num_workers: training workers, one per dataset partition.
        use_gpu: one GPU per worker and NCCL (else CPU and gloo).
        cpus_per_worker: CPUs Ray reserves per worker.
        storage_path: where Ray Train keeps results and checkpoints: a local or mounted
            path (made absolute), or a URI Ray's storage takes (``s3://...``, ``gs://...``),
            passed on as given.
        name: run name (a directory under ``storage_path``); default ``lorap-<timestamp>``.
        max_failures: worker failures to recover from, each by a restart from the last
            checkpoint (``FailureConfig``); ``-1`` retries forever.
        checkpoint_every: epochs between checkpoints (the last epoch is always saved).
        keep_checkpoints: checkpoints Ray Train keeps (``None``: all).
        seed_policy: ``pad`` or ``cap``, how ranks are given equal step counts
            (:mod:`lorap_dist.distributed.seeds`).
        exchange_bits: ``None`` sends features as stored; ``8`` or ``4`` re-quantizes rows
            for the all_to_all (:mod:`lorap_dist.distributed.exchange`).
        feature_rows: what the first layer of a node-level run is given, in training and in
            evaluation alike: ``float`` (default) the fetched rows dequantized to float32,
            through the first layer's ``input`` quantization point; ``codes`` the integer
            rows as they travelled (:class:`~lorap_dist.quant.integer.QuantizedRows`, from
            :meth:`~lorap_dist.distributed.exchange.FeatureExchange.fetch_rows`), which SAGE
            and GIN aggregate with the fused ``quant_aggregate`` op without that point (the
            stored per-row grid wins; :class:`~lorap_dist.nn.model.GNN` says why). ``codes``
            needs rows that travel as codes (an INT8-stored dataset, or ``exchange_bits`` 8
            or 4; the driver checks the dataset before any worker starts), ``model.arch``
            ``sage`` or ``gin``, no GPF-plus (``prompt.kind`` ``none`` or ``lorap``: GPF-plus
            prompts float features, so the codes would be dequantized before the first layer
            and ``codes`` would only mean ``float``) and a node-level run.
        eval_every: epochs between full-graph evaluations (``0``: only after the last;
            ``null``: never, e.g. for throughput benchmarks).
        max_steps_per_epoch: cap on the steps of an epoch (``null``: a full pass over the
            seeds). For benchmarks and smoke runs on graphs whose full epoch takes too long.
        eval_batch_size: destination nodes per chunk of layer-wise inference.
    """

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    storage_path: str = "runs"
    name: str | None = None
    max_failures: int = 0
    checkpoint_every: int = 1
    keep_checkpoints: int | None = None
    seed_policy: str = "pad"
    exchange_bits: int | None = None
    feature_rows: str = "float"
    eval_every: int | None = 1
    max_steps_per_epoch: int | None = None
    eval_batch_size: int = 4096

    def __post_init__(self) -> None:
        check(self.num_workers >= 1, f"dist.num_workers={self.num_workers} must be >= 1.")
        check(self.cpus_per_worker > 0, "dist.cpus_per_worker must be > 0.")
        check(self.max_failures >= -1, "dist.max_failures must be >= 0, or -1 (no limit).")
        check(self.checkpoint_every >= 1, "dist.checkpoint_every must be >= 1.")
        check(
            self.keep_checkpoints is None or self.keep_checkpoints >= 1,
            "dist.keep_checkpoints must be >= 1 or null (keep all).",
        )
        check_choice("dist.seed_policy", self.seed_policy, SEED_POLICIES)
        check_choice("dist.exchange_bits", self.exchange_bits, (None, 8, 4))
        check_choice("dist.feature_rows", self.feature_rows, FEATURE_ROWS)
        check(
            self.eval_every is None or self.eval_every >= 0,
            "dist.eval_every must be >= 0 (0: after the last epoch only), or null (never).",
        )
        check(
            self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
            "dist.max_steps_per_epoch must be >= 1, or null (a full pass).",
        )
        check(self.eval_batch_size >= 1, "dist.eval_batch_size must be >= 1.")

    @property
    def remote_storage(self) -> bool:
        """Whether ``storage_path`` is a URI (``scheme://...``) rather than a path here."""
        return "://" in str(self.storage_path)

    @property
    def storage_dir(self) -> Path:
        """``storage_path`` as an absolute path (Ray Train needs one for local storage)."""
        if self.remote_storage:
            raise ValueError(
                f"dist.storage_path={self.storage_path!r} is a URI, not a path on this "
                "machine; use storage_uri."
            )
        return Path(self.storage_path).expanduser().resolve()

    @property
    def storage_uri(self) -> str:
        """What Ray Train stores under: a URI as given, else :attr:`storage_dir`."""
        return str(self.storage_path) if self.remote_storage else str(self.storage_dir)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DistConfig:
        return from_dict(cls, data, "dist")


def check_feature_rows(experiment: ExperimentConfig, settings: DistConfig) -> None:
    """Raise :class:`ConfigError` unless ``settings.feature_rows`` fits ``experiment``'s data,
    model and prompt sections. Whether the rows travel as codes at all (an INT8-stored
    dataset, or ``exchange_bits``) is checked by the driver, which reads the dataset."""
    if settings.feature_rows != "codes":
        return
    check(
        not experiment.data.graph_level,
        f"dist.feature_rows='codes' with data.source={experiment.data.source!r}: integer rows "
        "come from the feature exchange of a node-level run, and a dataset of many graphs "
        "has none; set dist.feature_rows: float.",
    )
    check(
        experiment.model.arch in ("sage", "gin"),
        f"dist.feature_rows='codes' with model.arch={experiment.model.arch!r}: only SAGE and "
        "GIN layers aggregate integer rows (GCN and GAT transform or weigh each message "
        "first); set model.arch: sage or gin, or dist.feature_rows: float.",
    )
    check(
        not experiment.prompt.gpf,
        f"dist.feature_rows='codes' with prompt.kind={experiment.prompt.kind!r}: GPF-plus "
        "prompts float features, so the rows would be dequantized before the first layer "
        "and never reach it as codes; set prompt.kind: none or lorap, or dist.feature_rows: "
        "float (dist.exchange_bits still sends 8- or 4-bit rows).",
    )


@dataclass
class ExperimentConfig:
    """Everything a run needs; the file ``lorap train --config FILE`` reads.

    The built-in default (``ExperimentConfig()``, what ``lorap train`` runs without
    ``--config``, and ``jobs/configs/default.yaml``) is the method this project is for: a
    2-layer GCN on the generated graph, INT4 plain QAT, LoRAP in every layer. A file
    changes the fields it names and keeps the others: a file without ``quant`` and
    ``prompt`` sections trains INT4 QAT with LoRAP, ``quant: {scheme: none}`` in FP32.

    ``dist`` (a :class:`DistConfig`) makes the run distributed on Ray Train workers.
    Without it, training runs in this process. With ``dist.feature_rows: codes`` the other
    sections must suit integer rows (:func:`check_feature_rows`).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=lambda: PromptConfig(kind="lorap"))
    quant: QuantSettings = field(
        default_factory=lambda: QuantSettings(scheme="qat", options={"bits": 4})
    )
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig | None = None

    def __post_init__(self) -> None:
        if self.dist is not None:
            check_feature_rows(self, self.dist)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ExperimentConfig:
        """The built-in default with ``data``'s sections applied field by field (so
        ``prompt: {r: 8}`` keeps LoRAP on, and ``quant: {scheme: mixq}`` keeps ``bits``),
        by :func:`set_field`'s rules."""
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"a config must be a mapping of section: fields, got {data!r}.")
        merged = cls().to_dict()
        for section, values in (data or {}).items():
            if isinstance(values, dict) and isinstance(merged.get(section), dict):
                for key in leading_first([f"{section}.{k}" for k in values]):
                    set_field(merged, key, values[key.split(".", 1)[1]])
            else:
                merged[section] = values
        return from_dict(cls, merged, "config")

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentConfig:
        path = Path(path)
        data = load_yaml_mapping(path, "config file", allow_empty=True)
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)
