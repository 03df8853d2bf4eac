"""Spectrogram-domain ops, one family per file (each op registers itself by subclassing)."""
from ..core import import_families
from .filterbank import Vtlp
from .level import BandLimit, Gain, RandomEQ
from .masks import CutOut, FreqMask, MaskOp, TimeMask, apply_masks
from .mixing import Mixup, Overlay
from .noise import FeatureNoise
from .warps import FrameDropDup, FreqShift, FreqWarp, TimeStretch, TimeWarp

__all__ = ["Vtlp", "BandLimit", "Gain", "RandomEQ", "CutOut", "FreqMask", "MaskOp", "TimeMask", "apply_masks",
           "Mixup", "Overlay", "FeatureNoise", "FrameDropDup", "FreqShift", "FreqWarp", "TimeStretch", "TimeWarp"]


import_families(__name__, __path__)  # a new family file registers its ops with no edit here
