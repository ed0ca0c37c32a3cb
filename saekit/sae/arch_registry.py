"""The architecture registry: which ``SAE`` subclass each ``arch`` name builds. A leaf module (at load time it
imports only ``saekit.sae.config``, for ``ArchParams``, of ``saekit.sae``), so configs, models, files and the built-in
architectures all look names up here without importing one another in a circle. The built-in architectures
(``archs.py``) register on first use.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from saekit._trust import load_plugins, note_registration
from saekit.errors import ConfigError
from saekit.sae.config import ArchParams

if TYPE_CHECKING:
    from saekit.sae.model import SAE

_ARCHS: dict[str, type[SAE]] = {}


def register_arch(name: str, params_cls: type[ArchParams]):
    """Class decorator: make ``SAEConfig(arch=name, **settings)`` build this ``SAE`` subclass.

    ``params_cls`` is a frozen dataclass (a subclass of ``saekit.sae.ArchParams``) holding the
    architecture's own settings and validating them. A name belongs to the class that registered it first;
    the same class (same module and name: a notebook cell run again) may register it again and replaces it,
    any other is refused. A module outside saekit that registers one is a plug-in (see ``saekit._trust`` for
    how background workers find it).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"architecture name {name!r} must be an identifier, e.g. 'gated'")
    if not (isinstance(params_cls, type) and issubclass(params_cls, ArchParams) and dataclasses.is_dataclass(params_cls)):
        raise ConfigError(f"register_arch({name!r}, ...) needs a dataclass subclass of ArchParams; got {params_cls!r}")

    def register(cls):
        from saekit.sae.model import SAE  # loaded: the class being decorated derives from it

        old = _ARCHS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ConfigError(f"an SAE architecture named {name!r} is registered already ({_ARCHS[name].__module__}."
                              f"{_ARCHS[name].__qualname__}); choose another name")
        if not (isinstance(cls, type) and issubclass(cls, SAE)):
            raise ConfigError(f"@register_arch({name!r}) decorates SAE subclasses; got {cls!r}")
        cls.arch, cls.params_cls = name, params_cls
        _ARCHS[name] = cls
        note_registration(cls.__module__)
        return cls

    return register


def _builtins() -> None:
    import saekit.sae.archs  # noqa: F401  registers relu, topk, batchtopk, jumprelu, matryoshka_batchtopk


def arch_class(name: str) -> type[SAE]:
    """The class registered as ``name`` (the built-in ones, then plug-ins, are loaded first when it is unknown)."""
    if name not in _ARCHS:
        _builtins()
    if name not in _ARCHS:
        load_plugins()
    if name not in _ARCHS:
        raise ConfigError(f"arch={name!r} is not an SAE architecture; registered: {sorted(_ARCHS)}",
                          suggestion="a plug-in architecture must be imported first (or named in $SAEKIT_PLUGINS)")
    return _ARCHS[name]


def archs() -> list[str]:
    """The names of the registered architectures."""
    _builtins()
    return sorted(_ARCHS)
