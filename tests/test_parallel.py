"""The thread pool: every task runs once, errors come back, and results do not depend on the
number of workers (products, the fused layers and a whole training step, bit for bit)."""
import threading

import numpy as np
import pytest

from tinygrad_llama import functional as F, parallel
from tinygrad_llama.model import Llama, LlamaConfig
from tinygrad_llama.optim import AdamW, clip_grad_norm
from tinygrad_llama.tensor import Tensor


@pytest.fixture
def workers():
    """Set the worker count inside a test; the original count comes back afterwards."""
    before = parallel.num_workers()
    yield parallel.set_num_workers
    parallel.set_num_workers(before)


@pytest.mark.parametrize("n_workers", [1, 2, 3])
@pytest.mark.parametrize("n_tasks", [0, 1, 2, 7, 50])
def test_run_tasks_runs_every_task_once(workers, n_workers, n_tasks):
    workers(n_workers)
    seen, lock = [], threading.Lock()

    def task(i):
        with lock:
            seen.append(i)

    parallel.run_tasks(task, n_tasks)
    assert sorted(seen) == list(range(n_tasks))


@pytest.mark.parametrize("n_workers", [1, 2])
def test_run_tasks_reraises_and_waits_for_started_tasks(workers, n_workers):
    workers(n_workers)
    finished = []

    def task(i):
        if i == 3:
            raise ValueError("task 3 failed")
        finished.append(i)

    with pytest.raises(ValueError, match="task 3 failed"):
        parallel.run_tasks(task, 20)
    assert 3 not in finished
    if n_workers == 1:
        assert finished == [0, 1, 2]  # in order, and nothing after the failure
    else:
        assert len(finished) < 19  # the other thread stops taking tasks soon after


def test_row_blocks_cover_the_rows_and_depend_on_the_row_count_only(workers):
    for n in (1, 255, 256, 511, 512, 1000, 2048, 5000):
        blocks = parallel.row_blocks(n)
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
        assert all(hi - lo >= min(n, 256) for lo, hi in blocks)
        workers(1)
        one = parallel.row_blocks(n)
        workers(2)
        assert parallel.row_blocks(n) == one == blocks


def test_matmul_many_matches_numpy_for_any_worker_count(workers):
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32))
             for m, k, n in [(512, 64, 96), (100, 30, 7), (1024, 16, 16), (1, 5, 3)]]
    pairs.append((pairs[0][0].T, rng.standard_normal((512, 40), dtype=np.float32)))  # a transposed view
    results = {}
    for n_workers in (1, 2, 3):
        workers(n_workers)
        results[n_workers] = parallel.matmul_many(pairs)
    for (a, b), out in zip(pairs, results[1]):
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    for n_workers in (2, 3):
        for one, many in zip(results[1], results[n_workers]):
            assert np.array_equal(one, many)


def _training_step(n_workers):
    parallel.set_num_workers(n_workers)
    config = LlamaConfig(vocab_size=50, dim=64, n_layers=2, n_heads=4, max_seq_len=64)
    model = Llama(config, seed=1)
    opt = AdamW(model.named_parameters(), lr=1e-3)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 50, size=(12, 48))  # 576 tokens: two row blocks per product
    losses = []
    for _ in range(2):
        loss = model.loss(x[:, :-1], x[:, 1:])
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
    return losses, model.state_dict()


def test_training_steps_are_bit_identical_for_any_worker_count(workers):
    losses_1, state_1 = _training_step(1)
    losses_2, state_2 = _training_step(2)
    assert losses_1 == losses_2
    assert state_1.keys() == state_2.keys()
    for name in state_1:
        assert np.array_equal(state_1[name], state_2[name]), name


def test_attention_rows_redone_with_their_max_are_the_same_for_any_worker_count(workers):
    # 64 heads x 5 queries: the softmax shifts rows by the own key's score, and redoes with the
    # row max only the rows whose total overflows (head 3's here). With 2 or 3 workers the heads
    # are split, so one thread sees such a row and the others do not; the bits must not change.
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 64, T, 4)).astype(np.float32) for T in (5, 8, 8))
    q[0, 3, :, 0], k[0, 3, 0, 0] = 30.0, 30.0                  # head 3: key 0 scores ~450
    outs = {}
    for n_workers in (1, 2, 3):
        workers(n_workers)
        outs[n_workers] = F.causal_attention(Tensor(q), Tensor(k), Tensor(v)).data
    assert np.isfinite(outs[1]).all()
    np.testing.assert_allclose(outs[1][0, 3], np.broadcast_to(v[0, 3, 0], (5, 4)), rtol=1e-6)
    assert np.array_equal(outs[1], outs[2]) and np.array_equal(outs[1], outs[3])


# ---- products computed later (weight gradients) ---------------------------------------------------
@pytest.mark.parametrize("n_workers", [1, 2])
def test_matmul_later_gives_the_product_after_wait_later(workers, n_workers):
    workers(n_workers)
    rng = np.random.default_rng(4)
    pairs = [(rng.standard_normal((300, 200), dtype=np.float32), rng.standard_normal((200, 100), dtype=np.float32))
             for _ in range(4)]
    outs = [parallel.matmul_later(a, b) for a, b in pairs]
    if n_workers == 1:
        assert not any(parallel.pending(o) for o in outs)  # computed right away
    parallel.wait_later()
    assert not any(parallel.pending(o) for o in outs)
    for (a, b), out in zip(pairs, outs):
        assert np.array_equal(out, a @ b)


def test_small_work_stays_in_the_calling_thread(workers):
    # below parallel.HANDOFF_FLOP a hand-off costs more than the work: no pool thread is used
    workers(2)
    small = parallel.matmul_later(np.ones((64, 64), np.float32), np.ones((64, 64), np.float32))
    assert not parallel.pending(small)
    assert np.array_equal(small, np.full((64, 64), 64.0, np.float32))
    threads = set()
    parallel.run_tasks(lambda i: threads.add(threading.get_ident()), 8, max_workers=1)
    assert threads == {threading.get_ident()}


def test_wait_later_reraises_a_failed_product(workers):
    workers(2)
    # big enough to be handed to the pool (parallel.HANDOFF_FLOP), so the error comes later
    bad = parallel.matmul_later(np.ones((200, 300), np.float32), np.ones((400, 100), np.float32))
    assert bad.shape == (200, 100)
    with pytest.raises(ValueError):
        parallel.wait_later()
    parallel.wait_later()  # nothing left over


def _gradients(n_workers, build):
    """Gradients of sum(build(x, w) * u) with respect to x and w, with n_workers threads."""
    from tinygrad_llama.tensor import Tensor
    parallel.set_num_workers(n_workers)
    rng = np.random.default_rng(6)
    x = Tensor(rng.standard_normal((600, 64)), requires_grad=True)   # 600 rows: several blocks
    w = Tensor(rng.standard_normal((64, 64)), requires_grad=True)     # dW: 4.9 MFLOP, on the pool
    y = build(x, w)
    y.backward(rng.standard_normal(y.shape))
    assert not parallel.pending(w.grad)
    return x.grad, w.grad


@pytest.mark.parametrize("build", [
    lambda x, w: F.linear(F.linear(x, w), w),              # one weight, two gradients to add up
    lambda x, w: F.linear(x, w * 2.0),                     # the weight gradient flows on to Mul
    lambda x, w: F.linear(x, (w * 1.0).retain_grad()),     # ... and is kept on a non-leaf
], ids=["shared", "through-an-op", "retained"])
def test_weight_gradients_computed_later_are_waited_for(workers, build):
    one = _gradients(1, build)
    two = _gradients(2, build)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)
