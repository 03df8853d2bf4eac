"""Mel scale and filterbanks: Hz <-> mel (HTK, Slaney), mel filterbanks on (VTLP-warped)
frequency axes, and mel-scale noise colours. Pure torch, float64 construction."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from . import cpu_kernels


def hz_to_mel(f: torch.Tensor, scale: str = "htk") -> torch.Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    return torch.where(f < min_log_hz, f / f_sp, min_log_hz / f_sp + torch.log(f / min_log_hz) / logstep)


def mel_to_hz(m: torch.Tensor, scale: str = "htk") -> torch.Tensor:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return torch.where(m < min_log_mel, f_sp * m, min_log_hz * torch.exp(logstep * (m - min_log_mel)))


def vtlp_warp(freqs: torch.Tensor, alpha: torch.Tensor, sample_rate: int, boundary_hz: float) -> torch.Tensor:
    """Jaitly & Hinton (2013) piecewise-linear VTLP warp of frequencies [..., n] by per-sample
    factors alpha [B] -> [B, n]: f * alpha up to F_hi * min(alpha, 1) / alpha, then the line
    that maps the Nyquist frequency onto itself. ``boundary_hz`` (F_hi) must be below Nyquist."""
    nyq = sample_rate / 2.0
    if not 0 < boundary_hz < nyq:
        raise ValueError(f"vtlp: boundary_hz must be in (0, {nyq:g}) (below Nyquist at {sample_rate} Hz), "
                         f"got {boundary_hz:g}")
    a = alpha[:, None].to(freqs.dtype)
    f = freqs.reshape(1, -1)
    if a.is_cpu and f.is_cpu and not (a.requires_grad or f.requires_grad):
        a, f = a.numpy(), f.numpy()  # the same arithmetic in numpy: a few [B, n] passes, fewer dispatches
        edge = boundary_hz * np.minimum(a, 1.0) / a
        upper = nyq - (nyq - boundary_hz * np.minimum(a, 1.0)) / (nyq - edge) * (nyq - f)
        return torch.from_numpy(np.where(f <= edge, f * a, upper))
    edge = boundary_hz * torch.clamp(a, max=1.0) / a
    upper = nyq - (nyq - boundary_hz * torch.clamp(a, max=1.0)) / (nyq - edge) * (nyq - f)
    return torch.where(f <= edge, f * a, upper)


@dataclass(frozen=True)
class FilterPairs:
    """Triangular mel filterbanks [B, n_mels, n_freqs] as they are built: a frequency lies
    in one interval between knots and feeds only that interval's two filters, frequency f
    of sample b filter ``first[b, f]`` with weight ``weights[b, f, 0]`` and the next filter
    with ``weights[b, f, 1]`` (a filter outside [0, n_mels) has weight 0). Per-sample (VTLP)
    banks in this form are 2 n_freqs values a sample instead of n_mels n_freqs, which the
    CPU log-mel kernel reads directly; :meth:`dense` gives the usual bank."""

    first: torch.Tensor  # [B, n_freqs] int64 in [-1, n_mels - 1]
    weights: torch.Tensor  # [B, n_freqs, 2] float
    n_mels: int

    @property
    def shape(self) -> tuple:
        """The dense bank's shape."""
        return (self.first.shape[0], self.n_mels, self.first.shape[1])

    def to(self, *args, **kwargs) -> "FilterPairs":
        """``weights.to(...)`` (dtype and/or device); ``first`` follows the device."""
        w = self.weights.to(*args, **kwargs)
        return FilterPairs(self.first.to(w.device), w, self.n_mels)

    def dense(self) -> torch.Tensor:
        """[B, n_mels, n_freqs]: the weights scattered into zeros (the weight of a filter
        outside the bank is dropped, as the CPU kernel drops it)."""
        idx = torch.stack([self.first, self.first + 1], 1)
        inside = (idx >= 0) & (idx < self.n_mels)
        w = torch.where(inside, self.weights.transpose(1, 2), torch.zeros((), dtype=self.weights.dtype,
                                                                           device=self.weights.device))
        out = torch.zeros(self.shape, dtype=self.weights.dtype, device=self.weights.device)
        return out.scatter_add_(1, idx.clamp(0, max(self.n_mels - 1, 0)), w) if out.numel() else out


def mel_fbanks(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: Optional[float] = None,
               mel_scale: str = "htk", norm: Optional[str] = None, alpha: Optional[torch.Tensor] = None,
               boundary_hz: Optional[float] = None, device=None, pairs: bool = False):
    """Mel filterbanks [B, n_mels, n_freqs] (float32, built in float64 as librosa: narrow low
    filters are sensitive), on frequency axes warped per sample by VTLP factors ``alpha`` [B]
    (energy at frequency f lands in the mel filter of warp(f)); without ``alpha`` one
    unwarped bank [1, n_mels, n_freqs], exactly torchaudio's ``melscale_fbanks``. With
    ``pairs`` the same banks as :class:`FilterPairs` (no dense bank is built)."""
    f64 = torch.float64
    dev = alpha.device if alpha is not None else device
    all_freqs, f_pts = _axes(sample_rate, n_fft, n_mels, float(f_min),
                             float(f_max if f_max is not None else sample_rate / 2), mel_scale, dev)
    if alpha is None:
        warped = all_freqs[None, :]
    else:
        warped = vtlp_warp(all_freqs, alpha.to(f64), sample_rate,
                           boundary_hz if boundary_hz is not None else 0.6 * sample_rate / 2)
    banks = _triangles(warped, f_pts, n_mels, norm)
    return banks if pairs else banks.dense()


@functools.lru_cache(maxsize=32)
def _axes(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float, mel_scale: str, device):
    """(the STFT bins' frequencies [n_freqs], the mel knots in Hz [n_mels + 2]), float64 on
    ``device``: fixed per configuration, so built once (callers only read them)."""
    f64 = torch.float64
    all_freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1, device=device, dtype=f64)
    m = torch.linspace(float(hz_to_mel(torch.tensor(f_min, dtype=f64), mel_scale)),
                       float(hz_to_mel(torch.tensor(f_max, dtype=f64), mel_scale)), n_mels + 2,
                       device=device, dtype=f64)
    return all_freqs, mel_to_hz(m, mel_scale)


def _triangles(warped: torch.Tensor, f_pts: torch.Tensor, n_mels: int, norm: Optional[str]) -> FilterPairs:
    """Filter m's weight at each (warped) frequency w [B, n_freqs], max(0, min((w - f_m) /
    (f_m+1 - f_m), (f_m+2 - w) / (f_m+2 - f_m+1))), as torchaudio's ``melscale_fbanks``
    computes it, in float64, stored float32. Only two filters can be non-zero at w, those
    of the knot interval [f_k, f_k+1) holding it (m = k - 1 falling, m = k rising): their
    two weights are computed with that formula (no [B, n_freqs, n_mels] grid: for
    per-sample VTLP banks the grid cost as much as the log-mel)."""
    if warped.is_cpu and cpu_kernels.available():
        return FilterPairs(*cpu_kernels.triangles(warped, f_pts, n_mels, norm == "slaney"), n_mels)  # one pass
    f_diff = f_pts[1:] - f_pts[:-1]
    k = torch.searchsorted(f_pts, warped.contiguous(), right=True) - 1  # f_pts[k] <= w < f_pts[k + 1]
    first = (k - 1).clamp(-1, n_mels - 1)
    m = torch.stack([first, first + 1], -1)  # [B, n_freqs, 2]
    ok = (m >= 0) & (m < n_mels) & (m == torch.stack([k - 1, k], -1))
    mc = m.clamp(0, max(n_mels - 1, 0))
    w = warped[:, :, None]
    down = -(f_pts[mc] - w) / f_diff[mc]
    up = (f_pts[mc + 2] - w) / f_diff[mc + 1]
    val = torch.clamp(torch.minimum(down, up), min=0.0)
    if norm == "slaney":
        val = val * (2.0 / (f_pts[mc + 2] - f_pts[mc]))
    return FilterPairs(first, torch.where(ok, val, torch.zeros_like(val)).to(torch.float32), n_mels)


COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}


def noise_mel_shape(fbanks: torch.Tensor, sample_rate: int, beta: float) -> torch.Tensor:
    """[n_mels]: the relative mel-bin power of noise whose power spectral density goes as
    f ** -beta (0 white, 1 pink, 2 brown), through the filterbank ``fbanks`` [n_mels, n_freqs]
    in use: what a spectrum analyser would show for that noise on this mel scale (white
    noise is not flat across mel bins when the filters widen). Normalised to mean 1. The DC
    bin takes the PSD of the first non-zero frequency."""
    n_freqs = fbanks.shape[-1]
    f = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64, device=fbanks.device)
    f[0] = f[1] if n_freqs > 1 else 1.0
    psd = f ** (-float(beta))
    shape = fbanks.to(torch.float64) @ psd
    shape = shape.clamp(min=shape.max() * 1e-12 if shape.numel() else 0.0)
    return (shape / shape.mean()).to(torch.float32)
