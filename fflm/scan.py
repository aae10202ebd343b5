"""The whitespace tokenizer as one pass over bytes (Numba), for `fflm prepare`.

str.splitlines() and str.split() in Python cost about 0.7 µs a token, mostly in building and
hashing a str per token; this pass hashes each token's bytes into an open-addressing table
instead and makes a str only once per distinct word of a chunk. It gives exactly what
text.TextConfig("whitespace").tokenize gives line by line, for text whose whitespace is ASCII
(`scannable` says; any other chunk takes the Python path).
"""

import re

import numpy as np
from numba import njit

# Unicode whitespace beyond ASCII (what str.split() also splits on), UTF-8 encoded: U+0085,
# U+00A0, U+1680, U+2000-200A, U+2028, U+2029, U+202F, U+205F, U+3000.
_WIDE_SPACE = re.compile(rb"\xc2[\x85\xa0]|\xe1\x9a\x80|\xe2\x80[\x80-\x8a\xa8\xa9\xaf]|\xe2\x81\x9f|\xe3\x80\x80")


def scannable(data):
    """Whether every whitespace character in `data` (UTF-8) is ASCII, so scan() applies."""
    return _WIDE_SPACE.search(data) is None


def scan(data):
    """UTF-8 bytes -> None where a whitespace character is not ASCII (the caller takes the
    Python path), else (distinct words in order of first appearance as one bytes object, each
    followed by a newline; their counts; each token's index into them (int32); the tokens on
    each line (int64)), lines as str.splitlines() cuts them."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ids = np.empty(len(buf) // 2 + 1, dtype=np.int32)  # a token and its separator take two bytes at least
    result = _scan(buf, ids)
    if result is None:
        return None
    tokens, lengths, blob, words = result
    ids = ids[:tokens]
    return blob.tobytes(), np.bincount(ids, minlength=words), ids, lengths


@njit(cache=True)
def _kind(b):
    """0: part of a word; 1: space within a line; 2: ends a line (\\r is 3: \\r\\n ends one)."""
    if b == 32 or b == 9 or b == 31:
        return 1
    if b == 10 or b == 11 or b == 12 or b == 28 or b == 29 or b == 30:
        return 2
    if b == 13:
        return 3
    return 0


@njit(cache=True)
def _wide_space(buf, i):
    """Whether a non-ASCII whitespace character (see _WIDE_SPACE) starts at buf[i]."""
    n, b = buf.shape[0], buf[i]
    c = buf[i + 1] if i + 1 < n else 0
    d = buf[i + 2] if i + 2 < n else 0
    if b == 0xC2:
        return c == 0x85 or c == 0xA0
    if b == 0xE1:
        return c == 0x9A and d == 0x80
    if b == 0xE2:
        return (c == 0x80 and ((0x80 <= d <= 0x8A) or d == 0xA8 or d == 0xA9 or d == 0xAF)) or (c == 0x81 and d == 0x9F)
    if b == 0xE3:
        return c == 0x80 and d == 0x80
    return False


@njit(cache=True)
def _grow(a, n):
    b = np.empty(2 * a.shape[0], dtype=a.dtype)
    b[:n] = a[:n]
    return b


@njit(cache=True)
def _scan(buf, ids):
    n = buf.shape[0]
    cap = 1 << 12
    table = np.full(cap, -1, dtype=np.int64)  # slot -> local word id
    starts = np.empty(1 << 11, dtype=np.int64)
    sizes = np.empty(1 << 11, dtype=np.int64)
    hashes = np.empty(1 << 11, dtype=np.uint64)
    lengths = np.empty(1 << 12, dtype=np.int64)
    tokens = lines = words = blob_size = 0
    on_line = 0  # tokens on the current line
    line_open = False  # bytes seen since the last line end
    i = 0
    while i < n:
        k = _kind(buf[i])
        if k == 1:
            line_open = True
            i += 1
            continue
        if k >= 2:
            if lines == lengths.shape[0]:
                lengths = _grow(lengths, lines)
            lengths[lines] = on_line
            lines += 1
            on_line = 0
            line_open = False
            i += 2 if k == 3 and i + 1 < n and buf[i + 1] == 10 else 1
            continue
        start = i
        h = np.uint64(14695981039346656037)  # FNV-1a
        while i < n and _kind(buf[i]) == 0:
            if buf[i] >= 0xC2 and _wide_space(buf, i):
                return None
            h = (h ^ np.uint64(buf[i])) * np.uint64(1099511628211)
            i += 1
        size = i - start
        mask = cap - 1
        slot = np.int64(h & np.uint64(mask))
        while True:
            w = table[slot]
            if w < 0:
                break
            if hashes[w] == h and sizes[w] == size:
                s = starts[w]
                same = True
                for j in range(size):
                    if buf[s + j] != buf[start + j]:
                        same = False
                        break
                if same:
                    break
            slot = (slot + 1) & mask
        if w < 0:  # a new word
            w = words
            if w == starts.shape[0]:
                starts, sizes, hashes = _grow(starts, w), _grow(sizes, w), _grow(hashes, w)
            words += 1
            starts[w], sizes[w], hashes[w] = start, size, h
            blob_size += size + 1
            table[slot] = w
            if 2 * words > cap:  # keep the table at most half full
                cap *= 2
                table = np.full(cap, -1, dtype=np.int64)
                mask = cap - 1
                for v in range(words):
                    t = np.int64(hashes[v] & np.uint64(mask))
                    while table[t] >= 0:
                        t = (t + 1) & mask
                    table[t] = v
        ids[tokens] = w
        tokens += 1
        on_line += 1
        line_open = True
    if line_open:  # the last line, without its line end
        if lines == lengths.shape[0]:
            lengths = _grow(lengths, lines)
        lengths[lines] = on_line
        lines += 1
    blob = np.empty(blob_size, dtype=np.uint8)  # the distinct words, each followed by \n
    at = 0
    for w in range(words):
        blob[at : at + sizes[w]] = buf[starts[w] : starts[w] + sizes[w]]
        blob[at + sizes[w]] = 10
        at += sizes[w] + 1
    return tokens, lengths[:lines].copy(), blob, words
