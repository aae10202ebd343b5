"""What every language model here answers, neural or n-gram, in the words users know from
nltk.lm and KenLM: logprob(word, context), score(sentence), perplexity(sentences).

Probabilities are log10 (KenLM's convention, and the ARPA format's). A sentence is a string
of space-separated tokens or a list of tokens; its score counts every word and one </s>,
never <s>; words outside the vocabulary are scored as <unk>.
"""

import numpy as np

from .vocab import Vocabulary


def _tokens(sentence):
    return sentence.split() if isinstance(sentence, str) else list(sentence)


class LanguageModel:
    """The sentence-level API. A subclass gives `vocab`, `order`, `_windows(sentences)` and
    `_log10(contexts, targets)`."""

    @property
    def span(self):
        """1 + the previous words a prediction reads (an n-gram model's n; more with FOFE)."""
        return self.order

    def logprob(self, word, context=()):
        """log10 p(word | context); the context's last n-1 words count, <s> before the sentence.

        >>> from fflm import NGramLM
        >>> lm = NGramLM.train(["a b", "a c"], order=2, smoothing="add-k")
        >>> round(10 ** lm.logprob("b", ["a"]), 4)     # (1 + 1) / (2 + 5 words)
        0.2857
        """
        context = _tokens(context)
        c = self.span - 1
        ids = [Vocabulary.BOS_ID] * c + self.vocab.encode(context).tolist() if context else [Vocabulary.BOS_ID] * c
        ctx = np.array([ids[len(ids) - c :]], dtype=np.int32)
        return float(self._log10(ctx, np.array([self.vocab.id(word)], dtype=np.int32))[0])

    def token_scores(self, sentence):
        """Each scored token (the words, then </s>) with its log10 probability.

        >>> from fflm import NGramLM
        >>> [w for w, _ in NGramLM.train(["a b"], order=2, smoothing="add-k").token_scores("a zebra")]
        ['a', 'zebra', '</s>']
        """
        words = _tokens(sentence)
        contexts, targets = self._windows([words]).pairs()
        return list(zip(words + [Vocabulary.EOS], self._log10(contexts, targets).tolist()))

    def score(self, sentence):
        """Total log10 probability of the sentence and its </s> (as kenlm.Model.score).

        >>> from fflm import NGramLM
        >>> lm = NGramLM.train(["a b", "a c"], order=2, smoothing="add-k")
        >>> abs(lm.score("a b") - (lm.logprob("a") + lm.logprob("b", ["a"]) + lm.logprob("</s>", ["b"]))) < 1e-12
        True
        """
        return float(sum(p for _, p in self.token_scores(sentence)))

    def perplexity(self, sentences):
        """10 ** (-mean log10 p) over every word and </s> of `sentences` (str or token lists).

        >>> from fflm import NGramLM
        >>> lm = NGramLM.train(["a b", "a c"], order=2, smoothing="add-k")
        >>> abs(lm.perplexity(["a b"]) - 10 ** (-lm.score("a b") / 3)) < 1e-9    # a, b and </s>
        True
        """
        contexts, targets = self._windows([_tokens(s) for s in sentences]).pairs()
        log10 = self._log10(contexts, targets)
        return float(10.0 ** (-np.mean(log10))) if len(log10) else float("nan")
