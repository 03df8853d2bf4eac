"""Additive noise on the features."""
from __future__ import annotations

import dataclasses

import math
from typing import Optional, Tuple, Union

import torch

from ...functional.frames import masked_mean
from ...functional.mel import COLOURS, noise_mel_shape
from ...functional.random import stream_field
from ..core import Batch, Context, Op, Params, check, check_number, check_range


class FeatureNoise(Op):
    """Additive noise on the features.

    ``colour`` None: gaussian noise in the feature (log) domain with std U[std].
    ``colour`` white / pink / brown (or a number beta): a noise floor in the power domain at
    U[snr_db] below the sample's mean mel power, whose PSD goes as f ** -beta (0, 1, 2), as
    it shows through the mel filterbank in use (the batch's ``domain.mel``), with
    exponentially distributed power per cell (a noise STFT's power distribution). The SNR
    is of the signals: for features of |STFT| ** power (``domain.power``) the level, the
    shape and the per-cell distribution are those of |X| ** power (the domain ratio is
    10 ** (SNR * power / 20)). The field comes from a recorded stream key (small
    parameters, exact replay)."""

    name = "feature_noise"

    def __init__(self, std: Tuple[float, float] = (0.0, 0.3), colour: Optional[Union[str, float]] = None,
                 snr_db: Tuple[float, float] = (10.0, 30.0), p: float = 1.0, log_offset: Optional[float] = None):
        super().__init__(p)
        self.std = check_range(self.name, "std", std, 0.0, 100.0)
        ok = colour is None or colour in COLOURS or (isinstance(colour, (int, float)) and not isinstance(colour, bool)
                                                     and 0 <= float(colour) <= 4)
        self.colour = check(self.name, "colour", colour, ok, "null, white, pink, brown or a number in [0, 4]")
        self.snr_db = check_range(self.name, "snr_db", snr_db, -60.0, 120.0)
        # the batch's feature domain says how the features were made; an explicit log_offset overrides its offset
        self.log_offset = None if log_offset is None else \
            check_number(self.name, "log_offset", log_offset, 0.0, lo_open=True)
        self._shapes = {}

    def beta(self) -> float:
        return COLOURS[self.colour] if isinstance(self.colour, str) else float(self.colour)

    def mel_shape(self, domain, n_bins: int, device) -> torch.Tensor:
        """[F] relative power per mel bin of this colour on the domain's mel scale."""
        from ...features import MelConfig, warped_fbanks

        cfg = domain.mel if domain.mel is not None else MelConfig(n_mels=n_bins)
        if cfg.n_mels != n_bins:
            raise ValueError(f"{self.name}: features have {n_bins} bins but the feature domain's mel config has "
                             f"{cfg.n_mels}: pass domain=FeatureDomain.from_mel(your MelConfig)")
        power = float(domain.power)
        key = (cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.mel_scale, cfg.norm, power,
               str(device))
        shape = self._shapes.get(key)
        if shape is None:
            fb = warped_fbanks(cfg, torch.ones(1), 0.6 * cfg.sample_rate / 2)[0]
            # |X| ** power of noise with PSD f ** -beta has mean ~ f ** (-beta * power / 2)
            shape = self._shapes[key] = noise_mel_shape(fb, cfg.sample_rate, self.beta() * power / 2).to(device)
        return shape

    def draw(self, ctx: Context, batch: Batch) -> Params:
        return {"level": ctx.uniform(1)[:, 0], "stream": ctx.stream_keys()}

    def transform(self, batch: Batch, params: Params) -> Batch:
        x, L, dom = batch.features, batch.lengths, batch.domain
        if self.log_offset is not None:
            dom = dataclasses.replace(dom, offset=self.log_offset)
        u = stream_field(params["stream"], x.shape[1:]).to(x.dtype)
        if self.colour is None:
            std = self.std[0] + (self.std[1] - self.std[0]) * params["level"]
            z = math.sqrt(2.0) * torch.erfinv((2 * u - 1).clamp(-1 + 1e-6, 1 - 1e-6))
            return batch.replace(features=x + std[:, None, None].to(x.dtype) * z)
        snr = self.snr_db[0] + (self.snr_db[1] - self.snr_db[0]) * params["level"]
        power = dom.to_power(x)
        mean_p = masked_mean(power, L)
        shape = self.mel_shape(dom, x.shape[1], x.device).to(x.dtype)
        e = -torch.log1p(-u.clamp(max=1 - 1e-7))  # Exp(1): a noise STFT cell's |X| ** 2 (mean 1)
        if dom.power != 2.0:  # |X| ** power = (|X| ** 2) ** (power / 2), scaled back to mean 1
            e = e.pow(dom.power / 2) / math.gamma(1 + dom.power / 2)
        noise = e * shape[None, :, None]
        # SNR of the signals: features of |STFT| ** power scale as amplitude ** power
        level = (mean_p * 10 ** (-snr * dom.power / 20))[:, None, None]
        return batch.replace(features=dom.from_power(power + level * noise))
