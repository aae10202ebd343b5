"""`fflm bench profile`: where a training step's time goes, part by part.

The step is timed on the same batches as it runs (before and after, the faster kept) and with
a timer around each part (each product by its role, each Numba kernel of fflm/kernels.py, the
bf16 SGD pass that keeps the weights' copies) and, inside the products, around each operand
pack and each bfloat16 kernel call. What the timers do not cover (Python, numpy's small operations) is "the rest".
The timers cost a little (the profiled step is a few percent slower); the parts are for
finding where the time goes, the unprofiled step for the speed itself.
"""

import time
from collections import defaultdict
from contextlib import contextmanager


class _Timers:
    """Wall time per key: parts called at the top of the step, and calls inside them apart."""

    def __init__(self):
        self.depth = 0
        self.top, self.inner = defaultdict(float), defaultdict(float)

    def wrap(self, function, key):
        def timed(*args, **kwargs):
            name = key(args, kwargs)
            outer = self.depth == 0
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                (self.top if outer else self.inner)[name] += time.perf_counter() - t0
                self.depth -= 1

        return timed


def _role(position, default):
    return lambda args, kwargs: kwargs.get("role", args[position] if len(args) > position else default)


@contextmanager
def _timed_parts(timers):
    """Timers around the parts of a step, removed on the way out whatever happens."""
    from numba.core.registry import CPUDispatcher

    from . import bf16
    from . import kernels as K
    from .model import FFNNLM
    from .output import AdaptiveSoftmax

    undo = []

    def patch(owner, name, key):
        original = owner.__dict__[name]  # a class's plain function, not a bound method
        undo.append((owner, name, original))
        setattr(owner, name, timers.wrap(original, key))

    try:
        patch(FFNNLM, "_dot", lambda a, k: "product " + _role(7, "mm")(a, k))
        patch(AdaptiveSoftmax, "_mm", lambda a, k: "product adaptive." + _role(7, "out")(a, k))
        patch(bf16.Matmul, "_pack", lambda a, k: f"pack {a[3]} as {a[2]}")  # (self, x, layout, role)
        for name in ("gemm_amx", "gemm_avx512", "gemm_emulated", "sgd_update_kept"):
            patch(bf16, name, lambda a, k, name=name: name)
        for name, f in list(vars(K).items()):
            if isinstance(f, CPUDispatcher):
                patch(K, name, lambda a, k, name=name: name)
        yield
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


def run_profile(data_dir, name="base", threads=0, steps=60, precision="fp32", softmax="full"):
    """Profile `steps` training steps of bin/bench's config `name` on Brown's vocabulary."""
    import dataclasses

    import numpy as np

    from .bench import SOFTMAX_CONFIGS, _speed_config, machine, recipe_paths
    from .bf16 import describe_precision, resolve_precision
    from .model import FFNNLM
    from .text import read_sentences
    from .train import SGD, TrainConfig, make_noise, set_threads, warm_up
    from .vocab import Vocabulary
    from .windows import Windows

    precision = resolve_precision(precision)
    spec = SOFTMAX_CONFIGS[name]
    used = set_threads(threads)
    sentences = read_sentences(recipe_paths(data_dir, "brown")[0])
    vocab = Vocabulary.build(sentences)
    config = dataclasses.replace(_speed_config(spec), softmax=softmax)
    model = FFNNLM(vocab, config, seed=1)
    model.set_precision(precision)
    dropout = spec.get("dropout", (0.0, 0.0))
    tconfig = TrainConfig(batch_size=spec["batch_size"], embed_dropout=dropout[0], dropout=dropout[1],
                          precision=precision)
    warm_up(model, tconfig)
    windows = Windows.from_sentences(sentences, vocab, model.config.span, model.config.cross_sentence)
    B = spec["batch_size"]
    index = [ix.copy() for _, ix in zip(range(steps), windows.batches(B, np.random.default_rng(0)))]
    sgd = SGD(model, B, make_noise(model, tconfig), dropout, seed=1)

    def run():
        t0 = time.perf_counter()
        for ix in index:
            sgd.step(ix, windows, 0.05, 0.0, 0.0)
        return (time.perf_counter() - t0) / len(index) * 1e3

    run()  # first calls compile, fill caches, touch memory: the first pass was 10% slower than the next
    before = run()
    timers = _Timers()
    with _timed_parts(timers):
        profiled_ms = run()
    after = run()
    per_step = lambda d: {k: v / len(index) * 1e3 for k, v in sorted(d.items(), key=lambda kv: -kv[1])}  # noqa: E731
    parts = per_step(timers.top)
    return {
        "benchmark": "profile",
        "config": name,
        "softmax": softmax,
        "vocabulary": len(vocab),
        "batch_size": B,
        "machine": machine(),
        "threads": used,
        "precision": precision,
        "precision_detail": describe_precision(precision),
        "steps": len(index),
        "step_ms": min(before, after),  # the unprofiled step on either side of the profiled one: the less disturbed
        "step_ms_before_after": [before, after],
        "profiled_step_ms": profiled_ms,
        "parts_ms": parts,
        "inside_products_ms": per_step(timers.inner),
        "rest_ms": profiled_ms - sum(parts.values()),
    }


def format_profile(r):
    m = r["machine"]
    lines = [f"profile: {r['config']} ({r['softmax']} softmax, {r['vocabulary']:,} words, batch {r['batch_size']}), "
             f"{r['precision_detail']}, {r['threads']} threads, {r['steps']} steps",
             f"  CPU: {m['cpu_model']} ({', '.join(m['cpu_flags']) or 'no AVX-512'})",
             f"  step: {r['step_ms']:.2f} ms ({r['profiled_step_ms']:.2f} ms with the timers)", "  parts, ms a step:"]
    lines += [f"    {k:<40s} {v:7.2f}" for k, v in r["parts_ms"].items()]
    lines.append(f"    {'the rest (Python, numpy)':<40s} {r['rest_ms']:7.2f}")
    if r["inside_products_ms"]:
        lines.append("  inside the products, ms a step:")
        lines += [f"    {k:<40s} {v:7.2f}" for k, v in r["inside_products_ms"].items()]
    return "\n".join(lines)
