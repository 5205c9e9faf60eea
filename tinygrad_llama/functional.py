"""The LLaMA layers as fused Functions, each forward beside its hand-written backward.

Each Function does in a few array operations what a chain of primitive ops would do, and its
backward reuses what the forward saved. The derivation is written beside each backward: what the
forward computed, then why each gradient term follows. `reference.py` builds the same layers from
primitive ops; the tests check that both agree, forward and backward, in float64.

Shapes: B batch, T time (tokens), H heads, D model width or head width, F feed-forward width,
V vocabulary, N = B*T tokens flattened.
"""
import math
from functools import lru_cache

from .backend import xp
from .ops import sigmoid_array
from .tensor import Function, Tensor


# ---- Linear: y = x W^T (W shaped (out, in), as in Meta's checkpoints) -------------------------
class Linear(Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        x2 = x.reshape(-1, x.shape[-1])                    # (N, in): free for a contiguous x
        return (x2 @ weight.T).reshape(x.shape[:-1] + (weight.shape[0],))  # (..., out)

    @staticmethod
    def backward(ctx, grad):
        # forward: y[n, o] = sum_i x[n, i] W[o, i], so
        #   dx[n, i] = sum_o dy[n, o] W[o, i]   -> dx = dy W
        #   dW[o, i] = sum_n dy[n, o] x[n, i]   -> dW = dy^T x, one 2-D product over all tokens
        x, weight = ctx.saved
        g2 = grad.reshape(-1, grad.shape[-1])              # (N, out)
        dx = (g2 @ weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
        dw = g2.T @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None  # (out, in)
        return dx, dw


def linear(x, weight):
    return Linear.apply(x, weight)


# ---- Embedding: row lookup ---------------------------------------------------------------------
class Embedding(Function):
    @staticmethod
    def forward(ctx, weight, ids):
        ids = ids.astype(xp.int64, copy=False)
        ctx.ids, ctx.vocab_size = ids, weight.shape[0]
        return weight[ids]                                  # (B, T, D)

    @staticmethod
    def backward(ctx, grad):
        # forward: y[n] = W[ids[n]], so dW[v] = sum of dy[n] over every n with ids[n] == v.
        # `dW[ids] += dy` would keep only one of the repeated ids; np.add.at is correct but slow.
        # Sort the tokens by id and add each run of equal ids with one reduceat instead.
        ids = ctx.ids.reshape(-1)                           # (N,)
        g2 = grad.reshape(ids.size, -1)                     # (N, D)
        order = xp.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        run_starts = xp.flatnonzero(xp.diff(sorted_ids, prepend=-1))
        dw = xp.zeros((ctx.vocab_size, g2.shape[1]), dtype=grad.dtype)
        dw[sorted_ids[run_starts]] = xp.add.reduceat(g2[order], run_starts, axis=0)
        return dw, None


def embedding(ids, weight):
    ids = ids.data if isinstance(ids, Tensor) else xp.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding: token ids must be integers, got {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= weight.shape[0]):
        raise ValueError(f"embedding: token ids must lie in [0, {weight.shape[0]}), "
                         f"got values in [{ids.min()}, {ids.max()}]")
    return Embedding.apply(weight, Tensor(ids))


# ---- RMSNorm, per token over the last axis -----------------------------------------------------
class RMSNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        r = 1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)  # (..., 1)
        x_hat = x * r                                                  # (..., D)
        ctx.save_for_backward(x_hat, r, weight)
        return x_hat * weight                                          # (..., D)

    @staticmethod
    def backward(ctx, grad):
        # forward: y_i = w_i x_i r with r = (mean_j x_j^2 + eps)^(-1/2), one r per token. So
        #   dw_i = sum over tokens of dy_i x_hat_i                     (x_hat = x r)
        #   with g_i = dy_i w_i (the gradient reaching x_hat), and dr/dx_j = -r^3 x_j / D:
        #   dx_j = g_j r + sum_i g_i x_i dr/dx_j = r (g_j - x_hat_j mean_i(g_i x_hat_i))
        x_hat, r, weight = ctx.saved
        dx = dw = None
        if ctx.needs_input_grad[1]:
            dw = (grad * x_hat).reshape(-1, x_hat.shape[-1]).sum(axis=0)  # (D,)
        if ctx.needs_input_grad[0]:
            g = grad * weight                                              # (..., D)
            dx = r * (g - x_hat * (g * x_hat).mean(axis=-1, keepdims=True))
        return dx, dw


def rms_norm(x, weight, eps=1e-5):
    return RMSNorm.apply(x, weight, eps=float(eps))


# ---- Rotary position embedding (Meta's interleaved-pair convention) ----------------------------
@lru_cache(maxsize=32)
def rope_tables(seq_len, head_dim, theta, dtype):
    """cos and sin of angle pos * theta^(-2i/head_dim) for pos < seq_len, i < head_dim/2: computed
    once per length (in float64, then cast), shape (seq_len, head_dim/2) each."""
    freqs = theta ** (-xp.arange(0, head_dim, 2, dtype=xp.float64) / head_dim)  # (D/2,)
    angles = xp.outer(xp.arange(seq_len, dtype=xp.float64), freqs)           # (T, D/2)
    cos, sin = xp.cos(angles).astype(dtype), xp.sin(angles).astype(dtype)
    cos.flags.writeable = sin.flags.writeable = False  # shared by every call: never modified
    return cos, sin


class Rope(Function):
    @staticmethod
    def forward(ctx, x, start_pos, theta):
        B, T, H, D = x.shape
        cos, sin = rope_tables(start_pos + T, D, theta, x.dtype)
        cos, sin = cos[start_pos:, None, :], sin[start_pos:, None, :]   # (T, 1, D/2)
        ctx.save_for_backward(cos, sin)
        even, odd = x[..., 0::2], x[..., 1::2]                          # (B, T, H, D/2)
        out = xp.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out                                                      # (B, T, H, D)

    @staticmethod
    def backward(ctx, grad):
        # forward: each pair (e, o) is rotated by the angle a of its position and frequency:
        #   [y_e, y_o] = R(a) [e, o] with R(a) = [[cos a, -sin a], [sin a, cos a]].
        # A rotation is linear and orthogonal, so the gradient is rotated back by R(a)^T = R(-a):
        #   de = dy_e cos a + dy_o sin a,   do = -dy_e sin a + dy_o cos a
        cos, sin = ctx.saved
        g_even, g_odd = grad[..., 0::2], grad[..., 1::2]
        dx = xp.empty_like(grad)
        dx[..., 0::2] = g_even * cos + g_odd * sin
        dx[..., 1::2] = g_odd * cos - g_even * sin
        return dx


def rope(x, start_pos=0, theta=10000.0):
    """Rotate x of shape (B, T, H, D), token t at position start_pos + t."""
    if x.shape[-1] % 2:
        raise ValueError(f"rope: the head dimension must be even, got {x.shape[-1]}")
    return Rope.apply(x, start_pos=int(start_pos), theta=float(theta))


# ---- Causal multi-head attention ---------------------------------------------------------------
@lru_cache(maxsize=32)
def causal_mask(query_len, key_len, dtype):
    """Additive mask (Tq, Tk): 0 where query i may see key j, -inf where j is in its future. The
    queries are the last Tq of the Tk positions (Tq < Tk when earlier keys come from a cache)."""
    offset = key_len - query_len
    future = xp.arange(key_len)[None, :] > xp.arange(query_len)[:, None] + offset
    mask = xp.where(future, -xp.inf, 0.0).astype(dtype)
    mask.flags.writeable = False
    return mask


class CausalAttention(Function):
    @staticmethod
    def forward(ctx, q, k, v):
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = q @ xp.swapaxes(k, -1, -2)                     # (B, H, Tq, Tk)
        scores *= scale
        scores += causal_mask(q.shape[-2], k.shape[-2], scores.dtype)
        scores -= scores.max(axis=-1, keepdims=True)            # softmax, in place
        xp.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        probs = scores                                          # (B, H, Tq, Tk)
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, probs)
        return probs @ v                                        # (B, H, Tq, D)

    @staticmethod
    def backward(ctx, grad):
        # forward: S = scale q k^T + mask, P = softmax(S) over keys, O = P v. So
        #   dv = P^T dO                           (O is linear in v)
        #   dP = dO v^T                           (O is linear in P)
        #   dS = P * (dP - sum_j dP_j P_j)        (softmax backward, per query row;
        #                                          masked entries have P = 0, so dS = 0 there)
        #   dq = scale dS k,  dk = scale dS^T q   (S is bilinear in q and k)
        q, k, v, probs = ctx.saved
        dv = xp.swapaxes(probs, -1, -2) @ grad                  # (B, H, Tk, D)
        d_scores = grad @ xp.swapaxes(v, -1, -2)                # (B, H, Tq, Tk)  dP
        d_scores -= (d_scores * probs).sum(axis=-1, keepdims=True)
        d_scores *= probs                                       # now dS
        d_scores *= ctx.scale
        dq = d_scores @ k                                       # (B, H, Tq, D)
        dk = xp.swapaxes(d_scores, -1, -2) @ q                  # (B, H, Tk, D)
        return dq, dk, dv


def causal_attention(q, k, v):
    """softmax(q k^T / sqrt(D) + causal mask) v for q (B, H, Tq, D) and k, v (B, H, Tk, D)."""
    if not (q.shape[:2] == k.shape[:2] == v.shape[:2] and q.shape[-1] == k.shape[-1]
            and k.shape == v.shape and q.shape[-2] <= k.shape[-2]):
        raise ValueError(f"causal_attention: incompatible shapes q {q.shape}, k {k.shape}, v {v.shape}")
    return CausalAttention.apply(q, k, v)


# ---- SwiGLU feed-forward: W2 (silu(x W1^T) * (x W3^T)) ----------------------------------------
class SwiGLU(Function):
    @staticmethod
    def forward(ctx, x, w1, w2, w3):
        x2 = x.reshape(-1, x.shape[-1])                         # (N, D)
        h1 = x2 @ w1.T                                          # (N, F) gate pre-activation
        h3 = x2 @ w3.T                                          # (N, F) value
        s = sigmoid_array(h1)                                   # (N, F)
        gate = h1 * s                                           # (N, F) silu(h1)
        hidden = gate * h3                                      # (N, F)
        ctx.save_for_backward(x, w1, w2, w3, h1, h3, s, hidden)
        return (hidden @ w2.T).reshape(x.shape)                 # (..., D)

    @staticmethod
    def backward(ctx, grad):
        # forward: a = silu(h1) * h3 with h1 = x W1^T, h3 = x W3^T, then y = a W2^T. So
        #   dW2 = dy^T a,  da = dy W2                                  (as in Linear)
        #   dh3 = da * silu(h1),  dh1 = da * h3 * silu'(h1)
        #   silu(h) = h s(h)  =>  silu'(h) = s + h s (1 - s)
        #   dW1 = dh1^T x,  dW3 = dh3^T x,  dx = dh1 W1 + dh3 W3
        x, w1, w2, w3, h1, h3, s, hidden = ctx.saved
        x2 = x.reshape(-1, x.shape[-1])                         # (N, D)
        g2 = grad.reshape(-1, grad.shape[-1])                   # (N, D)
        dw2 = g2.T @ hidden                                     # (D, F)
        d_hidden = g2 @ w2                                      # (N, F)
        dh3 = d_hidden * (h1 * s)                               # (N, F)
        dh1 = d_hidden * h3
        dh1 *= s * (1.0 + h1 * (1.0 - s))                       # (N, F)
        dw1 = dh1.T @ x2                                        # (F, D)
        dw3 = dh3.T @ x2                                        # (F, D)
        dx = (dh1 @ w1 + dh3 @ w3).reshape(x.shape) if ctx.needs_input_grad[0] else None
        return dx, dw1, dw2, dw3


def swiglu(x, w1, w2, w3):
    return SwiGLU.apply(x, w1, w2, w3)


# ---- Cross-entropy: fused log-softmax + negative log-likelihood --------------------------------
class CrossEntropy(Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        V = logits.shape[-1]
        z = logits.reshape(-1, V)                               # (N, V)
        t = targets.reshape(-1).astype(xp.int64)                # (N,)
        counted = t != ignore_index if ignore_index is not None else xp.ones(t.shape, bool)
        t_safe = xp.where(counted, t, 0)
        if t_safe.size and (t_safe.min() < 0 or t_safe.max() >= V):
            raise ValueError(f"cross_entropy: targets must lie in [0, {V}), "
                             f"got values in [{t_safe.min()}, {t_safe.max()}]")
        shifted = z - z.max(axis=1, keepdims=True)              # (N, V)
        log_norm = xp.log(xp.exp(shifted).sum(axis=1))         # (N,)
        rows = xp.arange(z.shape[0])
        nll = log_norm - shifted[rows, t_safe]                  # (N,) -log p(target)
        count = max(int(counted.sum()), 1)
        xp.exp(shifted, out=shifted)
        shifted /= xp.exp(log_norm)[:, None]                    # now the probabilities
        ctx.save_for_backward(shifted, t_safe, counted)
        ctx.count, ctx.shape = count, logits.shape
        return xp.asarray((nll * counted).sum() / count, dtype=logits.dtype)

    @staticmethod
    def backward(ctx, grad):
        # forward: L = (1/n) sum over counted tokens of (log sum_v e^z_v - z_target), so
        #   dL/dz_v = (softmax(z)_v - [v == target]) / n for a counted token, 0 for an ignored one
        probs, t_safe, counted = ctx.saved
        scale = grad / ctx.count                                # 0-d array
        dz = probs * (scale * counted.astype(probs.dtype))[:, None]   # (N, V)
        dz[xp.arange(dz.shape[0]), t_safe] -= scale * counted
        return dz.reshape(ctx.shape), None


def cross_entropy(logits, targets, ignore_index=None):
    """Mean negative log-likelihood of `targets` (int, shape logits.shape[:-1]) under
    softmax(logits), over the tokens whose target is not `ignore_index`."""
    targets = targets.data if isinstance(targets, Tensor) else xp.asarray(targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not match logits "
                         f"of shape {logits.shape}")
    return CrossEntropy.apply(logits, Tensor(targets), ignore_index=ignore_index)
