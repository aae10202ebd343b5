"""Ingredient IV sized to a time budget: how many SGD steps fit, measured on this machine.

`fflm train --budget 45m` measures the model it is about to train: steps a second on the
corpus's own batches (a throwaway copy of the model, a few seconds), and the seconds one pass
over the validation text costs. It then fits the run: the number of steps that, with one
validation pass an epoch, ends when the budget does, and a learning rate falling linearly to
0 at that last step, so that the model has finished annealing when the time is up. What was
measured and chosen is recorded in the model file: the run is reproducible from its step
count, whatever the machine's speed the next time.
"""

import math
import re
import time

import numpy as np

from .errors import FflmError

SAFETY = 0.97  # of the measured speed: what a long run keeps on average (the CPU warms, the OS intrudes)
MEASURE_SECONDS = 4.0
SAVE_SECONDS = 2.0  # the model files written along the way, and the end


def parse_duration(text):
    """'45m', '1h30m', '90s', '2h', '1.5h' or a number of seconds -> seconds.

    >>> parse_duration("1h30m"), parse_duration("45m"), parse_duration("90")
    (5400.0, 2700.0, 90.0)
    """
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d*)?", s):
        seconds = float(s)
    else:
        parts = re.findall(r"(\d+(?:\.\d*)?)\s*([hms])", s)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != re.sub(r"\s+", "", s):
            raise FflmError(f"--budget: cannot read {text!r} as a duration (say 45m, 1h30m or 90s)")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if not seconds > 0:
        raise FflmError(f"--budget must be a positive duration, not {text!r}")
    return seconds


def measure(model, windows, valid_windows, config, seconds=MEASURE_SECONDS):
    """This machine's speed for `model` under `config`: steps a second (a copy of the model
    trained on the first batches of `windows`, so the model itself is untouched) and the
    seconds a validation pass costs (timed on a slice of it, scaled)."""
    from .model import FFNNLM
    from .train import SGD, make_noise

    copy = FFNNLM(model.vocab, model.config, seed=config.seed)
    copy.set_precision(config.precision)
    sgd = SGD(copy, config.batch_size, make_noise(copy, config), (config.embed_dropout, config.dropout),
              config.seed, config.optimizer)
    B = config.batch_size
    batches = max(1, len(windows) // B)
    rng = np.random.default_rng(config.seed)

    def one():
        index = rng.integers(0, len(windows), B) if batches > 1 else np.arange(len(windows))
        sgd.step(index, windows, config.lr * 0.1, config.weight_decay, config.clip)

    for _ in range(2):  # first calls: caches, page faults
        one()
    steps, start = 0, time.perf_counter()
    while steps < 5 or time.perf_counter() - start < seconds:
        one()
        steps += 1
    steps_per_s = steps / (time.perf_counter() - start)
    eval_s = 0.0
    if valid_windows is not None and len(valid_windows):
        part = min(len(valid_windows), 16384)
        x, y = valid_windows.pairs(np.arange(part))
        copy.nll(x[:8], y[:8])  # its first call
        start = time.perf_counter()
        copy.nll(x, y, batch_size=1024)  # as evaluate_ppl does, on a slice
        eval_s = (time.perf_counter() - start) * len(valid_windows) / part
    return {"steps_per_s": steps_per_s, "eval_seconds": eval_s}


def fit(budget_s, steps_per_epoch, steps_per_s, eval_s, overhead_s=0.0, safety=SAFETY):
    """(steps, epochs): the most SGD steps whose time at `safety` x the measured speed, plus one
    validation pass of `eval_s` an epoch (the last one too) and `overhead_s`, is within
    `budget_s`. At least one step; an error when not even that fits.

    >>> fit(100.0, 50, 10.0, 0.0, safety=1.0)   # 100 s at 10 steps/s: 1,000 steps, 20 epochs of 50
    (1000, 20)
    >>> fit(100.0, 50, 10.0, 1.0, safety=1.0)   # a second's validation an epoch: 16 epochs and 30 steps
    (830, 17)
    """
    rate = steps_per_s * safety

    def cost(steps):
        return steps / rate + math.ceil(steps / steps_per_epoch) * eval_s + overhead_s

    steps = int((budget_s - overhead_s) / (1.0 / rate + eval_s / steps_per_epoch))
    while steps > 0 and cost(steps) > budget_s:
        steps -= max(1, steps // 1000)
    if steps < 1:
        raise FflmError(f"--budget {budget_s:.0f} s leaves no time to train: one step takes {1 / rate:.2f} s and "
                        f"each validation pass {eval_s:.1f} s here; give more time or a smaller model")
    return steps, math.ceil(steps / steps_per_epoch)


def plan(model, windows, valid_windows, config, budget_s, started=None, measured=None):
    """The budget's plan for this model and corpus: what was measured, the steps and epochs that
    fit, the schedule (linear to 0 at the last step); `measured` given: no measuring (a rerun).
    started: when the command began (time.time()): what went before training counts too, and a
    model file written each epoch and at the end."""
    measured = measured or measure(model, windows, valid_windows, config)
    overhead_s = (time.time() - started if started else 0.0) + SAVE_SECONDS
    steps_per_epoch = -(-len(windows) // config.batch_size)
    steps, epochs = fit(budget_s, steps_per_epoch, measured["steps_per_s"], measured["eval_seconds"], overhead_s)
    return {"seconds": budget_s, "steps_per_s": round(measured["steps_per_s"], 3),
            "eval_seconds": round(measured["eval_seconds"], 3), "overhead_seconds": round(overhead_s, 3),
            "steps": steps, "epochs": epochs, "steps_per_epoch": steps_per_epoch, "schedule": "linear"}


def describe(plan):
    return (f"budget {plan['seconds'] / 60:.1f} min: {plan['steps_per_s']:.2f} steps/s measured here, "
            f"{plan['eval_seconds']:.1f} s a validation pass -> {plan['steps']:,} steps "
            f"({plan['epochs']} epoch(s) of {plan['steps_per_epoch']:,}), the learning rate falling linearly "
            "to 0 at the last")
