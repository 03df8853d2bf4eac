"""Fused CPU kernels (numba) for the operations torch has no fast CPU kernel for.

- :func:`interp_time`: interpolation along time at per-sample positions (time warp, stretch);
- :func:`iir_rows`: IIR filtering of rows with per-row coefficients, causal or zero-phase
  from each row's own end (band-limiting filters, coloured noise): torch runs a recursion as
  one small launch per sample or (torchaudio) a scalar loop after several full-size passes;
- :func:`stream_uniform`, :func:`keyed_uniform`, :func:`keyed_prefix`: the keyed counter
  hash of element-wise noise fields (one pass instead of a dozen numpy passes over [B, N])
  and of the parameter draws (one call instead of a dozen small numpy operations);
- :func:`bands`: the union of per-sample intervals (mask bands) as a [B, size] row mask;
- :func:`triangles`: per-sample (VTLP-warped) mel filterbanks, two weights per frequency;
- :func:`apply_masks`: SpecAugment masks and the zero padding written in one pass.

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

    @numba.njit(inline="always")
    def df2t4(v0, v1, v2, v3, p0, p1, p2, p3, q0, q1, q2, q3, s0, s1, s2, s3, c0, c1, c2, c3):
        """One step of four filters of order <= 3 (transposed direct form II) on four rows:
        inputs v, states (p, q, s) of the rows, coefficients c = (b0, b1, b2, b3, a1, a2, a3)
        per row; returns the outputs and the new states. The four recursions are independent
        chains the CPU overlaps (one row's recursion alone waits on each step's latency)."""
        y0, y1, y2, y3 = c0[0] * v0 + p0, c1[0] * v1 + p1, c2[0] * v2 + p2, c3[0] * v3 + p3
        p0, p1 = c0[1] * v0 - c0[4] * y0 + q0, c1[1] * v1 - c1[4] * y1 + q1
        p2, p3 = c2[1] * v2 - c2[4] * y2 + q2, c3[1] * v3 - c3[4] * y3 + q3
        q0, q1 = c0[2] * v0 - c0[5] * y0 + s0, c1[2] * v1 - c1[5] * y1 + s1
        q2, q3 = c2[2] * v2 - c2[5] * y2 + s2, c3[2] * v3 - c3[5] * y3 + s3
        s0, s1 = c0[3] * v0 - c0[6] * y0, c1[3] * v1 - c1[6] * y1
        s2, s3 = c2[3] * v2 - c2[6] * y2, c3[3] * v3 - c3[6] * y3
        return y0, y1, y2, y3, p0, p1, p2, p3, q0, q1, q2, q3, s0, s1, s2, s3

    def iir_rows(x, coef, n, zero_phase, out):
        """Each row of x [R, N] through its filter coef[r] = (b0..b3, a1..a3) (order <= 3,
        a0 = 1) from rest, in float64. ``zero_phase``: forward over the row's first n[r]
        samples, then backward from its own end (filtfilt), 0 after; else causal over the
        whole row. Four rows per unit of work, through a private float64 scratch."""
        R, N = x.shape
        for u in numba.prange((R + 3) // 4):
            r0 = 4 * u
            r1, r2, r3 = min(r0 + 1, R - 1), min(r0 + 2, R - 1), min(r0 + 3, R - 1)  # repeats: not stored
            c0, c1, c2, c3 = coef[r0], coef[r1], coef[r2], coef[r3]
            x0, x1, x2, x3 = x[r0], x[r1], x[r2], x[r3]
            m0 = m1 = m2 = m3 = N
            if zero_phase:
                m0, m1 = min(max(n[r0], 0), N), min(max(n[r1], 0), N)
                m2, m3 = min(max(n[r2], 0), N), min(max(n[r3], 0), N)
            m = max(max(m0, m1), max(m2, m3))
            tmp = np.empty((4, m), np.float64)
            p0 = p1 = p2 = p3 = q0 = q1 = q2 = q3 = s0 = s1 = s2 = s3 = 0.0
            for t in range(m):  # forward: past its own length a row's values are not used
                y0, y1, y2, y3, p0, p1, p2, p3, q0, q1, q2, q3, s0, s1, s2, s3 = df2t4(
                    np.float64(x0[t]), np.float64(x1[t]), np.float64(x2[t]), np.float64(x3[t]),
                    p0, p1, p2, p3, q0, q1, q2, q3, s0, s1, s2, s3, c0, c1, c2, c3)
                tmp[0, t], tmp[1, t], tmp[2, t], tmp[3, t] = y0, y1, y2, y3
            if zero_phase:
                # backward from each row's own end: a filter at rest fed zeros stays at rest,
                # so a row starts when t reaches its length
                p0 = p1 = p2 = p3 = q0 = q1 = q2 = q3 = s0 = s1 = s2 = s3 = 0.0
                for i in range(m):
                    t = m - 1 - i
                    y0, y1, y2, y3, p0, p1, p2, p3, q0, q1, q2, q3, s0, s1, s2, s3 = df2t4(
                        tmp[0, t] if t < m0 else 0.0, tmp[1, t] if t < m1 else 0.0,
                        tmp[2, t] if t < m2 else 0.0, tmp[3, t] if t < m3 else 0.0,
                        p0, p1, p2, p3, q0, q1, q2, q3, s0, s1, s2, s3, c0, c1, c2, c3)
                    tmp[0, t], tmp[1, t], tmp[2, t], tmp[3, t] = y0, y1, y2, y3
            for j in range(min(4, R - r0)):
                mj = (m0, m1, m2, m3)[j]
                orow = out[r0 + j]
                for t in range(mj):
                    orow[t] = tmp[j, t]
                for t in range(mj, N):
                    orow[t] = 0

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

    def stream_uniform_rows(keys, out):
        """out[b, t] = unit_float(hash32([keys[b], t])), in uint64 arithmetic kept to 32
        bits (the products wrap as numpy's uint32 ones do)."""
        B, n = out.shape
        for b in numba.prange(B):
            h = fmix32(np.uint64(keys[b] & 0xFFFFFFFF) ^ np.uint64(0x9E3779B9))
            orow = out[b]
            for t in range(n):
                orow[t] = unit(mix(h, np.uint64(t)))

    def keyed_uniform_rows(prefix, op, out):
        """out[b, t] = unit_float(hash32([op, t], state=prefix[b])): a draw's uniforms."""
        B, n = out.shape
        for b in range(B):
            h = mix(np.uint64(prefix[b] & 0xFFFFFFFF), np.uint64(op & 0xFFFFFFFF))
            for t in range(n):
                out[b, t] = unit(mix(h, np.uint64(t)))

    def prefix_rows(seed, epochs, ids, out):
        """out[b] = hash32([seed, epochs[b], ids[b] & 0xFFFFFFFF, ids[b] >> 32]): the hash
        state every draw of a sample starts from."""
        h0 = fmix32(np.uint64(seed & 0xFFFFFFFF) ^ np.uint64(0x9E3779B9))
        for b in range(out.shape[0]):
            h = mix(h0, np.uint64(epochs[b] & 0xFFFFFFFF))
            h = mix(h, np.uint64(ids[b] & 0xFFFFFFFF))
            out[b] = mix(h, np.uint64((ids[b] >> 32) & 0xFFFFFFFF))

    def band_rows(starts, widths, on, out):
        """out[b, t] = t in the union of [starts[b, m], starts[b, m] + widths[b, m]) over
        the m with on[b, m] (clipped to the row)."""
        B, size = out.shape
        for b in range(B):
            for t in range(size):
                out[b, t] = False
            for m in range(starts.shape[1]):
                if on[b, m]:
                    lo = min(max(starts[b, m], 0), size)
                    hi = min(max(starts[b, m] + widths[b, m], 0), size)
                    for t in range(lo, hi):
                        out[b, t] = True

    def triangle_rows(warped, f_pts, slaney, out):
        """out[b, m, f] (zeros on entry): the weight of mel filter m at warped frequency
        warped[b, f], max(0, min((w - f_m) / (f_m+1 - f_m), (f_m+2 - w) / (f_m+2 - f_m+1)))
        (times 2 / (f_m+2 - f_m) with ``slaney``), in float64, for the two filters of the
        knot interval [f_k, f_k+1) holding w (m = k - 1 and k; the others are 0)."""
        B, n_freqs = warped.shape
        n_mels = out.shape[1]
        K = f_pts.shape[0]
        for b in numba.prange(B):
            for f in range(n_freqs):
                w = warped[b, f]
                k = np.searchsorted(f_pts, w, side="right") - 1
                for m in (k - 1, k):
                    if m < 0 or m >= n_mels or m + 2 >= K:
                        continue
                    down = -(f_pts[m] - w) / (f_pts[m + 1] - f_pts[m])
                    up = (f_pts[m + 2] - w) / (f_pts[m + 2] - f_pts[m + 1])
                    v = max(min(down, up), 0.0)
                    if slaney:
                        v = v * (2.0 / (f_pts[m + 2] - f_pts[m]))
                    out[b, m, f] = v

    def mask_rows(x, lengths, fmask, tmask, fill, out):
        """out[b, f, t] = 0 past the length, fill[b] in masked bins and frames, else x."""
        B, F, T = x.shape
        for u in numba.prange(B * F):
            b = u // F
            f = u % F
            n = min(max(lengths[b], 0), T)
            fb = fill[b]
            orow = out[b, f]
            if fmask[b, f]:
                for t in range(n):
                    orow[t] = fb
            else:  # a straight copy (vectorised), then the masked frames
                xr, tb = x[b, f], tmask[b]
                for t in range(n):
                    orow[t] = xr[t]
                for t in range(n):
                    if tb[t]:
                        orow[t] = fb
            for t in range(n, T):
                orow[t] = 0

    # "contract" lets LLVM fuse each multiply-add into one FMA, as torch's vectorised lerp
    # does (vec::fmadd); nothing else of fast-math is allowed. The other kernels do no
    # floating-point arithmetic that contraction could change, except the IIR recursion,
    # which is compiled without it.
    kw = dict(nogil=True, boundscheck=False)
    kernels = {}
    par = dict(parallel=True)
    for name, fn, extra in (("interp", interp_rows, dict(par, fastmath={"contract"})), ("iir", iir_rows, par),
                            ("stream", stream_uniform_rows, par), ("mask", mask_rows, par),
                            ("keyed", keyed_uniform_rows, {}), ("prefix", prefix_rows, {}),
                            ("bands", band_rows, {}),  # the last three: small, one thread
                            ("triangles", triangle_rows, par)):
        try:
            kernels[name] = numba.njit(cache=True, **kw, **extra)(fn)
        except RuntimeError:  # no writable cache directory: compile in every process
            kernels[name] = numba.njit(**kw, **extra)(fn)
    return kernels


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


def iir_rows(x: torch.Tensor, b: torch.Tensor, a: torch.Tensor, n: Optional[torch.Tensor] = None
             ) -> torch.Tensor:
    """Rows of x [R, N] (contiguous CPU float) filtered by b / a ([R, K] or one shared [K],
    K <= 4, any scale of a[0]) from rest, in float64 state: causal over the whole row, or
    with ``n`` [R] zero-phase (forward over each row's first n[r] samples, then backward
    from its own end; 0 after). Requires :func:`available`."""
    R, N = x.shape
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    a = a.to(torch.float64)
    b = b.to(torch.float64) / a[..., :1]
    a = a / a[..., :1]
    if max(a.shape[-1], b.shape[-1]) > IIR_MAX_TAPS:
        raise ValueError(f"iir_rows: at most {IIR_MAX_TAPS} coefficients (order 3)")
    pad = torch.nn.functional.pad
    coef = torch.cat([pad(b, (0, 4 - b.shape[-1])), pad(a[..., 1:], (0, 4 - a.shape[-1]))], -1)
    coef = coef.expand(R, 7).contiguous()
    nn = np.zeros(R, np.int64) if n is None else np.ascontiguousarray(n.numpy(), dtype=np.int64)
    _launch("iir", x.numpy(), coef.numpy(), nn, n is not None, out.numpy())
    return out


def stream_uniform(keys: torch.Tensor, n: int) -> torch.Tensor:
    """[B, n] float32: :func:`..random.stream_uniform` of int64 ``keys`` [B] (CPU), the
    same values in one pass. Requires :func:`available`."""
    out = torch.empty((keys.shape[0], n), dtype=torch.float32)
    if out.numel():
        _launch("stream", np.ascontiguousarray(keys.numpy(), dtype=np.int64), out.numpy())
    return out


def keyed_uniform(prefix: torch.Tensor, op: int, n: int) -> torch.Tensor:
    """[B, n] float32: :func:`..random.uniform`'s values for the hash states ``prefix`` [B]
    (int64, CPU) at op slot ``op``, in one call (the parameter draws: a few values per
    sample, where numpy's per-operation overhead was most of the cost). Requires
    :func:`available`."""
    out = torch.empty((prefix.shape[0], n), dtype=torch.float32)
    if out.numel():
        _kernel["keyed"](np.ascontiguousarray(prefix.numpy(), dtype=np.int64), int(op), out.numpy())
    return out


def keyed_prefix(seed: int, epochs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """[B] int64: :func:`..random.keyed_prefix`'s hash states for int64 ``epochs`` and
    ``ids`` [B] (CPU), in one call. Requires :func:`available`."""
    out = np.empty(ids.shape[0], np.int64)
    if out.size:
        _kernel["prefix"](int(seed), np.ascontiguousarray(epochs.numpy(), dtype=np.int64),
                          np.ascontiguousarray(ids.numpy(), dtype=np.int64), out)
    return torch.from_numpy(out)


def bands(starts: torch.Tensor, widths: torch.Tensor, on: torch.Tensor, size: int) -> torch.Tensor:
    """[B, size] bool: :func:`..frames.bands` (CPU int64 starts / widths, bool on, [B, M]),
    in one call. Requires :func:`available`."""
    out = torch.empty((starts.shape[0], size), dtype=torch.bool)
    if out.numel():
        _kernel["bands"](np.ascontiguousarray(starts.numpy(), dtype=np.int64),
                         np.ascontiguousarray(widths.numpy(), dtype=np.int64),
                         np.ascontiguousarray(on.numpy(), dtype=np.bool_), out.numpy())
    return out


def triangles(warped: torch.Tensor, f_pts: torch.Tensor, n_mels: int, slaney: bool) -> torch.Tensor:
    """[B, n_mels, n_freqs] float32: :func:`..mel._triangles` (float64 ``warped`` [B,
    n_freqs] and knots ``f_pts`` [n_mels + 2], CPU), the same values in one pass. Requires
    :func:`available`."""
    out = torch.zeros((warped.shape[0], n_mels, warped.shape[1]), dtype=torch.float32)
    if out.numel():
        _launch("triangles", np.ascontiguousarray(warped.numpy(), dtype=np.float64),
                np.ascontiguousarray(f_pts.numpy(), dtype=np.float64), bool(slaney), out.numpy())
    return out


def apply_masks(x: torch.Tensor, lengths: torch.Tensor, fmask: torch.Tensor, tmask: torch.Tensor,
                fill: torch.Tensor) -> torch.Tensor:
    """[B, F, T]: x (contiguous CPU float) with bins ``fmask`` [B, F] and frames ``tmask``
    [B, T] (bool) set to ``fill`` [B] within each sample's length, 0 past it. Requires
    :func:`available`."""
    out = torch.empty_like(x)
    if out.numel():
        _launch("mask", x.numpy(), np.ascontiguousarray(lengths.numpy(), dtype=np.int64),
                np.ascontiguousarray(fmask.numpy()), np.ascontiguousarray(tmask.numpy()),
                np.ascontiguousarray(fill.to(x.dtype).numpy()), out.numpy())
    return out
