"""Spectrogram augmentation ops: batched, per-sample, lengths-aware, keyed randomness.

Every op draws per-sample parameters from a :class:`Context` (a pure function of seed,
epoch, sample key and the op's position), then applies them with no per-sample Python
loop. Features are log-mel [B, F, T] (natural log of power plus ``log_offset``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ..features import MelConfig, warped_fbanks
from .core import (Batch, Context, Op, Params, gather_frames, interp_time, masked_mean, move_frames,
                   randint, select, time_valid, zero_padding)

Fill = Union[str, float]
_NAT_PER_DB = math.log(10.0) / 10.0  # log-power change per dB


def _fill_value(x: torch.Tensor, lengths: torch.Tensor, fill: Fill) -> torch.Tensor:
    """[B, 1, 1] fill per sample: 'zero', 'mean' (over its own valid frames), 'min', or a number."""
    B = x.shape[0]
    if fill == "zero":
        return x.new_zeros(B, 1, 1)
    if fill == "mean":
        return masked_mean(x, lengths)[:, None, None]
    if fill == "min":
        valid = time_valid(lengths, x.shape[-1])[:, None, :]
        return torch.where(valid, x, torch.full_like(x, float("inf"))).amin((1, 2)).clamp(max=0)[:, None, None] \
            if x.numel() else x.new_zeros(B, 1, 1)
    return x.new_full((B, 1, 1), float(fill))


def _check_fill(name: str, fill: Fill) -> Fill:
    if isinstance(fill, str) and fill not in ("zero", "mean", "min"):
        raise ValueError(f"{name}: fill must be 'zero', 'mean', 'min' or a number, got {fill!r}")
    return fill


def _bands(starts: torch.Tensor, widths: torch.Tensor, on: torch.Tensor, size: int) -> torch.Tensor:
    """[B, size] bool: union over m of [start, start + width) where on[b, m]."""
    r = torch.arange(size, device=starts.device)[None, None, :]
    m = (r >= starts[..., None]) & (r < (starts + widths)[..., None]) & on[..., None]
    return m.any(1)


def apply_masks(batch: Batch, parts, fill: Fill) -> Batch:
    """One pass for any number of masks: ``parts`` are (freq [B, F] or None, time [B, T] or
    None, rect [B, F, T] or None) triples, already restricted to active samples. Only the
    sample's valid frames are written.

    Zero fill multiplies by broadcast keep-vectors (x * keep_f[:, :, None] * keep_t[:, None, :],
    no materialised [B, F, T] mask): it relies on the features' contract that padding is
    0 (0 * keep stays 0). Other fills use an exact masked write."""
    x = batch.features
    B, Fn, T = x.shape
    fu = tu = ru = None
    for f, t, r in parts:
        if f is not None:
            fu = f if fu is None else fu | f
        if t is not None:
            tu = t if tu is None else tu | t
        if r is not None:
            ru = r if ru is None else ru | r
    if fill == "zero" or (not isinstance(fill, str) and float(fill) == 0.0):
        keeps = []
        if fu is not None:
            keeps.append((~fu).to(x.dtype)[:, :, None])
        if tu is not None:
            keeps.append((~tu).to(x.dtype)[:, None, :])
        if ru is not None:
            keeps.append((~ru).to(x.dtype))
        if not keeps:
            return batch.replace(features=x.clone())
        out = x * keeps[0]  # one new tensor, then in place: fresh large buffers cost page faults
        for k in keeps[1:]:
            out.mul_(k)
        return batch.replace(features=out)
    valid = time_valid(batch.lengths, T)[:, None, :]
    mask = torch.zeros(B, Fn, T, dtype=torch.bool, device=x.device)
    if fu is not None:
        mask = mask | (fu[:, :, None] & valid)
    if tu is not None:  # time masks are drawn inside each sample's length already
        mask = mask | tu[:, None, :]
    if ru is not None:
        mask = mask | ru
    if isinstance(fill, str):
        value = _fill_value(x, batch.lengths, fill).to(x.dtype)
        return batch.replace(features=torch.where(mask, value, x))
    return batch.replace(features=x.masked_fill(mask, float(fill)))


class MaskOp(Op):
    """Ops that only overwrite masked cells with a fill; consecutive ones with the same
    constant fill are applied together in one pass by :class:`Policy`."""

    fill: Fill = "zero"

    @property
    def fusable(self) -> bool:
        return not isinstance(self.fill, str) or self.fill == "zero"


    def mask_parts(self, batch: Batch, params: Params):  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, batch: Batch, params: Params) -> Batch:
        return apply_masks(batch, [self.mask_parts(batch, params)], self.fill)


class FreqMask(MaskOp):
    """SpecAugment frequency masks: ``count`` bands of width U[0, max_width] bins each."""

    name = "freq_mask"

    def __init__(self, max_width: int = 27, count: int = 2, fill: Fill = "zero", p: float = 1.0):
        super().__init__(p)
        self.max_width, self.count, self.fill = int(max_width), int(count), _check_fill(self.name, fill)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        F_ = batch.features.shape[1]
        w = randint(ctx.uniform(self.count), 0, min(self.max_width, F_))
        s = randint(ctx.uniform(self.count), 0, F_ - w)
        return {"starts": s, "widths": w}

    def mask_parts(self, batch: Batch, params: Params):
        on = params["active"][:, None].expand_as(params["starts"])
        return _bands(params["starts"], params["widths"], on, batch.features.shape[1]), None, None


class TimeMask(MaskOp):
    """SpecAugment time masks, inside each sample's own length.

    Fixed: ``count`` masks of width U[0, min(max_width, max_fraction * length)].
    Adaptive (Park et al. 2020): pass ``width_fraction`` (pS: max width = pS * length)
    and/or ``count_fraction`` (pM: count = min(max_count, floor(pM * length))).
    """

    name = "time_mask"

    def __init__(self, max_width: int = 100, count: int = 2, max_fraction: float = 1.0,
                 width_fraction: Optional[float] = None, count_fraction: Optional[float] = None,
                 max_count: int = 20, fill: Fill = "zero", p: float = 1.0):
        super().__init__(p)
        self.max_width, self.count, self.max_fraction = int(max_width), int(count), float(max_fraction)
        self.width_fraction, self.count_fraction = width_fraction, count_fraction
        self.max_count, self.fill = int(max_count), _check_fill(self.name, fill)

    def _slots(self) -> int:
        return self.max_count if self.count_fraction is not None else self.count

    def draw(self, ctx: Context, batch: Batch) -> Params:
        L = batch.lengths
        M = self._slots()
        if self.width_fraction is not None:
            wmax = torch.floor(self.width_fraction * L.float()).to(torch.int64)
        else:
            wmax = torch.minimum(torch.full_like(L, self.max_width),
                                 torch.floor(self.max_fraction * L.float()).to(torch.int64))
        if self.count_fraction is not None:
            n = torch.floor(self.count_fraction * L.float()).to(torch.int64).clamp(max=self.max_count)
        else:
            n = torch.full_like(L, self.count)
        w = randint(ctx.uniform(M), 0, wmax[:, None].clamp(min=0))
        s = randint(ctx.uniform(M), 0, (L[:, None] - w).clamp(min=0))
        return {"starts": s, "widths": w, "counts": n}

    def mask_parts(self, batch: Batch, params: Params):
        s, w = params["starts"], params["widths"]
        on = (torch.arange(s.shape[1], device=s.device)[None, :] < params["counts"][:, None]) \
            & params["active"][:, None]
        return None, _bands(s, w, on, batch.features.shape[-1]), None


class CutOut(MaskOp):
    """Rectangular cut-outs: ``count`` rectangles up to ``max_freq`` bins x ``max_time``
    frames (or ``max_time_fraction`` of the sample's length), inside the sample."""

    name = "cutout"

    def __init__(self, count: int = 1, max_freq: int = 20, max_time: int = 40,
                 max_time_fraction: Optional[float] = None, fill: Fill = "zero", p: float = 1.0):
        super().__init__(p)
        self.count, self.max_freq, self.max_time = int(count), int(max_freq), int(max_time)
        self.max_time_fraction, self.fill = max_time_fraction, _check_fill(self.name, fill)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        L, M, F_ = batch.lengths, self.count, batch.features.shape[1]
        tmax = torch.full_like(L, self.max_time)
        if self.max_time_fraction is not None:
            tmax = torch.floor(self.max_time_fraction * L.float()).to(torch.int64)
        tmax = torch.minimum(tmax, L)
        fw = randint(ctx.uniform(M), 0, min(self.max_freq, F_))
        fs = randint(ctx.uniform(M), 0, F_ - fw)
        tw = randint(ctx.uniform(M), 0, tmax[:, None])
        ts = randint(ctx.uniform(M), 0, (L[:, None] - tw).clamp(min=0))
        return {"f_starts": fs, "f_widths": fw, "t_starts": ts, "t_widths": tw}

    def mask_parts(self, batch: Batch, params: Params):
        x = batch.features
        Fn, T = x.shape[1], x.shape[2]
        f = torch.arange(Fn, device=x.device)[None, None, :, None]
        t = torch.arange(T, device=x.device)[None, None, None, :]
        fs, fw = params["f_starts"][..., None, None], params["f_widths"][..., None, None]
        ts, tw = params["t_starts"][..., None, None], params["t_widths"][..., None, None]
        rect = ((f >= fs) & (f < fs + fw) & (t >= ts) & (t < ts + tw)).any(1)
        return None, None, rect & params["active"][:, None, None]


class TimeWarp(Op):
    """SpecAugment time warp: the frame at centre c moves to c + w, |w| <= W, with
    piecewise-linear interpolation; frame 0 and the sample's last frame stay put, so the
    warp never reads or writes past the sample's own length. Frame targets follow
    (nearest frame)."""

    name = "time_warp"

    def __init__(self, W: int = 80, p: float = 1.0):
        super().__init__(p)
        self.W = int(W)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        L = batch.lengths
        Weff = torch.minimum(torch.full_like(L, self.W), ((L - 3) // 2).clamp(min=0))
        c = randint(ctx.uniform(1)[:, 0], Weff + 1, L - Weff - 2)
        w = randint(ctx.uniform(1)[:, 0], -Weff, Weff)
        return {"centre": c, "shift": torch.where(Weff > 0, w, torch.zeros_like(w))}

    def source(self, lengths: torch.Tensor, params: Params, T: int) -> torch.Tensor:
        """[B, T] float source frame of every output frame (identity where inactive)."""
        t = torch.arange(T, device=lengths.device, dtype=torch.float32)[None, :]
        c = params["centre"].float()[:, None]
        w = params["shift"].float()[:, None]
        last = (lengths - 1).clamp(min=0).float()[:, None]
        cw = c + w
        left = t * c / cw.clamp(min=1e-6)
        right = c + (t - cw) * (last - c) / (last - cw).clamp(min=1e-6)
        src = torch.where(t < cw, left, right).clamp(min=0)
        src = torch.minimum(src, last)
        keep = (~params["active"] | (params["shift"] == 0))[:, None] | (t >= lengths[:, None].float())
        return torch.where(keep, t.expand_as(src), src)

    def apply(self, batch: Batch, params: Params) -> Batch:
        x = batch.features
        src = self.source(batch.lengths, params, x.shape[-1])
        out = zero_padding(interp_time(x, src), batch.lengths, inplace=True)
        ft = batch.frame_targets
        if ft is not None:
            ft = gather_frames(ft, src.round().to(torch.int64).clamp(0, ft.shape[1] - 1))
        return batch.replace(features=out, frame_targets=ft)


class FreqShift(Op):
    """Shift the frequency axis by k bins, |k| <= max_shift: cyclic roll, or a shift that
    fills the vacated bins."""

    name = "freq_shift"

    def __init__(self, max_shift: int = 8, cyclic: bool = False, fill: Fill = "min", p: float = 1.0):
        super().__init__(p)
        self.max_shift, self.cyclic, self.fill = int(max_shift), bool(cyclic), _check_fill(self.name, fill)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        return {"shift": randint(ctx.uniform(1)[:, 0], -self.max_shift, self.max_shift)}

    def apply(self, batch: Batch, params: Params) -> Batch:
        x = batch.features
        Fn = x.shape[1]
        k = torch.where(params["active"], params["shift"], torch.zeros_like(params["shift"]))
        src = torch.arange(Fn, device=x.device)[None, :] - k[:, None]  # [B, F]
        inside = (src >= 0) & (src < Fn)
        idx = src.remainder(Fn)
        out = torch.gather(x, 1, idx[:, :, None].expand_as(x))
        if not self.cyclic:
            out = torch.where(inside[:, :, None], out, _fill_value(x, batch.lengths, self.fill).expand_as(x))
        return batch.replace(features=zero_padding(out, batch.lengths))


class FreqWarp(Op):
    """VTLP-style warp of the frequency axis by a per-sample factor alpha (Jaitly & Hinton
    2013): bins below a boundary scale by alpha, the rest map linearly so the top bin stays
    the top bin. Applied to the spectrogram by interpolation along frequency."""

    name = "freq_warp"

    def __init__(self, alpha: Tuple[float, float] = (0.9, 1.1), boundary: float = 0.8, p: float = 1.0):
        super().__init__(p)
        self.alpha, self.boundary = (float(alpha[0]), float(alpha[1])), float(boundary)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        lo, hi = self.alpha
        return {"alpha": lo + (hi - lo) * ctx.uniform(1)[:, 0]}

    def source(self, alpha: torch.Tensor, Fn: int) -> torch.Tensor:
        """[B, F] source bin of every output bin (inverse of the piecewise-linear warp)."""
        a = alpha[:, None]
        nu_out = torch.linspace(0, 1, Fn, device=alpha.device)[None, :]
        nu0 = self.boundary * torch.clamp(a, max=1.0) / a  # bend point (input side)
        bend = a * nu0
        inv = torch.where(nu_out <= bend, nu_out / a, nu0 + (nu_out - bend) * (1 - nu0) / (1 - bend))
        return inv * (Fn - 1)

    def apply(self, batch: Batch, params: Params) -> Batch:
        x = batch.features
        alpha = torch.where(params["active"], params["alpha"], torch.ones_like(params["alpha"]))
        src = self.source(alpha, x.shape[1])
        out = interp_time(x.transpose(1, 2), src).transpose(1, 2)
        return batch.replace(features=zero_padding(out, batch.lengths))


class TimeStretch(Op):
    """Resample the time axis by a per-sample rate r in ``rates``: new length
    round(length / r) (r > 1 is faster/shorter). Returns new lengths; frame targets follow."""

    name = "time_stretch"

    def __init__(self, rates: Tuple[float, float] = (0.8, 1.25), p: float = 1.0):
        super().__init__(p)
        self.rates = (float(rates[0]), float(rates[1]))

    def draw(self, ctx: Context, batch: Batch) -> Params:
        lo, hi = math.log(self.rates[0]), math.log(self.rates[1])
        return {"rate": torch.exp(lo + (hi - lo) * ctx.uniform(1)[:, 0])}

    def apply(self, batch: Batch, params: Params) -> Batch:
        x, L = batch.features, batch.lengths
        rate = torch.where(params["active"], params["rate"], torch.ones_like(params["rate"]))
        newL = torch.where(L > 0, torch.round(L.float() / rate).to(torch.int64).clamp(min=1), L)
        T_out = max(int(newL.max()) if newL.numel() else 0, x.shape[-1])
        t = torch.arange(T_out, device=x.device, dtype=torch.float32)[None, :]
        scale = (L - 1).clamp(min=0).float() / (newL - 1).clamp(min=1).float()
        src = torch.minimum(t * scale[:, None], (L - 1).clamp(min=0).float()[:, None])
        out = zero_padding(interp_time(x, src), newL, inplace=True)
        ft = batch.frame_targets
        if ft is not None:
            ft = move_frames(ft, src.round().to(torch.int64), newL)
        return batch.replace(features=out, lengths=newL, frame_targets=ft)


class FrameDropDup(Op):
    """Drop each frame with probability ``drop`` and duplicate it with probability ``dup``
    (batched with a cumulative sum and searchsorted). Returns new lengths; frame targets follow."""

    name = "frame_drop_dup"

    def __init__(self, drop: float = 0.05, dup: float = 0.05, p: float = 1.0):
        super().__init__(p)
        if drop + dup > 1:
            raise ValueError("frame_drop_dup: drop + dup must be <= 1")
        self.drop, self.dup = float(drop), float(dup)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        T = batch.features.shape[-1]
        u = ctx.element_uniform((T,))
        counts = torch.ones_like(u, dtype=torch.int64)
        counts = torch.where(u < self.drop, 0, counts)
        counts = torch.where(u >= 1 - self.dup, 2, counts)
        return {"counts": counts.to(torch.int8)}

    def apply(self, batch: Batch, params: Params) -> Batch:
        x, L = batch.features, batch.lengths
        T = x.shape[-1]
        valid = time_valid(L, T)
        counts = params["counts"][:, :T].to(torch.int64)
        counts = torch.where(params["active"][:, None], counts, torch.ones_like(counts)) * valid
        # never drop every frame of a non-empty sample: keep its first frame
        empty = (counts.sum(1) == 0) & (L > 0)
        counts[:, 0] = torch.where(empty, 1, counts[:, 0])
        cum = counts.cumsum(1)
        newL = cum[:, -1] if T else L
        T_out = max(int(newL.max()) if newL.numel() else 0, T)
        k = torch.arange(T_out, device=x.device)[None, :].expand(x.shape[0], -1).contiguous()
        src = torch.searchsorted(cum, k, right=True).clamp(max=max(T - 1, 0))
        out = zero_padding(torch.gather(x, 2, src[:, None, :].expand(-1, x.shape[1], -1)), newL)
        ft = batch.frame_targets
        if ft is not None:
            ft = move_frames(ft, src, newL)
        return batch.replace(features=out, lengths=newL, frame_targets=ft)


class Gain(Op):
    """Gain in dB, U[min_db, max_db]: adds gain * ln(10) / 10 to the log-power."""

    name = "gain"

    def __init__(self, min_db: float = -6.0, max_db: float = 6.0, p: float = 1.0):
        super().__init__(p)
        self.min_db, self.max_db = float(min_db), float(max_db)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        return {"db": self.min_db + (self.max_db - self.min_db) * ctx.uniform(1)[:, 0]}

    def apply(self, batch: Batch, params: Params) -> Batch:
        db = torch.where(params["active"], params["db"], torch.zeros_like(params["db"]))
        out = batch.features + (db * _NAT_PER_DB)[:, None, None].to(batch.features.dtype)
        return batch.replace(features=zero_padding(out, batch.lengths))


class RandomEQ(Op):
    """A smooth random frequency response: a sum of ``bands`` cosines over the frequency
    axis with peak excursion up to ``max_db``, added in the log-power domain."""

    name = "random_eq"

    def __init__(self, max_db: float = 6.0, bands: int = 4, p: float = 1.0):
        super().__init__(p)
        self.max_db, self.bands = float(max_db), int(bands)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        amp = (2 * ctx.uniform(self.bands) - 1) * (self.max_db / self.bands)
        phase = 2 * math.pi * ctx.uniform(self.bands)
        return {"amp_db": amp, "phase": phase}

    def curve_db(self, params: Params, Fn: int, device) -> torch.Tensor:
        nu = torch.linspace(0, 1, Fn, device=device)[None, None, :]
        k = torch.arange(1, self.bands + 1, device=device, dtype=torch.float32)[None, :, None]
        return (params["amp_db"][..., None] * torch.cos(math.pi * k * nu + params["phase"][..., None])).sum(1)

    def apply(self, batch: Batch, params: Params) -> Batch:
        x = batch.features
        curve = self.curve_db(params, x.shape[1], x.device) * params["active"][:, None]
        return batch.replace(features=zero_padding(x + (curve * _NAT_PER_DB)[:, :, None].to(x.dtype),
                                                   batch.lengths))


class BandLimit(Op):
    """Band-limiting (codecs, microphones): a low- or high-pass edge at a per-sample
    cutoff (fraction of the frequency axis) with a smooth ``width``-bin transition and
    ``attenuation_db`` in the stop band."""

    name = "band_limit"

    def __init__(self, kind: str = "lowpass", cutoff: Tuple[float, float] = (0.5, 0.9),
                 width: float = 2.0, attenuation_db: float = 60.0, p: float = 1.0):
        super().__init__(p)
        if kind not in ("lowpass", "highpass", "random"):
            raise ValueError("band_limit: kind must be lowpass, highpass or random")
        self.kind, self.cutoff = kind, (float(cutoff[0]), float(cutoff[1]))
        self.width, self.attenuation_db = float(width), float(attenuation_db)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        lo, hi = self.cutoff
        u = ctx.uniform(2)
        high = u[:, 1] < 0.5 if self.kind == "random" else torch.full_like(u[:, 1], self.kind == "highpass",
                                                                              dtype=torch.bool)
        return {"cutoff": lo + (hi - lo) * u[:, 0], "highpass": high}

    def apply(self, batch: Batch, params: Params) -> Batch:
        x = batch.features
        Fn = x.shape[1]
        f = torch.arange(Fn, device=x.device, dtype=torch.float32)[None, :]
        edge = params["cutoff"][:, None] * (Fn - 1)
        z = (f - edge) / max(self.width, 1e-3)
        z = torch.where(params["highpass"][:, None], -z, z)
        att = torch.sigmoid(z) * self.attenuation_db * params["active"][:, None]
        return batch.replace(features=zero_padding(x - (att * _NAT_PER_DB)[:, :, None].to(x.dtype),
                                                   batch.lengths))


class FeatureNoise(Op):
    """Additive noise on the features. ``colour`` None: gaussian noise in the log domain
    with std U[std]. ``colour`` beta (0 white, 1 pink, 2 brown): a noise floor in the
    power domain at U[snr_db] below the sample's mean power, shaped (bin + 1) ** -beta,
    with exponential per-bin power (a noise STFT's power distribution)."""

    name = "feature_noise"

    def __init__(self, std: Tuple[float, float] = (0.0, 0.3), colour: Optional[float] = None,
                 snr_db: Tuple[float, float] = (10.0, 30.0), log_offset: float = 1e-6, p: float = 1.0):
        super().__init__(p)
        self.std, self.colour = (float(std[0]), float(std[1])), colour
        self.snr_db, self.log_offset = (float(snr_db[0]), float(snr_db[1])), float(log_offset)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        Fn, T = batch.features.shape[1], batch.features.shape[2]
        level = ctx.uniform(1)[:, 0]
        u = ctx.element_uniform((Fn, T))
        return {"level": level, "field": u}

    def apply(self, batch: Batch, params: Params) -> Batch:
        x, L = batch.features, batch.lengths
        u = params["field"][:, :, : x.shape[-1]].to(x.dtype)
        active = params["active"][:, None, None]
        if self.colour is None:
            std = self.std[0] + (self.std[1] - self.std[0]) * params["level"]
            # uniform -> standard normal through the inverse CDF (one stream per element)
            z = math.sqrt(2.0) * torch.erfinv((2 * u - 1).clamp(-1 + 1e-6, 1 - 1e-6))
            out = x + std[:, None, None].to(x.dtype) * z * active
        else:
            snr = self.snr_db[0] + (self.snr_db[1] - self.snr_db[0]) * params["level"]
            power = (torch.exp(x) - self.log_offset).clamp(min=0)
            mean_p = (power * time_valid(L, x.shape[-1])[:, None, :]).sum((1, 2)) / \
                (L.clamp(min=1) * x.shape[1]).to(x.dtype)
            shape = (torch.arange(x.shape[1], device=x.device, dtype=x.dtype) + 1) ** (-float(self.colour))
            shape = shape / shape.mean()
            noise = -torch.log1p(-u.clamp(max=1 - 1e-7)) * shape[None, :, None]  # Exp(1) x shape
            level = (mean_p * 10 ** (-snr / 10))[:, None, None]
            out = torch.where(active, torch.log(power + level * noise + self.log_offset), x)
        return batch.replace(features=zero_padding(out, L))


# ---------------------------------------------------------------- mixing ops

def _gamma(ctx: Context, shape: torch.Tensor, candidates: int = 8) -> torch.Tensor:
    """Gamma(shape, 1) per sample, from keyed uniforms: Marsaglia-Tsang with ``candidates``
    proposals in parallel (each accepted with p > 0.95) and the shape < 1 boost."""
    a = shape + (shape < 1).to(shape.dtype)
    d = (a - 1.0 / 3.0)[:, None]
    c = 1.0 / torch.sqrt(9.0 * d)
    z = ctx.normal(candidates)
    u = 1.0 - ctx.uniform(candidates)
    v = (1 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp(min=1e-12)))
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros_like(ok[:, 0], dtype=torch.int64))
    g = torch.gather(d * v, 1, first[:, None])[:, 0]
    g = torch.where(ok.any(1), g, d[:, 0])  # (practically never) all rejected: the mode
    boost = (1.0 - ctx.uniform(1)[:, 0]) ** (1.0 / shape)
    return torch.where(shape < 1, g * boost, g)


def _partners(ctx: Context, B: int) -> torch.Tensor:
    """A partner index per sample, never itself when B > 1 (odd B and B = 1 work)."""
    i = torch.arange(B, device=ctx.device)
    if B == 1:
        return i
    off = 1 + torch.floor(ctx.uniform(1)[:, 0] * (B - 1)).to(torch.int64).clamp(max=B - 2)
    return (i + off) % B


def _soft_targets(targets: torch.Tensor, num_classes: Optional[int]) -> torch.Tensor:
    if targets.dtype.is_floating_point:
        return targets
    if num_classes is None:
        raise ValueError("mixing class-index targets needs num_classes")
    return F.one_hot(targets.long(), num_classes).float()


class Mixup(Op):
    """Mixup of features and targets. lambda ~ Beta(alpha, alpha) per sample (a function of
    the sample's key); the partner is drawn from the batch. Features mix where both samples
    hold signal (frames past the partner's length keep the sample's own). Targets become
    soft: lambda * y_i + (1 - lambda) * y_j (one-hot for class indices, with optional
    label smoothing), or the same mix of multi-hot vectors. ``params`` hold (partner,
    lam) per sample, for mixing sequence losses (CTC, seq2seq) too. Soft or multi-hot
    frame targets [B, T, C] mix like the features; integer frame targets are left as they
    are (mix their losses with the recorded partner and lambda)."""

    name = "mixup"

    def __init__(self, alpha: float = 0.4, num_classes: Optional[int] = None, smoothing: float = 0.0,
                 p: float = 1.0):
        super().__init__(p)
        self.alpha, self.num_classes, self.smoothing = float(alpha), num_classes, float(smoothing)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        B = batch.features.shape[0]
        a = torch.full((B,), self.alpha, device=ctx.device)
        g1, g2 = _gamma(ctx, a), _gamma(ctx, a)
        lam = g1 / (g1 + g2).clamp(min=1e-12)
        return {"lam": lam, "partner": _partners(ctx, B)}

    def effective_lambda(self, params: Params) -> torch.Tensor:
        return torch.where(params["active"], params["lam"], torch.ones_like(params["lam"]))

    def apply(self, batch: Batch, params: Params) -> Batch:
        x, L = batch.features, batch.lengths
        j = params["partner"]
        lam = self.effective_lambda(params)
        xj = x[j]
        both = time_valid(torch.minimum(L, L[j]), x.shape[-1])[:, None, :]
        mixed = lam[:, None, None] * x + (1 - lam[:, None, None]) * xj
        out = zero_padding(torch.where(both, mixed, x), L)
        y = batch.targets
        if y is not None:
            y = _soft_targets(y, self.num_classes)
            y = lam[:, None] * y + (1 - lam[:, None]) * y[j]
            if self.smoothing:
                y = y * (1 - self.smoothing) + self.smoothing / y.shape[-1]
        ft = batch.frame_targets
        if ft is not None and ft.dim() == 3 and ft.dtype.is_floating_point:
            # soft / multi-hot frame labels mix where the features mixed (both hold signal);
            # integer frame labels (class per frame) stay: mix their losses with (partner, lam)
            both_t = time_valid(torch.minimum(L, L[j]), ft.shape[1])[:, :, None]
            lam3 = lam[:, None, None].to(ft.dtype)
            ft = torch.where(both_t, lam3 * ft + (1 - lam3) * ft[j], ft)
        return batch.replace(features=out, targets=y, frame_targets=ft)


class Overlay(Op):
    """Overlay a partner from the batch at a per-sample SNR (dB, U[snr_db]) in the power
    domain, where both hold signal: the partner is scaled so that (own power) / (partner
    power) over the overlap equals the SNR. Multi-label targets take the union; class
    indices are kept (the partner is interference)."""

    name = "overlay"

    def __init__(self, snr_db: Tuple[float, float] = (0.0, 20.0), multi_label: bool = False,
                 log_offset: float = 1e-6, p: float = 1.0):
        super().__init__(p)
        self.snr_db, self.multi_label = (float(snr_db[0]), float(snr_db[1])), bool(multi_label)
        self.log_offset = float(log_offset)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        lo, hi = self.snr_db
        B = batch.features.shape[0]
        snr = lo + (hi - lo) * ctx.uniform(1)[:, 0]
        return {"snr_db": snr, "partner": _partners(ctx, B)}

    def apply(self, batch: Batch, params: Params) -> Batch:
        x, L = batch.features, batch.lengths
        j = params["partner"]
        active = params["active"] & (j != torch.arange(x.shape[0], device=x.device))
        both = time_valid(torch.minimum(L, L[j]), x.shape[-1])[:, None, :].to(x.dtype)
        p_own = (torch.exp(x) - self.log_offset).clamp(min=0)
        p_par = p_own[j]
        e_own = (p_own * both).sum((1, 2))
        e_par = (p_par * both).sum((1, 2)).clamp(min=1e-20)
        gain = e_own / e_par * 10 ** (-params["snr_db"] / 10)
        mixed = torch.log(p_own + gain[:, None, None] * p_par + self.log_offset)
        mixed = torch.where(both.bool(), mixed, x)  # outside the overlap: untouched
        out = zero_padding(select(active, mixed, x), L)
        y = batch.targets
        if y is not None and self.multi_label:
            y = torch.where(active[:, None], torch.maximum(y, y[j]), y)
        ft = batch.frame_targets
        if ft is not None and self.multi_label and ft.dim() == 3:  # union where both hold signal
            on = (both.bool()[:, 0, :] & active[:, None])[:, :, None]
            ft = torch.where(on, torch.maximum(ft, ft[j]), ft)
        return batch.replace(features=out, targets=y, frame_targets=ft)


class Vtlp(Op):
    """Vocal tract length perturbation in the filterbank (Jaitly & Hinton 2013): the mel
    filterbank of each sample is built on a frequency axis warped by alpha ~ U[alpha]
    (piecewise linear, bend at ``boundary_hz``), so formants move by alpha. Runs inside
    the featurizer (``Policy.featurize``); :class:`FreqWarp` is the spectrogram-only variant."""

    name = "vtlp"
    domain = "filterbank"

    def __init__(self, alpha: Tuple[float, float] = (0.9, 1.1), boundary_hz: float = 4800.0, p: float = 1.0):
        super().__init__(p)
        if not 0 < float(alpha[0]) <= float(alpha[1]):
            raise ValueError("vtlp.alpha: expected 0 < min <= max")
        self.alpha, self.boundary_hz = (float(alpha[0]), float(alpha[1])), float(boundary_hz)

    def draw(self, ctx: Context, batch) -> Params:
        return {"alpha": self.alpha[0] + (self.alpha[1] - self.alpha[0]) * ctx.uniform(1)[:, 0]}

    def filterbanks(self, cfg: MelConfig, params: Params) -> torch.Tensor:
        """[B, n_mels, n_freqs]; inactive samples get the plain filterbank (alpha = 1)."""
        alpha = torch.where(params["active"], params["alpha"], torch.ones_like(params["alpha"]))
        return warped_fbanks(cfg, alpha, self.boundary_hz)

    def apply(self, batch, params):
        raise TypeError("vtlp acts in the filterbank: run it through Policy.featurize")


OPS = {cls.name: cls for cls in (FreqMask, TimeMask, CutOut, TimeWarp, FreqShift, FreqWarp, TimeStretch,
                                 FrameDropDup, Gain, RandomEQ, BandLimit, FeatureNoise, Mixup, Overlay, Vtlp)}


def op_names() -> Sequence[str]:
    return sorted(OPS)
