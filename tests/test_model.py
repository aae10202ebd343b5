"""The neural model and its training: determinism, the schedule, files, and quality on the synthetic corpus."""

import json
import math

import numpy as np
import pytest

from conftest import SYNTH
from fflm import FflmError, NGramLM, Vocabulary, Windows
from fflm.evaluate import perplexity, score_ngram, score_neural
from fflm.model import FFNNLM, ModelConfig
from fflm.train import Noise, Schedule, SGD, make_noise, TrainConfig, evaluate_ppl, set_threads, train

SMALL = ModelConfig(order=3, embed_dim=8, hidden=(16,))


@pytest.fixture(scope="module")
def data(synth_sentences):
    train_s = synth_sentences["train"][:1500]
    vocab = Vocabulary.build(train_s)
    W = lambda s: Windows.from_sentences(s, vocab, 3)  # noqa: E731
    return vocab, W(train_s), W(synth_sentences["valid"][:300])


def fit(vocab, tw, vw, seed=1, epochs=2, **kw):
    model = FFNNLM(vocab, SMALL, seed=seed)
    history = train(model, tw, vw, TrainConfig(epochs=epochs, batch_size=32, lr=0.5, seed=seed, **kw))
    return model, history


def test_same_seed_and_threads_give_a_bit_identical_model(data):
    set_threads(2)
    a, ha = fit(*data)
    b, hb = fit(*data)
    assert np.array_equal(a.E, b.E) and np.array_equal(a.dense, b.dense)
    assert [r["valid_ppl"] for r in ha] == [r["valid_ppl"] for r in hb]
    c, _ = fit(*data, seed=2)
    assert not np.array_equal(a.dense, c.dense)


def test_training_lowers_validation_perplexity_and_history_has_the_fields(data):
    vocab, tw, vw = data
    untrained = evaluate_ppl(FFNNLM(vocab, SMALL, seed=1), vw)
    model, history = fit(vocab, tw, vw, epochs=3)
    assert set(history[0]) == {"epoch", "train_ppl", "train_loss", "valid_ppl", "lr", "seconds", "tokens_per_s"}
    assert history[-1]["valid_ppl"] < untrained
    assert evaluate_ppl(model, vw) == pytest.approx(min(r["valid_ppl"] for r in history), rel=1e-6)


def test_learning_rate_halves_when_validation_stalls_and_training_stops(data):
    vocab, tw, vw = data
    model = FFNNLM(vocab, SMALL, seed=1)
    # a learning rate so small that validation cannot improve by 0.3%: the second epoch stalls
    # and halves the rate, every epoch after it halves again, and the fourth halving stops training
    history = train(model, tw, vw, TrainConfig(epochs=10, batch_size=64, lr=1e-7, max_halvings=3))
    assert [r["lr"] for r in history] == [1e-7, 1e-7, 5e-8, 2.5e-8, 1.25e-8]


def test_the_cap_always_leaves_room_to_anneal(data):
    # a run still improving at the cap: the last max_halvings epochs run at halved rates
    vocab, tw, vw = data
    model, history = fit(vocab, tw, vw, epochs=5, max_halvings=2, min_improvement=0.0)
    assert [r["lr"] for r in history] == [0.5, 0.5, 0.5, 0.25, 0.125]
    model, history = fit(vocab, tw, vw, epochs=5, max_halvings=0, min_improvement=0.0)
    assert [r["lr"] for r in history] == [0.5] * 5  # no halvings allowed: the rate never changes


@pytest.mark.parametrize(
    "ppls, max_halvings, lrs, stops_at",
    [
        ((100, 90, 89.9, 80, 70, 60, 50), 2, [1, 1, 0.5, 0.25, 0.25], 4),  # halves every epoch, then the cap
        ((100, 90, 89.9, 80, 70, 60, 50), 9, [1, 1, 0.5, 0.25, 0.125, 0.0625, 0.03125], None),
        ((100, 120, 99.9, 99.8), 9, [1, 0.5, 0.25, 0.125], None),  # a worse epoch is a stall; a small gain after it still anneals
        ((100, 120, 99.9, 99.8), 2, [1, 0.5, 0.25, 0.25], 3),
        ((100, 101), 0, [1, 1], 1),  # no halving allowed: the first stall stops
    ],
)
def test_schedule_halves_every_epoch_once_validation_stalls(ppls, max_halvings, lrs, stops_at):
    s = Schedule(1.0, 0.003, max_halvings)
    seen = []
    for i, ppl in enumerate(ppls):
        stop = s.update(ppl)
        seen.append(s.lr)
        if stop:
            break
    assert seen == lrs
    assert (i if stop else None) == stops_at


def test_best_weights_are_kept_when_validation_gets_worse(data):
    vocab, tw, vw = data
    model = FFNNLM(vocab, SMALL, seed=1)
    history = train(model, tw, vw, TrainConfig(epochs=6, batch_size=8, lr=3.0, max_halvings=10))
    best = min(r["valid_ppl"] for r in history)
    assert any(r["valid_ppl"] > best for r in history)  # this lr overshoots at some epoch
    assert evaluate_ppl(model, vw) == pytest.approx(best, rel=1e-6)


def test_a_step_moves_only_the_embedding_rows_in_the_batch(data):
    vocab, tw, _ = data
    model = FFNNLM(vocab, SMALL, seed=1)
    sgd = SGD(model, 4)
    E0 = model.E.copy()
    index = np.arange(4)
    sgd.step(index, tw, 0.1, 0.01, 0.0)
    x, _ = tw.pairs(index)
    moved = np.flatnonzero(np.any(model.E != E0, axis=1))
    assert set(moved.tolist()) == set(np.unique(x).tolist())
    assert not model.dE.any()  # gradient rows are cleared after the step


def test_gradient_norm_clipping(data):
    vocab, tw, _ = data
    model = FFNNLM(vocab, SMALL, dtype=np.float64, seed=1)
    before = np.concatenate([model.E.ravel(), model.dense.ravel()])
    SGD(model, 16).step(np.arange(16), tw, 1.0, 0.0, 1e-3)
    after = np.concatenate([model.E.ravel(), model.dense.ravel()])
    assert np.linalg.norm(after - before) == pytest.approx(1e-3, rel=1e-9)


def test_save_load_round_trip_without_pickle(tmp_path, data):
    vocab, tw, vw = data
    model, history = fit(vocab, tw, vw, epochs=1)
    path = tmp_path / "m.npz"
    model.save(path, {"training": {"history": history}})
    with np.load(path, allow_pickle=False) as f:  # readable with pickle off
        assert json.loads(str(f["meta"][()]))["training"]["history"] == json.loads(json.dumps(history))
    back, meta = FFNNLM.load(path)
    assert back.vocab == vocab and back.config == model.config
    x, y = vw.pairs()
    assert np.array_equal(back.nll(x, y), model.nll(x, y))


def _bad_model(tmp_path, good, how):
    p = tmp_path / f"{how}.npz"
    with np.load(good, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["meta"][()]))
    if how == "truncated":
        p.write_bytes(good.read_bytes()[:2000])
        return p
    if how == "newer":
        meta["version"] = 99
    elif how == "nan":
        arrays["U"] = arrays["U"].copy()
        arrays["U"][0, 0] = np.nan
    elif how == "shape":
        arrays["W1"] = arrays["W1"][:-1]
    elif how == "missing":
        del arrays["c"]
    elif how == "foreign":
        arrays, meta = {"weights": np.zeros(3)}, None
    elif how == "object":
        np.savez(p, meta=arrays["meta"], E=np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return p
    if meta is not None:
        arrays["meta"] = np.array(json.dumps(meta))
    np.savez(p, **arrays)
    return p


@pytest.mark.parametrize(
    "how, message",
    [("truncated", "not a readable"), ("newer", "newer than this fflm"), ("nan", "NaN"), ("shape", "shape"),
     ("missing", "do not match"), ("foreign", "not an fflm model"), ("object", "pickle")],
)
def test_damaged_or_foreign_model_files_are_refused(tmp_path, data, how, message):
    vocab, tw, vw = data
    good = tmp_path / "good.npz"
    FFNNLM(vocab, SMALL, seed=1).save(good)
    with pytest.raises(FflmError, match=message):
        FFNNLM.load(_bad_model(tmp_path, good, how))


def test_probabilities_sum_to_one_and_never_give_s(data):
    vocab, tw, _ = data
    model = FFNNLM(vocab, ModelConfig(order=3, embed_dim=4, hidden=(8, 8), activation="sigmoid", direct=True), seed=2)
    x, _ = tw.pairs(np.arange(50))
    p = model.probs(x)
    assert np.allclose(p.sum(axis=1), 1.0) and (p[:, vocab.BOS_ID] == 0).all()
    # log10_probs is exactly the log of those probabilities
    y = np.full(50, 5, dtype=np.int32)
    assert np.allclose(model.log10_probs(x, y), np.log10(p[:, 5]))


def test_untrained_model_is_the_unigram_model(data):
    """Output bias = log add-one unigram frequencies: the first perplexity is near the unigram model's."""
    vocab, tw, vw = data
    model = FFNNLM(vocab, ModelConfig(order=3, embed_dim=4, hidden=(8,)), seed=1)
    model.params["U"][...] = 0  # switch off the context: the bias alone
    uni = NGramLM.estimate(tw, vocab, 1, smoothing="add-k", k=1.0)
    assert evaluate_ppl(model, vw) == pytest.approx(perplexity(score_ngram(uni, vw).log10), rel=1e-4)


def test_within_ten_percent_of_the_true_floor_on_the_embedded_corpus(synth_sentences):
    """The data's best possible perplexity is known: a trained model gets close, KN and add-one do not."""
    manifest = json.loads((SYNTH / "manifest.json").read_text())
    floor = manifest["files"]["test.txt"]["true_model_perplexity"]
    vocab = Vocabulary.build(synth_sentences["train"])
    W = lambda s: Windows.from_sentences(s, vocab, 3)  # noqa: E731
    set_threads(1)
    model = FFNNLM(vocab, ModelConfig(order=3, embed_dim=16, hidden=(64,), activation="relu"), seed=1)
    train(model, W(synth_sentences["train"]), W(synth_sentences["valid"]),
          TrainConfig(epochs=30, batch_size=32, lr=0.5, weight_decay=3e-4))
    test = W(synth_sentences["test"])
    ppl = perplexity(score_neural(model, test).log10)
    addone = NGramLM.estimate(W(synth_sentences["train"]), vocab, 3, smoothing="add-k", k=1.0)
    assert ppl <= 1.10 * floor, (ppl, floor)
    assert ppl < perplexity(score_ngram(addone, test).log10)
    assert ppl >= 0.97 * floor  # no model can beat the truth by more than sampling noise


def test_float64_model_trains(data):
    vocab, tw, vw = data
    model = FFNNLM(vocab, SMALL, dtype=np.float64, seed=1)
    history = train(model, tw, vw, TrainConfig(epochs=1, batch_size=32, lr=0.5))
    assert math.isfinite(history[0]["valid_ppl"]) and model.E.dtype == np.float64


@pytest.mark.parametrize("bad", [dict(order=1), dict(embed_dim=0), dict(hidden=(0,)), dict(activation="gelu"),
                                 dict(hidden=(), direct=True), dict(embed_dim=8, hidden=(16,), tied=True),
                                 dict(embed_dim=8, hidden=(8,), direct=True, tied=True),
                                 dict(fofe=(1.0,)), dict(fofe=(0.0,)), dict(fofe=(0.5,) * 5),
                                 dict(fofe=(0.5,), fofe_length=1000), dict(hidden=(8, 4), residual=True),
                                 dict(hidden=(), layer_norm=True), dict(hidden=(8,), layer_norm=True, direct=True)])
def test_impossible_configs(bad):
    with pytest.raises(FflmError):
        ModelConfig(**bad).check()


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=0), dict(lr=0.0), dict(lr=float("nan")),
                                 dict(clip=-1.0), dict(threads=-1), dict(loss="hinge"), dict(noise_samples=0),
                                 dict(noise_power=-1.0), dict(dropout=1.0), dict(embed_dropout=-0.1),
                                 dict(optimizer="rmsprop"), dict(optimizer="adam", loss="nce"),
                                 dict(warmup_steps=-1), dict(lr_decay=0.0), dict(lr_decay=1.5),
                                 dict(schedule="step")])
def test_impossible_training_settings(bad):
    with pytest.raises(FflmError):
        TrainConfig(**bad).check()


# --- the sampled objectives ---------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["nce", "neg"])
def test_sampled_objectives_train_deterministically_and_are_scored_exactly(data, loss):
    vocab, tw, vw = data
    set_threads(2)
    untrained = evaluate_ppl(FFNNLM(vocab, SMALL, seed=1), vw)
    a, ha = fit(vocab, tw, vw, epochs=3, loss=loss, noise_samples=20)
    b, _ = fit(vocab, tw, vw, epochs=3, loss=loss, noise_samples=20)
    assert np.array_equal(a.dense, b.dense) and np.array_equal(a.E, b.E)
    # learns, as measured with the exact softmax; negative sampling's logits estimate
    # log p(w|c) - log(k q(w)), not log p, so its softmax is the worse language model
    assert ha[-1]["valid_ppl"] < (0.8 if loss == "nce" else 0.95) * untrained
    assert ha[0]["train_ppl"] is None and ha[0]["train_loss"] > 0  # a sampled loss is no perplexity
    assert evaluate_ppl(a, vw) == pytest.approx(min(r["valid_ppl"] for r in ha), rel=1e-6)


def test_a_sampled_step_moves_only_the_sampled_output_columns(data):
    vocab, tw, _ = data
    model = FFNNLM(vocab, SMALL, seed=1)
    noise = make_noise(model, TrainConfig(loss="nce", noise_samples=5))
    sgd = SGD(model, 8, noise)
    U0, c0 = model.U_all.copy(), model.c.copy()
    sgd.step(np.arange(8), tw, 0.5, 1e-3, 0.0)
    _, y = tw.pairs(np.arange(8))
    sampled = set(y.tolist()) | set(noise.words.tolist())
    moved = set(np.flatnonzero(np.any(model.U_all != U0, axis=0)).tolist())
    assert moved == sampled and set(np.flatnonzero(model.c != c0).tolist()) == sampled


def test_noise_follows_the_flattened_unigram_distribution(data):
    vocab, _, _ = data
    noise = Noise(vocab.counts, 4000, 0.75, "nce", seed=1, dtype=np.float32)
    draws = np.concatenate([noise.draw().copy() for _ in range(25)])  # 100,000 words
    q = np.asarray(vocab.counts, dtype=float) ** 0.75
    q[Vocabulary.BOS_ID] = 0
    q /= q.sum()
    freq = np.bincount(draws, minlength=len(vocab)) / len(draws)
    assert freq[Vocabulary.BOS_ID] == 0
    assert np.abs(freq - q).max() < 4 * np.sqrt(q.max() / len(draws))  # within sampling noise
    assert np.allclose(noise.log_kq[q > 0], np.log(4000 * q[q > 0]), rtol=1e-5)


def test_dropout_trains_deterministically_and_is_off_at_evaluation(data):
    vocab, tw, vw = data
    set_threads(2)
    untrained = evaluate_ppl(FFNNLM(vocab, SMALL, seed=1), vw)
    a, ha = fit(vocab, tw, vw, epochs=3, dropout=0.3, embed_dropout=0.1)
    b, _ = fit(vocab, tw, vw, epochs=3, dropout=0.3, embed_dropout=0.1)
    plain, _ = fit(vocab, tw, vw, epochs=3)
    assert np.array_equal(a.dense, b.dense) and np.array_equal(a.E, b.E)
    assert not np.array_equal(a.dense, plain.dense)  # the masks changed the training
    assert ha[-1]["valid_ppl"] < 0.8 * untrained
    # scoring is deterministic and mask-free: the same numbers twice, equal to the history's best
    assert evaluate_ppl(a, vw) == evaluate_ppl(a, vw) == pytest.approx(min(r["valid_ppl"] for r in ha), rel=1e-6)


@pytest.mark.parametrize("optimizer, lr", [("adagrad", 0.05), ("adam", 0.003)])
def test_adaptive_optimizers_train_deterministically(data, optimizer, lr):
    vocab, tw, vw = data
    set_threads(2)
    untrained = evaluate_ppl(FFNNLM(vocab, SMALL, seed=1), vw)
    runs = []
    for _ in range(2):
        model = FFNNLM(vocab, SMALL, seed=1)
        h = train(model, tw, vw, TrainConfig(epochs=3, batch_size=32, lr=lr, optimizer=optimizer))
        runs.append((model, h))
    (a, ha), (b, _) = runs
    assert np.array_equal(a.dense, b.dense) and np.array_equal(a.E, b.E)
    assert math.isfinite(ha[-1]["valid_ppl"]) and ha[-1]["valid_ppl"] < 0.8 * untrained


def test_warmup_and_decay_shape_the_learning_rate(data):
    s = Schedule(0.8, 0.003, 4, decay=0.5, warmup_steps=4)
    assert [s.step_lr(i) for i in range(6)] == [0.2, 0.4, 0.6000000000000001, 0.8, 0.8, 0.8]
    s.end_epoch()
    assert s.step_lr(10) == 0.4  # after warm-up, the epoch's rate
    vocab, tw, vw = data
    # max_halvings=1: the halving before the cap comes after epoch 2, so epoch 2 shows the decay alone
    model, history = fit(vocab, tw, vw, epochs=3, warmup_steps=50, lr_decay=0.7, max_halvings=1)
    assert [r["lr"] for r in history][:2] == [0.5, 0.35]  # the logged rate is each epoch's, after warm-up
    assert history[-1]["valid_ppl"] < history[0]["valid_ppl"]
    # warm-up changes only the first steps: one step in, the two runs already differ
    a, b = FFNNLM(vocab, SMALL, seed=1), FFNNLM(vocab, SMALL, seed=1)
    train(a, tw, None, TrainConfig(epochs=1, batch_size=32, lr=0.5, warmup_steps=10**9))
    train(b, tw, None, TrainConfig(epochs=1, batch_size=32, lr=0.5))
    untrained = FFNNLM(vocab, SMALL, seed=1)
    moved = lambda m: float(np.abs(m.dense - untrained.dense).sum())  # noqa: E731
    assert moved(a) < 0.01 * moved(b)  # a rate that never warms up barely moves the weights


def test_tied_embeddings_train_save_and_load(tmp_path, data):
    vocab, tw, vw = data
    config = ModelConfig(order=3, embed_dim=16, hidden=(16,), tied=True)
    model = FFNNLM(vocab, config, seed=1)
    assert "U" not in model.params and np.shares_memory(model.U_all, model.E)
    assert config.n_params(len(vocab)) == ModelConfig(order=3, embed_dim=16, hidden=(16,)).n_params(len(vocab)) - 16 * len(vocab)
    untrained = evaluate_ppl(model, vw)
    history = train(model, tw, vw, TrainConfig(epochs=3, batch_size=32, lr=0.5))
    assert history[-1]["valid_ppl"] < 0.8 * untrained
    model.save(tmp_path / "t.npz")
    loaded, _ = FFNNLM.load(tmp_path / "t.npz")
    assert loaded.config.tied and np.shares_memory(loaded.U_all, loaded.E)
    assert evaluate_ppl(loaded, vw) == pytest.approx(evaluate_ppl(model, vw), rel=1e-9)
    with pytest.raises(FflmError, match="softmax only"):
        SGD(model, 8, make_noise(model, TrainConfig(loss="nce")))


# --- issue 16: history beyond the window, deeper networks, a schedule to zero -----------------------
MODERN = [ModelConfig(order=3, embed_dim=8, hidden=(16,), fofe=(0.7,)),
          ModelConfig(order=3, embed_dim=8, hidden=(16,), fofe=(0.5, 0.9), fofe_length=12, cross_sentence=True),
          ModelConfig(order=3, embed_dim=8, hidden=(16, 16, 16), layer_norm=True, residual=True, fofe=(0.6,))]


@pytest.mark.parametrize("config", MODERN, ids=["fofe", "dual-cross", "deep"])
def test_modern_models_train_save_load_and_sum_to_one(tmp_path, data, synth_sentences, config):
    vocab = data[0]
    W = lambda s: Windows.from_sentences(s, vocab, config.span, config.cross_sentence)  # noqa: E731
    tw, vw = W(synth_sentences["train"][:1500]), W(synth_sentences["valid"][:300])
    model = FFNNLM(vocab, config, seed=1)
    untrained = evaluate_ppl(model, vw)
    history = train(model, tw, vw, TrainConfig(epochs=2, batch_size=32, lr=0.5))
    assert history[-1]["valid_ppl"] < 0.8 * untrained
    model.save(tmp_path / "m.npz")
    back, _ = FFNNLM.load(tmp_path / "m.npz")
    assert back.config == config
    x, y = vw.pairs()
    assert x.shape[1] == config.span - 1 >= config.order - 1
    assert np.array_equal(back.nll(x, y), model.nll(x, y))
    p = model.probs(x[:40])
    assert np.allclose(p.sum(axis=1), 1.0) and (p[:, vocab.BOS_ID] == 0).all()
    # the sentence API reads the same history: logprob with the whole sentence as context
    words = synth_sentences["valid"][0]
    scores = [s for _, s in model.token_scores(words)]
    assert scores[-2] == pytest.approx(model.logprob(words[-1], words[:-1]), abs=1e-6)


def test_fofe_sees_beyond_the_window_and_stops_at_the_sentence_start(data):
    vocab = data[0]
    config = ModelConfig(order=2, embed_dim=4, hidden=(8,), fofe=(0.8,), fofe_length=6)
    model = FFNNLM(vocab, config, seed=3)
    w = list(vocab.words[3:9])
    # the window (one word) is the same; the words before it differ: only the FOFE model can tell
    assert model.logprob(w[0], [w[1], w[2]]) != model.logprob(w[0], [w[3], w[2]])
    plain = FFNNLM(vocab, ModelConfig(order=2, embed_dim=4, hidden=(8,)), seed=3)
    assert plain.logprob(w[0], [w[1], w[2]]) == plain.logprob(w[0], [w[3], w[2]])
    # sentence by sentence, what came before <s> is invisible, however long the bag
    x = np.array([[vocab.id(w[4]), 1, 1, 1, 1, vocab.id(w[2])],
                  [vocab.id(w[5]), 1, 1, 1, 1, vocab.id(w[2])]], dtype=np.int32)
    y = np.array([vocab.id(w[0])] * 2, dtype=np.int32)
    a, b = model.nll(x, y)
    assert a == b


def test_layer_norm_and_residual_train_eight_layers(data):
    """Eight tanh layers: plain, the deep net barely moves in two epochs; with residual
    connections and layer norm it trains (what --residual --layer-norm are for)."""
    vocab, tw, vw = data
    deep = dict(order=3, embed_dim=8, hidden=(32,) * 8)
    ppl = {}
    for name, extra in (("plain", {}), ("resnorm", dict(layer_norm=True, residual=True))):
        model = FFNNLM(vocab, ModelConfig(**deep, **extra), seed=1)
        history = train(model, tw, vw, TrainConfig(epochs=2, batch_size=32, lr=0.1))
        ppl[name] = history[-1]["valid_ppl"]
    assert ppl["resnorm"] < ppl["plain"], ppl


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_a_decay_schedule_reaches_zero_at_the_last_step(data, kind):
    vocab, tw, vw = data
    steps = 3 * -(-len(tw) // 32)
    model, history = fit(vocab, tw, vw, epochs=3, schedule=kind, warmup_steps=20, optimizer="adam")
    lrs = [r["lr"] for r in history]
    assert lrs[0] > lrs[1] > lrs[2] and lrs[2] <= 0.5 / (steps - 20) + 1e-12  # the last step's rate: lr / steps or less
    assert history[-1]["valid_ppl"] < history[0]["valid_ppl"]
    a, _ = fit(vocab, tw, vw, epochs=3, schedule=kind, warmup_steps=20, optimizer="adam")
    assert np.array_equal(a.dense, model.dense)  # deterministic
