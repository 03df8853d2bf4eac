"""Validation of an op's settings: one shared helper per kind of value, each raising a
:class:`~specstream.errors.ConfigError` that names the op, the key, the value and what is
allowed (at construction, not inside a worker)."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

from ..errors import ConfigError


def check(op: str, key: str, value, ok: bool, allowed: str):
    """``value`` if ``ok``, else a ConfigError naming op, key, value and what is allowed."""
    if not ok:
        raise ConfigError(f"{op}.{key}: {value!r} is not allowed; expected {allowed}")
    return value


def check_range(op: str, key: str, value, lo: float = -math.inf, hi: float = math.inf,
                lo_open: bool = False, hi_open: bool = False) -> Tuple[float, float]:
    """A [min, max] pair (a single number means [x, x]) within [lo, hi] (open ends where
    asked), min <= max; else a ConfigError naming op, key, value and the allowed range."""
    single = _num(value) if not isinstance(value, (list, tuple)) else None
    pair = (single, single) if single is not None else value
    good, a, b = False, 0.0, 0.0
    if isinstance(pair, (list, tuple)) and len(pair) == 2:
        na, nb = _num(pair[0]), _num(pair[1])
        if na is not None and nb is not None:
            good, a, b = True, float(na), float(nb)
    inside = (a > lo if lo_open else a >= lo) and (b < hi if hi_open else b <= hi)
    allowed = (f"a number or [min, max] with {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
               f" and min <= max")
    check(op, key, list(value) if isinstance(value, tuple) else value, good and inside and a <= b, allowed)
    return a, b


def _num(value):
    """A number, or a string YAML left unparsed ("1e-6": YAML 1.1 wants a dot), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def check_number(op: str, key: str, value, lo: float = -math.inf, hi: float = math.inf,
                 lo_open: bool = False, hi_open: bool = False, integer: bool = False):
    raw, value = value, _num(value)
    ok = value is not None and math.isfinite(float(value))
    ok = ok and (not integer or float(value) == int(value))
    if ok:
        v = float(value)
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    kind = "an integer" if integer else "a number"
    # a non-finite value is never allowed: an infinite bound is an open one
    allowed = f"{kind} in {'(' if lo_open or math.isinf(lo) else '['}{lo:g}, {hi:g}" \
        f"{')' if hi_open or math.isinf(hi) else ']'}"
    check(op, key, raw, ok, allowed)
    return int(value) if integer else float(value)


def check_choice(op: str, key: str, value, choices: Sequence):
    return check(op, key, value, value in choices, "one of " + ", ".join(map(str, choices)))
