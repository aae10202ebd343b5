"""Ingredient V, evaluation: perplexity, computed the same way for every model.

Perplexity = 10 ** (-(sum of log10 p) / N), where N counts every scored token: each word
and one </s> per sentence, never <s>. Words outside the vocabulary are scored as <unk>
(KenLM's "including OOVs"); the perplexity without them is reported too, with the count.
"""

import math
from dataclasses import dataclass

import numpy as np

from .vocab import Vocabulary


@dataclass
class Scores:
    """Per-token log10 probabilities of one model on one text."""

    log10: np.ndarray  # (T,) float64, one per scored token
    targets: np.ndarray  # (T,) int ids of the scored tokens
    sentences: int
    ngram_length: np.ndarray | None = None  # n-gram models: the order that matched

    @property
    def oov(self):
        return self.targets == Vocabulary.UNK_ID

    def part(self, start, stop):
        """The scores of tokens start:stop (sentences counted by their </s>)."""
        t = self.targets[start:stop]
        length = None if self.ngram_length is None else self.ngram_length[start:stop]
        return Scores(self.log10[start:stop], t, int(np.count_nonzero(t == Vocabulary.EOS_ID)), length)

    def then(self, other):
        """These scores followed by `other`'s."""
        length = None if self.ngram_length is None else np.concatenate((self.ngram_length, other.ngram_length))
        return Scores(np.concatenate((self.log10, other.log10)), np.concatenate((self.targets, other.targets)),
                      self.sentences + other.sentences, length)


def perplexity(log10_probs):
    """10 ** (-mean log10 p): the same number as exp(mean negative log-likelihood in nats)."""
    log10_probs = np.asarray(log10_probs, dtype=np.float64)
    if len(log10_probs) == 0:
        return math.nan
    mean = float(np.sum(log10_probs)) / len(log10_probs)
    return math.inf if -mean > 308 else 10.0 ** (-mean)  # beyond float range (a diverged model): inf


def check_coverage(sentences, vocab, source):
    """Refuse a text none of whose words the model knows (its perplexity would measure nothing
    but <unk> and </s>); warn when most of them are unknown (different preprocessing?)."""
    words = sum(len(s) for s in sentences)
    unknown = sum(1 for s in sentences for w in s if w not in vocab)
    check_coverage_counts(words, unknown, source)


def score_ngram(model, windows, index=None):
    """Scores of an NGramLM on the (context, target) pairs of `windows` numbered `index` (all)."""
    contexts, targets = windows.pairs(index)
    log10, length = model.logprob_windows(contexts, targets)
    return Scores(log10, targets, _sentences(windows, targets, index), length)


def _sentences(windows, targets, index):
    return windows.num_sentences if index is None else int(np.count_nonzero(targets == Vocabulary.EOS_ID))


def model_row(name, order, scores):
    """One model's line of the report."""
    oov = scores.oov
    row = {
        "name": name,
        "order": order,
        "ppl": perplexity(scores.log10),
        "ppl_excluding_oov": perplexity(scores.log10[~oov]),
        "log10_prob": float(np.sum(scores.log10)),
    }
    return row


def report(scores_by_name):
    """The perplexity report for models scored on the same tokens: {name: (order, Scores)}."""
    first = next(iter(scores_by_name.values()))[1]
    tokens = len(first.targets)
    for _, s in scores_by_name.values():
        assert len(s.targets) == tokens and (s.targets == first.targets).all(), "models scored different tokens"
    oov = int(np.count_nonzero(first.oov))
    return {
        "tokens": tokens,
        "sentences": first.sentences,
        "oov": oov,
        "oov_rate": oov / tokens if tokens else math.nan,
        "models": [model_row(name, order, s) for name, (order, s) in scores_by_name.items()],
    }


def format_report(rep):
    """The report as a table, with KenLM's summary wording in the header lines."""
    lines = [
        f"Tokens: {rep['tokens']}  (words + </s>, over {rep['sentences']} sentences)",
        f"OOVs: {rep['oov']}  ({100 * rep['oov_rate']:.2f}% of tokens, scored as <unk>)",
        "",
        f"{'model':<14} {'order':>5} {'ppl (incl. OOVs)':>17} {'ppl (excl. OOVs)':>17} {'log10 prob':>14}",
    ]
    for m in rep["models"]:
        lines.append(
            f"{m['name']:<14} {m['order']:>5} {m['ppl']:>17.3f} {m['ppl_excluding_oov']:>17.3f} {m['log10_prob']:>14.2f}"
        )
    return "\n".join(lines)


def score_neural(model, windows, batch_size=1024, index=None):
    """Scores of an FFNNLM (exact softmax) on the pairs of `windows` numbered `index` (all;
    order >= the model's span)."""
    contexts, targets = windows.pairs(index)
    c = model.config.span - 1
    log10 = model.log10_probs(contexts[:, contexts.shape[1] - c :], targets, batch_size)
    return Scores(log10, targets, _sentences(windows, targets, index))


# --- the report in bounded memory: scores a chunk of tokens at a time, summed ---------------------
CHUNK = 1 << 16  # tokens scored at a time (a multiple of every batch size, so the batches are the same)


def chunk_ranges(n, size=None):
    """Pair numbers start:stop covering 0..n in order, CHUNK at a time."""
    size = size or CHUNK
    return [(a, min(a + size, n)) for a in range(0, n, size)]


class Totals:
    """What report() says of models scored on the same tokens, added up chunk by chunk, so a
    test set of any size is reported in the memory of one chunk."""

    def __init__(self):
        self.tokens = self.oov = self.sentences = 0
        self.rows = {}  # name -> [order, sum log10, sum log10 over non-OOV tokens]

    def add(self, scores_by_name):
        first = next(iter(scores_by_name.values()))[1]
        oov = first.oov
        for _, sc in scores_by_name.values():
            assert len(sc.targets) == len(first.targets) and (sc.targets == first.targets).all(), \
                "models scored different tokens"
        for name, (order, sc) in scores_by_name.items():
            row = self.rows.setdefault(name, [order, 0.0, 0.0])
            row[1] += float(np.sum(sc.log10))
            row[2] += float(np.sum(sc.log10[~oov]))
        self.tokens += len(first.targets)
        self.oov += int(np.count_nonzero(oov))
        self.sentences += first.sentences

    def report(self):
        def ppl(total, n):
            if n == 0:
                return math.nan
            mean = total / n
            return math.inf if -mean > 308 else 10.0 ** (-mean)

        models = [{"name": name, "order": order, "ppl": ppl(total, self.tokens),
                   "ppl_excluding_oov": ppl(known, self.tokens - self.oov), "log10_prob": total}
                  for name, (order, total, known) in self.rows.items()]
        return {"tokens": self.tokens, "sentences": self.sentences, "oov": self.oov,
                "oov_rate": self.oov / self.tokens if self.tokens else math.nan, "models": models}

    def query_summary(self, name):
        """KenLM `query`'s closing lines for one row (see query_summary)."""
        r = self.report()
        m = next(m for m in r["models"] if m["name"] == name)
        return (f"Perplexity including OOVs:\t{_g(m['ppl'])}\n"
                f"Perplexity excluding OOVs:\t{_g(m['ppl_excluding_oov'])}\n"
                f"OOVs:\t{r['oov']}\n"
                f"Tokens:\t{r['tokens']}")


def check_coverage_counts(words, unknown, source):
    """check_coverage from counts: `words` scored words (not </s>), `unknown` of them <unk>."""
    import warnings

    from .errors import FflmError, FflmWarning

    if words and unknown == words:
        raise FflmError(f"{source}: every one of its {words} words is out of the model's vocabulary; "
                        "is it the same language and preprocessing as the training text?")
    if words and unknown > words / 2:
        warnings.warn(f"{source}: {100 * unknown / words:.0f}% of its words are out of the model's vocabulary",
                      FflmWarning, stacklevel=3)


def coverage(windows):
    """(words, of them <unk>) among the targets of `windows`, a chunk at a time."""
    words = unknown = 0
    for a, b in chunk_ranges(len(windows)):
        y = windows.pairs(np.arange(a, b))[1]
        words += int(np.count_nonzero(y != Vocabulary.EOS_ID))
        unknown += int(np.count_nonzero(y == Vocabulary.UNK_ID))
        del y  # before the next chunk's arrays are made: one chunk's worth at a time
    return words, unknown


def interpolate(a, b, lam):
    """Per-token log10 of lam * p_a + (1 - lam) * p_b (Bengio's mixture of the two models)."""
    return mix([a, b], [lam, 1.0 - lam])


def seen_in_training(sentences, training):
    """How much of `sentences` occurs verbatim in `training` (both lists of token lists): returns
    (sentences seen, tokens in them, all tokens), tokens counting each word and </s>.

    >>> seen_in_training([["a", "b"], ["c"]], [["x"], ["a", "b"]])
    (1, 3, 5)
    """
    known = {hash(" ".join(s)) for s in training}
    seen = [len(s) + 1 for s in sentences if hash(" ".join(s)) in known]
    return len(seen), sum(seen), sum(len(s) + 1 for s in sentences)


def tuning_overlap(tune, training):
    """Whether a tuning text is (partly) training text, which makes a useless interpolation weight
    (the n-gram model has memorised it, so the weight goes to it). Some repeats are natural (short
    sentences: 0.3-1.5% of tokens on Brown and PTB, 10% on the embedded corpus), so the share of
    `tune`'s tokens seen in `training` is compared with the training text's own repeat rate (its
    odd sentences against its even ones): suspicious from twice that and 5 points above it."""
    n, seen, total = seen_in_training(tune, training)
    _, nat_seen, nat_total = seen_in_training(training[1::2], training[::2])
    share, natural = seen / max(total, 1), nat_seen / max(nat_total, 1)
    return {"sentences": len(tune), "seen_sentences": n, "seen_share": share, "natural_share": natural,
            "suspicious": share >= max(2 * natural, natural + 0.05)}


def tune_lambda(a, b):
    """The weight of model a that maximises the likelihood of the mixture on these scores.

    The log-likelihood is concave in lambda, so a bounded 1-D search finds the maximum; the
    end points are checked too, so the mixture is never worse than the better model alone.
    """
    from scipy.optimize import minimize_scalar

    def cost(lam):
        return -float(np.sum(interpolate(a, b, lam).log10))

    best = minimize_scalar(cost, bounds=(0.0, 1.0), method="bounded", options={"xatol": 1e-5})
    return min((best.x, 0.0, 1.0), key=cost)


def mix(parts, weights):
    """Per-token log10 of sum_k w_k p_k: the linear mixture of models scored on the same tokens
    (a zero weight drops a part, even one that gives some token probability zero)."""
    ln10 = math.log(10)
    with np.errstate(divide="ignore"):
        logs = np.stack([np.log(w) + s.log10 * ln10 if w > 0 else np.full(len(s.log10), -np.inf)
                         for s, w in zip(parts, weights)])
    return Scores(np.logaddexp.reduce(logs, axis=0) / ln10, parts[0].targets, parts[0].sentences)


def tune_weights(parts, tol=1e-10, max_iter=5000):
    """Mixture weights (summing to 1) that maximise the likelihood of these scores, by EM, as
    SRILM's compute-best-mix does: each step can only raise the likelihood, which is concave in
    the weights, so the fixed point is the best mixture, never worse than its best part alone.

    E step: each token's posterior over the parts, r_k = w_k p_k / sum_j w_j p_j;
    M step: w_k = the mean of r_k over the tokens.
    """
    ln10 = math.log(10)
    logp = np.stack([s.log10 * ln10 for s in parts])  # (K, T) natural logs
    logp = logp[:, np.isfinite(logp).any(axis=0)]  # a token no part can score teaches nothing
    w = np.full(len(parts), 1.0 / len(parts))
    prev = -math.inf
    for _ in range(max_iter):
        with np.errstate(divide="ignore"):
            joint = np.log(w)[:, None] + logp
        total = np.logaddexp.reduce(joint, axis=0)
        ll = float(total.sum())
        w = np.exp(joint - total).mean(axis=1)
        if ll - prev <= tol * abs(ll):
            break
        prev = ll
    return w / w.sum()


# --- KenLM's `query` layout, so that scripts written for KenLM read fflm's output --------------
def query_lines(sentences, scores, order, per_token=False):
    """KenLM `query`'s per-sentence lines: `Total: <log10> OOV: <n>`, preceded with per_token by
    `word=<id> <n-gram length> <log10>` and a tab for every scored word and </s>. A neural model
    has no backed-off length: it always reads its whole window, so its length is its order."""
    lengths = scores.ngram_length if scores.ngram_length is not None else np.full(len(scores.targets), order)
    i = 0
    for sentence in sentences:
        n = len(sentence) + 1
        log10, targets, length = scores.log10[i : i + n], scores.targets[i : i + n], lengths[i : i + n]
        oov = int(np.count_nonzero(targets == Vocabulary.UNK_ID))
        head = ""
        if per_token:
            head = "".join(f"{w}={t} {int(l)} {_g(p)}\t" for w, t, l, p in
                           zip(sentence + ["</s>"], targets.tolist(), length.tolist(), log10.tolist()))
        yield f"{head}Total: {_g(float(np.sum(log10, dtype=np.float32)))} OOV: {oov}"
        i += n


def query_summary(scores):
    """KenLM `query`'s closing lines (perplexities with and without OOVs, OOV and token counts)."""
    oov = scores.oov
    return (f"Perplexity including OOVs:\t{_g(perplexity(scores.log10))}\n"
            f"Perplexity excluding OOVs:\t{_g(perplexity(scores.log10[~oov]))}\n"
            f"OOVs:\t{int(np.count_nonzero(oov))}\n"
            f"Tokens:\t{len(scores.targets)}")


def _g(x):
    """A number as C++'s default ostream prints it (6 significant digits), as KenLM does."""
    return f"{x:.6g}"
