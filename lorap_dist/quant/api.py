"""One entry point applies a quantization scheme to a model: ``quantize_(model, config)``.

Schemes register themselves, under the name configs use (``quant.scheme``) and with their
config class, by decorating the handler that builds their quantizers with
:func:`register_scheme`; this registry is the only list of schemes. A handler is called once
per quantization point and returns the :class:`~lorap_dist.quant.base.Quantizer` for it::

    @register_scheme("my_scheme", MySchemeConfig)
    def _build(config, module, point, role, context) -> Quantizer: ...

``context`` is a :class:`QuantizeContext` with facts about the whole model and graph a scheme
may need (the number of nodes, for per-node parameters), and a dict where a handler can keep
state shared across points of one ``quantize_`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lorap_dist.quant.base import Quantizer, quantizable_modules
from lorap_dist.validation import ConfigError

Handler = Callable[[Any, nn.Module, str, str, "QuantizeContext"], Quantizer]


@dataclass(frozen=True)
class Scheme:
    """A registered scheme: its name in configs, its config class and its handler."""

    name: str
    config_type: type
    handler: Handler


_SCHEMES: dict[str, Scheme] = {}


@dataclass
class QuantizeContext:
    """What a scheme handler may know beyond one point.

    Args:
        model: the model being quantized.
        num_nodes: number of nodes of the full graph (schemes with per-node parameters; 0
            for graph-level models, whose nodes are never the same across graphs).
        shared: scratch space shared by the handler calls of one ``quantize_``.
    """

    model: nn.Module
    num_nodes: int | None = None
    shared: dict[str, Any] = field(default_factory=dict)


def register_scheme(name: str, config_type: type) -> Callable[[Handler], Handler]:
    """Register the decorated handler as scheme ``name`` with config class ``config_type``."""

    def decorate(handler: Handler) -> Handler:
        known = _SCHEMES.get(name)
        if known is not None and known.config_type is not config_type:
            raise ValueError(
                f"scheme {name!r} is already registered with {known.config_type.__name__}."
            )
        _SCHEMES[name] = Scheme(name, config_type, handler)
        return handler

    return decorate


def registered_schemes() -> tuple[str, ...]:
    """The names of the registered schemes (what ``quant.scheme`` accepts besides ``none``)."""
    _load_schemes()
    return tuple(_SCHEMES)


def scheme_config_type(name: str) -> type:
    """The config class of scheme ``name``; a :class:`ConfigError` listing the known names
    when there is none."""
    _load_schemes()
    if name not in _SCHEMES:
        raise ConfigError(
            f"quant.scheme={name!r} is not known; choose one of {['none', *_SCHEMES]}."
        )
    return _SCHEMES[name].config_type


def _load_schemes() -> None:
    """Import the built-in schemes (importing them registers them). The one import inside
    a function in the package on purpose: the scheme modules import this one to register,
    so it cannot import them at its top."""
    import lorap_dist.quant.schemes  # noqa: F401


def quantize_(model: nn.Module, config: Any, *, num_nodes: int | None = None) -> nn.Module:
    """Replace every quantization point of ``model`` in place with the scheme of ``config``.

    Args:
        model: any module containing quantizable layers (``lorap_dist.nn``).
        config: a registered scheme config, e.g. ``QATConfig(bits=4)``.
        num_nodes: nodes in the full graph; required by schemes with per-node parameters.

    Returns:
        ``model``, for chaining.
    """
    _load_schemes()
    handler = next((s.handler for s in _SCHEMES.values() if type(config) is s.config_type), None)
    if handler is None:
        names = ", ".join(sorted(s.config_type.__name__ for s in _SCHEMES.values()))
        raise TypeError(
            f"quantize_ got a {type(config).__name__}, which is not a quantization scheme "
            f"config; use one of: {names}."
        )
    context = QuantizeContext(model=model, num_nodes=num_nodes)
    for _, module in quantizable_modules(model):
        for point, role in module.QUANT_POINTS.items():
            module.quantizers[point] = handler(config, module, point, role, context)
    finalize = getattr(config, "finalize_model", None)
    if callable(finalize):
        finalize(model, context)
    return model
