"""`fflm train --ray` from the command line: a local Ray started for the run, and a cluster of
two nodes (`ray start --head`, then a second `ray start --address`) on this machine's loopback,
one worker on each node. Its own module: `ray stop` ends every Ray on the machine, and
tests/test_distributed.py's local Ray must be gone by then."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import SYNTH
from fflm.model import FFNNLM

BIN = os.path.dirname(sys.executable)
# a test cluster on loopback needs no tokens; every process of it must agree on that
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}


def fflm(*args, **kw):
    return subprocess.run([os.path.join(BIN, "fflm"), *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=300, **kw)


def train_args(out):
    return ("train", SYNTH / "train.txt", "--valid", SYNTH / "valid.txt", "-o", out, "--epochs", "2",
            "--hidden", "32", "--embed-dim", "16", "--threads", "1", "--json-log", f"{out}.jsonl")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_starts_a_local_cluster_for_the_run_and_matches_one_process(tmp_path):
    alone = fflm(*train_args(tmp_path / "a.npz"), "--batch-size", "64")
    ray_run = fflm(*train_args(tmp_path / "r.npz"), "--batch-size", "64", "--ray", "--workers", "1")
    assert alone.returncode == 0 and ray_run.returncode == 0, ray_run.stderr
    assert "ray: 1 worker(s) of 1 thread(s) on 1 node(s), gradients averaged every step" in ray_run.stderr
    a, _ = FFNNLM.load(tmp_path / "a.npz")
    r, meta = FFNNLM.load(tmp_path / "r.npz")
    assert np.array_equal(a.dense, r.dense) and np.array_equal(a.E, r.E)  # one worker: the same model
    rows = [json.loads(line) for line in open(f"{tmp_path / 'r.npz'}.jsonl")]
    assert [row["ray"]["steps"] for row in rows] == [-(-81957 // 64)] * 2  # every batch of each epoch
    assert all(row["ray"]["compute_ms"] > 0 for row in rows)


@pytest.fixture
def two_nodes():
    ray = shutil.which("ray", path=ENV["PATH"])
    port = free_port()
    common = ("--num-cpus", "1", "--disable-usage-stats", "--node-ip-address", "127.0.0.1")
    subprocess.run([ray, "stop", "--force"], capture_output=True, env=ENV, timeout=60)
    try:
        head = subprocess.run([ray, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common],
                              capture_output=True, text=True, env=ENV, timeout=120)
        assert head.returncode == 0, head.stderr
        second = subprocess.run([ray, "start", "--address", f"127.0.0.1:{port}", *common],
                                capture_output=True, text=True, env=ENV, timeout=120)
        assert second.returncode == 0, second.stderr
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=ENV, timeout=60)


def test_training_on_a_cluster_of_two_nodes(tmp_path, two_nodes):
    out = tmp_path / "c.npz"
    done = fflm(*train_args(out), "--ray", two_nodes, "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert "ray: 2 worker(s) of 1 thread(s) on 2 node(s)" in done.stderr  # one worker a node
    model, meta = FFNNLM.load(out)
    assert meta["training"]["ray"] == {"workers": 2, "sync_every": 1, "threads": 1}
    history = meta["training"]["history"]
    assert len(history) == 2 and history[1]["valid_ppl"] < history[0]["valid_ppl"]
    assert history[0]["ray"]["bytes_out_per_step"] > 0 and history[0]["ray"]["bytes_in_per_step"] > 0
    # more workers than the two nodes' two CPUs: refused in one line, nothing written
    refused = fflm(*train_args(tmp_path / "d.npz"), "--ray", two_nodes, "--workers", "3", "-q")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "the Ray cluster has 2" in refused.stderr
    assert not (tmp_path / "d.npz").exists()
    # the data steps on the same cluster: the same folder, the same ARPA file
    for ray_args, name in (((), "plain"), (("--ray", two_nodes), "ray")):
        prep = fflm("prepare", SYNTH / "train.txt", "-o", tmp_path / f"p-{name}", "-q", *ray_args)
        arpa = fflm("ngram", "train", SYNTH / "train.txt", "-o", tmp_path / f"{name}.arpa", "--order", "4", "-q",
                    *ray_args)
        assert prep.returncode == 0 and arpa.returncode == 0, prep.stderr + arpa.stderr
    for f in ("ids.bin", "vocab.json", "prepared.json"):
        assert (tmp_path / "p-ray" / f).read_bytes() == (tmp_path / "p-plain" / f).read_bytes()
    assert (tmp_path / "ray.arpa").read_bytes() == (tmp_path / "plain.arpa").read_bytes()


def test_an_unreachable_cluster_is_one_line(tmp_path):
    done = fflm(*train_args(tmp_path / "m.npz"), "--ray", f"127.0.0.1:{free_port()}", "--workers", "1", "-q")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "cannot reach the Ray cluster" in done.stderr
