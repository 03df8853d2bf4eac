"""Synthetic transcribed speech for the ASR example: sentences spoken by espeak-ng and flite.

    python scripts/make_asr_corpus.py asr-data/train --count 3000 --seed 0

Each utterance is a seeded random sentence of one of four kinds: a digit string ("three
one oh four"), playing cards ("queen of hearts seven of clubs"), a phrase of common words
from the list below, or a number read as a number ("two hundred forty one"). Text is lower
case a-z, apostrophe and space (numbers spelled out), so the ``char`` tokenizer takes it
unchanged. Each is spoken by espeak-ng (English voices x voice variants, a random rate,
pitch and word gap) or flite (its built-in voices: kal, kal16, awb, rms, slt, with a
random duration stretch and pitch), resampled to 16 kHz, given a random level and written
as FLAC; then packed into WebDataset shards with ``specstream make-shards``' library
function: OUT/shard-NNNNNN.tar with ``.flac``, ``.txt`` (the transcript) and ``.json``
(engine, voice, rate, pitch, kind, duration), ``.cls`` = the sentence kind.

Needs the Debian packages espeak-ng and flite. Synthesis runs in a small process pool
(``--jobs``, default 2). Prints counts per engine, voice and kind, hours written and every
skipped utterance with its reason.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import List, Optional, Tuple

from specstream.tts import SAMPLE_RATE, check_engines, draw_voice, speak

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
RANKS = ["ace", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "jack", "queen", "king"]
SUITS = ["clubs", "spades", "hearts", "diamonds"]
# Common English words (function words, verbs, nouns, adjectives, telephone and household
# vocabulary): short phrases of them cover most letters and their usual combinations.
WORDS = """
a about after again all also always am an and another any are around as ask at away back
be because been before being best better between big both bring but buy by call came can
car card case change child children city close cold come could country cup day dear did
different do does done door down during each early easy end enough enter even evening
ever every eye face family far fast father few find fine first five follow food for found
four free friend from full game gave get girl give go good got great green group had half
hand happy hard has have he head hear heard help her here high him himself his hold home
hope hot house how however i if important in into is it its just keep kind know land large
last late learn leave left less letter life light like line little live long look lost love
made make man many may me mean men might mind money more morning most mother move much must
my name near need never new next night no not nothing now number of off often old on once
one only open or order other our out over own page paper part people person place plan play
please point poor press pretty put question quick quite rather read ready real red remember
rest right river road room round said same saw say school second see seem send set she
short should show side simple since small so some something soon sound speak start state
still stop story street strong such sure table take talk tell than thank that the their
them then there these they thing think this those though thought three through time to
today together told too took toward town tree true try turn two under until up upon us use
very voice wait walk want warm was watch water way we week well went were what when where
which while white who whole why will with woman women word work world would write year yes
yet you young your
""".split()
FILLERS = ["please", "now", "again", "then", "and", "or", "oh"]



def sentence(rng: random.Random) -> Tuple[str, str]:
    """A random sentence and its kind (digits, cards, words, number)."""
    kind = rng.choices(["digits", "cards", "words", "number"], weights=[0.35, 0.2, 0.35, 0.1])[0]
    if kind == "digits":
        zero = rng.choice(["zero", "oh"])
        words = [zero if d == "zero" else d for d in (rng.choice(DIGITS) for _ in range(rng.randint(1, 7)))]
    elif kind == "cards":
        words = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.2:
                words.append(rng.choice(DIGITS[1:]))
            words += [rng.choice(RANKS), "of", rng.choice(SUITS)]
    elif kind == "words":
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 8))]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, len(words)), rng.choice(DIGITS))
        if rng.random() < 0.15:
            words.append(rng.choice(FILLERS))
    else:
        from specstream.asr import number_words

        words = [number_words(rng.choice([rng.randint(0, 99), rng.randint(100, 999), rng.randint(1000, 9999)]))]
    return " ".join(words), kind


def plan(count: int, seed: int) -> List[dict]:
    """The seeded list of utterances: text, kind, engine, voice and prosody per index."""
    items = []
    for i in range(count):
        rng = random.Random(f"{seed}:{i}")
        text, kind = sentence(rng)
        item = draw_voice(rng)
        item.update({"index": i, "key": f"u{seed}_{i:06d}", "text": text, "kind": kind,
                     "gain_db": round(rng.uniform(-12.0, 0.0), 2)})
        items.append(item)
    return items


def synthesise(item: dict, out_dir: str) -> Tuple[dict, Optional[str]]:
    """Run the engine, resample to 16 kHz, write FLAC. Returns (item with duration/path, error)."""
    import numpy as np
    import soundfile as sf
    import torch

    torch.set_num_threads(1)
    x, err = speak(item["text"], item["engine"], item["voice"], item["rate"], item["pitch"], item.get("gap", 0))
    if err:
        return item, err
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if len(x) < SAMPLE_RATE // 10 or peak < 1e-4:
        return item, f"no speech in the output ({len(x) / SAMPLE_RATE:.2f} s, peak {peak:.1e})"
    x = x / peak * 0.9 * 10 ** (item["gain_db"] / 20)
    path = os.path.join(out_dir, item["key"] + ".flac")
    sf.write(path, x.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return dict(item, duration=round(len(x) / SAMPLE_RATE, 3), path=os.path.basename(path)), None


def make_corpus(out: str, count: int, seed: int = 0, jobs: int = 2, per_shard: int = 250,
                keep_audio: bool = False, progress: bool = True) -> dict:
    """Synthesise ``count`` utterances and write shards to ``out``; returns the summary."""
    from specstream.io.make_shards import make_shards

    if count < 1:
        raise ValueError("--count must be at least 1")
    check_engines()
    os.makedirs(out, exist_ok=True)
    if any(n.startswith("shard-") for n in os.listdir(out)):
        raise SystemExit(f"error: {out} already holds shards; choose an empty folder")
    audio = os.path.join(out, "audio")
    os.makedirs(audio, exist_ok=True)
    items = plan(count, seed)
    t0 = time.perf_counter()
    done, skipped = [], []
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for n, (item, err) in enumerate(pool.map(synthesise, items, [audio] * len(items), chunksize=8), 1):
            (skipped.append((item["key"], item["engine"], err)) if err else done.append(item))
            if progress and n % 500 == 0:
                print(f"  synthesised {n}/{len(items)}", file=sys.stderr)
    manifest = os.path.join(audio, "manifest.jsonl")
    with open(manifest, "w", encoding="utf-8") as f:
        for it in done:
            row = {"path": it["path"], "label": it["kind"], "text": it["text"], "engine": it["engine"],
                   "voice": it["voice"], "rate": it["rate"], "pitch": it["pitch"], "kind": it["kind"]}
            f.write(json.dumps(row) + "\n")
    summary = make_shards(audio, out, manifest=manifest, max_count=per_shard, shuffle=True, seed=seed,
                          progress=False)
    if not keep_audio:
        shutil.rmtree(audio)
    seconds = sum(it["duration"] for it in done)
    return {
        "requested": count, "written": summary.samples_written, "shards": len(summary.shards),
        "hours": seconds / 3600, "mean_seconds": seconds / max(len(done), 1),
        "min_seconds": min((it["duration"] for it in done), default=0.0),
        "max_seconds": max((it["duration"] for it in done), default=0.0),
        "by_engine": dict(Counter(it["engine"] for it in done)),
        "by_voice": dict(Counter(it["voice"].split("+")[0] if it["engine"] == "espeak-ng" else "flite:" + it["voice"]
                                 for it in done)),
        "espeak_variants": len({it["voice"] for it in done if it["engine"] == "espeak-ng"}),
        "by_kind": dict(Counter(it["kind"] for it in done)),
        "skipped": skipped + [(p, "make-shards", r) for p, r in summary.skipped],
        "synthesis_seconds": time.perf_counter() - t0,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder for shard-NNNNNN.tar")
    p.add_argument("--count", type=int, required=True, help="utterances to synthesise")
    p.add_argument("--seed", type=int, default=0, help="sentences, voices and prosody are a function of it")
    p.add_argument("--jobs", type=int, default=2, help="synthesis processes (default 2)")
    p.add_argument("--per-shard", type=int, default=250, help="utterances per shard (default 250)")
    p.add_argument("--keep-audio", action="store_true", help="keep OUT/audio/*.flac and manifest.jsonl")
    args = p.parse_args(argv)
    try:
        s = make_corpus(args.out, args.count, args.seed, args.jobs, args.per_shard, args.keep_audio)
    except ValueError as e:
        p.error(str(e))
    print(f"utterances written: {s['written']} of {s['requested']} in {s['shards']} shards under {args.out} "
          f"({s['hours']:.2f} h, {s['mean_seconds']:.2f} s mean, {s['min_seconds']:.2f}-{s['max_seconds']:.2f} s; "
          f"{s['synthesis_seconds']:.0f} s)")
    print("by engine: " + ", ".join(f"{k} {v}" for k, v in sorted(s["by_engine"].items())))
    print("by voice: " + ", ".join(f"{k} {v}" for k, v in sorted(s["by_voice"].items()))
          + f"  ({s['espeak_variants']} espeak-ng voice+variant combinations)")
    print("by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(s["by_kind"].items())))
    print(f"skipped: {len(s['skipped'])}")
    for key, engine, reason in s["skipped"][:50]:
        print(f"  {key} ({engine}): {reason}")
    return 0 if s["written"] else 1


if __name__ == "__main__":
    sys.exit(main())
