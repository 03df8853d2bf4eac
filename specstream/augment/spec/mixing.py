"""Mixing a sample with a partner from the batch: mixup (features and labels) and overlay
at an SNR. The partner is the only thing that depends on the batch; lambda and the SNR are
functions of the sample's key. Rows without a label (class index -1) are neither mixed nor
chosen as partners."""
from __future__ import annotations

import dataclasses

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ...functional.frames import lengths_mask
from ..core import Batch, Context, Op, Params, check, check_number, check_range


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


def labelled(targets: Optional[torch.Tensor], B: int, device) -> torch.Tensor:
    """[B] bool: the row has a label (class index >= 0; soft / multi-hot rows without a
    negative entry). No targets: every row."""
    if targets is None:
        return torch.ones(B, dtype=torch.bool, device=device)
    if targets.dim() == 1:
        return targets >= 0
    return ~(targets < 0).any(-1)


def labelled_rows(batch: Batch) -> torch.Tensor:
    """[B] bool: the batch's rows with a label, as fixed when the targets entered the chain
    (``batch.labelled``), else read from the targets (:func:`labelled`)."""
    if batch.labelled is not None:
        return batch.labelled
    return labelled(batch.targets, batch.features.shape[0], batch.features.device)


def partners(ctx: Context, eligible: torch.Tensor) -> torch.Tensor:
    """A partner index per sample among the ``eligible`` rows, never itself (an eligible row
    alone, or an ineligible row, gets itself: nothing to mix with)."""
    B = eligible.shape[0]
    u = ctx.uniform(1)[:, 0]
    idx = eligible.nonzero()[:, 0]
    n = idx.numel()
    out = torch.arange(B, device=eligible.device)
    if n < 2:
        return out
    rank = torch.cumsum(eligible.to(torch.int64), 0) - 1  # position of each eligible row in idx
    off = 1 + torch.floor(u * (n - 1)).to(torch.int64).clamp(max=n - 2)
    return torch.where(eligible, idx[(rank.clamp(min=0) + off) % n], out)


def soft_targets(targets: torch.Tensor, num_classes: Optional[int]) -> torch.Tensor:
    """[B, C] float targets: class indices become one-hot (no label, -1: an all-zero row);
    integer or bool multi-hot [B, C] becomes float."""
    if targets.dim() == 2:
        return targets.to(torch.float32) if not targets.dtype.is_floating_point else targets
    if targets.dtype.is_floating_point:
        raise ValueError("mixing: 1-D float targets are ambiguous; give class indices or [B, C] targets")
    if num_classes is None:
        raise ValueError("mixing class-index targets needs num_classes")
    t = targets.long()
    return F.one_hot(t.clamp(min=0), num_classes).float() * (t >= 0)[:, None].float()


class Mixup(Op):
    """Mixup of features and targets (Zhang et al. 2018). lambda ~ Beta(alpha, alpha) per
    sample (a function of the sample's key); the partner j is drawn from the batch's
    labelled rows. Features mix where both samples hold signal: x_i' = lam x_i + (1 - lam)
    x_j on frames t < min(L_i, L_j); frames past the partner's length keep the sample's own.

    Targets describe what is in the features: the partner's weight is (1 - lam) times the
    fraction of the sample's frames that actually hold it, w = (1 - lam) * min(L_i, L_j) / L_i
    (frames, not energy: a frame-level statement that does not depend on loudness), so
    y_i' = (1 - w) y_i + w y_j (one-hot for class indices, multi-hot as given, optional label
    smoothing). Rows without a label are left alone and are never partners: a class index
    of -1 becomes an all-zero soft row (contributes nothing to a soft cross-entropy); a
    multi-hot or soft row with a negative entry ("no label", what ``labels.required: false``
    gives a multi-label sample without one) comes out as it went in. A multi-hot row of
    zeros is a label ("no class present"). ``params`` hold
    (partner, lam) per sample for mixing sequence losses (CTC, seq2seq), the partner's key
    id (``partner_id``) and the row's own (``key_id``): the partner index refers to the batch
    the op saw, so a logged row replays together with its partner's row, found by key id
    (:meth:`~specstream.augment.Policy.params_from_rows`). Soft or multi-hot frame targets [B, T, C] mix
    like the features; integer frame targets are left (mix their losses)."""

    name = "mixup"
    rows = "all"
    changes = frozenset({"features", "targets", "frames"})

    def __init__(self, alpha: float = 0.4, num_classes: Optional[int] = None, smoothing: float = 0.0,
                 p: float = 1.0):
        super().__init__(p)
        self.alpha = check_number(self.name, "alpha", alpha, 0.0, 100.0, lo_open=True)
        self.num_classes = None if num_classes is None else check_number(self.name, "num_classes", num_classes, 1,
                                                                           integer=True)
        self.smoothing = check_number(self.name, "smoothing", smoothing, 0.0, 1.0, hi_open=True)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        B = batch.features.shape[0]
        a = torch.full((B,), self.alpha, device=ctx.device)
        g1, g2 = _gamma(ctx, a), _gamma(ctx, a)
        lam = g1 / (g1 + g2).clamp(min=1e-12)
        j = partners(ctx, labelled_rows(batch).to(ctx.device))
        return {"lam": lam, "partner": j, "partner_id": ctx.ids[j], "key_id": ctx.ids}

    def _mixing(self, batch: Batch, params: Params) -> torch.Tensor:
        """[B] bool: rows that are mixed (active, labelled, with a partner other than itself)."""
        B = batch.features.shape[0]
        j = params["partner"]
        return params["active"] & labelled_rows(batch) & (j != torch.arange(B, device=j.device))

    def effective_lambda(self, params: Params, batch: Optional[Batch] = None) -> torch.Tensor:
        on = params["active"] if batch is None else self._mixing(batch, params)
        return torch.where(on, params["lam"], torch.ones_like(params["lam"]))

    def partner_weight(self, batch: Batch, params: Params) -> torch.Tensor:
        """[B]: the partner's share of the sample's label, (1 - lam) * min(L_i, L_j) / L_i."""
        L, j = batch.lengths, params["partner"]
        frac = torch.minimum(L, L[j]).float() / L.clamp(min=1).float()
        return (1 - self.effective_lambda(params, batch)) * frac

    def transform(self, batch: Batch, params: Params) -> Batch:
        x, L = batch.features, batch.lengths
        j = params["partner"]
        lam = self.effective_lambda(params, batch)
        both = lengths_mask(torch.minimum(L, L[j]), x.shape[-1])[:, None, :]
        mixed = lam[:, None, None] * x + (1 - lam[:, None, None]) * x[j]
        out = torch.where(both, mixed, x)
        y = batch.targets
        if y is not None:
            has = labelled_rows(batch)
            given = y
            y = soft_targets(y, self.num_classes)
            w = self.partner_weight(batch, params)[:, None]
            y = (1 - w) * y + w * y[j]
            if self.smoothing:
                y = y * (1 - self.smoothing) + self.smoothing / y.shape[-1]
            # no label stays no label: class indices' soft row of zeros, a multi-hot row as given
            y = torch.where(has[:, None], y, given.to(y.dtype) if given.dim() == 2 else torch.zeros_like(y))
        ft = batch.frame_targets
        if ft is not None and ft.dim() == 3 and ft.dtype.is_floating_point:
            both_t = lengths_mask(torch.minimum(L, L[j]), ft.shape[1])[:, :, None]
            lam3 = lam[:, None, None].to(ft.dtype)
            ft = torch.where(both_t, lam3 * ft + (1 - lam3) * ft[j], ft)
        return batch.replace(features=out, targets=y, frame_targets=ft)


class Overlay(Op):
    """Overlay a partner from the batch at a per-sample SNR (dB, U[snr_db]) in the power
    domain (the batch's feature domain), where both hold signal: the partner is scaled so
    that (own power) / (partner power) over the overlap equals the SNR (for features of
    |STFT| ** power, the domain ratio is 10 ** (SNR * power / 20): the SNR is of the signals,
    as a waveform mix at that SNR would give). Multi-label targets
    take the union, the partner's labels weighted by the fraction of the partner that is
    actually overlaid, min(L_i, L_j) / L_j; frame targets take the union where both hold
    signal. Class indices are kept (the partner is interference)."""

    name = "overlay"
    rows = "all"
    changes = frozenset({"features", "targets", "frames"})

    def __init__(self, snr_db: Tuple[float, float] = (0.0, 20.0), multi_label: bool = False,
                 p: float = 1.0, log_offset: Optional[float] = None):
        super().__init__(p)
        self.snr_db = check_range(self.name, "snr_db", snr_db, -60.0, 120.0)
        self.multi_label = check(self.name, "multi_label", multi_label, isinstance(multi_label, bool), "true or false")
        # the batch's feature domain says how the features were made; an explicit log_offset overrides its offset
        self.log_offset = None if log_offset is None else \
            check_number(self.name, "log_offset", log_offset, 0.0, lo_open=True)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        lo, hi = self.snr_db
        B = batch.features.shape[0]
        snr = lo + (hi - lo) * ctx.uniform(1)[:, 0]
        eligible = labelled_rows(batch).to(ctx.device) if self.multi_label else \
            torch.ones(B, dtype=torch.bool, device=ctx.device)
        j = partners(ctx, eligible)
        return {"snr_db": snr, "partner": j, "partner_id": ctx.ids[j], "key_id": ctx.ids}

    def transform(self, batch: Batch, params: Params) -> Batch:
        x, L, dom = batch.features, batch.lengths, batch.domain
        if self.log_offset is not None:
            dom = dataclasses.replace(dom, offset=self.log_offset)
        j = params["partner"]
        active = params["active"] & (j != torch.arange(x.shape[0], device=x.device))
        y = batch.targets
        if self.multi_label and y is not None:
            if y.dim() != 2:
                raise ValueError("overlay.multi_label: needs [B, C] multi-hot targets, got class indices")
            active = active & labelled_rows(batch)  # unlabelled rows are neither mixed nor partners
        both = lengths_mask(torch.minimum(L, L[j]), x.shape[-1])[:, None, :]
        p_own = dom.to_power(x)
        p_par = p_own[j]
        bf = both.to(x.dtype)
        e_own = (p_own * bf).sum((1, 2))
        e_par = (p_par * bf).sum((1, 2)).clamp(min=1e-20)
        # an SNR of s dB is a power ratio 10 ** (s / 10) of the signals; features of |STFT| ** power
        # scale as amplitude ** power, so in the domain the ratio is 10 ** (s * power / 20)
        gain = e_own / e_par * 10 ** (-params["snr_db"] * dom.power / 20)
        mixed = torch.where(both, dom.from_power(p_own + gain[:, None, None] * p_par), x)
        out = torch.where(active[:, None, None], mixed, x)
        if y is not None and self.multi_label:
            kept = (torch.minimum(L, L[j]).float() / L[j].clamp(min=1).float())[:, None]
            yf = y.float()
            y = torch.where(active[:, None], torch.maximum(yf, yf[j] * kept), yf)
        ft = batch.frame_targets
        if ft is not None and self.multi_label and ft.dim() == 3:
            on = (both[:, 0, :] & active[:, None])[:, :, None]
            ft = torch.where(on, torch.maximum(ft, ft[j]), ft)
        return batch.replace(features=out, targets=y, frame_targets=ft)
