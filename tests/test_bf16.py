"""Mixed precision (fflm/bf16.py): the bfloat16 rounding, the packed operand layouts, the AMX
product where the CPU has it and the emulation everywhere, and a model trained in bf16 against
the same model in fp32."""

import numpy as np
import pytest

from fflm import FflmError, Vocabulary, Windows, amx, avx512, bf16
from fflm.model import FFNNLM, ModelConfig, Workspace
from fflm.train import TrainConfig, evaluate_ppl, train

# the emulation and AMX's kernel on software tiles everywhere, each hardware engine where this CPU has it
ENGINES = (["emulated", "amx_sim"] + (["amx"] if bf16.amx_available() else [])
           + (["avx512"] if bf16.avx512_bf16_available() else []))
KEEPING = [e for e in ENGINES if e != "emulated"]  # the engines whose products read the kept copies


def reference_round(x):
    """bfloat16 rounding written the slow way: the nearer of the two bfloat16 neighbours (the
    value with its low 16 bits cleared, and the next one up in magnitude), ties to the one
    whose last bit is 0."""
    out = []
    for v in np.asarray(x, dtype=np.float32).ravel():
        if np.isnan(v):
            out.append(np.nan)
            continue
        bits = int(np.float32(v).view(np.uint32))
        lo = np.uint32(bits & 0xFFFF0000).view(np.float32)
        hi = np.uint32((bits & 0xFFFF0000) + 0x10000).view(np.float32) if (bits & 0xFFFF) else lo
        dlo, dhi = abs(float(v) - float(lo)), abs(float(hi) - float(v))
        out.append(lo if dlo < dhi or (dlo == dhi and not (bits >> 16) & 1) else hi)
    return np.array(out, dtype=np.float32)


def rounded(x):
    """x through pack_rows and back: its bfloat16 values as float32."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(1, -1)
    out = np.empty((1, x.shape[1]), dtype=np.uint16)
    bf16.pack_rows(x.view(np.uint32), out)
    return bf16.unpack_rows(out).ravel()


def bits(*u):
    return np.array(u, dtype=np.uint32).view(np.float32)


def test_rounding_is_to_nearest_even_and_keeps_nan_and_infinity():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(3000) * 10.0 ** rng.integers(-30, 30, 3000)).astype(np.float32)
    ties = bits(0x3F808000, 0x3F818000, 0xBF808000)  # low 16 bits exactly half-way
    x = np.concatenate([x, np.float32([0.0, -0.0, 1.0, np.inf, -np.inf, np.nan, 3.3e38, 1e-40]), ties])
    got, want = rounded(x), reference_round(x)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(got[~np.isnan(want)], want[~np.isnan(want)])
    assert list(rounded(ties)) == [1.0, 1.015625, -1.0]  # even neighbours: down, up, down
    assert np.isnan(rounded(bits(0x7F800001))[0])  # a NaN whose rounding would carry into infinity


@pytest.mark.parametrize("M, K", [(1, 1), (5, 7), (32, 32), (33, 70), (64, 130)])
def test_packed_layouts_hold_the_rounded_matrix_and_zero_padding(M, K):
    a = np.random.default_rng(1).standard_normal((M, K)).astype(np.float32)
    want = rounded(a).reshape(M, K)
    A = np.empty((bf16.padded(M), bf16.padded(K)), dtype=np.uint16)
    bf16.pack_rows(a.view(np.uint32), A)
    At = np.empty_like(A)
    bf16.pack_rows_t(np.ascontiguousarray(a.T).view(np.uint32), At)
    assert np.array_equal(A, At)
    full = bf16.unpack_rows(A)
    assert np.array_equal(full[:M, :K], want) and not full[M:].any() and not full[:, K:].any()
    # as a B operand (M, K) in panels of 16 columns, from a and from aᵀ
    P = np.empty((bf16.padded(K) // 16, bf16.padded(M) // 2, 16, 2), dtype=np.uint16)
    bf16.pack_panels(a.view(np.uint32), P)
    Pt = np.empty_like(P)
    bf16.pack_panels_t(np.ascontiguousarray(a.T).view(np.uint32), Pt)
    assert np.array_equal(P, Pt)
    full = bf16.unpack_panels(P)
    assert np.array_equal(full[:M, :K], want) and not full[M:].any() and not full[:, K:].any()
    # as rows of pairs (the AVX-512 kernel's B), written over garbage: the padding must be zeroed
    Q = np.full((bf16.padded(M) // 2, -(-K // 64) * 64), 0xFFFFFFFF, dtype=np.uint32)
    bf16.pack_pairs(a.view(np.uint32), Q)
    full = bf16.unpack_pairs(Q, Q.shape[1])
    assert np.array_equal(full[:M, :K], want) and not full[M:].any() and not full[:, K:].any()


@pytest.mark.parametrize("engine", ENGINES)
# (7, 1030, 40) and (3, 64, 5): a product with b transposed and a small output (dh = dz·Uᵀ's
# shape) runs on the AVX-512 engine as outᵀ = b·op(a)ᵀ
@pytest.mark.parametrize("M, K, N", [(1, 1, 1), (5, 7, 9), (32, 32, 32), (33, 70, 45), (256, 300, 1000),
                                     (7, 1030, 40), (3, 64, 5)])
def test_products_equal_the_float64_product_of_the_rounded_operands(engine, M, K, N):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((M, K)).astype(np.float32)
    b = rng.standard_normal((K, N)).astype(np.float32)
    want = rounded(a).reshape(M, K).astype(np.float64) @ rounded(b).reshape(K, N).astype(np.float64)
    mm = bf16.Matmul(engine)
    tol = 1e-6 * np.sqrt(K) * np.abs(want).max() + 1e-7  # float32 sums of K exact products
    for a_t, b_t in ((False, False), (True, False), (False, True), (True, True)):
        out = np.full((M, N), np.nan, dtype=np.float32)
        mm.dot(np.ascontiguousarray(a.T) if a_t else a, np.ascontiguousarray(b.T) if b_t else b, out, a_t, b_t)
        assert np.abs(out - want).max() <= tol, (a_t, b_t)
    out = np.empty((M, N), dtype=np.float32)
    mm.dot(np.ascontiguousarray(a.T).T, b, out)  # a transposed view is read in place, not copied
    assert np.abs(out - want).max() <= tol


@pytest.mark.parametrize("software", [True] + ([False] if bf16.amx_available() else []))
def test_amx_kernel_equals_the_emulation(software):
    """AMX's kernel (on the tiles where the CPU has them, on software tiles everywhere) against
    numpy on the same operands: B as panels and as rows of pairs, C plain and transposed, in one
    pass over k and in several that add to C, with threads taking A's row blocks (more rows
    than columns) or B's column blocks, and blocks past C's edges (45 rows, 70 columns)."""
    rng = np.random.default_rng(3)
    if not software:  # the model's shapes, on the hardware
        a = rng.standard_normal((256, 512)).astype(np.float32)
        b = rng.standard_normal((512, 2085)).astype(np.float32)
        fast, plain = np.empty((256, 2085), np.float32), np.empty((256, 2085), np.float32)
        bf16.Matmul("amx").dot(a, b, fast)
        bf16.Matmul("emulated").dot(a, b, plain)
        assert np.allclose(fast, plain, rtol=0, atol=1e-4 * np.abs(plain).max())
    for M, N in ((45, 70), (70, 45)):
        A = np.zeros((bf16.padded(M), 512), np.uint16)
        bf16.pack_rows(rng.standard_normal((M, 500)).astype(np.float32).view(np.uint32), A)
        P = np.zeros((bf16.padded(N) // 16, 256, 16, 2), np.uint16)
        bf16.pack_panels(rng.standard_normal((500, N)).astype(np.float32).view(np.uint32), P)
        Q = np.zeros((256, bf16.padded(N)), np.uint32)
        bf16.pack_pairs(np.ascontiguousarray(bf16.unpack_panels(P)[:500, :N]).view(np.uint32), Q)
        plain = np.empty((M, N), np.float32)
        bf16.gemm_emulated(A, P, plain)
        for B in (P, Q):
            for kc in (amx.KC, 64):  # one pass, 8
                got = np.full((M, N), np.nan, np.float32)
                amx.gemm_amx(A, B, got, kc=kc, software=software)
                assert np.allclose(got, plain, rtol=0, atol=1e-4 * np.abs(plain).max()), (M, N, B.dtype, kc)
                flipped = np.full((N, M), np.nan, np.float32)
                amx.gemm_amx(A, B, flipped, kc=kc, transposed=True, software=software)
                assert np.array_equal(flipped, got.T)
        with pytest.raises(ValueError, match="do not fit"):
            amx.gemm_amx(A[:32], P, plain, software=software)  # the last row block would read past A
        with pytest.raises(ValueError, match="do not fit"):
            amx.gemm_amx(A, Q[:, :32], plain, software=software)  # the last column block would read past B


_AMX_COMPILE = """
import re
from fflm import amx
import numpy as np
args = (None, np.zeros((64, 64), np.uint16), np.zeros(32 * 64, np.uint32), 16, 4, np.zeros((40, 40), np.float32),
        amx._CFG, 0, 64, False, False, True)
sig = tuple(amx._gemm_amx_pass.typeof_pyval(a) for a in args)
amx._gemm_amx_pass.compile(sig)
asm = amx._gemm_amx_pass.overloads[sig].library.get_asm_str()
ops = ("ldtilecfg", "tilezero", "tileloadd", "tdpbf16ps", "tilestored", "tilerelease")
print(*[len(re.findall(r"\\b" + op + r"\\b", asm)) for op in ops], int("_soft_" in asm))
"""


def test_amx_kernel_compiles_to_tile_instructions_for_sapphire_rapids(tmp_path):
    """The hardware side of the tile operations (what amx_sim does not run), compiled on any
    machine for an AMX CPU (not run): every operation becomes its instruction and none of the
    software bodies is left in."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_CPU_NAME="sapphirerapids",
               NUMBA_CPU_FEATURES="+amx-tile,+amx-bf16,+avx512f,+avx512bf16,+avx2,+fma,+sse4.2")
    out = subprocess.run([sys.executable, "-c", _AMX_COMPILE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    *counts, soft = map(int, out.stdout.split())
    assert all(n > 0 for n in counts) and soft == 0, out.stdout


_AMX_BOUNDS = """
from fflm import bf16
import numpy as np
rng = np.random.default_rng(0)
mm = bf16.Matmul("amx_sim")
for M, K, N in ((1, 1, 1), (33, 70, 45), (70, 45, 33), (7, 1030, 40), (40, 130, 300)):
    a, b = rng.standard_normal((M, K)).astype(np.float32), rng.standard_normal((K, N)).astype(np.float32)
    for a_t, b_t in ((False, False), (True, False), (False, True), (True, True)):
        out = np.empty((M, N), np.float32)
        mm.dot(np.ascontiguousarray(a.T) if a_t else a, np.ascontiguousarray(b.T) if b_t else b, out, a_t, b_t)
print("ok")
"""


def test_amx_kernel_reads_and_writes_only_inside_its_operands(tmp_path):
    """The tiles read whole 32 x 32 blocks, past the matrices' edges into their padding: the
    software tiles, which address memory as the hardware's do, run under Numba's bounds checks
    (an access past an operand raises) on every layout and edge the model's products meet."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", _AMX_BOUNDS], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.skipif(not bf16.avx512_bf16_available(), reason="this CPU has no AVX512-BF16 (the emulation is tested above)")
def test_avx512_product_equals_the_emulation():
    """vdpbf16ps sums pairs, the emulation single products: equal to float32 rounding, on the
    model's shapes, at edges (rows and columns not multiples of the blocks) and in passes of k."""
    rng = np.random.default_rng(4)
    for M, K, N in ((256, 512, 2085), (45, 70, 70), (7, 1030, 130), (512, 256, 64), (256, 2085, 64)):
        a = rng.standard_normal((M, K)).astype(np.float32)
        b = rng.standard_normal((K, N)).astype(np.float32)
        for a_t, b_t in ((False, False), (True, False), (False, True), (True, True)):  # every layout
            fast, plain = np.full((M, N), np.nan, np.float32), np.empty((M, N), np.float32)
            x, y = np.ascontiguousarray(a.T) if a_t else a, np.ascontiguousarray(b.T) if b_t else b
            bf16.Matmul("avx512").dot(x, y, fast, a_t, b_t)
            bf16.Matmul("emulated").dot(x, y, plain, a_t, b_t)
            assert np.allclose(fast, plain, rtol=0, atol=2e-6 * np.sqrt(K) * np.abs(plain).max()), (M, K, N, a_t, b_t)
    A = np.zeros((64, 1056), np.uint16)
    bf16.pack_rows(rng.standard_normal((45, 1030)).astype(np.float32).view(np.uint32), A)
    P = np.zeros((bf16.padded(70) // 16 + avx512.NR, 528, 16, 2), np.uint16)
    bf16.pack_panels(rng.standard_normal((1030, 70)).astype(np.float32).view(np.uint32), P)
    one, passes, plain = (np.empty((45, 70), np.float32) for _ in range(3))
    avx512.gemm_avx512(A, P, one)
    avx512.gemm_avx512(A, P, passes, kc=64)  # 17 passes, the last a short one
    bf16.gemm_emulated(A, P, plain)
    for got in (one, passes):
        assert np.allclose(got, plain, rtol=0, atol=1e-4 * np.abs(plain).max())
    # B as rows of pairs: the same sums, in the same order, in one pass and in 17
    Q = np.zeros((528, 128), np.uint32)
    bf16.pack_pairs(np.ascontiguousarray(bf16.unpack_panels(P)[:1030, :70]).view(np.uint32), Q)
    for kc in (avx512.KC_AVX, 64):
        rows = np.empty((45, 70), np.float32)
        avx512.gemm_avx512(A, Q, rows, kc=kc)
        assert np.array_equal(rows, one if kc == avx512.KC_AVX else passes)
        for B in (Q, P):  # C written transposed
            flipped = np.full((70, 45), np.nan, np.float32)
            avx512.gemm_avx512(A, B, flipped, kc=kc, transposed=True)
            assert np.array_equal(flipped, rows.T)
    with pytest.raises(ValueError, match="do not fit"):
        avx512.gemm_avx512(A[:40], P, one)  # the last row block would read past A
    with pytest.raises(ValueError, match="do not fit"):
        avx512.gemm_avx512(A, Q[:, :64], rows)  # the second strip of columns would read past Q


def test_precision_choice(monkeypatch):
    assert bf16.resolve_precision("fp32") == "fp32" and bf16.resolve_precision("bf16") == "bf16"
    assert bf16.resolve_precision("auto") == ("bf16" if bf16.best_engine() != "emulated" else "fp32")
    with pytest.raises(FflmError, match="--precision"):
        bf16.resolve_precision("fp16")
    assert amx.tile_config()[0] == 1  # palette 1
    # each kind of CPU, as its flags would say: the engine, what auto picks, what info says
    for has_amx, has_avx, engine, auto in ((True, True, "amx", "bf16"), (False, True, "avx512", "bf16"),
                                           (False, False, "emulated", "fp32")):
        monkeypatch.setattr(bf16, "amx_available", lambda has=has_amx: has)
        monkeypatch.setattr(bf16, "avx512_bf16_available", lambda has=has_avx: has)
        assert bf16.best_engine() == engine and bf16.resolve_precision("auto") == auto
        assert bf16.ENGINE_NAMES[engine] in bf16.describe_precision("bf16")
        assert ("auto keeps fp32" in bf16.describe_precision("fp32")) == (engine == "emulated")


@pytest.fixture(scope="module")
def data(synth_sentences):
    train_s = synth_sentences["train"][:1500]
    vocab = Vocabulary.build(train_s)
    W = lambda s: Windows.from_sentences(s, vocab, 4)  # noqa: E731
    return vocab, W(train_s), W(synth_sentences["valid"][:300])


CONFIGS = {
    "untied": ModelConfig(order=4, embed_dim=16, hidden=(40, 24)),
    "tied": ModelConfig(order=4, embed_dim=24, hidden=(40, 24), tied=True),
    "direct": ModelConfig(order=4, embed_dim=16, hidden=(40,), direct=True),
    # the adaptive softmax's own products (head, projections, clusters) run in bf16 too
    "adaptive": ModelConfig(order=4, embed_dim=16, hidden=(40,), softmax="adaptive", cutoffs=(40, 100)),
    "adaptive_tied": ModelConfig(order=4, embed_dim=16, hidden=(40, 16), softmax="adaptive", cutoffs=(40, 100),
                                 tied=True),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", CONFIGS)
def test_bf16_gradients_match_fp32_to_bf16_tolerance(data, name, engine):
    vocab, tw, _ = data
    x, y = (np.ascontiguousarray(a[:70]) for a in tw.pairs())
    grads = {}
    for precision in ("fp32", "bf16"):
        model = FFNNLM(vocab, CONFIGS[name], seed=3)
        model.set_precision(precision)
        if precision == "bf16":
            model._mm.engine = engine
        ws = Workspace(model, 70)
        model.dE[...] = 0
        loss = model.loss_and_grad(x, y, ws)
        grads[precision] = (loss, model.grad.copy(), model.dE.copy())
        if precision == "bf16" and CONFIGS[name].softmax == "adaptive":  # its products ran in bf16
            assert any(role.startswith("adaptive.") for role in model._mm._buffers)
    (l32, g32, e32), (l16, g16, e16) = grads["fp32"], grads["bf16"]
    assert l16 == pytest.approx(l32, rel=1e-2) and l16 != l32  # close, and really another arithmetic
    for a, b in ((g16, g32), (e16, e32)):
        assert np.linalg.norm(a - b) <= 2e-2 * np.linalg.norm(b)  # bfloat16 keeps 8 bits: ~0.4% a value


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", ["tied", "adaptive", "adaptive_tied"])
def test_bf16_scoring_is_normalised_and_close_to_fp32(data, engine, name):
    vocab, _, vw = data
    model = FFNNLM(vocab, CONFIGS[name], seed=4)
    nll32 = model.nll(*vw.pairs(), batch_size=100)
    p32 = model.probs(vw.pairs()[0][:20])
    model.set_precision("bf16")
    model._mm.engine = engine
    nll16 = model.nll(*vw.pairs(), batch_size=100)
    p16 = model.probs(vw.pairs()[0][:20])
    assert np.allclose(p16.sum(axis=1), 1.0, atol=1e-6)  # still an exact distribution, of other logits
    assert np.abs(nll16 - nll32).max() < 0.05 and not np.array_equal(nll16, nll32)
    assert np.abs(p16 - p32).max() < 1e-2


def test_frozen_weights_are_packed_again_once_they_change(data):
    vocab, _, vw = data
    model = FFNNLM(vocab, CONFIGS["untied"], seed=5)
    model.set_precision("bf16")
    before = model.nll(*vw.pairs(), batch_size=64)
    model.U_all *= 0.5
    model.W[0] *= 2.0
    after = model.nll(*vw.pairs(), batch_size=64)
    fresh = FFNNLM(vocab, CONFIGS["untied"], seed=5)
    fresh.U_all *= 0.5
    fresh.W[0] *= 2.0
    fresh.set_precision("bf16")
    assert not np.allclose(before, after)
    assert np.array_equal(after, fresh.nll(*vw.pairs(), batch_size=64))


@pytest.mark.parametrize("name", ["untied", "adaptive"])
def test_a_small_model_trained_in_bf16_is_within_1_percent_of_fp32(data, name):
    vocab, tw, vw = data
    ppl = {}
    for precision in ("fp32", "bf16"):
        model = FFNNLM(vocab, CONFIGS[name], seed=6)
        model.set_precision(precision)
        train(model, tw, vw, TrainConfig(epochs=3, batch_size=64, lr=0.5, seed=6))
        model.set_precision("fp32")  # both scored alike, with the exact float32 arithmetic
        ppl[precision] = evaluate_ppl(model, vw)
    assert ppl["bf16"] == pytest.approx(ppl["fp32"], rel=0.01)


def test_bf16_needs_a_float32_model(data):
    vocab, _, _ = data
    with pytest.raises(FflmError, match="float32"):
        FFNNLM(vocab, CONFIGS["untied"], dtype=np.float64).set_precision("bf16")


def test_every_command_takes_precision_and_info_says_what_auto_picks(run_cli, tmp_path):
    import json
    import os

    synth = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "synth")
    train_txt, valid_txt = os.path.join(synth, "train.txt"), os.path.join(synth, "valid.txt")
    model = tmp_path / "m.npz"
    code, _, err = run_cli("train", train_txt, "--valid", valid_txt, "-o", model, "--embed-dim", "8", "--hidden", "16",
                           "--epochs", "1", "--precision", "bf16", "--threads", "1")
    assert code == 0, err
    assert "precision: bf16 operands, float32 sums" in err
    settings = json.loads(run_cli("info", model, "--json")[1])
    assert settings["training"]["config"]["precision"] == "bf16"
    assert settings["precision_auto"] == bf16.resolve_precision("auto")
    assert "--precision auto here:" in run_cli("info", model)[1]
    reports = {}
    for p in ("fp32", "bf16"):
        code, out, err = run_cli("eval", model, valid_txt, "--baseline", "none", "--precision", p, "--json")
        assert code == 0, err
        reports[p] = json.loads(out)["models"][0]["ppl"]
    assert reports["bf16"] == pytest.approx(reports["fp32"], rel=0.01)
    code, out, err = run_cli("score", model, valid_txt, "--summary-only", "--precision", "bf16")
    assert code == 0 and "Perplexity including OOVs" in out, err
    gen = [run_cli("generate", model, "--precision", "bf16", "--seed", "4", "--num-samples", "3")[1] for _ in range(2)]
    assert gen[0] == gen[1] and gen[0].strip()  # seeded sampling stays deterministic in bf16
    code, _, err = run_cli("eval", model, valid_txt, "--precision", "fp8")
    assert code != 0 and "fp8" in err and "Traceback" not in err


@pytest.mark.parametrize("H", [6, 7])
def test_sgd_update_kept_equals_the_update_then_the_packs(H):
    """U's bfloat16 copies written in the SGD pass are the packs of the updated U, bit for bit,
    and U itself is kernels.sgd_update's; an odd last row pairs with zeros; padding untouched."""
    from fflm import kernels as K

    rng = np.random.default_rng(7)
    U = rng.standard_normal((H, 70)).astype(np.float32)
    dU = rng.standard_normal((H, 70)).astype(np.float32)
    mm = bf16.Matmul("emulated")  # the shapes and packs only; no product runs
    want_U = U.copy()
    K.sgd_update(want_U.reshape(-1), dU.reshape(-1), 0.1, 1e-3)
    want_Q, want_R = mm._pack(want_U, "pairs", "q").copy(), mm._pack(want_U, "rows", "r").copy()
    Q, R = np.zeros_like(want_Q), np.zeros_like(want_R)
    bf16.sgd_update_kept(U, dU, 0.1, 1e-3, Q, R)
    assert np.array_equal(U, want_U) and np.array_equal(Q, want_Q) and np.array_equal(R, want_R)


KEPT_CONFIGS = {  # and how many weight matrices each keeps copies of
    "one_layer": (ModelConfig(order=3, embed_dim=8, hidden=(16,)), 2),
    "two_layers_direct": (ModelConfig(order=3, embed_dim=8, hidden=(16, 12), direct=True), 3),
    "tied": (ModelConfig(order=3, embed_dim=8, hidden=(16, 8), tied=True), 2),  # U is E's rows: the W's only
    "adaptive": (ModelConfig(order=3, embed_dim=8, hidden=(16,), softmax="adaptive", cutoffs=(12, 25)), 6),
    "adaptive_tied": (ModelConfig(order=3, embed_dim=8, hidden=(16, 8), softmax="adaptive", cutoffs=(12, 25),
                                  tied=True), 5),
}


@pytest.mark.parametrize("engine", KEEPING)
@pytest.mark.parametrize("name", KEPT_CONFIGS)
def test_kept_copies_train_as_packing_every_step_does(engine, name):
    """Plain SGD in bf16 keeps each weight matrix's copies current as it updates it (hidden
    layers, the output layer, the adaptive layer's head, projections and clusters): the same
    weights as packing them every step, also across a rollback that writes the weights and
    says so; without the word (weights_changed), the stale copies would give other weights."""
    vocab = Vocabulary([f"w{i}" for i in range(40)])
    rng = np.random.default_rng(8)
    ids = np.concatenate([[Vocabulary.BOS_ID] * 2, rng.integers(3, len(vocab), 400)]).astype(np.int32)
    windows = Windows(ids, 3)
    config, n_kept = KEPT_CONFIGS[name]

    def run(keep, tell=True):
        from fflm.train import SGD

        m = FFNNLM(vocab, config, seed=1)
        m.set_precision("bf16")
        m._mm.engine = engine
        if not keep:
            m.kept_copies = lambda: None
        sgd = SGD(m, 32)
        batches = [np.arange(i, i + 32) for i in range(0, 320, 32)]
        for ix in batches[:4]:
            sgd.step(ix, windows, 0.5, 1e-4, 0.0)
        saved = m.dense.copy(), m.E.copy()
        for ix in batches[4:7]:
            sgd.step(ix, windows, 0.5, 1e-4, 0.0)
        m.dense[...], m.E[...] = saved  # a rollback
        if tell:
            m.weights_changed()
        for ix in batches[7:]:
            sgd.step(ix, windows, 0.5, 1e-4, 0.0)
        assert len(m._mm._kept) == (2 * n_kept if keep else 0)  # two copies of each matrix
        return m.dense.copy()

    plain = run(keep=False)
    assert np.array_equal(run(keep=True), plain)
    assert not np.array_equal(run(keep=True, tell=False), plain)
    # asking for the precision in use keeps the copies (bin/bench asks before every step);
    # fp32's steps do not keep them, so a switch forgets them
    m = FFNNLM(vocab, ModelConfig(order=3, embed_dim=8, hidden=(16,)), seed=1)
    m.set_precision("bf16")
    m._mm.engine = engine
    assert m.kept_copies() is not None and m._mm._kept_current
    m.set_precision("bf16")
    assert m._mm._kept_current
    m.set_precision("fp32")
    assert not m._bf16._kept_current
    # a model with no weight matrix in dense (a tied bigram model: U is E's rows) keeps none
    bigram = FFNNLM(vocab, ModelConfig(order=2, embed_dim=8, hidden=(), tied=True), seed=1)
    bigram.set_precision("bf16")
    bigram._mm.engine = engine
    assert bigram.n_weights == 0 and bigram.kept_copies() is None
    # after training, a caller may write the weights (as test_frozen_weights... does): the copies go
    train(m, windows, None, TrainConfig(epochs=1, batch_size=32, lr=0.5, precision="bf16"))
    assert m.precision == "bf16" and not m._mm._kept_current
