"""The command line: results, JSON, and bad input (one line, non-zero exit, nothing written)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import SYNTH


def test_ngram_train_and_eval(tmp_path, run_cli):
    model = tmp_path / "kn3.arpa"
    code, out, err = run_cli("ngram", "train", SYNTH / "train.txt", "-o", model, "--order", "3")
    assert code == 0, err
    assert "n-grams: 1=" in out and model.exists()
    code, out, err = run_cli("ngram", "eval", model, SYNTH / "test.txt", "--json", "--per-token", tmp_path / "t.tsv")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["models"][0]["name"] == "kn3" and rep["models"][0]["order"] == 3
    assert set(rep) >= {"tokens", "sentences", "oov", "models"}
    assert set(rep["models"][0]) >= {"name", "order", "ppl", "ppl_excluding_oov", "log10_prob"}
    rows = (tmp_path / "t.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["word", "log10_prob", "ngram_length", "oov"]
    assert len(rows) - 1 == rep["tokens"]
    total = sum(float(r.split("\t")[1]) for r in rows[1:])
    assert total == pytest.approx(rep["models"][0]["log10_prob"], abs=1e-3)


def test_train_json_summary_and_add_k(tmp_path, run_cli):
    code, out, err = run_cli(
        "ngram", "train", SYNTH / "train.txt", "-o", tmp_path / "a.arpa.gz", "--order", "2",
        "--smoothing", "add-k", "--k", "1", "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["name"] == "laplace2" and summary["discounts"] is None and len(summary["ngrams"]) == 2


def test_eval_uses_the_text_settings_saved_in_the_model(tmp_path, run_cli):
    corpus = tmp_path / "c.txt"
    corpus.write_text("The Cat sat\nthe cat ran\n" * 20)
    model = tmp_path / "m.arpa"
    assert run_cli("ngram", "train", corpus, "-o", model, "--order", "2", "--lowercase")[0] == 0
    text = tmp_path / "t.txt"
    text.write_text("THE CAT SAT\n")
    code, out, _ = run_cli("ngram", "eval", model, text, "--json")
    assert json.loads(out)["oov"] == 0  # lowercased like the training text


def test_tiny_corpus_warns_in_one_line_and_succeeds(tmp_path, run_cli):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("a b\nb a\n")
    code, out, err = run_cli("ngram", "train", corpus, "-o", tmp_path / "m.arpa", "--order", "3")
    assert code == 0
    assert "fflm: warning:" in err and "fallback discounts" in err


def _bad_inputs(tmp):
    ok = SYNTH / "train.txt"
    (tmp / "empty.txt").write_text("")
    (tmp / "blank.txt").write_text("  \n\n\t\n")
    (tmp / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (tmp / "latin1.txt").write_bytes("caf\xe9 ok\n".encode("latin-1"))
    (tmp / "short.txt").write_text("a\nb\n")
    (tmp / "not.arpa").write_text("hello world\n")
    (tmp / "reserved.txt").write_text("a <s> b\n")
    out = tmp / "out.arpa"
    return [
        (["ngram", "train", tmp / "missing.txt", "-o", out], "no such file"),
        (["ngram", "train", tmp, "-o", out], "is a directory"),
        (["ngram", "train", tmp / "empty.txt", "-o", out], "no text"),
        (["ngram", "train", tmp / "blank.txt", "-o", out], "no text"),
        (["ngram", "train", tmp / "binary.bin", "-o", out], "binary"),
        (["ngram", "train", tmp / "latin1.txt", "-o", out], "line 1 is not valid UTF-8"),
        (["ngram", "train", tmp / "reserved.txt", "-o", out], "reserved"),
        (["ngram", "train", ok, "-o", out, "--order", "0"], "--order"),
        (["ngram", "train", tmp / "short.txt", "-o", out, "--order", "6"], "larger than any sentence"),
        (["ngram", "train", ok, "-o", out, "--smoothing", "witten-bell"], "--smoothing"),
        (["ngram", "train", ok, "-o", out, "--smoothing", "add-k", "--k", "-1"], "--k"),
        (["ngram", "train", ok, "-o", tmp / "no" / "such" / "dir.arpa"], "does not exist"),
        (["ngram", "train", ok], "-o"),
        (["ngram", "eval", tmp / "missing.arpa", ok], "no such file"),
        (["ngram", "eval", tmp / "not.arpa", ok], "not an ARPA file"),
        (["ngram", "eval", tmp / "binary.bin", ok], "binary"),
        (["ngram", "frobnicate"], "No such command"),
    ]


def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, run_cli):
    for args, message in _bad_inputs(tmp_path):
        code, out, err = run_cli(*args)
        assert code != 0, args
        lines = err.strip().splitlines()
        assert len(lines) == 1, (args, err)
        assert message in lines[0], (args, err)
        assert "Traceback" not in err
        assert not (tmp_path / "out.arpa").exists(), args
        assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")], args


def test_read_only_output_folder(tmp_path, run_cli):
    if os.geteuid() == 0:
        target = "/sys/fflm-test.arpa"  # sysfs refuses new files even to root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "m.arpa"
    code, _, err = run_cli("ngram", "train", SYNTH / "train.txt", "-o", target)
    assert code != 0 and "not writable" in err and len(err.strip().splitlines()) == 1


def test_console_script_runs_as_a_program(tmp_path):
    """The installed entry point, in a fresh process: exit codes reach the shell."""
    r = subprocess.run([sys.executable, "-m", "fflm.cli", "ngram", "eval", tmp_path / "x", tmp_path / "y"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().startswith("fflm: error:") and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "fflm.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "fflm" in r.stdout
