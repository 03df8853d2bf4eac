"""Audio banks held in device memory: background noise, babble speech, room impulse responses.

Pure torch: the clips arrive decoded and resampled (``specstream.io.banks`` loads them
from a folder or shards, local or object storage); a bank is built once per actor and
kept on its device, and ops gather from it with one indexed read per batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence

import torch


class BankError(ValueError):
    """A bank is missing, empty, or unusable (raised when the pipeline is built)."""


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

@dataclass
class RIRBank:
    """Room impulse responses aligned on their direct path: row i holds RIR i shifted so
    that its direct-path peak sits at index ``pre`` (the ``pre`` samples before it keep the
    band-limited peak's left side), cut to at most ``pre + tail`` samples. Convolving and
    reading the output from index ``pre`` leaves the direct sound where it was."""

    rirs: torch.Tensor  # [R, pre + K]
    pre: int
    direct: torch.Tensor  # [R] index of the direct-path peak in the original RIR
    sample_rate: int
    names: List[str] = field(default_factory=list)
    source: str = ""

    @classmethod
    def from_bank(cls, bank: AudioBank, pre: int = 40, max_seconds: float = 1.0,
                  normalize: str = "direct") -> "RIRBank":
        if normalize not in ("direct", "energy", "none"):
            raise BankError("reverb: normalize must be direct, energy or none")
        tail = max(1, int(round(max_seconds * bank.sample_rate)))
        R = len(bank)
        rirs = torch.zeros(R, pre + tail, dtype=torch.float32, device=bank.device)
        direct = torch.zeros(R, dtype=torch.int64)
        for i in range(R):
            s, n = int(bank.starts[i]), int(bank.lengths[i])
            h = bank.data[s:s + n]
            d = int(torch.argmax(h.abs()))
            if float(h[d].abs()) == 0.0:
                raise BankError(f"RIR bank {bank.source!r}: clip {bank.names[i] if bank.names else i} is silent")
            lo = max(0, d - pre)
            seg = h[lo:d + tail]
            rirs[i, pre - (d - lo): pre - (d - lo) + seg.numel()] = seg
            direct[i] = d
        if normalize == "direct":
            rirs = rirs / rirs[:, pre:pre + 1].abs()
        elif normalize == "energy":
            rirs = rirs / torch.linalg.vector_norm(rirs, dim=1, keepdim=True)
        return cls(rirs, pre, direct, bank.sample_rate, bank.names, bank.source)

    def __len__(self) -> int:
        return int(self.rirs.shape[0])

    def to(self, device) -> "RIRBank":
        if self.rirs.device == torch.device(device):
            return self
        return RIRBank(self.rirs.to(device), self.pre, self.direct, self.sample_rate, self.names, self.source)
