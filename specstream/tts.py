"""Speech synthesis with the Debian engines espeak-ng and flite: one utterance at 16 kHz.

Used to build synthetic training corpora (``scripts/make_asr_corpus.py``,
``pipelines/kws_experiment.py``). A voice is drawn with :func:`draw_voice`: espeak-ng's
English voices x voice variants with a random rate, pitch and word gap, or one of flite's
built-in voices with a random duration stretch and mean F0. :func:`speak` runs the engine
and returns float32 audio resampled to 16 kHz, or the reason it could not.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from typing import Optional, Tuple

import numpy as np

SAMPLE_RATE = 16000
_RESAMPLERS: dict = {}

ESPEAK_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbcwmd",
                 "en-gb-x-gbclan"]
ESPEAK_VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
                   "klatt3", "klatt4", "croak", "adam", "david", "john", "linda", "max", "paul", "robert", "steph",
                   "Annie", "Andy", "grandma", "grandpa", "edward", "michel", "quincy", "travis", "victor"]
FLITE_VOICES = ["kal", "kal16", "awb", "rms", "slt"]


def check_engines() -> None:
    """Exit with the apt-get line when espeak-ng or flite is missing."""
    missing = [e for e in ("espeak-ng", "flite") if shutil.which(e) is None]
    if missing:
        raise SystemExit(f"error: {' and '.join(missing)} not found: apt-get install {' '.join(missing)}")


def draw_voice(rng: random.Random, espeak_share: float = 0.6, espeak_rate=(120, 210),
               flite_stretch=(0.8, 1.3)) -> dict:
    """A random voice and prosody: ``{engine, voice, rate, pitch[, gap]}``. espeak-ng ``rate``
    is words per minute; flite's is a duration stretch (> 1 slower) and ``pitch`` its mean F0 in Hz."""
    if rng.random() < espeak_share:
        variant = rng.choice(ESPEAK_VARIANTS)
        voice = rng.choice(ESPEAK_VOICES) + (f"+{variant}" if variant else "")
        return {"engine": "espeak-ng", "voice": voice, "rate": rng.randint(*espeak_rate),
                "pitch": rng.randint(20, 80), "gap": rng.choice([0, 0, 1, 2, 4])}
    return {"engine": "flite", "voice": rng.choice(FLITE_VOICES),
            "rate": round(rng.uniform(*flite_stretch), 3), "pitch": rng.randint(85, 190)}


def speak(text: str, engine: str, voice: str, rate, pitch, gap: int = 0,
          sample_rate: int = SAMPLE_RATE) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """Synthesise ``text``: (mono float32 audio at ``sample_rate``, None) or (None, reason)."""
    from .io.audio import AudioError, Resampler, decode_audio

    with tempfile.TemporaryDirectory(prefix="tts-") as tmp:
        wav = os.path.join(tmp, "x.wav")
        if engine == "espeak-ng":
            cmd = ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-g", str(gap), "-w", wav, text]
        elif engine == "flite":
            cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={rate}",
                   "--setf", f"int_f0_target_mean={pitch}", "-t", text, "-o", wav]
        else:
            return None, f"unknown engine {engine!r}"
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            return None, f"{engine} timed out"
        if r.returncode != 0 or not os.path.exists(wav):
            return None, f"{engine} failed (exit {r.returncode}): {r.stderr.decode(errors='replace').strip()[:200]}"
        with open(wav, "rb") as f:
            data = f.read()
    try:
        x, sr = decode_audio(data)  # mono float32
    except AudioError as e:
        return None, f"unreadable output: {e}"
    rs = _RESAMPLERS.get(sample_rate)
    if rs is None:  # one per target rate: its kernels (one per engine rate) are built once
        rs = _RESAMPLERS[sample_rate] = Resampler(sample_rate)
    return rs(x, sr).astype(np.float32, copy=False), None


def speech_span(x: np.ndarray, sample_rate: int = SAMPLE_RATE, threshold_db: float = -40.0,
                frame_s: float = 0.01) -> Tuple[int, int]:
    """(start, end) samples of the part of ``x`` louder than ``threshold_db`` below its loudest
    10 ms frame (frame RMS); (0, 0) for silence."""
    n = max(1, int(frame_s * sample_rate))
    frames = len(x) // n
    if frames == 0:
        return 0, 0
    rms = np.sqrt(np.mean(x[: frames * n].reshape(frames, n).astype(np.float64) ** 2, axis=1))
    peak = rms.max()
    if peak <= 0:
        return 0, 0
    loud = np.flatnonzero(rms >= peak * 10 ** (threshold_db / 20))
    return int(loud[0] * n), int(min(len(x), (loud[-1] + 1) * n))
