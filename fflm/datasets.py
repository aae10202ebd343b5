"""Corpora as datasets: splitting one corpus into train / valid / test by whole sentences,
reproducibly (a seeded shuffle of sentence numbers)."""

import json
import os

import numpy as np

from .errors import FflmError
from .fileio import atomic_write


def split_sentences(sentences, valid=0.1, test=0.1, seed=1):
    """(train, valid, test) lists of sentences: a seeded random share of whole sentences for
    valid and test, the rest for train, each kept in corpus order.

    >>> tr, va, te = split_sentences([[str(i)] for i in range(10)], 0.2, 0.1, seed=1)
    >>> len(tr), len(va), len(te)
    (7, 2, 1)
    """
    for name, share in (("--valid", valid), ("--test", test)):
        if not 0.0 <= share < 1.0:
            raise FflmError(f"{name} is a share of the sentences in [0, 1), not {share}")
    if valid + test >= 1.0:
        raise FflmError(f"--valid {valid} and --test {test} leave nothing to train on")
    n = len(sentences)
    n_valid, n_test = round(n * valid), round(n * test)
    if n - n_valid - n_test < 1 or (valid > 0 and n_valid == 0) or (test > 0 and n_test == 0):
        raise FflmError(f"{n} sentences are too few for these shares (--valid {valid}, --test {test})")
    order = np.random.default_rng(seed).permutation(n)
    part = np.zeros(n, dtype=np.int8)  # 0 train, 1 valid, 2 test
    part[order[:n_valid]] = 1
    part[order[n_valid : n_valid + n_test]] = 2
    return tuple([s for s, p in zip(sentences, part) if p == k] for k in (0, 1, 2))


def write_split(sentences, folder, valid=0.1, test=0.1, seed=1, source=None):
    """Write train.txt, valid.txt, test.txt (one sentence per line) and split.json into `folder`."""
    parts = split_sentences(sentences, valid, test, seed)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FflmError(f"{folder}: exists and is not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise FflmError(f"{folder}: cannot make the folder ({e.strerror})") from None
    summary = {"source": source, "seed": seed, "valid": valid, "test": test, "files": {}}
    for name, part in zip(("train", "valid", "test"), parts):
        path = os.path.join(folder, f"{name}.txt")
        with atomic_write(path) as f:
            for s in part:
                f.write(" ".join(s) + "\n")
        summary["files"][f"{name}.txt"] = {"sentences": len(part), "words": sum(len(s) for s in part)}
    with atomic_write(os.path.join(folder, "split.json")) as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    return summary
