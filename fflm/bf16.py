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
The kernels live apart: fflm/amx.py (the tiles, and the same kernel on software tiles, the
engine "amx_sim", so that its code is tested on every machine) and fflm/avx512.py.
"""

import functools

import numpy as np
from numba import njit, prange

from .amx import TILE, gemm_amx, padded
from .avx512 import NR, gemm_avx512
from .cpu import amx_available, avx512_bf16_available
from .errors import FflmError

PRECISIONS = ("fp32", "bf16", "auto")
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


def gemm_emulated(A, P, C):
    """The emulation: the product of the packed operands (A rows, B panels) by numpy in float32."""
    M, N = C.shape
    K = P.shape[1] * 2
    np.dot(unpack_rows(A)[:M, :K], unpack_panels(P)[:, :N], out=C)


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
