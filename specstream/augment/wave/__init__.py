"""Waveform-domain ops, one family per file (each op registers itself by subclassing)."""
from ...functional.dsp import coloured_noise, fft_convolve, filtfilt, mix_at_snr, power  # noqa: F401
from ..core import WaveBatch, import_families
from .base import BankLoader, BankOp, WaveOp, bank_segments
from .filters import Filter
from .level import Distortion, WaveGain
from .noise import COLOURS, BackgroundNoise, Babble, Noise
from .room import RIRBank, Reverb
from .time import Speed, Tempo

__all__ = ["WaveBatch", "BankLoader", "BankOp", "WaveOp", "bank_segments", "Filter", "Distortion", "WaveGain",
           "COLOURS", "BackgroundNoise", "Babble", "Noise", "RIRBank", "Reverb", "Speed", "Tempo"]


import_families(__name__, __path__)

# compatibility: name -> class of the waveform ops (specstream.augment.REGISTRY holds every op)
WAVE_OPS = {name: cls for name, cls in __import__("specstream.augment.core", fromlist=["REGISTRY"]).REGISTRY.items()
            if cls.domain == "wave"}  # a new family file registers its ops with no edit here
