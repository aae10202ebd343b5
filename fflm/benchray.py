"""`fflm bench ray`: the same training run in one process and on Ray workers, side by side.

One process of T threads against W workers of T/W threads each, same model, same global batch,
same epochs: tokens/s (the ratio is the overhead of Ray and the averaging), validation
perplexity, and per step the compute time, the averaging time and the bytes each worker
publishes and reads (what the scaling model in BENCHMARKS.md is built from).
"""

import json
import os
import sys

from .bench import SPEED_CONFIGS, _run, machine, recipe_paths

def config_flags(config, corpus):
    """The model flags of a configuration: the corpus's preset, or the speed benchmark's small / base."""
    if config == "preset":
        return ["--preset", corpus]
    spec = SPEED_CONFIGS[config]
    return ["--order", str(spec["order"]), "--embed-dim", str(spec["embed_dim"]),
            "--hidden", ",".join(map(str, spec["hidden"])), "--batch-size", str(spec["batch_size"])]


def run_ray_bench(data_dir, corpus="brown", config="preset", epochs=1, workers=2, threads=2, sync_every=(1,),
                  max_steps=0, work_dir="out/bench/ray", extra=()):
    """Train one process of `threads` threads, then `workers` Ray workers of threads // workers
    each for every K in sync_every; returns the figures (JSON-ready)."""
    train, valid, _ = recipe_paths(data_dir, corpus)
    os.makedirs(work_dir, exist_ok=True)
    base = config_flags(config, corpus) + ["--epochs", str(epochs), "--max-steps", str(max_steps)] + list(extra)
    per = max(1, threads // workers)
    runs = [("one process", ["--threads", str(threads)])]
    runs += [(f"ray K={k}", ["--threads", str(per), "--ray", "--workers", str(workers), "--sync-every", str(k)])
             for k in sync_every]
    rows = []
    for name, flags in runs:
        stem = os.path.join(work_dir, name.replace(" ", "-").replace("=", ""))
        log = stem + ".jsonl"
        if os.path.exists(log):
            os.remove(log)
        _, seconds, rss = _run([sys.executable, "-m", "fflm", "train", train, "--valid", valid, "-o", stem + ".npz",
                                "--quiet", "--json-log", log] + base + flags)
        with open(log, encoding="utf-8") as f:
            epochs_ = [json.loads(line) for line in f]
        train_s = sum(e["seconds"] for e in epochs_)
        tokens = sum(e["tokens_per_s"] * e["seconds"] for e in epochs_ if e["tokens_per_s"])
        row = {"run": name, "flags": " ".join(flags), "wall_seconds": round(seconds, 1),
               "tokens_per_s": round(sum(e["tokens_per_s"] for e in epochs_) / len(epochs_), 1),
               "valid_ppl": epochs_[-1]["valid_ppl"], "epochs": epochs_, "peak_rss_mb": round(rss),
               "train_seconds": round(train_s, 1), "tokens": round(tokens)}
        if "ray" in epochs_[-1]:
            row["per_step"] = epochs_[-1]["ray"]
        rows.append(row)
    ref = rows[0]
    for r in rows:
        r["speed_ratio"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 3)
        r["ppl_vs_one_process"] = round(r["valid_ppl"] / ref["valid_ppl"] - 1, 4)
    from .presets import PRESETS

    batch = PRESETS[corpus].get("batch_size", 256) if config == "preset" else SPEED_CONFIGS[config]["batch_size"]
    for i, a in enumerate(extra):  # a --batch-size given after -- wins
        if a == "--batch-size" and i + 1 < len(extra):
            batch = int(extra[i + 1])
    return {"benchmark": "ray", "corpus": corpus, "config": config, "machine": machine(), "batch_size": batch,
            "command": "fflm train TRAIN --valid VALID -o MODEL " + " ".join(base) + " [flags of the run]",
            "workers": workers, "threads": threads, "runs": rows}


def format_ray_bench(result):
    lines = [f"ray {result['corpus']} ({result['config']}): {result['command']}",
             "run            tokens/s  ratio  valid ppl   vs 1  step ms  compute  merge  MB out/step  MB in/step"]
    for r in result["runs"]:
        s = r.get("per_step", {})
        lines.append(f"{r['run']:<13} {r['tokens_per_s']:9,.0f}  {r['speed_ratio']:5.3f}  {r['valid_ppl']:9.2f}  "
                     f"{100 * r['ppl_vs_one_process']:+5.2f}%  {s.get('step_ms', float('nan')):7.2f}  "
                     f"{s.get('compute_ms', float('nan')):7.2f}  {s.get('merge_ms', float('nan')):5.2f}  "
                     f"{s.get('bytes_out_per_step', 0) / 1e6:11.2f}  {s.get('bytes_in_per_step', 0) / 1e6:10.2f}")
    return "\n".join(lines)
