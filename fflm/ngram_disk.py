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
  index   each position's k-gram index (the block's keys searched in the merged ones), of
          which the next order's keys are made.
Then the discounts from the count-of-counts, one streaming pass per order for the
probabilities and its contexts' back-off weights, and the ARPA or binary file, order by
order. Every array equals the in-memory estimate's, bit for bit, so the files are identical.
"""

import contextlib
import errno
import os
import re
import shutil
import tempfile
import time

import numpy as np
from numba import njit

from .errors import FflmError
from .vocab import Vocabulary

BOS = Vocabulary.BOS_ID
BYTES_PER_TOKEN = 128  # what counting a block costs a padded position (ids, keys, the sort's arrays), with room
MIN_BLOCK = 1 << 12  # the smallest block of tokens worth a run
RUN = np.dtype([("key", "<i8"), ("raw", "<i8"), ("suffix", "<i8")])
MERGE_BUFFER = 1 << 10  # the fewest entries of a run a merge holds at a time
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def parse_size(text):
    """'4G', '200M', '512k', '1.5G' or a plain number of bytes -> bytes; '80%' of this machine's memory.

    >>> parse_size("200M"), parse_size("1.5k"), parse_size("1024")
    (209715200, 1536, 1024)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kKmMgGtT%]?)[bB]?\s*", str(text))
    if not m:
        raise FflmError(f"--memory: cannot read {text!r} as a size (say 4G, 200M or 80%)")
    value, unit = float(m.group(1)), m.group(2).upper()
    if unit == "%":
        if not 0 < value <= 100:
            raise FflmError(f"--memory: {text} is not a share of memory between 0 and 100%")
        return int(value / 100 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return int(value * 1024 ** " KMGT".index(unit or " "))


def format_size(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


# --- arrays in files, read and written a block at a time ----------------------------------------------
class DiskArray:
    """A one-dimensional array in a file: appended to while written, then read by ranges."""

    def __init__(self, path, dtype):
        self.path, self.dtype, self.length = path, np.dtype(dtype), 0
        self._f = open(path, "wb")

    def append(self, a):
        a = np.ascontiguousarray(a, dtype=self.dtype)
        try:
            self._f.write(a.data)
        except OSError as e:
            raise _disk_error(e, os.path.dirname(self.path)) from None
        self.length += len(a)

    def close(self):
        if self._f is not None:
            try:
                self._f.close()
            except OSError as e:
                raise _disk_error(e, os.path.dirname(self.path)) from None
            self._f = None
        return self

    def __len__(self):
        return self.length

    @property
    def nbytes(self):
        return self.length * self.dtype.itemsize

    def read(self, start=0, stop=None):
        stop = self.length if stop is None else min(stop, self.length)
        if stop <= start:
            return np.empty(0, dtype=self.dtype)
        return np.fromfile(self.path, dtype=self.dtype, count=stop - start, offset=start * self.dtype.itemsize)

    def blocks(self, size):
        for start in range(0, self.length, size):
            yield start, self.read(start, start + size)

    def remove(self):
        self.close()
        with contextlib.suppress(OSError):
            os.remove(self.path)


def _disk_error(e, folder):
    if e.errno in FULL_DISK or (e.errno is None and "requested and" in str(e)):
        return FflmError(f"{folder}: no space left for the n-gram estimate's temporary files ({e.strerror or e}); "
                         "free some, or give --temp-dir a folder on a larger disk")
    return FflmError(f"{folder}: cannot write the n-gram estimate's temporary files: {e.strerror or e}")


class _Budget:
    """The bytes the estimate may hold: arrays that grow with the corpus are held in memory when
    they fit what is left, otherwise mapped from a file of the temporary folder."""

    def __init__(self, total, folder):
        self.total, self.left, self.folder, self._n = total, total, folder, 0

    def array(self, n, dtype, fill=None):
        dtype = np.dtype(dtype)
        size = n * dtype.itemsize
        if size <= self.left - MIN_BLOCK * BYTES_PER_TOKEN:
            self.left -= size
            a = np.empty(n, dtype=dtype) if fill is None else np.full(n, fill, dtype=dtype)
            return a
        self._n += 1
        path = os.path.join(self.folder, f"mapped{self._n}.bin")
        try:
            a = np.memmap(path, dtype=dtype, mode="w+", shape=(max(n, 1),))[:n]
        except OSError as e:
            raise _disk_error(e, self.folder) from None
        if fill is not None:
            a[:] = fill
        return a

    def load(self, disk):
        a = self.array(len(disk), disk.dtype)
        for start, block in disk.blocks(1 << 22):
            a[start : start + len(block)] = block
        return a

    def free(self, *arrays):
        for a in arrays:
            if a is not None and not isinstance(a, np.memmap):
                self.left += a.nbytes

    def block_tokens(self):
        return max(MIN_BLOCK, self.left // BYTES_PER_TOKEN)


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


def resident():
    """This process's resident memory in bytes (Python, numpy, Numba's compiler: ~160 MB)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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


RADIX = 11  # bits a pass of the radix sort takes (2048 buckets: the counts stay in L1)


@njit(cache=True, nogil=True)
def radix_order(keys):
    """(order, sorted keys) of non-negative int64 keys: a stable LSD radix sort, RADIX bits a
    pass, passes whose digit is the same everywhere skipped. Several times numpy's argsort on
    the 40-odd bits n-gram keys take."""
    n = keys.shape[0]
    order = np.arange(n)
    if n == 0:
        return order, keys.copy()
    cur, spare, spare_order = keys.copy(), np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    top = cur.max()
    mask = (1 << RADIX) - 1
    shift = 0
    while shift < 63 and (top >> shift) > 0:
        count = np.zeros(mask + 2, dtype=np.int64)
        for i in range(n):
            count[((cur[i] >> shift) & mask) + 1] += 1
        if count.max() < n:  # else every key has the same digit here: nothing to move
            for d in range(1, mask + 2):
                count[d] += count[d - 1]
            for i in range(n):
                d = (cur[i] >> shift) & mask
                j = count[d]
                count[d] = j + 1
                spare[j] = cur[i]
                spare_order[j] = order[i]
            cur, spare = spare, cur
            order, spare_order = spare_order, order
        shift += RADIX
    return order, cur


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


def _in_order(fn, items, threads):
    """fn(item) for each item on `threads` threads (the kernels let go of the GIL), yielded in
    order, at most `threads` results waiting: the work of a block overlaps the writing of the one
    before."""
    if threads <= 1:
        yield from map(fn, items)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def default_threads():
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:
        return max(1, min(4, os.cpu_count() or 1))


# --- merging sorted runs -------------------------------------------------------------------------------
class _RunReader:
    def __init__(self, disk, size):
        self.disk, self.size, self.at, self.buffer = disk, size, 0, None
        self.fill()

    def fill(self):
        self.buffer = self.disk.read(self.at, self.at + self.size)
        self.at += len(self.buffer)

    @property
    def exhausted(self):
        return self.at >= len(self.disk)


def _merge(runs, size, places=None):
    """Yield (keys, raw, suffix) blocks, sorted and distinct, of the runs merged (raw counts
    summed). places: one DiskArray per run, given where each of its entries lands (int64)."""
    readers = [_RunReader(r, size) for r in runs]
    live = [i for i, r in enumerate(readers) if len(r.buffer)]
    emitted = 0
    while live:
        open_ = [readers[i].buffer["key"][-1] for i in live if not readers[i].exhausted]
        bound = min(open_) if open_ else np.iinfo(np.int64).max
        parts = []
        for i in live:
            r = readers[i]
            cut = int(np.searchsorted(r.buffer["key"], bound, side="right"))
            parts.append((i, r.buffer[:cut]))
            r.buffer = r.buffer[cut:]
            if len(r.buffer) == 0 and not r.exhausted:
                r.fill()
        live = [i for i in live if len(readers[i].buffer)]
        parts = [(i, part) for i, part in parts if len(part)]
        if not parts:
            continue
        if len(parts) == 1:  # one run's entries: already sorted and distinct
            i, both = parts[0]
            if places is not None:
                places[i].append(np.arange(emitted, emitted + len(both), dtype=np.int64))
            emitted += len(both)
            yield both["key"], both["raw"], both["suffix"]
            continue
        both = np.concatenate([part for _, part in parts])
        order, ranked = radix_order(both["key"])
        new = np.empty(len(ranked), dtype=np.bool_)
        new[:1] = True
        np.not_equal(ranked[1:], ranked[:-1], out=new[1:])
        first = np.flatnonzero(new)
        if places is not None:
            where = np.empty(len(both), dtype=np.int64)
            where[order] = np.cumsum(new) - 1 + emitted
            at = 0
            for i, part in parts:
                places[i].append(where[at : at + len(part)])
                at += len(part)
        emitted += len(first)
        yield ranked[first], np.add.reduceat(both["raw"][order], first), both["suffix"][order[first]]


def _compose(first, second, out):
    """out = second[first]: `first` increasing (a run's entries keep their order when merged),
    so each block of it reads one range of `second`."""
    for _, block in first.blocks(1 << 22):
        if len(block):
            lo, hi = int(block[0]), int(block[-1]) + 1
            out.append(second.read(lo, hi)[block - lo])
    return out.close()


def _merged_runs(runs, budget, folder, name, fan_in=None):
    """The runs merged down to at most as many as the budget has buffers for (in rounds), and
    for each run where its entries are in the runs left: (runs left, buffer entries, rounds,
    route), route[r] = (index of the run left, DiskArray of places or None: the same places)."""
    fan_in = fan_in or max(2, budget.left // (6 * MERGE_BUFFER * RUN.itemsize))
    route = [(r, None) for r in range(len(runs))]
    round_ = 0
    while len(runs) > fan_in:
        round_ += 1
        merged, places = [], {}
        for g in range(0, len(runs), fan_in):
            group = runs[g : g + fan_in]
            out = DiskArray(os.path.join(folder, f"{name}.r{round_}.{g}.run"), RUN)
            here = [DiskArray(os.path.join(folder, f"{name}.r{round_}.{g + j}.places"), np.int64)
                    for j in range(len(group))]
            size = max(MERGE_BUFFER, budget.left // (6 * RUN.itemsize * len(group)))
            for keys, raw, suffix in _merge(group, size, here):
                rec = np.empty(len(keys), dtype=RUN)
                rec["key"], rec["raw"], rec["suffix"] = keys, raw, suffix
                out.append(rec)
            merged.append(out.close())
            for j, r in enumerate(group):
                places[g + j] = (len(merged) - 1, here[j].close())
                r.remove()
        for r, (current, mine) in enumerate(route):
            target, theirs = places[current]
            if mine is None:
                route[r] = (target, theirs)
            else:
                composed = DiskArray(mine.path + f".{round_}", np.int64)
                route[r] = (target, _compose(mine, theirs, composed))
                mine.remove()
        for _, theirs in places.values():
            if all(theirs is not m for _, m in route):
                theirs.remove()
        runs = merged
    return runs, max(MERGE_BUFFER, budget.left // (6 * RUN.itemsize * max(1, len(runs)))), round_, route


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
