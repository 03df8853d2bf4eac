"""Signal kernels on padded waveform batches [B, N] with per-sample lengths (0 past each
length on the way in and out)."""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from . import cpu_kernels
from .frames import lengths_mask, zero_padding
from .random import stream_uniform


def power(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean square over each sample's own length, [B], for x that is zero past each length
    (the batch contract): no mask and no full-size temporary."""
    return torch.linalg.vector_norm(x, dim=-1).square_() / lengths.clamp(min=1).to(x.dtype)


def mix_at_snr(x: torch.Tensor, noise: torch.Tensor, lengths: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """x + g * noise with g per sample such that power(x) / power(g * noise), both over the
    sample's own length, equals 10 ** (snr_db / 10). A silent sample (or silent noise) gets
    no noise: its SNR is undefined. ``noise`` is scratch: it is cut at each length in place."""
    zero_padding(noise, lengths, inplace=True)
    ps, pn = power(x, lengths), power(noise, lengths)
    g = torch.sqrt(ps / (pn.clamp(min=1e-20) * 10.0 ** (snr_db / 10.0)))
    g = torch.where(pn > 0, g, torch.zeros_like(g))
    return torch.addcmul(x, g[:, None].to(x.dtype), noise)


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


def fft_convolve_spectra(x: torch.Tensor, spectra: torch.Tensor, k: int, m: int) -> torch.Tensor:
    """:func:`fft_convolve` of [B, N] with filters of length ``k`` given by their real FFTs
    ``spectra`` [B, m // 2 + 1] at size ``m`` (= ``fast_fft_size(N + k - 1)``): for a fixed
    bank of filters, transformed once."""
    n = x.shape[-1] + k - 1
    return torch.fft.irfft(torch.fft.rfft(x, m) * spectra, m)[..., :n]


try:  # torchaudio's own sinc kernel (sinc_interp_hann), so the result is resample()'s
    from torchaudio.functional.functional import _get_sinc_resample_kernel
except ImportError:  # pragma: no cover - another torchaudio layout: its public resample
    _get_sinc_resample_kernel = None

_SINC_KERNELS: dict = {}


def resample(x: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """``torchaudio.functional.resample(x, orig_freq, new_freq)`` (band-limited sinc, Hann
    window, width 6, roll-off 0.99) of [B, N]: the polyphase kernel is built once per rate
    pair and device, and applied as one matrix product of the signal's strided windows
    (a strided convolution with few taps per phase costs several times more on CPU)."""
    if orig_freq == new_freq:
        return x
    if _get_sinc_resample_kernel is None or x.requires_grad:
        return AF.resample(x, orig_freq, new_freq)
    g = math.gcd(int(orig_freq), int(new_freq))
    o, n = int(orig_freq) // g, int(new_freq) // g
    key = (o, n, x.device, x.dtype)
    if key not in _SINC_KERNELS:
        kernel, width = _get_sinc_resample_kernel(orig_freq, new_freq, g, 6, 0.99, "sinc_interp_hann", None,
                                                  x.device, x.dtype)
        _SINC_KERNELS[key] = (kernel[:, 0, :].t().contiguous(), width)  # [taps, phases]
    kernel, width = _SINC_KERNELS[key]
    B, N = x.shape
    windows = torch.nn.functional.pad(x, (width, width + o)).unfold(-1, kernel.shape[0], o)  # [B, frames, taps]
    frames = windows.shape[1]
    y = torch.mm(windows.reshape(B * frames, -1), kernel).view(B, -1)  # frame f, phase p -> sample f * n + p
    target = int(torch.ceil(torch.as_tensor(n * N / o)))  # the length torchaudio keeps
    return y[:, :target]


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
    T = spec.shape[-1]
    steps = torch.arange(int(math.ceil(T / rate)) + 1, device=spec.device, dtype=torch.float64) * rate
    steps = steps[steps < T]
    i0 = steps.floor().to(torch.int64)
    real = spec.real.dtype
    alphas = (steps - i0.to(torch.float64)).to(real)
    # angle and magnitude once per input frame (then real gathers), not per output frame
    spec = torch.nn.functional.pad(spec, [0, 2])
    ang, norm = spec.angle(), spec.abs()
    phase_0 = ang[..., :1]
    a0, a1 = ang.index_select(-1, i0), ang.index_select(-1, i0 + 1)
    phase = a1.sub_(a0).sub_(phase_advance)
    phase = phase - 2 * math.pi * torch.round(phase / (2 * math.pi))
    # The angle of a cell far below its sample's peak is mostly float noise, which differs
    # between FFT implementations (CPU and CUDA), and the running phase sum keeps every
    # error for the rest of the clip. A quiet cell's measured phase deviation is therefore
    # blended towards none (the bin's nominal advance), as unit phasors, smoothly in the cell's
    # level (weight m^2 / (m^2 + floor^2), floor QUIET of the sample's peak): cells well
    # above the floor keep their measured deviation, and no threshold flips.
    floor = quiet * norm.amax(dim=(-2, -1), keepdim=True)
    m = torch.minimum(norm.index_select(-1, i0), norm.index_select(-1, i0 + 1))
    w = m.square_()
    w = w.div_((w + floor * floor).clamp_(min=torch.finfo(w.dtype).tiny))  # a silent sample: 0 / 0 -> 0
    phase = torch.atan2(w * torch.sin(phase), (w * torch.cos(phase)).add_(1 - w))
    phase = torch.cat([phase_0, (phase + phase_advance)[..., :-1]], dim=-1)
    n0 = norm.index_select(-1, i0)
    mag = n0.add_(alphas * (norm.index_select(-1, i0 + 1) - n0))
    # the running phase reaches pi * hop * frames (tens of thousands of radians): summed in
    # float32 it keeps ~1e-2 rad, and the sum's rounding depends on the device's scan order.
    # Summed in float64 and wrapped to [0, 2 pi) it is exact to float32 on every device.
    acc = torch.remainder(torch.cumsum(phase.to(torch.float64), -1), 2 * math.pi).to(real)
    out = torch.polar(mag, acc)
    return out.reshape(tuple(shape[:-1]) + (out.shape[-1],))


def biquad(kind: str, f0: torch.Tensor, sample_rate: int, q: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """RBJ cookbook low- or high-pass biquad coefficients per sample: (b [B, 3], a [B, 3]),
    normalised so a[:, 0] = 1."""
    w0 = 2 * math.pi * f0 / sample_rate
    cos, alpha = torch.cos(w0), torch.sin(w0) / (2 * q)
    if kind == "lowpass":
        b = torch.stack([(1 - cos) / 2, 1 - cos, (1 - cos) / 2], -1)
    elif kind == "highpass":
        b = torch.stack([(1 + cos) / 2, -(1 + cos), (1 + cos) / 2], -1)
    else:
        raise ValueError(f"biquad: kind must be lowpass or highpass, got {kind!r}")
    a = torch.stack([1 + alpha, -2 * cos, 1 - alpha], -1)
    return b / a[:, :1], a / a[:, :1]


def impulse_response(b: torch.Tensor, a: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` samples of the impulse response of the IIR filter b / a, float64,
    [B, n] for per-row coefficients [B, taps] ([1, n] for one shared set [taps]), without a
    sample-by-sample recursion. In the transposed direct form the state after the impulse
    is z_0 = b[1:] - a[1:] b[0] (a normalised), then z_t = T z_{t-1} for the companion
    matrix T, and h[t] = z_{t-1}[0]; the states come from log2(n) doublings
    (z_{k..2k-1} = T^k z_{0..k-1} as one batched product, then T^k <- T^2k). The states are the
    response's own size: a low-cut filter's state stays small, where the all-pole response
    1 / a (thousands, at a 1 Hz pole pair) would be differenced down to it by the numerator.
    Any order; no special case for repeated or real poles."""
    f64 = torch.float64
    b, a = b.to(f64), a.to(f64)
    if a.dim() == 1:
        b, a = b[None], a[None]
    q = max(a.shape[1], b.shape[1]) - 1
    bn = F.pad(b / a[:, :1], (0, q + 1 - b.shape[1]))
    an = F.pad(a / a[:, :1], (0, q + 1 - a.shape[1]))
    rows = max(a.shape[0], b.shape[0])
    h = torch.zeros(rows, n, dtype=f64, device=a.device)
    h[:, :1] = bn[:, :1]
    if q == 0 or n <= 1:
        return h
    tk = torch.zeros(a.shape[0], q, q, dtype=f64, device=a.device)  # T: first column -a[1:], ones above the diagonal
    tk[:, :, 0] = -an[:, 1:]
    if q > 1:
        tk[:, :-1, 1:] = torch.eye(q - 1, dtype=f64, device=a.device)
    z = torch.empty(rows, q, n - 1, dtype=f64, device=a.device)  # row, state component, time
    z[..., 0] = bn[:, 1:] - an[:, 1:] * bn[:, :1]
    k = 1
    while k < n - 1:  # z[..., k:2k] = T^k z[..., :k]: one batched product per doubling
        m = min(k, n - 1 - k)
        z[..., k:k + m] = torch.matmul(tk, z[..., :m])
        tk = tk @ tk
        k *= 2
    h[:, 1:] = z[:, 0]
    return h


def lfilter(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Causal IIR filtering of [B, N] with per-row coefficients [B, order + 1] (or one shared
    set [order + 1]) from rest, no clamping. On the CPU (with numba) one fused pass per row
    (:func:`.cpu_kernels.iir_rows`, float64 state). Elsewhere (CUDA, no numba, a gradient)
    the same from rest is an exact convolution with the filter's first N impulse-response
    samples (:func:`impulse_response`), done as a real FFT product in float64: a handful of
    batch-wide operations instead of N sequential steps per row, which on a GPU leave all
    but B threads idle. Float64 throughout (in float32 a low cutoff's poles are lost). The
    result has x's dtype."""
    if _fused(x, b, a):
        return cpu_kernels.iir_rows(x, b, a)
    if x.shape[-1] == 0:
        return x.clone()
    return causal_convolve(x, impulse_response(b.to(x.device), a.to(x.device), x.shape[-1]))


def causal_convolve(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The first N outputs of convolving [B, N] with impulse responses [B or 1, >= N]
    (float64, one real FFT product of a size with no circular wrap into them): a filter from
    rest, given its response. The result has x's dtype."""
    n = x.shape[-1]
    m = fast_fft_size(2 * n - 1)
    spectrum = torch.fft.rfft(h[..., :n].to(torch.float64), m)
    return torch.fft.irfft(torch.fft.rfft(x.to(torch.float64), m) * spectrum, m)[..., :n].to(x.dtype)


def _fused(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> bool:
    """The CPU kernel applies: contiguous float CPU rows, no gradient, numba available."""
    return (x.device.type == "cpu" and x.dim() == 2 and x.dtype in (torch.float32, torch.float64)
            and max(a.shape[-1], b.shape[-1]) <= cpu_kernels.IIR_MAX_TAPS
            and x.is_contiguous() and not (x.requires_grad or b.requires_grad or a.requires_grad)
            and b.device.type == "cpu" and a.device.type == "cpu" and cpu_kernels.available())


def filtfilt(x: torch.Tensor, lengths: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Zero-phase IIR filtering with per-sample coefficients: forward, cut at each sample's
    length, then backward from each sample's *own* end, so the result equals filtering the
    sample alone, whatever padding follows it (0 past each length). On the CPU (with numba)
    both passes run in one kernel call, the backward one starting at each row's own end.
    Elsewhere both are products with the impulse response's spectrum (see :func:`lfilter`):
    the forward pass a convolution, cut at each length; the backward pass the correlation
    (the conjugate spectrum), which reads only the sample's own forward output."""
    if _fused(x, b, a):
        return cpu_kernels.iir_rows(x, b, a, lengths.to(torch.int64))
    n = x.shape[-1]
    if n == 0:
        return x.clone()
    m = fast_fft_size(2 * n - 1)  # neither pass wraps into the first n outputs
    h = torch.fft.rfft(impulse_response(b.to(x.device), a.to(x.device), n), m)
    valid = lengths_mask(lengths.to(x.device), n).to(torch.float64)
    y = torch.fft.irfft(torch.fft.rfft(x.to(torch.float64), m) * h, m)[..., :n] * valid
    return (torch.fft.irfft(torch.fft.rfft(y, m) * h.conj(), m)[..., :n] * valid).to(x.dtype)


# Pink (1/f power) noise from white noise: Paul Kellet's / J. O. Smith's 3-pole, 3-zero
# approximation ("Spectral Audio Signal Processing", pink noise section), within about
# +-0.3 dB of 1/f over the audio band. Brown (1/f**2): a leaky integrator.
PINK = ((0.049922035, -0.095993537, 0.050612699, -0.004408786), (1.0, -2.494956002, 2.017265875, -0.522189400))
BROWN = ((1.0, 0.0), (1.0, -0.995))
NOISE_COLOURS = ("white", "pink", "brown")


def gaussian_stream(keys: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] standard normals of streams ``keys`` (inverse CDF of keyed uniforms)."""
    z = stream_uniform(keys, n)
    return z.mul_(2).sub_(1).clamp_(-1 + 1e-6, 1 - 1e-6).erfinv_().mul_(math.sqrt(2.0))


def coloured_noise(keys: torch.Tensor, n: int, colour: torch.Tensor) -> torch.Tensor:
    """[B, n] gaussian noise from stream ``keys``, coloured per sample (0 white, 1 pink,
    2 brown) by causal IIR filters: sample t depends only on draws 0..t, never on n."""
    z = gaussian_stream(keys, n)
    for c, (b, a) in ((1, PINK), (2, BROWN)):
        rows = (colour == c).nonzero()[:, 0]
        if rows.numel():
            bt = torch.tensor(b, dtype=z.dtype, device=z.device)
            at = torch.tensor(a, dtype=z.dtype, device=z.device)
            zr = z[rows]
            z[rows] = lfilter(zr, bt, at) if _fused(zr, bt, at) else causal_convolve(zr, _colour_response(c, bt, at, n))
    return z


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
