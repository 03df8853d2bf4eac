"""Audio bytes -> mono float32 with soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, Opus, MP3...).

Limits are checked on the header before any sample is decoded (design invariant 5).
"""
from __future__ import annotations

import io
import re
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import soundfile as sf


class AudioError(ValueError):
    """The bytes are not decodable audio, or the clip breaks a configured limit."""


Window = Callable[[int, int], Tuple[int, int]]


def decode_audio(data: bytes, max_seconds: Optional[float] = None,
                 window: Optional[Window] = None) -> Tuple[np.ndarray, int]:
    """Decode to (mono float32 array in [-1, 1], sample_rate).

    ``max_seconds`` rejects longer clips before decoding. ``window(sample_rate, frames)``
    returns ``(start_frame, n_frames)`` to decode only part of the clip (a crop costs only
    what it keeps). Multi-channel audio is averaged to mono.
    """
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr, frames = f.samplerate, f.frames
            if frames <= 0:
                raise AudioError("empty audio (0 frames)")
            if max_seconds is not None and frames > max_seconds * sr:
                raise AudioError(f"clip is {frames / sr:.2f} s, over the limit of {max_seconds} s")
            start, n = window(sr, frames) if window is not None else (0, -1)
            if start:
                f.seek(min(start, frames))
            x = f.read(n, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"undecodable audio ({len(data)} bytes): {_sf_reason(e)}") from None
    if x.shape[0] == 0:
        raise AudioError("decoded no samples")
    mono = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise AudioError("audio contains NaN or infinite samples")
    return np.ascontiguousarray(mono, dtype=np.float32), sr


_OPENING = re.compile(r"^Error opening <[^>]*>: ")


def _sf_reason(e: Exception) -> str:
    """libsndfile's message without the object repr soundfile puts in it
    ("Error opening <_io.BytesIO object at 0x...>: Format not recognised.")."""
    msg = " ".join(str(e).split())
    return _OPENING.sub("", msg).rstrip(".") or type(e).__name__


class Resampler:
    """Mono float32 arrays at any rate -> ``target`` Hz with torchaudio's windowed-sinc
    resampler, one kernel built per source rate and reused."""

    def __init__(self, target: int):
        self.target = int(target)
        self._kernels: Dict[int, object] = {}

    def __call__(self, x: np.ndarray, sr: int) -> np.ndarray:
        if sr == self.target:
            return x
        import torch
        import torchaudio

        rs = self._kernels.get(sr)
        if rs is None:
            rs = self._kernels[sr] = torchaudio.transforms.Resample(sr, self.target)
        with torch.no_grad():
            return rs(torch.from_numpy(np.ascontiguousarray(x))).numpy()
