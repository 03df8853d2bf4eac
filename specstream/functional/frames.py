"""Per-sample operations along the time (last) axis of padded batches with lengths."""
from __future__ import annotations

from typing import Optional

import torch

from . import cpu_kernels

_CHUNK_BYTES = 4 << 20


def lengths_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] bool: position t holds signal (t < the sample's length)."""
    return torch.arange(n, device=lengths.device)[None, :] < lengths[:, None]


def zero_padding(x: torch.Tensor, lengths: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x ([B, ..., T]) with every position at or past its sample's length set to 0
    (``inplace`` for fresh intermediates that nothing else holds). On CPU only the frames
    from the shortest length on are looked at (the rest cannot be padding)."""
    T = x.shape[-1]
    start = 0
    if x.is_cpu and lengths.numel():
        start = min(max(int(lengths.min()), 0), T)
    if not inplace:
        if start == T:
            return x.clone()
        x = x.clone() if start else x
    elif start == T:
        return x
    tail = x[..., start:]
    pad = ~lengths_mask(lengths - start, T - start)
    pad = pad.reshape((pad.shape[0],) + (1,) * (x.dim() - 2) + (pad.shape[1],))
    if inplace or start:
        tail.masked_fill_(pad, 0)
        return x
    return x.masked_fill(pad, 0)


def zero_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x itself when every position past each sample's length is already 0 (checked on the
    padding alone: no pass over the data, no copy), else a zero-padded copy."""
    T = x.shape[-1]
    for b, n in enumerate(lengths.tolist()):
        if n < T and bool(x[b, ..., n:].any()):
            return zero_padding(x, lengths)
    return x


def select(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per-sample choice between two tensors of the same shape ([B, ...])."""
    return torch.where(active.reshape((-1,) + (1,) * (new.dim() - 1)), new, old)


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of [B, F, T] over each sample's own valid frames, whatever the padding
    holds: [B]. Bins are summed per frame (one read of x, no masked copy), then the valid
    frames' sums in float64. On the CPU one kernel call (:func:`.cpu_kernels.masked_mean`: the
    same sums to float roundoff, frame by frame)."""
    if (x.is_cpu and x.dim() == 3 and x.dtype in (torch.float32, torch.float64) and x.is_contiguous()
            and not x.requires_grad and lengths.is_cpu and cpu_kernels.available()):
        return cpu_kernels.masked_mean(x, lengths)
    n = (lengths.clamp(min=0).to(torch.float64) * x.shape[1]).clamp(min=1)
    per_frame = torch.where(lengths_mask(lengths, x.shape[-1]), x.sum(1).to(torch.float64), 0.0)  # NaN padding too
    return (per_frame.sum(1) / n).to(x.dtype)


def masked_min(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-sample minimum of [B, F, T] over each sample's own valid frames: [B] (0 for an
    empty sample)."""
    valid = lengths_mask(lengths, x.shape[-1])[:, None, :]
    m = torch.where(valid, x, torch.full_like(x, float("inf"))).amin((1, 2)) if x.numel() else x.new_zeros(x.shape[0])
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def bands(starts: torch.Tensor, widths: torch.Tensor, on: torch.Tensor, size: int) -> torch.Tensor:
    """[B, size] bool: union over m of [start, start + width) where on[b, m]: +1 at each
    band's start, -1 at its end, a running sum (no [B, M, size] comparison); on the CPU
    one kernel call (:func:`.cpu_kernels.bands`, the same rows)."""
    if starts.is_cpu and cpu_kernels.available():
        return cpu_kernels.bands(starts, widths, on, size)  # (converts what is not int64 / bool)
    lo = starts.clamp(0, size)
    hi = (starts + widths).clamp(0, size)
    use = (on & (hi > lo)).to(torch.int32)
    d = torch.zeros(starts.shape[0], size + 1, dtype=torch.int32, device=starts.device)
    d.scatter_add_(1, lo, use).scatter_add_(1, hi, -use)
    return d[:, :size].cumsum(1) > 0


def interp_time(x: torch.Tensor, src: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Linear interpolation along the last axis of [B, C, T]: out[b, c, t] = x[b, c, src[b, t]]
    for float src [B, T_out] in [0, T - 1]. The result depends only on src, not on T.
    ``lengths`` [B]: only each sample's first lengths[b] output frames are computed, the
    rest are 0.

    On CPU (contiguous float input, numba installed) one fused pass
    (:func:`.cpu_kernels.interp_time`); otherwise two gathers with a broadcast index and one
    lerp, the upper-neighbour gather through a small reused buffer, a few samples at a
    time: on CPU a second full-size temporary costs more in fresh-page faults than the
    gather itself. Both give the same values (the same neighbours, fraction and lerp)."""
    B, C, T = x.shape
    T_out = src.shape[-1]
    lo = src.floor().clamp(0, T - 1)
    frac = (src - lo).to(x.dtype)
    lo = lo.to(torch.int64)
    if lengths is not None:
        lengths = lengths.to(torch.int64)
    if (x.is_cpu and x.dtype in (torch.float32, torch.float64) and x.is_contiguous()
            and not x.requires_grad and cpu_kernels.available()):
        n = lengths if lengths is not None else torch.full((B,), T_out, dtype=torch.int64)
        # clamped again after the cast: a NaN position must not become an address
        return cpu_kernels.interp_time(x, lo.clamp_(0, max(T - 1, 0)).contiguous(), frac.contiguous(), n, T_out)
    frac = frac[:, None, :]
    hi = (lo + 1).clamp(max=T - 1)
    out = torch.gather(x, 2, lo[:, None, :].expand(B, C, T_out))
    step = max(1, _CHUNK_BYTES // max(1, C * T_out * x.element_size())) if x.is_cpu else B
    buf = None
    for s in range(0, B, step):
        e = min(B, s + step)
        idx = hi[s:e, None, :].expand(e - s, C, T_out)
        if buf is None or buf.shape[0] != e - s:
            buf = torch.empty((e - s, C, T_out), dtype=x.dtype, device=x.device)
        torch.gather(x[s:e], 2, idx, out=buf)
        out[s:e].lerp_(buf, frac[s:e])
    if lengths is not None:
        out = zero_padding(out, lengths, inplace=True)
    return out


def gather_frames(y: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Nearest-frame gather of frame targets [B, T] or [B, T, C] at integer src [B, T_out]."""
    if y.dim() == 2:
        return torch.gather(y, 1, src)
    return torch.gather(y, 1, src[..., None].expand(-1, -1, y.shape[-1]))


def move_frames(ft: torch.Tensor, src: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Frame targets [B, T] or [B, T, C] taken at integer source frames src [B, T_out]
    (clamped to the input), zero past each sample's new ``lengths``."""
    out = gather_frames(ft, src.clamp(0, ft.shape[1] - 1))
    valid = lengths_mask(lengths, src.shape[1])
    return out * valid.reshape(valid.shape + (1,) * (out.dim() - 2)).to(out.dtype)


def flip_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row of [B, N] reversed within its own length (x[b, L_b - 1 - t]); padding stays 0.
    Applied twice it is the identity on the valid part."""
    N = x.shape[-1]
    if bool((lengths == N).all()):  # every row fills the batch: a plain flip
        return x.flip(-1)
    t = torch.arange(N, device=x.device)[None, :]
    idx = (lengths[:, None] - 1 - t)
    valid = idx >= 0
    out = torch.gather(x, -1, idx.clamp(min=0).expand(x.shape[0], N))
    return out * valid.to(x.dtype)


def pad_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """x zero-padded (or cut) to n along the last axis."""
    if x.shape[-1] == n:
        return x
    if x.shape[-1] > n:
        return x[..., :n]
    return torch.nn.functional.pad(x, (0, n - x.shape[-1]))
