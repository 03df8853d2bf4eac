"""Masks: frequency and time masks (SpecAugment, fixed or adaptive) and cut-out rectangles.

A mask overwrites cells inside each sample's valid frames with a fill, per sample:
``mean`` (default: the mean of the sample's own valid region, SpecAugment's "zero" of
normalised features, and neither the loudest nor the quietest thing in an un-normalised
log-mel), ``zero``, ``min`` (the sample's own minimum: silence), or a finite number. Consecutive
mask ops are applied in one pass (:func:`apply_masks`), their fill taken from the features
as they enter the run.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch

from ...functional import cpu_kernels
from ...functional.frames import bands, lengths_mask, masked_mean, masked_min
from ..core import Batch, Context, Op, Params, check, check_number, randint

Fill = Union[str, float]
FILLS = ("mean", "zero", "min")


def check_fill(op: str, fill: Fill) -> Fill:
    if isinstance(fill, str):
        ok = fill in FILLS
    else:
        try:  # a number features can hold: finite, within float32's range
            ok = isinstance(fill, (int, float)) and not isinstance(fill, bool) and math.isfinite(fill) \
                and abs(float(fill)) <= torch.finfo(torch.float32).max
        except OverflowError:  # an int too large for a float
            ok = False
    return check(op, "fill", fill, ok, "mean, zero, min or a finite number within float32's range")


def fill_value(x: torch.Tensor, lengths: torch.Tensor, fill: Fill) -> torch.Tensor:
    """[B, 1, 1] fill per sample."""
    if fill == "zero":
        return x.new_zeros(x.shape[0], 1, 1)
    if fill == "mean":
        return masked_mean(x, lengths)[:, None, None]
    if fill == "min":
        return masked_min(x, lengths)[:, None, None].to(x.dtype)
    return x.new_full((x.shape[0], 1, 1), float(fill))


def apply_masks(batch: Batch, parts, fill: Fill, owned: bool = False) -> Batch:
    """One pass for any number of masks: ``parts`` are (freq [B, F] or None, time [B, T] or
    None, rect [B, F, T] or None) triples, already restricted to active samples and (time,
    rect) to valid frames. Only each sample's valid frames are written. ``owned``: the
    caller hands over the features (a policy's own intermediate), which may then be
    written in place.

    On the CPU (with numba, no cut-out rectangles) one fused pass
    (:func:`~specstream.functional.cpu_kernels.apply_masks`; in place when ``owned``: only
    the masked cells and the padding are written). Otherwise one pass over the
    features multiplies by a broadcast keep-vector of frames and adds the fill on the
    masked frames (no [B, F, T] mask); then only the masked bins' rows are written. Both
    give the same values."""
    x, L = batch.features, batch.lengths
    B, Fn, T = x.shape
    fu = tu = ru = None
    for f, t, r in parts:
        if f is not None:
            fu = f if fu is None else fu | f
        if t is not None:
            tu = t if tu is None else tu | t
        if r is not None:
            ru = r if ru is None else ru | r
    if fu is None and tu is None and ru is None:
        return batch
    zero = fill == "zero" or (not isinstance(fill, str) and float(fill) == 0.0)
    if ru is None and x.is_cpu and x.dtype in (torch.float32, torch.float64) \
            and x.is_contiguous() and not x.requires_grad and cpu_kernels.available():
        # one pass: each output row written once (a masked bin's row without reading x)
        m = x.new_zeros(B) if zero else fill_value(x, L, fill)[:, 0, 0]
        fu = x.new_zeros(B, Fn, dtype=torch.bool) if fu is None else fu
        tu = x.new_zeros(B, T, dtype=torch.bool) if tu is None else tu
        return batch.replace(features=cpu_kernels.apply_masks(x, L, fu, tu, m, inplace=owned))
    valid = lengths_mask(L, T)
    keep_t = valid if tu is None else valid & ~tu  # [B, T]: frames kept (padding not kept)
    m = None if zero else fill_value(x, L, fill)  # [B, 1, 1]
    # one pass over the features: kept frames copied, masked frames set to the fill (time
    # masks lie inside each sample's length), padding 0; the [B, T] fill row broadcasts over
    # bins, so no [B, F, T] mask is built
    if zero or tu is None:
        out = x * keep_t.to(x.dtype)[:, None, :]
    else:
        out = torch.addcmul((tu.to(x.dtype) * m[:, 0])[:, None, :], x, keep_t.to(x.dtype)[:, None, :])
    out = out.contiguous()  # (a no-op unless x came in another layout)
    if fu is not None:
        # masked bins: only their rows are written (the fill on valid frames, padding 0)
        b, f = fu.nonzero(as_tuple=True)
        rows = out.view(B * Fn, T)
        if zero:
            rows.index_fill_(0, b * Fn + f, 0.0)
        else:
            fill_rows = m[:, 0] * valid.to(x.dtype)  # [B, T]: each sample's fill on its valid frames
            rows.index_copy_(0, b * Fn + f, fill_rows.index_select(0, b))
    if ru is not None:
        out = out * (~ru).to(x.dtype) if zero else torch.where(ru, m, out)
    return batch.replace(features=out)


class MaskOp(Op):
    """Ops that only overwrite masked cells with a fill; :class:`~..policy.Policy` runs
    consecutive ones with the same fill in one pass. They gate themselves (masks of
    inactive samples are empty), so ``rows = "all"`` costs no row copies."""

    rows = "all"
    fill: Fill = "mean"

    def mask_parts(self, batch: Batch, params: Params):  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, batch: Batch, params: Params) -> Batch:
        return apply_masks(batch, [self.mask_parts(batch, params)], self.fill)


class FreqMask(MaskOp):
    """SpecAugment frequency masks: ``count`` bands of width U{0..max_width} bins each."""

    name = "freq_mask"

    def __init__(self, max_width: int = 27, count: int = 2, fill: Fill = "mean", p: float = 1.0):
        super().__init__(p)
        self.max_width = check_number(self.name, "max_width", max_width, 0, integer=True)
        self.count = check_number(self.name, "count", count, 0, 64, integer=True)
        self.fill = check_fill(self.name, fill)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        F_ = batch.features.shape[1]
        w = randint(ctx.uniform(self.count), 0, min(self.max_width, F_))
        s = randint(ctx.uniform(self.count), 0, torch.from_numpy(F_ - w.numpy()) if w.is_cpu else F_ - w)
        return {"starts": s, "widths": w}

    def mask_parts(self, batch: Batch, params: Params):
        active, starts = params["active"], params["starts"]
        if active.is_cpu:  # numpy: the same rows, without torch calls
            on = torch.from_numpy(np.repeat(active.numpy()[:, None], starts.shape[1], axis=1))
        else:
            on = active[:, None].expand_as(starts)
        return bands(starts, params["widths"], on, batch.features.shape[1]), None, None


class TimeMask(MaskOp):
    """SpecAugment time masks, inside each sample's own length.

    Fixed: ``count`` masks of width U{0..min(max_width, max_fraction * length)}.
    Adaptive (Park et al. 2020): ``width_fraction`` (pS: max width = pS * length) and/or
    ``count_fraction`` (pM: count = min(max_count, floor(pM * length))).
    """

    name = "time_mask"

    def __init__(self, max_width: int = 100, count: int = 2, max_fraction: float = 1.0,
                 width_fraction: Optional[float] = None, count_fraction: Optional[float] = None,
                 max_count: int = 20, fill: Fill = "mean", p: float = 1.0):
        super().__init__(p)
        self.max_width = check_number(self.name, "max_width", max_width, 0, integer=True)
        self.count = check_number(self.name, "count", count, 0, 256, integer=True)
        self.max_fraction = check_number(self.name, "max_fraction", max_fraction, 0.0, 1.0)
        self.width_fraction = None if width_fraction is None else \
            check_number(self.name, "width_fraction", width_fraction, 0.0, 1.0)
        self.count_fraction = None if count_fraction is None else \
            check_number(self.name, "count_fraction", count_fraction, 0.0, 1.0)
        self.max_count = check_number(self.name, "max_count", max_count, 0, 256, integer=True)
        self.fill = check_fill(self.name, fill)

    def _slots(self) -> int:
        return self.max_count if self.count_fraction is not None else self.count

    def draw(self, ctx: Context, batch: Batch) -> Params:
        L = batch.lengths
        M = self._slots()
        if L.is_cpu:  # a host draw: the same values through numpy (fewer dispatches)
            return self._draw_host(ctx, L.numpy(), M)
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

    def _draw_host(self, ctx: Context, L: np.ndarray, M: int) -> Params:
        """:meth:`draw` for host lengths: float32 products as torch's, int64 after."""
        Lf = L.astype(np.float32)
        if self.width_fraction is not None:
            wmax = np.floor(np.float32(self.width_fraction) * Lf).astype(np.int64)
        else:
            wmax = np.minimum(self.max_width, np.floor(np.float32(self.max_fraction) * Lf).astype(np.int64))
        if self.count_fraction is not None:
            n = np.minimum(np.floor(np.float32(self.count_fraction) * Lf).astype(np.int64), self.max_count)
        else:
            n = np.full(L.shape, self.count, dtype=np.int64)
        w = randint(ctx.uniform(M), 0, torch.from_numpy(np.maximum(wmax, 0)[:, None]))
        s = randint(ctx.uniform(M), 0, torch.from_numpy(np.maximum(L[:, None] - w.numpy(), 0)))
        return {"starts": s, "widths": w, "counts": torch.from_numpy(n)}

    def mask_parts(self, batch: Batch, params: Params):
        s, w = params["starts"], params["widths"]
        if s.is_cpu:  # numpy: the same rows, without torch calls
            on = torch.from_numpy((np.arange(s.shape[1])[None, :] < params["counts"].numpy()[:, None])
                                  & params["active"].numpy()[:, None])
        else:
            on = (torch.arange(s.shape[1], device=s.device)[None, :] < params["counts"][:, None]) \
                & params["active"][:, None]
        return None, bands(s, w, on, batch.features.shape[-1]), None


class CutOut(MaskOp):
    """Rectangular cut-outs: ``count`` rectangles up to ``max_freq`` bins x ``max_time``
    frames (or ``max_time_fraction`` of the sample's length), inside the sample."""

    name = "cutout"

    def __init__(self, count: int = 1, max_freq: int = 20, max_time: int = 40,
                 max_time_fraction: Optional[float] = None, fill: Fill = "mean", p: float = 1.0):
        super().__init__(p)
        self.count = check_number(self.name, "count", count, 0, 64, integer=True)
        self.max_freq = check_number(self.name, "max_freq", max_freq, 0, integer=True)
        self.max_time = check_number(self.name, "max_time", max_time, 0, integer=True)
        self.max_time_fraction = None if max_time_fraction is None else \
            check_number(self.name, "max_time_fraction", max_time_fraction, 0.0, 1.0)
        self.fill = check_fill(self.name, fill)

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
