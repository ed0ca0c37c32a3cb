"""Specs are JSON; a job's key is the hash of its kind and normalised spec. A kind declares its spec's fields
with a frozen dataclass deriving from ``JobSpec`` (its fields made with ``spec_field``)."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import MISSING, field
from typing import Any, Literal, TypeVar

from saekit.errors import ConfigError


def normalize(value: Any, where: str = "spec") -> Any:
    """Return ``value`` as plain JSON data (tuples become lists), or raise ``ConfigError`` naming where it is not."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} is {value!r}; a job spec holds finite numbers only")
        return float(value)
    if isinstance(value, (list, tuple)):
        return [normalize(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where} has the key {k!r} ({type(k).__name__}); spec keys must be strings")
            out[k] = normalize(v, f"{where}[{k!r}]")
        return out
    raise ConfigError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a job spec cannot hold; "
        "specs are JSON: pass a reference (a path, a model name, a store id) instead of the object"
    )


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def spec_key(kind: str, spec: dict, volatile: tuple[str, ...] = ()) -> str:
    """The idempotency key: a hash of the kind and the spec without its volatile fields."""
    keyed = {k: v for k, v in spec.items() if k not in volatile}
    return hashlib.sha256(canonical_json([kind, keyed]).encode()).hexdigest()[:24]


# -- typed specs ---------------------------------------------------------------------------------------------

def spec_field(default: Any = MISSING, *, volatile: bool = False, omit_none: bool = False, doc: str = "") -> Any:
    """A field of a job kind's spec class. ``volatile``: it changes how the work is done, not its result (left out
    of the job's key); ``omit_none``: left out of the stored spec while None (a field added later keeps the keys of
    the jobs made before it); ``doc``: one line for the reference docs."""
    metadata = {"volatile": volatile, "omit_none": omit_none, "doc": doc}
    return field(default=default, metadata=metadata)


S = TypeVar("S", bound="JobSpec")


class JobSpec:
    """The base of a job kind's spec: a frozen dataclass of JSON values (``job_kind(..., spec=ThatClass)``).

    ``submit(kind, {...})`` builds it from a dict and refuses an unknown, missing or mistyped field there, naming it;
    the worker gets the instance and reads attributes. The spec is stored as its dict (``to_dict``), so old event
    logs and registry rows (plain dicts) rebuild and resume as before."""

    @classmethod
    def from_dict(cls: type[S], data: Any, kind: str = "") -> S:
        """The spec in ``data`` (a dict), checked field by field."""
        name = f"the {kind!r} job's spec" if kind else f"a {cls.__name__}"
        if isinstance(data, cls):  # built in code: its values are checked all the same
            data = {f.name: getattr(data, f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if not isinstance(data, dict):
            raise ConfigError(f"{name} is a {type(data).__name__}; give a dict or a {cls.__name__}")
        fields_ = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = [k for k in data if k not in fields_]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), list(fields_), n=1)
            raise ConfigError(f"{name} has no field {unknown[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                              suggestion=f"its fields are {', '.join(fields_)}")
        missing = [f for f, spec in fields_.items() if f not in data and spec.default is MISSING
                   and spec.default_factory is MISSING]
        if missing:
            raise ConfigError(f"{name} lacks the field {missing[0]!r}", suggestion=f"its fields are {', '.join(fields_)}")
        hints = typing.get_type_hints(cls)
        for key, value in data.items():
            if not _matches(value, hints[key]):
                raise ConfigError(f"{name} has {key}={value!r} ({type(value).__name__}), which is not "
                                  f"{_describe(hints[key])}")
        return cls(**data)

    def to_dict(self) -> dict:
        """The spec as stored: plain JSON, without the ``omit_none`` fields that are None."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)  # type: ignore[arg-type]
                if not (f.metadata.get("omit_none") and getattr(self, f.name) is None)}

    @classmethod
    def volatile(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("volatile"))  # type: ignore[arg-type]

    @classmethod
    def reference(cls) -> str:
        """The fields as a Markdown table (field, type, default, what it is), for the reference docs."""
        hints = typing.get_type_hints(cls)
        lines = ["| field | type | default | |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            default = "required" if f.default is MISSING else f"`{f.default!r}`"
            note = f.metadata.get("doc", "") + (" (volatile: not in the key)" if f.metadata.get("volatile") else "") \
                + (" (omitted while None)" if f.metadata.get("omit_none") else "")
            note = note.strip().replace("``", "`")
            lines.append(f"| `{f.name}` | {_describe(hints[f.name])} | {default} | {note} |")
        return "\n".join(lines)


def _matches(value: Any, hint: Any) -> bool:
    """Whether the JSON value ``value`` has the type ``hint`` (Any, str, int, float, bool, dict, list, None,
    unions, Literal, list[T], dict[str, T])."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is None or hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict) and (not args or all(_matches(v, args[1]) for v in value.values()))
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    if hint is Any:
        return "any JSON value"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if hint is None or hint is type(None):
        return "None"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_describe(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint))
