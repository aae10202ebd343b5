"""The scaling model (fflm/scaling.py): built on a `fflm bench ray` result, its predictions
behave as the arithmetic says they must, and the command writes its table, JSON and plot."""

import json

import pytest

from fflm.scaling import half_efficiency, inputs, predict, step_seconds, stops_paying

# the shape of `fflm bench ray --json`, with round figures
RESULT = {
    "batch_size": 256, "workers": 2, "threads": 2,
    "runs": [
        {"run": "one process", "tokens_per_s": 2560.0},
        {"run": "ray K=1", "tokens_per_s": 2000.0,
         "per_step": {"workers": 2, "sync_every": 1, "step_ms": 130.0, "compute_ms": 100.0, "merge_ms": 10.0,
                      "bytes_out_per_step": 30_000_000, "bytes_in_per_step": 30_000_000}},
        {"run": "ray K=8", "tokens_per_s": 2400.0,
         "per_step": {"workers": 2, "sync_every": 8, "step_ms": 105.0, "compute_ms": 101.0, "merge_ms": 1.25,
                      "bytes_out_per_step": 3_750_000, "bytes_in_per_step": 3_750_000}},
    ],
}


def test_the_inputs_are_the_measured_figures():
    got = inputs(RESULT)
    assert got["step_s"] == pytest.approx(0.1) and got["batch"] == 256
    assert got["runs"][1]["overhead_s"] == pytest.approx(0.02) and got["runs"][8]["bytes"] == 30_000_000


def test_one_node_is_the_node_alone_and_more_nodes_cost_what_the_model_says():
    got = inputs(RESULT)
    assert step_seconds(got, 1, 1, 2, 10) == pytest.approx(0.1)
    # 2 nodes at 10 Gb/s, all-gather: step + overhead + merge + 30 MB / 1.25 GB/s + latency
    assert step_seconds(got, 1, 2, 2, 10) == pytest.approx(0.1 + 0.02 + 0.01 + 0.024 + 50e-6)
    # local SGD: the merge and the network once every K steps
    assert step_seconds(got, 8, 2, 2, 10) == pytest.approx(0.1 + 0.00275 + (0.00125 + 0.024 + 50e-6) / 8)


def test_predictions_move_the_way_they_must():
    rows = {(r["sync_every"], r["cores"], r["gbps"], r["nodes"]): r for r in predict(RESULT)}
    for (K, c, g, n), r in rows.items():
        if n == 1:
            assert r["speedup"] == 1.0
        if g == 10:  # a faster network is never slower
            assert rows[(K, c, 100, n)]["tokens_per_s"] >= r["tokens_per_s"]
        if K == 1 and n > 1:  # averaging less often is never slower
            assert rows[(8, c, g, n)]["tokens_per_s"] >= r["tokens_per_s"]
        assert r["speedup"] <= n  # never better than linear
    ring = {(r["sync_every"], r["cores"], r["gbps"], r["nodes"]): r for r in predict(RESULT, network="ring")}
    assert ring[(1, 2, 10, 64)]["tokens_per_s"] > rows[(1, 2, 10, 64)]["tokens_per_s"]  # ring: no (N-1) term


def test_where_adding_nodes_stops_paying():
    rows = predict(RESULT, nodes=(1, 2, 4, 8, 16, 32, 64))
    most, half = stops_paying(rows), half_efficiency(rows)
    # 16-core nodes on 10 Gb/s averaging 30 MB a step: the network costs more than a node's whole step
    assert most[(1, 16, 10)] == 1 and half[(1, 16, 10)] == 2
    assert half[(8, 2, 100)] is None or half[(8, 2, 100)] > half[(1, 2, 100)]


def test_the_command_writes_its_table_json_and_plot(run_cli, tmp_path):
    path = tmp_path / "ray.json"
    path.write_text(json.dumps(RESULT))
    code, out, _ = run_cli("bench", "scaling", path, "--json", "--plot", tmp_path / "s.png", "--nodes", "1,8")
    assert code == 0 and (tmp_path / "s.png").stat().st_size > 1000
    report = json.loads(out)
    assert len(report["rows"]) == 2 * 2 * 2 * 2  # K x cores x Gb/s x nodes
    code, _, err = run_cli("bench", "scaling", tmp_path / "s.png")
    assert code == 1 and err.count("\n") == 1 and "not the JSON of `fflm bench ray`" in err
