"""Opening files the same way everywhere: gzip by suffix, atomic writes.

A file fflm writes appears complete or not at all: it is written under a temporary
name in the destination folder and renamed over the target only once it is whole.
"""

import contextlib
import errno
import gzip
import io
import os
import tempfile

from .errors import FflmError


def check_readable(path):
    """Raise FflmError unless `path` is an existing regular file we can read."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FflmError(f"{path}: no such file")
    if os.path.isdir(path):
        raise FflmError(f"{path}: is a directory, not a file")
    if not os.access(path, os.R_OK):
        raise FflmError(f"{path}: permission denied")


def read_bytes(path):
    """The whole file as bytes, gunzipped when it ends in .gz."""
    check_readable(path)
    try:
        if os.fspath(path).endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # gzip raises these for corrupt archives
        raise FflmError(f"{path}: cannot read: {e}") from None


@contextlib.contextmanager
def atomic_write(path, mode="w", encoding="utf-8"):
    """Write `path` through a temporary file that replaces it only on success.

    Yields a text (mode "w") or binary (mode "wb") file; `.gz` paths are gzipped.
    On any error the temporary file is removed and an existing `path` is untouched.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FflmError(f"{path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise FflmError(f"{path}: is a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as e:
        raise FflmError(f"{path}: cannot write: {e.strerror}") from None
    raw = os.fdopen(fd, "wb")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        # mtime=0 keeps gzip output byte-identical from run to run
        stream = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) if path.endswith(".gz") else raw
        f = stream if "b" in mode else io.TextIOWrapper(stream, encoding=encoding, newline="\n")
        yield f
        if f is not stream:
            f.flush()
            f.detach()
        if stream is not raw:
            stream.close()  # writes the gzip trailer into raw
        raw.flush()
        os.fsync(raw.fileno())  # the data is on disk before the name points at it
        raw.close()
        os.replace(tmp, path)
    except OSError as e:
        raw.close()
        _remove_quietly(tmp)
        raise FflmError(f"{path}: cannot write: {why_not_written(e)}") from None
    except BaseException:
        raw.close()
        _remove_quietly(tmp)
        raise


def why_not_written(e):
    """An OSError from a write, in words: a full disk (or a file-size limit) says so."""
    if e.errno == errno.EFBIG or (e.errno is None and "requested and" in str(e)):
        return "no space left (a write was cut short)"  # numpy's tofile: "N requested and M written"
    return e.strerror or str(e)  # ENOSPC: "No space left on device"


def make_folder(folder):
    """Make `folder` (and its parents) if it is not there; FflmError if that cannot be done."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise FflmError(f"{folder}: exists and is not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise FflmError(f"{folder}: cannot make the folder ({e.strerror})") from None


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_quietly(path):
    with contextlib.suppress(OSError):
        os.remove(path)
