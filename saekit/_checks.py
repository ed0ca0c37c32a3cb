"""Argument checks shared by every public function: a ``bool`` is never a number here, NaN and
infinity are never valid settings, and each error names the value and what was expected."""

from __future__ import annotations

import math
from typing import Any, Sequence

from saekit.errors import ConfigError


def is_int(value: Any) -> bool:
    """An integer that is not a bool (``True`` is an ``int`` in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def as_int(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (an int or a NumPy integer, never a bool), else None."""
    if is_int(value):
        return value
    if type(value).__module__ == "numpy" and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0 \
            and value.dtype.kind in "iu":
        return int(value)
    return None


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is one finite number (an int, a float, a NumPy scalar or a one-element
    tensor or array, never a bool), else None."""
    if is_number(value):
        return float(value)
    if hasattr(value, "dtype") and getattr(value, "ndim", None) == 0 or (hasattr(value, "numel") and value.numel() == 1):
        kind = getattr(getattr(value, "dtype", None), "kind", None)
        if kind == "b" or str(getattr(value, "dtype", "")) == "torch.bool":
            return None
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):
            return None
        return number if math.isfinite(number) else None
    return None


def check_positive_int(name: str, value: Any, *, allow_none: bool = False, allow_zero: bool = False,
                       example: str | None = None) -> None:
    if value is None and allow_none:
        return
    low = 0 if allow_zero else 1
    if not is_int(value) or value < low:
        what = "an integer >= 0" if allow_zero else "a positive integer"
        raise ConfigError(f"{name}={value!r} must be {what}{' or None' if allow_none else ''}"
                          + (f", e.g. {example}" if example else ""))


def check_finite(name: str, value: Any) -> None:
    if not is_number(value):
        raise ConfigError(f"{name}={value!r} must be a finite number")


def check_non_negative(name: str, value: Any) -> None:
    if not is_number(value) or value < 0:
        raise ConfigError(f"{name}={value!r} must be a finite number >= 0")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {list(choices)}")
