"""Named policies: SpecAugment's (Park et al. 2019) and the adaptive large-scale one."""
from __future__ import annotations

from typing import List

from ..errors import ConfigError
from .core import Op
from .policy import Policy
from .spec import FreqMask, TimeMask, TimeWarp

# SpecAugment policies, Park et al. 2019, Table 1: W, F, mF, T, p, mT
SPECAUGMENT = {
    "LB": dict(W=80, F=27, mF=1, T=100, p=1.0, mT=1),
    "LD": dict(W=80, F=27, mF=2, T=100, p=1.0, mT=2),
    "SM": dict(W=40, F=15, mF=2, T=70, p=0.2, mT=2),
    "SS": dict(W=40, F=27, mF=2, T=70, p=0.2, mT=2),
}


def specaugment(W: int, F: int, mF: int, T: int, p: float, mT: int, fill="mean") -> Policy:
    """Time warp, then mF frequency masks of width <= F, then mT time masks of width
    <= min(T, p * length). Masks fill with each sample's own mean (SpecAugment's zero is
    the mean of normalised features; here normalisation comes after augmentation)."""
    ops: List[Op] = []
    if W > 0:
        ops.append(TimeWarp(W=W))
    ops.append(FreqMask(max_width=F, count=mF, fill=fill))
    ops.append(TimeMask(max_width=T, count=mT, max_fraction=p, fill=fill))
    return Policy(ops)


def preset(name: str) -> Policy:
    """Named policies: SpecAugment ``LB``, ``LD``, ``SM``, ``SS`` (Park et al. 2019, Table 1),
    and ``adaptive`` (Park et al. 2020 large-scale: two frequency masks F=27, time masks
    of width <= 0.05 * length, count = min(20, floor(0.04 * length)); no time warp)."""
    key = name.upper() if name.upper() in SPECAUGMENT else name.lower()
    if key in SPECAUGMENT:
        return specaugment(**SPECAUGMENT[key])
    if key == "adaptive":
        return Policy([FreqMask(max_width=27, count=2),
                       TimeMask(width_fraction=0.05, count_fraction=0.04, max_count=20)])
    if key in ("none", "identity"):
        return Policy([])
    raise ConfigError(f"unknown preset {name!r} (known: {', '.join(list(SPECAUGMENT) + ['adaptive', 'none'])})")
