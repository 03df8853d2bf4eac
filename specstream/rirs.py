"""A seeded bank of simulated room impulse responses (pyroomacoustics, image-source method),
for users who have no recorded RIRs.

    specstream make-rir-bank rirs/ --count 200 --seed 0
    # augment: {ops: [{op: reverb, bank: rirs/}]}

Each RIR is a random shoebox room (dimensions, reverberation time RT60 via Sabine's formula,
source and microphone at least ``margin`` m from the walls and ``min_distance`` m apart),
written as a 32-bit float WAV at ``sample_rate``; ``manifest.jsonl`` records each room's
parameters and the direct-path sample. RIR i depends only on (seed, i), so a bank can be
extended without changing the RIRs already made.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import List, Sequence, Tuple

import numpy as np

SPEED_OF_SOUND = 343.0


@dataclass
class Room:
    index: int
    dims: Tuple[float, float, float]
    rt60: float
    source: Tuple[float, float, float]
    mic: Tuple[float, float, float]
    max_order: int
    direct_sample: int = 0  # peak of the direct path in the written RIR
    file: str = ""


def draw_room(seed: int, index: int, rt60: Sequence[float] = (0.2, 0.9), margin: float = 0.5,
              min_distance: float = 0.7, max_order: int = 40) -> Room:
    import pyroomacoustics as pra

    rng = np.random.default_rng([seed, index])
    while True:
        dims = (rng.uniform(3.0, 10.0), rng.uniform(3.0, 8.0), rng.uniform(2.4, 4.0))
        t60 = rng.uniform(*rt60)
        try:
            _, order = pra.inverse_sabine(t60, list(dims))
        except ValueError:  # that RT60 needs absorption > 1 in that room: draw another
            continue
        lo = np.full(3, margin)
        hi = np.asarray(dims) - margin
        src, mic = rng.uniform(lo, hi), rng.uniform(lo, hi)
        if np.linalg.norm(src - mic) < min_distance:
            continue
        return Room(index, tuple(float(d) for d in dims), float(t60), tuple(float(v) for v in src),
                    tuple(float(v) for v in mic), int(min(order, max_order)))


def simulate(room: Room, sample_rate: int = 16000) -> np.ndarray:
    import pyroomacoustics as pra

    e_abs, _ = pra.inverse_sabine(room.rt60, list(room.dims))
    shoebox = pra.ShoeBox(list(room.dims), fs=sample_rate, materials=pra.Material(e_abs),
                          max_order=room.max_order)
    shoebox.add_source(list(room.source))
    shoebox.add_microphone(list(room.mic))
    shoebox.compute_rir()
    return np.asarray(shoebox.rir[0][0], dtype=np.float32)


def make_rir_bank(out_dir: str, count: int, seed: int = 0, sample_rate: int = 16000,
                  rt60: Sequence[float] = (0.2, 0.9), max_seconds: float = 1.0, max_order: int = 40) -> List[Room]:
    """Write ``count`` RIRs (``rir-000000.wav``...) and ``manifest.jsonl`` into ``out_dir``."""
    import soundfile as sf

    os.makedirs(out_dir, exist_ok=True)
    rooms = []
    with open(os.path.join(out_dir, "manifest.jsonl"), "w", encoding="utf-8") as manifest:
        for i in range(count):
            room = draw_room(seed, i, rt60, max_order=max_order)
            h = simulate(room, sample_rate)
            d = int(np.argmax(np.abs(h)))
            h = h[: d + int(max_seconds * sample_rate)]
            room.direct_sample = d
            room.file = f"rir-{i:06d}.wav"
            sf.write(os.path.join(out_dir, room.file), h, sample_rate, subtype="FLOAT")
            manifest.write(json.dumps(asdict(room)) + "\n")
            rooms.append(room)
    return rooms
