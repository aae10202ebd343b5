"""Mixed precision: matrix products with bfloat16 operands and float32 accumulation.

bfloat16 is float32 with the low 16 bits of the mantissa dropped (8 bits of precision, the
same range), so a product of two bfloat16 numbers is exact in float32 and a dot product of
them loses only what the float32 sum loses. CPUs with AMX (Intel's Sapphire Rapids and later:
`amx_bf16`, `amx_tile` in the flags) multiply bfloat16 tiles at five to six times their float32
rate; fflm drives those tile instructions itself, through LLVM intrinsics that Numba compiles
(no BLAS has them: numpy's OpenBLAS computes float32 only).

What runs in bfloat16 (`--precision bf16`): the operands of the matrix products (the output
layer's three and each hidden layer's three). Everything else stays float32: the master
weights, gradients and optimizer state, the softmax and the losses, the products' sums.
Where the CPU has AVX512-BF16 but no AMX (AMD Zen 4, Intel Cooper Lake), a vdpbf16ps kernel
multiplies the same packed operands; where it has neither, numpy does in float32 (the
emulation: bfloat16-rounded operands, float32 sums), which gives the numbers of the fast paths
to float32 rounding, slowly; `--precision auto` picks bf16 only where the hardware has it.

The operand layouts (pairs of k in one 32-bit word: Intel's "VNNI" pairs), made by the pack_*
kernels below, M, N and K padded with zeros:
  A (M, K): row-major bfloat16;
  B (K, N): rows of pairs, Q[r, n] = (B[2r, n], B[2r + 1, n]), written in B's own order, where
            B arrives untransposed; else (B arrives as Bᵀ, whose rows hold the pairs of k)
            panels of 16 columns, P[p, r, c, s] = B[2r + s, 16p + c]. Both kernels read 16
            columns' pairs (64 bytes) for a pair of k at a time from either: a row of an AMX
            tile, a zmm register of vdpbf16ps.
The AMX kernel also runs on software tiles (the engine "amx_sim"), so its code is tested on
every machine; only its arithmetic on the hardware needs the hardware.
"""

import ctypes
import functools
import os

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic, overload

from .errors import FflmError

PRECISIONS = ("fp32", "bf16", "auto")
TILE = 16  # rows (and 4-byte columns) of an AMX tile
BLOCK = 32  # a C block is 2 x 2 tiles; A, K and N pad to multiples of it


# --- what the CPU has -------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def cpu_flags():
    """The CPU's feature flags, from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def amx_available():
    """True where the CPU has AMX-BF16 tiles, the compiler targets them and Linux lets this
    process use them (a process must ask first: arch_prctl(ARCH_REQ_XCOMP_PERM,
    XFEATURE_XTILEDATA), or its first tile instruction is killed). FFLM_NO_AMX=1 says no."""
    if os.environ.get("FFLM_NO_AMX") == "1":
        return False
    if not {"amx_bf16", "amx_tile"} <= cpu_flags():
        return False
    import llvmlite.binding as ll

    features = ll.get_host_cpu_features()
    if not (features.get("amx-bf16") and features.get("amx-tile")):
        return False  # an LLVM that cannot emit the tile instructions for this CPU
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA = 158, 0x1023, 18
        return libc.syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0
    except (OSError, AttributeError):
        return False


@functools.lru_cache(maxsize=None)
def avx512_bf16_available():
    """True where the CPU has AVX512-BF16 (`vdpbf16ps`: 16 float32 sums of bfloat16 pairs in one
    instruction; AMD Zen 4, Intel Cooper Lake and later) and this LLVM targets it.
    FFLM_NO_AVX512_BF16=1 says no."""
    if os.environ.get("FFLM_NO_AVX512_BF16") == "1":
        return False
    if not {"avx512f", "avx512_bf16"} <= cpu_flags():
        return False
    import llvmlite.binding as ll

    if not ll.get_host_cpu_features().get("avx512bf16"):
        return False
    ll.initialize_native_asmparser()  # the kernel's inline vdpbf16ps needs it before it compiles; once a process
    return True


ENGINES = ("amx", "avx512", "emulated", "amx_sim")  # amx_sim: the AMX kernel on software tiles, for tests


def best_engine():
    """Where the bfloat16 products run here: AMX tiles, else AVX512-BF16, else the emulation."""
    if amx_available():
        return "amx"
    return "avx512" if avx512_bf16_available() else "emulated"


def resolve_precision(precision):
    """'auto' as what it picks here: bf16 where the CPU multiplies bfloat16 in hardware (AMX
    tiles or AVX512-BF16), else fp32.

    >>> resolve_precision("fp32")
    'fp32'
    """
    if precision not in PRECISIONS:
        raise FflmError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "bf16" if best_engine() != "emulated" else "fp32"
    return precision


ENGINE_NAMES = {"amx": "AMX tiles", "avx512": "AVX512-BF16 vdpbf16ps", "amx_sim": "AMX's kernel on software tiles",
                "emulated": "emulated: numpy float32 on bf16-rounded operands, slower than fp32"}


def describe_precision(precision):
    """One line for `fflm info`, the training log and `bin/bench`."""
    engine = ENGINE_NAMES[best_engine()]
    if precision == "bf16":
        return f"bf16 operands, float32 sums ({engine})"
    if best_engine() == "emulated":
        return "fp32 (no bfloat16 arithmetic here, neither AMX nor AVX512-BF16: --precision auto keeps fp32)"
    return "fp32"


# --- float32 -> bfloat16, and the operand layouts --------------------------------------------
@njit(cache=True, inline="always")
def _round(u):
    """The bfloat16 bits of the float32 whose bits are u (uint32): round to nearest, ties to
    even; NaN stays NaN (rounding could carry a NaN's mantissa into infinity)."""
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16(0x7FC0)
    return np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


# Each pack fills its interior without a test per element (so the loops vectorise), then the
# edges and the zero padding apart.
@njit(cache=True, parallel=True)
def pack_rows(X, out):
    """out = X (M, K) as bfloat16, row-major, zero-padded to out's (Mp, Kp). X: float32 bits."""
    M, K = X.shape
    for i in prange(out.shape[0]):
        if i < M:
            for k in range(K):
                out[i, k] = _round(X[i, k])
            for k in range(K, out.shape[1]):
                out[i, k] = 0
        else:
            for k in range(out.shape[1]):
                out[i, k] = 0


@njit(cache=True, parallel=True)
def pack_rows_t(X, out):
    """out = Xᵀ for X (K, M): the A operand of a product with a transposed left side."""
    K, M = X.shape
    Mp, Kp = out.shape
    for i0 in prange((Mp + TILE - 1) // TILE):  # 16 rows of out (columns of X) at a time
        for i in range(i0 * TILE, min(i0 * TILE + TILE, Mp)):
            for k in range(K, Kp):
                out[i, k] = 0
        if i0 * TILE + TILE <= M:
            for k in range(K):
                for c in range(TILE):  # 16 consecutive values of one row of X
                    out[i0 * TILE + c, k] = _round(X[k, i0 * TILE + c])
        else:
            for i in range(i0 * TILE, min(i0 * TILE + TILE, Mp)):
                for k in range(K):
                    out[i, k] = _round(X[k, i]) if i < M else 0


@njit(cache=True, parallel=True)
def pack_panels(X, out):
    """out[p, r, c, s] = X[2r + s, 16p + c] for X (K, N): the B operand, zero-padded."""
    K, N = X.shape
    P, R = out.shape[0], out.shape[1]
    full = N // TILE
    G = 16  # panels a thread takes at once: each row pair is read 1 KB at a time, not 64 bytes
    for g in prange((P + G - 1) // G):
        for r in range(K // 2):
            for p in range(g * G, min(g * G + G, full)):
                n0 = TILE * p
                for c in range(TILE):
                    out[p, r, c, 0] = _round(X[2 * r, n0 + c])
                    out[p, r, c, 1] = _round(X[2 * r + 1, n0 + c])
        for p in range(g * G, min(g * G + G, P)):
            first = K // 2 if p < full else 0
            for r in range(first, R):  # the odd last row, the padding, and the last panel
                for c in range(TILE):
                    for s in range(2):
                        k, n = 2 * r + s, TILE * p + c
                        out[p, r, c, s] = _round(X[k, n]) if k < K and n < N else 0


@njit(cache=True, parallel=True)
def pack_panels_t(X, out):
    """The B operand Xᵀ for X (N, K): out[p, r, c, s] = X[16p + c, 2r + s]."""
    N, K = X.shape
    R = out.shape[1]
    for p in prange(out.shape[0]):
        n0 = TILE * p
        for c in range(TILE):
            n = n0 + c
            if n < N:
                for r in range(K // 2):
                    out[p, r, c, 0] = _round(X[n, 2 * r])
                    out[p, r, c, 1] = _round(X[n, 2 * r + 1])
                for r in range(K // 2, R):
                    for s in range(2):
                        out[p, r, c, s] = _round(X[n, 2 * r + s]) if 2 * r + s < K else 0
            else:
                for r in range(R):
                    out[p, r, c, 0] = 0
                    out[p, r, c, 1] = 0


@njit(cache=True, inline="always")
def _pair(lo, hi):
    """One 32-bit word of two bfloat16s: lo (bits of a float32) in the low half."""
    return np.uint32(_round(lo)) | (np.uint32(_round(hi)) << np.uint32(16))


@njit(cache=True, parallel=True)
def pack_pairs(X, out):
    """out[r, n] = the pair (X[2r, n], X[2r + 1, n]) for X (K, N), zero-padded to out's (Kp/2, Np):
    B as rows of pairs, for both kernels. Unlike the panels, it is written in X's order,
    a row of out from two rows of X, which costs a quarter of the panels' scattered writes."""
    K, N = X.shape
    for r in prange(out.shape[0]):
        if 2 * r + 1 < K:
            for n in range(N):
                out[r, n] = _pair(X[2 * r, n], X[2 * r + 1, n])
        elif 2 * r < K:
            for n in range(N):
                out[r, n] = _pair(X[2 * r, n], np.uint32(0))
        else:
            for n in range(N):
                out[r, n] = 0
        for n in range(N, out.shape[1]):
            out[r, n] = 0


def unpack_pairs(Q, N):
    """Rows of pairs back as the float32 (Kp, N) matrix they hold."""
    Kp = Q.shape[0] * 2
    return unpack_rows(np.ascontiguousarray(Q[:, :N]).view(np.uint16).reshape(Q.shape[0], N, 2)
                       .transpose(0, 2, 1).reshape(Kp, N))


@njit(cache=True, parallel=True)
def _sgd_update_kept(U, U32, dU, lr, weight_decay, Q, R):
    H, V = U.shape
    for r in prange((H + 1) // 2):
        h = 2 * r
        if h + 1 < H:
            for v in range(V):
                a, b = U[h, v], U[h + 1, v]
                U[h, v] = a - lr * (dU[h, v] + weight_decay * a)
                U[h + 1, v] = b - lr * (dU[h + 1, v] + weight_decay * b)
            for v in range(V):  # the new values' bits, read back through U32 (the same memory)
                lo, hi = _round(U32[h, v]), _round(U32[h + 1, v])
                R[h, v], R[h + 1, v] = lo, hi
                Q[r, v] = np.uint32(lo) | (np.uint32(hi) << np.uint32(16))
        else:  # an odd last row: paired with the zeros past it
            for v in range(V):
                a = U[h, v]
                U[h, v] = a - lr * (dU[h, v] + weight_decay * a)
            for v in range(V):
                R[h, v] = _round(U32[h, v])
                Q[r, v] = np.uint32(R[h, v])


def sgd_update_kept(U, dU, lr, weight_decay, Q, R):
    """U -= lr (dU + weight_decay U) for U (H, V), writing U's two bfloat16 copies from the new
    values in the same pass: Q as rows of pairs (the B of z = h·U) and R as rows (the A of
    dhᵀ = U·dzᵀ). Equal, bit for bit, to kernels.sgd_update then pack_pairs and pack_rows, at
    about 70% of their time measured alone (one read of U instead of three; in a step, where U
    and dU come from memory, the difference was within the machine's noise); the copies'
    padding is left as it was (zeros, from Matmul.kept)."""
    _sgd_update_kept(U, U.view(np.uint32), dU, lr, weight_decay, Q, R)


def unpack_rows(A):
    """A packed A operand back as float32 (what the emulation multiplies)."""
    return (A.astype(np.uint32) << 16).view(np.float32)


def unpack_panels(P):
    """A packed B operand back as the float32 (Kp, Np) matrix it holds."""
    Np, Kp = P.shape[0] * TILE, P.shape[1] * 2
    return unpack_rows(np.ascontiguousarray(P.transpose(1, 3, 0, 2)).reshape(Kp, Np))


def padded(n):
    return -(-n // BLOCK) * BLOCK


# --- the AMX tile instructions, as Numba intrinsics ---------------------------------------------
# Each wraps one LLVM intrinsic; tile numbers must be compile-time constants (literals).
_I8, _I64, _VOID = ir.IntType(8), ir.IntType(64), ir.VoidType()
_PTR = ir.PointerType(ir.IntType(8))


def _call(builder, name, argtypes, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VOID, argtypes), name)
    builder.call(fn, args)


def _address(context, builder, aty, arr, offset):
    data = context.make_array(aty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [offset]), _PTR)


def _literals(*ts):
    return all(isinstance(t, types.IntegerLiteral) for t in ts)


@intrinsic
def _ldtilecfg(typingctx, cfg):
    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.ldtilecfg", [_PTR], [_address(context, builder, sig.args[0], args[0], _I64(0))])
        return context.get_dummy_value()

    return types.void(cfg), codegen


@intrinsic
def _tilerelease(typingctx):
    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilerelease", [], [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def _tilezero(typingctx, t):
    if not _literals(t):
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tilezero", [_I8], [_I8(t.literal_value)])
        return context.get_dummy_value()

    return types.void(t), codegen


def _tile_memory(name):
    @intrinsic
    def tile_memory(typingctx, t, arr, offset, stride_bytes):
        """Load (or store) tile t from arr's element `offset`, rows stride_bytes apart."""
        if not _literals(t):
            return None

        def codegen(context, builder, sig, args):
            address = _address(context, builder, sig.args[1], args[1], args[2])
            _call(builder, name, [_I8, _PTR, _I64], [_I8(t.literal_value), address, args[3]])
            return context.get_dummy_value()

        return types.void(t, arr, offset, stride_bytes), codegen

    return tile_memory


_tileload = _tile_memory("llvm.x86.tileloadd64")
_tilestore = _tile_memory("llvm.x86.tilestored64")


@intrinsic
def _tdpbf16ps(typingctx, c, a, b):
    """Tile c (16 x 16 float32) += tile a (16 x 32 bf16) · tile b (32 x 16 bf16, in pairs)."""
    if not _literals(c, a, b):
        return None

    def codegen(context, builder, sig, args):
        _call(builder, "llvm.x86.tdpbf16ps", [_I8] * 3, [_I8(c.literal_value), _I8(a.literal_value), _I8(b.literal_value)])
        return context.get_dummy_value()

    return types.void(c, a, b), codegen


def tile_config():
    """The 64-byte tile configuration: palette 1, eight tiles of 16 rows x 64 bytes."""
    cfg = np.zeros(64, dtype=np.uint8)
    cfg[0] = 1
    cfg[16:32].view(np.uint16)[:8] = 64  # bytes per row, tiles 0-7
    cfg[48:56] = TILE  # rows
    return cfg


_CFG = tile_config()


# --- the tile operations the kernel calls: the hardware's, or the same in software ----------------
# Each has two bodies, chosen by the type of its first argument: None runs the instruction (the
# intrinsics above); an (8, 16, 16) uint32 array (a thread's tile registers, from _tiles_new) runs
# it in software as Intel's pseudo-code defines it. So the AMX kernel itself (its addressing, its
# edges, its passes over k, its transposed writes) is tested on every machine, as the engine
# "amx_sim" (slowly); only the hardware's own arithmetic needs the hardware.
def _tiles_new(tiles):
    pass


@overload(_tiles_new, inline="always")
def _ov_tiles_new(tiles):
    if isinstance(tiles, types.NoneType):
        return lambda tiles: None
    return lambda tiles: np.zeros((8, TILE, TILE), dtype=np.uint32)


def _tile_config(tiles, cfg):
    pass


@overload(_tile_config, inline="always")
def _ov_tile_config(tiles, cfg):
    if isinstance(tiles, types.NoneType):
        return lambda tiles, cfg: _ldtilecfg(cfg)
    return lambda tiles, cfg: None  # software tiles are always 16 rows of 64 bytes


def _tile_release(tiles):
    pass


@overload(_tile_release, inline="always")
def _ov_tile_release(tiles):
    if isinstance(tiles, types.NoneType):
        return lambda tiles: _tilerelease()
    return lambda tiles: None


def _tile_zero(tiles, t):
    pass


@overload(_tile_zero, prefer_literal=True, inline="always")
def _ov_tile_zero(tiles, t):
    if isinstance(tiles, types.NoneType):
        return lambda tiles, t: _tilezero(t)

    def zero(tiles, t):
        tiles[t] = 0

    return zero


def _tile_load(tiles, t, arr, offset, stride_bytes):
    pass


@overload(_tile_load, prefer_literal=True, inline="always")
def _ov_tile_load(tiles, t, arr, offset, stride_bytes):
    """Tile t = 16 rows of 64 bytes from arr's element `offset` on, rows stride_bytes apart."""
    if isinstance(tiles, types.NoneType):
        return lambda tiles, t, arr, offset, stride_bytes: _tileload(t, arr, offset, stride_bytes)
    return lambda tiles, t, arr, offset, stride_bytes: _soft_load(tiles[t], arr, offset, stride_bytes)


def _tile_store(tiles, t, arr, offset, stride_bytes):
    pass


@overload(_tile_store, prefer_literal=True, inline="always")
def _ov_tile_store(tiles, t, arr, offset, stride_bytes):
    if isinstance(tiles, types.NoneType):
        return lambda tiles, t, arr, offset, stride_bytes: _tilestore(t, arr, offset, stride_bytes)
    return lambda tiles, t, arr, offset, stride_bytes: _soft_store(tiles[t], arr, offset, stride_bytes)


def _tile_dp(tiles, c, a, b):
    pass


@overload(_tile_dp, prefer_literal=True, inline="always")
def _ov_tile_dp(tiles, c, a, b):
    """Tile c (16 x 16 float32) += tile a (16 x 32 bfloat16) · tile b (16 pairs of k x 16 columns)."""
    if isinstance(tiles, types.NoneType):
        return lambda tiles, c, a, b: _tdpbf16ps(c, a, b)
    return lambda tiles, c, a, b: _soft_dp(tiles[c], tiles[a], tiles[b])


# The software bodies are functions of their own (inlined, their loops slow the compile a lot)
@njit(cache=True)
def _soft_load(tile, arr, offset, stride_bytes):
    words = arr.reshape(-1).view(np.uint32)
    for r in range(TILE):
        w = (offset * arr.itemsize + r * stride_bytes) // 4
        for c in range(TILE):
            tile[r, c] = words[w + c]


@njit(cache=True)
def _soft_store(tile, arr, offset, stride_bytes):
    words = arr.reshape(-1).view(np.uint32)
    for r in range(TILE):
        w = (offset * arr.itemsize + r * stride_bytes) // 4
        for c in range(TILE):
            words[w + c] = tile[r, c]


@njit(cache=True)
def _soft_dp(tc, ta, tb):
    """tdpbf16ps: for each pair k, c[m, n] += a[m, 2k] b[k, 2n] then += a[m, 2k+1] b[k, 2n+1],
    each a float32 addition (the products of bfloat16s are exact)."""
    fa, fb = np.empty((TILE, 2 * TILE), np.float32), np.empty((TILE, 2 * TILE), np.float32)
    ua, ub = fa.view(np.uint32), fb.view(np.uint32)
    for r in range(TILE):
        for k in range(TILE):  # a's pair k of row r; b's pair of k r for column k
            ua[r, 2 * k], ua[r, 2 * k + 1] = ta[r, k] << 16, ta[r, k] & 0xFFFF0000
            ub[r, 2 * k], ub[r, 2 * k + 1] = tb[r, k] << 16, tb[r, k] & 0xFFFF0000
    acc = tc.view(np.float32)
    for m in range(TILE):
        for n in range(TILE):
            s = acc[m, n]
            for k in range(TILE):
                s += fa[m, 2 * k] * fb[k, 2 * n]
                s += fa[m, 2 * k + 1] * fb[k, 2 * n + 1]
            acc[m, n] = s


@njit(cache=True, inline="always")
def _load_block(tl, C, c0, n):
    """Tiles 0-3 from the 32 x 32 float32 block of C at element c0 (rows n elements apart)."""
    _tile_load(tl, 0, C, c0, n * 4)
    _tile_load(tl, 1, C, c0 + TILE, n * 4)
    _tile_load(tl, 2, C, c0 + TILE * n, n * 4)
    _tile_load(tl, 3, C, c0 + TILE * n + TILE, n * 4)


@njit(cache=True, inline="always")
def _store_block(tl, C, c0, n):
    _tile_store(tl, 0, C, c0, n * 4)
    _tile_store(tl, 1, C, c0 + TILE, n * 4)
    _tile_store(tl, 2, C, c0 + TILE * n, n * 4)
    _tile_store(tl, 3, C, c0 + TILE * n + TILE, n * 4)


KC = 2048  # values of k per pass: A's slice for a whole batch then stays in L2 (B x 2048 bf16 = 1 MB)


@njit(cache=True, parallel=True)
def _gemm_amx_pass(tiles, A, B32, panel, rstride, C, cfg, k0, k1, accumulate, transposed, rows_outer):
    """C (M, N) (+)= A[:, k0:k1] · B[k0:k1], or with `transposed` Cᵀ (C then (N, M)); A packed
    (Mp, Kp), B32 B's pairs as words (the 16 columns from n for the pair r of k at
    B32[(n/16) panel + 16 r rstride :][:16], panels or rows of pairs). C in blocks of 32 x 32
    (tiles 0-3) from two A tiles (4, 5) and two B tiles (6, 7), 32 values of k at a time.
    Threads split the side that is read once: `rows_outer`, each takes A's row blocks and
    passes them over all of B's slice (which stays in cache); else B's column blocks, and A's
    slice stays in cache. Tile state is per thread: each loads the configuration and releases
    the tiles after; `tiles` is None on the hardware, else what the software tiles need."""
    M, N = (C.shape[1], C.shape[0]) if transposed else C.shape
    mb, nb = (M + BLOCK - 1) // BLOCK, (N + BLOCK - 1) // BLOCK
    if rows_outer:
        for ib in prange(mb):
            tl = _tiles_new(tiles)
            scratch = np.zeros((BLOCK, BLOCK), dtype=np.float32)
            _tile_config(tl, cfg)
            for jb in range(nb):
                _amx_block(tl, A, B32, panel, rstride, C, scratch, ib * BLOCK, jb * BLOCK, k0, k1, accumulate,
                           transposed, M, N)
            _tile_release(tl)
    else:
        for jb in prange(nb):
            tl = _tiles_new(tiles)
            scratch = np.zeros((BLOCK, BLOCK), dtype=np.float32)
            _tile_config(tl, cfg)
            for ib in range(mb):
                _amx_block(tl, A, B32, panel, rstride, C, scratch, ib * BLOCK, jb * BLOCK, k0, k1, accumulate,
                           transposed, M, N)
            _tile_release(tl)


@njit(cache=True, inline="always")
def _amx_block(tl, A, B32, panel, rstride, C, scratch, i, j, k0, k1, accumulate, transposed, M, N):
    """C's 32 x 32 block at (i, j) (of Cᵀ's, transposed); edge blocks and transposed ones pass
    through scratch."""
    Kp = A.shape[1]
    rows, cols = min(BLOCK, M - i), min(BLOCK, N - j)
    direct = not transposed and rows == BLOCK and cols == BLOCK
    if not accumulate:
        _tile_zero(tl, 0)
        _tile_zero(tl, 1)
        _tile_zero(tl, 2)
        _tile_zero(tl, 3)
    elif direct:
        _load_block(tl, C, i * N + j, N)
    else:
        for r in range(rows):
            for c in range(cols):
                scratch[r, c] = C[j + c, i + r] if transposed else C[i + r, j + c]
        _load_block(tl, scratch, 0, BLOCK)
    a_stride, b_stride = Kp * 2, rstride * TILE * 4  # bytes between rows of A, between pairs of k in B
    for k in range(k0, k1, BLOCK):
        _tile_load(tl, 4, A, i * Kp + k, a_stride)
        _tile_load(tl, 5, A, (i + TILE) * Kp + k, a_stride)
        b0 = (j // TILE) * panel + (k // 2) * TILE * rstride
        _tile_load(tl, 6, B32, b0, b_stride)
        _tile_load(tl, 7, B32, b0 + panel, b_stride)
        _tile_dp(tl, 0, 4, 6)
        _tile_dp(tl, 1, 4, 7)
        _tile_dp(tl, 2, 5, 6)
        _tile_dp(tl, 3, 5, 7)
    if direct:
        _store_block(tl, C, i * N + j, N)
    else:
        _store_block(tl, scratch, 0, BLOCK)
        if transposed:
            for c in range(cols):
                for r in range(rows):
                    C[j + c, i + r] = scratch[r, c]
        else:
            for r in range(rows):
                for c in range(cols):
                    C[i + r, j + c] = scratch[r, c]


def _b_words(B):
    """B's pairs as flat 32-bit words and where its columns are (see _gemm_amx_pass), with the
    Kp and the columns it holds: rows of pairs (Kp/2, Np) uint32, or panels (Np/16, Kp/2, 16, 2)."""
    if B.dtype == np.uint32:
        return B.reshape(-1), TILE, B.shape[1] // TILE, B.shape[0] * 2, B.shape[1]
    return B.view(np.uint32).reshape(-1), B.shape[1] * TILE, 1, B.shape[1] * 2, B.shape[0] * TILE


def gemm_amx(A, B, C, kc=KC, transposed=False, software=False):
    """C = A · B on AMX tiles (`transposed`: C = (A · B)ᵀ), B as panels or rows of pairs, in
    passes of kc values of k (a long k, as the output layer's backward has with k = V, would
    otherwise stream all of A from memory once per column strip). `software`: the same kernel
    on software tiles, anywhere (for the tests: slow)."""
    if not software and not amx_available():  # also what asks Linux for the tile state, once per process
        raise RuntimeError("gemm_amx: this CPU or process has no AMX (see amx_available)")
    words, panel, rstride, Kb, Nb = _b_words(B)
    M, N = C.shape[::-1] if transposed else C.shape
    Kp = A.shape[1]
    # the tiles read whole 32 x 32 blocks: operands smaller than that would be read past their end
    if not (A.shape[0] >= padded(M) and Nb >= padded(N) and Nb % TILE == 0 and Kb == Kp and Kp % BLOCK == 0
            and kc % BLOCK == 0 and A.flags.c_contiguous and B.flags.c_contiguous and C.flags.c_contiguous):
        raise ValueError(f"gemm_amx: operands {A.shape} and {B.shape} do not fit C {C.shape}")
    # read the bigger of A's and B's slices once, the smaller from cache (dhᵀ = U·dzᵀ: U's rows)
    rows_outer = M > N
    tiles = np.empty((0, 0, 0), np.uint32) if software else None
    for k0 in range(0, Kp, kc):
        _gemm_amx_pass(tiles, A, words, panel, rstride, C, _CFG, k0, min(k0 + kc, Kp), k0 > 0, transposed, rows_outer)


def gemm_emulated(A, P, C):
    """gemm_amx's product by numpy in float32, from the same packed operands."""
    M, N = C.shape
    K = P.shape[1] * 2
    np.dot(unpack_rows(A)[:M, :K], unpack_panels(P)[:, :N], out=C)


# --- AVX512-BF16: vdpbf16ps from Numba ---------------------------------------------------------
# The same packed operands as the tiles': A row-major (a bfloat16 pair of k is one 32-bit word,
# broadcast to all 16 lanes), B as rows of pairs or panels (16 columns' pairs, 64 bytes, per
# pair of k). A
# micro-kernel keeps an MR x (16 NR) block of C in MR * NR zmm registers over a run of k, each
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
def _gemm_avx512_pass(A32, P32, panel, rstride, C, k0, k1, accumulate, group_bytes, transposed):
    """C (M, N) (+)= A[:, k0:k1] · B[k0:k1], or with `transposed` Cᵀ (C then (N, M)) (A32: A's
    pairs (Mp, Kp/2); P32: B's pairs, flat, 16 columns' pairs at P32[(n/16) panel + 16 r
    rstride :][:16] for the pair r of k). Threads take groups of strips of 16 NR columns, as
    many as keep the group's B in L2 (group_bytes); every MR-row block of A passes the whole
    group before the next, so that C is written in rows of the group's width rather than a
    strip's 256 bytes (a row of C is far from the next); transposed, the group's rows of C
    stay in cache while the row blocks fill them MR values at a time."""
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
        for g in prange((strips + G - 1) // G):
            out = np.empty((MR, W), dtype=np.float32)
            for i in range(0, M, MR):
                _block_row(A32, P32, panel, rstride, C, k0, pairs, accumulate, transposed, i, g * G * W,
                           min(g * G * W + G * W, N), M, N, out)


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
    words, panel, rstride, Kb, Nb = _b_words(B)
    M, N = C.shape[::-1] if transposed else C.shape
    Kp = A.shape[1]
    if not (A.shape[0] >= -(-M // MR) * MR and Nb >= -(-N // (TILE * NR)) * TILE * NR and Nb % TILE == 0
            and Kb == Kp and kc % 2 == 0 and A.flags.c_contiguous and B.flags.c_contiguous
            and C.flags.c_contiguous):
        raise ValueError(f"gemm_avx512: operands {A.shape} and {B.shape} do not fit C {C.shape}")
    A32 = A.view(np.uint32)
    for k0 in range(0, Kp, kc):
        _gemm_avx512_pass(A32, words, panel, rstride, C, k0, min(k0 + kc, Kp), k0 > 0, GROUP_BYTES, transposed)


# --- the products a model asks for ------------------------------------------------------------------
class Matmul:
    """out = op(a) · op(b) with bfloat16 operands, for the model's np.dot calls: `a_t`/`b_t`
    say the operand arrives transposed (a is (K, M), b is (N, K)), as the backward's are.
    Packed operand buffers are kept by role and reused batch after batch. Inside `frozen()`
    (inference, where the weights cannot change) a weight's packed copy is made once.

    The layouts: both kernels (AVX-512's and AMX's) read A as rows and B as rows of pairs
    where it can (pack_pairs writes them in the source's order), else as panels; a product
    whose packs would transpose the bigger operand runs as outᵀ = op(b)ᵀ·op(a)ᵀ, the kernel
    writing out transposed, where out's rows are short enough for that to stay in cache:
    dh = dz·Uᵀ then packs U as plain rows and transposes dz instead, the tied dE = dzᵀ·h
    transposes h instead of dz (measured on the AMD machine, base: packing U's two copies went
    from 7.6 ms a step to 1.7; BENCHMARKS.md). Plain SGD keeps U's two copies itself (kept()).
    The emulation reads rows and panels, as numpy multiplies them unpacked."""

    ROWS_PAST, PANELS_PAST = 8, NR  # zeros past A's rows and B's panels: the AVX-512 kernel reads whole blocks
    STRIP = TILE * NR  # rows of pairs are padded to whole strips of columns
    FLIP_MAX_ROW = 2048  # values in a row of out, for it to be written transposed (64 rows: 512 KB)

    def __init__(self, engine=None):
        if engine is not None and engine not in ENGINES:
            raise ValueError(f"Matmul: engine must be one of {ENGINES}, not {engine!r}")
        self.engine = engine or best_engine()
        self._buffers = {}
        self._frozen = None  # (address, shape, layout) -> a weight's packed copy, while frozen
        self._kept = {}  # (address, shape, layout) -> a copy the optimizer's step keeps current
        self._kept_current = False

    def _buffer(self, role, shape, dtype=np.uint16):
        """role's buffer of `shape`: the leading rows of the one kept for the role where only the
        number of rows shrank (the adaptive softmax's clusters get another number of rows each
        batch), else a new one."""
        buf = self._buffers.get(role)
        if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0] or buf.dtype != dtype:
            buf = self._buffers[role] = np.empty(shape, dtype=dtype)
        return buf[: shape[0]]

    _PACKS = {"rows": pack_rows, "rows_t": pack_rows_t, "panels": pack_panels, "panels_t": pack_panels_t,
              "pairs": pack_pairs}

    def _shape(self, x, layout):
        """The packed buffer's shape and type for x in `layout` (x: (M, K) for rows, (K, M) for
        rows_t; (K, N) for panels and pairs, (N, K) for panels_t)."""
        if layout in ("rows", "rows_t"):
            M, K = x.shape if layout == "rows" else x.shape[::-1]
            return (padded(M) + self.ROWS_PAST, padded(K)), np.uint16
        if layout == "pairs":
            K, N = x.shape
            return (padded(K) // 2, -(-N // self.STRIP) * self.STRIP), np.uint32
        N, K = x.shape[::-1] if layout == "panels" else x.shape
        return (padded(N) // TILE + self.PANELS_PAST, padded(K) // 2, TILE, 2), np.uint16

    def _pack(self, x, layout, role, weight=False):
        """x packed in `layout`, into role's buffer (a weight inside frozen(): once, kept)."""
        key = (x.ctypes.data, x.shape, layout)  # the weight's memory, not the view object's id
        if weight and self._kept_current and key in self._kept:
            return self._kept[key]
        keep = weight and self._frozen is not None
        if keep and key in self._frozen:
            return self._frozen[key]
        shape, dtype = self._shape(x, layout)
        out = np.empty(shape, dtype=dtype) if keep else self._buffer(role, shape, dtype)
        self._PACKS[layout](np.ascontiguousarray(x).view(np.uint32), out)
        if keep:
            self._frozen[key] = out
        return out

    def dot(self, a, b, out, a_t=False, b_t=False, weight=False, role="mm"):
        """out[...] = op(a) · op(b); `weight`: b is a parameter (cached while frozen)."""
        if not a.flags.c_contiguous and a.T.flags.c_contiguous:  # a transposed view: read it as is
            a, a_t = a.T, not a_t
        if not b.flags.c_contiguous and b.T.flags.c_contiguous:  # the tied U is Eᵀ, a view
            b, b_t = b.T, not b_t
        if not out.flags.c_contiguous:  # a slice of columns (the tied adaptive head): through a buffer
            whole = self.dot(a, b, self._buffer(role + ".out", out.shape, np.float32), a_t, b_t, weight, role)
            out[...] = whole
            return out
        if self.engine == "emulated":
            A = self._pack(a, "rows_t" if a_t else "rows", role + ".a")
            gemm_emulated(A, self._pack(b, "panels_t" if b_t else "panels", role + ".b", weight), out)
            return out
        gemm = gemm_avx512 if self.engine == "avx512" else functools.partial(gemm_amx, software=self.engine == "amx_sim")
        # out = op(a)·op(b), or outᵀ = op(b)ᵀ·op(a)ᵀ written transposed: whichever transposes
        # less in its packs (rows_t and panels_t, against rows and pairs written in order). The
        # transposed writes stay in cache only where out's rows are short (a group of strips
        # fills 64 of them at a time, a few values each): a long row, z's, rules it out.
        normal = (a.size if a_t else 0) + (b.size if b_t else 0)
        flipped = (0 if b_t else b.size) + (0 if a_t else a.size)
        if normal <= flipped or out.shape[1] > self.FLIP_MAX_ROW:
            A = self._pack(a, "rows_t" if a_t else "rows", role + ".a")
            gemm(A, self._pack(b, "panels_t" if b_t else "pairs", role + ".b", weight), out)
        else:
            A = self._pack(b, "rows" if b_t else "rows_t", role + ".b", weight)  # op(b)ᵀ
            gemm(A, self._pack(a, "pairs" if a_t else "panels_t", role + ".a"), out, transposed=True)
        return out

    def frozen(self):
        return _Frozen(self)

    # The output matrix's two copies, kept by the SGD step (sgd_update_kept) instead of packed
    # afresh for each product; whoever else writes the weights calls forget() (the model's
    # weights_changed()), and the products pack them again until the next step keeps them.
    def kept(self, w):
        """w's copies in the layouts its products read (rows of pairs, rows), for the optimizer
        to write as it updates w, after which they are current; None on the emulation, which
        reads other layouts and packs every step."""
        if self.engine == "emulated":
            return None
        copies = []
        for layout in ("pairs", "rows"):
            key = (w.ctypes.data, w.shape, layout)
            if key not in self._kept:
                shape, dtype = self._shape(w, layout)
                self._kept[key] = np.zeros(shape, dtype=dtype)  # the padding; the update writes the rest
            copies.append(self._kept[key])
        self._kept_current = True
        return copies

    def forget(self):
        """The weights changed other than through kept(): pack them afresh."""
        self._kept_current = False


class _Frozen:
    def __init__(self, mm):
        self.mm = mm

    def __enter__(self):
        self.outer = self.mm._frozen is not None
        if not self.outer:
            self.mm._frozen = {}
        return self.mm

    def __exit__(self, *exc):
        if not self.outer:
            self.mm._frozen = None
