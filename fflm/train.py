"""Ingredient IV, optimization: mini-batch stochastic gradient descent.

Each epoch visits the training windows in a new random order (seeded), and each step moves
every parameter against the gradient of the batch's mean cross-entropy:

    theta <- theta - lr * (grad + weight_decay * theta)     (no decay on biases)

optionally after scaling the whole gradient down to a norm of at most `clip`. The learning
rate follows the classic recipe (`Schedule`, as in Mikolov's RNNLM toolkit): after each epoch
the model is scored on validation text; an epoch that makes it worse is undone (the best
weights are kept). The first time perplexity improves by less than `min_improvement`, the
learning rate starts halving, and from then on it halves after every epoch; training stops
when it stalls a second time, after `max_halvings` halvings, or after `epochs` epochs.
"""

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from . import kernels as K
from .errors import FflmError
from .model import Workspace


@dataclass
class TrainConfig:
    """Optimization settings; the defaults are a good recipe for about a million words."""

    epochs: int = 12
    batch_size: int = 256
    lr: float = 0.5
    min_improvement: float = 0.003  # relative validation gain below which the learning rate halves
    max_halvings: int = 4  # stop after this many halvings
    weight_decay: float = 0.0
    clip: float = 0.0  # maximum gradient norm; 0 = no clipping
    seed: int = 1
    threads: int = 0  # 0 = all cores

    def check(self):
        if self.epochs < 1:
            raise FflmError(f"--epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            raise FflmError(f"--batch-size must be at least 1, not {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise FflmError(f"--lr must be a positive number, not {self.lr}")
        if self.weight_decay < 0 or self.clip < 0:
            raise FflmError("--weight-decay and --clip cannot be negative")
        if self.threads < 0:
            raise FflmError(f"--threads cannot be negative, not {self.threads}")

    def to_dict(self):
        return asdict(self)


class Schedule:
    """The learning rate from epoch to epoch, given each epoch's validation perplexity.

    >>> s = Schedule(lr=1.0, min_improvement=0.01, max_halvings=5)
    >>> [(s.update(ppl), s.lr) for ppl in (100.0, 90.0, 89.5, 85.0, 84.9)]
    [(False, 1.0), (False, 1.0), (False, 0.5), (False, 0.25), (True, 0.25)]
    """

    def __init__(self, lr, min_improvement, max_halvings):
        self.lr = lr
        self.min_improvement = min_improvement
        self.max_halvings = max_halvings
        self.best = math.inf
        self.halvings = 0

    def update(self, valid_ppl):
        """Record an epoch's perplexity; returns True when training should stop."""
        enough = valid_ppl < self.best * (1 - self.min_improvement)
        self.best = min(self.best, valid_ppl)
        if not enough and self.halvings > 0:
            return True  # stalled again, even at a smaller rate: converged
        if not enough or self.halvings > 0:
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


class SGD:
    """The update step, with buffers made once: weights decayed, biases not, embeddings by row."""

    def __init__(self, model, batch_size):
        self.model = model
        self.ws = Workspace(model, batch_size)
        self.n_weights = model.n_weights

    def step(self, index, windows, lr, weight_decay, clip):
        """One mini-batch: gather, forward, backward, update. Returns the batch's mean loss."""
        m, ws = self.model, self.ws
        B = len(index)
        x, y = ws.x[:B], ws.y[:B]
        K.gather_windows(windows.ids, windows.positions, index, x, y)
        loss = m.loss_and_grad(x, y, ws)
        count = K.touched_rows(x, ws.mark, ws.rows)
        if clip > 0:
            norm = math.sqrt(float(np.dot(m.grad, m.grad)) + K.sum_squares_rows(m.dE, ws.rows, count))
            if norm > clip:
                m.grad *= clip / norm
                K.scale_rows(m.dE, ws.rows, count, clip / norm)
        w = self.n_weights
        K.sgd_update(m.dense[:w], m.grad[:w], lr, weight_decay)
        K.sgd_update(m.dense[w:], m.grad[w:], lr, 0.0)
        K.sgd_update_rows(m.E, m.dE, ws.rows, count, lr, weight_decay)
        return loss


def warm_up(model):
    """Compile every kernel training uses (cached on disk after the first run); returns seconds."""
    start = time.perf_counter()
    from .vocab import Vocabulary
    from .windows import Windows

    n = model.config.order
    tiny = Windows(np.array([Vocabulary.BOS_ID] * max(n - 1, 1) + [Vocabulary.EOS_ID], dtype=np.int32), n)
    sgd = SGD(model, 1)
    sgd.step(np.zeros(1, dtype=np.int64), tiny, 0.0, 0.0, 1e30)  # lr 0: nothing changes
    model.nll(*tiny.pairs())
    return time.perf_counter() - start


def evaluate_ppl(model, windows, batch_size=1024):
    if windows is None or len(windows) == 0:
        return math.nan
    nll = model.nll(*windows.pairs(), batch_size=batch_size)
    return math.exp(float(nll.mean()))


def train(model, train_windows, valid_windows=None, config=TrainConfig(), progress=None, on_epoch=None):
    """Train `model` in place; returns the history (one dict per epoch).

    progress: a tqdm-like factory for the per-epoch bar (None: no bar).
    on_epoch: called as on_epoch(model, history) after each epoch, when the model holds the
    best weights so far (the CLI saves the model file there).
    """
    config.check()
    if len(train_windows) == 0:
        raise FflmError("no training data")
    if train_windows.order != model.config.order:
        raise FflmError("the training windows' order differs from the model's")
    rng = np.random.default_rng(config.seed)
    sgd = SGD(model, config.batch_size)
    schedule = Schedule(config.lr, config.min_improvement, config.max_halvings)
    history, best = [], None
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        total, seen, recent = 0.0, 0, []
        bar = progress(total=len(train_windows), desc=f"epoch {epoch}", unit="tok", unit_scale=True) if progress else None
        for step, index in enumerate(train_windows.batches(config.batch_size, rng)):
            loss = sgd.step(index, train_windows, schedule.lr, config.weight_decay, config.clip)
            if not math.isfinite(loss):
                if bar:
                    bar.close()
                raise FflmError(
                    f"training diverged in epoch {epoch} (the loss became {loss}); "
                    f"try a smaller --lr than {schedule.lr:g}"
                )
            total += loss * len(index)
            seen += len(index)
            if bar:
                recent.append(loss)
                bar.update(len(index))
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{np.mean(recent[-100:]):.3f}", lr=f"{schedule.lr:.3g}", refresh=False)
        if bar:
            bar.close()
        seconds = time.perf_counter() - start
        valid_ppl = evaluate_ppl(model, valid_windows)
        row = {
            "epoch": epoch,
            "train_ppl": math.exp(total / seen),
            "valid_ppl": valid_ppl,
            "lr": schedule.lr,
            "seconds": round(time.perf_counter() - start, 3),
            "tokens_per_s": round(seen / seconds, 1),
        }
        history.append(row)
        stop = False
        if valid_windows is not None and len(valid_windows):
            if not math.isfinite(valid_ppl):
                raise FflmError(f"validation perplexity became {valid_ppl} in epoch {epoch}; try a smaller --lr")
            if valid_ppl < schedule.best:
                best = (model.E.copy(), model.dense.copy())
            else:  # worse than before: go back to the best weights
                model.E[...], model.dense[...] = best
            stop = schedule.update(valid_ppl)
        if on_epoch:
            on_epoch(model, history)
        if stop:
            break
    return history
