"""The command line: results, JSON, and bad input (one line, non-zero exit, nothing written)."""

import json
import subprocess
import sys

import numpy as np
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


def test_eval_takes_an_ngram_model_file_as_its_baseline(tmp_path, run_cli, small_corpus):
    model = tmp_path / "m.npz"
    assert _train(run_cli, small_corpus, model)[0] == 0
    arpa, binary = tmp_path / "kn3.arpa", tmp_path / "kn3.bin"
    assert run_cli("ngram", "train", small_corpus / "train.txt", "-o", arpa, "--order", "3", "-q")[0] == 0
    assert run_cli("ngram", "build-binary", arpa, "-o", binary, "-q")[0] == 0
    reports = {}
    for baseline in ("kn", arpa, binary):
        code, out, err = run_cli("eval", model, SYNTH / "test.txt", "--baseline", baseline, "--tune-on",
                                 small_corpus / "valid.txt", "--json")
        assert code == 0 and "vocabulary" not in err, err  # the same words: no warning
        reports[str(baseline)] = {m["name"]: m for m in json.loads(out)["models"]}
    built, from_arpa, from_binary = reports.values()
    assert from_arpa == from_binary  # the binary file is the ARPA file's model
    assert from_arpa["fflm"] == built["fflm"]
    # the ARPA file keeps 7 digits of each log10 p: the same model, to that precision
    assert from_arpa["kn3"]["ppl"] == pytest.approx(built["kn3"]["ppl"], rel=1e-5)
    assert from_arpa["interpolated"]["ppl"] == pytest.approx(built["interpolated"]["ppl"], rel=1e-5)
    # a baseline over other words is scored on the same tokens, with a warning
    other = tmp_path / "kn3-mc2.arpa"
    assert run_cli("ngram", "train", small_corpus / "train.txt", "-o", other, "--order", "3", "--min-count", "2",
                   "-q")[0] == 0
    code, out, err = run_cli("eval", model, SYNTH / "test.txt", "--baseline", other, "--json")
    assert code == 0 and "vocabulary" in err and "not strictly comparable" in err
    assert json.loads(out)["tokens"] == json.loads(run_cli("eval", model, SYNTH / "test.txt", "--json")[1])["tokens"]
    code, _, err = run_cli("eval", model, SYNTH / "test.txt", "--baseline", "kn4")
    assert code == 1 and "kn, add-k, none or an n-gram model file" in err
    code, _, err = run_cli("eval", model, SYNTH / "test.txt", "--baseline", binary, "--baseline-order", "2")
    assert code == 1 and "taken as it is" in err


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


def test_a_preset_sets_its_flags_and_flags_given_win(tmp_path, run_cli, small_corpus):
    from fflm.presets import PRESETS, preset_flags

    model = tmp_path / "m.npz"
    code, _, err = run_cli("train", small_corpus / "train.txt", "-o", model, "--preset", "brown", "--embed-dim", "8",
                           "--hidden", "16,8", "--epochs", "1", "--threads", "1", "-q")
    assert code == 0, err
    meta = json.loads(run_cli("info", model, "--json")[1])
    p = PRESETS["brown"]
    assert meta["training"]["preset"] == "brown"
    assert meta["config"]["order"] == p["order"] and meta["config"]["tied"] and meta["config"]["cross_sentence"]
    assert meta["config"]["embed_dim"] == 8 and meta["config"]["hidden"] == [16, 8]  # given: they win
    assert meta["training"]["config"]["dropout"] == p["dropout"]
    assert meta["training"]["config"]["embed_dropout"] == p["embed_dropout"]
    # issue 16's additions: the FOFE factors, the rate and its schedule; --epochs given wins
    assert meta["config"]["fofe"] == [float(a) for a in p["fofe"].split(",")]
    assert meta["training"]["config"]["lr"] == p["lr"] and meta["training"]["config"]["schedule"] == p["schedule"]
    assert meta["training"]["config"]["epochs"] == 1 != p["epochs"]
    code, out, _ = run_cli("train", "--help")
    assert f"--preset brown = {preset_flags('brown')}" in out and f"--preset ptb = {preset_flags('ptb')}" in out


def test_score_prints_kenlm_query_layout_for_arpa_and_fflm_models(tmp_path, run_cli, small_corpus):
    import re

    import kenlm

    arpa, text = tmp_path / "k3.arpa", tmp_path / "t.txt"
    lines = (SYNTH / "test.txt").read_text().splitlines()[:40] + ["zzqq " + SYNTH.joinpath("test.txt").read_text().split()[0]]
    text.write_text("\n".join(lines) + "\n")
    assert run_cli("ngram", "train", small_corpus / "train.txt", "-o", arpa, "--order", "3", "-q")[0] == 0
    ref = kenlm.Model(str(arpa))
    code, out, err = run_cli("score", arpa, text, "--per-token")
    assert code == 0, err
    rows = out.splitlines()
    token = re.compile(r"(\S+?)=(\d+) (\d+) (\S+)\t")  # the pattern scripts written for KenLM's query use
    for line, row in zip(lines, rows):
        words = token.findall(row)
        assert [w for w, *_ in words] == line.split() + ["</s>"]
        full = list(ref.full_scores(line))
        assert [int(n) for _, _, n, _ in words] == [length for _, length, _ in full]
        assert [float(p) for *_, p in words] == pytest.approx([p for p, _, _ in full], abs=2e-5)
        total, oov = re.search(r"Total: (\S+) OOV: (\d+)$", row).groups()
        assert float(total) == pytest.approx(ref.score(line), abs=1e-4)
        assert int(oov) == sum(1 for *_, is_oov in full if is_oov)
    summary = dict(r.split("\t") for r in rows[len(lines):])
    assert list(summary) == ["Perplexity including OOVs:", "Perplexity excluding OOVs:", "OOVs:", "Tokens:"]
    rep = json.loads(run_cli("ngram", "eval", arpa, text, "--json")[1])
    assert float(summary["Perplexity including OOVs:"]) == pytest.approx(rep["models"][0]["ppl"], rel=1e-5)
    assert float(summary["Perplexity excluding OOVs:"]) == pytest.approx(rep["models"][0]["ppl_excluding_oov"], rel=1e-5)
    assert int(summary["OOVs:"]) == rep["oov"] == 1 and int(summary["Tokens:"]) == rep["tokens"]

    model = tmp_path / "m.npz"
    assert _train(run_cli, small_corpus, model)[0] == 0
    code, out, err = run_cli("score", model, text)
    assert code == 0, err
    rows = out.splitlines()
    assert all(re.fullmatch(r"Total: \S+ OOV: \d+", r) for r in rows[: len(lines)])
    rep = json.loads(run_cli("eval", model, text, "--baseline", "none", "--json")[1])
    summary = dict(r.split("\t") for r in rows[len(lines):])
    assert float(summary["Perplexity including OOVs:"]) == pytest.approx(rep["models"][0]["ppl"], rel=1e-5)
    assert sum(float(r.split()[1]) for r in rows[: len(lines)]) == pytest.approx(rep["models"][0]["log10_prob"], abs=1e-2)
    code, out, _ = run_cli("score", model, text, "--summary-only")
    assert out.splitlines() == rows[len(lines):]


def test_eval_mixes_models_over_the_same_vocabulary(tmp_path, run_cli, small_corpus):
    a, b, c = tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz"
    assert _train(run_cli, small_corpus, a, "--seed", "1")[0] == 0
    assert _train(run_cli, small_corpus, b, "--seed", "2", "--order", "4")[0] == 0
    valid = small_corpus / "valid.txt"
    code, out, err = run_cli("eval", a, valid, "--mix", b, "--tune-on", valid, "--json", "--per-token", tmp_path / "t.tsv")
    assert code == 0, err
    rows = {m["name"]: m for m in json.loads(out)["models"]}
    assert list(rows) == ["fflm", "fflm2", "kn3", "ensemble", "interpolated", "mixture"]
    assert rows["fflm2"]["model"] == str(b) and rows["fflm2"]["order"] == 4
    weights = rows["mixture"]["weights"]
    assert list(weights) == ["fflm", "fflm2", "kn3"] and sum(weights.values()) == pytest.approx(1.0)
    # tuned on the text it is scored on: the mixture is at least as good as every other row
    assert all(rows["mixture"]["ppl"] <= r["ppl"] * (1 + 1e-9) for r in rows.values())
    # the ensemble is the plain mean of the two models' probabilities, token by token
    table = [line.split("\t") for line in (tmp_path / "t.tsv").read_text().splitlines()]
    col = {name: i for i, name in enumerate(table[0])}
    p = np.array([[10 ** float(r[col["fflm_log10"]]), 10 ** float(r[col["fflm2_log10"]])] for r in table[1:]])
    assert [float(r[col["ensemble_log10"]]) for r in table[1:]] == pytest.approx(np.log10(p.mean(axis=1)), abs=2e-6)
    assert rows["ensemble"]["ppl"] == pytest.approx(10 ** -np.log10(p.mean(axis=1)).mean(), rel=1e-4)
    # the text report names the files and the weights
    code, out, _ = run_cli("eval", a, valid, "--mix", b, "--baseline", "none", "--tune-on", valid)
    assert code == 0 and f"fflm2 = {b}" in out and "mixture = " in out and "by EM" in out and "kn3" not in out
    # a model over another vocabulary is refused in one line
    other = tmp_path / "other"
    other.mkdir()
    (other / "train.txt").write_text("\n".join(small_corpus.joinpath("train.txt").read_text().splitlines()[:300]) + "\n")
    (other / "valid.txt").write_text(valid.read_text())
    assert _train(run_cli, other, c)[0] == 0
    code, out, err = run_cli("eval", a, valid, "--mix", c)
    assert code == 1 and "vocabulary differs" in err and len(err.strip().splitlines()) == 1 and out == ""
    code, _, err = run_cli("eval", a, valid, "--baseline", "none", "--tune-on", valid)
    assert code == 1 and "--tune-on needs something to interpolate with" in err
