"""Fused CPU kernels (numba) for the operations torch has no fast CPU kernel for.

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

numba compiles the kernel on its first call in a process (cached on disk after that).
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

_lock = threading.Lock()
_kernel = None  # the compiled kernel, False when numba is unavailable or disabled
_serial: Optional[threading.Lock] = None  # held around each call when the threading layer is not thread-safe
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _forked())


def _compile():
    import numba

    @numba.njit(inline="always")
    def lerp(a, e, w):
        """torch.lerp: a + w (e - a) below |w| = 0.5, e + (w - 1)(e - a) above."""
        return a + w * (e - a) if abs(w) < 0.5 else e + (w - 1) * (e - a)

    def interp_rows(x, lo, frac, n, out, groups):
        """out[b, c, t] = lerp(x[b, c, lo], x[b, c, min(lo + 1, T - 1)], frac) for t < n[b],
        0 after; in parallel over units (one sample's ``groups``-th block of up to 4
        channels, whose rows share each frame's position)."""
        B, C, T = x.shape
        T_out = out.shape[2]
        for u in numba.prange(B * groups):
            b = u // groups
            c0 = (u % groups) * 4
            nb = n[b]
            lob = lo[b]
            fb = frac[b]
            if c0 + 4 <= C:
                x0, x1, x2, x3 = x[b, c0], x[b, c0 + 1], x[b, c0 + 2], x[b, c0 + 3]
                o0, o1, o2, o3 = out[b, c0], out[b, c0 + 1], out[b, c0 + 2], out[b, c0 + 3]
                for t in range(nb):
                    i = lob[t]
                    j = i + 1 if i + 1 < T else T - 1
                    w = fb[t]
                    o0[t] = lerp(x0[i], x0[j], w)
                    o1[t] = lerp(x1[i], x1[j], w)
                    o2[t] = lerp(x2[i], x2[j], w)
                    o3[t] = lerp(x3[i], x3[j], w)
                for t in range(nb, T_out):
                    o0[t] = 0
                    o1[t] = 0
                    o2[t] = 0
                    o3[t] = 0
            else:  # the last channels of a C that is not a multiple of 4
                for c in range(c0, C):
                    xr, orow = x[b, c], out[b, c]
                    for t in range(nb):
                        i = lob[t]
                        orow[t] = lerp(xr[i], xr[i + 1 if i + 1 < T else T - 1], fb[t])
                    for t in range(nb, T_out):
                        orow[t] = 0

    # "contract" lets LLVM fuse each multiply-add into one FMA, as torch's vectorised lerp
    # does (vec::fmadd); nothing else of fast-math is allowed.
    kw = dict(parallel=True, nogil=True, boundscheck=False, fastmath={"contract"})
    try:
        return numba.njit(cache=True, **kw)(interp_rows)
    except RuntimeError:  # no writable cache directory: compile in every process
        return numba.njit(**kw)(interp_rows)


def _use_torch_openmp() -> None:
    """Run numba's parallel loops on the OpenMP runtime torch already has loaded (one
    libgomp per process): its threads then take the kernel's loop straight after torch's
    own parallel work. A separate pool (numba's default workqueue or tbb) competes with
    torch's OpenMP threads, which spin for milliseconds after each parallel region, and
    gains nothing. Left alone when the user chose a layer (NUMBA_THREADING_LAYER, or
    numba.config in code)."""
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
                        _use_torch_openmp()
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
            kernel(*args)
        except (ValueError, RuntimeError):  # that layer's library is missing: numba's own choice
            numba.config.THREADING_LAYER = "default"
            kernel(*args)
        return kernel
    except (ValueError, RuntimeError):
        return False
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


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
    import numba

    B, C, T = x.shape
    out = torch.empty((B, C, T_out), dtype=x.dtype)
    if out.numel() == 0:
        return out
    nn = np.ascontiguousarray(n.numpy().clip(0, T_out), dtype=np.int64)
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    args = (x.numpy(), lo.numpy(), frac.numpy(), nn, out.numpy(), (C + 3) // 4)
    if _serial is None:
        _kernel(*args)
    else:
        with _serial:
            _kernel(*args)
    return out
