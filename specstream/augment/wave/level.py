"""Waveform level and non-linearity: gain, harmonic distortion."""
from __future__ import annotations

from typing import Tuple

import torch

from ...functional.frames import lengths_mask
from ..core import Context, Params, WaveBatch, check_choice, check_number, check_range, lerp
from .base import WaveOp


class WaveGain(WaveOp):
    """Gain in dB, U[min_db, max_db], on the waveform."""
    draw_reads_batch = False  # draw() uses the keyed uniforms and settings alone

    name = "wave_gain"
    keeps_zero_padding = True  # 0 past each length when the input is

    def __init__(self, min_db: float = -6.0, max_db: float = 6.0, p: float = 1.0):
        super().__init__(p)
        self.min_db, self.max_db = check_range(self.name, "min_db, max_db", (min_db, max_db), -120.0, 120.0)

    def draw(self, ctx: Context, batch: WaveBatch) -> Params:
        return {"db": lerp((self.min_db, self.max_db), ctx.uniform(1)[:, 0])}

    def transform(self, batch: WaveBatch, params: Params) -> WaveBatch:
        return batch.replace(audio=batch.audio * (10.0 ** (params["db"] / 20.0))[:, None].to(batch.audio.dtype))


class Distortion(WaveOp):
    """Harmonic distortion with the peak kept: the sample is scaled to peak 1, driven by
    U[drive_db] and shaped by ``tanh`` (soft clipping: odd harmonics), ``clip`` (hard
    clipping at 1 / drive) or ``asymmetric`` (tanh of a biased signal: even and odd
    harmonics; the DC offset the bias creates is removed over the sample's own length),
    then scaled back to the sample's own peak."""
    draw_reads_batch = False  # draw() uses the keyed uniforms and settings alone

    name = "distortion"
    keeps_zero_padding = True  # 0 past each length when the input is

    def __init__(self, drive_db: Tuple[float, float] = (0.0, 20.0), kind: str = "tanh", bias: float = 0.2,
                 p: float = 1.0):
        super().__init__(p)
        self.drive_db = check_range(self.name, "drive_db", drive_db, 0.0, 60.0)
        self.kind = check_choice(self.name, "kind", kind, ("tanh", "clip", "asymmetric"))
        self.bias = check_number(self.name, "bias", bias, -1.0, 1.0)

    def draw(self, ctx: Context, batch: WaveBatch) -> Params:
        return {"drive_db": lerp(self.drive_db, ctx.uniform(1)[:, 0])}

    def transform(self, batch: WaveBatch, params: Params) -> WaveBatch:
        x, L = batch.audio, batch.lengths
        peak = x.abs().amax(-1, keepdim=True).clamp(min=1e-12)
        g = (10.0 ** (params["drive_db"] / 20.0))[:, None].to(x.dtype)
        if self.kind != "asymmetric":
            # tanh(0) = clamp(0) = 0: a sample's padding stays 0 (the contract zeroes it if it
            # came dirty); the output's peak is set to the input's by one rescale
            y = x * (g / peak)
            y = y.tanh_() if self.kind == "tanh" else y.clamp_(-1.0, 1.0)
            return batch.replace(audio=y.mul_(peak / y.abs().amax(-1, keepdim=True).clamp(min=1e-12)))
        y = torch.tanh(g * (x / peak + self.bias))
        valid = lengths_mask(L, x.shape[-1]).to(x.dtype)
        y = y * valid
        # remove the DC the bias added: the output keeps the input's own mean m, and its
        # deviations d from m are scaled so that the peak |m + c d| is the input's peak
        n = L.clamp(min=1).to(x.dtype)[:, None]
        m = x.sum(-1, keepdim=True) / n
        d = (y - y.sum(-1, keepdim=True) / n) * valid
        up = d.amax(-1, keepdim=True).clamp(min=1e-12)
        down = (-d).amax(-1, keepdim=True).clamp(min=1e-12)
        c = torch.minimum((peak - m) / up, (peak + m) / down).clamp(min=0)
        return batch.replace(audio=(m + c * d) * valid)
