"""CPU kernels (numba, :mod:`._numba_mixing`) for rows of padded waveform batches: mixing
at an SNR (:func:`snr_mix`: generated noise; :func:`segment_mix`: recorded segments summed
at unit power inside the kernel), rescaling to a power (:func:`level`), a log-mel's
per-sample centre padding (:func:`center_pad`) and resampling (:func:`resample_rows`; rows
of several rate pairs in one call: :func:`resample_groups`).
Each is one pass per row (powers in float64), on all rows into a new tensor or on a list
of rows in place (the active rows of a batch an op chain owns). The kernels read without
bounds checks: the wrappers check every per-row argument. Callers use them where
:func:`mixable` (or :func:`.cpu_kernels.available`) says so; the torch paths in :mod:`.dsp`,
:mod:`.timescale` and :class:`specstream.features.LogMel` are the reference."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ._numba_consts import PHASE_LANES  # rate pairs with 4..PHASE_LANES output phases take vector lanes
from .cpu_kernels import _distinct_below, _launch, _per_row, available


def _rows_f32(*xs: torch.Tensor) -> bool:
    return all(x.is_cpu and x.dtype == torch.float32 and not x.requires_grad for x in xs)


def mixable(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """The mixing kernels apply: CPU float32 rows [., N] (the same row length), no
    gradient, numba available."""
    return (x.dim() == 2 and all(o.dim() == 2 and o.shape[-1] == x.shape[-1] for o in others)
            and _rows_f32(x, *others) and available())


def _row_list(rows: Optional[torch.Tensor], x: torch.Tensor, out: Optional[torch.Tensor], like: torch.Tensor):
    """(int64 row indices, output tensor): all rows of x into a new tensor shaped like
    ``like``, or ``rows`` (distinct, checked: the kernels have no bounds checks) of x into
    the same rows of ``out`` (x's shape)."""
    if rows is None:
        return np.arange(x.shape[0], dtype=np.int64), torch.empty(like.shape, dtype=like.dtype)
    sel = _per_row(rows, torch.int64, rows.numel(), "rows")
    if (out is None or out.shape != x.shape or out.dtype != like.dtype or not out.is_contiguous()):
        raise ValueError(f"rows need out: contiguous, of the input's shape {tuple(x.shape)} and dtype")
    if not _distinct_below(sel, out.shape[0]):
        raise ValueError(f"rows must be distinct indices below {out.shape[0]}")
    return sel, out


def _row_block(t: torch.Tensor, n: int, what: str) -> np.ndarray:
    """t [n, ...] as a contiguous numpy array (one row per listed row: a row's data is cut
    at that row's length, so one row cannot stand for all)."""
    if t.dim() == 0 or t.shape[0] != n:
        raise ValueError(f"{what}: {tuple(t.shape)} for {n} rows")
    return np.ascontiguousarray(t.numpy())


def snr_mix(x: torch.Tensor, noise: torch.Tensor, lengths: torch.Tensor, snr_db: torch.Tensor,
            rows: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`..dsp.mix_at_snr` of float32 CPU rows [B, N] (contiguous) in one pass per row
    (the powers in float64), into a new tensor; ``noise`` is read, not written. With
    ``rows``: rows rows[i] of x get noise[i] (lengths, snr_db given per listed row) and are
    written to the same rows of ``out`` (x itself: in place); its other rows are left as
    they are. One noise row, length or SNR serves every row. Requires :func:`mixable`."""
    sel, out = _row_list(rows, x, out, x)
    n = sel.size
    args = (_row_block(noise, n, "noise"), _per_row(lengths, torch.int64, n, "lengths"),
            _per_row(snr_db, torch.float64, n, "snr_db"))
    if n and x.shape[-1]:
        _launch("snr_mix", x.numpy(), *args, sel, out.numpy())
    return out


def segment_mix(x: torch.Tensor, lengths: torch.Tensor, data: torch.Tensor, starts: torch.Tensor,
                count: torch.Tensor, snr_db: torch.Tensor, rows: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`..dsp.mix_segments_at_snr` of float32 CPU rows [B, N] with the noise built
    per row in the kernel (no [B, N] noise or segment tensors); ``rows`` / ``out`` as in
    :func:`snr_mix`. Requires :func:`mixable`."""
    N = x.shape[-1]
    sel, out = _row_list(rows, x, out, x)
    n = sel.size
    if n == 0:
        return out
    starts = _row_block(torch.as_tensor(starts).to(torch.int64).reshape(starts.shape[0], -1), n, "starts")
    count = _per_row(count, torch.int64, n, "count").clip(0, starts.shape[1])
    if starts.size and ((starts < 0).any() or (starts + N > data.numel()).any()):
        raise ValueError(f"segment_mix: segments of {N} samples from starts {starts.min()}..{starts.max()} "
                         f"do not fit in {data.numel()} samples")
    if N:
        _launch("segment_mix", x.numpy(), _per_row(lengths, torch.int64, n, "lengths"),
                np.ascontiguousarray(data.reshape(-1).numpy()), starts, count,
                _per_row(snr_db, torch.float64, n, "snr_db"), sel, out.numpy())
    return out


def _row_view(t: torch.Tensor, what: str):
    """(flat numpy view of t's storage, offset, row stride) of a 2-D tensor whose rows are
    each contiguous (a column slice of a wider tensor): the kernels read row i at
    flat[offset + i stride:] without a copy."""
    if t.dim() != 2 or (t.shape[-1] > 1 and t.stride(-1) != 1):
        raise ValueError(f"{what}: rows with unit stride, not strides {t.stride()}")
    storage = t.untyped_storage()
    flat = t.new_empty(0).set_(storage, 0, (storage.nbytes() // t.element_size(),))
    return flat.numpy(), int(t.storage_offset()), int(t.stride(0))


def level(y: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor, keep: bool,
          rows: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """y (CPU float32 rows [R, N], each contiguous: e.g. a slice of a wider result) cut at
    each length, and with ``keep`` scaled to ref's power over it (:func:`..dsp.match_power`;
    ref [R, >= N], rows each contiguous too), into a new contiguous tensor; with ``rows``
    (R of them), into those rows of ``out``. Requires :func:`available`."""
    if rows is None:
        sel, out = _row_list(None, y, None, y)
    else:
        if rows.numel() != y.shape[0]:
            raise ValueError(f"level: {rows.numel()} rows for {y.shape[0]} rows of y")
        sel, out = _row_list(rows, out if out is not None else y, out, y)
    n = sel.size
    if out.shape[1] != y.shape[1]:
        raise ValueError(f"level: out rows of {out.shape[1]} samples for y rows of {y.shape[1]}")
    if ref.dim() != 2 or ref.shape[0] != n or ref.shape[1] < y.shape[1]:
        raise ValueError(f"level: ref {tuple(ref.shape)} for {n} rows of {y.shape[1]} samples")
    lens = _per_row(lengths, torch.int64, n, "lengths")
    if ref.shape[-1] > 1 and ref.stride(-1) != 1:
        ref = ref.contiguous()
    y_view, r_view = _row_view(y, "level"), _row_view(ref, "level: ref")
    if n and y.shape[-1]:
        _launch("level", *y_view, *r_view, lens, bool(keep), sel, out.numpy())
    return out


def center_pad(wave: torch.Tensor, lengths: torch.Tensor, pad: int, reflect: bool) -> torch.Tensor:
    """[B, N + 2 pad]: each row of wave (contiguous CPU float) padded at both ends of its own
    length as ``torch.stft(center=True)`` pads a sample alone (reflect, or zeros), 0 after
    (:meth:`specstream.features.LogMel._center_pad`), in one pass. Lengths must lie in
    [0, N]. Requires :func:`available`."""
    B, N = wave.shape
    out = torch.empty((B, N + 2 * pad), dtype=wave.dtype)
    if out.numel():
        _launch("center_pad", wave.numpy(), _per_row(lengths, torch.int64, B, "lengths"), int(pad),
                bool(reflect), out.numpy())
    return out


def resample_rows(x: torch.Tensor, lengths: torch.Tensor, kernel: torch.Tensor, width: int, orig: int, new: int,
                  rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Rows ``rows`` of x (contiguous float32 CPU [B, N]), each over its own first
    lengths[r] samples, resampled by new / orig (coprime) with torchaudio's polyphase sinc
    kernel ``kernel`` [new, taps] (``width`` samples of left context), written whole into
    the same rows of ``out`` (contiguous float32 CPU [B, W]): the first
    ceil(lengths[r] new / orig) samples (cut at W), 0 after; out's other rows are left as
    they are. ``torchaudio.functional.resample`` of the row alone, to float32 roundoff (the
    same taps summed in the same order: equal bit for bit on the rate pairs and lengths
    tested, except rows of a few samples, where torchaudio's convolution runs another
    way). Requires :func:`available`."""
    return resample_groups(x, lengths, rows, torch.zeros(rows.numel(), dtype=torch.int64),
                           [(kernel, width, orig, new)], out)


def resample_groups(x: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor, group: torch.Tensor, kernels,
                    out: torch.Tensor) -> torch.Tensor:
    """:func:`resample_rows` for rows of several rate pairs in one kernel call: listed row i
    (``rows``, distinct) over its own ``lengths[i]`` samples with the pair ``kernels[group[i]]``,
    each a (kernel [new, taps], width, orig, new) as :func:`resample_rows` takes it (orig = new
    = 1 with the one-tap kernel [[1]]: a copy). The same values as one call per pair. Requires
    :func:`available`."""
    if (x.dim() != 2 or out.dim() != 2 or out.shape[0] != x.shape[0] or not _rows_f32(x, out)
            or not (x.is_contiguous() and out.is_contiguous())):
        raise ValueError(f"resample_groups: contiguous float32 CPU rows in and out with as many rows, not "
                         f"{tuple(x.shape)} {x.dtype} -> {tuple(out.shape)} {out.dtype}")
    G = len(kernels)
    kerns = [np.ascontiguousarray(k.detach().to(torch.float32).numpy()) for k, _, _, _ in kernels]
    for kern, (_, width, orig, new) in zip(kerns, kernels):
        if kern.ndim != 2 or kern.shape[0] != new or orig < 1 or new < 1 or not 0 <= width < kern.shape[1]:
            raise ValueError(f"resample_groups: a kernel [{new}, taps] with 0 <= width < taps, not {kern.shape}, "
                             f"width {width}")
    sel = _per_row(rows, torch.int64, rows.numel(), "rows")
    grp = _per_row(group, torch.int64, sel.size, "group")
    if not _distinct_below(sel, x.shape[0]):
        raise ValueError(f"resample_groups: rows must be distinct indices below {x.shape[0]}")
    if grp.size and (grp.min() < 0 or grp.max() >= G):
        raise ValueError(f"resample_groups: group values must lie in [0, {G})")
    if not (sel.size and out.shape[1]):
        return out
    Pm, Km = max(k.shape[0] for k in kerns), max(k.shape[1] for k in kerns)
    stacked = np.zeros((G, Pm, Km), np.float32)
    columns = np.zeros((G, Km, PHASE_LANES), np.float32)
    gp = np.zeros((G, 7), np.int64)
    for g, (kern, (_, width, orig, new)) in enumerate(zip(kerns, kernels)):
        P, K = kern.shape
        stacked[g, :P, :K] = kern
        lanes = 4 <= P <= PHASE_LANES
        if lanes:
            columns[g, :K, :P] = kern.T
        copy = orig == 1 and new == 1 and K == 1 and width == 0 and kern[0, 0] == 1.0
        gp[g] = (orig, new, width, P, K, int(copy), int(lanes))
    _launch("resample_groups", x.numpy(), _per_row(lengths, torch.int64, sel.size, "lengths"), grp, stacked,
            columns, gp, sel, out.numpy())
    return out
