"""The checks every config class uses, and the error they raise: a leaf module (it imports
nothing of this package), so the quantization schemes can validate their own configs
without importing the experiment config that lists them."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what is allowed."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)


def check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    check(value in allowed, f"{name}={value!r} is not allowed; choose one of {list(allowed)}.")


def is_int(value: object) -> bool:
    """An ``int`` that is not a ``bool`` (YAML's ``true`` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_bits(name: str, bits: int) -> None:
    check(
        is_int(bits) and 2 <= bits <= 8,
        f"{name}={bits!r} is not a supported bit width; use an integer from 2 to 8.",
    )
