"""`fflm bench ngram-build`: building a Kneser-Ney model, fflm beside KenLM's lmplz, same text.

Each build runs as its own process; its wall time and peak resident memory come from the
kernel (wait4's rusage), so both tools are measured the same way. fflm runs in memory and
with `--memory` at each budget; lmplz (when found) with `-S` at the same budgets and `-T` in
the same temporary folder. Text containing <unk>, <s> or </s> is refused by lmplz unless
`--skip_symbols`; give text without them.
"""

import os
import shutil
import subprocess
import sys
import time

from .bench import machine


def _measure(cmd, stdin=None, stdout=None):
    """(seconds, peak RSS in MB, exit status, stderr tail) of one process."""
    start = time.perf_counter()
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as fin, \
            open(stdout, "wb") if stdout else open(os.devnull, "wb") as fout:
        proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=subprocess.PIPE)
        err = b""
        # read stderr while it runs (a full pipe would stall it), then reap it with its rusage
        for chunk in iter(lambda: proc.stderr.read(65536), b""):
            err = (err + chunk)[-4000:]
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    return seconds, usage.ru_maxrss / 1024, proc.returncode, err.decode(errors="replace").strip().splitlines()[-1:]


def find_lmplz(path=None):
    for candidate in (path, shutil.which("lmplz")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def run_build_bench(texts, order=5, budgets=("200M", "2G"), lmplz=None, temp_dir=None, repeat=1,
                    work_dir="out/bench/ngram-build", in_memory=True):
    """Build KN `order` of each text with fflm (in memory, then --memory at each budget) and
    lmplz -S at each budget, `repeat` times each (the fastest kept); returns JSON-ready figures."""
    os.makedirs(work_dir, exist_ok=True)
    temp_dir = temp_dir or work_dir
    lmplz = find_lmplz(lmplz)
    fflm = [sys.executable, "-m", "fflm"]
    result = {"benchmark": "ngram-build", "machine": machine(), "order": order, "lmplz": lmplz, "texts": []}
    for text in texts:
        words = 0
        with open(text, "rb") as f:
            for line in f:
                words += len(line.split())
        row = {"text": text, "words": words, "runs": []}
        runs = []
        if in_memory:
            runs.append(("fflm", "in memory", fflm + ["ngram", "train", text, "-o", os.path.join(work_dir, "mem.arpa"),
                                                     "--order", str(order), "-q"], None, None))
        for budget in budgets:
            runs.append(("fflm", budget, fflm + ["ngram", "train", text, "-o", os.path.join(work_dir, "disk.arpa"),
                                                 "--order", str(order), "-q", "--memory", budget, "-T", temp_dir],
                         None, None))
            if lmplz:
                runs.append(("lmplz", budget, [lmplz, "-o", str(order), "-S", budget, "-T", temp_dir + "/"],
                             text, os.path.join(work_dir, "lmplz.arpa")))
        for tool, budget, cmd, stdin, stdout in runs:
            best = None
            for _ in range(repeat):
                seconds, peak, code, err = _measure(cmd, stdin, stdout)
                if code != 0:
                    best = {"error": " ".join(err) or f"exit status {code}"}
                    break
                if best is None or seconds < best["seconds"]:
                    best = {"seconds": round(seconds, 3), "peak_mb": round(peak, 1)}
            row["runs"].append({"tool": tool, "memory": budget, "command": " ".join(cmd), **best})
        result["texts"].append(row)
    return result


def format_build_bench(result):
    m = result["machine"]
    lines = [f"KN{result['order']} build, fflm and lmplz ({m['cpu_model']}, {m['cpus']} cpus)"]
    for row in result["texts"]:
        lines.append(f"{row['text']}: {row['words']:,} words")
        lmplz = {r["memory"]: r for r in row["runs"] if r["tool"] == "lmplz" and "seconds" in r}
        for r in row["runs"]:
            if "error" in r:
                lines.append(f"  {r['tool']:5} {r['memory']:>9}: error: {r['error']}")
                continue
            ratio = ""
            if r["tool"] == "fflm" and r["memory"] in lmplz:
                k = lmplz[r["memory"]]
                ratio = f"  ({r['seconds'] / k['seconds']:.2f}x lmplz's time, {r['peak_mb'] / k['peak_mb']:.2f}x memory)"
            lines.append(f"  {r['tool']:5} {r['memory']:>9}: {r['seconds']:7.2f} s  {r['peak_mb']:8.0f} MB{ratio}")
    return "\n".join(lines)
