"""fflm data get / list against a local HTTP server on 127.0.0.1 (nothing downloads from the
internet in tests): checksums verified, interrupted or wrong downloads refused, nothing
half-written, idempotent; the Brown split reproduced byte for byte."""

import hashlib
import http.server
import io
import json
import os
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
    assert rows["ptb"]["present"] and not rows["brown"]["present"] and not rows["wikitext-2"]["checksum_recorded"]


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


def _wikitext_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for part in ("train", "valid", "test"):
            z.writestr(f"wikitext-2/wiki.{part}.tokens", f" = Title = \n\n the {part} text <unk> . \n")
    return buf.getvalue()


def test_a_dataset_without_a_recorded_checksum_needs_one_from_the_user(server, tmp_path, run_cli):
    files, url = server
    files["wikitext-2-v1.zip"] = body = _wikitext_zip()
    code, _, err = run_cli("data", "get", "wikitext-2", "--dir", tmp_path, "--mirror", url, "-q")
    assert code == 1 and "pass --sha256" in err and not (tmp_path / "wikitext-2" / "train.txt").exists()
    code, _, err = run_cli("data", "get", "wikitext-2", "--dir", tmp_path, "--mirror", url, "-q", "--sha256", "0" * 64)
    assert code == 1 and "is not the recorded" in err
    code, _, err = run_cli("data", "get", "wikitext-2", "--dir", tmp_path, "--mirror", url, "-q",
                           "--sha256", hashlib.sha256(body).hexdigest())
    assert code == 0, err
    assert (tmp_path / "wikitext-2" / "valid.txt").read_text() == " = Title = \n\n the valid text <unk> . \n"


def test_unknown_datasets_and_unreachable_servers_are_one_line(tmp_path, run_cli):
    code, _, err = run_cli("data", "get", "imagenet", "--dir", tmp_path)
    assert code == 1 and "unknown dataset 'imagenet'" in err and "ptb" in err
    code, _, err = run_cli("data", "get", "ptb", "--dir", tmp_path, "--mirror", "http://127.0.0.1:9", "-q")
    assert code == 1 and "download failed" in err and len(err.strip().splitlines()) == 1
