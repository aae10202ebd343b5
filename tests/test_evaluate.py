import math

import numpy as np
import pytest

from fflm import NGramLM, Vocabulary, Windows
from fflm.evaluate import Scores, format_report, perplexity, report, score_ngram


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
