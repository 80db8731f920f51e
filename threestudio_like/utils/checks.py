"""Range checks for ``Config.__post_init__``: a value that cannot work stops the run at start-up.

Each helper raises :class:`BadValue`, a ``ValueError`` naming the key, the value and what is
accepted; ``config.parse_structured`` adds where the key sits (``system.renderer.``) and turns it
into the one-line ``ConfigError`` the command line prints.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from threestudio_like.utils.schedules import schedule_value


class BadValue(ValueError):
    """``key=value`` is not accepted; ``accepted`` says what is."""

    def __init__(self, key: str, value: Any, accepted: str) -> None:
        self.key, self.value, self.accepted = key, value, accepted
        super().__init__(f"{key}={shorten(repr(value))} is not accepted; {accepted}")


def shorten(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was (error lines stay one screen line)."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 30]}… ({len(text)} characters)"


def numbers(value: Any) -> list[Any]:
    """The numbers a value holds: itself, or the entries of a list (e.g. per-stage widths)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_at_least(cfg: Any, minimum: float, *keys: str) -> None:
    """Every ``cfg.<key>`` (or each of its entries) is a number ≥ ``minimum``; ``None`` passes."""
    for key in keys:
        value = getattr(cfg, key)
        if value is None:
            continue
        if not all(is_number(v) and v >= minimum for v in numbers(value)):  # also refuses NaN
            raise BadValue(key, value, f"use a number >= {minimum:g}")


def check_above(cfg: Any, minimum: float, *keys: str) -> None:
    """Every ``cfg.<key>`` is a number strictly above ``minimum``."""
    for key in keys:
        value = getattr(cfg, key)
        if not all(is_number(v) and v > minimum for v in numbers(value)):
            raise BadValue(key, value, f"use a number > {minimum:g}")


def check_between(cfg: Any, low: float, high: float, *keys: str) -> None:
    """Every ``cfg.<key>`` (or each entry) lies in the closed interval [low, high]."""
    for key in keys:
        value = getattr(cfg, key)
        if not all(is_number(v) and low <= v <= high for v in numbers(value)):
            raise BadValue(key, value, f"use a number in [{low:g}, {high:g}]")


# Adam divides the rate by 1 − β₁ᵗ (0.1 at the first step): far below float32's overflow, far above
# any rate that trains anything
MAX_LEARNING_RATE = 1e6


def check_learning_rates(cfg: Any, *keys: str) -> None:
    """Learning rates in [0, MAX_LEARNING_RATE] (a larger one overflows inside the optimizer)."""
    check_between(cfg, 0.0, MAX_LEARNING_RATE, *keys)


def check_finite(cfg: Any, *keys: str) -> None:
    for key in keys:
        value = getattr(cfg, key)
        if not all(is_number(v) and math.isfinite(v) for v in numbers(value)):
            raise BadValue(key, value, "use a finite number")


def check_length(cfg: Any, length: int, *keys: str) -> None:
    for key in keys:
        value = getattr(cfg, key)
        if len(value) != length:
            raise BadValue(key, list(value), f"give {length} numbers")


def schedule_points(spec: Any) -> list[float]:
    """The values a schedule takes at its ends (a linear schedule lies between them)."""
    if spec is None:
        return []
    return [spec] if is_number(spec) else [spec[1], spec[2]]


def check_schedule_between(cfg: Any, low: float, high: float, *keys: str) -> None:
    """A number or ``[start_step, v0, v1, end_step]`` schedule whose values lie in [low, high]."""
    for key in keys:
        spec = getattr(cfg, key)
        if not all(low <= v <= high for v in schedule_points(spec)):
            raise BadValue(key, spec, f"use values in [{low:g}, {high:g}]")


def breakpoints(*specs: Any) -> Iterable[int]:
    """Steps where any of the schedules changes slope (with 0): two linear schedules are ordered
    everywhere when they are ordered at these."""
    steps = {0}
    for spec in specs:
        if spec is not None and not is_number(spec):
            steps.update({int(spec[0]), int(spec[3])})
    return sorted(steps)


def check_schedules_ordered(cfg: Any, low_key: str, high_key: str) -> None:
    """``cfg.<low_key>`` ≤ ``cfg.<high_key>`` at every step (numbers or schedules)."""
    low, high = getattr(cfg, low_key), getattr(cfg, high_key)
    for step in breakpoints(low, high):
        if schedule_value(low, step) > schedule_value(high, step) + 1e-12:
            raise BadValue(
                low_key, low,
                f"it must not exceed {high_key}={high!r} (at step {step}: {schedule_value(low, step):g} > {schedule_value(high, step):g})",
            )


def check_file_name(cfg: Any, key: str, allow_empty: bool = False) -> None:
    """``cfg.<key>`` is one folder name: no path separator, not ``.``/``..`` (it cannot leave its parent)."""
    value = getattr(cfg, key)
    if value == "" and allow_empty:
        return
    if not isinstance(value, str) or value.strip() in ("", ".", "..") or any(c in value for c in "/\\\0"):
        raise BadValue(key, value, "use a plain folder name (no '/', '\\', '..'), e.g. my-run")
