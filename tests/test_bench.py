"""`fflm bench recipe`: trains and evaluates in fresh processes and reports what they measured."""

import json
import os

import pytest
from conftest import shared_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTH = os.path.join(ROOT, "data", "synth")
TINY = ["--", "--embed-dim", "8", "--hidden", "16,8", "--epochs", "2", "--batch-size", "64"]


@pytest.fixture
def fake_data(tmp_path):
    """A data folder whose brown/ holds the embedded corpus, so the recipe runs in seconds."""
    brown = tmp_path / "data" / "brown"
    brown.mkdir(parents=True)
    for part in ("train", "valid", "test"):
        with open(os.path.join(SYNTH, f"{part}.txt"), "rb") as f:
            (brown / f"{part}.txt").write_bytes(f.read())
    return tmp_path / "data"


def test_recipe_reports_the_curve_and_the_test_rows(run_cli, fake_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("bench", "recipe", "brown", "--data", fake_data, "--threads", "1", "--json", *TINY)
    assert code == 0, err
    r = json.loads(out)
    assert r["command"].startswith("fflm train TRAIN --valid VALID -o MODEL --preset brown --embed-dim 8")
    assert r["command"].endswith("--epochs 2 --batch-size 64 --threads 1")  # extra options win: they come last
    assert [e["epoch"] for e in r["epochs"]] == [1, 2]
    rows = {m["name"]: m for m in r["report"]["models"]}
    assert set(rows) == {"fflm", "kn5", "interpolated"}
    assert 0 <= rows["interpolated"]["lambda"] <= 1
    assert r["train_seconds"] > 0 and r["train_peak_rss_mb"] > 0
    # the model the benchmark trained is the one it evaluated: same test perplexity in-process
    from fflm import FFNNLM, read_sentences
    from fflm.evaluate import perplexity, score_neural

    model, meta = FFNNLM.load(tmp_path / "out" / "bench" / "brown.npz")
    assert meta["training"]["preset"] == "brown" and model.config.tied and model.config.order == 6
    test = model.windows(read_sentences(fake_data / "brown" / "test.txt"))
    assert perplexity(score_neural(model, test).log10) == pytest.approx(rows["fflm"]["ppl"], rel=1e-6)


def test_recipe_failures_are_one_line(run_cli, fake_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("bench", "recipe", "brown", "--data", fake_data, "--", "--hidden", "-5")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "fflm train" in err
    code, _, err = run_cli("bench", "recipe", "brown", "--data", tmp_path / "nowhere")
    assert code == 1 and "not found" in err


def test_speed_benchmark_reports_every_figure(run_cli):
    data = shared_path("brown", "train.txt").parent.parent
    code, out, err = run_cli("bench", "--config", "small", "--seconds", "1", "--no-torch", "--threads", "1",
                             "--data", data, "--json")
    assert code == 0, err
    r = json.loads(out)
    for key in ("config", "gemm_gflops", "train_tokens_per_s", "train_gflops", "gemm_fraction",
                "score_tokens_per_s", "generate_ms_per_token", "peak_rss_mb", "compile_seconds"):
        assert isinstance(r[key], (int, float, str)) and r[key], key
    assert r["config"] == "small" and r["model"]["hidden"] == [256] and r["threads"] == 1
    # the achieved rate is the measured tokens/s times the model's FLOPs per token
    from fflm.bench import train_flops_per_token
    from fflm.model import ModelConfig

    flops = train_flops_per_token(ModelConfig(order=5, embed_dim=64, hidden=(256,)), r["model"]["vocabulary"])
    assert r["train_gflops"] == pytest.approx(r["train_tokens_per_s"] * flops / 1e9)
    assert r["gemm_fraction"] == pytest.approx(r["train_gflops"] / r["gemm_gflops"])
    assert "torch_tokens_per_s" not in r


def test_speed_benchmark_in_bf16_times_both_precisions_against_the_bf16_limit(run_cli):
    # bf16 runs on every machine: on AMX tiles where present, emulated elsewhere (slowly)
    data = shared_path("brown", "train.txt").parent.parent
    code, out, err = run_cli("bench", "--config", "small", "--seconds", "1", "--no-torch", "--threads", "1",
                             "--data", data, "--precision", "bf16", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["precision"] == "bf16" and r["machine"]["cpu_model"]
    assert r["bf16_vs_fp32"] == pytest.approx(r["train_tokens_per_s"] / r["fp32_train_tokens_per_s"])
    assert r["bf16_score_vs_fp32"] == pytest.approx(r["score_tokens_per_s"] / r["fp32_score_tokens_per_s"])
    assert r["gemm_fraction"] == pytest.approx(r["train_gflops"] / r["bf16_gemm_gflops"])  # the bf16 limit
    code, out, err = run_cli("bench", "--config", "small", "--seconds", "1", "--no-torch", "--threads", "1",
                             "--data", data, "--precision", "bf16")
    assert code == 0 and "bf16/fp32 = " in out and "% of bf16 GEMM" in out, err


def test_speed_benchmark_at_the_presets_sizes_has_no_pytorch_peer(run_cli):
    data = shared_path("brown", "train.txt").parent.parent
    code, out, err = run_cli("bench", "--config", "preset", "--seconds", "1", "--threads", "1", "--data", data, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["model"]["tied"] and r["model"]["hidden"] == [1024, 256] and r["model"]["dropout"] == [0.1, 0.3]
    assert r["train_tokens_per_s"] > 0 and "torch_tokens_per_s" not in r  # PyTorch's peer is untied


def test_flops_per_token_count_every_product():
    from fflm.bench import score_flops_per_token, train_flops_per_token
    from fflm.model import ModelConfig

    c = ModelConfig(order=3, embed_dim=2, hidden=(5, 7))  # context 4 -> 5 -> 7 -> V
    assert train_flops_per_token(c, 10) == 6 * (7 * 10 + 4 * 5 + 5 * 7)
    assert score_flops_per_token(c, 10) == 2 * (7 * 10 + 4 * 5 + 5 * 7)
    d = ModelConfig(order=3, embed_dim=2, hidden=(5,), direct=True)  # the output reads [h, e]
    assert train_flops_per_token(d, 10) == 6 * ((5 + 4) * 10 + 4 * 5)


def test_recipe_with_seeds_trains_each_and_mixes_them(run_cli, fake_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("bench", "recipe", "brown", "--data", fake_data, "--threads", "1", "--seeds", "2",
                             "--json", *TINY)
    assert code == 0, err
    r = json.loads(out)
    assert [s["seed"] for s in r["seeds"]] == [1, 2] and all(len(s["epochs"]) == 2 for s in r["seeds"])
    assert r["train_seconds"] == pytest.approx(sum(s["train_seconds"] for s in r["seeds"]))
    rows = {m["name"]: m for m in r["report"]["models"]}
    assert list(rows) == ["fflm", "fflm2", "kn5", "ensemble", "interpolated", "mixture"]
    assert rows["fflm2"]["model"] == r["seeds"][1]["model"] and rows["fflm"]["ppl"] != rows["fflm2"]["ppl"]
    from fflm import FFNNLM

    assert [FFNNLM.load(s["model"])[1]["training"]["config"]["seed"] for s in r["seeds"]] == [1, 2]
    from fflm.bench import format_recipe

    text = format_recipe(r)
    assert "seed 2: 2 epochs" in text and f"({r['seeds'][1]['model']})" in text
    weights = rows["mixture"]["weights"]
    assert f"(fflm {weights['fflm']:.3f}, fflm2 {weights['fflm2']:.3f}, kn5 {weights['kn5']:.3f})" in text
    code, _, err = run_cli("bench", "recipe", "brown", "--data", fake_data, "--seeds", "2", "--", "--seed", "4")
    assert code == 1 and "leave --seed out" in err


def test_softmax_benchmark_reports_both_layers_on_every_case(run_cli):
    data = shared_path("brown", "raw", "train.txt").parent.parent.parent
    code, out, err = run_cli("bench", "softmax", "--config", "small", "--vocabs", "3000", "--seconds", "0.5",
                             "--no-torch", "--threads", "1", "--data", data, "--precision", "bf16", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["precision"] == "bf16"
    for c in r["cases"]:  # each layer in bf16 too, against itself in fp32
        for layer in ("full", "adaptive"):
            for what in ("train", "score"):
                assert c[f"bf16_{layer}_{what}_vs_fp32"] == pytest.approx(
                    c[f"bf16_{layer}_{what}_tokens_per_s"] / c[f"{layer}_{what}_tokens_per_s"])
    assert [c["case"] for c in r["cases"]] == ["brown-raw", "synth-3k"]
    raw, syn = r["cases"]
    assert raw["vocabulary"] == 24540 and syn["vocabulary"] == 3003  # every word of the process, and the specials
    for c in r["cases"]:
        assert c["cutoffs"] and c["train_ratio"] == pytest.approx(c["adaptive_train_tokens_per_s"]
                                                                  / c["full_train_tokens_per_s"])
        assert c["score_ratio"] == pytest.approx(c["adaptive_score_tokens_per_s"] / c["full_score_tokens_per_s"])
        assert "torch_adaptive_train_tokens_per_s" not in c
    from fflm.bench import format_softmax

    assert "synth-3k" in format_softmax(r) and "in bf16" in format_softmax(r)


def test_softmax_benchmark_times_each_head_share_in_the_same_run(run_cli):
    data = shared_path("brown", "raw", "train.txt").parent.parent.parent
    code, out, err = run_cli("bench", "softmax", "--config", "small", "--vocabs", "", "--seconds", "0.5",
                             "--no-torch", "--threads", "1", "--data", data, "--head-shares", "0.85,0.75", "--json")
    assert code == 0, err
    (raw,) = json.loads(out)["cases"]
    from fflm import Vocabulary, read_sentences
    from fflm.bench import format_softmax
    from fflm.output import auto_cutoffs

    counts = Vocabulary.build(read_sentences(shared_path("brown", "raw", "train.txt")), min_count=2).counts
    for share in ("0.85", "0.75"):
        assert raw[f"adaptive@{share}_cutoffs"] == list(auto_cutoffs(counts, head_share=float(share)))
        assert raw[f"train_ratio@{share}"] == pytest.approx(raw[f"adaptive@{share}_train_tokens_per_s"]
                                                           / raw["full_train_tokens_per_s"])
    assert raw["adaptive@0.75_cutoffs"][0] < raw["adaptive@0.85_cutoffs"][0]  # the smaller head
    text = format_softmax({"config": "small", "threads": 1, "cases": [raw]})
    assert "brown-raw 0.75" in text and "brown-raw 0.85" in text
    code, _, err = run_cli("bench", "softmax", "--vocabs", "", "--data", data, "--head-shares", "0.85,1.5")
    assert code == 1 and "--head-shares" in err and "Traceback" not in err


def test_bench_corpus_measures_prepare_training_and_evaluation(run_cli, tmp_path):
    code, out, err = run_cli("bench", "corpus", "--tokens", "20000,40000", "--vocab", "300", "--steps", "5",
                             "--work", tmp_path / "w", "--data", tmp_path / "none", "--threads", "1", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert [c["tokens"] for c in r["corpora"]] == [20000, 40000] and "real" not in r
    for c in r["corpora"]:
        assert c["prepare"]["tokens_per_s"] > 0 and c["prepare"]["dtype"] == "uint16"
        assert c["train_prepared"]["peak_rss_mb"] > 0 and c["train_text"]["tokens_per_s"] > 0
        assert c["eval"]["tokens"] > 0.09 * c["tokens"] and c["score"]["peak_rss_mb"] > 0
        assert 0 < c["start_seconds"] < c["one_step_run_seconds"]
    assert r["corpora"][0]["eval"]["ppl"] > 1


def test_budget_benchmark_trains_as_a_user_and_scores_beside_kn5(run_cli, tmp_path):
    """`fflm bench budget`: the budgeted run in its own process, its held-out sentences written
    for the interpolation's tuning, the test rows of fflm, KN5 and their mixture."""
    import math

    train, test = os.path.join(SYNTH, "train.txt"), os.path.join(SYNTH, "test.txt")
    code, out, err = run_cli("bench", "budget", train, test, "--budget", "10s", "--threads", "1", "--work-dir",
                             tmp_path, "--name", "s", "--json", "--", "--embed-dim", "8", "--hidden", "16")
    assert code == 0, err
    r = json.loads(out)
    assert r["budget_seconds"] == 10 and math.isclose(r["over_budget"], r["train_seconds"] / 10 - 1, abs_tol=0.01)
    names = [m["name"] for m in r["report"]["models"]]
    assert names == ["fflm", "kn5", "interpolated"] and r["plan"]["held_out"]["sentences"] > 0
    held = (tmp_path / "s-heldout.txt").read_text().splitlines()
    trained = (tmp_path / "s-trained.txt").read_text().splitlines()
    corpus = [" ".join(line.split()) for line in open(train, encoding="utf-8") if line.split()]
    assert len(held) == r["plan"]["held_out"]["sentences"] and sorted(held + trained) == sorted(corpus)
    assert r["baseline_train"] == str(tmp_path / "s-trained.txt")  # KN5 never saw the tuning sentences
    assert r["report"]["models"][2]["lambda"] > 0
    assert r["command"].endswith("--embed-dim 8 --hidden 16") and "--budget 10s" in r["command"]
    code, _, err = run_cli("bench", "budget", train, os.path.join(SYNTH, "missing.txt"), "--budget", "10s")
    assert code == 1 and "missing.txt: not found" in err


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_profile_times_each_product_and_kernel_and_takes_its_timers_off(run_cli, precision):
    from fflm import bf16
    from fflm.model import FFNNLM
    from fflm.output import AdaptiveSoftmax

    originals = FFNNLM._dot, AdaptiveSoftmax._mm, bf16.Matmul._pack, bf16.gemm_avx512
    data = shared_path("brown", "train.txt").parent.parent
    code, out, err = run_cli("bench", "profile", "--config", "small", "--steps", "3", "--threads", "1",
                             "--data", data, "--precision", precision, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["precision"] == precision and r["steps"] == 3 and r["vocabulary"] > 10_000
    parts, inside = r["parts_ms"], r["inside_products_ms"]
    for role in ("U", "dU", "dh", "W0", "dW0", "dx0"):  # every product of a one-layer model, by its role
        assert parts[f"product {role}"] > 0, role
    assert parts["softmax_xent_fused"] > 0 and parts["embedding_forward"] > 0
    assert r["rest_ms"] == pytest.approx(r["profiled_step_ms"] - sum(parts.values()))
    if precision == "fp32":
        assert not inside and "sgd_update" in parts  # numpy's products have no parts of their own
    else:
        engine = bf16.best_engine()
        assert inside[f"gemm_{'emulated' if engine == 'emulated' else engine}"] > 0
        assert any(k.startswith("pack dh.") for k in inside)
        assert ("sgd_update_kept" in parts) == (engine != "emulated")  # the kept copies, where products read them
    assert (FFNNLM._dot, AdaptiveSoftmax._mm, bf16.Matmul._pack, bf16.gemm_avx512) == originals  # timers off


def test_profile_of_the_adaptive_softmax_and_timers_off_after_an_error(run_cli):
    from fflm import kernels as K
    from fflm.benchprofile import _Timers, _timed_parts
    from fflm.model import FFNNLM

    data = shared_path("brown", "train.txt").parent.parent
    code, out, err = run_cli("bench", "profile", "--config", "small", "--softmax", "adaptive", "--steps", "2",
                             "--threads", "1", "--data", data)
    assert code == 0, err
    assert "product adaptive.head" in out and "the rest" in out
    before = FFNNLM._dot, K.softmax_xent_fused
    with pytest.raises(RuntimeError):
        with _timed_parts(_Timers()):
            assert FFNNLM._dot is not before[0] and K.softmax_xent_fused is not before[1]
            raise RuntimeError("a step failed")
    assert (FFNNLM._dot, K.softmax_xent_fused) == before
