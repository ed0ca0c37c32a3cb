"""Specs are JSON; a job's key is the hash of its kind and normalised spec."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

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
