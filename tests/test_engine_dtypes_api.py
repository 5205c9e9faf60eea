"""dtype policy, error messages and the small Tensor API."""
import numpy as np
import pytest

from tinygrad_llama import Tensor, concatenate, matmul, stack, where


def leaf(values, dtype):
    return Tensor(np.array(values, dtype=dtype), requires_grad=True)


# ---- dtype policy -----------------------------------------------------------------------------
def test_python_floats_and_lists_default_to_float32():
    assert Tensor(1.5).dtype == np.float32
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor([[1, 2.5]]).dtype == np.float32
    assert Tensor(np.array([1.0, 2.0])).dtype == np.float64
    assert Tensor(np.float64(1.0)).dtype == np.float64
    assert Tensor(np.array([1.0], dtype=np.float32)).dtype == np.float32
    assert Tensor([1.0], dtype=np.float64).dtype == np.float64
    assert Tensor([1, 2]).dtype.kind == "i"
    assert Tensor([True]).dtype == np.bool_


def _positive(shape, dtype, seed):
    return np.random.default_rng(seed).uniform(0.5, 1.5, size=shape).astype(dtype)


# one entry per op: a function of two (3, 4) tensors, the second unused by unary ops
every_op = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b, "pow": lambda a, b: a ** b, "pow_scalar": lambda a, b: a ** 2,
    "rpow": lambda a, b: 2.0 ** a, "neg": lambda a, b: -a, "matmul": lambda a, b: a @ b.T,
    "matmul_weight": lambda a, b: a.reshape(3, 1, 4) @ b.T, "matmul_vec": lambda a, b: a @ b[0],
    "sum": lambda a, b: a.sum(axis=1), "mean": lambda a, b: a.mean(axis=(0, 1)),
    "max": lambda a, b: a.max(axis=-1, keepdims=True), "exp": lambda a, b: a.exp(),
    "log": lambda a, b: a.log(), "sqrt": lambda a, b: a.sqrt(), "tanh": lambda a, b: a.tanh(),
    "sigmoid": lambda a, b: a.sigmoid(), "relu": lambda a, b: (a - 1.0).relu(),
    "silu": lambda a, b: a.silu(), "softmax": lambda a, b: a.softmax(axis=0),
    "log_softmax": lambda a, b: a.log_softmax(), "reshape": lambda a, b: a.reshape(2, 6),
    "permute": lambda a, b: a.permute(1, 0), "T": lambda a, b: a.T,
    "swapaxes": lambda a, b: a.swapaxes(0, 1), "expand": lambda a, b: a.expand(2, 3, 4),
    "getitem": lambda a, b: a[::-1, 1:3], "getitem_array": lambda a, b: a[[0, 0, 2]],
    "concatenate": lambda a, b: concatenate([a, b], axis=1), "stack": lambda a, b: stack([a, b], -1),
    "where": lambda a, b: where(a.data > 1.0, a, b), "astype_same": lambda a, b: a.astype(a.dtype),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(every_op))
def test_every_op_preserves_dtype_in_value_and_gradient(name, dtype):
    a = Tensor(_positive((3, 4), dtype, 0), requires_grad=True)
    b = Tensor(_positive((3, 4), dtype, 1), requires_grad=True)
    out = every_op[name](a, b)
    assert out.dtype == dtype
    out.backward(np.ones(out.shape))
    assert a.grad is not None and a.grad.dtype == dtype
    assert b.grad is None or b.grad.dtype == dtype


constants = {
    "python float": 2.5,
    "python int": 3,
    "np.float64 scalar": np.float64(2.5),
    "float64 ndarray": np.full((4,), 2.5),
    "int ndarray": np.arange(1, 5),
    "int tensor": Tensor(np.arange(1, 5)),
}


@pytest.mark.parametrize("name", sorted(constants))
@pytest.mark.parametrize("op", ["+", "-", "*", "/", "**"])
def test_float32_tensor_with_constants_stays_float32(name, op):
    constant = constants[name]
    x = leaf([[0.5, 1.0, 1.5, 2.0]] * 2, np.float32)
    for out in (eval(f"x {op} constant"), eval(f"constant {op} x")):
        assert isinstance(out, Tensor)
        assert out.dtype == np.float32
        x.zero_grad()
        out.sum().backward()
        assert x.grad.dtype == np.float32
    raw = constant.data if isinstance(constant, Tensor) else constant
    expected = eval(f"x.data.astype(np.float64) {op} np.asarray(raw, dtype=np.float64)")
    np.testing.assert_allclose(eval(f"x {op} constant").data, expected, rtol=1e-6)


def test_float32_matmul_and_where_with_float64_constants_stay_float32():
    x = leaf(np.ones((2, 3)), np.float32)
    for out in (x @ np.ones((3, 2)), np.ones((2, 2)) @ x, matmul(x, np.ones(3)),
                where(np.array([True, False, True]), x, np.float64(0.0)),
                where(np.array([True, False, True]), 1.0, x)):
        assert out.dtype == np.float32
        x.zero_grad()
        out.sum().backward()
        assert x.grad.dtype == np.float32


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "**", "@"])
def test_mixing_float32_and_float64_tensors_raises(op):
    a = leaf(np.ones((2, 2)), np.float32)
    b = leaf(np.ones((2, 2)), np.float64)
    with pytest.raises(TypeError, match="float32|float64"):
        eval(f"a {op} b")
    with pytest.raises(TypeError):
        eval(f"b {op} a")


def test_mixing_dtypes_in_concatenate_stack_where_raises():
    a = leaf(np.ones(2), np.float32)
    b = leaf(np.ones(2), np.float64)
    with pytest.raises(TypeError):
        concatenate([a, b])
    with pytest.raises(TypeError):
        stack([a, b])
    with pytest.raises(TypeError):
        where(np.array([True, False]), a, b)


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="float"):
        Tensor([1, 2, 3], requires_grad=True)
    with pytest.raises(TypeError):
        Tensor(np.array([True]), requires_grad=True)
    with pytest.raises(TypeError):
        Tensor(np.arange(3)).requires_grad_()
    assert Tensor([1.0]).requires_grad_().requires_grad


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
def test_comparisons_are_non_differentiable_bool_tensors(op):
    data = np.array([0.0, 0.5, 1.0])
    x = leaf(data, np.float64)
    for other in (0.5, np.array([1.0, 0.5, 0.0]), Tensor(np.array([1.0, 0.5, 0.0]))):
        out = eval(f"x {op} other")
        assert isinstance(out, Tensor)
        assert out.dtype == np.bool_ and not out.requires_grad and out._ctx is None
        raw = other.data if isinstance(other, Tensor) else other
        np.testing.assert_array_equal(out.data, eval(f"data {op} raw"))


# ---- errors name both shapes ------------------------------------------------------------------
@pytest.mark.parametrize("a_shape, b_shape", [((2, 3), (4, 5)), ((3,), (4, 2)), ((2, 3), (2,)),
                                              ((2, 3, 4), (5, 4, 2)), ((2, 2, 3), (3, 3, 4))])
def test_matmul_shape_mismatch_message_names_both_shapes(a_shape, b_shape):
    a, b = Tensor(np.ones(a_shape)), Tensor(np.ones(b_shape))
    with pytest.raises(ValueError) as info:
        a @ b
    assert str(a_shape) in str(info.value) and str(b_shape) in str(info.value)


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "**"])
def test_broadcast_mismatch_message_names_both_shapes(op):
    a, b = Tensor(np.ones((2, 3))), Tensor(np.ones((4,)))
    with pytest.raises(ValueError) as info:
        eval(f"a {op} b")
    assert "(2, 3)" in str(info.value) and "(4,)" in str(info.value)
    with pytest.raises(ValueError) as info:
        a + np.ones((3, 2))
    assert "(2, 3)" in str(info.value) and "(3, 2)" in str(info.value)


def test_bad_expand_and_permute_raise():
    x = Tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        x.expand(4, 3)
    with pytest.raises(ValueError):
        x.permute(0, 0)


# ---- Tensor API -------------------------------------------------------------------------------
def test_tensor_attributes():
    data = np.arange(6.0).reshape(2, 3)
    x = Tensor(data, requires_grad=True)
    assert x.shape == (2, 3) and x.dtype == np.float64 and x.ndim == 2 and x.size == 6
    assert len(x) == 2
    np.testing.assert_array_equal(x.numpy(), data)
    assert isinstance(x.numpy(), np.ndarray)
    assert x.sum().item() == 15.0 and isinstance(x.sum().item(), float)
    assert x.is_leaf and not (x * 2.0).is_leaf


def test_detach_stops_gradient():
    x = Tensor(np.array([2.0, 3.0]), requires_grad=True)
    d = x.detach()
    assert not d.requires_grad and d._ctx is None
    np.testing.assert_array_equal(d.data, x.data)
    (d * x).sum().backward()  # only the x path counts: grad = d = x
    np.testing.assert_array_equal(x.grad, [2.0, 3.0])
    y = x * 5.0
    (y.detach() * y).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 3.0] + 5.0 * 5.0 * np.array([2.0, 3.0]))


def test_zero_grad():
    x = Tensor(np.array([1.0]), requires_grad=True)
    (x * 4.0).sum().backward()
    assert x.grad is not None
    x.zero_grad()
    assert x.grad is None


def test_repr_contains_values_and_dtype():
    x = Tensor(np.array([1.25, -3.5]), requires_grad=True)
    text = repr(x)
    assert "1.25" in text and "-3.5" in text and "float64" in text
    text = repr(x * 2.0)
    assert "2.5" in text and "-7." in text and "float64" in text
    assert "float32" in repr(Tensor([0.5]))
    big = repr(Tensor(np.zeros((100, 100), dtype=np.float32)))
    assert len(big) < 500 and "float32" in big


def test_keep_freed_memory_stops_page_faults_on_reallocation():
    import resource
    from tinygrad_llama.backend import keep_freed_memory
    if not keep_freed_memory():
        pytest.skip("the allocator is not glibc's")

    def cycle():  # a step's worth of arrays, all freed at the end (glibc trims them by default)
        arrays = [np.ones(1 << 20, dtype=np.float32) for _ in range(4)]
        del arrays

    cycle()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        cycle()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 20 * 4 * 1024 // 10  # ~40,000 under glibc's defaults: 1024 per fresh 4 MiB
