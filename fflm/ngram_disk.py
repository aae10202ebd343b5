"""Kneser-Ney in bounded memory: what KenLM's lmplz does with -S and -T.

The in-memory estimate (ngram.NGramLM.estimate) holds the id stream and every order's tables
at once. Here the corpus is a stream (a prepared corpus's ids, or text prepared into the
temporary folder first), and nothing that grows with it stays in memory but one order's
context arrays; the rest lives in files of the temporary folder, read and written a block
at a time (never mapped: a mapped file's pages would count in the process's memory).

For each order k = 2..N, over the padded stream in blocks of whole sentences
(Heafield et al., ACL 2013, "Scalable Modified Kneser-Ney Language Model Estimation", with
the in-memory numbering: key = index of the (k-1)-gram prefix * V + word):
  count   each block's k-gram keys, sorted and counted, spilled to disk as a sorted run;
  merge   the runs merged (in rounds, when there are more than the budget's buffers allow)
          into the order's sorted keys, raw counts and suffixes; counting the suffixes gives
          order k-1 its adjusted counts (the distinct words seen to the left);
  index   each position's k-gram index (its place in its block's run, then where that run's
          entry landed in the merge), of which the next order's keys are made.
The machinery (arrays in files, the budget, radix sort, merging in rounds) is fflm/runs.py.
Then the discounts from the count-of-counts, one streaming pass per order for the
probabilities and its contexts' back-off weights, and the ARPA or binary file, order by
order. Every array equals the in-memory estimate's, bit for bit, so the files are identical.
"""

import contextlib
import os
import shutil
import tempfile
import time

import numpy as np
from numba import njit

from .errors import FflmError
from .runs import (  # noqa: F401  (parse_size, radix_order: the estimate's API too)
    BYTES_PER_TOKEN,
    MIN_BLOCK,
    RUN,
    DiskArray,
    _Budget,
    _compose,
    _in_order,
    _merge,
    _merged_runs,
    default_threads,
    format_size,
    parse_size,
    radix_order,
    resident,
)
from .vocab import Vocabulary

BOS = Vocabulary.BOS_ID


def minimum_memory(V, order):
    """The smallest budget for the estimate's arrays that makes progress: the vocabulary's
    arrays and one block's work (the process itself comes on top, see resident())."""
    return V * 8 * 6 + 2 * MIN_BLOCK * BYTES_PER_TOKEN


def _warm_up():
    """Load every kernel the estimate calls (compiled, or from Numba's cache) before the process's
    memory is measured, and have malloc hand big arrays back to the system when they are freed
    (glibc otherwise raises its threshold and keeps them: the process would outgrow its budget)."""
    from .arpatext import WordTable, arpa_lines

    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: fixed at 1 MB
    except (OSError, AttributeError):
        pass
    block = np.array([BOS, 3, 2], dtype=np.int64)
    for prev in (block, block.astype(np.int32)):
        _block_ngrams(block, prev, 4, 2)
    _sorted_run(block, block)
    _unigrams(block, 0, np.zeros(4, dtype=np.int64), np.full(4, -1, dtype=np.int64))
    _scatter(block, 2, np.zeros(2, dtype=np.int64), np.empty(3, dtype=np.int32))
    _scatter(block, 2, np.zeros(2, dtype=np.int64), np.empty(3, dtype=np.int64))
    _count_into(np.zeros(4, dtype=np.int64), np.zeros(1, dtype=np.int64))
    for dtype in (np.int32, np.int64):
        arpa_lines(np.array([-1.5]), np.zeros((1, 1), dtype=dtype), WordTable(["a"]), np.array([0.0]))


# --- the stream: blocks of whole sentences, padded with one <s> each ----------------------------------
def _padded_blocks(ids, lookup, size, release=None):
    """Yield (padded position of the block's start, padded ids as int64) over an unpadded stream
    (sentences, each ended by </s>), `size` tokens at a time, cut after a sentence's end.
    release: called every 4M ids read and at the end (a memory map's pages handed back, else
    they would count as ours)."""
    start, padded, n, read = 0, 0, len(ids), 0
    while start < n:
        stop = min(start + size, n)
        raw = np.asarray(ids[start:stop])
        ends = np.flatnonzero(raw == Vocabulary.EOS_ID)
        while len(ends) == 0:  # a sentence longer than the block: take the block on to its end
            stop = min(stop + size, n)
            raw = np.asarray(ids[start:stop])
            ends = np.flatnonzero(raw == Vocabulary.EOS_ID)
        stop = start + int(ends[-1]) + 1
        raw = raw[: int(ends[-1]) + 1]
        block = lookup[raw].astype(np.int64) if lookup is not None else raw.astype(np.int64)
        starts = np.concatenate(([0], ends[:-1] + 1))
        block = np.insert(block, starts, Vocabulary.BOS_ID)
        yield padded, block
        padded += len(block)
        read += stop - start
        start = stop
        if release is not None and (read >= 1 << 22 or start >= n):
            release()
            read = 0


@njit(cache=True, nogil=True)
def _block_ngrams(block, prev, V, k):
    """The block's k-grams in stream order: keys (prefix index * V + word) and suffix indices,
    from `prev`, the index of the (k-1)-gram ending at each position (a block starts with <s>)."""
    n = block.shape[0]
    keys = np.empty(n, dtype=np.int64)
    suffix = np.empty(n, dtype=np.int64)
    m, pos = 0, 0
    for i in range(n):
        if block[i] == BOS:
            pos = 0
            continue
        pos += 1
        if pos >= k - 1:
            keys[m] = prev[i - 1] * V + block[i]
            suffix[m] = prev[i]
            m += 1
    return keys[:m], suffix[:m]


@njit(cache=True)
def _scatter(block, k, values, out):
    """out[i] = the next of `values` where a k-gram ends at position i, else -1."""
    m, pos = 0, 0
    for i in range(block.shape[0]):
        if block[i] == BOS:
            pos = 0
            out[i] = -1
            continue
        pos += 1
        if pos >= k - 1:
            out[i] = values[m]
            m += 1
        else:
            out[i] = -1


@njit(cache=True)
def _count_into(counts, index):
    for i in index:
        counts[i] += 1


@njit(cache=True, nogil=True)
def _run_of(keys, suffix):
    order, ranked = radix_order(keys)
    n = ranked.shape[0]
    m = 0
    for i in range(n):
        if i == 0 or ranked[i] != ranked[i - 1]:
            m += 1
    run_key = np.empty(m, dtype=np.int64)
    run_raw = np.zeros(m, dtype=np.int64)
    run_suffix = np.empty(m, dtype=np.int64)
    place = np.empty(n, dtype=np.int32)
    j = -1
    for i in range(n):
        if i == 0 or ranked[i] != ranked[i - 1]:
            j += 1
            run_key[j] = ranked[i]
            run_suffix[j] = suffix[order[i]]  # any occurrence's: the suffix follows from the n-gram
        run_raw[j] += 1
        place[order[i]] = j
    return run_key, run_raw, run_suffix, place


def _sorted_run(keys, suffix):
    """A block's k-grams as a run (distinct keys, sorted, with counts and suffixes) and each
    k-gram's place in it (int32, in stream order)."""
    key, raw, suf, place = _run_of(keys, suffix)
    run = np.empty(len(key), dtype=RUN)
    run["key"], run["raw"], run["suffix"] = key, raw, suf
    return run, place


@njit(cache=True, nogil=True)
def _unigrams(block, at, raw, first_seen):
    """Raw unigram counts (<s> not counted) and where each word is first seen."""
    for i in range(block.shape[0]):
        w = block[i]
        if first_seen[w] < 0:
            first_seen[w] = at + i
        if w != BOS:
            raw[w] += 1


# --- the estimate ---------------------------------------------------------------------------------------
class DiskEstimate:
    """Interpolated modified Kneser-Ney of an unpadded id stream within `memory` bytes (the whole
    process's, as lmplz's -S; whole_process False: the estimate's own arrays), its temporaries
    in `temp_dir`. Call run(), then write_arpa / write_binary; close() (or the
    context manager) removes the temporaries, also on an error or Ctrl-C."""

    def __init__(self, ids, vocab, order, memory, temp_dir=None, lookup=None, discount_fallback=(0.5, 1.0, 1.5),
                 kenlm_compat=True, progress=None, block_tokens=None, fan_in=None, whole_process=True,
                 release=None, threads=None, prune=None, limit_vocab=None):
        from .ngram import MAX_ORDER

        if not 1 <= order <= MAX_ORDER:
            raise FflmError(f"--order must be between 1 and {MAX_ORDER}, not {order}")
        self.ids, self.vocab, self.order, self.lookup, self.release = ids, vocab, order, lookup, release
        self.threads = threads or default_threads()
        from .ngram import prune_thresholds

        self.prune = prune_thresholds(prune, order)
        from .ngram import excluded_words

        self.dropped = excluded_words(vocab, limit_vocab)  # --limit-vocab: the words that go
        self._outside = None  # per entry of the order below: holds a dropped word
        self.V = len(vocab)
        _warm_up()
        need, own = minimum_memory(self.V, order), resident() if whole_process else 0
        if memory < own + need:
            raise FflmError(f"--memory {format_size(memory)} is too small to make progress: "
                            + (f"fflm itself takes {format_size(own)}, and " if own else "")
                            + f"a {self.V}-word vocabulary at order {order} needs {format_size(need)}"
                            + (" more" if own else "") + f"; give at least {format_size(own + need)}")
        if len(ids) == 0:
            raise FflmError("cannot estimate an n-gram model from an empty corpus")
        if ids[len(ids) - 1] != Vocabulary.EOS_ID:
            raise FflmError("an unpadded id stream must end with </s>")
        temp_dir = temp_dir or tempfile.gettempdir()
        if not os.path.isdir(temp_dir):
            raise FflmError(f"--temp-dir {temp_dir}: no such folder")
        try:
            self.folder = tempfile.mkdtemp(dir=temp_dir, prefix="fflm-ngram.")
        except OSError as e:
            raise FflmError(f"--temp-dir {temp_dir}: cannot write there ({e.strerror})") from None
        self.budget = _Budget(memory - own, self.folder)
        self.fallback, self.kenlm_compat = discount_fallback, kenlm_compat
        self.progress, self.fixed_block, self.fan_in = progress, block_tokens, fan_in
        self.merge_rounds = 0
        self.profile = {}  # seconds per pass, for the benchmark's profile
        self._clock = time.perf_counter()
        self.tables = []  # per order: dict of DiskArrays keys, raw, suffix, bos, adjusted, log10p, bow
        self.discounts = None
        self.runs_spilled = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for t in self.tables:
            for d in t.values():
                if isinstance(d, DiskArray):
                    d.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _lap(self, name):
        """Charge the time since the last lap to `name`."""
        now = time.perf_counter()
        self.profile[name] = round(self.profile.get(name, 0.0) + now - self._clock, 3)
        self._clock = now

    def _disk(self, name, dtype):
        return DiskArray(os.path.join(self.folder, name), dtype)

    def _blocks(self):
        size = self.fixed_block or self.budget.block_tokens()
        return _padded_blocks(self.ids, self.lookup, size, self.release)

    def _bar(self, desc, total):
        if self.progress is None:
            return contextlib.nullcontext(None)
        return self.progress(total=total, desc=desc, unit="tok", unit_scale=True)

    @property
    def sizes(self):
        return [len(t["keys"]) for t in self.tables]

    # -- counting ------------------------------------------------------------------------------------
    def run(self):
        V, N = self.V, self.order
        raw1 = np.zeros(V, dtype=np.int64)
        first_seen = np.full(V, -1, dtype=np.int64)
        ending = self._disk("ending1.bin", np.int32 if V < 1 << 31 else np.int64)
        with self._bar("1-grams", len(self.ids)) as bar:
            for at, block in self._blocks():
                _unigrams(block, at, raw1, first_seen)
                ending.append(block)
                if bar is not None:
                    bar.update(len(block) - int(np.count_nonzero(block == Vocabulary.BOS_ID)))
        ending.close()
        self.tokens = int(raw1.sum())
        one = {"keys": None, "raw": self._disk("raw1.bin", np.int64),
               "bos": self._disk("bos1.bin", np.bool_)}
        one["raw"].append(raw1)
        one["bos"].append(np.arange(V) == Vocabulary.BOS_ID)
        keys1 = self._disk("keys1.bin", np.int64)
        keys1.append(np.arange(V, dtype=np.int64))
        one["keys"] = keys1.close()
        for d in one.values():
            d.close()
        self.tables.append(one)
        self._first_seen = first_seen
        self._lap("1-grams")
        previous = ending
        for k in range(2, N + 1):
            previous = self._count_order(k, previous)
        if previous is not None:
            previous.remove()
        # the highest order keeps its raw counts
        top = self.tables[-1]
        top["adjusted"] = top["raw"]
        self._estimate()
        return self

    def _count_order(self, k, previous):
        V, budget = self.V, self.budget
        below = self.tables[-1]
        runs, places = [], []
        size = self.fixed_block or budget.block_tokens()  # the index pass cuts the same blocks
        size = max(MIN_BLOCK, size // self.threads)  # a block each thread

        def count(item):
            at, block = item
            keys, suffix = _block_ngrams(block, previous.read(at, at + len(block)), V, k)
            return block, _sorted_run(keys, suffix)

        with self._bar(f"{k}-grams", self.tokens) as bar:
            blocks = _padded_blocks(self.ids, self.lookup, size, self.release)
            for block, (rec, place) in _in_order(count, blocks, self.threads):
                run = self._disk(f"{k}.{len(runs)}.run", RUN)
                run.append(rec)
                runs.append(run.close())
                where = self._disk(f"{k}.{len(places)}.place", np.int32)
                where.append(place)
                places.append(where.close())
                if bar is not None:
                    bar.update(len(block) - int(np.count_nonzero(block == BOS)))
        self.runs_spilled += len(runs)
        self._lap(f"count {k}")
        # merge: the order's tables, and the adjusted counts of the order below
        bos_below = budget.load(below["bos"])
        continuation = budget.array(len(below["keys"]), np.int64, fill=0)
        t = {name: self._disk(f"{name}{k}.bin", dt) for name, dt in
             (("keys", np.int64), ("raw", np.int64), ("suffix", np.int64), ("bos", np.bool_))}
        originals = len(runs)
        runs, buffer, rounds, route = _merged_runs(runs, budget, self.folder, str(k), self.fan_in)
        self.merge_rounds += rounds
        last = k == self.order
        final = None if last else [self._disk(f"{k}.final{j}.places", np.int64) for j in range(len(runs))]
        for keys, raw, suffix in _merge(runs, buffer, final):
            t["keys"].append(keys)
            t["raw"].append(raw)
            t["suffix"].append(suffix)
            t["bos"].append(bos_below[keys // V])
            _count_into(continuation, suffix)
        for r in runs:
            r.remove()
        for d in t.values():
            d.close()
        if len(t["keys"]) == 0:
            raise FflmError(f"order {self.order} is larger than any sentence allows (no {k}-grams)")
        adjusted = self._disk(f"adjusted{k - 1}.bin", np.int64)
        step = 1 << 22
        for start in range(0, len(continuation), step):
            bos = bos_below[start : start + step]
            a = np.where(bos, below["raw"].read(start, start + step), continuation[start : start + step])
            if k == 2 and start <= BOS < start + step:
                a[BOS - start] = 0  # <s> is never predicted
            adjusted.append(a)
        below["adjusted"] = adjusted.close()
        budget.free(bos_below, continuation)
        del bos_below, continuation
        self.tables.append(t)
        self._lap(f"merge {k}")
        if last:
            for d in places:
                d.remove()
            for _, d in route:
                if d is not None:
                    d.remove()
            previous.remove()
            return None
        # index: each position's k-gram (its run's place, then where that run's entry landed)
        for d in final:
            d.close()
        ending = self._disk(f"ending{k}.bin", np.int32 if len(t["keys"]) < 1 << 31 else np.int64)
        for b, (at, block) in enumerate(_padded_blocks(self.ids, self.lookup, size, self.release)):
            current, mine = route[b]
            if mine is None:
                landed = final[current].read()
            else:  # merged in rounds: through each round's places
                composed = _compose(mine, final[current], self._disk(f"{k}.{b}.landed", np.int64))
                landed = composed.read()
                composed.remove()
                mine.remove()
            here = np.empty(len(block), dtype=ending.dtype)
            _scatter(block, k, landed[places[b].read()], here)
            ending.append(here)
            places[b].remove()
        for d in final:
            d.remove()
        assert b + 1 == originals
        previous.remove()
        self._lap(f"index {k}")
        return ending.close()

    # -- discounts and probabilities ---------------------------------------------------------------------
    def _last_ngrams(self):
        """ngram._kenlm_last_ngrams over the tables on disk (only the candidates are read)."""
        from .ngram import _best_last_ngram

        V, N = self.V, self.order
        rank = np.full(V, -1, dtype=np.int64)
        seen = np.flatnonzero(self._first_seen >= 0)
        rank[seen[np.argsort(self._first_seen[seen], kind="stable")]] = np.arange(len(seen)) + 3
        rank[:3] = (0, 1, 2)
        targets = np.flatnonzero((self._first_seen >= 0) & (np.arange(V) != Vocabulary.BOS_ID))
        last_word = int(targets[np.argmax(rank[targets])])

        def candidates(k):
            t = self.tables[k - 1]
            found = []
            for start, keys in t["keys"].blocks(1 << 22):
                hit = keys % V == last_word
                if k < N:
                    hit &= t["bos"].read(start, start + len(keys))
                found.append(np.flatnonzero(hit) + start)
            return np.concatenate(found).tolist()

        def key(k, i):
            return int(self.tables[k - 1]["keys"].read(i, i + 1)[0])

        def suffix(k, i):
            return int(self.tables[k - 1]["suffix"].read(i, i + 1)[0])

        return _best_last_ngram(N, V, rank, last_word, candidates, key, suffix)

    def _estimate(self):
        from .ngram import _kn_discounts_from

        N, budget = self.order, self.budget
        self._clock = time.perf_counter()
        last = self._last_ngrams() if self.kenlm_compat else [-1] * N
        self.discounts = []
        for k in range(1, N + 1):
            t = self.tables[k - 1]
            n = np.zeros(5, dtype=np.int64)  # how many have adjusted count 0..4
            for _, a in t["adjusted"].blocks(1 << 22):
                n += np.bincount(np.minimum(a, 5), minlength=6)[:5]
            if last[k - 1] >= 0:
                i = last[k - 1]
                a_i, raw_i = int(t["adjusted"].read(i, i + 1)[0]), int(t["raw"].read(i, i + 1)[0])
                if a_i < 5:
                    n[a_i] -= 1
                if raw_i < 5:
                    n[raw_i] += 1
            self.discounts.append(_kn_discounts_from([int(x) for x in n], k, self.fallback))
        self._lap("discounts")
        lower = None
        for k in range(1, N + 1):
            lower = self._probabilities(k, lower)
            self._lap(f"probabilities {k}")
        budget.free(lower)
        top = self.tables[-1]
        top["bow"] = self._disk(f"bow{N}.bin", np.float64)
        for start, keys in top["keys"].blocks(1 << 22):
            top["bow"].append(np.zeros(len(keys)))
        top["bow"].close()
        if self.prune is not None or self.dropped is not None:
            self._prune()
            self._lap("prune")

    def _prune(self):
        """The tables without the pruned entries (ngram._pruned, a block at a time): each order's
        keys renumbered through the order below's kept entries; with --limit-vocab, the words
        too, and the vocabulary becomes the words kept."""
        V, budget = self.V, self.budget
        one = self.tables[0]
        if self.dropped is not None:
            words = np.cumsum(~self.dropped) - 1  # old id -> new
            n_words = int(np.count_nonzero(~self.dropped))
            keep = one["kept"].read()
            for name, dt in (("log10p", np.float64), ("bow", np.float64)):
                d = self._disk(f"pruned.{name}1.bin", dt)
                d.append(one[name].read()[keep])
                one[name].remove()
                one[name] = d.close()
            d = self._disk("pruned.keys1.bin", np.int64)
            d.append(np.arange(n_words, dtype=np.int64))
            one["keys"].remove()
            one["keys"] = d.close()
            one["kept"].remove()
        else:
            words, n_words = None, V
        index = words  # the order below: old index -> new (None: unchanged)
        for k in range(2, self.order + 1):
            t = self.tables[k - 1]
            out = {name: self._disk(f"pruned.{name}{k}.bin", dt) for name, dt in
                   (("keys", np.int64), ("log10p", np.float64), ("bow", np.float64))}
            mine = budget.array(len(t["keys"]), np.int64)
            kept_so_far = 0
            for start, keys in t["keys"].blocks(1 << 22):
                stop = start + len(keys)
                keep = t["kept"].read(start, stop)
                prefix, word = np.divmod(keys[keep], V)
                out["keys"].append((prefix if index is None else index[prefix]) * n_words
                                   + (word if words is None else words[word]))
                out["log10p"].append(t["log10p"].read(start, stop)[keep])
                out["bow"].append(t["bow"].read(start, stop)[keep])
                mine[start:stop] = np.cumsum(keep) - 1 + kept_so_far
                kept_so_far += int(np.count_nonzero(keep))
            if index is not words:
                budget.free(index)
            index = mine
            for name, d in out.items():
                t[name].remove()
                t[name] = d.close()
            t["kept"].remove()
        budget.free(self._outside, *([] if index is words else [index]))
        self._outside = None
        if self.dropped is not None:
            vocab = self.vocab
            self.vocab = Vocabulary([w for w, out in zip(vocab.words, self.dropped) if not out][3:],
                                    vocab.counts[~self.dropped], vocab.min_count, vocab.max_size)
            self.V = n_words

    def _context_blocks(self, k, size):
        """Blocks of order k's (start, keys, adjusted) cut where a context ends, so each context's
        sums are taken in one block and in the order the in-memory estimate takes them."""
        t = self.tables[k - 1]
        if k == 1:  # one context, the vocabulary: one block
            yield 0, t["keys"].read(), t["adjusted"].read()
            return
        carry_keys = np.empty(0, dtype=np.int64)
        carry_a = np.empty(0, dtype=np.int64)
        at = 0
        n = len(t["keys"])
        for start in range(0, n, size):
            keys = np.concatenate((carry_keys, t["keys"].read(start, start + size)))
            a = np.concatenate((carry_a, t["adjusted"].read(start, start + size)))
            if start + size < n:
                ctx = keys // self.V
                cut = int(np.searchsorted(ctx, ctx[-1]))
                if cut == 0:  # one context fills the block: read on
                    carry_keys, carry_a = keys, a
                    continue
                carry_keys, carry_a = keys[cut:], a[cut:]
                keys, a = keys[:cut], a[:cut]
            else:
                carry_keys, carry_a = carry_keys[:0], carry_a[:0]
            yield at, keys, a
            at += len(keys)

    def _probabilities(self, k, lower):
        V, budget = self.V, self.budget
        t = self.tables[k - 1]
        d = np.array((0.0,) + tuple(self.discounts[k - 1]))
        n_contexts = len(self.tables[k - 2]["keys"]) if k > 1 else 1
        denominator = budget.array(n_contexts, np.float64, fill=0.0)
        gamma = budget.array(n_contexts, np.float64, fill=0.0)
        size = max(MIN_BLOCK, budget.block_tokens() // 2)
        pruning = (self.prune is not None and k > 1) or self.dropped is not None
        if pruning:  # lmplz's --prune: raw count at most the threshold, or (--limit-vocab) a dropped
            # word in it; its whole count goes to the back-off
            t["kept"] = self._disk(f"kept{k}.bin", np.bool_)
            below_outside = self._outside
            self._outside = budget.array(len(t["keys"]), np.bool_) if self.dropped is not None else None
        for at, keys, a in self._context_blocks(k, size):
            ctx = keys // V if k > 1 else np.zeros(len(keys), dtype=np.int64)
            lo = int(ctx[0])
            denominator[lo : int(ctx[-1]) + 1] = np.bincount(ctx - lo, weights=a)
            freed = d[np.minimum(a, 3)]
            if pruning:
                if self.prune is not None and k > 1:
                    kept = t["raw"].read(at, at + len(keys)) > self.prune[k - 1]
                else:
                    kept = np.ones(len(keys), dtype=bool)
                if self.dropped is not None:
                    outside = self.dropped[keys % V]
                    if k > 1:
                        outside |= below_outside[keys // V]
                    self._outside[at : at + len(keys)] = outside
                    kept &= ~outside
                t["kept"].append(kept)
                freed = np.where(kept, freed, a)
            gamma[lo : int(ctx[-1]) + 1] = np.bincount(ctx - lo, weights=freed)
        if pruning:
            t["kept"].close()
            if self.dropped is not None:
                budget.free(below_outside)
        is_context = denominator > 0
        gamma[is_context] /= denominator[is_context]
        if k > 1:
            below = self.tables[k - 2]
            below["bow"] = self._disk(f"bow{k - 1}.bin", np.float64)
            step = 1 << 22
            for start in range(0, n_contexts, step):
                g, c = gamma[start : start + step], is_context[start : start + step]
                b = np.zeros(len(g))
                b[c] = np.log10(g[c])
                below["bow"].append(b)
            below["bow"].close()
        t["log10p"] = self._disk(f"log10p{k}.bin", np.float64)
        p_here = self._disk(f"p{k}.bin", np.float64) if k < self.order else None
        # uniform over the words without <s>: with --limit-vocab the words kept (as lmplz)
        uniform = 1.0 / ((V if self.dropped is None else V - int(np.count_nonzero(self.dropped))) - 1)
        for start, keys, a in self._context_blocks(k, size):
            ctx = keys // V if k > 1 else np.zeros(len(keys), dtype=np.int64)
            if k == 1:
                lower_here = np.full(len(keys), uniform)
            else:
                lower_here = lower[t["suffix"].read(start, start + len(keys))]
            p = (a - d[np.minimum(a, 3)]) / denominator[ctx] + gamma[ctx] * lower_here
            with np.errstate(divide="ignore"):
                lp = np.log10(p)
            if k == 1:
                lp[Vocabulary.BOS_ID] = -np.inf
            t["log10p"].append(lp)
            if p_here is not None:
                p_here.append(p)
        t["log10p"].close()
        budget.free(denominator, gamma, lower)
        del denominator, gamma, lower
        if p_here is None:
            return None
        p_here.close()
        lower = budget.load(p_here)
        p_here.remove()
        return lower

    # -- output ----------------------------------------------------------------------------------------
    def write_arpa(self, path, header):
        """The ARPA file, order by order, a block at a time: the in-memory save_arpa's bytes."""
        from .arpatext import WordTable, arpa_lines
        from .fileio import atomic_write
        from .ngram import _arpa_header

        words = WordTable(self.vocab.words)
        size = max(MIN_BLOCK, self.budget.block_tokens() // (4 * self.threads))
        total, V = sum(self.sizes), self.V

        def lines(item):
            k, start, stop, below = item
            t = self.tables[k - 1]
            keys = t["keys"].read(start, stop)
            if k == 1:
                rows = keys.astype(np.int32).reshape(-1, 1)
            else:  # the prefix's words (written with order k-1), then the last word
                prefix, last = np.divmod(keys, V)
                lo, hi = int(prefix[0]), int(prefix[-1]) + 1
                rows = np.empty((len(keys), k), dtype=np.int32)
                rows[:, : k - 1] = below.read(lo * (k - 1), hi * (k - 1)).reshape(-1, k - 1)[prefix - lo]
                rows[:, k - 1] = last
            bw = t["bow"].read(start, stop) if k < self.order else None
            return stop - start, rows, arpa_lines(t["log10p"].read(start, stop), rows, words, bw)

        with atomic_write(path, "wb") as f, self._bar("writing", total) as bar:
            f.write(_arpa_header(header, self.sizes).encode())
            below = None
            for k in range(1, self.order + 1):
                f.write(f"\n\\{k}-grams:\n".encode())
                n = len(self.tables[k - 1]["keys"])
                mine = self._disk(f"words{k}.bin", np.int32) if k < self.order else None
                jobs = ((k, start, min(start + size, n), below) for start in range(0, n, size))
                for done, rows, text in _in_order(lines, jobs, self.threads):
                    f.write(text)
                    if mine is not None:
                        mine.append(rows.reshape(-1))
                    if bar is not None:
                        bar.update(done)
                if below is not None:
                    below.remove()
                below = mine.close() if mine is not None else None
            f.write(b"\n\\end\\\n")
        self._lap("write")

    def hash_arrays(self):
        """Per order the hash table of its keys (ngram.hash_table), each made in memory (or a
        mapped file) and kept on disk: what the binary file holds after the arrays."""
        from .ngram import _fill_hash, hash_size

        out = [None]
        wide = any(len(t["keys"]) >= 2**31 for t in self.tables)
        for k in range(2, self.order + 1):
            keys = self.budget.load(self.tables[k - 1]["keys"])
            table = self.budget.array(hash_size(len(keys)), np.int64 if wide else np.int32, fill=-1)
            _fill_hash(keys, table)
            disk = self._disk(f"hash{k}.bin", table.dtype)
            for start in range(0, len(table), 1 << 22):
                disk.append(table[start : start + (1 << 22)])
            out.append(disk.close())
            self.budget.free(keys, table)
            del keys, table
        return out

    def arrays(self):
        """Per order (keys, log10p, bow) DiskArrays, as ngram.save_binary takes them."""
        return [(t["keys"], t["log10p"], t["bow"]) for t in self.tables]


def _apart(fn, *args, **kw):
    """fn(*args, **kw) in a forked child, so that the memory it leaves behind (Python's and
    malloc's arenas) is not this process's; its FflmError is raised here. Where fork is not
    to be had, here."""
    import multiprocessing
    import traceback

    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:
        return fn(*args, **kw)
    receive, send = ctx.Pipe(duplex=False)

    def child():
        try:
            fn(*args, **kw)
            send.send(("ok", None))
        except FflmError as e:
            send.send(("error", str(e)))
        except KeyboardInterrupt:
            send.send(("interrupted", None))
        except BaseException:
            send.send(("crash", traceback.format_exc()))

    proc = ctx.Process(target=child)
    proc.start()
    send.close()
    try:
        status, detail = receive.recv()
    except EOFError:
        status, detail = "crash", f"the child process died (exit status {proc.exitcode})"
    finally:
        proc.join()
    if status == "error":
        raise FflmError(detail)
    if status == "interrupted":
        raise KeyboardInterrupt
    if status == "crash":
        raise RuntimeError(detail)


def build(corpus, output, order=5, memory="1G", temp_dir=None, config=None, min_count=None, max_vocab=None,
          binary=False, meta=None, discount_fallback=(0.5, 1.0, 1.5), kenlm_compat=True, progress=None,
          threads=None, prune=None, limit_vocab=None):
    """`fflm ngram train --memory`: the Kneser-Ney model of `corpus` (a text file, nltk:NAME,
    or a prepared folder, read in place) written to `output` (ARPA, or binary) within `memory`
    (bytes, or a size such as "4G"); text is prepared into the temporary folder first.
    Returns a summary (vocabulary, tokens, sentences, n-gram counts, discounts, runs)."""
    from .ngram import _header, write_binary
    from .prepared import PreparedCorpus, is_prepared_any, prepare
    from .text import is_nltk

    memory = parse_size(memory) if isinstance(memory, str) else int(memory)
    temp_dir = temp_dir or tempfile.gettempdir()
    if not os.path.isdir(temp_dir):
        raise FflmError(f"--temp-dir {temp_dir}: no such folder")
    own, need = resident(), minimum_memory(0, order)
    if memory < own + need:  # the vocabulary's share is checked once it is known
        raise FflmError(f"--memory {format_size(memory)} is too small to make progress: fflm itself takes "
                        f"{format_size(own)}; give at least {format_size(own + need)} and more for the vocabulary")
    staging, started = None, time.perf_counter()
    try:
        if not is_nltk(corpus) and is_prepared_any(corpus):
            source = PreparedCorpus(corpus)
            source.check_text(config)
        else:
            try:
                staging = tempfile.mkdtemp(dir=temp_dir, prefix="fflm-prepare.")
            except OSError as e:
                raise FflmError(f"--temp-dir {temp_dir}: cannot write there ({e.strerror})") from None
            from .text import TextConfig

            _apart(prepare, corpus, os.path.join(staging, "corpus"), config or TextConfig(), progress=progress)
            source = PreparedCorpus(os.path.join(staging, "corpus"))
        vocab = source.vocabulary(min_count, max_vocab)
        read = round(time.perf_counter() - started, 3)
        with DiskEstimate(source.ids, vocab, order, memory, temp_dir, lookup=source.lookup(vocab),
                          discount_fallback=discount_fallback, kenlm_compat=kenlm_compat,
                          progress=progress, release=source.release, threads=threads, prune=prune,
                          limit_vocab=limit_vocab) as est:
            est.run()
            if binary:
                est._clock = time.perf_counter()
                write_binary(output, est.vocab, order, "kn", est.discounts, None, meta or {}, est.arrays(),
                             est.hash_arrays())
                est._lap("write")
            else:
                est.write_arpa(output, _header("kn", order, est.discounts, None, meta or {}))
            return {"vocabulary": len(est.vocab), "tokens": est.tokens, "sentences": source.num_sentences,
                    "ngrams": est.sizes, "discounts": [list(d) for d in est.discounts], "runs": est.runs_spilled,
                    "merge_rounds": est.merge_rounds, "memory": memory, "text": source.text,
                    "threads": est.threads, "profile": {"read": read, **est.profile}}
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
