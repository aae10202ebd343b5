"""--budget: the steps that fit the time, from this machine's measured speed (fflm/budget.py)."""

import math

import numpy as np
import pytest

from conftest import SYNTH
from fflm import FflmError
from fflm.budget import fit, parse_duration, plan


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
    assert meta["config"]["max_steps"] == b["steps"] and meta["config"]["epochs"] == b["epochs"]
    assert meta["config"]["schedule"] == "linear" and len(meta["history"]) == b["epochs"]
    assert meta["history"][-1]["lr"] <= 2 * 0.5 / b["steps"]  # the last step's rate: lr / steps, nearly 0
    code, out_text, _ = run_cli("info", out)
    assert "steps/s measured here" in out_text
    code, _, err = run_cli("train", SYNTH / "train.txt", "-o", tmp_path / "c.npz", "--budget", "20s", "--epochs", 3)
    assert code == 1 and "drop --epochs" in err
    code, _, err = run_cli("train", SYNTH / "train.txt", "-o", tmp_path / "c.npz", "--budget", "20s", "--ray")
    assert code == 1 and "with --ray" in err
    code, _, err = run_cli("train", SYNTH / "train.txt", "-o", tmp_path / "c.npz", "--budget", "soon")
    assert code == 1 and "cannot read 'soon'" in err
