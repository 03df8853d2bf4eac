"""Log-mel features, batched, lengths-aware. Pure torch (no Ray, no I/O)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torchaudio


@dataclass
class MelConfig:
    sample_rate: int = 16000
    n_fft: int = 400
    win_length: Optional[int] = None  # defaults to n_fft
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 0.0
    f_max: Optional[float] = None
    power: float = 2.0
    mel_scale: str = "htk"  # or "slaney"
    norm: Optional[str] = None  # None or "slaney"
    center: bool = True
    log_offset: float = 1e-6

    def validate(self) -> None:
        if self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError("features: n_fft, hop_length and n_mels must be positive")
        if (self.win_length or self.n_fft) > self.n_fft:
            raise ValueError("features: win_length must not exceed n_fft")
        nyquist = self.sample_rate / 2
        f_max = self.f_max if self.f_max is not None else nyquist
        if not 0 <= self.f_min < f_max <= nyquist:
            raise ValueError(f"features: need 0 <= f_min < f_max <= {nyquist} (sample_rate / 2)")
        if self.mel_scale not in ("htk", "slaney"):
            raise ValueError("features: mel_scale must be 'htk' or 'slaney'")
        if self.norm not in (None, "slaney"):
            raise ValueError("features: norm must be null or 'slaney'")
        if self.log_offset <= 0:
            raise ValueError("features: log_offset must be positive")

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """Frames that hold signal for per-sample lengths in samples (same rule as torch.stft)."""
        if self.center:
            return num_samples // self.hop_length + 1
        return torch.clamp((num_samples - self.n_fft) // self.hop_length + 1, min=0)


class LogMel(torch.nn.Module):
    """Waveforms [B, N] + lengths [B] -> (log-mel [B, n_mels, T], frame lengths [B]).

    Frames past a sample's own length are set to 0 so padding is deterministic, whatever
    else shares the batch.
    """

    def __init__(self, cfg: MelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length,
            hop_length=cfg.hop_length, f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels,
            power=cfg.power, center=False, norm=cfg.norm, mel_scale=cfg.mel_scale,
        )

    def _center_pad(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Reflect-pad each sample at its *own* end, as torch.stft(center=True) would pad it
        alone, so a sample's features do not depend on what else is in the batch."""
        pad = self.cfg.n_fft // 2
        B, N = wave.shape
        j = torch.arange(N + 2 * pad, device=wave.device)[None, :] - pad  # [1, N + 2 pad]
        L = lengths.to(wave.device)[:, None].clamp(min=1)
        idx = torch.where(j < 0, -j, j)
        idx = torch.where(idx >= L, 2 * (L - 1) - idx, idx)
        idx = idx.clamp(0, N - 1)
        out = torch.gather(wave, 1, idx.expand(B, -1))
        return out * (j < L + pad)  # nothing past a sample's own right padding

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor):
        if self.cfg.center:
            wave = self._center_pad(wave, lengths)
        spec = self.mel(wave)
        feats = torch.log(spec + self.cfg.log_offset)
        frames = torch.clamp(self.cfg.num_frames(lengths), max=feats.shape[-1])
        valid = torch.arange(feats.shape[-1], device=feats.device)[None, :] < frames[:, None]
        return feats * valid[:, None, :], frames
