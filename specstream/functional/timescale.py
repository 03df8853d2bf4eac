"""Time-scale kernels on padded waveform batches: band-limited resampling (speed), the
phase vocoder and overlap-add (tempo)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from . import cpu_kernels, cpu_mixing
from .frames import zero_padding

try:  # torchaudio's own sinc kernel (sinc_interp_hann), so the result is resample()'s
    from torchaudio.functional.functional import _get_sinc_resample_kernel
except ImportError:  # pragma: no cover - another torchaudio layout: its public resample
    _get_sinc_resample_kernel = None

_SINC_KERNELS: dict = {}


def _sinc_kernel(orig_freq: int, new_freq: int, device, dtype):
    """(o, n, kernel [n, taps], width): the rates reduced to coprime o -> n and torchaudio's
    polyphase sinc kernel for them, built once per rate pair, device and dtype."""
    g = math.gcd(int(orig_freq), int(new_freq))
    o, n = int(orig_freq) // g, int(new_freq) // g
    key = (o, n, torch.device(device), dtype)
    if key not in _SINC_KERNELS:
        kernel, width = _get_sinc_resample_kernel(orig_freq, new_freq, g, 6, 0.99, "sinc_interp_hann", None,
                                                  device, dtype)
        _SINC_KERNELS[key] = (kernel[:, 0, :].contiguous(), width)
    return (o, n) + _SINC_KERNELS[key]


def _kernel_applies(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> bool:
    return (x.is_cpu and x.dtype == torch.float32 and x.dim() == 2 and x.is_contiguous()
            and not x.requires_grad and (out is None or (out.dtype == x.dtype and out.is_contiguous()
                                                         and out.is_cpu))
            and cpu_kernels.available())


def resample(x: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """``torchaudio.functional.resample(x, orig_freq, new_freq)`` (band-limited sinc, Hann
    window, width 6, roll-off 0.99) of [B, N], with the polyphase kernel built once per rate
    pair and device. On the CPU the numba kernel (:func:`.cpu_mixing.resample_rows`: the
    same sums); elsewhere one matrix product of the signal's strided windows (a strided
    convolution with few taps per phase costs several times more)."""
    if orig_freq == new_freq:
        return x
    if _get_sinc_resample_kernel is None or x.requires_grad:
        return AF.resample(x, orig_freq, new_freq)
    o, n, kernel, width = _sinc_kernel(orig_freq, new_freq, x.device, x.dtype)
    B, N = x.shape
    target = (n * N + o - 1) // o  # the length torchaudio keeps, ceil(n N / o)
    if _kernel_applies(x):
        rows = torch.arange(B)
        return cpu_mixing.resample_rows(x, torch.full((B,), N), kernel, width, o, n, rows, x.new_empty(B, target))
    windows = torch.nn.functional.pad(x, (width, width + o)).unfold(-1, kernel.shape[1], o)  # [B, frames, taps]
    frames = windows.shape[1]
    y = torch.mm(windows.reshape(B * frames, -1), kernel.t()).view(B, -1)  # frame f, phase p -> sample f * n + p
    return y[:, :target]


def _rate_kernel(o: int, n: int, x: torch.Tensor):
    """(kernel [new, taps], width, orig, new) as the CPU kernel takes them for the rate pair
    o -> n: torchaudio's sinc kernel of the reduced pair, or for o = n the copy (one tap of
    weight 1)."""
    if o == n:
        return torch.ones(1, 1), 0, 1, 1
    oo, nn, kernel, width = _sinc_kernel(o, n, x.device, x.dtype)
    return kernel, width, oo, nn


def resample_groups_into(x: torch.Tensor, lengths: torch.Tensor, groups, out: torch.Tensor) -> torch.Tensor:
    """:func:`resample_into` for several rate pairs at once: ``groups`` is a list of (rows,
    orig, new) (rows distinct across groups), ``lengths`` [B] the lengths of every row of x.
    On the CPU one kernel call for all the listed rows (one parallel region instead of one
    per pair: the rows are shared out over the threads together); elsewhere one
    :func:`resample_into` per pair. The same values either way."""
    if not groups:
        return out
    if _get_sinc_resample_kernel is not None and _kernel_applies(x, out):
        kernels = [_rate_kernel(int(o), int(n), x) for _, o, n in groups]
        # each row's group, in numpy (host rows: no torch call per group); the rows then come
        # in the batch's own order (neighbouring rows, shared out evenly over the threads)
        grp = np.full(x.shape[0], -1, np.int64)
        listed = 0
        for g, (r, _, _) in enumerate(groups):
            r = r.numpy() if r.is_cpu else r.cpu().numpy()
            if r.size and (r.min() < 0 or r.max() >= x.shape[0]):
                raise ValueError(f"resample_groups_into: rows must be distinct indices below {x.shape[0]}")
            grp[r] = g
            listed += r.size
        rows = np.flatnonzero(grp >= 0)
        if rows.size != listed:
            raise ValueError(f"resample_groups_into: rows must be distinct indices below {x.shape[0]}")
        L = lengths.numpy() if lengths.is_cpu else lengths.cpu().numpy()
        return cpu_mixing.resample_groups(x, torch.from_numpy(np.ascontiguousarray(L[rows])), torch.from_numpy(rows),
                                          torch.from_numpy(grp[rows]), kernels, out)
    for r, o, n in groups:
        resample_into(x, lengths[r], r, o, n, out)
    return out


def resample_into(x: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor, orig_freq: int, new_freq: int,
                  out: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of x [B, N], each resampled over its own first ``lengths`` samples
    (:func:`resample` of the row alone), written whole into the same rows of ``out`` [B, W]:
    the first ceil(length new / orig) samples (cut at W), then zeros (orig = new: a copy of
    the row's own samples). Other rows of out are left as they are. On the CPU one kernel
    call straight into out's rows (no gathered copy of the rows, no result to scatter)."""
    o, n = int(orig_freq), int(new_freq)
    if _get_sinc_resample_kernel is not None and _kernel_applies(x, out):
        return cpu_mixing.resample_rows(x, lengths, *_rate_kernel(o, n, x), rows, out)
    L = lengths.to(torch.int64)
    x = zero_padding(x.index_select(0, rows)[:, : int(L.max()) if L.numel() else 0], L, inplace=True)  # a copy
    y = resample(x, o, n)[:, : out.shape[1]]
    y = zero_padding(y, torch.div(L * n + o - 1, o, rounding_mode="floor"), inplace=True)  # y: a fresh copy
    out[rows] = torch.nn.functional.pad(y, (0, out.shape[1] - y.shape[1]))
    return out


def overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """[B, n + hop (T - 1)]: frames [B, n, T] (frame j's n samples in column j) added at
    hop j: ``F.fold``'s overlap-add. When hop divides n, as n / hop shifted adds of
    [B, T, hop] blocks (fold runs a scalar col2im loop on the CPU)."""
    B, n, T = frames.shape
    size = n + hop * (T - 1)
    if n % hop or T == 0:
        return F.fold(frames, (1, size), (1, n), stride=(1, hop))[:, 0, 0]
    R = n // hop
    out = frames.new_zeros(B, T + R - 1, hop)
    for k in range(R):
        out[:, k:k + T].add_(frames[:, k * hop:(k + 1) * hop].transpose(1, 2))
    return out.reshape(B, size)


PV_QUIET = 1e-3  # phase_vocoder: cells below this fraction of the sample's peak magnitude (-60 dB) are "quiet"


def phase_vocoder(spec: torch.Tensor, rate: float, phase_advance: torch.Tensor, quiet: float = PV_QUIET
                  ) -> torch.Tensor:
    """Phase-vocoder time stretch of complex STFTs [..., freq, T] by ``rate`` (> 1: fewer
    frames), as ``torchaudio.functional.phase_vocoder``, but with output frame i read at
    input time i * rate computed on its own in float64: torchaudio's float ``arange`` rounds
    its steps differently depending on how many frames there are (54.0 alone, 53.999996
    in a longer batch), so a sample alone and inside a padded batch read different frames."""
    if rate == 1.0:
        return spec
    shape = spec.shape
    spec = spec.reshape((-1,) + tuple(shape[-2:]))
    S, Fq, T = spec.shape
    steps = torch.arange(int(math.ceil(T / rate)) + 1, device=spec.device, dtype=torch.float64) * rate
    steps = steps[steps < T]
    i0 = steps.floor().to(torch.int64)
    real = spec.real.dtype
    alphas = (steps - i0.to(torch.float64)).to(real)[:, None]
    # time-major real and imaginary planes [2, T + 2, S * Fq] (one copy): reading frames i0,
    # i0 + 1 is then a gather of whole rows, and every step below a contiguous pass that
    # torch vectorises (complex angle, abs and polar are scalar loops on the CPU; along
    # time, the last axis, each read was a strided gather)
    planes = torch.view_as_real(spec).permute(3, 2, 0, 1).reshape(2, T, S * Fq)
    planes = torch.nn.functional.pad(planes, [0, 0, 0, 2])
    re, im = planes[0], planes[1]
    advance = torch.broadcast_to(phase_advance, (S, Fq, 1)).reshape(1, S * Fq).to(real)
    # angle and magnitude once per input frame (then real gathers), not per output frame
    ang, norm = torch.atan2(im, re), torch.hypot(re, im)
    phase_0 = ang[:1]
    a0, a1 = ang.index_select(0, i0), ang.index_select(0, i0 + 1)
    phase = a1.sub_(a0).sub_(advance)
    phase = phase - 2 * math.pi * torch.round(phase / (2 * math.pi))
    # The angle of a cell far below its sample's peak is mostly float noise, which differs
    # between FFT implementations (CPU and CUDA), and the running phase sum keeps every
    # error for the rest of the clip. A quiet cell's measured phase deviation is therefore
    # blended towards none (the bin's nominal advance), as unit phasors, smoothly in the cell's
    # level (weight m^2 / (m^2 + floor^2), floor QUIET of the sample's peak): cells well
    # above the floor keep their measured deviation, and no threshold flips.
    peak = norm.reshape(T + 2, S, Fq).amax(dim=(0, 2))  # [S]
    floor = (quiet * peak)[:, None].expand(S, Fq).reshape(1, S * Fq)
    n0, n1 = norm.index_select(0, i0), norm.index_select(0, i0 + 1)
    w = torch.minimum(n0, n1).square_()
    w = w.div_((w + floor * floor).clamp_(min=torch.finfo(w.dtype).tiny))  # a silent sample: 0 / 0 -> 0
    phase = torch.atan2(w * torch.sin(phase), (w * torch.cos(phase)).add_(1 - w))
    phase = torch.cat([phase_0, (phase + advance)[:-1]], dim=0)
    mag = n1.sub_(n0).mul_(alphas).add_(n0)
    # the running phase reaches pi * hop * frames (tens of thousands of radians): summed in
    # float32 it keeps ~1e-2 rad, and the sum's rounding depends on the device's scan order.
    # Summed in float64 and wrapped to [0, 2 pi) it is exact to float32 on every device.
    acc = torch.remainder(torch.cumsum(phase.to(torch.float64), 0), 2 * math.pi).to(real)
    out = torch.complex(mag * torch.cos(acc), mag.mul_(torch.sin(acc)))  # polar, vectorised: [T_out, S * Fq]
    return out.reshape(-1, S, Fq).permute(1, 2, 0).reshape(tuple(shape[:-1]) + (out.shape[0],))
