"""The Llama model on tiny configurations: Meta's parameter layout, configuration checks, the loss
at initialisation, overfitting one batch, causality, whole-model gradient checks, cached generation
against recomputation, sampling, state dicts and bit-exact save/load/continue."""
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinygrad_llama import functional as F
from tinygrad_llama.checkpoint import save_checkpoint, load_checkpoint, rng_state_to_json, rng_from_json
from tinygrad_llama.gradcheck import GradcheckError, directional_gradcheck
from tinygrad_llama.model import Llama, LlamaConfig, sample_next
from tinygrad_llama.optim import AdamW, clip_grad_norm
from tinygrad_llama.tensor import is_grad_enabled


def tiny(**overrides):
    settings_ = dict(vocab_size=24, dim=16, n_layers=2, n_heads=4, n_kv_heads=4, multiple_of=8,
                     max_seq_len=12)
    settings_.update(overrides)
    return LlamaConfig(**settings_)


def tokens(rng, vocab, B, T):
    return rng.integers(0, vocab, size=(B, T))


def scaled(model, std, seed=0):
    """Replace every weight by N(0, std^2) draws (norm scales stay 1): a model whose outputs vary
    clearly with the input, unlike the near-uniform one at initialisation."""
    rng = np.random.default_rng(seed)
    model.load_state_dict({n: (a if n.endswith("norm.weight") else rng.standard_normal(a.shape) * std)
                           for n, a in model.state_dict().items()})
    return model


# ---- parameter layout -----------------------------------------------------------------------------
def expected_shapes(vocab, dim, n_layers, n_heads, n_kv_heads, multiple_of):
    head_dim = dim // n_heads
    hidden = int(2 * 4 * dim / 3)
    hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
    shapes = {"tok_embeddings.weight": (vocab, dim)}
    for i in range(n_layers):
        p = f"layers.{i}."
        shapes.update({
            p + "attention.wq.weight": (n_heads * head_dim, dim),
            p + "attention.wk.weight": (n_kv_heads * head_dim, dim),
            p + "attention.wv.weight": (n_kv_heads * head_dim, dim),
            p + "attention.wo.weight": (dim, n_heads * head_dim),
            p + "feed_forward.w1.weight": (hidden, dim),
            p + "feed_forward.w2.weight": (dim, hidden),
            p + "feed_forward.w3.weight": (hidden, dim),
            p + "attention_norm.weight": (dim,),
            p + "ffn_norm.weight": (dim,),
        })
    shapes.update({"norm.weight": (dim,), "output.weight": (vocab, dim)})
    return shapes, hidden


@pytest.mark.parametrize("vocab,dim,n_layers,n_heads,n_kv_heads,multiple_of", [
    (24, 16, 2, 4, 4, 8),     # hidden int(42.67)=42 -> 48
    (30, 20, 1, 2, 1, 32),    # hidden 53 -> 64; GQA with one kv head
    (20, 24, 2, 4, 2, 16),    # hidden 64 exactly; GQA 2 kv heads
    (32, 32, 1, 8, 4, 5),     # hidden 85 -> 85 (already a multiple of 5)
])
def test_parameter_names_and_shapes_are_metas(vocab, dim, n_layers, n_heads, n_kv_heads, multiple_of):
    cfg = LlamaConfig(vocab_size=vocab, dim=dim, n_layers=n_layers, n_heads=n_heads,
                      n_kv_heads=n_kv_heads, multiple_of=multiple_of, max_seq_len=8)
    model = Llama(cfg)
    got = {name: p.shape for name, p in model.named_parameters()}
    want, hidden = expected_shapes(vocab, dim, n_layers, n_heads, n_kv_heads, multiple_of)
    assert got == want
    assert cfg.ffn_hidden == hidden
    assert not any("bias" in name for name in got)
    assert model.num_parameters() == sum(math.prod(s) for s in want.values())


def test_n_kv_heads_defaults_to_n_heads():
    cfg = LlamaConfig(vocab_size=10, dim=16, n_layers=1, n_heads=4)
    assert cfg.n_kv_heads == 4


@pytest.mark.parametrize("kwargs,message", [
    (dict(dim=30, n_heads=4), "not divisible by n_heads"),
    (dict(dim=12, n_heads=4), "must be even"),                 # head_dim 3
    (dict(dim=16, n_heads=4, n_kv_heads=3), "not a multiple of n_kv_heads"),
    (dict(dim=16, n_heads=4, n_kv_heads=0), "n_kv_heads must be a positive integer"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LlamaConfig(vocab_size=10, n_layers=1, **kwargs)


def test_forward_rejects_too_long_input():
    model = Llama(tiny(max_seq_len=6))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(np.zeros((1, 7), dtype=np.int64))


# ---- the loss -------------------------------------------------------------------------------------
@pytest.mark.parametrize("vocab", [20, 40])
def test_loss_at_init_is_close_to_log_vocab(vocab):
    rng = np.random.default_rng(0)
    model = Llama(tiny(vocab_size=vocab), dtype=np.float64, seed=3)
    x = tokens(rng, vocab, 4, 12)
    y = tokens(rng, vocab, 4, 12)
    assert abs(model.loss(x, y).item() - math.log(vocab)) < 0.1


def test_overfits_one_batch():
    rng = np.random.default_rng(0)
    cfg = tiny(vocab_size=20, dim=16, n_layers=1, max_seq_len=8)
    model = Llama(cfg, seed=1)
    x = tokens(rng, 20, 2, 8)
    y = tokens(rng, 20, 2, 8)
    opt = AdamW(model.named_parameters(), lr=3e-2, weight_decay=0.0)
    first = model.loss(x, y).item()
    for _ in range(400):
        loss = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        if loss.item() < 0.05:
            break
    final = model.loss(x, y).item()
    assert first > 2.5 and final < 0.1, (first, final)


# ---- causality ------------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(t=st.integers(0, 9), gqa=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_logits_at_or_before_t_ignore_later_tokens(t, gqa, seed):
    model = CAUSAL_MODELS[gqa]
    rng = np.random.default_rng(seed)
    x = tokens(rng, 24, 2, 10)
    x2 = x.copy()
    x2[:, t + 1:] = (x2[:, t + 1:] + rng.integers(1, 24, size=x2[:, t + 1:].shape)) % 24  # all differ
    a, b = model(x).data, model(x2).data
    np.testing.assert_allclose(b[:, :t + 1], a[:, :t + 1], rtol=1e-12, atol=1e-12)
    if t + 1 < 10:
        assert not np.allclose(b[:, t + 1], a[:, t + 1])   # the changed position itself does move


CAUSAL_MODELS = {g: scaled(Llama(tiny(n_kv_heads=2 if g else 4), dtype=np.float64, seed=2), 0.3)
                 for g in (False, True)}


# ---- whole-model gradient checks -----------------------------------------------------------------
def model_inputs(model):
    return [p for _, p in model.named_parameters()]


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_directional_gradcheck_whole_model(n_kv_heads):
    model = scaled(Llama(tiny(n_kv_heads=n_kv_heads), dtype=np.float64, seed=4), 0.2, seed=n_kv_heads)
    rng = np.random.default_rng(5)
    x, y = tokens(rng, 24, 2, 6), tokens(rng, 24, 2, 6)
    params = model_inputs(model)
    for s in range(2):
        assert directional_gradcheck(lambda *ps: model(x), params, seed=s)        # all logits
        assert directional_gradcheck(lambda *ps: model.loss(x, y), params, seed=s)


def test_directional_gradcheck_catches_a_wrong_rms_norm_backward(monkeypatch):
    model = scaled(Llama(tiny(n_kv_heads=2), dtype=np.float64, seed=4), 0.2)
    rng = np.random.default_rng(5)
    x = tokens(rng, 24, 2, 6)
    params = model_inputs(model)
    assert directional_gradcheck(lambda *ps: model(x), params)   # the control passes first

    def wrong_backward(ctx, grad):
        # the classic slip: forget that r depends on x (drop the mean term)
        x, r, weight = ctx.saved
        x_hat = x * r
        return r * grad * weight, (grad * x_hat).reshape(-1, x_hat.shape[-1]).sum(axis=0)

    monkeypatch.setattr(F.RMSNorm, "backward", staticmethod(wrong_backward))
    with pytest.raises(GradcheckError):
        directional_gradcheck(lambda *ps: model(x), params)


# ---- generation -----------------------------------------------------------------------------------
def greedy_without_cache(model, prompt, n):
    """Recompute the whole context for every new token, with the documented sliding window: when
    the context holds max_seq_len tokens, continue from its last max_seq_len // 2."""
    limit = model.config.max_seq_len
    ids = list(prompt)
    context = min(len(ids), limit)
    for _ in range(n):
        logits = model(np.array([ids[-context:]])).data[0, -1]
        ids.append(int(np.argmax(logits)))
        context = max(limit // 2, 1) if context == limit else context + 1
    return ids


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_cached_greedy_generation_equals_recomputation(n_kv_heads):
    model = scaled(Llama(tiny(n_kv_heads=n_kv_heads), dtype=np.float64, seed=6), 0.4, seed=7)
    prompt = [3, 1, 4]
    n = model.config.max_seq_len - len(prompt)          # stays within max_seq_len
    got = model.generate(prompt, n, temperature=0)
    assert got == greedy_without_cache(model, prompt, n)
    assert len(got) == len(prompt) + n
    assert len(set(got[len(prompt):])) > 1               # a non-degenerate sequence was compared


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_generation_past_max_seq_len_slides_the_window(n_kv_heads):
    model = scaled(Llama(tiny(n_kv_heads=n_kv_heads), dtype=np.float64, seed=6), 0.4, seed=8)
    limit = model.config.max_seq_len
    prompt = [5, 9]
    n = 3 * limit
    got = model.generate(prompt, n, temperature=0)
    assert len(got) == len(prompt) + n
    assert got == greedy_without_cache(model, prompt, n)
    # a prompt longer than the context also works (only its last max_seq_len tokens are used)
    long_prompt = list(range(limit + 3))
    got = model.generate(long_prompt, 4, temperature=0)
    assert got[:len(long_prompt)] == long_prompt and len(got) == len(long_prompt) + 4


def test_generation_records_no_graph(monkeypatch):
    model = scaled(Llama(tiny(), seed=1), 0.3)
    seen = []
    real_forward = Llama.forward

    def spy(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        seen.append((out.requires_grad, out._ctx))
        return out

    monkeypatch.setattr(Llama, "forward", spy)
    model.generate([1, 2], 5, temperature=0.8, seed=0)
    assert len(seen) >= 5                                 # at least one forward per new token
    assert all(rg is False and ctx is None for rg, ctx in seen)
    assert all(p.grad is None for p in model.parameters())
    assert is_grad_enabled()
    # closing a stream half way also restores gradient recording
    stream = model.generate_stream([1, 2], 5, temperature=0)
    next(stream)
    stream.close()
    assert is_grad_enabled()


def test_stream_does_not_switch_off_gradients_in_the_callers_loop():
    model = Llama(tiny(), seed=1)
    x = np.array([[1, 2, 3]])
    for _ in model.generate_stream([1, 2], 3, temperature=0):
        assert is_grad_enabled()
        assert model(x).requires_grad        # e.g. a training step between generated tokens


@pytest.mark.parametrize("max_seq_len", [1, 2, 3])
def test_generation_with_the_shortest_contexts(max_seq_len):
    model = scaled(Llama(tiny(max_seq_len=max_seq_len), dtype=np.float64, seed=6), 0.4, seed=9)
    got = model.generate([4, 7], 7, temperature=0)
    assert got == greedy_without_cache(model, [4, 7], 7)


def test_sample_next():
    rng = np.random.default_rng(0)
    for _ in range(10):
        logits = rng.standard_normal(17) * 2
        best = int(np.argmax(logits))
        assert sample_next(logits, temperature=0) == best
        for seed in range(5):
            assert sample_next(logits, 1.0, top_k=1, rng=np.random.default_rng(seed)) == best
            assert sample_next(logits, 1.0, top_p=1e-9, rng=np.random.default_rng(seed)) == best
    # top_k keeps the k most likely only
    logits = np.array([0.0, 5.0, 4.9, -1.0, 4.8])
    draws = {sample_next(logits, 1.0, top_k=2, rng=np.random.default_rng(s)) for s in range(60)}
    assert draws == {1, 2}
    # at temperature 1 without limits every token can come up
    draws = {sample_next(np.zeros(4), 1.0, rng=np.random.default_rng(s)) for s in range(60)}
    assert draws == {0, 1, 2, 3}


def test_sampling_is_reproducible_with_a_seed():
    model = scaled(Llama(tiny(), seed=1), 0.3)
    a = model.generate([1, 2, 3], 15, temperature=1.0, top_k=10, seed=123)
    b = model.generate([1, 2, 3], 15, temperature=1.0, top_k=10, seed=123)
    others = [model.generate([1, 2, 3], 15, temperature=1.0, top_k=10, seed=s) for s in range(4)]
    assert a == b
    assert any(o != a for o in others)
    assert all(0 <= i < 24 for i in a)


# ---- state dicts ----------------------------------------------------------------------------------
def test_state_dict_round_trip():
    cfg = tiny(n_kv_heads=2)
    a, b = Llama(cfg, seed=1), Llama(cfg, seed=2)
    x = tokens(np.random.default_rng(0), 24, 2, 5)
    assert not np.allclose(a(x).data, b(x).data)
    state = a.state_dict()
    assert list(state) == [n for n, _ in a.named_parameters()]
    b.load_state_dict(state)
    np.testing.assert_array_equal(b(x).data, a(x).data)
    for name, arr in b.state_dict().items():
        np.testing.assert_array_equal(arr, state[name])
    # the state is a copy: changing the model afterwards does not change it
    before = state["norm.weight"].copy()
    a.norm.weight.data[...] = 7.0
    np.testing.assert_array_equal(state["norm.weight"], before)


def test_load_state_dict_errors_name_the_parameter():
    model = Llama(tiny())
    good = model.state_dict()
    wrong_shape = dict(good, **{"layers.1.attention.wk.weight": np.zeros((3, 16))})
    with pytest.raises(ValueError, match=r"layers\.1\.attention\.wk\.weight"):
        model.load_state_dict(wrong_shape)
    missing = {k: v for k, v in good.items() if k != "layers.0.ffn_norm.weight"}
    with pytest.raises(ValueError, match=r"missing layers\.0\.ffn_norm\.weight"):
        model.load_state_dict(missing)
    extra = dict(good, **{"layers.0.attention.wq.bias": np.zeros(16)})
    with pytest.raises(ValueError, match=r"unexpected layers\.0\.attention\.wq\.bias"):
        model.load_state_dict(extra)
    # a failed load leaves the model untouched
    for name, arr in model.state_dict().items():
        np.testing.assert_array_equal(arr, good[name])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_model_dtype(dtype):
    model = Llama(tiny(), dtype=dtype)
    x = tokens(np.random.default_rng(0), 24, 1, 4)
    assert all(p.dtype == dtype for p in model.parameters())
    out = model(x)
    assert out.dtype == dtype and out.shape == (1, 4, 24)
    loss = model.loss(x, x)
    assert loss.dtype == dtype
    loss.backward()
    assert all(p.grad.dtype == dtype for p in model.parameters())


# ---- save, load, continue: bit-identical --------------------------------------------------------
def _train(model, opt, rng, steps):
    losses = []
    for _ in range(steps):
        x = tokens(rng, 24, 2, 8)
        loss = model.loss(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 0.5)
        opt.step()
        losses.append(loss.item())
    return losses


def test_save_load_continue_is_bit_identical(tmp_path):
    cfg = tiny(n_layers=1)

    def fresh(seed):
        model = Llama(cfg, seed=seed)
        return model, AdamW(model.named_parameters(), lr=1e-2, weight_decay=0.1)

    model, opt = fresh(0)
    straight = _train(model, opt, np.random.default_rng(42), 6)

    model, opt = fresh(0)
    rng = np.random.default_rng(42)
    first = _train(model, opt, rng, 3)
    arrays = {f"model.{k}": v for k, v in model.state_dict().items()}
    arrays.update({f"optimizer.{k}": v for k, v in opt.state_dict().items() if isinstance(v, np.ndarray)})
    meta = {"rng": rng_state_to_json(rng), "optimizer": {k: v for k, v in opt.state_dict().items()
                                                         if not isinstance(v, np.ndarray)}}
    save_checkpoint(tmp_path / "ckpt.npz", arrays, meta)
    del model, opt, rng

    model, opt = fresh(99)                               # different initial weights on purpose
    arrays, meta = load_checkpoint(tmp_path / "ckpt.npz")
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
    state = dict(meta["optimizer"])
    state.update({k[10:]: v for k, v in arrays.items() if k.startswith("optimizer.")})
    opt.load_state_dict(state)
    second = _train(model, opt, rng_from_json(meta["rng"]), 3)

    assert np.array_equal(np.array(first + second), np.array(straight)), (first + second, straight)


def test_trainer_resume_is_bit_identical(tmp_path):
    trainer_module = pytest.importorskip("tinygrad_llama.trainer")
    TrainConfig, Trainer = trainer_module.TrainConfig, trainer_module.Trainer
    rng = np.random.default_rng(0)
    train, val = tokens(rng, 24, 1, 200)[0], tokens(rng, 24, 1, 60)[0]
    cfg = tiny(n_layers=1, max_seq_len=8)
    tc = TrainConfig(steps=6, batch_size=2, context=8, lr=1e-2, warmup=2, eval_interval=100,
                     eval_batches=1, seed=3)
    straight = Trainer(Llama(cfg, seed=0), train, val, tc, str(tmp_path / "a"), progress=False)
    straight.run()
    part1 = Trainer(Llama(cfg, seed=0), train, val, tc, str(tmp_path / "b"), progress=False)
    assert part1.run(stop_after=3)["interrupted"]
    assert os.path.exists(tmp_path / "b" / "latest.npz")
    part2 = Trainer(Llama(cfg, seed=5), train, val, tc, str(tmp_path / "b"), progress=False)
    part2.run(resume=True)
    assert len(straight.step_losses) == 6
    assert np.array_equal(np.array(part1.step_losses + part2.step_losses), np.array(straight.step_losses))


def test_gqa_shares_each_kv_head_with_consecutive_query_heads():
    # Meta's repeat_kv: query head h uses key/value head h // (n_heads / n_kv_heads). So a GQA model
    # equals a full multi-head model whose wk/wv repeat each kv head's rows for its query heads.
    gqa = scaled(Llama(tiny(n_heads=4, n_kv_heads=2), dtype=np.float64), 0.3, seed=11)
    mha = Llama(tiny(n_heads=4, n_kv_heads=4), dtype=np.float64)
    head_dim, group = 4, 2
    state = gqa.state_dict()
    for name in list(state):
        if name.endswith(("attention.wk.weight", "attention.wv.weight")):
            per_head = state[name].reshape(2, head_dim, 16)           # (n_kv_heads, head_dim, dim)
            state[name] = np.repeat(per_head, group, axis=0).reshape(4 * head_dim, 16)
    mha.load_state_dict(state)
    x = tokens(np.random.default_rng(0), 24, 2, 7)
    np.testing.assert_allclose(mha(x).data, gqa(x).data, rtol=1e-10, atol=1e-12)
