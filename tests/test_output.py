"""The adaptive softmax (fflm/output.py): an exact distribution over the whole vocabulary,
equal to the full softmax with one cluster, its cutoffs, sampling, training and files."""

import numpy as np
import pytest

from fflm import FflmError, Vocabulary, Windows
from fflm.model import FFNNLM, ModelConfig, Workspace
from fflm.output import auto_cutoffs
from fflm.train import TrainConfig, set_threads, train

ADAPTIVE = ModelConfig(order=3, embed_dim=8, hidden=(16,), softmax="adaptive")


@pytest.fixture(scope="module")
def data(synth_sentences):
    train_s = synth_sentences["train"][:1500]
    vocab = Vocabulary.build(train_s)
    W = lambda s: Windows.from_sentences(s, vocab, 3)  # noqa: E731
    return vocab, W(train_s), W(synth_sentences["valid"][:300])


def contexts(vocab, n=40, order=3, seed=0):
    return np.random.default_rng(seed).integers(0, len(vocab), size=(n, order - 1)).astype(np.int32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tied", [False, True])
def test_every_context_sums_to_one_over_the_whole_vocabulary(data, dtype, tied):
    vocab = data[0]
    cfg = ModelConfig(order=3, embed_dim=8, hidden=(8,), softmax="adaptive", cutoffs=(20, 60, 100), tied=tied)
    model = FFNNLM(vocab, cfg, dtype=dtype, seed=2)
    for p in model.params.values():
        p[...] += np.random.default_rng(1).standard_normal(p.shape).astype(dtype)  # far from the unigram start
    x = contexts(vocab)
    p = model.probs(x)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.allclose(p.sum(axis=1), 1.0, atol=tol, rtol=0)
    assert (p[:, Vocabulary.BOS_ID] == 0).all() and (p[:, [i for i in range(len(vocab)) if i != 1]] > 0).all()
    # the nll of any target is exactly what the whole distribution gives it
    y = np.random.default_rng(3).integers(2, len(vocab), size=len(x)).astype(np.int32)
    assert np.allclose(model.nll(x, y), -np.log(p[np.arange(len(x)), y]), rtol=tol, atol=tol)


def test_one_cluster_is_the_full_softmax(data):
    """With no tail cluster the head is the whole vocabulary: the same parameters give the same
    probabilities, loss and gradients as the full softmax."""
    vocab, tw, _ = data
    full = FFNNLM(vocab, ModelConfig(order=3, embed_dim=8, hidden=(16,)), dtype=np.float64, seed=4)
    one = FFNNLM(vocab, ModelConfig(order=3, embed_dim=8, hidden=(16,), softmax="adaptive", cutoffs=()),
                 dtype=np.float64, seed=4)
    names = ("E", "W1", "b1", "U", "c")
    assert set(one.params) == set(names)
    for name in names:
        one.params[name][...] = full.params[name]
    x, y = tw.pairs(np.arange(500))
    assert np.allclose(one.nll(x, y), full.nll(x, y), rtol=1e-12, atol=1e-12)
    assert np.allclose(one.probs(x[:20]), full.probs(x[:20]), rtol=1e-12, atol=1e-15)
    ws_a, ws_f = Workspace(one, 64), Workspace(full, 64)
    assert one.loss_and_grad(x[:64], y[:64], ws_a) == pytest.approx(full.loss_and_grad(x[:64], y[:64], ws_f), rel=1e-12)
    for name in names:
        assert np.allclose(one.grads[name], full.grads[name], rtol=1e-10, atol=1e-14)


def test_auto_cutoffs_follow_the_token_shares(data):
    vocab = data[0]
    counts = np.asarray(vocab.counts, dtype=float)
    cuts = auto_cutoffs(counts, min_cluster=2)
    share = np.cumsum(counts) / counts.sum()
    assert share[cuts[0] - 1] >= 0.85 > share[cuts[0] - 2]
    assert cuts == sorted(set(cuts)) and cuts[-1] < len(vocab)
    assert auto_cutoffs(counts[:40], min_cluster=64) == []  # too few words for any tail: one cluster
    model = FFNNLM(vocab, ADAPTIVE)  # no cutoffs given: chosen from the vocabulary's counts
    assert list(model.config.cutoffs) == auto_cutoffs(vocab.counts)
    small = auto_cutoffs(counts, min_cluster=2, head_share=0.6)  # --head-share: a smaller head
    assert share[small[0] - 1] >= 0.6 > share[small[0] - 2] and small[0] < cuts[0]
    assert ADAPTIVE.resolve(vocab.counts, head_share=0.6).cutoffs[0] < ADAPTIVE.resolve(vocab.counts).cutoffs[0]


@pytest.mark.parametrize("cutoffs, message", [
    ((2, 50), "rise strictly"), ((50, 40), "rise strictly"), ((50, 100000), "beyond the vocabulary"),
])
def test_impossible_cutoffs_are_refused(data, cutoffs, message):
    with pytest.raises(FflmError, match=message):
        FFNNLM(data[0], ModelConfig(order=3, softmax="adaptive", cutoffs=cutoffs))


def test_cutoffs_without_the_adaptive_softmax_are_refused():
    with pytest.raises(FflmError, match="needs --softmax adaptive"):
        ModelConfig(cutoffs=(100,)).check()


def test_the_untrained_adaptive_model_is_the_unigram_model(data):
    vocab = data[0]
    model = FFNNLM(vocab, ModelConfig(order=3, embed_dim=4, hidden=(4,), softmax="adaptive", cutoffs=(10, 40)),
                   dtype=np.float64)
    for name, p in model.params.items():
        if name != "c" and not name.startswith("c"):
            p[...] = 0.0
    p = model.probs(contexts(vocab, 3))
    counts = vocab.counts.astype(float)
    unigram = (counts + 1) / (counts.sum() + len(counts))
    unigram[Vocabulary.BOS_ID] = 0
    assert np.allclose(p, unigram / unigram.sum(), rtol=1e-10)


def test_hierarchical_sampling_draws_from_the_exact_distribution(data):
    vocab = data[0]
    model = FFNNLM(vocab, ModelConfig(order=3, embed_dim=8, hidden=(8,), softmax="adaptive", cutoffs=(10, 40)),
                   dtype=np.float64, seed=5)
    x = np.repeat(contexts(vocab, 1), 40000, axis=0)
    draws = model.draw(x, np.random.default_rng(7))
    assert np.array_equal(draws, model.draw(x, np.random.default_rng(7)))  # same seed, same words
    freq = np.bincount(draws, minlength=len(vocab)) / len(draws)
    p = model.probs(x[:1])[0]
    assert freq[Vocabulary.BOS_ID] == 0
    assert np.abs(freq - p).max() < 4 * np.sqrt(p.max() / len(draws))  # within four standard errors
    no_unk = model.draw(x[:2000], np.random.default_rng(7), no_unk=True)
    assert (no_unk != Vocabulary.UNK_ID).all()


def test_generation_uses_either_path_and_is_seeded(data):
    vocab, tw, vw = data
    model = FFNNLM(vocab, ADAPTIVE, seed=1)
    a = model.generate(num_samples=3, prompt="", seed=4)
    assert a == model.generate(num_samples=3, prompt="", seed=4)
    b = model.generate(num_samples=3, temperature=0.7, top_k=5, seed=4)  # the whole distribution
    assert b == model.generate(num_samples=3, temperature=0.7, top_k=5, seed=4)
    assert all(set(s.split()) <= set(vocab.words) - {"<s>", "</s>"} for s in a + b)


def test_adaptive_trains_deterministically_saves_and_loads(data, tmp_path):
    set_threads(2)
    vocab, tw, vw = data
    runs = []
    for _ in range(2):
        model = FFNNLM(vocab, ADAPTIVE, seed=1)
        history = train(model, tw, vw, TrainConfig(epochs=2, batch_size=32, lr=0.5, seed=1, dropout=0.1))
        runs.append((model, history))
    (a, ha), (b, hb) = runs
    assert np.array_equal(a.dense, b.dense) and np.array_equal(a.E, b.E)
    assert ha[-1]["valid_ppl"] < 0.5 * (len(vocab) - 1)  # it learned
    path = tmp_path / "m.npz"
    a.save(path)
    again, meta = FFNNLM.load(path)
    assert again.config == a.config and meta["config"]["cutoffs"] == list(a.config.cutoffs)
    x, y = vw.pairs()
    assert np.array_equal(again.nll(x, y), a.nll(x, y))


def test_a_model_file_whose_cutoffs_do_not_match_its_weights_is_refused(data, tmp_path):
    import json

    vocab = data[0]
    model = FFNNLM(vocab, ModelConfig(order=3, embed_dim=4, hidden=(4,), softmax="adaptive", cutoffs=(10, 40)))
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"][()]))
    meta["config"]["cutoffs"] = [10, 50]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    with pytest.raises(FflmError, match="shape"):
        FFNNLM.load(path)


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.5), ("adam", 0.01), ("adagrad", 0.1)])
def test_adaptive_learns_as_well_as_the_full_softmax_with_every_optimizer(data, optimizer, lr):
    vocab, tw, vw = data
    ppl = {}
    for softmax in ("full", "adaptive"):
        model = FFNNLM(vocab, ModelConfig(order=3, embed_dim=8, hidden=(16,), softmax=softmax), seed=1)
        before = float(np.exp(model.nll(*vw.pairs()).mean()))
        history = train(model, tw, vw, TrainConfig(epochs=1, batch_size=32, lr=lr, seed=1, optimizer=optimizer))
        ppl[softmax] = history[-1]["valid_ppl"]
        assert ppl[softmax] < 0.7 * before
    assert model.config.cutoffs  # a head and a tail
    assert ppl["adaptive"] < 1.05 * ppl["full"]


def test_a_sampled_loss_with_the_adaptive_softmax_is_refused(data):
    vocab, tw, vw = data
    with pytest.raises(FflmError, match="--softmax full"):
        train(FFNNLM(vocab, ADAPTIVE), tw, vw, TrainConfig(epochs=1, loss="nce"))


def test_auto_picks_the_adaptive_softmax_for_large_vocabularies():
    from fflm.output import AUTO_ADAPTIVE

    zipf = lambda V: [1, 0, 1] + [10**6 // (r + 1) for r in range(V - 3)]  # noqa: E731
    large = ModelConfig(softmax="auto").resolve(zipf(AUTO_ADAPTIVE))
    assert large.softmax == "adaptive" and large.cutoffs == tuple(auto_cutoffs(zipf(AUTO_ADAPTIVE)))
    assert ModelConfig(softmax="auto").resolve(zipf(AUTO_ADAPTIVE - 1)).softmax == "full"
    assert ModelConfig(softmax="auto", cutoffs=(100,)).resolve(zipf(AUTO_ADAPTIVE)).cutoffs == (100,)


def test_cli_trains_scores_and_describes_an_adaptive_model(tmp_path, run_cli):
    import json

    from conftest import SYNTH

    model = tmp_path / "m.npz"
    code, _, err = run_cli("train", SYNTH / "train.txt", "-o", model, "--order", "3", "--embed-dim", "8", "--hidden",
                           "16", "--epochs", "1", "--softmax", "adaptive", "--cutoffs", "40,100", "--tail-div", "2",
                           "--threads", "1", "-q")
    assert code == 0, err
    code, out, _ = run_cli("info", model)
    assert "adaptive softmax, head of 40 words + 2 cluster(s); tails: 60 words at width 8, 53 words at width 4" in out
    meta = json.loads(run_cli("info", model, "--json")[1])
    assert meta["config"]["softmax"] == "adaptive" and meta["config"]["cutoffs"] == [40, 100]
    lm, _ = FFNNLM.load(model)
    code, out, _ = run_cli("eval", model, SYNTH / "test.txt", "--json", "--baseline", "none")
    assert code == 0
    from fflm import read_sentences

    test = read_sentences(SYNTH / "test.txt")
    ppl = json.loads(out)["models"][0]["ppl"]
    assert ppl == pytest.approx(lm.perplexity(test), rel=1e-9)
    x, y = lm.windows(test).pairs()
    assert ppl == pytest.approx(float(np.exp(lm.nll(x, y).mean())), rel=1e-9)  # exp(mean NLL)
    code, _, err = run_cli("train", SYNTH / "train.txt", "-o", tmp_path / "x.npz", "--softmax", "adaptive",
                           "--loss", "nce", "-q")
    assert code == 1 and err.count("\n") == 1 and "--softmax full" in err


def test_train_says_which_output_layer_auto_chose(tmp_path, run_cli):
    from conftest import SYNTH

    code, _, err = run_cli("train", SYNTH / "train.txt", "-o", tmp_path / "m.npz", "--order", "3", "--embed-dim", "8",
                           "--hidden", "8", "--epochs", "1", "--softmax", "auto", "--threads", "1")
    assert code == 0 and "output layer: full softmax (--softmax auto: 153 words is under 20,000)" in err


def test_head_share_on_the_command_line(run_cli, tmp_path):
    from conftest import SYNTH

    args = ("train", SYNTH / "train.txt", "-o", tmp_path / "h.npz", "--softmax", "adaptive", "--embed-dim", 8,
            "--hidden", 16, "--order", 3, "--max-steps", 2, "-q")
    code, _, err = run_cli(*args, "--head-share", 0.5)
    assert code == 0, err
    from fflm.vocab import Vocabulary

    model = FFNNLM.load(tmp_path / "h.npz")[0]
    counts = np.asarray(model.vocab.counts, dtype=float)
    assert list(model.config.cutoffs) == auto_cutoffs(counts, head_share=0.5) != auto_cutoffs(counts)
    assert len(Vocabulary.SPECIALS) <= model.config.cutoffs[0]
    code, _, err = run_cli(*args, "--head-share", 0.5, "--cutoffs", "10,50")
    assert code == 1 and "drop it or --cutoffs" in err
