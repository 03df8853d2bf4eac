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

from ..errors import BankError, ConfigError
from .core import REGISTRY, Batch, Context, FeatureDomain, Op
from .policy import OPS, AugmentResult, Policy
from .presets import SPECAUGMENT, preset, specaugment
from .tta import tta_aggregate, tta_views
from .spec import (BandLimit, CutOut, FeatureNoise, FrameDropDup, FreqMask, FreqShift, FreqWarp, Gain, Mixup,
                   Overlay, RandomEQ, TimeMask, TimeStretch, TimeWarp, Vtlp)
from .wave import (Babble, BackgroundNoise, Distortion, Filter, Noise, Reverb, RIRBank, Speed, Tempo, WaveBatch,
                   WaveGain, WaveOp)

__all__ = ["Policy", "preset", "specaugment", "AugmentResult", "build_policy", "tta_views", "tta_aggregate",
           "Op", "Batch", "Context", "OPS", "SPECAUGMENT", "FreqMask", "TimeMask", "CutOut", "TimeWarp",
           "FreqShift", "FreqWarp", "TimeStretch", "FrameDropDup", "Gain", "RandomEQ", "BandLimit",
           "FeatureNoise", "Mixup", "Overlay", "Vtlp", "WaveOp", "WaveBatch", "WaveGain", "Noise",
           "BackgroundNoise", "Babble", "Reverb", "Speed", "Tempo", "Distortion", "Filter",
           "RIRBank", "BankError", "ConfigError", "FeatureDomain", "REGISTRY"]

# The explicit imports above are for readers and static tools; the loop below is what
# guarantees it: every registered op's class is importable from here by its name with no edit: a new
# family file's ops too (the spec and wave packages import every family file)
for _cls in REGISTRY.values():
    if globals().setdefault(_cls.__name__, _cls) is not _cls:
        raise ImportError(f"op {_cls.name!r}: its class name {_cls.__name__} is taken in specstream.augment "
                          f"by {globals()[_cls.__name__]!r}; rename the class")
    if _cls.__name__ not in __all__:
        __all__.append(_cls.__name__)
del _cls


def build_policy(spec, num_classes: Optional[int] = None, banks=None,
                 domain: Optional[FeatureDomain] = None) -> Policy:
    """A policy from its config spec: None (no augmentation), a preset name, or a dict /
    list for :meth:`Policy.from_dict`. ``banks``: a loader ``source -> AudioBank`` for ops
    that read recordings (noise, babble, reverb); without it they stay unloaded."""
    if spec is None:
        policy = Policy([], num_classes=num_classes)
    elif isinstance(spec, str):
        policy = Policy(preset(spec).ops, num_classes=num_classes)
    else:
        policy = Policy.from_dict(spec, num_classes=num_classes)
    if domain is not None:
        policy.domain = domain
    if banks is not None:
        policy.bind_banks(banks)
    return policy
