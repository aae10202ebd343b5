"""Ingredient IV, optimization: mini-batch stochastic gradient descent.

Each epoch visits the training windows in a new random order (seeded), and each step moves
every parameter against the gradient of the batch's mean cross-entropy:

    theta <- theta - lr * (grad + weight_decay * theta)     (no decay on biases)

optionally after scaling the whole gradient down to a norm of at most `clip`. Plain SGD is
the default and the teaching path; Adagrad and Adam (`optimizer`) scale each parameter's step
by its gradient history instead (`Optimizer`). The learning
rate follows the classic recipe (`Schedule`, as in Mikolov's RNNLM toolkit): after each epoch
the model is scored on validation text; an epoch that makes it worse is undone (the best
weights are kept). The first time perplexity improves by less than `min_improvement`, the
learning rate starts halving, and from then on it halves after every epoch; training stops
when it stalls a second time, after `max_halvings` halvings, or after `epochs` epochs. Halving
starts at the latest `max_halvings` epochs before the cap, so a run the cap ends has annealed.
"""

import functools
import math
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from . import kernels as K
from .errors import FflmError, FflmWarning
from .model import Workspace
from .windows import SHUFFLES, BlockOrder


LOSSES = ("softmax", "nce", "neg")
OPTIMIZERS = ("sgd", "adagrad", "adam")
SCHEDULES = ("halving", "linear", "cosine")


@dataclass
class TrainConfig:
    """Optimization settings; the defaults are a good recipe for about a million words."""

    epochs: int = 12
    batch_size: int = 256
    lr: float = 0.5
    min_improvement: float = 0.003  # relative validation gain below which the learning rate halves
    max_halvings: int = 4  # stop after this many halvings
    weight_decay: float = 0.0
    dropout: float = 0.0  # probability of dropping a hidden unit (inverted dropout; off at evaluation)
    embed_dropout: float = 0.0  # the same for the concatenated context embeddings
    optimizer: str = "sgd"  # sgd | adagrad | adam
    warmup_steps: int = 0  # the learning rate rises linearly from 0 over this many first steps
    lr_decay: float = 1.0  # and is multiplied by this after every epoch (besides the halving)
    schedule: str = "halving"  # halving (on validation stalls) | linear | cosine: from lr to 0 over the run's steps
    loss: str = "softmax"  # softmax (exact cross-entropy) | nce | neg (sampled, cheaper)
    noise_samples: int = 100  # k, noise words per batch for nce / neg
    noise_power: float = 0.75  # noise distribution: unigram counts ** power
    clip: float = 0.0  # maximum gradient norm; 0 = no clipping
    seed: int = 1
    threads: int = 0  # 0 = all cores
    precision: str = "fp32"  # fp32 | bf16 (bfloat16 operands in the matrix products) | auto (fflm/bf16.py)
    max_steps: int = 0  # stop after this many SGD steps in all (0: no limit), the epoch cut short
    shuffle: str = "auto"  # full permutation | blocks (bounded memory) | auto: full up to 8M pairs (windows.shuffled)
    shuffle_block: int = 65536  # blocks: consecutive positions a block
    shuffle_pool: int = 64  # blocks: blocks pooled and shuffled together

    def check(self):
        if self.epochs < 1:
            raise FflmError(f"--epochs must be at least 1, not {self.epochs}")
        if self.shuffle not in SHUFFLES:
            raise FflmError(f"unknown --shuffle {self.shuffle!r} (choose from {', '.join(SHUFFLES)})")
        if self.shuffle_block < 1 or self.shuffle_pool < 1:
            raise FflmError("--shuffle-block and --shuffle-pool must be at least 1")
        if self.max_steps < 0:
            raise FflmError(f"--max-steps must be at least 0, not {self.max_steps}")
        if self.batch_size < 1:
            raise FflmError(f"--batch-size must be at least 1, not {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FflmError(f"--lr must be a positive number, not {self.lr}")
        if self.weight_decay < 0 or self.clip < 0:
            raise FflmError("--weight-decay and --clip cannot be negative")
        for name, p in (("--dropout", self.dropout), ("--embed-dropout", self.embed_dropout)):
            if not 0.0 <= p < 1.0:
                raise FflmError(f"{name} is a probability in [0, 1), not {p}")
        if self.warmup_steps < 0:
            raise FflmError(f"--warmup-steps cannot be negative, not {self.warmup_steps}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise FflmError(f"--lr-decay is a factor in (0, 1], not {self.lr_decay}")
        if self.schedule not in SCHEDULES:
            raise FflmError(f"unknown --schedule {self.schedule!r} (choose from {', '.join(SCHEDULES)})")
        if self.optimizer not in OPTIMIZERS:
            raise FflmError(f"unknown --optimizer {self.optimizer!r} (choose from {', '.join(OPTIMIZERS)})")
        if self.optimizer != "sgd" and self.loss != "softmax":
            raise FflmError(f"--optimizer {self.optimizer} works with --loss softmax only; use sgd with {self.loss}")
        if self.loss not in LOSSES:
            raise FflmError(f"unknown --loss {self.loss!r} (choose from {', '.join(LOSSES)})")
        if self.noise_samples < 1:
            raise FflmError(f"--noise-samples must be at least 1, not {self.noise_samples}")
        if not (self.noise_power >= 0 and math.isfinite(self.noise_power)):
            raise FflmError(f"--noise-power must be a number >= 0, not {self.noise_power}")
        if self.threads < 0:
            raise FflmError(f"--threads cannot be negative, not {self.threads}")
        from .bf16 import resolve_precision

        resolve_precision(self.precision)

    def to_dict(self):
        return asdict(self)


class Schedule:
    """The learning rate from epoch to epoch, given each epoch's validation perplexity.

    >>> s = Schedule(lr=1.0, min_improvement=0.01, max_halvings=3)
    >>> [(s.update(ppl), s.lr) for ppl in (100.0, 90.0, 89.5, 89.4, 85.0, 84.9)]
    [(False, 1.0), (False, 1.0), (False, 0.5), (False, 0.25), (False, 0.125), (True, 0.125)]
    """

    def __init__(self, lr, min_improvement, max_halvings, decay=1.0, warmup_steps=0, kind="halving", total_steps=0):
        self.lr = lr
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.kind, self.total_steps = kind, total_steps
        self.refits = []  # [step, new total]: a budgeted run's re-fitted ends (fflm/budget.py), in order
        self.min_improvement = min_improvement
        self.max_halvings = max_halvings
        self.best = math.inf
        self.halvings = 0

    def step_lr(self, step):
        """The rate for the step-th step of training (from 0): warm-up, then the epoch's rate.

        >>> Schedule(lr=1.0, min_improvement=0.01, max_halvings=5, warmup_steps=4).step_lr(1)
        0.5

        The linear and cosine schedules fall from lr after the warm-up to 0 at total_steps (the
        modern recipe), whatever validation says:

        >>> s = Schedule(1.0, 0.01, 5, warmup_steps=2, kind="linear", total_steps=10)
        >>> [round(s.step_lr(k), 3) for k in (0, 1, 2, 6, 9)]
        [0.5, 1.0, 1.0, 0.5, 0.125]
        >>> round(Schedule(1.0, 0.01, 5, kind="cosine", total_steps=10).step_lr(5), 3)
        0.5
        """
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.kind == "halving":
            return self.lr
        p = self.progress(step)
        return self.lr * ((1.0 - p) if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * p)))

    def progress(self, step):
        """How far along the schedule `step` is, 0 to 1. A re-fit at step s to a new total T
        carries on from the progress reached at s, so the rate never jumps, and reaches 1 at T:

        >>> s = Schedule(1.0, 0.01, 5, kind="linear", total_steps=10)
        >>> s.refit(4, 16)   # 40% done at step 4; the remaining 60% now spread over 12 steps
        >>> [round(s.step_lr(k), 3) for k in (3, 4, 10, 15, 16)]
        [0.7, 0.6, 0.3, 0.05, 0.0]
        """
        start, done, total = self.warmup_steps, 0.0, self.total_steps
        for at, new_total in self.refits:
            if step < at:
                break
            done = min(1.0, done + (1.0 - done) * (at - start) / max(1, total - start))
            start, total = at, new_total
        return min(1.0, done + (1.0 - done) * (step - start) / max(1, total - start))

    def refit(self, step, total):
        """From `step` on, reach the end of the schedule at `total` steps instead."""
        self.refits.append([int(step), int(total)])

    def end_epoch(self):
        """The steady decay, applied after every epoch."""
        self.lr *= self.decay

    def update(self, valid_ppl, epochs_left=None):
        """Record an epoch's perplexity; returns True when training should stop. The first stall
        starts the halving; from then on every epoch halves, a small gain included, until
        max_halvings: stopping at the second stall (Mikolov's rule) ended a Brown raw run right
        after its first halving, un-annealed, 6% short of what the annealing gives. `epochs_left`:
        how many more epochs the cap allows; once that is no more than max_halvings, halving
        starts even without a stall, so a run the cap stops has always annealed (a noisy
        high-rate run that keeps creeping forward would otherwise end un-annealed: two PTB seeds
        did).

        >>> s = Schedule(lr=1.0, min_improvement=0.01, max_halvings=2)
        >>> [(s.update(ppl, left), s.lr) for ppl, left in ((100.0, 3), (90.0, 2), (80.0, 1), (70.0, 0))]
        [(False, 1.0), (False, 0.5), (False, 0.25), (True, 0.25)]
        """
        enough = valid_ppl < self.best * (1 - self.min_improvement)
        self.best = min(self.best, valid_ppl)
        if self.kind != "halving":  # the rate follows the steps alone; the cap ends the run
            return False
        late = epochs_left is not None and epochs_left <= self.max_halvings
        if not enough or self.halvings > 0 or late:
            if self.halvings == self.max_halvings:
                return True
            self.halvings += 1
            self.lr /= 2
        return False


def set_threads(threads):
    """Use `threads` cores (0: all) for both Numba kernels and BLAS."""
    import os

    import numba
    from threadpoolctl import threadpool_limits

    n = threads or os.cpu_count() or 1
    n = min(n, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(n)
    threadpool_limits(limits=n)  # applies process-wide from here on
    return n


class Noise:
    """k noise words per batch for the sampled objectives, from q(w) proportional to
    count(w) ** power (word2vec's 3/4 flattens the unigram distribution), seeded; one draw is
    shared by every row of the batch. `log_kq` is NCE's offset log(k q(w)); zero for neg."""

    def __init__(self, counts, k, power, loss, seed, dtype):
        from .vocab import Vocabulary

        q = np.asarray(counts, dtype=np.float64) ** power
        q[Vocabulary.BOS_ID] = 0.0  # never a target, never noise
        if q.sum() <= 0:
            raise FflmError("the noise distribution is empty (no word has a count)")
        q /= q.sum()
        self.cdf = np.cumsum(q)
        self.cdf[-1] = np.inf  # rounding can leave the last sum just below any u < 1
        with np.errstate(divide="ignore"):
            log_kq = np.log(k * q) if loss == "nce" else np.zeros_like(q)
        self.log_kq = np.maximum(log_kq, -1e4).astype(dtype)  # <s>'s -inf is never read
        self.rng = np.random.default_rng([seed, 1])  # a stream apart from the shuffling's
        self.u = np.empty(k)
        self.words = np.empty(k, dtype=np.int64)

    def draw(self):
        self.rng.random(out=self.u)
        K.draw_noise(self.cdf, self.u, self.words)
        return self.words


class Optimizer:
    """The update rule: plain SGD, Adagrad or Adam over the flat dense parameters (weights
    decayed, biases not) and the embedding rows a batch touched. Holds the per-parameter state."""

    def __init__(self, model, name="sgd", beta1=0.9, beta2=0.999, eps=1e-8):
        self.name, self.beta1, self.beta2 = name, beta1, beta2
        self.eps = eps if name == "adam" else 1e-10
        self.t = 0
        state = {"sgd": 0, "adagrad": 1, "adam": 2}[name]
        self.dense_state = [np.zeros_like(model.dense) for _ in range(state)]
        self.E_state = [np.zeros_like(model.E) for _ in range(state)]

    def update(self, m, rows, count, lr, weight_decay):
        w = m.n_weights
        regions = ((slice(0, w), weight_decay), (slice(w, None), 0.0))
        kept = m.kept_copies() if self.name == "sgd" else None
        if kept is not None:  # bf16: each weight matrix's bfloat16 copies written by the pass that updates it
            from .bf16 import sgd_update_kept

            for W, dW, Q, R in kept:
                sgd_update_kept(W, dW, lr, weight_decay, Q, R)
            K.sgd_update(m.dense[w:], m.grad[w:], lr, 0.0)
            K.sgd_update_rows(m.E, m.dE, rows, count, lr, weight_decay)
            return
        m.weights_changed()  # packed afresh by the next products
        if self.name == "sgd":
            for r, wd in regions:
                K.sgd_update(m.dense[r], m.grad[r], lr, wd)
            K.sgd_update_rows(m.E, m.dE, rows, count, lr, weight_decay)
        elif self.name == "adagrad":
            (acc,), (accE,) = self.dense_state, self.E_state
            for r, wd in regions:
                K.adagrad_update(m.dense[r], m.grad[r], acc[r], lr, wd, self.eps)
            K.adagrad_update_rows(m.E, m.dE, accE, rows, count, lr, weight_decay, self.eps)
        else:
            self.t += 1
            b1, b2 = self.beta1, self.beta2
            lr_t = lr * math.sqrt(1.0 - b2**self.t) / (1.0 - b1**self.t)
            (mo, v), (mE, vE) = self.dense_state, self.E_state
            for r, wd in regions:
                K.adam_update(m.dense[r], m.grad[r], mo[r], v[r], lr_t, b1, b2, wd, self.eps)
            K.adam_update_rows(m.E, m.dE, mE, vE, rows, count, lr_t, b1, b2, weight_decay, self.eps)


class SGD:
    """One mini-batch step (gather, forward, backward, update), with buffers made once; the
    update itself is the `Optimizer`'s (plain SGD unless told otherwise).

    With a sampled objective (noise given), only the output columns in the batch's sample
    move, like the embedding rows: a step costs the sample, not the vocabulary.
    """

    def __init__(self, model, batch_size, noise=None, dropout=(0.0, 0.0), seed=0, optimizer="sgd"):
        if noise is not None and model.config.tied:
            raise FflmError("tied embeddings work with --loss softmax only")
        if noise is not None and model.output is not None:
            raise FflmError("--loss nce and neg sample the full softmax's columns: use them with --softmax full")
        self.model = model
        self.noise = noise
        self.optimizer = Optimizer(model, optimizer)
        self.ws = Workspace(model, batch_size, noise_samples=len(noise.words) if noise else 0, dropout=dropout,
                            seed=seed)

    def step(self, index, windows, lr, weight_decay, clip):
        """One mini-batch: gather, forward, backward, update. Returns the batch's mean loss."""
        ws = self.ws
        B = len(index)
        x, y = ws.x[:B], ws.y[:B]
        windows.gather(index, x, y)
        loss = self.compute(x, y)
        self.apply(lr, weight_decay, clip)
        return loss

    # The step in two halves, so that a data-parallel trainer (fflm/distributed.py) can average
    # the gradients of several replicas between them.
    def compute(self, x, y):
        """Forward and backward on the batch (x, y): the gradient is left in the model's grad and
        dE (rows[:count]) and, for a sampled objective, the sample's columns. Returns the mean loss."""
        m, ws = self.model, self.ws
        if self.noise is not None:
            loss, self.S = m.sampled_loss_and_grad(x, y, self.noise.draw(), self.noise.log_kq, ws)
            self.rows, self.count = ws.rows, K.touched_rows(x, ws.mark, ws.rows)
            return loss
        loss = m.loss_and_grad(x, y, ws)
        if m.config.tied:  # every row of E is an output weight: all of them move
            self.rows, self.count = m.all_rows, len(m.all_rows)
        else:
            self.rows, self.count = ws.rows, K.touched_rows(x, ws.mark, ws.rows)
        return loss

    def apply(self, lr, weight_decay, clip):
        """The update from the gradient `compute` left (or one put in its place)."""
        m, rows, count = self.model, self.rows, self.count
        if self.noise is not None:
            return self._sampled_apply(lr, weight_decay, clip)
        if clip > 0:
            norm = math.sqrt(float(np.dot(m.grad, m.grad)) + K.sum_squares_rows(m.dE, rows, count))
            if norm > clip:
                m.grad *= clip / norm
                K.scale_rows(m.dE, rows, count, clip / norm)
        self.optimizer.update(m, rows, count, lr, weight_decay)

    def sampled_parts(self):
        """The sampled step's gradient: (hidden weights, hidden biases, dU (H, S), dc (S,)) views."""
        m, ws, S = self.model, self.ws, self.S
        H = m.U_all.shape[0]
        return (m.grad[: m.U_start], m.grad[m.n_weights : m.c_start], ws.dUs[: H * S].reshape(H, S), ws.dcs[:S])

    def _sampled_apply(self, lr, weight_decay, clip):
        m, ws, rows, count = self.model, self.ws, self.rows, self.count
        m.weights_changed()
        gw, gb, dUs, dcs = parts = self.sampled_parts()
        if clip > 0:
            norm = math.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in parts)
                             + K.sum_squares_rows(m.dE, rows, count))
            if norm > clip:
                for g in parts:
                    g *= clip / norm
                K.scale_rows(m.dE, rows, count, clip / norm)
        K.sgd_update(m.dense[: m.U_start], gw, lr, weight_decay)
        K.sgd_update(m.dense[m.n_weights : m.c_start], gb, lr, 0.0)
        K.sgd_update_columns(m.U_all, m.c, dUs, dcs, ws.cols, self.S, lr, weight_decay)
        K.sgd_update_rows(m.E, m.dE, rows, count, lr, weight_decay)

    # A step that runs elsewhere (fflm/distributed.py) brings the state back before the Trainer
    # reads it and sends it out after the Trainer changed it; here the state is already home.
    def pull(self):
        pass

    def push(self):
        self.model.weights_changed()  # the Trainer wrote them (a rollback, the best weights, a resume)

    def worker_streams(self):
        """The random streams of other workers (fflm/distributed.py); none here."""
        return []

    def streams(self):
        """The random streams the step draws from, by name (noise and dropout masks, if used)."""
        streams = {}
        if self.noise is not None:
            streams["noise"] = self.noise.rng
        if getattr(self.ws, "rng", None) is not None:
            streams["dropout"] = self.ws.rng
        return streams


def make_noise(model, config):
    """The noise sampler a config's loss needs (None for the full softmax)."""
    if config.loss == "softmax":
        return None
    return Noise(model.vocab.counts, config.noise_samples, config.noise_power, config.loss, config.seed, model.dtype)


@functools.lru_cache(maxsize=1)
def _blas_spins():
    """Whether OpenBLAS (several threads) was loaded before fflm/__init__.py could tell it to let
    its idle threads sleep: asked once a process."""
    from threadpoolctl import threadpool_info

    from . import BLAS_LOADED_FIRST

    return BLAS_LOADED_FIRST and any(i.get("internal_api") == "openblas" and i.get("num_threads", 1) > 1
                                     for i in threadpool_info())


def warm_up(model, config=None):
    """Compile every kernel training uses (cached on disk after the first run); returns seconds."""
    start = time.perf_counter()
    from .vocab import Vocabulary
    from .windows import Windows

    n = model.config.span
    tiny = Windows(np.array([Vocabulary.BOS_ID] * max(n - 1, 1) + [Vocabulary.EOS_ID], dtype=np.int32), n)
    noise = make_noise(model, config) if config is not None else None
    dropout = (config.embed_dropout, config.dropout) if config is not None else (0.0, 0.0)
    optimizer = config.optimizer if config is not None else "sgd"
    sgd = SGD(model, 1, noise, dropout, optimizer=optimizer)  # its own sampler, masks and moments
    sgd.step(np.zeros(1, dtype=np.int64), tiny, 0.0, 0.0, 1e30)  # lr 0: no weight changes
    model.nll(*tiny.pairs())
    return time.perf_counter() - start


def evaluate_ppl(model, windows, batch_size=1024):
    if windows is None or len(windows) == 0:
        return math.nan
    # consecutive chunks (a multiple of batch_size) give the same batches as one call, in bounded memory
    nll = np.concatenate([model.nll(x, y, batch_size=batch_size) for x, y in windows.chunks(64 * batch_size)])
    return exp_or_inf(float(nll.mean()))


def exp_or_inf(x):
    """exp(x) for a mean NLL, inf where a diverged model's NLL leaves float range (not an OverflowError)."""
    return math.exp(x) if x < 709.0 else math.inf


class Diverged(FflmError):
    """Training blew up more often than `max_rollbacks` allows; the best weights are in the model."""


class Interrupted(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM) at a batch boundary; the state is whole."""


CHECKPOINT_FORMAT = "fflm-checkpoint"
CHECKPOINT_VERSION = 1


class Trainer:
    """A training run as an object whose whole state can be saved and resumed bit-identically:
    weights, optimizer moments, the three random streams (shuffling, dropout masks, noise), the
    epoch's shuffled order and position, the schedule, the best and the last good weights.

    Divergence never reaches the best weights: a non-finite loss or weight, or a mean loss twice
    the uniform model's, rolls the model back to the last good snapshot (taken every
    `snapshot_every` steps), halves the learning rate and goes on; after `max_rollbacks`
    rollbacks training stops with `Diverged`.
    """

    def __init__(self, model, train_windows, valid_windows=None, config=TrainConfig(), snapshot_every=100,
                 max_rollbacks=5):
        config.check()
        if len(train_windows) == 0:
            raise FflmError("no training data")
        if train_windows.order != model.config.span:
            raise FflmError("the training windows' order differs from the model's")
        self.model, self.windows, self.valid, self.config = model, train_windows, valid_windows, config
        self.precision = model.set_precision(config.precision)  # 'auto' as this CPU resolves it
        if self.precision == "fp32" and _blas_spins():
            warnings.warn("numpy was imported before fflm, too late for fflm to stop OpenBLAS's threads "
                          "spinning after each product, which slows the kernels beside them (a base fp32 "
                          "step: 25% slower); import fflm first, or set OPENBLAS_THREAD_TIMEOUT=4",
                          FflmWarning, stacklevel=3)
        self.snapshot_every, self.max_rollbacks = snapshot_every, max_rollbacks
        self.rng = np.random.default_rng(config.seed)
        self.sgd = SGD(model, config.batch_size, make_noise(model, config), (config.embed_dropout, config.dropout),
                       config.seed, config.optimizer)
        steps = config.epochs * -(-len(train_windows) // config.batch_size)
        self.schedule = Schedule(config.lr, config.min_improvement, config.max_halvings, config.lr_decay,
                                 config.warmup_steps, config.schedule,
                                 min(steps, config.max_steps) if config.max_steps else steps)
        self.steps, self.epoch, self.batch = 0, 1, 0  # steps done; the epoch in progress; its batches done
        self.order = None  # this epoch's shuffled pair numbers
        self.first_step_at = None  # time.time() when this run's first step began
        self.total, self.seen, self.seconds = 0.0, 0, 0.0  # this epoch's loss sum, pairs, time so far
        self.history, self.rollbacks, self.done = [], 0, False
        self.worker_rng = []  # a distributed run's workers' random streams, from a checkpoint
        self.deadline = None  # a budgeted run's clock (fflm/budget.py Deadline): re-fits the steps as it goes
        self.best = None  # (E, dense): the weights with the best validation perplexity so far
        self.good, self.good_step = self._state_arrays(), 0  # the last state known to be sane, and when
        # a mean loss of twice the uniform model's (ln V; plus ln(k+1) for a sampled objective) means
        # the weights are blowing up, even while they are still finite
        uniform = math.log(len(model.vocab)) + (math.log(config.noise_samples + 1) if config.loss != "softmax" else 0)
        self.diverged_loss, self.recent_loss = 2.0 * uniform, 0.0

    # --- the state ----------------------------------------------------------------------------
    def _state_arrays(self):
        """Copies of everything a rollback restores: weights and optimizer moments."""
        self.sgd.pull()
        opt = self.sgd.optimizer
        return [a.copy() for a in (self.model.E, self.model.dense, *opt.dense_state, *opt.E_state)] + [opt.t]

    def _restore(self, arrays):
        opt = self.sgd.optimizer
        *arrays, opt.t = arrays
        for dst, src in zip((self.model.E, self.model.dense, *opt.dense_state, *opt.E_state), arrays):
            dst[...] = src
        self.sgd.push()

    def _finite(self):
        self.sgd.pull()
        return bool(np.isfinite(self.model.dense).all() and np.isfinite(self.model.E).all())

    def _rollback(self, why, on_event):
        self.rollbacks += 1
        if self.rollbacks > self.max_rollbacks:
            self._restore(self.good)
            if self.best is not None:
                self.model.E[...], self.model.dense[...] = self.best
                self.model.weights_changed()
            raise Diverged(f"training diverged {self.rollbacks} times ({why}); the best model so far is kept; "
                            f"try a smaller --lr than {self.config.lr:g}")
        self._restore(self.good)
        self.schedule.lr /= 2
        self.recent_loss = 0.0
        if on_event:
            on_event(f"{why} in epoch {self.epoch}, step {self.steps}: rolled back to the last good weights "
                     f"(step {self.good_step}), learning rate halved to {self.schedule.lr:.4g}")

    # --- the loop -----------------------------------------------------------------------------
    def run(self, progress=None, on_epoch=None, should_stop=None, on_checkpoint=None, on_event=None,
            checkpoint_seconds=None):
        """Train until the schedule stops; returns the history (one dict per epoch).

        progress: a tqdm-like factory for the per-epoch bar. on_epoch(trainer) runs after each
        epoch with the best weights in the model (the CLI saves the model file there).
        should_stop(trainer), asked after every batch: if true, on_checkpoint(trainer) is called
        and Interrupted raised. on_checkpoint also runs every `checkpoint_seconds` and after each
        epoch. on_event(message) hears about rollbacks.
        """
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is caught and rolled back below
                return self._run(progress, on_epoch, should_stop, on_checkpoint, on_event, checkpoint_seconds)
        finally:  # bf16's kept copies live while the steps keep them: a caller may write the weights next
            self.model.weights_changed()

    def _run(self, progress, on_epoch, should_stop, on_checkpoint, on_event, checkpoint_seconds):
        config, windows, sgd = self.config, self.windows, self.sgd
        B = config.batch_size
        n_batches = -(-len(windows) // B)
        last_checkpoint = time.perf_counter()
        while not self.done:
            if self.order is None:  # a new epoch: a new random order
                self.order = windows.shuffle(self.rng, config.shuffle, config.shuffle_block, config.shuffle_pool)
                self.batch, self.total, self.seen, self.seconds = 0, 0.0, 0, 0.0
            start = time.perf_counter()
            bar = progress(total=len(windows), initial=self.batch * B, desc=f"epoch {self.epoch}", unit="tok",
                           unit_scale=True) if progress else None
            recent = []
            try:
                while self.batch < n_batches:
                    if self.config.max_steps and self.steps >= self.config.max_steps:  # a re-fit may move it
                        break
                    if should_stop is not None and should_stop(self):
                        self.seconds += time.perf_counter() - start
                        if on_checkpoint:
                            on_checkpoint(self)
                        raise Interrupted(self)
                    index = self.order[self.batch * B : (self.batch + 1) * B]
                    if self.first_step_at is None:
                        self.first_step_at = time.time()
                    loss = sgd.step(index, windows, self.schedule.step_lr(self.steps), config.weight_decay,
                                    config.clip)
                    self.steps += 1
                    self.batch += 1
                    if self.deadline is not None:
                        self.deadline.tick(self)
                    if not math.isfinite(loss):
                        self._rollback(f"the loss became {loss}", on_event)
                        continue
                    self.total += loss * len(index)
                    self.seen += len(index)
                    self.recent_loss += loss
                    if self.steps % self.snapshot_every == 0:
                        mean, self.recent_loss = self.recent_loss / self.snapshot_every, 0.0
                        if not self._finite():
                            self._rollback("the weights became NaN or infinite", on_event)
                        elif mean > self.diverged_loss:
                            self._rollback(f"the mean loss reached {mean:.3g}", on_event)
                        else:
                            self.good, self.good_step = self._state_arrays(), self.steps
                    if bar:
                        recent.append(loss)
                        bar.update(len(index))
                        if self.batch % 20 == 0:
                            bar.set_postfix(loss=f"{np.mean(recent[-100:]):.3f}", lr=f"{self.schedule.lr:.3g}",
                                            refresh=False)
                    if checkpoint_seconds and on_checkpoint and time.perf_counter() - last_checkpoint > checkpoint_seconds:
                        self.seconds += time.perf_counter() - start
                        start = time.perf_counter()
                        on_checkpoint(self)
                        last_checkpoint = time.perf_counter()
            finally:
                if bar:
                    bar.close()
            self.seconds += time.perf_counter() - start
            self._end_epoch(on_event)
            if on_epoch:
                on_epoch(self)
            if on_checkpoint:
                on_checkpoint(self)
                last_checkpoint = time.perf_counter()
        return self.history

    def _end_epoch(self, on_event):
        config, model = self.config, self.model
        start = time.perf_counter()
        self.sgd.pull()  # a distributed step's replicas hand back the weights they trained
        if not self._finite():
            self._rollback("the weights became NaN or infinite", on_event)
        valid_ppl = evaluate_ppl(model, self.valid)
        eval_seconds = time.perf_counter() - start
        seen = max(self.seen, 1)
        row = {
            "epoch": self.epoch,
            # the training loss is a perplexity only for the full softmax
            "train_ppl": exp_or_inf(self.total / seen) if config.loss == "softmax" and self.seen else None,
            "train_loss": self.total / seen,
            "valid_ppl": valid_ppl,
            # the rate of the epoch's last step (the steady rate for the halving schedule)
            "lr": self.schedule.step_lr(self.steps - 1) if config.schedule != "halving" else self.schedule.lr,
            "seconds": round(self.seconds + time.perf_counter() - start, 3),
            "tokens_per_s": round(self.seen / self.seconds, 1) if self.seconds > 0 else None,
        }
        self.history.append(row)
        stop = False
        if self.valid is not None and len(self.valid):
            if not math.isfinite(valid_ppl):
                self._rollback(f"validation perplexity became {valid_ppl}", on_event)
                valid_ppl = row["valid_ppl"] = evaluate_ppl(model, self.valid)
                if not math.isfinite(valid_ppl):
                    raise Diverged(f"validation perplexity is {valid_ppl} even after a rollback; "
                                    f"try a smaller --lr than {config.lr:g}")
            if valid_ppl < self.schedule.best:
                self.best = (model.E.copy(), model.dense.copy())
            else:  # worse than before: go back to the best weights
                model.E[...], model.dense[...] = self.best
            stop = self.schedule.update(valid_ppl, config.epochs - self.epoch)
        self.schedule.end_epoch()
        self.sgd.push()  # the best weights, where validation went back to them
        self.good, self.good_step = self._state_arrays(), self.steps  # finite: checked or rolled back above
        self.order, self.batch = None, 0
        self.epoch += 1
        if self.deadline is not None and not stop:
            self.deadline.epoch_ended(self, eval_seconds)
        config = self.config  # a re-fit may have changed its steps
        self.done = stop or self.epoch > config.epochs or bool(config.max_steps and self.steps >= config.max_steps)

    # --- checkpoints --------------------------------------------------------------------------
    def _streams(self):
        """The run's random streams by name: shuffling, and noise and dropout masks if used."""
        return {"shuffle": self.rng, **self.sgd.streams()}

    def save_checkpoint(self, path, meta=None):
        """Write the whole state to `path` (an .npz without pickle), atomically."""
        import json

        from .fileio import atomic_write

        self.sgd.pull()
        opt = self.sgd.optimizer
        arrays = {"E": self.model.E, "dense": self.model.dense}
        for i, a in enumerate(opt.dense_state):
            arrays[f"opt_dense{i}"] = a
        for i, a in enumerate(opt.E_state):
            arrays[f"opt_E{i}"] = a
        *good, good_t = self.good
        for i, a in enumerate(good):
            arrays[f"good{i}"] = a
        if self.best is not None:
            arrays["best_E"], arrays["best_dense"] = self.best
        if isinstance(self.order, BlockOrder):
            arrays["block_order"] = self.order.describe()
        elif self.order is not None:
            arrays["order"] = self.order
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": self.model.describe(),
            "train_config": self.config.to_dict(),
            "steps": self.steps, "epoch": self.epoch, "batch": self.batch, "done": self.done,
            "total": self.total, "seen": self.seen, "seconds": self.seconds,
            "history": self.history, "rollbacks": self.rollbacks, "good_step": self.good_step,
            "recent_loss": self.recent_loss,
            "optimizer_t": opt.t, "good_t": good_t,
            "schedule": {"lr": self.schedule.lr, "best": self.schedule.best, "halvings": self.schedule.halvings,
                         "total_steps": self.schedule.total_steps, "refits": self.schedule.refits},
            "rng": {name: r.bit_generator.state for name, r in self._streams().items()},
            "worker_rng": self.sgd.worker_streams(),
            "meta": meta or {},
        }
        arrays["state"] = np.array(json.dumps(state, ensure_ascii=False))
        with atomic_write(path, "wb") as f:
            np.savez(f, **arrays)

    @staticmethod
    def read_meta(path):
        """The `meta` a checkpoint was saved with, without loading its arrays."""
        from .model import read_npz

        _, state = read_npz(path, "state", CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "checkpoint", arrays=False)
        meta = state.get("meta")
        if not isinstance(meta, dict):
            raise FflmError(f"{path}: damaged checkpoint (no metadata)")
        return meta

    @classmethod
    def load_checkpoint(cls, path, windows_for):
        """(trainer, meta) from a checkpoint written by save_checkpoint, validated array by array.
        windows_for(model) gives the (training, validation) windows for the model it holds."""
        from .model import FFNNLM, read_npz

        arrays, state = read_npz(path, "state", CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "checkpoint")
        model = FFNNLM.from_description(state.get("model") if isinstance(state.get("model"), dict) else {}, path)
        train_windows, valid_windows = windows_for(model)
        try:
            config = TrainConfig(**state["train_config"])
            config.check()
            trainer = cls(model, train_windows, valid_windows, config)
            opt = trainer.sgd.optimizer
            expect = {"E": model.E, "dense": model.dense}
            expect.update({f"opt_dense{i}": a for i, a in enumerate(opt.dense_state)})
            expect.update({f"opt_E{i}": a for i, a in enumerate(opt.E_state)})
            expect.update({f"good{i}": a for i, a in enumerate(trainer.good[:-1])})
            if "best_E" in arrays:
                expect["best_E"], expect["best_dense"] = model.E, model.dense
            if "order" in arrays:
                expect["order"] = np.empty(len(train_windows), dtype=np.int64)
            missing = sorted(set(expect) - set(arrays))
            if missing:
                raise FflmError(f"{path}: checkpoint lacks {', '.join(missing)}")
            loaded = {}
            for name, like in expect.items():
                a = arrays[name]
                if a.shape != like.shape or a.dtype != like.dtype:
                    raise FflmError(f"{path}: {name} has shape {a.shape} {a.dtype}, expected {like.shape} {like.dtype} "
                                    "(was the checkpoint made on another corpus?)")
                if a.dtype.kind == "f" and not np.isfinite(a).all():
                    raise FflmError(f"{path}: {name} contains NaN or infinite values")
                loaded[name] = a
            if "block_order" in arrays:
                order = BlockOrder.from_description(arrays["block_order"])
                if len(order) != len(train_windows):
                    raise FflmError(f"{path}: the saved batch order does not fit the training corpus")
                trainer.order = order
            if "order" in loaded:
                order = loaded["order"]
                if order.min(initial=0) < 0 or order.max(initial=0) >= len(train_windows):
                    raise FflmError(f"{path}: the saved batch order does not fit the training corpus")
                trainer.order = order.copy()
            model.E[...], model.dense[...] = loaded["E"], loaded["dense"]
            model.weights_changed()
            for i, a in enumerate(opt.dense_state):
                a[...] = loaded[f"opt_dense{i}"]
            for i, a in enumerate(opt.E_state):
                a[...] = loaded[f"opt_E{i}"]
            opt.t = int(state["optimizer_t"])
            trainer.good = [loaded[f"good{i}"].copy() for i in range(len(trainer.good) - 1)] + [int(state["good_t"])]
            if "best_E" in loaded:
                trainer.best = (loaded["best_E"].copy(), loaded["best_dense"].copy())
            trainer.steps, trainer.epoch, trainer.batch = int(state["steps"]), int(state["epoch"]), int(state["batch"])
            trainer.done = bool(state["done"])
            trainer.total, trainer.seen, trainer.seconds = float(state["total"]), int(state["seen"]), float(state["seconds"])
            trainer.history, trainer.rollbacks = list(state["history"]), int(state["rollbacks"])
            trainer.good_step, trainer.recent_loss = int(state["good_step"]), float(state["recent_loss"])
            s = state["schedule"]
            trainer.schedule.lr, trainer.schedule.best, trainer.schedule.halvings = (
                float(s["lr"]), float(s["best"]), int(s["halvings"]))
            if "total_steps" in s:
                trainer.schedule.total_steps = int(s["total_steps"])
                trainer.schedule.refits = [[int(a), int(b)] for a, b in s["refits"]]
            trainer.worker_rng = list(state.get("worker_rng", []))
            rngs = trainer._streams()
            if set(state["rng"]) != set(rngs):
                raise FflmError(f"{path}: the checkpoint's random streams do not match its configuration")
            for name, r in rngs.items():
                r.bit_generator.state = state["rng"][name]
        except FflmError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise FflmError(f"{path}: damaged checkpoint ({type(e).__name__}: {e})") from None
        if trainer.batch > -(-len(train_windows) // config.batch_size) or (trainer.batch and trainer.order is None):
            raise FflmError(f"{path}: the saved position does not fit the training corpus")
        return trainer, state.get("meta", {})


def train(model, train_windows, valid_windows=None, config=TrainConfig(), progress=None, on_epoch=None):
    """Train `model` in place; returns the history (one dict per epoch).

    progress: a tqdm-like factory for the per-epoch bar (None: no bar).
    on_epoch: called as on_epoch(model, history) after each epoch, when the model holds the
    best weights so far. For checkpoints, interruption and rollback messages, use `Trainer`.
    """
    trainer = Trainer(model, train_windows, valid_windows, config)
    callback = (lambda t: on_epoch(t.model, t.history)) if on_epoch else None
    return trainer.run(progress=progress, on_epoch=callback,
                       on_event=lambda msg: warnings.warn(msg, FflmWarning, stacklevel=2))


def fit(sentences, config=None, valid=None, min_count=1, max_vocab=None, seed=1, **train_options):
    """Build a vocabulary from `sentences` (strings or token lists), train a model of `config`
    (a ModelConfig) with mini-batch SGD (`train_options`: TrainConfig's fields, such as epochs,
    lr, batch_size, dropout), keep the best weights on `valid` if given; returns the model with
    its learning curve in `history`. The command line's `fflm train` does the same.

    >>> from fflm.model import ModelConfig
    >>> lm = fit(["a b c", "a c b"] * 10, ModelConfig(order=2, embed_dim=4, hidden=(8,)), epochs=2)
    >>> len(lm.history), lm.config.order
    (2, 2)
    """
    from .model import FFNNLM, ModelConfig
    from .vocab import Vocabulary

    tok = lambda ss: [s.split() if isinstance(s, str) else list(s) for s in ss]  # noqa: E731
    sents = tok(sentences)
    vocab = Vocabulary.build(sents, min_count=min_count, max_size=max_vocab)
    model = FFNNLM(vocab, config if config is not None else ModelConfig(), seed=seed)
    train_options.setdefault("batch_size", 32)
    tc = TrainConfig(seed=seed, **train_options)
    model.history = train(model, model.windows(sents), model.windows(tok(valid)) if valid else None, tc)
    return model
