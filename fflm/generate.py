"""Ingredient V, inference: sampling sentences from the model, one word at a time.

Each step turns the logits for the current context into a distribution (divided by a
temperature, optionally cut to the k most likely words), draws the next word from it, and
slides the window. <s> is never drawn; a sentence ends at </s> or after `num_words` words.
"""

import contextlib

import numpy as np

from .errors import FflmError
from .vocab import Vocabulary


def sample(model, num_samples=1, prompt=(), num_words=30, temperature=1.0, top_k=0, seed=None, no_unk=False):
    """Draw `num_samples` continuations of `prompt` (a list of words); returns lists of words.

    temperature < 1 sharpens the distribution, > 1 flattens it; top_k > 0 keeps only the k
    most likely words; no_unk never draws <unk>. Same seed, same samples.
    """
    if not temperature > 0:
        raise FflmError(f"--temperature must be positive, not {temperature}")
    if top_k < 0:
        raise FflmError(f"--top-k cannot be negative, not {top_k}")
    if num_words < 1 or num_samples < 1:
        raise FflmError("--num-words and --num-samples must be at least 1")
    rng = np.random.default_rng(seed)
    vocab = model.vocab
    c = model.config.span - 1
    prompt_ids = vocab.encode(list(prompt)).tolist()
    history = [Vocabulary.BOS_ID] * c + prompt_ids
    contexts = np.tile(np.array(history[-c:], dtype=np.int32), (num_samples, 1))
    out = [[] for _ in range(num_samples)]
    alive = np.ones(num_samples, dtype=bool)
    with getattr(model, "_frozen", contextlib.nullcontext)():  # bf16: weights packed once, not per word
        _steps(model, rng, contexts, out, alive, num_words, temperature, top_k, no_unk)
    return [prompt_ids_words(vocab, prompt) + vocab.decode(ws) for ws in out]


def _steps(model, rng, contexts, out, alive, num_words, temperature, top_k, no_unk):
    for _ in range(num_words + 1):  # the last step can only end the sentence
        rows = np.flatnonzero(alive)
        if len(rows) == 0:
            break
        if getattr(model, "output", None) is not None and temperature == 1.0 and not top_k:
            draws = model.draw(contexts[rows], rng, no_unk)  # the adaptive softmax: cluster, then word
        else:
            p = model.probs(contexts[rows], temperature=temperature)  # (R, V), p[:, <s>] == 0
            if no_unk:
                p[:, Vocabulary.UNK_ID] = 0.0
            if top_k and top_k < p.shape[1]:
                cut = np.partition(p, -top_k, axis=1)[:, -top_k][:, None]
                p[p < cut] = 0.0
            p /= p.sum(axis=1, keepdims=True)
            cum = np.cumsum(p, axis=1)
            draws = (cum < rng.random((len(rows), 1)) * cum[:, -1:]).sum(axis=1)
        for r, w in zip(rows, draws.tolist()):
            if w == Vocabulary.EOS_ID or len(out[r]) >= num_words:
                alive[r] = False
            else:
                out[r].append(w)
        contexts[rows] = np.hstack([contexts[rows, 1:], draws[:, None].astype(np.int32)])


def prompt_ids_words(vocab, prompt):
    """The prompt as the model sees it: unknown words shown as <unk>."""
    return [w if w in vocab else Vocabulary.UNK for w in prompt]
