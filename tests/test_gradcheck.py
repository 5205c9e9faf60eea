"""The checkers themselves: they pass right gradients and catch wrong ones (negative controls)."""
import numpy as np
import pytest

from tinygrad_llama import Function, GradcheckError, Tensor, directional_gradcheck, gradcheck, where


class Sin(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return np.sin(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved
        return grad * np.cos(x)


class SinWrongSign(Sin):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved
        return -grad * np.cos(x)


class DoubledMul(Function):
    """a * b whose backward returns twice the right gradient."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved
        return 2 * grad * b, 2 * grad * a


class SquareWrongAtOneElement(Function):
    """x**2 whose gradient is wrong only at flat position 7 (index (1, 3) of a (2, 4) input)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved
        g = 2 * x * grad
        g.reshape(-1)[7] += 0.5
        return g


def leaf(array):
    return Tensor(np.array(array, dtype=np.float64), requires_grad=True)


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_correct_custom_function_passes():
    x = leaf(rand((3, 2)))
    assert gradcheck(lambda t: Sin.apply(t), [x])
    assert directional_gradcheck(lambda t: Sin.apply(t), [x])


def test_sign_flipped_sin_is_caught():
    x = leaf(rand((3, 2)))
    with pytest.raises(GradcheckError, match="input 0") as info:
        gradcheck(lambda t: SinWrongSign.apply(t), [x])
    assert "index (" in str(info.value)
    with pytest.raises(GradcheckError):
        directional_gradcheck(lambda t: SinWrongSign.apply(t), [x])


def test_doubled_gradient_is_caught_and_names_the_input():
    a, b = leaf(rand((2, 3), 1)), leaf(rand((2, 3), 2))
    # a constant first input that does not require grad: the error must still say "input 1"
    c = Tensor(np.ones((2, 3)))
    with pytest.raises(GradcheckError, match="input 1"):
        gradcheck(lambda c, b: DoubledMul.apply(c, b), [c, b])
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda a, b: DoubledMul.apply(a, b), [a, b])
    with pytest.raises(GradcheckError):
        directional_gradcheck(lambda a, b: DoubledMul.apply(a, b), [a, b])


def test_error_names_the_wrong_index():
    x = leaf(rand((2, 4), 3))
    k = Tensor(np.ones(3))
    with pytest.raises(GradcheckError) as info:
        gradcheck(lambda k, x: SquareWrongAtOneElement.apply(x) * 1.0, [k, x])
    message = str(info.value)
    assert "input 1" in message and "(1, 3)" in message and "(2, 4)" in message
    with pytest.raises(GradcheckError):
        directional_gradcheck(lambda k, x: SquareWrongAtOneElement.apply(x), [k, x])


def test_gradcheck_refuses_float32():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda t: t * 2.0, [x])
    with pytest.raises(TypeError, match="float64"):
        directional_gradcheck(lambda t: t * 2.0, [x])


def test_gradcheck_needs_something_to_check():
    with pytest.raises(ValueError):
        gradcheck(lambda t: t * 2.0, [Tensor(np.ones(3))])
    with pytest.raises(TypeError):
        gradcheck(lambda t: t * 2.0, [np.ones(3)])


def test_gradcheck_leaves_inputs_and_grads_as_they_were():
    data = rand((3, 3), 4)
    x = leaf(data)
    x.grad = np.full((3, 3), 7.0)
    assert gradcheck(lambda t: (t * t).tanh(), [x])
    assert directional_gradcheck(lambda t: (t * t).tanh(), [x])
    np.testing.assert_array_equal(x.data, data)
    np.testing.assert_array_equal(x.grad, np.full((3, 3), 7.0))


def test_gradcheck_handles_non_contiguous_inputs():
    base = rand((4, 3), 5)
    x = Tensor(base.T, requires_grad=True)  # a transposed view
    assert gradcheck(lambda t: (t @ t.T).sum(axis=0), [x])
    np.testing.assert_array_equal(base, rand((4, 3), 5))  # the caller's array is not touched


def _composed(x, w, b, scale, mask):
    h = (x @ w + b).silu()
    z = where(mask, h, h * 0.1).log_softmax(axis=-1)
    return (z * scale).sum(axis=1) + (x.exp().mean(axis=0, keepdims=True) ** 2.0).max()


def test_directional_gradcheck_on_composed_function_with_several_inputs():
    rng = np.random.default_rng(6)
    x = leaf(rng.standard_normal((2, 3, 4)))
    w = leaf(rng.standard_normal((4, 5)))
    b = leaf(rng.standard_normal(5))
    scale = Tensor(rng.uniform(0.5, 2.0, size=(1, 5)))  # a constant input
    mask = rng.random((3, 5)) < 0.5
    assert directional_gradcheck(lambda x, w, b, s: _composed(x, w, b, s, mask), [x, w, b, scale])
    assert gradcheck(lambda x, w, b, s: _composed(x, w, b, s, mask), [x, w, b, scale])


def test_directional_gradcheck_catches_a_wrong_gradient_in_one_of_several_inputs():
    rng = np.random.default_rng(7)
    x, w = leaf(rng.standard_normal((3, 4))), leaf(rng.standard_normal((4, 4)))

    def f(x, w):
        return SinWrongSign.apply(x @ w).sum(axis=0) + (w * w).mean()

    with pytest.raises(GradcheckError, match="analytic"):
        directional_gradcheck(f, [x, w])
    with pytest.raises(GradcheckError):
        gradcheck(f, [x, w])
