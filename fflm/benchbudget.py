"""`fflm bench budget`: the budgeted recipe on a corpus, as a user would run it, beside KN5.

One row of BENCHMARKS.md's table for issue 26: `fflm train TRAIN --budget B` in a fresh
process (wall time and peak memory from the kernel), then `fflm eval` on TEST beside a
5-gram Kneser-Ney model built on TRAIN with the model's vocabulary (the same
tokens), their interpolation tuned on the run's validation text: the --valid given, or the
sentences the run held out of TRAIN, written out as the run took them (KN5 then built on the
rest, the sentences the model trained on).
"""

import json
import os
import sys

from .bench import machine
from .benchbuild import _measure
from .errors import FflmError


def _held_out_files(model_path, train_path, held_path):
    """The sentences a budgeted run trained on and those it held out of its corpus, one a line,
    as it took them: KN5 is built on the first (an n-gram model built on the held-out sentences
    too would win any weight tuned on them)."""
    from .budget import split_held_out
    from .fileio import atomic_write
    from .model import FFNNLM
    from .prepared import read_text_sentences
    from .text import TextConfig

    meta = FFNNLM.load(model_path)[1]
    text = TextConfig.from_dict(meta.get("text", {}))
    parts = split_held_out(read_text_sentences(meta["training"]["corpus"], text))
    for path, part in zip((train_path, held_path), parts):
        with atomic_write(path) as f:
            for s in part:
                f.write(" ".join(s) + "\n")
    return train_path, held_path


def run_budget(train, test, budget, valid=None, threads=0, extra=(), work_dir="out/bench", name=None):
    """Train with --budget in a fresh process, evaluate beside KN5; the figures as a dict."""
    from .budget import parse_duration
    from .model import FFNNLM

    seconds = parse_duration(budget)
    for path in (train, test, valid):
        if path is not None and not os.path.isfile(path):
            raise FflmError(f"{path}: not found")
    os.makedirs(work_dir, exist_ok=True)
    stem = name or os.path.splitext(os.path.basename(os.path.dirname(os.path.abspath(train)) or "corpus"))[0]
    model, log = os.path.join(work_dir, f"{stem}-budget.npz"), os.path.join(work_dir, f"{stem}-budget.jsonl")
    if os.path.exists(log):
        os.remove(log)  # --json-log appends
    fflm = [sys.executable, "-m", "fflm"]
    args = ["--budget", budget, "--threads", str(threads)] + (["--valid", valid] if valid else []) + list(extra)
    wall, rss, code, tail = _measure(fflm + ["train", train, "-o", model, "--quiet", "--json-log", log] + args)
    if code != 0:
        raise FflmError(f"the benchmark's fflm train failed: {' '.join(tail) or 'no message'}")
    meta = FFNNLM.load(model)[1]["training"]
    baseline = []
    if valid:
        tune = valid
    else:  # KN5 on the sentences the model trained on, the mixture tuned on those it held out
        kn_train, tune = _held_out_files(model, os.path.join(work_dir, f"{stem}-trained.txt"),
                                         os.path.join(work_dir, f"{stem}-heldout.txt"))
        baseline = ["--baseline-train", kn_train]
    out_path = os.path.join(work_dir, f"{stem}-eval.json")
    eval_wall, _, code, tail = _measure(fflm + ["eval", model, test, "--tune-on", tune, "--baseline-order", "5",
                                                "--json", "--threads", str(threads), "-q"] + baseline,
                                        stdout=out_path)
    if code != 0:
        raise FflmError(f"the benchmark's fflm eval failed: {' '.join(tail) or 'no message'}")
    with open(out_path, encoding="utf-8") as f:
        report = json.load(f)
    plan = meta.get("budget") or {}
    with open(log, encoding="utf-8") as f:
        epochs = [json.loads(line) for line in f]
    return {
        "benchmark": "budget", "machine": machine(), "train": train, "test": test, "valid": valid,
        "command": f"fflm train {train} -o MODEL " + " ".join(args),
        "budget_seconds": seconds, "train_seconds": round(wall, 1), "over_budget": round(wall / seconds - 1, 4),
        "train_peak_rss_mb": round(rss, 1), "eval_seconds": round(eval_wall, 1), "plan": plan,
        "dropout": meta["config"].get("dropout"), "lr": meta["config"].get("lr"), "epochs": epochs,
        "baseline_train": baseline[1] if baseline else train,
        "report": report,
    }


def format_budget(r):
    """The run as the table's row and the lines behind it."""
    rows = {row["name"]: row for row in r["report"]["models"]}
    fflm, kn = rows.get("fflm", {}), next((v for k, v in rows.items() if k.startswith("kn")), {})
    mixed = rows.get("interpolated", {})
    p = r["plan"]
    m = r["machine"]
    lines = [
        f"{r['train']}: --budget {r['budget_seconds'] / 60:g} min on {m['cpu_model']} ({m['cpus']} CPUs)",
        f"  chose {p.get('chosen', 'the given model')}, dropout {r['dropout']}, lr {r['lr']}, {p.get('steps_taken', 0):,} "
        f"steps ({len(r['epochs'])} epochs), {len(p.get('refits', []))} re-fit(s)",
        f"  trained in {r['train_seconds']:,.0f} s ({100 * r['over_budget']:+.1f}% of the budget), peak "
        f"{r['train_peak_rss_mb']:,.0f} MB",
        f"  test ({r['report']['tokens']:,} tokens, {r['report']['oov']:,} OOV): fflm {fflm.get('ppl', float('nan')):.2f}, "
        f"{kn.get('name', 'kn5')} {kn.get('ppl', float('nan')):.2f} "
        f"({100 * (fflm.get('ppl', 0) / kn.get('ppl', 1) - 1):+.1f}%), interpolated {mixed.get('ppl', float('nan')):.2f}",
    ]
    return "\n".join(lines)
