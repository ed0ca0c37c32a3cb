"""Job kinds: functions ``(ctx, spec) -> result`` registered by name by the layer that owns them.

The registry row of a job stores the module that registers its kind (its *entry*), so a worker imports
only that module, and ``saekit.jobs`` never imports a higher layer.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from saekit.errors import ConfigError


@dataclass(frozen=True)
class JobKind:
    name: str
    fn: Callable[..., Any]
    entry: str  # the module that registers the kind
    entry_path: str | None  # the sys.path folder that module is found under
    validate: Callable[[dict], dict] | None = None  # normalise a spec; raise ConfigError on bad input
    load_result: Callable[[Any, Any], Any] | None = None  # (workspace, result JSON) -> user object
    outputs: Callable[[Any, dict], list] | None = None  # (workspace, job row) -> paths that job.delete() removes
    volatile: tuple[str, ...] = ()  # spec fields that do not change the result (left out of the key)


_KINDS: dict[str, JobKind] = {}


def _module_root(module_name: str) -> str | None:
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    depth = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
    return str(path.parents[depth])


def job_kind(name: str, *, validate=None, load_result=None, outputs=None, volatile: tuple[str, ...] = ()):
    """Decorator registering ``fn(ctx, spec) -> result`` (JSON-able) as the job kind ``name``."""

    def register(fn):
        module = fn.__module__
        _KINDS[name] = JobKind(
            name=name, fn=fn, entry=module, entry_path=_module_root(module), validate=validate,
            load_result=load_result, outputs=outputs, volatile=tuple(volatile),
        )
        return fn

    return register


def get_kind(name: str, entry: str | None = None, entry_path: str | None = None) -> JobKind:
    """The kind registered as ``name``, importing ``entry`` (the module that registers it) when needed."""
    if name not in _KINDS and entry and entry != "__main__":
        try:
            importlib.import_module(entry)
        except ModuleNotFoundError:
            if not entry_path or entry_path in sys.path:
                raise
            sys.path.insert(0, entry_path)
            importlib.import_module(entry)
    if name not in _KINDS:
        known = ", ".join(sorted(_KINDS)) or "none"
        hint = (
            "it was defined in __main__ (a notebook or script), which another process cannot import; "
            "define it in a module"
            if entry == "__main__"
            else f"import the module that registers it{f' ({entry})' if entry else ''}"
        )
        raise ConfigError(f"unknown job kind {name!r} (registered here: {known}); {hint}")
    return _KINDS[name]


def kinds() -> list[str]:
    return sorted(_KINDS)
