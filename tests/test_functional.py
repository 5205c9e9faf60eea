"""The fused layers of functional.py: against the composed references (forward and every input
gradient, float64), against finite differences, against closed forms written here in NumPy, and
their properties (RMSNorm scale invariance, RoPE rotation, relative positions, causality)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinygrad_llama import functional as F
from tinygrad_llama import reference as R
from tinygrad_llama.gradcheck import gradcheck
from tinygrad_llama.tensor import Tensor

FAST = settings(max_examples=25, deadline=None)
GC = settings(max_examples=15, deadline=None)   # gradcheck: two evaluations per element

small = st.integers(1, 3)
seeds = st.integers(0, 2**31 - 1)
even_head_dim = st.sampled_from([2, 4, 6, 8])


def leaf(a):
    return Tensor(np.array(a, dtype=np.float64), requires_grad=True)


def compare_fused_reference(fused, ref, arrays, rng, rtol=1e-9, atol=1e-11):
    """Run fused and ref on fresh leaves of the same float64 arrays, backpropagate the SAME random
    upstream gradient through both, and compare outputs and every input gradient."""
    outs, grads, u = [], [], None
    for fn in (fused, ref):
        leaves = [leaf(a) for a in arrays]
        out = fn(*leaves)
        assert out.dtype == np.float64
        if u is None:
            u = rng.standard_normal(out.shape)
        out.backward(u)
        outs.append(out.data)
        grads.append([t.grad for t in leaves])
    np.testing.assert_allclose(outs[0], outs[1], rtol=rtol, atol=atol)
    for i, (gf, gr) in enumerate(zip(*grads)):
        assert gf is not None and gr is not None, f"input {i} got no gradient"
        assert gf.shape == arrays[i].shape
        np.testing.assert_allclose(gf, gr, rtol=rtol, atol=atol, err_msg=f"gradient of input {i}")
    return outs[0], grads[0]


# ---- fused == composed reference -----------------------------------------------------------------
@FAST
@given(B=small, T=small, din=st.integers(1, 6), dout=st.integers(1, 6), seed=seeds)
def test_linear_matches_reference(B, T, din, dout, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((B, T, din)), rng.standard_normal((dout, din))
    out, (dx, dw) = compare_fused_reference(F.linear, R.linear_reference, [x, w], rng)
    np.testing.assert_allclose(out, np.einsum("bti,oi->bto", x, w), rtol=1e-12, atol=1e-12)


@FAST
@given(B=small, T=st.integers(1, 6), V=st.integers(1, 5), D=st.integers(1, 4), seed=seeds)
def test_embedding_matches_dense_one_hot(B, T, V, D, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((V, D))
    ids = rng.integers(0, V, size=(B, T))
    ids.reshape(-1)[-1] = ids.reshape(-1)[0]          # at least one repeated id when B*T > 1
    one_hot = np.eye(V)[ids]                           # (B, T, V)
    wt = leaf(w)
    out = F.embedding(ids, wt)
    u = rng.standard_normal(out.shape)
    out.backward(u)
    np.testing.assert_allclose(out.data, one_hot @ w, rtol=1e-12, atol=1e-12)
    dense_dw = one_hot.reshape(-1, V).T @ u.reshape(-1, D)   # sum of dy over each id's tokens
    np.testing.assert_allclose(wt.grad, dense_dw, rtol=1e-10, atol=1e-12)


def test_embedding_repeated_ids_accumulate():
    w = leaf(np.zeros((3, 2)))
    out = F.embedding(np.array([[2, 2, 2, 0]]), w)
    out.backward(np.ones((1, 4, 2)))
    np.testing.assert_array_equal(w.grad, [[1, 1], [0, 0], [3, 3]])


@FAST
@given(B=small, T=small, D=st.integers(1, 8), eps=st.sampled_from([1e-5, 1e-2, 0.5]), seed=seeds)
def test_rms_norm_matches_reference(B, T, D, eps, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((B, T, D)), rng.standard_normal(D)
    out, _ = compare_fused_reference(lambda a, b: F.rms_norm(a, b, eps),
                                     lambda a, b: R.rms_norm_reference(a, b, eps), [x, w], rng)
    expected = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * w
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@FAST
@given(B=small, T=small, H=small, D=even_head_dim, start=st.integers(0, 7),
       theta=st.sampled_from([10000.0, 500.0]), seed=seeds)
def test_rope_matches_reference(B, T, H, D, start, theta, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, H, D))
    compare_fused_reference(lambda a: F.rope(a, start, theta),
                            lambda a: R.rope_reference(a, start, theta), [x], rng)


def numpy_rope(x, start_pos, theta):
    """Written out from the definition: pair (x[2i], x[2i+1]) of the token at position p is rotated
    by the angle p * theta^(-2i/D)."""
    B, T, H, D = x.shape
    out = np.empty_like(x)
    for t in range(T):
        p = start_pos + t
        for i in range(D // 2):
            a = p * theta ** (-2.0 * i / D)
            e, o = x[:, t, :, 2 * i], x[:, t, :, 2 * i + 1]
            out[:, t, :, 2 * i] = e * math.cos(a) - o * math.sin(a)
            out[:, t, :, 2 * i + 1] = e * math.sin(a) + o * math.cos(a)
    return out


@FAST
@given(T=small, H=small, D=even_head_dim, start=st.integers(0, 20), seed=seeds)
def test_rope_matches_formula_written_here(T, H, D, start, seed):
    # reference.py shares rope_tables with functional.py, so check both against the formula too
    x = np.random.default_rng(seed).standard_normal((2, T, H, D))
    expected = numpy_rope(x, start, 10000.0)
    np.testing.assert_allclose(F.rope(Tensor(x), start).data, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(R.rope_reference(Tensor(x), start).data, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("D,i,pos", [(8, 1, 3), (8, 3, 5), (4, 1, 1), (64, 31, 7), (64, 10, 100)])
def test_rope_angle_exponent_single_pair(D, i, pos):
    # the pair (2i, 2i+1) holding (1, 0) turns into (cos a, sin a), a = pos * theta^(-2i/D);
    # the exponent -2i/D (not -2(i+1)/D, not -i/D) is what this pins down
    theta = 10000.0
    x = np.zeros((1, 1, 1, D))
    x[..., 2 * i] = 1.0
    y = F.rope(Tensor(x), start_pos=pos, theta=theta).data[0, 0, 0]
    a = pos * theta ** (-2 * i / D)
    assert y[2 * i] == pytest.approx(math.cos(a), abs=1e-12)
    assert y[2 * i + 1] == pytest.approx(math.sin(a), abs=1e-12)
    others = np.delete(y, [2 * i, 2 * i + 1])
    np.testing.assert_array_equal(others, 0.0)


def test_rope_interleaved_pairs_not_halves():
    # Meta's convention rotates (0,1), (2,3), ...; the "rotate-half" convention would pair i with i+D/2
    D = 8
    for i in range(D // 2):
        x = np.zeros((1, 1, 1, D))
        x[..., 2 * i + 1] = 1.0                      # (e, o) = (0, 1) -> (-sin a, cos a)
        y = F.rope(Tensor(x), start_pos=2).data[0, 0, 0]
        a = 2 * 10000.0 ** (-2 * i / D)
        nonzero = set(np.flatnonzero(np.abs(y) > 1e-15))
        assert nonzero <= {2 * i, 2 * i + 1}
        assert y[2 * i] == pytest.approx(-math.sin(a), abs=1e-12)
        assert y[2 * i + 1] == pytest.approx(math.cos(a), abs=1e-12)


def numpy_causal_attention(q, k, v):
    """Loops over queries: query i (of the last Tq positions) sees keys j <= i + (Tk - Tq)."""
    B, H, Tq, D = q.shape
    Tk = k.shape[2]
    out = np.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                visible = i + Tk - Tq + 1
                s = k[b, h, :visible] @ q[b, h, i] / math.sqrt(D)
                p = np.exp(s - s.max())
                out[b, h, i] = (p / p.sum()) @ v[b, h, :visible]
    return out


# The forward's softmax subtracts each query's score for its own key, instead of the row max, when
# a query block has at least 256 rows (batch x heads x queries); these shapes have that many.
MANY_ROWS = [(32, 16, 16), (64, 5, 8), (8, 256, 256)]  # (heads, Tq, Tk): cached keys; 4 query blocks


@pytest.mark.parametrize("H, Tq, Tk", MANY_ROWS)
def test_causal_attention_many_rows_matches_loops(H, Tq, Tk):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, H, T, 4)) for T in (Tq, Tk, Tk))
    out = F.causal_attention(Tensor(q), Tensor(k), Tensor(v)).data
    np.testing.assert_allclose(out, numpy_causal_attention(q, k, v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("H, Tq, Tk", MANY_ROWS + [(2, 6, 6)])  # (2, 6, 6): few rows, the row max
def test_causal_attention_float32_survives_scores_far_above_the_own_key(H, Tq, Tk):
    # Every query scores key 0 at 450 and its own key at 0, so e^(450 - 0) overflows float32: the
    # block must be redone with the row max, giving (nearly) all weight to key 0.
    rng = np.random.default_rng(0)
    q = np.zeros((1, H, Tq, 4), np.float32)
    k = np.zeros((1, H, Tk, 4), np.float32)
    q[..., 0], k[:, :, 0, 0] = 30.0, 30.0                      # s_i0 = 30 * 30 / sqrt(4) = 450
    v = rng.standard_normal((1, H, Tk, 4)).astype(np.float32)
    out = F.causal_attention(Tensor(q), Tensor(k), Tensor(v)).data
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, numpy_causal_attention(q.astype(np.float64), k.astype(np.float64),
                                                           v.astype(np.float64)), rtol=1e-5, atol=1e-6)


@FAST
@given(B=small, H=small, Tq=st.integers(1, 4), extra=st.integers(0, 3), D=st.integers(1, 5), seed=seeds)
def test_causal_attention_matches_reference(B, H, Tq, extra, D, seed):
    Tk = Tq + extra                                    # extra > 0: the cached-keys case
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((B, H, T, D)) for T in (Tq, Tk, Tk))
    out, _ = compare_fused_reference(F.causal_attention, R.causal_attention_reference, [q, k, v], rng)
    np.testing.assert_allclose(out, numpy_causal_attention(q, k, v), rtol=1e-10, atol=1e-12)


@FAST
@given(B=small, T=small, D=st.integers(1, 5), Fh=st.integers(1, 6), seed=seeds)
def test_swiglu_matches_reference(B, T, D, Fh, seed):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s) for s in ((B, T, D), (Fh, D), (D, Fh), (Fh, D))]
    out, _ = compare_fused_reference(F.swiglu, R.swiglu_reference, arrays, rng)
    x, w1, w2, w3 = arrays
    h1, h3 = x @ w1.T, x @ w3.T
    np.testing.assert_allclose(out, (h1 / (1 + np.exp(-h1)) * h3) @ w2.T, rtol=1e-10, atol=1e-12)


@FAST
@given(B=small, T=st.integers(1, 4), V=st.integers(1, 6), ignore=st.booleans(), seed=seeds, data=st.data())
def test_cross_entropy_matches_reference(B, T, V, ignore, seed, data):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, T, V)) * 3
    targets = rng.integers(0, V, size=(B, T))
    ignore_index = None
    if ignore:
        ignore_index = -100
        mask = np.array(data.draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T))).reshape(B, T)
        targets = np.where(mask, ignore_index, targets)
    out, (dz,) = compare_fused_reference(lambda z: F.cross_entropy(z, targets, ignore_index),
                                         lambda z: R.cross_entropy_reference(z, targets, ignore_index),
                                         [logits], rng)
    # the definition, in NumPy: mean over counted tokens of log-sum-exp minus the target logit
    z = logits.reshape(-1, V)
    t = targets.reshape(-1)
    counted = t != (ignore_index if ignore_index is not None else -1)
    nll = np.log(np.exp(z).sum(1)) - z[np.arange(t.size), np.where(counted, t, 0)]
    expected = nll[counted].mean() if counted.any() else 0.0
    assert float(out) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # ignored tokens receive no gradient at all
    np.testing.assert_array_equal(dz.reshape(-1, V)[~counted], 0.0)


# ---- gradcheck of every fused Function -----------------------------------------------------------
@GC
@given(T=small, din=st.integers(1, 4), dout=st.integers(1, 4), seed=seeds)
def test_gradcheck_linear(T, din, dout, seed):
    rng = np.random.default_rng(seed)
    assert gradcheck(F.linear, [leaf(rng.standard_normal((2, T, din))), leaf(rng.standard_normal((dout, din)))],
                     seed=seed)


@GC
@given(T=st.integers(1, 5), V=st.integers(1, 4), D=st.integers(1, 3), seed=seeds)
def test_gradcheck_embedding(T, V, D, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(2, T))
    assert gradcheck(lambda w: F.embedding(ids, w), [leaf(rng.standard_normal((V, D)))], seed=seed)


@GC
@given(T=small, D=st.integers(1, 6), seed=seeds)
def test_gradcheck_rms_norm(T, D, seed):
    rng = np.random.default_rng(seed)
    assert gradcheck(F.rms_norm, [leaf(rng.standard_normal((2, T, D))), leaf(rng.standard_normal(D))],
                     seed=seed)


@GC
@given(T=small, H=st.integers(1, 2), D=st.sampled_from([2, 4, 6]), start=st.integers(0, 9), seed=seeds)
def test_gradcheck_rope(T, H, D, start, seed):
    x = leaf(np.random.default_rng(seed).standard_normal((1, T, H, D)))
    assert gradcheck(lambda a: F.rope(a, start), [x], seed=seed)


@GC
@given(Tq=st.integers(1, 3), extra=st.integers(0, 2), D=st.integers(1, 3), seed=seeds)
def test_gradcheck_causal_attention(Tq, extra, D, seed):
    rng = np.random.default_rng(seed)
    Tk = Tq + extra
    q, k, v = (leaf(rng.standard_normal((1, 2, T, D))) for T in (Tq, Tk, Tk))
    assert gradcheck(F.causal_attention, [q, k, v], seed=seed)


@GC
@given(T=small, D=st.integers(1, 3), Fh=st.integers(1, 4), seed=seeds)
def test_gradcheck_swiglu(T, D, Fh, seed):
    rng = np.random.default_rng(seed)
    inputs = [leaf(rng.standard_normal(s)) for s in ((1, T, D), (Fh, D), (D, Fh), (Fh, D))]
    assert gradcheck(F.swiglu, inputs, seed=seed)


@GC
@given(T=st.integers(1, 4), V=st.integers(2, 5), seed=seeds)
def test_gradcheck_cross_entropy(T, V, seed):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, V, size=(2, T))
    targets[0, 0] = -1                                  # one ignored token
    assert gradcheck(lambda z: F.cross_entropy(z, targets, ignore_index=-1),
                     [leaf(rng.standard_normal((2, T, V)))], seed=seed)


# ---- properties ------------------------------------------------------------------------------------
@FAST
@given(D=st.integers(1, 16), scale=st.floats(1e-2, 1e3), seed=seeds)
def test_rms_norm_invariant_to_positive_scale(D, scale, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((3, D)), rng.standard_normal(D)
    eps = 1e-30                                        # negligible next to mean(x^2) here
    y = F.rms_norm(Tensor(x), Tensor(w), eps).data
    y_scaled = F.rms_norm(Tensor(x * scale), Tensor(w), eps).data
    np.testing.assert_allclose(y_scaled, y, rtol=1e-9, atol=1e-12)
    # and it is not trivially constant: the output is x / rms(x) * w
    np.testing.assert_allclose(y, x / np.sqrt((x ** 2).mean(-1, keepdims=True)) * w, rtol=1e-9)


@FAST
@given(T=small, H=small, D=even_head_dim, start=st.integers(0, 50), seed=seeds)
def test_rope_preserves_pair_norms(T, H, D, start, seed):
    x = np.random.default_rng(seed).standard_normal((2, T, H, D))
    y = F.rope(Tensor(x), start).data
    pair_norm = lambda a: np.hypot(a[..., 0::2], a[..., 1::2])  # noqa: E731
    np.testing.assert_allclose(pair_norm(y), pair_norm(x), rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)


@FAST
@given(D=even_head_dim, m=st.integers(0, 30), n=st.integers(0, 30), s=st.integers(1, 30), seed=seeds)
def test_rope_dot_product_depends_only_on_relative_position(D, m, n, s, seed):
    rng = np.random.default_rng(seed)
    q, k = (rng.standard_normal((1, 1, 1, D)) for _ in range(2))

    def dot(pq, pk):
        return float((F.rope(Tensor(q), pq).data * F.rope(Tensor(k), pk).data).sum())

    assert dot(m, n) == pytest.approx(dot(m + s, n + s), rel=1e-9, abs=1e-10)


def test_rope_dot_product_does_change_with_distance():
    # control for the test above: the product is not constant in the offset either
    rng = np.random.default_rng(0)
    q, k = (rng.standard_normal((1, 1, 1, 8)) for _ in range(2))
    dots = [float((F.rope(Tensor(q), 0).data * F.rope(Tensor(k), n).data).sum()) for n in range(4)]
    assert max(dots) - min(dots) > 1e-3


@FAST
@given(H=small, Tq=st.integers(1, 5), extra=st.integers(0, 3), D=st.integers(1, 4),
       seed=seeds, data=st.data())
def test_causal_attention_ignores_future_keys_and_values(H, Tq, extra, D, seed, data):
    Tk = Tq + extra
    t = data.draw(st.integers(0, Tq - 1))              # a query position
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((1, H, T, D)) for T in (Tq, Tk, Tk))
    last_visible = t + extra                            # key index query t may still see
    k2, v2 = k.copy(), v.copy()
    k2[:, :, last_visible + 1:] = rng.standard_normal(k2[:, :, last_visible + 1:].shape) * 5
    v2[:, :, last_visible + 1:] = rng.standard_normal(v2[:, :, last_visible + 1:].shape) * 5
    before = F.causal_attention(Tensor(q), Tensor(k), Tensor(v)).data
    after = F.causal_attention(Tensor(q), Tensor(k2), Tensor(v2)).data
    np.testing.assert_allclose(after[:, :, :t + 1], before[:, :, :t + 1], rtol=1e-12, atol=1e-12)
    if t + 1 < Tq:                                      # later queries do see the change
        assert not np.allclose(after[:, :, t + 1:], before[:, :, t + 1:])


# ---- dtype: float32 in, float32 out and gradients -------------------------------------------------
def _f32(shape, rng):
    return Tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)


FLOAT32_CASES = {
    "linear": lambda r: (F.linear, [_f32((2, 3, 4), r), _f32((5, 4), r)]),
    "embedding": lambda r: (lambda w: F.embedding(np.array([[0, 2, 2]]), w), [_f32((4, 3), r)]),
    "rms_norm": lambda r: (F.rms_norm, [_f32((2, 3, 4), r), _f32((4,), r)]),
    "rope": lambda r: (lambda x: F.rope(x, 3), [_f32((1, 3, 2, 4), r)]),
    "causal_attention": lambda r: (F.causal_attention, [_f32((1, 2, 2, 4), r), _f32((1, 2, 3, 4), r),
                                                        _f32((1, 2, 3, 4), r)]),
    "swiglu": lambda r: (F.swiglu, [_f32((2, 3, 4), r), _f32((6, 4), r), _f32((4, 6), r), _f32((6, 4), r)]),
    "cross_entropy": lambda r: (lambda z: F.cross_entropy(z, np.array([[1, -1, 0]]), ignore_index=-1),
                                [_f32((1, 3, 5), r)]),
}


@pytest.mark.parametrize("name", sorted(FLOAT32_CASES))
def test_float32_in_float32_out_and_gradients(name):
    fn, inputs = FLOAT32_CASES[name](np.random.default_rng(1))
    out = fn(*inputs)
    assert out.dtype == np.float32, name
    out.backward(np.ones(out.shape, dtype=np.float32))
    for i, t in enumerate(inputs):
        assert t.grad is not None and t.grad.dtype == np.float32, f"{name}: gradient of input {i}"


# ---- error messages --------------------------------------------------------------------------------
def test_rope_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="even"):
        F.rope(Tensor(np.zeros((1, 2, 1, 5))))


@pytest.mark.parametrize("bad", [4, -1, 100])
def test_embedding_rejects_out_of_range_ids(bad):
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        F.embedding(np.array([[0, bad]]), leaf(np.zeros((4, 2))))


def test_embedding_rejects_float_ids():
    with pytest.raises(TypeError, match="integers"):
        F.embedding(np.array([[0.0, 1.0]]), leaf(np.zeros((4, 2))))


@pytest.mark.parametrize("target_shape", [(2, 4), (3,), (2, 3, 1)])
def test_cross_entropy_rejects_mismatched_targets(target_shape):
    with pytest.raises(ValueError, match="targets of shape"):
        F.cross_entropy(leaf(np.zeros((2, 3, 5))), np.zeros(target_shape, dtype=np.int64))


def test_cross_entropy_rejects_out_of_range_targets():
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        F.cross_entropy(leaf(np.zeros((1, 2, 5))), np.array([[0, 5]]))
