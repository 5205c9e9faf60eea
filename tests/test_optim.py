"""Optimizers, gradient clipping and the learning-rate schedule, against closed forms in plain NumPy."""
import math

import numpy as np
import pytest

from tinygrad_llama.tensor import Tensor
from tinygrad_llama.optim import AdamW, SGD, clip_grad_norm, cosine_schedule


def make_params(dtype=np.float32, seed=0):
    """A matrix, an embedding-like matrix and a 1-D norm scale, as (name, Tensor) pairs."""
    rng = np.random.default_rng(seed)
    shapes = {"attn.wq": (4, 3), "tok_emb": (5, 2), "norm.weight": (3,)}
    return [(n, Tensor(rng.standard_normal(s).astype(dtype), requires_grad=True))
            for n, s in shapes.items()]


def grads_for(step, params, dtype=np.float32):
    rng = np.random.default_rng(100 + step)
    return {n: rng.standard_normal(p.shape).astype(dtype) for n, p in params}


def reference_adamw(p0, grads, lr, b1, b2, eps, wd, decay):
    """Closed form for one parameter over len(grads) steps, in float64."""
    p = p0.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * (m_hat / (np.sqrt(v_hat) + eps) + (wd * p if decay else 0.0))
    return p


def run_steps(opt, params, steps, start=0):
    for s in range(start, start + steps):
        for n, p in params:
            p.grad = grads_for(s, params)[n]
        opt.step()


# ---- AdamW --------------------------------------------------------------------------------------
# eps = 0.3 is as large as the gradients: where eps enters the update (after the bias correction
# of v) then shows in float64 at 1e-12, which a tiny eps would hide
@pytest.mark.parametrize("dtype, eps, tol", [(np.float32, 1e-8, 1e-5), (np.float64, 0.3, 1e-12)])
def test_adamw_matches_closed_form_with_bias_correction_and_decay_rule(dtype, eps, tol):
    params = make_params(dtype)
    initial = {n: p.data.copy() for n, p in params}
    lr, betas, wd = 1e-2, (0.9, 0.95), 0.1
    opt = AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    run_steps(opt, params, 3)
    for n, p in params:
        expected = reference_adamw(initial[n], [grads_for(s, params)[n] for s in range(3)],
                                   lr, *betas, eps, wd, decay=p.ndim >= 2)
        np.testing.assert_allclose(p.data, expected, rtol=tol, atol=tol, err_msg=n)


def test_adamw_norm_scale_is_not_decayed_but_matrices_are():
    params = make_params()
    initial = {n: p.data.copy() for n, p in params}
    opt = AdamW(params, lr=0.1, weight_decay=0.5)
    for _, p in params:
        p.grad = np.zeros(p.shape, np.float32)  # zero grad: only decay can move a parameter
    opt.step()
    for n, p in params:
        if p.ndim >= 2:
            np.testing.assert_allclose(p.data, initial[n] * (1 - 0.1 * 0.5), rtol=1e-6)
        else:
            np.testing.assert_array_equal(p.data, initial[n])
    assert opt.decayed == [True, True, False]


def test_adamw_no_decay_override_replaces_the_ndim_rule():
    params = make_params()
    initial = {n: p.data.copy() for n, p in params}
    opt = AdamW(params, lr=0.1, weight_decay=0.5, no_decay={"tok_emb"})
    for _, p in params:
        p.grad = np.zeros(p.shape, np.float32)
    opt.step()
    d = dict(params)
    np.testing.assert_array_equal(d["tok_emb"].data, initial["tok_emb"])
    np.testing.assert_allclose(d["attn.wq"].data, initial["attn.wq"] * 0.95, rtol=1e-6)
    np.testing.assert_allclose(d["norm.weight"].data, initial["norm.weight"] * 0.95, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown"):
        AdamW(make_params(), lr=0.1, no_decay={"typo"})
    with pytest.raises(ValueError, match="named_parameters"):
        AdamW([p for _, p in make_params()], lr=0.1, no_decay={"param0"})


def test_adamw_accepts_plain_tensor_list():
    params = make_params()
    initial = {n: p.data.copy() for n, p in params}
    opt = AdamW([p for _, p in params], lr=1e-2)
    run_steps(opt, params, 2)
    for n, p in params:
        expected = reference_adamw(initial[n], [grads_for(s, params)[n] for s in range(2)],
                                   1e-2, 0.9, 0.95, 1e-8, 0.1, decay=p.ndim >= 2)
        np.testing.assert_allclose(p.data, expected, rtol=1e-5, atol=1e-6)


def test_lr_can_be_changed_between_steps():
    params = make_params()
    (name, p), = params[:1]
    p0 = p.data.copy()
    opt = AdamW(params, lr=1.0, weight_decay=0.0)
    lrs = [1e-2, 3e-3]
    m = np.zeros(p.shape)
    v = np.zeros(p.shape)
    expected = p0.astype(np.float64)
    for s, lr in enumerate(lrs):
        opt.lr = lr
        run_steps(opt, params, 1, start=s)
        g = grads_for(s, params)[name].astype(np.float64)
        m = 0.9 * m + 0.1 * g
        v = 0.95 * v + 0.05 * g * g
        t = s + 1
        expected = expected - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.95 ** t)) + 1e-8)
    np.testing.assert_allclose(p.data, expected, rtol=1e-5, atol=1e-6)


def test_optimizer_never_modifies_gradients():
    params = make_params()
    for opt in (AdamW(params, lr=0.1), SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1)):
        for s in range(2):
            grads = grads_for(s, params)
            for n, p in params:
                p.grad = grads[n]
            held = {n: p.grad for n, p in params}
            before = {n: p.grad.copy() for n, p in params}
            opt.step()
            for n, p in params:
                assert p.grad is held[n]  # not rebound
                np.testing.assert_array_equal(p.grad, before[n])  # not written to


def test_params_are_views_of_one_flat_buffer_and_engine_still_works():
    params = make_params()
    opt = AdamW(params, lr=0.1)
    for _, p in params:
        assert np.shares_memory(p.data, opt.flat)
    assert opt.flat.size == sum(p.size for _, p in params)
    # the engine computes with the views and fills in grads
    w = dict(params)["attn.wq"]
    x = Tensor(np.ones((2, 4), np.float32))
    loss = (x @ w).sum()
    loss.backward()
    np.testing.assert_allclose(w.grad, np.full((4, 3), 2.0, np.float32))
    before = w.data.copy()
    opt.step()
    assert not np.array_equal(w.data, before)  # the update shows through the view
    # writing into the flat buffer shows in p.data, and vice versa
    opt.flat[:] = 7.0
    assert np.all(w.data == 7.0)


def test_rebinding_param_data_is_picked_up_at_next_step():
    params = make_params()
    opt = SGD(params, lr=0.5)
    w = dict(params)["attn.wq"]
    new = np.full((4, 3), 3.0, np.float32)
    w.data = new  # e.g. weights loaded by assignment
    for _, p in params:
        p.grad = np.ones(p.shape, np.float32)
    opt.step()
    np.testing.assert_allclose(w.data, 2.5)
    assert np.shares_memory(w.data, opt.flat)
    np.testing.assert_array_equal(new, 3.0)  # the given array itself was only read


def test_float32_stays_float32_and_float64_stays_float64():
    for dtype in (np.float32, np.float64):
        params = make_params(dtype)
        for opt in (AdamW(params, lr=np.float64(0.01)), SGD(params, lr=0.01, momentum=0.9,
                                                            weight_decay=0.1)):
            for s in range(3):
                for n, p in params:
                    p.grad = grads_for(s, params, dtype)[n]
                opt.step()
            for _, p in params:
                assert p.data.dtype == dtype
            for buf in ("flat", "m", "v", "buf"):
                if getattr(opt, buf, None) is not None:
                    assert getattr(opt, buf).dtype == dtype


def test_missing_grad_counts_as_zero_gradient():
    params = make_params()
    ref_params = make_params()
    opt = AdamW(params, lr=0.1)
    ref = AdamW(ref_params, lr=0.1)
    for s in range(2):
        g = grads_for(s, params)
        for (n, p), (_, q) in zip(params, ref_params):
            p.grad = None if n == "norm.weight" else g[n]
            q.grad = np.zeros(q.shape, np.float32) if n == "norm.weight" else g[n]
        opt.step()
        ref.step()
    for (_, p), (_, q) in zip(params, ref_params):
        np.testing.assert_array_equal(p.data, q.data)


def test_zero_grad_sets_none():
    params = make_params()
    opt = AdamW(params, lr=0.1)
    for _, p in params:
        p.grad = np.ones(p.shape, np.float32)
    opt.zero_grad()
    assert all(p.grad is None for _, p in params)


def test_frozen_and_tied_parameters():
    params = make_params()
    frozen = Tensor(np.ones((2, 2), np.float32))
    tied = params[0][1]
    opt = AdamW(params + [("frozen", frozen), ("lm_head", tied)], lr=0.1)
    assert opt.names == ["attn.wq", "tok_emb", "norm.weight"]
    assert opt.numel == 12 + 10 + 3


def test_errors():
    params = make_params()
    with pytest.raises(ValueError, match="empty"):
        AdamW([], lr=0.1)
    with pytest.raises(TypeError, match="one floating dtype"):
        AdamW([Tensor(np.ones(2, np.float32), requires_grad=True),
               Tensor(np.ones(2, np.float64), requires_grad=True)], lr=0.1)
    opt = AdamW(params, lr=0.1)
    params[0][1].grad = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="attn.wq"):
        opt.step()


def test_adamw_state_dict_round_trip_gives_identical_updates():
    params = make_params()
    opt = AdamW(params, lr=1e-2)
    run_steps(opt, params, 2)
    state = opt.state_dict()
    saved_params = {n: p.data.copy() for n, p in params}
    assert state["step"] == 2 and isinstance(state["step"], int)
    for v in state.values():
        assert isinstance(v, (int, float, np.ndarray))
    run_steps(opt, params, 2, start=2)
    after = {n: p.data.copy() for n, p in params}

    params2 = [(n, Tensor(saved_params[n].copy(), requires_grad=True)) for n, _ in params]
    opt2 = AdamW(params2, lr=0.5, weight_decay=0.0)  # hyperparameters come back from the state
    opt2.load_state_dict(state)
    run_steps(opt2, params2, 2, start=2)
    for n, p in params2:
        np.testing.assert_array_equal(p.data, after[n])

    # the state_dict is a snapshot: later steps did not change it
    assert state["step"] == 2
    assert not np.array_equal(state["m"], opt.m)


def test_adamw_load_state_dict_shape_mismatch():
    opt = AdamW(make_params(), lr=0.1)
    state = opt.state_dict()
    other = AdamW([("w", Tensor(np.ones((2, 2), np.float32), requires_grad=True))], lr=0.1)
    with pytest.raises(ValueError, match="sizes"):
        other.load_state_dict(state)
    bad = dict(state, m=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="'m' has shape"):
        opt.load_state_dict(bad)
    with pytest.raises(KeyError, match="'v'"):
        opt.load_state_dict({k: x for k, x in state.items() if k != "v"})


# ---- SGD ----------------------------------------------------------------------------------------
def test_sgd_plain_closed_form():
    params = make_params()
    initial = {n: p.data.astype(np.float64) for n, p in params}
    opt = SGD(params, lr=0.1)
    run_steps(opt, params, 2)
    for n, p in params:
        expected = initial[n] - 0.1 * sum(grads_for(s, params)[n] for s in range(2))
        np.testing.assert_allclose(p.data, expected, rtol=1e-5, atol=1e-6)


def test_sgd_momentum_and_decay_closed_form():
    params = make_params()
    initial = {n: p.data.copy() for n, p in params}
    lr, mu, wd = 0.05, 0.9, 0.01
    opt = SGD(params, lr=lr, momentum=mu, weight_decay=wd)
    run_steps(opt, params, 3)
    for n, p in params:
        q = initial[n].astype(np.float64)
        buf = np.zeros_like(q)
        for s in range(3):
            g = grads_for(s, params)[n].astype(np.float64)
            if q.ndim >= 2:
                g = g + wd * q
            buf = mu * buf + g
            q = q - lr * buf
        np.testing.assert_allclose(p.data, q, rtol=1e-5, atol=1e-6, err_msg=n)


def test_sgd_state_dict_round_trip():
    params = make_params()
    opt = SGD(params, lr=0.05, momentum=0.9)
    run_steps(opt, params, 2)
    state = opt.state_dict()
    saved = {n: p.data.copy() for n, p in params}
    run_steps(opt, params, 2, start=2)
    params2 = [(n, Tensor(saved[n].copy(), requires_grad=True)) for n, _ in params]
    opt2 = SGD(params2, lr=0.05, momentum=0.9)
    opt2.load_state_dict(state)
    run_steps(opt2, params2, 2, start=2)
    for (n, p), (_, q) in zip(params, params2):
        np.testing.assert_array_equal(p.data, q.data)


# ---- clip_grad_norm -----------------------------------------------------------------------------
def test_clip_grad_norm_returns_preclip_norm_and_clips_in_place():
    params = make_params()
    grads = grads_for(0, params)
    for n, p in params:
        p.grad = grads[n] * 10
    held = {n: p.grad for n, p in params}
    expected = math.sqrt(sum(float(np.sum((grads[n] * 10).astype(np.float64) ** 2))
                             for n, _ in params))
    norm = clip_grad_norm(params, max_norm=1.0)
    assert isinstance(norm, float)
    assert norm == pytest.approx(expected, rel=1e-6)
    after = math.sqrt(sum(float(np.sum(p.grad.astype(np.float64) ** 2)) for _, p in params))
    assert after == pytest.approx(1.0, rel=1e-5)
    for n, p in params:
        assert p.grad is held[n] and p.grad.dtype == np.float32  # scaled in place


def test_clip_grad_norm_below_threshold_leaves_grads_alone():
    params = make_params()
    grads = grads_for(0, params)
    for n, p in params:
        p.grad = grads[n].copy()
    p_list = [p for _, p in params]
    p_list[2].grad = None  # None counts as zero
    norm = clip_grad_norm(p_list, max_norm=1e6)
    expected = math.sqrt(sum(float(np.sum(grads[n].astype(np.float64) ** 2))
                             for n, _ in params[:2]))
    assert norm == pytest.approx(expected, rel=1e-6)
    for n, p in params[:2]:
        np.testing.assert_array_equal(p.grad, grads[n])


def test_clip_grad_norm_nonfinite_norm_leaves_grads_alone():
    params = make_params()
    for _, p in params:
        p.grad = np.ones(p.shape, np.float32)
    params[0][1].grad[0, 0] = np.inf
    assert math.isinf(clip_grad_norm(params, 1.0))
    assert params[1][1].grad[0, 0] == 1.0


# ---- cosine_schedule ----------------------------------------------------------------------------
def test_cosine_schedule_values():
    kw = dict(max_lr=3e-4, warmup_steps=100, total_steps=1100)
    assert cosine_schedule(0, **kw) == pytest.approx(3e-4 / 100)
    assert cosine_schedule(49, **kw) == pytest.approx(3e-4 * 0.5)
    assert cosine_schedule(99, **kw) == pytest.approx(3e-4)          # warmup end
    assert cosine_schedule(100, **kw) == pytest.approx(3e-4)         # decay start
    assert cosine_schedule(600, **kw) == pytest.approx(3e-5 + 0.5 * (3e-4 - 3e-5))  # mid-decay
    assert cosine_schedule(1100, **kw) == pytest.approx(3e-5)        # end: 10% of max_lr
    assert cosine_schedule(5000, **kw) == pytest.approx(3e-5)        # constant afterwards
    assert cosine_schedule(600, min_lr=0.0, **kw) == pytest.approx(1.5e-4)
    lrs = [cosine_schedule(s, **kw) for s in range(100, 1101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))                  # monotone decay
    assert isinstance(cosine_schedule(10, **kw), float)
    assert cosine_schedule(0, 1.0, 0, 10) == pytest.approx(1.0)       # no warmup
    with pytest.raises(ValueError):
        cosine_schedule(0, 1.0, 20, 10)
