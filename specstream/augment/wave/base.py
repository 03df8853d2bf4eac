"""Waveform ops: the base classes. Same contract as every op (:mod:`..core`): draw, record,
transform the active rows, padding back to 0. A batch is padded waveforms [B, N] with
per-sample ``lengths`` in samples; an op reads nothing of a sample past its own length, so a
sample's result does not depend on what else shares the batch. Ops that change durations
(speed, tempo) return new lengths and declare ``time_factor``.

Large random fields (noise) are not stored: the parameters hold a per-sample stream key
and the field is regenerated from it, so replay is exact.
"""
from __future__ import annotations

from typing import Callable

import torch

from ...errors import BankError
from ..core import Op, Params, WaveBatch  # noqa: F401 - WaveBatch is part of this family's API


class WaveOp(Op):
    domain = "wave"

    def time_factor(self, params: Params) -> torch.Tensor:
        """Per sample, input duration / output duration (1 for ops that keep time)."""
        return torch.ones_like(params["active"], dtype=torch.float64)


BankLoader = Callable[[str], object]


class BankOp(WaveOp):
    """An op that reads a bank of recordings. ``bank`` names its source (a folder of audio
    files or tar shards, local or s3://), or is a loaded bank: any object with ``data``
    ([total] float32), ``starts`` and ``lengths`` ([R] int64) tensors, ``sample_rate`` and
    ``to(device)`` (``specstream.io.banks.AudioBank``). :meth:`bind` attaches the loaded bank:
    the ops see tensors, never files."""

    def __init__(self, bank, p: float = 1.0):
        super().__init__(p)
        if isinstance(bank, str) and bank:
            self.bank, self._bank = bank, None
        elif all(hasattr(bank, a) for a in ("data", "starts", "lengths")):
            self.bank, self._bank = getattr(bank, "source", "") or "<in-memory>", bank
        else:
            raise BankError(f"{self.name}: bank must name a folder or shards of recordings")

    def bind(self, loader: BankLoader) -> None:
        if self._bank is None:
            self._bank = loader(self.bank)

    def loaded(self, device):
        if self._bank is None:
            raise BankError(f"{self.name}: bank {self.bank!r} is not loaded (Policy.bind_banks)")
        self._bank = self._bank.to(device)
        return self._bank

    def config(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def bank_segments(bank, clip: torch.Tensor, offset: torch.Tensor, n: int, looped=None) -> torch.Tensor:
    """[B, n]: clip ``clip[b]`` of ``bank`` read from ``offset[b]`` on, looping over the clip
    when it is shorter than n (so any clip fills any sample). ``looped``: the bank's
    :func:`looped_bank` (for at least n samples): each segment is then one contiguous row
    copy, with no per-sample index."""
    if looped is not None and looped[0] >= n:
        _, data, begin = looped
        return data.unfold(0, n, 1).index_select(0, begin[clip] + offset)
    t = torch.arange(n, device=bank.data.device, dtype=torch.int64)[None, :]
    idx = offset[:, None] + t  # one index tensor, updated in place
    idx.remainder_(bank.lengths[clip][:, None]).add_(bank.starts[clip][:, None])
    return bank.data[idx]


def looped_bank(bank, n: int):
    """(span, data, begin): the bank's clips laid end to end, each followed by its own
    continuation (looped) for ``span`` >= n samples, clip i starting at ``begin[i]``; so any
    n samples of a clip from any offset are one contiguous slice. None when that copy would
    be large beside the bank (many clips, long segments)."""
    span = 1 << max(0, int(n) - 1).bit_length()
    R = len(bank)
    if R == 0 or R * span > 2 * bank.data.numel() + (1 << 22):
        return None
    lengths, starts = bank.lengths, bank.starts
    size = lengths + span
    begin = torch.cumsum(size, 0) - size
    which = torch.repeat_interleave(torch.arange(R, device=lengths.device), size)
    j = torch.arange(int(size.sum()), device=lengths.device) - begin[which]
    return span, bank.data[starts[which] + j.remainder(lengths[which])], begin
