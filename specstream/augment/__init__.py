"""Spectrogram augmentation: pure torch, batched, lengths-aware, reproducible by sample key.

The featurize stage calls a policy as
``policy(features, lengths, keys=..., key_ids=..., targets=..., seed=..., epoch=...)`` and
reads ``.features``, ``.lengths``, ``.targets`` and ``.params`` from the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch


@dataclass
class AugmentResult:
    features: torch.Tensor
    lengths: torch.Tensor
    targets: Optional[torch.Tensor] = None
    params: Dict[str, Any] = field(default_factory=dict)


class Identity:
    """The no-op policy: returns its input unchanged, with no parameters."""

    def __call__(self, features, lengths, keys=None, key_ids=None, targets=None, seed=0, epoch=0):
        return AugmentResult(features, lengths, targets, {})


def build_policy(spec) -> Identity:
    """A policy from its config spec; ``None`` means no augmentation."""
    if spec is None:
        return Identity()
    raise ValueError(f"augment: unknown policy spec {spec!r}; only null (no augmentation) exists yet")
