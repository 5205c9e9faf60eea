"""The LLaMA model: configuration, pre-norm transformer blocks, and generation with a KV cache.

    h   = x + attention(attention_norm(x))      # per-token RMSNorm before each sub-layer,
    out = h + feed_forward(ffn_norm(h))         # the residual adds the un-normalised input
    logits = output(norm(out of the last block))

Parameter names and layouts are Meta's (`layers.0.attention.wq.weight` shaped (out, in), ...), so
weights move between this and other LLaMA code by name.
"""
import math
from dataclasses import dataclass, asdict, fields

from .backend import xp
from .tensor import Tensor, no_grad
from . import functional as F
from .nn import Module, Linear, Embedding, RMSNorm


@dataclass
class LlamaConfig:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int = None        # fewer key/value heads than query heads: grouped-query attention
    multiple_of: int = 32         # the feed-forward width is rounded up to a multiple of this
    norm_eps: float = 1e-5
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    # ablations (examples/experiments.py): the defaults are LLaMA; each other value removes or
    # replaces one component, and "baseline" is the source tutorial's embedding-Linear-ReLU-Linear
    arch: str = "llama"           # llama | baseline
    norm: str = "rms"             # rms | none
    pos: str = "rope"             # rope | none
    ffn: str = "swiglu"           # swiglu | relu (a 4*dim ReLU MLP)
    attention: str = "causal"     # causal | none (no attention sub-layer at all)

    CHOICES = {"arch": ("llama", "baseline"), "norm": ("rms", "none"), "pos": ("rope", "none"),
               "ffn": ("swiglu", "relu"), "attention": ("causal", "none")}

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"LlamaConfig: {name} must be one of {', '.join(allowed)}, "
                                 f"got {getattr(self, name)!r}")
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "max_seq_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"LlamaConfig: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.dim % self.n_heads:
            raise ValueError(f"LlamaConfig: dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"LlamaConfig: the head dimension dim/n_heads = {self.head_dim} must be "
                             "even for rotary embeddings")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"LlamaConfig: n_heads {self.n_heads} is not a multiple of "
                             f"n_kv_heads {self.n_kv_heads}")

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @property
    def ffn_hidden(self):
        """LLaMA's SwiGLU width: 2/3 of 4*dim (the same parameter count as a 4*dim ReLU MLP),
        rounded up to a multiple of `multiple_of`."""
        hidden = int(2 * 4 * self.dim / 3)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"LlamaConfig: unknown settings {sorted(unknown)}")
        return cls(**d)


class KVCache:
    """Keys and values of the positions seen so far, per layer: (B, n_kv_heads, max_seq_len, head_dim)."""

    def __init__(self, config, batch_size, dtype):
        shape = (batch_size, config.n_kv_heads, config.max_seq_len, config.head_dim)
        self.keys = [xp.zeros(shape, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [xp.zeros(shape, dtype=dtype) for _ in range(config.n_layers)]


class Attention(Module):
    def __init__(self, config, layer_id, rng, dtype):
        c = config
        self.layer_id, self.n_heads, self.n_kv_heads = layer_id, c.n_heads, c.n_kv_heads
        self.head_dim, self.rope_theta, self.use_rope = c.head_dim, c.rope_theta, c.pos == "rope"
        residual_std = 0.02 / math.sqrt(2 * c.n_layers)  # keeps the residual stream's scale
        self.wq = Linear(c.dim, c.n_heads * c.head_dim, rng, dtype)
        self.wk = Linear(c.dim, c.n_kv_heads * c.head_dim, rng, dtype)
        self.wv = Linear(c.dim, c.n_kv_heads * c.head_dim, rng, dtype)
        self.wo = Linear(c.n_heads * c.head_dim, c.dim, rng, dtype, std=residual_std)

    def forward(self, x, start_pos=0, cache=None):
        B, T, _ = x.shape
        q = self.wq(x).reshape(B, T, self.n_heads, self.head_dim)       # (B, T, H, Dh)
        k = self.wk(x).reshape(B, T, self.n_kv_heads, self.head_dim)    # (B, T, Hkv, Dh)
        v = self.wv(x).reshape(B, T, self.n_kv_heads, self.head_dim)    # (B, T, Hkv, Dh)
        if self.use_rope:
            q = F.rope(q, start_pos, self.rope_theta)
            k = F.rope(k, start_pos, self.rope_theta)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))            # (B, H, T, Dh)
        if cache is not None:  # generation: no graph, keys and values of earlier positions reused
            end = start_pos + T
            cache.keys[self.layer_id][:, :, start_pos:end] = k.data
            cache.values[self.layer_id][:, :, start_pos:end] = v.data
            k = Tensor(cache.keys[self.layer_id][:, :, :end])           # (B, Hkv, end, Dh)
            v = Tensor(cache.values[self.layer_id][:, :, :end])
        if self.n_kv_heads != self.n_heads:  # grouped-query: each kv head serves `group` q heads
            group = self.n_heads // self.n_kv_heads
            k, v = (t.reshape(B, self.n_kv_heads, 1, -1, self.head_dim)
                     .expand(B, self.n_kv_heads, group, t.shape[2], self.head_dim)
                     .reshape(B, self.n_heads, -1, self.head_dim) for t in (k, v))
        out = F.causal_attention(q, k, v)                               # (B, H, T, Dh)
        out = out.permute(0, 2, 1, 3).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, D)
        return self.wo(out)


class FeedForward(Module):
    def __init__(self, config, rng, dtype):
        c = config
        self.gated = c.ffn == "swiglu"
        hidden = c.ffn_hidden if self.gated else 4 * c.dim
        self.w1 = Linear(c.dim, hidden, rng, dtype)
        self.w2 = Linear(hidden, c.dim, rng, dtype, std=0.02 / math.sqrt(2 * c.n_layers))
        if self.gated:
            self.w3 = Linear(c.dim, hidden, rng, dtype)

    def forward(self, x):
        if self.gated:
            return F.swiglu(x, self.w1.weight, self.w2.weight, self.w3.weight)
        return self.w2(self.w1(x).relu())  # the ablation: a plain ReLU MLP


class TransformerBlock(Module):
    def __init__(self, config, layer_id, rng, dtype):
        make_norm = lambda: RMSNorm(config.dim, config.norm_eps, dtype) if config.norm == "rms" else None
        if config.attention == "causal":
            self.attention = Attention(config, layer_id, rng, dtype)
            self.attention_norm = make_norm()      # two norms, not one shared
        self.feed_forward = FeedForward(config, rng, dtype)
        self.ffn_norm = make_norm()

    def forward(self, x, start_pos=0, cache=None):
        h = x
        if hasattr(self, "attention"):
            h = x + self.attention(_maybe(self.attention_norm, x), start_pos, cache)  # (B, T, D)
        return h + self.feed_forward(_maybe(self.ffn_norm, h))                       # (B, T, D)


def _maybe(norm, x):
    return x if norm is None else norm(x)


class Llama(Module):
    def __init__(self, config, dtype=xp.float32, seed=0):
        rng = xp.random.default_rng(seed)
        self.config, self.dtype = config, xp.dtype(dtype)
        self.tok_embeddings = Embedding(config.vocab_size, config.dim, rng, dtype)
        self.layers = [TransformerBlock(config, i, rng, dtype) for i in range(config.n_layers)]
        self.norm = RMSNorm(config.dim, config.norm_eps, dtype) if config.norm == "rms" else None
        self.output = Linear(config.dim, config.vocab_size, rng, dtype)

    def forward(self, tokens, start_pos=0, cache=None):
        """tokens: int array (B, T) -> logits Tensor (B, T, vocab_size)."""
        tokens = xp.asarray(tokens.data if isinstance(tokens, Tensor) else tokens)
        if tokens.ndim != 2:
            raise ValueError(f"Llama: tokens must have shape (batch, time), got {tokens.shape}")
        if start_pos + tokens.shape[1] > self.config.max_seq_len:
            raise ValueError(f"Llama: positions up to {start_pos + tokens.shape[1]} exceed "
                             f"max_seq_len {self.config.max_seq_len}")
        h = self.tok_embeddings(tokens)                                   # (B, T, D)
        for layer in self.layers:
            h = layer(h, start_pos, cache)
        return self.output(_maybe(self.norm, h))                          # (B, T, V)

    def loss(self, tokens, targets, ignore_index=None):
        return F.cross_entropy(self(tokens), targets, ignore_index)

    # ---- generation -------------------------------------------------------------------------
    def generate_stream(self, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        seed=None):
        """Yield new token ids one at a time. Each step runs the model on one new position and
        reuses the cached keys and values of all earlier ones. When the context is full, the
        cache is rebuilt from the last max_seq_len/2 tokens (a sliding window)."""
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise ValueError("generate: the prompt must contain at least one token")
        if temperature < 0:
            raise ValueError(f"generate: temperature must be >= 0, got {temperature}")
        rng = xp.random.default_rng(seed)
        limit = self.config.max_seq_len
        cache = KVCache(self.config, 1, self.dtype)

        def last_logits(window_ids, start_pos):
            # no_grad only around the forward: a `with` spanning the `yield` below would leave
            # gradient recording off in the caller's loop body between tokens
            with no_grad():
                return self(xp.array([window_ids]), start_pos, cache).data[0, -1]

        window = ids[-limit:]
        logits = last_logits(window, 0)
        position = len(window)
        for _ in range(max_new_tokens):
            next_id = sample_next(logits, temperature, top_k, top_p, rng)
            ids.append(next_id)
            yield next_id
            if position == limit:  # full: restart the cache from the recent half (>= 1 token)
                window = ids[-max(limit // 2, 1):]
                logits = last_logits(window, 0)
                position = len(window)
            else:
                logits = last_logits([next_id], position)
                position += 1

    def generate(self, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None):
        """The prompt followed by `max_new_tokens` sampled tokens, as a list of ids."""
        new = list(self.generate_stream(prompt_ids, max_new_tokens, temperature, top_k, top_p, seed))
        return [int(i) for i in prompt_ids] + new


class Baseline(Llama):
    """The source tutorial's base model: token embedding, Linear, ReLU, Linear. Each prediction
    sees only its own token (a bigram model), which makes it the floor the LLaMA parts improve on.
    It shares Llama's loss and generation (the cache is simply unused)."""

    def __init__(self, config, dtype=xp.float32, seed=0):
        rng = xp.random.default_rng(seed)
        self.config, self.dtype = config, xp.dtype(dtype)
        self.tok_embeddings = Embedding(config.vocab_size, config.dim, rng, dtype)
        self.hidden = Linear(config.dim, config.dim, rng, dtype)
        self.output = Linear(config.dim, config.vocab_size, rng, dtype)

    def forward(self, tokens, start_pos=0, cache=None):
        tokens = xp.asarray(tokens.data if isinstance(tokens, Tensor) else tokens)
        if tokens.ndim != 2:
            raise ValueError(f"Baseline: tokens must have shape (batch, time), got {tokens.shape}")
        h = self.tok_embeddings(tokens)                                   # (B, T, D)
        return self.output(self.hidden(h).relu())                         # (B, T, V)


def create_model(config, dtype=xp.float32, seed=0):
    """Llama, or the Baseline when config.arch == "baseline"."""
    return (Baseline if config.arch == "baseline" else Llama)(config, dtype=dtype, seed=seed)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, rng=None):
    """One token id from a row of logits (V,): greedy at temperature 0; otherwise sampled from
    softmax(logits / temperature), restricted to the k most likely tokens and/or to the smallest
    set whose probability reaches top_p."""
    if temperature == 0:
        return int(xp.argmax(logits))
    logits = logits.astype(xp.float64) / temperature
    if top_k is not None:
        k = min(int(top_k), logits.size)
        kth = xp.partition(logits, -k)[-k]
        logits = xp.where(logits < kth, -xp.inf, logits)
    probs = xp.exp(logits - logits.max())
    probs /= probs.sum()
    if top_p is not None and top_p < 1.0:
        order = xp.argsort(-probs)
        keep = xp.cumsum(probs[order]) - probs[order] < top_p  # always keeps the top token
        trimmed = xp.zeros_like(probs)
        trimmed[order[keep]] = probs[order[keep]]
        probs = trimmed / trimmed.sum()
    rng = rng if rng is not None else xp.random.default_rng()
    return int(rng.choice(probs.size, p=probs))
