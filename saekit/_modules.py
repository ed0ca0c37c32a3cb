"""Modules whose public name is also a function: ``sk.jobs()`` lists jobs and ``import saekit.jobs``
gives the job package; ``sk.workspace()`` is the current workspace and ``saekit.workspace`` its module.

Python binds ``saekit.jobs`` to the package once it is imported, so a function of the same name would be
shadowed (or shadow it). Instead the module itself is made callable: calling it calls ``fn``.
"""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, fn) -> None:
    """Calling the module ``module_name`` calls ``fn`` (its docstring says so)."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return fn(*args, **kwargs)

    CallableModule.__call__.__doc__ = fn.__doc__
    sys.modules[module_name].__class__ = CallableModule
