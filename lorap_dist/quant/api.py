"""One entry point applies a quantization scheme to a model: ``quantize_(model, config)``.

A scheme's config is a dataclass deriving from :class:`QuantConfig`. Schemes register
themselves, under the name configs use (``quant.scheme``) and with their config class, by
decorating the handler that builds their quantizers with :func:`register_scheme`; this
registry is the only list of schemes. A handler is called once per quantization point and
returns the :class:`~lorap_dist.quant.base.Quantizer` for it::

    @register_scheme("my_scheme", MySchemeConfig)
    def _build(config, module, point, role, context) -> Quantizer: ...

``context`` is a :class:`QuantizeContext` with facts about the whole model and graph a scheme
may need (the number of nodes, for per-node parameters), and a dict where a handler can keep
state shared across points of one ``quantize_`` call.

As in torchao's ``quantize_``, a ``filter_fn(module, fqn)`` picks what to quantize: it is
asked once for each quantizable layer (a module with quantization points that is not part
of another one, e.g. ``convs.0``), and a layer it turns down keeps every point inside it,
its linear weights included, at full precision.

``float_logits=True`` keeps the points that hold the class logits at full precision: the
``output_points`` of the layer a node-level model names as ``model.logits_layer`` (its last
layer), that is its ``output`` point, and in a layer that transforms before it aggregates
(GCN, GAT) also its ``aggregate`` and ``prompt`` points, whose values are the logits less
the bias. Nothing integer reads them (the loss and the argmax do), and on an INT4 grid of
16 values classes tie. Graph-level models never quantize their logits (their head's last
linear has no point after it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lorap_dist.quant.base import (
    NODE,
    WEIGHT,
    IdentityQuantizer,
    Quantizer,
    quantizable_modules,
)
from lorap_dist.validation import ConfigError

Handler = Callable[[Any, nn.Module, str, str, "QuantizeContext"], Quantizer]
#: ``filter_fn(module, fqn) -> bool``: quantize this layer (``True``) or keep it FP32.
FilterFn = Callable[[nn.Module, str], bool]


@dataclass
class QuantConfig:
    """Base class of the scheme configs :func:`quantize_` takes.

    A subclass is a dataclass that checks its fields in ``__post_init__`` and is registered
    with its handler by :func:`register_scheme`. It may define
    ``finalize_model(model, context)``, called once after every point is replaced.
    """


@dataclass(frozen=True)
class Scheme:
    """A registered scheme: its name in configs, its config class and its handler."""

    name: str
    config_type: type
    handler: Handler


_SCHEMES: dict[str, Scheme] = {}


def unsupported_role(scheme: str, module: nn.Module, point: str, role: str) -> ConfigError:
    """The error a scheme's handler raises for a quantization point whose role it does not
    quantize (every built-in scheme quantizes the node and weight roles)."""
    return ConfigError(
        f"{type(module).__name__}.QUANT_POINTS[{point!r}] has role {role!r}; the {scheme} "
        f"scheme quantizes the roles {[NODE, WEIGHT]}."
    )


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
        if not (isinstance(config_type, type) and issubclass(config_type, QuantConfig)):
            raise TypeError(
                f"scheme {name!r} registers {getattr(config_type, '__name__', config_type)!r} "
                "as its config, which does not derive from QuantConfig; declare it as "
                "@dataclass class MyConfig(QuantConfig)."
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


def quantize_(
    model: nn.Module,
    config: QuantConfig,
    *,
    filter_fn: FilterFn | None = None,
    num_nodes: int | None = None,
    float_logits: bool = False,
) -> nn.Module:
    """Replace the quantization points of ``model`` in place with the scheme of ``config``.

    Args:
        model: any module containing quantizable layers (``lorap_dist.nn``).
        config: a registered scheme config, e.g. ``QATConfig(bits=4)``.
        filter_fn: called as ``filter_fn(layer, fqn)`` once for each quantizable layer (a
            module with quantization points not inside another one, such as ``convs.1``,
            with ``fqn`` its name in ``model``); where it returns ``False`` the layer and
            every point inside it stay at full precision. ``None`` (default) quantizes all.
            E.g. first and last layers in FP32: ``lambda layer, fqn: fqn not in {"convs.0",
            "convs.2"}``.
        num_nodes: nodes in the full graph; required by schemes with per-node parameters.
        float_logits: leave the points of ``model.logits_layer`` (a node-level model's last
            layer) that hold the logits, its ``output_points``, at full precision; a model
            without ``logits_layer`` has no quantized logits and is quantized as without.

    Returns:
        ``model``, for chaining.
    """
    _load_schemes()
    scheme = _scheme_of(config)
    context = QuantizeContext(model=model, num_nodes=num_nodes)
    logits = getattr(model, "logits_layer", None) if float_logits else None
    logit_points = logits.output_points if logits is not None else ()
    for fqn, layer in quantizable_layers(model):
        if filter_fn is not None and not filter_fn(layer, fqn):
            continue
        for _, module in quantizable_modules(layer):
            for point, role in module.QUANT_POINTS.items():
                if module is logits and point in logit_points:
                    module.quantizers[point] = IdentityQuantizer()
                    continue
                module.quantizers[point] = scheme.handler(config, module, point, role, context)
    finalize = getattr(config, "finalize_model", None)
    if callable(finalize):
        finalize(model, context)
    return model


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(fqn, module)`` of each module with quantization points that is not inside another
    such module (a layer with its linears counts once), in ``named_modules`` order."""
    layers: list[tuple[str, nn.Module]] = []
    for name, module in quantizable_modules(model):
        inside = any(outer == "" or name.startswith(f"{outer}.") for outer, _ in layers)
        if not inside:
            layers.append((name, module))
    return layers


def _scheme_of(config: Any) -> Scheme:
    """The registered scheme of ``config``'s class (or of the nearest registered base)."""
    known = ", ".join(f"{s.name}: {s.config_type.__name__}" for s in _SCHEMES.values())
    if not isinstance(config, QuantConfig):
        raise TypeError(
            f"quantize_ got a {type(config).__name__}, which is not a quantization scheme "
            f"config (a QuantConfig); use one of the registered schemes' configs ({known})."
        )
    by_type = {s.config_type: s for s in _SCHEMES.values()}
    for cls in type(config).__mro__:
        if cls in by_type:
            return by_type[cls]
    raise TypeError(
        f"quantize_ got a {type(config).__name__}, a QuantConfig that no scheme registered; "
        f"register its handler with @register_scheme(name, {type(config).__name__}), or use "
        f"one of the registered schemes' configs ({known})."
    )
