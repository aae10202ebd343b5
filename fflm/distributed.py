"""Ingredient IV on more than one machine: data-parallel mini-batch SGD over Ray actors.

The driver is the one-process `Trainer`, unchanged: it keeps the epoch's order, the schedule,
validation, rollbacks and checkpoints. Only its step is replaced (`RaySGD`): each global batch
is cut into one share per worker, every worker holds a replica of the model and runs the
one-process `SGD` on its share, and the replicas are kept equal in one of two ways:

- gradient averaging (`sync_every=1`, the reference): after every step each worker publishes
  its gradient (the dense part whole, the embedding's only for the rows its share touched),
  every worker sums all of them, weighted by share, in rank order, and takes the same step. The
  sum is the gradient of the global batch, so N workers follow the one-process run of that
  batch to float32 rounding, and one worker follows it bit for bit.
- model averaging (`sync_every=K`, local SGD): each worker takes K steps on its own shares,
  then the replicas are replaced by their mean (weights and optimizer moments; embedding rows
  only where some worker moved them). To first order that is K steps of the global batch, at a
  K-th of the communication.

Arrays travel through Ray's object store: each worker's contribution is put once and every
other worker reads it (zero-copy on the same machine). That is an all-gather, N-1 contributions
into every worker; BENCHMARKS.md's scaling model says where a ring all-reduce would pay.
The driver gathers each batch's (context, target) rows itself and sends each worker its share:
a few kilobytes a step against the megabytes of a gradient.

A worker that dies stops the run (`WorkerLost`, one line); the last checkpoint is left as it
was, and `fflm train --resume` continues from it, with Ray or without.
"""

import os
import time

import numpy as np

from . import kernels as K
from .errors import FflmError


class WorkerLost(FflmError):
    """A Ray worker died (its process ended or its node went away); the run stopped."""


def _ray():
    from .cluster import ray_module

    return ray_module()


def worker_seed(seed, rank):
    """The dropout stream's seed on worker `rank`: the run's own seed on worker 0 (so that one
    worker draws what one process draws), a different one on every other worker."""
    return seed if rank == 0 else seed + 1_000_003 * rank


class Replica:
    """One worker's model, its one-process SGD, and what averaging needs (a Ray actor)."""

    def __init__(self, rank, n_workers, sync_every, description, config, threads):
        from .model import FFNNLM
        from .train import SGD, TrainConfig, make_noise, set_threads

        self.rank, self.n, self.K = rank, n_workers, sync_every
        self.threads = set_threads(threads)
        config = TrainConfig(**config)
        model = FFNNLM.from_description(description, "the driver's model")
        model.set_precision(config.precision)
        # the workspace holds the whole global batch: merged samples (nce, neg) can be that wide;
        # every worker draws the same noise words (same seed), the one process's draws
        self.sgd = SGD(model, config.batch_size, make_noise(model, config),
                       (config.embed_dropout, config.dropout), worker_seed(config.seed, rank), config.optimizer)
        self.model = model
        self.moved = np.zeros(len(model.vocab), dtype=np.int8)  # embedding rows moved since the last average
        self.synced = None  # local SGD: E and its optimizer rows as the last average left them
        self.stats = {"compute_s": 0.0, "merge_s": 0.0, "bytes_out": 0, "bytes_in": 0}

    def pid(self):
        return os.getpid()

    def node(self):
        import ray

        return ray.get_runtime_context().get_node_id()

    # --- the state the driver reads and writes (replicas are equal when it does) ---------------
    def state(self):
        opt = self.sgd.optimizer
        return self.model.E, self.model.dense, opt.dense_state, opt.E_state, opt.t, self.streams()

    def streams(self):
        return {name: r.bit_generator.state for name, r in self.sgd.streams().items()}

    def set_state(self, state, streams=None):
        E, dense, dense_state, E_state, t = state
        m, opt = self.model, self.sgd.optimizer
        m.E[...], m.dense[...] = E, dense
        m.weights_changed()
        for dst, src in zip((*opt.dense_state, *opt.E_state), (*dense_state, *E_state)):
            dst[...] = src
        opt.t = t
        m.dE[...] = 0.0
        if streams:
            for name, r in self.sgd.streams().items():
                r.bit_generator.state = streams[name]
        self.moved[...] = 0
        self.synced = None

    def take_stats(self):
        s, self.stats = self.stats, dict.fromkeys(self.stats, 0)
        return s

    # --- a step ----------------------------------------------------------------------------------
    def step(self, task, *incoming):
        """Merge what the other workers published (if any), then compute on this worker's share.
        task: x, y (the share; None for a merge alone), weight (share / global batch),
        apply ((lr, weight_decay, clip) of the step whose gradients come in, sync_every=1),
        lr, weight_decay, clip (this step's, local SGD), publish (local SGD: average after it).
        Returns (loss, what this worker publishes or None)."""
        t0 = time.perf_counter()
        if incoming:
            self.stats["bytes_in"] += sum(_nbytes(p) for r, p in enumerate(incoming) if r != self.rank)
            if self.K == 1:
                self._merge_gradients(incoming)
            else:
                self._average(incoming)
        if task.get("apply") is not None:
            self.sgd.apply(*task["apply"])
        t1 = time.perf_counter()
        self.stats["merge_s"] += t1 - t0
        x, y = task.get("x"), task.get("y")
        loss, out = 0.0, None
        if x is not None and len(x):
            loss = self.sgd.compute(np.asarray(x, dtype=np.int32), np.asarray(y, dtype=np.int32))
        elif x is not None:  # an empty share (a last batch smaller than the workers) still draws
            if self.sgd.noise is not None:  # its noise, to keep the workers' samples equal
                self.sgd.noise.draw()
            self.sgd.rows, self.sgd.count, self.sgd.S = self.sgd.ws.rows, 0, 0
        if x is not None and self.K == 1:
            if self.n > 1:
                out = self._gradient(task["weight"])
        elif x is not None:
            if len(x):
                self.sgd.apply(task["lr"], task["weight_decay"], task["clip"])
            self._mark_moved()
        if self.K > 1 and task.get("publish") and self.n > 1:
            out = self._model()
        t2 = time.perf_counter()
        self.stats["compute_s"] += t2 - t1
        if out is not None:
            self.stats["bytes_out"] += _nbytes(out)  # what Ray copies into the object store
        return loss, out

    # --- gradient averaging ----------------------------------------------------------------------
    def _gradient(self, weight):
        """This worker's gradient, to publish: views of its buffers (Ray copies a method's results
        into the object store as it returns, before the next call can touch them). The rows E's
        gradient has: None for all of them (a tied output layer). An empty share publishes its
        weight 0 and nothing else."""
        sgd, m = self.sgd, self.model
        every = sgd.count == len(m.E)
        rows = None if every else np.array(sgd.rows[: sgd.count])
        dE = m.dE if every else m.dE[rows]
        if weight == 0:
            return ("none", 0.0, None, None, np.empty(0, np.int64), None, None, np.empty(0, np.int64), dE[:0])
        if sgd.noise is None:
            return ("full", weight, m.grad, None, None, None, None, rows, dE)
        gw, gb, dUs, dcs = sgd.sampled_parts()
        return ("sampled", weight, gw, gb, sgd.ws.cols[: sgd.S], dUs, dcs, rows, dE)

    def _merge_gradients(self, parts):
        """The weighted sum of every worker's gradient, in rank order, into this replica's buffers
        (the same arithmetic on every worker, so the replicas stay equal)."""
        sgd, m = self.sgd, self.model
        live = [p for p in parts if p[0] != "none"]
        if all(p[-2] is None for p in live):  # every row: one dense sum
            _weighted_sum(m.dE.reshape(-1), [(p[1], p[-1].reshape(-1)) for p in live])
            sgd.rows, sgd.count = np.arange(len(m.E), dtype=np.int64), len(m.E)
        else:
            rows = [np.arange(len(m.E), dtype=np.int64) if p[-2] is None else p[-2] for p in parts]
            union = np.unique(np.concatenate(rows))
            m.dE[union] = 0.0
            for p, r in zip(parts, rows):
                if len(r):
                    m.dE[r] += m.dtype.type(p[1]) * p[-1]
            sgd.rows, sgd.count = union, len(union)
        if live[0][0] == "full":
            _weighted_sum(m.grad, [(p[1], p[2]) for p in live])
            return
        _weighted_sum(m.grad[: m.U_start], [(p[1], p[2]) for p in live])
        _weighted_sum(m.grad[m.n_weights : m.c_start], [(p[1], p[3]) for p in live])
        cols = np.unique(np.concatenate([p[4] for p in live]))
        S, H = len(cols), m.U_all.shape[0]
        dUs, dcs = sgd.ws.dUs[: H * S].reshape(H, S), sgd.ws.dcs[:S]
        dUs[...], dcs[...] = 0.0, 0.0
        for p in live:
            at = np.searchsorted(cols, p[4])
            dUs[:, at] += m.dtype.type(p[1]) * p[5]
            dcs[at] += m.dtype.type(p[1]) * p[6]
        sgd.ws.cols[:S], sgd.S = cols, S  # after the parts were read: this worker's own may view ws.cols

    # --- model averaging (local SGD) -------------------------------------------------------------
    def _mark_moved(self):
        sgd = self.sgd
        if sgd.count:
            self.moved[np.asarray(sgd.rows[: sgd.count])] = 1

    def _model(self):
        """This replica's weights to average (views, as `_gradient`'s): the dense part whole, E's
        rows that moved (None: all of them, as a tied output layer moves every step)."""
        m, opt = self.model, self.sgd.optimizer
        if m.config.tied or self.moved.all():
            return ("model", m.dense, opt.dense_state, None, m.E, opt.E_state)
        rows = np.flatnonzero(self.moved).astype(np.int64)
        return ("model", m.dense, opt.dense_state, rows, m.E[rows], [a[rows] for a in opt.E_state])

    def begin_window(self):
        """Remember E (and its optimizer rows) as the average left them: what a row's change is
        measured from (not needed where every row moves every step)."""
        opt = self.sgd.optimizer
        self.synced = None if self.model.config.tied else [self.model.E.copy()] + [a.copy() for a in opt.E_state]
        self.moved[...] = 0

    def _average(self, parts):
        m, opt = self.model, self.sgd.optimizer
        n = len(parts)
        _mean(m.dense, [p[1] for p in parts], n)
        m.weights_changed()
        for i, a in enumerate(opt.dense_state):
            _mean(a, [p[2][i] for p in parts], n)
        targets = (m.E, *opt.E_state)
        if all(p[3] is None for p in parts):  # every row moved: the plain mean
            for k, target in enumerate(targets):
                _mean(target.reshape(-1), [(p[4] if k == 0 else p[5][k - 1]).reshape(-1) for p in parts], n)
            self.begin_window()
            return
        # a row no worker moved is equal everywhere already; a moved one is the synced value
        # plus the mean of every worker's change (zero for the workers that left it)
        V = len(m.E)
        rows = [np.arange(V, dtype=np.int64) if p[3] is None else p[3] for p in parts]
        union = np.unique(np.concatenate(rows))
        for k, (target, synced) in enumerate(zip(targets, self.synced)):
            delta = np.zeros((len(union), target.shape[1]), dtype=target.dtype)
            for p, r in zip(parts, rows):
                values = p[4] if k == 0 else p[5][k - 1]
                delta[np.searchsorted(union, r)] += values - synced[r]
            delta *= target.dtype.type(1.0 / n)
            target[union] = synced[union] + delta
        self.begin_window()


def _weighted_sum(out, terms):
    """out = sum of w * x over terms, in their order; one term of weight 1 is copied exactly."""
    (w0, x0), rest = terms[0], terms[1:]
    if w0 == 1.0:
        out[...] = x0
    else:
        np.multiply(x0, out.dtype.type(w0), out=out)
    for w, x in rest:
        K.add_scaled(out, x, out.dtype.type(w))


def _mean(out, xs, n):
    out[...] = xs[0]
    for x in xs[1:]:
        K.add_scaled(out, x, out.dtype.type(1.0))
    out *= out.dtype.type(1.0 / n)


def _nbytes(payload):
    total = 0
    for p in payload:
        if isinstance(p, np.ndarray):
            total += p.nbytes
        elif isinstance(p, list):
            total += sum(a.nbytes for a in p)
    return total


class RaySGD:
    """The Trainer's step, run by `workers` Ray actors (see the module's docstring).

    local: the Trainer's own SGD, whose model and optimizer hold the driver's copy of the state
    (what checkpoints, validation and rollbacks read); `pull` and `push` move it between the
    driver and the workers. address: a Ray cluster's address, or None for a local Ray started
    for the run (and stopped by `close`)."""

    def __init__(self, local, config, workers=2, sync_every=1, address=None, threads=1, worker_streams=None,
                 ray_init=None):
        if workers < 1:
            raise FflmError(f"--workers must be at least 1, not {workers}")
        if sync_every < 1:
            raise FflmError(f"--sync-every must be at least 1, not {sync_every}")
        ray = _ray()
        self.local, self.model, self.optimizer = local, local.model, local.optimizer
        self.noise, self.ws = local.noise, local.ws
        self.config, self.n, self.K = config, workers, sync_every
        from .cluster import connect

        self.started_ray = connect(address, max(workers * threads, os.cpu_count() or 1), ray_init)
        need = workers * threads
        have = int(ray.cluster_resources().get("CPU", 0))
        if need > have:
            self.close()
            raise FflmError(f"{workers} workers of {threads} thread(s) need {need} CPUs; the Ray cluster has {have}")
        actor = ray.remote(Replica).options(num_cpus=threads, scheduling_strategy="SPREAD", max_restarts=0)
        description = self.model.describe()
        conf = config.to_dict()
        self.workers = [actor.remote(r, workers, sync_every, description, conf, threads) for r in range(workers)]
        self.pids = self._get([w.pid.remote() for w in self.workers])
        self.nodes = len(set(self._get([w.node.remote() for w in self.workers])))  # machines the workers are on
        self.incoming, self.pending = [], None  # published contributions not yet merged; their step's rates
        self.since_sync = 0
        self.timing = {"steps": 0, "wall_s": 0.0}
        self.push(worker_streams)

    # --- the Trainer's interface (train.SGD's) ----------------------------------------------------
    def step(self, index, windows, lr, weight_decay, clip):
        self.dirty = True
        start = time.perf_counter()
        B = len(index)
        x, y = self.ws.x[:B], self.ws.y[:B]
        windows.gather(index, x, y)
        cuts = [B * r // self.n for r in range(self.n + 1)]
        self.since_sync += 1
        publish = self.K > 1 and self.since_sync >= self.K
        tasks = [{"x": x[a:b], "y": y[a:b], "weight": (b - a) / B, "apply": self.pending, "lr": lr,
                  "weight_decay": weight_decay, "clip": clip, "publish": publish} for a, b in zip(cuts, cuts[1:])]
        losses = self._send(tasks)
        if self.K == 1:
            self.pending = (lr, weight_decay, clip)
        elif publish:
            self.since_sync = 0
        self.timing["steps"] += 1
        self.timing["wall_s"] += time.perf_counter() - start
        if self.n == 1:
            return losses[0]
        return float(sum((b - a) / B * loss for a, b, loss in zip(cuts, cuts[1:], losses)))

    def _send(self, tasks):
        refs = [w.step.options(num_returns=2).remote(t, *self.incoming) for w, t in zip(self.workers, tasks)]
        losses = self._get([r[0] for r in refs])
        outs = [r[1] for r in refs]
        publishing = any(t.get("publish") for t in tasks) or self.K == 1
        self.incoming = outs if publishing and self.n > 1 else []
        return losses

    def flush(self):
        """Bring the replicas to one model: the pending gradient step applied, or (local SGD) an
        average taken now."""
        if self.K == 1:
            if self.pending is not None or self.incoming:
                self._send([{"apply": self.pending}] * self.n)
                self.incoming, self.pending = [], None
        elif self.since_sync and self.n > 1:
            self._send([{"publish": True}] * self.n)
            self._send([{}] * self.n)  # the average itself
            self.incoming, self.since_sync = [], 0

    def pull(self):
        if not self.dirty:  # nothing ran since the driver's copy was made
            return
        self.flush()
        E, dense, dense_state, E_state, t, streams = self._get(self.workers[0].state.remote())
        m, opt = self.model, self.optimizer
        m.E[...], m.dense[...] = E, dense
        m.weights_changed()
        for dst, src in zip((*opt.dense_state, *opt.E_state), (*dense_state, *E_state)):
            dst[...] = src
        opt.t = t
        for name, r in self.local.streams().items():
            r.bit_generator.state = streams[name]
        self.dirty = False

    def push(self, worker_streams=None):
        """The driver's state to every worker (after a rollback, a return to the best weights, a
        resume); worker 0 also takes the driver's random streams, the others their own
        (`worker_streams`, from a checkpoint) if given."""
        ray = _ray()
        m, opt = self.model, self.optimizer
        ref = ray.put((m.E, m.dense, opt.dense_state, opt.E_state, opt.t))
        mine = {name: r.bit_generator.state for name, r in self.local.streams().items()}
        others = worker_streams if worker_streams and len(worker_streams) == self.n - 1 else None
        calls = [w.set_state.remote(ref, mine if r == 0 else (others[r - 1] if others else None))
                 for r, w in enumerate(self.workers)]
        self._get(calls)
        self.incoming, self.pending, self.since_sync = [], None, 0
        if self.K > 1:
            self._get([w.begin_window.remote() for w in self.workers])
        self.dirty = False

    def streams(self):
        return self.local.streams()

    def worker_streams(self):
        """The random streams of workers 1.. (worker 0's are the driver's, after a pull)."""
        return self._get([w.streams.remote() for w in self.workers[1:]])

    def stats(self):
        """Per-step averages since the last call: the driver's wall time, each worker's compute
        and merge time, bytes each worker published and read."""
        per = self._get([w.take_stats.remote() for w in self.workers])
        steps = max(self.timing["steps"], 1)
        out = {"workers": self.n, "sync_every": self.K, "steps": self.timing["steps"],
               "step_ms": round(1e3 * self.timing["wall_s"] / steps, 3),
               "compute_ms": round(1e3 * max(p["compute_s"] for p in per) / steps, 3),
               "merge_ms": round(1e3 * max(p["merge_s"] for p in per) / steps, 3),
               "bytes_out_per_step": int(max(p["bytes_out"] for p in per) / steps),
               "bytes_in_per_step": int(max(p["bytes_in"] for p in per) / steps)}
        self.timing = {"steps": 0, "wall_s": 0.0}
        return out

    def close(self):
        ray = _ray()
        for w in getattr(self, "workers", []):
            try:
                ray.kill(w)
            except Exception:  # noqa: BLE001  (already gone)
                pass
        self.workers = []
        if self.started_ray and ray.is_initialized():
            ray.shutdown()

    def _get(self, refs):
        ray = _ray()
        try:
            return ray.get(refs)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.ObjectLostError) as e:
            dead = self._dead()
            who = f"worker {dead[0]} of {self.n}" if dead else "a worker"
            raise WorkerLost(f"{who} died ({type(e).__name__}); training stopped") from None

    def _dead(self):
        ray = _ray()
        dead = []
        for r, w in enumerate(self.workers):
            try:
                ray.get(w.pid.remote(), timeout=10)
            except Exception:  # noqa: BLE001
                dead.append(r)
        return dead


def distribute(trainer, workers=2, sync_every=1, address=None, threads=1, ray_init=None):
    """Run `trainer`'s steps on Ray workers from here on; returns the RaySGD (close it after).
    A trainer loaded from a checkpoint of a run with as many workers gives them back their
    random streams."""
    trainer.sgd = RaySGD(trainer.sgd, trainer.config, workers, sync_every, address, threads,
                         worker_streams=trainer.worker_rng, ray_init=ray_init)
    return trainer.sgd
