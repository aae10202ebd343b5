"""The embedded corpus: text from a small probabilistic process whose entropy we know exactly.

Every word belongs to one of a few classes (like parts of speech). A sentence is a walk of a
second-order Markov chain over classes that ends when it emits </s>; each word is then drawn
from its class's Zipf-like distribution. The true conditional probability of a word given its
history is p(class | two previous classes) * p(word | class), so the best perplexity any model
can reach is exactly computable: exp(expected log-loss per sentence / expected tokens per sentence),
both found by solving a linear system over the chain's states.

A neural model shines here for Bengio's reason: words of one class share behaviour, so their
embeddings can share statistics that an n-gram model must learn word by word.

Only uniform draws (`Generator.random`) are used, whose stream NumPy keeps stable across
versions, so the same seed gives the same corpus everywhere.
"""

import hashlib
import json
import math
import os

import numpy as np

from .errors import FflmError
from .fileio import atomic_write, make_folder

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
# (name, number of words, suffix that makes the class visible in samples)
CLASSES = (
    ("det", 5, ""),
    ("noun", 50, "o"),
    ("verb", 35, "ar"),
    ("adj", 25, "en"),
    ("adv", 12, "ly"),
    ("prep", 8, "u"),
    ("name", 12, "ix"),
    ("conj", 3, "e"),
)
END_PROB = 0.14  # chance of </s> after any class (other than right after <s>)


def class_sizes(vocab=None):
    """Words per class: CLASSES' own (150 in all), or scaled to `vocab` words, the remainder
    going to the largest class (nouns).

    >>> class_sizes(1500)[:3], sum(class_sizes(100001))
    ([50, 500, 350], 100001)
    """
    sizes = [size for _, size, _ in CLASSES]
    if vocab is None:
        return sizes
    if vocab < len(CLASSES):
        raise FflmError(f"--vocab must be at least {len(CLASSES)} (a word per class), not {vocab}")
    scaled = [max(1, round(vocab * size / sum(sizes))) for size in sizes]
    big = scaled.index(max(scaled))
    scaled[big] += vocab - sum(scaled)
    return scaled


def make_process(seed=2003, vocab=None):
    """The generating process: class transition table, word distributions, spellings.
    `vocab`: the number of distinct words (default: the embedded corpus's 150)."""
    rng = np.random.default_rng(seed)
    K = len(CLASSES)
    START, END = K, K  # START is a history symbol, END an outcome: both use index K
    # Sparse transitions: from each state (two previous classes), a few classes are likely.
    trans = np.zeros((K + 1, K + 1, K + 1))  # [c_{t-2}, c_{t-1}, c_t or END]
    for a in range(K + 1):
        for b in range(K + 1):
            if b == START and a != START:
                continue  # impossible state: <s> is only ever followed by a word
            u = rng.random(K)
            w = (-np.log(u)) ** 3  # heavy-tailed weights: a few classes take most mass
            w = w / w.sum()
            if b == START:
                trans[a, b, :K] = w
            else:
                trans[a, b, :K] = w * (1 - END_PROB)
                trans[a, b, END] = END_PROB
    words, word_class, word_prob = [], [], []
    seen = set()
    sizes = class_sizes(vocab)
    # at most this many syllables a stem: room for twenty times the words wanted (2 for the 150)
    syllables = max(2, math.ceil(math.log(20 * sum(sizes)) / math.log(len(CONSONANTS) * len(VOWELS))))
    for c, ((_, _, suffix), size) in enumerate(zip(CLASSES, sizes)):
        ranks = np.arange(size)
        p = 1.0 / (ranks + 1.5)
        word_prob.append(p / p.sum())
        for _ in range(size):
            while True:
                n_syll = 1 + int(rng.random() * syllables)
                stem = "".join(
                    CONSONANTS[int(rng.random() * len(CONSONANTS))] + VOWELS[int(rng.random() * len(VOWELS))]
                    for _ in range(n_syll)
                )
                word = stem + suffix
                if word not in seen:
                    break
            seen.add(word)
            words.append(word)
            word_class.append(c)
    return {"trans": trans, "words": words, "word_class": np.array(word_class), "word_prob": word_prob}


def _class_offsets(process):
    sizes = [len(p) for p in process["word_prob"]]
    return np.concatenate(([0], np.cumsum(sizes)))


def sample(process, n_sentences, rng):
    """Sentences of words drawn from the process."""
    trans, word_prob = process["trans"], process["word_prob"]
    K = len(word_prob)
    offsets = _class_offsets(process)
    cum_trans = np.cumsum(trans, axis=2)
    cum_words = [np.cumsum(p) for p in word_prob]
    sentences = []
    for _ in range(n_sentences):
        a = b = K
        sentence = []
        while True:
            c = min(int(np.searchsorted(cum_trans[a, b], rng.random() * cum_trans[a, b, -1], side="right")), K)
            if c == K:
                break
            r = min(int(np.searchsorted(cum_words[c], rng.random() * cum_words[c][-1], side="right")), len(cum_words[c]) - 1)
            sentence.append(process["words"][offsets[c] + r])
            a, b = b, c
        sentences.append(sentence)
    return sentences


def entropy_rate(process):
    """True entropy in nats per scored token (words and </s>), and expected tokens per sentence."""
    trans, word_prob = process["trans"], process["word_prob"]
    K = len(word_prob)
    h_word = np.array([-(p * np.log(p)).sum() for p in word_prob] + [0.0])  # </s> carries no word choice
    states = [(a, b) for a in range(K + 1) for b in range(K + 1) if trans[a, b].sum() > 0]
    index = {s: i for i, s in enumerate(states)}
    Q = np.zeros((len(states), len(states)))  # Q[i, j] = p(state j next | state i), END absorbing
    h = np.zeros(len(states))  # expected log-loss of the token emitted from each state
    for (a, b), i in index.items():
        p = trans[a, b]
        nz = p > 0
        h[i] = -(p[nz] * np.log(p[nz])).sum() + (p * h_word).sum()
        for c in range(K):
            if p[c] > 0:
                Q[i, index[(b, c)]] += p[c]
    start = np.zeros(len(states))
    start[index[(K, K)]] = 1.0
    visits = np.linalg.solve(np.eye(len(states)) - Q.T, start)  # expected visits per sentence
    return float(visits @ h / visits.sum()), float(visits.sum())


def true_log_probs(process, sentences):
    """Natural-log probability of every token (words and </s>) under the true process."""
    trans, word_prob = process["trans"], process["word_prob"]
    K = len(word_prob)
    offsets = _class_offsets(process)
    lookup = {w: i for i, w in enumerate(process["words"])}
    out = []
    for s in sentences:
        a = b = K
        for w in s:
            i = lookup[w]
            c = int(process["word_class"][i])
            out.append(math.log(trans[a, b, c]) + math.log(word_prob[c][i - offsets[c]]))
            a, b = b, c
        out.append(math.log(trans[a, b, K]))
    return np.array(out)


SPLITS = (("train", 10000), ("valid", 1000), ("test", 1000))


def _manifest(generator, seed, process):
    """manifest.json before its files: the process and its exact entropy."""
    entropy, mean_tokens = entropy_rate(process)
    return {
        "generator": generator,
        "seed": seed,
        "classes": [{"name": n, "words": len(p)} for (n, _, _), p in zip(CLASSES, process["word_prob"])],
        "vocabulary": len(process["words"]),
        "entropy_nats_per_token": round(entropy, 6),
        "perplexity_floor": round(math.exp(entropy), 4),
        "expected_tokens_per_sentence": round(mean_tokens, 4),
        "files": {},
    }


def write_corpus(folder, seed=2003):
    """Write train/valid/test.txt and manifest.json (sizes, sha256, true entropy) into `folder`."""
    process = make_process(seed)
    rng = np.random.default_rng(seed + 1)
    manifest = _manifest("fflm.synth.write_corpus", seed, process)
    make_folder(folder)
    for name, n in SPLITS:
        sentences = sample(process, n, rng)
        text = "".join(" ".join(s) + "\n" for s in sentences)
        with atomic_write(os.path.join(folder, f"{name}.txt")) as f:
            f.write(text)
        lp = true_log_probs(process, sentences)
        manifest["files"][f"{name}.txt"] = {
            "sentences": n,
            "tokens": int(len(lp)),
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "true_model_perplexity": round(float(np.exp(-lp.mean())), 4),
        }
    with atomic_write(os.path.join(folder, "manifest.json")) as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


# --- corpora of any size: many sentences sampled side by side, written as a stream ---------------
def sample_stream(process, n_tokens, rng, lanes=1024, steps=256):
    """Sentences (arrays of word ids) drawn from the process until `n_tokens` scored tokens (words
    and </s>; the last sentence may pass it), a chunk at a time: yields (sentences, the sum of
    their tokens' true natural-log probabilities). `lanes` sentences grow side by side, a token each per step, so
    the Python work is per chunk, not per word, and memory is one chunk's whatever the size.
    The same seed gives the same corpus (for the same lanes and steps)."""
    trans, word_prob = process["trans"], process["word_prob"]
    K = len(word_prob)
    offsets = _class_offsets(process)
    cum_trans = np.cumsum(trans, axis=2)
    cum_words = [np.cumsum(p) for p in word_prob]
    with np.errstate(divide="ignore"):
        log_trans = np.log(trans)
    log_word = np.concatenate([np.log(p) for p in word_prob] + [[0.0]])  # index -1: </s>, no word
    a, b = np.full(lanes, K), np.full(lanes, K)
    carry = [(np.empty(0, dtype=np.int64), np.empty(0)) for _ in range(lanes)]  # unfinished sentences
    W = np.empty((steps, lanes), dtype=np.int64)  # word ids, -1 where a sentence ended
    L = np.empty((steps, lanes))  # each token's true log-probability
    done = 0
    while done < n_tokens:
        for t in range(steps):
            rows = cum_trans[a, b]  # (lanes, K + 1): each lane's class distribution, cumulative
            c = np.minimum((rows <= (rng.random(lanes) * rows[:, -1])[:, None]).sum(axis=1), K)
            u = rng.random(lanes)
            w = np.full(lanes, -1)
            for k in range(K):
                sel = np.flatnonzero(c == k)
                cw = cum_words[k]
                w[sel] = offsets[k] + np.minimum(np.searchsorted(cw, u[sel] * cw[-1], side="right"), len(cw) - 1)
            W[t], L[t] = w, log_trans[a, b, c] + log_word[w]
            end = c == K
            a, b = np.where(end, K, b), np.where(end, K, c)
        sentences, logps = [], []
        for j in range(lanes):
            ids, lp = np.concatenate((carry[j][0], W[:, j])), np.concatenate((carry[j][1], L[:, j]))
            ends = np.flatnonzero(ids < 0)
            cut = ends[-1] + 1 if len(ends) else 0
            if cut:
                starts = np.concatenate(([0], ends[:-1] + 1))
                sentences.extend(part[:-1] for part in np.split(ids[:cut], starts[1:]))
                logps.append(np.add.reduceat(lp[:cut], starts))
            carry[j] = (ids[cut:], lp[cut:])
        logps = np.concatenate(logps) if logps else np.empty(0)
        lengths = np.cumsum([len(s) + 1 for s in sentences])
        keep = min(int(np.searchsorted(lengths, n_tokens - done)) + 1, len(sentences))  # stop at n_tokens
        if keep:
            done += int(lengths[keep - 1])
            yield sentences[:keep], float(logps[:keep].sum())


def write_stream(path, process, n_tokens, rng):
    """Write `n_tokens` scored tokens of sentences (or just over) to `path` (atomically), a chunk at a
    time; returns the file's sentences, tokens, sha256 and the true model's perplexity on it."""
    words = np.array(process["words"], dtype=object)
    digest = hashlib.sha256()
    sentences = tokens = 0
    logp = 0.0
    with atomic_write(path) as f:
        for chunk, chunk_logp in sample_stream(process, n_tokens, rng):
            text = "".join(" ".join(words[s]) + "\n" for s in chunk)
            f.write(text)
            digest.update(text.encode())
            sentences += len(chunk)
            tokens += sum(len(s) + 1 for s in chunk)
            logp += chunk_logp
    return {"sentences": sentences, "tokens": tokens, "sha256": digest.hexdigest(),
            "true_model_perplexity": round(math.exp(-logp / tokens), 4)}


def write_large_corpus(folder, tokens, vocab=None, seed=2003):
    """Train/valid/test of the same process at any size: `tokens` scored tokens of training text
    (valid and test a tenth each), `vocab` distinct words; manifest.json as write_corpus's."""
    if tokens < 10:
        raise FflmError(f"--tokens must be at least 10, not {tokens}")
    process = make_process(seed, vocab)
    rng = np.random.default_rng(seed + 1)
    manifest = _manifest("fflm.synth.write_large_corpus", seed, process)
    make_folder(folder)
    for name, n in (("train", tokens), ("valid", max(tokens // 10, 1)), ("test", max(tokens // 10, 1))):
        manifest["files"][f"{name}.txt"] = write_stream(os.path.join(folder, f"{name}.txt"), process, n, rng)
    with atomic_write(os.path.join(folder, "manifest.json")) as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest
