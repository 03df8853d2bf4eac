"""Does augmentation from this pipeline help a model on real speech? A spoken-digit
experiment: train on synthetic speech, test on real human speech under conditions never
seen in training.

    python pipelines/kws_experiment.py --out kws-out            # the full experiment
    python pipelines/kws_experiment.py --out kws-out --quick    # a small run (CI, a first try)
    python pipelines/kws_experiment.py --out kws-out --extra-test-noise /path/to/noise

**Training data.** The digits zero to nine ("oh" for some zeros) spoken by espeak-ng (its
English voices x voice variants, random rate, pitch) and flite (five voices, random
duration stretch and F0): one word per clip, cut to its speech (-40 dB of the loudest
10 ms frame) and placed at a random offset in a 1 s clip at a random level, written to
WebDataset shards with ``specstream make-shards``' library function, then streamed
through the real pipeline: Ray Data read -> decode -> featurize (waveform and spectrogram
augmentation, log-mel 80) -> shuffled batches, into a torch loop in this process (the
pipeline's ``TrainStream``; each pass is an epoch with fresh augmentation draws).

**Test data: real human speech only.**
- asterisk: the digit prompts 0-9 and "oh" of asterisk-core-sounds-en-wav, from every
  voice folder the package ships (folders holding identical recordings count once: the
  package installs one voice, Allison Smith's, under three names); 8 kHz telephone prompts.
- tidigits: pocketsphinx-testdata's one TIDIGITS waveform (dhd.2934z.raw, "two nine three
  four zero", an adult male), cut into its five words by pocketsphinx forced alignment.
- cards: the digit words of pocketsphinx-testdata's cards recordings (one speaker reading
  playing cards, e.g. "seven of clubs"), cut out by forced alignment on their transcripts.
Each word is centred in a 1 s clip. Conditions (built with numpy and torchaudio, not with
specstream's augmentation ops, from a fixed seed, so every arm sees the same test audio):
- clean;
- noise 0 / 5 / 10 dB SNR (over the word): two recordings never used in training, each on
  half of the copies: babble of three LibriVox readers (pocketsphinx-testdata) and
  asterisk's recorded monkeys (tt-monkeys). The training noise is synthetic (generated
  coloured noise, TTS babble, procedural noises; see below). Accuracy is also reported per
  test noise;
- reverb: rooms simulated with pyroomacoustics from a seed the training bank does not use
  and a longer RT60 range (0.4-1.2 s vs 0.2-0.9 s);
- telephone: 8 kHz, 300-3400 Hz band, 8-bit mu-law, back to 16 kHz;
- ``--extra-test-noise PATH`` (a folder of audio files or of shards): that noise at 0/5/10 dB.
Each noisy or reverberant condition holds ``--variants`` corrupted copies of every word
(different noise segments, rooms). A held-out synthetic set (other clips: the same engines
and voice pool, other draws of voice, prosody, level and offset) shows what the model
learned in its own domain.

**Arms** (each trained ``--seeds`` times; the seed sets the model's initialisation, the
shuffle and every augmentation draw):
- none: no augmentation;
- specaugment: a SpecAugment preset (``--preset``, default ``adaptive``: two frequency
  masks F=27 and length-relative time masks, Park et al. 2020; SM and LD's time warp of
  W=40-80 frames is sized for long utterances and would fold a 101-frame clip);
- wave+spec: speed 0.9/1.0/1.1, synthetic background noise (TTS babble and procedural
  noises) at 0-20 dB, coloured noise, reverb (training RIR bank), random low-pass filters
  (2-7 kHz: no band-pass, no 8 kHz channel, no mu-law, so the telephone condition stays
  unseen), VTLP, then the preset's ops;
- wave+spec+mixup: the same, then mixup (alpha 0.4) with soft targets.

**Output**: ``OUT/results.json`` (accuracy per arm x condition x seed, per test set too,
the training history and the pipeline's reconciliation per run), ``OUT/results.md``
(mean +- std table), ``OUT/results.png`` (the plot). The data under ``OUT/data`` is built
once and reused by later runs with the same data settings.

Needs espeak-ng, flite, asterisk-core-sounds-en-wav and pocketsphinx-testdata (apt), and
``pip install "specstream[experiment]"`` (pocketsphinx for the alignment, pyroomacoustics,
matplotlib); both are checked before anything is built.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import random
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

SAMPLE_RATE = 16000
CLIP = SAMPLE_RATE  # one-second clips
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
WORD_TO_DIGIT = {w: w for w in DIGITS}
WORD_TO_DIGIT["oh"] = "zero"
ASTERISK_ROOT = "/usr/share/asterisk/sounds"
POCKETSPHINX = "/usr/share/pocketsphinx/test/data"
TIDIGITS = {"dhd.2934z.raw": "two nine three four zero"}  # the package's one TIDIGITS waveform
MONKEYS = os.path.join(ASTERISK_ROOT, "en_US_f_Allison", "tt-monkeys.wav")
# words for the training babble: no digit and no word that sounds like one (to, for, won, ate,
# nein...), so babble never says a label
BABBLE_WORDS = ("the a of and to in is you that it he was for on are as with his they at be this have from or had "
                "by word but what some we can out other were all there when up use your how said an each she which "
                "do their time if will way about many then them write would like so these her long make thing see "
                "him has look more day could go come did number sound no most people my over know water than call "
                "first who may down side been now find any new work part take get place made live where after back "
                "little only round man year came show every good me give our under name very through just form "
                "sentence great think say help low line differ turn cause much mean before move right boy old too "
                "same tell does set three want air well also play small end put home read hand port large spell "
                "add even land here must big high such follow act why ask men change went light kind off need "
                "house picture try us again animal point mother world near build self earth father").split()
SOUNDS_LIKE_A_DIGIT = {"oh", "o", "owe", "won", "to", "too", "for", "fore", "ate", "nein", "sicks", "sex", "tree",
                       "free", "fife", "hive", "heaven", "sven", "wait", "late", "nine", "fine", "line", "mine"}
BABBLE_WORDS = [w for w in BABBLE_WORDS if w not in WORD_TO_DIGIT and w not in SOUNDS_LIKE_A_DIGIT]
NOISE_CLASSES = ["white_noise", "brown_noise", "clicks", "am_tone", "fm", "harmonics", "square"]
ARMS = ["none", "specaugment", "wave+spec", "wave+spec+mixup"]


# ----------------------------------------------------------------------------------------- audio helpers

def place(word: np.ndarray, offset: Optional[int] = None, length: int = CLIP) -> np.ndarray:
    """``word`` in a zero clip of ``length`` samples at ``offset`` (default: centred)."""
    out = np.zeros(length, np.float32)
    if offset is None:
        offset = (length - len(word)) // 2
    out[offset:offset + len(word)] = word
    return out


_RESAMPLE = None


def read_audio(path: str) -> np.ndarray:
    """A recording as mono float32 at 16 kHz: specstream's decoder and resampler; a ``.raw``
    file is headerless 16-bit little-endian mono at 16 kHz (pocketsphinx's test data)."""
    global _RESAMPLE
    from specstream.io.audio import Resampler, decode_audio

    if path.endswith(".raw"):
        return np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0
    with open(path, "rb") as f:
        x, sr = decode_audio(f.read())
    _RESAMPLE = _RESAMPLE or Resampler(SAMPLE_RATE)
    return _RESAMPLE(x, sr)


def write_clips(folder: str, clips: Dict[str, Tuple[str, np.ndarray]], out: str, seed: int = 0) -> int:
    """Write ``{key: (label, audio)}`` as ``folder/<label>/<key>.flac``, then shards in ``out``."""
    import soundfile as sf

    from specstream.io.make_shards import make_shards

    for key, (label, x) in clips.items():
        os.makedirs(os.path.join(folder, label), exist_ok=True)
        sf.write(os.path.join(folder, label, key + ".flac"), np.clip(x, -1, 1), SAMPLE_RATE, subtype="PCM_16")
    summary = make_shards(folder, out, max_count=500, shuffle=True, seed=seed, progress=False)
    if summary.skipped:
        raise RuntimeError(f"make-shards skipped {len(summary.skipped)} files: {summary.skipped[:3]}")
    shutil.rmtree(folder)
    return summary.samples_written


# ----------------------------------------------------------------------------------------- training data

def synth_digit(job: Tuple[int, int]) -> Tuple[str, str, Optional[np.ndarray], Optional[str], dict]:
    """Utterance ``i`` of corpus ``seed``: (key, digit, 1 s clip or None, skip reason, voice)."""
    import torch

    from specstream.tts import draw_voice, speak, speech_span

    torch.set_num_threads(1)
    seed, i = job
    rng = random.Random(f"kws:{seed}:{i}")
    digit = DIGITS[i % 10]
    word = "oh" if digit == "zero" and rng.random() < 0.3 else digit
    voice = draw_voice(rng, espeak_rate=(110, 220), flite_stretch=(0.75, 1.35))
    key = f"s{seed}_{i:06d}"
    x, err = speak(word, **voice)
    if err:
        return key, digit, None, err, voice
    s, e = speech_span(x)
    margin = int(0.03 * SAMPLE_RATE)
    s, e = max(0, s - margin), min(len(x), e + margin)
    if e - s > CLIP:
        return key, digit, None, f"spoken word is {(e - s) / SAMPLE_RATE:.2f} s, longer than the 1 s clip", voice
    if e <= s:
        return key, digit, None, "no speech in the output", voice
    w = x[s:e] / (np.abs(x[s:e]).max() + 1e-9) * 10 ** (rng.uniform(-20.0, -1.0) / 20)
    return key, digit, place(w, rng.randint(0, CLIP - len(w))), None, voice


def make_synthetic(out: str, count: int, seed: int, jobs: int) -> dict:
    """``count`` synthetic digit clips (seeded) as shards in ``out``."""
    from specstream.tts import check_engines

    check_engines()
    clips, skipped, voices = {}, [], set()
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for key, digit, clip, err, voice in pool.map(synth_digit, [(seed, i) for i in range(count)], chunksize=16):
            if err:
                skipped.append((key, err))
            else:
                clips[key] = (digit, clip)
                voices.add((voice["engine"], voice["voice"]))
    written = write_clips(out + ".audio", clips, out, seed)
    return {"written": written, "skipped": skipped, "voices": len(voices)}


def make_noise_bank(out: str, seed: int, seconds: float = 4.0) -> dict:
    """The training noise bank, all synthetic: babble of TTS voices reading non-digit words
    (3-5 talkers summed) and procedural noises (specstream.synth). Nothing here is in the
    test conditions."""
    import soundfile as sf

    from specstream.synth import synth_clip
    from specstream.tts import draw_voice, speak

    os.makedirs(out, exist_ok=True)
    rng = random.Random(f"noise:{seed}")
    n = int(seconds * SAMPLE_RATE)
    made = 0
    for b in range(8):
        mix = np.zeros(n, np.float32)
        for _ in range(rng.randint(3, 5)):
            text = " ".join(rng.choice(BABBLE_WORDS) for _ in range(14))
            x, err = speak(text, **draw_voice(rng))
            if err:
                continue
            x = np.resize(x, n) if len(x) < n else x[rng.randint(0, len(x) - n):][:n]
            mix += x / (np.sqrt(np.mean(x ** 2)) + 1e-9)
        if np.any(mix):
            sf.write(os.path.join(out, f"babble-{b}.flac"), mix / np.abs(mix).max() * 0.8, SAMPLE_RATE)
            made += 1
    nrng = np.random.default_rng(seed)
    for cls in NOISE_CLASSES:
        sf.write(os.path.join(out, f"{cls}.flac"), synth_clip(cls, nrng, SAMPLE_RATE, seconds), SAMPLE_RATE)
        made += 1
    return {"files": made}


# ----------------------------------------------------------------------------------------- test data

def asterisk_digits() -> Tuple[Dict[str, Tuple[str, np.ndarray]], dict]:
    """The digit prompts of every asterisk voice folder; identical recordings count once."""
    words, seen, folders = {}, {}, []
    for root in sorted(glob.glob(os.path.join(ASTERISK_ROOT, "*"))):
        d = os.path.join(root, "digits")
        if not os.path.isdir(d):
            continue
        folders.append(os.path.basename(root))
        for name in [str(i) for i in range(10)] + ["oh"]:
            path = os.path.join(d, name + ".wav")
            if not os.path.exists(path):
                raise SystemExit(f"error: {path} missing: is asterisk-core-sounds-en-wav complete?")
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
            if digest in seen:
                continue
            seen[digest] = path
            word = "oh" if name == "oh" else DIGITS[int(name)]
            words[f"asterisk-{os.path.basename(root)}-{word}"] = (WORD_TO_DIGIT[word], read_audio(path))
    return words, {"voice_folders": folders, "distinct_recordings": len(words)}


def align(audio: np.ndarray, text: str) -> List[Tuple[str, int, int]]:
    """(word, start, end) samples by pocketsphinx forced alignment on ``text`` (its US
    English model; 10 ms frames)."""
    from pocketsphinx import Decoder

    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    dec = Decoder(samprate=SAMPLE_RATE, loglevel="ERROR")
    dec.set_align_text(text)
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    hop = SAMPLE_RATE // 100
    out = []
    for seg in dec.seg():
        word = seg.word.split("(")[0]
        if word not in ("<s>", "</s>", "<sil>", "[NOISE]"):
            out.append((word, seg.start_frame * hop, (seg.end_frame + 1) * hop))
    return out


def aligned_digits(name: str, audio: np.ndarray, text: str) -> Dict[str, Tuple[str, np.ndarray]]:
    """The digit words of ``text`` in ``audio``, cut out by forced alignment (+-30 ms)."""
    margin = int(0.03 * SAMPLE_RATE)
    words = align(audio, text)
    if [w for w, _, _ in words] != text.split():
        raise RuntimeError(f"forced alignment of {name} gave {[w for w, _, _ in words]}, expected {text.split()}")
    out = {}
    for n, (word, s, e) in enumerate(words):
        if word in WORD_TO_DIGIT:
            seg = audio[max(0, s - margin):min(len(audio), e + margin)]
            if len(seg) > CLIP:
                raise RuntimeError(f"{name}: aligned word {n} ({word!r}) is {len(seg) / SAMPLE_RATE:.2f} s, longer "
                                   "than the 1 s clip")
            out[f"{name}-{n}-{word}"] = (WORD_TO_DIGIT[word], seg)
    return out


def real_words() -> Tuple[Dict[str, Dict[str, Tuple[str, np.ndarray]]], dict]:
    """{test set: {key: (digit, word audio)}} of real human speech, and notes."""

    missing = [p for p in (ASTERISK_ROOT, POCKETSPHINX) if not os.path.isdir(p)]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} missing: apt-get install asterisk-core-sounds-en-wav "
                         "pocketsphinx-testdata")
    sets, notes = {}, {}
    sets["asterisk"], notes["asterisk"] = asterisk_digits()
    tid = {}
    for raw, text in TIDIGITS.items():
        tid.update(aligned_digits("tidigits-" + raw.split(".")[0] + raw.split(".")[1], read_audio(
            os.path.join(POCKETSPHINX, "tidigits", raw)), text))
    sets["tidigits"] = tid
    from specstream.asr import parse_transcription

    cards = {}
    path = os.path.join(POCKETSPHINX, "cards", "cards.transcription")
    with open(path, encoding="utf-8") as f:
        transcripts = parse_transcription(f.read(), path)
    for uid, text in transcripts.items():
        if any(w in WORD_TO_DIGIT for w in text.split()):
            cards.update(aligned_digits(f"cards-{uid}", read_audio(os.path.join(POCKETSPHINX, "cards", uid + ".wav")),
                                        text))
    sets["cards"] = cards
    for name, words in sets.items():
        for key, (digit, x) in list(words.items()):
            s, e = (0, len(x))
            if name == "asterisk":  # whole prompts: trim their silence as the training words are
                from specstream.tts import speech_span

                s, e = speech_span(x)
                s, e = max(0, s - int(0.03 * SAMPLE_RATE)), min(len(x), e + int(0.03 * SAMPLE_RATE))
            w = x[s:e]
            if len(w) > CLIP:
                raise RuntimeError(f"{key}: the spoken word is {len(w) / SAMPLE_RATE:.2f} s, longer than the 1 s clip")
            words[key] = (digit, place(w / (np.abs(w).max() + 1e-9) * 0.5))
    return sets, notes


def load_noises(path: Optional[str] = None) -> List[Tuple[str, np.ndarray]]:
    """The test noises: recordings never used in training (LibriVox babble, asterisk's
    monkeys); or the clips of the bank at ``path`` (a folder of audio files or of shards,
    a shard pattern or s3:// URL)."""
    if path is None:
        lib = sorted(glob.glob(os.path.join(POCKETSPHINX, "librivox", "*.wav")))
        missing = [p for p in [MONKEYS] if not os.path.exists(p)] + ([] if len(lib) >= 3 else ["librivox/*.wav (3)"])
        if missing:
            raise SystemExit(f"error: test noise missing ({', '.join(missing)}): apt-get install "
                             "asterisk-core-sounds-en-wav pocketsphinx-testdata")
        talkers = [read_audio(p) for p in lib[:3]]
        n = min(len(t) for t in talkers)
        babble = sum(t[:n] / (np.sqrt(np.mean(t[:n] ** 2)) + 1e-9) for t in talkers)
        return [("librivox-babble", babble), ("asterisk-monkeys", read_audio(MONKEYS))]
    from specstream.io.banks import load_bank

    bank = load_bank(path, SAMPLE_RATE)
    return [(f"extra-{i}", bank.data[int(s):int(s) + int(n)].numpy())
            for i, (s, n) in enumerate(zip(bank.starts, bank.lengths))]


def mix_snr(clip: np.ndarray, span: Tuple[int, int], noise: np.ndarray, snr_db: float,
            rng: np.random.Generator) -> np.ndarray:
    """``clip`` plus a random segment of ``noise`` (looped when short) at ``snr_db`` over the word."""
    if len(noise) < len(clip):
        noise = np.tile(noise, len(clip) // len(noise) + 1)
    start = int(rng.integers(0, len(noise) - len(clip) + 1))
    seg = noise[start:start + len(clip)].astype(np.float64)
    s, e = span
    p_speech = np.mean(clip[s:e].astype(np.float64) ** 2)
    p_noise = np.mean(seg ** 2) + 1e-20
    return (clip + seg * np.sqrt(p_speech / p_noise / 10 ** (snr_db / 10))).astype(np.float32)


def reverberate(clip: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolution with a RIR aligned on its direct path (the word stays where it was), the
    tail past the clip cut, the level brought back to the clip's."""
    d = int(np.argmax(np.abs(rir)))
    y = np.convolve(clip, rir[d:])[:len(clip)]
    return (y * np.sqrt(np.mean(clip ** 2) / (np.mean(y ** 2) + 1e-20))).astype(np.float32)


def telephone(clip: np.ndarray) -> np.ndarray:
    """An 8 kHz telephone channel: 300-3400 Hz, 8-bit mu-law, back to 16 kHz."""
    import torch
    import torchaudio.functional as AF

    x = AF.resample(torch.from_numpy(clip), SAMPLE_RATE, 8000)
    for _ in range(2):  # 24 dB/octave edges
        x = AF.highpass_biquad(x, 8000, 300.0)
        x = AF.lowpass_biquad(x, 8000, 3400.0)
    x = x.clamp(-1, 1)
    x = AF.mu_law_decoding(AF.mu_law_encoding(x, 256), 256)
    return AF.resample(x, 8000, SAMPLE_RATE)[:len(clip)].numpy()


def word_span(clip: np.ndarray) -> Tuple[int, int]:
    nz = np.flatnonzero(clip)
    return (int(nz[0]), int(nz[-1]) + 1) if len(nz) else (0, len(clip))


def make_rirs(out: str, count: int, seed: int, rt60: Sequence[float]) -> None:
    from specstream.rirs import make_rir_bank

    make_rir_bank(out, count, seed=seed, rt60=rt60)


def make_test_conditions(out: str, sets, variants: int, rir_dir: str, extra: Optional[str], seed: int = 1234
                         ) -> Dict[str, dict]:
    """Every test condition as its own shards under ``out/<condition>``; returns
    {condition: {"clips": n, "by_set": {...}, "dir": ...}}. Keys are
    ``<set>__<word key>__<variant>[__<noise>]``. Each (condition, word, variant) draws from
    its own generator, so adding a condition (``--extra-test-noise``) changes no other."""
    import soundfile as sf

    words = [(s, k, d, x) for s, ws in sets.items() for k, (d, x) in sorted(ws.items())]
    noises = load_noises()
    rirs = [sf.read(p, dtype="float32")[0] for p in sorted(glob.glob(os.path.join(rir_dir, "*.wav")))]
    if not rirs:
        raise RuntimeError(f"no test rooms in {rir_dir}")
    conds: Dict[str, Dict[str, Tuple[str, np.ndarray]]] = {"clean": {}, "telephone": {}, "reverb": {}}
    banks = {"noise": noises}
    if extra:
        banks["extra noise"] = load_noises(extra)
    for kind in banks:
        for snr in (10, 5, 0):
            conds[f"{kind} {snr} dB"] = {}
    for n, (set_name, key, digit, x) in enumerate(words):
        span = word_span(x)
        conds["clean"][f"{set_name}__{key}__0"] = (digit, x)
        conds["telephone"][f"{set_name}__{key}__0"] = (digit, telephone(x))
        for v in range(variants):
            k = f"{set_name}__{key}__{v}"
            conds["reverb"][k] = (digit, reverberate(x, rirs[(n * variants + v) % len(rirs)]))
            for c, (kind, bank) in enumerate(banks.items()):
                name, noise = bank[(n + v) % len(bank)]
                for snr in (10, 5, 0):
                    rng = np.random.default_rng([seed, c, snr, n, v])
                    conds[f"{kind} {snr} dB"][f"{k}__{name}"] = (digit, mix_snr(x, span, noise, snr, rng))
    info = {}
    for cond, clips in conds.items():
        folder = os.path.join(out, cond.replace(" ", "_"))
        write_clips(folder + ".audio", {k.replace(" ", "_"): v for k, v in clips.items()}, folder)
        by_set: Dict[str, int] = {}
        for k in clips:
            by_set[k.split("__")[0]] = by_set.get(k.split("__")[0], 0) + 1
        info[cond] = {"clips": len(clips), "by_set": by_set, "dir": folder}
    return info


# ----------------------------------------------------------------------------------------- the data, once

def files_of(path: Optional[str]) -> Optional[List[Tuple[str, int, float]]]:
    """(name, size, mtime) of every file under a local path: a bank whose files change is
    rebuilt into the test conditions, not reused."""
    if not path or not os.path.exists(path):
        return None
    if os.path.isfile(path):
        st = os.stat(path)
        return [(os.path.basename(path), st.st_size, st.st_mtime)]
    out = []
    for root, _, names in os.walk(path):
        for n in sorted(names):
            st = os.stat(os.path.join(root, n))
            out.append((os.path.relpath(os.path.join(root, n), path), st.st_size, st.st_mtime))
    return sorted(out)


def prepare(data: str, args) -> dict:
    """Build (or reuse) every data set under ``data``; returns its description."""
    settings = {"train": args.train_count, "dev": args.dev_count, "variants": args.variants,
                "train_rirs": args.train_rirs, "test_rirs": args.test_rirs, "extra": args.extra_test_noise,
                "extra_files": files_of(args.extra_test_noise), "version": 2}
    stamp = os.path.join(data, "data.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            info = json.load(f)
        if info.get("settings") == settings:
            print(f"data: reusing {data} (built with the same settings)")
            return info
        shutil.rmtree(data)
    elif os.path.exists(data):
        shutil.rmtree(data)
    os.makedirs(data)
    t0 = time.perf_counter()
    info: dict = {"settings": settings}
    print(f"data: synthesising {args.train_count} training and {args.dev_count} held-out digits "
          f"(espeak-ng, flite) ...", flush=True)
    info["train"] = make_synthetic(os.path.join(data, "train"), args.train_count, 0, args.jobs)
    info["dev"] = make_synthetic(os.path.join(data, "dev"), args.dev_count, 1, args.jobs)
    info["noise_bank"] = make_noise_bank(os.path.join(data, "noise-train"), 0)
    print("data: simulating rooms (pyroomacoustics) ...", flush=True)
    make_rirs(os.path.join(data, "rirs-train"), args.train_rirs, 0, (0.2, 0.9))
    make_rirs(os.path.join(data, "rirs-test"), args.test_rirs, 1000, (0.4, 1.2))
    print("data: real test speech, aligned, under every condition ...", flush=True)
    sets, notes = real_words()
    info["real_words"] = {name: sorted(words) for name, words in sets.items()}
    info["notes"] = notes
    info["conditions"] = make_test_conditions(os.path.join(data, "test"), sets, args.variants,
                                              os.path.join(data, "rirs-test"), args.extra_test_noise)
    info["conditions"]["synthetic (held out)"] = {"clips": info["dev"]["written"], "by_set": {
        "synthetic": info["dev"]["written"]}, "dir": os.path.join(data, "dev")}
    info["seconds"] = round(time.perf_counter() - t0, 1)
    with open(stamp, "w") as f:
        json.dump(info, f, indent=1)
    return info


# ----------------------------------------------------------------------------------------- arms, training

def arm_policy(arm: str, data: str, preset: str = "adaptive", drop: Sequence[str] = ()) -> Optional[dict]:
    """The arm's augmentation policy (a pipeline ``augment`` value); ``preset``: the
    SpecAugment policy of the spectrogram arms; ``drop``: waveform ops left out of the
    waveform arms (an ablation)."""
    if arm == "none":
        return None
    if arm == "specaugment":
        return {"preset": preset}
    wave = [
        {"op": "speed", "factors": [0.9, 1.0, 1.1]},
        {"op": "reverb", "bank": os.path.join(data, "rirs-train"), "p": 0.5},
        {"op": "background_noise", "bank": os.path.join(data, "noise-train"), "snr_db": [0, 20], "p": 0.6},
        {"op": "noise", "colour": ["white", "pink", "brown"], "snr_db": [10, 30], "p": 0.3},
        {"op": "filter", "kind": "lowpass", "lowpass_hz": [2000, 7000], "p": 0.3},
        {"op": "vtlp", "alpha": [0.9, 1.1]},
    ]
    # the preset's ops after the waveform ops (a policy runs waveform ops first)
    from specstream.augment import preset as build_preset

    spec = build_preset(preset).to_dict()["ops"]
    unknown = set(drop) - {o["op"] for o in wave}
    if unknown:
        raise ValueError(f"--drop: {', '.join(sorted(unknown))} not among the waveform ops "
                         f"({', '.join(o['op'] for o in wave)})")
    wave = [o for o in wave if o["op"] not in drop]
    return {"ops": wave + spec + ([{"op": "mixup", "alpha": 0.4}] if arm.endswith("mixup") else [])}


def base_config(shards: List[str], seed: int, augment, batch: int, n_mels: int) -> dict:
    return {
        "source": {"shards": shards, "shuffle_shards": True, "block_rows": 64},
        "sampling": {"shuffle_buffer": 400, "interleave": 2},
        "decode": {"sample_rate": SAMPLE_RATE, "clip_seconds": 1.0, "num_cpus": 1},
        "labels": {"field": "cls", "vocab": DIGITS},
        "features": {"n_mels": n_mels},
        "augment": augment,
        "actors": {"compute": "tasks", "batch_size": 64},
        "deliver": {"batch_size": batch},
        "seed": seed,
    }


def featurize_tests(info: dict, n_mels: int) -> Dict[str, dict]:
    """Every test condition's features through the real pipeline (no augmentation), once:
    {condition: {"features", "length", "target", "set"}}."""
    import torch

    from specstream.pipeline import build_pipeline, torch_batches

    out = {}
    for cond, c in info["conditions"].items():
        shards = sorted(glob.glob(os.path.join(c["dir"], "shard-*.tar")))
        pipe = build_pipeline(base_config(shards, 0, None, 256, n_mels), reserved_cpus=0)
        feats, lengths, targets, sets, noises = [], [], [], [], []
        for b in torch_batches(pipe.dataset, batch_size=256, device="cpu", ledger=pipe.ledger):
            feats.append(b["features"])
            lengths.append(b["length"])
            targets.append(b["target"])
            for k in b["key"]:  # <label>/<set>__<word>__<variant>[__<noise>] (make-shards' key of the file)
                parts = k.split("/")[-1].split("__")
                sets.append(parts[0] if len(parts) > 1 else "synthetic")
                noises.append(parts[3] if len(parts) > 3 else None)
        t = pipe.close()["totals"]
        if not t["balanced"] or t["delivered"] != c["clips"]:
            raise RuntimeError(f"test condition {cond}: expected {c['clips']} clips, report {t}")
        out[cond] = {"features": torch.cat(feats), "length": torch.cat(lengths), "target": torch.cat(targets),
                     "set": sets, "noise": noises}
    return out


def accuracy(model, test: Dict[str, dict]) -> Tuple[Dict[str, float], Dict[str, Dict[str, float]],
                                                   Dict[str, Dict[str, float]]]:
    """Accuracy per condition, per (condition, test set) and per (noisy condition, noise)."""
    import torch

    model.eval()
    acc, per_set, per_noise = {}, {}, {}
    with torch.no_grad():
        for cond, t in test.items():
            pred = model(t["features"], t["length"]).argmax(-1)
            ok = (pred == t["target"]).numpy()
            acc[cond] = float(ok.mean())
            per_set[cond] = {s: float(np.mean([o for o, ss in zip(ok, t["set"]) if ss == s]))
                             for s in sorted(set(t["set"]))}
            names = sorted({n for n in t["noise"] if n is not None})
            if names:
                per_noise[cond] = {n: float(np.mean([o for o, nn in zip(ok, t["noise"]) if nn == n])) for n in names}
    return acc, per_set, per_noise


def ops_active(batch, counts: Dict[str, List[int]]) -> None:
    """Count, per op, the rows it was active for (``aug_params`` of ``log_params: true``)."""
    for row in batch.get("aug_params", []):
        for slot, p in json.loads(row).items():
            c = counts.setdefault(slot.split(":", 1)[1], [0, 0])
            c[0] += bool(p.get("active", True))
            c[1] += 1


def digit_net(n_mels: int, width: int):
    """The classifier: three stride-2 3x3 convolution blocks (BatchNorm, ReLU) over the
    utterance-normalised log-mel, the frequency axis kept (flattened into channels), a
    per-frame linear layer, then mean and max pooling over time and a linear layer to the 10
    digits. Small enough to train in seconds per epoch on one CPU core."""
    import torch
    from torch import nn

    from specstream.features import utterance_mvn

    class DigitNet(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c_in = [], 1
            for c_out in (width, 2 * width, 4 * width):
                layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
                c_in = c_out
            self.conv = nn.Sequential(*layers)
            f = n_mels
            for _ in range(3):
                f = (f - 1) // 2 + 1
            self.frame = nn.Sequential(nn.Conv1d(c_in * f, 128, 1), nn.BatchNorm1d(128), nn.ReLU())
            self.head = nn.Linear(256, len(DIGITS))

        def forward(self, feats, lengths):
            h = self.conv(utterance_mvn(feats, lengths).unsqueeze(1))  # [B, C, F', T']
            h = self.frame(h.flatten(1, 2))  # [B, 128, T']
            return self.head(torch.cat([h.mean(-1), h.amax(-1)], 1))

    return DigitNet()


def train_one(arm: str, seed: int, data: str, train_shards: List[str], args, test) -> dict:
    import torch

    from specstream.pipeline import build_pipeline

    torch.manual_seed(seed)
    cfg = base_config(train_shards, seed, arm_policy(arm, data, args.preset, args.drop), args.batch_size, args.n_mels)
    cfg["log_params"] = cfg["augment"] is not None  # which ops were active for each row (counted in epoch 0)
    pipe = build_pipeline(cfg, reserved_cpus=1)
    try:
        return _train(pipe, arm, seed, args, test)
    finally:
        pipe.close()


def _train(pipe, arm: str, seed: int, args, test) -> dict:
    import torch

    from specstream.pipeline import TrainStream
    from specstream.trainer import loss_fn

    stream = TrainStream(pipe.dataset, pipe.config, ledger=pipe.ledger)
    model = digit_net(args.n_mels, args.width)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-2)
    steps_per_epoch = math.ceil(args.train_count / args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch + 50,
                                                pct_start=0.15)
    history: List[dict] = []
    active: Dict[str, List[int]] = {}
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        te, losses, seen = time.perf_counter(), [], 0
        for batch in stream:
            loss = loss_fn(model(batch["features"], batch["length"]), batch["target"], False)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            seen += len(batch["key"])
            if epoch == 0:
                ops_active(batch, active)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "samples": seen,
                        "seconds": round(time.perf_counter() - te, 2),
                        "data_wait_fraction": round(stream.last_epoch.get("data_wait_s", 0.0)
                                                    / max(time.perf_counter() - te, 1e-9), 3)})
    train_s = time.perf_counter() - t0
    acc, per_set, per_noise = accuracy(model, test)
    totals = pipe.report()["totals"]
    return {"arm": arm, "seed": seed, "train_seconds": round(train_s, 1), "history": history,
            "accuracy": acc, "per_set": per_set, "per_noise": per_noise,
            "ops_active_epoch0": {op: round(a / n, 4) for op, (a, n) in active.items()},
            "report": {k: totals[k] for k in ("read", "delivered", "quarantined", "balanced")}}


# ----------------------------------------------------------------------------------------- summary

def summarise(runs: List[dict], arms: List[str], columns: List[str], key: str = "accuracy"
              ) -> Dict[str, Dict[str, dict]]:
    """{arm: {column: mean, std and count over the arm's runs}} of ``run[key][column]``; a
    column "cond / sub" reads ``run[key][cond][sub]`` (per test noise)."""
    def value(r, col):
        v = r[key]
        for part in col.split(" / ") if key != "accuracy" else [col]:
            v = v[part]
        return v

    out = {}
    for arm in arms:
        out[arm] = {}
        for col in columns:
            vals = [value(r, col) for r in runs if r["arm"] == arm]
            out[arm][col] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                             "runs": len(vals)}
    return out


def table(summary, arms, conditions, n: Dict[str, int]) -> str:
    head = "| arm | " + " | ".join(f"{c} (n={n[c]})" for c in conditions) + " |"
    lines = [head, "|---" * (len(conditions) + 1) + "|"]
    for arm in arms:
        cells = [f"{100 * summary[arm][c]['mean']:.1f} ± "
                 + (f"{100 * summary[arm][c]['std']:.1f}" if summary[arm][c]["runs"] > 1 else "n/a") for c in conditions]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(summary, arms, conditions, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(conditions)), 4.2))
    width = 0.8 / len(arms)
    x = np.arange(len(conditions))
    for i, arm in enumerate(arms):
        m = [100 * summary[arm][c]["mean"] for c in conditions]
        s = [100 * summary[arm][c]["std"] for c in conditions]
        ax.bar(x + (i - (len(arms) - 1) / 2) * width, m, width, yerr=s, capsize=2, label=arm)
    ax.axhline(10, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xticks(x)
    ax.set_xticklabels([c.replace(" (", "\n(") for c in conditions], fontsize=8)
    ax.set_ylabel("accuracy, % (mean ± std over seeds)")
    ax.set_ylim(0, 115)  # headroom for the legend
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, ncol=len(arms) + 1, loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_requirements() -> None:
    """Everything the experiment needs, checked before anything is built."""
    import importlib.util

    from specstream.tts import check_engines

    check_engines()
    missing = [p for p in (ASTERISK_ROOT, POCKETSPHINX) if not os.path.isdir(p)]
    if missing:
        raise SystemExit(f"error: {', '.join(missing)} missing: apt-get install asterisk-core-sounds-en-wav "
                         "pocketsphinx-testdata")
    mods = [m for m in ("pocketsphinx", "pyroomacoustics", "matplotlib") if importlib.util.find_spec(m) is None]
    if mods:
        raise SystemExit(f"error: {', '.join(mods)} not installed: pip install \"specstream[experiment]\"")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="results and data folder")
    p.add_argument("--quick", action="store_true", help="a small run: fewer clips, epochs, seeds (CI)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=ARMS)
    p.add_argument("--seeds", type=int, help="runs per arm (default 3; --quick 1)")
    p.add_argument("--epochs", type=int, help="default 8 (--quick 3)")
    p.add_argument("--train-count", type=int, help="synthetic training clips (default 3000; --quick 400)")
    p.add_argument("--dev-count", type=int, help="held-out synthetic clips (default 300; --quick 60)")
    p.add_argument("--variants", type=int, help="corrupted copies per word and condition (default 4; --quick 1)")
    p.add_argument("--train-rirs", type=int, help="training RIR bank size (default 60; --quick 8)")
    p.add_argument("--test-rirs", type=int, help="test rooms (default 16; --quick 4)")
    p.add_argument("--extra-test-noise", metavar="PATH",
                   help="a noise bank (folder of audio files or of shards) mixed into the real words at 0/5/10 dB")
    p.add_argument("--preset", default="adaptive", help="SpecAugment preset of the spectrogram arms (default "
                                                        "adaptive: length-relative time masks, Park et al. 2020)")
    p.add_argument("--n-mels", type=int, default=80)
    p.add_argument("--drop", nargs="+", default=[], metavar="OP",
                   help="leave these waveform ops out of the waveform arms (an ablation), e.g. --drop reverb vtlp")
    p.add_argument("--data", help="the data folder (default OUT/data): several runs can share one")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--width", type=int, default=16, help="CNN width (channels of its first block)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--jobs", type=int, default=2, help="synthesis processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the training loop (the pipeline "
                                                           "runs beside it)")
    args = p.parse_args(argv)
    q = args.quick
    for name, full, quick in (("seeds", 3, 1), ("epochs", 8, 3), ("train_count", 3000, 400), ("dev_count", 300, 60),
                              ("variants", 4, 1), ("train_rirs", 60, 8), ("test_rirs", 16, 4)):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    check_requirements()
    try:
        arm_policy("wave+spec", "", args.preset, args.drop)
    except ValueError as e:
        p.error(str(e))
    if args.extra_test_noise:
        from specstream.io.banks import BankError, check_bank

        try:
            check_bank(args.extra_test_noise)
        except BankError as e:
            p.error(f"--extra-test-noise: {e}")
    t_start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    data = args.data or os.path.join(args.out, "data")
    info = prepare(data, args)
    print(f"data: {info['train']['written']} training clips ({info['train']['voices']} voices), "
          f"{len(info['train']['skipped'])} skipped; real words: "
          + ", ".join(f"{k} {len(v)}" for k, v in info["real_words"].items())
          + f"; built in {info.get('seconds', 0):.0f} s", flush=True)

    import ray
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from specstream.pipeline import init_ray

    init_ray()
    t1 = time.perf_counter()
    test = featurize_tests(info, args.n_mels)
    conditions = list(test)
    n = {c: int(len(test[c]["target"])) for c in conditions}
    print(f"test features: {len(conditions)} conditions, {sum(n.values())} clips in "
          f"{time.perf_counter() - t1:.0f} s", flush=True)
    train_shards = sorted(glob.glob(os.path.join(data, "train", "shard-*.tar")))
    runs = []
    for seed in range(args.seeds):
        for arm in args.arms:
            r = train_one(arm, seed, data, train_shards, args, test)
            runs.append(r)
            print(f"{arm:16s} seed {seed}: " + "  ".join(f"{c} {100 * a:.0f}%" for c, a in r["accuracy"].items())
                  + f"  ({r['train_seconds']:.0f} s, last loss {r['history'][-1]['loss']:.3f})", flush=True)
    summary = summarise(runs, args.arms, conditions)
    noise_cols = [f"{c} / {n}" for c in runs[0]["per_noise"] for n in runs[0]["per_noise"][c]]
    noise_summary = summarise(runs, args.arms, noise_cols, key="per_noise")
    total = time.perf_counter() - t_start
    settings = {k: getattr(args, k) for k in ("seeds", "epochs", "train_count", "dev_count", "variants", "train_rirs",
                                               "test_rirs", "preset", "n_mels", "batch_size", "width", "lr", "quick",
                                               "drop")}
    results = {"settings": settings, "arms": {a: arm_policy(a, "DATA", args.preset, args.drop) for a in args.arms}, "conditions": conditions,
               "clips": n, "by_set": {c: info["conditions"][c]["by_set"] for c in conditions},
               "real_words": info["real_words"], "notes": info["notes"], "runs": runs, "summary": summary, "summary_per_noise": noise_summary,
               "seconds": round(total, 1), "data_seconds": info.get("seconds")}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    md = table(summary, args.arms, conditions, n)
    n_noise = {c: sum(1 for x in test[c.split(" / ")[0]]["noise"] if x == c.split(" / ")[1]) for c in noise_cols}
    md_noise = table(noise_summary, args.arms, noise_cols, n_noise)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(f"Accuracy (%), mean ± std over {args.seeds} seed(s); {args.epochs} epochs on "
                f"{info['train']['written']} synthetic clips.\n\n{md}\n\nPer test noise:\n\n{md_noise}\n")
    plot(summary, args.arms, conditions, os.path.join(args.out, "results.png"),
         f"spoken digits: trained on {info['train']['written']} synthetic clips, tested on real speech "
         f"({args.seeds} seed(s), {args.epochs} epochs)")
    print(md)
    print(f"results: {os.path.join(args.out, 'results.json')}, results.md, results.png  (total {total:.0f} s)")
    ray.shutdown()
    return 0 if all(r["report"]["balanced"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
