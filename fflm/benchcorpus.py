"""`bin/bench corpus`: large corpora (issue 23): prepare's speed and memory, training from the
memory map against training from text, start-up time, and evaluation memory as the test grows.

Every figure comes from `fflm` commands run as separate processes, their memory sampled from
/proc (the whole process tree: prepare's workers count too). Synthetic corpora of any size are
written by `fflm data synth` (cached in the work folder).
"""

import json
import os
import subprocess
import sys
import time

from .bench import machine


def _tree(pid):
    """pid and every descendant's pid."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def _rss(pid):
    """(resident, of it anonymous) bytes of one process."""
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, anon


def run_measured(args, interval=0.05):
    """Run `fflm ARGS` in a fresh process; returns (stdout, wall seconds, peak resident MB of its
    whole tree, peak anonymous MB). Resident counts the corpus's mapped pages too."""
    cmd = [sys.executable, "-c", "from fflm.cli import main; main()"]
    start = time.perf_counter()
    p = subprocess.Popen(cmd + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = peak_anon = 0
    while p.poll() is None:
        sizes = [_rss(q) for q in _tree(p.pid)]
        peak = max(peak, sum(s[0] for s in sizes))
        peak_anon = max(peak_anon, sum(s[1] for s in sizes))
        time.sleep(interval)
    out, err = p.communicate()
    seconds = time.perf_counter() - start
    if p.returncode != 0:
        from .errors import FflmError

        last = (err.strip().splitlines() or ["no message"])[-1]
        raise FflmError(f"the benchmark's `fflm {' '.join(map(str, args[:2]))}` failed: {last}")
    return out, seconds, peak / 2**20, peak_anon / 2**20


def _synth(work, tokens, vocab):
    folder = os.path.join(work, f"synth-{tokens}-{vocab}")
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
        run_measured(["data", "synth", "-o", folder, "--tokens", tokens, "--vocab", vocab])
    return folder


# --max-vocab: the same model on every corpus (the 1M-token one has 67k distinct words of 100k)
TRAIN_MODEL = ["--loss", "nce", "--embed-dim", "64", "--hidden", "256", "--batch-size", "256", "--order", "5",
               "--max-vocab", "50000"]
# scoring 10M tokens with the full softmax over 100k words would take an hour: a small adaptive model
EVAL_MODEL = ["--embed-dim", "32", "--hidden", "64", "--max-vocab", "20000", "--softmax", "adaptive", "--order", "5"]


def run_corpus(sizes, vocab, work, steps, workers, real=None, threads=0):
    """The figures for synthetic corpora of `sizes` training tokens (each with valid and test of
    a tenth), and for `real` text files prepared together, if given."""
    os.makedirs(work, exist_ok=True)
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "vocab": vocab, "steps": steps,
              "workers": workers, "train_model": " ".join(TRAIN_MODEL), "eval_model": " ".join(EVAL_MODEL),
              "corpora": []}
    common = ["--threads", threads, "-q"]
    for size in sizes:
        synth = _synth(work, size, vocab)
        row = {"tokens": size}
        prep = os.path.join(work, f"prep-{size}-{vocab}")
        files = [os.path.join(synth, f) for f in ("train.txt", "valid.txt", "test.txt")]
        row["text_bytes"] = sum(os.path.getsize(f) for f in files)
        out, sec, peak, _ = run_measured(["prepare", files[0], "--valid", files[1], "--test", files[2], "-o", prep,
                                          "--workers", workers, "--force", "--json", "-q"])
        meta = json.loads(out)
        total = sum(json.load(open(os.path.join(prep, p, "prepared.json")))["tokens"]
                    for p in ("train", "valid", "test"))
        row["prepare"] = {"seconds": round(sec, 2), "tokens": total, "tokens_per_s": round(total / sec),
                          "peak_rss_mb": round(peak), "dtype": meta["dtype"], "vocabulary": meta["vocabulary"]}
        model = os.path.join(work, f"m-{size}.npz")
        log = os.path.join(work, f"log-{size}.jsonl")
        _, sec, peak, anon = run_measured(["train", os.path.join(prep, "train"), "-o", model, "--max-steps", 1,
                                           *TRAIN_MODEL, *common])
        row["one_step_run_seconds"] = round(sec, 2)
        row["start_seconds"] = _first_step(model)  # from the process's start to its first step
        _, sec, peak, anon = run_measured(["train", os.path.join(prep, "train"), "-o", model, "--max-steps", steps,
                                           "--json-log", log, *TRAIN_MODEL, *common])
        row["train_prepared"] = {"seconds": round(sec, 2), "peak_rss_mb": round(peak), "peak_anon_mb": round(anon),
                                 "tokens_per_s": _rate(log)}
        if size <= 10_000_000:  # from the text as well: read whole, as before prepare
            _, sec, peak, anon = run_measured(["train", files[0], "-o", model, "--max-steps", steps,
                                               "--json-log", log, *TRAIN_MODEL, *common])
            row["train_text"] = {"seconds": round(sec, 2), "peak_rss_mb": round(peak), "peak_anon_mb": round(anon),
                                 "tokens_per_s": _rate(log)}
        result["corpora"].append(row)
    # evaluation memory as the test set grows: one small model, every size's test set
    smallest = os.path.join(work, f"prep-{sizes[0]}-{vocab}", "train")
    eval_model = os.path.join(work, "eval-model.npz")
    run_measured(["train", smallest, "-o", eval_model, "--max-steps", 200, *EVAL_MODEL, *common])
    for row in result["corpora"]:
        test = os.path.join(work, f"prep-{row['tokens']}-{vocab}", "test")
        out, sec, peak, anon = run_measured(["eval", eval_model, test, "--baseline", "none", "--json", "--threads",
                                             threads, "-q"])
        rep = json.loads(out)
        row["eval"] = {"tokens": rep["tokens"], "seconds": round(sec, 2), "peak_rss_mb": round(peak),
                       "peak_anon_mb": round(anon), "ppl": rep["models"][0]["ppl"]}
        out, sec, peak, anon = run_measured(["score", eval_model, test, "--summary-only", "--threads", threads])
        row["score"] = {"seconds": round(sec, 2), "peak_rss_mb": round(peak), "peak_anon_mb": round(anon)}
    if real:
        prep = os.path.join(work, "prep-real")
        out, sec, peak, _ = run_measured(["prepare", *real, "-o", prep, "--workers", workers, "--force", "--json",
                                          "-q"])
        meta = json.loads(out)
        result["real"] = {"files": real, "tokens": meta["tokens"], "vocabulary": meta["vocabulary"],
                          "text_bytes": sum(os.path.getsize(f) for f in real), "seconds": round(sec, 2),
                          "tokens_per_s": round(meta["tokens"] / sec), "peak_rss_mb": round(peak)}
    return result


def _first_step(model):
    from .model import FFNNLM

    return FFNNLM.load(model)[1]["training"].get("start_seconds")


def _rate(log):
    with open(log) as f:
        rows = [json.loads(line) for line in f]
    return rows[-1]["tokens_per_s"] if rows else None


def format_corpus(r):
    m = r["machine"]
    lines = [f"{m['cpu_model']} ({m['cpus']} cores; {', '.join(m['cpu_flags'])}), {r['date']}",
             f"vocabulary {r['vocab']:,}; prepare --workers {r['workers']}; training {r['steps']} steps of "
             f"{r['train_model']}; evaluation model {r['eval_model']}", ""]
    for row in r["corpora"]:
        p, t = row["prepare"], row["train_prepared"]
        lines.append(f"{row['tokens']:>12,} training tokens: prepare {p['tokens_per_s']:,} tokens/s "
                     f"({p['seconds']} s, peak {p['peak_rss_mb']} MB, {p['dtype']}); first step after {row['start_seconds']} s")
        lines.append(f"{'':>14} train from the map: {t['tokens_per_s']:,.0f} tokens/s, peak {t['peak_rss_mb']} MB "
                     f"(anonymous {t['peak_anon_mb']} MB)")
        if "train_text" in row:
            x = row["train_text"]
            lines.append(f"{'':>14} train from text:    {x['tokens_per_s']:,.0f} tokens/s, peak {x['peak_rss_mb']} MB "
                         f"(anonymous {x['peak_anon_mb']} MB), {x['seconds']} s in all")
        e, s = row["eval"], row["score"]
        lines.append(f"{'':>14} eval on {e['tokens']:,} test tokens: peak {e['peak_rss_mb']} MB, {e['seconds']} s; "
                     f"score: peak {s['peak_rss_mb']} MB, {s['seconds']} s")
    if "real" in r:
        x = r["real"]
        lines.append(f"real text ({len(x['files'])} files, {x['tokens']:,} tokens, {x['vocabulary']:,} words): prepare "
                     f"{x['tokens_per_s']:,} tokens/s, peak {x['peak_rss_mb']} MB")
    return "\n".join(lines)
