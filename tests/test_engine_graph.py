"""Engine properties: the backward walk, accumulation, graph release, memory, no_grad, aliasing."""
import gc
import sys
import tracemalloc
import weakref

import numpy as np
import pytest

from tinygrad_llama import Tensor, gradcheck, is_grad_enabled, no_grad


def leaf(values, dtype=np.float64):
    return Tensor(np.array(values, dtype=dtype), requires_grad=True)


def live_tensors():
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, Tensor))


# ---- the walk ---------------------------------------------------------------------------------
def test_chain_of_10000_ops_backward_without_recursion_error():
    assert sys.getrecursionlimit() < 10_000  # a recursive walk would overflow
    x = leaf([0.5, 2.0])
    y = x
    for i in range(10_000):
        y = y * 1.0001 if i % 2 else y + 0.001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0001 ** 5000] * 2, rtol=1e-10)
    np.testing.assert_allclose(y.data, 1.0001 ** 5000 * x.data
                               + 0.001 * sum(1.0001 ** k for k in range(1, 5001)), rtol=1e-10)


def test_diamond_graph_matches_closed_form():
    x0 = np.array([-0.7, 0.1, 0.9])
    x = leaf(x0)
    y = x.exp()               # f
    z = y.tanh() + y * y      # g(y) + h(y)
    z.sum().backward()
    ey = np.exp(x0)
    np.testing.assert_allclose(x.grad, ((1 - np.tanh(ey) ** 2) + 2 * ey) * ey, rtol=1e-12)


@pytest.mark.parametrize("order", ["skip_first", "skip_last"])
def test_residual_connection_matches_closed_form(order):
    """y + f(y): the direct input of the sum is also an input of the other branch."""
    x0 = np.array([0.3, -1.2])
    x = leaf(x0)
    y = x * 2.0
    z = y + y.exp() if order == "skip_first" else y.exp() + y
    z.sum().backward()
    np.testing.assert_allclose(x.grad, 2.0 * (1.0 + np.exp(2.0 * x0)), rtol=1e-12)


def test_deep_residual_stack_gradcheck():
    rng = np.random.default_rng(0)
    x = leaf(rng.standard_normal((2, 3)))
    ws = [leaf(rng.standard_normal((3, 3)) * 0.3) for _ in range(4)]

    def net(x, *ws):
        for w in ws:
            x = x + (x @ w).tanh()
        return x

    assert gradcheck(net, [x, *ws])


def test_x_plus_x_and_x_times_x():
    x = leaf([1.5, -2.0])
    (x + x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0])
    x.zero_grad()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, -4.0])
    x.zero_grad()
    (x * x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 3 * np.array([1.5, -2.0]) ** 2)


def test_gradients_accumulate_until_zero_grad():
    x = leaf([1.0, 2.0])
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0 + 2.0, 3.0 + 4.0])
    x.zero_grad()
    assert x.grad is None
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


def test_nonscalar_backward_needs_upstream_gradient():
    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match="upstream gradient"):
        (x * 2.0).backward()
    y = x * 2.0
    with pytest.raises(ValueError, match="shape"):
        y.backward(np.ones(3))
    y.backward(np.array([1.0, 10.0]))
    np.testing.assert_array_equal(x.grad, [2.0, 20.0])


def test_backward_through_tensor_not_requiring_grad_raises():
    x = Tensor(np.array([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="does not require grad"):
        (x * 2.0).sum().backward()
    y = leaf([1.0])
    with no_grad():
        z = (y * 2.0).sum()
    with pytest.raises(RuntimeError, match="does not require grad"):
        z.backward()


def test_backward_twice_through_released_graph_raises():
    x = leaf([1.0, 2.0])
    loss = (x * x).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="retain_graph"):
        loss.backward()
    # a new graph built on top of a released one cannot reach the leaves either
    y = x * 2.0
    y.sum().backward()
    with pytest.raises(RuntimeError, match="released"):
        (y * 1.0).sum().backward()


def test_backward_twice_with_retain_graph():
    x = leaf([1.0, 2.0])
    loss = (x * x).exp().sum()
    loss.backward(retain_graph=True)
    first = x.grad.copy()
    loss.backward(retain_graph=True)
    np.testing.assert_allclose(x.grad, 2 * first)
    loss.backward()  # releases now
    np.testing.assert_allclose(x.grad, 3 * first)
    with pytest.raises(RuntimeError):
        loss.backward()


# ---- releasing the graph and memory -----------------------------------------------------------
def _loss_with_intermediates(x, w, refs):
    h = x @ w           # intermediate tensors, referenced only by the graph once we return
    a = h.tanh()
    b = a * a
    refs.extend(weakref.ref(arr) for arr in (h.data, a.data, b.data))
    return b.mean()


@pytest.mark.parametrize("retain", [False, True])
def test_graph_released_after_backward(retain):
    x, w = leaf(np.ones((3, 4))), leaf(np.full((4, 2), 0.1))
    refs = []
    loss = _loss_with_intermediates(x, w, refs)
    baseline = 3  # x, w, loss
    gc.collect()
    assert all(r() is not None for r in refs)  # held by the graph until backward
    assert live_tensors() >= baseline + 3
    loss.backward(retain_graph=retain)
    gc.collect()
    if retain:
        assert all(r() is not None for r in refs)
    else:
        assert all(r() is None for r in refs), "intermediate arrays survived backward()"
    assert x.grad is not None and w.grad is not None and loss.data is not None


def test_graph_released_count_of_live_tensors():
    x, w = leaf(np.ones((3, 4))), leaf(np.full((4, 2), 0.1))
    before = live_tensors()
    loss = _loss_with_intermediates(x, w, [])
    assert live_tensors() > before + 1
    loss.backward()
    assert live_tensors() == before + 1  # only the loss itself is new


def test_no_memory_growth_over_training_like_loop():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((16, 4)).astype(np.float32))
    y = Tensor(rng.standard_normal((16, 1)).astype(np.float32))
    params = [Tensor(rng.standard_normal(s).astype(np.float32) * 0.3, requires_grad=True)
              for s in [(4, 8), (8,), (8, 1)]]

    def step():
        w1, b1, w2 = params
        pred = ((x @ w1 + b1).relu() @ w2).tanh()
        loss = ((pred - y) ** 2).mean()
        loss.backward()
        for p in params:
            p.data -= np.float32(0.01) * p.grad
            p.zero_grad()
        return loss.item()

    first_loss = step()
    for _ in range(20):
        step()  # warm up caches (NumPy, tracemalloc)
    tensors_before = live_tensors()
    tracemalloc.start()
    try:
        for _ in range(200):
            step()
        gc.collect()
        mid, _ = tracemalloc.get_traced_memory()
        for _ in range(780):
            last_loss = step()
        gc.collect()
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert live_tensors() == tensors_before
    assert end - mid < 20_000, f"memory grew by {end - mid} bytes over 780 steps"
    assert last_loss < first_loss  # the loop really trains


def test_intermediate_grads_not_stored_unless_retained():
    x = leaf([1.0, -2.0, 3.0])
    h = x * 3.0
    k = (x * 2.0).retain_grad()
    loss = (h * h).sum() + (k * k * k).sum()
    loss.backward()
    assert h.grad is None and loss.grad is None
    np.testing.assert_allclose(k.grad, 3 * (2.0 * x.data) ** 2)
    np.testing.assert_allclose(x.grad, 2 * 9.0 * x.data + 2.0 * 3 * (2.0 * x.data) ** 2)
    assert not np.shares_memory(k.grad, x.grad)


def test_no_grad_records_no_graph_and_restores_mode():
    x = leaf([1.0, 2.0])
    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        y = (x * 2.0).exp().sum()
    assert not y.requires_grad and y._ctx is None
    assert is_grad_enabled()
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            1 / 0
    assert is_grad_enabled()
    with no_grad():
        with no_grad():
            pass
        assert not is_grad_enabled()
    assert is_grad_enabled()
    z = x * 2.0
    assert z.requires_grad and z._ctx is not None


# ---- gradient aliasing ------------------------------------------------------------------------
def _assert_independent(a, b):
    """Writing into one gradient must change neither the other nor anything else."""
    assert a.flags.writeable and b.flags.writeable
    b_before = b.copy()
    a += 100.0
    np.testing.assert_array_equal(b, b_before)
    assert not np.shares_memory(a, b)


@pytest.mark.parametrize("backward", ["scalar", "upstream"])
def test_add_grads_do_not_alias(backward):
    x, y = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    z = x + y
    u = np.array([1.0, 1.0])
    if backward == "scalar":
        z.sum().backward()
    else:
        z.backward(u)
        assert not np.shares_memory(u, x.grad) and not np.shares_memory(u, y.grad)
    _assert_independent(x.grad, y.grad)
    _assert_independent(y.grad, x.grad)
    np.testing.assert_array_equal(u, [1.0, 1.0])


def test_broadcast_and_expand_grads_do_not_alias():
    x, y = leaf(np.ones((3, 4))), leaf(np.ones(4))
    z = x + y
    z.backward(np.ones((3, 4)))
    np.testing.assert_array_equal(y.grad, [3.0] * 4)
    _assert_independent(x.grad, y.grad)
    a, b = leaf(np.ones((1, 4))), leaf(np.ones((3, 4)))
    (a.expand(3, 4) + b).sum().backward()
    np.testing.assert_array_equal(a.grad, [[3.0] * 4])
    _assert_independent(b.grad, a.grad)
    _assert_independent(a.grad, b.grad)
    c = leaf(np.ones((3, 4)))
    (c.expand(3, 4) + c).sum().backward()  # same-shape expand hands the gradient through
    np.testing.assert_array_equal(c.grad, np.full((3, 4), 2.0))


def test_reshape_passthrough_grads_do_not_alias():
    x, y = leaf(np.ones((2, 3))), leaf(np.ones(6))
    u = np.arange(6.0)
    (x.reshape(6) + y).backward(u)
    np.testing.assert_array_equal(x.grad, u.reshape(2, 3))
    _assert_independent(x.grad, y.grad)
    _assert_independent(y.grad, x.grad)
    np.testing.assert_array_equal(u, np.arange(6.0))
    p = leaf(np.ones((2, 3)))
    q = p.reshape(3, 2).retain_grad()
    q.T.sum().backward()
    _assert_independent(p.grad, q.grad)


def test_accumulation_does_not_write_into_upstream_or_other_grads():
    x = leaf([1.0, 2.0])
    u = np.array([5.0, 7.0])
    x.backward(u)  # backward on a leaf itself
    x.backward(u)
    np.testing.assert_array_equal(x.grad, [10.0, 14.0])
    np.testing.assert_array_equal(u, [5.0, 7.0])
    a, b = leaf([1.0]), leaf([2.0])
    (a + b).sum().backward()
    (a + b).sum().backward()
    np.testing.assert_array_equal(a.grad, [2.0])
    np.testing.assert_array_equal(b.grad, [2.0])
