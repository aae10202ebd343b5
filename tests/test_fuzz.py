"""Files others send you, fuzzed: whatever the bytes, every reader either loads them or raises
FflmError, never another exception (hypothesis, bounded so it runs with the normal tests)."""

import functools
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fflm import FflmError, NGramLM, Vocabulary, Windows, read_sentences
from fflm.errors import FflmWarning
from fflm.model import FFNNLM, ModelConfig
from fflm.train import TrainConfig, Trainer

# FFLM_FUZZ_EXAMPLES=5000 for a longer hunt than the normal run
FUZZ = settings(max_examples=int(os.environ.get("FFLM_FUZZ_EXAMPLES", 150)), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog"]


def _loads_or_fflm_error(load, data, tmp_path, name):
    path = tmp_path / name
    path.write_bytes(data)
    try:
        return load(path)
    except FflmError as e:
        assert str(e) and "\n" not in str(e)  # one line
        return None


@functools.lru_cache(maxsize=None)
def good():
    """Valid files of each kind, for the mutations to start from (not a fixture: hypothesis
    would print all of it with every failing example)."""
    d = Path(tempfile.mkdtemp(prefix="fflm-fuzz-"))
    sentences = [["the", "cat", "sat"], ["a", "dog", "sat", "on", "the", "mat"], ["the", "mat"]] * 5
    vocab = Vocabulary.build(sentences)
    windows = Windows.from_sentences(sentences, vocab, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FflmWarning)  # a tiny corpus: fallback discounts
        NGramLM.estimate(windows, vocab, 2).save_arpa(d / "m.arpa")
    model = FFNNLM(vocab, ModelConfig(order=2, embed_dim=3, hidden=(4,)), seed=1)
    model.save(d / "m.npz")
    vocab.save(d / "v.json")
    Trainer(model, windows, None, TrainConfig(epochs=1, batch_size=4)).save_checkpoint(d / "c.npz")
    files = {k: (d / name).read_bytes() for k, name in
             (("arpa", "m.arpa"), ("npz", "m.npz"), ("vocab", "v.json"), ("ckpt", "c.npz"))}
    shutil.rmtree(d)
    return dict(files, windows=windows)


def mutated(data, draw):
    """A valid file with a few bytes changed, cut short, or spliced."""
    data = bytearray(data)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
    elif kind == "truncate":
        del data[at:]
    elif kind == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=40))
    else:
        del data[at : at + draw(st.integers(1, 200))]
    return bytes(data)


@FUZZ
@given(data=st.binary(max_size=300))
def test_the_text_reader_on_any_bytes(tmp_path, data):
    sentences = _loads_or_fflm_error(read_sentences, data, tmp_path, "t.txt")
    if sentences is not None:
        assert sentences and all(s and all(isinstance(w, str) and w.strip() == w and w for w in s) for s in sentences)


@FUZZ
@given(text=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200))
def test_the_text_reader_on_any_unicode(tmp_path, text):
    sentences = _loads_or_fflm_error(read_sentences, text.encode("utf-8"), tmp_path, "t.txt")
    if sentences is not None:
        assert sum(len(s) for s in sentences) == sum(len(line.split()) for line in text.splitlines())


JSONISH = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats() | st.text(max_size=5),
                       lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner,
                                                                                     max_size=5), max_leaves=20)


@FUZZ
@given(d=st.fixed_dictionaries({"words": st.one_of(JSONISH, st.lists(st.sampled_from(
    ["<unk>", "<s>", "</s>", "a", "b", "", " x", "b"]), max_size=8)), "counts": JSONISH},
    optional={"min_count": JSONISH, "max_size": JSONISH}))
def test_the_vocabulary_from_any_json(tmp_path, d):
    v = _loads_or_fflm_error(Vocabulary.load, json.dumps(d).encode(), tmp_path, "v.json")
    if v is not None:
        assert len(v) >= 3 and v.words[:3] == list(Vocabulary.SPECIALS)
        assert Vocabulary.from_dict(v.to_dict()) == v


@FUZZ
@given(data=st.data())
def test_the_vocabulary_file_mutated(tmp_path, data):
    _loads_or_fflm_error(Vocabulary.load, mutated(good()["vocab"], data.draw), tmp_path, "v.json")


@FUZZ
@given(data=st.data())
def test_the_arpa_reader_mutated(tmp_path, data):
    good_ = good()
    lm = _loads_or_fflm_error(NGramLM.load_arpa, mutated(good_["arpa"], data.draw), tmp_path, "m.arpa")
    if lm is not None:  # what loads must score: finite log-probabilities for in-vocabulary text
        from fflm import Windows

        w = Windows.from_sentences([["the", "cat"]], lm.vocab, lm.order)
        log10, _ = lm.logprob_windows(*w.pairs())
        assert np.all(log10 <= 1e-6)


@FUZZ
@given(data=st.data())
def test_the_arpa_reader_line_by_line(tmp_path, data):
    good_ = good()
    lines = good_["arpa"].decode().splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    junk = data.draw(st.sampled_from(["", "-1.5", "x\ty", "-0.3\tthe\tcat\tsat\t0", "nan\tthe", "-1\t\t0",
                                      "ngram 9=1", "\\3-grams:", "\\end\\", "-inf\tdog\t-inf", "1e400\ta"]))
    lines[i] = junk
    _loads_or_fflm_error(NGramLM.load_arpa, ("\n".join(lines) + "\n").encode(), tmp_path, "m.arpa")


@FUZZ
@given(data=st.data())
def test_the_model_loader_mutated(tmp_path, data):
    good_ = good()
    got = _loads_or_fflm_error(FFNNLM.load, mutated(good_["npz"], data.draw), tmp_path, "m.npz")
    if got is not None:
        model, _ = got
        p = model.probs(np.array([[1]]))
        assert np.isfinite(p).all() and abs(p.sum() - 1) < 1e-5


def _npz_with_meta(meta):
    with np.load(io.BytesIO(good()["npz"])) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["meta"] = np.array(json.dumps(meta))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@FUZZ
@given(data=st.data())
def test_the_model_loader_with_any_metadata(tmp_path, data):
    good_ = good()
    with np.load(io.BytesIO(good_["npz"])) as f:
        meta = json.loads(str(f["meta"]))
    key = data.draw(st.sampled_from(["config", "vocab", "dtype", "version", "format"]))
    if key == "config":
        field = data.draw(st.sampled_from(sorted(meta["config"])))
        meta["config"][field] = data.draw(JSONISH)
    else:
        meta[key] = data.draw(JSONISH)
    _loads_or_fflm_error(FFNNLM.load, _npz_with_meta(meta), tmp_path, "m.npz")


@FUZZ
@given(data=st.data())
def test_the_checkpoint_loader_mutated(tmp_path, data):
    good_ = good()
    windows = good_["windows"]
    _loads_or_fflm_error(lambda p: Trainer.load_checkpoint(p, lambda m: (windows, None)),
                         mutated(good_["ckpt"], data.draw), tmp_path, "c.npz")
