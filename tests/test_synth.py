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


def test_a_corpus_of_any_size_and_vocabulary(tmp_path, run_cli):
    """--tokens / --vocab: the sizes asked for, the words all distinct, the true model's stated
    perplexity exactly what the process gives the written sentences, the same seed the same files."""
    from fflm import read_sentences

    code, out, err = run_cli("data", "synth", "-o", tmp_path / "a", "--tokens", "40000", "--vocab", "3000", "--json")
    assert code == 0, err
    manifest = json.loads(out)
    assert manifest["vocabulary"] == 3000 == sum(c["words"] for c in manifest["classes"])
    process = synth.make_process(2003, vocab=3000)
    assert len(set(process["words"])) == 3000
    for name, want in (("train", 40000), ("valid", 4000), ("test", 4000)):
        info = manifest["files"][f"{name}.txt"]
        sentences = read_sentences(tmp_path / "a" / f"{name}.txt")
        lp = synth.true_log_probs(process, sentences)
        assert info["tokens"] == len(lp) and want <= len(lp) < want + 200  # stops at the sentence passing it
        assert info["sentences"] == len(sentences)
        assert info["true_model_perplexity"] == round(float(np.exp(-lp.mean())), 4)
    assert run_cli("data", "synth", "-o", tmp_path / "b", "--tokens", "40000", "--vocab", "3000", "--json")[1] == out


def test_the_stream_samples_the_process_it_states():
    """The side-by-side sampler draws from the same process as the one-sentence sampler: its
    sample's entropy is the exact entropy rate, its sentences as long as expected."""
    p = synth.make_process()
    h, mean_len = synth.entropy_rate(p)
    chunks = list(synth.sample_stream(p, 200_000, np.random.default_rng(5), lanes=256, steps=64))
    sentences = [s for chunk, _ in chunks for s in chunk]
    logp = sum(lp for _, lp in chunks)
    tokens = sum(len(s) + 1 for s in sentences)
    assert abs(-logp / tokens / h - 1) < 0.01
    assert abs(tokens / len(sentences) / mean_len - 1) < 0.02


def test_bad_sizes_are_one_line(tmp_path, run_cli):
    for args, message in ((("--tokens", "3"), "--tokens must be at least 10"), (("--vocab", "5"), "--vocab must be")):
        code, _, err = run_cli("data", "synth", "-o", tmp_path / "x", *args)
        assert code == 1 and err.count("\n") == 1 and message in err
