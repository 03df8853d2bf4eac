"""Counter-based random numbers keyed by (seed, epoch, sample key, op, draw), on any device.

No global RNG: a sample's draws are a pure function of its key and the counters, so they
do not depend on the batch it arrived in, its position, the actor, node or device
(design invariant 2). Keys are strings, hashed once on the host (BLAKE2b, 63 bits) into
``key_id``; everything after that is integer arithmetic on tensors, exact on CPU and CUDA.

The mixer is murmur3's 32-bit finaliser applied to a running combination of the words.
Multiplications are split into 16-bit halves so every intermediate fits in int64 without
overflow, which keeps results identical on every backend.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from . import cpu_kernels

_M32 = 0xFFFFFFFF


def key_id(key: str) -> int:
    """63-bit non-negative id of a sample key (stable across processes and machines)."""
    d = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(d, "little") & 0x7FFFFFFFFFFFFFFF


def key_ids(keys: Iterable[str]) -> np.ndarray:
    return np.fromiter((key_id(k) for k in keys), dtype=np.int64)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32), exact in int64."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _mul32_(x: torch.Tensor, c: int, tmp: torch.Tensor) -> torch.Tensor:
    """In-place :func:`_mul32` (``tmp``: a scratch tensor of x's shape)."""
    lo, hi = c & 0xFFFF, c >> 16
    torch.mul(x, hi, out=tmp)
    tmp.bitwise_and_(0xFFFF).bitwise_left_shift_(16)
    return x.mul_(lo).add_(tmp).bitwise_and_(_M32)


def _fmix32_(h: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """In-place :func:`_fmix32`."""
    h.bitwise_xor_(torch.bitwise_right_shift(h, 16, out=tmp))
    _mul32_(h, 0x85EBCA6B, tmp)
    h.bitwise_xor_(torch.bitwise_right_shift(h, 13, out=tmp))
    _mul32_(h, 0xC2B2AE35, tmp)
    return h.bitwise_xor_(torch.bitwise_right_shift(h, 16, out=tmp))


def hash32(words: Sequence[Union[int, torch.Tensor]], device=None, state: Optional[torch.Tensor] = None
           ) -> torch.Tensor:
    """Mix a sequence of integer words (ints or int64 tensors, broadcast) into uint32 values
    held in int64 tensors. ``state``: the hash of leading words already mixed (a
    :func:`keyed_prefix`), continued with ``words``: ``hash32(b, state=hash32(a))`` equals
    ``hash32(a + b)``.

    Each word after the first allocates its broadcast result and one scratch tensor and
    mixes in place: for element-wise fields ([B, N] noise) fresh full-size temporaries per
    operation cost several times the arithmetic on CPU. Same values as the out-of-place
    form ``_fmix32(_mul32(h ^ w, 0x27D4EB2F) ^ (h >> 15))``. On the CPU the hash runs in
    :func:`_hash32_host` (native uint32 arithmetic): the same integers, with a fraction of
    the operations and memory."""
    if _HOST and _on_host(words, device, state):
        return _hash32_host(words, state)
    h = state
    for w in words:
        if isinstance(w, int) and h is not None:
            w = w & _M32  # a plain word: mixed in as a Python scalar (no tensor of its own)
        else:
            w = torch.as_tensor(w, dtype=torch.int64, device=device) & _M32
        if h is None:
            h = _fmix32(w ^ 0x9E3779B9)
            continue
        x = torch.bitwise_xor(h, w)
        tmp = torch.empty_like(x)
        _mul32_(x, 0x27D4EB2F, tmp)
        x.bitwise_xor_(h >> 15)
        h = _fmix32_(x, tmp)
    return h


_HOST = True  # CPU hashes through numpy's uint32 arithmetic (tests switch it off to compare)


def _on_host(words, device, state) -> bool:
    """Every word is a CPU tensor or an int, and the device (if named) is the CPU."""
    if device is not None and torch.device(device).type != "cpu":
        return False
    return all(w.is_cpu if isinstance(w, torch.Tensor) else isinstance(w, int)
               for w in ([state] if state is not None else []) + list(words))


def _hash32_host(words, state: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`hash32` in numpy uint32 on the host: its products wrap modulo 2**32, exactly
    the low 32 bits the split int64 products keep (the same values, bit for bit)."""

    def fmix32(h):
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
        return h

    h = None if state is None else state.numpy().astype(np.uint32)
    with np.errstate(over="ignore"):
        for w in words:
            if isinstance(w, torch.Tensor):
                w = w.to(torch.int64).numpy().astype(np.uint32)  # the low 32 bits (= w & 0xFFFFFFFF)
            else:
                w = np.uint32(w & _M32)
            if h is None:
                h = fmix32(np.asarray(w ^ np.uint32(0x9E3779B9)))
                continue
            x = np.bitwise_xor(h, w)
            x *= np.uint32(0x27D4EB2F)
            x ^= h >> np.uint32(15)
            h = fmix32(x)
    return torch.from_numpy(np.asarray(h).astype(np.int64))


def per_sample(value, ids: torch.Tensor, trailing: int = 1):
    """An int, or a [B] tensor reshaped to broadcast against [B, ...] (``trailing`` axes)."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.to(device=ids.device, dtype=torch.int64).reshape(-1, *([1] * trailing))
    return int(value)


def keyed_words(seed: int, epoch, ids: torch.Tensor, op: int, trailing: int = 1) -> list:
    """The leading hash words of a draw: seed, epoch, the key id's two halves and the op
    slot, shaped to broadcast against [B, ...] with ``trailing`` axes after B."""
    ids = ids.to(torch.int64)
    view = (-1,) + (1,) * trailing
    return [seed, per_sample(epoch, ids, trailing), (ids & _M32).reshape(view), (ids >> 32).reshape(view), op]


def keyed_prefix(seed: int, epoch, ids: torch.Tensor, trailing: int = 1) -> torch.Tensor:
    """The hash state after the words every draw of a sample starts with (seed, epoch, the
    key id's halves), [B, 1, ...] (``trailing`` axes): computed once per batch and shared by
    every op and draw, which then mix in only their own words (op slot, draw index)."""
    if trailing == 1 and ids.is_cpu and ids.dim() == 1 and host_draws():
        ep = per_sample(epoch, ids, 0)
        if isinstance(ep, int) or ep.is_cpu:
            epochs = torch.full_like(ids, ep) if isinstance(ep, int) else ep.reshape(-1).expand_as(ids)
            return cpu_kernels.keyed_prefix(seed, epochs.to(torch.int64), ids.to(torch.int64))[:, None]
    return hash32(keyed_words(seed, epoch, ids, 0, trailing)[:-1], device=ids.device)


def host_draws() -> bool:
    """Whether host draws take the CPU kernels (numba available, not switched off)."""
    return _HOST and cpu_kernels.available()


class DrawTable:
    """The first uniforms of the first draws of every op slot of a policy for one batch,
    hashed in one kernel call when first asked for (host draws): a draw of at most
    ``VALUES`` values among an op's first ``DRAWS`` is a copy of its slice, the same values
    as :func:`.cpu_kernels.keyed_uniform_array` (the element t of a draw does not depend on
    how many are drawn). Others are hashed on their own."""

    DRAWS, VALUES = 4, 4

    def __init__(self, prefix: np.ndarray, slots: int):
        self.prefix, self.slots, self._table = prefix, slots, None

    def uniform(self, op: int, n: int) -> np.ndarray:
        slot, draw = divmod(op, 64)
        if slot < self.slots and draw < self.DRAWS and n <= self.VALUES:
            if self._table is None:
                self._table = cpu_kernels.keyed_block(self.prefix, self.slots, self.DRAWS, self.VALUES)
            return self._table[:, slot, draw, :n].copy()
        return cpu_kernels.keyed_uniform_array(self.prefix, op, n)


def unit_float(h: torch.Tensor) -> torch.Tensor:
    """uint32 hashes -> float32 in [0, 1) from their top 24 bits (exactly representable)."""
    return (h >> 8).to(torch.float32).mul_(1.0 / (1 << 24))


def uniform(seed: int, epoch, ids: torch.Tensor, op: int, n: int = 1,
            prefix: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[B, n] float32 uniforms in [0, 1) for sample ids [B] (int64) at op slot ``op``.
    ``epoch`` is an int or a per-sample [B] tensor; ``prefix``: their
    :func:`keyed_prefix` when already computed (same values, fewer operations). The
    uniforms are computed where the prefix is (a host prefix: on the host, as
    :class:`~specstream.augment.core.Context` draws)."""
    if prefix is None:
        prefix = keyed_prefix(seed, epoch, ids)
    if prefix.is_cpu and prefix.dim() == 2 and prefix.shape[1] == 1 and host_draws():
        return cpu_kernels.keyed_uniform(prefix.reshape(-1), op, n)  # the same values, one call
    draw = torch.arange(n, device=prefix.device, dtype=torch.int64)
    return unit_float(hash32([op, draw], device=prefix.device, state=prefix))


def stream_uniform(keys: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] uniforms in [0, 1) of streams ``keys`` [B]: element t depends only on the key
    and t, not on n (a sample's field is the same whatever length its batch is padded to)."""
    if keys.is_cpu and host_draws():
        return cpu_kernels.stream_uniform(keys.reshape(-1).to(torch.int64), n)  # the same values, one pass
    t = torch.arange(n, device=keys.device, dtype=torch.int64)[None, :]
    return unit_float(hash32([keys.reshape(-1, 1), t], device=keys.device))


def stream_field(keys: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """[B, *shape] uniforms of streams ``keys`` [B]: element (i, j, ...) depends only on the
    key and its coordinates, not on the padded shape (e.g. a [F, T] noise field: a sample's
    field is the same in any batch). Recorded parameters hold the 32-bit key, not the field."""
    nd = len(shape)
    words = [keys.reshape((-1,) + (1,) * nd)]
    for axis, n in enumerate(shape):
        view = [1] * (nd + 1)
        view[axis + 1] = n
        words.append(torch.arange(n, device=keys.device, dtype=torch.int64).reshape(view))
    return unit_float(hash32(words, device=keys.device))
