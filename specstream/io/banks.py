"""Load audio banks (background noise, babble speech, room impulse responses) for the
augmentation ops (which see only the bank's tensors: :class:`AudioBank`): a folder of audio files or WebDataset tar shards, local or on object
storage, decoded and resampled to the pipeline's rate.

A bank source is a path, glob or brace pattern, or an ``s3://`` URL: a folder means every
audio file and ``.tar`` shard under it (recursively). Missing or empty banks raise
:class:`~specstream.errors.BankError` naming the source; individual undecodable clips
are reported in the bank's ``problems`` (and logged), never silently dropped.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import braceexpand
import torch

from ..errors import BankError
from .audio import AudioError, Resampler, decode_audio
from .samples import AUDIO_EXTS, ReaderOptions, iter_samples
from .compress import SHARD_SUFFIXES
from .shards import Storage, match_url, open_shard

log = logging.getLogger(__name__)


@dataclass
class AudioBank:
    """Clips concatenated into one 1-D tensor: clip i is ``data[starts[i]:starts[i] + lengths[i]]``."""

    data: torch.Tensor  # [total] float32
    starts: torch.Tensor  # [R] int64
    lengths: torch.Tensor  # [R] int64
    sample_rate: int
    names: List[str] = field(default_factory=list)
    source: str = ""

    @classmethod
    def from_clips(cls, clips: Sequence[torch.Tensor], sample_rate: int, names: Sequence[str] = (),
                   source: str = "") -> "AudioBank":
        clips = [torch.as_tensor(c, dtype=torch.float32).reshape(-1) for c in clips]
        clips = [c for c in clips if c.numel() > 0]
        if not clips:
            raise BankError(f"bank {source!r}: no audio in it")
        lengths = torch.tensor([c.numel() for c in clips], dtype=torch.int64)
        starts = torch.cumsum(lengths, 0) - lengths
        return cls(torch.cat(clips), starts, lengths, int(sample_rate), list(names), source)

    def __len__(self) -> int:
        return int(self.lengths.numel())

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def seconds(self) -> float:
        return float(self.lengths.sum()) / self.sample_rate

    def to(self, device) -> "AudioBank":
        if self.data.device == torch.device(device):
            return self
        return AudioBank(self.data.to(device), self.starts.to(device), self.lengths.to(device),
                         self.sample_rate, self.names, self.source)

    def segments(self, clip: torch.Tensor, offset: torch.Tensor, n: int) -> torch.Tensor:
        """[B, n]: clip ``clip[b]`` read from ``offset[b]`` on, looping over the clip when
        it is shorter than n (so any clip fills any sample)."""
        t = torch.arange(n, device=self.device, dtype=torch.int64)[None, :]
        idx = offset[:, None] + t  # one index tensor, updated in place
        idx.remainder_(self.lengths[clip][:, None]).add_(self.starts[clip][:, None])
        return self.data[idx]



_EXTS = tuple("." + e for e in AUDIO_EXTS) + SHARD_SUFFIXES


def _usable(path: str) -> bool:
    return path.lower().endswith(_EXTS)


def bank_items(source: str, storage: Optional[Storage] = None) -> List[str]:
    """The audio files and tar shards a bank source names (a folder is listed recursively),
    sorted; BankError if none."""
    storage = storage or Storage()
    found: List[str] = []
    for url in braceexpand.braceexpand(source):
        try:
            found.extend(p for p in match_url(url, storage, _usable, recursive=True) if _usable(p))
        except OSError as e:
            raise BankError(f"bank {source!r}: cannot list {url}: {e}") from None
    if not found:
        missing = [u for u in braceexpand.braceexpand(source)
                   if "://" not in u and not any(c in u for c in "*?[") and not os.path.exists(u)]
        if missing:
            raise BankError(f"bank {source!r}: {missing[0]} does not exist")
        raise BankError(f"bank {source!r}: no audio files or .tar shards there "
                        f"(looked for {', '.join(_EXTS)})")
    return found


def _iter_clips(url: str, storage: Storage):
    """(name, audio bytes) of a file, or of every sample's audio in a tar shard; problems
    as (name, None, reason)."""
    if not url.lower().endswith(SHARD_SUFFIXES):
        with open_shard(url, storage) as f:  # a remote read resumes after transient errors
            data = f.read()
        yield url, data, None
        return
    with open_shard(url, storage) as stream:
        for kind, obj in iter_samples(stream, url, ReaderOptions()):
            if kind == "row":
                yield f"{url}#{obj['key']}", obj["audio"], None
            else:
                yield f"{url}#{obj['key']}", None, obj["reason"]


def load_bank(source: str, sample_rate: int, storage: Optional[Storage] = None,
              max_clip_seconds: Optional[float] = None) -> AudioBank:
    """Decode every clip of a bank to mono float32 at ``sample_rate`` (cut to
    ``max_clip_seconds`` when given). BankError when nothing usable is there."""
    storage = storage or Storage()
    clips, names, problems = [], [], []
    resample = Resampler(sample_rate)
    for url in bank_items(source, storage):
        try:
            for name, data, reason in _iter_clips(url, storage):
                if data is None:
                    problems.append((name, reason))
                    continue
                try:
                    x, sr = decode_audio(data)
                except AudioError as e:
                    problems.append((name, str(e)))
                    continue
                if max_clip_seconds is not None:
                    x = x[: int(max_clip_seconds * sr)]
                t = torch.from_numpy(resample(x, sr))
                if float(t.abs().max()) == 0.0:
                    problems.append((name, "silent clip"))
                    continue
                clips.append(t)
                names.append(name)
        except OSError as e:
            problems.append((url, f"cannot read: {e}"))
    for name, reason in problems:
        log.warning("bank %s: skipped %s: %s", source, name, reason)
    if not clips:
        first = "; ".join(f"{n}: {r}" for n, r in problems[:3])
        raise BankError(f"bank {source!r}: no usable audio ({len(problems)} problem(s): {first})")
    bank = AudioBank.from_clips(clips, sample_rate, names, source)
    bank.problems = problems  # type: ignore[attr-defined]
    return bank


def check_bank(source: str, storage: Optional[Storage] = None) -> Tuple[int, str]:
    """Cheap check for the driver: the source lists at least one item and its first clip
    decodes. Returns (number of files/shards, first clip name)."""
    storage = storage or Storage()
    items = bank_items(source, storage)
    reasons = []
    for url in items[:8]:
        try:
            for name, data, reason in _iter_clips(url, storage):
                if data is None:
                    reasons.append(f"{name}: {reason}")
                    continue
                try:
                    decode_audio(data)
                    return len(items), name
                except AudioError as e:
                    reasons.append(f"{name}: {e}")
        except OSError as e:
            reasons.append(f"{url}: {e}")
    raise BankError(f"bank {source!r}: none of its first clips decodes ({'; '.join(reasons[:3])})")


_CACHE: Dict[tuple, AudioBank] = {}


def cached_loader(sample_rate: int, storage: Optional[Storage] = None):
    """A bank loader for :meth:`Policy.bind_banks` that loads each source once per process."""
    storage = storage or Storage()

    def load(source: str) -> AudioBank:
        key = (source, sample_rate, storage.endpoint_url, storage.region)
        bank = _CACHE.get(key)
        if bank is None:
            bank = _CACHE[key] = load_bank(source, sample_rate, storage)
        return bank

    return load
