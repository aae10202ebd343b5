import numpy as np
import pytest

from fflm import FflmError, Vocabulary, Windows


@pytest.fixture
def vocab():
    return Vocabulary(["a", "b", "c"])


def test_padding_targets_and_contexts(vocab):
    w = Windows.from_sentences([["a", "b"], ["c"]], vocab, order=3)
    BOS, EOS = vocab.BOS_ID, vocab.EOS_ID
    a, b, c = 3, 4, 5
    assert w.ids.tolist() == [BOS, BOS, a, b, EOS, BOS, BOS, c, EOS]
    x, y = w.pairs()
    assert y.tolist() == [a, b, EOS, c, EOS]  # every word and </s>, never <s>
    assert x.tolist() == [[BOS, BOS], [BOS, a], [a, b], [BOS, BOS], [BOS, c]]
    assert len(w) == 3 + 2 and w.num_sentences == 2


def test_views_are_zero_copy_and_memory_does_not_grow_with_n(vocab):
    sents = [["a", "b", "c"] * 10] * 50
    sizes = []
    for n in (2, 5, 10):
        w = Windows.from_sentences(sents, vocab, n)
        assert np.shares_memory(w.view, w.ids) and w.view.shape[1] == n
        sizes.append(w.ids.nbytes + w.positions.nbytes)
    # only the n-1 <s> of padding per sentence grows with n: 8 extra ids x 50 sentences
    assert sizes[2] - sizes[0] == 50 * 8 * 4


def test_order_one_has_empty_contexts(vocab):
    w = Windows.from_sentences([["a", "b"]], vocab, 1)
    x, y = w.pairs()
    assert x.shape == (3, 0) and y.tolist() == [3, 4, 2]


def test_batches_cover_every_pair_once_and_are_seeded(vocab):
    w = Windows.from_sentences([["a", "b", "c"]] * 7, vocab, 3)
    got = np.concatenate(list(w.batches(5, np.random.default_rng(1))))
    assert sorted(got.tolist()) == list(range(len(w)))
    again = np.concatenate(list(w.batches(5, np.random.default_rng(1))))
    assert (got == again).all()
    other = np.concatenate(list(w.batches(5, np.random.default_rng(2))))
    assert not (got == other).all()
    assert [len(b) for b in w.batches(5)] == [5, 5, 5, 5, 5, 3]


def test_bad_order(vocab):
    with pytest.raises(FflmError):
        Windows.from_sentences([["a"]], vocab, 0)


@pytest.mark.parametrize("order", [2, 3, 5])
def test_cross_sentence_windows_score_the_same_targets_with_longer_contexts(order):
    v = Vocabulary(["a", "b", "c", "d"])
    sentences = [["a", "b"], ["c"], ["d", "a", "b"]]
    padded = Windows.from_sentences(sentences, v, order)
    cross = Windows.from_sentences(sentences, v, order, cross_sentence=True)
    assert np.array_equal(padded.targets, cross.targets) and cross.num_sentences == 3
    stream = [v.BOS_ID] * (order - 1) + [3, 4, 2, 5, 2, 6, 3, 4, 2]  # <s>.. a b </s> c </s> d a b </s>
    assert cross.ids.tolist() == stream
    x, y = cross.pairs()
    for i, t in enumerate(y.tolist()):  # each context is the n-1 ids before its target in the stream
        p = order - 1 + i
        assert x[i].tolist() == stream[p - order + 1 : p] and t == stream[p]
    assert (x == v.BOS_ID).sum() == sum(range(order))  # <s> only before the first sentence
