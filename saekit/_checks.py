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
