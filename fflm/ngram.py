"""The n-gram baseline: interpolated modified Kneser-Ney as KenLM's lmplz builds it, add-k, MLE.

Every neural result is judged against this model, so it is exactly as strong as KenLM's:
same counting conventions, same discounts, same interpolation, same ARPA output.

Conventions (KenLM's, which follow Chen & Goodman 1998):
- A sentence is <s> w1 .. wm </s>; an n-gram may start with <s> but never contains it
  elsewhere, so at the start of a sentence the model uses the shorter n-grams <s> w1 ...
- Highest order and n-grams that start with <s>: raw counts. Lower orders: the number of
  distinct words seen to their left (the Kneser-Ney continuation count).
- Three discounts per order, D_j = j - (j+1) Y n_{j+1} / n_j with Y = n_1 / (n_1 + 2 n_2).
- p(w | h) = (a(hw) - D(a(hw))) / sum_v a(hv) + gamma(h) p(w | h'), and at the bottom the
  uniform distribution over the vocabulary without <s>. gamma(h) is the ARPA back-off weight.

Storage: order k keeps its distinct n-grams as sorted int64 keys, key = (index of the
(k-1)-gram prefix in order k-1) * V + last word, so any order fits in 64 bits and lookups are
vectorised binary searches. Order 1 is the whole vocabulary, key = word id.
"""

import json
import re
import warnings

import numpy as np
from numba import njit

from .errors import FflmError, FflmWarning
from .fileio import atomic_write, read_bytes
from .lm import LanguageModel
from .text import decode
from .vocab import Vocabulary
from .windows import Windows

SMOOTHINGS = ("kn", "add-k", "mle")
MAX_ORDER = 10
ARPA_LOG_ZERO = -99.0  # how ARPA files spell log10(0)
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # KenLM's --discount_fallback defaults
ARPA_BLOCK = 1 << 20  # entries an ARPA file is written in at a time


def _find(keys, query):
    """Index of each query in the sorted `keys`, or -1."""
    j = np.searchsorted(keys, query)
    j_clipped = np.minimum(j, len(keys) - 1)
    return np.where((j < len(keys)) & (keys[j_clipped] == query), j_clipped, -1)


def _position_in_sentence(ids):
    """Distance of each position from the last <s> at or before it (0 on <s> itself)."""
    where = np.arange(len(ids))
    last_bos = np.maximum.accumulate(np.where(ids == Vocabulary.BOS_ID, where, 0))
    return where - last_bos


def _count(ids, V, order):
    """Distinct n-grams of orders 1..order in an id stream, with raw counts.

    Returns per order a dict: keys (sorted), raw counts, prefix (index of the (k-1)-gram
    prefix, order >= 2), suffix (index of the (k-1)-gram suffix, order >= 2), bos (starts with <s>).
    """
    ids64 = ids.astype(np.int64)
    pos = _position_in_sentence(ids)
    is_target = ids != Vocabulary.BOS_ID
    tables = [
        {
            "keys": np.arange(V, dtype=np.int64),
            "raw": np.bincount(ids64[is_target], minlength=V),
            "bos": np.arange(V) == Vocabulary.BOS_ID,
        }
    ]
    ending = ids64  # index (in order k-1) of the (k-1)-gram ending at each position
    for k in range(2, order + 1):
        p = np.flatnonzero(is_target & (pos >= k - 1))
        if len(p) == 0:
            longest = int(pos.max())
            raise FflmError(
                f"order {order} is larger than any sentence allows (the longest has {longest - 1} words "
                f"plus </s>, so n-grams stop at order {longest + 1 if longest else 1})"
            )
        key = ending[p - 1] * V + ids64[p]
        keys, first, inverse, raw = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
        prefix = keys // V
        tables.append(
            {
                "keys": keys,
                "raw": raw,
                "prefix": prefix,
                "suffix": ending[p[first]],  # the (k-1)-gram ending where this k-gram ends
                "bos": tables[-1]["bos"][prefix],
            }
        )
        ending = np.full(len(ids), -1, dtype=np.int64)
        ending[p] = inverse.reshape(-1)
    return tables


def _count_shard(job):
    """One shard's n-grams, orders 1..order, in _count's layout but numbered within the shard
    (keys: index of the (k-1)-gram prefix in the shard's table * V + word): (keys, raw) per order."""
    ids, V, order = job
    ids64 = np.asarray(ids).astype(np.int64)
    pos = _position_in_sentence(ids64)
    is_target = ids64 != Vocabulary.BOS_ID
    out = [(None, np.bincount(ids64[is_target], minlength=V))]
    ending = ids64
    for k in range(2, order + 1):
        p = np.flatnonzero(is_target & (pos >= k - 1))
        keys, inverse, raw = np.unique(ending[p - 1] * V + ids64[p], return_inverse=True, return_counts=True)
        out.append((keys, raw))
        ending = np.full(len(ids64), -1, dtype=np.int64)
        ending[p] = inverse.reshape(-1)
    return out


def _count_sharded(ids, V, order, shards, address=None):
    """_count's tables, counted in `shards` pieces of whole sentences as Ray tasks and merged
    order by order (a shard's k-gram keys renumbered through the merged (k-1)-gram table):
    equal, array for array, to _count(ids, V, order). The merge and what follows run here."""
    from .cluster import map_ordered

    starts = np.flatnonzero((ids == Vocabulary.BOS_ID) & (np.concatenate(([Vocabulary.EOS_ID], ids[:-1]))
                                                          != Vocabulary.BOS_ID))
    cuts = sorted({0, len(ids)} | {int(starts[np.searchsorted(starts, len(ids) * i // shards)])
                                   for i in range(1, shards) if np.searchsorted(starts, len(ids) * i // shards)
                                   < len(starts)})
    jobs = [(ids[a:b], V, order) for a, b in zip(cuts, cuts[1:])]
    parts = [counted for _, counted in map_ordered(_count_shard, jobs, len(jobs), address)]
    tables = [{"keys": np.arange(V, dtype=np.int64), "raw": sum(p[0][1] for p in parts),
               "bos": np.arange(V) == Vocabulary.BOS_ID}]
    renumber = [np.arange(V, dtype=np.int64)] * len(parts)  # each shard's (k-1)-gram index -> the merged one
    for k in range(2, order + 1):
        local = [p[k - 1] for p in parts]
        merged = np.concatenate([r[keys // V] * V + keys % V for r, (keys, _) in zip(renumber, local)])
        if len(merged) == 0:
            longest = int(_position_in_sentence(ids).max())
            raise FflmError(
                f"order {order} is larger than any sentence allows (the longest has {longest - 1} words "
                f"plus </s>, so n-grams stop at order {longest + 1 if longest else 1})"
            )
        keys, inverse = np.unique(merged, return_inverse=True)
        inverse = inverse.reshape(-1)
        raw = np.bincount(inverse, weights=np.concatenate([r for _, r in local]), minlength=len(keys))
        bounds = np.cumsum([0] + [len(keys_) for keys_, _ in local])
        renumber = [inverse[a:b] for a, b in zip(bounds, bounds[1:])]
        prefix = keys // V
        below = tables[-1]
        # the suffix (k-1)-gram: the prefix's own suffix followed by the last word
        suffix = keys % V if k == 2 else _find(below["keys"], below["suffix"][prefix] * V + keys % V)
        tables.append({"keys": keys, "raw": raw.astype(np.int64), "prefix": prefix, "suffix": suffix,
                       "bos": below["bos"][prefix]})
    return tables


def _count_ray(ids, V, order, address, shards=0):
    from .cluster import connect, ray_module

    started = connect(address)
    try:
        shards = shards or 2 * int(ray_module().cluster_resources().get("CPU", 1))
        return _count_sharded(ids, V, order, shards)
    finally:
        if started:
            ray_module().shutdown()


def _kenlm_last_ngrams(ids, V, tables):
    """Per lower order, the index of the n-gram KenLM's lmplz meets last (or -1).

    lmplz (adjust_counts.cc) flushes the n-grams still open at the end of its pass with
    their raw instead of their adjusted count into the count-of-counts behind the
    discounts. They are the suffixes of the highest-order n-gram that is last in its
    suffix order, with words numbered by first appearance after <unk>, <s>, </s>.
    Reproducing this makes fflm's discounts equal KenLM's to the digit.
    """
    N = len(tables)
    uniq, first = np.unique(ids, return_index=True)
    rank = np.full(V, -1, dtype=np.int64)
    rank[uniq[np.argsort(first)]] = np.arange(len(uniq)) + 3
    rank[:3] = (0, 1, 2)  # <unk>, <s>, </s>: KenLM's fixed ids
    last_word = int(np.argmax(np.where(ids != Vocabulary.BOS_ID, rank[ids], -1)))
    last_word = int(ids[last_word])

    def candidates(k):
        t = tables[k - 1]
        return np.flatnonzero((t["keys"] % V == last_word) & ((k == N) | t["bos"])).tolist()

    return _best_last_ngram(N, V, rank, last_word, candidates, lambda k, i: int(tables[k - 1]["keys"][i]),
                            lambda k, i: int(tables[k - 1]["suffix"][i]))


def _best_last_ngram(N, V, rank, last_word, candidates, key, suffix):
    """_kenlm_last_ngrams given where the tables are: candidates(k) (order k's entries that end
    with `last_word`, of the highest order or starting with <s>), key(k, i), suffix(k, i)."""
    # KenLM's highest-order stream also holds the <s>-padded n-grams that start a sentence:
    # here those are the shorter entries that start with <s>.
    best, best_at = None, None
    for k in range(2, N + 1):
        for i in candidates(k):
            words, j = [], i
            for kk in range(k, 1, -1):
                kv = key(kk, j)
                words.append(int(rank[kv % V]))
                j = kv // V
            words.append(int(rank[j]))
            seq = tuple(words) + (1,) * (N - k)  # reversed: last word first, padded with <s>
            if best is None or seq > best:
                best, best_at = seq, (k, i)
    last = [-1] * N
    if best_at is not None:
        k, i = best_at
        while k >= 1:
            last[k - 1] = i
            if k == 1:
                break
            i = suffix(k, i)
            k -= 1
    last[N - 1] = -1  # the highest order is counted correctly
    return last


def prune_thresholds(prune, order):
    """lmplz's --prune: a count per order (n-grams seen at most that often go), non-decreasing,
    the first 0 (unigrams stay), the last repeated up to `order`; None or all zeros: None.

    >>> prune_thresholds([0, 0, 1], 5)
    (0, 0, 1, 1, 1)
    """
    if not prune:
        return None
    prune = [int(x) for x in prune]
    if len(prune) > order:
        raise FflmError(f"--prune gives {len(prune)} thresholds for an order-{order} model")
    if any(x < 0 for x in prune):
        raise FflmError("--prune thresholds are counts: 0 or more")
    if prune[0] != 0:
        raise FflmError("--prune: unigrams are not pruned; the first threshold must be 0 (as lmplz's)")
    if any(b < a for a, b in zip(prune, prune[1:])):
        raise FflmError("--prune thresholds must not decrease (a longer n-gram would outlive its parts)")
    prune = tuple(prune + [prune[-1]] * (order - len(prune)))
    return prune if any(prune) else None


def excluded_words(vocab, limit_vocab):
    """A bool per word id: outside `limit_vocab` (words; the specials are always in), or None."""
    if limit_vocab is None:
        return None
    keep = set(limit_vocab) | set(Vocabulary.SPECIALS)
    return np.array([w not in keep for w in vocab.words], dtype=bool)


def _pruned(V, keys, logprob, bow, kept):
    """The tables without the pruned entries, each order's keys renumbered through the order
    below's (a kept n-gram's prefix is kept: its count is at least as large, its words a
    subset); with unigrams dropped (--limit-vocab) the words are renumbered too."""
    words = np.arange(V, dtype=np.int64) if kept[0] is None else np.cumsum(kept[0]) - 1  # old id -> new
    n_words = V if kept[0] is None else int(np.count_nonzero(kept[0]))
    first = slice(None) if kept[0] is None else kept[0]
    out_keys = [np.arange(n_words, dtype=np.int64)]
    out_lp, out_bow = [logprob[0][first]], [bow[0][first]]
    index = words  # the order below: old index -> new
    for k in range(1, len(keys)):
        keep = kept[k]
        prefix, word = np.divmod(keys[k][keep], V)
        out_keys.append(index[prefix] * n_words + words[word])
        out_lp.append(logprob[k][keep])
        out_bow.append(bow[k][keep])
        index = np.cumsum(keep) - 1
    return out_keys, out_lp, out_bow


def _kn_discounts(adjusted, order_k, fallback):
    """Modified Kneser-Ney discounts (D1, D2, D3+) from counts of adjusted counts (C&G eq. 26)."""
    return _kn_discounts_from([int(np.count_nonzero(adjusted == j)) for j in range(5)], order_k, fallback)


def _kn_discounts_from(n, order_k, fallback):
    """The discounts from n[j], the number of n-grams with adjusted count j (j = 0..4)."""
    problem = None
    if 0 in n[1:4]:
        j = n[1:4].index(0) + 1
        problem = f"no {order_k}-grams have adjusted count {j}"
    else:
        y = n[1] / (n[1] + 2.0 * n[2])
        d = tuple(j - (j + 1) * y * n[j + 1] / n[j] for j in (1, 2, 3))
        bad = [j for j in (1, 2, 3) if not 0.0 <= d[j - 1] <= j]
        if not bad:
            return d
        problem = f"the {order_k}-gram discount for count {bad[0]} is out of range ({d[bad[0] - 1]:.4g})"
    if fallback is None:
        raise FflmError(f"cannot estimate Kneser-Ney discounts: {problem}; is the corpus very small?")
    warnings.warn(
        f"{problem} (the corpus is small); using fallback discounts {' '.join(map(str, fallback))} "
        f"for order {order_k}",
        FflmWarning,
        stacklevel=3,
    )
    return tuple(float(x) for x in fallback)


# --- lookups: one pass over the rows, each row's context carried over from the row before ---------
@njit(cache=True, inline="always")
def _search(keys, q):
    """Index of q in the sorted keys, or -1."""
    lo, hi = 0, keys.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < q:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < keys.shape[0] and keys[lo] == q else -1


def _read_only(a):
    view = a.view()
    view.flags.writeable = False
    return view


# Hashed lookups (KenLM's "probing" idea): a power-of-two table per order whose slots hold the
# index of a key (-1: empty), found by multiplying the key by 2^64/phi and probing on.
_HASH_MULT = np.uint64(0x9E3779B97F4A7C15)
HASH_SPACE = 1.5  # slots per key, at least (then up to the next power of two)


def hash_size(n):
    return 1 << max(1, int(np.ceil(np.log2(max(1.0, n * HASH_SPACE)))))


@njit(cache=True, inline="always")
def _slot(q, mask):
    return np.int64((np.uint64(q) * _HASH_MULT) >> np.uint64(32)) & mask


def hash_table(keys, size=None, table=None):
    """The probing table of `keys` (distinct): hash_size(len(keys)) slots (a power of two), int32
    while the indices fit, else int64 (or `table`, given filled with -1); built in index order,
    so always the same table."""
    if table is None:
        size = size or hash_size(len(keys))
        table = np.full(size, -1, dtype=np.int32 if len(keys) < 2**31 else np.int64)
    _fill_hash(keys, table)
    return table


@njit(cache=True)
def _fill_hash(keys, table):
    mask = table.shape[0] - 1
    for i in range(keys.shape[0]):
        s = _slot(keys[i], mask)
        while table[s] != -1:
            s = (s + 1) & mask
        table[s] = i


@njit(cache=True, inline="always")
def _find_key(keys, table, q):
    """Index of q in the sorted keys, or -1: by the hash table when there is one."""
    if table.shape[0] == 0:
        return _search(keys, q)
    mask = table.shape[0] - 1
    s = _slot(q, mask)
    while True:
        i = table[s]
        if i < 0:
            return -1
        if keys[i] == q:
            return i
        s = (s + 1) & mask


@njit(cache=True)
def _lookup(keys, log10p, bow, tables, gram, V, bos, logp, length):
    """log10 p(last column | the others) and the matched n-gram's length, row by row, for
    `gram` (B, N) with the model's own ids: NGramLM.logprob_windows' arithmetic. tgt[k-1] is
    the index of the k-gram ending at the target, ctx[k-1] the one ending just before it
    (-1: none, or it would reach back past the row's last <s>). Consecutive rows of a stream
    are windows shifted by one, so a row's context is the row before's target: one binary
    search per order a token instead of N(N-1)/2."""
    B, N = gram.shape
    end = np.empty((N, N), dtype=np.int64)
    ctx = np.full(N, -1, dtype=np.int64)
    tgt = np.full(N, -1, dtype=np.int64)
    for b in range(B):
        shifted = b > 0
        if shifted:
            for c in range(N - 1):
                if gram[b, c] != gram[b - 1, c + 1]:
                    shifted = False
                    break
        if shifted:
            for k in range(N):
                ctx[k] = tgt[k]
        elif N >= 2:  # the context's k-grams column by column, as logprob_windows_plain does
            last = -1
            for c in range(N - 1):
                w = gram[b, c]
                if w == bos:
                    last = c
                end[c, 0] = w
                for k in range(2, c + 2):
                    if c - k + 1 < last:
                        for kk in range(k, c + 2):
                            end[c, kk - 1] = -1
                        break
                    prev = end[c - 1, k - 2]
                    end[c, k - 1] = _find_key(keys[k - 1], tables[k - 1], prev * V + w) if prev >= 0 else -1
            for k in range(N - 1):
                ctx[k] = end[N - 2, k]
        last = -1
        for c in range(N):
            if gram[b, c] == bos:
                last = c
        w = gram[b, N - 1]
        tgt[0] = w
        for k in range(2, N + 1):
            if N - k < last:
                for kk in range(k, N + 1):
                    tgt[kk - 1] = -1
                break
            prev = ctx[k - 2]
            tgt[k - 1] = _find_key(keys[k - 1], tables[k - 1], prev * V + w) if prev >= 0 else -1
        got, L = np.nan, 0
        for k in range(N, 0, -1):  # the longest n-gram with a probability
            i = tgt[k - 1]
            if i >= 0 and not np.isnan(log10p[k - 1][i]):
                got, L = log10p[k - 1][i], k
                break
        for l in range(max(L, 1), N):  # the back-offs of the longer contexts
            i = ctx[l - 1]
            if i >= 0:
                got += bow[l - 1][i]
        logp[b], length[b] = got, L


class NGramLM(LanguageModel):
    """A back-off n-gram model in ARPA form: log10 probabilities and back-off weights per n-gram.

    >>> from fflm import Vocabulary, Windows
    >>> sents = [["a", "b"], ["a", "c"], ["b", "a", "b"]]
    >>> vocab = Vocabulary.build(sents)
    >>> lm = NGramLM.estimate(Windows.from_sentences(sents, vocab, 2), vocab, 2, smoothing="add-k", k=1.0)
    >>> p = 10 ** lm.distribution(["<s>"])   # p(w | <s>) for every w
    >>> round(float(p.sum()), 6)
    1.0

    The sentence-level API (fflm.lm.LanguageModel), in log10 like KenLM:

    >>> round(10 ** lm.logprob("b", ["a"]), 6)    # add-one: (count(a b) + 1) / (count(a) + 5 words) = 3/8
    0.375
    >>> parts = lm.logprob("a") + lm.logprob("b", ["a"]) + lm.logprob("</s>", ["b"])
    >>> abs(lm.score("a b") - parts) < 1e-12
    True
    >>> abs(lm.perplexity(["a b", "b a"]) - 10 ** -((lm.score("a b") + lm.score("b a")) / 6)) < 1e-9
    True
    """

    def __init__(self, vocab, order, keys, logprob, bow, smoothing, discounts=None, k=None, meta=None):
        self.vocab = vocab
        self.order = order
        self.keys = keys  # per order: sorted int64 keys
        self.log10p = logprob  # per order: float64 log10 p; NaN = a context-only entry
        self.bow = bow  # per order: float64 log10 back-off weight (0 where not a context)
        self.smoothing = smoothing
        self.discounts = discounts  # per order (D1, D2, D3+) for Kneser-Ney
        self.k = k
        self.meta = meta or {}  # free-form facts kept in the ARPA header (text settings, corpus)
        self._tables = None  # the arrays as the lookup kernel takes them, made on first use
        self._hashes = None  # per order the keys' hash table (a binary file's, or made on first use)
        self.prune = None  # lmplz's --prune thresholds the model was estimated with
        self.hashed = True

    def _windows(self, sentences):
        return Windows.from_sentences(sentences, self.vocab, self.order)

    def _log10(self, contexts, targets):
        return self.logprob_windows(contexts, targets)[0]

    @classmethod
    def train(cls, sentences, order=3, smoothing="kn", k=1.0, min_count=1):
        """Build the vocabulary and estimate the model from sentences (strings or token lists).

        >>> lm = NGramLM.train(["the cat sat", "the dog sat", "a cat ran"], order=2, smoothing="add-k")
        >>> lm.name, len(lm.vocab)
        ('laplace2', 9)
        """
        sents = [s.split() if isinstance(s, str) else list(s) for s in sentences]
        vocab = Vocabulary.build(sents, min_count=min_count)
        return cls.estimate(Windows.from_sentences(sents, vocab, order), vocab, order, smoothing=smoothing, k=k)

    @property
    def name(self):
        if self.smoothing == "add-k":
            return f"addk{self.order}" if self.k != 1 else f"laplace{self.order}"
        return f"{self.smoothing}{self.order}"

    @property
    def sizes(self):
        return [len(k) for k in self.keys]

    # --- estimation ----------------------------------------------------------------------
    @classmethod
    def estimate(
        cls, windows, vocab, order, smoothing="kn", k=1.0, discount_fallback=FALLBACK_DISCOUNTS, kenlm_compat=True,
        ray=None, shards=0, prune=None, limit_vocab=None,
    ):
        """Estimate from a Windows stream (only its sentence structure and ids are used).

        smoothing: "kn" (interpolated modified Kneser-Ney), "add-k" (k=1: Laplace), "mle".
        discount_fallback: discounts used, with a warning, for an order whose count-of-counts
        cannot give Kneser-Ney discounts (tiny corpora); None makes that an error.
        kenlm_compat: count-of-counts exactly as KenLM's lmplz takes them (see
        _kenlm_last_ngrams); False gives the textbook statistic. The two differ by one
        n-gram per order, a change of about 1e-3 in the discounts.
        ray: count in `shards` pieces (default: two per CPU of the cluster) as Ray tasks ("local",
        or a cluster's address); the same model, entry for entry.
        prune: count thresholds per order as lmplz's --prune (0 0 1: trigrams and longer seen once
        go; the last applies on); see prune_thresholds.
        limit_vocab: the words to keep (lmplz's --limit_vocab_file): every n-gram with another word
        goes, the unigram too, and the model's vocabulary is those words (and <unk>, <s>, </s>);
        their counts go to the back-offs and the uniform floor stays over the whole vocabulary.
        """
        if not 1 <= order <= MAX_ORDER:
            raise FflmError(f"--order must be between 1 and {MAX_ORDER}, not {order}")
        if smoothing not in SMOOTHINGS:
            raise FflmError(f"unknown smoothing {smoothing!r} (choose from {', '.join(SMOOTHINGS)})")
        if smoothing == "add-k" and not (k > 0 and np.isfinite(k)):
            raise FflmError(f"--k must be a positive number, not {k}")
        V = len(vocab)
        prune = prune_thresholds(prune, order)
        if (prune or limit_vocab is not None) and smoothing != "kn":
            raise FflmError("--prune and --limit-vocab go with Kneser-Ney (as lmplz's); add-k and mle keep every n-gram")
        dropped = excluded_words(vocab, limit_vocab)
        if len(windows) == 0:
            raise FflmError("cannot estimate an n-gram model from an empty corpus")
        if ray:
            tables = _count_ray(windows.ids, V, order, ray, shards)
        else:
            tables = _count(windows.ids, V, order)
        if smoothing == "kn":
            last = _kenlm_last_ngrams(windows.ids, V, tables) if kenlm_compat else [-1] * order
            return cls._kneser_ney(vocab, order, tables, discount_fallback, last, prune, dropped)
        return cls._add_k(vocab, order, tables, 0.0 if smoothing == "mle" else float(k), smoothing)

    @classmethod
    def _kneser_ney(cls, vocab, order, tables, fallback, last, prune=None, dropped=None):
        V = len(vocab)
        # pruned (lmplz's --prune): raw count at most the order's threshold (unigrams stay); with
        # --limit-vocab, any n-gram holding a word outside the list
        kept = [None] * order
        if prune or dropped is not None:
            outside = dropped if dropped is not None else np.zeros(V, dtype=bool)
            kept[0] = ~outside if dropped is not None else None
            for k in range(1, order):
                t = tables[k]
                outside = outside[t["prefix"]] | (dropped[t["keys"] % V] if dropped is not None else False)
                kept[k] = ~outside if not prune else (t["raw"] > prune[k]) & ~outside
        # Adjusted counts, top down: continuation counts below the highest order, except
        # for n-grams that start with <s> (nothing can precede them), which keep raw counts.
        adjusted = [None] * order
        adjusted[-1] = tables[-1]["raw"]
        for k in range(order - 1, 0, -1):  # order k, table index k-1
            t = tables[k - 1]
            a = np.bincount(tables[k]["suffix"], minlength=len(t["keys"]))
            adjusted[k - 1] = np.where(t["bos"], t["raw"], a)
        adjusted[0][Vocabulary.BOS_ID] = 0  # <s> is never predicted

        discounts, logprob, bow = [], [], []
        # order 0: uniform over the vocabulary without <s> (with --limit-vocab, over the words kept,
        # as lmplz: the pruned words' counts are in the back-off, so the model sums to one)
        n_words = V if dropped is None else V - int(np.count_nonzero(dropped))
        lower = np.full(V, 1.0 / (n_words - 1))
        for k in range(1, order + 1):
            t, a = tables[k - 1], adjusted[k - 1]
            stats = a
            if last[k - 1] >= 0:
                stats = a.copy()
                stats[last[k - 1]] = t["raw"][last[k - 1]]
            d = _kn_discounts(stats, k, fallback)
            discounts.append(d)
            d_of = np.array((0.0,) + d)[np.minimum(a, 3)]
            context = t["prefix"] if k > 1 else np.zeros(len(a), dtype=np.int64)
            n_contexts = len(tables[k - 2]["keys"]) if k > 1 else 1
            denominator = np.bincount(context, weights=a, minlength=n_contexts)
            # a pruned n-gram's whole count goes to the back-off (lmplz's "normalizer"): the model still sums to one
            freed = d_of if kept[k - 1] is None else np.where(kept[k - 1], d_of, a)
            gamma = np.bincount(context, weights=freed, minlength=n_contexts)
            is_context = denominator > 0
            gamma[is_context] /= denominator[is_context]
            lower_here = lower if k == 1 else lower[t["suffix"]]
            p = (a - d_of) / denominator[context] + gamma[context] * lower_here
            if k > 1:  # gamma of a (k-1)-gram context is its ARPA back-off weight
                bow[-1][is_context] = np.log10(gamma[is_context])
            with np.errstate(divide="ignore"):
                logprob.append(np.log10(p))
            bow.append(np.zeros(len(a)))
            lower = p
        logprob[0][Vocabulary.BOS_ID] = -np.inf
        keys = [t["keys"] for t in tables]
        if prune or dropped is not None:
            keys, logprob, bow = _pruned(V, keys, logprob, bow, kept)
            if dropped is not None:
                vocab = Vocabulary([w for w, out in zip(vocab.words, dropped) if not out][3:],
                                   vocab.counts[~dropped], vocab.min_count, vocab.max_size)
        lm = cls(vocab, order, keys, logprob, bow, "kn", discounts=discounts)
        lm.prune = list(prune) if prune else None
        return lm

    @classmethod
    def _add_k(cls, vocab, order, tables, k, smoothing):
        """p(w | h) = (c(hw) + k) / (c(h) + k |V|), h the full history (shorter at a sentence start).

        Stored in back-off form: the n-grams that are full-history events carry their add-k
        probability, every other entry the uniform 1/|V| (0 for MLE), and each history's
        back-off weight turns that uniform value into k / (c(h) + k |V|).
        """
        V = len(vocab)
        n_words = V - 1  # <s> is never predicted
        uniform = -np.inf if k == 0 else -np.log10(n_words)
        logprob, bow = [], []
        for kk in range(1, order + 1):
            t = tables[kk - 1]
            top = np.ones(len(t["keys"]), bool) if kk == order else (t["bos"] & (kk > 1))
            lp = np.full(len(t["keys"]), uniform)
            if top.any():
                context = t["prefix"] if kk > 1 else np.zeros(len(t["keys"]), dtype=np.int64)
                n_contexts = len(tables[kk - 2]["keys"]) if kk > 1 else 1
                c_h = np.bincount(context, weights=t["raw"], minlength=n_contexts)
                lp[top] = np.log10((t["raw"][top] + k) / (c_h[context[top]] + k * n_words))
                if kk > 1 and k > 0:
                    h = (c_h > 0) & ((tables[kk - 2]["bos"]) | (kk == order))
                    bow[-1][h] = np.log10(k * n_words / (c_h[h] + k * n_words))
            logprob.append(lp)
            bow.append(np.zeros(len(t["keys"])))
        logprob[0][Vocabulary.BOS_ID] = -np.inf
        keys = [t["keys"] for t in tables]
        return cls(vocab, order, keys, logprob, bow, smoothing, k=k)

    # --- scoring -------------------------------------------------------------------------
    def _grams(self, contexts, targets):
        """(B, N) int64: each row's last N-1 context ids (padded with <s>) and its target."""
        N, V = self.order, len(self.vocab)
        targets = np.asarray(targets, dtype=np.int64)
        contexts = np.asarray(contexts, dtype=np.int64).reshape(len(targets), -1)
        if contexts.shape[1] < N - 1:  # too short: pad on the left with <s>
            pad = np.full((len(targets), N - 1 - contexts.shape[1]), Vocabulary.BOS_ID)
            contexts = np.hstack([pad, contexts])
        gram = np.hstack([contexts[:, contexts.shape[1] - (N - 1) :], targets[:, None]])  # (B, N)
        if len(gram) and (gram.min() < 0 or gram.max() >= V):
            raise FflmError("word id out of range for this model's vocabulary")
        return gram

    def logprob_windows(self, contexts, targets):
        """log10 p(target | context) for each row, and the length of the n-gram that matched.

        contexts: (B, c) int ids, the last ones nearest the target; <s> marks a sentence start
        and anything before the last <s> is ignored. Only the last order-1 columns are used.
        """
        gram = self._grams(contexts, targets)
        logp, length = np.empty(len(gram)), np.zeros(len(gram), dtype=np.int64)
        if self._tables is None:  # tuples of the arrays (views: a binary model stays mapped), all
            # read-only so that each tuple has one type; a tuple, not a typed list, because the
            # kernel reaches into them several times a token and a list's item costs more than the search
            self._tables = tuple(tuple(_read_only(np.ascontiguousarray(a, dtype=dt)) for a in arrays)
                                 for arrays, dt in ((self.keys, np.int64), (self.log10p, np.float64),
                                                    (self.bow, np.float64))) + (tuple(self.hashes()),)
        V = len(self.vocab)
        _lookup(*self._tables, np.ascontiguousarray(gram), V, Vocabulary.BOS_ID, logp, length)
        return logp, length

    def hashes(self):
        """Per order the hash table of its keys (order 1, whose key is the word: none), made on
        first use unless the binary file brought them; a model of no hashing (hashed=False):
        binary searches."""
        if self._hashes is None:
            self._hashes = [None] + [hash_table(np.ascontiguousarray(k, dtype=np.int64), hash_size(len(k)))
                                     if self.hashed else None for k in self.keys[1:]]
        wide = np.int64 if any(len(k) >= 2**31 for k in self.keys) else np.int32  # one type for all orders
        # all read-only (a binary file's are): one type for the kernel
        return [_read_only(np.empty(0, dtype=wide) if t is None else np.asarray(t, dtype=wide)) for t in self._hashes]

    def logprob_windows_plain(self, contexts, targets):
        """logprob_windows in numpy, column by column (the reference the kernel is tested against)."""
        N, V = self.order, len(self.vocab)
        gram = self._grams(contexts, targets)
        col = np.arange(N)
        last_bos = np.maximum.accumulate(np.where(gram == Vocabulary.BOS_ID, col, -1), axis=1)
        # ending[c][k-1]: index in order k of the k-gram ending at column c, or -1
        ending = [[gram[:, 0]]]
        for c in range(1, N):
            row = [gram[:, c]]
            for k in range(2, c + 2):
                prev = ending[c - 1][k - 2]
                ok = (prev >= 0) & (c - k + 1 >= last_bos[:, c])
                found = _find(self.keys[k - 1], np.where(ok, prev, 0) * V + gram[:, c])
                row.append(np.where(ok, found, -1))
            ending.append(row)
        logp = np.full(len(gram), np.nan)
        length = np.zeros(len(gram), dtype=np.int64)
        for k in range(N, 0, -1):
            i = ending[N - 1][k - 1]
            lp = np.where(i >= 0, self.log10p[k - 1][np.maximum(i, 0)], np.nan)
            take = (length == 0) & ~np.isnan(lp)
            logp[take] = lp[take]
            length[take] = k
        for L in range(1, N):  # back-off weights of the contexts longer than the one that matched
            i = ending[N - 2][L - 1]
            b = np.where(i >= 0, self.bow[L - 1][np.maximum(i, 0)], 0.0)
            logp += np.where(length <= L, b, 0.0)
        return logp, length

    def distribution(self, context):
        """log10 p(w | context) for every w in the vocabulary (context: words or ids)."""
        ids = [self.vocab.id(w) if isinstance(w, str) else int(w) for w in context]
        V = len(self.vocab)
        contexts = np.tile(np.array(ids, dtype=np.int64).reshape(1, -1), (V, 1))
        logp, _ = self.logprob_windows(contexts, np.arange(V))
        return logp

    # --- ARPA ----------------------------------------------------------------------------
    def ngram_words(self, k, start=0, stop=None):
        """(rows, k) word ids of order k's entries start..stop, read off the keys."""
        V = len(self.vocab)
        keys = np.asarray(self.keys[k - 1][start:stop], dtype=np.int64)
        out = np.empty((len(keys), k), dtype=np.int64)
        for col in range(k - 1, 0, -1):
            out[:, col] = keys % V
            keys = np.asarray(self.keys[col - 1], dtype=np.int64)[keys // V]
        out[:, 0] = keys
        return out

    def save_arpa(self, path):
        """Write the model as an ARPA file (gzipped if `path` ends in .gz), atomically.

        >>> import os, tempfile
        >>> lm = NGramLM.train(["the cat sat", "the dog sat", "a cat ran"], order=2, smoothing="add-k")
        >>> path = os.path.join(tempfile.mkdtemp(), "cats.arpa.gz")
        >>> lm.save_arpa(path)
        >>> round(NGramLM.load_arpa(path).perplexity(["the cat ran"]), 4) == round(lm.perplexity(["the cat ran"]), 4)
        True
        """
        from .arpatext import WordTable, arpa_lines

        words = WordTable(self.vocab.words)
        with atomic_write(path, "wb") as f:
            f.write(_arpa_header(self._header(), self.sizes).encode())
            for k in range(1, self.order + 1):
                f.write(f"\n\\{k}-grams:\n".encode())
                for start in range(0, len(self.keys[k - 1]), ARPA_BLOCK):
                    stop = start + ARPA_BLOCK
                    f.write(arpa_lines(self.log10p[k - 1][start:stop], self.ngram_words(k, start, stop), words,
                                       self.bow[k - 1][start:stop] if k < self.order else None))
            f.write(b"\n\\end\\\n")

    def _header(self):
        return _header(self.smoothing, self.order, self.discounts, self.k, self.meta)

    @classmethod
    def load_arpa(cls, path):
        r"""Read an ARPA file (plain or .gz) written by fflm, KenLM, SRILM or any other tool.

        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny.arpa")
        >>> lines = ["\\data\\", "ngram 1=3", "", "\\1-grams:", "-0.30103\t</s>", "-99\t<s>", "-0.30103\thi", "", "\\end\\"]
        >>> _ = open(path, "w").write("\n".join(lines) + "\n")
        >>> lm = NGramLM.load_arpa(path)
        >>> lm.order, round(lm.logprob("hi"), 5), round(lm.score("hi"), 5)  # log10: the word; with </s>
        (1, -0.30103, -0.60206)
        """
        return _read_arpa(path)


def _header(smoothing, order, discounts, k, meta):
    """What an ARPA file's first line tells about the model (fflm's comment)."""
    header = {"smoothing": smoothing, "order": order}
    if discounts:
        header["discounts"] = [[round(d, 6) for d in ds] for ds in discounts]
    if k is not None:
        header["k"] = k
    if meta:
        header["meta"] = meta
    return header


def _arpa_header(header, sizes):
    return ("# fflm " + json.dumps(header) + "\n\n\\data\\\n"
            + "".join(f"ngram {k}={n}\n" for k, n in enumerate(sizes, 1)))


_NGRAM_COUNT = re.compile(r"^ngram\s+(\d+)\s*=\s*(\d+)$")
_SECTION = re.compile(r"^\\(\d+)-grams:$")


def _read_arpa(path):
    lines = decode(read_bytes(path), path).splitlines()
    where = lambda i: f"{path}: line {i + 1}"  # noqa: E731
    header = {}
    i = 0
    while i < len(lines) and lines[i].strip() != "\\data\\":
        if lines[i].startswith("# fflm "):
            try:
                header = json.loads(lines[i][7:])
            except json.JSONDecodeError:
                header = {}
            if not isinstance(header, dict):
                header = {}
        i += 1
    if i == len(lines):
        raise FflmError(f"{path}: not an ARPA file (no \\data\\ line)")
    i += 1
    counts = {}
    while i < len(lines) and lines[i].strip():
        m = _NGRAM_COUNT.match(lines[i].strip())
        if not m:
            raise FflmError(f"{where(i)}: expected 'ngram N=COUNT', found {lines[i][:60]!r}")
        counts[int(m.group(1))] = int(m.group(2))
        i += 1
    order = max(counts, default=0)
    if order < 1 or sorted(counts) != list(range(1, order + 1)):
        raise FflmError(f"{path}: the \\data\\ section must list ngram 1= .. ngram N= counts")
    if order > MAX_ORDER:
        raise FflmError(f"{path}: order {order} is above fflm's maximum of {MAX_ORDER}")

    sections = {}
    marks = [j for j, line in enumerate(lines[i:], i) if line.startswith("\\")]  # section headers, \end\\
    for n, j in enumerate(marks):
        line = lines[j].strip()
        if line == "\\end\\":
            break
        m = _SECTION.match(line)
        if not m or int(m.group(1)) not in counts:
            raise FflmError(f"{where(j)}: expected a '\\N-grams:' section header, found {line[:60]!r}")
        stop = marks[n + 1] if n + 1 < len(marks) else len(lines)
        while stop > j + 1 and not lines[stop - 1].strip():
            stop -= 1
        sections[int(m.group(1))] = (j + 1, lines[j + 1 : stop])
    else:
        raise FflmError(f"{path}: the file is truncated (no \\end\\ line)")
    for k in range(1, order + 1):
        got = len(sections.get(k, (0, []))[1])
        if got != counts[k]:
            raise FflmError(f"{path}: the header says ngram {k}={counts[k]} but the file has {got} {k}-grams")

    def parse(k):
        """(words (M, k) as a flat list, log10 probs, log10 back-offs) of the k-gram section."""
        start, body = sections[k]
        fields = " ".join(body).split()
        m = len(body)
        if len(fields) in (m * (k + 1), m * (k + 2)):  # the usual case: every line alike
            width = len(fields) // m if m else k + 1
            try:
                probs = np.array(fields[0::width], dtype=np.float64)
                bows = np.array(fields[k + 1 :: width], dtype=np.float64) if width == k + 2 else np.zeros(m)
            except ValueError:
                probs = None  # find the bad line below
            words = [w for j in range(1, k + 1) for w in fields[j::width]]  # column by column
            if probs is not None:
                return _checked(k, words, probs, bows)
        probs, bows, columns = np.empty(m), np.zeros(m), [[] for _ in range(k)]
        for j, line in enumerate(body):
            parts = line.split()
            if len(parts) not in (k + 1, k + 2):
                raise FflmError(f"{where(start + j)}: a {k}-gram line needs {k + 1} or {k + 2} fields")
            try:
                probs[j] = float(parts[0])
                if len(parts) == k + 2:
                    bows[j] = float(parts[-1])
            except ValueError:
                raise FflmError(f"{where(start + j)}: not a number in {line[:60]!r}") from None
            for c in range(k):
                columns[c].append(parts[1 + c])
        return _checked(k, [w for col in columns for w in col], probs, bows)

    def _checked(k, words, probs, bows):
        if np.isnan(probs).any() or np.isnan(bows).any() or np.isposinf(probs).any() or np.isposinf(bows).any():
            raise FflmError(f"{path}: the {k}-grams contain numbers that are not finite")
        if (probs > 1e-6).any():
            raise FflmError(f"{path}: the {k}-grams contain a log10 probability above 0")
        probs[probs <= ARPA_LOG_ZERO] = -np.inf
        bows[bows <= ARPA_LOG_ZERO] = -np.inf
        return words, probs, bows

    words, probs1, bows1 = parse(1)
    if len(set(words)) != len(words):
        raise FflmError(f"{path}: a word is listed twice in the 1-grams")
    others = [w for w in words if w not in Vocabulary.SPECIALS]
    vocab = Vocabulary(others)
    V = len(vocab)
    # Specials missing from the file: <unk> and </s> then have probability 0, <s> is a context only.
    lp1, bw1 = np.full(V, -np.inf), np.zeros(V)
    ids1 = np.array([vocab.index[w] for w in words], dtype=np.int64)
    lp1[ids1], bw1[ids1] = probs1, bows1
    lp1[Vocabulary.BOS_ID] = -np.inf
    keys, logprob, bow = [np.arange(V, dtype=np.int64)], [lp1], [bw1]
    for k in range(2, order + 1):
        flat, probs, bows = parse(k)
        try:
            index = vocab.index
            ids = np.array([index[w] for w in flat], dtype=np.int64).reshape(k, -1).T  # (M, k)
        except KeyError as e:
            raise FflmError(f"{path}: the {k}-grams use the word {e.args[0]!r}, which is not a 1-gram") from None
        prefix = ids[:, 0]
        for c in range(1, k - 1):
            prefix = _find(keys[c], np.where(prefix >= 0, prefix, 0) * V + ids[:, c])
        if (prefix < 0).any():
            bad = vocab.decode(ids[int(np.flatnonzero(prefix < 0)[0])])
            raise FflmError(f"{path}: the {k}-gram '{' '.join(bad)}' has no entry for its context '{' '.join(bad[:-1])}'")
        key = prefix * V + ids[:, -1]
        order_ = np.argsort(key, kind="stable")
        key = key[order_]
        if (np.diff(key) == 0).any():
            raise FflmError(f"{path}: a {k}-gram is listed twice")
        keys.append(key)
        logprob.append(probs[order_])
        bow.append(bows[order_])
    smoothing = header.get("smoothing", "arpa") if header.get("order") == order else "arpa"
    discounts = [tuple(d) for d in header["discounts"]] if smoothing == "kn" and "discounts" in header else None
    meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
    return NGramLM(vocab, order, keys, logprob, bow, smoothing, discounts=discounts, k=header.get("k"), meta=meta)


# the binary model (fflm/ngram_binary.py), here too for the callers that know it from here
from .ngram_binary import (  # noqa: E402,F401
    BINARY_MAGIC,
    BINARY_VERSION,
    is_binary,
    load_binary,
    load_model,
    save_binary,
    write_binary,
)
