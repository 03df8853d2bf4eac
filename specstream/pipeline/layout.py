"""How a row's audio and features are held between stages: one object for ``decode.mode``.

``fixed``: every clip is cropped or zero-padded to ``decode.clip_seconds``, so a batch is one
[B, N] waveform array and one [B, n_mels, T] feature array of the clip's frames (what Ray
Data moves cheapest; a time op that lengthens a clip is cut back to T, one that shortens it
is padded). ``full``: every clip is kept whole, one array per row, and features are trimmed
to each row's own frames (what duration bucketing needs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch


@dataclass(frozen=True)
class Layout:
    fixed: bool
    clip_samples: int = 0  # fixed: samples per clip
    clip_frames: int = 0  # fixed: log-mel frames per clip

    @classmethod
    def of(cls, cfg) -> "Layout":
        """The layout of a validated :class:`~specstream.config.PipelineConfig`."""
        d = cfg.decode
        if d.mode != "fixed":
            return cls(fixed=False)
        n = int(round(d.clip_seconds * d.sample_rate))
        return cls(fixed=True, clip_samples=n, clip_frames=int(cfg.features.num_frames(torch.tensor(n))))

    def kept(self, n: int) -> int:
        """Samples of signal a decoded clip of ``n`` samples keeps."""
        return min(n, self.clip_samples) if self.fixed else n

    def audio_column(self, waves: List[np.ndarray]) -> np.ndarray:
        """Decoded waveforms -> the audio column: [B, clip_samples] float32 zero-padded, or one
        array per row."""
        if self.fixed:
            arr = np.zeros((len(waves), self.clip_samples), dtype=np.float32)
            for j, x in enumerate(waves):
                n = min(len(x), self.clip_samples)
                arr[j, :n] = x[:n]
            return arr
        arr = np.empty(len(waves), dtype=object)
        arr[:] = waves
        return arr

    def fit(self, feats: torch.Tensor, lengths: torch.Tensor, frame_targets: Optional[torch.Tensor] = None
            ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Features [B, F, T'] after augmentation (time ops change T') -> the layout's frames:
        fixed cuts a stretched batch back to the clip's frames or zero-pads a shortened one
        (lengths clamped); full keeps them."""
        T = self.clip_frames
        if not self.fixed or feats.shape[-1] == T:
            return feats, lengths, frame_targets
        pad = torch.nn.functional.pad
        feats = pad(feats, (0, T - feats.shape[-1])) if feats.shape[-1] < T else feats[..., :T]
        if frame_targets is not None:
            ft = frame_targets
            frame_targets = pad(ft, (0, 0, 0, T - ft.shape[1])) if ft.shape[1] < T else ft[:, :T]
        return feats, lengths.clamp(max=T), frame_targets

    def rows(self, values: np.ndarray, lengths: np.ndarray, time_axis: int) -> np.ndarray:
        """A batch array ([B, F, T] features or [B, T, C] frame targets) -> the column: as is
        (fixed), or one array per row trimmed to its frames along ``time_axis`` (full)."""
        if self.fixed:
            return values
        out = np.empty(len(lengths), dtype=object)
        cut = [slice(None)] * (values.ndim - 1)
        for i in range(len(lengths)):
            cut[time_axis - 1] = slice(0, int(lengths[i]))
            out[i] = values[i][tuple(cut)]
        return out
