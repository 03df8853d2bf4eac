"""Real transcribed human speech for the ASR example's test set, from Debian packages.

    python scripts/make_asr_testset.py asr-data/test

Sets (each its own shards, OUT/<set>/shard-NNNNNN.tar with ``.flac``, ``.txt`` and
``.json``; ``.cls`` = the set name):

- cards: pocketsphinx-testdata's cards/*.wav (one speaker naming playing cards), text
  from cards.transcription.
- tidigits: TIDIGITS digit strings. The package holds one waveform (dhd.2934z.raw,
  headerless 16-bit little-endian mono at 16 kHz; its transcript is the test suite's
  expected "two nine three four zero"); the other utterances listed in tidigits.lsn are
  stored only as MFCC features (*.mfc), not audio: they are skipped, with that reason.
- librivox: five read sentences from "Sense and Sensibility" (LibriVox), text from
  librivox/transcription.
- asterisk (``--asterisk N``, default 150; 0 leaves it out): the Asterisk telephony prompts
  of asterisk-core-sounds-en-wav (one professional speaker, 8 kHz), text from the package's
  core-sounds-en.txt: a seeded sample of N prompts whose text is speech (not "[beep]"),
  at most 15 s long.

Transcripts are normalised to the ``char`` tokenizer's alphabet (lower case a-z,
apostrophe, space; digits spelled out, sentence markers <s> </s> removed). Audio is
resampled to 16 kHz (torchaudio). Prints the utterances per set and every skipped
utterance with its reason.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import sys
from collections import Counter
from typing import Dict, List, Optional, Tuple

SAMPLE_RATE = 16000
POCKETSPHINX = "/usr/share/pocketsphinx/test/data"
ASTERISK = "/usr/share/asterisk/sounds/en"
ASTERISK_TEXT = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
TIDIGITS_RAW = {"dhd.2934z": "two nine three four zero"}

def parse_transcription(path: str) -> Dict[str, str]:
    """A Sphinx transcription file -> {id: words} (specstream.asr.parse_transcription)."""
    from specstream.asr import parse_transcription as parse

    with open(path, encoding="utf-8") as f:
        return parse(f.read(), path)


def load_audio(path: str, raw_rate: Optional[int] = None):
    """A file (or headerless 16-bit LE mono PCM at ``raw_rate``) -> mono float32 at 16 kHz."""
    import numpy as np
    import soundfile as sf
    import torch
    import torchaudio

    if raw_rate is not None:
        x = np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0
        sr = raw_rate
    else:
        x, sr = sf.read(path, dtype="float32", always_2d=True)
        x = x.mean(1)
    if sr != SAMPLE_RATE:
        x = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(x)), sr, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def collect_pocketsphinx(root: str) -> Tuple[Dict[str, List[dict]], List[Tuple[str, str, str]]]:
    """{set: [{"key", "src", "raw_rate", "text"}]} and skips [(set, id, reason)]."""
    from specstream.asr import spoken_text

    sets: Dict[str, List[dict]] = {"cards": [], "tidigits": [], "librivox": []}
    skipped: List[Tuple[str, str, str]] = []

    def add(name, uid, src, text, raw_rate=None):
        spoken = spoken_text(text, digits="digit")
        if not os.path.isfile(src):
            skipped.append((name, uid, f"audio file {src} missing"))
        elif spoken is None:
            skipped.append((name, uid, f"transcript {text!r} has characters outside a-z, ' and space"))
        else:
            sets[name].append({"key": f"{name}_{uid}".replace(".", "_"), "src": src, "raw_rate": raw_rate,
                               "text": spoken, "original_text": text})

    cards = parse_transcription(os.path.join(root, "cards", "cards.transcription"))
    for uid, text in cards.items():
        add("cards", uid, os.path.join(root, "cards", uid + ".wav"), text)

    libri = parse_transcription(os.path.join(root, "librivox", "transcription"))
    for uid, text in libri.items():
        add("librivox", uid, os.path.join(root, "librivox", uid + ".wav"), text)

    tdir = os.path.join(root, "tidigits")
    for uid, text in TIDIGITS_RAW.items():
        add("tidigits", uid, os.path.join(tdir, uid + ".raw"), text, raw_rate=16000)
    lsn = os.path.join(tdir, "tidigits.lsn")
    for uid in parse_transcription(lsn) if os.path.isfile(lsn) else {}:
        if not any(os.path.exists(os.path.join(tdir, uid + ext)) for ext in (".wav", ".raw", ".flac")):
            skipped.append(("tidigits", uid, "only MFCC features (.mfc) in the package, no waveform"))
    return sets, skipped


def collect_asterisk(count: int, seed: int, max_seconds: float = 15.0):
    """A seeded sample of ``count`` Asterisk prompts with speech transcripts."""
    import soundfile as sf

    from specstream.asr import spoken_text

    items, skipped = [], []
    with gzip.open(ASTERISK_TEXT, "rt", encoding="utf-8", errors="replace") as f:
        lines = [ln.rstrip("\n") for ln in f if ":" in ln and not ln.startswith(";")]
    for line in lines:
        name, _, text = line.partition(":")
        name, text = name.strip(), text.strip()
        src = os.path.join(ASTERISK, name + ".wav")
        if text.startswith("["):
            skipped.append(("asterisk", name, f"not speech: {text[:40]}"))
            continue
        if not os.path.isfile(src):
            skipped.append(("asterisk", name, "no .wav in the package"))
            continue
        spoken = spoken_text(text)
        if spoken is None:
            skipped.append(("asterisk", name, f"transcript {text[:40]!r} has characters with no spoken form here"))
            continue
        info = sf.info(src)
        if info.duration > max_seconds:
            skipped.append(("asterisk", name, f"{info.duration:.1f} s, longer than {max_seconds:.0f} s"))
            continue
        items.append({"key": "asterisk_" + re.sub(r"[^A-Za-z0-9_]", "_", name), "src": src, "raw_rate": None,
                      "text": spoken, "original_text": text})
    random.Random(seed).shuffle(items)
    return items[:count], skipped, len(items)


def write_set(name: str, items: List[dict], out: str) -> int:
    import soundfile as sf

    from specstream.io.make_shards import make_shards

    audio = os.path.join(out, name + "-audio")
    os.makedirs(audio, exist_ok=True)
    manifest = os.path.join(audio, "manifest.jsonl")
    with open(manifest, "w", encoding="utf-8") as f:
        for it in items:
            x = load_audio(it["src"], it["raw_rate"])
            sf.write(os.path.join(audio, it["key"] + ".flac"), x, SAMPLE_RATE, subtype="PCM_16")
            f.write(json.dumps({"path": it["key"] + ".flac", "label": name, "text": it["text"], "set": name,
                                "source_file": it["src"], "original_text": it["original_text"]}) + "\n")
    summary = make_shards(audio, os.path.join(out, name), manifest=manifest, max_count=1000, shuffle=False,
                          progress=False)
    shutil.rmtree(audio)
    if summary.skipped:
        raise RuntimeError(f"make-shards skipped files of set {name}: {summary.skipped}")
    return summary.samples_written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder: OUT/<set>/shard-NNNNNN.tar")
    p.add_argument("--asterisk", type=int, default=150, metavar="N",
                   help="also a set of N Asterisk prompts (real speech, 8 kHz telephone prompts); 0: none")
    p.add_argument("--seed", type=int, default=0, help="which Asterisk prompts are sampled")
    p.add_argument("--pocketsphinx", default=POCKETSPHINX, help=f"pocketsphinx test data (default {POCKETSPHINX})")
    args = p.parse_args(argv)
    if not os.path.isdir(args.pocketsphinx):
        print(f"error: {args.pocketsphinx} not found: apt-get install pocketsphinx-testdata", file=sys.stderr)
        return 2
    if args.asterisk and not (os.path.isdir(ASTERISK) and os.path.isfile(ASTERISK_TEXT)):
        print(f"error: {ASTERISK} or its transcripts not found: apt-get install asterisk-core-sounds-en-wav "
              f"(or --asterisk 0)", file=sys.stderr)
        return 2
    if os.path.isdir(args.out) and os.listdir(args.out):
        print(f"error: {args.out} is not empty; choose a new folder", file=sys.stderr)
        return 2
    sets, skipped = collect_pocketsphinx(args.pocketsphinx)
    available = {}
    if args.asterisk:
        items, ast_skipped, available["asterisk"] = collect_asterisk(args.asterisk, args.seed)
        sets["asterisk"] = items
        skipped += ast_skipped
    os.makedirs(args.out, exist_ok=True)
    for name, items in sets.items():
        if not items:
            print(f"{name}: 0 utterances (nothing usable)")
            continue
        n = write_set(name, items, args.out)
        extra = f" (sampled from {available[name]} usable)" if name in available else ""
        words = sum(len(it["text"].split()) for it in items)
        print(f"{name}: {n} utterances, {words} words{extra} -> {os.path.join(args.out, name)}")
    by = Counter((s, r.split(":")[0] if s == "asterisk" else r) for s, _, r in skipped)
    print(f"skipped: {len(skipped)}")
    for (s, reason), k in sorted(by.items()):
        ids = [u for ss, u, rr in skipped if ss == s and (rr.split(':')[0] if s == 'asterisk' else rr) == reason]
        print(f"  {s}: {k} x {reason}: {', '.join(ids[:6])}{' ...' if len(ids) > 6 else ''}")
    return 0 if any(sets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
