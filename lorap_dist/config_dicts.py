"""Configs to and from plain dicts and YAML.

:func:`from_dict` builds any config dataclass from a plain dict (recursing into nested
sections) and refuses unknown keys and values of the wrong type with an error that names the
field as users write it in ``--set``; :func:`to_dict` is its inverse, :func:`set_field`
applies one dotted ``--set`` path, and :func:`load_yaml_mapping` reads the mapping at the
top of a YAML file. The dataclasses themselves, with their own checks, are in
:mod:`lorap_dist.config`.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lorap_dist.validation import ConfigError, check, is_int, is_number

T = TypeVar("T")


def load_yaml_mapping(path: Path, what: str, allow_empty: bool = False) -> dict[str, Any] | None:
    """The mapping at the top of the YAML file ``path``; a :class:`ConfigError` naming
    ``what`` and the file when it is missing, not YAML, or not a mapping (an empty file is
    ``None`` when ``allow_empty``)."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from exc
    if (data is not None or not allow_empty) and not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level.")
    return data


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclass fields.

    Unknown keys are an error that lists the known ones, so a typo never silently falls
    back to a default; a value of the wrong type (``epochs: "20"``, ``fanout: 10``) is an
    error naming the field, the value and the type expected, before any work starts.
    """
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"{_field_name(where or cls.__name__)} must be a mapping of field: value, got {data!r}."
        )
    data = dict(data or {})
    where = where or cls.__name__
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    check(
        not unknown,
        f"{where}: unknown field(s) {unknown}; known fields are {sorted(known)}.",
    )
    hints = typing.get_type_hints(cls)  # resolved in the module that defines cls
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        sub = _dataclass_type(hints.get(name, known[name].type))
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{where}.{name}")
        else:
            check_type(f"{where}.{name}", value, hints.get(name, Any))
            if isinstance(value, list) and name in _TUPLE_FIELDS:
                value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


_TUPLE_FIELDS = {"fanout", "candidate_bits"}


def _dataclass_type(annotation: Any) -> type | None:
    """The dataclass a field holds (also inside ``X | None``), or ``None``."""
    candidates = typing.get_args(annotation) or (annotation,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def _field_name(where: str) -> str:
    """``train.epochs`` for ``config.train.epochs`` (the form users write in --set)."""
    return where.removeprefix("config.")


def _type_matches(value: Any, annotation: Any) -> bool:
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_matches(value, arm) for arm in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return is_int(value)
    if annotation is float:
        return is_number(value)
    if annotation is str:
        return isinstance(value, str)
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        return isinstance(value, (list, tuple)) and all(_type_matches(v, item) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, annotation)
    return True


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        described = " or ".join(_describe(a) for a in arms)
        return (
            f"{described} (or null)" if len(arms) < len(typing.get_args(annotation)) else described
        )
    if origin is tuple:
        plural = {int: "integers", float: "numbers", str: "strings"}
        item = typing.get_args(annotation)[0]
        return f"a list of {plural.get(item, _describe(item))}"
    if origin is dict or annotation is dict or dataclasses.is_dataclass(annotation):
        return "a mapping of field: value"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def check_type(where: str, value: Any, annotation: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` has the type ``annotation`` asks for.

    Numbers are not read from strings: YAML's ``"20"`` is a string, and a config that
    quotes a number is more likely a mistake than an intention.
    """
    if _type_matches(value, annotation):
        return
    got = type(value).__name__ if value is not None else "null"
    raise ConfigError(f"{_field_name(where)}={value!r} ({got}) must be {_describe(annotation)}.")


# Fields whose change makes others meaningless: set them first, and let them reset those.
LEADING_FIELDS = ("quant.scheme", "data.source")


def set_field(data: dict[str, Any], path: str, value: Any) -> None:
    """Set dotted ``path`` in the plain config dict ``data`` (creating sections).

    Two fields lead others: switching ``quant.scheme`` keeps only the common ``bits``
    option (the others belong to the old scheme; ``none`` keeps nothing), and switching
    ``data.source`` forgets ``data.name`` and ``data.path`` (they named the old source).
    """
    *sections, last = path.split(".")
    node = data
    for part in sections:
        if node.get(part) is None:  # an absent or empty section, e.g. dist: null
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{path}: {part!r} is a value, not a section.")
    if path == "quant.scheme" and node.get("scheme") != value:
        old = node.get("options") or {}
        keep = value != "none" and isinstance(old, dict) and "bits" in old
        node["options"] = {"bits": old["bits"]} if keep else {}
    if path == "data.source" and node.get("source") != value:
        node["name"] = node["path"] = None
    node[last] = copy.deepcopy(value)


def leading_first(paths: list[str]) -> list[str]:
    """``paths`` with :data:`LEADING_FIELDS` first (stable otherwise)."""
    return sorted(paths, key=lambda path: path not in LEADING_FIELDS)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-dict form of a config (tuples become lists, for YAML and JSON)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)
