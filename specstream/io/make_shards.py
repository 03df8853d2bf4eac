"""A folder of audio files (+ optional CSV/JSONL manifest) -> WebDataset tar shards.

Each sample gets the audio member (kept as-is when its format is one the reader accepts,
else re-encoded to FLAC; or always FLAC with ``reencode="flac"``), a ``.json`` with label,
sample rate, duration, channels, source path and any manifest fields, a ``.cls`` with the
label and a ``.txt`` with the transcript when there is one. Shards are written with
webdataset's ``ShardWriter``, limited by sample count and/or bytes.

Without a manifest, a file's label is its parent folder's name (the folder-per-class
layout) and files directly in SRC have no label.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import soundfile as sf
from tqdm import tqdm

from .samples import AUDIO_EXTS

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-/]")


def audio_extensions() -> set:
    """File extensions that libsndfile (soundfile) can decode here."""
    exts = {f.lower() for f in sf.available_formats()}
    exts |= {"wav", "flac", "ogg", "oga", "opus", "mp3", "aif", "aiff", "au", "snd", "caf", "w64"}
    return exts


@dataclass
class MakeShardsSummary:
    files_seen: int = 0
    samples_written: int = 0
    shards: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def skipped_by_reason(self) -> Dict[str, int]:
        return dict(Counter(reason.split(":")[0] for _, reason in self.skipped))

    def to_text(self) -> str:
        lines = [f"files seen: {self.files_seen}", f"samples written: {self.samples_written}",
                 f"shards written: {len(self.shards)}", f"skipped: {len(self.skipped)}"]
        for path, reason in self.skipped[:50]:
            lines.append(f"  {path}: {reason}")
        if len(self.skipped) > 50:
            lines.append(f"  ... and {len(self.skipped) - 50} more")
        return "\n".join(lines)


def sample_key(relpath: str) -> str:
    """A webdataset-safe key: no dots (the extension split happens at the first dot)."""
    stem = os.path.splitext(relpath.replace(os.sep, "/"))[0]
    return _KEY_UNSAFE.sub("_", stem)


def read_manifest(path: str) -> List[dict]:
    """Rows of a CSV (with a header) or JSONL manifest; each needs ``path``."""
    rows: List[dict] = []
    with open(path, encoding="utf-8", newline="") as f:
        if path.endswith((".jsonl", ".json")):
            for n, line in enumerate(f, 1):
                if line.strip():
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError(f"{path}:{n}: expected a JSON object per line")
                    rows.append(obj)
        else:
            rows = [dict(r) for r in csv.DictReader(f)]
    for n, r in enumerate(rows, 1):
        if not r.get("path"):
            raise ValueError(f"{path}: row {n} has no 'path'")
    return rows


def _entries(src: str, manifest: Optional[str]) -> Iterator[dict]:
    if manifest:
        for row in read_manifest(manifest):
            yield dict(row)
        return
    exts = audio_extensions()
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            if name.rsplit(".", 1)[-1].lower() not in exts:
                continue
            rel = os.path.relpath(os.path.join(root, name), src)
            parent = os.path.dirname(rel)
            entry = {"path": rel}
            if parent:
                entry["label"] = os.path.basename(parent)
            yield entry


def make_shards(src: str, out: str, manifest: Optional[str] = None, max_count: int = 1000,
                max_bytes: int = 1 << 30, reencode: str = "keep", prefix: str = "shard",
                shuffle: bool = True, seed: int = 0, progress: bool = True,
                compress: Optional[str] = None) -> MakeShardsSummary:
    """Write shards ``OUT/{prefix}-000000.tar...``; returns the summary (also on skips).

    ``shuffle`` (default) writes the files in a seeded random order, so that shards mix
    classes: streamed training reads shards mostly in order, and a folder-per-class
    corpus written in folder order would feed one class at a time.

    ``compress="gz"`` writes gzip-compressed shards (``.tar.gz``), which the reader streams.
    Every file must resolve (symlinks followed) inside ``src``: a manifest path with ``..``,
    an absolute path elsewhere or a symlink leading out of the folder is skipped with that
    reason, never read.
    """
    import webdataset as wds

    if reencode not in ("keep", "flac"):
        raise ValueError("reencode must be 'keep' or 'flac'")
    if compress not in (None, "gz"):
        raise ValueError("compress must be None or 'gz'")
    root = os.path.realpath(src)
    os.makedirs(out, exist_ok=True)
    summary = MakeShardsSummary()
    entries = list(_entries(src, manifest))
    if shuffle:
        random.Random(seed).shuffle(entries)
    seen_keys = set()
    pattern = os.path.join(out, f"{prefix}-%06d.tar" + (".gz" if compress == "gz" else ""))
    writer = wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_bytes, verbose=0)
    try:
        for entry in tqdm(entries, desc="make-shards", unit="file", disable=not progress):
            summary.files_seen += 1
            rel = str(entry.pop("path"))
            path = rel if os.path.isabs(rel) else os.path.join(src, rel)
            real = os.path.realpath(path)
            if os.path.commonpath([real, root]) != root:
                summary.skipped.append((rel, "outside the source folder: resolves (.., absolute path or symlink) "
                                             f"to a file outside {src}; not read"))
                continue
            relk = os.path.relpath(os.path.abspath(path), os.path.abspath(src))
            key = sample_key(relk if not relk.startswith("..") else os.path.relpath(real, root))
            if key in seen_keys:
                summary.skipped.append((rel, "duplicate key: another file maps to key " + key))
                continue
            if not os.path.isfile(real):  # FIFOs, devices, sockets, folders: never opened (a FIFO would block)
                summary.skipped.append((rel, "missing: file not found" if not os.path.lexists(path)
                                        else "not a regular file (a FIFO, device or folder); not read"))
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read()
                info = sf.info(io.BytesIO(data))
            except FileNotFoundError:
                summary.skipped.append((rel, "missing: file not found"))
                continue
            except Exception as e:  # noqa: BLE001 - report any undecodable file
                summary.skipped.append((rel, f"undecodable: {e}"))
                continue
            if info.frames <= 0:
                summary.skipped.append((rel, "empty: no audio frames"))
                continue
            ext = os.path.splitext(path)[1].lstrip(".").lower()
            if reencode == "flac" or ext not in AUDIO_EXTS:
                x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
                buf = io.BytesIO()
                sf.write(buf, x, sr, format="FLAC", subtype="PCM_16" if info.subtype != "PCM_24" else "PCM_24")
                data, ext = buf.getvalue(), "flac"
            meta = {"sample_rate": info.samplerate, "duration": info.frames / info.samplerate,
                    "channels": info.channels, "source": rel}
            meta.update({k: v for k, v in entry.items() if v not in (None, "")})
            sample = {"__key__": key, ext: data, "json": json.dumps(meta).encode()}
            label = entry.get("label")
            if label not in (None, ""):
                sample["cls"] = (",".join(map(str, label)) if isinstance(label, list) else str(label)).encode()
            text = entry.get("text")
            if text not in (None, ""):
                sample["txt"] = str(text).encode()
            writer.write(sample)
            seen_keys.add(key)
            summary.samples_written += 1
    finally:
        n_shards, total = writer.shard, writer.total
        writer.close()
    if total == 0:  # ShardWriter opens its first shard eagerly; leave no empty shard behind
        os.remove(pattern % 0)
        n_shards = 0
    summary.shards = [pattern % i for i in range(n_shards)]
    return summary
