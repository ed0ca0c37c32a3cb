"""What a higher layer lends a lower one, found by name: the widget that shows a job or a feature, steering with
a feature. The top of the package (``saekit/__init__.py``) says which module provides each name; a lower layer
calls ``provided(name)`` and never names a module above it (``tests/test_layers.py`` checks string imports too).
A plug-in can provide a name of its own the same way."""

from __future__ import annotations

import importlib
from typing import Any

from saekit.errors import ConfigError

_PROVIDERS: dict[str, str] = {}  # name -> "module:attribute"


def provide(name: str, target: str) -> None:
    """``target`` ("package.module:attribute") provides ``name`` (imported when first asked for)."""
    if ":" not in target:
        raise ConfigError(f"provider {target!r} of {name!r} must be 'module:attribute'")
    _PROVIDERS[name] = target


def provided(name: str) -> Any:
    """The object that provides ``name`` (its module imported now, once)."""
    target = _PROVIDERS.get(name)
    if target is None:
        raise ConfigError(f"nothing provides {name!r} (known: {sorted(_PROVIDERS)})")
    module, attribute = target.split(":", 1)
    return getattr(importlib.import_module(module), attribute)
