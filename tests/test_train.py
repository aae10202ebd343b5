"""Training that does not lose work: checkpoints that resume bit-identically, rollback on
divergence, and checkpoint files validated like model files."""

import math
import zipfile

import numpy as np
import pytest

from fflm import FflmError, Vocabulary, Windows
from fflm.errors import FflmWarning
from fflm.model import FFNNLM, ModelConfig
from fflm.train import Interrupted, TrainConfig, Trainer, set_threads

SMALL = ModelConfig(order=3, embed_dim=8, hidden=(16,))


@pytest.fixture(scope="module")
def data(synth_sentences):
    train_s = synth_sentences["train"][:1200]
    vocab = Vocabulary.build(train_s)
    W = lambda s: Windows.from_sentences(s, vocab, 3)  # noqa: E731
    return vocab, W(train_s), W(synth_sentences["valid"][:300])


# every kind of state a run carries: dropout masks, Adam/Adagrad moments, the noise stream, clipping
CONFIGS = {
    "sgd+dropout": dict(dropout=0.2, embed_dropout=0.1, weight_decay=1e-4),
    "adam": dict(optimizer="adam", lr=0.003, dropout=0.1),
    "adagrad+clip": dict(optimizer="adagrad", lr=0.05, clip=1.0),
    "nce": dict(loss="nce", noise_samples=20),
    "adaptive+adam": dict(optimizer="adam", lr=0.003, dropout=0.1),
    "adaptive-tied+sgd": dict(dropout=0.2, weight_decay=1e-4),
    "fofe-deep+adam-linear": dict(optimizer="adam", lr=0.003, schedule="linear", warmup_steps=10, dropout=0.1),
}
# the adaptive softmax (fflm/output.py), untied and tied, for the runs named after it
MODELS = {
    "adaptive+adam": ModelConfig(order=3, embed_dim=8, hidden=(16,), softmax="adaptive", cutoffs=(30, 80)),
    "adaptive-tied+sgd": ModelConfig(order=3, embed_dim=8, hidden=(8,), softmax="adaptive", cutoffs=(30, 80),
                                     tied=True),
    # a bag two words long, so the model's span is the data's order 3
    "fofe-deep+adam-linear": ModelConfig(order=3, embed_dim=8, hidden=(16, 16), fofe=(0.7,), fofe_length=2,
                                         layer_norm=True, residual=True),
}


def make(data, config, model_config=SMALL, **kw):
    vocab, tw, vw = data
    model = FFNNLM(vocab, model_config, seed=3)
    return Trainer(model, tw, vw, TrainConfig(epochs=3, batch_size=32, seed=3, min_improvement=0.0, **config), **kw)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("stop_at", [7, 60])  # within the first epoch; within the second (38 batches an epoch)
def test_an_interrupted_run_resumes_bit_identically(data, tmp_path, name, stop_at):
    set_threads(1)
    model_config = MODELS.get(name, SMALL)
    whole = make(data, CONFIGS[name], model_config, snapshot_every=5)
    whole.run()
    part = make(data, CONFIGS[name], model_config, snapshot_every=5)
    path = tmp_path / "run.ckpt.npz"
    with pytest.raises(Interrupted):
        part.run(should_stop=lambda t: t.steps == stop_at,
                 on_checkpoint=lambda t: t.save_checkpoint(path, {"note": "x"}))
    assert part.steps == stop_at
    vocab, tw, vw = data
    resumed, meta = Trainer.load_checkpoint(path, lambda model: (tw, vw))
    assert meta == {"note": "x"} and resumed.steps == stop_at
    resumed.run()
    assert np.array_equal(resumed.model.E, whole.model.E)
    assert np.array_equal(resumed.model.dense, whole.model.dense)
    assert [r["valid_ppl"] for r in resumed.history] == [r["valid_ppl"] for r in whole.history]
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in whole.history]


def test_a_finished_run_checkpoints_as_done(data, tmp_path):
    t = make(data, {})
    t.run()
    t.save_checkpoint(tmp_path / "c.npz")
    _, tw, vw = data
    again, _ = Trainer.load_checkpoint(tmp_path / "c.npz", lambda model: (tw, vw))
    assert again.done and again.run() == t.history


def poison(trainer, at_steps):
    """Make the optimizer step at the given step numbers blow the weights up (as a too-high
    learning rate would), returning a NaN loss."""
    step = trainer.sgd.step

    def bad_step(index, windows, lr, wd, clip):
        if trainer.steps + 1 in at_steps:
            step(index, windows, lr, wd, clip)
            trainer.model.dense[:] = np.nan
            return math.nan
        return step(index, windows, lr, wd, clip)

    trainer.sgd.step = bad_step


@pytest.mark.parametrize("model_config", [SMALL, MODELS["adaptive+adam"]], ids=["full", "adaptive"])
def test_a_nan_loss_rolls_back_halves_the_rate_and_goes_on(data, model_config):
    t = make(data, {"lr": 0.4}, model_config, snapshot_every=10)
    poison(t, {25, 50})
    events = []
    history = t.run(on_event=events.append)
    assert len(events) == 2 and "rolled back" in events[0] and "step 20" in events[0]
    assert t.rollbacks == 2 and history[0]["lr"] == pytest.approx(0.4 / 4)  # both in epoch 1
    assert all(math.isfinite(r["valid_ppl"]) for r in history)
    assert np.isfinite(t.model.dense).all()
    assert history[-1]["valid_ppl"] < history[0]["valid_ppl"]  # it went on learning


def test_too_many_rollbacks_stop_with_the_best_model_intact(data):
    t = make(data, {}, snapshot_every=10, max_rollbacks=3)
    n = len(t.windows) // 32 + 1  # batches an epoch
    poison(t, set(range(n + 5, 10 * n)))  # epoch 1 is fine, then every step diverges
    best = []
    with pytest.raises(FflmError, match="diverged 4 times.*smaller --lr"):
        t.run(on_epoch=lambda t: best.append((t.model.E.copy(), t.model.dense.copy())))
    assert np.array_equal(t.model.dense, best[0][1]) and np.array_equal(t.model.E, best[0][0])


def test_the_library_train_warns_about_rollbacks(data):
    from fflm.train import train

    vocab, tw, vw = data
    model = FFNNLM(vocab, SMALL, seed=3)
    # a learning rate this high blows the loss up within the first 100 steps; halving recovers
    with pytest.warns(FflmWarning, match="rolled back"):
        history = train(model, tw, vw, TrainConfig(epochs=4, batch_size=32, lr=50))
    assert math.isfinite(history[-1]["valid_ppl"]) and history[-1]["lr"] < 50


def test_nan_weights_never_reach_a_model_file(data, tmp_path):
    vocab, _, _ = data
    model = FFNNLM(vocab, SMALL, seed=3)
    model.save(tmp_path / "m.npz")
    before = (tmp_path / "m.npz").read_bytes()
    model.dense[3] = np.inf
    with pytest.raises(FflmError, match="NaN or infinite"):
        model.save(tmp_path / "m.npz")
    assert (tmp_path / "m.npz").read_bytes() == before


def test_damaged_checkpoints_are_refused(data, tmp_path):
    t = make(data, {"optimizer": "adam", "lr": 0.003})
    with pytest.raises(Interrupted):
        t.run(should_stop=lambda t: t.steps == 5, on_checkpoint=lambda t: t.save_checkpoint(tmp_path / "c.npz"))
    vocab, tw, vw = data
    same = lambda model: (tw, vw)  # noqa: E731
    raw = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FflmError, match="not a readable fflm checkpoint"):
        Trainer.load_checkpoint(tmp_path / "cut.npz", same)
    with pytest.raises(FflmError, match="not an fflm checkpoint"):
        FFNNLM(vocab, SMALL).save(tmp_path / "model.npz")
        Trainer.load_checkpoint(tmp_path / "model.npz", same)
    # another corpus: the saved order no longer fits
    other = Windows.from_sentences([["a", "b"]] * 10, vocab, 3)
    with pytest.raises(FflmError, match="order"):
        Trainer.load_checkpoint(tmp_path / "c.npz", lambda model: (other, None))
    # a NaN in the optimizer's moments
    with np.load(tmp_path / "c.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["opt_dense1"] = arrays["opt_dense1"].copy()
    arrays["opt_dense1"][0] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(FflmError, match="opt_dense1 contains NaN"):
        Trainer.load_checkpoint(tmp_path / "nan.npz", same)
    # a missing array
    del arrays["opt_E0"]
    np.savez(tmp_path / "missing.npz", **arrays)
    with pytest.raises(FflmError, match="lacks opt_E0"):
        Trainer.load_checkpoint(tmp_path / "missing.npz", same)
    assert zipfile.is_zipfile(tmp_path / "c.npz")


_ORDER_SCRIPT = """
import warnings
{first}
from threadpoolctl import threadpool_info
from fflm import Vocabulary, Windows
from fflm.model import FFNNLM, ModelConfig
from fflm.train import TrainConfig, train
s = [["a", "b", "c"]] * 20
v = Vocabulary.build(s)
spins = any(i["internal_api"] == "openblas" and i["num_threads"] > 1 for i in threadpool_info())
for precision in ("fp32", "bf16"):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        train(FFNNLM(v, ModelConfig(order=3, embed_dim=4, hidden=(8,)), seed=0), Windows.from_sentences(s, v, 3),
              None, TrainConfig(epochs=1, precision=precision))
    print(precision, spins, any("imported before fflm" in str(r.message) for r in rec))
"""


@pytest.mark.parametrize("first", ["import numpy", "import fflm"])
def test_numpy_imported_first_is_reported_in_fp32(first):
    """numpy loaded before fflm: OpenBLAS read its settings before fflm could let its idle
    threads sleep, and fp32 training (which calls BLAS) says so; bf16 (which does not) and a
    script that imports fflm first do not."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", _ORDER_SCRIPT.format(first=first)], capture_output=True, text=True,
                         env=env, check=True).stdout.split()
    (p32, spins, warned32), (p16, _, warned16) = out[:3], out[3:]
    assert (p32, p16) == ("fp32", "bf16")
    assert warned32 == str(first == "import numpy" and spins == "True") and warned16 == "False"
