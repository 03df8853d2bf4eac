"""Room acoustics: reverberation by convolution with recorded or simulated room impulse
responses, aligned on their direct path."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from ...errors import BankError
from ...functional.dsp import fast_fft_size, fft_convolve_spectra, match_power, match_power_
from ..core import Context, Params, WaveBatch, check, check_choice, check_number, randint
from .base import BankOp


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
    def from_bank(cls, bank, pre: int = 40, max_seconds: float = 1.0,
                  normalize: str = "direct") -> "RIRBank":
        if normalize not in ("direct", "energy", "none"):
            raise BankError("reverb.normalize: must be direct, energy or none")
        tail = max(1, int(round(max_seconds * bank.sample_rate)))
        R = len(bank)
        rirs = torch.zeros(R, pre + tail, dtype=torch.float32, device=bank.data.device)
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


class Reverb(BankOp):
    """Reverberation: convolution with a room impulse response from a bank (batched FFT
    convolution). RIRs are aligned on their direct path, so the direct sound stays where it
    was (content and labels do not shift); the reverberant tail past the sample's length is
    cut. ``normalize``: scale each RIR so its direct path is 1 (``direct``), to unit energy
    (``energy``), or not at all; ``keep_level`` rescales the output to the input's power."""
    draw_reads_batch = False  # draw() uses the keyed uniforms and settings alone

    name = "reverb"
    keeps_zero_padding = True  # 0 past each length when the input is
    in_place = True  # transform_rows: the active rows of an owned batch, where they are

    def __init__(self, bank, normalize: str = "direct", max_seconds: float = 1.0, keep_level: bool = True,
                 p: float = 1.0):
        super().__init__(bank, p)
        self.normalize = check_choice(self.name, "normalize", normalize, ("direct", "energy", "none"))
        self.max_seconds = check_number(self.name, "max_seconds", max_seconds, 0.0, 60.0, lo_open=True)
        self.keep_level = check(self.name, "keep_level", keep_level, isinstance(keep_level, bool), "true or false")
        self._rirs: Optional[RIRBank] = None
        self._spectra = None  # (bank, {(FFT size, device, dtype): [R, m // 2 + 1] RIR spectra})

    def rirs(self, device) -> RIRBank:
        if self._rirs is None:
            self._rirs = RIRBank.from_bank(self.loaded(device), max_seconds=self.max_seconds,
                                           normalize=self.normalize)
        self._rirs = self._rirs.to(device)
        return self._rirs

    def _rir_spectra(self, bank: RIRBank, rir: torch.Tensor, m: int, dtype):
        """(spectra, index): real FFTs at size m of the whole bank, transformed once per FFT
        size and kept (a few sizes), with ``rir`` to pick each row's, when the bank is no
        larger than a batch; else the rows' own (index None)."""
        key = (m, bank.rirs.device, dtype)
        if self._spectra is None or self._spectra[0] is not bank:
            self._spectra = (bank, {})
        cache = self._spectra[1]
        if key not in cache:
            if len(bank) > rir.numel():
                return torch.fft.rfft(bank.rirs.index_select(0, rir).to(dtype), m), None
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = torch.fft.rfft(bank.rirs.to(dtype), m)
        return cache[key], rir

    def draw(self, ctx: Context, batch: WaveBatch) -> Params:
        return {"rir": randint(ctx.uniform(1)[:, 0], 0, len(self.rirs(ctx.device)) - 1)}

    def _wet(self, audio: torch.Tensor, rows: Optional[torch.Tensor], rir: torch.Tensor):
        """(wet, dry) [b, N]: rows ``rows`` of audio [B, N] (all with None) convolved with the
        RIRs ``rir``, aligned on the direct path (a view of a fresh result, not yet cut at
        the lengths), and the rows themselves (a view). The rows are gathered once, straight
        into the zero-padded FFT input."""
        bank = self.rirs(audio.device)
        N, K = audio.shape[-1], bank.rirs.shape[-1]
        m = fast_fft_size(N + K - 1)
        buf = audio.new_empty(audio.shape[0] if rows is None else rows.numel(), m)
        buf[:, N:].zero_()
        if rows is None:
            buf[:, :N] = audio
        elif audio.is_cpu:
            torch.index_select(audio, 0, rows, out=buf[:, :N])  # written where it is
        else:
            buf[:, :N] = audio.index_select(0, rows)
        spectra, index = self._rir_spectra(bank, rir, m, audio.dtype)
        wet = fft_convolve_spectra(buf, spectra, K, m, index=index, n=N)[:, bank.pre:bank.pre + N]
        return wet, buf[:, :N]

    def transform(self, batch: WaveBatch, params: Params) -> WaveBatch:
        wet, dry = self._wet(batch.audio, None, params["rir"])
        # cut at each length (a view of a fresh result), level kept with keep_level
        return batch.replace(audio=match_power(wet, dry, batch.lengths, self.keep_level, inplace=True))

    def transform_rows(self, batch: WaveBatch, params: Params, rows: torch.Tensor) -> WaveBatch:
        wet, dry = self._wet(batch.audio, rows, params["rir"])
        match_power_(batch.audio, rows, wet, dry, batch.lengths[rows], self.keep_level)
        return batch
