"""The numba kernels behind :mod:`.cpu_kernels` (imported by it on first use, so that
numba is not imported where the kernels are off).

They are module-level functions, so numba's on-disk cache finds them again in a new
process (a kernel defined inside a function is compiled afresh in every process: one to
two seconds per kernel in each Ray worker). "contract" lets LLVM fuse each multiply-add of
the interpolation into one FMA, as torch's vectorised lerp does (vec::fmadd); nothing else
of fast-math is allowed anywhere, and the IIR recursion is compiled without it.

The IIR filters' kernel is in :mod:`._numba_iir`, the keyed hashes' in :mod:`._numba_hash`,
the waveform mixing and resampling kernels in :mod:`._numba_mixing`; each keeps its helpers
in its own file, since numba's cache notices a change to a kernel's own file only.
"""
import numba
import numpy as np


def _jit(**options):
    """numba.njit (no GIL, no bounds checks) with the on-disk cache, or without it where
    no cache directory is writable (then the kernel compiles in every process)."""
    def wrap(fn):
        try:
            return numba.njit(cache=True, nogil=True, boundscheck=False, **options)(fn)
        except RuntimeError:
            return numba.njit(nogil=True, boundscheck=False, **options)(fn)
    return wrap


@numba.njit(inline="always")
def lerp(a, e, w):
    """torch.lerp: a + w (e - a) below |w| = 0.5, e + (w - 1)(e - a) above."""
    return a + w * (e - a) if abs(w) < 0.5 else e + (w - 1) * (e - a)


@_jit(parallel=True, fastmath={"contract"})
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


@_jit()
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


@_jit(parallel=True)
def mean_rows(x, lengths, out):
    """out[b] = the sum of x[b] [F, T] over its first lengths[b] frames (at most T) divided by
    max(lengths[b] F, 1), as :func:`..frames.masked_mean`: each frame's bins summed in x's
    dtype, bin by bin in order (torch's x.sum(1) adds them in another order: the same to
    float roundoff), the frames' sums in float64. Frames past the length are not read."""
    B, F, T = x.shape
    for b in numba.prange(B):
        n = max(lengths[b], 0)
        L = min(n, T)
        xb = x[b]
        acc = np.zeros(L, x.dtype)
        for f in range(F):
            xr = xb[f]
            for t in range(L):
                acc[t] += xr[t]
        s = 0.0
        for t in range(L):
            s += np.float64(acc[t])
        out[b] = s / max(n * F, 1)


@_jit(parallel=True)
def triangle_pair_rows(warped, f_pts, n_mels, slaney, first, weights):
    """The two mel filters each warped frequency warped[b, f] feeds: those of the knot
    interval [f_k, f_k+1) holding it, first[b, f] = k - 1 (clamped to [-1, n_mels - 1])
    and k, with weights[b, f, 0] and [b, f, 1]: max(0, min((w - f_m) / (f_m+1 - f_m),
    (f_m+2 - w) / (f_m+2 - f_m+1))) (times 2 / (f_m+2 - f_m) with ``slaney``) in float64,
    0 for a filter outside [0, n_mels); every other filter's weight there is 0."""
    B, n_freqs = warped.shape
    K = f_pts.shape[0]
    for b in numba.prange(B):
        for f in range(n_freqs):
            w = warped[b, f]
            k = np.searchsorted(f_pts, w, side="right") - 1
            first[b, f] = min(max(k - 1, -1), n_mels - 1)
            for i in range(2):
                m = first[b, f] + i
                v = 0.0
                if m == k - 1 + i and 0 <= m < n_mels and m + 2 < K:
                    down = -(f_pts[m] - w) / (f_pts[m + 1] - f_pts[m])
                    up = (f_pts[m + 2] - w) / (f_pts[m + 2] - f_pts[m + 1])
                    v = max(min(down, up), 0.0)
                    if slaney:
                        v = v * (2.0 / (f_pts[m + 2] - f_pts[m]))
                weights[b, f, i] = v


@_jit(parallel=True)
def mask_rows(x, lengths, fmask, tmask, fill, inplace, out):
    """out[b, f, t] = 0 past the length, fill[b] in masked bins and frames, else x (with
    ``inplace``, out is x: only the masked cells and the padding are written). A sample's
    masked frames are found once, as runs, and each bin's row written run by run."""
    B, F, T = x.shape
    for b in numba.prange(B):
        n = min(max(lengths[b], 0), T)
        fb = fill[b]
        tb = tmask[b]
        lo = np.empty((n + 1) // 2, np.int64)
        hi = np.empty((n + 1) // 2, np.int64)
        runs = 0
        t = 0
        while t < n:
            if tb[t]:
                lo[runs] = t
                while t < n and tb[t]:
                    t += 1
                hi[runs] = t
                runs += 1
            else:
                t += 1
        for f in range(F):
            orow = out[b, f]
            if fmask[b, f]:
                for t in range(n):
                    orow[t] = fb
            else:
                if not inplace:  # a straight copy (vectorised), then the masked frames
                    xr = x[b, f]
                    for t in range(n):
                        orow[t] = xr[t]
                for i in range(runs):
                    for t in range(lo[i], hi[i]):
                        orow[t] = fb
            for t in range(n, T):
                orow[t] = 0


@numba.njit(inline="always")
def _span(row):
    """(first, one past the last) non-zero entry of a filterbank row ((0, 0) when none)."""
    first, last = row.shape[0], -1
    for f in range(row.shape[0]):
        if row[f] != 0.0:
            if first == row.shape[0]:
                first = f
            last = f
    return (first, last + 1) if last >= 0 else (0, 0)


@numba.njit(inline="always")
def _mel_out(v, offset, clamp):
    return max(v, offset) if clamp else v + offset


@numba.njit(inline="always")
def _mel_sample(spec, b, g, lo, hi, nf, half_power, offset, clamp, out):
    """mel_rows' work on sample b with its bank g [M, F] and the filters' spans [lo, hi)."""
    F, T = spec.shape[1], spec.shape[2]
    M = lo.shape[0]
    p = np.zeros((F, 4), np.float64)
    for t0 in range(0, nf, 4):
        nt = min(4, nf - t0)
        for j in range(nt):
            for f in range(F):
                re = np.float64(spec[b, f, t0 + j, 0])
                im = np.float64(spec[b, f, t0 + j, 1])
                p[f, j] = re * re + im * im
            if half_power != 1.0:
                for f in range(F):
                    p[f, j] = p[f, j] ** half_power
        for m in range(M):
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            for f in range(lo[m], hi[m]):
                w = np.float64(g[m, f])
                a0 += w * p[f, 0]
                a1 += w * p[f, 1]
                a2 += w * p[f, 2]
                a3 += w * p[f, 3]
            out[b, m, t0] = _mel_out(a0, offset, clamp)
            if nt > 1:
                out[b, m, t0 + 1] = _mel_out(a1, offset, clamp)
            if nt > 2:
                out[b, m, t0 + 2] = _mel_out(a2, offset, clamp)
            if nt > 3:
                out[b, m, t0 + 3] = _mel_out(a3, offset, clamp)
    for m in range(M):
        for t in range(nf, T):
            out[b, m, t] = 1.0


@_jit(parallel=True)
def mel_rows(spec, fb, frames, half_power, offset, clamp, out):
    """out[b, m, t] = sum_f fb[., m, f] |spec[b, f, t]|^(2 half_power) + offset (or
    max(sum, offset) with ``clamp``) for each sample's first frames[b] frames, 1.0 after (0
    once the caller takes the log in place): spec [B, F, T, 2] float32 (re, im), fb [1 or
    B, M, F] float32. Each filter sums over its own span of non-zero weights only (a mel
    triangle covers a few frequencies, so a frame costs about 2 F multiply-adds instead of
    the dense product's M F). Sums in float64 in frequency order; four frames at a time, as
    four independent sums whose additions overlap."""
    B, T = spec.shape[0], spec.shape[2]
    M = fb.shape[1]
    shared = fb.shape[0] == 1
    lo0 = np.zeros(M, np.int64)
    hi0 = np.zeros(M, np.int64)
    if shared:  # one bank: its spans once
        for m in range(M):
            lo0[m], hi0[m] = _span(fb[0, m])
    for b in numba.prange(B):
        g = fb[0] if shared else fb[b]
        lo, hi = lo0, hi0
        if not shared:
            lo = np.empty(M, np.int64)
            hi = np.empty(M, np.int64)
            for m in range(M):
                lo[m], hi[m] = _span(g[m])
        _mel_sample(spec, b, g, lo, hi, min(max(frames[b], 0), T), half_power, offset, clamp, out)


@_jit(parallel=True)
def mel_pair_rows(spec, first, weights, frames, half_power, offset, clamp, out):
    """:func:`mel_rows` with each sample's bank given as pairs (:func:`triangle_pair_rows`:
    frequency f feeds filter first[b, f] with weights[b, f, 0] and the next with
    weights[b, f, 1]; filters outside [0, M) are skipped): the sample's bank and spans are
    laid out in a private scratch from its 2 F pairs, instead of being read from a dense
    [B, M, F] bank built and scanned per batch. The same sums, bit for bit."""
    B, F, T = spec.shape[0], spec.shape[1], spec.shape[2]
    M = out.shape[1]
    for b in numba.prange(B):
        g = np.zeros((M, F), np.float32)
        lo = np.zeros(M, np.int64)
        hi = np.zeros(M, np.int64)
        for f in range(F):
            for i in range(2):
                m = first[b, f] + i
                w = weights[b, f, i]
                if w != 0.0 and 0 <= m < M:
                    g[m, f] = w
                    if hi[m] == 0:
                        lo[m] = f
                    hi[m] = f + 1
        _mel_sample(spec, b, g, lo, hi, min(max(frames[b], 0), T), half_power, offset, clamp, out)
