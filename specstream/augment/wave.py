"""Waveform-domain augmentation, applied on the featurize actor's device before the log-mel.

Same contract as the spectrogram ops (:mod:`.ops`): per-sample parameters are drawn from a
:class:`~.core.Context` (a pure function of seed, epoch, sample key and the op's position),
recorded, then applied batched with no per-sample Python loop. A batch is padded
waveforms [B, N] with per-sample ``lengths`` in samples; padding is 0 on the way in and
on the way out, and an op reads nothing of a sample past its own length, so a sample's
result does not depend on what else shares the batch. Ops that change durations (speed,
tempo) return new lengths.

Large random fields (noise) are not stored: the parameters hold a per-sample stream key
and the field is regenerated from it (:func:`~.core.stream_uniform`), so replay is exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torchaudio.functional as AF

from .bank import AudioBank, BankError, RIRBank
from .core import Context, Op, Params, randint, select, stream_uniform, time_valid

Range = Tuple[float, float]


@dataclass
class WaveBatch:
    audio: torch.Tensor  # [B, N] float32, 0 past each sample's length
    lengths: torch.Tensor  # [B] int64, samples of signal
    sample_rate: int
    targets: Optional[torch.Tensor] = None

    def replace(self, **kw) -> "WaveBatch":
        return replace(self, **kw)


def power(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean square over each sample's own length, [B], for x that is zero past each length
    (the batch contract): no mask and no full-size temporary."""
    return torch.linalg.vector_norm(x, dim=-1).square_() / lengths.clamp(min=1).to(x.dtype)


def _range(name: str, value, lo: float = -math.inf, hi: float = math.inf) -> Range:
    if isinstance(value, (int, float)):
        value = (value, value)
    a, b = float(value[0]), float(value[1])
    if not lo <= a <= b <= hi:
        raise ValueError(f"{name}: expected a range [min, max] within [{lo}, {hi}], got {list(value)}")
    return a, b


def _lerp(r: Range, u: torch.Tensor) -> torch.Tensor:
    return r[0] + (r[1] - r[0]) * u


def mix_at_snr(x: torch.Tensor, noise: torch.Tensor, lengths: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """x + g * noise with g per sample such that power(x) / power(g * noise), both over the
    sample's own length, equals 10 ** (snr_db / 10). A silent sample (or silent noise) gets
    no noise: its SNR is undefined. ``noise`` is scratch: it is cut at each length in place."""
    noise.mul_(time_valid(lengths, x.shape[-1]))
    ps, pn = power(x, lengths), power(noise, lengths)
    g = torch.sqrt(ps / (pn.clamp(min=1e-20) * 10.0 ** (snr_db / 10.0)))
    g = torch.where(pn > 0, g, torch.zeros_like(g))
    return torch.addcmul(x, g[:, None].to(x.dtype), noise)


def fft_convolve(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Full linear convolution of [B, N] with [B, K] through a real FFT of power-of-two size
    (N + K - 1 itself is often a slow FFT size)."""
    n = x.shape[-1] + h.shape[-1] - 1
    m = 1 << (n - 1).bit_length()
    return torch.fft.irfft(torch.fft.rfft(x, m) * torch.fft.rfft(h, m), m)[..., :n]


def _active_rows(active: torch.Tensor) -> torch.Tensor:
    return active.nonzero()[:, 0]


def _put(x: torch.Tensor, rows: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x with rows (sorted, as nonzero() gives them) replaced by y; x untouched."""
    if rows.numel() == x.shape[0]:
        return y
    out = x.clone()
    out[rows] = y
    return out


class WaveOp(Op):
    domain = "wave"

    def time_factor(self, params: Params) -> torch.Tensor:
        """Per sample, input duration / output duration (1 for ops that keep time)."""
        return torch.ones_like(params["active"], dtype=torch.float64)

    def draw(self, ctx: Context, batch: WaveBatch) -> Params:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, batch: WaveBatch, params: Params) -> WaveBatch:  # pragma: no cover - abstract
        raise NotImplementedError


class WaveGain(WaveOp):
    """Gain in dB, U[min_db, max_db], on the waveform."""

    name = "wave_gain"

    def __init__(self, min_db: float = -6.0, max_db: float = 6.0, p: float = 1.0):
        super().__init__(p)
        self.min_db, self.max_db = _range("wave_gain", (min_db, max_db))

    def draw(self, ctx, batch):
        return {"db": _lerp((self.min_db, self.max_db), ctx.uniform(1)[:, 0])}

    def apply(self, batch, params):
        db = torch.where(params["active"], params["db"], torch.zeros_like(params["db"]))
        return batch.replace(audio=batch.audio * (10.0 ** (db / 20.0))[:, None].to(batch.audio.dtype))


# Pink (1/f power) noise from white noise: Paul Kellet's / J. O. Smith's 3-pole, 3-zero
# approximation ("Spectral Audio Signal Processing", pink noise section), within about
# +-0.3 dB of 1/f over the audio band. Brown (1/f**2): a leaky integrator.
_PINK_B = (0.049922035, -0.095993537, 0.050612699, -0.004408786)
_PINK_A = (1.0, -2.494956002, 2.017265875, -0.522189400)
_BROWN_B = (1.0, 0.0)
_BROWN_A = (1.0, -0.995)
COLOURS = ("white", "pink", "brown")


def coloured_noise(keys: torch.Tensor, n: int, colour: torch.Tensor) -> torch.Tensor:
    """[B, n] gaussian noise from stream ``keys``, coloured per sample (0 white, 1 pink,
    2 brown) by causal IIR filters: sample t depends only on draws 0..t, never on n."""
    z = stream_uniform(keys, n)  # -> standard normal through the inverse CDF, in place
    z.mul_(2).sub_(1).clamp_(-1 + 1e-6, 1 - 1e-6).erfinv_().mul_(math.sqrt(2.0))
    for c, (b, a) in ((1, (_PINK_B, _PINK_A)), (2, (_BROWN_B, _BROWN_A))):
        rows = (colour == c).nonzero()[:, 0]
        if rows.numel():
            bt = torch.tensor(b, dtype=z.dtype, device=z.device)
            at = torch.tensor(a, dtype=z.dtype, device=z.device)
            z[rows] = AF.lfilter(z[rows], at, bt, clamp=False)  # z[rows] on the right is a copy
    return z


class Noise(WaveOp):
    """Additive noise generated on the device at a per-sample SNR (dB, U[snr_db]) measured
    over the sample's own length. ``colour``: white, pink, brown, or a list to draw from."""

    name = "noise"

    def __init__(self, snr_db: Range = (5.0, 30.0), colour: Union[str, Sequence[str]] = "white",
                 p: float = 1.0):
        super().__init__(p)
        self.snr_db = _range("noise.snr_db", snr_db)
        colours = [colour] if isinstance(colour, str) else list(colour)
        bad = [c for c in colours if c not in COLOURS]
        if bad or not colours:
            raise ValueError(f"noise.colour: {bad[0] if bad else colour!r} is not one of {', '.join(COLOURS)}")
        self.colour = colour if isinstance(colour, str) else tuple(colours)
        self._codes = torch.tensor([COLOURS.index(c) for c in colours])

    def draw(self, ctx, batch):
        u = ctx.uniform(2)
        codes = self._codes.to(ctx.device)
        return {"snr_db": _lerp(self.snr_db, u[:, 0]), "colour": codes[randint(u[:, 1], 0, len(codes) - 1)],
                "stream": ctx.stream_keys()}

    def apply(self, batch, params):
        x, rows = batch.audio, _active_rows(params["active"])
        if rows.numel() == 0:
            return batch
        noise = coloured_noise(params["stream"][rows], x.shape[-1], params["colour"][rows]).to(x.dtype)
        y = mix_at_snr(x[rows], noise, batch.lengths[rows], params["snr_db"][rows])
        return batch.replace(audio=_put(x, rows, y))


BankLoader = Callable[[str], AudioBank]


class BankOp(WaveOp):
    """An op that reads a bank of recordings. ``bank`` names its source (a folder of audio
    files or tar shards, local or s3://); :meth:`bind` attaches the loaded bank."""

    def __init__(self, bank, p: float = 1.0):
        super().__init__(p)
        if isinstance(bank, AudioBank):
            self.bank, self._bank = bank.source or "<in-memory>", bank
        elif isinstance(bank, str) and bank:
            self.bank, self._bank = bank, None
        else:
            raise ValueError(f"{self.name}: bank must name a folder or shards of recordings")

    def bind(self, loader: BankLoader) -> None:
        if self._bank is None:
            self._bank = loader(self.bank)

    def loaded(self, device) -> AudioBank:
        if self._bank is None:
            raise BankError(f"{self.name}: bank {self.bank!r} is not loaded (Policy.bind_banks)")
        self._bank = self._bank.to(device)
        return self._bank


class BackgroundNoise(BankOp):
    """Recorded noise from a bank at a per-sample SNR. Each sample mixes ``count``
    (U[min, max], integers) clips, each from a random offset (looping when shorter than
    the sample) and brought to the same power before summing, then the sum is scaled to
    the SNR over the sample's own length. ``count`` > 1 on a bank of speech is babble."""

    name = "background_noise"

    def __init__(self, bank, snr_db: Range = (0.0, 20.0), count: Tuple[int, int] = (1, 1), p: float = 1.0):
        super().__init__(bank, p)
        self.snr_db = _range(f"{self.name}.snr_db", snr_db)
        lo, hi = _range(f"{self.name}.count", count, 1, 64)
        self.count = (int(lo), int(hi))

    def draw(self, ctx, batch):
        bank = self.loaded(ctx.device)
        K = self.count[1]
        u = ctx.uniform(2)
        clip = randint(ctx.uniform(K), 0, len(bank) - 1)
        offset = torch.floor(ctx.uniform(K) * bank.lengths[clip].to(torch.float32)).to(torch.int64)
        return {"snr_db": _lerp(self.snr_db, u[:, 0]), "count": randint(u[:, 1], self.count[0], self.count[1]),
                "clip": clip, "offset": offset}

    def apply(self, batch, params):
        x, rows = batch.audio, _active_rows(params["active"])
        if rows.numel() == 0:
            return batch
        bank = self.loaded(x.device)
        L, N = batch.lengths[rows], x.shape[-1]
        count, clip, offset = params["count"][rows], params["clip"][rows], params["offset"][rows]
        noise = x.new_zeros(rows.numel(), N)
        valid = time_valid(L, N)
        for k in range(int(count.max())):
            seg = bank.segments(clip[:, k], offset[:, k], N).to(x.dtype).mul_(valid)
            level = torch.rsqrt(power(seg, L).clamp(min=1e-20))
            on = (k < count).to(x.dtype)
            noise.addcmul_(seg, (level * on)[:, None])
        y = mix_at_snr(x[rows], noise, L, params["snr_db"][rows])
        return batch.replace(audio=_put(x, rows, y))


class Babble(BackgroundNoise):
    """Babble: 3 to 7 clips from a bank of speech, summed, at U[snr_db]."""

    name = "babble"

    def __init__(self, bank, snr_db: Range = (0.0, 20.0), count: Tuple[int, int] = (3, 7), p: float = 1.0):
        super().__init__(bank, snr_db, count, p)


class Reverb(BankOp):
    """Reverberation: convolution with a room impulse response from a bank (batched FFT
    convolution). RIRs are aligned on their direct path, so the direct sound stays where it
    was (content and labels do not shift); the reverberant tail past the sample's length is
    cut. ``normalize``: scale each RIR so its direct path is 1 (``direct``), to unit energy
    (``energy``), or not at all; ``keep_level`` rescales the output to the input's power."""

    name = "reverb"

    def __init__(self, bank, normalize: str = "direct", max_seconds: float = 1.0, keep_level: bool = True,
                 p: float = 1.0):
        super().__init__(bank, p)
        if normalize not in ("direct", "energy", "none"):
            raise ValueError("reverb.normalize: must be direct, energy or none")
        if max_seconds <= 0:
            raise ValueError("reverb.max_seconds: must be positive")
        self.normalize, self.max_seconds, self.keep_level = normalize, float(max_seconds), bool(keep_level)
        self._rirs: Optional[RIRBank] = None

    def rirs(self, device) -> RIRBank:
        if self._rirs is None:
            self._rirs = RIRBank.from_bank(self.loaded(device), max_seconds=self.max_seconds,
                                           normalize=self.normalize)
        self._rirs = self._rirs.to(device)
        return self._rirs

    def draw(self, ctx, batch):
        return {"rir": randint(ctx.uniform(1)[:, 0], 0, len(self.rirs(ctx.device)) - 1)}

    def apply(self, batch, params):
        x, L = batch.audio, batch.lengths
        bank = self.rirs(x.device)
        rows = _active_rows(params["active"])
        if rows.numel() == 0:
            return batch
        h = bank.rirs[params["rir"][rows]].to(x.dtype)
        N = x.shape[-1]
        wet = fft_convolve(x[rows], h)[:, bank.pre:bank.pre + N]
        wet = wet * time_valid(L[rows], N).to(x.dtype)
        if self.keep_level:
            wet = wet * torch.sqrt(power(x[rows], L[rows]) / power(wet, L[rows]).clamp(min=1e-20))[:, None]
        return batch.replace(audio=_put(x, rows, wet))


def _factor_groups(factor: torch.Tensor, active: torch.Tensor):
    """(value, rows) for each distinct factor != 1 among active samples."""
    f = torch.where(active, factor, torch.ones_like(factor))
    for v in torch.unique(f).tolist():
        if v != 1.0:
            yield v, (f == v).nonzero()[:, 0]


def _place(x: torch.Tensor, groups, lengths: torch.Tensor):
    """Assemble per-group outputs [(rows, out [b, n], new lengths [b])] into one zero-padded
    batch; samples in no group keep their audio."""
    n_out = max([x.shape[-1]] + [int(nl.max()) for _, _, nl in groups])
    out = torch.nn.functional.pad(x, (0, n_out - x.shape[-1]))
    new_len = lengths.clone()
    for rows, y, nl in groups:
        y = y[:, :n_out]
        y = y * time_valid(nl, y.shape[-1]).to(y.dtype)
        out[rows] = 0
        out[rows, : y.shape[-1]] = y
        new_len[rows] = nl
    n_used = int(new_len.max()) if new_len.numel() else 0
    return out[:, : max(n_used, 1)], new_len


class _FactorOp(WaveOp):
    """An op that changes durations by a factor drawn from ``factors`` (> 1: shorter)."""

    def __init__(self, factors: Sequence[float] = (0.9, 1.0, 1.1), p: float = 1.0):
        super().__init__(p)
        self.factors = tuple(float(f) for f in factors)
        if not self.factors or min(self.factors) <= 0:
            raise ValueError(f"{self.name}.factors: need positive factors")

    def draw(self, ctx, batch):
        f = torch.tensor(self.factors, device=ctx.device)
        return {"factor": f[randint(ctx.uniform(1)[:, 0], 0, len(self.factors) - 1)]}

    def time_factor(self, params):
        return torch.where(params["active"], params["factor"].double(), 1.0)


class Speed(_FactorOp):
    """Speed perturbation (Ko et al. 2015): resample by a factor drawn from ``factors``,
    changing tempo and pitch; a sample of L samples becomes ceil(L / factor) long.
    Band-limited sinc resampling (torchaudio), batched per distinct factor."""

    name = "speed"

    @staticmethod
    def rates(sample_rate: int, factor: float) -> Tuple[int, int]:
        orig = int(round(sample_rate * factor))
        g = math.gcd(orig, sample_rate)
        return orig // g, sample_rate // g

    def apply(self, batch, params):
        x, L, sr = batch.audio, batch.lengths, batch.sample_rate
        groups = []
        for v, rows in _factor_groups(params["factor"], params["active"]):
            orig, new = self.rates(sr, v)
            y = AF.resample(x[rows], orig, new)
            groups.append((rows, y, torch.div(L[rows] * new + orig - 1, orig, rounding_mode="floor")))
        if not groups:
            return batch
        audio, lengths = _place(x, groups, L)
        return batch.replace(audio=audio, lengths=lengths)


class Tempo(_FactorOp):
    """Tempo perturbation without a pitch change: phase-vocoder time stretch of the STFT
    (zero-padded frames, so a sample never reads past its length), then inverse STFT.
    A sample of L samples becomes round(L / factor) long."""

    name = "tempo"

    def __init__(self, factors: Sequence[float] = (0.9, 1.0, 1.1), n_fft: int = 512, hop_length: int = 128,
                 p: float = 1.0):
        super().__init__(factors, p)
        self.n_fft, self.hop_length = int(n_fft), int(hop_length)

    def apply(self, batch, params):
        x, L = batch.audio, batch.lengths
        window = torch.hann_window(self.n_fft, device=x.device, dtype=x.dtype)
        advance = torch.linspace(0, math.pi * self.hop_length, self.n_fft // 2 + 1, device=x.device)[..., None]
        groups = []
        for v, rows in _factor_groups(params["factor"], params["active"]):
            spec = torch.stft(x[rows], self.n_fft, self.hop_length, window=window, center=True,
                              pad_mode="constant", return_complex=True)
            stretched = AF.phase_vocoder(spec, v, advance)
            new_len = torch.round(L[rows].to(torch.float64) / v).to(torch.int64)
            n_out = int(math.ceil(x.shape[-1] / v))
            y = torch.istft(stretched, self.n_fft, self.hop_length, window=window, center=True, length=n_out)
            groups.append((rows, y, new_len))
        if not groups:
            return batch
        audio, lengths = _place(x, groups, L)
        return batch.replace(audio=audio, lengths=lengths)


class Distortion(WaveOp):
    """Harmonic distortion with the peak kept: the sample is scaled to peak 1, driven by
    U[drive_db] and shaped by ``tanh`` (soft clipping: odd harmonics), ``clip`` (hard
    clipping at 1 / drive) or ``asymmetric`` (tanh of a biased signal, minus the bias's
    image: even and odd harmonics), then scaled back to the sample's own peak."""

    name = "distortion"

    def __init__(self, drive_db: Range = (0.0, 20.0), kind: str = "tanh", bias: float = 0.2, p: float = 1.0):
        super().__init__(p)
        if kind not in ("tanh", "clip", "asymmetric"):
            raise ValueError("distortion.kind: must be tanh, clip or asymmetric")
        self.drive_db, self.kind, self.bias = _range("distortion.drive_db", drive_db, 0.0), kind, float(bias)

    def draw(self, ctx, batch):
        return {"drive_db": _lerp(self.drive_db, ctx.uniform(1)[:, 0])}

    def apply(self, batch, params):
        x = batch.audio
        peak = x.abs().amax(-1, keepdim=True).clamp(min=1e-12)
        g = (10.0 ** (params["drive_db"] / 20.0))[:, None].to(x.dtype)
        xn = x / peak
        if self.kind == "tanh":
            y = torch.tanh(g * xn) / torch.tanh(g)
        elif self.kind == "clip":
            y = torch.clamp(g * xn, -1.0, 1.0)
        else:
            y = torch.tanh(g * (xn + self.bias)) - torch.tanh(g * self.bias)  # y(0) = 0: padding stays 0
        y = y * (peak / y.abs().amax(-1, keepdim=True).clamp(min=1e-12))
        return batch.replace(audio=select(params["active"], y, x))


def _biquad(kind: str, f0: torch.Tensor, sr: int, q: float):
    """RBJ cookbook biquad coefficients per sample: (b [B, 3], a [B, 3])."""
    w0 = 2 * math.pi * f0 / sr
    cos, alpha = torch.cos(w0), torch.sin(w0) / (2 * q)
    if kind == "lowpass":
        b = torch.stack([(1 - cos) / 2, 1 - cos, (1 - cos) / 2], -1)
    else:
        b = torch.stack([(1 + cos) / 2, -(1 + cos), (1 + cos) / 2], -1)
    a = torch.stack([1 + alpha, -2 * cos, 1 - alpha], -1)
    return b / a[:, :1], a / a[:, :1]


def filtfilt(x: torch.Tensor, lengths: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Zero-phase IIR filtering with per-sample coefficients (b, a [B, order + 1]): forward,
    the output cut at each sample's length, then backward. The cut makes the result the
    same as filtering the sample alone, whatever padding follows it."""
    valid = time_valid(lengths, x.shape[-1]).to(x.dtype)
    y = AF.lfilter(x, a, b, clamp=False, batching=True) * valid
    y = AF.lfilter(y.flip(-1), a, b, clamp=False, batching=True).flip(-1)
    return y * valid


class Filter(WaveOp):
    """Random band-limiting filters (codecs, microphones, telephone bands): zero-phase
    Butterworth-response biquads (RBJ cookbook, applied forward and backward: 24 dB/octave,
    no delay) with per-sample cutoffs. ``kind``: lowpass (cutoff U[lowpass_hz]), highpass
    (U[highpass_hz]), bandpass (high-pass at U[bandpass_hz[0]], then low-pass at
    U[bandpass_hz[1]]), or random (one of the three per sample)."""

    name = "filter"
    KINDS = ("lowpass", "highpass", "bandpass")

    def __init__(self, kind: str = "random", lowpass_hz: Range = (2000.0, 7000.0),
                 highpass_hz: Range = (50.0, 500.0), bandpass_hz: Tuple[Range, Range] = ((200.0, 500.0),
                                                                                      (3000.0, 4000.0)),
                 q: float = 0.7071, p: float = 1.0):
        super().__init__(p)
        if kind not in self.KINDS + ("random",):
            raise ValueError("filter.kind: must be lowpass, highpass, bandpass or random")
        self.kind = kind
        self.lowpass_hz = _range("filter.lowpass_hz", lowpass_hz, 1.0)
        self.highpass_hz = _range("filter.highpass_hz", highpass_hz, 1.0)
        self.bandpass_hz = (_range("filter.bandpass_hz[0]", bandpass_hz[0], 1.0),
                            _range("filter.bandpass_hz[1]", bandpass_hz[1], 1.0))
        self.q = float(q)

    def draw(self, ctx, batch):
        u = ctx.uniform(3)
        kind = (randint(u[:, 0], 0, 2) if self.kind == "random"
                else torch.full_like(u[:, 0], self.KINDS.index(self.kind), dtype=torch.int64))
        lo = torch.where(kind == 1, _lerp(self.highpass_hz, u[:, 1]), _lerp(self.bandpass_hz[0], u[:, 1]))
        hi = torch.where(kind == 0, _lerp(self.lowpass_hz, u[:, 2]), _lerp(self.bandpass_hz[1], u[:, 2]))
        return {"kind": kind, "low_hz": lo, "high_hz": hi}

    def apply(self, batch, params):
        x, L, sr = batch.audio, batch.lengths, batch.sample_rate
        nyq = sr / 2 * 0.999
        kind, active = params["kind"], params["active"]
        out = x
        # high-pass edge (kinds highpass and bandpass), then low-pass edge (lowpass, bandpass)
        for edge, use, f in (("highpass", (kind >= 1) & active, params["low_hz"]),
                             ("lowpass", ((kind == 0) | (kind == 2)) & active, params["high_hz"])):
            rows = _active_rows(use)
            if rows.numel() == 0:
                continue
            b, a = _biquad(edge, f[rows].clamp(1.0, nyq).to(x.dtype), sr, self.q)
            out = _put(out, rows, filtfilt(out[rows], L[rows], b, a))
        return batch.replace(audio=out)


WAVE_OPS = {cls.name: cls for cls in (WaveGain, Noise, BackgroundNoise, Babble, Reverb, Speed, Tempo,
                                      Distortion, Filter)}
