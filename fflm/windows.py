"""Ingredient I as pairs (x, y): x is the window of n-1 previous word ids, y the next id.

A corpus becomes one int32 id stream: each sentence is preceded by n-1 <s> and followed
by </s>. Every position that does not hold <s> is a target (so </s> is predicted and <s>
never is), and its context is the n-1 ids before it. The windows are zero-copy views
into the stream, so memory grows with the corpus, not with n.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .errors import FflmError
from .vocab import Vocabulary


def encode_stream(sentences, vocab, order, cross_sentence=False):
    """Sentences of tokens -> one padded int32 id stream (see the module docstring).

    cross_sentence: only the stream's start is padded, so the first words of a sentence see
    the end of the one before (and its </s>) instead of <s>. The targets are exactly the same.
    """
    pad = max(order - 1, 1)  # at least one <s>, so sentence starts stay visible to n-gram models
    lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
    if (lengths == 0).any():
        raise FflmError("empty sentence in input (blank lines should have been skipped)")
    words = vocab.encode([t for s in sentences for t in s])
    if cross_sentence:
        ids = np.full(pad + len(words) + len(sentences), Vocabulary.EOS_ID, dtype=np.int32)
        ids[:pad] = Vocabulary.BOS_ID
        ends = np.cumsum(lengths + 1) - 1  # where each sentence's </s> goes, after the padding
        keep = np.ones(len(ids) - pad, dtype=bool)
        keep[ends] = False
        ids[pad:][keep] = words
        return ids
    starts = np.concatenate(([0], np.cumsum(lengths + pad + 1)[:-1]))  # where each sentence's padding begins
    ids = np.full(int(lengths.sum() + len(sentences) * (pad + 1)), Vocabulary.BOS_ID, dtype=np.int32)
    offset_in_sentence = np.arange(len(words)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ids[np.repeat(starts + pad, lengths) + offset_in_sentence] = words
    ids[starts + pad + lengths] = Vocabulary.EOS_ID
    return ids


class _Pairs:
    """What Windows and StreamWindows share: orders of their pair numbers, and chunks of pairs."""

    def batches(self, batch_size, rng=None):
        """Pair-number arrays of size `batch_size` (the last may be smaller), shuffled by `rng` if given."""
        order = self.shuffle(rng) if rng is not None else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]

    def shuffle(self, rng, mode="auto", block=None, group=None):
        """An epoch's order of the pair numbers (see shuffled): the same for both kinds."""
        return shuffled(len(self), rng, mode, block, group)

    def chunks(self, size=1 << 16):
        """(contexts, targets) of consecutive pairs, `size` at a time: evaluation in bounded memory."""
        for start in range(0, len(self), size):
            yield self.pairs(np.arange(start, min(start + size, len(self))))


class Windows(_Pairs):
    """All (context, target) pairs of a corpus for an n-gram order n.

    >>> from fflm.vocab import Vocabulary
    >>> v = Vocabulary(["a", "b"])
    >>> w = Windows.from_sentences([["a", "b"]], v, order=3)
    >>> w.ids.tolist()            # <s> <s> a b </s>
    [1, 1, 3, 4, 2]
    >>> x, y = w.pairs()
    >>> x.tolist(), y.tolist()
    ([[1, 1], [1, 3], [3, 4]], [3, 4, 2])
    """

    def __init__(self, ids, order):
        if order < 1:
            raise FflmError(f"order must be at least 1, not {order}")
        self.ids = np.ascontiguousarray(ids, dtype=np.int32)
        self.order = order
        pad = max(order - 1, 1)
        if len(self.ids) < pad or (self.ids[:pad] != Vocabulary.BOS_ID).any():
            raise FflmError("an id stream must start with the sentence padding")
        # Targets: every position that is not <s>; each has at least n-1 ids before it.
        self.positions = np.flatnonzero(self.ids != Vocabulary.BOS_ID)
        self.view = sliding_window_view(self.ids, order)  # (len(ids)-n+1, n), row i = ids[i:i+n]

    @classmethod
    def from_sentences(cls, sentences, vocab, order, cross_sentence=False):
        return cls(encode_stream(sentences, vocab, order, cross_sentence), order)

    def __len__(self):
        """Number of (context, target) pairs: words plus one </s> per sentence."""
        return len(self.positions)

    @property
    def num_sentences(self):
        return int(np.count_nonzero(self.ids == Vocabulary.EOS_ID))

    @property
    def targets(self):
        return self.ids[self.positions]

    def pairs(self, index=None):
        """(contexts (B, n-1) int32, targets (B,) int32) for pair numbers `index` (all by default)."""
        rows = self.positions - (self.order - 1)
        if index is not None:
            rows = rows[index]
        block = self.view[rows]  # (B, n): the one copy, of just this batch
        return block[:, :-1], block[:, -1]

    def gather(self, index, x, y):
        """Copy the pairs numbered `index` into the batch buffers x (B, n-1) and y (B,)."""
        from .kernels import gather_windows

        gather_windows(self.ids, self.positions, index, x, y)

    def stream(self):
        """The padded id stream (what the n-gram counter reads)."""
        return self.ids


def padded_stream(ids, order, cross_sentence=False):
    """An unpadded stream (sentence ids, then </s>) -> encode_stream's padded one.

    >>> padded_stream(np.array([3, 4, 2, 5, 2], dtype=np.int32), order=3).tolist()
    [1, 1, 3, 4, 2, 1, 1, 5, 2]
    """
    ids = np.asarray(ids, dtype=np.int32)
    pad = max(order - 1, 1)
    if cross_sentence:
        return np.concatenate((np.full(pad, Vocabulary.BOS_ID, dtype=np.int32), ids))
    if len(ids) and ids[-1] != Vocabulary.EOS_ID:
        raise FflmError("an unpadded id stream must end with </s>")
    starts = np.concatenate(([0], np.flatnonzero(ids == Vocabulary.EOS_ID)[:-1] + 1))
    return np.insert(ids, np.repeat(starts, pad), np.int32(Vocabulary.BOS_ID))


class StreamWindows(_Pairs):
    """The pairs of an unpadded id stream, read in place (a prepared corpus's memory map): pair i
    predicts ids[i] from the n-1 ids before it, <s> standing for what lies before its sentence
    (or, cross_sentence, before the stream). Nothing grows with the corpus but the stream
    itself, which stays on disk: the same pairs, in the same numbering, as Windows makes of the
    same sentences. Ids are read through `lookup` (the stream's ids -> the model's; default
    the identity), so one stream serves every vocabulary cut and any model's vocabulary.

    >>> w = StreamWindows(np.array([3, 4, 2, 5, 2], dtype=np.uint16), order=3)
    >>> x, y = w.pairs()
    >>> x.tolist(), y.tolist()
    ([[1, 1], [1, 3], [3, 4], [1, 1], [1, 5]], [3, 4, 2, 5, 2])
    """

    # Pairs gathered between two releases of the memory map's pages (see gather).
    RELEASE_EVERY = 1 << 22

    def __init__(self, ids, order, cross_sentence=False, lookup=None, sentences=None, release=None):
        if order < 1:
            raise FflmError(f"order must be at least 1, not {order}")
        if len(ids) and ids[-1] != Vocabulary.EOS_ID:
            raise FflmError("an unpadded id stream must end with </s>")
        self.ids, self.order, self.cross_sentence = ids, order, cross_sentence
        if lookup is None:
            lookup = np.arange(int(ids.max(initial=Vocabulary.EOS_ID)) + 1, dtype=np.int32)
        self.lookup = np.ascontiguousarray(lookup, dtype=np.int32)
        self._sentences = sentences
        self._release, self._gathered = release, 0

    def __len__(self):
        return len(self.ids)

    @property
    def num_sentences(self):
        if self._sentences is None:
            self._sentences = sum(int(np.count_nonzero(self.ids[i : i + _STEP] == Vocabulary.EOS_ID))
                                  for i in range(0, len(self.ids), _STEP))
        return self._sentences

    @property
    def targets(self):
        """The targets (in memory: one int32 a pair)."""
        return self.lookup[self.ids]

    def gather(self, index, x, y):
        from .kernels import gather_stream

        gather_stream(self.ids, np.asarray(index), self.lookup, not self.cross_sentence, x, y)  # int32 or int64
        self._gathered += len(index)
        if self._release is not None and self._gathered >= self.RELEASE_EVERY:
            # random reads fault in pages of the map all over the file; handing them back now and
            # then keeps the resident set to what a stretch of batches touches (they stay cached)
            self._release()
            self._gathered = 0

    def pairs(self, index=None):
        index = np.arange(len(self)) if index is None else np.asarray(index, dtype=np.int64)
        x = np.empty((len(index), self.order - 1), dtype=np.int32)
        y = np.empty(len(index), dtype=np.int32)
        self.gather(index, x, y)
        return x, y

    def stream(self):
        """The padded stream (in memory) that Windows and the n-gram counter read."""
        return padded_stream(self.lookup[self.ids], self.order, self.cross_sentence)


_STEP = 1 << 24


SHUFFLES = ("auto", "full", "blocks")


def shuffled(n, rng, mode="auto", block=None, group=None):
    """An epoch's order of n pair numbers: "full", one whole permutation (8 bytes a pair);
    "blocks", a BlockOrder (`block` positions a block, `group` blocks a pool), whose memory
    does not grow with the corpus; "auto", full up to BlockOrder.EXACT pairs, blocks beyond."""
    if mode not in SHUFFLES:
        raise FflmError(f"unknown shuffle {mode!r} (choose from {', '.join(SHUFFLES)})")
    if mode == "full" or (mode == "auto" and n <= BlockOrder.EXACT):
        return rng.permutation(n)
    return BlockOrder(n, int(rng.integers(2**63 - 1)), block, group)


def order_memory(n, mode="auto", block=None, group=None):
    """Bytes an epoch's order of n pairs holds (see shuffled)."""
    if mode == "full" or (mode == "auto" and n <= BlockOrder.EXACT):
        return 8 * n
    # one pool (4-byte pair numbers below 2**31) and a batch's slices of it
    return (4 if n < 2**31 else 8) * min(n, (block or BlockOrder.BLOCK) * (group or BlockOrder.GROUP))


class BlockOrder:
    """A shuffled order of n pair numbers in bounded memory: the pairs cut into blocks of
    `block` consecutive ones, the blocks in random order, and each group of `group` blocks
    pooled and permuted (the pool is all that is ever held: block * group pair numbers).
    Sliced like the array it stands for; `describe()` and `from_description` let checkpoints
    keep it as four numbers.

    >>> o = BlockOrder(10, seed=1, block=3, group=2)
    >>> sorted(o[0:10].tolist()) == list(range(10))
    True
    """

    EXACT = 1 << 23  # up to this many pairs, one whole permutation (64 MB) is drawn instead
    BLOCK, GROUP = 1 << 16, 64  # pools of 4M pairs (16 MB), each from 64 places in the corpus

    def __init__(self, n, seed, block=None, group=None):
        block, group = block or self.BLOCK, group or self.GROUP
        self.n, self.seed, self.block, self.group = int(n), int(seed), int(block), int(group)
        nblocks = -(-self.n // self.block)
        self.blocks = np.random.default_rng(self.seed).permutation(nblocks)
        sizes = np.minimum(self.block, self.n - self.blocks * self.block)
        ends = np.cumsum(sizes)
        self.starts = np.concatenate(([0], ends[self.group - 1 :: self.group]))  # where each pool begins
        if self.starts[-1] != self.n:
            self.starts = np.append(self.starts, self.n)
        self._pool = (-1, None)

    def __len__(self):
        return self.n

    def _pool_of(self, g):
        if self._pool[0] != g:
            self._pool = (-1, None)  # the old pool goes first: one pool is ever held
            blocks = self.blocks[g * self.group : (g + 1) * self.group]
            dtype = np.int32 if self.n < 2**31 else np.int64  # 4 bytes a pair number where they fit
            sizes = np.minimum(self.block, self.n - blocks * self.block)
            members, at = np.empty(int(sizes.sum()), dtype=dtype), 0
            for b, k in zip(blocks.tolist(), sizes.tolist()):
                members[at : at + k] = np.arange(b * self.block, b * self.block + k, dtype=dtype)
                at += k
            np.random.default_rng([self.seed, g]).shuffle(members)  # in place
            self._pool = (g, members)
        return self._pool[1]

    def __getitem__(self, s):
        if not isinstance(s, slice) or s.step not in (None, 1):
            raise TypeError("a BlockOrder is read in slices")
        start, stop, _ = s.indices(self.n)
        parts = []
        while start < stop:
            g = int(np.searchsorted(self.starts, start, side="right")) - 1
            end = min(stop, int(self.starts[g + 1]))
            parts.append(self._pool_of(g)[start - self.starts[g] : end - self.starts[g]])
            start = end
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def describe(self):
        return np.array([self.n, self.seed, self.block, self.group], dtype=np.int64)

    @classmethod
    def from_description(cls, a):
        a = np.asarray(a)
        if a.shape != (4,) or a.dtype.kind not in "iu":
            raise FflmError("damaged batch order")
        n, seed, block, group = (int(v) for v in a)
        if n < 0 or seed < 0 or block < 1 or group < 1:
            raise FflmError("damaged batch order")
        return cls(n, seed, block, group)
