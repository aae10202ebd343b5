"""bfloat16 products with AVX512-BF16's vdpbf16ps (AMD Zen 4, Intel Cooper Lake and later),
from Numba, on bf16.py's packed layouts (A as rows, B as rows of pairs or panels)."""

import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from .amx import TILE, b_words
from .cpu import avx512_bf16_available

_I64 = ir.IntType(64)

# The same packed operands as the tiles': A row-major (a bfloat16 pair of k is one 32-bit word,
# broadcast to all 16 lanes), B as rows of pairs or panels (16 columns' pairs, 64 bytes, per
# pair of k). A micro-kernel keeps an MR x (16 NR) block of C in MR * NR zmm registers over a run of k, each
# step one broadcast of A per row, NR loads of B and MR * NR vdpbf16ps. The instruction is
# emitted as inline assembly (this LLVM spells its bfloat16 vectors in a type llvmlite lacks),
# so LLVM's assembly parser must be initialised before the kernel compiles.
MR, NR = 6, 4  # 24 accumulators + 4 B vectors + 1 broadcast: 29 of the 32 zmm registers
# B's bytes in a group of strips: on Zen 4, base's step took 45.7 ms at 256 KB, 46.1 at 128 KB,
# 49.1 at 512 KB, 48.6 with one strip at a time
GROUP_BYTES = 1 << 18
KC_AVX = 4096  # values of k per pass: the 4 panels' B strip (KC/2 x 64 bytes x 4 = 512 KB) stays in L2 (1 MB on Zen 4)
_F16 = ir.VectorType(ir.FloatType(), 16)
_I16 = ir.VectorType(ir.IntType(32), 16)
_I32 = ir.IntType(32)


@intrinsic
def _micro(typingctx, A, a0, a_stride, P, p0, p_stride, p_rstride, pairs, out):
    """out[ii, 16j:16j+16] = sum over r < pairs of the pair A32[a0 + ii*a_stride + r] (broadcast)
    times the 16 pairs P32[p0 + j*p_stride + 16 r p_rstride :][:16], for ii < MR, j < NR (float32
    sums). p_rstride is 1 for panels; B's width / 16 for rows of pairs (Q[r, n, s] = B[2r+s, n])."""
    def codegen(context, builder, sig, args):
        a_arr, a0_, a_stride_, p_arr, p0_, p_stride_, p_rstride_, pairs_, out_arr = args
        ap = context.make_array(sig.args[0])(context, builder, a_arr).data
        pp = context.make_array(sig.args[3])(context, builder, p_arr).data
        op = builder.bitcast(context.make_array(sig.args[8])(context, builder, out_arr).data, _F16.as_pointer())
        dot = ir.InlineAsm(ir.FunctionType(_F16, [_F16, _I16, _I16]), "vdpbf16ps $3, $2, $0", "=v,0,v,v")
        zero = ir.Constant(_F16, [0.0] * 16)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(NR)] for _ in range(MR)]
        rows = [builder.gep(ap, [builder.add(a0_, builder.mul(a_stride_, _I64(i)))]) for i in range(MR)]
        cols = [builder.bitcast(builder.gep(pp, [builder.add(p0_, builder.mul(p_stride_, _I64(j)))]),
                                _I16.as_pointer()) for j in range(NR)]
        undef, splat = ir.Constant(_I16, ir.Undefined), ir.Constant(ir.VectorType(_I32, 16), [0] * 16)
        with cgutils.for_range(builder, pairs_) as loop:
            step = builder.mul(loop.index, p_rstride_)
            b = [builder.load(builder.gep(cols[j], [step]), align=4) for j in range(NR)]
            for i in range(MR):
                word = builder.load(builder.gep(rows[i], [loop.index]), align=4)
                a = builder.shuffle_vector(builder.insert_element(undef, word, _I32(0)), undef, splat)
                for j in range(NR):
                    builder.store(builder.call(dot, [builder.load(acc[i][j]), a, b[j]]), acc[i][j])
        for i in range(MR):
            for j in range(NR):
                builder.store(builder.load(acc[i][j]), builder.gep(op, [_I64(i * NR + j)]), align=4)
        return context.get_dummy_value()

    return types.void(A, a0, a_stride, P, p0, p_stride, p_rstride, pairs, out), codegen


@njit(cache=True, parallel=True)
def _gemm_avx512_pass(A32, P32, panel, rstride, C, k0, k1, accumulate, group_bytes, transposed, threads):
    """C (M, N) (+)= A[:, k0:k1] · B[k0:k1], or with `transposed` Cᵀ (C then (N, M)) (A32: A's
    pairs (Mp, Kp/2); P32: B's pairs, flat, 16 columns' pairs at P32[(n/16) panel + 16 r
    rstride :][:16] for the pair r of k). Threads take groups of strips of 16 NR columns, as
    many as keep the group's B in L2 (group_bytes); every MR-row block of A passes the whole
    group before the next, so that C is written in rows of the group's width rather than a
    strip's 256 bytes (a row of C is far from the next); transposed, the group's rows of C
    stay in cache while the row blocks fill them MR values at a time. `threads`: Numba's, so
    that the groups divide evenly among them."""
    M, N = (C.shape[1], C.shape[0]) if transposed else C.shape
    W = TILE * NR
    pairs = (k1 - k0) // 2
    strips = (N + W - 1) // W
    G = max(1, min(group_bytes // (pairs * W * 4), strips // 4))  # strips per group; 4 groups at least
    if strips < 4:  # too few strips to share (the adaptive softmax's narrow products): share A's row blocks
        for ib in prange((M + MR - 1) // MR):
            out = np.empty((MR, W), dtype=np.float32)
            _block_row(A32, P32, panel, rstride, C, k0, pairs, accumulate, transposed, ib * MR, 0, N, M, N, out)
    else:
        # as many groups as a multiple of the threads, the strips spread evenly over them: each
        # thread gets a contiguous run of groups, so 5 groups of up to 8 strips (the adaptive
        # head's dU, 37 strips) gave one thread 24 strips and the other 13
        groups = -(-(-(-strips // G)) // threads) * threads
        for g in prange(groups):
            out = np.empty((MR, W), dtype=np.float32)
            j0, j1 = (g * strips // groups) * W, min(((g + 1) * strips // groups) * W, N)
            for i in range(0, M, MR):
                _block_row(A32, P32, panel, rstride, C, k0, pairs, accumulate, transposed, i, j0, j1, M, N, out)


@njit(cache=True)
def _block_row(A32, P32, panel, rstride, C, k0, pairs, accumulate, transposed, i, j0, j1, M, N, out):
    """C's MR rows from row i, columns j0 to j1, one strip at a time (out: the block's scratch)."""
    W = TILE * NR
    half = A32.shape[1]
    rows = min(MR, M - i)
    for j in range(j0, j1, W):
        p0 = (j // TILE) * panel + (k0 // 2) * TILE * rstride
        width = min(W, N - j)
        _micro(A32, i * half + k0 // 2, half, P32, p0, panel, rstride, pairs, out)
        # the two orders written out, each inner loop along C's memory, and `accumulate`
        # tested outside it (C is read only when a pass adds to it)
        if transposed:
            for c in range(width):
                if accumulate:
                    for r in range(rows):
                        C[j + c, i + r] += out[r, c]
                else:
                    for r in range(rows):
                        C[j + c, i + r] = out[r, c]
        else:
            for r in range(rows):
                if accumulate:
                    for c in range(width):
                        C[i + r, j + c] += out[r, c]
                else:
                    for c in range(width):
                        C[i + r, j + c] = out[r, c]


def gemm_avx512(A, B, C, kc=KC_AVX, transposed=False):
    """C = A · B with vdpbf16ps, in passes of kc values of k (`transposed`: C = (A · B)ᵀ), B as
    panels or rows of pairs (pack_pairs: Q[r, n] holds B[2r, n] and B[2r + 1, n]). A needs
    MR - 1 rows past C's (zeros) and B whole strips of 16 NR columns, which Matmul's buffers
    have (ROWS_PAST, PANELS_PAST, STRIP)."""
    if not avx512_bf16_available():  # also what readies LLVM's assembly parser, once a process
        raise RuntimeError("gemm_avx512: this CPU has no AVX512-BF16 (see avx512_bf16_available)")
    words, panel, rstride, Kb, Nb = b_words(B)
    M, N = C.shape[::-1] if transposed else C.shape
    Kp = A.shape[1]
    if not (A.shape[0] >= -(-M // MR) * MR and Nb >= -(-N // (TILE * NR)) * TILE * NR and Nb % TILE == 0
            and Kb == Kp and kc % 2 == 0 and A.flags.c_contiguous and B.flags.c_contiguous
            and C.flags.c_contiguous):
        raise ValueError(f"gemm_avx512: operands {A.shape} and {B.shape} do not fit C {C.shape}")
    A32 = A.view(np.uint32)
    threads = get_num_threads()  # (read here: inside the kernel it would keep Numba from caching it)
    for k0 in range(0, Kp, kc):
        _gemm_avx512_pass(A32, words, panel, rstride, C, k0, min(k0 + kc, Kp), k0 > 0, GROUP_BYTES, transposed,
                          threads)
