"""Spectrogram augmentation: pure torch (no Ray, no I/O), batched, per-sample,
lengths-aware, and reproducible by sample key.

    from specstream.augment import preset, Policy
    policy = preset("LD")                       # or Policy.from_dict({...})
    out = policy(features, lengths, keys=keys, targets=targets, seed=0, epoch=0)
    out.features, out.lengths, out.targets, out.params
    again = policy.apply(features, lengths, params=out.params, targets=targets)  # exact replay

The featurize stage calls ``policy(features, lengths, keys=..., key_ids=..., targets=...,
seed=..., epoch=...)``.
"""
from __future__ import annotations

from typing import Optional

from .core import Batch, Context, Op
from .ops import (OPS, BandLimit, CutOut, FeatureNoise, FrameDropDup, FreqMask, FreqShift, FreqWarp,
                  Gain, Mixup, Overlay, RandomEQ, TimeMask, TimeStretch, TimeWarp)
from .policy import SPECAUGMENT, AugmentResult, Policy, preset, specaugment, tta_aggregate, tta_views

__all__ = ["Policy", "preset", "specaugment", "AugmentResult", "build_policy", "tta_views", "tta_aggregate",
           "Op", "Batch", "Context", "OPS", "SPECAUGMENT", "FreqMask", "TimeMask", "CutOut", "TimeWarp",
           "FreqShift", "FreqWarp", "TimeStretch", "FrameDropDup", "Gain", "RandomEQ", "BandLimit",
           "FeatureNoise", "Mixup", "Overlay"]


def build_policy(spec, num_classes: Optional[int] = None) -> Policy:
    """A policy from its config spec: None (no augmentation), a preset name, or a dict /
    list for :meth:`Policy.from_dict`."""
    if spec is None:
        return Policy([], num_classes=num_classes)
    if isinstance(spec, str):
        return Policy(preset(spec).ops, num_classes=num_classes)
    return Policy.from_dict(spec, num_classes=num_classes)
