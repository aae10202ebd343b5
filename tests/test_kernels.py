"""Every kernel pair against float64 central differences, plus the course's worked examples."""

import math

import numpy as np
import pytest

from fflm import kernels as K
from fflm.model import FFNNLM, ModelConfig, Workspace
from fflm.vocab import Vocabulary

RNG = np.random.default_rng(0)
EPS = 1e-6


def numeric_grad(f, x):
    """Central differences of the scalar f() with respect to every entry of x (changed in place)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + EPS
        up = f()
        flat[i] = old - EPS
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * EPS)
    return g


def assert_close(analytic, numeric):
    assert np.allclose(analytic, numeric, rtol=1e-5, atol=1e-7), np.abs(analytic - numeric).max()


# --- the course's worked examples ------------------------------------------------------------
def test_chain_rule_worked_example():
    """d = 2b, e = a + d, L = c * e at a=3, b=1, c=-2: the computation graph from the course."""
    a, b, c = 3.0, 1.0, -2.0
    d = 2 * b
    e = a + d
    L = c * e
    dL_de = c  # L = c e
    dL_dc = e
    dL_da = dL_de * 1.0  # e = a + d
    dL_dd = dL_de * 1.0
    dL_db = dL_dd * 2.0  # d = 2b
    assert (L, dL_da, dL_db, dL_dc) == (-10.0, -2.0, -4.0, 5.0)
    f = lambda a, b, c: c * (a + 2 * b)  # noqa: E731
    for got, i in ((dL_da, 0), (dL_db, 1), (dL_dc, 2)):
        args = [a, b, c]
        up, down = list(args), list(args)
        up[i] += EPS
        down[i] -= EPS
        assert got == pytest.approx((f(*up) - f(*down)) / (2 * EPS), abs=1e-6)


def test_softmax_worked_example():
    z = np.array([[0.6, 1.1, -1.5, 1.2, 3.2, -1.1]])
    p = np.empty_like(z)
    K.softmax_forward(z, -1, p)
    assert np.allclose(p, [[0.055, 0.090, 0.0067, 0.10, 0.74, 0.010]], atol=6e-3, rtol=0)
    assert p.sum() == pytest.approx(1.0)


# --- kernel pairs ----------------------------------------------------------------------------
def test_embedding_pair():
    V, m, B, c = 7, 3, 5, 4
    E = RNG.standard_normal((V, m))
    x = RNG.integers(0, V, size=(B, c)).astype(np.int32)
    x[0, 0] = x[1, 2] = 3  # a word twice in a batch: both contributions must arrive
    G = RNG.standard_normal((B, c * m))  # L = sum(G * out)
    out = np.empty((B, c * m))

    def loss():
        K.embedding_forward(E, x, out)
        return float((G * out).sum())

    loss()
    assert np.array_equal(out.reshape(B, c, m), E[x])
    dE = np.zeros_like(E)
    K.embedding_backward(G, x, dE)
    assert_close(dE, numeric_grad(loss, E))
    rows = np.empty(B * c, dtype=np.int64)
    mark = np.zeros(V, dtype=np.int8)
    n = K.touched_rows(x, mark, rows)
    assert sorted(rows[:n].tolist()) == sorted(set(x.ravel().tolist())) and not mark.any()
    untouched = np.setdiff1d(np.arange(V), x)
    assert (dE[untouched] == 0).all()


def test_fofe_pair():
    V, m, B, L = 7, 3, 5, 6
    E = RNG.standard_normal((V, m))
    x = RNG.integers(2, V, size=(B, L)).astype(np.int32)
    x[0, :3] = Vocabulary.BOS_ID  # a sentence start: the bag stops at the nearest <s>, which it includes
    x[1, 4] = Vocabulary.BOS_ID
    x[2, 1] = x[2, 5] = 4  # a word twice in one history
    weights = np.array([0.7 ** np.arange(L), 0.3 ** np.arange(L)])
    weights[1, 5] = 0.0  # a factor whose bag is shorter than the window reads
    G = RNG.standard_normal((B, 2 * m))
    out = np.empty((B, 2 * m))

    def loss():
        K.fofe_forward(E, x, weights, Vocabulary.BOS_ID, out)
        return float((G * out).sum())

    loss()
    for b in range(B):  # the definition: z_t = alpha z_{t-1} + E[w_t] from the history's start
        start = max([i for i in range(L) if x[b, i] == Vocabulary.BOS_ID], default=0)
        for f, (alpha, length) in enumerate(((0.7, 6), (0.3, 5))):  # the second reads 5 words back
            z = np.zeros(m)
            for i in range(max(start, L - length), L):
                z = alpha * z + E[x[b, i]]
            assert np.allclose(out[b, f * m : (f + 1) * m], z), (b, f)
    dE = np.zeros_like(E)
    K.fofe_backward(G, x, weights, Vocabulary.BOS_ID, dE)
    assert_close(dE, numeric_grad(loss, E))


def test_layernorm_pair():
    B, C = 5, 7
    x = RNG.standard_normal((B, C)) * 3 + 1
    gain, bias = RNG.standard_normal(C), RNG.standard_normal(C)
    G = RNG.standard_normal((B, C))
    out, mean, rstd = np.empty((B, C)), np.empty(B), np.empty(B)

    def loss():
        K.layernorm_forward(x, gain, bias, out, mean, rstd)
        return float((G * out).sum())

    loss()
    n = (x - x.mean(axis=1, keepdims=True)) / np.sqrt(x.var(axis=1, keepdims=True) + K.LN_EPS)
    assert np.allclose(out, n * gain + bias)
    assert np.allclose(mean, x.mean(axis=1)) and np.allclose(rstd, 1 / np.sqrt(x.var(axis=1) + K.LN_EPS))
    dx, dgain, dbias = np.empty_like(x), np.empty(C), np.empty(C)
    K.layernorm_backward(G, x, mean, rstd, gain, dx)
    K.layernorm_params_grad(G, x, mean, rstd, dgain, dbias)
    assert_close(dx, numeric_grad(loss, x))
    assert_close(dgain, numeric_grad(loss, gain))
    assert_close(dbias, numeric_grad(loss, bias))


def test_bias_pair():
    a0 = RNG.standard_normal((6, 4))
    bias = RNG.standard_normal(4)
    G = RNG.standard_normal((6, 4))

    def loss():
        a = a0.copy()
        K.bias_forward(a, bias)
        return float((G * a).sum())

    db = np.empty(4)
    K.column_sums(G, db)  # the backward model.py computes: 1ᵀ dout
    assert_close(db, numeric_grad(loss, bias))
    # past one chunk of columns (1024), in float32, against numpy's float64 sum
    x = RNG.standard_normal((37, 2500)).astype(np.float32)
    out = np.full(2500, np.nan, dtype=np.float32)
    K.column_sums(x, out)
    assert np.allclose(out, x.astype(np.float64).sum(axis=0), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["tanh", "relu", "sigmoid"])
def test_activation_pair(name):
    kind = K.ACTIVATIONS[name]
    a = RNG.standard_normal((5, 7)) * 2
    a[np.abs(a) < 1e-3] = 0.5  # keep relu away from its kink
    G = RNG.standard_normal((5, 7))

    def loss():
        h = a.copy()
        K.activation_forward(h, kind)
        return float((G * h).sum())

    h = a.copy()
    K.activation_forward(h, kind)
    ref = {"tanh": np.tanh(a), "relu": np.maximum(a, 0), "sigmoid": 1 / (1 + np.exp(-a))}[name]
    assert np.allclose(h, ref)
    dh = G.copy()
    K.activation_backward(dh, h, kind)
    assert_close(dh, numeric_grad(loss, a))


def test_sigmoid_is_stable_for_large_inputs():
    a = np.array([[-800.0, 800.0, 0.0]])
    K.activation_forward(a, K.SIGMOID)
    assert np.allclose(a, [[0.0, 1.0, 0.5]])


@pytest.mark.parametrize("skip", [-1, 1])
def test_softmax_cross_entropy_pair(skip):
    B, V = 4, 6
    z = RNG.standard_normal((B, V)) * 3
    y = np.array([0, 2, 5, 3], dtype=np.int32)
    nll = np.empty(B)

    def loss():
        K.softmax_xent_forward(z, y, skip, nll)
        return float(nll.sum() / B)

    L = loss()
    keep = np.arange(V) != skip
    lse = np.log(np.exp(z[:, keep]).sum(axis=1))
    assert L == pytest.approx(float((lse - z[np.arange(B), y]).mean()))
    numeric = numeric_grad(loss, z)
    dz = z.copy()
    K.softmax_xent_backward(dz, y, skip, 1.0 / B)
    assert_close(dz, numeric)
    fused, nll2 = z.copy(), np.empty(B)
    K.softmax_xent_fused(fused, y, skip, 1.0 / B, nll2)
    assert np.allclose(fused, dz) and np.allclose(nll2, nll)
    p = np.empty_like(z)
    K.softmax_forward(z, skip, p)
    assert np.allclose(p.sum(axis=1), 1.0) and (skip < 0 or (p[:, skip] == 0).all())
    # gradient is (p - onehot) / B
    onehot = np.zeros_like(z)
    onehot[np.arange(B), y] = 1
    assert np.allclose(dz, (p - onehot) / B)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_huge_skipped_logit_changes_nothing(dtype):
    """<s>'s column is never trained; whatever its logit, the other words' softmax ignores it."""
    z = np.array([[1.0, 1e30, 2.0, 0.5]], dtype=dtype)
    y = np.array([2], dtype=np.int32)
    nll, p = np.empty(1, dtype=dtype), np.empty((1, 4), dtype=dtype)
    K.softmax_xent_forward(z, y, 1, nll)
    expect = np.log(np.exp([1.0, 2.0, 0.5]).sum()) - 2.0
    assert nll[0] == pytest.approx(expect, rel=1e-6) and z[0, 1] == dtype(1e30)  # logits left as they were
    K.softmax_forward(z, 1, p)
    assert p[0, 1] == 0 and p.sum() == pytest.approx(1.0, rel=1e-6)
    K.softmax_xent_fused(z, y, 1, 1.0, nll)
    assert nll[0] == pytest.approx(expect, rel=1e-6) and z[0, 1] == 0 and np.isfinite(z).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_exp_tanh_sigmoid_match_the_library_functions(dtype):
    """The float32 fast path is within float32 rounding of the exact functions; float64 is exact."""
    x = np.concatenate([np.linspace(-100, 100, 40001), [0.0, -0.0, 1e-8, -1e-8]]).astype(dtype)
    out = np.empty_like(x)
    x64 = x.astype(np.float64)
    K.vector_exp(x, out)
    inside = (x64 > -87) & (x64 < 88)
    rel = np.abs(out[inside] - np.exp(x64[inside])) / np.exp(x64[inside])
    assert rel.max() < (3e-7 if dtype == np.float32 else 1e-15)
    assert (out[x64 < -88] < 1.3e-38).all() and np.isfinite(out).all()  # clamped to the smallest normal
    K.vector_tanh(x, out)
    assert np.abs(out - np.tanh(x64)).max() < (2e-7 if dtype == np.float32 else 1e-15)
    K.vector_sigmoid(x, out)
    assert np.abs(out - 1 / (1 + np.exp(-x64))).max() < (2e-7 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("skip", [-1, 0, 1])
def test_float32_softmax_matches_float64(skip):
    """The float32 kernels (fast exp, float32 logits) against the float64 ones on the same logits."""
    z = (RNG.standard_normal((16, 3000)) * 4).astype(np.float32)
    y = RNG.integers(2, 3000, 16).astype(np.int32)
    n32, n64 = np.empty(16, np.float32), np.empty(16)
    K.softmax_xent_forward(z, y, skip, n32)
    K.softmax_xent_forward(z.astype(np.float64), y, skip, n64)
    assert np.allclose(n32, n64, rtol=1e-5, atol=1e-5)
    g32, g64 = z.copy(), z.astype(np.float64)
    K.softmax_xent_fused(g32, y, skip, 1.0, n32)
    K.softmax_xent_fused(g64, y, skip, 1.0, n64)
    assert np.abs(g32 - g64).max() < 1e-6


def test_softmax_does_not_overflow():
    z = np.array([[1000.0, 999.0, -1000.0]])
    nll = np.empty(1)
    K.softmax_xent_forward(z, np.array([1], dtype=np.int32), -1, nll)
    assert nll[0] == pytest.approx(1 + math.log(1 + math.exp(-1)))


# --- sampled objectives --------------------------------------------------------------------
def test_sampled_columns_take_the_union_of_targets_and_noise():
    y = np.array([5, 2, 5, 7], dtype=np.int32)
    noise = np.array([2, 9, 9, 0], dtype=np.int64)
    mark = np.zeros(10, dtype=np.int32)
    cols, pos, negw = np.empty(8, np.int64), np.empty(4, np.int64), np.empty(8)
    S = K.sampled_columns(y, noise, mark, cols, pos, negw)
    assert S == 5 and sorted(cols[:S]) == [0, 2, 5, 7, 9]
    assert (cols[pos] == y).all() and not mark.any()
    drawn = {int(c): w for c, w in zip(cols[:S], negw[:S])}
    assert drawn == {5: 0, 2: 1, 7: 0, 9: 2, 0: 1}


@pytest.mark.parametrize("nce", [False, True])
def test_sampled_loss_pair(nce):
    B, S = 4, 7
    z = RNG.standard_normal((B, S)) * 3
    pos = np.array([0, 3, 3, 6], dtype=np.int64)
    negw = np.array([0, 1, 2, 0, 1, 3, 1], dtype=np.float64)
    offset = RNG.standard_normal(S) if nce else np.zeros(S)
    nll = np.empty(B)

    def loss():
        K.sampled_loss_forward(z, pos, negw, offset, nll)
        return float(nll.sum() / B)

    # the definition, written with numpy: -log sig(s_target) - sum_j negw_j log sig(-s_j)
    s = z - offset
    logsig = lambda x: -np.log1p(np.exp(-x))  # noqa: E731
    expect = -logsig(s[np.arange(B), pos]) - (negw * logsig(-s)).sum(axis=1)
    assert loss() == pytest.approx(float(expect.mean()))
    numeric = numeric_grad(loss, z)
    dz = z.copy()
    K.sampled_loss_backward(dz, pos, negw, offset, 1.0 / B)
    assert_close(dz, numeric)
    fused, nll2 = z.copy(), np.empty(B)
    K.sampled_loss_fused(fused, pos, negw, offset, 1.0 / B, nll2)
    assert np.allclose(fused, dz) and np.allclose(nll2, nll)


def test_sampled_loss_is_stable_for_large_logits():
    z = np.array([[800.0, -800.0, 30.0]])
    nll = np.empty(1)
    K.sampled_loss_forward(z, np.array([0]), np.array([0.0, 1.0, 1.0]), np.zeros(3), nll)
    assert nll[0] == pytest.approx(0.0 + 0.0 + 30.0 + math.log1p(math.exp(-30.0)))
    K.sampled_loss_fused(z, np.array([0]), np.array([0.0, 1.0, 1.0]), np.zeros(3), 1.0, nll)
    assert np.isfinite(z).all() and z[0, 0] == 0.0 and z[0, 2] == pytest.approx(1.0)


def test_gather_and_update_columns():
    U, c = RNG.standard_normal((3, 6)), RNG.standard_normal(6)
    cols = np.array([4, 1, 0, 0], dtype=np.int64)
    Us, cs = np.empty((3, 4)), np.empty(4)
    K.gather_columns(U, c, cols, 2, Us, cs)
    assert np.array_equal(Us[:, :2], U[:, [4, 1]]) and np.array_equal(cs[:2], c[[4, 1]])
    dUs, dcs = RNG.standard_normal((3, 4)), RNG.standard_normal(4)
    U0, c0 = U.copy(), c.copy()
    K.sgd_update_columns(U, c, dUs, dcs, cols, 2, 0.5, 0.1)
    assert np.allclose(U[:, [4, 1]], U0[:, [4, 1]] - 0.5 * (dUs[:, :2] + 0.1 * U0[:, [4, 1]]))
    assert np.allclose(c[[4, 1]], c0[[4, 1]] - 0.5 * dcs[:2])
    others = [0, 2, 3, 5]
    assert np.array_equal(U[:, others], U0[:, others]) and np.array_equal(c[others], c0[others])


def test_sgd_update_pair_is_a_descent_step():
    p = RNG.standard_normal(10)
    g = RNG.standard_normal(10)
    expect = p - 0.1 * (g + 0.01 * p)
    K.sgd_update(p, g, 0.1, 0.01)
    assert np.allclose(p, expect)
    E = RNG.standard_normal((5, 3))
    dE = RNG.standard_normal((5, 3))
    rows = np.array([4, 1], dtype=np.int64)
    E0, dE0 = E.copy(), dE.copy()
    K.sgd_update_rows(E, dE, rows, 2, 0.5, 0.0)
    assert np.allclose(E[[4, 1]], E0[[4, 1]] - 0.5 * dE0[[4, 1]]) and np.allclose(E[[0, 2, 3]], E0[[0, 2, 3]])
    assert (dE[[4, 1]] == 0).all()


# --- the whole model, end to end ---------------------------------------------------------
CONFIGS = [
    ModelConfig(order=3, embed_dim=3, hidden=(), activation="tanh"),  # logistic regression
    ModelConfig(order=3, embed_dim=3, hidden=(5,), activation="tanh"),
    ModelConfig(order=4, embed_dim=2, hidden=(4, 3), activation="relu"),
    ModelConfig(order=3, embed_dim=3, hidden=(4,), activation="sigmoid", direct=True),
]


FOFE = [
    ModelConfig(order=3, embed_dim=3, hidden=(4,), fofe=(0.6,), fofe_length=5),  # the bag reads past the window
    ModelConfig(order=4, embed_dim=2, hidden=(3,), fofe=(0.8, 0.3), fofe_length=2, direct=True),  # a shorter one
    ModelConfig(order=3, embed_dim=4, hidden=(4,), fofe=(0.5,), fofe_length=4, tied=True, cross_sentence=True),
    ModelConfig(order=2, embed_dim=3, hidden=(), fofe=(0.7,), fofe_length=3),
]

DEEP = [
    ModelConfig(order=3, embed_dim=3, hidden=(4,), layer_norm=True),  # the output layer's input normalised
    ModelConfig(order=3, embed_dim=2, hidden=(5, 5, 5), residual=True, activation="relu"),
    ModelConfig(order=3, embed_dim=3, hidden=(5, 5, 3), layer_norm=True, residual=True),  # a last layer without a skip
    ModelConfig(order=3, embed_dim=4, hidden=(4, 4), layer_norm=True, residual=True, tied=True, fofe=(0.5,),
                fofe_length=3),
]


TIED = [
    ModelConfig(order=3, embed_dim=4, hidden=(4,), activation="tanh", tied=True),
    ModelConfig(order=2, embed_dim=3, hidden=(), tied=True),  # logistic regression, U = Eᵀ
]


@pytest.mark.parametrize("config", CONFIGS + TIED + FOFE + DEEP,
                         ids=lambda c: f"h{list(c.hidden)}-{c.activation}-d{int(c.direct)}-t{int(c.tied)}-f{len(c.fofe)}"
                                     f"-n{int(c.layer_norm)}-r{int(c.residual)}")
def test_whole_model_gradient(config):
    vocab = Vocabulary(["a", "b", "c", "d"])
    model = FFNNLM(vocab, config, dtype=np.float64, seed=3)
    for p in model.params.values():  # random biases too, so no gradient is trivially zero
        p[...] += RNG.standard_normal(p.shape) * 0.3
    B = 6
    x = RNG.integers(0, len(vocab), size=(B, config.span - 1)).astype(np.int32)
    x[0, :2] = 4  # repeated word in one context
    x[1, 0] = 4  # and across rows
    y = np.array([3, 4, 2, 5, 6, 2], dtype=np.int32)
    ws = Workspace(model, B)

    def loss():
        return float(model.nll(x, y).mean())

    model.dE[...] = 0
    L = model.loss_and_grad(x, y, ws)
    assert L == pytest.approx(loss(), rel=1e-12)
    for name, p in model.params.items():
        assert_close(model.grads[name], numeric_grad(loss, p))


def test_smaller_last_batch_uses_the_same_buffers():
    vocab = Vocabulary(["a", "b", "c"])
    model = FFNNLM(vocab, ModelConfig(order=3, embed_dim=4, hidden=(6,)), dtype=np.float64, seed=1)
    x = RNG.integers(0, 6, size=(5, 2)).astype(np.int32)
    y = RNG.integers(2, 6, size=5).astype(np.int32)
    full = model.nll(x, y, batch_size=5)
    assert np.allclose(model.nll(x, y, batch_size=2), full)  # batches of 2, 2 and 1


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"h{list(c.hidden)}-{c.activation}-d{int(c.direct)}")
def test_whole_model_gradient_with_a_sampled_loss(config):
    """NCE / negative sampling through the whole model: every gradient, the output layer's only
    for the sampled columns, against central differences of the same sampled loss."""
    vocab = Vocabulary(["a", "b", "c", "d", "e", "f"])
    V = len(vocab)
    model = FFNNLM(vocab, config, dtype=np.float64, seed=3)
    for p in model.params.values():
        p[...] += RNG.standard_normal(p.shape) * 0.3
    B = 5
    x = RNG.integers(0, V, size=(B, config.order - 1)).astype(np.int32)
    y = np.array([3, 4, 4, 2, 6], dtype=np.int32)
    noise = np.array([5, 2, 7, 5], dtype=np.int64)
    log_kq = RNG.standard_normal(V)
    ws = Workspace(model, B, noise_samples=len(noise))

    def loss():  # the definition, over the full output layer, with numpy
        inp = model.hidden_forward(x, Workspace(model, B, noise_samples=len(noise)))
        z = inp @ model.U_all + model.c - log_kq
        logsig = lambda t: -np.logaddexp(0, -t)  # noqa: E731
        counts = np.bincount(noise, minlength=V)
        return float((-logsig(z[np.arange(B), y]) - (counts * logsig(-z)).sum(axis=1)).mean())

    model.dE[...] = 0
    L, S = model.sampled_loss_and_grad(x, y, noise, log_kq, ws)
    assert L == pytest.approx(loss(), rel=1e-12)
    cols = ws.cols[:S]
    assert sorted(cols) == sorted(set(y) | set(noise))
    H = model.U_all.shape[0]
    numeric_U, numeric_c = numeric_grad(loss, model.U_all), numeric_grad(loss, model.c)
    assert_close(ws.dUs[: H * S].reshape(H, S), numeric_U[:, cols])
    assert_close(ws.dcs[:S], numeric_c[cols])
    others = np.setdiff1d(np.arange(V), cols)
    assert not numeric_U[:, others].any() and not numeric_c[others].any()  # nothing else has a gradient
    for name, p in model.params.items():
        if name not in ("U", "Wd", "c"):
            assert_close(model.grads[name], numeric_grad(loss, p))


def test_dropout_pair():
    a0 = RNG.standard_normal((5, 7))
    u = RNG.random((5, 7))
    G = RNG.standard_normal((5, 7))
    p = 0.4

    def loss():
        a, mask = a0.copy(), u.copy()
        K.dropout_forward(a, mask, p)
        return float((G * a).sum())

    a, mask = a0.copy(), u.copy()
    K.dropout_forward(a, mask, p)
    assert np.array_equal(mask, np.where(u >= p, 1 / (1 - p), 0.0))
    assert np.allclose(a, a0 * mask)
    d = G.copy()
    K.dropout_backward(d, mask)
    assert_close(d, numeric_grad(loss, a0))


@pytest.mark.parametrize("config", CONFIGS + DEEP[1:],
                         ids=lambda c: f"h{list(c.hidden)}-{c.activation}-d{int(c.direct)}-n{int(c.layer_norm)}")
def test_whole_model_gradient_with_dropout(config):
    """Dropout on the embeddings and every hidden layer; masks held fixed (same draws) while
    the central differences are taken."""
    vocab = Vocabulary(["a", "b", "c", "d"])
    model = FFNNLM(vocab, config, dtype=np.float64, seed=3)
    for p in model.params.values():
        p[...] += RNG.standard_normal(p.shape) * 0.3
    B = 6
    x = RNG.integers(0, len(vocab), size=(B, config.span - 1)).astype(np.int32)
    y = np.array([3, 4, 2, 5, 6, 2], dtype=np.int32)
    ws = Workspace(model, B, dropout=(0.3, 0.5), seed=9)

    def same_masks():
        ws.rng = np.random.default_rng(123)

    def loss():
        same_masks()
        z = model.forward(x, ws)
        nll = np.empty(B)
        K.softmax_xent_forward(z, y, Vocabulary.BOS_ID, nll)
        return float(nll.mean())

    model.dE[...] = 0
    same_masks()
    L = model.loss_and_grad(x, y, ws)
    assert L == pytest.approx(loss(), rel=1e-12)
    assert L != pytest.approx(float(model.nll(x, y).mean()), rel=1e-3)  # the masks did something
    for name, p in model.params.items():
        assert_close(model.grads[name], numeric_grad(loss, p))


def test_adaptive_updates_follow_their_definitions():
    p, g = RNG.standard_normal(8), RNG.standard_normal(8)
    acc = RNG.random(8)
    gi = g + 0.01 * p
    expect = p - 0.1 * gi / (np.sqrt(acc + gi**2) + 1e-10)
    acc_expect = acc + gi**2
    K.adagrad_update(p, g, acc, 0.1, 0.01, 1e-10)
    assert np.allclose(p, expect) and np.allclose(acc, acc_expect)
    p, g = RNG.standard_normal(8), RNG.standard_normal(8)
    m, v = RNG.standard_normal(8), RNG.random(8)
    m2 = 0.9 * m + 0.1 * g
    v2 = 0.999 * v + 0.001 * g**2
    expect = p - 0.05 * m2 / (np.sqrt(v2) + 1e-8)
    K.adam_update(p, g, m, v, 0.05, 0.9, 0.999, 0.0, 1e-8)
    assert np.allclose(p, expect) and np.allclose(m, m2) and np.allclose(v, v2)
    # the row versions: the same step on the touched rows only, which are then cleared in dE
    for name in ("adagrad", "adam"):
        E, dE = RNG.standard_normal((5, 3)), RNG.standard_normal((5, 3))
        state = [RNG.random((5, 3)) for _ in range(1 if name == "adagrad" else 2)]
        rows = np.array([3, 0], dtype=np.int64)
        flat_p, flat_g = E[[3, 0]].ravel().copy(), dE[[3, 0]].ravel().copy()
        flat_s = [s[[3, 0]].ravel().copy() for s in state]
        E0 = E.copy()
        if name == "adagrad":
            K.adagrad_update_rows(E, dE, state[0], rows, 2, 0.1, 0.01, 1e-10)
            K.adagrad_update(flat_p, flat_g, flat_s[0], 0.1, 0.01, 1e-10)
        else:
            K.adam_update_rows(E, dE, state[0], state[1], rows, 2, 0.05, 0.9, 0.999, 0.01, 1e-8)
            K.adam_update(flat_p, flat_g, flat_s[0], flat_s[1], 0.05, 0.9, 0.999, 0.01, 1e-8)
        assert np.allclose(E[[3, 0]].ravel(), flat_p) and np.array_equal(E[[1, 2, 4]], E0[[1, 2, 4]])
        assert not dE[[3, 0]].any()


# --- the adaptive softmax's kernels and the whole layer (fflm/output.py) --------------------
def test_cluster_targets_route_every_row():
    bounds = np.array([5, 9, 20], dtype=np.int64)  # head 0..4, cluster 0: 5..8, cluster 1: 9..19
    y = np.array([12, 3, 6, 19, 0, 8, 9, 4], dtype=np.int32)
    head_y, rows, tail_y = np.empty(8, np.int32), np.empty(8, np.int64), np.empty(8, np.int32)
    starts = np.empty(3, np.int64)
    K.cluster_targets(y, bounds, head_y, rows, starts, tail_y)
    assert head_y.tolist() == [6, 3, 5, 6, 0, 5, 6, 4]
    assert starts.tolist() == [0, 2, 5]
    assert rows[:5].tolist() == [2, 5, 0, 3, 6]  # cluster 0's rows, then cluster 1's, in batch order
    assert tail_y[:5].tolist() == [1, 3, 3, 10, 0]


def test_gather_rows_pair():
    src = RNG.standard_normal((6, 3))
    rows = np.array([4, 0, 5], dtype=np.int64)
    G = RNG.standard_normal((3, 3))
    out = np.empty((3, 3))

    def loss():
        K.gather_rows(src, rows, out)
        return float((G * out).sum())

    loss()
    assert np.array_equal(out, src[rows])
    dsrc = np.zeros_like(src)
    K.scatter_add_rows(G, rows, dsrc)
    assert_close(dsrc, numeric_grad(loss, src))


ADAPTIVE = [
    ModelConfig(order=3, embed_dim=3, hidden=(5,), softmax="adaptive", cutoffs=(5, 8), tail_div=2),
    ModelConfig(order=4, embed_dim=2, hidden=(4, 3), activation="relu", softmax="adaptive", cutoffs=(6,)),
    ModelConfig(order=3, embed_dim=3, hidden=(4,), direct=True, softmax="adaptive", cutoffs=(4, 7)),
    ModelConfig(order=3, embed_dim=4, hidden=(4,), tied=True, softmax="adaptive", cutoffs=(5, 8)),
    ModelConfig(order=2, embed_dim=3, hidden=(), softmax="adaptive", cutoffs=(5,)),  # two-level logistic regression
    ModelConfig(order=3, embed_dim=3, hidden=(4, 4), layer_norm=True, residual=True, fofe=(0.6,), fofe_length=4,
                softmax="adaptive", cutoffs=(5, 8)),
]


@pytest.mark.parametrize("config", ADAPTIVE,
                         ids=lambda c: f"h{list(c.hidden)}-d{int(c.direct)}-t{int(c.tied)}-n{int(c.layer_norm)}")
@pytest.mark.parametrize("dropout", [(0.0, 0.0), (0.3, 0.4)], ids=["plain", "dropout"])
def test_whole_model_gradient_with_the_adaptive_softmax(config, dropout):
    """Every parameter of a model with a head and tail clusters, against central differences of
    the exact mean NLL; one cluster gets no target in the batch, so its gradient must be zero."""
    vocab = Vocabulary(["a", "b", "c", "d", "e", "f", "g", "h"])  # V = 11
    model = FFNNLM(vocab, config, dtype=np.float64, seed=3)
    for p in model.params.values():
        p[...] += RNG.standard_normal(p.shape) * 0.3
    B = 7
    x = RNG.integers(0, len(vocab), size=(B, config.span - 1)).astype(np.int32)
    y = np.array([3, 5, 2, 6, 0, 5, 4], dtype=np.int32)  # nothing in the last cluster (ids >= 8)
    ws = Workspace(model, B, dropout=dropout, seed=9)

    def same_masks():
        if any(dropout):
            ws.rng = np.random.default_rng(123)

    def loss():
        same_masks()  # the same masks every time
        nll = np.empty(B)
        model.output.nll(model.hidden_forward(x, ws), y, ws.out, nll)
        return float(nll.mean())

    model.dE[...] = 0
    same_masks()
    L = model.loss_and_grad(x, y, ws)
    assert L == pytest.approx(loss(), rel=1e-12)
    if not any(dropout):
        assert L == pytest.approx(float(model.nll(x, y).mean()), rel=1e-12)
    for name, p in model.params.items():
        assert_close(model.grads[name], numeric_grad(loss, p))
    last = len(config.cutoffs)
    if not config.tied and config.cutoffs[-1] >= 8:
        assert not model.grads[f"U{last}"].any() and not model.grads[f"P{last}"].any()
