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


class Windows:
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

    def batches(self, batch_size, rng=None):
        """Pair-number arrays of size `batch_size` (the last may be smaller), shuffled by `rng` if given."""
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]
