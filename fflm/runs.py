"""Sorted runs on disk within a memory budget: the external-memory machinery of ngram_disk.

Arrays that live in files of a temporary folder, read and written a block at a time (never
mapped, so their pages are not the process's); the budget that decides what stays in memory;
a radix sort; runs of (key, raw count, suffix) merged in rounds, with where each entry lands;
and blocks of work on a few threads, their results in order.
"""

import contextlib
import errno
import os
import re

import numpy as np
from numba import njit

from .errors import FflmError

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


def resident():
    """This process's resident memory in bytes (Python, numpy, Numba's compiler: ~160 MB)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
