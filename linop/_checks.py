"""Checks on scalar arguments shared by every public entry point: each raises a ``ValueError``
that names the argument and says what it must be."""

from __future__ import annotations

import math
import operator
from typing import Any

__all__ = ["finite_number", "integer", "non_negative", "positive_int", "seed"]


def integer(name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int (Python, numpy and torch integers; not bools, floats or strings) of at
    least ``minimum``, or a ``ValueError``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        result = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and result < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")
    return result


def positive_int(name: str, value: Any, allow_none: bool = True) -> None:
    """A positive integer (or None when allowed), or a ``ValueError`` naming the option."""
    if value is None and allow_none:
        return
    try:
        integer(name, value, 1)
    except ValueError:
        kind = "a positive integer" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {kind}, got {value!r}") from None


def finite_number(name: str, value: Any) -> float:
    """``value`` as a finite float, or a ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def non_negative(name: str, value: Any) -> None:
    """A finite number ``≥ 0``, or a ``ValueError`` naming the option."""
    if finite_number(name, value) < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")


def seed(value: Any, bits: int = 63, name: str = "seed") -> int:
    """A seed in ``[0, 2^bits)`` (``torch.Generator.manual_seed`` takes 64-bit seeds; hashes may
    key on fewer bits, where a larger or negative seed would repeat a smaller one)."""
    result = integer(name, value)
    if not 0 <= result < 2**bits:
        raise ValueError(f"{name} must be an integer in [0, 2**{bits}), got {value!r}")
    return result
