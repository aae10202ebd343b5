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


# --- the neural model's commands ---------------------------------------------------------------
@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    lines = (SYNTH / "train.txt").read_text().splitlines()
    (d / "train.txt").write_text("\n".join(lines[:800]) + "\n")
    (d / "valid.txt").write_text("\n".join((SYNTH / "valid.txt").read_text().splitlines()[:200]) + "\n")
    return d


def _train(run_cli, corpus, out, *extra):
    return run_cli("train", corpus / "train.txt", "--valid", corpus / "valid.txt", "-o", out, "--order", "3",
                   "--embed-dim", "8", "--hidden", "16", "--batch-size", "32", "--epochs", "2", "--threads", "1", *extra)


def test_train_eval_generate_info(tmp_path, run_cli, small_corpus):
    model = tmp_path / "m.npz"
    log = tmp_path / "log.jsonl"
    code, out, err = _train(run_cli, small_corpus, model, "--json-log", log)
    assert code == 0, err
    assert "epoch  1: train ppl" in err and model.exists()
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_ppl", "train_loss", "valid_ppl", "lr", "seconds", "tokens_per_s"}

    code, out, err = run_cli("eval", model, SYNTH / "test.txt", "--tune-on", small_corpus / "valid.txt", "--json",
                             "--per-token", tmp_path / "tok.tsv")
    assert code == 0, err
    rep = json.loads(out)
    names = [m["name"] for m in rep["models"]]
    assert names == ["fflm", "kn3", "interpolated"]
    interp = rep["models"][2]
    assert 0.0 <= interp["lambda"] <= 1.0
    assert interp["ppl"] <= min(m["ppl"] for m in rep["models"][:2]) * 1.01  # tuned on other text: near the best
    rows = (tmp_path / "tok.tsv").read_text().splitlines()
    assert rows[0] == "word\tfflm_log10\tkn3_log10\tinterpolated_log10\toov" and len(rows) == rep["tokens"] + 1

    code, out, err = run_cli("eval", model, SYNTH / "test.txt", "--baseline", "add-k", "--baseline-order", "2")
    assert code == 0 and "laplace2" in out

    code, out, _ = run_cli("generate", model, "--seed", "7", "--num-samples", "3", "--json")
    samples = json.loads(out)
    assert code == 0 and len(samples) == 3
    assert json.loads(run_cli("generate", model, "--seed", "7", "--num-samples", "3", "--json")[1]) == samples

    code, out, _ = run_cli("info", model, "--json")
    meta = json.loads(out)
    assert meta["config"]["order"] == 3 and len(meta["training"]["history"]) == 2
    assert meta["training"]["sha256"] and meta["text"]["tokenizer"] == "whitespace"


def test_train_with_a_sampled_loss_logs_its_loss_not_a_perplexity(tmp_path, run_cli, small_corpus):
    model, log = tmp_path / "m.npz", tmp_path / "log.jsonl"
    code, _, err = _train(run_cli, small_corpus, model, "--loss", "nce", "--noise-samples", "10", "--json-log", log)
    assert code == 0, err
    assert "epoch  1: train loss" in err
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows[0]["train_ppl"] is None and rows[0]["train_loss"] > 0 and rows[0]["valid_ppl"] > 1
    code, out, _ = run_cli("info", model, "--json")
    assert json.loads(out)["training"]["config"]["loss"] == "nce"


def test_cross_sentence_model_is_scored_on_its_own_contexts_and_the_same_tokens(tmp_path, run_cli, small_corpus):
    from fflm import FFNNLM, read_sentences
    from fflm.evaluate import perplexity, score_neural

    model = tmp_path / "m.npz"
    code, _, err = _train(run_cli, small_corpus, model, "--cross-sentence")
    assert code == 0, err
    code, out, _ = run_cli("eval", model, SYNTH / "test.txt", "--json")
    rep = json.loads(out)
    lm, _ = FFNNLM.load(model)
    assert lm.config.cross_sentence
    test = read_sentences(SYNTH / "test.txt")
    assert rep["tokens"] == len(lm.windows(test))  # the baseline's tokens, every word and </s>
    assert rep["models"][0]["ppl"] == pytest.approx(perplexity(score_neural(lm, lm.windows(test)).log10), rel=1e-6)


def test_eval_without_the_training_corpus_needs_a_baseline_source(tmp_path, run_cli, small_corpus):
    import shutil

    corpus = tmp_path / "c"
    shutil.copytree(small_corpus, corpus)
    model = tmp_path / "m.npz"
    assert _train(run_cli, corpus, model)[0] == 0
    (corpus / "train.txt").unlink()
    code, _, err = run_cli("eval", model, SYNTH / "test.txt")
    assert code == 1 and "--baseline-train" in err
    code, out, _ = run_cli("eval", model, SYNTH / "test.txt", "--baseline", "none", "--json")
    assert code == 0 and [m["name"] for m in json.loads(out)["models"]] == ["fflm"]


def test_neural_bad_input(tmp_path, run_cli, small_corpus):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "short.txt").write_text("a\n")
    (tmp_path / "notours.npz").write_bytes(b"PK\x03\x04 nonsense")
    (tmp_path / "text.npz").write_text("hello\n")
    out = tmp_path / "out.npz"
    train_ok = small_corpus / "train.txt"
    cases = [
        (["train", tmp_path / "missing.txt", "-o", out], "no such file"),
        (["train", tmp_path / "empty.txt", "-o", out], "no text"),
        (["train", tmp_path / "short.txt", "-o", out, "--order", "5"], "fewer than the 4 context words"),
        (["train", train_ok, "-o", out, "--order", "1"], "--order must be at least 2"),
        (["train", train_ok, "-o", out, "--hidden", "100000000"], "GiB"),
        (["train", train_ok, "-o", out, "--hidden", "-3"], "--hidden"),
        (["train", train_ok, "-o", out, "--embed-dim", "0"], "--embed-dim"),
        (["train", train_ok, "-o", out, "--batch-size", "0"], "--batch-size"),
        (["train", train_ok, "-o", out, "--lr", "-1"], "--lr"),
        (["train", train_ok, "-o", out, "--loss", "hinge"], "--loss"),
        (["train", train_ok, "-o", out, "--tie-embeddings", "--embed-dim", "8", "--hidden", "16"], "tied embeddings"),
        (["train", train_ok, "-o", out, "--optimizer", "adam", "--loss", "nce"], "--optimizer"),
        (["train", train_ok, "-o", out, "--dropout", "1"], "--dropout"),
        (["train", train_ok, "-o", out, "--loss", "nce", "--noise-samples", "0"], "--noise-samples"),
        (["train", train_ok, "-o", out, "--valid", tmp_path / "missing.txt"], "no such file"),
        (["eval", tmp_path / "notours.npz", train_ok], "not a readable fflm model"),
        (["eval", tmp_path / "text.npz", train_ok], "not a readable fflm model"),
        (["eval", tmp_path / "missing.npz", train_ok], "no such file"),
        (["generate", tmp_path / "notours.npz"], "not a readable fflm model"),
        (["info", tmp_path / "missing.npz"], "no such file"),
    ]
    for args, message in cases:
        code, _, err = run_cli(*args)
        assert code != 0, args
        assert len(err.strip().splitlines()) == 1 and message in err, (args, err)
        assert "Traceback" not in err and not out.exists(), args
