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


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # what the figures depend on


def machine():
    import numpy

    from .cpu import cpu_flags

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_flags": [f for f in SPEED_FLAGS if f in cpu_flags()],
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
    import numpy as np

    from fflm import NGramLM, Windows, read_sentences
    from fflm.evaluate import perplexity

    t0 = time.perf_counter()
    lm = NGramLM.load_arpa(arpa_path)
    t1 = time.perf_counter()
    windows = Windows.from_sentences(read_sentences(test_path), lm.vocab, lm.order)
    contexts, targets = windows.pairs()
    lm.logprob_windows(contexts[:2], targets[:2])  # the lookup kernel's first call loads it (once a process)
    t2 = time.perf_counter()
    logp, _ = lm.logprob_windows(contexts, targets)
    t3 = time.perf_counter()
    # the binary model of the same ARPA file (fflm ngram build-binary), opened by memory map
    import tempfile

    from fflm.ngram import load_binary, save_binary

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.bin")
        save_binary(lm, path)
        t4 = time.perf_counter()
        binary = load_binary(path)
        t5 = time.perf_counter()
        binary.logprob_windows(contexts[:2], targets[:2])
        t5b = time.perf_counter()
        logp_binary, _ = binary.logprob_windows(contexts, targets)
        t6 = time.perf_counter()
        same = bool(np.array_equal(logp, logp_binary))
        del binary
    return {
        "load_arpa_seconds": t1 - t0,
        "score_tokens_per_s": len(targets) / (t3 - t2),
        "load_binary_seconds": t5 - t4,
        "binary_score_tokens_per_s": len(targets) / (t6 - t5b),
        "binary_equals_arpa": same,
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
            f"load ARPA {s['load_arpa_seconds']:.2f} s, score {s['score_tokens_per_s']:,.0f} tokens/s, ppl {s['ppl']:.3f}; "
            f"binary: load {s['load_binary_seconds']:.4f} s, score {s['binary_score_tokens_per_s']:,.0f} tokens/s"
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
RECIPES = {name: ["--preset", name] for name in CORPORA}  # the flags: fflm/presets.py


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


def run_recipe(data_dir, corpus, threads=0, extra=(), work_dir="out/bench", seeds=1):
    """Train the corpus's recipe with `fflm train`, then `fflm eval` it on test beside KN. seeds > 1:
    train it with --seed 1, 2, ... one after the other, and evaluate the first with the others
    mixed in (`fflm eval --mix`: their ensemble and the EM-tuned mixture with KN)."""
    from .errors import FflmError

    if seeds < 1:
        raise FflmError(f"--seeds must be at least 1, not {seeds}")
    if seeds > 1 and any(a == "--seed" or a.startswith("--seed=") for a in extra):
        raise FflmError("--seeds trains seeds 1..N itself; leave --seed out of the training flags")
    train, valid, test = recipe_paths(data_dir, corpus)
    os.makedirs(work_dir, exist_ok=True)
    args = RECIPES[corpus] + list(extra) + ["--threads", str(threads)]
    fflm = [sys.executable, "-m", "fflm"]
    runs = []
    for seed in range(1, seeds + 1):
        stem = corpus if seed == 1 else f"{corpus}-seed{seed}"
        model, log = os.path.join(work_dir, f"{stem}.npz"), os.path.join(work_dir, f"{stem}.jsonl")
        if os.path.exists(log):
            os.remove(log)  # --json-log appends: a previous run's epochs are not this one's
        seed_args = args + (["--seed", str(seed)] if seeds > 1 else [])
        _, seconds, rss = _run(fflm + ["train", train, "--valid", valid, "-o", model, "--quiet",
                                       "--json-log", log] + seed_args)
        with open(log, encoding="utf-8") as f:
            runs.append({"seed": seed if seeds > 1 else None, "model": model, "train_seconds": seconds,
                         "train_peak_rss_mb": rss, "epochs": [json.loads(line) for line in f]})
    mix = [a for r in runs[1:] for a in ("--mix", r["model"])]
    # beside KN5, the baseline the papers and issue 5 compare with, whatever the model's n
    out, eval_seconds, _ = _run(fflm + ["eval", runs[0]["model"], test, "--tune-on", valid, "--baseline-order", "5",
                                        "--json", "--threads", str(threads)] + mix)
    result = {
        "benchmark": "recipe",
        "corpus": corpus,
        "machine": machine(),
        "command": "fflm train TRAIN --valid VALID -o MODEL " + " ".join(args),
        "train_seconds": sum(r["train_seconds"] for r in runs),
        "train_peak_rss_mb": max(r["train_peak_rss_mb"] for r in runs),
        "eval_seconds": eval_seconds,
        "epochs": runs[0]["epochs"],
        "report": json.loads(out),
    }
    if seeds > 1:
        result["seeds"] = runs
    return result


def format_recipe(result):
    lines = [f"recipe {result['corpus']}: {result['command']}",
             f"trained in {result['train_seconds']:.0f} s (peak {result['train_peak_rss_mb']:.0f} MB), "
             f"evaluated in {result['eval_seconds']:.0f} s",
             "epoch  train ppl  valid ppl      lr  seconds  tokens/s"]
    for r in result["epochs"]:
        lines.append(f"{r['epoch']:>5}  {r['train_ppl']:9.2f}  {r['valid_ppl']:9.2f}  {r['lr']:6.4g}  "
                     f"{r['seconds']:7.1f}  {r['tokens_per_s']:8,.0f}")
    for r in result.get("seeds", [])[1:]:
        last = r["epochs"][-1] if r["epochs"] else {}
        lines.append(f"seed {r['seed']}: {len(r['epochs'])} epochs, {r['train_seconds']:.0f} s, "
                     f"valid ppl {last.get('valid_ppl', float('nan')):.2f} at the end ({r['model']})")
    lines.append("test:")
    for m in result["report"]["models"]:
        extra = f"  (lambda {m['lambda']:.3f})" if "lambda" in m else ""
        if "weights" in m:
            extra = "  (" + ", ".join(f"{k} {w:.3f}" for k, w in m["weights"].items()) + ")"
        lines.append(f"  {m['name']:<14} ppl {m['ppl']:8.2f}{extra}")
    return "\n".join(lines)


# --- speed: fflm's training, scoring and generation against the machine's GEMM rate (and PyTorch) ---
SPEED_CONFIGS = {
    "small": {"order": 5, "embed_dim": 64, "hidden": (256,), "batch_size": 128},
    "base": {"order": 5, "embed_dim": 128, "hidden": (512,), "batch_size": 256},
}


def _speed_config(spec):
    from fflm.model import ModelConfig

    return ModelConfig(order=spec["order"], embed_dim=spec["embed_dim"], hidden=spec["hidden"],
                       tied=spec.get("tied", False), cross_sentence=spec.get("cross_sentence", False), softmax="full")


def train_flops_per_token(config, V):
    """Forward 2·in·out per layer, backward twice that (the input's and the weights' gradients);
    the first hidden layer's input gradient is needed too (it feeds the embeddings)."""
    H_out = (config.hidden[-1] if config.hidden else config.context_width) + (
        config.context_width if config.direct else 0
    )
    widths = [config.context_width, *config.hidden]
    hidden = sum(a * b for a, b in zip(widths, widths[1:]))
    return 6 * (H_out * V + hidden)


def score_flops_per_token(config, V):
    return train_flops_per_token(config, V) // 3


def gemm_gflops(B, H, V, seconds=3.0, bf16=False):
    """numpy's float32 GEMM rate on the output layer's three products at these shapes; with
    bf16, fflm's bfloat16 products (AMX, or the emulation), packing included as training does it."""
    import numpy as np

    from .bf16 import Matmul

    rng = np.random.default_rng(0)
    h = rng.standard_normal((B, H), dtype=np.float32)
    U = rng.standard_normal((H, V), dtype=np.float32)
    z = np.empty((B, V), dtype=np.float32)
    dU = np.empty((H, V), dtype=np.float32)
    dh = np.empty((B, H), dtype=np.float32)
    mm = Matmul() if bf16 else None

    def three():
        if mm is None:
            np.dot(h, U, out=z)
            np.dot(h.T, z, out=dU)
            np.dot(z, U.T, out=dh)
        else:
            mm.dot(h, U, z, role="U")
            mm.dot(h, z, dU, a_t=True, role="dU")
            mm.dot(z, U, dh, b_t=True, role="dh")

    three()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        three()
        n += 1
    return 3 * 2 * B * H * V * n / (time.perf_counter() - t0) / 1e9


class _TorchModel:
    """The same model written plainly in PyTorch: what a user would write first. With
    `adaptive` = (cutoffs, div), its output layer is nn.AdaptiveLogSoftmaxWithLoss instead."""

    def __init__(self, config, V, lr, threads, adaptive=None, bf16=False):
        import torch

        self.bf16 = bf16  # torch.autocast to bfloat16: what a PyTorch user switches on for AMX

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        nn = torch.nn
        self.torch = torch
        c, m = config.order - 1, config.embed_dim
        layers, width = [], c * m
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.Tanh()]
            width = h
        self.emb = nn.Embedding(V, m)  # N(0, 1), as fflm's
        self.adaptive = None
        if adaptive is not None:  # biases in the head only: PyTorch's tails have none (fflm's do)
            cutoffs, div = adaptive
            self.net = nn.Sequential(*layers)
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(width, V, list(cutoffs), div_value=float(div), head_bias=True)
        else:
            self.net = nn.Sequential(*layers, nn.Linear(width, V))  # U(±1/√fan-in), as fflm's
        params = list(self.emb.parameters()) + list(self.net.parameters())
        params += list(self.adaptive.parameters()) if self.adaptive is not None else []
        self.opt = torch.optim.SGD(params, lr=lr)
        self.loss = nn.CrossEntropyLoss()

    def step(self, x, y):
        torch = self.torch
        x, y = torch.from_numpy(x.astype("int64")), torch.from_numpy(y.astype("int64"))
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            if self.adaptive is not None:  # the target's clusters only, like fflm's training path
                loss = self.adaptive(self.net(self.emb(x).flatten(1)), y).loss
            else:
                loss = self.loss(self.net(self.emb(x).flatten(1)), y)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def _timed_steps(step, batches, seconds):
    """Run step(batch) over the batches (cycling) for about `seconds`; returns (tokens, seconds)."""
    tokens, t0, i = 0, time.perf_counter(), 0
    while True:
        b = batches[i % len(batches)]
        step(b)
        tokens += len(b[1]) if isinstance(b, tuple) else len(b)
        i += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return tokens, elapsed


def run_speed(data_dir, name, threads=0, seconds=20.0, use_torch=True, loss="softmax", precision="fp32"):
    """Everything issue 4 measures for one config, in this process (see BENCHMARKS.md). With
    precision bf16 (or auto where it picks bf16), fflm in bf16 is timed beside fflm in fp32,
    and PyTorch under bfloat16 autocast beside PyTorch in float32, all in the same rounds."""
    import numpy as np

    from fflm import Vocabulary, Windows, read_sentences
    from fflm.generate import sample
    from fflm.model import FFNNLM
    from fflm.bf16 import describe_precision, resolve_precision
    from fflm.train import SGD, TrainConfig, make_noise, set_threads, warm_up

    precision = resolve_precision(precision)
    spec = SOFTMAX_CONFIGS[name]
    train_path, valid_path, _ = recipe_paths(data_dir, "brown")
    used = set_threads(threads)
    sentences = read_sentences(train_path)
    vocab = Vocabulary.build(sentences)
    V = len(vocab)
    config = _speed_config(spec)
    use_torch = use_torch and not config.tied  # the PyTorch peer is the plain untied model
    B = spec["batch_size"]
    windows = Windows.from_sentences(sentences, vocab, config.span, config.cross_sentence)
    valid = Windows.from_sentences(read_sentences(valid_path), vocab, config.span, config.cross_sentence)
    model = FFNNLM(vocab, config, seed=1)
    tconfig = TrainConfig(batch_size=B, loss=loss, embed_dropout=spec.get("dropout", (0.0, 0.0))[0],
                          dropout=spec.get("dropout", (0.0, 0.0))[1])
    if precision == "bf16":
        model.set_precision("bf16")
        warm_up(model, tconfig)
        model.set_precision("fp32")
    compile_seconds = warm_up(model, tconfig)

    rng = np.random.default_rng(0)
    index = [ix.copy() for _, ix in zip(range(200), windows.batches(B, rng))]
    sgd = SGD(model, B, make_noise(model, tconfig), (tconfig.embed_dropout, tconfig.dropout), seed=1)
    lr = 0.05  # small, so the weights stay in a realistic range however long the runs are
    fflm_step = lambda ix: sgd.step(ix, windows, lr, 0.0, 0.0)  # noqa: E731
    _timed_steps(fflm_step, index[:5], 0.0)

    gemm = gemm_gflops(B, config.hidden[-1], V, seconds=min(3.0, seconds / 4))
    bf16 = precision == "bf16"
    gemm16 = gemm_gflops(B, config.hidden[-1], V, seconds=min(3.0, seconds / 4), bf16=True) if bf16 else None
    # every implementation runs in short rounds, in turn, on the same batches, so drift hits all alike
    steps = {"fflm": (lambda ix: (model.set_precision(precision), fflm_step(ix))[1], index)}
    if bf16:
        steps["fflm_fp32"] = (lambda ix: (model.set_precision("fp32"), fflm_step(ix))[1], index)
    torch_models = {}
    if use_torch:
        try:
            torch_models["torch"] = _TorchModel(config, V, lr, used)
            if bf16:
                torch_models["torch_bf16"] = _TorchModel(config, V, lr, used, bf16=True)
        except ImportError:
            torch_models = {}
    if torch_models:
        pairs = [windows.pairs(ix) for ix in index]
        for key, tm in torch_models.items():
            steps[key] = (lambda p, tm=tm: tm.step(*p), pairs)
            _timed_steps(steps[key][0], pairs[:5], 0.0)
        set_threads(used)  # torch may have changed the BLAS pool
    rounds = 4
    done = {key: [0.0, 0.0] for key in steps}
    for _ in range(rounds):
        for key, (step, batches) in steps.items():
            a, b = _timed_steps(step, batches, seconds / rounds)
            done[key][0] += a
            done[key][1] += b
            set_threads(used)
    rate = {key: tok / sec for key, (tok, sec) in done.items()}
    model.set_precision(precision)
    train_tps = rate["fflm"]
    one_thread = None
    if used > 1:  # how well the second core is used
        set_threads(1)
        a, b = _timed_steps(fflm_step, index, seconds / 2)
        one_thread = a / b
        set_threads(used)
    flops = train_flops_per_token(config, V)
    limit = gemm16 if bf16 else gemm  # the machine's limit for the arithmetic in use
    result = {
        "benchmark": "speed",
        "config": name,
        "model": {**spec, "hidden": list(spec["hidden"]), "vocabulary": V, "loss": loss,
                  **({"dropout": list(spec["dropout"])} if "dropout" in spec else {})},
        "machine": machine(),
        "threads": used,
        "precision": precision,
        "precision_detail": describe_precision(precision),
        "compile_seconds": compile_seconds,
        "gemm_gflops": gemm,
        "bf16_gemm_gflops": gemm16,
        "train_tokens_per_s": train_tps,
        "train_gflops": train_tps * flops / 1e9 if loss == "softmax" else None,
        "gemm_fraction": train_tps * flops / 1e9 / limit if loss == "softmax" else None,
        "train_tokens_per_s_1_thread": one_thread,
        "threads_speedup": train_tps / one_thread if one_thread else None,
    }
    if bf16:
        result["fp32_train_tokens_per_s"] = rate["fflm_fp32"]
        result["bf16_vs_fp32"] = train_tps / rate["fflm_fp32"]
    # scoring: the exact softmax over validation text
    contexts, targets = valid.pairs(np.arange(min(len(valid), 60_000)))
    model.nll(contexts[:1024], targets[:1024])
    for p in (["fp32"] if bf16 else []) + [precision]:  # the fp32 rate first, the one in use last
        model.set_precision(p)
        t0 = time.perf_counter()
        model.nll(contexts, targets)
        score_tps = len(targets) / (time.perf_counter() - t0)
        if p != precision:
            result["fp32_score_tokens_per_s"] = score_tps
    result["score_tokens_per_s"] = score_tps
    result["score_gemm_fraction"] = score_tps * score_flops_per_token(config, V) / 1e9 / limit
    if bf16:
        result["bf16_score_vs_fp32"] = score_tps / result["fp32_score_tokens_per_s"]
    # generation: one token is one forward pass of one context and a draw
    sample(model, num_samples=1, num_words=5, seed=0)
    t0, words = time.perf_counter(), 0
    for s in range(20):
        words += len(sample(model, num_samples=1, num_words=50, seed=s)[0]) + 1  # + its </s>
    result["generate_ms_per_token"] = 1000 * (time.perf_counter() - t0) / words
    # memory and start-up, each in a fresh process (this one holds PyTorch and the timing data)
    result["peak_rss_mb"] = _in_fresh_process("train_peak_memory", data_dir, name, loss)
    work = os.path.join("out", "bench")
    os.makedirs(work, exist_ok=True)
    model_path, tiny = os.path.join(work, f"speed-{name}.npz"), os.path.join(work, "one-sentence.txt")
    model.save(model_path)
    with open(tiny, "w", encoding="utf-8") as f:
        f.write("the jury said\n")
    fflm = [sys.executable, "-m", "fflm"]
    _run(fflm + ["eval", model_path, tiny, "--baseline", "none"])  # fills the kernel cache if need be
    result["eval_startup_seconds"] = _run(fflm + ["eval", model_path, tiny, "--baseline", "none"])[1]
    result["help_seconds"] = _run(fflm + ["--help"])[1]
    if torch_models:
        import torch

        result["torch_version"] = torch.__version__
        result["torch_tokens_per_s"] = rate["torch"]
        result["vs_torch"] = (rate["fflm_fp32"] if bf16 else train_tps) / rate["torch"]  # fp32 against fp32
        if bf16:
            result["torch_bf16_tokens_per_s"] = rate["torch_bf16"]
            result["vs_torch_bf16"] = train_tps / rate["torch_bf16"]
    return result


def train_peak_memory(data_dir, name, loss="softmax"):
    """Peak memory of training a config on Brown: corpus, windows, model, buffers, scoring."""
    import numpy as np

    from fflm import Vocabulary, Windows, read_sentences
    from fflm.model import FFNNLM
    from fflm.train import SGD, TrainConfig, evaluate_ppl, make_noise

    spec = SOFTMAX_CONFIGS[name]
    train_path, valid_path, _ = recipe_paths(data_dir, "brown")
    sentences = read_sentences(train_path)
    vocab = Vocabulary.build(sentences)
    config = _speed_config(spec)
    windows = Windows.from_sentences(sentences, vocab, config.span, config.cross_sentence)
    valid = Windows.from_sentences(read_sentences(valid_path), vocab, config.span, config.cross_sentence)
    model = FFNNLM(vocab, config, seed=1)
    tconfig = TrainConfig(batch_size=spec["batch_size"], loss=loss)
    sgd = SGD(model, spec["batch_size"], make_noise(model, tconfig))
    best = (model.E.copy(), model.dense.copy())  # training keeps a copy of the best weights
    for _, index in zip(range(20), windows.batches(spec["batch_size"], np.random.default_rng(0))):
        sgd.step(index, windows, 0.05, 0.0, 0.0)
    evaluate_ppl(model, valid)
    del best
    return _peak_rss_mb()


def format_speed(r):
    m = r["machine"]
    bf16 = r.get("precision") == "bf16"
    limit = "bf16 GEMM" if bf16 else "GEMM"
    lines = [f"speed, config {r['config']} {r['model']} on {r['threads']} thread(s)",
             f"  CPU: {m.get('cpu_model')} ({', '.join(m.get('cpu_flags', [])) or 'none of ' + ', '.join(SPEED_FLAGS)})",
             f"  precision: {r.get('precision_detail', 'fp32')}",
             f"  numpy float32 GEMM on the output layer's shapes: {r['gemm_gflops']:.1f} GFLOP/s"]
    if bf16:
        lines.append(f"  fflm bfloat16 GEMM on the same shapes (packing included): {r['bf16_gemm_gflops']:.1f} GFLOP/s")
    lines.append(f"  compile (or load from the cache): {r['compile_seconds']:.2f} s")
    line = f"  training: {r['train_tokens_per_s']:,.0f} tokens/s"
    if r.get("train_gflops") is not None:
        line += f" = {r['train_gflops']:.1f} GFLOP/s, {100 * r['gemm_fraction']:.0f}% of {limit}"
    lines.append(line)
    if bf16:
        lines.append(f"  fflm fp32, same rounds: {r['fp32_train_tokens_per_s']:,.0f} tokens/s; "
                     f"bf16/fp32 = {r['bf16_vs_fp32']:.2f}")
    if "torch_tokens_per_s" in r:
        lines.append(f"  PyTorch {r['torch_version']} float32: {r['torch_tokens_per_s']:,.0f} tokens/s; "
                     f"fflm fp32/PyTorch = {r['vs_torch']:.2f}")
    if "torch_bf16_tokens_per_s" in r:
        lines.append(f"  PyTorch bfloat16 autocast: {r['torch_bf16_tokens_per_s']:,.0f} tokens/s; "
                     f"fflm bf16/PyTorch bf16 = {r['vs_torch_bf16']:.2f}")
    lines.append(f"  scoring (exact softmax): {r['score_tokens_per_s']:,.0f} tokens/s, "
                 f"{100 * r['score_gemm_fraction']:.0f}% of {limit}")
    if bf16:
        lines.append(f"  scoring in fp32: {r['fp32_score_tokens_per_s']:,.0f} tokens/s; "
                     f"bf16/fp32 = {r['bf16_score_vs_fp32']:.2f}")
    if r.get("threads_speedup"):
        lines.append(f"  one thread: {r['train_tokens_per_s_1_thread']:,.0f} tokens/s; "
                     f"{r['threads']} threads = {r['threads_speedup']:.2f}x")
    lines.append(f"  generation: {r['generate_ms_per_token']:.2f} ms/token")
    lines.append(f"  peak memory training (fresh process): {r['peak_rss_mb']:.0f} MB")
    lines.append(f"  start-up: fflm eval on one sentence {r['eval_startup_seconds']:.2f} s, "
                 f"fflm --help {r['help_seconds']:.2f} s")
    return "\n".join(lines)


# --- large vocabularies: the full softmax against the adaptive one (and PyTorch's) ----------------
def _softmax_cases(data_dir, synth_vocabs, tokens=600_000):
    """(name, vocabulary, training sentences, scoring sentences) for Brown's raw text with
    --min-count 2 (24.5k words, real text) and the synthetic process at each vocabulary size
    (every word of the process in the vocabulary, ranked by its count in the sample)."""
    import numpy as np

    from fflm import Vocabulary, read_sentences
    from fflm import synth

    raw = os.path.join(data_dir, "brown", "raw")
    sentences = read_sentences(os.path.join(raw, "train.txt"))
    yield ("brown-raw", Vocabulary.build(sentences, min_count=2), sentences,
           read_sentences(os.path.join(raw, "valid.txt"))[:5000])
    for V in synth_vocabs:
        process = synth.make_process(2003, vocab=V)
        rng = np.random.default_rng(1)
        ids = [s for chunk, _ in synth.sample_stream(process, tokens + 40_000, rng) for s in chunk]
        counts = np.bincount(np.concatenate(ids), minlength=V)
        rank = np.argsort(-counts, kind="stable")
        words = np.array(process["words"], dtype=object)
        vocab = Vocabulary(words[rank].tolist(), [0, 0, len(ids)] + counts[rank].tolist())
        as_words = [words[s].tolist() for s in ids]
        cut = int(len(as_words) * tokens / (tokens + 40_000))
        yield f"synth-{V // 1000}k", vocab, as_words[:cut], as_words[cut:]


# the speed configs, and the presets' sizes (tied, cross-sentence, dropout (embeddings, hidden))
SOFTMAX_CONFIGS = {**SPEED_CONFIGS, "preset": {"order": 6, "embed_dim": 256, "hidden": (1024, 256), "batch_size": 256,
                                               "tied": True, "cross_sentence": True, "dropout": (0.1, 0.3)}}


def run_softmax(data_dir, threads=0, seconds=10.0, use_torch=True, synth_vocabs=(50_000, 100_000, 200_000),
                name="base", head_shares=(None,), precision="fp32"):
    """Training and exact scoring speed of the full softmax and the adaptive one on the same
    model (`name`'s sizes), as the vocabulary grows; PyTorch's AdaptiveLogSoftmaxWithLoss with the
    same cutoffs and projection sizes beside fflm's adaptive softmax. `head_shares`: the adaptive
    layer's automatic head at each of these token shares (None: the default, 85%), timed in the
    same rounds; PyTorch gets the first one's cutoffs. `precision` bf16: each layer also trained
    and scored in bf16 (keys bf16_*), in the same rounds."""
    import numpy as np

    from fflm import Windows
    from fflm.model import FFNNLM, ModelConfig
    from fflm.train import SGD, set_threads

    spec = SOFTMAX_CONFIGS[name]
    used = set_threads(threads)
    B, lr = spec["batch_size"], 0.05
    tied, cross = spec.get("tied", False), spec.get("cross_sentence", False)
    dropout = spec.get("dropout", (0.0, 0.0))
    use_torch = use_torch and not tied  # PyTorch's adaptive softmax has no tied form
    result = {"benchmark": "softmax", "config": name, "machine": machine(), "threads": used, "cases": [],
              "precision": precision}
    precisions = ("fp32", "bf16") if precision == "bf16" else ("fp32",)
    for case, vocab, train_s, score_s in _softmax_cases(data_dir, synth_vocabs):
        V = len(vocab)
        row = {"case": case, "vocabulary": V}
        windows = Windows.from_sentences(train_s, vocab, spec["order"], cross)
        scoring = Windows.from_sentences(score_s, vocab, spec["order"], cross)
        contexts, targets = scoring.pairs(np.arange(min(len(scoring), 10_240)))
        index = [ix.copy() for _, ix in zip(range(100), windows.batches(B, np.random.default_rng(0)))]
        steps, adaptive_config = {}, None
        layers = [("full", None)] + [("adaptive", share) for share in head_shares]
        for softmax, share in layers:
            key = softmax if share is None or len(head_shares) == 1 else f"adaptive@{share:g}"
            config = ModelConfig(order=spec["order"], embed_dim=spec["embed_dim"], hidden=spec["hidden"],
                                 softmax=softmax, tied=tied, cross_sentence=cross).resolve(vocab.counts, share)
            model = FFNNLM(vocab, config, seed=1)
            sgd = SGD(model, B, dropout=dropout, seed=1)
            for p in precisions:
                k = key if p == "fp32" else f"bf16_{key}"
                steps[k] = (lambda sgd, model, p: lambda ix: (model.set_precision(p),
                                                              sgd.step(ix, windows, lr, 0.0, 0.0)))(sgd, model, p)
                _timed_steps(steps[k], index[:3], 0.0)  # compiled, buffers touched
                model.nll(contexts[:1024], targets[:1024])
                t0 = time.perf_counter()
                model.nll(contexts, targets)
                row[f"{k}_score_tokens_per_s"] = len(targets) / (time.perf_counter() - t0)
            if softmax == "adaptive":
                row[f"{key}_cutoffs" if key != "adaptive" else "cutoffs"] = list(model.config.cutoffs)
                if adaptive_config is None:
                    row["tail_div"] = model.config.tail_div
                    adaptive_config = model.config
        torch_model = None
        if use_torch:
            try:
                torch_model = _TorchModel(adaptive_config, V, lr, used, (adaptive_config.cutoffs, adaptive_config.tail_div))
            except ImportError:
                torch_model = None
        if torch_model is not None:
            pairs = [windows.pairs(ix) for ix in index]
            steps["torch_adaptive"] = lambda p: torch_model.step(*p)
            _timed_steps(steps["torch_adaptive"], pairs[:3], 0.0)
            set_threads(used)
        totals = {k: [0, 0.0] for k in steps}
        for _ in range(2):  # alternating rounds, so drift hits every implementation alike
            for k, step in steps.items():
                a, b = _timed_steps(step, pairs if k == "torch_adaptive" else index, seconds / 2)
                totals[k][0] += a
                totals[k][1] += b
                set_threads(used)
        for k, (tok, sec) in totals.items():
            row[f"{k}_train_tokens_per_s"] = tok / sec
        for key in steps:
            if key.startswith("adaptive"):
                tail = key[len("adaptive"):]
                row[f"train_ratio{tail}"] = row[f"{key}_train_tokens_per_s"] / row["full_train_tokens_per_s"]
                row[f"score_ratio{tail}"] = row[f"{key}_score_tokens_per_s"] / row["full_score_tokens_per_s"]
        for k in steps:
            if k.startswith("bf16_"):
                for what in ("train", "score"):
                    row[f"{k}_{what}_vs_fp32"] = row[f"{k}_{what}_tokens_per_s"] / row[f"{k[5:]}_{what}_tokens_per_s"]
        if torch_model is not None:
            first = next(k for k in steps if k.startswith("adaptive"))
            row["vs_torch_adaptive"] = row[f"{first}_train_tokens_per_s"] / row["torch_adaptive_train_tokens_per_s"]
        result["cases"].append(row)
    if use_torch:
        try:
            import torch

            result["torch_version"] = torch.__version__
        except ImportError:
            pass
    return result


def format_softmax(r):
    lines = [f"full vs adaptive softmax, config {r['config']} {SOFTMAX_CONFIGS[r['config']]}, {r['threads']} thread(s); "
             "tokens/s",
             f"{'case':<16} {'V':>7}  {'cutoffs':<14} {'train full':>10} {'adaptive':>9} {'ratio':>6}  "
             f"{'score full':>10} {'adaptive':>9} {'ratio':>6}  {'torch adaptive':>14} {'fflm/torch':>10}"]
    for c in r["cases"]:
        torch_tps = c.get("torch_adaptive_train_tokens_per_s")
        keys = [k[:-len("_train_tokens_per_s")] for k in c
                if k.startswith("adaptive") and k.endswith("_train_tokens_per_s")]
        for i, key in enumerate(keys):
            tail = key[len("adaptive"):]
            name = c["case"] + (f" {tail[1:]}" if tail else "")
            cutoffs = c.get(f"{key}_cutoffs", c.get("cutoffs"))
            lines.append(
                f"{name:<16} {c['vocabulary']:>7,}  {','.join(map(str, cutoffs)):<14} "
                f"{c['full_train_tokens_per_s']:>10,.0f} {c[key + '_train_tokens_per_s']:>9,.0f} "
                f"{c['train_ratio' + tail]:>5.1f}x  "
                f"{c['full_score_tokens_per_s']:>10,.0f} {c[key + '_score_tokens_per_s']:>9,.0f} "
                f"{c['score_ratio' + tail]:>5.1f}x  "
                + (f"{torch_tps:>14,.0f} {c['vs_torch_adaptive']:>9.2f}x" if torch_tps and i == 0
                   else f"{'-':>14} {'-':>10}"))
    if r.get("precision") == "bf16":
        lines.append("in bf16 (tokens/s, and against the same layer in fp32):")
        for c in r["cases"]:
            parts = [f"{k[5:-len('_train_tokens_per_s')]} training {c[k]:,.0f} ({c[k[:-len('_tokens_per_s')] + '_vs_fp32']:.2f}x), "
                     f"scoring {c[k.replace('train', 'score')]:,.0f} "
                     f"({c[k.replace('train', 'score')[:-len('_tokens_per_s')] + '_vs_fp32']:.2f}x)"
                     for k in c if k.startswith("bf16_") and k.endswith("_train_tokens_per_s")]
            lines.append(f"  {c['case']:<16} " + "; ".join(parts))
    return "\n".join(lines)
