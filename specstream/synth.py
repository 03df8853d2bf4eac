"""A seeded procedural corpus of labelled synthetic sounds (for the demo and tests).

Ten classes that a small CNN on log-mels can tell apart, with per-clip random pitch,
level, duration and noise so that the task is not trivial. Written as FLAC files in a
folder per class (the layout ``specstream make-shards`` reads without a manifest).
"""
from __future__ import annotations

import os
from typing import List

import numpy as np
import soundfile as sf

CLASSES: List[str] = ["tone", "chirp_up", "chirp_down", "am_tone", "white_noise",
                      "brown_noise", "clicks", "square", "harmonics", "fm"]


def synth_clip(cls: str, rng: np.random.Generator, sr: int = 16000, seconds: float = 1.0) -> np.ndarray:
    n = int(sr * seconds)
    t = np.arange(n) / sr
    f0 = rng.uniform(200, 1200)
    if cls == "tone":
        x = np.sin(2 * np.pi * f0 * t)
    elif cls in ("chirp_up", "chirp_down"):
        f1 = f0 * rng.uniform(2.0, 4.0)
        a, b = (f0, f1) if cls == "chirp_up" else (f1, f0)
        phase = 2 * np.pi * (a * t + (b - a) * t ** 2 / (2 * seconds))
        x = np.sin(phase)
    elif cls == "am_tone":
        x = np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 12) * t))
    elif cls == "white_noise":
        x = rng.standard_normal(n) * 0.5
    elif cls == "brown_noise":
        x = np.cumsum(rng.standard_normal(n))
        x = x - np.linspace(x[0], x[-1], n)
        x = x / (np.abs(x).max() + 1e-9)
    elif cls == "clicks":
        x = np.zeros(n)
        period = int(sr / rng.uniform(4, 20))
        x[rng.integers(0, period)::period] = 1.0
        x = np.convolve(x, np.hanning(32), mode="same")
    elif cls == "square":
        x = np.sign(np.sin(2 * np.pi * f0 / 2 * t)) * 0.6
    elif cls == "harmonics":
        x = sum(np.sin(2 * np.pi * f0 / 2 * k * t) / k for k in range(1, 6))
    elif cls == "fm":
        x = np.sin(2 * np.pi * f0 * t + rng.uniform(2, 8) * np.sin(2 * np.pi * rng.uniform(2, 8) * t))
    else:
        raise ValueError(f"unknown class {cls!r}")
    x = x / (np.abs(x).max() + 1e-9) * rng.uniform(0.1, 0.8)
    x = x + rng.standard_normal(n) * rng.uniform(0.001, 0.02)
    return np.clip(x, -1, 1).astype(np.float32)


def write_corpus(out: str, per_class: int = 200, seed: int = 0, sr: int = 16000) -> int:
    """Write ``out/<class>/<class>_<i>.flac``; returns the number of files written."""
    rng = np.random.default_rng(seed)
    count = 0
    for cls in CLASSES:
        os.makedirs(os.path.join(out, cls), exist_ok=True)
    for i in range(per_class):
        for cls in CLASSES:
            seconds = rng.uniform(0.8, 1.2)
            x = synth_clip(cls, rng, sr, seconds)
            sf.write(os.path.join(out, cls, f"{cls}_{i:05d}.flac"), x, sr, subtype="PCM_16")
            count += 1
    return count
