"""The numba kernels behind :mod:`.cpu_kernels` (imported by it on first use, so that
numba is not imported where the kernels are off).

They are module-level functions, so numba's on-disk cache finds them again in a new
process (a kernel defined inside a function is compiled afresh in every process: one to
two seconds per kernel in each Ray worker). "contract" lets LLVM fuse each multiply-add of
the interpolation into one FMA, as torch's vectorised lerp does (vec::fmadd); nothing else
of fast-math is allowed anywhere, and the IIR recursion is compiled without it.
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


TINY = 1e-290  # a filter state below this is 0: a decaying state (silence, zero padding, an impulse's
# tail) would otherwise sink into subnormal numbers, where each step costs tens of times more


@numba.njit(inline="always")
def ftz(v):
    """v, or 0 where |v| < TINY (a flush to zero above the subnormal range; NaN and inf
    stay)."""
    return 0.0 if abs(v) < TINY else v


@numba.njit(inline="always")
def ftz12(p0, p1, p2, p3, q0, q1, q2, q3, s0, s1, s2, s3):
    """:func:`ftz` of the four rows' states, every 64 steps (a check per step costs more
    than the subnormal steps it saves on signals that never decay)."""
    return (ftz(p0), ftz(p1), ftz(p2), ftz(p3), ftz(q0), ftz(q1), ftz(q2), ftz(q3),
            ftz(s0), ftz(s1), ftz(s2), ftz(s3))


@_jit(parallel=True)
def iir_rows(x, coef, n, zero_phase, rows, out):
    """Row rows[r] of x [., N] through filter coef[r] = (b0..b3, a1..a3) (order <= 3,
    a0 = 1) from rest, in float64, into row rows[r] of out (out may be x: a row is read
    whole before it is written). ``zero_phase``: forward over the row's first n[r]
    samples, then backward from its own end (filtfilt), 0 after; else causal over the
    whole row. Four rows per unit of work, through a private float64 scratch. States below
    TINY are flushed to 0 every 64 steps (see :func:`ftz12`)."""
    R = rows.shape[0]
    N = x.shape[1]
    for u in numba.prange((R + 3) // 4):
        r0 = 4 * u
        r1, r2, r3 = min(r0 + 1, R - 1), min(r0 + 2, R - 1), min(r0 + 3, R - 1)  # repeats: not stored
        c0, c1, c2, c3 = coef[r0], coef[r1], coef[r2], coef[r3]
        x0, x1, x2, x3 = x[rows[r0]], x[rows[r1]], x[rows[r2]], x[rows[r3]]
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
            if (t & 63) == 63:
                p0, p1, p2, p3, q0, q1, q2, q3, s0, s1, s2, s3 = ftz12(p0, p1, p2, p3, q0, q1, q2, q3,
                                                                       s0, s1, s2, s3)
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
                if (i & 63) == 63:
                    p0, p1, p2, p3, q0, q1, q2, q3, s0, s1, s2, s3 = ftz12(p0, p1, p2, p3, q0, q1, q2, q3,
                                                                           s0, s1, s2, s3)
        for j in range(min(4, R - r0)):
            mj = (m0, m1, m2, m3)[j]
            orow = out[rows[r0 + j]]
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
