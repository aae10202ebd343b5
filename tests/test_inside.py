"""Inside the model and pictures of it: neighbours, word2vec export (read back by gensim),
learning-curve and embedding pictures, the terminal's text plot, shell completion."""

import json

import numpy as np
import pytest

from conftest import SYNTH


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from fflm.cli import main

    d = tmp_path_factory.mktemp("inside")
    main(["train", str(SYNTH / "train.txt"), "--valid", str(SYNTH / "valid.txt"), "-o", str(d / "m.npz"),
          "--order", "3", "--embed-dim", "16", "--hidden", "32", "--epochs", "3", "--threads", "1", "-q"])
    return d / "m.npz"


def test_neighbors_are_the_cosine_nearest_rows(trained, run_cli):
    from fflm.model import FFNNLM

    model, _ = FFNNLM.load(trained)
    word = model.vocab.words[10]
    code, out, err = run_cli("neighbors", trained, word, "-k", "5", "--json")
    assert code == 0, err
    got = json.loads(out)
    E = model.E.astype(np.float64)
    cos = E @ E[10] / (np.linalg.norm(E, axis=1) * np.linalg.norm(E[10]))
    cos[:3], cos[10] = -np.inf, -np.inf  # the symbols and the word itself are not neighbours
    best = np.argsort(-cos)[:5]
    assert [g["word"] for g in got] == [model.vocab.words[i] for i in best]
    assert [g["cosine"] for g in got] == pytest.approx(cos[best].tolist(), abs=1e-9)
    assert all(a["cosine"] >= b["cosine"] for a, b in zip(got, got[1:]))
    code, _, err = run_cli("neighbors", trained, "no-such-word")
    assert code == 1 and "not in the model's vocabulary" in err


def test_exported_embeddings_load_in_gensim(trained, tmp_path, run_cli):
    from gensim.models import KeyedVectors

    from fflm.embeddings import read_word2vec
    from fflm.model import FFNNLM

    model, _ = FFNNLM.load(trained)
    vec = tmp_path / "v.txt"
    code, _, err = run_cli("export-embeddings", trained, "-o", vec)
    assert code == 0, err
    assert vec.read_text().splitlines()[0] == f"{len(model.vocab)} {model.config.embed_dim}"
    kv = KeyedVectors.load_word2vec_format(str(vec), binary=False)
    assert kv.index_to_key == model.vocab.words
    np.testing.assert_allclose(kv.vectors, model.E, rtol=1e-5, atol=1e-6)
    word = model.vocab.words[10]
    ours = json.loads(run_cli("neighbors", trained, word, "-k", "3", "--json")[1])
    theirs = [w for w, _ in kv.most_similar(word, topn=6) if w not in ("<unk>", "<s>", "</s>")][:3]
    assert [g["word"] for g in ours] == theirs
    words, vectors = read_word2vec(vec)
    assert words == model.vocab.words and np.allclose(vectors, model.E, rtol=1e-5, atol=1e-6)


def test_pictures_of_the_curve_and_the_embeddings(trained, tmp_path, run_cli):
    for args in (["plot", trained, "-o", tmp_path / "c.png"],
                 ["plot-embeddings", trained, "-o", tmp_path / "e.png", "--top", "30"],
                 ["plot-embeddings", trained, "-o", tmp_path / "e.svg", "--words", "veix,goni,zoix"]):
        code, out, err = run_cli(*args)
        assert code == 0, err
        path = args[3]
        assert out.strip() == str(path) and path.stat().st_size > 1000
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (tmp_path / "e.svg").read_bytes()[:500]
    code, _, err = run_cli("plot-embeddings", trained, "-o", tmp_path / "x.png", "--words", "veix,nonword")
    assert code == 1 and "nonword" in err and not (tmp_path / "x.png").exists()


def test_without_matplotlib_a_picture_is_a_one_line_error(trained, tmp_path, run_cli, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    code, _, err = run_cli("plot", trained, "-o", tmp_path / "c.png")
    assert code == 1 and err.strip() == "fflm: error: pictures need matplotlib: pip install 'fflm[plot]'"
    assert not (tmp_path / "c.png").exists()


def test_pca_keeps_the_two_directions_of_largest_variance():
    from fflm.embeddings import pca_2d

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 5)) * [10.0, 3.0, 0.1, 0.1, 0.1]
    points, explained = pca_2d(X)
    assert points.shape == (200, 2) and explained[0] > explained[1] > 0.0 and explained.sum() > 0.99
    assert abs(np.corrcoef(points[:, 0], X[:, 0])[0, 1]) > 0.99


def test_the_text_plot_puts_the_best_epoch_on_the_bottom_line():
    from fflm.plot import text_plot

    lines = text_plot([200.0, 150.0, 120.0, 125.0], height=5).splitlines()
    assert lines[0] == "valid ppl 120 .. 200" and len(lines) == 6
    assert lines[1].endswith("|*") and lines[-1].endswith("|  **")  # epoch 1 on top; 3 and 4 (125 rounds to 120) below
    assert text_plot([]) == ""


def test_shell_completion_script(run_cli):
    code, out, _ = run_cli("completion", "bash")
    assert code == 0 and "_FFLM_COMPLETE=bash_complete" in out and "complete " in out
    code, _, err = run_cli("completion", "powershell")
    assert code == 2 and "powershell" in err


def test_train_ends_with_a_text_plot_on_a_terminal_only(tmp_path, run_cli, monkeypatch):
    import sys

    args = ["train", SYNTH / "valid.txt", "--valid", SYNTH / "test.txt", "-o", tmp_path / "m.npz", "--order", "2",
            "--embed-dim", "4", "--hidden", "8", "--epochs", "3", "--threads", "1", "--min-count", "1"]
    code, out, err = run_cli(*args)
    assert code == 0 and "valid ppl" not in out, err  # piped: nothing on stdout
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run_cli(*args)
    assert code == 0 and out.startswith("valid ppl ") and out.count("*") == 3, err
