"""One registry of backbones, built by name: ``create_backbone("conv4", 1, image_size=28)``.

Each architecture module registers a factory with the :func:`register_backbone` decorator (timm
style). A factory takes ``in_channels``, ``image_size`` and its own keyword options (e.g.
``granularity`` for ResNets) and returns a :class:`~ptx_utils.models.base.Backbone`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ptx_utils.models.base import Backbone

#: ``factory(in_channels=..., image_size=..., **options) -> Backbone``.
BackboneFactory = Callable[..., Backbone]

_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: register ``factory`` under ``name`` (a name can be registered once)."""

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered; pick another name")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return sorted(_REGISTRY)


def create_backbone(
    name: str, in_channels: int = 3, image_size: int = 84, **kwargs: Any
) -> Backbone:
    """Build a registered backbone.

    Args:
        name: registry name (see :func:`list_backbones`).
        in_channels: channels of the input images.
        image_size: side length S of the square inputs.
        **kwargs: architecture options, e.g. ``granularity="conv"`` for ResNets.

    Returns:
        A :class:`Backbone` mapping float (B, in_channels, S, S) to (B, out_dim), in train mode.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}"
        ) from None
    _check_options(name, factory, kwargs)
    return factory(in_channels=in_channels, image_size=image_size, **kwargs)


def _check_options(name: str, factory: BackboneFactory, kwargs: dict[str, Any]) -> None:
    """A ValueError naming the accepted options when ``kwargs`` has one ``factory`` lacks."""
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    options = [p for p in params if p not in ("in_channels", "image_size")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ValueError(
            f"backbone {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
            f"{', '.join(options) or 'none'} (besides in_channels and image_size)"
        )
