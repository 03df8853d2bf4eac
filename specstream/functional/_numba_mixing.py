"""The numba kernels behind :mod:`.cpu_mixing` (imported by :mod:`.cpu_kernels` on first
use): mixing at an SNR, rescaling to a power, a log-mel's per-sample centre padding and
band-limited resampling, each one pass per row. Module-level functions (numba's on-disk cache finds them again in a
new process); only :func:`sum_squares` (a reduction) may reorder its additions."""
import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._numba_consts import PHASE_LANES
from ._numba_kernels import _jit


@_jit(fastmath={"reassoc", "contract"})
def sum_squares(a, n):
    """sum_t<n a[t]**2 in float64 (a float32 row): a reduction, so its additions may be
    reordered (vectorised); nothing else is compiled with fast-math here."""
    s = 0.0
    for t in range(n):
        v = np.float64(a[t])
        s += v * v
    return s


@numba.njit(inline="always")
def snr_gain(ps, pn, snr_db):
    """The gain g with ps / (g**2 pn) = 10**(snr_db / 10) (float32), 0 for silent noise."""
    if pn > 0.0:
        return np.float32(np.sqrt(ps / (max(pn, 1e-20) * 10.0 ** (snr_db / 10.0))))
    return np.float32(0.0)


@_jit(parallel=True, fastmath={"contract"})
def snr_mix_rows(x, noise, lengths, snr_db, rows, out):
    """out[rows[i]] = x[rows[i]] + g_i noise[i] over the row's first lengths[i] samples,
    x[rows[i]] after (where x is 0 by the batch contract); g_i gives the SNR snr_db[i]
    with both powers taken over that length (float64 sums). out may be x (each element is
    read before it is written)."""
    R = rows.shape[0]
    N = x.shape[1]
    for i in numba.prange(R):
        n = min(max(lengths[i], 0), N)
        d = max(n, 1)
        xr, nr, orow = x[rows[i]], noise[i], out[rows[i]]
        g = snr_gain(sum_squares(xr, n) / d, sum_squares(nr, n) / d, snr_db[i])
        for t in range(n):
            orow[t] = xr[t] + g * nr[t]
        for t in range(n, N):
            orow[t] = xr[t]


@_jit(parallel=True, fastmath={"contract"})
def segment_mix_rows(x, lengths, data, starts, count, snr_db, rows, out):
    """snr_mix_rows with the noise of listed row i built here: the sum of its first
    count[i] segments data[starts[i, k]:][:lengths[i]], each scaled to unit power over the
    row's length first (float32, summed in order k = 0, 1, ...)."""
    R = rows.shape[0]
    N = x.shape[1]
    for i in numba.prange(R):
        n = min(max(lengths[i], 0), N)
        d = max(n, 1)
        noise = np.zeros(n, np.float32)
        for k in range(count[i]):
            seg = data[starts[i, k]:starts[i, k] + n]
            level = np.float32(1.0 / np.sqrt(max(sum_squares(seg, n) / d, 1e-20)))
            for t in range(n):
                noise[t] = noise[t] + seg[t] * level
        xr, orow = x[rows[i]], out[rows[i]]
        g = snr_gain(sum_squares(xr, n) / d, sum_squares(noise, n) / d, snr_db[i])
        for t in range(n):
            orow[t] = xr[t] + g * noise[t]
        for t in range(n, N):
            orow[t] = xr[t]


@_jit(parallel=True)
def level_rows(flat, offset, stride, rflat, roffset, rstride, lengths, keep, rows, out):
    """out[rows[i]] = y[i] g_i over the row's first lengths[i] samples, 0 after, where y[i]
    is flat[offset + i stride:] (a contiguous row of any 2-D view); with ``keep`` g_i
    brings y[i]'s power over the length to that of ref[i] = rflat[roffset + i rstride:]
    (float64 sums), else g_i = 1."""
    R = rows.shape[0]
    N = out.shape[1]
    for i in numba.prange(R):
        n = min(max(lengths[i], 0), N)
        s = offset + i * stride
        yr, orow = flat[s:s + N], out[rows[i]]
        g = np.float32(1.0)
        if keep:
            d = max(n, 1)
            r = roffset + i * rstride
            g = np.float32(np.sqrt((sum_squares(rflat[r:r + n], n) / d) / max(sum_squares(yr, n) / d, 1e-20)))
        for t in range(n):
            orow[t] = yr[t] * g
        for t in range(n, N):
            orow[t] = 0


@_jit(parallel=True)
def center_pad_rows(wave, lengths, pad, reflect, out):
    """Each row of wave [B, N] padded by ``pad`` at both ends of its own length L (0 <= L
    <= N) into out [B, N + 2 pad]: sample t - pad at t in [pad, pad + L); around it, with
    ``reflect``, the reflection |t - pad| at 0 and 2 (L - 1) - (t - pad) at L - 1 (L taken
    as at least 1, indices clamped to [0, N - 1]), else zeros; 0 from L + 2 pad on."""
    B, N = wave.shape
    W = out.shape[1]
    for b in numba.prange(B):
        L = min(max(lengths[b], 0), N)
        if reflect:
            L = max(L, 1)
        xr, orow = wave[b], out[b]
        for j in range(pad):
            i = pad - j
            if i >= L:
                i = 2 * (L - 1) - i
            orow[j] = xr[min(max(i, 0), N - 1)] if reflect else 0
        for j in range(pad, pad + L):
            orow[j] = xr[j - pad]
        end = min(L + 2 * pad, W)
        for j in range(pad + L, end):
            i = 2 * (L - 1) - (j - pad)
            orow[j] = xr[min(max(i, 0), N - 1)] if reflect else 0
        for j in range(end, W):
            orow[j] = 0


# ----------------------------------------------------------------------------- resampling

_F32, _I64, _I32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
_FRAME_BLOCK = 8  # frames whose sums run side by side (independent chains of fused multiply-adds)


@intrinsic
def _phase_lanes(typingctx, xpad, kT, orow, nframes, o, n):
    """For frames f in [0, nframes): the 16 lanes p of sum_k xpad[f o + k] kT[k, p] (a
    chain of fused multiply-adds from 0, taps k = 0..K-1 in order) stored at orow[f n:
    f n + 16]; frames in increasing order, so lanes past a frame's n outputs are
    overwritten by the next frame's store. Eight frames at a time keep eight independent
    chains in flight (one frame's chain waits on each multiply-add's latency)."""
    def codegen(context, builder, sig, args):
        xa = context.make_array(sig.args[0])(context, builder, args[0])
        ka = context.make_array(sig.args[1])(context, builder, args[1])
        oa = context.make_array(sig.args[2])(context, builder, args[2])
        nframes, o, n = args[3], args[4], args[5]
        K = cgutils.unpack_tuple(builder, ka.shape)[0]
        vt = ir.VectorType(_F32, PHASE_LANES)
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt, vt, vt]),
                                             f"llvm.fma.v{PHASE_LANES}f32")
        undef = ir.Constant(vt, ir.Undefined)
        first = ir.Constant(ir.VectorType(_I32, PHASE_LANES), None)
        fn = builder.function

        def frames(width, start, stop):
            """Frames [start, stop) in blocks of ``width`` (stop - start a multiple of it)."""
            entry = builder.basic_block
            head, taps, store, done = (fn.append_basic_block(f"lanes.{name}")
                                       for name in ("head", "taps", "store", "done"))
            builder.branch(head)
            builder.position_at_end(head)
            f0 = builder.phi(_I64)
            f0.add_incoming(start, entry)
            builder.cbranch(builder.icmp_signed("<", f0, stop), taps, done)
            builder.position_at_end(taps)
            k = builder.phi(_I64)
            k.add_incoming(ir.Constant(_I64, 0), head)
            acc = [builder.phi(vt) for _ in range(width)]
            for a in acc:
                a.add_incoming(ir.Constant(vt, None), head)
            c = builder.load(builder.bitcast(builder.gep(ka.data, [builder.mul(k, ir.Constant(_I64, PHASE_LANES))]),
                                             vt.as_pointer()), align=4)
            at = builder.add(builder.mul(f0, o), k)
            new = []
            for j, a in enumerate(acc):
                v = builder.load(builder.gep(xa.data, [builder.add(at, builder.mul(ir.Constant(_I64, j), o))]))
                v = builder.shuffle_vector(builder.insert_element(undef, v, ir.Constant(_I32, 0)), undef, first)
                new.append(builder.call(fma, [v, c, a]))
            k1 = builder.add(k, ir.Constant(_I64, 1))
            k.add_incoming(k1, taps)
            for a, v in zip(acc, new):
                a.add_incoming(v, taps)
            builder.cbranch(builder.icmp_signed("<", k1, K), taps, store)
            builder.position_at_end(store)
            for j, v in enumerate(new):
                at_out = builder.mul(builder.add(f0, ir.Constant(_I64, j)), n)
                builder.store(v, builder.bitcast(builder.gep(oa.data, [at_out]), vt.as_pointer()), align=4)
            f0.add_incoming(builder.add(f0, ir.Constant(_I64, width)), store)
            builder.branch(head)
            builder.position_at_end(done)

        blocks = builder.mul(builder.sdiv(nframes, ir.Constant(_I64, _FRAME_BLOCK)), ir.Constant(_I64, _FRAME_BLOCK))
        with builder.if_then(builder.icmp_signed(">", K, ir.Constant(_I64, 0))):
            frames(_FRAME_BLOCK, ir.Constant(_I64, 0), blocks)
            frames(1, blocks, nframes)
        return context.get_dummy_value()
    return types.void(xpad, kT, orow, nframes, o, n), codegen


@numba.njit(inline="always")
def _tap(xp, k, o, nfr):
    """The samples tap k multiplies at frames 0..nfr-1: x[f o + k - width] = xp[k % o, f + k // o]."""
    return xp[k % o, k // o:k // o + nfr]


@numba.njit(inline="always")
def _resample_row(xr, orow, L, kern, kT, width, o, n, copy, lanes):
    """Row xr over its first L samples resampled into orow (see :func:`resample_group_rows`; the
    caller's fast-math flags apply, the function being inlined)."""
    M = orow.shape[0]
    P, K = kern.shape
    Q = (K + o - 1) // o
    nl = min((L * n + o - 1) // o, M)
    if copy:
        for j in range(nl):
            orow[j] = xr[j]
        for j in range(nl, M):
            orow[j] = 0.0
        return
    nfr = (nl + n - 1) // n
    if lanes:
        xpad = np.zeros(nfr * o + K, np.float32)  # xpad[i] = x[i - width], 0 outside [0, L)
        for i in range(min(L, nfr * o + K - width)):
            xpad[i + width] = xr[i]
        # whole frames whose 16 stored lanes stay inside the row; the rest one by one
        nv = min(nl // n, (M - PHASE_LANES) // n + 1) if M >= PHASE_LANES else 0
        _phase_lanes(xpad, kT, orow, nv, o, n)
        for j in range(nv * n, nl):
            f = j // n
            acc = np.float32(0.0)
            for k in range(K):
                acc += kern[j - f * n, k] * xpad[f * o + k]
            orow[j] = acc
        for j in range(nl, M):
            orow[j] = 0.0
        return
    xp = np.zeros((o, nfr + Q), np.float32)  # xp[ph, i] = x[i o + ph - width], 0 outside [0, L)
    for ph in range(o):
        comp = xp[ph]
        i0 = (width - ph + o - 1) // o if width > ph else 0
        last = L - 1 - ph + width  # the largest i o with i o + ph - width < L
        i1 = min(nfr + Q, last // o + 1) if last >= 0 else 0
        for i in range(i0, i1):
            comp[i] = xr[i * o + ph - width]
    acc = np.zeros((P, nfr), np.float32)
    for p in range(P):
        a = acc[p]
        k = 0
        while k + 8 <= K:  # eight taps per pass over the frames, still added one by one in order
            s0, s1, s2, s3 = _tap(xp, k, o, nfr), _tap(xp, k + 1, o, nfr), _tap(xp, k + 2, o, nfr), \
                _tap(xp, k + 3, o, nfr)
            s4, s5, s6, s7 = _tap(xp, k + 4, o, nfr), _tap(xp, k + 5, o, nfr), _tap(xp, k + 6, o, nfr), \
                _tap(xp, k + 7, o, nfr)
            c0, c1, c2, c3 = kern[p, k], kern[p, k + 1], kern[p, k + 2], kern[p, k + 3]
            c4, c5, c6, c7 = kern[p, k + 4], kern[p, k + 5], kern[p, k + 6], kern[p, k + 7]
            for f in range(nfr):
                a[f] = (a[f] + c0 * s0[f] + c1 * s1[f] + c2 * s2[f] + c3 * s3[f]
                        + c4 * s4[f] + c5 * s5[f] + c6 * s6[f] + c7 * s7[f])
            k += 8
        for k in range(k, K):
            c = kern[p, k]
            src = _tap(xp, k, o, nfr)
            for f in range(nfr):
                a[f] += c * src[f]
    if n == 1:  # a plain copy (vectorised)
        a = acc[0]
        for f in range(nfr - 1):
            orow[f] = a[f]
    else:
        for f in range(nfr - 1):
            for p in range(P):
                orow[f * n + p] = acc[p, f]
    base = max(nfr - 1, 0) * n
    for j in range(base, nl):
        orow[j] = acc[j - base, nfr - 1]
    for j in range(nl, M):
        orow[j] = 0.0


@_jit(parallel=True, fastmath={"contract"})
def resample_group_rows(x, lengths, group, kerns, kTs, gp, sel, out):
    """Row sel[r] of x resampled by n / o over its first lengths[r] samples (zeros around
    them), into row sel[r] of out, with the rate pair of its group g = group[r]: gp[g] =
    (o, n, width, P, K, copy, lanes), torchaudio's polyphase sinc kernel ``kern`` =
    kerns[g, :P, :K] ([n, taps] float32, ``width`` samples of left context) and its columns
    kTs[g, :K]. Output sample j = f n + p is sum_k x[f o + k - width] kern[p, k] for
    j < ceil(lengths[r] n / o), 0 after. The sums run over the taps in order, in float32
    (fused multiply-adds), as torchaudio's convolution runs them, on one of two layouts:

    - 4 to 16 phases (flag ``lanes``: the speed factors' 11 -> 10 and 9 -> 10): one frame's
      n outputs are the lanes of a vector, each tap one multiply-add of the frame's sample
      with the kernel's column (:func:`_phase_lanes`), written straight into the row;
    - otherwise vectorised over frames f: the row is split into its o polyphase components,
      so each tap of a phase is one contiguous multiply-add over all frames (eight taps per
      pass, so the partial sums are read and written an eighth as often).

    The identity (flag ``copy``: o = n = 1, one tap of weight 1 at width 0) is a copy of the
    row's own samples. One rate pair or several, in one parallel region."""
    N = x.shape[1]
    for r in numba.prange(sel.shape[0]):
        g = group[r]
        P, K = gp[g, 3], gp[g, 4]
        _resample_row(x[sel[r]], out[sel[r]], min(max(lengths[r], 0), N), kerns[g, :P, :K], kTs[g, :K],
                      gp[g, 2], gp[g, 0], gp[g, 1], gp[g, 5] != 0, gp[g, 6] != 0)


