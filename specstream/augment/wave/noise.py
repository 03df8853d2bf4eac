"""Additive noise on the waveform: generated (white, pink, brown) and recorded (noise banks,
babble), each at a per-sample SNR measured over the sample's own length."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch

from ...functional.dsp import (NOISE_COLOURS, coloured_noise, mix_at_snr, mix_at_snr_, mix_segments_at_snr,
                              mix_segments_at_snr_, unit_power_sum)
from ..core import Context, Params, WaveBatch, check, check_range, lerp, randint
from .base import BankOp, WaveOp, bank_segments, looped_bank

COLOURS = NOISE_COLOURS


class Noise(WaveOp):
    """Additive noise generated on the device at a per-sample SNR (dB, U[snr_db]) measured
    over the sample's own length. ``colour``: white, pink, brown, or a list to draw from."""
    draw_reads_batch = False  # draw() uses the keyed uniforms and settings alone

    name = "noise"
    keeps_zero_padding = True  # 0 past each length when the input is
    in_place = True  # transform_rows: the active rows of an owned batch, where they are

    def __init__(self, snr_db: Tuple[float, float] = (5.0, 30.0), colour: Union[str, Sequence[str]] = "white",
                 p: float = 1.0):
        super().__init__(p)
        self.snr_db = check_range(self.name, "snr_db", snr_db, -60.0, 120.0)
        colours = [colour] if isinstance(colour, str) else list(colour)
        check(self.name, "colour", colour, bool(colours) and all(c in COLOURS for c in colours),
              "white, pink, brown or a list of them")
        self.colour = colour if isinstance(colour, str) else tuple(colours)
        self._codes = torch.tensor([COLOURS.index(c) for c in colours])

    def draw(self, ctx: Context, batch: WaveBatch) -> Params:
        u = ctx.uniform(2)
        codes = self._codes.to(ctx.device)
        return {"snr_db": lerp(self.snr_db, u[:, 0]), "colour": codes[randint(u[:, 1], 0, len(codes) - 1)],
                "stream": ctx.stream_keys()}

    def transform(self, batch: WaveBatch, params: Params) -> WaveBatch:
        x = batch.audio
        noise = coloured_noise(params["stream"], x.shape[-1], params["colour"]).to(x.dtype)
        return batch.replace(audio=mix_at_snr(x, noise, batch.lengths, params["snr_db"]))

    def transform_rows(self, batch: WaveBatch, params: Params, rows: torch.Tensor) -> WaveBatch:
        x = batch.audio
        noise = coloured_noise(params["stream"], x.shape[-1], params["colour"]).to(x.dtype)
        mix_at_snr_(x, rows, noise, batch.lengths[rows], params["snr_db"])
        return batch


class BackgroundNoise(BankOp):
    """Recorded noise from a bank at a per-sample SNR. Each sample mixes ``count``
    (U{min..max}) clips, each from a random offset (looping when shorter than the sample)
    and brought to the same power before summing; the sum is scaled to the SNR over the
    sample's own length. ``count`` > 1 on a bank of speech is babble."""
    draw_reads_batch = False  # draw() uses the keyed uniforms and settings alone

    name = "background_noise"
    keeps_zero_padding = True  # 0 past each length when the input is
    in_place = True  # transform_rows: the active rows of an owned batch, where they are

    def __init__(self, bank, snr_db: Tuple[float, float] = (0.0, 20.0), count: Tuple[int, int] = (1, 1),
                 p: float = 1.0):
        super().__init__(bank, p)
        self.snr_db = check_range(self.name, "snr_db", snr_db, -60.0, 120.0)
        lo, hi = check_range(self.name, "count", count, 1, 64)
        check(self.name, "count", list(count) if isinstance(count, tuple) else count,
              lo == int(lo) and hi == int(hi), "whole numbers [min, max] within [1, 64]")
        self.count = (int(lo), int(hi))
        self._looped = None  # (bank, looped_bank(bank, span)) for contiguous segment reads

    def draw(self, ctx: Context, batch: WaveBatch) -> Params:
        bank = self.loaded(ctx.device)
        K = self.count[1]
        u = ctx.uniform(2)
        clip = randint(ctx.uniform(K), 0, len(bank) - 1)
        u_off = ctx.uniform(K)
        if u_off.is_cpu and bank.lengths.is_cpu:  # numpy: the same float32 products
            lengths = bank.lengths.numpy()[clip.numpy()].astype(np.float32)
            offset = torch.from_numpy(np.floor(u_off.numpy() * lengths).astype(np.int64))
        else:
            offset = torch.floor(u_off * bank.lengths[clip].to(torch.float32)).to(torch.int64)
        return {"snr_db": lerp(self.snr_db, u[:, 0]), "count": randint(u[:, 1], self.count[0], self.count[1]),
                "clip": clip, "offset": offset}

    def _segments(self, bank, N: int):
        """The bank laid out so that every segment of N samples is a contiguous slice
        (:func:`looped_bank`, kept; exact copies), or None when that copy would be large."""
        looped = self._looped
        if looped is None or looped[0] is not bank or looped[1] is None or looped[1][0] < N:
            self._looped = looped = (bank, looped_bank(bank, N))
        return looped[1]

    def transform(self, batch: WaveBatch, params: Params) -> WaveBatch:
        return batch.replace(audio=self._mix(batch, params, None))

    def transform_rows(self, batch: WaveBatch, params: Params, rows: torch.Tensor) -> WaveBatch:
        self._mix(batch, params, rows)
        return batch

    def _mix(self, batch: WaveBatch, params: Params, rows) -> torch.Tensor:
        """The mixed audio (rows None: every row, into a new tensor; else rows ``rows`` of the
        batch's own audio, in place, ``params`` holding theirs)."""
        x = batch.audio
        L = batch.lengths if rows is None else batch.lengths[rows]
        bank = self.loaded(x.device)
        N = x.shape[-1]
        count, clip, offset, snr = params["count"], params["clip"], params["offset"], params["snr_db"]
        looped = self._segments(bank, N)
        if looped is not None:  # segments are slices of the looped copy: mixed without gathering them
            _, data, begin = looped
            starts = begin[clip] + offset
            if rows is None:
                return mix_segments_at_snr(x, L, data, starts, count, snr)
            return mix_segments_at_snr_(x, rows, L, data, starts, count, snr)
        noise = unit_power_sum(lambda k: bank_segments(bank, clip[:, k], offset[:, k], N), L, count, x)
        return mix_at_snr(x, noise, L, snr) if rows is None else mix_at_snr_(x, rows, noise, L, snr)


class Babble(BackgroundNoise):
    """Babble: 3 to 7 clips from a bank of speech, summed, at U[snr_db]."""

    name = "babble"

    def __init__(self, bank, snr_db: Tuple[float, float] = (0.0, 20.0), count: Tuple[int, int] = (3, 7),
                 p: float = 1.0):
        super().__init__(bank, snr_db, count, p)
