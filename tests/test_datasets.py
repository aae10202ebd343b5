"""fflm data get / list against a local HTTP server on 127.0.0.1 (nothing downloads from the
internet in tests): checksums verified, interrupted or wrong downloads refused, nothing
half-written, idempotent; the Brown split reproduced byte for byte."""

import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
import zipfile

import pytest

from conftest import shared_path


class Files(http.server.BaseHTTPRequestHandler):
    files = {}  # name -> bytes
    short = set()  # names served cut short: the header promises more than the body holds

    def do_GET(self):
        name = self.path.lstrip("/")
        if name not in self.files:
            self.send_error(404)
            return
        body = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if name in self.short else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Files.files, Files.short = {}, set()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield Files.files, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _ptb(files):
    for part in ("train", "valid", "test"):
        files[f"ptb.{part}.txt"] = shared_path("ptb", f"ptb.{part}.txt").read_bytes()


def test_get_ptb_verifies_and_is_idempotent(server, tmp_path, run_cli):
    files, url = server
    _ptb(files)
    code, out, err = run_cli("data", "get", "ptb", "--dir", tmp_path, "--mirror", url, "--json", "-q")
    assert code == 0, err
    manifest = json.loads(out)
    assert not manifest["already_present"] and set(manifest["files"]) == {"ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"}
    for name, body in files.items():
        assert (tmp_path / "ptb" / name).read_bytes() == body
        assert manifest["files"][name]["sha256"] == hashlib.sha256(body).hexdigest()
    files.clear()  # a second get must not need the server
    code, out, err = run_cli("data", "get", "ptb", "--dir", tmp_path, "--mirror", url)
    assert code == 0 and "already in" in out, err
    rows = {r["name"]: r for r in json.loads(run_cli("data", "list", "--dir", tmp_path, "--json")[1])}
    assert rows["ptb"]["present"] and not rows["brown"]["present"]
    assert all(r["checksum_recorded"] for r in rows.values())  # every dataset fflm knows can be verified


def test_get_brown_reproduces_bengios_split_byte_for_byte(server, tmp_path, run_cli):
    files, url = server
    files["brown.zip"] = shared_path("nltk_data", "corpora", "brown.zip").read_bytes()
    code, out, err = run_cli("data", "get", "brown", "--dir", tmp_path, "--mirror", url, "-q")
    assert code == 0, err
    for rel in ("train.txt", "valid.txt", "test.txt", "raw/train.txt", "raw/valid.txt", "raw/test.txt"):
        assert (tmp_path / "brown" / rel).read_bytes() == shared_path("brown", rel).read_bytes(), rel


def _no_leftovers(folder):
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith((".part", ".tmp"))]


def test_a_wrong_checksum_keeps_nothing(server, tmp_path, run_cli):
    files, url = server
    _ptb(files)
    files["ptb.valid.txt"] = files["ptb.valid.txt"].replace(b" the ", b" teh ", 1)
    code, _, err = run_cli("data", "get", "ptb", "--dir", tmp_path, "--mirror", url, "-q")
    assert code == 1 and "ptb.valid.txt: sha256" in err and "is not the recorded" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ptb" / "ptb.valid.txt").exists() and not (tmp_path / "ptb" / "fflm-dataset.json").exists()
    assert not (tmp_path / "ptb" / ".download" / "ptb.valid.txt").exists() and not _no_leftovers(tmp_path)
    assert not json.loads(run_cli("data", "list", "--dir", tmp_path, "--json")[1])[0]["present"]


def test_an_interrupted_download_keeps_nothing_and_a_retry_completes(server, tmp_path, run_cli):
    files, url = server
    _ptb(files)
    files_short = "ptb.train.txt"
    Files.short.add(files_short)
    code, _, err = run_cli("data", "get", "ptb", "--dir", tmp_path, "--mirror", url, "-q")
    assert code == 1 and "cut short" in err and not _no_leftovers(tmp_path)
    assert not (tmp_path / "ptb" / ".download" / files_short).exists()
    Files.short.clear()
    code, _, err = run_cli("data", "get", "ptb", "--dir", tmp_path, "--mirror", url, "-q")
    assert code == 0, err


def _ptb_tgz(change=None):
    """simple-examples.tgz as Mikolov lays it out, holding the shared PTB files (one changed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        members = {"./simple-examples/README": b"Mikolov's examples\n"}
        for part in ("train", "valid", "test"):
            members[f"./simple-examples/data/ptb.{part}.txt"] = shared_path("ptb", f"ptb.{part}.txt").read_bytes()
        if change:
            members[f"./simple-examples/data/{change}"] = members[f"./simple-examples/data/{change}"].replace(b" the ", b" teh ", 1)
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def test_get_ptb_from_mikolovs_archive_checks_the_files_inside(server, tmp_path, run_cli):
    files, url = server
    files["simple-examples.tgz"] = _ptb_tgz()
    code, out, err = run_cli("data", "get", "ptb", "--dir", tmp_path, "--mirror", url, "--json", "-q")
    assert code == 0 and err == "", err  # the first source worked: no word of the others
    manifest = json.loads(out)
    assert manifest["sources"] == [f"{url}/simple-examples.tgz"]
    for part in ("train", "valid", "test"):
        assert (tmp_path / "ptb" / f"ptb.{part}.txt").read_bytes() == shared_path("ptb", f"ptb.{part}.txt").read_bytes()


def test_a_wrong_archive_falls_back_to_the_copies_and_says_so(server, tmp_path, run_cli):
    files, url = server
    _ptb(files)
    files["simple-examples.tgz"] = _ptb_tgz(change="ptb.valid.txt")
    code, out, err = run_cli("data", "get", "ptb", "--dir", tmp_path, "--mirror", url, "--json", "-q")
    assert code == 0, err
    assert "a source failed, the next one was used" in err and "prepared ptb.valid.txt has sha256" in err
    assert json.loads(out)["sources"] == [f"{url}/ptb.{p}.txt" for p in ("train", "valid", "test")]
    assert (tmp_path / "ptb" / "ptb.valid.txt").read_bytes() == files["ptb.valid.txt"]
    assert not (tmp_path / "ptb" / ".download" / "simple-examples.tgz").exists()  # unverified: not kept
    # both sources bad: one line naming each failure, nothing kept
    files["ptb.valid.txt"] = files["ptb.valid.txt"].replace(b" the ", b" teh ", 1)
    code, _, err = run_cli("data", "get", "ptb", "--dir", tmp_path / "again", "--mirror", url, "-q")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "no source worked" in err and "prepared ptb.valid.txt" in err and "ptb.valid.txt: sha256" in err
    assert not (tmp_path / "again" / "ptb" / "ptb.valid.txt").exists() and not _no_leftovers(tmp_path)


def _wikitext_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for part in ("train", "valid", "test"):
            z.writestr(f"wikitext-2/wiki.{part}.tokens", f" = Title = \n\n the {part} text <unk> . \n")
    return buf.getvalue()


def test_wikitext_must_have_the_published_checksum(server, tmp_path, run_cli):
    files, url = server
    files["wikitext-2-v1.zip"] = _wikitext_zip()  # a stand-in: not the real archive, so refused
    code, _, err = run_cli("data", "get", "wikitext-2", "--dir", tmp_path, "--mirror", url, "-q")
    assert code == 1 and "is not the recorded 92675f1d" in err and len(err.strip().splitlines()) == 1
    # the user's --sha256 cannot override a recorded checksum
    code, _, err = run_cli("data", "get", "wikitext-2", "--dir", tmp_path, "--mirror", url, "-q",
                           "--sha256", hashlib.sha256(files["wikitext-2-v1.zip"]).hexdigest())
    assert code == 1 and "is not the recorded 92675f1d" in err and "--sha256 is not used" in err
    assert not (tmp_path / "wikitext-2" / "train.txt").exists() and not _no_leftovers(tmp_path)


def _registry(tmp_path, text):
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


def test_a_registry_of_ones_own_and_a_file_without_a_checksum(server, tmp_path, run_cli):
    files, url = server
    files["wt.zip"] = body = _wikitext_zip()
    reg = _registry(tmp_path, '[wt]\ndescription = "a WikiText-shaped corpus"\nprepare = "wikitext"\n'
                              '[[wt.files]]\nurl = "https://example.org/wt.zip"\n')
    rows = json.loads(run_cli("data", "list", "--dir", tmp_path, "--registry", reg, "--json")[1])
    assert [(r["name"], r["checksum_recorded"], r["present"]) for r in rows] == [("wt", False, False)]
    get = ("data", "get", "wt", "--dir", tmp_path, "--mirror", url, "-q", "--registry", reg)
    code, _, err = run_cli(*get)
    assert code == 1 and "pass --sha256" in err and not (tmp_path / "wt" / "train.txt").exists()
    code, _, err = run_cli(*get, "--sha256", "0" * 64)
    assert code == 1 and "is not the recorded" in err
    code, _, err = run_cli(*get, "--sha256", hashlib.sha256(body).hexdigest())
    assert code == 0, err
    assert (tmp_path / "wt" / "valid.txt").read_text() == " = Title = \n\n the valid text <unk> . \n"
    assert json.loads(run_cli("data", "list", "--dir", tmp_path, "--registry", reg, "--json")[1])[0]["present"]


@pytest.mark.parametrize("text, says", [
    ("[wt\n", "not a TOML dataset registry"),
    ('wt = "a string"\n', "'wt': is not a table"),
    ("[wt]\ndescription = 'no files'\n", "names no files to fetch"),
    ("[wt]\n[[wt.files]]\nsha256 = ''\n", "every file needs a url"),
    ("[wt]\n[[wt.files]]\nurl = 'https://example.org/'\n", "every file needs a url ending in a file name"),
    ("[wt]\n[[wt.files]]\nurl = 'https://example.org/a.zip'\nsha256 = 'abc'\n", "is not a sha256"),
    ("[wt]\nprepare = 'unzip-all'\n[[wt.files]]\nurl = 'https://example.org/a.zip'\n", "unknown prepare step 'unzip-all'"),
    ("[wt]\noutputs = { 'a.txt' = 1 }\n[[wt.files]]\nurl = 'https://example.org/a.zip'\n", "outputs must map"),
])
def test_a_wrong_registry_is_one_line(tmp_path, run_cli, text, says):
    reg = _registry(tmp_path, text)
    for args in (("data", "list", "--registry", reg), ("data", "get", "wt", "--dir", tmp_path, "--registry", reg)):
        code, out, err = run_cli(*args)
        assert code == 1 and says in err and len(err.strip().splitlines()) == 1 and out == "", err


def test_unknown_datasets_and_unreachable_servers_are_one_line(tmp_path, run_cli):
    code, _, err = run_cli("data", "get", "imagenet", "--dir", tmp_path)
    assert code == 1 and "unknown dataset 'imagenet'" in err and "ptb" in err
    code, _, err = run_cli("data", "get", "ptb", "--dir", tmp_path, "--mirror", "http://127.0.0.1:9", "-q")
    assert code == 1 and "download failed" in err and len(err.strip().splitlines()) == 1


def test_force_fetches_again_and_a_failed_refetch_is_not_called_complete(server, tmp_path, run_cli):
    files, url = server
    _ptb(files)
    get = ("data", "get", "ptb", "--dir", tmp_path, "--mirror", url, "-q")
    assert run_cli(*get)[0] == 0
    present = lambda: json.loads(run_cli("data", "list", "--dir", tmp_path, "--json")[1])[0]["present"]  # noqa: E731
    assert present()
    files["ptb.test.txt"] = files["ptb.test.txt"].replace(b" the ", b" teh ", 1)  # the server now serves a bad file
    code, _, err = run_cli(*get, "--force")
    assert code == 1 and "ptb.test.txt: sha256" in err
    assert not present() and not _no_leftovers(tmp_path)  # no manifest vouches for a half-refreshed folder
    _ptb(files)
    code, out, err = run_cli(*get, "--force", "--json")
    assert code == 0 and not json.loads(out)["already_present"] and present(), err


def test_damaged_archives_are_one_line_and_fall_back(server, tmp_path, run_cli):
    files, url = server
    _ptb(files)
    for body, says in ((b"not a tar archive at all", "not a readable tar archive"),
                       (_ptb_tgz()[: 4000], "not a readable tar archive"),  # cut inside the gzip stream
                       (_wikitext_zip(), "not a readable tar archive")):  # a zip where a tgz belongs
        files["simple-examples.tgz"] = body
        folder = tmp_path / str(len(body))
        code, _, err = run_cli("data", "get", "ptb", "--dir", folder, "--mirror", url, "-q")
        assert code == 0 and says in err and "the next one was used" in err, err
        assert (folder / "ptb" / "ptb.test.txt").read_bytes() == files["ptb.test.txt"]
    # a tar without the PTB files in it
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("simple-examples/README")
        info.size = 3
        t.addfile(info, io.BytesIO(b"hi\n"))
    files["simple-examples.tgz"] = buf.getvalue()
    code, _, err = run_cli("data", "get", "ptb", "--dir", tmp_path / "empty", "--mirror", url, "-q")
    assert code == 0 and "no data/ptb.train.txt inside" in err
    # a zip that is not one, and two files without checksums for one --sha256
    files["wt.zip"] = b"PK\x03\x04 damaged"
    reg = _registry(tmp_path, '[wt]\nprepare = "wikitext"\n[[wt.files]]\nurl = "https://example.org/wt.zip"\n')
    code, _, err = run_cli("data", "get", "wt", "--dir", tmp_path, "--mirror", url, "-q", "--registry", reg,
                           "--sha256", hashlib.sha256(files["wt.zip"]).hexdigest())
    assert code == 1 and "not a readable zip archive" in err and len(err.strip().splitlines()) == 1
    reg = _registry(tmp_path, '[two]\n[[two.files]]\nurl = "https://example.org/a.txt"\n'
                              '[[two.files]]\nurl = "https://example.org/b.txt"\n')
    code, _, err = run_cli("data", "get", "two", "--dir", tmp_path, "--mirror", url, "-q", "--registry", reg,
                           "--sha256", "0" * 64)
    assert code == 1 and "--sha256 names one file's checksum, but two has 2 files without one" in err


def test_an_nltk_corpus_of_files_is_split_by_file(server, tmp_path, run_cli):
    """The movie-reviews entry's prepare step on a small archive of the same shape: every 10th file
    (in sorted order) to test, lines normalised, blank ones dropped; the real archive's outputs
    are checked by their recorded sha256s."""
    files, url = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mr/README", "not text")
        for i in range(20):
            z.writestr(f"mr/{'neg' if i < 10 else 'pos'}/cv{i:03d}.txt", f"file {i}  says\n\n  a  b .\n")
    files["mr.zip"] = body = buf.getvalue()
    reg = _registry(tmp_path, '[mr]\nprepare = "nltk-files"\n[[mr.files]]\nurl = "https://example.org/mr.zip"\n'
                              f'sha256 = "{hashlib.sha256(body).hexdigest()}"\n')
    code, _, err = run_cli("data", "get", "mr", "--dir", tmp_path, "--mirror", url, "-q", "--registry", reg)
    assert code == 0, err
    test = (tmp_path / "mr" / "test.txt").read_text().splitlines()
    train = (tmp_path / "mr" / "train.txt").read_text().splitlines()
    assert test == ["file 9 says", "a b .", "file 19 says", "a b ."]
    assert len(train) == 36 and train[:2] == ["file 0 says", "a b ."] and "file 9 says" not in train
    entries = __import__("fflm.datasets", fromlist=["registry"]).registry()
    for name in ("movie-reviews", "state-union"):
        assert entries[name]["prepare"] == "nltk-files" and set(entries[name]["outputs"]) == {"train.txt", "test.txt"}
    # an entry's encoding: Latin-1 files (state_union's) read as such, where UTF-8 fails in one line
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(10):
            z.writestr(f"su/{1945 + i}.txt", f"address {i}: na\xefve caf\xe9 \xbd\n".encode("latin-1"))
    files["su.zip"] = body = buf.getvalue()
    for encoding in ("", 'encoding = "latin-1"\n'):
        reg = _registry(tmp_path, f'[su]\nprepare = "nltk-files"\n{encoding}[[su.files]]\n'
                                  f'url = "https://example.org/su.zip"\nsha256 = "{hashlib.sha256(body).hexdigest()}"\n')
        code, _, err = run_cli("data", "get", "su", "--dir", tmp_path / f"su{len(encoding)}", "--mirror", url, "-q",
                               "--registry", reg)
        if not encoding:
            assert code == 1 and "not a readable zip archive" in err and len(err.strip().splitlines()) == 1
        else:
            assert code == 0, err
            lines = (tmp_path / f"su{len(encoding)}" / "su" / "test.txt").read_text(encoding="utf-8").splitlines()
            assert lines == ["address 9: na\u00efve caf\u00e9 \u00bd"]
