"""Ingredients II-IV as Numba kernels: each layer's forward beside its backward.

Plain arrays in, plain arrays out, nothing allocated: the caller owns every buffer and
reuses it for every batch. Backward passes are the chain rule written out by hand; each
pair is checked against float64 central differences in tests/test_kernels.py.
Matrix products are not here: they go to BLAS through numpy (see model.py).

Shapes: B batch rows, c = n-1 context words, m embedding size, H hidden units, V vocabulary.
"""

import math
import os

# Numba's OpenMP threads spin while idle by default, fighting OpenBLAS's threads for the cores
# between a GEMM and the next kernel (measured: a step 70x slower on 2 cores). Idle threads
# should sleep. Must be set before Numba starts its thread pool; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.core.extending import intrinsic, overload  # noqa: E402

TANH, RELU, SIGMOID = 0, 1, 2
ACTIVATIONS = {"tanh": TANH, "relu": RELU, "sigmoid": SIGMOID}


# --- exp, tanh and sigmoid that vectorise in float32 ------------------------------------------------
# LLVM cannot vectorise a loop that calls libm's exp, and exponentials are most of the work
# outside the matrix products (a softmax over V per token). In float32, `fexp` is Cephes'
# expf written out: x = n ln2 + r, a degree-6 polynomial for e^r, and 2^n made by writing n
# into a float's exponent bits. Branch-free, so loops over it vectorise (4-5x faster), and
# within 1 ulp of exp. In float64 (what the gradient checks use) it is math.exp itself.
@intrinsic
def _float32_from_bits(typingctx, bits):
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


def fexp(x):
    """exp(x); vectorisable in float32 (see above)."""
    return math.exp(x)


def ftanh(x):
    return math.tanh(x)


def fsigmoid(x):
    """1 / (1 + exp(-x))."""
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


def _is_float32(x):
    return isinstance(x, types.Float) and x.bitwidth == 32


@overload(fexp, inline="always")
def _fexp(x):
    if not _is_float32(x):
        return lambda x: math.exp(x)

    def expf(x):
        x = min(max(x, np.float32(-87.3)), np.float32(88.0))  # 2^n stays a normal float
        n = math.floor(x * np.float32(1.44269504) + np.float32(0.5))  # round(x / ln 2)
        r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)  # ln 2 in two parts
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        p = p * r * r + r + np.float32(1.0)
        return p * _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))

    return expf


@overload(ftanh, inline="always")
def _ftanh(x):
    if not _is_float32(x):
        return lambda x: math.tanh(x)
    return lambda x: np.float32(1.0) - np.float32(2.0) / (fexp(np.float32(2.0) * x) + np.float32(1.0))


@overload(fsigmoid, inline="always")
def _fsigmoid(x):
    if not _is_float32(x):
        def stable(x):
            e = math.exp(-abs(x))
            return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)

        return stable
    return lambda x: np.float32(1.0) / (np.float32(1.0) + fexp(-x))


@njit(cache=True, parallel=True)
def vector_exp(x, out):
    """out = fexp(x) elementwise (for tests and benchmarks of the fast path)."""
    for i in prange(x.shape[0]):
        out[i] = fexp(x[i])


@njit(cache=True, parallel=True)
def vector_tanh(x, out):
    for i in prange(x.shape[0]):
        out[i] = ftanh(x[i])


@njit(cache=True, parallel=True)
def vector_sigmoid(x, out):
    for i in prange(x.shape[0]):
        out[i] = fsigmoid(x[i])


# --- ingredient I: (x, y) pairs for a batch, copied out of the id stream ------------------------
@njit(cache=True)
def gather_windows(ids, positions, index, x, y):
    """x[b] = the c ids before target position positions[index[b]], y[b] = the target."""
    c = x.shape[1]
    for b in range(index.shape[0]):
        p = positions[index[b]]
        for i in range(c):
            x[b, i] = ids[p - c + i]
        y[b] = ids[p]


@njit(cache=True)
def gather_stream(ids, index, lookup, pad_sentences, x, y):
    """The same from an unpadded stream (sentence ids, then </s>, as a prepared corpus stores
    them, uint16 or uint32): pair p predicts ids[p] from the c ids before it, <s> (1) standing
    for whatever lies before the stream's start or, with pad_sentences, at or before the last
    </s> (2); every id is read through `lookup` (the corpus's ids -> the model's)."""
    c = x.shape[1]
    for b in range(index.shape[0]):
        p = index[b]
        y[b] = lookup[ids[p]]
        outside = False
        for i in range(c - 1, -1, -1):  # nearest context word first
            q = p - c + i
            if q < 0 or outside:
                x[b, i] = 1
                continue
            w = ids[q]
            if pad_sentences and w == 2:
                outside = True
                x[b, i] = 1
            else:
                x[b, i] = lookup[w]


# --- embedding: gather rows of E / scatter-add into them ---------------------------------------
@njit(cache=True)
def embedding_forward(E, x, out):
    """out[b, i*m:(i+1)*m] = E[x[b, i]]: (V, m), (B, c) int -> (B, c*m), the concatenated context."""
    B, c = x.shape
    m = E.shape[1]
    for b in range(B):
        for i in range(c):
            row = x[b, i]
            for j in range(m):
                out[b, i * m + j] = E[row, j]


@njit(cache=True)
def embedding_backward(dout, x, dE):
    """dE[x[b, i]] += dout[b, i*m:(i+1)*m]. Only the rows in the batch are touched; a word
    seen twice in a batch gets both contributions (sequential, so no races)."""
    B, c = x.shape
    m = dE.shape[1]
    for b in range(B):
        for i in range(c):
            row = x[b, i]
            for j in range(m):
                dE[row, j] += dout[b, i * m + j]


# --- FOFE: the history beyond the window as one weighted bag of words (Zhang et al., 2015) ------
# The fixed-size ordinally-forgetting encoding z_t = alpha z_{t-1} + onehot(w_t), projected by the
# embedding table, is sum_k alpha^k E[w_{t-k}]: the nearest word with weight 1, the one before it
# alpha, and so on. It is linear in E, so its backward is the same weights scattered back. The
# sum is cut after L words (x's width), where alpha^L of the weight is left out, and at the first
# <s>: that is where the sentence's history begins (across sentences, the stream's).
@njit(cache=True, parallel=True)
def fofe_forward(E, x, weights, stop, out):
    """out[b, f*m:(f+1)*m] = sum_k weights[f, k] E[x[b, L-1-k]] for k from 0 up to L-1 or to the
    first id `stop` (included): (V, m), (B, L) int, (F, L) -> (B, F*m)."""
    B, L = x.shape
    m = E.shape[1]
    for b in prange(B):
        for f in range(weights.shape[0]):
            o = f * m
            for j in range(m):
                out[b, o + j] = 0.0
            for k in range(L):
                row = x[b, L - 1 - k]
                w = weights[f, k]
                for j in range(m):
                    out[b, o + j] += w * E[row, j]
                if row == stop:
                    break


@njit(cache=True)
def fofe_backward(dout, x, weights, stop, dE):
    """dE[x[b, L-1-k]] += weights[f, k] * dout[b, f*m:(f+1)*m] over the same words (sequential:
    a word may come twice)."""
    B, L = x.shape
    m = dE.shape[1]
    for b in range(B):
        for f in range(weights.shape[0]):
            o = f * m
            for k in range(L):
                row = x[b, L - 1 - k]
                w = weights[f, k]
                for j in range(m):
                    dE[row, j] += w * dout[b, o + j]
                if row == stop:
                    break


@njit(cache=True)
def touched_rows(x, mark, rows):
    """Distinct ids of x into rows[:count] (mark: a zeroed int8 buffer of size V, left zeroed)."""
    count = 0
    for v in x.ravel():
        if mark[v] == 0:
            mark[v] = 1
            rows[count] = v
            count += 1
    for k in range(count):
        mark[rows[k]] = 0
    return count


# --- bias: broadcast add (its backward is a product) ---------------------------------------------------------
@njit(cache=True, parallel=True)
def bias_forward(out, bias):
    """out[b, :] += bias: the `+ b` of an affine layer, after BLAS computed x @ W into out."""
    for b in prange(out.shape[0]):
        for j in range(out.shape[1]):
            out[b, j] += bias[j]


# The backward, dbias = sum over the batch of dout, is 1ᵀ·dout: a bias is a weight on a
# constant input of 1. BLAS's matrix-vector product does it in 0.12 ms on a (256, 14116) batch,
# this loop in 0.2 (each thread sums its columns into a local row, which lets the loop vectorise;
# summing into `out` itself took 1.3). It is used all the same: it leaves a bf16 step without a
# single BLAS call, and OpenBLAS's threads, woken by one, spin afterwards and halve the speed of
# the Numba kernels beside them wherever numpy was imported before fflm (fflm/__init__.py).
@njit(cache=True, parallel=True)
def column_sums(x, out):
    """out[j] = sum over b of x[b, j], in float32 for float32 x (the batch's order)."""
    B, N = x.shape
    CH = 1024
    for c in prange((N + CH - 1) // CH):
        lo, hi = c * CH, min(c * CH + CH, N)
        acc = np.zeros(CH, dtype=out.dtype)
        for b in range(B):
            row = x[b, lo:hi]
            for j in range(hi - lo):
                acc[j] += row[j]
        for j in range(hi - lo):
            out[lo + j] = acc[j]


# --- activations g: in place, the backward written with the forward's output h = g(a) --------
@njit(cache=True, parallel=True)
def activation_forward(a, kind):
    """a := g(a) with g = tanh, relu or the logistic sigmoid (one loop per kind, so each
    vectorises)."""
    for b in prange(a.shape[0]):
        row = a[b]
        if kind == TANH:
            for j in range(row.shape[0]):
                row[j] = ftanh(row[j])
        elif kind == RELU:
            for j in range(row.shape[0]):
                row[j] = max(row[j], 0.0)
        else:
            for j in range(row.shape[0]):
                row[j] = fsigmoid(row[j])


@njit(cache=True, parallel=True)
def activation_backward(dh, h, kind):
    """dh := dh * g'(a), using h = g(a): tanh' = 1 - h², relu' = [h > 0], sigmoid' = h (1 - h)."""
    for b in prange(dh.shape[0]):
        for j in range(dh.shape[1]):
            v = h[b, j]
            if kind == TANH:
                dh[b, j] *= 1.0 - v * v
            elif kind == RELU:
                if v <= 0:
                    dh[b, j] = 0.0
            else:
                dh[b, j] *= v * (1.0 - v)


# --- layer normalisation (Ba et al., 2016): each row to mean 0 and variance 1, then a gain and a bias
# The forward keeps each row's mean and 1/std, so the backward (written out as in llm.c) needs
# no second pass over the statistics: with n = (x - mean) * rstd and dn = dout * gain,
#   dx = rstd * (dn - mean(dn) - n * mean(dn * n)),  dgain = sum_b dout * n,  dbias = sum_b dout.
LN_EPS = 1e-5


@njit(cache=True, parallel=True)
def layernorm_forward(x, gain, bias, out, mean, rstd):
    """out = (x - mean) * rstd * gain + bias row by row (B, C); keeps mean (B,) and rstd (B,)."""
    C = x.shape[1]
    for b in prange(x.shape[0]):
        row = x[b]
        mu = 0.0
        for j in range(C):
            mu += row[j]
        mu /= C
        var = 0.0
        for j in range(C):
            d = row[j] - mu
            var += d * d
        r = 1.0 / math.sqrt(var / C + LN_EPS)
        mean[b], rstd[b] = mu, r
        for j in range(C):
            out[b, j] = (row[j] - mu) * r * gain[j] + bias[j]


@njit(cache=True, parallel=True)
def layernorm_backward(dout, x, mean, rstd, gain, dx):
    """dx = dL/dx given dout = dL/dout (every row apart); dgain and dbias are layernorm_params_grad's."""
    C = x.shape[1]
    for b in prange(x.shape[0]):
        mu, r = mean[b], rstd[b]
        s1 = 0.0  # mean of dn
        s2 = 0.0  # mean of dn * n
        for j in range(C):
            dn = dout[b, j] * gain[j]
            s1 += dn
            s2 += dn * (x[b, j] - mu) * r
        s1 /= C
        s2 /= C
        for j in range(C):
            n = (x[b, j] - mu) * r
            dx[b, j] = r * (dout[b, j] * gain[j] - s1 - n * s2)


@njit(cache=True)
def layernorm_params_grad(dout, x, mean, rstd, dgain, dbias):
    """dgain = sum_b dout * n, dbias = sum_b dout (overwritten)."""
    C = x.shape[1]
    for j in range(C):
        dgain[j] = 0.0
        dbias[j] = 0.0
    for b in range(x.shape[0]):
        mu, r = mean[b], rstd[b]
        for j in range(C):
            dgain[j] += dout[b, j] * (x[b, j] - mu) * r
            dbias[j] += dout[b, j]


# --- inverted dropout: training only; evaluation simply skips it ---------------------------------
@njit(cache=True, parallel=True)
def dropout_forward(a, mask, p):
    """a *= mask, in place. On entry `mask` holds uniform [0, 1) draws; on exit 1/(1-p) where
    the unit is kept (draw >= p) and 0 where it is dropped, so every unit's expected value is
    unchanged and the model at evaluation is the same model without the masks."""
    scale = 1.0 / (1.0 - p)
    for b in prange(a.shape[0]):
        for j in range(a.shape[1]):
            m = scale if mask[b, j] >= p else 0.0
            mask[b, j] = m
            a[b, j] *= m


@njit(cache=True, parallel=True)
def dropout_backward(d, mask):
    """d *= mask: with the mask fixed, dropout is linear, and this is its gradient."""
    for b in prange(d.shape[0]):
        for j in range(d.shape[1]):
            d[b, j] *= mask[b, j]


# --- softmax and cross-entropy, fused ------------------------------------------------------
# Column `skip` (<s>, never a target) is left out of every softmax (-1: none is). Every loop
# runs over the whole row, with no branch, so LLVM vectorises it; the skipped column is taken
# out afterwards. The reductions may be reassociated (REDUCE; not fastmath=True, which would
# also assume no inf or nan). With `fexp`, a softmax over 14k words costs about what reading
# the logits from memory does.
REDUCE = {"reassoc", "nsz", "contract"}


@njit(cache=True, inline="always")
def _row_max(row, skip):
    """max over the row but column skip (whose value is swapped out for the loop, then back)."""
    if skip >= 0:
        keep = row[skip]
        row[skip] = row[1 if skip == 0 else 0]
    mx = row[0]
    for j in range(row.shape[0]):
        mx = max(mx, row[j])
    if skip >= 0:
        row[skip] = keep
    return mx


@njit(cache=True, inline="always")
def _row_exp(row, mx, skip, out):
    """out[j] = exp(row[j] - mx) for j != skip, out[skip] = 0; returns the sum (float64).
    The skipped logit is -inf during the loop (then put back), so however large it is it adds
    nothing: exp gives 0 in float64, and fexp at most 1e-38 in float32."""
    if skip >= 0:
        keep = row[skip]
        row[skip] = -np.inf
    s = 0.0
    for j in range(row.shape[0]):
        e = fexp(row[j] - mx)
        out[j] = e
        s += e
    if skip >= 0:
        row[skip] = keep
        out[skip] = 0.0
    return s


@njit(cache=True, inline="always")
def _row_logsumexp(row, skip):
    mx = _row_max(row, skip)
    if skip >= 0:
        keep = row[skip]
        row[skip] = -np.inf
    s = 0.0
    for j in range(row.shape[0]):
        s += fexp(row[j] - mx)
    if skip >= 0:
        row[skip] = keep
    return mx + math.log(s)


@njit(cache=True, parallel=True, fastmath=REDUCE)
def softmax_xent_forward(z, y, skip, nll):
    """nll[b] = logsumexp(z[b]) - z[b, y[b]]: the cross-entropy of the softmax of the logits.

    The maximum is subtracted before exponentiating, so no logit can overflow.
    """
    for b in prange(z.shape[0]):
        nll[b] = _row_logsumexp(z[b], skip) - z[b, y[b]]


@njit(cache=True, parallel=True, fastmath=REDUCE)
def softmax_xent_backward(z, y, skip, scale):
    """z := scale * (softmax(z) - onehot(y)): dL/dz for L = scale * sum of the rows' nll.

    With scale = 1/B this is the gradient of the mean loss over the batch. Overwrites the
    logits in place, as the forward no longer needs them.
    """
    for b in prange(z.shape[0]):
        row = z[b]
        s = _row_exp(row, _row_max(row, skip), skip, row)
        inv = scale / s
        for j in range(row.shape[0]):
            row[j] *= inv
        row[y[b]] -= scale


@njit(cache=True, parallel=True, fastmath=REDUCE)
def softmax_xent_fused(z, y, skip, scale, nll):
    """The forward and the backward in one pass over the logits (what training runs):
    nll[b] as softmax_xent_forward, then z := scale * (softmax(z) - onehot(y))."""
    for b in prange(z.shape[0]):
        row = z[b]
        zy = row[y[b]]
        mx = _row_max(row, skip)
        s = _row_exp(row, mx, skip, row)
        nll[b] = mx + math.log(s) - zy
        inv = scale / s
        for j in range(row.shape[0]):
            row[j] *= inv
        row[y[b]] -= scale


@njit(cache=True, parallel=True, fastmath=REDUCE)
def softmax_forward(z, skip, probs):
    """probs[b] = softmax(z[b]) over every column but `skip` (whose probability is 0)."""
    for b in prange(z.shape[0]):
        s = _row_exp(z[b], _row_max(z[b], skip), skip, probs[b])
        inv = 1.0 / s
        for j in range(probs.shape[1]):
            probs[b, j] *= inv


# --- the adaptive softmax's routing (fflm/output.py): each row to its target's cluster ------------
@njit(cache=True)
def cluster_targets(y, bounds, head_y, rows, starts, tail_y):
    """Route targets y (B,) through the clusters [bounds[i], bounds[i+1]) (the head holds the
    ids below bounds[0]): head_y[b] = y[b] in the head, else bounds[0] + i for cluster i. The
    tail rows, grouped by cluster in batch order (a counting sort), go to rows[starts[i]:starts[i+1]],
    with tail_y[k] = y[rows[k]] - bounds[i], the target's place in its cluster."""
    C = bounds.shape[0] - 1
    head = bounds[0]
    for i in range(C + 1):
        starts[i] = 0
    for b in range(y.shape[0]):  # count each cluster's rows (into starts[i + 1])
        v = y[b]
        if v < head:
            head_y[b] = v
        else:
            i = 0
            while v >= bounds[i + 1]:
                i += 1
            head_y[b] = head + i
            starts[i + 1] += 1
    for i in range(C):
        starts[i + 1] += starts[i]
    for b in range(y.shape[0]):  # place the rows; starts[i] runs ahead while cluster i fills
        i = head_y[b] - head
        if i >= 0:
            k = starts[i]
            rows[k] = b
            tail_y[k] = y[b] - bounds[i]
            starts[i] = k + 1
    for i in range(C, 0, -1):  # each start has moved to the next cluster's: shift back
        starts[i] = starts[i - 1]
    starts[0] = 0


@njit(cache=True)
def gather_rows(src, rows, out):
    """out[k] = src[rows[k]]: the rows of a batch that one tail cluster reads."""
    for k in range(rows.shape[0]):
        out[k] = src[rows[k]]


@njit(cache=True)
def scatter_add_rows(dout, rows, dsrc):
    """dsrc[rows[k]] += dout[k], gather_rows's backward (rows are distinct within a batch)."""
    for k in range(rows.shape[0]):
        dsrc[rows[k]] += dout[k]


# --- sampled objectives (ingredient III's cheaper losses): negative sampling and NCE ------------
# Instead of normalising over all V words, each row becomes binary classification: its target
# against k noise words drawn from q (shared by the whole batch, so the logits are still one
# GEMM, over the S <= B + k columns the batch needs: `sampled_columns`). With s = z - offset,
#   L_b = -log sigmoid(s[b, pos[b]]) - sum_j negw[j] * log sigmoid(-s[b, j])
# negw[j] counts how often column j was drawn as noise. Negative sampling (word2vec) uses
# offset 0; NCE uses offset = log(k q(w)), which makes exp(z) come out nearly normalised.
@njit(cache=True)
def sampled_columns(y, noise, mark, cols, pos, negw):
    """The distinct words of targets y (B,) and noise (k,) into cols[:S]; pos[b] = y[b]'s column,
    negw[:S] = how often each column was drawn as noise. Returns S. (mark: zeroed int32 buffer
    of size V, left zeroed.)"""
    S = 0
    for v in y:
        if mark[v] == 0:
            cols[S] = v
            negw[S] = 0.0
            S += 1
            mark[v] = S  # column + 1, so 0 means unseen
    for v in noise:
        if mark[v] == 0:
            cols[S] = v
            negw[S] = 0.0
            S += 1
            mark[v] = S
        negw[mark[v] - 1] += 1.0
    for b in range(y.shape[0]):
        pos[b] = mark[y[b]] - 1
    for k in range(S):
        mark[cols[k]] = 0
    return S


@njit(cache=True)
def draw_noise(cdf, u, out):
    """out[i] = the word whose cumulative-probability interval holds u[i] (binary search):
    u uniform in [0, 1) gives words distributed as the cdf's increments."""
    V = cdf.shape[0]
    for i in range(u.shape[0]):
        lo, hi = 0, V - 1
        while lo < hi:  # the first j with cdf[j] > u[i]
            mid = (lo + hi) // 2
            if cdf[mid] > u[i]:
                hi = mid
            else:
                lo = mid + 1
        out[i] = lo


@njit(cache=True)
def gather_columns(U, c, cols, S, Us, cs):
    """Us[:, k] = U[:, cols[k]], cs[k] = c[cols[k]] for k < S: the output layer for the sample."""
    for i in range(U.shape[0]):
        for k in range(S):
            Us[i, k] = U[i, cols[k]]
    for k in range(S):
        cs[k] = c[cols[k]]


@njit(cache=True, inline="always")
def _log_sigmoid(x):
    """log(1 / (1 + exp(-x))) without overflow for either sign."""
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


@njit(cache=True, inline="always")
def _sigmoid(x):
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


@njit(cache=True, parallel=True)
def sampled_loss_forward(z, pos, negw, offset, nll):
    """nll[b] = L_b above, for logits z (B, S) over the sampled columns."""
    for b in prange(z.shape[0]):
        total = -_log_sigmoid(z[b, pos[b]] - offset[pos[b]])
        for j in range(z.shape[1]):
            total -= negw[j] * _log_sigmoid(-(z[b, j] - offset[j]))
        nll[b] = total


@njit(cache=True, parallel=True)
def sampled_loss_backward(z, pos, negw, offset, scale):
    """z := scale * dL_b/dz: sigmoid(s) - 1 at the target, negw * sigmoid(s) at noise columns."""
    for b in prange(z.shape[0]):
        p = pos[b]
        sp = z[b, p] - offset[p]
        for j in range(z.shape[1]):
            z[b, j] = scale * negw[j] * _sigmoid(z[b, j] - offset[j])
        z[b, p] += scale * (_sigmoid(sp) - 1.0)


@njit(cache=True, parallel=True)
def sampled_loss_fused(z, pos, negw, offset, scale, nll):
    """Forward and backward in one pass (what training runs)."""
    for b in prange(z.shape[0]):
        p = pos[b]
        sp = z[b, p] - offset[p]
        total = -_log_sigmoid(sp)
        for j in range(z.shape[1]):
            s = z[b, j] - offset[j]
            total -= negw[j] * _log_sigmoid(-s)
            z[b, j] = scale * negw[j] * _sigmoid(s)
        z[b, p] += scale * (_sigmoid(sp) - 1.0)
        nll[b] = total


@njit(cache=True)
def sgd_update_columns(U, c, dUs, dcs, cols, S, lr, weight_decay):
    """The SGD step for the sampled output columns only: U[:, cols[k]] and c[cols[k]], k < S
    (weight decay on U, not on the bias c). Columns outside the sample had no gradient."""
    for i in range(U.shape[0]):
        for k in range(S):
            j = cols[k]
            U[i, j] -= lr * (dUs[i, k] + weight_decay * U[i, j])
    for k in range(S):
        c[cols[k]] -= lr * dcs[k]


@njit(cache=True, parallel=True)
def sgd_update(p, g, lr, weight_decay):
    """p -= lr * (g + weight_decay * p), elementwise over flat arrays."""
    for i in prange(p.shape[0]):
        p[i] -= lr * (g[i] + weight_decay * p[i])


@njit(cache=True, parallel=True)
def add_scaled(out, x, a):
    """out += a * x over flat arrays: one replica's share of an averaged gradient or model
    (fflm/distributed.py), without the temporary that numpy's `out += a * x` makes."""
    for i in prange(out.shape[0]):
        out[i] += a * x[i]


@njit(cache=True)
def sgd_update_rows(E, dE, rows, count, lr, weight_decay):
    """The same step for the embedding rows in `rows[:count]` only, which are then zeroed in dE.

    Rows no word of the batch touched have a zero gradient; skipping them (and their weight
    decay) is what makes an embedding step cost the batch, not the vocabulary.
    """
    m = E.shape[1]
    for k in range(count):
        r = rows[k]
        for j in range(m):
            E[r, j] -= lr * (dE[r, j] + weight_decay * E[r, j])
            dE[r, j] = 0.0


# --- adaptive steps (Adagrad, Adam): the same update with a per-parameter scale ------------------
# g = grad + weight_decay * p, as for SGD. Adagrad: acc += g², p -= lr g / (√acc + eps).
# Adam: m = β1 m + (1-β1) g, v = β2 v + (1-β2) g², p -= lr_t m / (√v + eps), where
# lr_t = lr √(1-β2^t) / (1-β1^t) undoes the zero start of m and v. The _rows versions touch the
# embedding rows of the batch only, as sgd_update_rows does ("lazy" moments, like PyTorch's
# SparseAdam), then zero those rows of dE.
@njit(cache=True, parallel=True)
def adagrad_update(p, g, acc, lr, weight_decay, eps):
    for i in prange(p.shape[0]):
        gi = g[i] + weight_decay * p[i]
        acc[i] += gi * gi
        p[i] -= lr * gi / (math.sqrt(acc[i]) + eps)


@njit(cache=True)
def adagrad_update_rows(E, dE, acc, rows, count, lr, weight_decay, eps):
    for k in range(count):
        r = rows[k]
        for j in range(E.shape[1]):
            gi = dE[r, j] + weight_decay * E[r, j]
            acc[r, j] += gi * gi
            E[r, j] -= lr * gi / (math.sqrt(acc[r, j]) + eps)
            dE[r, j] = 0.0


@njit(cache=True, parallel=True)
def adam_update(p, g, m, v, lr_t, beta1, beta2, weight_decay, eps):
    for i in prange(p.shape[0]):
        gi = g[i] + weight_decay * p[i]
        m[i] = beta1 * m[i] + (1.0 - beta1) * gi
        v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi
        p[i] -= lr_t * m[i] / (math.sqrt(v[i]) + eps)


@njit(cache=True)
def adam_update_rows(E, dE, m, v, rows, count, lr_t, beta1, beta2, weight_decay, eps):
    for k in range(count):
        r = rows[k]
        for j in range(E.shape[1]):
            gi = dE[r, j] + weight_decay * E[r, j]
            m[r, j] = beta1 * m[r, j] + (1.0 - beta1) * gi
            v[r, j] = beta2 * v[r, j] + (1.0 - beta2) * gi * gi
            E[r, j] -= lr_t * m[r, j] / (math.sqrt(v[r, j]) + eps)
            dE[r, j] = 0.0


@njit(cache=True)
def sum_squares_rows(dE, rows, count):
    """Squared norm of the touched rows of dE (for gradient-norm clipping)."""
    s = 0.0
    for k in range(count):
        r = rows[k]
        for j in range(dE.shape[1]):
            s += dE[r, j] * dE[r, j]
    return s


@njit(cache=True)
def scale_rows(dE, rows, count, factor):
    for k in range(count):
        r = rows[k]
        for j in range(dE.shape[1]):
            dE[r, j] *= factor
