"""The vocabulary: words <-> integer ids, with an explicit <unk> policy.

Ids 0, 1, 2 are always <unk>, <s>, </s> (KenLM's order); ordinary words follow by
descending count, ties broken by the word itself, so a corpus always gives the same ids.
Words below `min_count`, or beyond the `max_size` cap, are mapped to <unk>; a word
spelled "<unk>" in the text already is that same symbol.
"""

import json
from collections import Counter

import numpy as np

from .errors import FflmError
from .fileio import atomic_write, read_bytes
from .text import decode


class Vocabulary:
    """Ids for words. `len(vocab)` counts the three specials too.

    >>> v = Vocabulary.build([["a", "b", "a"], ["b", "a", "c"]], min_count=2)
    >>> v.words
    ['<unk>', '<s>', '</s>', 'a', 'b']
    >>> v.encode(["a", "c", "zebra"]).tolist()
    [3, 0, 0]
    """

    UNK, BOS, EOS = "<unk>", "<s>", "</s>"
    UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
    SPECIALS = (UNK, BOS, EOS)

    def __init__(self, words, counts=None, min_count=1, max_size=None):
        """`words`: ordinary words in id order (ids 3, 4, ...); `counts`: one per id, specials first."""
        self.words = list(self.SPECIALS) + list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            dup = next(w for w, c in Counter(self.words).items() if c > 1)
            raise FflmError(f"vocabulary lists the word {dup!r} twice")
        if counts is None:
            counts = [0] * len(self.words)
        if len(counts) != len(self.words):
            raise FflmError(f"vocabulary has {len(self.words)} words but {len(counts)} counts")
        self.counts = np.asarray(counts, dtype=np.int64)
        self.min_count = min_count
        self.max_size = max_size

    @classmethod
    def build(cls, sentences, min_count=1, max_size=None):
        """Count `sentences` (lists of tokens) and keep words seen at least `min_count` times.

        `max_size` caps the whole vocabulary, the three specials included.
        """
        cls.check_cutoffs(min_count, max_size)
        counts = Counter()
        n = 0
        for s in sentences:
            counts.update(s)
            n += 1
        return cls.from_counts(counts, n, min_count, max_size)

    @staticmethod
    def check_cutoffs(min_count, max_size):
        if min_count < 1:
            raise FflmError(f"--min-count must be at least 1, not {min_count}")
        if max_size is not None and max_size < len(Vocabulary.SPECIALS) + 1:
            raise FflmError(f"--max-vocab must be at least 4 (three specials and one word), not {max_size}")

    @classmethod
    def from_counts(cls, counts, sentences, min_count=1, max_size=None):
        """The vocabulary of a corpus from its word counts (a mapping; "<unk>" may be one of
        them) and its number of sentences: what build() makes of the sentences themselves."""
        cls.check_cutoffs(min_count, max_size)
        return cls.ranked(counts, sentences).cut(min_count, max_size)

    @classmethod
    def ranked(cls, counts, sentences):
        """Every word of `counts` (zero counts too), ranked by count, ties by the word: the
        uncut vocabulary that any cut of it is a prefix of.

        >>> v = Vocabulary.ranked({"b": 2, "a": 2, "z": 0, "c": 5}, sentences=3)
        >>> v.words[3:], v.counts.tolist()
        (['c', 'a', 'b', 'z'], [0, 0, 3, 5, 2, 2, 0])
        """
        for special in (cls.BOS, cls.EOS):
            if counts.get(special):
                raise FflmError(
                    f"the text contains the reserved token {special!r}; fflm adds sentence boundaries itself"
                )
        unk = counts.get(cls.UNK, 0)
        ranked = sorted(((w, c) for w, c in counts.items() if w != cls.UNK), key=lambda wc: (-wc[1], wc[0]))
        return cls([w for w, _ in ranked], [unk, 0, sentences] + [c for _, c in ranked])

    def cut(self, min_count=1, max_size=None):
        """This vocabulary with the cut-offs applied: words below `min_count` and beyond the
        `max_size` cap go to <unk>. The words stay a prefix of these (they are ranked by count),
        so an id below len(result) means the same word in both, and any other id is <unk>.

        >>> v = Vocabulary(["a", "b", "c"], [0, 0, 2, 5, 2, 1])
        >>> w = v.cut(min_count=2)
        >>> w.words, w.counts.tolist()
        (['<unk>', '<s>', '</s>', 'a', 'b'], [1, 0, 2, 5, 2])
        """
        self.check_cutoffs(min_count, max_size)
        c = self.counts
        keep = len(self.SPECIALS) + int(np.count_nonzero(c[len(self.SPECIALS):] >= min_count))
        if max_size is not None:
            keep = min(keep, max_size)
        if (np.diff(c[len(self.SPECIALS):keep]) > 0).any():
            raise FflmError("a vocabulary can be cut only when its words are ranked by count")
        counts = [int(c[0] + c[keep:].sum()), int(c[1]), int(c[2])] + c[len(self.SPECIALS):keep].tolist()
        return Vocabulary(self.words[len(self.SPECIALS):keep], counts, min_count=min_count, max_size=max_size)

    def __len__(self):
        return len(self.words)

    def __contains__(self, word):
        return word in self.index

    def __eq__(self, other):
        return isinstance(other, Vocabulary) and self.words == other.words

    def id(self, word):
        """The id of `word`, <unk>'s id if it is not in the vocabulary."""
        return self.index.get(word, self.UNK_ID)

    def encode(self, tokens):
        """Tokens -> int32 ids (unknown words -> <unk>)."""
        get = self.index.get
        ids = np.fromiter((get(t, 0) for t in tokens), dtype=np.int32, count=len(tokens))
        if (ids == self.BOS_ID).any() or (ids == self.EOS_ID).any():
            bad = next(t for t in tokens if t in (self.BOS, self.EOS))
            raise FflmError(f"the text contains the reserved token {bad!r}; fflm adds sentence boundaries itself")
        return ids

    def decode(self, ids):
        """Ids -> list of words."""
        return [self.words[i] for i in ids]

    # --- files -------------------------------------------------------------------------
    def to_dict(self):
        return {
            "words": self.words,
            "counts": self.counts.tolist(),
            "min_count": self.min_count,
            "max_size": self.max_size,
        }

    @classmethod
    def from_dict(cls, d, source="vocabulary"):
        try:
            words, counts = d["words"], d["counts"]
            ok = (
                isinstance(words, list)
                and all(isinstance(w, str) and w and not any(c.isspace() for c in w) for w in words)
                and isinstance(counts, list)
                and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
            )
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise FflmError(f"{source}: not a valid fflm vocabulary (needs 'words' and non-negative 'counts')")
        if tuple(words[:3]) != cls.SPECIALS:
            raise FflmError(f"{source}: a vocabulary must start with {', '.join(cls.SPECIALS)}")
        min_count = d.get("min_count", 1)
        max_size = d.get("max_size")
        return cls(words[3:], counts, min_count=min_count, max_size=max_size)

    def save(self, path):
        """Write the vocabulary (words, counts, the cut-offs that made it) as JSON, atomically.

        >>> import os, tempfile
        >>> v = Vocabulary.build([["a", "b", "a"]])
        >>> path = os.path.join(tempfile.mkdtemp(), "vocab.json")
        >>> v.save(path)
        >>> Vocabulary.load(path).words == v.words
        True
        """
        with atomic_write(path) as f:
            json.dump(self.to_dict(), f, ensure_ascii=False)
            f.write("\n")

    @classmethod
    def load(cls, path):
        """Read a vocabulary written by save(); anything else is one FflmError naming the problem."""
        text = decode(read_bytes(path), path)
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise FflmError(f"{path}: not a JSON vocabulary file ({e.msg} at line {e.lineno})") from None
        if not isinstance(d, dict):
            raise FflmError(f"{path}: not a JSON vocabulary file")
        return cls.from_dict(d, source=path)
