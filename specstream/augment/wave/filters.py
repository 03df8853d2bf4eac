"""Band-limiting filters (codecs, microphones, telephone bands)."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from ...functional.dsp import biquad, filter_rows_
from ..core import Context, Params, WaveBatch, check, check_choice, check_number, check_range, lerp, randint
from .base import WaveOp

Range = Tuple[float, float]


class Filter(WaveOp):
    """Random band-limiting filters: zero-phase Butterworth-response biquads (RBJ cookbook,
    applied forward and backward from each sample's own end: 24 dB/octave, no delay) with
    per-sample cutoffs. ``kind``: lowpass (cutoff U[lowpass_hz]), highpass (U[highpass_hz]),
    bandpass (high-pass at U[bandpass_hz[0]], then low-pass at U[bandpass_hz[1]]), or random
    (one of the three per sample)."""
    draw_reads_batch = False  # draw() uses the keyed uniforms and settings alone

    name = "filter"
    keeps_zero_padding = True  # 0 past each length when the input is
    in_place = True  # transform_rows: the active rows of an owned batch, where they are
    KINDS = ("lowpass", "highpass", "bandpass")

    def __init__(self, kind: str = "random", lowpass_hz: Range = (2000.0, 7000.0),
                 highpass_hz: Range = (50.0, 500.0), bandpass_hz: Tuple[Range, Range] = ((200.0, 500.0),
                                                                                      (3000.0, 4000.0)),
                 q: float = 0.7071, p: float = 1.0):
        super().__init__(p)
        self.kind = check_choice(self.name, "kind", kind, self.KINDS + ("random",))
        self.lowpass_hz = check_range(self.name, "lowpass_hz", lowpass_hz, 1.0, 96000.0)
        self.highpass_hz = check_range(self.name, "highpass_hz", highpass_hz, 1.0, 96000.0)
        pair = isinstance(bandpass_hz, (list, tuple)) and len(bandpass_hz) == 2
        check(self.name, "bandpass_hz", list(bandpass_hz) if isinstance(bandpass_hz, tuple) else bandpass_hz, pair,
              "two ranges [[min, max] of the high-pass edge, [min, max] of the low-pass edge] in Hz")
        self.bandpass_hz = (check_range(self.name, "bandpass_hz[0]", bandpass_hz[0], 1.0, 96000.0),
                            check_range(self.name, "bandpass_hz[1]", bandpass_hz[1], 1.0, 96000.0))
        lo_band, hi_band = self.bandpass_hz
        check(self.name, "bandpass_hz", [list(lo_band), list(hi_band)], lo_band[1] < hi_band[0],
              "[[low edge range], [high edge range]] with every low edge below every high edge")
        self.q = check_number(self.name, "q", q, 0.1, 10.0)

    def check_rate(self, sample_rate: int) -> None:
        """Cutoffs must lie below Nyquist at the pipeline's rate (checked when the config loads)."""
        nyq = sample_rate / 2
        for key, (lo, hi) in (("lowpass_hz", self.lowpass_hz), ("highpass_hz", self.highpass_hz),
                              ("bandpass_hz[0]", self.bandpass_hz[0]), ("bandpass_hz[1]", self.bandpass_hz[1])):
            check(self.name, key, [lo, hi], hi < nyq, f"cutoffs below Nyquist ({nyq:g} Hz at {sample_rate} Hz)")

    def draw(self, ctx: Context, batch: WaveBatch) -> Params:
        u = ctx.uniform(3)
        kind = (randint(u[:, 0], 0, 2) if self.kind == "random"
                else torch.full_like(u[:, 0], self.KINDS.index(self.kind), dtype=torch.int64))
        lo_hp, lo_bp = lerp(self.highpass_hz, u[:, 1]), lerp(self.bandpass_hz[0], u[:, 1])
        hi_lp, hi_bp = lerp(self.lowpass_hz, u[:, 2]), lerp(self.bandpass_hz[1], u[:, 2])
        if kind.is_cpu:  # a host draw: numpy's where, the same values
            k = kind.numpy()
            return {"kind": kind, "low_hz": torch.from_numpy(np.where(k == 1, lo_hp.numpy(), lo_bp.numpy())),
                    "high_hz": torch.from_numpy(np.where(k == 0, hi_lp.numpy(), hi_bp.numpy()))}
        return {"kind": kind, "low_hz": torch.where(kind == 1, lo_hp, lo_bp),
                "high_hz": torch.where(kind == 0, hi_lp, hi_bp)}

    def transform(self, batch: WaveBatch, params: Params) -> WaveBatch:
        out = batch.replace(audio=batch.audio.clone(memory_format=torch.contiguous_format))  # ours: filtered in place
        return self.transform_rows(out, params, torch.arange(out.audio.shape[0], device=out.audio.device))

    def transform_rows(self, batch: WaveBatch, params: Params, rows: torch.Tensor) -> WaveBatch:
        sr = batch.sample_rate
        nyq = sr / 2 * 0.999
        kind = params["kind"]
        host = kind.is_cpu and rows.is_cpu  # the rows and cutoffs of each edge picked in numpy (the same values)
        k = kind.numpy() if host else kind
        # high-pass edge (kinds highpass and bandpass), then low-pass edge (lowpass, bandpass)
        for edge, use, f in (("highpass", k >= 1, params["low_hz"]), ("lowpass", (k == 0) | (k == 2),
                                                                      params["high_hz"])):
            if host:
                w = np.flatnonzero(use)
                f0 = torch.from_numpy(np.clip(f.numpy()[w], np.float32(1.0), np.float32(nyq)).astype(np.float64))
                which = torch.from_numpy(rows.numpy()[w])
            else:
                w = use.nonzero()[:, 0]
                f0, which = f[w].clamp(1.0, nyq).to(torch.float64), rows[w]
            if len(w):
                filter_rows_(batch.audio, *biquad(edge, f0, sr, self.q), which, batch.lengths)
        return batch
