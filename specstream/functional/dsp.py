"""Signal kernels on padded waveform batches [B, N] with per-sample lengths (0 past each
length on the way in and out)."""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from . import cpu_kernels, cpu_mixing
from . import random as _random
from .frames import lengths_mask, zero_padding
from .random import stream_uniform

try:  # the recursion of torchaudio's lfilter (compiled; CPU and CUDA)
    from torchaudio.functional.filtering import _lfilter_core_loop as _iir_loop
except ImportError:  # pragma: no cover - another torchaudio layout: its public lfilter
    _iir_loop = None


def power(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean square over each sample's own length, [B], for x that is zero past each length
    (the batch contract): no mask and no full-size temporary."""
    return torch.linalg.vector_norm(x, dim=-1).square_() / lengths.clamp(min=1).to(x.dtype)


def mix_at_snr(x: torch.Tensor, noise: torch.Tensor, lengths: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """x + g * noise with g per sample such that power(x) / power(g * noise), both over the
    sample's own length, equals 10 ** (snr_db / 10). A silent sample (or silent noise) gets
    no noise: its SNR is undefined. ``noise`` is scratch: it may be cut at each length in
    place. On the CPU (float32, numba) one kernel pass per row, the powers in float64."""
    if cpu_mixing.mixable(x, noise) and x.is_contiguous() and noise.is_contiguous():
        return cpu_mixing.snr_mix(x, noise, lengths, snr_db)
    zero_padding(noise, lengths, inplace=True)
    ps, pn = power(x, lengths), power(noise, lengths)
    g = torch.sqrt(ps / (pn.clamp(min=1e-20) * 10.0 ** (snr_db / 10.0)))
    g = torch.where(pn > 0, g, torch.zeros_like(g))
    return torch.addcmul(x, g[:, None].to(x.dtype), noise)


def mix_at_snr_(x: torch.Tensor, rows: torch.Tensor, noise: torch.Tensor, lengths: torch.Tensor,
                snr_db: torch.Tensor) -> torch.Tensor:
    """In place: rows ``rows`` (distinct) of x [B, N] become :func:`mix_at_snr` of them with
    ``noise`` [len(rows), N] (``lengths``, ``snr_db`` per listed row); the other rows are
    untouched. Returns x. On the CPU (float32, numba) the kernel mixes the rows where they
    are; elsewhere they are gathered, mixed and written back."""
    if cpu_mixing.mixable(x, noise) and x.is_contiguous() and noise.is_contiguous() and rows.is_cpu:
        return cpu_mixing.snr_mix(x, noise, lengths, snr_db, rows=rows, out=x)
    return x.index_copy_(0, rows, mix_at_snr(x.index_select(0, rows), noise, lengths, snr_db))


def mix_segments_at_snr_(x: torch.Tensor, rows: torch.Tensor, lengths: torch.Tensor, data: torch.Tensor,
                         starts: torch.Tensor, count: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """In place: rows ``rows`` (distinct) of x become :func:`mix_segments_at_snr` of them
    (``lengths``, ``starts``, ``count``, ``snr_db`` per listed row); the other rows are
    untouched. Returns x."""
    if _segments_fused(x, data) and rows.is_cpu:
        return cpu_mixing.segment_mix(x, lengths, data, starts, count, snr_db, rows=rows, out=x)
    return x.index_copy_(0, rows, mix_segments_at_snr(x.index_select(0, rows), lengths, data, starts, count, snr_db))


def _segments_fused(x: torch.Tensor, data: torch.Tensor) -> bool:
    return cpu_mixing.mixable(x) and x.is_contiguous() and data.dtype == torch.float32 and data.is_cpu


def mix_segments_at_snr(x: torch.Tensor, lengths: torch.Tensor, data: torch.Tensor, starts: torch.Tensor,
                        count: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """:func:`mix_at_snr` of x [B, N] with noise read from ``data`` (1-D): sample b's noise
    is the sum of its first count[b] segments data[starts[b, k] : starts[b, k] + N]
    (``starts`` [B, K]), each brought to unit power over the sample's own length before
    summing. On the CPU (float32, numba) the noise is built row by row inside one kernel."""
    if _segments_fused(x, data):
        return cpu_mixing.segment_mix(x, lengths, data, starts, count, snr_db)
    windows = data.unfold(0, x.shape[-1], 1)
    noise = unit_power_sum(lambda k: windows.index_select(0, starts[:, k]), lengths, count, x)
    return mix_at_snr(x, noise, lengths, snr_db)


def unit_power_sum(segment, lengths: torch.Tensor, count: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B, N] (B = len(lengths), N and dtype those of ``like``): the sum over k < count[b]
    of ``segment(k)`` (a new [B, N] tensor) with each row cut at its length and brought to
    unit power over it first."""
    noise = like.new_zeros(lengths.shape[0], like.shape[-1])
    for k in range(int(count.max()) if count.numel() else 0):
        seg = zero_padding(segment(k).to(like.dtype), lengths, inplace=True)
        level = torch.rsqrt(power(seg, lengths).clamp(min=1e-20))
        noise.addcmul_(seg, (level * (k < count).to(like.dtype))[:, None])
    return noise


def match_power(y: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor, keep: bool = True,
                inplace: bool = False) -> torch.Tensor:
    """y [B, N] (any row stride) cut at each sample's length and, with ``keep``, scaled so
    that its power over the length equals ref's. ``inplace``: y is scratch (cut where it
    is). On the CPU (float32, numba) one kernel pass per row into a new tensor."""
    if cpu_mixing.mixable(y, ref) and (y.shape[-1] < 2 or y.stride(-1) == 1):
        return cpu_mixing.level(y, ref, lengths, keep)
    y = zero_padding(y, lengths, inplace=inplace)
    if keep:
        y = y * torch.sqrt(power(ref, lengths) / power(y, lengths).clamp(min=1e-20))[:, None]
    return y


def match_power_(out: torch.Tensor, rows: torch.Tensor, y: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor,
                 keep: bool = True) -> torch.Tensor:
    """In place: rows ``rows`` (distinct) of ``out`` [B, N] become :func:`match_power` of
    y and ref (both [len(rows), N], ``lengths`` per listed row); the other rows are
    untouched. Returns out."""
    if (cpu_mixing.mixable(out, y, ref) and out.is_contiguous() and (y.shape[-1] < 2 or y.stride(-1) == 1)
            and rows.is_cpu):
        return cpu_mixing.level(y, ref, lengths, keep, rows=rows, out=out)
    return out.index_copy_(0, rows, match_power(y, ref, lengths, keep))


@functools.lru_cache(maxsize=256)
def fast_fft_size(n: int) -> int:
    """The smallest 5-smooth integer (2^a 3^b 5^c) >= n: an FFT size pocketfft and cuFFT
    handle fast, often far below the next power of two (34,560 instead of 65,536 for
    33,817)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def fft_convolve(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Full linear convolution of [B, N] with [B, K] through a real FFT of a 5-smooth size
    (N + K - 1 itself is often a slow FFT size, the next power of two often twice too big)."""
    n = x.shape[-1] + h.shape[-1] - 1
    m = fast_fft_size(n)
    return torch.fft.irfft(torch.fft.rfft(x, m) * torch.fft.rfft(h, m), m)[..., :n]


def fft_convolve_spectra(x: torch.Tensor, spectra: torch.Tensor, k: int, m: int,
                         index: Optional[torch.Tensor] = None, n: Optional[int] = None) -> torch.Tensor:
    """:func:`fft_convolve` of [B, N] with filters of length ``k`` given by their real FFTs
    ``spectra`` [B, m // 2 + 1] at size ``m`` (= ``fast_fft_size(N + k - 1)``): for a fixed
    bank of filters, transformed once. ``index``: row i takes spectra[index[i]] of a bank
    [R, m // 2 + 1]. x may come
    already zero-padded to m columns, with ``n`` its signal length (no padded copy)."""
    n = x.shape[-1] if n is None else n
    X = torch.fft.rfft(x, m)
    X = X.mul_(spectra if index is None else spectra.index_select(0, index))
    return torch.fft.irfft(X, m)[..., :n + k - 1]


def biquad(kind: str, f0: torch.Tensor, sample_rate: int, q: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """RBJ cookbook low- or high-pass biquad coefficients per sample: (b [B, 3], a [B, 3]),
    normalised so a[:, 0] = 1. Float64 host values without a gradient (the filter op's) are
    computed in numpy (a few values per batch, where each torch operation's dispatch costs
    more than the arithmetic): the same formulas, with numpy's cos and sin, which differ
    from torch's by an ulp for some cutoffs."""
    if kind not in ("lowpass", "highpass"):
        raise ValueError(f"biquad: kind must be lowpass or highpass, got {kind!r}")
    host = f0.is_cpu and f0.dtype == torch.float64 and not f0.requires_grad
    xp = np if host else torch
    w0 = 2 * math.pi * (f0.numpy() if host else f0) / sample_rate
    cos, alpha = xp.cos(w0), xp.sin(w0) / (2 * q)
    if kind == "lowpass":
        b = xp.stack([(1 - cos) / 2, 1 - cos, (1 - cos) / 2], -1)
    else:
        b = xp.stack([(1 + cos) / 2, -(1 + cos), (1 + cos) / 2], -1)
    a = xp.stack([1 + alpha, -2 * cos, 1 - alpha], -1)
    b, a = b / a[:, :1], a / a[:, :1]
    return (torch.from_numpy(b), torch.from_numpy(a)) if host else (b, a)


def impulse_response(b: torch.Tensor, a: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` samples of the impulse response of the IIR filter b / a, float64,
    [B, n] for per-row coefficients [B, taps] ([1, n] for one shared set [taps]), on b's
    device. Computed on the host by the filter's own recursion in float64 (the CPU kernel,
    else torchaudio's loop): a few rows of scalar steps, where the recursion is cheap and as
    exact as the filter itself. (Matrix-power shortcuts lose digits when the poles sit close
    to 1 and to each other: a 1 Hz, Q = 10 biquad at 48 kHz.)"""
    f64, cpu, device = torch.float64, torch.device("cpu"), b.device
    b, a = b.detach().to(cpu, f64), a.detach().to(cpu, f64)
    if a.dim() == 1:
        b, a = b[None], a[None]
    taps = max(a.shape[-1], b.shape[-1])
    b, a = F.pad(b, (0, taps - b.shape[-1])), F.pad(a, (0, taps - a.shape[-1]))
    rows = max(a.shape[0], b.shape[0])
    b, a = b.expand(rows, taps).contiguous(), a.expand(rows, taps).contiguous()
    impulse = torch.zeros(rows, n, dtype=f64)
    impulse[:, :1] = 1.0
    return _lfilter_cpu(impulse, b, a).to(device)


def lfilter(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Causal IIR filtering of [B, N] with per-row coefficients [B, order + 1] (or one shared
    set [order + 1]) from rest, no clamping, in float64 (in float32 a low cutoff's poles are
    lost); the result has x's dtype.

    - On the CPU with numba: one fused pass per row (:func:`.cpu_kernels.iir_rows`).
    - On the CPU without it: torchaudio's compiled recursion (after a shifted-row FIR).
    - On a GPU: an exact convolution with the filter's first N impulse-response samples
      (:func:`impulse_response`, computed on the host), as a real FFT product. torchaudio's
      recursion there runs N sequential steps with one thread per row.
    - With a gradient: torchaudio's differentiable lfilter."""
    if _fused(x, b, a):
        return cpu_kernels.iir_rows(x, b, a)
    if x.requires_grad or b.requires_grad or a.requires_grad:
        f64 = torch.float64
        return AF.lfilter(x.to(f64), a.to(f64), b.to(f64), clamp=False, batching=a.dim() == 2).to(x.dtype)
    if _host(x) or x.numel() == 0:
        return _lfilter_cpu(x, b, a)
    return causal_convolve(x, impulse_response(b, a, x.shape[-1]).to(x.device))


_GPU_PATH_ON_CPU = False  # tests: the CPU takes the GPU's path (see gpu_path_on_cpu)


def _host(x: torch.Tensor) -> bool:
    return x.is_cpu and not _GPU_PATH_ON_CPU


@contextlib.contextmanager
def gpu_path_on_cpu():
    """Within the block, CPU tensors take the GPU's filter path (FFT products with the
    impulse response) instead of the CPU's recursion: tests compare the two on any machine.
    Combine with :func:`.cpu_kernels.torch_path` to bypass the kernel too. Not for use while
    other threads filter."""
    global _GPU_PATH_ON_CPU
    saved, _GPU_PATH_ON_CPU = _GPU_PATH_ON_CPU, True
    try:
        yield
    finally:
        _GPU_PATH_ON_CPU = saved


def _lfilter_cpu(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """:func:`lfilter` on the CPU: the kernel when it applies, else torchaudio's compiled
    recursion in float64 after the feed-forward part as order + 1 multiply-adds of shifted
    rows (a short FIR; a grouped convolution costs far more for so few taps)."""
    if _fused(x, b, a):
        return cpu_kernels.iir_rows(x, b, a)
    dtype, f64 = x.dtype, torch.float64
    taps = max(a.shape[-1], b.shape[-1])  # torchaudio's lfilter wants as many of each
    b, a = F.pad(b.to(f64), (0, taps - b.shape[-1])), F.pad(a.to(f64), (0, taps - a.shape[-1]))
    if _iir_loop is None:
        return AF.lfilter(x.to(f64), a, b, clamp=False, batching=a.dim() == 2).to(dtype)
    x = x.to(f64).contiguous()
    shared = a.dim() == 1
    a0 = a[..., :1]
    bn, an = b / a0, a / a0
    order = a.shape[-1]
    N = x.shape[-1]
    if x.numel() == 0:
        return x.to(dtype)

    def coef(j):
        return bn[j] if shared else bn[:, j:j + 1]

    fir = x * coef(0)
    for j in range(1, min(order, N)):
        fir[..., j:].addcmul_(x[..., : N - j], coef(j))
    inp = fir.reshape(-1, 1, N) if shared else fir.reshape(1, -1, N)
    out = torch.zeros(inp.shape[:-1] + (N + order - 1,), dtype=x.dtype, device=x.device)
    _iir_loop(inp, an.flip(-1).reshape(-1, order).contiguous(), out)
    return out[..., order - 1:].reshape(x.shape).to(dtype)


def causal_convolve(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The first N outputs of convolving [..., N] with impulse responses [B or 1, >= N]
    (float64, one real FFT product of a size with no circular wrap into them): a filter from
    rest, given its response. The result has x's shape and dtype."""
    n = x.shape[-1]
    if x.numel() == 0:
        return x.clone()
    m = fast_fft_size(2 * n - 1)
    return _times_spectrum(x, torch.fft.rfft(h[..., :n].to(torch.float64), m), m).reshape(x.shape).to(x.dtype)


def _times_spectrum(x: torch.Tensor, spectrum: torch.Tensor, m: int) -> torch.Tensor:
    """The first N samples (float64) of x [..., N] times ``spectrum`` (a real FFT of size m
    >= 2N - 1): a convolution from rest, or with a conjugate spectrum a correlation."""
    n = x.shape[-1]
    return torch.fft.irfft(torch.fft.rfft(x.to(torch.float64), m) * spectrum, m)[..., :n]


def _fused(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> bool:
    """The CPU kernel applies: contiguous float CPU rows, no gradient, numba available."""
    return (x.is_cpu and x.dim() == 2 and x.dtype in (torch.float32, torch.float64)
            and max(a.shape[-1], b.shape[-1]) <= cpu_kernels.IIR_MAX_TAPS
            and x.is_contiguous() and not (x.requires_grad or b.requires_grad or a.requires_grad)
            and b.is_cpu and a.is_cpu and cpu_kernels.available())


def filter_rows_(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor, rows: torch.Tensor,
                 lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """In place: rows ``rows`` (distinct indices) of x [B, N] filtered by b / a (one shared
    set, or one per listed row): causal from rest as :func:`lfilter`, or with ``lengths``
    ([B]) zero-phase within each row's length as :func:`filtfilt` (0 after); the other rows
    untouched. Returns x. On the CPU with numba the kernel reads and writes the rows where
    they are; elsewhere the rows are gathered, filtered and written back."""
    if _fused(x, b, a) and rows.is_cpu:
        n = (None if lengths is None else lengths.to(torch.int64)[rows] if not lengths.is_cpu
             else torch.from_numpy(lengths.numpy().astype(np.int64, copy=False)[rows.numpy()]))
        return cpu_kernels.iir_rows(x, b, a, n, rows=rows, out=x)
    n = None if lengths is None else lengths.to(torch.int64)[rows]
    y = lfilter(x[rows], b, a) if n is None else filtfilt(x[rows], n, b, a)
    return x.index_copy_(0, rows, y)


def filtfilt(x: torch.Tensor, lengths: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Zero-phase IIR filtering with per-sample coefficients: forward, cut at each sample's
    length, then backward from each sample's *own* end, so the result equals filtering the
    sample alone, whatever padding follows it (0 past each length).

    - On the CPU with numba both passes run in one kernel call, the backward one starting at
      each row's own end.
    - Elsewhere on the CPU (and with a gradient), :func:`lfilter` twice; the backward pass runs
      on whole reversed rows: a sample's padding comes first there, and a filter at rest fed
      zeros stays exactly at rest.
    - On a GPU both passes are products with the impulse response's spectrum: the forward
      pass a convolution, cut at each length; the backward pass the correlation (the
      conjugate spectrum), which reads only the sample's own forward output."""
    if _fused(x, b, a):
        return cpu_kernels.iir_rows(x, b, a, lengths.to(torch.int64))
    n = x.shape[-1]
    if _host(x) or x.requires_grad or b.requires_grad or a.requires_grad or x.numel() == 0:
        x64 = x.to(torch.float64)  # both passes in float64, as the kernel
        y = lfilter(x64, b, a) * lengths_mask(lengths.to(x.device), n).to(torch.float64)  # not in place: may be a view
        return lfilter(y.flip(-1), b, a).flip(-1).to(x.dtype)
    m = fast_fft_size(2 * n - 1)  # neither pass wraps into the first n outputs
    h = torch.fft.rfft(impulse_response(b, a, n).to(x.device), m)
    valid = lengths_mask(lengths.to(x.device), n).to(torch.float64)
    y = _times_spectrum(x, h, m) * valid
    return (_times_spectrum(y, h.conj(), m) * valid).to(x.dtype)


# Pink (1/f power) noise from white noise: Paul Kellet's / J. O. Smith's 3-pole, 3-zero
# approximation ("Spectral Audio Signal Processing", pink noise section), within about
# +-0.3 dB of 1/f over the audio band. Brown (1/f**2): a leaky integrator.
PINK = ((0.049922035, -0.095993537, 0.050612699, -0.004408786), (1.0, -2.494956002, 2.017265875, -0.522189400))
BROWN = ((1.0, 0.0), (1.0, -0.995))
NOISE_COLOURS = ("white", "pink", "brown")


def gaussian_stream(keys: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] standard normals of streams ``keys`` (inverse CDF of keyed uniforms)."""
    if keys.is_cpu and _random.host_draws():
        z = cpu_kernels.stream_uniform(keys.reshape(-1).to(torch.int64), n, signed=True)  # 2u - 1, clamped
    else:
        z = stream_uniform(keys, n).mul_(2).sub_(1).clamp_(-1 + 1e-6, 1 - 1e-6)
    return z.erfinv_().mul_(math.sqrt(2.0))


def coloured_noise(keys: torch.Tensor, n: int, colour: torch.Tensor) -> torch.Tensor:
    """[B, n] gaussian noise from stream ``keys``, coloured per sample (0 white, 1 pink,
    2 brown) by causal IIR filters: sample t depends only on draws 0..t, never on n."""
    z = gaussian_stream(keys, n)
    if _fused(z, *_COLOUR_TAPS) and colour.is_cpu:  # both colours in one kernel call, per-row filters
        c = colour.numpy()
        rows = np.flatnonzero(c > 0)
        if rows.size:
            b, a = (torch.from_numpy(t[c[rows] - 1]) for t in _COLOUR_TAPS_NP)
            filter_rows_(z, b, a, torch.from_numpy(rows))
        return z
    for c, (b, a) in ((1, PINK), (2, BROWN)):
        rows = (colour == c).nonzero()[:, 0]
        if rows.numel():
            bt = torch.tensor(b, dtype=z.dtype, device=z.device)
            at = torch.tensor(a, dtype=z.dtype, device=z.device)
            if _host(z):  # the kernel (in place) or torchaudio's loop
                filter_rows_(z, bt, at, rows)
            else:  # a GPU: the kept response
                z[rows] = causal_convolve(z[rows], _colour_response(c, bt, at, n))
    return z


# the colours' filters as rows of one table (pink, brown), zero-padded to pink's four taps:
# a filter's recursion is the same with trailing zero coefficients
_COLOUR_TAPS_NP = tuple(np.array([list(c[i]) + [0.0] * (4 - len(c[i])) for c in (PINK, BROWN)], dtype=np.float32)
                        for i in (0, 1))
_COLOUR_TAPS = tuple(torch.from_numpy(t) for t in _COLOUR_TAPS_NP)


_COLOUR_RESPONSES: dict = {}


def _colour_response(colour: int, b: torch.Tensor, a: torch.Tensor, n: int) -> torch.Tensor:
    """A noise colour's impulse response, at least ``n`` samples, kept per colour, dtype and
    device: the filters are fixed, and a response's first n samples are the same whatever
    length it was computed for, so it is grown (doubled) only when a longer batch comes."""
    key = (colour, b.dtype, str(b.device))
    h = _COLOUR_RESPONSES.get(key)
    if h is None or h.shape[-1] < n:
        h = _COLOUR_RESPONSES[key] = impulse_response(b, a, max(n, 2 * (h.shape[-1] if h is not None else 8192)))
    return h
