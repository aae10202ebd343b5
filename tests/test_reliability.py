"""Bad input over every command, interruption and resume, kill -9, write errors, files others
send you. Each failure mode here is a row of RELIABILITY.md."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from conftest import SYNTH


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder of bad inputs, and good files (a tiny model, an ARPA model) to damage."""
    from fflm.cli import main

    d = tmp_path_factory.mktemp("bad")
    lines = (SYNTH / "train.txt").read_text().splitlines()
    (d / "train.txt").write_text("\n".join(lines) + "\n")
    (d / "empty.txt").write_text("")
    (d / "blank.txt").write_text("  \n\n\t\n")
    (d / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (d / "latin1.txt").write_bytes("caf\xe9 ok\n".encode("latin-1"))
    (d / "nul.txt").write_bytes(b"the cat\x00 sat\n")
    (d / "short.txt").write_text("a\nb\n")
    (d / "reserved.txt").write_text("a <s> b\n")
    (d / "unknown.txt").write_text("zzz qqq\nxxyy\n")
    (d / "not.arpa").write_text("hello world\n")
    for args in (["train", d / "train.txt", "-o", d / "model.npz", "--order", "3", "--embed-dim", "8", "--hidden",
                  "16", "--epochs", "1", "--threads", "1", "-q"],
                 ["ngram", "train", d / "train.txt", "-o", d / "kn2.arpa", "--order", "2", "-q"]):
        main([str(a) for a in args])
    raw = (d / "model.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    with np.load(d / "model.npz") as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"]))
    newer = dict(arrays, meta=np.array(json.dumps(dict(meta, version=99))))
    np.savez(d / "newer.npz", **newer)
    nan = dict(arrays, E=np.full_like(arrays["E"], np.nan))
    np.savez(d / "nan.npz", **nan)
    wrong = dict(arrays, E=arrays["E"][:-1])
    np.savez(d / "wrongshape.npz", **wrong)
    np.savez(d / "wrongtype.npz", **dict(arrays, E=arrays["E"].astype(np.float16)))
    # an object array whose unpickling would run code (create a file): must never be unpickled
    evil = dict(arrays, E=np.array([Evil(str(d / "PWNED"))], dtype=object))
    np.savez(d / "pickle.npz", **evil)
    arpa = (d / "kn2.arpa").read_text().splitlines()
    counts = [i for i, line in enumerate(arpa) if line.startswith("ngram 2=")][0]
    (d / "counts.arpa").write_text("\n".join(arpa[:counts] + ["ngram 2=3"] + arpa[counts + 1:]) + "\n")
    first = arpa.index("\\1-grams:") + 2
    (d / "malformed.arpa").write_text("\n".join(arpa[:first] + ["-0.5"] + arpa[first + 1:]) + "\n")
    (d / "truncated.arpa").write_text("\n".join(arpa[: len(arpa) // 2]) + "\n")
    return d


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def cases(d):
    """(command line, words the one-line error must contain). `out` must never appear."""
    out, ok = d / "out.npz", d / "train.txt"
    model, arpa = d / "model.npz", d / "kn2.arpa"
    ro = "/sys/fflm-test.npz" if os.geteuid() == 0 else d / "ro" / "m.npz"  # sysfs refuses even root
    tiny = ["--order", "3", "--embed-dim", "8", "--hidden", "16", "--epochs", "1", "--threads", "1"]
    return [
        # train: the corpus
        (["train", d / "missing.txt", "-o", out], "no such file"),
        (["train", d, "-o", out], "is a directory"),
        (["train", d / "empty.txt", "-o", out], "no text"),
        (["train", d / "blank.txt", "-o", out], "no text"),
        (["train", d / "binary.bin", "-o", out], "binary"),
        (["train", d / "latin1.txt", "-o", out], "line 1 is not valid UTF-8"),
        (["train", d / "nul.txt", "-o", out], "NUL byte on line 1"),
        (["train", d / "reserved.txt", "-o", out], "reserved"),
        (["train", d / "short.txt", "-o", out, "--order", "5"], "fewer than the 4 context words"),
        (["train", ok, "-o", out, "--valid", d / "missing.txt"], "no such file"),
        (["train", ok, "-o", out, "--valid", d / "binary.bin", *tiny], "binary"),
        # train: impossible settings
        (["train", ok, "-o", out, "--order", "0"], "--order must be at least 2"),
        (["train", ok, "-o", out, "--order", "1000"], "--order 1000"),
        (["train", ok, "-o", out, "--hidden", "-3"], "--hidden"),
        (["train", ok, "-o", out, "--hidden", "512,x"], "--hidden"),
        (["train", ok, "-o", out, "--embed-dim", "0"], "--embed-dim"),
        (["train", ok, "-o", out, "--hidden", "100000000"], "GiB"),  # refused before allocating
        (["train", ok, "-o", out, "--embed-dim", "1000000000000"], "GiB"),
        (["train", ok, "-o", out, "--batch-size", "0"], "--batch-size"),
        (["train", ok, "-o", out, "--lr", "-1"], "--lr"),
        (["train", ok, "-o", out, "--lr", "nan"], "--lr"),
        (["train", ok, "-o", out, "--epochs", "0"], "--epochs"),
        (["train", ok, "-o", out, "--dropout", "1"], "--dropout"),
        (["train", ok, "-o", out, "--loss", "hinge"], "--loss"),
        (["train", ok, "-o", out, "--loss", "nce", "--noise-samples", "0"], "--noise-samples"),
        (["train", ok, "-o", out, "--optimizer", "adam", "--loss", "nce"], "--optimizer"),
        (["train", ok, "-o", out, "--tie-embeddings", "--embed-dim", "8", "--hidden", "16"], "tied embeddings"),
        (["train", ok, "-o", out, "--threads", "-1"], "--threads"),
        (["train", ok, "-o", out, "--precision", "fp16"], "--precision"),
        (["train", ok, "-o", out, "--softmax", "adaptive", "--cutoffs", "40,x"], "--cutoffs takes ids"),
        (["train", ok, "-o", out, "--softmax", "adaptive", "--cutoffs", "2,40"], "--cutoffs must rise strictly"),
        (["train", ok, "-o", out, "--softmax", "adaptive", "--cutoffs", "40,500"], "reach beyond the vocabulary"),
        (["train", ok, "-o", out, "--cutoffs", "40"], "--cutoffs needs --softmax adaptive"),
        (["train", ok, "-o", out, "--fofe", "0.7,x"], "--fofe takes forgetting factors"),
        (["train", ok, "-o", out, "--fofe", "1.2"], "strictly between 0 and 1"),
        (["train", ok, "-o", out, "--hidden", "64,32", "--residual"], "two consecutive hidden layers"),
        (["train", ok, "-o", out, "--layer-norm", "--direct"], "do not combine with --direct"),
        (["train", ok, "-o", out, "--softmax", "adaptive", "--loss", "nce", *tiny], "--softmax full"),
        (["train", ok, "--order", "3"], "--output"),
        (["train", "-o", out], "CORPUS"),
        # train: where it writes
        (["train", ok, "-o", d / "no" / "such" / "m.npz"], "does not exist"),
        (["train", ok, "-o", ro], "not writable"),
        (["train", ok, "-o", d], "is a directory"),
        # train --resume
        (["train", "--resume", d / "missing.ckpt.npz"], "no such file"),
        (["train", "--resume", model], "not an fflm checkpoint"),
        (["train", "--resume", d / "truncated.npz"], "not a readable fflm checkpoint"),
        # eval: the model file
        (["eval", d / "missing.npz", ok], "no such file"),
        (["eval", d / "truncated.npz", ok], "not a readable fflm model"),
        (["eval", d / "newer.npz", ok], "version 99 is newer"),
        (["eval", d / "pickle.npz", ok], "object arrays"),
        (["eval", d / "nan.npz", ok], "E contains NaN"),
        (["eval", d / "wrongshape.npz", ok], "E has shape"),
        (["eval", d / "wrongtype.npz", ok], "float16, expected (153, 8) float32"),
        (["eval", d / "binary.bin", ok], "not an .npz archive"),
        (["eval", arpa, ok], "not an .npz archive"),
        # eval: the text
        (["eval", model, d / "unknown.txt"], "every one of its 3 words is out of the model's vocabulary"),
        (["eval", model, d / "empty.txt"], "no text"),
        (["eval", model, d / "latin1.txt"], "not valid UTF-8"),
        (["eval", model, ok, "--per-token", d / "no" / "t.tsv"], "does not exist"),
        (["eval", model, ok, "--baseline-order", "0"], "--baseline-order"),
        (["eval", model, ok, "--mix", d / "truncated.npz"], "not a readable fflm model"),
        (["eval", model, ok, "--mix", d / "missing.npz"], "no such file"),
        # generate, info
        (["generate", d / "truncated.npz"], "not a readable fflm model"),
        (["generate", model, "--temperature", "0"], "--temperature"),
        (["generate", model, "--top-k", "-2"], "--top-k"),
        (["generate", model, "--num-words", "0"], "--num-words"),
        (["info", d / "pickle.npz"], "object arrays"),
        # score (KenLM's query layout)
        (["score", d / "missing.npz", ok], "no such file"),
        (["score", d / "truncated.npz", ok], "not a readable fflm model"),
        (["score", d / "not.arpa", ok], "not an ARPA file"),
        (["score", arpa, d / "unknown.txt"], "out of the model's vocabulary"),
        # the n-gram commands
        (["ngram", "train", d / "binary.bin", "-o", out], "binary"),
        (["ngram", "train", ok, "-o", out, "--order", "0"], "--order"),
        (["ngram", "train", d / "short.txt", "-o", out, "--order", "6"], "larger than any sentence"),
        (["ngram", "train", ok, "-o", out, "--smoothing", "witten-bell"], "--smoothing"),
        (["ngram", "train", ok, "-o", out, "--smoothing", "add-k", "--k", "-1"], "--k"),
        (["ngram", "eval", d / "not.arpa", ok], "not an ARPA file"),
        (["ngram", "eval", d / "counts.arpa", ok], "the header says ngram 2=3"),
        (["ngram", "eval", d / "malformed.arpa", ok], "a 1-gram line needs 2 or 3 fields"),
        (["ngram", "eval", d / "truncated.arpa", ok], "truncated"),
        (["ngram", "eval", model, ok], "binary"),  # an fflm model is not an ARPA file
        (["ngram", "eval", arpa, d / "unknown.txt"], "out of the model's vocabulary"),
        (["ngram", "frobnicate"], "No such command"),
        (["data", "synth", "-o", d / "train.txt"], "is not a folder"),
        (["bench", "--config", "huge"], "--config"),
        (["bench", "recipe", "wikipedia"], "CORPUS"),
        (["data", "synth", "-o", "/sys/fflm-test" if os.geteuid() == 0 else d / "ro" / "synth"], "cannot make"),
    ]


def test_the_table_has_at_least_25_cases_over_every_command(files):
    commands = {tuple(a[:2]) if a[0] in ("ngram", "data") else a[0] for a, _ in cases(files)}
    assert len(cases(files)) >= 25
    assert {"train", "eval", "generate", "info", "score", ("ngram", "train"), ("ngram", "eval"), ("data", "synth"),
            "bench"} <= commands


def test_bad_input_gives_one_line_a_nonzero_exit_and_no_file(files, run_cli):
    for args, message in cases(files):
        code, out, err = run_cli(*args)
        assert code not in (0, None), args
        lines = err.strip().splitlines()
        assert len(lines) == 1, (args, err)
        assert message in lines[0] and "error" in lines[0], (args, err)
        assert "Traceback" not in err
        assert not (files / "out.npz").exists(), args
        assert not [p for p in os.listdir(files) if p.endswith(".tmp")], args
    assert not (files / "PWNED").exists()  # nothing was unpickled


def test_windows_line_ends_a_bom_and_a_10_mb_line_are_read_as_text(tmp_path, run_cli):
    clean = tmp_path / "clean.txt"
    clean.write_text("the cat sat\nthe dog ran\n" * 30)
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"\xef\xbb\xbf" + clean.read_bytes().replace(b"\n", b"\r\n"))
    reports = []
    for corpus in (clean, crlf):
        assert run_cli("ngram", "train", corpus, "-o", tmp_path / "m.arpa", "--order", "2", "-q")[0] == 0
        code, out, err = run_cli("ngram", "eval", tmp_path / "m.arpa", corpus, "--json")
        assert code == 0, err
        reports.append(json.loads(out))
    assert reports[0]["tokens"] == reports[1]["tokens"] == 240 and reports[0]["models"] == reports[1]["models"]
    long = tmp_path / "long.txt"
    long.write_text(" ".join(f"word{i % 2000}" for i in range(1_300_000)) + "\n")  # one line, about 10 MB
    assert long.stat().st_size > 10_000_000
    code, out, err = run_cli("ngram", "train", long, "-o", tmp_path / "long.arpa", "--order", "2", "--json")
    assert code == 0 and json.loads(out)["ngrams"][0] == 2003, err  # 2000 words, <s>, </s>, <unk>


# --- interruption, resume, kill -9 ------------------------------------------------------------
def _fflm(*args):
    return [sys.executable, "-m", "fflm", *map(str, args)]


def _train_args(d, out, *extra):
    # about 5 s of training: long enough to be interrupted mid-epoch
    return ["train", d / "train.txt", "--valid", SYNTH / "valid.txt", "-o", out, "--order", "4", "--embed-dim",
            "16", "--hidden", "64", "--epochs", "3", "--batch-size", "4", "--lr", "0.1", "--dropout", "0.1",
            "--threads", "1", "-q", *extra]


def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "meta"}


def _interrupted_run(d, out, sig=signal.SIGTERM):
    """Start training, stop it with `sig` at a random moment after its first checkpoint; the checkpoint."""
    ckpt = out.with_name(out.name[: -len(".npz")] + ".ckpt.npz")
    p = subprocess.Popen(_fflm(*_train_args(d, out, "--checkpoint-every", "0.05")), stderr=subprocess.PIPE,
                         text=True)
    deadline = time.time() + 60
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.Random(str(out)).uniform(0.1, 1.0))
    p.send_signal(sig)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 128 + sig, err
    assert signal.Signals(sig).name in err and f"--resume {ckpt}" in err and "Traceback" not in err
    return ckpt


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_and_resume_ends_bit_identical(files, tmp_path, sig):
    whole = tmp_path / "whole.npz"
    r = subprocess.run(_fflm(*_train_args(files, whole)), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    part = tmp_path / "part.npz"
    ckpt = _interrupted_run(files, part, sig)
    r = subprocess.run(_fflm("train", "--resume", ckpt, "--threads", "1", "-q"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = _arrays(whole), _arrays(part)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert not ckpt.exists()  # finished: the checkpoint is gone


def test_resume_refuses_new_settings_and_a_changed_corpus(files, tmp_path, run_cli):
    import shutil

    shutil.copy(files / "train.txt", tmp_path / "train.txt")
    ckpt = _interrupted_run(tmp_path, tmp_path / "m.npz")
    code, _, err = run_cli("train", "--resume", ckpt, "--lr", "0.1", "--order", "3")
    assert code == 1 and "drop --order, --lr" in err
    code, _, err = run_cli("train", files / "train.txt", "--resume", ckpt)
    assert code == 1 and "was made on" in err
    with open(tmp_path / "train.txt", "a") as f:
        f.write("one more line\n")
    code, _, err = run_cli("train", "--resume", ckpt)
    assert code == 1 and "has changed since the checkpoint" in err


def test_kill_9_at_random_moments_leaves_loadable_files(files, tmp_path):
    from fflm import read_sentences
    from fflm.model import FFNNLM
    from fflm.train import Trainer

    sentences = read_sentences(files / "train.txt")
    rng = random.Random(5)
    out, ckpt = tmp_path / "m.npz", tmp_path / "m.ckpt.npz"
    args = _train_args(files, out, "--checkpoint-every", "0.02", "--epochs", "50")
    found = 0
    for _ in range(6):
        p = subprocess.Popen(_fflm(*args), stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 5.0))  # start-up takes about a second, then a checkpoint every 0.02 s
        p.kill()
        p.wait()
        if out.exists():
            FFNNLM.load(out)
            found += 1
        if ckpt.exists():
            trainer, _ = Trainer.load_checkpoint(ckpt, lambda m: (m.windows(sentences), None))
            assert trainer.steps > 0
            found += 1
    assert found >= 6


def test_a_write_error_keeps_the_old_file_and_says_so(tmp_path, monkeypatch):
    from fflm import FflmError, Vocabulary
    from fflm.model import FFNNLM, ModelConfig

    model = FFNNLM(Vocabulary(["a", "b"]), ModelConfig(order=2, embed_dim=2, hidden=(3,)))
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    model.dense[:] = 0.5

    def disk_full(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(FflmError, match="No space left on device"):
        model.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]  # the temporary file is gone
    assert zipfile.is_zipfile(path)


def test_divergence_on_the_command_line_rolls_back_then_stops_cleanly(files, tmp_path, run_cli):
    out = tmp_path / "m.npz"
    code, _, err = run_cli(*_train_args(files, out, "--lr", "1e38", "--max-rollbacks", "3"))
    lines = err.strip().splitlines()
    assert code == 1 and "Traceback" not in err
    assert sum("rolled back to the last good weights" in line for line in lines) == 3
    assert lines[-1].startswith("fflm: error: training diverged 4 times") and "smaller --lr" in lines[-1]
    assert not out.exists() and not (tmp_path / "m.ckpt.npz").exists()  # no epoch ended: nothing to keep
    code, _, err = run_cli(*_train_args(files, out, "--lr", "1e38", "--max-rollbacks", "200"))
    assert code == 0 and out.exists(), err  # enough halvings: it recovers and trains
