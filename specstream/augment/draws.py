"""The draws of an op's parameters: :class:`Context` (per-sample counter-based uniforms
keyed by sample id, the op slot and the draw's index) and the helpers that turn uniforms
into parameters (:func:`randint`, :func:`lerp`). Host draws finish in numpy, with torch's
float32 values: a few values per sample, where each torch call's dispatch would cost more
than the arithmetic."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch

from ..functional.cpu_kernels import keyed_uniform_array
from ..functional.random import DrawTable, hash32, host_draws, keyed_prefix, uniform


@dataclass
class Context:
    """What an op may draw from: per-sample counter-based uniforms keyed by sample id.

    Parameter draws are small ([B, n]) and are hashed on the host, then copied to the batch's
    device in one transfer: on a GPU the hash's integer steps would each be a kernel launch
    (hundreds per op), and a gate known on the host needs no device sync. The values are
    the same integers on every device (the hash is exact), so CPU and CUDA draw alike.
    Element-wise fields too large to copy (noise) are hashed on the device from
    :meth:`stream_keys`."""

    ids: torch.Tensor  # [B] int64 key ids (on the host or the batch's device)
    seed: int
    epoch: Union[int, torch.Tensor]  # an int, or [B] per sample (rows from different passes)
    slot: int  # the op's position in its policy
    counter: int = 0
    prefix: Optional[torch.Tensor] = None  # keyed_prefix(seed, epoch, ids) on the host, shared by a policy's ops
    device: Optional[torch.device] = None  # where draws go (default: the ids' device)
    flat: Optional[np.ndarray] = None  # the prefix as a flat int64 array (host draws), shared like it
    table: Optional[DrawTable] = None  # the batch's first draws, hashed at once (host draws)

    def __post_init__(self):
        if self.device is None:
            self.device = self.ids.device
        if not isinstance(self.device, torch.device):
            self.device = torch.device(self.device)
        self._on_host = self.device.type == "cpu"  # asked per draw (a device's type builds a string)

    def _prefix(self) -> torch.Tensor:
        if self.prefix is None:
            epoch = self.epoch.cpu() if isinstance(self.epoch, torch.Tensor) else self.epoch
            self.prefix = keyed_prefix(self.seed, epoch, self.ids.cpu())
        return self.prefix

    def _next(self) -> int:
        self.counter += 1
        return self.slot * 64 + self.counter - 1

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        # non_blocking: a pageable host tensor is staged at once, with no wait on the stream
        return t if self._on_host else t.to(self.device, non_blocking=True)

    def host_draws(self) -> bool:
        """Whether this context's draws are made on the host by the CPU kernels (then
        :meth:`uniform_np` applies)."""
        return self._on_host and host_draws()

    def uniform(self, n: int = 1) -> torch.Tensor:
        """[B, n] uniforms in [0, 1); successive calls draw fresh streams."""
        if self.host_draws():  # the kernel on the flat prefix (the same values, fewer calls)
            return torch.from_numpy(self.uniform_np(n))
        return self._to_device(uniform(self.seed, self.epoch, self.ids, self._next(), n, prefix=self._prefix()))

    def uniform_np(self, n: int = 1) -> np.ndarray:
        """:meth:`uniform` as a numpy array, for host draws (requires a host device and
        :meth:`host_draws`)."""
        if self.table is not None:
            return self.table.uniform(self._next(), n)
        if self.flat is None:
            self.flat = np.ascontiguousarray(self._prefix().numpy().reshape(-1), dtype=np.int64)
        return keyed_uniform_array(self.flat, self._next(), n)

    def normal(self, n: int = 1) -> torch.Tensor:
        """[B, n] standard normals (Box-Muller on two uniform streams)."""
        u1, u2 = 1.0 - self.uniform(n), self.uniform(n)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)

    def stream_keys(self) -> torch.Tensor:
        """[B] int64: one 32-bit key per sample naming a stream of element draws, for
        fields too large to record (noise, per-frame choices): the op records the key and
        regenerates the field from it (:func:`~specstream.functional.random.stream_field`),
        so the recorded parameters stay small and replay is exact."""
        prefix = self._prefix()
        return self._to_device(hash32([self._next()], state=prefix.reshape(-1)))


def _host(u: torch.Tensor) -> bool:
    """A draw that numpy can finish: a few float32 values on the host, no gradient. Each
    torch operation on such a tensor costs several times its arithmetic in dispatch (more
    after a batch's kernels have pushed the interpreter's and torch's code out of the
    caches); numpy gives the same float32 values (scalars cast to float32 as torch casts
    them)."""
    return u.is_cpu and u.dtype == torch.float32 and not u.requires_grad


def randint(u: torch.Tensor, low, high) -> torch.Tensor:
    """Integers in [low, high] (inclusive, broadcast) from uniforms in [0, 1)."""
    if isinstance(low, int) and isinstance(high, int) and high >= low:  # the same values, fewer operations
        if _host(u):
            v = np.floor(u.numpy() * np.float32(high - low + 1)).astype(np.int64)
            return torch.from_numpy(np.minimum(v, high - low) + low)
        return torch.floor(u * (high - low + 1)).to(torch.int64).clamp_(max=high - low).add_(low)
    if _host(u) and all(not isinstance(b, torch.Tensor) or (b.is_cpu and not b.dtype.is_floating_point)
                        for b in (low, high)):
        lo, hi = (b.numpy() if isinstance(b, torch.Tensor) else np.int64(b) for b in (low, high))
        span = np.maximum(hi - lo + 1, 1).astype(np.float32)  # int64 -> float32, as torch's product casts it
        v = lo + np.floor(u.numpy() * span).astype(np.int64)
        return torch.from_numpy(np.asarray(np.minimum(v, hi), dtype=np.int64))
    low = torch.as_tensor(low, device=u.device)
    high = torch.as_tensor(high, device=u.device)
    span = (high - low + 1).clamp(min=1)
    return (low + torch.floor(u * span).to(torch.int64)).minimum(high.to(torch.int64)).to(torch.int64)


def lerp(r: Tuple[float, float], u: torch.Tensor) -> torch.Tensor:
    """r[0] + (r[1] - r[0]) u, in u's dtype (float32 draws: the scalars cast to float32)."""
    if _host(u):
        return torch.from_numpy(np.float32(r[1] - r[0]) * u.numpy() + np.float32(r[0]))
    return r[0] + (r[1] - r[0]) * u
