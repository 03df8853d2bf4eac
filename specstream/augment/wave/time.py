"""Time-scale changes: speed (resampling: tempo and pitch) and tempo (phase vocoder: pitch
kept). Both return new lengths and declare their time factor, so frame targets follow."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np
import torch

from ...functional.timescale import overlap_add, phase_vocoder, resample_groups_into
from ...functional.frames import lengths_mask, pad_to, zero_padding
from ..core import Context, Params, WaveBatch, check, check_number, randint
from .base import WaveOp


def _groups(factor: torch.Tensor):
    """(value, rows) for each distinct factor != 1, in increasing order."""
    if factor.is_cpu:  # the rows found in numpy (a few values: fewer dispatches)
        f = factor.numpy()
        for v in np.unique(f).tolist():
            if v != 1.0:
                yield v, torch.from_numpy(np.flatnonzero(f == v))
        return
    for v in sorted(set(factor.tolist())):
        if v != 1.0:
            yield v, (factor == v).nonzero()[:, 0]


def _assemble(x: torch.Tensor, lengths: torch.Tensor, groups) -> Tuple[torch.Tensor, torch.Tensor]:
    """One zero-padded batch from per-group outputs [(rows, y [b, n], new lengths [b])];
    rows in no group (factor 1) keep their audio."""
    B, N = x.shape
    n_out = max([N] + [int(nl.max()) for _, _, nl in groups])
    out = x.new_empty(B, n_out)  # every element written once below (plus the groups' rows again)
    out[:, :N] = x
    out[:, N:] = 0
    new_len = lengths.clone()
    for rows, y, nl in groups:
        y = zero_padding(y[:, :n_out], nl, inplace=True)  # y: the op's own result (or a view of it)
        ny = y.shape[-1]
        out[:, :ny].index_copy_(0, rows, y)
        if ny < n_out:
            out[:, ny:].index_fill_(0, rows, 0)
        new_len[rows] = nl
    n_used = int(new_len.max()) if new_len.numel() else 0
    return out[:, : max(n_used, 1)], new_len


class _FactorOp(WaveOp):
    """An op that changes durations by a factor drawn from ``factors`` (> 1: shorter)."""
    draw_reads_batch = False  # draw() uses the keyed uniforms and settings alone

    changes = frozenset({"features", "lengths"})
    keeps_zero_padding = True  # rows it resamples are zeroed past their lengths, the others kept as they came

    def __init__(self, factors: Sequence[float] = (0.9, 1.0, 1.1), p: float = 1.0):
        super().__init__(p)
        fs = tuple(factors) if isinstance(factors, (list, tuple)) else (factors,)
        check(self.name, "factors", list(fs), bool(fs) and all(isinstance(f, (int, float)) and 0.25 <= f <= 4
                                                                 for f in fs), "factors in [0.25, 4]")
        self.factors = tuple(float(f) for f in fs)

    def draw(self, ctx: Context, batch: WaveBatch) -> Params:
        i = randint(ctx.uniform(1)[:, 0], 0, len(self.factors) - 1)
        if i.is_cpu:  # a host draw: the same float32 factors, without a tensor to build
            return {"factor": torch.from_numpy(np.asarray(self.factors, dtype=np.float32)[i.numpy()])}
        return {"factor": torch.tensor(self.factors, device=ctx.device)[i]}

    def time_factor(self, params):
        return torch.where(params["active"], params["factor"].double(), 1.0)


class Speed(_FactorOp):
    """Speed perturbation (Ko et al. 2015): resample by a factor drawn from ``factors``,
    changing tempo and pitch; a sample of L samples becomes ceil(L / factor) long.
    Band-limited sinc resampling (torchaudio's kernel), batched per distinct factor."""

    name = "speed"

    @staticmethod
    def rates(sample_rate: int, factor: float) -> Tuple[int, int]:
        orig = int(round(sample_rate * factor))
        g = math.gcd(orig, sample_rate)
        return orig // g, sample_rate // g

    def transform(self, batch: WaveBatch, params: Params) -> WaveBatch:
        x, L, sr = batch.audio, batch.lengths, batch.sample_rate
        groups = [(rows,) + self.rates(sr, v) for v, rows in _groups(params["factor"])]
        if not groups:
            return batch
        B, N = x.shape
        if L.is_cpu:  # the new lengths and the kept rows in numpy (the same integers)
            Ln = L.numpy()
            new_np, kept_np = Ln.copy(), np.ones(B, dtype=bool)
            for rows, orig, new in groups:
                r = rows.numpy()
                new_np[r] = (Ln[r] * new + orig - 1) // orig
                kept_np[r] = False
            new_len, kept = torch.from_numpy(new_np), torch.from_numpy(np.flatnonzero(kept_np))
        else:
            new_len = L.clone()
            kept = torch.ones(B, dtype=torch.bool, device=x.device)
            for rows, orig, new in groups:
                new_len[rows] = torch.div(L[rows] * new + orig - 1, orig, rounding_mode="floor")
                kept[rows] = False
            kept = kept.nonzero()[:, 0]
        W = max(int(new_len.max()), 1)
        out = x.new_empty(B, W)  # every row written once: kept rows copied (rate 1:1), the others resampled
        resample_groups_into(x, L, groups + ([(kept, 1, 1)] if kept.numel() else []), out)
        return batch.replace(audio=out, lengths=new_len)


class Tempo(_FactorOp):
    """Tempo perturbation without a pitch change: phase-vocoder time stretch of the STFT,
    then overlap-add; a sample of L samples becomes round(L / factor) long.

    Per sample exact: the STFT frames past a sample's own last frame are zeroed (alone they
    do not exist), and the overlap-add is normalised by the window envelope of the sample's
    own output frames, so a sample's output is the same alone and in any padded batch."""

    name = "tempo"

    def __init__(self, factors: Sequence[float] = (0.9, 1.0, 1.1), n_fft: int = 512, hop_length: int = 128,
                 p: float = 1.0):
        super().__init__(factors, p)
        self.n_fft = check_number(self.name, "n_fft", n_fft, 16, 1 << 16, integer=True)
        self.hop_length = check_number(self.name, "hop_length", hop_length, 1, self.n_fft, integer=True)

    def _stretch(self, x: torch.Tensor, L: torch.Tensor, v: float) -> torch.Tensor:
        n_fft, hop = self.n_fft, self.hop_length
        window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
        spec = torch.stft(x, n_fft, hop, window=window, center=True, pad_mode="constant", return_complex=True)
        frames = L // hop + 1  # a sample's own STFT frames (as torch.stft of it alone)
        # masked_fill, not a multiply: 0 * (negative real) is -0.0, whose angle is pi, and the
        # phase vocoder reads the angle of the first frame past the end
        spec.masked_fill_(~lengths_mask(frames, spec.shape[-1])[:, None, :], 0)  # in place: keeps stft's time-major memory
        advance = torch.linspace(0, math.pi * hop, n_fft // 2 + 1, device=x.device)[..., None]
        stretched = phase_vocoder(spec, v, advance)  # [b, bins, T_out], steps i * v exact per frame
        T_out = stretched.shape[-1]
        own = torch.ceil(frames.to(torch.float64) / v).to(torch.int64)  # output frames alone
        on = lengths_mask(own, T_out).to(x.dtype)[:, None, :]
        seg = torch.fft.irfft(stretched, n=n_fft, dim=1).mul_(window[None, :, None] * on)  # [b, n_fft, T_out]
        ola = overlap_add(seg, hop)
        # the window envelope depends only on a sample's own frame count: one per distinct count
        counts, which = torch.unique(own, return_inverse=True)
        on_u = lengths_mask(counts, T_out).to(x.dtype)[:, None, :]
        env = overlap_add((window ** 2)[None, :, None] * on_u, hop)[which]
        y = torch.where(env > 1e-11, ola / env.clamp(min=1e-11), torch.zeros_like(ola))
        return y[:, n_fft // 2:]

    def transform(self, batch: WaveBatch, params: Params) -> WaveBatch:
        x, L = batch.audio, batch.lengths
        groups = []
        for v, rows in _groups(params["factor"]):
            new_len = torch.round(L[rows].to(torch.float64) / v).to(torch.int64)
            y = self._stretch(x[rows][:, : int(L[rows].max())], L[rows], v)
            groups.append((rows, pad_to(y, int(new_len.max())), new_len))
        if not groups:
            return batch
        audio, lengths = _assemble(x, L, groups)
        return batch.replace(audio=audio, lengths=lengths)
