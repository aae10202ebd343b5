import numpy as np
import pytest

from fflm import FflmError, Vocabulary
from fflm.generate import sample
from fflm.model import FFNNLM, ModelConfig


@pytest.fixture(scope="module")
def model():
    vocab = Vocabulary([f"w{i}" for i in range(20)])
    return FFNNLM(vocab, ModelConfig(order=3, embed_dim=4, hidden=(8,)), seed=5)


def test_seeded_sampling_is_reproducible(model):
    a = sample(model, 4, seed=3)
    assert a == sample(model, 4, seed=3)
    assert a != sample(model, 4, seed=4)


def test_samples_never_contain_s_and_respect_the_length(model):
    for s in sample(model, 20, num_words=7, seed=1):
        assert "<s>" not in s and "</s>" not in s and len(s) <= 7


def test_top_k_one_is_greedy(model):
    got = sample(model, 3, num_words=5, top_k=1, seed=1)
    assert got == sample(model, 3, num_words=5, top_k=1, seed=99)
    assert len({" ".join(s) for s in got}) == 1


def test_top_k_keeps_only_the_k_likeliest(model):
    k = 3
    p = model.probs(np.array([[1, 1]]))[0]
    allowed = set(model.vocab.decode(np.argsort(p)[-k:]))
    firsts = {s[0] for s in sample(model, 200, num_words=1, top_k=k, seed=2) if s}
    assert firsts <= allowed


def test_temperature_sharpens_and_flattens(model):
    x = np.array([[1, 1]])
    cold, warm = model.probs(x, temperature=0.3)[0], model.probs(x, temperature=3.0)[0]
    base = model.probs(x)[0]
    assert cold.max() > base.max() > warm.max()


def test_no_unk(model):
    model.c[model.vocab.UNK_ID] = 50.0  # make <unk> nearly certain
    try:
        assert all(w == "<unk>" for s in sample(model, 5, num_words=3, seed=1) for w in s)
        assert all("<unk>" not in s for s in sample(model, 5, num_words=3, seed=1, no_unk=True))
    finally:
        model.c[model.vocab.UNK_ID] = 0.0


def test_prompt_is_kept_and_unknown_words_show_as_unk(model):
    s = sample(model, 1, prompt=["w3", "zebra"], num_words=2, seed=1)[0]
    assert s[:2] == ["w3", "<unk>"]


@pytest.mark.parametrize("bad", [dict(temperature=0), dict(top_k=-1), dict(num_words=0), dict(num_samples=0)])
def test_bad_settings(model, bad):
    with pytest.raises(FflmError):
        sample(model, **({"num_samples": 1} | bad))
