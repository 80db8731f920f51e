"""Values that change over training: a constant or ``[start_step, start_value, end_value, end_step]``."""
from __future__ import annotations

from typing import Any, Sequence


def check_schedule(spec: Any, key: str) -> None:
    """Raise ``ValueError`` unless ``spec`` is a number or a 4-item [start_step, v0, v1, end_step]."""
    if spec is None or isinstance(spec, (int, float)):
        return
    if isinstance(spec, Sequence) and len(spec) == 4 and all(isinstance(v, (int, float)) for v in spec):
        if spec[3] < spec[0]:
            raise ValueError(f"{key}={list(spec)!r}: end_step must not come before start_step")
        return
    raise ValueError(f"{key}={spec!r} must be a number or [start_step, start_value, end_value, end_step]")


def schedule_value(spec: Any, step: int) -> Any:
    """The value of a schedule at ``step``: constant, or linear between start and end step."""
    if spec is None or isinstance(spec, (int, float)):
        return spec
    start_step, start_value, end_value, end_step = spec
    if step <= start_step or end_step == start_step:
        return start_value if step <= start_step else end_value
    fraction = min(1.0, (step - start_step) / (end_step - start_step))
    return start_value + fraction * (end_value - start_value)
