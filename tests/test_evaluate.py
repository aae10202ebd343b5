import math

import numpy as np
import pytest

from fflm import NGramLM, Vocabulary, Windows
from fflm.evaluate import (Scores, format_report, interpolate, mix, perplexity, report, score_ngram, tune_lambda,
                           tune_weights)


def test_perplexity_is_exp_of_mean_nll():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 1, size=1000)
    nll = -np.log(p).mean()
    assert perplexity(np.log10(p)) == pytest.approx(math.exp(nll), rel=1e-12)
    assert perplexity([0.0, 0.0]) == 1.0
    assert perplexity([-np.inf, 0.0]) == math.inf


def test_uniform_model_has_perplexity_equal_to_vocabulary_size():
    V = 50
    assert perplexity(np.full(123, -math.log10(V))) == pytest.approx(V)


def test_report_counts_tokens_oovs_and_excludes_them():
    targets = np.array([3, 0, 4, 2, 0, 2])  # two <unk>, two </s>
    log10 = np.array([-1.0, -3.0, -1.0, -0.5, -3.0, -0.5])
    rep = report({"m": (3, Scores(log10, targets, sentences=2))})
    assert rep["tokens"] == 6 and rep["sentences"] == 2 and rep["oov"] == 2
    assert rep["oov_rate"] == pytest.approx(2 / 6)
    row = rep["models"][0]
    assert row["ppl"] == pytest.approx(10 ** (9.0 / 6))
    assert row["ppl_excluding_oov"] == pytest.approx(10 ** (3.0 / 4))
    assert row["log10_prob"] == pytest.approx(-9.0)
    text = format_report(rep)
    assert "OOVs: 2" in text and "Tokens: 6" in text


def test_unseen_words_are_scored_as_unk_and_never_inf(synth_sentences):
    train = synth_sentences["train"]
    vocab = Vocabulary.build(train)
    lm = NGramLM.estimate(Windows.from_sentences(train, vocab, 3), vocab, 3)
    text = [["ZZZ-1", "ZZZ-2", "ZZZ-3"], train[0]]
    s = score_ngram(lm, Windows.from_sentences(text, vocab, 3))
    assert np.isfinite(s.log10).all()
    assert s.oov.sum() == 3 and len(s.targets) == 3 + len(train[0]) + 2


def _scores(p, targets=None):
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):  # p = 0 is log10 -inf on purpose
        log10 = np.log10(p)
    return Scores(log10, np.arange(len(p)) if targets is None else targets, sentences=1)


def test_a_mixture_of_distributions_is_a_distribution():
    # mix() on every word of a 7-word vocabulary, for one context: the mixture sums to one
    rng = np.random.default_rng(3)
    dists = [rng.dirichlet(np.ones(7)) for _ in range(3)]
    w = [0.2, 0.5, 0.3]
    mixed = mix([_scores(d) for d in dists], w)
    assert np.sum(10 ** mixed.log10) == pytest.approx(1.0, rel=1e-12)
    assert 10 ** mixed.log10 == pytest.approx(sum(wk * d for wk, d in zip(w, dists)), rel=1e-12)
    # two parts: the same as interpolate()
    assert mix([_scores(dists[0]), _scores(dists[1])], [0.3, 0.7]).log10 == pytest.approx(
        interpolate(_scores(dists[0]), _scores(dists[1]), 0.3).log10, rel=1e-12)
    # a weight of zero ignores a part that gives some token probability zero
    zero = _scores(np.r_[0.0, dists[2][1:]])
    assert np.isfinite(mix([_scores(dists[0]), zero], [1.0, 0.0]).log10).all()


def test_em_weights_are_the_best_mixture():
    rng = np.random.default_rng(5)
    T = 4000
    parts = [_scores(rng.uniform(lo, 1.0, T)) for lo in (0.01, 0.05, 0.2)]
    parts.append(_scores(np.where(rng.random(T) < 0.5, 0.9, 1e-4)))  # good on half the tokens
    w = tune_weights(parts)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    best = np.sum(mix(parts, w).log10)
    for _ in range(300):  # no point of the simplex does better
        assert np.sum(mix(parts, rng.dirichlet(np.ones(4))).log10) <= best + 1e-9
    for k in range(4):  # nor any part alone
        assert np.sum(parts[k].log10) <= best + 1e-9
    # two parts: the same optimum as the 1-D search of tune_lambda
    assert tune_weights(parts[:2])[0] == pytest.approx(tune_lambda(parts[0], parts[1]), abs=1e-3)
    # a useless part gets (almost) no weight
    useless = _scores(np.full(T, 1e-6))
    assert tune_weights([parts[0], useless])[1] < 1e-3


def test_tuning_on_training_text_is_suspicious_and_natural_repeats_are_not():
    from fflm import read_sentences
    from fflm.evaluate import tuning_overlap
    from conftest import SYNTH

    train = read_sentences(SYNTH / "train.txt")
    valid = read_sentences(SYNTH / "valid.txt")
    fresh = tuning_overlap(valid, train)  # short sentences of 150 words repeat naturally (about 10%)
    assert 0.05 < fresh["seen_share"] < 0.2 and not fresh["suspicious"]
    leaked = tuning_overlap(train[:300] + valid[:700], train)
    assert leaked["seen_sentences"] >= 300 and leaked["suspicious"]
    assert tuning_overlap(train[:1000], train)["seen_share"] == 1.0


def test_eval_warns_when_the_tuning_text_was_trained_on(tmp_path, run_cli):
    from conftest import SYNTH

    model = tmp_path / "m.npz"
    code, _, err = run_cli("train", SYNTH / "train.txt", "-o", model, "--order", "3", "--embed-dim", "8", "--hidden",
                           "8", "--epochs", "1", "--threads", "1", "-q")
    assert code == 0, err
    code, _, err = run_cli("eval", model, SYNTH / "test.txt", "--tune-on", SYNTH / "valid.txt")
    assert code == 0 and "--tune-on" not in err
    code, _, err = run_cli("eval", model, SYNTH / "test.txt", "--tune-on", SYNTH / "train.txt")
    assert code == 0 and err.count("warning: --tune-on") == 1 and "100.0% of its tokens (10,000 of 10,000 sentences)" in err
