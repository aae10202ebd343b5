"""The n-gram baseline: an independent reference, normalisation, KenLM agreement, ARPA files."""

import gzip
import json
import math
import warnings
from collections import Counter, defaultdict

import numpy as np
import pytest

from conftest import shared_path
from fflm import FflmError, FflmWarning, NGramLM, Vocabulary, Windows, read_sentences
from fflm.evaluate import perplexity, score_ngram


# --- an independent reference: interpolated modified Kneser-Ney with dicts, as in Chen & Goodman
def reference_kn(sentences, vocab, N):
    raw = [Counter() for _ in range(N + 1)]
    for s in sentences:
        toks = ["<s>"] + s + ["</s>"]
        for k in range(1, N + 1):
            for j in range(len(toks) - k + 1):
                g = tuple(toks[j : j + k])
                if g != ("<s>",):
                    raw[k][g] += 1
    adj = [None] * (N + 1)
    adj[N] = dict(raw[N])
    for k in range(N - 1, 0, -1):
        left = Counter(g[1:] for g in raw[k + 1])
        adj[k] = {g: (c if g[0] == "<s>" else left[g]) for g, c in raw[k].items()}
    discounts = [None]
    for k in range(1, N + 1):
        n = Counter(adj[k].values())
        y = n[1] / (n[1] + 2 * n[2])
        discounts.append([0.0] + [j - (j + 1) * y * n[j + 1] / n[j] for j in (1, 2, 3)])
    by_context = [defaultdict(dict) for _ in range(N + 1)]
    for k in range(1, N + 1):
        for g, c in adj[k].items():
            by_context[k][g[:-1]][g[-1]] = c
    V = len(vocab)

    def prob(w, h):
        k = len(h) + 1
        if k == 1:
            lower = 1.0 / (V - 1)
        else:
            lower = prob(w, h[1:])
        cont = by_context[k].get(h)
        if not cont:
            return lower
        D = discounts[k]
        denom = sum(cont.values())
        gamma = sum(D[min(c, 3)] for c in cont.values()) / denom
        c = cont.get(w, 0)
        return max(c - D[min(c, 3)], 0.0) / denom + gamma * lower

    return prob, discounts


def history(tokens, j, N):
    h = tuple(tokens[max(0, j - N + 1) : j])
    return h


@pytest.mark.parametrize("N", [1, 2, 3, 4])
def test_kneser_ney_equals_independent_reference(synth_sentences, N):
    train = synth_sentences["train"][:1500]
    vocab = Vocabulary.build(train)
    lm = NGramLM.estimate(Windows.from_sentences(train, vocab, N), vocab, N, kenlm_compat=False)
    prob, discounts = reference_kn(train, vocab, N)
    for k in range(1, N + 1):
        assert np.allclose(lm.discounts[k - 1], discounts[k][1:], atol=1e-12)
    test = synth_sentences["test"][:150] + [["ZZZ-unseen", "and", "ZZZ-other"]]  # OOVs: <unk>'s mass
    w = Windows.from_sentences(test, vocab, N)
    got, _ = lm.logprob_windows(*w.pairs())
    expected = []
    for s in test:
        toks = ["<s>"] + [t if t in vocab else "<unk>" for t in s] + ["</s>"]
        for j in range(1, len(toks)):
            expected.append(math.log10(prob(toks[j], history(toks, j, N))))
    assert np.allclose(got, expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("smoothing", ["kn", "add-k"])
@pytest.mark.parametrize("N", [1, 2, 3, 4, 5, 6])
def test_probabilities_sum_to_one_for_random_contexts(synth_sentences, smoothing, N):
    train = synth_sentences["train"]
    vocab = Vocabulary.build(train, min_count=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FflmWarning)
        lm = NGramLM.estimate(Windows.from_sentences(train, vocab, N), vocab, N, smoothing=smoothing, k=0.3)
    rng = np.random.default_rng(N)
    contexts = [["<s>"]]
    w = Windows.from_sentences(synth_sentences["valid"][:100], vocab, max(N, 2))
    x, _ = w.pairs(rng.choice(len(w), 6, replace=False))
    contexts += [vocab.decode(row) for row in x]  # seen and unseen histories, at sentence starts too
    contexts.append(vocab.decode(rng.integers(3, len(vocab), size=max(N - 1, 1))))  # random words
    for ctx in contexts:
        p = 10 ** lm.distribution(ctx)
        assert p[vocab.BOS_ID] == 0.0
        assert abs(p.sum() - 1.0) < 1e-9, (ctx, p.sum())


def test_add_k_matches_the_formula_and_mle_is_honest_about_zeros(synth_sentences):
    train = synth_sentences["train"]
    vocab = Vocabulary.build(train)
    N = 3
    w = Windows.from_sentences(train, vocab, N)
    x, y = w.pairs()
    counts = Counter(map(tuple, np.hstack([x, y[:, None]]).tolist()))
    ctx_counts = Counter(map(tuple, x.tolist()))
    lm = NGramLM.estimate(w, vocab, N, smoothing="add-k", k=0.5)
    test = Windows.from_sentences(synth_sentences["test"][:200], vocab, N)
    tx, ty = test.pairs()
    got, _ = lm.logprob_windows(tx, ty)
    V1 = len(vocab) - 1
    for lp, c, t in zip(got, tx.tolist(), ty.tolist()):
        # padded history <s> <s> w is KenLM's <s> w: the same counts in this corpus
        expect = (counts[tuple(c) + (t,)] + 0.5) / (ctx_counts[tuple(c)] + 0.5 * V1)
        assert lp == pytest.approx(math.log10(expect), abs=1e-9)
    mle = NGramLM.estimate(w, vocab, N, smoothing="mle")
    assert math.isfinite(perplexity(score_ngram(mle, w).log10))
    assert perplexity(score_ngram(mle, test).log10) == math.inf  # some test trigram is unseen


def test_tiny_corpus_falls_back_with_a_warning_and_can_refuse():
    sents = [["a", "b"], ["b", "a"]]
    vocab = Vocabulary.build(sents)
    w = Windows.from_sentences(sents, vocab, 3)
    with pytest.warns(FflmWarning, match="fallback discounts"):
        lm = NGramLM.estimate(w, vocab, 3)
    assert abs((10 ** lm.distribution(["a"])).sum() - 1) < 1e-9
    with pytest.raises(FflmError, match="discounts"):
        NGramLM.estimate(w, vocab, 3, discount_fallback=None)


def test_order_larger_than_any_sentence_is_an_error():
    sents = [["a", "b"], ["b"]]
    vocab = Vocabulary.build(sents)
    with pytest.raises(FflmError, match="larger than any sentence"):
        NGramLM.estimate(Windows.from_sentences(sents, vocab, 5), vocab, 5)


@pytest.mark.parametrize("bad", [dict(order=0), dict(order=11), dict(smoothing="wb"), dict(smoothing="add-k", k=0)])
def test_bad_settings(bad):
    sents = [["a", "b"]]
    vocab = Vocabulary.build(sents)
    args = dict(order=2) | bad
    with pytest.raises(FflmError):
        NGramLM.estimate(Windows.from_sentences(sents, vocab, 2), vocab, **args)


# --- ARPA files --------------------------------------------------------------------------
@pytest.mark.parametrize("smoothing", ["kn", "add-k", "mle"])
@pytest.mark.parametrize("suffix", [".arpa", ".arpa.gz"])
def test_arpa_round_trip(tmp_path, synth_sentences, smoothing, suffix):
    train = synth_sentences["train"]
    vocab = Vocabulary.build(train, min_count=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FflmWarning)
        lm = NGramLM.estimate(Windows.from_sentences(train, vocab, 4), vocab, 4, smoothing=smoothing)
    lm.meta = {"note": "kept"}
    path = tmp_path / ("m" + suffix)
    lm.save_arpa(path)
    back = NGramLM.load_arpa(path)
    assert back.vocab == lm.vocab and back.sizes == lm.sizes and back.smoothing == smoothing
    assert back.meta == {"note": "kept"}
    test = Windows.from_sentences(synth_sentences["test"], vocab, 4)
    a, la = lm.logprob_windows(*test.pairs())
    b, lb = back.logprob_windows(*test.pairs())
    assert (la == lb).all()
    finite = np.isfinite(a)
    assert (np.isfinite(b) == finite).all() and np.allclose(a[finite], b[finite], atol=1e-6)


ARPA_OK = """\\data\\
ngram 1=4
ngram 2=2

\\1-grams:
-1.0\t<s>\t-0.5
-0.5\ta\t-0.3
-0.8\t</s>
-1.2\t<unk>

\\2-grams:
-0.2\t<s> a
-0.1\ta </s>

\\end\\
"""


def test_arpa_from_other_tools_and_backoff_arithmetic(tmp_path):
    p = tmp_path / "m.arpa"
    p.write_text("# a comment line\n" + ARPA_OK)
    lm = NGramLM.load_arpa(p)
    assert lm.order == 2 and lm.smoothing == "arpa"
    V = lm.vocab
    lp, n = lm.logprob_windows([[V.BOS_ID], [3], [3], [V.BOS_ID]], [3, V.EOS_ID, 3, V.EOS_ID])
    # p(a|<s>) listed; p(</s>|a) listed; p(a|a) = bow(a) + p(a); p(</s>|<s>) = bow(<s>) + p(</s>)
    assert np.allclose(lp, [-0.2, -0.1, -0.3 - 0.5, -0.5 - 0.8]) and n.tolist() == [2, 2, 1, 1]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.replace("ngram 2=2", "ngram 2=3"), "header says ngram 2=3"),
        (lambda s: s.replace("-0.2\t<s> a", "-0.2\t<s> a b c"), "fields"),
        (lambda s: s.replace("-0.1\ta </s>", "x\ta </s>"), "not a number"),
        (lambda s: s.replace("\\data\\", "data"), "no \\\\data\\\\"),
        (lambda s: s.replace("\\end\\\n", ""), "truncated"),
        (lambda s: s.replace("-0.1\ta </s>", "-0.1\tzz </s>"), "not a 1-gram"),
        (lambda s: s.replace("-0.1\ta </s>", "0.5\ta </s>"), "above 0"),
        (lambda s: s.replace("-0.1\ta </s>", "nan\ta </s>"), "not finite"),
        (lambda s: s.replace("ngram 1=4", "ngram one=4"), "ngram N=COUNT"),
    ],
)
def test_malformed_arpa_files_are_refused(tmp_path, mutate, message):
    p = tmp_path / "bad.arpa"
    p.write_text(mutate(ARPA_OK))
    with pytest.raises(FflmError, match=message):
        NGramLM.load_arpa(p)


def test_arpa_with_a_missing_context_is_refused(tmp_path):
    text = ARPA_OK.replace("ngram 2=2", "ngram 2=2\nngram 3=1").replace(
        "\\end\\", "\\3-grams:\n-0.1\ta a </s>\n\n\\end\\"
    )
    p = tmp_path / "m.arpa"
    p.write_text(text)
    with pytest.raises(FflmError, match="no entry for its context 'a a'"):
        NGramLM.load_arpa(p)


# --- KenLM -------------------------------------------------------------------------------



@pytest.mark.parametrize("smoothing, N", [("kn", 2), ("kn", 3), ("kn", 5), ("add-k", 3)])
def test_kenlm_loads_our_arpa_and_scores_the_same(tmp_path, synth_sentences, smoothing, N):
    import kenlm

    train = synth_sentences["train"]
    vocab = Vocabulary.build(train, min_count=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FflmWarning)
        lm = NGramLM.estimate(Windows.from_sentences(train, vocab, N), vocab, N, smoothing=smoothing)
    path = tmp_path / "m.arpa"
    lm.save_arpa(path)
    model = kenlm.Model(str(path))
    test = synth_sentences["test"][:300]
    lp, _ = lm.logprob_windows(*Windows.from_sentences(test, vocab, N).pairs())
    ours, start = [], 0
    for s in test:
        ours.append(lp[start : start + len(s) + 1].sum())
        start += len(s) + 1
    theirs = [model.score(" ".join(s), bos=True, eos=True) for s in test]
    assert np.allclose(ours, theirs, atol=1e-4, rtol=0)


def brown(name):
    return read_sentences(shared_path("brown", name))


@pytest.fixture(scope="module")
def brown_data():
    train, valid, test = brown("train.txt"), brown("valid.txt"), brown("test.txt")
    return train, valid, test, Vocabulary.build(train)


# KenLM's figures from shared/data/README.md
KENLM_BROWN = {3: (156.922, 147.701), 4: (156.243, 146.990), 5: (155.997, 146.742)}
KENLM_BROWN_DISCOUNTS = {
    3: [(0.221814, 0.72885, 1.38934), (0.732569, 1.13489, 1.50951), (0.860296, 1.23685, 1.46557)],
    5: [(0.221814, 0.72885, 1.38934), (0.732569, 1.13489, 1.50951), (0.876838, 1.26643, 1.48341),
        (0.952439, 1.41122, 1.55356), (0.977464, 1.48779, 1.78631)],
}


@pytest.mark.parametrize("N", [3, 4, 5])
def test_brown_perplexity_and_discounts_match_kenlm(brown_data, N):
    train, valid, test, vocab = brown_data
    lm = NGramLM.estimate(Windows.from_sentences(train, vocab, N), vocab, N)
    for sents, ref in zip((valid, test), KENLM_BROWN[N]):
        scores = score_ngram(lm, Windows.from_sentences(sents, vocab, N))
        assert len(scores.log10) == (171297 if sents is test else 211711)
        assert abs(perplexity(scores.log10) / ref - 1) < 0.005
        assert abs(perplexity(scores.log10) / ref - 1) < 1e-4  # in fact it is the same model
    if N in KENLM_BROWN_DISCOUNTS:
        assert np.allclose(lm.discounts, KENLM_BROWN_DISCOUNTS[N], atol=1e-4, rtol=0)


def _arpa_entries(path, rename=None):
    entries = {}
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2:
                words = parts[1]
                if rename:
                    words = " ".join(rename.get(w, w) for w in words.split(" "))
                entries[words] = (float(parts[0]), float(parts[2]) if len(parts) > 2 else 0.0)
    return entries


def test_brown_kn3_arpa_agrees_with_kenlms_file(tmp_path, brown_data):
    train, _, _, vocab = brown_data
    lm = NGramLM.estimate(Windows.from_sentences(train, vocab, 3), vocab, 3)
    lm.save_arpa(tmp_path / "kn3.arpa")
    ours = _arpa_entries(tmp_path / "kn3.arpa")
    # KenLM's UNKWORD is the corpus's <unk>; its own <unk> is an empty slot we do not have
    theirs = _arpa_entries(shared_path("brown", "kenlm", "kn3.arpa.gz"), {"<unk>": "<kenlm-unk>", "UNKWORD": "<unk>"})
    assert set(theirs) - set(ours) == {"<kenlm-unk>"} and set(ours) <= set(theirs)
    keys = sorted(set(ours) - {"<s>"})  # <s>: never predicted; KenLM writes 0, we write -99
    a = np.array([ours[k] for k in keys])
    b = np.array([theirs[k] for k in keys])
    close = (np.abs(a - b) <= 1e-3).all(axis=1)
    assert close.mean() >= 0.999
    assert close.all()  # in fact every entry agrees
    assert abs(ours["<s>"][1] - theirs["<s>"][1]) < 1e-3


def test_ptb_kn5_matches_kenlm_and_mikolov():
    train = read_sentences(shared_path("ptb", "ptb.train.txt"))
    test = read_sentences(shared_path("ptb", "ptb.test.txt"))
    vocab = Vocabulary.build(train)
    lm = NGramLM.estimate(Windows.from_sentences(train, vocab, 5), vocab, 5)
    scores = score_ngram(lm, Windows.from_sentences(test, vocab, 5))
    assert len(scores.log10) == 82430
    assert abs(perplexity(scores.log10) / 141.186 - 1) < 0.005


# --- the binary model (fflm ngram build-binary) --------------------------------------------------
@pytest.fixture(scope="module")
def brown_kn4(tmp_path_factory):
    """Brown's KN4 as ARPA, and the binary model built from it."""
    from fflm.ngram import save_binary

    folder = tmp_path_factory.mktemp("bin")
    sentences = read_sentences(shared_path("brown", "train.txt"))
    NGramLM.train(sentences, order=4).save_arpa(folder / "kn4.arpa")
    save_binary(NGramLM.load_arpa(folder / "kn4.arpa"), folder / "kn4.bin")
    return folder


def test_the_binary_model_holds_the_arpa_files_model_to_the_bit(brown_kn4):
    from fflm.ngram import load_model

    arpa, binary = NGramLM.load_arpa(brown_kn4 / "kn4.arpa"), load_model(brown_kn4 / "kn4.bin")
    assert isinstance(binary.keys[3], np.memmap)  # mapped, not read
    assert binary.vocab.words == arpa.vocab.words and binary.discounts == arpa.discounts
    for k in range(4):
        for a, b in ((arpa.keys, binary.keys), (arpa.log10p, binary.log10p), (arpa.bow, binary.bow)):
            assert np.array_equal(a[k], b[k], equal_nan=True)
    test = read_sentences(shared_path("brown", "test.txt"))[:500]
    assert binary.perplexity(test) == arpa.perplexity(test)
    # the hash tables came with the file (mapped), and equal the ones made from the keys
    assert all(isinstance(h, np.memmap) for h in binary._hashes[1:])
    assert all(np.array_equal(a, b) for a, b in zip(arpa.hashes(), binary.hashes()))


def test_the_hash_table_finds_every_key_and_only_those(brown_kn4):
    from fflm.ngram import _find_key, _search, hash_table

    keys = np.asarray(NGramLM.load_arpa(brown_kn4 / "kn4.arpa").keys[2])
    table = hash_table(keys)
    assert len(table) >= 1.5 * len(keys) and len(table) & (len(table) - 1) == 0
    assert sorted(table[table >= 0].tolist()) == list(range(len(keys)))  # each key once
    rng = np.random.default_rng(1)
    probes = np.concatenate([keys[rng.integers(0, len(keys), 500)], rng.integers(0, keys[-1] + 10, 500)])
    for q in probes.tolist():
        assert _find_key(keys, table, q) == _search(keys, q)


def test_a_version_1_binary_file_still_loads_and_scores_the_same(brown_kn4, tmp_path):
    from fflm.ngram import load_model, write_binary

    lm = NGramLM.load_arpa(brown_kn4 / "kn4.arpa")
    write_binary(tmp_path / "v1.bin", lm.vocab, lm.order, lm.smoothing, lm.discounts, lm.k, lm.meta,
                 list(zip(lm.keys, lm.log10p, lm.bow)))  # no hash tables: version 1
    old = load_model(tmp_path / "v1.bin")
    assert old._hashes is None
    test = read_sentences(shared_path("brown", "test.txt"))[:300]
    assert old.perplexity(test) == lm.perplexity(test)


def test_ngram_eval_and_score_read_the_binary_model_as_the_arpa_file(brown_kn4, run_cli):
    test = shared_path("brown", "valid.txt")
    outs = {}
    for name in ("kn4.arpa", "kn4.bin"):
        code, report, _ = run_cli("ngram", "eval", brown_kn4 / name, test, "--json", "-q")
        code2, scored, _ = run_cli("score", brown_kn4 / name, test, "--summary-only")
        assert code == code2 == 0
        outs[name] = (json.loads(report), scored)
    assert outs["kn4.arpa"] == outs["kn4.bin"]


def test_build_binary_from_the_command_line_and_damaged_files(brown_kn4, run_cli, tmp_path):
    out = tmp_path / "m.bin"
    code, text, _ = run_cli("ngram", "build-binary", brown_kn4 / "kn4.arpa", "-o", out)
    assert code == 0 and "4-gram model" in text
    data = out.read_bytes()
    assert data == (brown_kn4 / "kn4.bin").read_bytes()  # the same bytes from the command
    cases = {
        "cut.bin": (data[: len(data) // 2], "truncated"),
        "head.bin": (data[:40], "truncated"),
        "garbage.bin": (b"FFLMNGRM" + (20).to_bytes(8, "little") + b"{not json at all....", "damaged"),
        "new.bin": (data.replace(b'"version": 2', b'"version": 9', 1), "version 9"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        code, _, err = run_cli("ngram", "eval", tmp_path / name, shared_path("brown", "valid.txt"), "-q")
        assert code == 1 and err.count("\n") == 1 and message in err, (name, err)
    # a bad ARPA file leaves an existing output as it was
    (tmp_path / "bad.arpa").write_text("not an arpa file\n")
    code, _, err = run_cli("ngram", "build-binary", tmp_path / "bad.arpa", "-o", out)
    assert code == 1 and out.read_bytes() == data


def test_ngram_train_writes_the_binary_model_straight(run_cli, tmp_path):
    from conftest import SYNTH
    from fflm.ngram import load_model

    text = SYNTH / "train.txt"
    assert run_cli("ngram", "train", text, "-o", tmp_path / "m.bin", "--binary", "--order", "3", "-q")[0] == 0
    straight = load_model(tmp_path / "m.bin")
    estimated = NGramLM.train(read_sentences(text), order=3)
    for k in range(3):  # the estimate itself, not 7 digits of it
        assert np.array_equal(straight.keys[k], estimated.keys[k])
        assert np.array_equal(straight.log10p[k], estimated.log10p[k], equal_nan=True)
        assert np.array_equal(straight.bow[k], estimated.bow[k])


@pytest.mark.parametrize("order", [1, 2, 5])
def test_the_lookup_kernel_equals_the_plain_lookup(order):
    """The Numba pass (a row's context carried from the row before) against numpy's column by
    column search, on consecutive rows, shuffled rows, and contexts cut by <s>."""
    train = read_sentences(shared_path("brown", "valid.txt"))
    lm = NGramLM.train(train, order=order)
    w = Windows.from_sentences(read_sentences(shared_path("brown", "test.txt"))[:2000], lm.vocab, order + 2)
    x, y = w.pairs()
    rng = np.random.default_rng(0)
    searched = NGramLM(lm.vocab, order, lm.keys, lm.log10p, lm.bow, "kn")
    searched.hashed = False  # binary searches instead of the hash tables
    for index in (np.arange(len(y)), rng.permutation(len(y))):
        fast, fast_len = lm.logprob_windows(x[index], y[index])
        plain, plain_len = lm.logprob_windows_plain(x[index], y[index])
        assert np.array_equal(fast, plain) and np.array_equal(fast_len, plain_len)
        assert (fast_len >= 1).all()
        binary, binary_len = searched.logprob_windows(x[index], y[index])
        assert np.array_equal(binary, plain) and np.array_equal(binary_len, plain_len)
    if order > 1:  # every length of match occurs, so every branch ran
        assert set(fast_len.tolist()) == set(range(1, order + 1))
