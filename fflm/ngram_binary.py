"""The n-gram model's binary file: sorted arrays and hash tables that numpy maps, so that
loading costs nothing whatever the size (KenLM's build_binary, in fflm's own format).

An 8-byte magic, the header's length, a versioned JSON header (order, smoothing, discounts,
text settings, vocabulary, where each array lies), then per order the sorted int64 keys,
float64 log10 probabilities and back-offs, and (version 2) each order's hash table, each at
a 64-byte boundary. Every probability is the estimate's to the last bit.
"""

import json

import numpy as np

from .errors import FflmError
from .fileio import atomic_write
from .vocab import Vocabulary

BINARY_MAGIC = b"FFLMNGRM"
BINARY_VERSION = 2  # 2: with each order's hash table (version 1 files still load)
_ALIGN = 64


def save_binary(lm, path):
    """Write `lm` as fflm's binary n-gram model, atomically: an 8-byte magic, the header's
    length (uint64, little-endian), a JSON header (version, order, smoothing, discounts, meta,
    vocabulary, and where each array lies), then per order the sorted keys (int64), log10
    probabilities and log10 back-off weights (float64), and from order 2 on the keys' hash
    table (int32, or int64 past 2^31 keys), each at a 64-byte boundary. The arrays are the
    model's own, so every probability is the model's to the last bit."""
    per_order = [(np.ascontiguousarray(lm.keys[k], dtype="<i8"), np.ascontiguousarray(lm.log10p[k], dtype="<f8"),
                  np.ascontiguousarray(lm.bow[k], dtype="<f8")) for k in range(lm.order)]
    write_binary(path, lm.vocab, lm.order, lm.smoothing, lm.discounts, lm.k, lm.meta, per_order, lm.hashes())


def write_binary(path, vocab, order, smoothing, discounts, k, meta, per_order, hashes=None):
    """save_binary's file from per order (keys, log10p, bow): numpy arrays (int64, float64), or
    arrays on disk (ngram_disk.DiskArray), written a block at a time; hashes: per order the
    hash table (order 1's, empty, is not written). Without hashes: a version 1 file."""
    arrays = []
    for n, (keys, log10p, bow) in enumerate(per_order, 1):
        arrays += [(f"keys{n}", keys), (f"log10p{n}", log10p), (f"bow{n}", bow)]
    if hashes is not None:
        arrays += [(f"hash{n}", hashes[n - 1]) for n in range(2, order + 1)]
    header = {"format": "fflm-ngram", "version": BINARY_VERSION if hashes is not None else 1, "order": order, "smoothing": smoothing,
              "discounts": [list(d) for d in discounts] if discounts else None, "k": k, "meta": meta,
              "vocab": vocab.to_dict(), "arrays": []}
    # the header's size depends on the offsets it lists: lay them out after a generous guess, then check
    guess = len(json.dumps(header, ensure_ascii=False).encode()) + 100 * len(arrays) + 4096
    offset = -(-(16 + guess) // _ALIGN) * _ALIGN
    for name, a in arrays:
        header["arrays"].append({"name": name, "dtype": a.dtype.newbyteorder("<").str, "length": len(a),
                                 "offset": offset})
        offset = -(-(offset + a.nbytes) // _ALIGN) * _ALIGN
    header["bytes"] = offset
    blob = json.dumps(header, ensure_ascii=False).encode()
    assert 16 + len(blob) <= header["arrays"][0]["offset"], "the header outgrew its room"
    with atomic_write(path, "wb") as f:
        f.write(BINARY_MAGIC + len(blob).to_bytes(8, "little") + blob)
        for (name, a), spec in zip(arrays, header["arrays"]):
            f.write(b"\0" * (spec["offset"] - f.tell()))
            if isinstance(a, np.ndarray):
                f.write(a.tobytes())
            else:
                for _, block in a.blocks(1 << 22):
                    f.write(np.ascontiguousarray(block, dtype=spec["dtype"]).tobytes())
        f.write(b"\0" * (offset - f.tell()))


def is_binary(path):
    try:
        with open(path, "rb") as f:
            return f.read(8) == BINARY_MAGIC
    except OSError:
        return False


def load_binary(path):
    """Open a binary model by memory map (nothing is read but the header until queried);
    a file that is not one, of another version, or cut short is one FflmError."""
    import os

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            magic, size = f.read(8), f.read(8)
            if magic != BINARY_MAGIC:
                raise FflmError(f"{path}: not an fflm binary n-gram model")
            if len(size) < 8:
                raise FflmError(f"{path}: truncated fflm binary n-gram model")
            n = int.from_bytes(size, "little")
            blob = f.read(n) if n < 1 << 31 else b""
            if len(blob) < n:
                raise FflmError(f"{path}: truncated fflm binary n-gram model (its header is cut short)")
        header = json.loads(blob.decode("utf-8"))
        if not isinstance(header, dict) or header.get("format") != "fflm-ngram":
            raise ValueError("not an fflm-ngram header")
    except OSError as e:
        raise FflmError(f"{path}: cannot read: {e.strerror}") from None
    except (UnicodeDecodeError, ValueError):
        raise FflmError(f"{path}: damaged fflm binary n-gram model (its header does not parse)") from None
    if header.get("version") not in (1, BINARY_VERSION):
        raise FflmError(f"{path}: binary n-gram model version {header.get('version')}; this fflm reads "
                        f"version {BINARY_VERSION} (rebuild it with fflm ngram build-binary)")
    try:
        size = os.path.getsize(path)
        if size < header["bytes"]:
            raise FflmError(f"{path}: truncated fflm binary n-gram model ({size} of {header['bytes']} bytes)")
        order = int(header["order"])
        vocab = Vocabulary.from_dict(header["vocab"], source=path)
        arrays = {}
        for spec in header["arrays"]:
            arrays[spec["name"]] = np.memmap(path, dtype=np.dtype(spec["dtype"]), mode="r", offset=spec["offset"],
                                             shape=(int(spec["length"]),))
        keys = [arrays[f"keys{k}"] for k in range(1, order + 1)]
        log10p = [arrays[f"log10p{k}"] for k in range(1, order + 1)]
        bow = [arrays[f"bow{k}"] for k in range(1, order + 1)]
        hashes = [None] + [arrays[f"hash{k}"] for k in range(2, order + 1)] if header["version"] >= 2 else None
    except (KeyError, TypeError, ValueError) as e:
        raise FflmError(f"{path}: damaged fflm binary n-gram model ({type(e).__name__}: {e})") from None
    if len(keys[0]) != len(vocab) or any(len(p) != len(q) or len(q) != len(b) for q, p, b in zip(keys, log10p, bow)):
        raise FflmError(f"{path}: damaged fflm binary n-gram model (its arrays do not fit together)")
    if hashes and any(len(h) <= len(q) or len(h) & (len(h) - 1) for q, h in zip(keys[1:], hashes[1:])):
        raise FflmError(f"{path}: damaged fflm binary n-gram model (a hash table of the wrong size)")
    discounts = [tuple(d) for d in header["discounts"]] if header.get("discounts") else None
    meta = header.get("meta") if isinstance(header.get("meta"), dict) else {}
    from .ngram import NGramLM

    lm = NGramLM(vocab, order, keys, log10p, bow, header.get("smoothing", "arpa"), discounts=discounts,
                 k=header.get("k"), meta=meta)
    lm._hashes = hashes  # version 1: made on first use
    return lm


def load_model(path):
    """An n-gram model from an ARPA file or a binary one, whichever `path` is."""
    from .ngram import NGramLM

    return load_binary(path) if is_binary(path) else NGramLM.load_arpa(path)
