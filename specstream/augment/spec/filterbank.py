"""Vocal tract length perturbation in the mel filterbank."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ...errors import ConfigError
from ..core import Context, Op, Params, check_number, check_range


class Vtlp(Op):
    """Vocal tract length perturbation (Jaitly & Hinton 2013): each sample's mel filterbank
    is built on a frequency axis warped by alpha ~ U[alpha] (piecewise linear, bend at
    ``boundary_hz``, which must be below Nyquist; default 0.6 x Nyquist, 4,800 Hz at 16 kHz),
    so formants move by alpha. Runs inside the featurizer (``Policy.featurize``);
    ``freq_warp`` is the spectrogram-only variant."""
    draw_reads_batch = False  # draw() uses the keyed uniforms and settings alone

    name = "vtlp"
    domain = "filterbank"

    def __init__(self, alpha: Tuple[float, float] = (0.9, 1.1), boundary_hz: Optional[float] = None,
                 p: float = 1.0):
        super().__init__(p)
        self.alpha = check_range(self.name, "alpha", alpha, 0.5, 2.0)
        self.boundary_hz = None if boundary_hz is None else \
            check_number(self.name, "boundary_hz", boundary_hz, 0.0, lo_open=True)

    def boundary(self, sample_rate: int) -> float:
        """The bend frequency at ``sample_rate``; a ConfigError when it is not below Nyquist."""
        nyq = sample_rate / 2
        if self.boundary_hz is None:
            return 0.6 * nyq
        if self.boundary_hz >= nyq:
            raise ConfigError(f"vtlp.boundary_hz: {self.boundary_hz:g} Hz is not below Nyquist ({nyq:g} Hz at "
                              f"{sample_rate} Hz): filters above it would be fed by nothing; use e.g. "
                              f"{0.6 * nyq:g} (0.6 x Nyquist, the default when left out)")
        return self.boundary_hz

    def draw(self, ctx: Context, batch) -> Params:
        return {"alpha": self.alpha[0] + (self.alpha[1] - self.alpha[0]) * ctx.uniform(1)[:, 0]}

    def filterbanks(self, cfg, params: Params, pairs: bool = False):
        """[B, n_mels, n_freqs] (as :class:`~specstream.functional.mel.FilterPairs` with
        ``pairs``: what the featurizer hands the log-mel); inactive samples get the plain
        filterbank (alpha = 1)."""
        from ...features import warped_fbanks

        alpha = torch.where(params["active"], params["alpha"], torch.ones_like(params["alpha"]))
        return warped_fbanks(cfg, alpha, self.boundary(cfg.sample_rate), pairs=pairs)

    def transform(self, batch, params):
        raise TypeError("vtlp acts in the filterbank: run it through Policy.featurize")
