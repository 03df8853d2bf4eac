"""The IIR filters' numba kernel (:func:`iir_rows`, behind :func:`.cpu_kernels.iir_rows`):
four rows' recursions as the lanes of one float64 vector, the loop emitted as LLVM IR by
numba intrinsics. Compiled without fast-math."""
import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._numba_kernels import _jit

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
