"""Level and spectral shape in the feature domain: gain, random EQ, band-limiting.

Their amounts are in dB of the signal, applied in the power domain through the batch's
:class:`~..core.FeatureDomain` (power, natural log or dB, offset, floor): a cell's mel power
is scaled and the log floor is kept, so the result is what the featurizer would give for
the scaled signal, whatever its settings."""
from __future__ import annotations

import math
from typing import Tuple

import torch

from ..core import Batch, Context, Op, Params, check_choice, check_number, check_range


class Gain(Op):
    """Gain in dB, U[min_db, max_db] (as a waveform gain would change the features)."""

    name = "gain"

    def __init__(self, min_db: float = -6.0, max_db: float = 6.0, p: float = 1.0):
        super().__init__(p)
        self.min_db, self.max_db = check_range(self.name, "min_db, max_db", (min_db, max_db), -120.0, 120.0)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        return {"db": self.min_db + (self.max_db - self.min_db) * ctx.uniform(1)[:, 0]}

    def transform(self, batch: Batch, params: Params) -> Batch:
        return batch.replace(features=batch.domain.scale(batch.features, params["db"][:, None, None]))


class RandomEQ(Op):
    """A smooth random frequency response: a sum of ``bands`` cosines over the frequency
    axis with peak excursion up to ``max_db`` (dB of the signal)."""

    name = "random_eq"

    def __init__(self, max_db: float = 6.0, bands: int = 4, p: float = 1.0):
        super().__init__(p)
        self.max_db = check_number(self.name, "max_db", max_db, 0.0, 60.0)
        self.bands = check_number(self.name, "bands", bands, 1, 64, integer=True)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        amp = (2 * ctx.uniform(self.bands) - 1) * (self.max_db / self.bands)
        phase = 2 * math.pi * ctx.uniform(self.bands)
        return {"amp_db": amp, "phase": phase}

    def curve_db(self, params: Params, Fn: int, device) -> torch.Tensor:
        """[B, F]: the response in dB at each bin (bin 0 .. F - 1 spread over [0, 1])."""
        nu = torch.linspace(0, 1, Fn, device=device)[None, None, :]
        k = torch.arange(1, self.bands + 1, device=device, dtype=torch.float32)[None, :, None]
        return (params["amp_db"][..., None] * torch.cos(math.pi * k * nu + params["phase"][..., None])).sum(1)

    def transform(self, batch: Batch, params: Params) -> Batch:
        x = batch.features
        return batch.replace(features=batch.domain.scale(x, self.curve_db(params, x.shape[1], x.device)[:, :, None]))


class BandLimit(Op):
    """Band-limiting (codecs, microphones): a low- or high-pass edge at a per-sample cutoff
    (fraction of the frequency axis) with a logistic ``width``-bin transition and
    ``attenuation_db`` in the stop band."""

    name = "band_limit"

    def __init__(self, kind: str = "lowpass", cutoff: Tuple[float, float] = (0.5, 0.9),
                 width: float = 2.0, attenuation_db: float = 60.0, p: float = 1.0):
        super().__init__(p)
        self.kind = check_choice(self.name, "kind", kind, ("lowpass", "highpass", "random"))
        self.cutoff = check_range(self.name, "cutoff", cutoff, 0.0, 1.0)
        self.width = check_number(self.name, "width", width, 0.0, lo_open=True)
        self.attenuation_db = check_number(self.name, "attenuation_db", attenuation_db, 0.0, 200.0)

    def draw(self, ctx: Context, batch: Batch) -> Params:
        lo, hi = self.cutoff
        u = ctx.uniform(2)
        high = u[:, 1] < 0.5 if self.kind == "random" else torch.full_like(u[:, 1], self.kind == "highpass",
                                                                              dtype=torch.bool)
        return {"cutoff": lo + (hi - lo) * u[:, 0], "highpass": high}

    def attenuation_db_at(self, params: Params, Fn: int, device) -> torch.Tensor:
        """[B, F]: attenuation in dB at each bin."""
        f = torch.arange(Fn, device=device, dtype=torch.float32)[None, :]
        z = (f - params["cutoff"][:, None] * (Fn - 1)) / self.width
        z = torch.where(params["highpass"][:, None], -z, z)
        return torch.sigmoid(z) * self.attenuation_db

    def transform(self, batch: Batch, params: Params) -> Batch:
        x = batch.features
        return batch.replace(features=batch.domain.scale(x, -self.attenuation_db_at(params, x.shape[1], x.device)[:, :, None]))
