"""bfloat16 products on AMX tiles (Intel Sapphire Rapids and later), from Numba.

Each tile instruction (ldtilecfg, tilezero, tileloadd, tdpbf16ps, tilestored, tilerelease) is
an @intrinsic emitting the LLVM intrinsic of that name; the kernel calls them through
operations that have a second body in software, chosen by the type of their first argument,
so the same kernel runs on software tiles anywhere (the engine "amx_sim", for the tests).
The operands are bf16.py's packed layouts: A as rows, B as rows of pairs or panels."""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic, overload

from .cpu import amx_available

TILE = 16  # rows (and 4-byte columns) of an AMX tile
BLOCK = 32  # a C block is 2 x 2 tiles; A, K and N pad to multiples of it


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


def b_words(B):
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
    words, panel, rstride, Kb, Nb = b_words(B)
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
