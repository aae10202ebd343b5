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
ROUNDS = 2  # the recipe times its sizes in turn, twice, and keeps each one's faster round
SAVE_SECONDS = 2.0  # the model files written along the way, and the end
REFIT_SAFETY = 0.99  # once re-fitted every minute from the speed seen, a small margin is enough


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


class Deadline:
    """A budgeted run's clock. The plan is fitted from a few seconds' measurement; a long run's
    speed drifts (a run measured at 5,932 tokens/s ran its epochs at 4,849-5,724 and ended 6%
    over), so every `every` seconds and at each epoch's end the steps still to take are fitted
    again to the time left, from the speed seen since the last re-fit and the last validation
    pass's time. The schedule carries on from where it is to the new end (Schedule.refit), so
    the rate never jumps and still reaches 0 at the last step. Each re-fit is recorded: a rerun
    (`fflm train --like`) replays them without any clock."""

    def __init__(self, ends_at, steps_per_epoch, eval_seconds, max_steps=None, every=60.0, safety=REFIT_SAFETY,
                 clock=time.time):
        self.ends_at, self.steps_per_epoch, self.eval_seconds = ends_at, steps_per_epoch, eval_seconds
        self.max_steps, self.every, self.safety, self.clock = max_steps, every, safety, clock
        self.mark, self.eval_since, self.rate = None, 0.0, None

    def tick(self, trainer):
        """After every step."""
        now = self.clock()
        if self.mark is None:
            self.mark = (now, trainer.steps)
        elif now - self.mark[0] >= self.every:
            self.refit(trainer, now)

    def epoch_ended(self, trainer, eval_seconds):
        self.eval_seconds = eval_seconds
        self.eval_since += eval_seconds
        if not (trainer.config.max_steps and trainer.steps >= trainer.config.max_steps):  # else: the run is over
            self.refit(trainer, self.clock())

    def refit(self, trainer, now):
        if self.mark is not None:
            t0, s0 = self.mark
            running = now - t0 - self.eval_since
            if trainer.steps > s0 and running > 0:
                self.rate = (trainer.steps - s0) / running
        self.mark, self.eval_since = (now, trainer.steps), 0.0
        if self.rate is None:
            return
        total = self.total(trainer.steps, trainer.epoch, now)
        if total != trainer.config.max_steps:
            import dataclasses

            trainer.schedule.refit(trainer.steps, total)
            trainer.config = dataclasses.replace(trainer.config, max_steps=total,
                                                 epochs=max(1, -(-total // self.steps_per_epoch)))

    def total(self, steps, epoch, now):
        """The most steps in all that end within the budget: the steps left at `safety` x the
        speed seen, plus a validation pass at each epoch's end still to come (epoch: the one in
        progress, from 1), plus the last save. At least the steps taken (stop now).

        >>> d = Deadline(ends_at=100.0 + SAVE_SECONDS, steps_per_epoch=50, eval_seconds=1.0, safety=1.0)
        >>> d.rate = 10.0
        >>> d.total(steps=0, epoch=1, now=0.0)   # as fit(): 830 steps
        830
        >>> d.total(steps=830, epoch=17, now=99.0), d.total(steps=100, epoch=3, now=99.5)
        (830, 100)
        """
        rate, left = self.rate * self.safety, self.ends_at - now - SAVE_SECONDS
        spe, done_evals = self.steps_per_epoch, epoch - 1

        def cost(total):
            return (total - steps) / rate + max(0, -(-total // spe) - done_evals) * self.eval_seconds

        lo, hi = steps, steps + max(0, int(left * rate)) + 1
        if self.max_steps:
            hi = max(lo, min(hi, self.max_steps))
        while lo < hi:  # the largest total with cost(total) <= left (cost grows with total)
            mid = (lo + hi + 1) // 2
            if cost(mid) <= left:
                lo = mid
            else:
                hi = mid - 1
        return lo


def describe(plan):
    return (f"budget {plan['seconds'] / 60:.1f} min: {plan['steps_per_s']:.2f} steps/s measured here, "
            f"{plan['eval_seconds']:.1f} s a validation pass -> {plan['steps']:,} steps "
            f"({plan['epochs']} epoch(s) of {plan['steps_per_epoch']:,}), the learning rate falling linearly "
            "to 0 at the last")


# --- the budgeted recipe: what `--budget` chooses when no --preset is given ------------------
# Every key is an `fflm train` option, and one given on the command line wins. The fixed part is
# the presets' (issue 16: dual FOFE across sentences, tied, SGD at 2.0 falling linearly to 0);
# the size, the dropout and the number of epochs are chosen for the corpus and the time.
RECIPE = {"order": 6, "cross_sentence": True, "tied": True, "softmax": "auto", "fofe": "0.5,0.8", "lr": 2.0,
          "schedule": "linear"}
# (name, m, hidden, SGD rate): base is --preset brown's model at its measured rate (PTB: 4 diverges,
# 2 is the best that does not); large takes it scaled by the first layer's fan-in (7 x 256 against
# 7 x 384): at 2.0 it blew up in epoch 2 on movie reviews (BENCHMARKS.md); small keeps 2.0.
SIZES = (("small", 128, (512, 128), 2.0), ("base", 256, (1024, 256), 2.0), ("large", 384, (1536, 384), 1.3))
MAX_EPOCHS = 8  # Brown raw: the preset's model at 8 epochs 142.03, given 14 it overfitted to 151.86 (BENCHMARKS.md)


# The adaptive head: the automatic one holds the words that make 85% of the tokens; where that is
# more than HEAD_WORDS words (a large, flat vocabulary: 9,987 of 100k synthetic words, against
# 3,106 on Brown raw), the head's products are most of the step, and the recipe takes the words
# that make SMALL_HEAD_SHARE of the tokens instead (BENCHMARKS.md, "The adaptive head's share").
HEAD_WORDS, SMALL_HEAD_SHARE = 4096, 0.75


def head_share_for(counts):
    """(share, why): the head's token share the recipe takes for these training counts (ranked
    by frequency), None for the automatic 85%.

    >>> head_share_for([100] * 3 + [50] * 1000)[0] is None     # an 85% head of 853 words
    True
    >>> head_share_for([100] * 3 + [1] * 10000)[0]              # an 85% head of 8,503 words
    0.75
    """
    from .output import HEAD_SHARE, auto_cutoffs

    head = auto_cutoffs(counts)[:1]
    if not head or head[0] <= HEAD_WORDS:
        return None, f"the automatic head ({HEAD_SHARE:.0%} of the tokens{f': {head[0]:,} words' if head else ''})"
    small = auto_cutoffs(counts, head_share=SMALL_HEAD_SHARE)[0]
    return SMALL_HEAD_SHARE, (f"a head of {SMALL_HEAD_SHARE:.0%} of the tokens ({small:,} words): {HEAD_SHARE:.0%} "
                              f"would take {head[0]:,}, more than {HEAD_WORDS:,}")


# A size qualifies with 7/8 of min_epochs: at exactly the preset's own time on Brown (31 min for
# 8 epochs of its model with the full softmax) the base size fits 7.9 epochs by a measurement
# with SAFETY's margin, and a cliff at 8 would hand the run to the small model.
EPOCH_SLACK = 0.875


def min_epochs(tokens):
    """The fewest passes a size must get to be chosen: 8 on a corpus of up to 1M tokens (as the
    presets), fewer on larger ones, where a pass holds more new text: 8 x sqrt(1M / tokens), at
    least 2.

    >>> [round(min_epochs(n), 1) for n in (500_000, 1_000_000, 4_000_000, 100_000_000)]
    [8.0, 8.0, 4.0, 2.0]
    """
    return min(8.0, max(2.0, 8.0 * math.sqrt(1e6 / tokens)))


def dropout_for(tokens, dense_params):
    """Dropout on the hidden layers from the training tokens per dense parameter (the weights
    other than the embedding table): 0.3 at Brown's and PTB's ratio with the base size (0.84-0.93M
    tokens, 2.1-2.25M dense parameters: 0.4; 0.3 is the presets' measured value), 0.1 more for
    every halving of the ratio, 0.1 less for every doubling, within [0.1, 0.5], to the nearest
    0.05. The embeddings get a third of it (the presets' 0.1 at 0.3).

    >>> dropout_for(840_000, 2_100_000), dropout_for(420_000, 2_100_000), dropout_for(3_360_000, 2_100_000)
    (0.3, 0.4, 0.1)
    """
    ratio = tokens / max(1, dense_params)
    p = 0.3 - 0.1 * math.log2(ratio / 0.4)
    return round(min(0.5, max(0.1, p)) * 20) / 20


def choose(candidates, windows, valid_windows, tconfig, budget_s, started, max_epochs, given_dropout=False,
           seconds=MEASURE_SECONDS, rates=None, rounds=ROUNDS):
    """Choose among `candidates` [(name, model)], smallest first: each is measured here, and the
    largest whose fitted run gives at least EPOCH_SLACK x min_epochs(tokens) passes is taken (the
    smallest when none does); dropout from dropout_for() unless `given_dropout`; `rates`: each
    size's SGD rate by name (None: tconfig's); the run then fitted to what is left of the budget,
    capped at `max_epochs`. Returns (index, train config, plan).

    The sizes are timed in turn, `rounds` times (`seconds` split among the rounds), and each keeps
    its fastest round: a load that comes and goes (another run, the test suite) slows one round,
    not all, where a single measurement taken under it chose the small size for a 10-minute run
    whose real speed fitted the base one (BENCHMARKS.md)."""
    import dataclasses

    tokens = len(windows)
    spe = -(-tokens // tconfig.batch_size)
    configs = []
    for name, model in candidates:
        tc = tconfig
        if rates and name in rates:
            tc = dataclasses.replace(tc, lr=rates[name])
        if not given_dropout:
            d = dropout_for(tokens, model.dense.size)
            tc = dataclasses.replace(tc, dropout=d, embed_dropout=round(d / 3, 2))
        configs.append(tc)
    seen = [[] for _ in candidates]
    for _ in range(max(1, rounds)):
        for i, (name, model) in enumerate(candidates):
            seen[i].append(measure(model, windows, valid_windows, configs[i], seconds / max(1, rounds)))
    rows, measured = [], []
    for (name, model), tc, ms in zip(candidates, configs, seen):
        m = {"steps_per_s": max(x["steps_per_s"] for x in ms), "eval_seconds": min(x["eval_seconds"] for x in ms)}
        steps, epochs = fit(budget_s, spe, m["steps_per_s"], m["eval_seconds"],
                            time.time() - started + SAVE_SECONDS if started else SAVE_SECONDS)
        rows.append({"size": name, "params": int(model.dense.size + model.E.size), "dense_params": int(model.dense.size),
                     "steps_per_s": round(m["steps_per_s"], 3), "eval_seconds": round(m["eval_seconds"], 3),
                     "rounds": [round(x["steps_per_s"], 3) for x in ms],
                     "epochs_fit": round(steps / spe, 2), "dropout": tc.dropout, "embed_dropout": tc.embed_dropout,
                     "lr": tc.lr})
        measured.append(m)
    need = min_epochs(tokens)
    able = [i for i, r in enumerate(rows) if r["epochs_fit"] >= need * EPOCH_SLACK]
    pick = able[-1] if able else 0
    tc, m = configs[pick], measured[pick]
    p = plan(candidates[pick][1], windows, valid_windows, tc, budget_s, started, measured=m)
    cap = max_epochs * spe
    if p["steps"] > cap:
        p["steps"], p["epochs"], p["capped"] = cap, max_epochs, True
    p["sizes"] = rows
    p["chosen"] = rows[pick]["size"]
    p["min_epochs"] = round(need, 2)
    p["max_epochs"] = max_epochs
    why = (f"the largest with at least {need * EPOCH_SLACK:.1f} epochs in the time ({need:.1f} wanted, "
           f"{EPOCH_SLACK:g} of it accepted)" if able else
           f"none fits {need * EPOCH_SLACK:.1f} epochs in the time: the smallest")
    p["why"] = why
    return pick, tc, p


def describe_choice(plan):
    """Lines saying what the budgeted recipe measured and chose, and why."""
    lines = []
    for r in plan.get("sizes", []):
        mark = "->" if r["size"] == plan.get("chosen") else "  "
        lines.append(f"{mark} {r['size']:5s} {r['params']:>11,} parameters ({r['dense_params']:,} dense): "
                     f"{r['steps_per_s']:.2f} steps/s here{_rounds(r)}, {r['epochs_fit']:.1f} epochs fit; "
                     f"dropout {r['dropout']:g}/{r['embed_dropout']:g}, lr {r.get('lr', 0):g}")
    if plan.get("head_why"):
        lines.append(f"adaptive softmax: {plan['head_why']}")
    if plan.get("chosen"):
        lines.append(f"chose {plan['chosen']}: {plan['why']}"
                     + (f"; capped at {plan['max_epochs']} epochs (more overfits: BENCHMARKS.md), "
                        "ending before the budget" if plan.get("capped") else ""))
    return lines


def _rounds(row):
    """' (best of 55.2, 54.9)' where a size was timed more than once."""
    rounds = row.get("rounds") or []
    return f" (best of {', '.join(f'{x:.1f}' for x in rounds)})" if len(rounds) > 1 else ""


def split_held_out(sentences, tokens=None, most=100_000, share=0.05):
    """(training sentences, held-out sentences): whole sentences held out for validation when no
    --valid is given: blocks of up to 100 consecutive sentences (a window across sentences sees
    the neighbours it would see in running text), every k-th block, about `share` of the tokens
    and at most `most` tokens (a validation pass an epoch stays cheap on a large corpus), at
    least one sentence. Deterministic: the same text, the same split.

    >>> train, held = split_held_out([["w"]] * 1000)
    >>> len(train), len(held)
    (950, 50)
    """
    n = len(sentences)
    if n < 2:
        raise FflmError("--budget without --valid holds out whole sentences for validation, but the corpus has "
                        f"{n} sentence(s); give --valid")
    tokens = tokens if tokens is not None else sum(len(s) + 1 for s in sentences)
    frac = min(share, most / max(1, tokens))
    block = max(1, min(100, n // 200))
    blocks = -(-n // block)
    stride = max(2, min(blocks, round(1 / frac)))
    held_blocks = {b for b in range(blocks) if b % stride == stride // 2} or {0}
    train, held = [], []
    for i, s in enumerate(sentences):
        (held if i // block in held_blocks else train).append(s)
    return train, held
