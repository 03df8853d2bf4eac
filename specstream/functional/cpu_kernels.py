"""Fused CPU kernels (numba) for the operations torch has no fast CPU kernel for.

- :func:`interp_time`: interpolation along time at per-sample positions (time warp, stretch);
- :func:`iir_rows`: IIR filtering of rows with per-row coefficients, causal or zero-phase
  from each row's own end (band-limiting filters, coloured noise): torch runs a recursion as
  one small launch per sample or (torchaudio) a scalar loop after several full-size passes;
  here four rows run as the lanes of one float64 vector (LLVM IR from numba intrinsics),
  each lane the scalar recursion operation for operation;
- :func:`stream_uniform`, :func:`keyed_uniform`, :func:`keyed_prefix`, :func:`keyed_block`:
  the keyed counter hash of element-wise noise fields (one pass instead of a dozen numpy
  passes over [B, N]), of the parameter draws (one call instead of a dozen small numpy
  operations) and of a batch's first draws for every op slot at once;
- :func:`bands`: the union of per-sample intervals (mask bands) as a [B, size] row mask;
- :func:`masked_mean`: each sample's mean over its own frames (the masks' mean fill);
- :func:`triangles`: per-sample (VTLP-warped) mel filterbanks, as the two filters each
  frequency feeds and their weights;
- :func:`apply_masks`: SpecAugment masks and the zero padding written in one pass;
- :func:`mel_log`: a log-mel's power, mel sums (each filter over its own few frequencies,
  not a dense product) and frame padding in one pass over the STFT; per-sample banks may
  come as :func:`triangles`' pairs (no dense [B, n_mels, n_freqs] bank per batch);
- :mod:`.cpu_mixing` (its own module): mixing at an SNR, rescaling to a power, a
  log-mel's per-sample centre padding and resampling, one pass per row;
- :func:`warm_up`: every kernel compiled (or loaded from numba's cache) in one call.

Linear interpolation along the time axis at per-sample positions (time warp, time
stretch) is two gathers and a lerp in torch. Each is a separate pass over the batch, and
torch's CPU gather is a scalar loop with an index load per element. Here it is one pass:
the positions' integer parts and fractions are read once per frame and used for four
channel rows at a time. Only each sample's own frames are computed; the padding is
written as zeros.

The arithmetic is the same as the torch path (:func:`..frames.interp_time`): the same
neighbours and fraction, and torch.lerp's formula (``a + w (b - a)`` below |w| = 0.5,
``b + (w - 1)(b - a)`` above), with the multiply-add fused as torch's vectorised lerp
fuses it: equal bit for bit where torch's lerp is vectorised (x86-64), within an ulp
elsewhere. The tests compare the two paths on every call shape the ops make.

A forked child process takes the torch path (GNU OpenMP is not fork-safe; exec'd
processes start afresh). Under numba's workqueue layer (when neither omp nor tbb loads) calls from
several threads take a lock.

numba compiles the kernels on first use in a process (cached on disk after that).
Without numba (or with ``SPECSTREAM_NUMBA=0``) :func:`available` is false and callers
use the torch path; on CUDA the torch path is used always.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Optional

import numpy as np
import torch

IIR_MAX_TAPS = 4  # iir_rows: filters of order <= 3 (biquads, the pink and brown noise filters)
_lock = threading.Lock()
_kernel = None  # the compiled kernels (a dict by name), False when numba is unavailable or disabled
_serial: Optional[threading.Lock] = None  # held around each call when the threading layer is not thread-safe
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _forked())


def _compile():
    """The kernels by short name (compiled on first call, or loaded from numba's cache)."""
    from . import _numba_hash as h
    from . import _numba_iir as i
    from . import _numba_kernels as k
    from . import _numba_mixing as m

    return {"interp": k.interp_rows, "iir": i.iir_rows, "stream": h.stream_uniform_rows,
            "keyed": h.keyed_uniform_rows, "keyed_block": h.keyed_block_rows, "prefix": h.prefix_rows,
            "bands": k.band_rows, "mean": k.mean_rows,
            "triangles": k.triangle_pair_rows, "mask": k.mask_rows, "mel": k.mel_rows,
            "mel_pairs": k.mel_pair_rows,
            "snr_mix": m.snr_mix_rows, "segment_mix": m.segment_mix_rows, "level": m.level_rows,
            "center_pad": m.center_pad_rows, "resample_groups": m.resample_group_rows}


def _use_omp_layer() -> None:
    """Run numba's parallel loops on its OpenMP layer (GNU OpenMP), chosen over numba's
    default workqueue or tbb pools, which compete with torch's OpenMP threads (they spin
    for milliseconds after each parallel region) and gain nothing. With torch's pip wheel
    this is still a second runtime: numba's omppool links the system's libgomp.so.1.0.0,
    torch its bundled libgomp.so.1, so the process holds two OpenMP thread pools.
    Preloading the system libgomp (LD_PRELOAD) gives both one pool; on this project's
    2-core benchmark machine that made no difference above its noise. Left alone when the
    user chose a layer (NUMBA_THREADING_LAYER, or numba.config in code)."""
    import numba

    if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "omp"


def _forked() -> None:
    """In a forked child: the torch path. GNU OpenMP is not fork-safe (the parent's
    OpenMP threads do not exist in the child), and numba's omp layer ends a child that
    launches a parallel loop after its parent did."""
    global _kernel, _serial
    _kernel, _serial = False, None


def available() -> bool:
    """True when the numba kernels can be used (numba importable, not disabled by
    ``SPECSTREAM_NUMBA=0``)."""
    global _kernel
    if _kernel is None:
        with _lock:
            if _kernel is None:
                if os.environ.get("SPECSTREAM_NUMBA", "1") == "0":
                    _kernel = False
                else:
                    try:
                        _use_omp_layer()
                        _kernel = _compile()
                    except ImportError:
                        _kernel = False
                    else:
                        _kernel = _first_launch(_kernel)
                        if _kernel is not False:
                            _serialise_unless_threadsafe()
    return _kernel is not False


def _serialise_unless_threadsafe() -> None:
    """numba's workqueue layer (the last resort, when neither omp nor tbb loads) aborts the
    process when two threads launch at once: calls then take a lock."""
    global _serial
    import numba

    _serial = None if numba.threading_layer() in ("omp", "tbb") else threading.Lock()


def _first_launch(kernel):
    """One tiny call, which loads numba's threading layer: the one chosen (omp unless the
    user set another), else numba's default, else no kernel (the torch path)."""
    import numba

    x = np.zeros((1, 1, 2), np.float32)
    args = (x, np.zeros((1, 2), np.int64), np.zeros((1, 2), np.float32), np.ones(1, np.int64), x.copy(), 1)
    threads = torch.get_num_threads()
    try:
        try:
            kernel["interp"](*args)
        except (ValueError, RuntimeError):  # that layer's library is missing: numba's own choice
            numba.config.THREADING_LAYER = "default"
            kernel["interp"](*args)
        return kernel
    except (ValueError, RuntimeError):
        return False
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def warm_up() -> bool:
    """Call every kernel once on tiny inputs of the types the augmentation and the log-mel
    hand them, so that each is compiled (or loaded from numba's on-disk cache) now. A
    process that starts many worker processes at once (a test session, a driver before its
    Ray workers on the same machine) can call it first: the workers then load the kernels
    from the cache instead of each compiling them. False when the kernels are off."""
    if not available():
        return False
    from .cpu_mixing import center_pad, level, resample_groups, segment_mix, snr_mix

    x, n = torch.randn(5, 40), torch.tensor([40, 3, 0, 9, 40])
    iir_rows(x, torch.tensor([1.0, 0.5]), torch.tensor([1.0, -0.5]), n)
    iir_rows(x, torch.tensor([1.0, 0.5]), torch.tensor([1.0, -0.5]), rows=torch.tensor([1, 3]), out=x.clone())
    interp_time(torch.randn(2, 3, 8), torch.zeros(2, 8, dtype=torch.int64), torch.zeros(2, 8), torch.tensor([8, 4]), 8)
    apply_masks(torch.randn(2, 3, 10), torch.tensor([10, 5]), torch.zeros(2, 3, dtype=torch.bool),
                torch.zeros(2, 10, dtype=torch.bool), torch.zeros(2))
    stream_uniform(torch.arange(3), 10)
    stream_uniform(torch.arange(3), 10, signed=True)
    keyed_uniform(torch.arange(3), 5, 2)
    keyed_block(np.arange(3, dtype=np.int64), 2, 2, 2)
    keyed_prefix(1, torch.arange(3), torch.arange(3))
    bands(torch.zeros(2, 1, dtype=torch.int64), torch.ones(2, 1, dtype=torch.int64), torch.ones(2, 1, dtype=torch.bool), 5)
    masked_mean(torch.randn(2, 3, 4), torch.tensor([4, 1]))
    spec = torch.stft(torch.randn(2, 800), 400, 160, window=torch.hann_window(400), center=False, return_complex=True)
    mel_log(spec, torch.rand(1, 4, 201), torch.tensor([3, 2]), 2.0, 1e-6, False)
    first, weights = triangles(torch.rand(2, 201).double(), torch.linspace(0, 1, 6).double(), 4, False)
    mel_log(spec, None, torch.tensor([3, 2]), 2.0, 1e-6, False, pairs=(first, weights, 4))
    snr_mix(x, torch.randn(5, 40), n, torch.zeros(5))
    level(x, x, n, True)
    segment_mix(x, n, torch.randn(100), torch.zeros(5, 1, dtype=torch.int64), torch.ones(5, dtype=torch.int64),
                torch.zeros(5))
    center_pad(x, n, 4, True)
    resample_groups(x, n[:3], torch.tensor([0, 2, 4]), torch.tensor([0, 1, 0]),
                    [(torch.rand(3, 8), 2, 2, 3), (torch.ones(1, 1), 0, 1, 1)], torch.empty(5, 60))
    return True


@contextlib.contextmanager
def torch_path():
    """Within the block :func:`available` is false, so callers take the torch path (tests
    and benchmarks compare the two). Not for use while other threads augment."""
    global _kernel
    available()
    saved, _kernel = _kernel, False
    try:
        yield
    finally:
        _kernel = saved


def interp_time(x: torch.Tensor, lo: torch.Tensor, frac: torch.Tensor, n: torch.Tensor,
                T_out: int) -> torch.Tensor:
    """[B, C, T_out]: x [B, C, T] (contiguous CPU float) interpolated at lo + frac (lo
    int64 [B, T_out] in [0, T - 1], frac [B, T_out] in [0, 1) of x's dtype, both
    contiguous) for the first n[b] frames of each row, 0 after. Requires :func:`available`.
    Runs on as many threads as torch's intra-op setting."""
    B, C, T = x.shape
    out = torch.empty((B, C, T_out), dtype=x.dtype)
    if out.numel() == 0:
        return out
    nn = np.ascontiguousarray(n.numpy().clip(0, T_out), dtype=np.int64)
    _launch("interp", x.numpy(), lo.numpy(), frac.numpy(), nn, out.numpy(), (C + 3) // 4)
    return out


def _launch(name: str, *args) -> None:
    """Run kernel ``name`` on as many threads as torch's intra-op setting (under the lock
    when the threading layer needs one)."""
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    if _serial is None:
        _kernel[name](*args)
    else:
        with _serial:
            _kernel[name](*args)


def iir_rows(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor, n: Optional[torch.Tensor] = None,
             rows: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Rows of x [R, N] (contiguous CPU float) filtered by b / a (both [R, K], or both one
    shared [K]; K <= 4, any scale of a[0]) from rest, in float64 state: causal over the whole row, or
    with ``n`` [R] zero-phase (forward over each row's first n[r] samples, then backward
    from its own end; 0 after). With ``rows`` (distinct int64 indices) only those rows of
    x are filtered, b / a and n given per listed row, and written to the same rows of
    ``out`` (x's shape and dtype, contiguous; x itself for in place), the other rows of out
    left as they are. Requires :func:`available`."""
    R, N = x.shape
    if not x.is_contiguous() and out is not x:  # the kernel finds row r at r * N (an in-place x must be contiguous)
        x = x.contiguous()
    if rows is None:
        out = torch.empty_like(x)
        sel = np.arange(R, dtype=np.int64)
    else:
        sel = _per_row(rows, torch.int64, rows.numel(), "rows")
        if out is None or out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous():
            raise ValueError("iir_rows: rows need out, contiguous, of x's shape and dtype")
        if not _distinct_below(sel, R):
            raise ValueError(f"iir_rows: rows must be distinct indices below {R}")
    if out.numel() == 0 or sel.size == 0:
        return out
    a, b = (t.detach().numpy().astype(np.float64, copy=False) if t.dtype in (torch.float32, torch.float64)
            else t.detach().to(torch.float64).numpy() for t in (a, b))
    b = b / a[..., :1]
    a = a / a[..., :1]
    if max(a.shape[-1], b.shape[-1]) > IIR_MAX_TAPS:
        raise ValueError(f"iir_rows: at most {IIR_MAX_TAPS} coefficients (order 3)")
    coef = np.zeros(a.shape[:-1] + (7,), np.float64)
    coef[..., : b.shape[-1]] = b
    coef[..., 4:3 + a.shape[-1]] = a[..., 1:]
    coef = np.ascontiguousarray(np.broadcast_to(coef, (sel.size, 7)))
    nn = np.zeros(sel.size, np.int64) if n is None else _per_row(n, torch.int64, sel.size, "n")
    _launch("iir", x.numpy(), coef, nn, n is not None, sel, out.numpy())
    return out


def stream_uniform(keys: torch.Tensor, n: int, signed: bool = False) -> torch.Tensor:
    """[B, n] float32: :func:`..random.stream_uniform` of int64 ``keys`` [B] (CPU), the
    same values in one pass; ``signed``: 2 u - 1 clamped to [-1 + 1e-6, 1 - 1e-6] (the
    same float32 values as torch's ``mul_(2).sub_(1).clamp_(...)``). Requires :func:`available`."""
    out = torch.empty((keys.shape[0], n), dtype=torch.float32)
    if out.numel():
        _launch("stream", np.ascontiguousarray(keys.numpy(), dtype=np.int64), bool(signed), out.numpy())
    return out


def keyed_uniform(prefix: torch.Tensor, op: int, n: int) -> torch.Tensor:
    """[B, n] float32: :func:`..random.uniform`'s values for the hash states ``prefix`` [B]
    (int64, CPU) at op slot ``op``, in one call (the parameter draws: a few values per
    sample, where numpy's per-operation overhead was most of the cost). Requires
    :func:`available`."""
    return torch.from_numpy(keyed_uniform_array(np.ascontiguousarray(prefix.numpy(), dtype=np.int64), op, n))


def keyed_block(prefix: np.ndarray, slots: int, draws: int, n: int) -> np.ndarray:
    """[B, slots, draws, n] float32: :func:`keyed_uniform_array`'s values for op words
    s 64 + d (s < slots, d < draws), their first n each, in one call. Requires
    :func:`available`."""
    out = np.empty((prefix.shape[0], slots, draws, n), np.float32)
    if out.size:
        _kernel["keyed_block"](prefix, out)
    return out


def keyed_uniform_array(prefix: np.ndarray, op: int, n: int) -> np.ndarray:
    """:func:`keyed_uniform`'s values as a numpy array, for a contiguous int64 array
    ``prefix`` [B]."""
    out = np.empty((prefix.shape[0], n), np.float32)
    if out.size:
        _kernel["keyed"](prefix, int(op) & 0xFFFFFFFF, out)
    return out


def keyed_prefix(seed: int, epochs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[B] int64: :func:`..random.keyed_prefix`'s hash states for int64 ``epochs`` and
    ``ids`` [B] (CPU), in one call. Requires :func:`available`."""
    out = np.empty(ids.shape[0], np.int64)
    if out.size:
        _kernel["prefix"](int(seed), np.ascontiguousarray(epochs.numpy(), dtype=np.int64),
                          np.ascontiguousarray(ids.numpy(), dtype=np.int64), out)
    return torch.from_numpy(out)


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B]: :func:`..frames.masked_mean` of x [B, F, T] (contiguous CPU float32 / float64),
    in one pass. Requires :func:`available`."""
    out = np.empty(x.shape[0], np.float64)
    if out.size:
        _launch("mean", x.numpy(), _per_row(lengths, torch.int64, x.shape[0], "lengths"), out)
    return torch.from_numpy(out).to(x.dtype)


def bands(starts: torch.Tensor, widths: torch.Tensor, on: torch.Tensor, size: int) -> torch.Tensor:
    """[B, size] bool: :func:`..frames.bands` (CPU int64 starts / widths, bool on, [B, M]),
    in one call. Requires :func:`available`."""
    out = np.empty((starts.shape[0], size), dtype=np.bool_)
    if out.size:
        _kernel["bands"](np.ascontiguousarray(starts.numpy(), dtype=np.int64),
                         np.ascontiguousarray(widths.numpy(), dtype=np.int64),
                         np.ascontiguousarray(on.numpy(), dtype=np.bool_), out)
    return torch.from_numpy(out)


def triangles(warped: torch.Tensor, f_pts: torch.Tensor, n_mels: int, slaney: bool):
    """(first [B, n_freqs] int64, weights [B, n_freqs, 2] float32): the filter pairs of
    :func:`..mel._triangles` (float64 ``warped`` [B, n_freqs] and knots ``f_pts``
    [n_mels + 2], CPU), the same values in one pass. Requires :func:`available`."""
    B, n = warped.shape
    first = torch.empty((B, n), dtype=torch.int64)
    weights = torch.empty((B, n, 2), dtype=torch.float32)
    if first.numel():
        _launch("triangles", np.ascontiguousarray(warped.numpy(), dtype=np.float64),
                np.ascontiguousarray(f_pts.numpy(), dtype=np.float64), int(n_mels), bool(slaney), first.numpy(),
                weights.numpy())
    return first, weights


def apply_masks(x: torch.Tensor, lengths: torch.Tensor, fmask: torch.Tensor, tmask: torch.Tensor,
                fill: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """[B, F, T]: x (contiguous CPU float) with bins ``fmask`` [B, F] and frames ``tmask``
    [B, T] (bool) set to ``fill`` [B] within each sample's length, 0 past it; into a new
    tensor, or with ``inplace`` into x (only the masked cells and the padding are written).
    Requires :func:`available`."""
    out = x if inplace else torch.empty_like(x)
    if out.numel():
        _launch("mask", x.numpy(), np.ascontiguousarray(lengths.numpy(), dtype=np.int64),
                np.ascontiguousarray(fmask.numpy()), np.ascontiguousarray(tmask.numpy()),
                np.ascontiguousarray(fill.to(x.dtype).numpy()), bool(inplace), out.numpy())
    return out


def mel_log(spec: torch.Tensor, fbanks: torch.Tensor, frames: torch.Tensor, power: float, offset: float,
            clamp: bool, pairs: Optional[tuple] = None) -> torch.Tensor:
    """[B, M, T] float32: log(fbanks @ |spec|**power + offset) (log(max(., offset)) with
    ``clamp``) for each sample's first ``frames`` [B] frames, 0 after; ``spec`` [B, F, T]
    complex64 (an STFT, CPU), ``fbanks`` [1 or B, M, F] float32, or ``fbanks`` None and
    ``pairs`` = (first [B, F] int64, weights [B, F, 2] float32, M): per-sample banks as
    :func:`triangles` gives them (the same sums as their dense banks, bit for bit). The
    kernel writes the sums (1.0 in the padding), torch's vectorised log runs in place.
    Requires :func:`available`."""
    B, F, T = spec.shape
    frames = _per_row(frames, torch.int64, B, "mel_log: frames")
    if pairs is not None:
        first, weights, M = pairs
        if first.shape != (B, F) or weights.shape != (B, F, 2):
            raise ValueError(f"mel_log: filter pairs {tuple(first.shape)} / {tuple(weights.shape)} for an STFT of "
                             f"{B} rows and {F} frequencies (need [{B}, {F}] / [{B}, {F}, 2])")
        name, banks = "mel_pairs", (np.ascontiguousarray(first.numpy(), dtype=np.int64),
                                    np.ascontiguousarray(weights.numpy(), dtype=np.float32))
    else:
        if fbanks.dim() != 3 or fbanks.shape[0] not in (1, B) or fbanks.shape[-1] != F:
            raise ValueError(f"mel_log: filterbanks {tuple(fbanks.shape)} for an STFT of {B} rows and {F} "
                             f"frequencies (need [1 or {B}, n_mels, {F}])")
        name, banks, M = "mel", (np.ascontiguousarray(fbanks.numpy(), dtype=np.float32),), fbanks.shape[1]
    out = torch.empty((B, int(M), T), dtype=torch.float32)
    if out.numel():
        _launch(name, torch.view_as_real(spec).numpy(), *banks, frames, float(power) / 2.0, float(offset),
                bool(clamp), out.numpy())
    return out.log_()


def _distinct_below(sel: np.ndarray, n: int) -> bool:
    """Whether the int64 indices ``sel`` are distinct and within [0, n) (the kernels that
    take a list of rows read and write them without bounds checks, in parallel)."""
    if not sel.size:
        return True
    if sel.min() < 0 or sel.max() >= n:
        return False
    seen = np.zeros(n, np.bool_)
    seen[sel] = True
    return int(np.count_nonzero(seen)) == sel.size


def _per_row(t, dtype: torch.dtype, n: int, what: str) -> np.ndarray:
    """[n] contiguous numpy values of t (one per row, or one for all: broadcast as the torch
    paths broadcast it); anything else is refused, since the kernels read without bounds
    checks."""
    if isinstance(t, torch.Tensor) and t.is_cpu and t.dtype == dtype and not t.requires_grad:
        a = t.numpy().reshape(-1)  # the common case, without a torch call per step
    else:
        a = torch.as_tensor(t).detach().to(dtype).reshape(-1).numpy()
    if a.size not in (1, n):
        raise ValueError(f"{what}: {a.size} values for {n} rows")
    return np.ascontiguousarray(a) if a.size == n else np.full(n, a[0], dtype=a.dtype)
