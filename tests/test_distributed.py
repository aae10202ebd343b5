"""Data-parallel training on Ray (fflm/distributed.py): one worker is the one-process run bit for
bit, N workers follow the global batch, local SGD averages models, checkpoints resume, and a
killed worker stops the run with its last checkpoint intact. A local Ray of two CPUs serves the
module (tests/test_ray_cluster.py starts a cluster of two nodes)."""

import copy
import hashlib
import math
import os
import signal

import numpy as np
import pytest
import ray

from fflm import Vocabulary, Windows
from fflm.distributed import Replica, WorkerLost, distribute
from fflm.model import FFNNLM, ModelConfig
from fflm.train import Interrupted, TrainConfig, Trainer, set_threads

SMALL = ModelConfig(order=3, embed_dim=8, hidden=(16,))
TIED = ModelConfig(order=3, embed_dim=8, hidden=(8,), tied=True)
ADAPTIVE_TIED = ModelConfig(order=3, embed_dim=8, hidden=(8,), softmax="adaptive", cutoffs=(30, 80), tied=True)
FOFE_DEEP = ModelConfig(order=3, embed_dim=8, hidden=(16, 16), fofe=(0.7,), fofe_length=2, layer_norm=True,
                        residual=True)
# every output layer, optimizer, dropout and schedule the one-process tests cover
RUNS = {
    "sgd+dropout": (SMALL, dict(dropout=0.2, embed_dropout=0.1, weight_decay=1e-4)),
    "adam+clip": (SMALL, dict(optimizer="adam", lr=0.003, clip=0.5)),
    "adagrad": (SMALL, dict(optimizer="adagrad", lr=0.05)),
    "nce": (SMALL, dict(loss="nce", noise_samples=20)),
    "adaptive-tied+dropout": (ADAPTIVE_TIED, dict(dropout=0.2)),
    "fofe-deep+adam-linear": (FOFE_DEEP, dict(optimizer="adam", lr=0.003, schedule="linear", warmup_steps=10)),
}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    set_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(synth_sentences):
    train_s = synth_sentences["train"][:600]
    vocab = Vocabulary.build(train_s)
    W = lambda s: Windows.from_sentences(s, vocab, 3)  # noqa: E731
    return vocab, W(train_s), W(synth_sentences["valid"][:200])


def make(data, model_config, options, epochs=2, batch_size=32, **kw):
    vocab, tw, vw = data
    model = FFNNLM(vocab, model_config, seed=3)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, seed=3, min_improvement=0.0, threads=1, **options)
    return Trainer(model, tw, vw, config, snapshot_every=7, **kw)


def run(trainer, workers=None, sync_every=1, **kw):
    """Run in one process (workers None) or on Ray workers; the workers are stopped after."""
    sgd = distribute(trainer, workers, sync_every) if workers else None
    try:
        trainer.run(**kw)
    finally:
        if sgd is not None:
            sgd.close()
    return trainer


@pytest.mark.parametrize("name", sorted(RUNS))
def test_one_worker_is_the_one_process_run_bit_for_bit(data, name):
    model_config, options = RUNS[name]
    alone = run(make(data, model_config, options))
    ray_run = run(make(data, model_config, options), workers=1)
    assert np.array_equal(alone.model.E, ray_run.model.E)
    assert np.array_equal(alone.model.dense, ray_run.model.dense)
    assert [r["valid_ppl"] for r in alone.history] == [r["valid_ppl"] for r in ray_run.history]
    assert [r["train_loss"] for r in alone.history] == [r["train_loss"] for r in ray_run.history]


@pytest.mark.parametrize("name", ["adam+clip", "adagrad", "nce", "fofe-deep+adam-linear", "adaptive-tied"])
def test_two_workers_follow_the_one_process_run_of_the_global_batch(data, name):
    # a batch of 33: shares of 16 and 17, so each worker's gradient must be weighted by its share
    model_config, options = RUNS.get(name, (ADAPTIVE_TIED, {}))
    alone = run(make(data, model_config, options, epochs=1, batch_size=33))
    two = run(make(data, model_config, options, epochs=1, batch_size=33), workers=2)
    scale = np.abs(alone.model.dense).max()
    assert np.abs(alone.model.dense - two.model.dense).max() < 1e-4 * scale
    assert np.abs(alone.model.E - two.model.E).max() < 1e-4 * np.abs(alone.model.E).max()
    assert two.history[0]["valid_ppl"] == pytest.approx(alone.history[0]["valid_ppl"], rel=1e-4)
    assert two.history[0]["train_loss"] == pytest.approx(alone.history[0]["train_loss"], rel=1e-5)


@pytest.mark.parametrize("model_config", [SMALL, TIED], ids=["untied", "tied"])
def test_local_sgd_averages_the_replicas_into_one_model_that_learns(data, model_config):
    sync = run(make(data, model_config, {}, epochs=2))
    t = make(data, model_config, {}, epochs=2)
    sgd = distribute(t, 2, sync_every=4)
    try:
        t.run()
        sgd.flush()
        states = ray.get([w.state.remote() for w in sgd.workers])
        stats = sgd.stats()
    finally:
        sgd.close()
    assert np.array_equal(states[0][0], states[1][0]) and np.array_equal(states[0][1], states[1][1])
    assert np.array_equal(states[0][0], t.model.E) and np.array_equal(states[0][1], t.model.dense)
    local, reference = t.history[-1]["valid_ppl"], sync.history[-1]["valid_ppl"]
    assert local != reference and local == pytest.approx(reference, rel=0.03)
    assert 0 < stats["bytes_out_per_step"]


def replicas(data, n=2, sync_every=4, options=None, model_config=SMALL):
    """Replicas in this process (no Ray), equal to a fresh model, as RaySGD sets them up."""
    vocab, tw, _ = data
    model = FFNNLM(vocab, model_config, seed=3)
    config = TrainConfig(batch_size=32, seed=3, **(options or {}))
    out = []
    for r in range(n):
        rep = Replica(r, n, sync_every, model.describe(), config.to_dict(), 1)
        rep.set_state((model.E, model.dense, [], [], 0))
        rep.begin_window()
        out.append(rep)
    return model, out


@pytest.mark.parametrize("model_config", [SMALL, TIED], ids=["rows-that-moved", "tied-all-rows"])
def test_model_averaging_is_the_mean_of_the_replicas(data, model_config):
    _, tw, _ = data
    model, reps = replicas(data, model_config=model_config)
    rng = np.random.default_rng(0)
    for rep in reps:  # two different local steps each
        for _ in range(2):
            x, y = tw.pairs(rng.choice(len(tw), 16, replace=False))
            rep.step({"x": x, "y": y, "weight": 0.5, "lr": 0.5, "weight_decay": 0.0, "clip": 0.0})
    E = [rep.model.E.copy() for rep in reps]
    dense = [rep.model.dense.copy() for rep in reps]
    # what the object store would hold: copies (a replica publishes views of its own arrays)
    parts = [copy.deepcopy(rep.step({"publish": True})[1]) for rep in reps]
    for rep in reps:
        rep.step({}, *parts)
    mean_E, mean_dense = (E[0] + E[1]) / 2, (dense[0] + dense[1]) / 2
    moved = (E[0] != model.E).any(axis=1) | (E[1] != model.E).any(axis=1)
    if model_config.tied:  # the output layer moves every row
        assert moved.all()
    else:  # some rows moved, others not: both cases are checked
        assert 0 < moved.sum() < len(moved)
    for rep in reps:
        np.testing.assert_allclose(rep.model.dense, mean_dense, rtol=0, atol=1e-6)
        np.testing.assert_allclose(rep.model.E, mean_E, rtol=0, atol=1e-6)
        assert np.array_equal(rep.model.E[~moved], model.E[~moved])
    assert np.array_equal(reps[0].model.E, reps[1].model.E)
    assert np.array_equal(reps[0].model.dense, reps[1].model.dense)


@pytest.mark.parametrize("sync_every", [1, 3])
def test_a_distributed_run_resumes_bit_identically(data, tmp_path, sync_every):
    options = dict(dropout=0.2)  # worker 1's dropout stream must come back too
    whole = run(make(data, SMALL, options), workers=2, sync_every=sync_every)
    part = make(data, SMALL, options)
    path = tmp_path / "run.ckpt.npz"
    with pytest.raises(Interrupted):
        run(part, workers=2, sync_every=sync_every, should_stop=lambda t: t.steps == 30,
            on_checkpoint=lambda t: t.save_checkpoint(path))
    _, tw, vw = data
    resumed, _ = Trainer.load_checkpoint(path, lambda model: (tw, vw))
    assert len(resumed.worker_rng) == 1
    run(resumed, workers=2, sync_every=sync_every)
    if sync_every == 1:  # with local SGD the checkpoint is an extra average the whole run did not take
        assert np.array_equal(resumed.model.dense, whole.model.dense)
        assert [r["valid_ppl"] for r in resumed.history] == [r["valid_ppl"] for r in whole.history]
    else:  # so compare with a run that averaged there too
        again = make(data, SMALL, options)
        with pytest.raises(Interrupted):
            run(again, workers=2, sync_every=sync_every, should_stop=lambda t: t.steps == 30,
                on_checkpoint=lambda t: t.save_checkpoint(tmp_path / "b.npz"))
        second, _ = Trainer.load_checkpoint(tmp_path / "b.npz", lambda model: (tw, vw))
        run(second, workers=2, sync_every=sync_every)
        assert np.array_equal(resumed.model.dense, second.model.dense)
        assert math.isfinite(resumed.history[-1]["valid_ppl"])


def test_a_rollback_reaches_the_workers(data):
    def poisoned(trainer, workers=None):
        """A NaN loss at step 25: the trainer rolls back to its snapshot and halves the rate."""
        sgd = distribute(trainer, workers) if workers else trainer.sgd
        step = sgd.step

        def bad(index, windows, lr, wd, clip):
            loss = step(index, windows, lr, wd, clip)
            return math.nan if trainer.steps + 1 == 25 else loss

        sgd.step = bad
        try:
            trainer.run()
        finally:
            if workers:
                sgd.close()
        return trainer

    alone, two = poisoned(make(data, SMALL, {})), poisoned(make(data, SMALL, {}), workers=1)
    assert alone.rollbacks == two.rollbacks == 1
    assert np.array_equal(alone.model.dense, two.model.dense)


def test_a_killed_worker_stops_the_run_and_leaves_the_checkpoint_resumable(data, tmp_path):
    t = make(data, SMALL, {}, epochs=2)
    sgd = distribute(t, 2)
    path = tmp_path / "run.ckpt.npz"

    def should_stop(t):
        if t.steps == 10:
            t.save_checkpoint(path)
        if t.steps == 20:
            os.kill(sgd.pids[1], signal.SIGKILL)
        return False

    try:
        with pytest.raises(WorkerLost, match=r"worker 1 of 2 died"):
            t.run(should_stop=should_stop)
    finally:
        sgd.close()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _, tw, vw = data
    resumed, _ = Trainer.load_checkpoint(path, lambda model: (tw, vw))
    assert resumed.steps == 10
    resumed.run()  # in one process now
    assert math.isfinite(resumed.history[-1]["valid_ppl"]) and resumed.epoch == 3
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_the_cli_refuses_more_workers_than_the_cluster_has(run_cli, tmp_path):
    from conftest import SYNTH

    code, _, err = run_cli("train", SYNTH / "train.txt", "-o", tmp_path / "m.npz", "--epochs", "1",
                           "--ray", "--workers", "3", "--threads", "1", "-q")
    assert code == 1 and err.count("\n") == 1 and "3 workers of 1 thread(s) need 3 CPUs" in err
    assert not (tmp_path / "m.npz").exists()


def test_prepare_on_ray_writes_the_same_folder_byte_for_byte(tmp_path):
    from conftest import SYNTH
    from fflm.prepared import prepare

    for name, ray_address in (("plain", None), ("ray", "local")):  # "local": the module's Ray, already up
        prepare([SYNTH / "train.txt", SYNTH / "valid.txt"], tmp_path / name, chunk_bytes=997, ray=ray_address,
                valid_share=0.1, seed=4)
    files = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*") if p.is_file())
    assert len(files) == 6  # train/ and valid/, each with its ids, vocabulary and manifest
    for f in files:
        assert (tmp_path / "ray" / f).read_bytes() == (tmp_path / "plain" / f).read_bytes(), f
    assert ray.is_initialized()  # a Ray it did not start is left running


@pytest.mark.parametrize("shards", [1, 3, 16])
def test_counting_in_shards_on_ray_gives_the_same_tables(shards):
    from conftest import shared_path
    from fflm import read_sentences
    from fflm.ngram import _count, _count_sharded

    sentences = read_sentences(shared_path("brown", "valid.txt"))
    vocab = Vocabulary.build(sentences)
    ids = Windows.from_sentences(sentences, vocab, 5).ids
    whole, sharded = _count(ids, len(vocab), 5), _count_sharded(ids, len(vocab), 5, shards)
    assert len(whole) == len(sharded) == 5
    for a, b in zip(whole, sharded):
        assert set(a) == set(b)
        for name in a:
            assert np.array_equal(a[name], b[name]), name


def test_ngram_train_on_ray_writes_the_same_arpa(run_cli, tmp_path):
    from conftest import shared_path

    train = shared_path("brown", "train.txt")
    code, _, _ = run_cli("ngram", "train", train, "-o", tmp_path / "a.arpa", "--order", "4", "-q")
    code_ray, _, _ = run_cli("ngram", "train", train, "-o", tmp_path / "r.arpa", "--order", "4", "--ray", "-q")
    assert code == code_ray == 0
    assert (tmp_path / "a.arpa").read_bytes() == (tmp_path / "r.arpa").read_bytes()
