"""Argument checks shared by every layer: errors that name `Owner.argument`, the value and,
where one exists, the fix. The bottom of the package: it imports nothing of lrresearch."""

from __future__ import annotations

import math


def check_positive(owner: str, **values: float) -> None:
    """Raises ValueError naming `owner.arg` unless every value is a finite number > 0."""
    for name, value in values.items():
        check_number(owner, name, value)
        if not value > 0:
            raise ValueError(f"{owner}.{name} must be > 0, got {value!r}")


def check_interval(owner: str, name: str, value: object, interval: str, fix: str) -> None:
    """Raises ValueError naming `owner.name` unless `value` lies in `interval`, written
    as in maths: "(0, 1)", "(0, 1]", "[0, 1)"."""
    check_number(owner, name, value)
    low, high = (float(bound) for bound in interval[1:-1].split(","))
    above = low <= value if interval[0] == "[" else low < value
    below = value <= high if interval[-1] == "]" else value < high
    if not (above and below):
        raise ValueError(f"{owner}.{name} must be in {interval}, got {value!r}; {fix}")


def check_nonnegative(owner: str, **values: object) -> None:
    """Raises ValueError naming `owner.arg` unless every value is a finite number >= 0."""
    for name, value in values.items():
        check_number(owner, name, value)
        if value < 0:
            raise ValueError(f"{owner}.{name} must be >= 0, got {value!r}")


def check_number(owner: str, name: str, value: object) -> None:
    """Raises ValueError naming `owner.name` unless `value` is a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}")


def check_int(owner: str, name: str, value: object, minimum: int) -> None:
    """Raises ValueError naming `owner.name` unless `value` is an int >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name} must be an int >= {minimum}, got {value!r}")


def check_bool(owner: str, name: str, value: object) -> None:
    """Raises ValueError naming `owner.name` unless `value` is True or False."""
    if not isinstance(value, bool):
        raise ValueError(f"{owner}.{name} must be True or False, got {value!r}")
