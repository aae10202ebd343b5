"""`fflm bench recipe`: trains and evaluates in fresh processes and reports what they measured."""

import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = os.path.join(ROOT, "data", "synth")
TINY = ["--", "--embed-dim", "8", "--hidden", "16", "--epochs", "2", "--batch-size", "64"]


@pytest.fixture
def fake_data(tmp_path):
    """A data folder whose brown/ holds the embedded corpus, so the recipe runs in seconds."""
    brown = tmp_path / "data" / "brown"
    brown.mkdir(parents=True)
    for part in ("train", "valid", "test"):
        with open(os.path.join(SYNTH, f"{part}.txt"), "rb") as f:
            (brown / f"{part}.txt").write_bytes(f.read())
    return tmp_path / "data"


def test_recipe_reports_the_curve_and_the_test_rows(run_cli, fake_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("bench", "recipe", "brown", "--data", fake_data, "--threads", "1", "--json", *TINY)
    assert code == 0, err
    r = json.loads(out)
    assert r["command"].endswith("--epochs 2 --batch-size 64 --threads 1")  # extra options win: they come last
    assert [e["epoch"] for e in r["epochs"]] == [1, 2]
    rows = {m["name"]: m for m in r["report"]["models"]}
    assert set(rows) == {"fflm", "kn5", "interpolated"}
    assert 0 <= rows["interpolated"]["lambda"] <= 1
    assert r["train_seconds"] > 0 and r["train_peak_rss_mb"] > 0
    # the model the benchmark trained is the one it evaluated: same test perplexity in-process
    from fflm import FFNNLM, Windows, read_sentences
    from fflm.evaluate import perplexity, score_neural

    model, _ = FFNNLM.load(tmp_path / "out" / "bench" / "brown.npz")
    test = Windows.from_sentences(read_sentences(fake_data / "brown" / "test.txt"), model.vocab, 5)
    assert perplexity(score_neural(model, test).log10) == pytest.approx(rows["fflm"]["ppl"], rel=1e-6)


def test_recipe_failures_are_one_line(run_cli, fake_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("bench", "recipe", "brown", "--data", fake_data, "--", "--hidden", "-5")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "fflm train" in err
    code, _, err = run_cli("bench", "recipe", "brown", "--data", tmp_path / "nowhere")
    assert code == 1 and "not found" in err
