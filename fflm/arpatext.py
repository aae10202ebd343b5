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


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def digits(values):
    """Per value (ok, digits, exponent) as _digits gives them; zeros are ok (written '0' or '-0')."""
    n = values.shape[0]
    ok = np.empty(n, dtype=np.bool_)
    d = np.zeros(n, dtype=np.int64)
    e = np.zeros(n, dtype=np.int64)
    for i in range(n):
        if values[i] == 0.0:
            ok[i] = True
        else:
            ok[i], d[i], e[i] = _digits(values[i], _POW10)
    return ok, d, e


def fast_mask(values):
    """True where the fast path formats the value exactly."""
    return digits(np.asarray(values, dtype=np.float64))[0]


@njit(cache=True, inline="always")
def _put(buf, at, c):
    buf[at] = c
    return at + 1


@njit(cache=True, nogil=True)
def _write_number(buf, at, x, d, e, special, special_at, j):
    """Write x ('%.7g' of it: its digits d and exponent e) at buf[at:]; j >= 0: special[j]."""
    if j >= 0:
        for t in range(special_at[j], special_at[j + 1]):
            at = _put(buf, at, special[t])
        return at
    if x == 0.0:
        if np.signbit(x):
            at = _put(buf, at, 45)  # '-'
        return _put(buf, at, 48)  # '0'
    if x < 0:
        at = _put(buf, at, 45)
    m = 7
    while m > 1 and d % 10 == 0:  # trailing zeros go
        d //= 10
        m -= 1
    # the m digits of d, most significant first, go to buf[start:start + m] (with a point, or not)
    if -4 <= e < 7:
        if e >= m - 1:  # an integer: the digits, then zeros
            for t in range(m - 1, -1, -1):
                buf[at + t] = 48 + d % 10
                d //= 10
            at += m
            for _ in range(e + 1 - m):
                at = _put(buf, at, 48)
        elif e >= 0:  # digits, point, digits
            for t in range(m, -1, -1):
                if t == e + 1:
                    buf[at + t] = 46
                else:
                    buf[at + t] = 48 + d % 10
                    d //= 10
            at += m + 1
        else:  # 0.000ddd
            at = _put(buf, at, 48)
            at = _put(buf, at, 46)
            for _ in range(-e - 1):
                at = _put(buf, at, 48)
            for t in range(m - 1, -1, -1):
                buf[at + t] = 48 + d % 10
                d //= 10
            at += m
    else:
        if m > 1:
            for t in range(m, 1, -1):
                buf[at + t] = 48 + d % 10
                d //= 10
            buf[at + 1] = 46
            buf[at] = 48 + d
            at += m + 1
        else:
            at = _put(buf, at, 48 + d)
        at = _put(buf, at, 101)  # 'e'
        at = _put(buf, at, 45 if e < 0 else 43)
        ae = -e if e < 0 else e
        if ae >= 100:
            at = _put(buf, at, 48 + ae // 100)
        at = _put(buf, at, 48 + (ae // 10) % 10)
        at = _put(buf, at, 48 + ae % 10)
    return at


@njit(cache=True, nogil=True)
def _lines(log10p, lp_d, lp_e, bow, bow_d, bow_e, has_bow, rows, word_bytes, word_at, special, special_at,
           special_lp, special_bow):
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
        at = _write_number(buf, at, log10p[i], lp_d[i], lp_e[i], special, special_at, special_lp[i])
        at = _put(buf, at, 9)
        for c in range(k):
            if c:
                at = _put(buf, at, 32)
            w = rows[i, c]
            for t in range(word_at[w], word_at[w + 1]):
                at = _put(buf, at, word_bytes[t])
        if has_bow:
            at = _put(buf, at, 9)
            at = _write_number(buf, at, bow[i], bow_d[i], bow_e[i], special, special_at, special_bow[i])
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
    """An order's ARPA lines as a uint8 array (write it as it is): '%.7g' of log10p, the n-gram (rows: (n, k) word ids
    into `words`, a WordTable), and '%.7g' of bow unless None. -inf and NaN are written -99,
    as ARPA spells log10(0)."""
    from .ngram import ARPA_LOG_ZERO

    lp = np.nan_to_num(np.asarray(log10p, dtype=np.float64), nan=ARPA_LOG_ZERO, neginf=ARPA_LOG_ZERO)
    has_bow = bow is not None
    bw = (np.nan_to_num(np.asarray(bow, dtype=np.float64), neginf=ARPA_LOG_ZERO) if has_bow
          else np.zeros(len(lp)))
    special_parts, index, parts = [], [], []
    for values in (lp, bw):
        if has_bow or values is lp:
            ok, d, e = digits(values)
        else:  # no back-offs to write
            ok, d, e = np.ones(len(values), np.bool_), np.zeros(len(values), np.int64), np.zeros(len(values), np.int64)
        j = np.full(len(values), -1, dtype=np.int64)
        slow = np.flatnonzero(~ok)
        j[slow] = np.arange(len(special_parts), len(special_parts) + len(slow))
        special_parts += [f"{x:.7g}".encode() for x in values[slow].tolist()]
        index.append(j)
        parts.append((d, e))
    special = np.frombuffer(b"".join(special_parts), dtype=np.uint8) if special_parts else np.empty(0, np.uint8)
    special_at = np.zeros(len(special_parts) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in special_parts], out=special_at[1:])
    rows = np.asarray(rows)
    rows = np.ascontiguousarray(rows, dtype=rows.dtype if rows.dtype in (np.int32, np.int64) else np.int64)
    rows = rows.reshape(len(lp), -1)
    return _lines(lp, *parts[0], bw, *parts[1], has_bow, rows, words.bytes, words.at, special, special_at,
                  index[0], index[1])
