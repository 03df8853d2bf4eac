"""Log-mel features, batched, lengths-aware. Pure torch (no Ray, no I/O)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch

from .functional import cpu_kernels, cpu_mixing
from .functional.frames import lengths_mask, zero_padding
from .functional.mel import FilterPairs, hz_to_mel, mel_fbanks, mel_to_hz, vtlp_warp  # noqa: F401 - public here too

WINDOWS = {
    "hann": torch.hann_window,
    "hamming": torch.hamming_window,
    "blackman": torch.blackman_window,
    "bartlett": torch.bartlett_window,
    "rectangular": lambda n, periodic=True: torch.ones(n),
}


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
    pad_mode: str = "reflect"  # reflect | constant (padding of center=True frames)
    window: str = "hann"  # hann | hamming | blackman | bartlett | rectangular (periodic, as librosa)
    # log: natural log of the mel power (what the spectrogram ops assume), and after
    # augmentation optionally turned into dB (10 log10, as librosa.power_to_db) with a
    # per-sample top_db floor. log_floor: add (ln(power + log_offset)) or clamp
    # (ln(max(power, log_offset)), librosa's amin).
    log: str = "natural"  # natural | db
    log_floor: str = "add"  # add | clamp
    log_offset: float = 1e-6
    top_db: Optional[float] = None
    # mean/variance normalisation, applied after augmentation (as ESPnet orders specaug
    # then normalize): none | utterance (per sample, per mel bin, over its own frames) |
    # global (given per-bin global_mean / global_std, e.g. from a statistics pass)
    normalize: str = "none"
    global_mean: Optional[List[float]] = None
    global_std: Optional[List[float]] = None

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
        if not self.log_offset >= 1.2e-38:
            raise ValueError("features: log_offset must be at least 1.2e-38 (float32's smallest normal number: "
                             "below it the floor is 0 in float32 and silence gives -inf)")
        if not self.power > 0:
            raise ValueError("features: power must be positive (2: power, 1: magnitude)")
        if self.pad_mode not in ("reflect", "constant"):
            raise ValueError("features: pad_mode must be 'reflect' or 'constant'")
        if self.window not in WINDOWS:
            raise ValueError(f"features: window must be one of {', '.join(WINDOWS)}")
        if self.log not in ("natural", "db"):
            raise ValueError("features: log must be 'natural' or 'db'")
        if self.log_floor not in ("add", "clamp"):
            raise ValueError("features: log_floor must be 'add' or 'clamp'")
        if self.top_db is not None and (self.top_db <= 0 or self.log != "db"):
            raise ValueError("features: top_db must be positive and needs log: db")
        if self.normalize not in ("none", "utterance", "global"):
            raise ValueError("features: normalize must be none, utterance or global")
        if self.normalize == "global":
            for name in ("global_mean", "global_std"):
                v = getattr(self, name)
                if v is None or len(v) != self.n_mels:
                    raise ValueError(f"features.{name}: normalize: global needs {self.n_mels} values (n_mels)")
            if min(self.global_std) <= 0:
                raise ValueError("features.global_std: values must be positive")

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
        win = cfg.win_length or cfg.n_fft
        self.register_buffer("window", WINDOWS[cfg.window](win, periodic=True).float(), persistent=False)
        # torchaudio's melscale_fbanks triangles, computed in float64 (warped_fbanks at alpha = 1)
        fb = mel_fbanks(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.mel_scale, cfg.norm)[0]
        self.register_buffer("fbanks", fb, persistent=False)  # [n_mels, n_freqs]

    def _center_pad(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Reflect-pad each sample at its *own* end, as torch.stft(center=True) would pad it
        alone, so a sample's features do not depend on what else is in the batch."""
        pad = self.cfg.n_fft // 2
        B, N = wave.shape
        if (wave.is_cpu and wave.dtype in (torch.float32, torch.float64) and wave.is_contiguous()
                and N > 0 and not wave.requires_grad and lengths.numel() in (1, B)
                and lengths.is_cpu and cpu_kernels.available()
                and bool(((lengths >= 0) & (lengths <= N)).all())):  # one pass, the same values
            return cpu_mixing.center_pad(wave, lengths, pad, self.cfg.pad_mode == "reflect")
        if self.cfg.pad_mode == "constant":  # zeros on both sides of each sample's own samples
            out = torch.nn.functional.pad(wave, (pad, pad))
            return zero_padding(out, lengths.to(wave.device) + pad, inplace=True)
        if N > pad and bool((lengths == N).all()):  # every sample fills the batch: plain reflect
            return torch.nn.functional.pad(wave[:, None], (pad, pad), mode="reflect")[:, 0]
        if N > pad and lengths.numel() and bool(((lengths > pad) & (lengths <= N)).all()):
            # every sample longer than the pad: one copy, then each row's reflected tail is
            # written at its own end (a [B, pad] gather) and what follows it is zeroed
            L = lengths.to(wave.device)[:, None]
            out = torch.nn.functional.pad(wave, (pad, pad))
            out[:, :pad] = wave[:, 1:pad + 1].flip(-1)
            k = torch.arange(pad, device=wave.device)[None, :]
            out.scatter_(1, pad + L + k, torch.gather(wave, 1, L - 2 - k))
            return zero_padding(out, L[:, 0] + 2 * pad, inplace=True)
        j = torch.arange(N + 2 * pad, device=wave.device)[None, :] - pad  # [1, N + 2 pad]
        L = lengths.to(wave.device)[:, None].clamp(min=1)
        idx = j.abs()
        idx = torch.where(idx >= L, 2 * (L - 1) - idx, idx).clamp_(0, N - 1)
        out = torch.gather(wave, 1, idx.expand(B, -1))
        return out * (j < L + pad)  # nothing past a sample's own right padding

    def power_spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """|STFT|**power, [B, n_freqs, T] (the same transform as torchaudio's Spectrogram
        with center=False, computed as re**2 + im**2 rather than through a complex abs)."""
        return self._power(self._stft(wave))

    def _power(self, spec: torch.Tensor) -> torch.Tensor:
        r = torch.view_as_real(spec)
        re, im = r[..., 0], r[..., 1]
        p = re * re + im * im  # the same values as .pow(2).sum(-1), without its slow size-2 reduction
        return p if self.cfg.power == 2.0 else p.pow(self.cfg.power / 2)

    def _stft(self, wave: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return torch.stft(wave, c.n_fft, c.hop_length, c.win_length or c.n_fft, self.window, center=False,
                          return_complex=True)

    def _fused(self, wave: torch.Tensor, fb) -> bool:
        """The CPU kernel applies: float32 CPU input and filterbanks of this transform's
        frequencies (one bank, one per sample, or per-sample :class:`FilterPairs`), no
        gradient, numba. Anything else takes the dense product (which raises on shapes
        that do not fit)."""
        n_freqs = self.cfg.n_fft // 2 + 1
        if isinstance(fb, FilterPairs):
            banks_fit = fb.shape[0] == wave.shape[0] and fb.shape[-1] == n_freqs
            fb = fb.weights
        else:
            banks_fit = fb.shape[-1] == n_freqs and (fb.dim() == 2 or (fb.dim() == 3
                                                                     and fb.shape[0] in (1, wave.shape[0])))
        return (wave.is_cpu and wave.dtype == torch.float32 and fb.dtype == torch.float32
                and fb.is_cpu and wave.dim() == 2 and banks_fit
                and not (wave.requires_grad or fb.requires_grad) and cpu_kernels.available())

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor, fbanks=None):
        """``fbanks``: per-sample filterbanks [B, n_mels, n_freqs] (VTLP), or the same as
        :class:`FilterPairs`, instead of the fixed one."""
        if wave.shape[0] == 0:  # no samples (torch.stft refuses an empty batch)
            T = int(self.cfg.num_frames(torch.tensor(wave.shape[-1])).clamp(min=0))
            return wave.new_zeros((0, self.cfg.n_mels, T)), lengths.new_zeros(0)
        if self.cfg.center:
            wave = self._center_pad(wave, lengths)
        fb = self.fbanks if fbanks is None else fbanks
        spec = self._stft(wave)
        frames = torch.clamp(self.cfg.num_frames(lengths), max=spec.shape[-1])
        if self._fused(wave, fb):  # power, mel sums and padding in one pass (the same values to roundoff)
            floor = (self.cfg.power, self.cfg.log_offset, self.cfg.log_floor == "clamp")
            if isinstance(fb, FilterPairs):
                return cpu_kernels.mel_log(spec, None, frames, *floor, pairs=(fb.first, fb.weights, fb.n_mels)), frames
            return cpu_kernels.mel_log(spec, fb if fb.dim() == 3 else fb[None], frames, *floor), frames
        if isinstance(fb, FilterPairs):
            fb = fb.dense()
        mel = torch.matmul(fb, self._power(spec))
        if self.cfg.log_floor == "add":
            feats = torch.log(mel + self.cfg.log_offset)
        else:
            feats = torch.log(mel.clamp(min=self.cfg.log_offset))
        return feats * lengths_mask(frames, feats.shape[-1])[:, None, :], frames


def finalize(feats: torch.Tensor, lengths: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """After augmentation: natural log -> dB (``log: db``, with the per-sample ``top_db``
    floor below each sample's own maximum), then mean/variance normalisation."""
    if cfg.log == "db":
        feats = feats * (10.0 / math.log(10.0))
        valid = lengths_mask(lengths, feats.shape[-1])[:, None, :]
        if cfg.top_db is not None:
            peak = torch.where(valid, feats, torch.full_like(feats, -math.inf)).amax((1, 2), keepdim=True)
            feats = torch.maximum(feats, peak - cfg.top_db)
        feats = feats * valid
    return normalize(feats, lengths, cfg)


def normalize(feats: torch.Tensor, lengths: torch.Tensor, cfg: MelConfig, eps: float = 1e-5) -> torch.Tensor:
    """Mean/variance normalisation of [B, n_mels, T] over each sample's own frames
    (``utterance``) or with fixed per-bin statistics (``global``); padding stays 0."""
    if cfg.normalize == "none":
        return feats
    if cfg.normalize == "utterance":
        return utterance_mvn(feats, lengths, eps)
    valid = lengths_mask(lengths, feats.shape[-1])[:, None, :]
    mean = torch.tensor(cfg.global_mean, dtype=feats.dtype, device=feats.device)[None, :, None]
    std = torch.tensor(cfg.global_std, dtype=feats.dtype, device=feats.device)[None, :, None]
    return (feats - mean) / std * valid


def utterance_mvn(feats: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per sample and bin: zero mean, unit variance over the sample's own frames; padding 0."""
    valid = lengths_mask(lengths, feats.shape[-1])[:, None, :]
    n = valid.sum(-1, keepdim=True).clamp(min=1).to(feats.dtype)
    mean = (feats * valid).sum(-1, keepdim=True) / n
    var = (((feats - mean) * valid) ** 2).sum(-1, keepdim=True) / n
    return (feats - mean) / torch.sqrt(var + eps) * valid


# ------------------------------------------------------------- filterbanks (VTLP): functional.mel

def warped_fbanks(cfg: MelConfig, alpha: torch.Tensor, boundary_hz: float, pairs: bool = False):
    """Per-sample mel filterbanks [B, n_mels, n_freqs] of ``cfg`` on VTLP-warped frequency
    axes (:func:`specstream.functional.mel.mel_fbanks`; as :class:`FilterPairs` with
    ``pairs``); alpha = 1 gives torchaudio's ``melscale_fbanks``."""
    return mel_fbanks(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max, cfg.mel_scale, cfg.norm,
                      alpha=alpha, boundary_hz=boundary_hz, pairs=pairs)
