"""Corpora as datasets: splitting one corpus into train / valid / test by whole sentences,
reproducibly (a seeded shuffle of sentence numbers)."""

import json
import os
import warnings

import numpy as np

from .errors import FflmError, FflmWarning
from .fileio import atomic_write, make_folder


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
    make_folder(folder)
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


# --- the standard benchmarks: fetch, verify, prepare (fflm data get / list) ----------------------
# What each dataset is, where it comes from and its checksums live in fflm/datasets.toml (shipped
# inside the package so an installed fflm has it; data/datasets.toml is a link to it).
REGISTRY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasets.toml")
MANIFEST = "fflm-dataset.json"  # written last: a folder with it holds a complete, verified dataset


def registry(path=REGISTRY):
    """The datasets a registry (fflm/datasets.toml, or the user's own) describes, by name; its
    layout is checked, so a wrong one is one line naming the problem."""
    import re

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            entries = tomllib.load(f)
    except OSError as e:
        raise FflmError(f"{path}: cannot read the dataset registry ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:  # TOMLDecodeError is a ValueError
        raise FflmError(f"{path}: not a TOML dataset registry ({e})") from None

    def bad(name, what):
        raise FflmError(f"{path}: dataset {name!r}: {what}")

    for name, entry in entries.items():
        if not isinstance(entry, dict):
            bad(name, "is not a table")
        ways = sources(entry)
        if not isinstance(ways, list) or not ways:
            bad(name, "names no files to fetch")
        for way in ways:
            files = way.get("files") if isinstance(way, dict) else None
            if not isinstance(files, list) or not files:
                bad(name, "names no files to fetch")
            if way.get("prepare", "copy") not in PREPARE:
                bad(name, f"unknown prepare step {way.get('prepare')!r} (known: {', '.join(sorted(PREPARE))})")
            for f in files:
                if not (isinstance(f, dict) and isinstance(f.get("url"), str) and "/" in f["url"]
                        and f["url"].rsplit("/", 1)[-1] not in ("", ".", "..")):
                    bad(name, "every file needs a url ending in a file name")
                if f.get("sha256") and not re.fullmatch(r"[0-9a-f]{64}", str(f["sha256"])):
                    bad(name, f"{f['sha256']!r} is not a sha256 (64 lowercase hex digits)")
        outputs = entry.get("outputs", {})
        if not isinstance(outputs, dict) or not all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
                                                    for v in outputs.values()):
            bad(name, "outputs must map file names to sha256s")
    return entries


def default_dir():
    """Where datasets go: $FFLM_DATA, else ~/.cache/fflm/data."""
    return os.environ.get("FFLM_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "fflm", "data")


def status(folder, name):
    """The manifest of `name` under `folder` if it is there and complete, else None."""
    path = os.path.join(folder, name, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _sha256_file(path):
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url, path, sha256=None, progress=None, timeout=60):
    """Fetch `url` into `path`, hashing as it goes; the file appears only if it is whole and, when
    `sha256` is given, has that checksum. A short read, a network error or a wrong checksum
    leaves nothing."""
    import hashlib
    import tempfile
    import urllib.error
    import urllib.request

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".part")
    h, got = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:
                    total = int(r.headers.get("Content-Length") or 0) or None
                    bar = progress(total=total, desc=os.path.basename(path), unit="B", unit_scale=True) if progress else None
                    try:
                        while True:
                            block = r.read(1 << 16)
                            if not block:
                                break
                            out.write(block)
                            h.update(block)
                            got += len(block)
                            if bar:
                                bar.update(len(block))
                    finally:
                        if bar:
                            bar.close()
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or e
                raise FflmError(f"{url}: download failed ({reason})") from None
            if total is not None and got != total:
                raise FflmError(f"{url}: the download was cut short ({got} of {total} bytes); nothing kept")
        if sha256 and h.hexdigest() != sha256:
            raise FflmError(f"{url}: sha256 {h.hexdigest()} is not the recorded {sha256}; nothing kept")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return got


def sources(entry):
    """The ways to get a dataset, tried in order: each {"files": [...], "prepare": ...} (and the
    files' "encoding" where a prepare step reads text). An entry names them as [[NAME.sources]],
    or, with one way only, as NAME.files, NAME.prepare and NAME.encoding."""
    if "sources" in entry:
        return entry["sources"]
    way = {"files": entry.get("files", []), "prepare": entry.get("prepare", "copy")}
    if entry.get("encoding"):
        way["encoding"] = entry["encoding"]
    return [way]


def verifiable(entry, source, sha256=None):
    """Whether what `source` fetches can be checked: every file has a recorded sha256 (or the
    user's, for the one file without), or the dataset records the sha256 of every prepared file."""
    if entry.get("outputs"):
        return True
    unchecked = [f for f in source.get("files", []) if not f.get("sha256")]
    return not unchecked or (sha256 is not None and len(unchecked) == 1)


def get(name, folder=None, base_url=None, sha256=None, progress=None, force=False, entries=None):
    """Download, verify and prepare dataset `name` into folder/name; idempotent: a complete,
    verified copy is left alone (force: fetch again). base_url: a mirror holding the same file
    names. sha256: the checksum to require of a file the registry has none for. entries: the
    registry to use (default fflm/datasets.toml). Sources are tried in order; the first that
    verifies wins. Returns the manifest."""
    entries = registry() if entries is None else entries
    if name not in entries:
        raise FflmError(f"unknown dataset {name!r} (known: {', '.join(sorted(entries))})")
    entry = entries[name]
    folder = folder or default_dir()
    target = os.path.join(folder, name)
    done = status(folder, name)
    if done is not None and not force:
        return dict(done, already_present=True)
    ways = sources(entry)
    if not any(verifiable(entry, s, sha256) for s in ways):
        unchecked = sum(not f.get("sha256") for s in ways for f in s.get("files", []))
        if sha256 and unchecked > 1:
            raise FflmError(f"--sha256 names one file's checksum, but {name} has {unchecked} files without one")
        raise FflmError(f"no sha256 is recorded for {name} yet; pass --sha256 with a checksum you trust")
    if sha256 and all(f.get("sha256") for s in ways for f in s.get("files", [])):
        warnings.warn(f"{name}: every file has a recorded sha256; --sha256 is not used", FflmWarning)
    if done is not None:  # --force: the folder is no longer vouched for until the new manifest is written
        os.remove(os.path.join(target, MANIFEST))
    failures = []
    for source in ways:
        if not verifiable(entry, source, sha256):
            continue
        try:
            outputs, used = _fetch_and_prepare(name, entry, source, target, base_url, sha256, progress, force)
            break
        except FflmError as e:
            failures.append(str(e))
    else:
        raise FflmError(failures[0] if len(failures) == 1 else f"{name}: no source worked: {'; '.join(failures)}")
    for failure in failures:  # said once the outcome is known, so a total failure stays one line
        warnings.warn(f"{name}: a source failed, the next one was used: {failure}", FflmWarning)
    manifest = {"name": name, "description": entry.get("description"), "license": entry.get("license"),
                "sources": used,
                "files": {rel: {"bytes": os.path.getsize(os.path.join(target, rel)),
                                "sha256": _sha256_file(os.path.join(target, rel))} for rel in outputs}}
    with atomic_write(os.path.join(target, MANIFEST)) as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return dict(manifest, already_present=False)


def _fetch_and_prepare(name, entry, source, target, base_url, sha256, progress, force=False):
    """One source: fetch its files (reusing verified earlier downloads unless `force`), prepare
    them, check the prepared files against the recorded sha256s. Returns (prepared files, urls fetched); on a
    failure nothing that failed the check is left and FflmError says why."""
    files = source.get("files", [])
    make_folder(os.path.join(target, ".download"))
    fetched, used = [], []
    for f in files:
        url = f["url"]
        fname = url.rsplit("/", 1)[-1]
        if base_url:
            url = base_url.rstrip("/") + "/" + fname
        path = os.path.join(target, ".download", fname)
        want = f.get("sha256") or sha256
        # an earlier download is reused when its checksum is known to be right (unless forced); a
        # file without one is fetched again, since only the prepared files' check vouches for it
        if force or not (want and os.path.exists(path) and _sha256_file(path) == want):
            download(url, path, want, progress)
        fetched.append(path)
        used.append(url)
    prepare = PREPARE[source.get("prepare", "copy")]
    outputs = prepare(fetched, target, source["encoding"]) if source.get("encoding") else prepare(fetched, target)
    recorded = entry.get("outputs", {})
    for rel in outputs if recorded else ():
        got = _sha256_file(os.path.join(target, rel))
        if got != recorded.get(rel):
            for r in outputs:  # a prepared file that does not verify is not left behind
                if os.path.exists(os.path.join(target, r)):
                    os.remove(os.path.join(target, r))
            for path, f in zip(fetched, files):
                if not f.get("sha256") and os.path.exists(path):
                    os.remove(path)
            want = recorded.get(rel)
            raise FflmError(f"{name}: prepared {rel} has sha256 {got}, not the recorded {want}" if want
                            else f"{name}: prepared {rel} has no recorded sha256")
    return outputs, used


def _prepare_copy(fetched, target):
    import shutil

    out = []
    for path in fetched:
        rel = os.path.basename(path)
        with open(path, "rb") as src, atomic_write(os.path.join(target, rel), "wb") as dst:
            shutil.copyfileobj(src, dst)
        out.append(rel)
    return out


def _member(names, suffix, archive):
    """The one archive member whose path ends in `suffix` (archives differ in their top folder)."""
    found = [n for n in names if n == suffix or n.endswith("/" + suffix)]
    if not found:
        raise FflmError(f"{archive}: no {suffix} inside")
    return found[0]


def _prepare_ptb_tgz(fetched, target):
    """Mikolov's simple-examples.tgz: its data/ptb.{train,valid,test}.txt, byte for byte."""
    import shutil
    import tarfile

    out = []
    try:
        with tarfile.open(fetched[0], "r:*") as t:
            names = t.getnames()
            for part in ("train", "valid", "test"):
                rel = f"ptb.{part}.txt"
                src = t.extractfile(_member(names, f"data/{rel}", fetched[0]))
                if src is None:
                    raise FflmError(f"{fetched[0]}: data/{rel} is not a regular file")
                with src, atomic_write(os.path.join(target, rel), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                out.append(rel)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise FflmError(f"{fetched[0]}: not a readable tar archive ({e})") from None
    return out


def brown_sentences(zip_path):
    """The Brown corpus's 500 files ca01..cr09 from NLTK's brown.zip, in order: one list of
    words per sentence, the /tag removed (as nltk.corpus.brown.sents() gives them)."""
    import re
    import zipfile

    try:
        with zipfile.ZipFile(zip_path) as z:
            names = sorted(n for n in z.namelist() if re.fullmatch(r"brown/c[a-r]\d\d", n))
            if len(names) != 500:
                raise FflmError(f"{zip_path}: expected the Brown corpus's 500 files, found {len(names)}")
            sents = []
            for n in names:
                for line in z.read(n).decode("utf-8").splitlines():
                    tokens = line.split()
                    if tokens:
                        sents.append([t.rsplit("/", 1)[0] for t in tokens])
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError) as e:
        raise FflmError(f"{zip_path}: not the Brown corpus archive ({e})") from None
    return sents


def _prepare_brown(fetched, target):
    """Bengio et al.'s split by running word count (train before word 800,000, valid before
    1,000,000, the rest test, whole sentences), raw and with words seen < 4 times in train as <unk>."""
    from collections import Counter

    sents = brown_sentences(fetched[0])
    parts, seen = ([], [], []), 0
    for s in sents:
        parts[0 if seen < 800_000 else 1 if seen < 1_000_000 else 2].append(s)
        seen += len(s)
    counts = Counter(w for s in parts[0] for w in s)
    os.makedirs(os.path.join(target, "raw"), exist_ok=True)
    out = []
    for name, part in zip(("train", "valid", "test"), parts):
        for rel, fix in ((f"raw/{name}.txt", lambda w: w), (f"{name}.txt", lambda w: w if counts[w] >= 4 else "<unk>")):
            with atomic_write(os.path.join(target, rel)) as f:
                for s in part:
                    f.write(" ".join(fix(w) for w in s) + "\n")
            out.append(rel)
    return out


def _prepare_wikitext(fetched, target):
    """wiki.{train,valid,test}.tokens from the archive, as train/valid/test.txt (one paragraph
    or heading per line; blank lines are skipped when read)."""
    import shutil
    import zipfile

    out = []
    try:
        with zipfile.ZipFile(fetched[0]) as z:
            names = z.namelist()
            for name in ("train", "valid", "test"):
                with z.open(_member(names, f"wiki.{name}.tokens", fetched[0])) as src, \
                        atomic_write(os.path.join(target, f"{name}.txt"), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                out.append(f"{name}.txt")
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise FflmError(f"{fetched[0]}: not a readable zip archive ({e})") from None
    return out


def _prepare_nltk_files(fetched, target, encoding="utf-8"):
    """An NLTK corpus of plain-text files, one sentence (or paragraph) a line (movie_reviews,
    state_union): the archive's .txt files in sorted order, every 10th (the 10th, 20th, ...) to
    test.txt, the rest to train.txt; each line's tokens joined by one space, blank lines dropped;
    read in the entry's `encoding` (state_union's files are Latin-1). No valid.txt: hold
    sentences out of train (`fflm train --budget` does) or give your own."""
    import zipfile

    try:
        with zipfile.ZipFile(fetched[0]) as z:
            names = sorted(n for n in z.namelist() if n.endswith(".txt") and not n.endswith("/"))
            if not names:
                raise FflmError(f"{fetched[0]}: no .txt files inside")
            with atomic_write(os.path.join(target, "train.txt")) as train, \
                    atomic_write(os.path.join(target, "test.txt")) as test:
                for i, n in enumerate(names):
                    out = test if i % 10 == 9 else train
                    for line in z.read(n).decode(encoding).splitlines():
                        if line.split():
                            out.write(" ".join(line.split()) + "\n")
    except (zipfile.BadZipFile, UnicodeDecodeError, OSError, EOFError) as e:
        raise FflmError(f"{fetched[0]}: not a readable zip archive of text files ({e})") from None
    return ["train.txt", "test.txt"]


PREPARE = {"copy": _prepare_copy, "ptb-tgz": _prepare_ptb_tgz, "brown-bengio": _prepare_brown,
           "wikitext": _prepare_wikitext, "nltk-files": _prepare_nltk_files}
