"""Issue 5's techniques on a slice of the shared Brown corpus: each trains to a finite
validation perplexity below the untrained model's, and the mixture with KN never loses."""

import math

import numpy as np
import pytest
from conftest import shared_path

from fflm import NGramLM, Vocabulary, read_sentences
from fflm.evaluate import interpolate, perplexity, score_neural, score_ngram, tune_lambda
from fflm.model import FFNNLM, ModelConfig
from fflm.train import TrainConfig, evaluate_ppl, set_threads, train

CONFIG = ModelConfig(order=4, embed_dim=16, hidden=(32,))


@pytest.fixture(scope="module")
def brown_slice():
    train_s = read_sentences(shared_path("brown", "train.txt"))[:3000]
    valid_s = read_sentences(shared_path("brown", "valid.txt"))[:600]
    vocab = Vocabulary.build(train_s, min_count=2)
    return vocab, train_s, valid_s


VARIANTS = {
    "sgd": dict(lr=0.5),
    "sgd+dropout": dict(lr=0.5, dropout=0.3, embed_dropout=0.1),
    "adagrad": dict(lr=0.05, optimizer="adagrad"),
    "adam": dict(lr=0.003, optimizer="adam"),
    "nce": dict(lr=0.5, loss="nce", noise_samples=50),
    "warmup+decay": dict(lr=0.5, warmup_steps=30, lr_decay=0.8),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_technique_learns_on_a_brown_slice(brown_slice, name):
    vocab, train_s, valid_s = brown_slice
    set_threads(1)
    model = FFNNLM(vocab, CONFIG, seed=1)
    tw, vw = model.windows(train_s), model.windows(valid_s)
    untrained = evaluate_ppl(model, vw)
    history = train(model, tw, vw, TrainConfig(epochs=3, batch_size=64, seed=1, **VARIANTS[name]))
    best = min(r["valid_ppl"] for r in history)
    assert math.isfinite(best) and best < 0.9 * untrained


@pytest.mark.parametrize("cross_sentence", [False, True])
def test_interpolation_is_never_worse_than_the_better_part_on_the_tuning_text(brown_slice, cross_sentence):
    vocab, train_s, valid_s = brown_slice
    set_threads(1)
    config = ModelConfig(order=4, embed_dim=16, hidden=(32,), cross_sentence=cross_sentence)
    model = FFNNLM(vocab, config, seed=1)
    train(model, model.windows(train_s), model.windows(valid_s), TrainConfig(epochs=2, batch_size=64))
    kn = NGramLM.estimate(padded_windows(train_s, vocab), vocab, 4)
    neural, ngram = score_neural(model, model.windows(valid_s)), score_ngram(kn, padded_windows(valid_s, vocab))
    assert np.array_equal(neural.targets, ngram.targets)
    lam = tune_lambda(neural, ngram)
    mixed = perplexity(interpolate(neural, ngram, lam).log10)
    assert 0 < lam < 1  # here both models carry information
    assert mixed <= min(perplexity(neural.log10), perplexity(ngram.log10)) + 1e-9


def padded_windows(sentences, vocab):
    """The baseline's windows: every sentence padded with <s>."""
    from fflm import Windows

    return Windows.from_sentences(sentences, vocab, 4)
