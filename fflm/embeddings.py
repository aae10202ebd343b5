"""Inside the model: the learned word embeddings (the rows of E) as vectors. Nearest neighbours
by cosine similarity, a 2-D PCA for pictures, and word2vec's text format for other tools
(gensim's `KeyedVectors.load_word2vec_format` reads it)."""

import numpy as np

from .errors import FflmError
from .fileio import atomic_write


def unit_rows(E):
    """Each row scaled to length 1 (a zero row stays zero), in float64."""
    E = np.asarray(E, dtype=np.float64)
    norms = np.linalg.norm(E, axis=1, keepdims=True)
    return E / np.where(norms > 0, norms, 1.0)


def neighbors(model, word, k=10):
    """The k words whose embeddings are nearest to `word`'s by cosine similarity, best first,
    as (word, similarity) pairs; `word` itself and the symbols <unk>, <s>, </s> are left out.

    >>> from fflm import Vocabulary
    >>> from fflm.model import FFNNLM, ModelConfig
    >>> lm = FFNNLM(Vocabulary(["cat", "dog", "car"]), ModelConfig(order=2, embed_dim=2, hidden=(2,)))
    >>> lm.E[3:6] = [[1, 0], [0.9, 0.1], [0, 1]]
    >>> [w for w, _ in neighbors(lm, "cat", k=2)]
    ['dog', 'car']
    """
    vocab = model.vocab
    if word not in vocab:
        raise FflmError(f"{word!r} is not in the model's vocabulary ({len(vocab)} words)")
    if k < 1:
        raise FflmError(f"-k must be at least 1, not {k}")
    U = unit_rows(model.E)
    i = vocab.id(word)
    sims = U @ U[i]
    sims[i] = -np.inf
    sims[: len(vocab.SPECIALS)] = -np.inf
    order = np.argsort(-sims, kind="stable")[: min(k, len(vocab) - len(vocab.SPECIALS) - 1)]
    return [(vocab.words[j], float(sims[j])) for j in order]


def pca_2d(vectors):
    """Project rows onto their first two principal components: (N, 2), and the share of the
    variance each keeps."""
    X = np.asarray(vectors, dtype=np.float64)
    X = X - X.mean(axis=0)
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    var = s**2 / max(float(np.sum(s**2)), 1e-300)
    return X @ vt[:2].T, var[:2]


def write_word2vec(model, path):
    """Every word's embedding in word2vec's text format: a 'V m' header, then 'word v1 ... vm'."""
    E = model.E
    with atomic_write(path) as f:
        f.write(f"{E.shape[0]} {E.shape[1]}\n")
        for w, row in zip(model.vocab.words, E):
            f.write(w + " " + " ".join(f"{x:.6g}" for x in row.tolist()) + "\n")


def read_word2vec(path):
    """(words, vectors) from a word2vec text file."""
    from .fileio import read_bytes
    from .text import decode

    lines = decode(read_bytes(path), path).splitlines()
    try:
        V, m = (int(x) for x in lines[0].split())
        words, rows = [], []
        for line in lines[1 : V + 1]:
            w, *xs = line.split(" ")
            words.append(w)
            rows.append([float(x) for x in xs])
        vectors = np.array(rows, dtype=np.float64)
    except (ValueError, IndexError):
        raise FflmError(f"{path}: not a word2vec text file") from None
    if vectors.shape != (V, m):
        raise FflmError(f"{path}: the header says {V} x {m} but the file holds {vectors.shape}")
    return words, vectors
