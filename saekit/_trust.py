"""The trust boundary: what code saekit runs comes from its caller, never from a workspace.

Code that extends saekit (job kinds, SAE architectures):

A job row names its kind, and an SAE config its architecture; the code behind a name is imported only
from places the person running saekit chose:

- the modules registered under the ``saekit.plugins`` entry-point group by installed packages;
- the modules listed in ``$SAEKIT_PLUGINS`` (comma-separated; the folder of each must be importable,
  e.g. through ``$PYTHONPATH``);
- in the caller's own process, whatever module it imported that registered a kind or an architecture:
  the workers it starts are told about those modules (``worker_environment``), the same way.

A workspace someone else wrote can therefore name kinds, but it never makes saekit import anything.

A model's own code (``trust_remote_code``) runs only for the models this process loaded with
``trust_remote_code=True`` (``grant_remote_code``), and in the workers it starts (through
``$SAEKIT_TRUST_REMOTE_CODE``), never because a stored job spec says so.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("saekit")

ENV = "SAEKIT_PLUGINS"
REMOTE_CODE_ENV = "SAEKIT_TRUST_REMOTE_CODE"
ENTRY_POINT_GROUP = "saekit.plugins"

_loaded = False
_registered_here: dict[str, str | None] = {}  # module -> the sys.path folder it was found under
_remote_code: set[str] = set()  # models this process loaded with trust_remote_code=True


def load_plugins() -> None:
    """Import the plug-in modules of installed packages and of ``$SAEKIT_PLUGINS`` (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    names = [n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()]
    try:
        from importlib.metadata import entry_points

        names += [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINT_GROUP)]
    except Exception:  # noqa: BLE001 - broken package metadata must not stop saekit
        log.debug("reading %s entry points failed", ENTRY_POINT_GROUP, exc_info=True)
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - one broken plug-in must not hide the others
            log.warning("saekit plug-in %r could not be imported: %s: %s", name, type(exc).__name__, exc)


def reload_plugins() -> None:
    """Forget that plug-ins were loaded (after ``$SAEKIT_PLUGINS`` changed), then load them."""
    global _loaded
    _loaded = False
    load_plugins()


def note_registration(module_name: str) -> None:
    """Remember that ``module_name`` (imported by this process) registered a kind or an architecture."""
    if module_name == "__main__" or module_name.split(".")[0] == "saekit":
        return
    _registered_here[module_name] = _module_root(module_name)


def _module_root(module_name: str) -> str | None:
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    depth = module_name.count(".") + (1 if path.name == "__init__.py" else 0)
    return str(path.parents[depth])


def grant_remote_code(source: str) -> None:
    """The caller loaded model ``source`` with ``trust_remote_code=True``: its workers may too."""
    _remote_code.add(str(source))


def remote_code_allowed(source: str) -> bool:
    """Whether this process's caller allowed model ``source`` to run its own code."""
    allowed = _remote_code | {s for s in os.environ.get(REMOTE_CODE_ENV, "").split(os.pathsep) if s}
    return str(source) in allowed


def worker_environment(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a worker this process starts: the plug-in modules it registered added to
    ``$SAEKIT_PLUGINS`` and their folders to ``$PYTHONPATH``; the models it trusts in
    ``$SAEKIT_TRUST_REMOTE_CODE``."""
    env = dict(env)
    if _remote_code:
        granted = [s for s in env.get(REMOTE_CODE_ENV, "").split(os.pathsep) if s]
        env[REMOTE_CODE_ENV] = os.pathsep.join(dict.fromkeys([*granted, *sorted(_remote_code)]))
    if not _registered_here:
        return env
    plugins = [n for n in env.get(ENV, "").split(",") if n]
    env[ENV] = ",".join(dict.fromkeys([*plugins, *_registered_here]))
    roots = [r for r in _registered_here.values() if r]
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([*roots, *paths]))
    return env
