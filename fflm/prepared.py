"""Ingredient I at scale: a corpus tokenised once into a memory-mapped id file.

`prepare` reads text as a stream of chunks (cut at line ends, or at a space inside a line
longer than a chunk), tokenises the chunks in parallel processes and writes a folder:
`ids.bin` (little-endian uint16 when the vocabulary fits, uint32 otherwise: each sentence's
word ids, then </s>; no <s>), `vocab.json` (every word, ranked by count, so any --min-count or
--max-vocab is a prefix of it) and `prepared.json` (the text settings, the counts, each
source's size and sha256, the ids' sha256). Training reads its windows straight from the
memory map (windows.StreamWindows): the corpus costs disk, not memory. The result is the
same, id for id, as reading the text whole (text.read_sentences, Vocabulary.build,
windows.encode_stream), whatever the chunk size or number of processes.

With held-out text (--valid/--test files, or shares of the sentences) the folder holds
train/, valid/ and test/, each a prepared corpus; all three share train's vocabulary (ranked
by train's counts, words seen only in held-out text last with count 0).
"""

import collections
import hashlib
import json
import mmap
import os
import shutil
import tempfile

import numpy as np

from .errors import FflmError
from .fileio import check_readable, why_not_written
from .text import TextConfig, decode, fingerprint, is_nltk, read_nltk, source_name
from .text import read_sentences as read_text_sentences
from .vocab import Vocabulary
from .windows import StreamWindows, Windows

FORMAT, VERSION = "fflm-prepared", 1
META, VOCAB, IDS = "prepared.json", "vocab.json", "ids.bin"
PARTS = ("train", "valid", "test")
CHUNK_BYTES = 16 << 20  # bytes of text a worker tokenises at a time (fewer chunks: fewer repeats of their distinct words in the merge)
PARALLEL_CHUNKS = 8  # a source of fewer chunks is tokenised in this process (a pool takes ~1 s to start)
BLOCK = 1 << 24  # ids a pass over a stream handles at a time (64 MB as uint32)
UINT16_MAX_VOCAB = 1 << 16
COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}


def is_prepared(path):
    """Whether `path` is a folder `prepare` wrote (one corpus, or train/valid/test)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, META))


def _opener(path):
    for suffix, module in COMPRESSED.items():
        if os.fspath(path).endswith(suffix):
            return __import__(module).open
    return open


# --- reading: chunks of text, cut where a line (or, inside a long line, a word) ends ---------
def _chunks(path, chunk_bytes, split_lines, sha):
    """Yield (bytes, first line number, starts inside a line, ends at a line end). Lines longer
    than a chunk are cut after a space or tab when `split_lines` (whitespace tokenising, where a
    cut between words changes nothing), so one line of a billion words stays in bounded memory."""
    line, inside, carry = 1, False, b""
    try:
        with _opener(path)(path, "rb") as f:
            while True:
                block = f.read(chunk_bytes)
                if sha is not None and block:
                    sha.update(block)
                buf = carry + block
                if not block:  # the end: whatever is left is the last line (without its newline)
                    if buf:
                        yield buf, line, inside, True
                    return
                cut = buf.rfind(b"\n") + 1
                ends_line = cut > 0
                if not ends_line and split_lines and len(buf) >= chunk_bytes:
                    cut = max(buf.rfind(b" "), buf.rfind(b"\t")) + 1
                if cut <= 0:
                    carry = buf  # no place to cut yet: read on
                    continue
                chunk, carry = buf[:cut], buf[cut:]
                yield chunk, line, inside, ends_line
                line += chunk.count(b"\n")
                inside = not ends_line
    except (OSError, EOFError, ValueError) as e:  # bz2/lzma say ValueError/OSError for damaged data
        raise FflmError(f"{path}: cannot read: {e}") from None


def _tokenize(job):
    """One chunk -> (its distinct words in order of appearance, their counts, the chunk's tokens
    as indices into those words, the number of tokens on each line or piece of a line)."""
    data, path, first_line, config, bom = job
    config = TextConfig.from_dict(config)
    if config.tokenizer == "whitespace" and not config.lowercase:
        from .scan import scan

        # the bytes' own pass where it gives what the Python path gives (valid UTF-8, ASCII spaces)
        decode(data, path, "strict" if config.encoding_errors == "strict" else "replace", first_line, bom)
        raw = data[3:] if bom and data.startswith(b"\xef\xbb\xbf") else data
        if config.encoding_errors == "strict" or _valid_utf8(raw):
            result = scan(raw)
            if result is not None:
                return result
    text = decode(data, path, config.encoding_errors, first_line=first_line, bom=bom)
    index, ids, lengths = {}, [], []
    add = index.setdefault
    for line in text.splitlines():  # as read_sentences splits: \n, \r\n, \r and the rest
        tokens = config.tokenize(line)
        lengths.append(len(tokens))
        ids.extend([add(t, len(index)) for t in tokens])
    ids = np.array(ids, dtype=np.int32)
    blob = "".join(w + "\n" for w in index).encode("utf-8")  # no token holds a line end
    return blob, np.bincount(ids, minlength=len(index)), ids, np.array(lengths, dtype=np.int64)


def _valid_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


class _Merger:
    """Chunk results, in order, into one uint32 id stream numbered by first appearance (ids 0-2
    the specials; the numbering `words` may be shared by several streams), with </s> after
    every line that has tokens, lines cut across chunks joined."""

    def __init__(self, out, words, segment=0):
        self.out, self.ids, self.segment = out, words, segment
        self.counts = np.zeros(1024, dtype=np.int64)
        self.open = 0  # tokens written of a line a chunk boundary cut, not closed by </s> yet
        self.since = 0  # tokens written since the last </s> (segment: where the next cut falls)
        self.ended = True  # the stream so far ends with </s> (or is empty)
        self.sentences = self.tokens = 0

    def add(self, result, inside, ends_line):
        blob, counts, local, lengths = result
        words = blob.split(b"\n")[:-1]  # the chunk's distinct words, as UTF-8 bytes
        known = self.ids
        new = [w for w in words if w not in known]
        known.update(zip(new, range(len(known), len(known) + len(new))))
        lookup = np.fromiter(map(known.__getitem__, words), dtype=np.int32, count=len(words))
        for special in (Vocabulary.BOS_ID, Vocabulary.EOS_ID):
            if (lookup == special).any():
                raise FflmError(f"the text contains the reserved token {Vocabulary.SPECIALS[special]!r}; "
                                "fflm adds sentence boundaries itself")
        if len(self.ids) > len(self.counts):
            grown = np.zeros(2 * len(self.ids), dtype=np.int64)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        self.counts[lookup] += counts
        # </s> after each complete line with tokens; a line begun in an earlier chunk counts its
        # tokens there too, and a line this chunk leaves open gets its </s> in a later one
        emit = lengths > 0
        if inside and len(lengths) and (len(lengths) > 1 or ends_line):
            emit[0] = self.open + lengths[0] > 0
        carried = self.open if inside and len(lengths) == 1 else 0
        if not ends_line and len(lengths):
            emit[-1] = False
            self.open = carried + int(lengths[-1])
        else:
            self.open = 0
        stream = np.insert(lookup[local], np.cumsum(lengths)[emit], np.int32(Vocabulary.EOS_ID))
        if self.segment:
            stream = self._segment(stream)
        eos = np.flatnonzero(stream == Vocabulary.EOS_ID)
        self.since = len(stream) - 1 - int(eos[-1]) if len(eos) else self.since + len(stream)
        if len(stream):
            self.ended = bool(stream[-1] == Vocabulary.EOS_ID)
        stream.astype("<u4", copy=False).tofile(self.out)
        self.sentences += len(eos)
        self.tokens += len(stream)

    def _segment(self, stream):
        """--segment N: a </s> after every N tokens of a line (the line's own </s> ends the last
        piece; no empty sentence where a line ends on a cut)."""
        n, N, EOS = len(stream), self.segment, Vocabulary.EOS_ID
        is_eos = stream == EOS
        at = np.arange(n)
        last = np.maximum.accumulate(np.where(is_eos, at, -1))  # the </s> at or before each position
        run = np.where(last < 0, at + 1 + self.since, at - last)  # tokens since the last </s>, this one included
        cut = ~is_eos & (run % N == 0)
        cut &= ~np.append(is_eos[1:], False)  # the line ends here anyway
        stream = np.insert(stream, np.flatnonzero(cut) + 1, np.int32(EOS))
        # a line's </s> right after a cut at the end of the previous chunk would close an empty piece
        if len(stream) and stream[0] == EOS and self.ended:
            stream = stream[1:]
        return stream

    def word_counts(self):
        c = np.zeros(len(self.ids), dtype=np.int64)
        n = min(len(self.counts), len(c))
        c[:n] = self.counts[:n]
        return c


def _vocabulary(words, counts, sentences):
    """The ranked vocabulary of first-appearance numbering `words` (UTF-8 bytes -> id) with
    `counts` (one per id), every word kept: those seen only in held-out text last, count 0."""
    return Vocabulary.ranked({w.decode("utf-8"): int(counts[i]) for w, i in words.items()
                              if i == Vocabulary.UNK_ID or i >= len(Vocabulary.SPECIALS)}, sentences)


def _renumbering(words, vocab):
    """first-appearance id -> the vocabulary's id"""
    perm = np.empty(len(words), dtype=np.int64)
    for w, i in words.items():
        perm[i] = vocab.index[w.decode("utf-8")]
    return perm


def prepare(sources, folder, config=TextConfig(), workers=1, chunk_bytes=CHUNK_BYTES, force=False, progress=None,
            valid=(), test=(), valid_share=0.0, test_share=0.0, seed=1, min_count=1, max_size=None, segment=0,
            ray=None):
    """Tokenise `sources` (text files, plain or .gz/.bz2/.xz, or nltk:NAME; one after another
    make one corpus) into the prepared `folder` (see the module docstring), with `workers`
    processes; returns what prepared.json says (of train/, when there is held-out text).

    Held-out text: `valid`/`test` files, or shares of the sentences (each sentence goes to
    one part, seeded). `min_count`/`max_size` are recorded as the vocabulary cut training uses
    by default; the ids keep every word, so any other cut can be taken later. `segment` N > 0
    cuts every line into sentences of at most N tokens (text8 and other one-line corpora).
    The folder appears whole or not at all; an existing one is replaced only with `force`.
    `ray`: tokenise the chunks as Ray tasks instead ("local", or a cluster's address): the same
    folder, byte for byte."""
    sources = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    valid, test = _as_list(valid), _as_list(test)
    if not sources:
        raise FflmError("give at least one corpus to prepare")
    for s in sources + valid + test:
        if not is_nltk(s):
            check_readable(s)
    Vocabulary.check_cutoffs(min_count, max_size)
    if segment < 0:
        raise FflmError(f"--segment must be at least 0 (0: a line is a sentence), not {segment}")
    for name, share in (("--valid-share", valid_share), ("--test-share", test_share)):
        if not 0.0 <= share < 1.0:
            raise FflmError(f"{name} must be at least 0 and below 1, not {share}")
    if valid_share + test_share >= 1.0:
        raise FflmError("--valid-share and --test-share leave no training text")
    if (valid_share and valid) or (test_share and test):
        raise FflmError("give held-out text either as files or as a share, not both")
    folder = os.fspath(folder)
    if os.path.exists(folder) and not (os.path.isdir(folder) and not os.listdir(folder)):
        if not is_prepared(folder) and not is_prepared(os.path.join(folder, "train")):
            raise FflmError(f"{folder}: exists and is not a prepared corpus; give another -o")
        if not force:
            raise FflmError(f"{folder}: already prepared; pass --force to prepare it again")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise FflmError(f"{folder}: folder {parent} does not exist")
    try:
        tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(os.path.abspath(folder)) + ".")
    except OSError as e:
        raise FflmError(f"{folder}: cannot write: {e.strerror}") from None
    started = False
    try:
        if ray:
            from .cluster import connect

            started = connect(ray)
        meta = _prepare_into(tmp, sources, valid, test, valid_share, test_share, seed, min_count, max_size,
                             segment, config, "ray" if ray else workers, chunk_bytes, progress)
        os.chmod(tmp, 0o777 & ~_umask())
        if os.path.exists(folder):  # replace: move the old one aside first, then drop it
            old = tempfile.mkdtemp(dir=parent, prefix=".old.")
            os.replace(folder, os.path.join(old, "x"))
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FflmError(f"{folder}: cannot write: {why_not_written(e)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if started:
            from .cluster import ray_module

            ray_module().shutdown()
    return meta


def _as_list(x):
    if not x:
        return []
    return [x] if isinstance(x, (str, os.PathLike)) else list(x)


def _read_into(merger, source, config, workers, chunk_bytes, bar):
    """Tokenise one source into `merger`; returns its record for the manifest."""
    if is_nltk(source):  # NLTK's readers give sentences, not text: one chunk, in this process
        sentences = read_nltk(source, config)
        index = {}
        local = np.fromiter((index.setdefault(t, len(index)) for s in sentences for t in s), dtype=np.int32,
                            count=sum(map(len, sentences)))
        lengths = np.array([len(s) for s in sentences], dtype=np.int64)
        blob = "".join(w + "\n" for w in index).encode("utf-8")
        merger.add((blob, np.bincount(local, minlength=len(index)), local, lengths), False, True)
        return {"path": source_name(source), "sha256": fingerprint(source)}
    compressed = _opener(source) is not open
    if workers != "ray" and os.path.getsize(source) * (4 if compressed else 1) < PARALLEL_CHUNKS * chunk_bytes:
        workers = 1  # starting the pool would cost more than it saves (the result is the same)
    sha = None if compressed else hashlib.sha256()
    jobs = ((data, os.fspath(source), line, config.to_dict(), line == 1 and not inside, inside, ends)
            for data, line, inside, ends in _chunks(source, chunk_bytes, config.tokenizer == "whitespace", sha))
    for (data, _, _, _, _, inside, ends), result in _map_ordered(jobs, workers):
        merger.add(result, inside, ends)
        if bar is not None and not compressed:
            bar.update(len(data))
    size = os.path.getsize(source)
    if bar is not None and compressed:
        bar.update(size)
    return {"path": source_name(source), "bytes": size,
            "sha256": sha.hexdigest() if sha is not None else fingerprint(source)}


def _prepare_into(tmp, sources, valid, test, valid_share, test_share, seed, min_count, max_size, segment, config,
                  workers, chunk_bytes, progress):
    total = sum(os.path.getsize(s) for s in sources + valid + test if not is_nltk(s))
    bar = progress(total=total, unit="B", unit_scale=True, desc="prepare") if progress and total else None
    # one first-appearance numbering for every part, keyed by the words' UTF-8 bytes
    words = {w.encode(): i for i, w in enumerate(Vocabulary.SPECIALS)}
    raw, records, mergers = {}, {}, {}
    held_out = bool(valid or test or valid_share or test_share)
    for part, files in (("train", sources), ("valid", valid), ("test", test)):
        if not files:
            continue
        raw[part] = os.path.join(tmp, f".{part}.u32")
        with open(raw[part], "wb") as out:
            mergers[part] = _Merger(out, words, segment)
            records[part] = [_read_into(mergers[part], s, config, workers, chunk_bytes, bar) for s in files]
        if mergers[part].tokens == 0:
            raise FflmError(f"{', '.join(map(str, files))}: no text (the file is empty or only whitespace)")
    if bar is not None:
        bar.close()
    counts = {p: (m.word_counts(), m.sentences, m.tokens) for p, m in mergers.items()}
    if valid_share or test_share:
        counts.update(_split(tmp, raw, len(words), valid_share, test_share, seed))
    train_counts = np.zeros(len(words), dtype=np.int64)
    train_counts[: len(counts["train"][0])] = counts["train"][0]
    vocab = _vocabulary(words, train_counts, counts["train"][1])
    perm = _renumbering(words, vocab)
    dtype = "uint16" if len(vocab) <= UINT16_MAX_VOCAB else "uint32"
    metas = {}
    for part in [p for p in PARTS if p in raw]:
        out = os.path.join(tmp, part) if held_out else tmp
        os.makedirs(out, exist_ok=True)
        c = counts[part]
        ids_sha = _renumber(raw[part], os.path.join(out, IDS), perm, c[2], dtype)
        os.remove(raw[part])
        vocab.save(os.path.join(out, VOCAB))
        meta = {
            "format": FORMAT, "version": VERSION, "part": part if held_out else "corpus",
            "sources": records.get(part, records["train"]),
            "text": config.to_dict(),
            "tokens": c[2], "sentences": c[1], "words": c[2] - c[1],
            "vocabulary": len(vocab),
            "min_count": min_count, "max_vocab": max_size, "segment": segment,
            "split": ({"valid_share": valid_share, "test_share": test_share, "seed": seed}
                      if valid_share or test_share else None),
            "ids": IDS, "dtype": dtype, "ids_sha256": ids_sha, "vocab_sha256": _file_sha(os.path.join(out, VOCAB)),
        }
        _write_json(os.path.join(out, META), meta)
        metas[part] = meta
    return metas["train"]


def _split(tmp, raw, nwords, valid_share, test_share, seed):
    """Deal the training stream's sentences into train/valid/test by a seeded draw per
    sentence, a block at a time (the corpus order kept within each part); returns their
    (word counts, sentences, tokens)."""
    n = os.path.getsize(raw["train"]) // 4
    src = open(raw["train"], "rb")  # plain reads, as in _renumber
    rng = np.random.default_rng([seed, 0x5EED])
    parts = ["train"] + [p for p, share in (("valid", valid_share), ("test", test_share)) if share]
    outs = {p: open(os.path.join(tmp, f".{p}.split.u32"), "wb") for p in parts}
    got = {p: [np.zeros(nwords, dtype=np.int64), 0, 0] for p in parts}
    try:
        start = 0
        while start < n:
            src.seek(4 * start)
            block = np.fromfile(src, dtype="<u4", count=min(BLOCK, n - start))
            ends = np.flatnonzero(block == Vocabulary.EOS_ID)
            block = block[: ends[-1] + 1]  # whole sentences (the stream ends with </s>)
            lengths = np.diff(np.concatenate(([-1], ends)))
            u = rng.random(len(ends))
            part_of = np.where(u < valid_share, 1, np.where(u < valid_share + test_share, 2, 0))
            token_part = np.repeat(part_of, lengths)
            for k, p in enumerate(PARTS):
                if p not in outs:
                    continue
                ids = block[token_part == k]
                ids.tofile(outs[p])
                g = got[p]
                g[0] += np.bincount(ids, minlength=nwords)[:nwords]
                g[1] += int(np.count_nonzero(part_of == k))
                g[2] += len(ids)
            start += len(block)
    finally:
        for f in outs.values():
            f.close()
        src.close()
    for p in parts:
        os.replace(os.path.join(tmp, f".{p}.split.u32"), os.path.join(tmp, f".{p}.u32"))
        raw[p] = os.path.join(tmp, f".{p}.u32")
        if got[p][2] == 0:
            raise FflmError(f"the {p} share got no sentences; the corpus is too small for these shares")
    return {p: tuple(got[p]) for p in parts}


def _renumber(src, dst, perm, n, dtype):
    """Write the first-appearance ids of `src` through `perm` into `dst` as `dtype`, a block at
    a time; returns the sha256 of what was written."""
    sha = hashlib.sha256()
    out_type = np.dtype("<u2" if dtype == "uint16" else "<u4")
    # plain reads, not a memory map: the pages read do not stay in this process's resident set
    with open(src, "rb") as f_in, open(dst, "wb") as f:
        for i in range(0, n, BLOCK):
            block = perm[np.fromfile(f_in, dtype="<u4", count=min(BLOCK, n - i))].astype(out_type)
            sha.update(block.data)
            block.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    return sha.hexdigest()


def _file_sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _map_ordered(jobs, workers):
    """(job, _tokenize(job)) in order, over `workers` processes (or "ray": Ray tasks on the
    cluster `prepare` joined), with at most two chunks per worker in flight (Pool.imap would
    read the whole file ahead into its queue)."""
    if workers == "ray":
        import ray

        from .cluster import map_ordered

        yield from map_ordered(_tokenize, jobs, 2 * int(ray.cluster_resources().get("CPU", 1)), arg=lambda j: j[:5])
        return
    if workers <= 1:
        for job in jobs:
            yield job, _tokenize(job[:5])
        return
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                      else "spawn")
    with ctx.Pool(workers) as pool:
        pending = collections.deque()
        for job in jobs:
            pending.append((job, pool.apply_async(_tokenize, (job[:5],))))
            if len(pending) >= 2 * workers:
                job0, result = pending.popleft()
                yield job0, result.get()
        while pending:
            job0, result = pending.popleft()
            yield job0, result.get()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- reading a prepared folder -----------------------------------------------------------------
class PreparedCorpus:
    """A folder `prepare` wrote: its settings, its full vocabulary, and its ids as a read-only
    memory map (nothing is read until used). A folder with train/ inside opens as train/."""

    def __init__(self, folder):
        folder = os.fspath(folder)
        if not os.path.isfile(os.path.join(folder, META)) and os.path.isfile(os.path.join(folder, "train", META)):
            folder = os.path.join(folder, "train")
        self.folder = folder
        path = os.path.join(self.folder, META)
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        except FileNotFoundError:
            raise FflmError(f"{self.folder}: not a prepared corpus (no {META}); make one with fflm prepare") from None
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise FflmError(f"{path}: cannot read it ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise FflmError(f"{path}: not an fflm prepared corpus")
        if meta.get("version") != VERSION:
            raise FflmError(f"{path}: prepared-corpus version {meta.get('version')}, this fflm reads {VERSION}; "
                            "prepare the corpus again")
        try:
            self.tokens, self.num_sentences = int(meta["tokens"]), int(meta["sentences"])
            self.text = TextConfig.from_dict(meta["text"])
            dtype = {"uint16": "<u2", "uint32": "<u4"}[meta["dtype"]]
            self.min_count, self.max_vocab = int(meta.get("min_count", 1)), meta.get("max_vocab")
        except (KeyError, TypeError, ValueError):
            raise FflmError(f"{path}: damaged (tokens, sentences, dtype or text settings missing)") from None
        self.meta = meta
        self.part = meta.get("part", "corpus")
        self.vocab = Vocabulary.load(os.path.join(self.folder, VOCAB))
        ids_path = os.path.join(self.folder, IDS)
        try:
            have = os.path.getsize(ids_path)
        except OSError:
            raise FflmError(f"{self.folder}: {IDS} is missing") from None
        width = np.dtype(dtype).itemsize
        if have != width * self.tokens:
            raise FflmError(f"{ids_path}: {have} bytes, but {META} says {self.tokens} ids "
                            f"({width * self.tokens} bytes); prepare the corpus again")
        self._map = None
        if self.tokens:
            with open(ids_path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self.ids = np.frombuffer(self._map, dtype=dtype)
        else:
            self.ids = np.empty(0, dtype=dtype)
        if self.tokens and (self.ids[-1] != Vocabulary.EOS_ID):
            raise FflmError(f"{ids_path}: damaged (it does not end with </s>)")

    @property
    def digest(self):
        """sha256 of prepared.json, which holds the ids' and the vocabulary's sha256s."""
        return _file_sha(os.path.join(self.folder, META))

    def release(self):
        """Hand the map's resident pages back to the page cache (they are read again on use)."""
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def check_text(self, config):
        """An error unless `config` reads text the way this corpus was read."""
        if config is not None and config != self.text:
            theirs = ", ".join(f"{k} {v}" for k, v in self.text.to_dict().items())
            raise FflmError(f"{self.folder} was prepared with {theirs}; prepare it again for other text settings")

    def vocabulary(self, min_count=None, max_size=None):
        """What Vocabulary.build makes of these sentences with these cut-offs (None: the ones
        recorded at prepare)."""
        if self.part in ("valid", "test"):
            raise FflmError(f"{self.folder} is held-out text prepared over train's vocabulary; train on "
                            f"{os.path.join(os.path.dirname(self.folder), 'train')}")
        return self.vocab.cut(self.min_count if min_count is None else min_count,
                              self.max_vocab if min_count is None and max_size is None else max_size)

    def lookup(self, vocab):
        """This corpus's id -> `vocab`'s id (int32). Exact for any vocabulary: a prepared folder
        keeps every word it read (held-out parts too), so nothing was lost to <unk> before."""
        if vocab.words == self.vocab.words[: len(vocab)]:  # a cut of this corpus's vocabulary: a prefix
            lookup = np.arange(len(self.vocab), dtype=np.int32)
            lookup[len(vocab):] = Vocabulary.UNK_ID
            return lookup
        lookup = np.fromiter((vocab.id(w) for w in self.vocab.words), dtype=np.int32, count=len(self.vocab))
        lookup[Vocabulary.BOS_ID], lookup[Vocabulary.EOS_ID] = Vocabulary.BOS_ID, Vocabulary.EOS_ID
        return lookup

    def windows(self, order, cross_sentence=False, vocab=None):
        """StreamWindows over the ids, read in place and mapped batch by batch into `vocab`'s
        ids (default: this corpus's whole vocabulary)."""
        lookup = self.lookup(vocab) if vocab is not None else None
        return StreamWindows(self.ids, order, cross_sentence, lookup, self.num_sentences, self.release)

    def sample_sentences(self, most, config=None):
        """At most `most` sentences, evenly spaced through the corpus (all of them if fewer)."""
        self.check_text(config)
        if self.num_sentences <= most:
            return self.sentences()
        ends = _sentence_ends(self.ids)
        starts = np.concatenate(([0], ends[:-1] + 1))
        pick = np.linspace(0, len(ends) - 1, most).astype(np.int64)
        words = self.vocab.words
        return [[words[i] for i in self.ids[a:b].tolist()] for a, b in zip(starts[pick].tolist(), ends[pick].tolist())]

    def sentences(self, config=None):
        """The sentences as lists of words (in memory: for evaluation-sized corpora)."""
        self.check_text(config)
        words = self.vocab.words
        ends = np.flatnonzero(self.ids == Vocabulary.EOS_ID)
        tokens = [words[i] for i in self.ids.tolist()]
        out, start = [], 0
        for end in ends.tolist():
            out.append(tokens[start:end])
            start = end + 1
        return out


def _sentence_ends(ids):
    """Where each sentence's </s> is, a block at a time."""
    return np.concatenate([np.flatnonzero(ids[i : i + BLOCK] == Vocabulary.EOS_ID) + i
                           for i in range(0, len(ids), BLOCK)] or [np.empty(0, dtype=np.int64)])


def read_sentences(path, config=TextConfig(), allow_empty=False):
    """text.read_sentences, and for a prepared folder its sentences (read with the same settings)."""
    if not is_nltk(path) and is_prepared_any(path):
        return PreparedCorpus(path).sentences(config)
    return read_text_sentences(path, config, allow_empty)


def is_prepared_any(path):
    return is_prepared(path) or is_prepared(os.path.join(os.fspath(path), "train"))


def training_data(path, config, min_count=None, max_size=None, order=1, cross_sentence=False, in_memory=False):
    """(vocabulary, windows, text settings) for training on `path`: a text file read whole, or a
    prepared folder read in place (`in_memory`: its padded stream in memory, as the n-gram
    counter wants it). `config` None: the folder's own settings; for text, the defaults.
    min_count None: the prepared folder's recorded cut, or 1 for text."""
    if not is_nltk(path) and is_prepared_any(path):
        corpus = PreparedCorpus(path)
        corpus.check_text(config)
        vocab = corpus.vocabulary(min_count, max_size)
        windows = corpus.windows(order, cross_sentence, vocab)
        if in_memory:
            windows = Windows(windows.stream(), order)
        return vocab, windows, corpus.text
    config = config if config is not None else TextConfig()
    sentences = read_text_sentences(path, config)
    vocab = Vocabulary.build(sentences, min_count=1 if min_count is None else min_count, max_size=max_size)
    return vocab, Windows.from_sentences(sentences, vocab, order, cross_sentence), config


class HeldOut:
    """Text to score: a text file (or nltk:) read once, or a prepared folder read in place.
    windows() gives a model's pairs over it, words() the tokens of pairs a:b as strings."""

    def __init__(self, path, config):
        self.path = path
        self.corpus = PreparedCorpus(path) if not is_nltk(path) and is_prepared_any(path) else None
        if self.corpus is not None:
            self.corpus.check_text(config)
            self._sentences = None
        else:
            self._sentences = read_text_sentences(path, config)
        self._words = None

    def windows(self, vocab, order, cross_sentence=False):
        if self.corpus is not None:
            return self.corpus.windows(order, cross_sentence, vocab)
        return Windows.from_sentences(self._sentences, vocab, order, cross_sentence)

    def sentences(self):
        """Every sentence as a list of words (in memory)."""
        return self._sentences if self._sentences is not None else self.corpus.sentences()

    def words(self, start, stop):
        """The tokens (words and </s>) of pairs start:stop, as the text has them."""
        if self.corpus is not None:
            words = self.corpus.vocab.words
            return [words[i] for i in self.corpus.ids[start:stop].tolist()]
        if self._words is None:
            self._words = [w for s in self._sentences for w in s + [Vocabulary.EOS]]
        return self._words[start:stop]
