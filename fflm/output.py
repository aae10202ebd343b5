"""Ingredient II's output layer for large vocabularies: the adaptive softmax (Grave et al.
2017), which is the course's multinomial logistic regression applied twice.

Words are ranked by frequency (vocabulary ids already are). The head is a softmax over the
`bounds[0]` most frequent words plus one entry per tail cluster; tail cluster i is a softmax
over its own words [bounds[i], bounds[i+1]), read through a projection P_i to d_i units:

    p(w | h) = softmax(h U_head + c)[w]                                          w in the head
    p(w | h) = softmax(h U_head + c)[head + i] * softmax(h P_i U_i + c_i)[w - bounds[i]]   w in cluster i

Both factors are exact softmaxes, so p is an exact distribution over the whole vocabulary
(perplexity, interpolation and sampling need no approximation). Training and scoring need only
each row's target cluster: a row costs H*(head) multiply-adds, plus H*d_i + d_i*V_i when its
target is in cluster i, against H*V for the full softmax. Only `probs` (the whole distribution,
for sampling with a temperature or top-k) computes every cluster for every row.

U_head is one parameter U (H, head words + clusters), as PyTorch's head is one Linear layer.
With tied embeddings every word's output vector is its embedding: the head's word columns are
E[:head]ᵀ (its cluster columns a parameter Uc of their own) and U_i = E[cluster i]ᵀ, so d_i = m.
"""

import math

import numpy as np

from . import kernels as K
from .vocab import Vocabulary

SOFTMAXES = ("full", "adaptive")
HEAD_SHARE, TAIL_SHARE = 0.85, 0.95  # the automatic cutoffs' token shares (see auto_cutoffs)
# --softmax auto picks the adaptive softmax from this many words on (BENCHMARKS.md, "Large
# vocabularies": below it, the full softmax is cheap enough and the presets were measured with it)
AUTO_ADAPTIVE = 20000


def auto_cutoffs(counts, min_cluster=64, head_share=None):
    """Cluster starts from training counts (one per id, ids ranked by frequency): the head holds
    the most frequent words that make up 85% of the tokens, the first tail cluster the words up
    to 95%, the second the rest. A cluster smaller than `min_cluster` words joins the one before.

    >>> auto_cutoffs([10, 0, 10] + [100] * 8 + [1] * 100, min_cluster=10)
    [11, 65]

    `head_share` (`--head-share`): the head's share instead of 85%; a smaller head is cheaper
    at a large vocabulary (BENCHMARKS.md: 12.4x the full softmax at 100k words with 75%,
    against 7.4x with 85%, at no measured perplexity cost); the budgeted recipe takes 75%
    where the 85% head would pass 4,096 words (budget.head_share_for).
    """
    counts = np.asarray(counts, dtype=np.float64)
    V = len(counts)
    share = np.cumsum(counts) / max(counts.sum(), 1.0)
    cuts = []
    for target in (head_share or HEAD_SHARE, TAIL_SHARE):
        k = max(int(np.searchsorted(share, target)) + 1, len(Vocabulary.SPECIALS), (cuts[-1] + 1) if cuts else 0)
        if k < V:
            cuts.append(k)
    bounds = cuts + [V]
    while len(bounds) > 1 and bounds[-1] - bounds[-2] < min_cluster:  # too small a last cluster
        del bounds[-2]
    while len(bounds) > 2 and bounds[1] - bounds[0] < min_cluster:
        del bounds[1]
    return bounds[:-1]


def tail_dims(config):
    """d_i for each tail cluster: H / tail_div**i (i from 1), at least 1; m when tied."""
    H = config.output_width
    if config.tied:
        return [config.embed_dim] * len(config.cutoffs)
    return [max(1, H // config.tail_div ** (i + 1)) for i in range(len(config.cutoffs))]


def shapes(config, V):
    """The output layer's parameters: weights (the head's U, or Uc when tied, then P_i and U_i per
    cluster) and biases (c over the head, c_i per cluster)."""
    H, bounds = config.output_width, list(config.cutoffs) + [V]
    C, head = len(config.cutoffs), bounds[0]
    weights = [("Uc", (H, C))] if config.tied else [("U", (H, head + C))]
    biases = [("c", (head + C,))]
    for i, d in enumerate(tail_dims(config)):
        size = bounds[i + 1] - bounds[i]
        weights.append((f"P{i + 1}", (H, d)))
        if not config.tied:
            weights.append((f"U{i + 1}", (d, size)))
        biases.append((f"c{i + 1}", (size,)))
    return weights, biases


class Buffers:
    """The adaptive layer's batch buffers, made once per workspace."""

    def __init__(self, layer, B, dtype):
        H, dmax = layer.H, max(layer.dims, default=1)
        Vmax = max((layer.bounds[i + 1] - layer.bounds[i] for i in range(layer.C)), default=1)
        self.zh = np.empty((B, layer.head + layer.C), dtype=dtype)  # head logits, then dL/dz
        self.head_y = np.empty(B, dtype=np.int32)  # each row's head target (a word or a cluster)
        self.rows = np.empty(B, dtype=np.int64)  # tail rows grouped by cluster
        self.starts = np.empty(layer.C + 1, dtype=np.int64)
        self.tail_y = np.empty(B, dtype=np.int32)  # their targets within the cluster
        self.tail_nll = np.empty(B, dtype=dtype)
        self.A = np.empty((B, H), dtype=dtype)  # the tail rows' inputs, gathered
        self.dA = np.empty((B, H), dtype=dtype)
        self.tmp = np.empty((B, H), dtype=dtype)
        self.Q = np.empty(B * dmax, dtype=dtype)  # projections, (n_i, d_i) views
        self.dQ = np.empty(B * dmax, dtype=dtype)
        self.Z = np.empty(B * Vmax, dtype=dtype)  # a cluster's logits, (n_i, V_i) views


class AdaptiveSoftmax:
    """Views of an FFNNLM's output-layer parameters and gradients, and the layer's forward and
    backward over them. Everything is written into buffers given by the caller (Buffers)."""

    def __init__(self, model):
        cfg, V = model.config, len(model.vocab)
        self.bounds = np.array(list(cfg.cutoffs) + [V], dtype=np.int64)
        self.head, self.C, self.H = int(self.bounds[0]), len(cfg.cutoffs), cfg.output_width
        self.dims = tail_dims(cfg)
        self.tied = cfg.tied
        self.model = model  # whose precision the products follow (model._mm: bf16's Matmul, or None)
        p, g = model.params, model.grads
        E, dE = model.E, model.dE
        if cfg.tied:  # the head in two parts: the words' columns are E's rows, the clusters' Uc
            self.U, self.dU, self.Uc, self.dUc = E[: self.head].T, dE[: self.head], p["Uc"], g["Uc"]
        else:  # one (H, head + C) matrix: each product is one contiguous GEMM
            self.U, self.dU, self.Uc, self.dUc = p["U"], g["U"], None, None
        self.c, self.dc = p["c"], g["c"]
        self.P, self.dP, self.Ut, self.dUt, self.ct, self.dct = [], [], [], [], [], []
        for i in range(self.C):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            self.P.append(p[f"P{i + 1}"])
            self.dP.append(g[f"P{i + 1}"])
            if cfg.tied:  # the tied gradient is dE's rows (V_i, m), the transpose of dU_i
                self.Ut.append(E[lo:hi].T)
                self.dUt.append(dE[lo:hi])
            else:
                self.Ut.append(p[f"U{i + 1}"])
                self.dUt.append(g[f"U{i + 1}"])
            self.ct.append(p[f"c{i + 1}"])
            self.dct.append(g[f"c{i + 1}"])

    def dense_weights(self):
        """(matrix, gradient) for each of the layer's weight matrices in the model's `dense` (not
        the tied ones, which are E's rows): what bf16's SGD step keeps copies of."""
        head = [(self.Uc, self.dUc)] if self.tied else [(self.U, self.dU)]
        tails = [(self.Ut[i], self.dUt[i]) for i in range(self.C)] if not self.tied else []
        return head + [(self.P[i], self.dP[i]) for i in range(self.C)] + tails

    def _mm(self, a, b, out, a_t=False, b_t=False, weight=False, role="out"):
        """out = op(a) · op(b): numpy in fp32, bfloat16 operands in bf16 (fflm/bf16.py); `weight`:
        b is a parameter (packed once while the model scores)."""
        mm = self.model._mm
        if mm is None:
            np.matmul(a.T if a_t else a, b.T if b_t else b, out=out)
        else:
            mm.dot(a, b, out, a_t, b_t, weight, "adaptive." + role)

    def init_bias(self, log_unigram):
        """Biases that make an untrained layer the unigram model: log p(w) in the head, log p(cluster)
        for each cluster's entry, log p(w | cluster) inside it."""
        head = self.head
        self.c[:head] = log_unigram[:head]
        for i in range(self.C):
            part = log_unigram[self.bounds[i] : self.bounds[i + 1]]
            top = part.max()
            total = top + math.log(np.exp(part - top).sum())
            self.c[head + i] = total
            self.ct[i][...] = part - total

    def _head_logits(self, inp, zh):
        if self.tied:
            self._mm(inp, self.U, zh[:, : self.head], weight=True, role="head")  # (B, H) @ (H, head) -> (B, head)
            self._mm(inp, self.Uc, zh[:, self.head :], weight=True, role="clusters")  # (B, H) @ (H, C) -> (B, C)
        else:
            self._mm(inp, self.U, zh, weight=True, role="head")  # (B, H) @ (H, head + C)
        K.bias_forward(zh, self.c)

    def _route(self, y, buf):
        B = len(y)
        K.cluster_targets(y, self.bounds, buf.head_y[:B], buf.rows, buf.starts, buf.tail_y)
        return buf.head_y[:B], int(buf.starts[self.C])

    def _tail_logits(self, i, A, buf):
        """Cluster i's projections Q (n, d_i) and logits Z (n, V_i) for the rows A (n, H)."""
        n, d, size = len(A), self.dims[i], int(self.bounds[i + 1] - self.bounds[i])
        Q = buf.Q[: n * d].reshape(n, d)
        Z = buf.Z[: n * size].reshape(n, size)
        self._mm(A, self.P[i], Q, weight=True, role=f"P{i}")  # (n, H) @ (H, d_i)
        self._mm(Q, self.Ut[i], Z, weight=True, role=f"U{i}")  # (n, d_i) @ (d_i, V_i)
        K.bias_forward(Z, self.ct[i])
        return Q, Z

    def nll(self, inp, y, buf, nll):
        """nll[b] = -log p(y[b] | inp[b]), exactly, computing only the targets' clusters."""
        B = len(y)
        zh = buf.zh[:B]
        self._head_logits(inp, zh)
        head_y, nt = self._route(y, buf)
        K.softmax_xent_forward(zh, head_y, Vocabulary.BOS_ID, nll)
        if nt:
            rows = buf.rows[:nt]
            K.gather_rows(inp, rows, buf.A[:nt])
            for i in range(self.C):
                s, e = buf.starts[i], buf.starts[i + 1]
                if e > s:
                    _, Z = self._tail_logits(i, buf.A[s:e], buf)
                    K.softmax_xent_forward(Z, buf.tail_y[s:e], -1, buf.tail_nll[s:e])
            nll[rows] += buf.tail_nll[:nt]

    def loss_and_grad(self, inp, y, buf, scale, nll, d_inp):
        """The forward (nll as above) and the backward for L = scale * sum(nll): every output
        parameter's gradient (overwritten) and dL/d(inp) into d_inp (B, H)."""
        B = len(y)
        zh = buf.zh[:B]
        self._head_logits(inp, zh)
        head_y, nt = self._route(y, buf)
        K.softmax_xent_fused(zh, head_y, Vocabulary.BOS_ID, scale, nll)  # zh := dL/dzh
        K.column_sums(zh, self.dc)
        if self.tied:
            words, clusters = zh[:, : self.head], zh[:, self.head :]
            self._mm(words, inp, self.dU, a_t=True, role="dhead")  # dUᵀ = dzᵀ inp, straight into E's rows (head, H)
            self._mm(inp, clusters, self.dUc, a_t=True, role="dclusters")
            self._mm(words, self.U, d_inp, b_t=True, weight=True, role="dinp")  # (B, head) @ (head, H)
            tmp = buf.tmp[:B]
            self._mm(clusters, self.Uc, tmp, b_t=True, weight=True, role="dinp_c")
            d_inp += tmp
        else:
            self._mm(inp, zh, self.dU, a_t=True, role="dhead")  # (H, B) @ (B, head + C)
            self._mm(zh, self.U, d_inp, b_t=True, weight=True, role="dinp")  # (B, head + C) @ (head + C, H)
        rows = buf.rows[:nt]
        if nt:
            K.gather_rows(inp, rows, buf.A[:nt])
        for i in range(self.C):
            s, e = int(buf.starts[i]), int(buf.starts[i + 1])
            n = e - s
            if n == 0:  # no target in this cluster: its parameters get no gradient
                self.dP[i][...] = 0.0
                self.dUt[i][...] = 0.0
                self.dct[i][...] = 0.0
                continue
            A = buf.A[s:e]
            Q, Z = self._tail_logits(i, A, buf)
            K.softmax_xent_fused(Z, buf.tail_y[s:e], -1, scale, buf.tail_nll[s:e])  # Z := dL/dZ
            if self.tied:
                self._mm(Z, Q, self.dUt[i], a_t=True, role=f"dU{i}")  # (V_i, n) @ (n, m): E's rows of the cluster
            else:
                self._mm(Q, Z, self.dUt[i], a_t=True, role=f"dU{i}")  # (d_i, n) @ (n, V_i)
            K.column_sums(Z, self.dct[i])
            dQ = buf.dQ[: n * self.dims[i]].reshape(n, self.dims[i])
            self._mm(Z, self.Ut[i], dQ, b_t=True, weight=True, role=f"dQ{i}")  # (n, V_i) @ (V_i, d_i)
            self._mm(A, dQ, self.dP[i], a_t=True, role=f"dP{i}")  # (H, n) @ (n, d_i)
            self._mm(dQ, self.P[i], buf.dA[s:e], b_t=True, weight=True, role=f"dA{i}")  # (n, d_i) @ (d_i, H)
        if nt:
            nll[rows] += buf.tail_nll[:nt]
            K.scatter_add_rows(buf.dA[:nt], rows, d_inp)

    def log_probs(self, inp, buf, out):
        """out (B, V) float64 := log p(w | inp[b]) for every word: every cluster for every row."""
        B = len(inp)
        zh = buf.zh[:B]
        self._head_logits(inp, zh)
        head = self._log_softmax(zh, Vocabulary.BOS_ID)
        out[:, : self.head] = head[:, : self.head]
        for i in range(self.C):
            _, Z = self._tail_logits(i, inp, buf)  # every row: the buffers hold B rows
            out[:, self.bounds[i] : self.bounds[i + 1]] = self._log_softmax(Z, -1) + head[:, self.head + i, None]

    @staticmethod
    def _log_softmax(z, skip):
        p = np.empty(z.shape, dtype=np.float64)
        K.softmax_forward(z.astype(np.float64), skip, p)
        with np.errstate(divide="ignore"):
            return np.log(p)

    def sample(self, inp, buf, u, no_unk):
        """One word per row drawn from p(. | inp[b]) with uniforms u (B, 2): the head from u[:, 0],
        then, for rows that drew a cluster, a word of it from u[:, 1]. Exact, and no row computes a
        cluster it did not draw."""
        B = len(inp)
        zh = buf.zh[:B]
        self._head_logits(inp, zh)
        p = np.empty(zh.shape, dtype=np.float64)
        K.softmax_forward(zh.astype(np.float64), Vocabulary.BOS_ID, p)
        if no_unk:  # <unk> is in the head: renormalising the head renormalises the whole
            p[:, Vocabulary.UNK_ID] = 0.0
        drawn = _draw(p, u[:, 0])  # a head word, or head + i for cluster i
        words = drawn.copy()
        for i in range(self.C):
            rows = np.flatnonzero(drawn == self.head + i)
            if len(rows):
                _, Z = self._tail_logits(i, np.ascontiguousarray(inp[rows]), buf)
                q = np.empty(Z.shape, dtype=np.float64)
                K.softmax_forward(Z.astype(np.float64), -1, q)
                words[rows] = self.bounds[i] + _draw(q, u[rows, 1])
        return words


def _draw(p, u):
    """For each row, the first column whose cumulative probability exceeds u * (row total)."""
    cum = np.cumsum(p, axis=1)
    return np.minimum((cum < u[:, None] * cum[:, -1:]).sum(axis=1), p.shape[1] - 1)
