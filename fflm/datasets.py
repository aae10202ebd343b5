"""Corpora as datasets: splitting one corpus into train / valid / test by whole sentences,
reproducibly (a seeded shuffle of sentence numbers)."""

import json
import os

import numpy as np

from .errors import FflmError
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
# What each dataset is, where it comes from and its checksums live in data/datasets.toml.
REGISTRY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "datasets.toml")
MANIFEST = "fflm-dataset.json"  # written last: a folder with it holds a complete, verified dataset


def registry(path=REGISTRY):
    """The datasets data/datasets.toml describes, by name."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise FflmError(f"{path}: cannot read the dataset registry ({e.strerror})") from None


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


def download(url, path, sha256, progress=None, timeout=60):
    """Fetch `url` into `path`, hashing as it goes; the file appears only if it is whole and its
    sha256 is `sha256`. A short read, a network error or a wrong checksum leaves nothing."""
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
        if h.hexdigest() != sha256:
            raise FflmError(f"{url}: sha256 {h.hexdigest()} is not the recorded {sha256}; nothing kept")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return got


def get(name, folder=None, base_url=None, sha256=None, progress=None, force=False):
    """Download, verify and prepare dataset `name` into folder/name; idempotent: a complete,
    verified copy is left alone (force: fetch again). base_url: a mirror holding the same file
    names. sha256: the checksum to require where the registry has none. Returns the manifest."""
    entries = registry()
    if name not in entries:
        raise FflmError(f"unknown dataset {name!r} (known: {', '.join(sorted(entries))})")
    entry = entries[name]
    folder = folder or default_dir()
    target = os.path.join(folder, name)
    done = status(folder, name)
    if done is not None and not force:
        return dict(done, already_present=True)
    files = entry.get("files", [])
    for f in files:
        if not (f.get("sha256") or sha256):
            raise FflmError(f"no sha256 is recorded for {name} yet; pass --sha256 with a checksum you trust")
    if sha256 and len(files) != 1:
        raise FflmError(f"--sha256 names one file's checksum, but {name} has {len(files)} files")
    make_folder(os.path.join(target, ".download"))
    fetched = []
    for f in files:
        url = f["url"]
        fname = url.rsplit("/", 1)[-1]
        if base_url:
            url = base_url.rstrip("/") + "/" + fname
        path = os.path.join(target, ".download", fname)
        want = f.get("sha256") or sha256
        if not (os.path.exists(path) and _sha256_file(path) == want):  # a verified earlier download is reused
            download(url, path, want, progress)
        fetched.append(path)
    outputs = PREPARE[entry.get("prepare", "copy")](fetched, target)
    for rel, want in entry.get("outputs", {}).items():
        got = _sha256_file(os.path.join(target, rel))
        if got != want:
            raise FflmError(f"{name}: prepared {rel} has sha256 {got}, not the recorded {want}")
    manifest = {"name": name, "description": entry.get("description"), "license": entry.get("license"),
                "sources": [f["url"] for f in files],
                "files": {rel: {"bytes": os.path.getsize(os.path.join(target, rel)),
                                "sha256": _sha256_file(os.path.join(target, rel))} for rel in outputs}}
    with atomic_write(os.path.join(target, MANIFEST)) as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return dict(manifest, already_present=False)


def _prepare_copy(fetched, target):
    import shutil

    out = []
    for path in fetched:
        rel = os.path.basename(path)
        with open(path, "rb") as src, atomic_write(os.path.join(target, rel), "wb") as dst:
            shutil.copyfileobj(src, dst)
        out.append(rel)
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
    import zipfile

    out = []
    try:
        with zipfile.ZipFile(fetched[0]) as z:
            for name in ("train", "valid", "test"):
                member = next((n for n in z.namelist() if n.endswith(f"wiki.{name}.tokens")), None)
                if member is None:
                    raise FflmError(f"{fetched[0]}: no wiki.{name}.tokens inside")
                with z.open(member) as src, atomic_write(os.path.join(target, f"{name}.txt"), "wb") as dst:
                    import shutil

                    shutil.copyfileobj(src, dst)
                out.append(f"{name}.txt")
    except zipfile.BadZipFile as e:
        raise FflmError(f"{fetched[0]}: not a zip archive ({e})") from None
    return out


PREPARE = {"copy": _prepare_copy, "brown-bengio": _prepare_brown, "wikitext": _prepare_wikitext}
