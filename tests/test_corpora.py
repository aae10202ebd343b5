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


def test_data_split_is_by_whole_sentences_and_reproducible(tmp_path, run_cli):
    from conftest import SYNTH
    from fflm import read_sentences

    corpus = SYNTH / "train.txt"
    sents = read_sentences(corpus)
    code, out, err = run_cli("data", "split", corpus, "-o", tmp_path / "a", "--valid", "0.1", "--test", "0.2",
                             "--seed", "7", "--json")
    assert code == 0, err
    summary = json.loads(out)
    parts = {n: read_sentences(tmp_path / "a" / f"{n}.txt") for n in ("train", "valid", "test")}
    assert sum(len(p) for p in parts.values()) == len(sents)
    assert len(parts["valid"]) == round(0.1 * len(sents)) and len(parts["test"]) == round(0.2 * len(sents))
    assert sorted(map(tuple, sents)) == sorted(tuple(s) for p in parts.values() for s in p)  # whole sentences
    for p in parts.values():  # each part keeps corpus order: it is a subsequence of the corpus
        rest = iter(sents)
        assert all(any(s == t for t in rest) for s in p)
    assert summary["files"]["test.txt"]["sentences"] == len(parts["test"])
    assert json.loads((tmp_path / "a" / "split.json").read_text())["seed"] == 7
    run_cli("data", "split", corpus, "-o", tmp_path / "b", "--valid", "0.1", "--test", "0.2", "--seed", "7")
    run_cli("data", "split", corpus, "-o", tmp_path / "c", "--valid", "0.1", "--test", "0.2", "--seed", "8")
    same = [(tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in ("train.txt", "test.txt")]
    assert all(same)
    assert (tmp_path / "a" / "test.txt").read_bytes() != (tmp_path / "c" / "test.txt").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--valid", "0.6", "--test", "0.5"], "leave nothing to train on"),
    (["--valid", "-0.1"], "--valid is a share"),
    (["--test", "1.5"], "--test is a share"),
])
def test_data_split_refuses_impossible_shares(tmp_path, run_cli, args, message):
    from conftest import SYNTH

    code, _, err = run_cli("data", "split", SYNTH / "valid.txt", "-o", tmp_path / "s", *args)
    assert code == 1 and message in err and not (tmp_path / "s").exists()
