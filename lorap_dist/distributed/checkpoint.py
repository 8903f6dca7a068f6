"""Checkpoints stored as Arrow: named tensors in one IPC file, the rest as JSON, checksummed.

A checkpoint is a plain directory, so Ray Train can carry it
(``ray.train.Checkpoint.from_directory``)::

    checkpoint_epoch_000004/
      tensors.arrow    one row per tensor: name, dtype, shape, bytes
                       (``model/<key>`` for the model state dict, quantizer state included;
                       ``optimizer/<param id>/<key>`` for the optimizer's per-parameter state,
                       ``best/<key>`` for the best-validation epoch's model, the reported one)
      state.json       run config, epoch, step, architecture, optimizer non-tensor state,
                       every rank's RNG state (torch CPU, python, numpy; CUDA when present)
      manifest.json    format version and the checksum (xxh3-64) + size of each file above

The directory is written under a temporary name in the same parent and renamed into place
once every file is flushed, so a crash leaves a ``.tmp-*`` directory that is never taken for
a checkpoint. :func:`load_checkpoint` verifies the digests and the architecture fields and
raises :class:`CheckpointError` naming the file or field that does not match;
:func:`latest_good_checkpoint` skips damaged checkpoints with a warning.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from lorap_dist.checksums import checksum_entry, mismatched_file, read_manifest

FORMAT_VERSION = 1
TENSORS_FILE = "tensors.arrow"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_PREFIX = "checkpoint_epoch_"

# The config fields that fix the shapes of the saved tensors. ``model.heads`` counts only for
# GAT; ``quant.options.*bits*`` only where the scheme has them.
_ARCH_FIELDS = (
    "model.arch",
    "model.hidden",
    "model.layers",
    "prompt.kind",
    "prompt.k",
    "prompt.r",
    "quant.scheme",
)


#: The GPF-plus fact of a checkpoint written before ``prompt.gpf_support`` existed: every
#: entry prompted, prompt not scaled by the input's RMS.
OLD_GPF = "all entries, unscaled (written before prompt.gpf_support existed)"


class CheckpointError(RuntimeError):
    """A checkpoint is damaged or does not fit the run; the message says which file or field."""


@dataclass
class TrainingState:
    """Everything a checkpoint holds, in memory.

    Args:
        model: the model's ``state_dict`` (unwrapped, without a DDP ``module.`` prefix).
        optimizer: the optimizer's ``state_dict``.
        config: the run config as a plain dict (``ExperimentConfig.to_dict()``).
        epoch: epochs completed.
        step: optimizer steps taken.
        rng: one :func:`capture_rng` dict per rank, indexed by rank.
        dataset: dataset facts the model's shapes depend on (``num_features``,
            ``num_classes``, ``num_nodes``).
        extra: anything else JSON-serialisable (best validation accuracy, history).
        best_model: the ``state_dict`` of the best-validation epoch's model, the one the
            run reports (empty before any evaluation, and in checkpoints written before
            they kept it); prompt tuning starts from it.
    """

    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    config: dict[str, Any]
    epoch: int
    step: int
    rng: list[dict[str, Any]] = field(default_factory=list)
    dataset: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    best_model: dict[str, Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA when present, python, numpy) as JSON data."""
    state: dict[str, Any] = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()
        ]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set this process's RNGs to a :func:`capture_rng` result."""
    torch.set_rng_state(_bytes_tensor(state["torch"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_bytes_tensor(s) for s in state["cuda"]])


def _bytes_tensor(encoded: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(encoded)), dtype=torch.uint8).clone()


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------
# Tensors <-> Arrow
# ---------------------------------------------------------------------------------------

_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("dtype", pa.string()),
        ("shape", pa.list_(pa.int64())),
        ("bytes", pa.large_binary()),
    ]
)


def _tensor_table(tensors: dict[str, Tensor]) -> pa.Table:
    names, dtypes, shapes, payloads = [], [], [], []
    for name, tensor in tensors.items():
        t = tensor.detach().cpu().contiguous()
        names.append(name)
        dtypes.append(str(t.dtype).removeprefix("torch."))
        shapes.append(list(t.shape))
        payloads.append(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return pa.table([names, dtypes, shapes, payloads], schema=_SCHEMA)


def _table_tensors(table: pa.Table) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    columns = table.to_pydict()
    for name, dtype, shape, payload in zip(
        columns["name"], columns["dtype"], columns["shape"], columns["bytes"], strict=True
    ):
        torch_dtype = getattr(torch, dtype)
        if not payload:
            out[name] = torch.empty(shape, dtype=torch_dtype)
            continue
        flat = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        out[name] = flat.view(torch_dtype).reshape(shape).clone()
    return out


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into named tensors and JSON (tensors become references)."""
    tensors: dict[str, Tensor] = {}
    state_json: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict.get("state", {}).items():
        entry: dict[str, Any] = {}
        for key, value in param_state.items():
            if isinstance(value, Tensor):
                name = f"optimizer/{param_id}/{key}"
                tensors[name] = value
                entry[key] = {"__tensor__": name}
            else:
                entry[key] = value
        state_json[str(param_id)] = entry
    return tensors, {"state": state_json, "param_groups": state_dict.get("param_groups", [])}


def _unflatten_optimizer(meta: dict[str, Any], tensors: dict[str, Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for param_id, entry in meta["state"].items():
        state[int(param_id)] = {
            key: tensors[v["__tensor__"]] if isinstance(v, dict) and "__tensor__" in v else v
            for key, v in entry.items()
        }
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------------------------
# Architecture fields
# ---------------------------------------------------------------------------------------


def architecture(config: dict[str, Any], dataset: dict[str, int] | None = None) -> dict[str, Any]:
    """The flat ``{"section.field": value}`` facts that fix a model's tensor shapes."""
    facts: dict[str, Any] = {}
    for dotted in _ARCH_FIELDS:
        section, name = dotted.split(".")
        facts[dotted] = config.get(section, {}).get(name)
    if facts["model.arch"] == "gat":
        facts["model.heads"] = config.get("model", {}).get("heads")
    # Both decide which tensors exist. ``norm: null`` is the architecture's default; a
    # missing rounding is a checkpoint written before the field existed, when the
    # aggregate was always rounded twice.
    norm = config.get("model", {}).get("norm", "none")
    if norm is None:
        norm = "batch" if facts["model.arch"] == "gin" else "none"
    facts["model.norm"] = norm
    if facts["prompt.kind"] in ("lorap", "gpf_lorap"):
        facts["prompt.rounding"] = config.get("prompt", {}).get("rounding", "twice")
        # The unit fixes what the saved P_B means (values or quantization steps); every
        # checkpoint from before the field counted in values.
        facts["prompt.unit"] = config.get("prompt", {}).get("unit", "value")
    # GPF-plus's prompt changed form when ``gpf_support`` was added: it is now counted in
    # units of the input's RMS. A checkpoint without the field holds a prompt of the old
    # form, which no current setting reproduces.
    if facts["prompt.kind"] in ("gpf", "gpf_lorap"):
        facts["prompt.gpf_support"] = config.get("prompt", {}).get("gpf_support", OLD_GPF)
    options = config.get("quant", {}).get("options", {}) or {}
    for key in sorted(options):
        if "bits" in key:
            value = options[key]
            facts[f"quant.options.{key}"] = list(value) if isinstance(value, tuple) else value
    for key in ("num_features", "num_classes"):
        if dataset and key in dataset:
            facts[f"dataset.{key}"] = dataset[key]
    return facts


def check_architecture(found: dict[str, Any], expected: dict[str, Any], where: Path | str) -> None:
    """Raise :class:`CheckpointError` naming every field where ``found`` differs."""
    wrong = [
        f"{key}: expected {expected.get(key)!r}, checkpoint has {found.get(key)!r}"
        for key in sorted(set(found) | set(expected))
        if found.get(key) != expected.get(key)
    ]
    if wrong:
        raise CheckpointError(
            f"checkpoint {where} was saved for a different model architecture ("
            + "; ".join(wrong)
            + "). Resume with the config the checkpoint was trained with, or start a new run "
            "without --resume."
        )


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, saved: dict[str, Any], where: Path | str
) -> None:
    """Load ``saved`` into ``optimizer`` after checking that its parameter groups are the
    ones this version builds (:func:`lorap_dist.optim.parameter_groups`: the same names
    and sizes, in order); raise :class:`CheckpointError` naming both otherwise.

    A checkpoint written when the optimizer was one Adam group over every parameter
    has a single unnamed group; loading it would put the backbone's moments on the prompt
    and quantizer parameters, or fail inside PyTorch with no word about the checkpoint.
    """

    def layout(groups: list[dict[str, Any]]) -> list[tuple[Any, int]]:
        return [(group.get("name"), len(group["params"])) for group in groups]

    found, expected = layout(saved.get("param_groups", [])), layout(optimizer.param_groups)
    if found != expected:

        def spell(groups: list[tuple[Any, int]]) -> str:
            return ", ".join(f"{name or 'unnamed'} ({n} tensors)" for name, n in groups)

        raise CheckpointError(
            f"checkpoint {where} holds optimizer state for the parameter groups "
            f"[{spell(found)}], but this run's optimizer has [{spell(expected)}]. "
            + (
                "It was written before the optimizer split its parameters into backbone, "
                "prompt and quantizer groups; "
                if len(found) == 1 and found[0][0] is None
                else ""
            )
            + "resume it with the version that wrote it, or start a new run without --resume."
        )
    optimizer.load_state_dict(saved)


# ---------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def checkpoint_name(epoch: int) -> str:
    """Directory name of the checkpoint taken after ``epoch`` epochs (sorts by epoch)."""
    return f"{CHECKPOINT_PREFIX}{epoch:06d}"


def save_checkpoint(state: TrainingState, directory: str | Path) -> Path:
    """Write ``state`` as a checkpoint directory at ``directory``, atomically.

    The files go to ``<parent>/.tmp-<name>-<random>`` first and the directory is renamed to
    ``directory`` after every file is flushed to disk. An existing ``directory`` is replaced.

    Returns:
        ``directory`` as a :class:`~pathlib.Path`.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        opt_tensors, opt_meta = _flatten_optimizer(state.optimizer)
        tensors = {f"model/{k}": v for k, v in state.model.items()} | opt_tensors
        tensors |= {f"best/{k}": v for k, v in state.best_model.items()}
        sink = pa.BufferOutputStream()
        table = _tensor_table(tensors)
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        _write_synced(tmp / TENSORS_FILE, sink.getvalue().to_pybytes())
        meta = {
            "format_version": FORMAT_VERSION,
            "config": state.config,
            "epoch": state.epoch,
            "step": state.step,
            "dataset": state.dataset,
            "architecture": architecture(state.config, state.dataset),
            "optimizer": opt_meta,
            "rng": state.rng,
            "extra": state.extra,
        }
        _write_synced(tmp / STATE_FILE, json.dumps(meta).encode())
        manifest = {
            "format_version": FORMAT_VERSION,
            "files": {name: checksum_entry(tmp / name) for name in (TENSORS_FILE, STATE_FILE)},
        }
        _write_synced(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1).encode())
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise CheckpointError(
                f"no space left on the device holding {target.parent} while writing checkpoint "
                f"{target.name}; nothing of it was kept (earlier checkpoints are intact). Free "
                "space there or set dist.storage_path elsewhere, then resume from the last one."
            ) from exc
        raise
    return target


def verify_checkpoint(directory: str | Path) -> None:
    """Check that ``directory`` is a whole checkpoint whose files match their digests."""
    path = Path(directory)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a directory.")
    manifest_path = path / MANIFEST_FILE
    try:
        manifest = read_manifest(manifest_path)
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {path} has no {MANIFEST_FILE}: it was not completely written. "
            "Use an earlier checkpoint (latest_good_checkpoint picks one)."
        ) from None
    except (ValueError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint file {manifest_path} is damaged ({exc}); use an earlier checkpoint."
        ) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {manifest.get('format_version')!r}; this "
            f"version of lorap-dist reads version {FORMAT_VERSION}."
        )
    mismatch = mismatched_file(path, files)
    if mismatch is not None:
        file, problem = mismatch
        raise CheckpointError(f"checkpoint file {file} is {problem}. Use an earlier checkpoint.")


def load_checkpoint(
    directory: str | Path,
    *,
    expected_architecture: dict[str, Any] | None = None,
) -> TrainingState:
    """Read and verify a checkpoint directory.

    Args:
        directory: a directory written by :func:`save_checkpoint`.
        expected_architecture: :func:`architecture` of the run that will load it; every
            field must match.

    Raises:
        CheckpointError: a file is missing, truncated or corrupt, or the architecture differs.
    """
    path = Path(directory)
    verify_checkpoint(path)
    meta = json.loads((path / STATE_FILE).read_text())
    if expected_architecture is not None:
        check_architecture(meta["architecture"], expected_architecture, path)
    with pa.memory_map(str(path / TENSORS_FILE)) as source:
        tensors = _table_tensors(pa.ipc.open_file(source).read_all())
    model, best = ({k.removeprefix(p): v for k, v in tensors.items() if k.startswith(p)}
                   for p in ("model/", "best/"))  # fmt: skip
    return TrainingState(
        model=model,
        optimizer=_unflatten_optimizer(meta["optimizer"], tensors),
        config=meta["config"],
        epoch=meta["epoch"],
        step=meta["step"],
        rng=meta["rng"],
        dataset=meta["dataset"],
        extra=meta["extra"],
        best_model=best,
    )


def latest_good_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint under ``run_dir`` (searched recursively) that verifies.

    Checkpoints are ordered by epoch (their directory name). A damaged newer one is
    skipped with a :class:`UserWarning` naming the file; ``None`` when none is usable.
    """
    root = Path(run_dir)
    if not root.is_dir():
        return None
    candidates = sorted(
        (p for p in root.rglob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()),
        key=lambda p: (p.name, str(p)),
        reverse=True,
    )
    for candidate in candidates:
        try:
            verify_checkpoint(candidate)
        except CheckpointError as exc:
            warnings.warn(
                f"skipping damaged checkpoint: {exc} Falling back to the previous one.",
                stacklevel=2,
            )
            continue
        return candidate
    return None
