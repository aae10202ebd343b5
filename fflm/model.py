"""Ingredient II, the model: Bengio et al.'s (2003) feedforward neural language model.

    e = concat(E[w_{t-n+1}], ..., E[w_{t-1}])         the context's embeddings   (B, c*m)
    h_l = g(h_{l-1} W_l + b_l),  h_0 = e                hidden layers, g = tanh | relu | sigmoid
    z = h_L U + c  (+ e W_d with direct connections)   logits                     (B, V)
    p = softmax(z)                                      over the vocabulary without <s>

With no hidden layer (L = 0) this is multinomial logistic regression on the concatenated
embeddings. Forward and backward are composed from the kernels in kernels.py, with the
three big matrix products done by BLAS; parameters and gradients live in one allocation
each (plus the embedding table), with named views, as in llm.c.

Initialisation: E ~ N(0, 1); each weight matrix ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's
Linear default); hidden biases 0; the output bias c = log of the add-one unigram distribution of
the training corpus, so an untrained model is the unigram model rather than a uniform one.
"""

import contextlib
import json
import math
from dataclasses import asdict, dataclass, replace

import numpy as np

from . import kernels as K
from .errors import FflmError
from .fileio import atomic_write, check_readable
from .lm import LanguageModel
from .output import AUTO_ADAPTIVE, SOFTMAXES, AdaptiveSoftmax, Buffers, auto_cutoffs
from .output import shapes as output_shapes
from .vocab import Vocabulary

FORMAT = "fflm-model"
FORMAT_VERSION = 1

# FOFE's cut: a bag reads back L words, alpha^L of its weight left out, at most this much
FOFE_CUT = 1e-3
MAX_FOFE_LENGTH = 512


def default_fofe_length(alpha, cut=FOFE_CUT):
    """The fewest words L with alpha^L < cut: what a FOFE bag reads back by default.

    >>> default_fofe_length(0.7), default_fofe_length(0.9)
    (20, 66)
    """
    return min(MAX_FOFE_LENGTH, max(1, math.ceil(math.log(cut) / math.log(alpha))))


@dataclass(frozen=True)
class ModelConfig:
    """The architecture. `hidden` lists the hidden layers' sizes; () is logistic regression."""

    order: int = 5  # n: the model sees n-1 previous words
    embed_dim: int = 128  # m
    hidden: tuple = (256,)
    activation: str = "tanh"  # tanh | relu | sigmoid
    direct: bool = False  # Bengio's direct connections from the embeddings to the output
    cross_sentence: bool = False  # contexts run on across sentence ends (else: <s> padding)
    tied: bool = False  # the output layer is the embedding table: U = Eᵀ (needs last width == m)
    softmax: str = "full"  # full | adaptive: a head and tail clusters (fflm/output.py) | auto: by V
    cutoffs: tuple = None  # adaptive: the first id of each tail cluster (() = none); None = chosen from the counts
    tail_div: int = 4  # adaptive: tail cluster i projects to (output width) / tail_div**i units
    fofe: tuple = ()  # forgetting factors: one weighted bag of the history's embeddings each (kernels.fofe_forward)
    fofe_length: int = 0  # the words each bag reads back at most; 0 = where alpha^L < FOFE_CUT
    layer_norm: bool = False  # normalise what every layer but the first reads (the output layer's input too)
    residual: bool = False  # a hidden layer as wide as the one before adds its input: h_l = h_{l-1} + g(...)

    def __post_init__(self):
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "fofe", tuple(float(a) for a in self.fofe))
        if self.fofe and not self.fofe_length and all(0.0 < a < 1.0 for a in self.fofe):
            object.__setattr__(self, "fofe_length", default_fofe_length(max(self.fofe)))
        if self.cutoffs is not None:
            object.__setattr__(self, "cutoffs", tuple(int(c) for c in self.cutoffs))

    def check(self):
        if self.order < 2:
            raise FflmError(f"--order must be at least 2 for a neural model (it needs a context), not {self.order}")
        if self.order > 64:
            raise FflmError(f"--order {self.order} is beyond any useful context (at most 64)")
        if self.embed_dim < 1:
            raise FflmError(f"--embed-dim must be positive, not {self.embed_dim}")
        if any(not 0.0 < a < 1.0 for a in self.fofe):
            raise FflmError(f"--fofe factors lie strictly between 0 and 1, not {','.join(map(str, self.fofe))}")
        if len(self.fofe) > 4:
            raise FflmError(f"--fofe takes at most 4 forgetting factors, not {len(self.fofe)}")
        if self.fofe and not 1 <= self.fofe_length <= MAX_FOFE_LENGTH:
            raise FflmError(f"--fofe-length must be 1 to {MAX_FOFE_LENGTH}, not {self.fofe_length}")
        if any(h < 1 for h in self.hidden):
            raise FflmError(f"hidden layer sizes must be positive, not {list(self.hidden)}")
        if self.activation not in K.ACTIVATIONS:
            raise FflmError(f"unknown activation {self.activation!r} (choose from {', '.join(K.ACTIVATIONS)})")
        if self.direct and not self.hidden:
            raise FflmError("direct connections need a hidden layer (without one the model is already direct)")
        if (self.layer_norm or self.residual) and not self.hidden:
            raise FflmError("--layer-norm and --residual need a hidden layer")
        if (self.layer_norm or self.residual) and self.direct:
            raise FflmError("--layer-norm and --residual do not combine with --direct")
        if self.residual and not any(self.skips):
            raise FflmError(f"--residual needs two consecutive hidden layers of the same size, not {list(self.hidden)}")
        if self.tied:
            width = self.hidden[-1] if self.hidden else self.context_width
            if self.direct or width != self.embed_dim:
                raise FflmError(f"tied embeddings need the output layer's input to be {self.embed_dim} wide "
                                f"(--embed-dim), without --direct; here it is {width}")
        if self.softmax not in SOFTMAXES + ("auto",):
            raise FflmError(f"unknown --softmax {self.softmax!r} (choose from {', '.join(SOFTMAXES)})")
        if self.tail_div < 1:
            raise FflmError(f"--tail-div must be at least 1, not {self.tail_div}")
        if self.cutoffs and self.softmax == "full":
            raise FflmError("--cutoffs needs --softmax adaptive")
        c = self.cutoffs
        if c and (c[0] < len(Vocabulary.SPECIALS) or any(a >= b for a, b in zip(c, c[1:]))):
            raise FflmError(f"--cutoffs must rise strictly from at least {len(Vocabulary.SPECIALS)} "
                            f"(<unk>, <s>, </s> stay in the head), not {','.join(map(str, c))}")

    def check_vocab(self, V):
        """The checks that need the vocabulary's size."""
        if self.cutoffs and self.cutoffs[-1] >= V:
            raise FflmError(f"--cutoffs {','.join(map(str, self.cutoffs))} reach beyond the vocabulary ({V} words)")

    def resolve(self, counts, head_share=None):
        """This config made concrete for a vocabulary with these training counts: `auto` becomes the
        adaptive softmax from AUTO_ADAPTIVE words on (the full one below), and the adaptive
        softmax's cutoffs are chosen from the counts if none are given."""
        config = self
        if config.softmax == "auto":
            config = replace(config, softmax="adaptive" if len(counts) >= AUTO_ADAPTIVE else "full")
        if config.softmax == "adaptive" and config.cutoffs is None:
            config = replace(config, cutoffs=tuple(auto_cutoffs(counts, head_share=head_share)))
        return config

    @property
    def output_width(self):
        """H, the width of what the output layer reads: [h_L, e] with direct connections."""
        width = self.hidden[-1] if self.hidden else self.context_width
        return width + (self.context_width if self.direct else 0)

    @property
    def skips(self):
        """For each hidden layer, whether it adds its input to its output (a residual connection)."""
        return [self.residual and l > 0 and h == self.hidden[l - 1] for l, h in enumerate(self.hidden)]

    @property
    def window_width(self):
        """The concatenated window's width, (n-1) m."""
        return (self.order - 1) * self.embed_dim

    @property
    def context_width(self):
        """What the first layer reads: the window, then one m-wide FOFE bag per factor."""
        return (self.order - 1 + len(self.fofe)) * self.embed_dim

    @property
    def span(self):
        """1 + the previous ids the model reads: the order of the (context, target) pairs it
        takes, the window's n or, with FOFE, 1 + the bags' length where that is longer."""
        return max(self.order, self.fofe_length + 1 if self.fofe else 0)

    def fofe_weights(self, dtype=np.float64):
        """(F, L): alpha_f ** k for the k-th previous word (k = 0 the nearest), 0 beyond the bags'
        length where the window reads further back."""
        L = self.span - 1
        w = np.zeros((len(self.fofe), L), dtype=np.float64)
        for f, a in enumerate(self.fofe):
            w[f, : self.fofe_length] = a ** np.arange(self.fofe_length)
        return w.astype(dtype)

    def shapes(self, V):
        """Every parameter's name and shape, weights before biases (weight decay skips biases)."""
        weights, biases = [], []
        width = self.context_width
        for l, h in enumerate(self.hidden, 1):
            weights.append((f"W{l}", (width, h)))
            biases.append((f"b{l}", (h,)))
            width = h
        if self.layer_norm:  # gains and biases of the normalisations before layers 2.. and the output layer
            for l, h in enumerate(self.hidden[:-1], 2):
                biases += [(f"ln{l}_gain", (h,)), (f"ln{l}_bias", (h,))]
            biases += [("lnf_gain", (width,)), ("lnf_bias", (width,))]
        if self.softmax == "adaptive":
            out_weights, out_biases = output_shapes(self, V)
            return [("E", (V, self.embed_dim))] + weights + out_weights + biases + out_biases
        if not self.tied:
            weights.append(("U", (width, V)))
        if self.direct:
            weights.append(("Wd", (self.context_width, V)))
        biases.append(("c", (V,)))
        return [("E", (V, self.embed_dim))] + weights + biases

    def n_params(self, V):
        return sum(math.prod(s) for _, s in self.shapes(V))

    def to_dict(self):
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["cutoffs"] = None if self.cutoffs is None else list(self.cutoffs)
        d["fofe"] = list(self.fofe)
        return d

    @classmethod
    def from_dict(cls, d):
        """The config a model file describes; ValueError unless every field has the right type."""
        kinds = {"order": int, "embed_dim": int, "hidden": list, "activation": str, "direct": bool,
                 "cross_sentence": bool, "tied": bool, "softmax": str, "cutoffs": list, "tail_div": int,
                 "fofe": list, "fofe_length": int, "layer_norm": bool, "residual": bool}
        if not isinstance(d, dict):
            raise ValueError("the configuration is not a mapping")
        for k, kind in kinds.items():
            v = d.get(k)
            if k == "cutoffs" and v is None:
                continue
            if k in d and (not isinstance(v, kind) or (kind is int and isinstance(v, bool))):
                raise ValueError(f"{k} should be {kind.__name__}, not {v!r}")
        for k in ("hidden", "cutoffs"):
            if any(not isinstance(h, int) or isinstance(h, bool) for h in d.get(k) or []):
                raise ValueError(f"{k} should list integers, not {d[k]!r}")
        if any(not isinstance(a, (int, float)) or isinstance(a, bool) for a in d.get("fofe") or []):
            raise ValueError(f"fofe should list numbers, not {d['fofe']!r}")
        return cls(**{k: d[k] for k in kinds if k in d})


def memory_estimate(config, V, batch_size, dtype=np.float32, noise_samples=0, optimizer="sgd"):
    """Bytes that training needs: parameters, gradients, the best and the last good copies, the
    optimizer's moments (and their good copies), and the batch buffers
    (the logits are (B, V) for the softmax, (B, B + k) for a sampled objective, the head's and
    the largest cluster's for the adaptive softmax), and the 1024-row logits that scoring
    validation text uses."""
    item = np.dtype(dtype).itemsize
    params = config.n_params(V) * item
    S = batch_size + noise_samples if noise_samples else V
    if config.softmax == "adaptive":  # the head's logits and the largest cluster's
        bounds = list(config.cutoffs) + [V]
        S = bounds[0] + len(config.cutoffs) + max(b - a for a, b in zip(bounds, bounds[1:]))
    batch = batch_size * (2 * config.context_width + 2 * sum(config.hidden) + S) * item
    if config.direct:
        batch += 2 * batch_size * (config.hidden[-1] + config.context_width) * item
    if config.layer_norm or config.residual:  # normalised copies and residual sums, with their gradients
        batch += 4 * batch_size * sum(config.hidden) * item
    moments = {"sgd": 0, "adagrad": 1, "adam": 2}[optimizer]
    return (4 + 2 * moments) * params + batch + 1024 * S * item


class Workspace:
    """Every activation and gradient buffer for batches of up to `batch_size` rows, made once."""

    def __init__(self, model, batch_size, noise_samples=0, dropout=(0.0, 0.0), seed=0):
        """dropout: (embeddings, hidden layers) probabilities, for a training workspace."""
        cfg, dt, V = model.config, model.dtype, len(model.vocab)
        B = batch_size
        self.batch_size = B
        self.x = np.empty((B, cfg.span - 1), dtype=np.int32)
        self.y = np.empty(B, dtype=np.int32)
        self.e = np.empty((B, cfg.context_width), dtype=dt)
        self.de = np.empty((B, cfg.context_width), dtype=dt)
        self.h = [np.empty((B, h), dtype=dt) for h in cfg.hidden]  # g(a): what g' is computed from
        self.dh = [np.empty((B, h), dtype=dt) for h in cfg.hidden]
        # residual layers: the sum h_{l-1} + g(a) (the layer's output), and a copy of its gradient
        self.r = [np.empty((B, h), dtype=dt) if s else None for h, s in zip(cfg.hidden, cfg.skips)]
        self.dskip = [np.empty((B, h), dtype=dt) if s else None for h, s in zip(cfg.hidden, cfg.skips)]
        # layer norm: what layer l (l >= 1) and the output layer read, with each row's mean and 1/std
        reads = list(cfg.hidden) if cfg.layer_norm else []
        self.u = [np.empty((B, h), dtype=dt) for h in reads]  # u[l-1] is what layer l reads, u[-1] the output layer
        self.du = [np.empty((B, h), dtype=dt) for h in reads]
        self.mean = [np.empty(B, dtype=dt) for _ in reads]
        self.rstd = [np.empty(B, dtype=dt) for _ in reads]
        if cfg.direct:  # the output layer reads [h_L, e] as one matrix, so one GEMM does U and W_d
            width = cfg.hidden[-1] + cfg.context_width
            self.out_in = np.empty((B, width), dtype=dt)
            self.d_out_in = np.empty((B, width), dtype=dt)
        self.nll = np.empty(B, dtype=dt)
        self.mark = np.zeros(V, dtype=np.int8)
        self.rows = np.empty(B * (cfg.span - 1), dtype=np.int64)
        if noise_samples:  # the sampled objectives: at most B targets + k noise words a batch
            S, H = B + noise_samples, model.U_all.shape[0]
            self.col_mark = np.zeros(V, dtype=np.int32)
            self.cols = np.empty(S, dtype=np.int64)
            self.pos = np.empty(B, dtype=np.int64)
            self.negw = np.empty(S, dtype=dt)
            self.Us, self.dUs = np.empty(H * S, dtype=dt), np.empty(H * S, dtype=dt)
            self.cs, self.dcs, self.offset = np.empty(S, dtype=dt), np.empty(S, dtype=dt), np.empty(S, dtype=dt)
            self.zs = np.empty(B * S, dtype=dt)
        adaptive = model.output is not None
        self.z = np.empty((B, V), dtype=dt) if not (noise_samples or adaptive) else None
        self.out = Buffers(model.output, B, dt) if adaptive else None  # the adaptive softmax's
        self.p_embed, self.p_hidden = dropout
        if self.p_embed or self.p_hidden:  # masks, and the dropped copies the next layer reads
            self.rng = np.random.default_rng([seed, 2])  # a stream of its own
            self.mask_e = np.empty((B, cfg.context_width), dtype=dt) if self.p_embed else None
            self.mask_h = [np.empty((B, h), dtype=dt) for h in cfg.hidden] if self.p_hidden else []
            self.hd = [np.empty((B, h), dtype=dt) for h in cfg.hidden] if self.p_hidden else []
        else:
            self.mask_e, self.mask_h, self.hd = None, [], []

    def layer_input(self, l, B):
        """What hidden layer l (0 = the first; len(hidden) = the output layer) is given: the
        embeddings, or layer l-1's output, after dropout when it is on (before layer norm)."""
        if l == 0:
            return self.e[:B]
        if self.hd:
            return self.hd[l - 1][:B]
        return self.r[l - 1][:B] if self.r[l - 1] is not None else self.h[l - 1][:B]

    def linear_input(self, l, B):
        """What layer l's matrix multiplies: its input, normalised when layer norm is on (l >= 1)."""
        return self.u[l - 1][:B] if self.u and l > 0 else self.layer_input(l, B)

    def drop(self, a, mask, p):
        if p > 0:
            B = len(a)
            self.rng.random(out=mask[:B], dtype=mask.dtype)
            K.dropout_forward(a, mask[:B], p)


class FFNNLM(LanguageModel):
    """The feedforward neural language model: parameters, forward, backward, files.

    >>> from fflm import Vocabulary
    >>> vocab = Vocabulary(["a", "b", "c"])
    >>> lm = FFNNLM(vocab, ModelConfig(order=3, embed_dim=4, hidden=(8,)), seed=0)
    >>> p = lm.probs(np.array([[1, 1]]))        # p(w | <s> <s>) for every w
    >>> p.shape, round(float(p.sum()), 5), float(p[0, vocab.BOS_ID])
    ((1, 6), 1.0, 0.0)

    From sentences to a trained model and back (fflm.lm gives logprob, score, perplexity):

    >>> from fflm.train import fit
    >>> corpus = ["the cat sat on the mat", "the dog sat on the log", "a cat ran"] * 20
    >>> lm = fit(corpus, ModelConfig(order=3, embed_dim=8, hidden=(16,)), epochs=3, seed=1)
    >>> lm.perplexity(corpus) < 10 < len(lm.vocab) - 1    # it learned: far below a uniform guess
    True
    >>> lm.logprob("sat", ["the", "cat"]) > lm.logprob("log", ["the", "cat"])
    True
    >>> abs(lm.score("the cat sat") - sum(p for _, p in lm.token_scores("the cat sat"))) < 1e-9
    True
    >>> len(lm.generate(num_samples=2, prompt="the", seed=3))
    2
    """

    def __init__(self, vocab, config=ModelConfig(), dtype=np.float32, seed=0, unigram_counts=None):
        config.check()
        counts = unigram_counts if unigram_counts is not None else vocab.counts
        config = config.resolve(counts)  # --softmax auto, and the adaptive softmax's cutoffs
        config.check_vocab(len(vocab))
        self.vocab = vocab
        self.config = config
        self.dtype = np.dtype(dtype)
        self.kind = K.ACTIVATIONS[config.activation]
        V = len(vocab)
        shapes = config.shapes(V)
        self.E = np.empty(shapes[0][1], dtype=self.dtype)
        self.dE = np.zeros_like(self.E)
        dense = shapes[1:]
        total = sum(math.prod(s) for _, s in dense)
        self.dense = np.empty(total, dtype=self.dtype)  # every parameter but E, in one allocation
        self.grad = np.zeros(total, dtype=self.dtype)
        self.params, self.grads = {"E": self.E}, {"E": self.dE}
        offset, starts = 0, {}
        for name, shape in dense:
            size = math.prod(shape)
            starts[name] = offset
            self.params[name] = self.dense[offset : offset + size].reshape(shape)
            self.grads[name] = self.grad[offset : offset + size].reshape(shape)
            offset += size
        self.n_weights = sum(math.prod(s) for n, s in dense if len(s) == 2)  # matrices first, then the vectors
        self.W = [self.params[f"W{l}"] for l in range(1, len(config.hidden) + 1)]
        self.b = [self.params[f"b{l}"] for l in range(1, len(config.hidden) + 1)]
        self.dW = [self.grads[f"W{l}"] for l in range(1, len(config.hidden) + 1)]
        self.db = [self.grads[f"b{l}"] for l in range(1, len(config.hidden) + 1)]
        # layer norm's gains and biases: ln[l - 1] before layer l (l >= 1), ln[-1] before the output layer
        names = [f"ln{l}" for l in range(2, len(config.hidden) + 1)] + ["lnf"] if config.layer_norm else []
        self.ln = [(self.params[f"{n}_gain"], self.params[f"{n}_bias"]) for n in names]
        self.dln = [(self.grads[f"{n}_gain"], self.grads[f"{n}_bias"]) for n in names]
        # U and W_d are consecutive in `dense`, so [U; W_d] is one (H + c*m, V) matrix
        out_rows = config.output_width
        self.output = None  # the full softmax's output layer is U_all, c
        if config.tied:
            self.all_rows = np.arange(V, dtype=np.int64)  # E's gradient is dense now
        if config.softmax == "adaptive":  # its own views of the parameters (fflm/output.py)
            self.output = AdaptiveSoftmax(self)
            self.U_all = self.dU_all = None
            start = self.n_weights
        elif config.tied:  # the output layer reads the embedding table, transposed (a view)
            start = self.n_weights
            self.U_all, self.dU_all = self.E.T, None
        else:
            start = starts["U"]
            self.U_all = self.dense[start : start + out_rows * V].reshape(out_rows, V)
            self.dU_all = self.grad[start : start + out_rows * V].reshape(out_rows, V)
        self.c, self.dc = self.params["c"], self.grads["c"]
        # dense = [hidden weights | U (and W_d) | hidden biases | c]: the regions an update treats apart
        self.U_start, self.c_start = start, starts["c"]
        self.fofe_weights = config.fofe_weights(self.dtype)
        self._init(np.random.default_rng(seed), counts)
        self._eval_ws = None
        self.set_precision("fp32")

    def _init(self, rng, counts):
        if self.config.tied:  # as output weights, N(0, 1) would start with huge logits
            bound = 1.0 / math.sqrt(self.config.embed_dim)
            self.E[...] = rng.uniform(-bound, bound, self.E.shape)
        else:
            self.E[...] = rng.standard_normal(self.E.shape)
        for name, p in self.params.items():
            if name == "E":
                continue
            if p.ndim == 2:
                bound = 1.0 / math.sqrt(p.shape[0])
                p[...] = rng.uniform(-bound, bound, p.shape)
            else:
                p[...] = 1.0 if name.endswith("_gain") else 0.0  # layer norm starts as the identity
        counts = np.asarray(counts, dtype=np.float64)
        log_unigram = np.log((counts + 1.0) / (counts.sum() + len(counts)))
        if self.output is not None:
            self.output.init_bias(log_unigram)
        else:
            self.c[...] = log_unigram

    # --- the sentence-level API (fflm.lm.LanguageModel) and training from sentences -----------
    @property
    def order(self):
        return self.config.order

    @property
    def span(self):
        return self.config.span

    def _windows(self, sentences):
        return self.windows(sentences)

    def _log10(self, contexts, targets):
        return self.log10_probs(contexts, targets)

    def generate(self, num_samples=1, prompt="", num_words=30, temperature=1.0, top_k=0, seed=None, no_unk=False):
        """Sampled continuations of `prompt`, each a string (see fflm.generate.sample).

        >>> from fflm import Vocabulary
        >>> lm = FFNNLM(Vocabulary(["a", "b"]), ModelConfig(order=2, embed_dim=2, hidden=(3,)), seed=0)
        >>> lm.generate(num_samples=2, prompt="a", seed=1) == lm.generate(num_samples=2, prompt="a", seed=1)
        True
        """
        from .generate import sample

        prompt = prompt.split() if isinstance(prompt, str) else list(prompt)
        samples = sample(self, num_samples, prompt, num_words, temperature, top_k, seed, no_unk)
        return [" ".join(s) for s in samples]

    def windows(self, sentences):
        """The (context, target) pairs this model reads for `sentences`: its order, its padding."""
        from .windows import Windows

        return Windows.from_sentences(sentences, self.vocab, self.config.span, self.config.cross_sentence)

    # --- precision: which arithmetic the matrix products use (fflm/bf16.py) ---------------------
    def set_precision(self, precision):
        """'fp32', 'bf16' (bfloat16 operands, float32 sums and everything else) or 'auto' (bf16
        where the CPU has AMX); returns the one in use. Weights stay float32 either way, so
        the choice is not part of the model file."""
        from .bf16 import Matmul, resolve_precision

        p = resolve_precision(precision)
        if p == "bf16" and self.dtype != np.float32:
            raise FflmError(f"--precision bf16 needs a float32 model, not {self.dtype}")
        if p == "bf16" and getattr(self, "_bf16", None) is None:
            self._bf16 = Matmul()  # kept, with its buffers, when precision switches back and forth
        if p != getattr(self, "precision", None):  # fp32's steps did not keep bf16's copies
            self.weights_changed()
        self.precision = p
        self._mm = self._bf16 if p == "bf16" else None
        return p

    def kept_copies(self):
        """For plain SGD in bf16: (W, dW, Q, R) for each weight matrix in `dense` as the products
        read it (each hidden layer's, the output layer's: U_all, or the adaptive layer's), Q and R
        its bfloat16 copies for the update to write as it updates W (bf16.sgd_update_kept); or
        None: fp32, engines that pack every step, or matrices that do not cover dense's weights
        exactly (so that each weight is updated once)."""
        if self._mm is None:
            return None
        mats = list(zip(self.W, self.dW))
        if self.output is not None:
            mats += self.output.dense_weights()
        elif self.dU_all is not None:
            mats.append((self.U_all, self.dU_all))
        in_dense = all(np.shares_memory(w, self.dense) for w, _ in mats)
        covered = in_dense and sum(w.size for w, _ in mats) == self.n_weights
        if not mats or not covered:
            return None
        kept = [self._mm.kept(w) for w, _ in mats]
        return None if kept[0] is None else [(w, dw, *copies) for (w, dw), copies in zip(mats, kept)]

    def weights_changed(self):
        """Say the weights were written other than by the optimizer's step (a rollback, an
        average of replicas, a load): bf16's kept copies of them are stale from here."""
        if getattr(self, "_bf16", None) is not None:
            self._bf16.forget()

    def _dot(self, a, b, out, a_t=False, b_t=False, weight=False, role="mm"):
        """out = op(a) · op(b), op transposing where a_t / b_t say: numpy's BLAS in fp32, the
        bfloat16 products in bf16 (`weight`: b is a parameter, packed once while frozen)."""
        if self._mm is None:
            np.dot(a.T if a_t else a, b.T if b_t else b, out=out)
        else:
            self._mm.dot(a, b, out, a_t, b_t, weight, role)

    def _frozen(self):
        """Inference: the weights do not change, so bf16 packs each weight once per call."""
        return self._mm.frozen() if self._mm is not None else contextlib.nullcontext()

    # --- forward and backward ------------------------------------------------------------------
    def hidden_forward(self, x, ws):
        """Everything below the output layer: returns what the output layer reads (B, H)."""
        B = len(x)
        e = ws.e[:B]
        c, w = self.config.order - 1, self.config.window_width
        K.embedding_forward(self.E, x[:, x.shape[1] - c :], e[:, :w])  # (B, n-1) int32 -> (B, (n-1)*m)
        if self.config.fofe:  # (B, L) -> (B, F*m): the history, one weighted bag per factor
            K.fofe_forward(self.E, x, self.fofe_weights, Vocabulary.BOS_ID, e[:, w:])
        ws.drop(e, ws.mask_e, ws.p_embed)
        inp = e
        for l in range(len(self.W)):
            a = ws.h[l][:B]
            self._dot(self._normalised(inp, l, ws), self.W[l], a, weight=True, role=f"W{l}")  # (B, in) @ (in, H)
            K.bias_forward(a, self.b[l])
            K.activation_forward(a, self.kind)
            out = a
            if ws.r[l] is not None:  # residual: the layer adds its input; a stays for g'(a)
                out = ws.r[l][:B]
                np.add(inp, a, out=out)
            inp = out
            if ws.hd:  # dropout: the next layer reads a masked copy
                inp = ws.hd[l][:B]
                inp[...] = out
                ws.drop(inp, ws.mask_h[l], ws.p_hidden)
        if self.ln:
            inp = self._normalised(inp, len(self.W), ws)
        if self.config.direct:
            out_in = ws.out_in[:B]
            H = inp.shape[1]
            out_in[:, :H] = inp
            out_in[:, H:] = e
            inp = out_in
        return inp

    def _normalised(self, inp, l, ws):
        """What layer l's matrix reads: inp, or its layer norm (layers after the first, the output layer)."""
        if not self.ln or l == 0:
            return inp
        B = len(inp)
        u = ws.u[l - 1][:B]
        K.layernorm_forward(inp, *self.ln[l - 1], u, ws.mean[l - 1][:B], ws.rstd[l - 1][:B])
        return u

    def _normalised_backward(self, du, l, ws, dx):
        """dx = dL/d(layer l's input) from du = dL/d(its layer norm), with the gain's and bias's gradients."""
        B = len(du)
        x, mean, rstd = ws.layer_input(l, B), ws.mean[l - 1][:B], ws.rstd[l - 1][:B]
        K.layernorm_backward(du, x, mean, rstd, self.ln[l - 1][0], dx)
        K.layernorm_params_grad(du, x, mean, rstd, *self.dln[l - 1])

    def forward(self, x, ws):
        """Logits for contexts x (B, n-1) into ws.z[:B]; keeps what the backward needs."""
        inp = self.hidden_forward(x, ws)
        z = ws.z[: len(x)]
        self._dot(inp, self.U_all, z, weight=True, role="U")  # (B, H) @ (H, V) -> (B, V): the biggest product
        K.bias_forward(z, self.c)
        return z

    def backward(self, x, ws, scale):
        """Gradients of scale * (sum of the rows' losses), given ws.z already holding dL/dz.

        Writes every dense gradient (overwritten, not accumulated) and adds the embedding rows'
        gradients into dE (the optimizer zeroes those rows after its step).
        """
        B = len(x)
        dz = ws.z[:B]
        if self.config.tied:  # dEᵀ = out_inᵀ dz, written as dE = dzᵀ out_in; the inputs' share is added below
            self._dot(dz, self._out_in(ws, B), self.dE, a_t=True, role="dU")  # (V, B) @ (B, m) -> (V, m)
        else:
            self._dot(self._out_in(ws, B), dz, self.dU_all, a_t=True, role="dU")  # (H, B) @ (B, V) -> (H, V)
        K.column_sums(dz, self.dc)  # 1ᵀ dz: the bias's input is a constant 1
        self._dot(dz, self.U_all, self._d_out_in(ws, B), b_t=True, weight=True, role="dh")  # (B, V) @ (V, H)
        self.hidden_backward(x, ws)

    def _out_in(self, ws, B):
        """The output layer's input: [h_L, e] with direct connections, else h_L (or e), normalised
        with layer norm."""
        if self.config.direct:
            return ws.out_in[:B]
        return ws.linear_input(len(ws.h), B)

    def _d_out_in(self, ws, B):
        if self.config.direct:
            return ws.d_out_in[:B]
        if self.ln:
            return ws.du[-1][:B]
        return ws.dh[-1][:B] if ws.dh else ws.de[:B]

    def hidden_backward(self, x, ws):
        """From dL/d(output layer's input), in _d_out_in, down to the embeddings."""
        B = len(x)
        hidden = [h[:B] for h in ws.h]
        if hidden:
            if self.config.direct:
                d_out = ws.d_out_in[:B]
                ws.dh[-1][:B] = d_out[:, : hidden[-1].shape[1]]
            if self.ln:
                self._normalised_backward(ws.du[-1][:B], len(hidden), ws, ws.dh[-1][:B])
            for l in range(len(hidden) - 1, -1, -1):
                dh = ws.dh[l][:B]
                if ws.hd:
                    K.dropout_backward(dh, ws.mask_h[l][:B])
                skip = ws.dskip[l][:B] if ws.dskip[l] is not None else None
                if skip is not None:  # the residual path: the input's gradient includes the output's
                    skip[...] = dh
                K.activation_backward(dh, hidden[l], self.kind)  # dL/da = dL/dh * g'(a)
                self._dot(ws.linear_input(l, B), dh, self.dW[l], a_t=True, role=f"dW{l}")
                K.column_sums(dh, self.db[l])
                d_below = ws.dh[l - 1][:B] if l > 0 else ws.de[:B]
                if self.ln and l > 0:
                    du = ws.du[l - 1][:B]
                    self._dot(dh, self.W[l], du, b_t=True, weight=True, role=f"dx{l}")
                    self._normalised_backward(du, l, ws, d_below)
                else:
                    self._dot(dh, self.W[l], d_below, b_t=True, weight=True, role=f"dx{l}")
                if skip is not None:
                    d_below += skip
            if self.config.direct:
                ws.de[:B] += d_out[:, hidden[-1].shape[1] :]
        if ws.mask_e is not None:
            K.dropout_backward(ws.de[:B], ws.mask_e[:B])
        c, w = self.config.order - 1, self.config.window_width
        K.embedding_backward(ws.de[:B, :w], x[:, x.shape[1] - c :], self.dE)
        if self.config.fofe:
            K.fofe_backward(ws.de[:B, w:], x, self.fofe_weights, Vocabulary.BOS_ID, self.dE)

    def loss_and_grad(self, x, y, ws):
        """Mean cross-entropy (nats) of the batch, with its gradient in grad / dE."""
        B = len(x)
        nll = ws.nll[:B]
        if self.output is not None:  # the adaptive softmax: only the targets' clusters
            self.output.loss_and_grad(self.hidden_forward(x, ws), y, ws.out, 1.0 / B, nll, self._d_out_in(ws, B))
            self.hidden_backward(x, ws)
            return float(nll.sum(dtype=np.float64)) / B
        z = self.forward(x, ws)
        K.softmax_xent_fused(z, y, Vocabulary.BOS_ID, 1.0 / B, nll)  # z := dL/dz
        self.backward(x, ws, 1.0 / B)
        return float(nll.sum(dtype=np.float64)) / B

    def sampled_loss_and_grad(self, x, y, noise, log_kq, ws):
        """Mean sampled loss (negative sampling, or NCE when log_kq holds log(k q(w))) and its
        gradient: the hidden layers' in grad / dE as usual, the output layer's only for the
        S sampled columns, in ws.dUs[:, :S] and ws.dcs[:S]. Returns (loss, S)."""
        B = len(x)
        inp = self.hidden_forward(x, ws)
        pos = ws.pos[:B]
        S = K.sampled_columns(y, noise, ws.col_mark, ws.cols, pos, ws.negw)
        cols, negw = ws.cols[:S], ws.negw[:S]
        H = self.U_all.shape[0]
        Us, dUs = ws.Us[: H * S].reshape(H, S), ws.dUs[: H * S].reshape(H, S)
        cs, dcs, offset = ws.cs[:S], ws.dcs[:S], ws.offset[:S]
        K.gather_columns(self.U_all, self.c, cols, S, Us, cs)
        np.take(log_kq, cols, out=offset)
        z = ws.zs[: B * S].reshape(B, S)
        self._dot(inp, Us, z, role="U")  # (B, H) @ (H, S): the sample's logits, one GEMM
        K.bias_forward(z, cs)
        nll = ws.nll[:B]
        K.sampled_loss_fused(z, pos, negw, offset, 1.0 / B, nll)  # z := dL/dz
        self._dot(inp, z, dUs, a_t=True, role="dU")
        K.column_sums(z, dcs)
        self._dot(z, Us, self._d_out_in(ws, B), b_t=True, role="dh")
        self.hidden_backward(x, ws)
        return float(nll.sum(dtype=np.float64)) / B, S

    # --- inference -----------------------------------------------------------------------------
    def _workspace(self, B):
        if self._eval_ws is None or self._eval_ws.batch_size < B:
            self._eval_ws = Workspace(self, B)
        return self._eval_ws

    def nll(self, contexts, targets, batch_size=1024):
        """Negative log-likelihood in nats of each target, with the exact softmax (float64 out)."""
        contexts = np.ascontiguousarray(contexts, dtype=np.int32)
        targets = np.ascontiguousarray(targets, dtype=np.int32)
        out = np.empty(len(targets), dtype=np.float64)
        step = max(1, min(batch_size, len(targets)))
        ws = self._workspace(step)
        with self._frozen():
            for s in range(0, len(targets), step):
                x, y = contexts[s : s + step], targets[s : s + step]
                nll = ws.nll[: len(x)]
                if self.output is not None:
                    self.output.nll(self.hidden_forward(x, ws), y, ws.out, nll)
                else:
                    K.softmax_xent_forward(self.forward(x, ws), y, Vocabulary.BOS_ID, nll)
                out[s : s + len(x)] = nll
        return out

    def log10_probs(self, contexts, targets, batch_size=1024):
        """log10 p(target | context) per row: what the perplexity report sums."""
        return -self.nll(contexts, targets, batch_size) / math.log(10)

    def probs(self, contexts, temperature=1.0):
        """p(w | context) for every w, one row per context (B, V); <s> always gets 0."""
        contexts = np.ascontiguousarray(contexts, dtype=np.int32)
        ws = self._workspace(len(contexts))
        if self.output is not None:  # exact log p from both factors, then the temperature
            logp = np.empty((len(contexts), len(self.vocab)), dtype=np.float64)
            with self._frozen():
                self.output.log_probs(self.hidden_forward(contexts, ws), ws.out, logp)
            logp /= temperature
            p = np.empty_like(logp)
            K.softmax_forward(logp, Vocabulary.BOS_ID, p)
            return p
        with self._frozen():
            z = self.forward(contexts, ws)
        if temperature != 1.0:
            z /= temperature
        p = np.empty(z.shape, dtype=np.float64)
        K.softmax_forward(z.astype(np.float64), Vocabulary.BOS_ID, p)
        return p

    def draw(self, contexts, rng, no_unk=False):
        """One next word per context, drawn from p(w | context) at temperature 1 over every word,
        for the adaptive softmax: a cluster, then a word in it, never the whole distribution."""
        contexts = np.ascontiguousarray(contexts, dtype=np.int32)
        u = rng.random((len(contexts), 2))
        ws = self._workspace(len(contexts))
        return self.output.sample(self.hidden_forward(contexts, ws), ws.out, u, no_unk)

    # --- files ---------------------------------------------------------------------------------
    def save(self, path, meta=None):
        """One .npz file, no pickle: the weights and a JSON 'meta' entry (config, vocabulary, ...).

        >>> import tempfile, os
        >>> from fflm import Vocabulary
        >>> lm = FFNNLM(Vocabulary(["a", "b"]), ModelConfig(order=2, embed_dim=2, hidden=(3,)))
        >>> path = os.path.join(tempfile.mkdtemp(), "m.npz")
        >>> lm.save(path)
        >>> again, meta = FFNNLM.load(path)
        >>> bool((again.dense == lm.dense).all()), meta["config"]["order"]
        (True, 2)
        """
        for name, p in self.params.items():
            if not np.isfinite(p).all():  # divergence must never reach a model file
                raise FflmError(f"{path}: not saved: {name} contains NaN or infinite values")
        info = {"format": FORMAT, "version": FORMAT_VERSION, **self.describe()}
        info.update(meta or {})
        arrays = {name: p for name, p in self.params.items()}
        arrays["meta"] = np.array(json.dumps(info, ensure_ascii=False))
        with atomic_write(path, "wb") as f:
            np.savez(f, **arrays)

    def describe(self):
        """What rebuilds this model's shape: config, parameter type, vocabulary (JSON-ready)."""
        return {"config": self.config.to_dict(), "dtype": self.dtype.name, "vocab": self.vocab.to_dict()}

    @classmethod
    def from_description(cls, d, path):
        """A model (freshly initialised) of the shape `describe` gave; FflmError if it is damaged."""
        try:
            config = ModelConfig.from_dict(d["config"])
            vocab = Vocabulary.from_dict(d["vocab"], source=path)
            dtype = np.dtype(d.get("dtype", "float32"))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FflmError(f"{path}: damaged model metadata ({type(e).__name__}: {e})") from None
        if dtype not in (np.float32, np.float64):
            raise FflmError(f"{path}: unsupported parameter type {dtype}")
        try:
            config.check()
        except FflmError as e:
            raise FflmError(f"{path}: impossible model configuration: {e}") from None
        return cls(vocab, config, dtype=dtype)

    @classmethod
    def load(cls, path):
        """Load and validate a model file; returns (model, meta). Never unpickles anything.

        >>> FFNNLM.load("no-such-model.npz")
        Traceback (most recent call last):
        fflm.errors.FflmError: no-such-model.npz: no such file

        (FFNNLM.save shows a round trip.)
        """
        path = str(path)
        arrays, meta = read_npz(path, "meta", FORMAT, FORMAT_VERSION, "model")
        model = cls.from_description(meta, path)
        expected = dict(model.config.shapes(len(model.vocab)))
        if set(arrays) != set(expected):
            missing = sorted(set(expected) - set(arrays)) or sorted(set(arrays) - set(expected))
            raise FflmError(f"{path}: weights do not match the configuration ({', '.join(missing)})")
        for name, shape in expected.items():
            a = arrays[name]
            if a.shape != tuple(shape) or a.dtype != model.dtype:
                raise FflmError(f"{path}: {name} has shape {a.shape} {a.dtype}, expected {tuple(shape)} {model.dtype}")
            if not np.isfinite(a).all():
                raise FflmError(f"{path}: {name} contains NaN or infinite values")
            model.params[name][...] = a
        return model, meta


def read_npz(path, meta_key, fmt, version, what, arrays=True):
    """(arrays, metadata) from an .npz file fflm wrote: its format name and version checked,
    every array read into memory (none if not `arrays`), object arrays refused (never unpickled)."""
    path = str(path)
    check_readable(path)
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise FflmError(f"{path}: not a readable fflm {what} file (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as f:
            names = set(f.files)
            if meta_key not in names:
                raise FflmError(f"{path}: not an fflm {what} file (no metadata)")
            meta = json.loads(str(f[meta_key][()]))
            arrays = {n: f[n] for n in names if n != meta_key} if arrays else {}
    except FflmError:
        raise
    except ValueError as e:
        if "pickle" in str(e).lower() or "object" in str(e).lower():
            raise FflmError(f"{path}: contains object arrays, which would need pickle; refused") from None
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FflmError(f"{path}: not a readable fflm {what} file ({first})") from None
    except Exception as e:  # noqa: BLE001  zipfile and numpy's header parser answer damaged bytes with
        # BadZipFile, zlib.error, NotImplementedError, RuntimeError, SyntaxError, TokenError, ...:
        # only reading happens in this block, so any of them means the file is unreadable
        raise FflmError(f"{path}: not a readable fflm {what} file ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise FflmError(f"{path}: not an fflm {what} file")
    v = meta.get("version")
    if not isinstance(v, int) or v > version:
        raise FflmError(f"{path}: {what} format version {v} is newer than this fflm reads ({version}); upgrade fflm")
    return arrays, meta
