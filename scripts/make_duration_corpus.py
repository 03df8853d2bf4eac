"""A speech corpus with a LibriSpeech-like spread of utterance durations, for bucketing benchmarks.

    python scripts/make_duration_corpus.py bench-out/durations --count 2000 --seed 0

Durations are drawn from a lognormal distribution with median 12 s (mu = ln 12) and
sigma 0.45, clipped to [1, 35] s: most utterances last 6-25 s, with a tail of short and long
ones, as LibriSpeech's training segments (up to 35 s). Each utterance is real
human speech: Asterisk telephony prompts (asterisk-core-sounds-en-wav, one speaker,
8 kHz, resampled to 16 kHz with torchaudio), picked at random among those that still fit and
joined with 50-300 ms pauses, then padded with silence to exactly its drawn duration.
Its transcript (the prompts' texts from the package's core-sounds-en.txt, normalised to
lower-case a-z, apostrophe and space, numbers spelled out) goes to ``.txt``; ``.json`` adds
the drawn duration and the prompts used; ``.cls`` is "speech". Shards:
OUT/shard-NNNNNN.tar (``--per-shard`` utterances each), written with ``make-shards``'
library function. Prints the count, hours and duration percentiles.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import time

MEDIAN_S = 12.0
SIGMA = 0.45
MIN_S, MAX_S = 1.0, 35.0
SAMPLE_RATE = 16000
ASTERISK = "/usr/share/asterisk/sounds/en"
ASTERISK_TEXT = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"


def load_prompts(max_seconds: float = MAX_S):
    """[(name, text, float32 waveform at 16 kHz)] for every prompt with a speech transcript."""
    import numpy as np
    import soundfile as sf
    import torch
    import torchaudio

    from specstream.asr import spoken_text

    if not (os.path.isdir(ASTERISK) and os.path.isfile(ASTERISK_TEXT)):
        raise SystemExit("error: Asterisk prompts not found: apt-get install asterisk-core-sounds-en-wav")
    prompts = []
    with gzip.open(ASTERISK_TEXT, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(";") or ":" not in line:
                continue
            name, _, text = line.partition(":")
            name, text = name.strip(), text.strip()
            path = os.path.join(ASTERISK, name + ".wav")
            spoken = None if text.startswith("[") else spoken_text(text)
            if spoken is None or not os.path.isfile(path):
                continue
            x, sr = sf.read(path, dtype="float32", always_2d=True)
            x = x.mean(1)
            if sr != SAMPLE_RATE:
                x = torchaudio.functional.resample(torch.from_numpy(x), sr, SAMPLE_RATE).numpy()
            if 0 < len(x) <= max_seconds * SAMPLE_RATE:
                prompts.append((name, spoken, np.ascontiguousarray(x, dtype=np.float32)))
    if not prompts:
        raise SystemExit(f"error: no usable prompts under {ASTERISK}")
    return prompts


def draw_durations(count: int, seed: int, median: float = MEDIAN_S, sigma: float = SIGMA):
    import numpy as np

    rng = np.random.default_rng([seed, 0])
    return np.clip(rng.lognormal(np.log(median), sigma, count), MIN_S, MAX_S)


def compose(target_s: float, prompts, order, rng):
    """Prompts that fit into ``target_s`` seconds, joined with pauses, padded with silence
    to exactly that length: (waveform, transcript, prompt names, speech samples)."""
    import numpy as np

    total = int(round(target_s * SAMPLE_RATE))
    lengths = np.array([len(prompts[i][2]) for i in order])  # order: prompt indices by length
    parts, words, names, used, speech = [], [], [], 0, 0
    while True:
        gap = int(rng.uniform(0.05, 0.3) * SAMPLE_RATE) if parts else int(rng.uniform(0.0, 0.2) * SAMPLE_RATE)
        fits = int(np.searchsorted(lengths, total - used - gap, side="right"))
        if fits == 0:
            break
        name, text, x = prompts[order[int(rng.integers(0, fits))]]
        parts += [np.zeros(gap, np.float32), x]
        words.append(text)
        names.append(name)
        used += gap + len(x)
        speech += len(x)
    wave = np.zeros(total, np.float32)
    if parts:
        joined = np.concatenate(parts)
        wave[: len(joined)] = joined
    return wave, " ".join(words), names, speech


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder for shard-NNNNNN.tar")
    p.add_argument("--count", type=int, required=True, help="utterances")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--median", type=float, default=MEDIAN_S, help=f"lognormal median in seconds (default {MEDIAN_S})")
    p.add_argument("--sigma", type=float, default=SIGMA, help=f"lognormal sigma (default {SIGMA})")
    p.add_argument("--per-shard", type=int, default=200, help="utterances per shard (default 200)")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")
    if not (MIN_S <= args.median <= MAX_S) or args.sigma <= 0:
        p.error(f"--median must lie in [{MIN_S}, {MAX_S}] and --sigma be positive")
    if os.path.isdir(args.out) and any(n.startswith("shard-") for n in os.listdir(args.out)):
        p.error(f"{args.out} already holds shards; choose an empty folder")

    import numpy as np
    import soundfile as sf

    from specstream.io.make_shards import make_shards

    t0 = time.perf_counter()
    prompts = load_prompts()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][2]))
    durations = draw_durations(args.count, args.seed, args.median, args.sigma)
    audio = os.path.join(args.out, "audio")
    os.makedirs(audio, exist_ok=True)
    manifest = os.path.join(audio, "manifest.jsonl")
    speech_s = 0.0
    with open(manifest, "w", encoding="utf-8") as f:
        for i, d in enumerate(durations):
            rng = np.random.default_rng([args.seed, 1, i])
            wave, text, names, speech = compose(float(d), prompts, order, rng)
            key = f"d{args.seed}_{i:06d}"
            sf.write(os.path.join(audio, key + ".flac"), wave, SAMPLE_RATE, subtype="PCM_16")
            speech_s += speech / SAMPLE_RATE
            f.write(json.dumps({"path": key + ".flac", "label": "speech", "text": text or None,
                                "target_seconds": round(float(d), 3), "prompts": names}) + "\n")
    summary = make_shards(audio, args.out, manifest=manifest, max_count=args.per_shard, shuffle=True,
                          seed=args.seed, progress=False)
    shutil.rmtree(audio)
    q = np.percentile(durations, [0, 5, 25, 50, 75, 95, 100])
    print(f"utterances written: {summary.samples_written} of {args.count} in {len(summary.shards)} shards under "
          f"{args.out} ({durations.sum() / 3600:.2f} h, {100 * speech_s / durations.sum():.0f}% of it prompts, "
          f"from {len(prompts)} Asterisk prompts; "
          f"{time.perf_counter() - t0:.0f} s)")
    print(f"durations (lognormal median {args.median} s, sigma {args.sigma}, clipped to [{MIN_S}, {MAX_S}] s): "
          f"min {q[0]:.1f}  p5 {q[1]:.1f}  p25 {q[2]:.1f}  median {q[3]:.1f}  p75 {q[4]:.1f}  p95 {q[5]:.1f}  "
          f"max {q[6]:.1f} s; mean {durations.mean():.1f} s")
    if summary.skipped:
        print(summary.to_text())
    return 0 if summary.samples_written == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
