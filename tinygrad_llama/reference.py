"""The LLaMA layers composed from primitive ops only, with no hand-written backward.

Slow and memory-hungry, but each is a line-by-line transcription of the layer's definition, and the
engine differentiates it op by op. The tests compare every fused Function in functional.py against
these, forward and backward: two independent routes to the same gradients.
"""
import math

from .backend import xp
from .functional import causal_mask, rope_tables
from .tensor import Tensor, stack


def linear_reference(x, weight):
    return x @ weight.T


def rms_norm_reference(x, weight, eps=1e-5):
    return x / ((x * x).mean(axis=-1, keepdims=True) + eps).sqrt() * weight


def rope_reference(x, start_pos=0, theta=10000.0):
    B, T, H, D = x.shape
    cos, sin = rope_tables(start_pos + T, D, float(theta), x.dtype)
    cos, sin = cos[start_pos:, None, :], sin[start_pos:, None, :]  # (T, 1, D/2)
    pairs = x.reshape(B, T, H, D // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]                        # (B, T, H, D/2)
    rotated = stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
    return rotated.reshape(B, T, H, D)


def causal_attention_reference(q, k, v):
    scores = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, Tq, Tk)
    scores = scores + causal_mask(q.shape[-2], k.shape[-2], q.dtype)
    return scores.softmax(axis=-1) @ v


def swiglu_reference(x, w1, w2, w3):
    return ((x @ w1.T).silu() * (x @ w3.T)) @ w2.T


def cross_entropy_reference(logits, targets, ignore_index=None):
    V = logits.shape[-1]
    log_probs = logits.reshape(-1, V).log_softmax(axis=-1)           # (N, V)
    t = xp.asarray(targets).reshape(-1)
    counted = t != ignore_index if ignore_index is not None else xp.ones(t.shape, bool)
    picked = log_probs[xp.arange(t.size), xp.where(counted, t, 0)]    # (N,)
    weights = Tensor(counted.astype(logits.dtype) / max(int(counted.sum()), 1))
    return -(picked * weights).sum()
