"""Kneser-Ney within a memory budget (fflm/ngram_disk.py): the in-memory model, file for file."""

import filecmp
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, SYNTH, shared_path
from fflm import FflmError
from fflm.ngram import NGramLM, _header, save_binary, write_binary
from fflm.ngram_disk import DiskEstimate, minimum_memory, parse_size
from fflm.prepared import PreparedCorpus, prepare, training_data


def _in_memory(folder, order, tmp_path):
    vocab, windows, config = training_data(folder, None, order=order, in_memory=True)
    lm = NGramLM.estimate(windows, vocab, order)
    lm.meta = {"corpus": "x"}
    arpa, binary = tmp_path / f"mem{order}.arpa", tmp_path / f"mem{order}.bin"
    lm.save_arpa(arpa)
    save_binary(lm, binary)
    return lm, arpa, binary


def _on_disk(folder, order, tmp_path, **kw):
    corpus = PreparedCorpus(folder)
    vocab = corpus.vocabulary()
    temp = tmp_path / "temp"
    temp.mkdir(exist_ok=True)
    arpa, binary = tmp_path / f"disk{order}.arpa", tmp_path / f"disk{order}.bin"
    with DiskEstimate(corpus.ids, vocab, order, kw.pop("memory", 64 << 20), temp, lookup=corpus.lookup(vocab),
                      whole_process=False, **kw) as est:
        est.run()
        est.write_arpa(arpa, _header("kn", order, est.discounts, None, {"corpus": "x"}))
        write_binary(binary, est.vocab, order, "kn", est.discounts, None, {"corpus": "x"}, est.arrays(),
                     est.hash_arrays())
        stats = (est.runs_spilled, est.merge_rounds, est.sizes)
    assert os.listdir(temp) == []  # every temporary is gone
    return stats, arpa, binary


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth") / "prepared"
    prepare(SYNTH / "train.txt", folder)
    return folder


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_spilled_runs_give_the_in_memory_files_byte_for_byte(synth_folder, tmp_path, order):
    lm, arpa, binary = _in_memory(synth_folder, order, tmp_path)
    # blocks of 4096 tokens and merges of two runs at a time: many runs, several merge rounds
    (runs, rounds, sizes), arpa2, binary2 = _on_disk(synth_folder, order, tmp_path, block_tokens=4096, fan_in=2)
    assert sizes == lm.sizes
    if order > 1:
        assert runs >= 4 * (order - 1) and rounds >= 2
    assert filecmp.cmp(arpa, arpa2, shallow=False)
    assert filecmp.cmp(binary, binary2, shallow=False)


def test_brown_kn5_within_a_tiny_budget_equals_the_in_memory_model(tmp_path):
    folder = tmp_path / "brown"
    prepare(shared_path("brown", "valid.txt"), folder)
    lm, arpa, binary = _in_memory(folder, 5, tmp_path)
    V = len(lm.vocab)
    (runs, rounds, sizes), arpa2, binary2 = _on_disk(folder, 5, tmp_path, memory=minimum_memory(V, 5))
    assert runs > 4 * 4  # the budget alone forced the spills
    assert filecmp.cmp(arpa, arpa2, shallow=False)
    assert filecmp.cmp(binary, binary2, shallow=False)


def test_the_budget_is_read_and_checked_before_any_work(synth_folder, tmp_path):
    assert parse_size("4G") == 4 << 30 and parse_size("200M") == 200 << 20 and parse_size("512") == 512
    assert 0 < parse_size("50%") < parse_size("100%")
    for bad in ("lots", "4Q", "0%", "120%"):
        with pytest.raises(FflmError, match="--memory"):
            parse_size(bad)
    corpus = PreparedCorpus(synth_folder)
    vocab = corpus.vocabulary()
    temp = tmp_path / "temp"
    temp.mkdir()
    with pytest.raises(FflmError, match="too small to make progress"):
        DiskEstimate(corpus.ids, vocab, 3, minimum_memory(len(vocab), 3) - 1, temp, whole_process=False)
    with pytest.raises(FflmError, match="fflm itself takes .* give at least"):  # the process counts
        DiskEstimate(corpus.ids, vocab, 3, minimum_memory(len(vocab), 3) + (1 << 20), temp)
    assert os.listdir(temp) == []


def test_the_command_line_with_memory_equals_the_one_without(run_cli, tmp_path):
    text = SYNTH / "train.txt"
    code, _, err = run_cli("ngram", "train", text, "-o", tmp_path / "mem.arpa", "--order", 4, "-q")
    assert code == 0, err
    temp = tmp_path / "temp"
    temp.mkdir()
    # its own process: the budget counts the whole process (~160 MB before any array)
    done = _cli("ngram", "train", text, "-o", tmp_path / "disk.arpa", "--order", 4, "--memory", "250M",
                "--temp-dir", temp, "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["runs"] >= 3 and summary["memory"] == 250 << 20 and summary["profile"]["write"] > 0
    assert filecmp.cmp(tmp_path / "mem.arpa", tmp_path / "disk.arpa", shallow=False)
    assert os.listdir(temp) == []
    # a prepared folder read in place: the same file again
    prepare(text, tmp_path / "prepared")
    done = _cli("ngram", "train", tmp_path / "prepared", "-o", tmp_path / "prep.arpa", "--order", 4,
                "-S", "250M", "-T", temp, "-q")
    assert done.returncode == 0, done.stderr
    mem, prep = ((tmp_path / n).read_text().split("\n", 1) for n in ("mem.arpa", "prep.arpa"))
    assert prep[1] == mem[1] and "prepared" in prep[0]  # the header names the folder
    # what --memory does not do is one line
    for args, message in ((("--smoothing", "add-k"), "Kneser-Ney"), (("--ray",), "--ray"),
                          (("--memory", "1M"), "too small to make progress"), (("--memory", "many"), "--memory"),
                          (("-T", tmp_path / "nowhere"), "no such folder")):
        code, _, err = run_cli("ngram", "train", text, "-o", tmp_path / "bad.arpa", "-S", "250M", *args)
        assert code == 1 and message in err and _one_error(err), err
        assert not (tmp_path / "bad.arpa").exists()
    assert os.listdir(temp) == []


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from fflm.cli import main
main(sys.argv[2:])
"""


def _one_error(stderr):
    """One line of error (warnings about the small corpus aside), no traceback."""
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("fflm: warning:")]
    return len(lines) == 1 and lines[0].startswith("fflm: error:")


def _cli(*args, limit=None, **kw):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if limit is None:
        return subprocess.run([sys.executable, "-m", "fflm", *map(str, args)], capture_output=True, text=True,
                              env=env, **kw)
    return subprocess.run([sys.executable, "-c", FULL_DISK, str(limit), *map(str, args)], capture_output=True,
                          text=True, env=env, **kw)


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    out = tmp_path / "kn.arpa"
    out.write_text("the old model\n")
    prepare(SYNTH / "train.txt", tmp_path / "prepared")
    # every file may grow to 200 kB: the spilled runs of the 70k tokens do not fit; nor, from
    # text, the corpus prepared into the temporary folder
    for corpus in (tmp_path / "prepared", SYNTH / "train.txt"):
        done = _cli("ngram", "train", corpus, "-o", out, "--order", 5, "-S", "250M", "-T", temp, "-q",
                    limit=200_000)
        assert done.returncode == 1, done.stderr
        assert "no space left" in done.stderr.lower() and _one_error(done.stderr), done.stderr
        assert os.listdir(temp) == []
        assert out.read_text() == "the old model\n"
        assert sorted(os.listdir(tmp_path)) == ["kn.arpa", "prepared", "temp"]  # no half-written output either


def test_a_full_disk_while_writing_the_model_keeps_the_old_one(tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    out = tmp_path / "kn.arpa"
    out.write_text("the old model\n")
    # the runs (under 2 MB) fit, the ARPA file (over 4 MB) does not
    done = _cli("ngram", "train", SYNTH / "train.txt", "-o", out, "--order", 5, "-S", "250M", "-T", temp, "-q",
                limit=2_500_000)
    assert done.returncode == 1, done.stderr
    assert "kn.arpa: cannot write: no space left" in done.stderr.lower() and _one_error(done.stderr), done.stderr
    assert os.listdir(temp) == []
    assert out.read_text() == "the old model\n"
    assert sorted(os.listdir(tmp_path)) == ["kn.arpa", "temp"]  # no half-written output either


def test_a_size_limited_temporary_folder(tmp_path):
    temp = tmp_path / "small"
    temp.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(temp)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the RLIMIT_FSIZE tests cover the fault")
    try:
        done = _cli("ngram", "train", SYNTH / "train.txt", "-o", tmp_path / "kn.arpa", "--order", 5, "-S", "250M",
                    "-T", temp, "-q")
        assert done.returncode == 1 and "no space left" in done.stderr.lower() and _one_error(done.stderr), done.stderr
        assert os.listdir(temp) == []
        assert not (tmp_path / "kn.arpa").exists()
    finally:
        subprocess.run(["umount", str(temp)], capture_output=True)


def test_ctrl_c_leaves_no_temporaries(tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    big = tmp_path / "big.txt"
    text = (SYNTH / "train.txt").read_text()
    big.write_text(text * 20)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "fflm", "ngram", "train", str(big), "-o", str(tmp_path / "kn.arpa"),
                             "--order", "5", "-S", "200M", "-T", str(temp), "-q"], stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not any(n.startswith("fflm-ngram.") and os.listdir(temp / n)
                                              for n in os.listdir(temp)):
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err, err
    assert os.listdir(temp) == []
    assert not (tmp_path / "kn.arpa").exists()


def test_the_build_benchmark_measures_both_tools_the_same_way(tmp_path):
    from fflm.benchbuild import format_build_bench, run_build_bench

    fake = tmp_path / "lmplz"  # stands in for KenLM's: reads the text, writes a line
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho '\\data\\'\n")
    fake.chmod(0o755)
    result = run_build_bench([str(SYNTH / "train.txt")], order=3, budgets=("250M",), lmplz=str(fake),
                             work_dir=str(tmp_path / "bench"))
    runs = result["texts"][0]["runs"]
    assert [(r["tool"], r["memory"]) for r in runs] == [("fflm", "in memory"), ("fflm", "250M"), ("lmplz", "250M")]
    assert all(r["seconds"] > 0 and r["peak_mb"] > 1 for r in runs), runs
    assert runs[1]["peak_mb"] > 50  # fflm's own process was measured, not the benchmark's
    assert filecmp.cmp(tmp_path / "bench" / "mem.arpa", tmp_path / "bench" / "disk.arpa", shallow=False)
    assert "x lmplz's time" in format_build_bench(result)
    assert result["texts"][0]["words"] == sum(len(line.split()) for line in open(SYNTH / "train.txt"))


def test_the_radix_sort_is_numpys_stable_argsort():
    from fflm.ngram_disk import radix_order

    rng = np.random.default_rng(3)
    for keys in (rng.integers(0, 50, 10_000), rng.integers(0, 1 << 45, 10_000), np.zeros(7, dtype=np.int64),
                 np.array([5], dtype=np.int64), np.empty(0, dtype=np.int64),
                 np.array([1 << 62, 3, 1 << 62, 0], dtype=np.int64)):
        keys = keys.astype(np.int64)
        order, ranked = radix_order(keys)
        assert np.array_equal(order, np.argsort(keys, kind="stable"))
        assert np.array_equal(ranked, np.sort(keys))


@pytest.mark.parametrize("prune", [(0, 1), (0, 0, 1), (0, 1, 2)])
def test_pruning_on_disk_equals_pruning_in_memory_and_still_sums_to_one(synth_folder, tmp_path, prune):
    vocab, windows, _ = training_data(synth_folder, None, order=4, in_memory=True)
    lm = NGramLM.estimate(windows, vocab, 4, prune=prune)
    full = NGramLM.estimate(windows, vocab, 4)
    assert all(p <= f for p, f in zip(lm.sizes, full.sizes)) and lm.sizes[-1] < full.sizes[-1]
    assert lm.sizes[0] == full.sizes[0]  # unigrams stay
    for context in (["<s>"], [vocab.words[5]], [vocab.words[5], vocab.words[7], vocab.words[9]]):
        assert abs((10 ** lm.distribution(context)).sum() - 1) < 1e-9
    lm.meta = {"corpus": "x"}
    lm.save_arpa(tmp_path / "mem.arpa")
    (_, _, sizes), arpa, _ = _on_disk(synth_folder, 4, tmp_path, block_tokens=4096, fan_in=2, prune=prune)
    assert sizes == lm.sizes
    assert filecmp.cmp(tmp_path / "mem.arpa", arpa, shallow=False)


def test_prune_from_the_command_line(run_cli, tmp_path):
    text = SYNTH / "train.txt"
    code, out, err = run_cli("ngram", "train", text, "-o", tmp_path / "mem.arpa", "--order", 3, "--prune", "0,0,1",
                             "--json")
    assert code == 0, err
    assert json.loads(out)["prune"] == [0, 0, 1]
    done = _cli("ngram", "train", text, "-o", tmp_path / "disk.arpa", "--order", 3, "--prune", "0 0 1", "-S", "250M",
                "-T", tmp_path, "-q")
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "mem.arpa", tmp_path / "disk.arpa", shallow=False)
    assert '"prune": [0, 0, 1]' in (tmp_path / "mem.arpa").read_text().splitlines()[0]
    for bad, message in (("1,1", "first threshold must be 0"), ("0,2,1", "must not decrease"),
                         ("0,0,0,1", "4 thresholds"), ("0,x", "counts separated")):
        code, _, err = run_cli("ngram", "train", text, "-o", tmp_path / "bad.arpa", "--order", 3, "--prune", bad)
        assert code == 1 and message in err and _one_error(err), err
    code, _, err = run_cli("ngram", "train", text, "-o", tmp_path / "bad.arpa", "--prune", "0,1", "--smoothing",
                           "add-k")
    assert code == 1 and "Kneser-Ney" in err


@pytest.mark.parametrize("prune", [None, (0, 1)])
def test_a_limited_vocabulary_on_disk_equals_in_memory_and_sums_to_one(synth_folder, tmp_path, prune):
    vocab, windows, _ = training_data(synth_folder, None, order=3, in_memory=True)
    limit = vocab.words[3:60] + ["not-in-the-corpus"]
    lm = NGramLM.estimate(windows, vocab, 3, prune=prune, limit_vocab=limit)
    assert lm.vocab.words == vocab.words[:60]  # the words kept, in their order, and the specials
    assert lm.sizes[0] == 60 and all(k.max() < 60 ** (n + 1) for n, k in enumerate(lm.keys))
    for context in (["<s>"], [vocab.words[5]], [vocab.words[5], vocab.words[7]], [vocab.words[100]]):
        assert abs((10 ** lm.distribution(context)).sum() - 1) < 1e-9  # words outside score as <unk>
    lm.meta = {"corpus": "x"}
    lm.save_arpa(tmp_path / "mem.arpa")
    save_binary(lm, tmp_path / "mem.bin")
    (_, _, sizes), arpa, binary = _on_disk(synth_folder, 3, tmp_path, block_tokens=4096, fan_in=2, prune=prune,
                                           limit_vocab=limit)
    assert sizes == lm.sizes
    assert filecmp.cmp(tmp_path / "mem.arpa", arpa, shallow=False)
    assert filecmp.cmp(tmp_path / "mem.bin", binary, shallow=False)


def test_limit_vocab_from_the_command_line(run_cli, tmp_path):
    text = SYNTH / "train.txt"
    words = (tmp_path / "words.txt")
    words.write_text(" ".join(open(text).read().split()[:400]) + "\n")
    code, out, err = run_cli("ngram", "train", text, "-o", tmp_path / "mem.arpa", "--order", 3, "--limit-vocab",
                             words, "--prune", "0,1", "--json")
    assert code == 0, err
    kept = len(set(words.read_text().split()))
    assert json.loads(out)["vocabulary"] == kept + 3
    done = _cli("ngram", "train", text, "-o", tmp_path / "disk.arpa", "--order", 3, "--limit-vocab", words,
                "--prune", "0,1", "-S", "250M", "-T", tmp_path, "-q")
    assert done.returncode == 0, done.stderr
    assert filecmp.cmp(tmp_path / "mem.arpa", tmp_path / "disk.arpa", shallow=False)
    (tmp_path / "empty.txt").write_text("\n")
    for bad, message in ((tmp_path / "empty.txt", "lists no words"), (tmp_path / "missing.txt", "no such file")):
        code, _, err = run_cli("ngram", "train", text, "-o", tmp_path / "bad.arpa", "--limit-vocab", bad)
        assert code == 1 and message in err and _one_error(err), err
