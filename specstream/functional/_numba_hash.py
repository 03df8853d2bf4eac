"""The keyed counter hash's numba kernels (behind :func:`.cpu_kernels.stream_uniform`,
:func:`.cpu_kernels.keyed_uniform`, :func:`.cpu_kernels.keyed_block` and
:func:`.cpu_kernels.keyed_prefix`): the same 32-bit words as
:func:`specstream.functional.random.hash32`, in uint64 arithmetic kept to 32 bits."""
import numba
import numpy as np

from ._numba_kernels import _jit


@numba.njit(inline="always")
def fmix32(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


@numba.njit(inline="always")
def mix(h, w):
    """hash32's step for a further word w: fmix32(((h ^ w) * 0x27D4EB2F) ^ (h >> 15))."""
    return fmix32((((h ^ w) * np.uint64(0x27D4EB2F)) & np.uint64(0xFFFFFFFF)) ^ (h >> 15))


@numba.njit(inline="always")
def unit(h):
    return np.float32(h >> 8) * np.float32(1.0 / 16777216.0)


@_jit(parallel=True)
def stream_uniform_rows(keys, signed, out):
    """out[b, t] = unit_float(hash32([keys[b], t])), in uint64 arithmetic kept to 32
    bits (the products wrap as numpy's uint32 ones do). ``signed``: 2 u - 1 clamped to
    [-1 + 1e-6, 1 - 1e-6] instead (float32, exact: the inverse-CDF normals' input)."""
    B, n = out.shape
    lo, hi = np.float32(-1 + 1e-6), np.float32(1 - 1e-6)
    for b in numba.prange(B):
        h = fmix32(np.uint64(keys[b] & 0xFFFFFFFF) ^ np.uint64(0x9E3779B9))
        orow = out[b]
        if signed:
            for t in range(n):
                orow[t] = min(max(unit(mix(h, np.uint64(t))) * np.float32(2) - np.float32(1), lo), hi)
        else:
            for t in range(n):
                orow[t] = unit(mix(h, np.uint64(t)))


@_jit()
def keyed_block_rows(prefix, out):
    """out[b, s, c, t] = :func:`keyed_uniform_rows`'s value for op word s 64 + c: the first
    uniforms of the first draws of every op slot of a policy, in one call."""
    B, S, C, n = out.shape
    for b in range(B):
        p = np.uint64(prefix[b] & 0xFFFFFFFF)
        for s in range(S):
            for c in range(C):
                h = mix(p, np.uint64((s * 64 + c) & 0xFFFFFFFF))
                for t in range(n):
                    out[b, s, c, t] = unit(mix(h, np.uint64(t)))


@_jit()
def keyed_uniform_rows(prefix, op, out):
    """out[b, t] = unit_float(hash32([op, t], state=prefix[b])): a draw's uniforms."""
    B, n = out.shape
    for b in range(B):
        h = mix(np.uint64(prefix[b] & 0xFFFFFFFF), np.uint64(op & 0xFFFFFFFF))
        for t in range(n):
            out[b, t] = unit(mix(h, np.uint64(t)))


@_jit()
def prefix_rows(seed, epochs, ids, out):
    """out[b] = hash32([seed, epochs[b], ids[b] & 0xFFFFFFFF, ids[b] >> 32]): the hash
    state every draw of a sample starts from."""
    h0 = fmix32(np.uint64(seed & 0xFFFFFFFF) ^ np.uint64(0x9E3779B9))
    for b in range(out.shape[0]):
        h = mix(h0, np.uint64(epochs[b] & 0xFFFFFFFF))
        h = mix(h, np.uint64(ids[b] & 0xFFFFFFFF))
        out[b] = mix(h, np.uint64((ids[b] >> 32) & 0xFFFFFFFF))
