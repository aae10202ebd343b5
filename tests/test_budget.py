"""--budget: the steps that fit the time, from this machine's measured speed (fflm/budget.py)."""

import math

import numpy as np
import pytest

from conftest import SYNTH
from fflm import FflmError
from fflm.budget import Deadline, choose, dropout_for, fit, min_epochs, parse_duration, plan, split_held_out


def test_durations_are_read_or_refused():
    assert parse_duration("45m") == 2700 and parse_duration("1h30m") == 5400 and parse_duration("1.5h") == 5400
    assert parse_duration("90s") == 90 and parse_duration("600") == 600 and parse_duration("2h 5m") == 7500
    for bad in ("soon", "5x", "0", "-3m", "1h30"):
        with pytest.raises(FflmError, match="--budget"):
            parse_duration(bad)


@pytest.mark.parametrize("budget, per_epoch, speed, eval_s, overhead",
                         [(100.0, 50, 10.0, 0.0, 0.0), (2700.0, 3400, 21.5, 14.0, 9.0), (60.0, 10_000, 3.0, 2.5, 5.0)])
def test_the_fitted_run_is_the_longest_that_keeps_the_budget(budget, per_epoch, speed, eval_s, overhead):
    steps, epochs = fit(budget, per_epoch, speed, eval_s, overhead, safety=0.97)

    def cost(n):
        return n / (speed * 0.97) + math.ceil(n / per_epoch) * eval_s + overhead

    assert cost(steps) <= budget  # kept
    assert cost(steps + max(1, steps // 1000)) > budget  # and not by much: a step more would not fit
    assert epochs == math.ceil(steps / per_epoch)
    assert fit(budget, per_epoch, speed, eval_s, overhead, safety=0.97) == (steps, epochs)  # deterministic


def test_no_time_for_a_step_is_one_line():
    with pytest.raises(FflmError, match="leaves no time to train"):
        fit(1.0, 100, 0.5, 0.0, 0.5)


def test_a_plan_from_a_recorded_measurement_is_the_same_plan():
    from fflm import Vocabulary, Windows, read_sentences
    from fflm.model import FFNNLM, ModelConfig
    from fflm.train import TrainConfig

    sents = read_sentences(SYNTH / "train.txt")[:2000]
    vocab = Vocabulary.build(sents)
    w = Windows.from_sentences(sents, vocab, 3)
    model = FFNNLM(vocab, ModelConfig(order=3, embed_dim=8, hidden=(16,)))
    before = model.dense.copy()
    config = TrainConfig(batch_size=64)
    first = plan(model, w, w, config, 30.0)
    assert np.array_equal(model.dense, before)  # measured on a copy
    assert first["steps_per_s"] > 0 and first["eval_seconds"] > 0 and first["schedule"] == "linear"
    again = plan(model, w, w, config, 30.0,
                 measured={"steps_per_s": first["steps_per_s"], "eval_seconds": first["eval_seconds"]})
    assert (again["steps"], again["epochs"]) == fit(30.0 - 0, first["steps_per_epoch"], first["steps_per_s"],
                                                    first["eval_seconds"], again["overhead_seconds"])


def test_train_with_a_budget_records_its_plan_and_anneals_to_zero(run_cli, tmp_path):
    from fflm.model import FFNNLM

    out = tmp_path / "b.npz"
    code, _, err = run_cli("train", SYNTH / "train.txt", "--valid", SYNTH / "valid.txt", "-o", out, "--budget", "20s",
                           "--embed-dim", 16, "--hidden", 32, "--order", 3)
    assert code == 0, err
    assert "steps/s measured here" in err
    meta = FFNNLM.load(out)[1]["training"]
    b = meta["budget"]
    final = b["refits"][-1][1] if b["refits"] else b["steps"]  # re-fitted as it went, or as planned
    assert meta["config"]["max_steps"] == final == b["steps_taken"]
    assert meta["config"]["schedule"] == "linear" and len(meta["history"]) == math.ceil(final / b["steps_per_epoch"])
    assert meta["history"][-1]["lr"] <= 0.01 * meta["config"]["lr"]  # the last step's rate: nearly 0
    code, out_text, _ = run_cli("info", out)
    assert "steps/s measured here" in out_text
    code, _, err = run_cli("train", SYNTH / "train.txt", "-o", tmp_path / "c.npz", "--budget", "20s", "--max-steps", 3)
    assert code == 1 and "drop --max-steps" in err
    code, _, err = run_cli("train", SYNTH / "train.txt", "-o", tmp_path / "c.npz", "--budget", "20s", "--ray")
    assert code == 1 and "with --ray" in err
    code, _, err = run_cli("train", SYNTH / "train.txt", "-o", tmp_path / "c.npz", "--budget", "soon")
    assert code == 1 and "cannot read 'soon'" in err


class _Run:
    """What Deadline reads and changes of a Trainer."""

    def __init__(self, max_steps, spe):
        import dataclasses

        from fflm.train import Schedule, TrainConfig

        self.config = dataclasses.replace(TrainConfig(), max_steps=max_steps, epochs=-(-max_steps // spe),
                                          schedule="linear")
        self.schedule = Schedule(1.0, 0.0, 0, kind="linear", total_steps=max_steps)
        self.steps, self.epoch = 0, 1


def test_a_slower_run_is_refitted_to_end_within_the_budget():
    clock = [0.0]
    spe, budget, eval_s = 100, 100.0, 1.0
    d = Deadline(budget, spe, eval_s, every=10.0, safety=1.0, clock=lambda: clock[0])
    d.rate = 20.0  # as measured before the run: 20 steps/s
    run = _Run(d.total(0, 1, 0.0), spe)
    planned = run.config.max_steps
    lrs = []
    while run.steps < run.config.max_steps:  # the run goes at 15 steps/s, not 20
        lrs.append(run.schedule.step_lr(run.steps))
        run.steps += 1
        clock[0] += 1 / 15
        d.tick(run)
        if run.steps % spe == 0 or run.steps == run.config.max_steps:
            clock[0] += eval_s
            run.epoch += 1
            d.epoch_ended(run, eval_s)
    assert run.config.max_steps < planned  # fewer steps than planned
    assert budget - 3.0 - 1.0 / 15 <= clock[0] + 2.0 <= budget  # and the end (with the save) within it
    assert all(b <= a + 1e-12 for a, b in zip(lrs, lrs[1:]))  # the rate never jumps up
    assert lrs[-1] < 0.01 and run.schedule.refits  # and reaches 0 at the new end


def test_the_held_out_sentences_are_whole_blocks_and_deterministic():
    sentences = [[f"w{i}", "x"] for i in range(20_000)]
    train, held = split_held_out(sentences)
    assert (train, held) == split_held_out(sentences)
    assert len(train) + len(held) == 20_000 and 0.03 < len(held) / 20_000 <= 0.05
    index = sorted(int(s[0][1:]) for s in held)
    runs = sum(1 for a, b in zip(index, index[1:]) if b != a + 1) + 1
    assert runs < len(held) / 50  # consecutive blocks, not scattered sentences
    big = [["w"] * 99] * 100_000  # 10M tokens: held out at most 100k of them
    assert sum(len(s) + 1 for s in split_held_out(big)[1]) <= 100_000
    with pytest.raises(FflmError, match="give --valid"):
        split_held_out([["one"]])


def test_dropout_and_the_epochs_follow_the_corpus():
    assert dropout_for(400_000, 2_000_000) > dropout_for(800_000, 2_000_000) > dropout_for(3_200_000, 2_000_000)
    assert 0.1 <= dropout_for(10, 10**9) <= 0.5 and 0.1 <= dropout_for(10**9, 10) <= 0.5
    assert min_epochs(10**6) > min_epochs(10**7) >= 2


def _sizes(n):
    """The embedded corpus's first 2,000 sentences as windows, and n toy sizes to choose among."""
    from fflm.model import FFNNLM, ModelConfig
    from fflm.vocab import Vocabulary
    from fflm.windows import Windows

    sents = [s.split() for s in (SYNTH / "train.txt").read_text().splitlines()[:2000]]
    vocab = Vocabulary.build(sents)
    windows = Windows.from_sentences(sents, vocab, 3)
    sizes = (("small", 8, 16), ("base", 16, 32), ("large", 32, 64))[:n]
    return windows, [(name, FFNNLM(vocab, ModelConfig(order=3, embed_dim=e, hidden=(h,)), seed=1))
                     for name, e, h in sizes]


def test_the_recipe_takes_the_largest_size_that_fits_its_epochs(monkeypatch):
    """Deterministic for a given measured speed: the speeds are given, not timed."""
    import fflm.budget as budget
    from fflm.train import TrainConfig

    windows, models = _sizes(3)
    speed = {id(m): s for (_, m), s in zip(models, (400.0, 100.0, 10.0))}
    monkeypatch.setattr(budget, "measure", lambda m, *a, **k: {"steps_per_s": speed[id(m)], "eval_seconds": 0.0})
    tc = TrainConfig(batch_size=64, lr=2.0, schedule="linear")
    spe = -(-len(windows) // 64)
    # base fits min_epochs (8 here) in 60 s at 100 steps/s, large does not: base, capped at 8 epochs
    pick, tc2, p = choose(models, windows, None, tc, 60.0, None, max_epochs=8)
    assert p["chosen"] == "base" and pick == 1 and p["steps"] == 8 * spe and p.get("capped")
    assert tc2.dropout == dropout_for(len(windows), models[1][1].dense.size)
    assert choose(models, windows, None, tc, 60.0, None, max_epochs=8)[2]["steps"] == p["steps"]  # deterministic
    assert choose(models, windows, None, tc, 60.0, None, max_epochs=8, rates={"base": 1.5})[1].lr == 1.5
    # too little time for any: the smallest
    assert choose(models, windows, None, tc, 1.0 + budget.SAVE_SECONDS, None, max_epochs=8)[2]["chosen"] == "small"


def test_a_size_one_pass_short_of_the_epochs_wanted_is_still_taken(monkeypatch):
    """At a preset's own time its model fits 7.9 of the 8 epochs wanted, by a measurement with a
    safety margin: 7/8 of the epochs qualifies a size (no cliff at exactly 8); 6.9 does not."""
    import fflm.budget as budget
    from fflm.train import TrainConfig

    windows, models = _sizes(2)
    spe = -(-len(windows) // 64)
    tc = TrainConfig(batch_size=64, lr=2.0, schedule="linear")
    for epochs, chosen in ((7.9, "base"), (7.0, "base"), (6.9, "small")):
        rate = epochs * spe / (60.0 - budget.SAVE_SECONDS) / budget.SAFETY + 1e-6  # base fits `epochs` in 60 s
        speed = {id(models[0][1]): 100 * rate, id(models[1][1]): rate}
        monkeypatch.setattr(budget, "measure", lambda m, *a, **k: {"steps_per_s": speed[id(m)], "eval_seconds": 0.0})
        p = choose(models, windows, None, tc, 60.0, None, max_epochs=8)[2]
        assert p["chosen"] == chosen, (epochs, p["sizes"])
        if chosen == "base":
            assert p["steps"] == int(epochs * spe) or abs(p["steps"] - epochs * spe) <= 2  # all the time it fits


def test_a_load_in_one_round_of_measurement_does_not_change_the_choice(monkeypatch):
    """Each size is timed twice, in turn, and keeps its faster round: another run slowing the
    first round (as a 10-minute run measured beside one did) leaves the choice as alone."""
    import fflm.budget as budget
    from fflm.train import TrainConfig

    windows, models = _sizes(3)
    speed = {id(m): s for (_, m), s in zip(models, (400.0, 100.0, 10.0))}
    calls = []

    def measure(m, *a, **k):
        calls.append(id(m))
        slow = 20.0 if len(calls) <= len(models) else 1.0  # the first round under a load
        return {"steps_per_s": speed[id(m)] / slow, "eval_seconds": 0.0}

    monkeypatch.setattr(budget, "measure", measure)
    tc = TrainConfig(batch_size=64, lr=2.0, schedule="linear")
    pick, _, p = choose(models, windows, None, tc, 60.0, None, max_epochs=8)
    assert calls == [id(m) for _, m in models] * 2  # in turn, twice
    assert p["chosen"] == "base" and [r["steps_per_s"] for r in p["sizes"]] == [400.0, 100.0, 10.0]
    assert p["sizes"][1]["rounds"] == [5.0, 100.0]
    assert "(best of 5.0, 100.0)" in "\n".join(budget.describe_choice(p))
    calls.clear()
    assert choose(models, windows, None, tc, 60.0, None, max_epochs=8, rounds=1)[2]["chosen"] == "small"


def test_the_recipe_takes_a_smaller_adaptive_head_where_the_automatic_one_is_large(run_cli, tmp_path, monkeypatch):
    """Where the 85% head would hold more than HEAD_WORDS words, the budgeted recipe takes the 75%
    head, says why and records it; below, and with --head-share given, the head is left alone.
    (HEAD_WORDS lowered to this 153-word corpus's scale: an 85% head of 49 words, 75% of 33.)"""
    import fflm.budget as budget
    from fflm import Vocabulary, read_sentences
    from fflm.model import FFNNLM
    from fflm.output import auto_cutoffs

    counts = Vocabulary.build(read_sentences(SYNTH / "train.txt"), min_count=2).counts
    flags = ("--valid", SYNTH / "valid.txt", "--budget", "8s", "--threads", 1, "--softmax", "adaptive", "--embed-dim", 8, "--hidden", 16)
    for words, given, cut in ((40, (), auto_cutoffs(counts, head_share=0.75)), (4096, (), auto_cutoffs(counts)),
                              (40, ("--head-share", "0.9"), auto_cutoffs(counts, head_share=0.9))):
        monkeypatch.setattr(budget, "HEAD_WORDS", words)
        out = tmp_path / f"m{words}{len(given)}.npz"
        code, _, err = run_cli("train", SYNTH / "train.txt", "-o", out, *flags, *given)
        assert code == 0, err
        model, meta = FFNNLM.load(out)
        assert list(model.config.cutoffs) == list(cut)
        recorded = meta["training"]["budget"]
        if words == 40 and not given:
            assert cut[0] == 33 and recorded["head_share"] == 0.75
            assert "adaptive softmax: a head of 75% of the tokens (33 words): 85% would take 49, more than 40" in err
        else:
            assert recorded.get("head_share") is None and "a head of 75%" not in err
            if not given:
                assert "adaptive softmax: the automatic head (85% of the tokens: 49 words)" in err


def test_a_budgeted_run_holds_out_sentences_chooses_and_like_reruns_it_exactly(run_cli, tmp_path):
    """Without --valid: whole sentences held out and said; the sizes measured and one chosen, all
    recorded; `--like` reruns the recorded run (its re-fits included) to the same weights."""
    from fflm.model import FFNNLM

    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    code, _, err = run_cli("train", SYNTH / "train.txt", "-o", a, "--budget", "12s", "--threads", 1)
    assert code == 0, err
    assert "held out" in err and "chose " in err
    model, meta = FFNNLM.load(a)
    tr = meta["training"]
    plan = tr["budget"]
    assert tr["recipe"] == "budget" and plan["held_out"]["sentences"] > 0 and plan["min_count"] == 2
    assert plan["chosen"] in ("small", "base", "large") and len(plan["sizes"]) >= 2
    assert tr["config"]["dropout"] == next(r["dropout"] for r in plan["sizes"] if r["size"] == plan["chosen"])
    from fflm.vocab import Vocabulary

    assert min(model.vocab.counts[len(Vocabulary.SPECIALS):]) >= 2  # words seen once are <unk>
    code, text, _ = run_cli("info", a)
    assert "chose " + plan["chosen"] in text and "held out of the corpus" in text
    code, _, err = run_cli("train", "--like", a, "-o", b, "--threads", 1)
    assert code == 0, err
    again, meta2 = FFNNLM.load(b)
    assert np.array_equal(again.E, model.E) and np.array_equal(again.dense, model.dense)
    assert [r["valid_ppl"] for r in meta2["training"]["history"]] == [r["valid_ppl"] for r in tr["history"]]
    assert meta2["training"]["like"] == str(a)
    from fflm.benchbudget import _held_out_files

    trained, held = _held_out_files(a, tmp_path / "trained.txt", tmp_path / "held.txt")
    code, _, err = run_cli("eval", a, SYNTH / "test.txt", "--tune-on", held, "--baseline-train", trained, "-q")
    assert code == 0 and "are in the training text" not in err, err  # held out: the model never saw them
    code, _, err = run_cli("eval", a, SYNTH / "test.txt", "--tune-on", trained, "--baseline-train", held, "-q")
    assert code == 0 and f"training text {SYNTH / 'train.txt'}" in err  # but the model did see these
    code, _, err = run_cli("train", "--like", a, "-o", b, "--lr", 1)
    assert code == 1 and "drop --lr" in err
    code, _, err = run_cli("train", SYNTH / "valid.txt", "--like", a, "-o", b)
    assert code == 1 and "not the text" in err


def test_an_interrupted_budgeted_run_resumes_with_its_held_out_split_and_like_replays_it(tmp_path, run_cli):
    """Stopped mid-run and resumed (the held-out sentences taken again, the steps as last
    re-fitted), the run ends as its --like replay does, weight for weight."""
    import signal
    import subprocess
    import sys
    import time

    from fflm.model import FFNNLM

    out, ckpt = tmp_path / "p.npz", tmp_path / "p.ckpt.npz"
    cmd = [sys.executable, "-m", "fflm", "train", str(SYNTH / "train.txt"), "-o", str(out), "--budget", "15s",
           "--threads", "1", "-q", "--checkpoint-every", "0.05"]
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 128 + signal.SIGINT, err
    code, _, err = run_cli("train", "--resume", ckpt, "--threads", 1, "-q")
    assert code == 0, err
    model, meta = FFNNLM.load(out)
    assert meta["training"]["budget"]["held_out"]["sentences"] > 0
    code, _, err = run_cli("train", "--like", out, "-o", tmp_path / "l.npz", "--threads", 1, "-q")
    assert code == 0, err
    again = FFNNLM.load(tmp_path / "l.npz")[0]
    assert np.array_equal(again.E, model.E) and np.array_equal(again.dense, model.dense)


def test_on_brown_at_the_presets_speed_the_recipe_is_the_preset(monkeypatch):
    """The budgeted recipe never loses to the fixed one where the fixed one was measured: on
    Brown, given time for 8 epochs of the base size but not of the large one, it chooses
    --preset brown's model, dropout, rate and epochs (speeds given, not timed)."""
    import dataclasses

    import fflm.budget as budget
    from conftest import shared_path
    from fflm.model import FFNNLM, ModelConfig
    from fflm.presets import PRESETS
    from fflm.prepared import training_data
    from fflm.train import TrainConfig

    preset = PRESETS["brown"]
    assert {k: preset[k] for k in budget.RECIPE} == budget.RECIPE  # the fixed part is the preset's
    vocab, windows, _ = training_data(str(shared_path("brown", "train.txt")), None, 2, None, 6, True)
    base = ModelConfig(order=6, cross_sentence=True, tied=True, softmax="auto", fofe=(0.5, 0.8)).resolve(vocab.counts)
    models = [(name, FFNNLM(vocab, dataclasses.replace(base, embed_dim=m, hidden=h), seed=1))
              for name, m, h, _ in budget.SIZES]
    speed = dict(zip((id(m) for _, m in models), (50.0, 23.0, 11.0)))  # steps/s, as measured here
    monkeypatch.setattr(budget, "measure", lambda m, *a, **k: {"steps_per_s": speed[id(m)], "eval_seconds": 9.0})
    tc = TrainConfig(lr=budget.RECIPE["lr"], schedule="linear")
    pick, tc, plan = budget.choose(models, windows, None, tc, 25 * 60, None, budget.MAX_EPOCHS,
                                   rates={n: r for n, _, _, r in budget.SIZES})
    m = models[pick][1].config
    assert plan["chosen"] == "base" and plan["epochs"] == preset["epochs"]
    assert (m.embed_dim, ",".join(map(str, m.hidden))) == (preset["embed_dim"], preset["hidden"])
    assert (tc.dropout, tc.embed_dropout, tc.lr) == (preset["dropout"], preset["embed_dropout"], preset["lr"])
