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
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic


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


# ----------------------------------------------------------------------------- IIR filters
# The recursion of a few rows at once as explicit vector arithmetic: LLVM IR for <W x
# double> lanes, one row per lane, emitted by numba intrinsics (numba leaves LLVM's SLP
# vectoriser off, and its loop vectoriser cannot keep a recursion's state in registers).
# One row's recursion waits on each step's latency (a multiply, a subtract and two adds
# per step); the lanes share that wait. The arithmetic of each lane is the scalar
# recursion's, operation for operation: no fused multiply-add, no reassociation.

TINY = 1e-290  # a filter state below this is 0: a decaying state (silence, zero padding, an impulse's
# tail) would otherwise sink into subnormal numbers, where each step costs tens of times more
_F64, _I64, _I32 = ir.DoubleType(), ir.IntType(64), ir.IntType(32)


def _emit_df2t(builder, lanes, coef_ptr, start, count, step, load, store):
    """The recursion loop: ``lanes`` filters of order <= 3 in transposed direct form II
    (coefficients coef [7, lanes] float64: b0..b3, a1..a3, a0 = 1) from rest, steps i =
    0..count-1 at t = start + i step: x_t = load(t) (<lanes x double>), y_t = b0 x_t + p;
    p = b1 x_t - a1 y_t + q; q = b2 x_t - a2 y_t + s; s = b3 x_t - a3 y_t; store(t, y_t).
    Every 64 steps, states below TINY are flushed to 0 (NaN and inf stay): a check per
    step would lengthen the recursion's chain."""
    vt = ir.VectorType(_F64, lanes)
    c = [builder.load(builder.bitcast(builder.gep(coef_ptr, [ir.Constant(_I64, k * lanes)]), vt.as_pointer()),
                      align=8) for k in range(7)]
    zero, tiny = ir.Constant(vt, None), ir.Constant(vt, [TINY] * lanes)
    fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt]), f"llvm.fabs.v{lanes}f64")
    entry = builder.basic_block
    loop, flush, latch, done = (builder.function.append_basic_block(f"df2t.{name}")
                                for name in ("loop", "flush", "latch", "done"))
    builder.cbranch(builder.icmp_signed(">", count, ir.Constant(_I64, 0)), loop, done)
    builder.position_at_end(loop)
    i = builder.phi(_I64)
    state = [builder.phi(vt) for _ in range(3)]
    i.add_incoming(ir.Constant(_I64, 0), entry)
    for v in state:
        v.add_incoming(zero, entry)
    t = builder.add(start, builder.mul(i, step))
    x = load(t)
    p, q, s = state
    y = builder.fadd(builder.fmul(c[0], x), p)
    new = (builder.fadd(builder.fsub(builder.fmul(c[1], x), builder.fmul(c[4], y)), q),
           builder.fadd(builder.fsub(builder.fmul(c[2], x), builder.fmul(c[5], y)), s),
           builder.fsub(builder.fmul(c[3], x), builder.fmul(c[6], y)))
    store(t, y)
    every64 = builder.icmp_unsigned("==", builder.and_(i, ir.Constant(_I64, 63)), ir.Constant(_I64, 63))
    builder.cbranch(every64, flush, latch)
    builder.position_at_end(flush)
    flushed = [builder.select(builder.fcmp_ordered("<", builder.call(fabs, [v]), tiny), zero, v) for v in new]
    builder.branch(latch)
    builder.position_at_end(latch)
    for old, kept, fl in zip(state, new, flushed):
        merged = builder.phi(vt)
        merged.add_incoming(kept, loop)
        merged.add_incoming(fl, flush)
        old.add_incoming(merged, latch)
    nxt = builder.add(i, ir.Constant(_I64, 1))
    i.add_incoming(nxt, latch)
    builder.cbranch(builder.icmp_signed("<", nxt, count), loop, done)
    builder.position_at_end(done)


def _lane_rows(context, builder, aty, aval, rty, rval, lanes):
    """Pointers to rows rows[0..lanes-1] of a C-contiguous 2-D array, and its element type."""
    arr = context.make_array(aty)(context, builder, aval)
    rr = context.make_array(rty)(context, builder, rval)
    ncols = cgutils.unpack_tuple(builder, arr.shape)[1]
    ptrs = [builder.gep(arr.data, [builder.mul(builder.load(builder.gep(rr.data, [ir.Constant(_I64, j)])), ncols)])
            for j in range(lanes)]
    return ptrs, context.get_value_type(aty.dtype)


def _row_load(builder, ptrs, ety):
    vt = ir.VectorType(_F64, len(ptrs))

    def load(t):
        v = ir.Constant(vt, None)
        for j, ptr in enumerate(ptrs):
            e = builder.load(builder.gep(ptr, [t]))
            v = builder.insert_element(v, e if ety == _F64 else builder.fpext(e, _F64), ir.Constant(_I32, j))
        return v
    return load


def _row_store(builder, ptrs, ety):
    def store(t, y):
        for j, ptr in enumerate(ptrs):
            e = builder.extract_element(y, ir.Constant(_I32, j))
            builder.store(e if ety == _F64 else builder.fptrunc(e, ety), builder.gep(ptr, [t]))
    return store


def _tmp_ptr(builder, tmp_data, t, lanes):
    vt = ir.VectorType(_F64, lanes)
    return builder.bitcast(builder.gep(tmp_data, [builder.mul(t, ir.Constant(_I64, lanes))]), vt.as_pointer())


def _df2t_intrinsics(lanes):
    """The three passes on ``lanes`` rows: rows -> scratch (a zero-phase filter's forward
    pass), scratch -> rows (its backward pass) and rows -> rows (a causal filter)."""
    @intrinsic
    def rows_to_tmp(typingctx, x, rows, tmp, coef, m):
        """Forward over t = 0..m-1: lane j reads row rows[j] of x; outputs to tmp [m, lanes]."""
        def codegen(context, builder, sig, args):
            ptrs, ety = _lane_rows(context, builder, sig.args[0], args[0], sig.args[1], args[1], lanes)
            tmp_data = context.make_array(sig.args[2])(context, builder, args[2]).data
            coef_ptr = context.make_array(sig.args[3])(context, builder, args[3]).data
            _emit_df2t(builder, lanes, coef_ptr, ir.Constant(_I64, 0), args[4], ir.Constant(_I64, 1),
                       _row_load(builder, ptrs, ety),
                       lambda t, y: builder.store(y, _tmp_ptr(builder, tmp_data, t, lanes), align=8))
            return context.get_dummy_value()
        return types.void(x, rows, tmp, coef, m), codegen

    @intrinsic
    def tmp_to_rows(typingctx, tmp, lim, out, rows, coef, m):
        """Backward over t = m-1..0: lane j reads tmp[t, j] where t < lim[j], else 0;
        outputs to row rows[j] of out."""
        def codegen(context, builder, sig, args):
            tmp_data = context.make_array(sig.args[0])(context, builder, args[0]).data
            vi = ir.VectorType(_I64, lanes)
            lim = builder.load(builder.bitcast(context.make_array(sig.args[1])(context, builder, args[1]).data,
                                               vi.as_pointer()), align=8)
            ptrs, ety = _lane_rows(context, builder, sig.args[2], args[2], sig.args[3], args[3], lanes)
            coef_ptr = context.make_array(sig.args[4])(context, builder, args[4]).data

            def load(t):
                v = builder.load(_tmp_ptr(builder, tmp_data, t, lanes), align=8)
                undef = ir.Constant(vi, ir.Undefined)
                tv = builder.shuffle_vector(builder.insert_element(undef, t, ir.Constant(_I32, 0)), undef,
                                            ir.Constant(ir.VectorType(_I32, lanes), None))  # t in every lane
                return builder.select(builder.icmp_signed("<", tv, lim), v, ir.Constant(v.type, None))
            m = args[5]
            _emit_df2t(builder, lanes, coef_ptr, builder.sub(m, ir.Constant(_I64, 1)), m, ir.Constant(_I64, -1),
                       load, _row_store(builder, ptrs, ety))
            return context.get_dummy_value()
        return types.void(tmp, lim, out, rows, coef, m), codegen

    @intrinsic
    def rows_to_rows(typingctx, x, rows, out, coef, m):
        """Forward over t = 0..m-1: lane j reads row rows[j] of x and writes row rows[j] of
        out (which may be x: each step reads before it writes)."""
        def codegen(context, builder, sig, args):
            src, sty = _lane_rows(context, builder, sig.args[0], args[0], sig.args[1], args[1], lanes)
            dst, dty = _lane_rows(context, builder, sig.args[2], args[2], sig.args[1], args[1], lanes)
            coef_ptr = context.make_array(sig.args[3])(context, builder, args[3]).data
            _emit_df2t(builder, lanes, coef_ptr, ir.Constant(_I64, 0), args[4], ir.Constant(_I64, 1),
                       _row_load(builder, src, sty), _row_store(builder, dst, dty))
            return context.get_dummy_value()
        return types.void(x, rows, out, coef, m), codegen

    return rows_to_tmp, tmp_to_rows, rows_to_rows


_forward4, _backward4, _causal4 = _df2t_intrinsics(4)


@_jit(parallel=True)
def iir_rows(x, coef, n, zero_phase, rows, out):
    """Row rows[r] of x [., N] through filter coef[r] = (b0..b3, a1..a3) (order <= 3,
    a0 = 1) from rest, in float64, into row rows[r] of out (out may be x: a row is read
    before it is written). ``zero_phase``: forward over the row's first n[r] samples, then
    backward from its own end (filtfilt), 0 after; else causal over the whole row. A unit
    of work is four rows, one per vector lane (the last row repeated to fill a unit: its
    lanes compute and store the same values); a zero-phase unit keeps its forward pass in
    a private float64 scratch. (Eight lanes were slower: the loads and stores of a step's
    lanes, not the recursion, then bound it.)"""
    R = rows.shape[0]
    N = x.shape[1]
    for u in numba.prange((R + 3) // 4):
        r0 = 4 * u
        rr = np.empty(4, np.int64)
        mm = np.empty(4, np.int64)
        cT = np.empty((7, 4), np.float64)
        m = 0
        for j in range(4):
            rj = min(r0 + j, R - 1)
            rr[j] = rows[rj]
            mm[j] = min(max(n[rj], 0), N) if zero_phase else N
            m = max(m, mm[j])
            for i in range(7):
                cT[i, j] = coef[rj, i]
        if zero_phase:
            # past its own length a row's forward values are not used; backward, a filter
            # at rest fed zeros stays at rest (0), so a row starts when t reaches its length
            tmp = np.empty((m, 4), np.float64)
            _forward4(x, rr, tmp, cT, m)
            _backward4(tmp, mm, out, rr, cT, m)
            for j in range(min(4, R - r0)):
                orow = out[rr[j]]
                for t in range(mm[j], N):  # 0 from the row's own end (a non-finite filter fed 0 is not 0)
                    orow[t] = 0
        else:
            _causal4(x, rr, out, cT, N)


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
