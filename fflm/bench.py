"""Benchmarks: time, throughput and peak memory, each measured in a fresh process.

Called by `bin/bench` (`fflm bench ...`); the figures go into BENCHMARKS.md by hand, with the
command that made them. Nothing here is used by training or evaluation.
"""

import json
import math
import os
import platform
import resource
import subprocess
import sys
import time


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _in_fresh_process(function, *args):
    """Run bench.<function>(*args) in a new interpreter so its peak memory is its own."""
    code = f"import json; from fflm import bench; print(json.dumps(bench.{function}(*{args!r})))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"benchmark {function} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def machine():
    import numpy

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "processor": platform.processor() or platform.machine(),
    }


# --- n-gram baseline ----------------------------------------------------------------------------
def ngram_build(train_path, order, arpa_path):
    from fflm import NGramLM, Vocabulary, Windows, read_sentences

    t0 = time.perf_counter()
    sentences = read_sentences(train_path)
    vocab = Vocabulary.build(sentences)
    windows = Windows.from_sentences(sentences, vocab, order)
    t1 = time.perf_counter()
    lm = NGramLM.estimate(windows, vocab, order)
    t2 = time.perf_counter()
    lm.save_arpa(arpa_path)
    t3 = time.perf_counter()
    return {
        "order": order,
        "tokens": len(windows),
        "ngrams": lm.sizes,
        "read_seconds": t1 - t0,
        "estimate_seconds": t2 - t1,
        "build_seconds": t2 - t0,
        "write_arpa_seconds": t3 - t2,
        "peak_rss_mb": _peak_rss_mb(),
    }


def ngram_score(arpa_path, test_path):
    from fflm import NGramLM, Windows, read_sentences
    from fflm.evaluate import perplexity

    t0 = time.perf_counter()
    lm = NGramLM.load_arpa(arpa_path)
    t1 = time.perf_counter()
    windows = Windows.from_sentences(read_sentences(test_path), lm.vocab, lm.order)
    contexts, targets = windows.pairs()
    t2 = time.perf_counter()
    logp, _ = lm.logprob_windows(contexts, targets)
    t3 = time.perf_counter()
    return {
        "load_arpa_seconds": t1 - t0,
        "score_tokens_per_s": len(targets) / (t3 - t2),
        "ppl": perplexity(logp),
        "peak_rss_mb": _peak_rss_mb(),
    }


def kenlm_score(arpa_path, test_path):
    import kenlm

    from fflm import read_sentences

    t0 = time.perf_counter()
    model = kenlm.Model(arpa_path)
    t1 = time.perf_counter()
    lines = [" ".join(s) for s in read_sentences(test_path)]
    tokens = sum(len(s.split()) + 1 for s in lines)
    t2 = time.perf_counter()
    total = sum(model.score(s, bos=True, eos=True) for s in lines)
    t3 = time.perf_counter()
    return {
        "load_arpa_seconds": t1 - t0,
        "score_tokens_per_s": tokens / (t3 - t2),
        "ppl": 10 ** (-total / tokens),
        "peak_rss_mb": _peak_rss_mb(),
    }


def nltk_kneser_ney(train_path, test_path, order, max_tokens):
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline

    from fflm import read_sentences

    train = read_sentences(train_path)
    t0 = time.perf_counter()
    ngrams, words = padded_everygram_pipeline(order, train)
    lm = KneserNeyInterpolated(order)
    lm.fit(ngrams, words)
    t1 = time.perf_counter()
    scored, total, inf = 0, 0.0, 0
    t2 = time.perf_counter()
    for s in read_sentences(test_path):
        padded = ["<s>"] * (order - 1) + s + ["</s>"]
        for j in range(order - 1, len(padded)):
            lp = lm.logscore(padded[j], padded[j - order + 1 : j])  # log2
            total += lp
            inf += math.isinf(lp)
            scored += 1
        if scored >= max_tokens:
            break
    t3 = time.perf_counter()
    return {
        "fit_seconds": t1 - t0,
        "score_tokens_per_s": scored / (t3 - t2),
        "scored_tokens": scored,
        "infinite_scores": inf,
        "ppl_on_scored": 2 ** (-total / scored) if not math.isinf(total) else math.inf,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_ngram(data_dir, orders=(3, 5), nltk_tokens=300, work_dir="out/bench"):
    """Build and score KN models on Brown; compare with KenLM's module and NLTK."""
    brown = os.path.join(data_dir, "brown")
    train, test = os.path.join(brown, "train.txt"), os.path.join(brown, "test.txt")
    os.makedirs(work_dir, exist_ok=True)
    result = {"benchmark": "ngram", "corpus": brown, "machine": machine(), "orders": {}}
    for order in orders:
        arpa = os.path.join(work_dir, f"kn{order}.arpa")
        row = {"build": _in_fresh_process("ngram_build", train, order, arpa)}
        row["score"] = _in_fresh_process("ngram_score", arpa, test)
        try:
            row["kenlm"] = _in_fresh_process("kenlm_score", arpa, test)
        except RuntimeError as e:
            row["kenlm"] = {"error": str(e).splitlines()[-1]}
        result["orders"][order] = row
    if nltk_tokens:
        result["nltk_kn3"] = _in_fresh_process("nltk_kneser_ney", train, test, 3, nltk_tokens)
    return result


def format_ngram(result):
    lines = [f"n-gram benchmark on {result['corpus']} ({result['machine']['cpus']} cpus)"]
    for order, row in result["orders"].items():
        b, s = row["build"], row["score"]
        lines.append(
            f"KN{order}: build {b['build_seconds']:.2f} s (estimate {b['estimate_seconds']:.2f} s), "
            f"write ARPA {b['write_arpa_seconds']:.2f} s, peak {b['peak_rss_mb']:.0f} MB; "
            f"load ARPA {s['load_arpa_seconds']:.2f} s, score {s['score_tokens_per_s']:,.0f} tokens/s, ppl {s['ppl']:.3f}"
        )
        k = row.get("kenlm", {})
        if "score_tokens_per_s" in k:
            lines.append(
                f"  kenlm module on the same ARPA: load {k['load_arpa_seconds']:.2f} s, "
                f"score {k['score_tokens_per_s']:,.0f} tokens/s, ppl {k['ppl']:.3f}"
            )
    n = result.get("nltk_kn3")
    if n:
        lines.append(
            f"NLTK KneserNeyInterpolated(3): fit {n['fit_seconds']:.1f} s, score {n['score_tokens_per_s']:,.1f} tokens/s "
            f"on {n['scored_tokens']} tokens, {n['infinite_scores']} infinite, peak {n['peak_rss_mb']:.0f} MB"
        )
    return "\n".join(lines)


# --- the neural recipes: train, then evaluate beside KN on the test text --------------------------
# The README's recipes, one place: `fflm bench recipe brown` reruns exactly what BENCHMARKS.md reports.
CORPORA = {
    "brown": ("brown", "train.txt", "valid.txt", "test.txt"),
    "ptb": ("ptb", "ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
}
RECIPES = {
    "brown": ["--order", "5", "--embed-dim", "128", "--hidden", "256", "--batch-size", "256", "--lr", "0.5"],
}


def recipe_paths(data_dir, corpus):
    folder, *files = CORPORA[corpus]
    return [os.path.join(data_dir, folder, f) for f in files]


def _run(cmd):
    """Run a command in a fresh process; returns its stdout, wall seconds and peak memory (MB)."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        from .errors import FflmError

        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        raise FflmError(f"the benchmark's `fflm {cmd[3]}` failed: {last}")
    return r.stdout, seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def run_recipe(data_dir, corpus, threads=0, extra=(), work_dir="out/bench"):
    """Train the corpus's recipe with `fflm train`, then `fflm eval` it on test beside KN."""
    train, valid, test = recipe_paths(data_dir, corpus)
    os.makedirs(work_dir, exist_ok=True)
    model, log = os.path.join(work_dir, f"{corpus}.npz"), os.path.join(work_dir, f"{corpus}.jsonl")
    args = RECIPES[corpus] + list(extra) + ["--threads", str(threads)]
    fflm = [sys.executable, "-m", "fflm"]
    _, train_seconds, train_rss = _run(fflm + ["train", train, "--valid", valid, "-o", model, "--quiet",
                                               "--json-log", log] + args)
    out, eval_seconds, _ = _run(fflm + ["eval", model, test, "--tune-on", valid, "--json",
                                        "--threads", str(threads)])
    with open(log, encoding="utf-8") as f:
        curve = [json.loads(line) for line in f]
    return {
        "benchmark": "recipe",
        "corpus": corpus,
        "machine": machine(),
        "command": "fflm train TRAIN --valid VALID -o MODEL " + " ".join(args),
        "train_seconds": train_seconds,
        "train_peak_rss_mb": train_rss,
        "eval_seconds": eval_seconds,
        "epochs": curve,
        "report": json.loads(out),
    }


def format_recipe(result):
    lines = [f"recipe {result['corpus']}: {result['command']}",
             f"trained in {result['train_seconds']:.0f} s (peak {result['train_peak_rss_mb']:.0f} MB), "
             f"evaluated in {result['eval_seconds']:.0f} s",
             "epoch  train ppl  valid ppl      lr  seconds  tokens/s"]
    for r in result["epochs"]:
        lines.append(f"{r['epoch']:>5}  {r['train_ppl']:9.2f}  {r['valid_ppl']:9.2f}  {r['lr']:6.4g}  "
                     f"{r['seconds']:7.1f}  {r['tokens_per_s']:8,.0f}")
    lines.append("test:")
    for m in result["report"]["models"]:
        extra = f"  (lambda {m['lambda']:.3f})" if "lambda" in m else ""
        lines.append(f"  {m['name']:<14} ppl {m['ppl']:8.2f}{extra}")
    return "\n".join(lines)
