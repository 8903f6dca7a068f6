"""One entry point applies a quantization scheme to a model: ``quantize_(model, config)``.

Schemes register a handler for their config type with :func:`register_scheme`. A handler is
called once per quantization point and returns the :class:`~lorap_dist.quant.base.Quantizer`
for it::

    @register_scheme(MySchemeConfig)
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

Handler = Callable[[Any, nn.Module, str, str, "QuantizeContext"], Quantizer]
_HANDLERS: dict[type, Handler] = {}


@dataclass
class QuantizeContext:
    """What a scheme handler may know beyond one point.

    Args:
        model: the model being quantized.
        num_nodes: number of nodes of the full graph (schemes with per-node parameters).
        shared: scratch space shared by the handler calls of one ``quantize_``.
    """

    model: nn.Module
    num_nodes: int | None = None
    shared: dict[str, Any] = field(default_factory=dict)


def register_scheme(config_type: type) -> Callable[[Handler], Handler]:
    """Register ``handler`` as the builder of quantizers for ``config_type``."""

    def decorate(handler: Handler) -> Handler:
        _HANDLERS[config_type] = handler
        return handler

    return decorate


def registered_schemes() -> tuple[type, ...]:
    """The config types :func:`quantize_` accepts."""
    return tuple(_HANDLERS)


def quantize_(model: nn.Module, config: Any, *, num_nodes: int | None = None) -> nn.Module:
    """Replace every quantization point of ``model`` in place with the scheme of ``config``.

    Args:
        model: any module containing quantizable layers (``lorap_dist.nn``).
        config: a registered scheme config, e.g. ``QATConfig(bits=4)``.
        num_nodes: nodes in the full graph; required by schemes with per-node parameters.

    Returns:
        ``model``, for chaining.
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        names = ", ".join(sorted(t.__name__ for t in _HANDLERS)) or "none registered"
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
