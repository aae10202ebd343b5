"""Corpora users already have: NLTK's, through NLTK's own readers and data path."""

import json

import pytest

from conftest import shared_path


@pytest.fixture(scope="module")
def nltk_brown():
    shared_path("nltk_data", "corpora", "brown.zip")
    from nltk.corpus import brown

    return brown


def test_an_nltk_corpus_reads_like_the_same_text_in_a_file(nltk_brown, tmp_path, run_cli):
    from fflm import read_sentences

    spec = "nltk:brown:ca01,ca02"
    sents = [list(s) for s in nltk_brown.sents(["ca01", "ca02"])]
    (tmp_path / "same.txt").write_text("\n".join(" ".join(s) for s in sents) + "\n")
    assert read_sentences(spec) == read_sentences(tmp_path / "same.txt") == sents
    for corpus, out in ((spec, "a.arpa"), (tmp_path / "same.txt", "b.arpa")):
        code, _, err = run_cli("ngram", "train", corpus, "-o", tmp_path / out, "--order", "3", "--lowercase", "-q")
        assert code == 0, err
    a, b = ((tmp_path / n).read_text().splitlines() for n in ("a.arpa", "b.arpa"))
    assert json.loads(a[0][len("# fflm "):])["meta"]["corpus"] == spec
    assert a[1:] == b[1:]  # the same model, whatever the header says about where the text came from


def test_train_and_eval_a_neural_model_on_nltk_brown(nltk_brown, tmp_path, run_cli):
    model = tmp_path / "m.npz"
    code, _, err = run_cli("train", "nltk:brown:ca01,ca02,ca03", "--valid", "nltk:brown:ca04", "-o", model,
                           "--order", "3", "--embed-dim", "8", "--hidden", "16", "--epochs", "2", "--threads", "1",
                           "--lowercase", "-q")
    assert code == 0, err
    meta = json.loads(run_cli("info", model, "--json")[1])
    assert meta["training"]["corpus"] == "nltk:brown:ca01,ca02,ca03" and len(meta["training"]["sha256"]) == 64
    code, out, err = run_cli("eval", model, "nltk:brown:ca05", "--json")  # the baseline is built from the corpus
    assert code == 0, err
    rep = json.loads(out)
    assert [m["name"] for m in rep["models"]] == ["fflm", "kn3"] and rep["tokens"] > 1000


@pytest.mark.parametrize("spec, message", [
    ("nltk:reuters", "nltk.download('reuters')"),  # not in the shared nltk_data: how to get it
    ("nltk:brown:zz99", "does not contain"),
    ("nltk:reader", "not a corpus with a sents() reader"),
    ("nltk:no_such_corpus", "NLTK has no corpus named"),
    ("nltk:", "give an NLTK corpus name"),
])
def test_a_missing_or_wrong_nltk_corpus_is_one_line(nltk_brown, tmp_path, run_cli, spec, message):
    code, _, err = run_cli("ngram", "train", spec, "-o", tmp_path / "m.arpa")
    assert code == 1 and len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "m.arpa").exists()
