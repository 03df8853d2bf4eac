"""Test-time augmentation: keyed views of a batch, and their predictions aggregated."""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch

from .policy import AugmentResult, Policy


def tta_views(policy: Policy, features: torch.Tensor, lengths: torch.Tensor, views: int, keys=None,
              key_ids=None, seed: int = 0, logmel=None, sample_rate: Optional[int] = None) -> List[AugmentResult]:
    """Test-time augmentation: ``views`` augmented copies of the batch, view v drawn with
    epoch = -(v + 1) so views differ from each other and from any training epoch, and are
    reproducible per key. View 0 is *not* the clean input: add it yourself if wanted.

    A policy with waveform (or VTLP) ops draws its views from the waveform: pass the
    waveforms [B, N] as ``features``, their lengths in samples, the featurizer ``logmel``
    (:class:`~specstream.features.LogMel`) and ``sample_rate``; each view goes through
    :meth:`Policy.featurize`."""
    if policy.has_wave_ops or logmel is not None:
        if logmel is None or sample_rate is None:
            raise ValueError("tta_views: this policy has waveform ops: pass the waveforms and their lengths in "
                             "samples, with logmel= (a LogMel) and sample_rate=")
        return [policy.featurize(features, lengths, logmel, sample_rate, keys=keys, key_ids=key_ids, seed=seed,
                                 epoch=-(v + 1)) for v in range(views)]
    return [policy(features, lengths, keys=keys, key_ids=key_ids, seed=seed, epoch=-(v + 1))
            for v in range(views)]


def tta_aggregate(predictions: Union[torch.Tensor, Sequence[torch.Tensor]], method: str = "mean",
                  logits: bool = True) -> torch.Tensor:
    """Aggregate per-view predictions [V, B, C] (logits or probabilities) into [B, C]:
    ``mean`` of probabilities, ``geometric`` mean (mean of log-probabilities), ``max``,
    or ``vote`` (fraction of views whose argmax is each class)."""
    p = torch.stack(list(predictions)) if not isinstance(predictions, torch.Tensor) else predictions
    probs = p.softmax(-1) if logits else p
    if method == "mean":
        return probs.mean(0)
    if method == "geometric":
        return torch.log(probs.clamp(min=1e-12)).mean(0).softmax(-1)
    if method == "max":
        return probs.max(0).values
    if method == "vote":
        return torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).float().mean(0)
    raise ValueError(f"unknown TTA aggregation {method!r}")
