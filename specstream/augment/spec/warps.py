"""Warps: time warp, time stretch, frame drop/duplication (they move content in time and
declare where each output frame comes from, so frame targets follow), frequency shift /
roll and frequency warp."""
from __future__ import annotations

import math
from typing import Tuple

import torch

from ...functional.frames import interp_time, lengths_mask
from ...functional.random import stream_uniform
from ..core import Batch, Context, Op, Params, check, check_number, check_range, randint
from .masks import Fill, check_fill, fill_value


class TimeWarp(Op):
    """SpecAugment time warp: the frame at centre c moves to c + w, |w| <= W, with
    piecewise-linear interpolation; frame 0 and the sample's last frame stay put, so the
    warp never reads or writes past the sample's own length. Frame targets follow (nearest
    frame)."""

    name = "time_warp"
    zero_padded = True

    def __init__(self, W: int = 80, p: float = 1.0):
        super().__init__(p)
        self.W = check_number(self.name, "W", W, 0, integer=True)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        L = batch.lengths
        Weff = torch.minimum(torch.full_like(L, self.W), ((L - 3) // 2).clamp(min=0))
        c = randint(ctx.uniform(1)[:, 0], Weff + 1, L - Weff - 2)
        w = randint(ctx.uniform(1)[:, 0], -Weff, Weff)
        return {"centre": c, "shift": torch.where(Weff > 0, w, torch.zeros_like(w))}

    def source(self, lengths: torch.Tensor, params: Params, T: int) -> torch.Tensor:
        """[B, T] float source frame of every output frame (identity past each length and
        where the shift is 0)."""
        t = torch.arange(T, device=lengths.device, dtype=torch.float32)[None, :]
        c = params["centre"].float()[:, None]
        w = params["shift"].float()[:, None]
        last = (lengths - 1).clamp(min=0).float()[:, None]
        cw = c + w
        left = t * c / cw.clamp(min=1e-6)
        right = c + (t - cw) * (last - c) / (last - cw).clamp(min=1e-6)
        src = torch.minimum(torch.where(t < cw, left, right).clamp(min=0), last)
        keep = (params["shift"] == 0)[:, None] | (t >= lengths[:, None].float())
        return torch.where(keep, t.expand_as(src), src)

    def transform(self, batch: Batch, params: Params) -> Batch:
        x, L = batch.features, batch.lengths
        return batch.replace(features=interp_time(x, self.source(L, params, x.shape[-1]), L))

    def frame_source(self, batch, params, out):
        return self.source(batch.lengths, params, out.features.shape[-1]).round().to(torch.int64)


class TimeStretch(Op):
    """Resample the time axis by a per-sample rate r in ``rates`` (log-uniform): new length
    round(length / r) (r > 1 is faster/shorter). Returns new lengths; frame targets follow."""

    name = "time_stretch"
    changes = frozenset({"features", "lengths"})
    zero_padded = True

    def __init__(self, rates: Tuple[float, float] = (0.8, 1.25), p: float = 1.0):
        super().__init__(p)
        self.rates = check_range(self.name, "rates", rates, 0.0, 100.0, lo_open=True)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        lo, hi = math.log(self.rates[0]), math.log(self.rates[1])
        return {"rate": torch.exp(lo + (hi - lo) * ctx.uniform(1)[:, 0])}

    @staticmethod
    def _new_lengths(L, rate):
        return torch.where(L > 0, torch.round(L.float() / rate).to(torch.int64).clamp(min=1), L)

    def _source(self, L, newL, T_out):
        t = torch.arange(T_out, device=L.device, dtype=torch.float32)[None, :]
        scale = (L - 1).clamp(min=0).float() / (newL - 1).clamp(min=1).float()
        return torch.minimum(t * scale[:, None], (L - 1).clamp(min=0).float()[:, None])

    def transform(self, batch: Batch, params: Params) -> Batch:
        x, L = batch.features, batch.lengths
        newL = self._new_lengths(L, params["rate"])
        T_out = max(int(newL.max()) if newL.numel() else 0, x.shape[-1])
        return batch.replace(features=interp_time(x, self._source(L, newL, T_out), newL), lengths=newL)

    def frame_source(self, batch, params, out):
        return self._source(batch.lengths, out.lengths, out.features.shape[-1]).round().to(torch.int64)


class FrameDropDup(Op):
    """Drop each frame with probability ``drop`` and duplicate it with probability ``dup``
    (batched with a cumulative sum and searchsorted). Returns new lengths; frame targets
    follow. The per-frame choices come from a recorded stream key (small parameters,
    exact replay)."""

    name = "frame_drop_dup"
    changes = frozenset({"features", "lengths"})

    def __init__(self, drop: float = 0.05, dup: float = 0.05, p: float = 1.0):
        super().__init__(p)
        self.drop = check_number(self.name, "drop", drop, 0.0, 1.0)
        self.dup = check_number(self.name, "dup", dup, 0.0, 1.0)
        check(self.name, "drop + dup", self.drop + self.dup, self.drop + self.dup <= 1, "at most 1")

    def draw(self, ctx: Context, batch: Batch) -> Params:
        return {"stream": ctx.stream_keys()}

    def frame_counts(self, params: Params, lengths: torch.Tensor, T: int) -> torch.Tensor:
        """[B, T] int64: how many times each input frame appears in the output (0, 1 or 2;
        0 past each length; a non-empty sample keeps at least its first frame)."""
        L = lengths
        u = stream_uniform(params["stream"], T)
        counts = torch.ones_like(u, dtype=torch.int64)
        counts = torch.where(u < self.drop, 0, counts)
        counts = torch.where(u >= 1 - self.dup, 2, counts) * lengths_mask(L, T)
        empty = (counts.sum(1) == 0) & (L > 0)  # never drop every frame of a non-empty sample
        counts[:, 0] = torch.where(empty, 1, counts[:, 0])
        return counts

    def _counts(self, batch, params):
        return self.frame_counts(params, batch.lengths, batch.features.shape[-1]).cumsum(1)

    def transform(self, batch: Batch, params: Params) -> Batch:
        x = batch.features
        cum = self._counts(batch, params)
        newL = cum[:, -1] if x.shape[-1] else batch.lengths
        src = self._src(cum, newL, x.shape[-1])
        return batch.replace(features=torch.gather(x, 2, src[:, None, :].expand(-1, x.shape[1], -1)), lengths=newL)

    @staticmethod
    def _src(cum, newL, T):
        T_out = max(int(newL.max()) if newL.numel() else 0, T)
        k = torch.arange(T_out, device=cum.device)[None, :].expand(cum.shape[0], -1).contiguous()
        return torch.searchsorted(cum, k, right=True).clamp(max=max(T - 1, 0))

    def frame_source(self, batch, params, out):
        return self._src(self._counts(batch, params), out.lengths, batch.features.shape[-1])


class FreqShift(Op):
    """Shift the frequency axis by k bins, |k| <= max_shift: cyclic roll, or a shift that
    fills the vacated bins (``fill``, default the sample's minimum: silence)."""

    name = "freq_shift"

    def __init__(self, max_shift: int = 8, cyclic: bool = False, fill: Fill = "min", p: float = 1.0):
        super().__init__(p)
        self.max_shift = check_number(self.name, "max_shift", max_shift, 0, integer=True)
        self.cyclic = check(self.name, "cyclic", cyclic, isinstance(cyclic, bool), "true or false")
        self.fill = check_fill(self.name, fill)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        return {"shift": randint(ctx.uniform(1)[:, 0], -self.max_shift, self.max_shift)}

    def transform(self, batch: Batch, params: Params) -> Batch:
        x = batch.features
        Fn = x.shape[1]
        src = torch.arange(Fn, device=x.device)[None, :] - params["shift"][:, None]  # [B, F]
        out = torch.gather(x, 1, src.remainder(Fn)[:, :, None].expand_as(x))
        if not self.cyclic:
            inside = ((src >= 0) & (src < Fn))[:, :, None]
            out = torch.where(inside, out, fill_value(x, batch.lengths, self.fill).expand_as(x))
        return batch.replace(features=out)


class FreqWarp(Op):
    """VTLP-style warp of the frequency axis of the spectrogram by a per-sample factor alpha
    (Jaitly & Hinton 2013): bins below a boundary scale by alpha, the rest map linearly so
    the top bin stays the top bin; interpolation along frequency. (``vtlp`` warps the
    filterbank itself, before the log.)"""

    name = "freq_warp"

    def __init__(self, alpha: Tuple[float, float] = (0.9, 1.1), boundary: float = 0.8, p: float = 1.0):
        super().__init__(p)
        self.alpha = check_range(self.name, "alpha", alpha, 0.5, 2.0)
        self.boundary = check_number(self.name, "boundary", boundary, 0.0, 1.0, lo_open=True, hi_open=True)

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

    def transform(self, batch: Batch, params: Params) -> Batch:
        x = batch.features
        src = self.source(params["alpha"], x.shape[1])
        return batch.replace(features=interp_time(x.transpose(1, 2), src).transpose(1, 2))
