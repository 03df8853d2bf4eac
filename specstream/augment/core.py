"""The op contract: sample per-sample parameters, then apply them (kornia's split, without
its global RNG). Pure torch; the same code on CPU and CUDA.

A batch is padded features [B, F, T] with per-sample ``lengths`` (valid frames). Ops never
write into padding and never read a sample's padding; ops that change lengths return the
new lengths. Targets ride along: ``targets`` ([B] class index, [B, C] soft / multi-hot) and
``frame_targets`` ([B, T] or [B, T, C] frame labels), which move with time-axis ops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Union

import torch

from ..features import lengths_mask as time_valid  # [B, T] bool: frame t holds signal
from .random import hash32, keyed_words, uniform, unit_float

Params = Dict[str, torch.Tensor]


@dataclass
class Batch:
    features: torch.Tensor  # [B, F, T]
    lengths: torch.Tensor  # [B] int64, valid frames
    targets: Optional[torch.Tensor] = None
    frame_targets: Optional[torch.Tensor] = None  # [B, T] or [B, T, C]

    def replace(self, **kw) -> "Batch":
        return replace(self, **kw)


@dataclass
class Context:
    """What an op may draw from: per-sample counter-based uniforms keyed by sample id."""

    ids: torch.Tensor  # [B] int64 key ids
    seed: int
    epoch: Union[int, torch.Tensor]  # an int, or [B] per sample (rows from different passes)
    slot: int  # the op's position in its policy
    counter: int = field(default=0)

    @property
    def device(self):
        return self.ids.device

    def uniform(self, n: int = 1) -> torch.Tensor:
        """[B, n] uniforms in [0, 1); successive calls draw fresh streams."""
        u = uniform(self.seed, self.epoch, self.ids, self.slot * 64 + self.counter, n)
        self.counter += 1
        return u

    def normal(self, n: int = 1) -> torch.Tensor:
        """[B, n] standard normals (Box-Muller on two uniform streams)."""
        u1, u2 = 1.0 - self.uniform(n), self.uniform(n)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)

    def element_uniform(self, shape) -> torch.Tensor:
        """[B, *shape] uniforms, one per element (for noise fields): a pure function of the
        key and the element's coordinates (not of the padded size of the batch)."""
        nd = len(shape)
        words = keyed_words(self.seed, self.epoch, self.ids, self.slot * 64 + self.counter, nd)
        for axis, n in enumerate(shape):
            view = [1] * (nd + 1)
            view[axis + 1] = n
            words.append(torch.arange(n, device=self.device, dtype=torch.int64).reshape(view))
        self.counter += 1
        return unit_float(hash32(words, device=self.device))

    def stream_keys(self) -> torch.Tensor:
        """[B] int64: one 32-bit key per sample naming a stream of element draws, for
        fields too large to keep in the recorded parameters (waveform noise): the op
        records the key and regenerates the field from it with :func:`stream_uniform`."""
        words = keyed_words(self.seed, self.epoch, self.ids, self.slot * 64 + self.counter, 0)
        self.counter += 1
        return hash32(words, device=self.device)


def stream_uniform(keys: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] uniforms in [0, 1) of streams ``keys`` [B]: element t depends only on the key
    and t, not on n (a sample's field is the same whatever length its batch is padded to)."""
    t = torch.arange(n, device=keys.device, dtype=torch.int64)[None, :]
    return unit_float(hash32([keys.reshape(-1, 1), t], device=keys.device))


def randint(u: torch.Tensor, low, high) -> torch.Tensor:
    """Integers in [low, high] (inclusive, broadcast) from uniforms in [0, 1)."""
    low = torch.as_tensor(low, device=u.device)
    high = torch.as_tensor(high, device=u.device)
    span = (high - low + 1).clamp(min=1)
    return (low + torch.floor(u * span).to(torch.int64)).minimum(high.to(torch.int64)).to(torch.int64)


def move_frames(ft: torch.Tensor, src: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Frame targets [B, T] or [B, T, C] taken at integer source frames src [B, T_out]
    (clamped to the input), zero past each sample's new ``lengths``."""
    out = gather_frames(ft, src.clamp(0, ft.shape[1] - 1))
    valid = time_valid(lengths, src.shape[1])
    return out * valid.reshape(valid.shape + (1,) * (out.dim() - 2)).to(out.dtype)


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over each sample's own valid frames: [B]."""
    valid = time_valid(lengths, x.shape[-1]).to(x.dtype)[:, None, :]
    n = (valid.sum((1, 2)) * x.shape[1]).clamp(min=1)
    return (x * valid).sum((1, 2)) / n


_CHUNK_BYTES = 4 << 20


def interp_time(x: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Linear interpolation along the last axis of [B, C, T]: out[b, c, t] = x[b, c, src[b, t]]
    for float src [B, T_out] in [0, T - 1]: two gathers with a broadcast index and one lerp.
    Exact in the sense that matters here: the result depends only on src, not on T.

    The upper-neighbour gather goes through a small reused buffer, a few samples at a time:
    on CPU a second full-size temporary costs more in fresh-page faults than the gather
    itself (scripts/bench_augment.py times the op)."""
    B, C, T = x.shape
    lo = src.floor().clamp(0, T - 1)
    frac = (src - lo).to(x.dtype)[:, None, :]
    lo = lo.to(torch.int64)
    hi = (lo + 1).clamp(max=T - 1)
    T_out = src.shape[-1]
    out = torch.gather(x, 2, lo[:, None, :].expand(B, C, T_out))
    step = max(1, _CHUNK_BYTES // max(1, C * T_out * x.element_size())) if x.device.type == "cpu" else B
    buf = None
    for s in range(0, B, step):
        e = min(B, s + step)
        idx = hi[s:e, None, :].expand(e - s, C, T_out)
        if buf is None or buf.shape[0] != e - s:
            buf = torch.empty((e - s, C, T_out), dtype=x.dtype, device=x.device)
        torch.gather(x[s:e], 2, idx, out=buf)
        out[s:e].lerp_(buf, frac[s:e])
    return out


def gather_frames(y: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Nearest-frame gather of frame targets [B, T] or [B, T, C] at integer src [B, T_out]."""
    if y.dim() == 2:
        return torch.gather(y, 1, src)
    return torch.gather(y, 1, src[..., None].expand(-1, -1, y.shape[-1]))


def zero_padding(x: torch.Tensor, lengths: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x with every frame at or past its sample's length set to 0 (``inplace`` for fresh
    intermediates that nothing else holds)."""
    pad = ~time_valid(lengths, x.shape[-1])[:, None, :]
    return x.masked_fill_(pad, 0) if inplace else x.masked_fill(pad, 0)


def select(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per-sample choice between two tensors of the same shape ([B, ...])."""
    return torch.where(active.reshape((-1,) + (1,) * (new.dim() - 1)), new, old)


class Op:
    """Base class. Subclasses define ``name``, ``draw(ctx, batch) -> params`` and
    ``apply(batch, params) -> batch``. ``p`` is the per-sample probability of applying."""

    name = "op"
    domain = "spec"  # where the op runs: wave (before the log-mel), filterbank, spec

    def __init__(self, p: float = 1.0):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{self.name}: p must be in [0, 1], got {p}")
        self.p = float(p)

    def sample(self, ctx: Context, batch: Batch) -> Params:
        active = ctx.uniform(1)[:, 0] < self.p
        params = self.draw(ctx, batch)
        params["active"] = active
        return params

    def draw(self, ctx: Context, batch: Batch) -> Params:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, batch: Batch, params: Params) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict:
        """The op's constructor arguments (for logging and to_dict)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"
