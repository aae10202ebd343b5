"""The embedded corpus: reproducible, and its stated entropy is the truth."""

import hashlib
import json

import numpy as np

from conftest import SYNTH
from fflm import synth


def test_committed_corpus_is_what_the_generator_makes(tmp_path):
    manifest = synth.write_corpus(tmp_path)
    committed = json.loads((SYNTH / "manifest.json").read_text())
    assert manifest == committed
    for name, info in committed["files"].items():
        assert hashlib.sha256((SYNTH / name).read_bytes()).hexdigest() == info["sha256"]


def test_process_is_normalised():
    p = synth.make_process()
    totals = p["trans"].sum(axis=2)
    assert np.allclose(totals[totals > 0], 1.0)
    for probs in p["word_prob"]:
        assert abs(probs.sum() - 1) < 1e-12
    assert len(set(p["words"])) == len(p["words"])


def test_entropy_rate_agrees_with_a_large_sample():
    p = synth.make_process()
    h, mean_len = synth.entropy_rate(p)
    sents = synth.sample(p, 20000, np.random.default_rng(7))
    lp = synth.true_log_probs(p, sents)
    tokens = sum(len(s) + 1 for s in sents)
    assert tokens == len(lp)
    # ratio estimator: per-sentence losses are i.i.d.; 20k sentences give ~0.3% precision
    assert abs(-lp.mean() / h - 1) < 0.01
    assert abs(tokens / len(sents) / mean_len - 1) < 0.02
