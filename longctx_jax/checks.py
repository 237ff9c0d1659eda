"""Config field checks shared by every config section (model, data, train, mesh, ...).

Each check raises one one-line `ValueError` naming the field, its value and what was expected:

    model.num_layers=0: expected a positive integer

`section` is the config section ("model", "data", "train", ...) and `field` the dotted name
inside it ("attention.sparse.top_k"); bools are never accepted as numbers.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from numbers import Integral, Real
from typing import NoReturn


def is_int(value) -> bool:
    """An integer, not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A real number (int or float), not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool)


def invalid(section: str, field: str, value, expected: str) -> ValueError:
    """The error for `section.field=value`, to raise."""
    return ValueError(f"{section}.{field}={value!r}: expected {expected}")


def fail(section: str, field: str, value, expected: str) -> NoReturn:
    raise invalid(section, field, value, expected)


def check_positive_int(section: str, field: str, value) -> int:
    """An integer >= 1 ("a positive integer")."""
    if not is_int(value) or value < 1:
        fail(section, field, value, "a positive integer")
    return value


def check_int(
    section: str, field: str, value, *, minimum: int, below: int | None = None, expected=None
) -> int:
    """An integer >= minimum (and < below if given)."""
    if not is_int(value) or value < minimum or (below is not None and value >= below):
        if expected is None:
            expected = (
                f"an integer >= {minimum}"
                if below is None
                else f"an integer in [{minimum}, {below})"
            )
        fail(section, field, value, expected)
    return value


def check_real(
    section: str,
    field: str,
    value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    finite: bool = True,
    expected: str | None = None,
) -> float:
    """A real number within the bounds given (and finite unless finite=False; NaN never passes).

    The default expectation reads like "a finite number > 0" or "a number in [0, 1)".
    """
    ok = is_real(value) and not math.isnan(value)
    if ok and finite:
        ok = math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if exclusive_maximum else value <= maximum
    if not ok:
        if expected is None:
            expected = "a finite number" if finite else "a number"
            if minimum is not None and maximum is not None:
                low, high = "(" if exclusive_minimum else "[", ")" if exclusive_maximum else "]"
                expected += f" in {low}{minimum}, {maximum}{high}"
            elif minimum is not None:
                expected += f" {'>' if exclusive_minimum else '>='} {minimum}"
            elif maximum is not None:
                expected += f" {'<' if exclusive_maximum else '<='} {maximum}"
        fail(section, field, value, expected)
    return value


def check_bool(section: str, field: str, value) -> bool:
    if not isinstance(value, bool):
        fail(section, field, value, "a bool")
    return value


def check_str(section: str, field: str, value, expected: str = "a string") -> str:
    if not isinstance(value, str):
        fail(section, field, value, expected)
    return value


def check_choice(section: str, field: str, value, choices) -> object:
    """One of `choices` ("one of ('a', 'b')")."""
    if value not in choices:
        fail(section, field, value, f"one of {tuple(choices)}")
    return value


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to `name` (difflib), or None if none is close."""
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=1)
    return matches[0] if matches else None


def unknown_field(name: str, suggestion: str | None, where: str = "config") -> ValueError:
    """ "train.stpes: unknown config field; did you mean train.steps?" """
    hint = (
        f"did you mean {suggestion}?"
        if suggestion
        else "see base_config() in longctx_jax/config.py"
    )
    return ValueError(f"{name}: unknown {where} field; {hint}")
