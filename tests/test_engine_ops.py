"""Every differentiable op: forward against NumPy, backward against finite differences (float64).

Shapes, axes, indices and broadcasting come from hypothesis; the data come from a NumPy generator
seeded by hypothesis, kept in ranges where each op is smooth (positive for log/sqrt/pow bases,
away from 0 for relu and divisors, without ties for max).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from tinygrad_llama import Tensor, concatenate, gradcheck, stack, where

FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

seeds = st.integers(0, 2**32 - 1)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3)
nonscalar_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=3)
broadcast_pairs = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)


def uniform(seed, shape, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


def away_from_zero(seed, shape, low=0.3, high=2.0):
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def distinct(seed, shape):
    """Values at least 0.4 apart: no ties, so max is differentiable for finite differences."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape, dtype=np.int64))
    return (rng.permutation(size) + rng.uniform(-0.3, 0.3, size=size)).reshape(shape)


def leaf(array):
    return Tensor(np.array(array, dtype=np.float64), requires_grad=True)


def check(fn, reference, *arrays):
    """fn(*tensors) must equal reference(*arrays) and pass gradcheck in every input."""
    inputs = [leaf(a) for a in arrays]
    out = fn(*inputs)
    expected = reference(*[np.array(a, dtype=np.float64) for a in arrays])
    assert out.dtype == np.float64
    assert out.shape == np.shape(expected)
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)
    assert gradcheck(fn, inputs)


@st.composite
def axis_args(draw, ndim):
    """An axis argument for a reduction over `ndim` axes: None, an int (maybe negative), a tuple."""
    if ndim == 0:
        return draw(st.sampled_from([None, ()]))
    return draw(st.one_of(st.none(),
                          st.integers(-ndim, ndim - 1),
                          hnp.valid_tuple_axes(ndim, min_size=1)))


# ---- elementwise binary ops with broadcasting --------------------------------------------------
binary_ops = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
}


@pytest.mark.parametrize("name", sorted(binary_ops))
@FAST
@given(shapes=broadcast_pairs, seed=seeds)
def test_binary_broadcasting(name, shapes, seed):
    fn, ref = binary_ops[name]
    (sa, sb), _ = shapes
    check(fn, ref, uniform(seed, sa), uniform(seed + 1, sb))


@FAST
@given(shapes=broadcast_pairs, seed=seeds)
def test_div_broadcasting(shapes, seed):
    (sa, sb), _ = shapes
    check(lambda a, b: a / b, np.divide, uniform(seed, sa), away_from_zero(seed + 1, sb))


@FAST
@given(shapes=broadcast_pairs, seed=seeds)
def test_pow_tensor_tensor_positive_base(shapes, seed):
    (sa, sb), _ = shapes
    check(lambda a, b: a ** b, np.power, uniform(seed, sa, 0.5, 2.0), uniform(seed + 1, sb, -2.0, 2.0))


@FAST
@given(shape=shapes, seed=seeds, exponent=st.sampled_from([2, 3, -1, 0.5, -1.5, 2.5]))
def test_pow_tensor_scalar(shape, seed, exponent):
    # integer exponents are defined for negative bases too; fractional ones need a positive base
    low = -2.0 if float(exponent).is_integer() and exponent > 0 else 0.4
    check(lambda a: a ** exponent, lambda a: a ** exponent, uniform(seed, shape, low, 2.0))


@FAST
@given(shape=shapes, seed=seeds, base=st.sampled_from([2, 0.5, 3.7, np.e]))
def test_pow_scalar_tensor(shape, seed, base):
    check(lambda b: base ** b, lambda b: np.power(float(base), b), uniform(seed, shape))


@FAST
@given(shape=shapes, seed=seeds)
def test_neg(shape, seed):
    check(lambda a: -a, np.negative, uniform(seed, shape))


reflected = {
    "radd": (lambda c, t: c + t, np.add),
    "rsub": (lambda c, t: c - t, np.subtract),
    "rmul": (lambda c, t: c * t, np.multiply),
    "rtruediv": (lambda c, t: c / t, np.divide),
    "rpow": (lambda c, t: c ** t, np.power),
    "add": (lambda c, t: t + c, lambda c, t: t + c),
    "sub": (lambda c, t: t - c, lambda c, t: t - c),
    "mul": (lambda c, t: t * c, lambda c, t: t * c),
    "truediv": (lambda c, t: t / c, lambda c, t: t / c),
    "pow": (lambda c, t: t ** c, lambda c, t: t ** c),
}


@pytest.mark.parametrize("name", sorted(reflected))
@pytest.mark.parametrize("kind", ["python", "np_scalar", "ndarray"])
@FAST
@given(shapes=broadcast_pairs, seed=seeds)
def test_constant_on_either_side(name, kind, shapes, seed):
    """Python scalars, NumPy scalars and ndarrays (broadcasting) on either side of a tensor."""
    fn, ref = reflected[name]
    (sc, st_), _ = shapes
    constant = uniform(seed + 1, sc, 0.5, 2.0)  # positive: a valid divisor, base and exponent
    if kind == "python":
        constant = float(constant.reshape(-1)[0])
    elif kind == "np_scalar":
        constant = np.float64(constant.reshape(-1)[0])
    data = uniform(seed, st_, 0.5, 2.0)
    check(lambda t: fn(constant, t), lambda t: ref(constant, t), data)


# ---- matmul -----------------------------------------------------------------------------------
dims = st.integers(1, 4)


@FAST
@given(m=dims, k=dims, n=dims, seed=seeds)
def test_matmul_2d(m, k, n, seed):
    check(lambda a, b: a @ b, np.matmul, uniform(seed, (m, k)), uniform(seed + 1, (k, n)))


@FAST
@given(batch=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=2, max_side=3),
       m=dims, k=dims, n=dims, seed=seeds)
def test_matmul_batched_broadcasting(batch, m, k, n, seed):
    (ba, bb), _ = batch
    check(lambda a, b: a @ b, np.matmul, uniform(seed, ba + (m, k)), uniform(seed + 1, bb + (k, n)))


@FAST
@given(batch=hnp.array_shapes(min_dims=0, max_dims=2, max_side=3), m=dims, k=dims, n=dims, seed=seeds,
       case=st.sampled_from(["vec@mat", "mat@vec", "vec@vec"]))
def test_matmul_1d_operands(batch, m, k, n, seed, case):
    a_shape = (k,) if case.startswith("vec") else batch + (m, k)
    b_shape = (k,) if case.endswith("vec") else batch + (k, n)
    check(lambda a, b: a @ b, np.matmul, uniform(seed, a_shape), uniform(seed + 1, b_shape))


@FAST
@given(batch=hnp.array_shapes(min_dims=1, max_dims=2, max_side=3), m=dims, k=dims, n=dims, seed=seeds,
       which=st.sampled_from(["both", "activations", "weight"]))
def test_matmul_weight_path(batch, m, k, n, seed, which):
    """(..., T, k) @ (k, n): the weight's gradient sums over every batch entry."""
    x, w = uniform(seed, batch + (m, k)), uniform(seed + 1, (k, n))
    np.testing.assert_allclose((leaf(x) @ leaf(w)).data, x @ w, rtol=1e-12)
    tx = Tensor(x, requires_grad=which != "weight")
    tw = Tensor(w, requires_grad=which != "activations")
    assert gradcheck(lambda a, b: a @ b, [tx, tw])


def test_matmul_weight_gradient_closed_form():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5))
    tx, tw = leaf(x), leaf(w)
    (tx @ tw).sum().backward()
    np.testing.assert_allclose(tw.grad, np.einsum("btk->k", x)[:, None] * np.ones((1, 5)))
    np.testing.assert_allclose(tx.grad, np.broadcast_to(w.sum(axis=1), (2, 3, 4)))


# ---- reductions -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
@FAST
@given(data=st.data(), shape=shapes, seed=seeds, keepdims=st.booleans())
def test_reductions(name, data, shape, seed, keepdims):
    axis = data.draw(axis_args(len(shape)))
    x = distinct(seed, shape) if name == "max" else uniform(seed, shape)
    ref = {"sum": np.sum, "mean": np.mean, "max": np.max}[name]
    check(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims),
          lambda a: ref(a, axis=axis, keepdims=keepdims), x)


def test_max_ties_share_gradient_equally():
    x = leaf([[1.0, 5.0, 5.0, 2.0], [7.0, 7.0, 7.0, 0.0]])
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3, 0]])
    y = leaf([[3.0, 1.0], [3.0, 3.0]])
    y.max().backward()
    np.testing.assert_allclose(y.grad, [[1 / 3, 0], [1 / 3, 1 / 3]])
    z = leaf([2.0, 2.0])
    (z.max(keepdims=True) * 4.0).sum().backward()
    np.testing.assert_allclose(z.grad, [2.0, 2.0])


# ---- elementwise functions --------------------------------------------------------------------
def _np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


unary = {
    "exp": (lambda t: t.exp(), np.exp, uniform),
    "log": (lambda t: t.log(), np.log, lambda s, sh: uniform(s, sh, 0.2, 3.0)),
    "sqrt": (lambda t: t.sqrt(), np.sqrt, lambda s, sh: uniform(s, sh, 0.2, 3.0)),
    "tanh": (lambda t: t.tanh(), np.tanh, uniform),
    "sigmoid": (lambda t: t.sigmoid(), _np_sigmoid, lambda s, sh: uniform(s, sh, -4.0, 4.0)),
    "relu": (lambda t: t.relu(), lambda a: np.maximum(a, 0.0), lambda s, sh: away_from_zero(s, sh, 0.1)),
    "silu": (lambda t: t.silu(), lambda a: a * _np_sigmoid(a), lambda s, sh: uniform(s, sh, -4.0, 4.0)),
}


@pytest.mark.parametrize("name", sorted(unary))
@FAST
@given(shape=shapes, seed=seeds)
def test_unary(name, shape, seed):
    fn, ref, gen = unary[name]
    check(fn, ref, gen(seed, shape))


def test_sigmoid_and_silu_extreme_inputs_are_finite():
    x = leaf([-800.0, -40.0, 0.0, 40.0, 800.0])
    (x.sigmoid().sum() + x.silu().sum()).backward()
    assert np.all(np.isfinite(x.grad))
    np.testing.assert_allclose(x.sigmoid().data, [0.0, _np_sigmoid(-40.0), 0.5, 1.0, 1.0], atol=1e-15)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@FAST
@given(data=st.data(), shape=nonscalar_shapes, seed=seeds)
def test_softmax(name, data, shape, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))

    def reference(a):
        e = np.exp(a - a.max(axis=axis, keepdims=True))
        p = e / e.sum(axis=axis, keepdims=True)
        return p if name == "softmax" else np.log(p)

    check(lambda t: getattr(t, name)(axis=axis), reference, uniform(seed, shape, -3.0, 3.0))


def test_softmax_large_logits_stay_finite():
    x = leaf([[1000.0, 1001.0, 999.0]])
    p, lp = x.softmax(axis=1), x.log_softmax(axis=1)
    np.testing.assert_allclose(p.data.sum(), 1.0)
    np.testing.assert_allclose(lp.data, np.log(p.data))
    (p[:, 0].sum() + lp[:, 1].sum()).backward()
    assert np.all(np.isfinite(x.grad))


# ---- moving data around -----------------------------------------------------------------------
@FAST
@given(data=st.data(), shape=shapes, seed=seeds)
def test_reshape(data, shape, seed):
    target = list(data.draw(st.permutations(shape)))
    for _ in range(data.draw(st.integers(0, 2))):
        target.insert(data.draw(st.integers(0, len(target))), 1)
    if target and data.draw(st.booleans()):
        target[data.draw(st.integers(0, len(target) - 1))] = -1
    target = tuple(target)
    check(lambda t: t.reshape(target), lambda a: a.reshape(target), uniform(seed, shape))
    check(lambda t: t.reshape(*target), lambda a: a.reshape(target), uniform(seed, shape))


@FAST
@given(data=st.data(), shape=shapes, seed=seeds)
def test_permute_transpose_swapaxes(data, shape, seed):
    n = len(shape)
    x = uniform(seed, shape)
    axes = [a - n if data.draw(st.booleans()) else a for a in data.draw(st.permutations(range(n)))]
    check(lambda t: t.permute(*axes), lambda a: np.transpose(a, [p % n for p in axes]), x)
    check(lambda t: t.permute(axes), lambda a: np.transpose(a, [p % n for p in axes]), x)
    check(lambda t: t.transpose(*axes), lambda a: np.transpose(a, [p % n for p in axes]), x)
    check(lambda t: t.transpose(), np.transpose, x)
    check(lambda t: t.T, lambda a: a.T, x)
    if n:
        i, j = data.draw(st.integers(-n, n - 1)), data.draw(st.integers(-n, n - 1))
        check(lambda t: t.swapaxes(i, j), lambda a: np.swapaxes(a, i, j), x)


@st.composite
def expandable(draw):
    """(input shape, target shape): input is a suffix of target with some sides set to 1."""
    target = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=3))
    keep = draw(st.integers(0, len(target)))
    source = tuple(1 if draw(st.booleans()) else s for s in target[len(target) - keep:])
    return source, target


@FAST
@given(shapes=expandable(), seed=seeds)
def test_expand_and_broadcast_to(shapes, seed):
    source, target = shapes
    x = uniform(seed, source)
    check(lambda t: t.expand(target), lambda a: np.broadcast_to(a, target), x)
    check(lambda t: t.broadcast_to(*target), lambda a: np.broadcast_to(a, target), x)


@FAST
@given(data=st.data(), shape=nonscalar_shapes, seed=seeds)
def test_getitem_basic(data, shape, seed):
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    check(lambda t: t[index], lambda a: a[index], uniform(seed, shape))


@FAST
@given(data=st.data(), shape=nonscalar_shapes, seed=seeds)
def test_getitem_negative_step_slices(data, shape, seed):
    index = tuple(slice(data.draw(st.sampled_from([None, -1, s - 1])),
                        data.draw(st.sampled_from([None, 0, -s - 1])),
                        data.draw(st.sampled_from([-1, -2, -3]))) for s in shape)
    check(lambda t: t[index], lambda a: a[index], uniform(seed, shape))


@FAST
@given(data=st.data(), shape=nonscalar_shapes, seed=seeds)
def test_getitem_integer_arrays_with_repeats(data, shape, seed):
    index = data.draw(hnp.integer_array_indices(
        shape, result_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=5)))
    check(lambda t: t[index], lambda a: a[index], uniform(seed, shape))
    # the same index given as a list and as an integer Tensor
    first = index[0]
    check(lambda t: t[first.tolist()], lambda a: a[first.tolist()], uniform(seed, shape))
    check(lambda t: t[Tensor(first)], lambda a: a[first], uniform(seed, shape))


def test_getitem_repeated_index_scatter_adds():
    x = leaf([1.0, 2.0, 3.0, 4.0])
    x[[0, 0, 0]].sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 0.0, 0.0])
    y = leaf(np.arange(6.0).reshape(2, 3))
    (y[np.array([1, 1, 0]), np.array([2, 2, -1])] * Tensor(np.array([1.0, 10.0, 100.0]))).sum().backward()
    np.testing.assert_array_equal(y.grad, [[0, 0, 100], [0, 0, 11]])
    z = leaf(np.arange(4.0))
    z[np.array([True, False, True, True])].sum().backward()
    np.testing.assert_array_equal(z.grad, [1, 0, 1, 1])


@FAST
@given(data=st.data(), shape=nonscalar_shapes, count=st.integers(1, 4), seed=seeds)
def test_concatenate(data, shape, count, seed):
    n = len(shape)
    axis = data.draw(st.integers(-n, n - 1))
    arrays = []
    for i in range(count):
        s = list(shape)
        s[axis] = data.draw(st.integers(1, 3))
        arrays.append(uniform(seed + i, tuple(s)))
    check(lambda *ts: concatenate(ts, axis=axis), lambda *a: np.concatenate(a, axis=axis), *arrays)


@FAST
@given(data=st.data(), shape=shapes, count=st.integers(1, 4), seed=seeds)
def test_stack(data, shape, count, seed):
    n = len(shape)
    axis = data.draw(st.integers(-n - 1, n))
    arrays = [uniform(seed + i, shape) for i in range(count)]
    check(lambda *ts: stack(list(ts), axis=axis), lambda *a: np.stack(a, axis=axis), *arrays)


@FAST
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=3, min_dims=0, max_dims=3, max_side=3),
       seed=seeds)
def test_where_broadcasting(shapes, seed):
    (sc, sa, sb), _ = shapes
    cond = np.random.default_rng(seed).random(sc) < 0.5
    check(lambda a, b: where(cond, a, b), lambda a, b: np.where(cond, a, b),
          uniform(seed + 1, sa), uniform(seed + 2, sb))
    check(lambda a: where(Tensor(cond), a, 0.5), lambda a: np.where(cond, a, 0.5), uniform(seed + 1, sa))
    check(lambda b: where(cond, -1.0, b), lambda b: np.where(cond, -1.0, b), uniform(seed + 2, sb))


def test_where_routes_gradient():
    a, b = leaf([1.0, 2.0, 3.0]), leaf([[10.0], [20.0]])
    where(np.array([True, False, True]), a, b).sum().backward()
    np.testing.assert_array_equal(a.grad, [2, 0, 2])  # two rows each
    np.testing.assert_array_equal(b.grad, [[1], [1]])


@FAST
@given(shape=shapes, seed=seeds)
def test_astype_same_dtype_gradcheck(shape, seed):
    check(lambda t: t.astype(np.float64) * 2.0, lambda a: a * 2.0, uniform(seed, shape))


def test_astype_float64_float32_float64_path():
    x = leaf([0.5, -1.25, 3.0])
    y = x.astype(np.float32)
    assert y.dtype == np.float32 and y.requires_grad
    z = (y * y).astype("float64")
    assert z.dtype == np.float64
    z.sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_allclose(x.grad, 2 * np.array([0.5, -1.25, 3.0]), rtol=1e-6)
    w = Tensor(np.float32([1.5, 2.0]), requires_grad=True)
    (w.astype(np.float64) ** 2).sum().backward()
    assert w.grad.dtype == np.float32
    np.testing.assert_allclose(w.grad, [3.0, 4.0])


# ---- a composed, LLaMA-like block: many ops and a residual connection ----------------------------
def test_composed_attention_like_block():
    rng = np.random.default_rng(3)
    x = leaf(rng.standard_normal((2, 3, 4)))
    wq, wk, wv = (leaf(rng.standard_normal((4, 4)) * 0.5) for _ in range(3))
    g = leaf(rng.uniform(0.5, 1.5, size=(4,)))

    def block(x, wq, wk, wv, g):
        h = x * (((x * x).mean(axis=-1, keepdims=True) + 1e-5) ** -0.5) * g  # RMSNorm
        q, k, v = h @ wq, h @ wk, h @ wv
        scores = (q @ k.swapaxes(-1, -2)) / 2.0
        causal = np.tril(np.ones((3, 3), dtype=bool))
        att = where(causal, scores, -1e9).softmax(axis=-1)
        return x + (att @ v).silu()  # residual

    assert gradcheck(block, [x, wq, wk, wv, g])
