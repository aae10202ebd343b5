"""ARPA lines at compiled speed: log10 values written as Python's '%.7g' writes them, byte for byte.

Writing an ARPA file in Python costs about 2 µs an entry (the numbers, the words, the join),
more than estimating the model. Here a block of entries becomes one bytes object in a Numba
pass. A number takes the fast path when its 7 significant digits are certain: scaled by an
exact power of ten into [10^6, 10^7), the product carries one rounding (< 2e-9 absolute),
so unless it lies within 1e-6 of a rounding boundary its digits are Python's. The few
others (and anything outside 1e-15..1e22) are formatted by Python and passed in.
"""

import numpy as np
from numba import njit

_POW10 = np.array([10.0 ** i for i in range(23)])  # exactly representable
_GUARD = 1e-6


@njit(cache=True)
def _digits(x, pow10):
    """(ok, digits, exponent): x's 7 significant digits (an int in [10^6, 10^7)) and decimal
    exponent as '%.7g' rounds them; ok False when the fast path cannot be sure."""
    a = abs(x)
    if not (1e-15 <= a < 1e22):
        return False, 0, 0
    e = int(np.floor(np.log10(a)))
    s = 0.0
    for _ in range(4):
        n = 6 - e
        if n > 22 or n < -22:
            return False, 0, 0
        s = a * pow10[n] if n >= 0 else a / pow10[-n]
        if s < 1e6:
            e -= 1
        elif s >= 1e7:
            e += 1
        else:
            break
    if not (1e6 + _GUARD <= s <= 1e7 - _GUARD):
        return False, 0, 0
    f = np.floor(s)
    frac = s - f
    if abs(frac - 0.5) < _GUARD:
        return False, 0, 0
    d = int(f) + (1 if frac > 0.5 else 0)
    if d == 10_000_000:
        d, e = 1_000_000, e + 1
    return True, d, e


@njit(cache=True)
def fast_mask(values):
    """True where the fast path formats the value exactly."""
    out = np.empty(values.shape[0], dtype=np.bool_)
    for i in range(values.shape[0]):
        x = values[i]
        if x == 0.0:
            out[i] = True
        else:
            out[i] = _digits(x, _POW10)[0]
    return out


@njit(cache=True, inline="always")
def _put(buf, at, c):
    buf[at] = c
    return at + 1


@njit(cache=True)
def _write_number(buf, at, x, special, special_at, j):
    """Write x as '%.7g' at buf[at:]; j >= 0: the pre-formatted special[j]."""
    if j >= 0:
        for t in range(special_at[j], special_at[j + 1]):
            at = _put(buf, at, special[t])
        return at
    if x == 0.0:
        if np.signbit(x):
            at = _put(buf, at, 45)  # '-'
        return _put(buf, at, 48)  # '0'
    ok, d, e = _digits(x, _POW10)
    if x < 0:
        at = _put(buf, at, 45)
    digs = np.empty(7, dtype=np.uint8)
    for t in range(6, -1, -1):
        digs[t] = 48 + d % 10
        d //= 10
    m = 7
    while m > 1 and digs[m - 1] == 48:  # trailing zeros go
        m -= 1
    if -4 <= e < 7:
        if e >= 0:
            for t in range(e + 1):
                at = _put(buf, at, digs[t] if t < m else 48)
            if m > e + 1:
                at = _put(buf, at, 46)  # '.'
                for t in range(e + 1, m):
                    at = _put(buf, at, digs[t])
        else:
            at = _put(buf, at, 48)
            at = _put(buf, at, 46)
            for _ in range(-e - 1):
                at = _put(buf, at, 48)
            for t in range(m):
                at = _put(buf, at, digs[t])
    else:
        at = _put(buf, at, digs[0])
        if m > 1:
            at = _put(buf, at, 46)
            for t in range(1, m):
                at = _put(buf, at, digs[t])
        at = _put(buf, at, 101)  # 'e'
        at = _put(buf, at, 45 if e < 0 else 43)
        ae = -e if e < 0 else e
        if ae >= 100:
            at = _put(buf, at, 48 + ae // 100)
        at = _put(buf, at, 48 + (ae // 10) % 10)
        at = _put(buf, at, 48 + ae % 10)
    return at


@njit(cache=True)
def _lines(log10p, bow, has_bow, rows, word_bytes, word_at, special, special_at, special_lp, special_bow):
    n, k = rows.shape
    size = 0
    for i in range(n):
        size += 2 * 16 + 3 + k
        for c in range(k):
            w = rows[i, c]
            size += word_at[w + 1] - word_at[w]
    buf = np.empty(size, dtype=np.uint8)
    at = 0
    for i in range(n):
        at = _write_number(buf, at, log10p[i], special, special_at, special_lp[i])
        at = _put(buf, at, 9)
        for c in range(k):
            if c:
                at = _put(buf, at, 32)
            w = rows[i, c]
            for t in range(word_at[w], word_at[w + 1]):
                at = _put(buf, at, word_bytes[t])
        if has_bow:
            at = _put(buf, at, 9)
            at = _write_number(buf, at, bow[i], special, special_at, special_bow[i])
        at = _put(buf, at, 10)
    return buf[:at]


class WordTable:
    """The vocabulary's words as UTF-8 bytes, end to end, and where each starts."""

    def __init__(self, words):
        encoded = [w.encode("utf-8") for w in words]
        self.bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.empty(0, np.uint8)
        self.at = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.at[1:])


def arpa_lines(log10p, rows, words, bow=None):
    """An order's ARPA lines as bytes: '%.7g' of log10p, the n-gram (rows: (n, k) word ids
    into `words`, a WordTable), and '%.7g' of bow unless None. -inf and NaN are written -99,
    as ARPA spells log10(0)."""
    from .ngram import ARPA_LOG_ZERO

    lp = np.nan_to_num(np.asarray(log10p, dtype=np.float64), nan=ARPA_LOG_ZERO, neginf=ARPA_LOG_ZERO)
    has_bow = bow is not None
    bw = (np.nan_to_num(np.asarray(bow, dtype=np.float64), neginf=ARPA_LOG_ZERO) if has_bow
          else np.zeros(len(lp)))
    special_parts, index = [], []
    for values in (lp, bw):
        j = np.full(len(values), -1, dtype=np.int64)
        slow = np.flatnonzero(~fast_mask(values)) if (has_bow or values is lp) else np.empty(0, np.int64)
        j[slow] = np.arange(len(special_parts), len(special_parts) + len(slow))
        special_parts += [f"{x:.7g}".encode() for x in values[slow].tolist()]
        index.append(j)
    special = np.frombuffer(b"".join(special_parts), dtype=np.uint8) if special_parts else np.empty(0, np.uint8)
    special_at = np.zeros(len(special_parts) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in special_parts], out=special_at[1:])
    rows = np.ascontiguousarray(rows, dtype=np.int64).reshape(len(lp), -1)
    return _lines(lp, bw, has_bow, rows, words.bytes, words.at, special, special_at, index[0], index[1]).tobytes()
