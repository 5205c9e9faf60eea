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
from .parallel import run_chunks, run_blocks, run_tasks, row_blocks, elementwise_rows, HANDOFF_FLOP
from .parallel import matmul as mm, matmul_later as mm_later  # 2-D products on the pool
from .tensor import Function, Tensor


# ---- Linear: y = x W^T (W shaped (out, in), as in Meta's checkpoints) -------------------------
class Linear(Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        x2 = x.reshape(-1, x.shape[-1])                    # (N, in): free for a contiguous x
        return mm(x2, weight.T).reshape(x.shape[:-1] + (weight.shape[0],))  # (..., out)

    @staticmethod
    def backward(ctx, grad):
        # forward: y[n, o] = sum_i x[n, i] W[o, i], so
        #   dx[n, i] = sum_o dy[n, o] W[o, i]   -> dx = dy W
        #   dW[o, i] = sum_n dy[n, o] x[n, i]   -> dW = dy^T x, one 2-D product over all tokens
        x, weight = ctx.saved
        g2 = grad.reshape(-1, grad.shape[-1])              # (N, out)
        # dW is not needed before the optimizer: its product runs on another thread meanwhile
        dw = mm_later(g2.T, x.reshape(-1, x.shape[-1])) if ctx.needs_input_grad[1] else None
        dx = mm(g2, weight).reshape(x.shape) if ctx.needs_input_grad[0] else None
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
        D = x.shape[-1]
        x2 = x.reshape(-1, D)                                          # (N, D)
        r = xp.empty((x2.shape[0], 1), dtype=x.dtype)                  # (N, 1)
        out = xp.empty_like(x2)                                        # (N, D)

        def block(lo, hi):  # rows are independent: any split gives the same numbers
            xb, rb = x2[lo:hi], r[lo:hi]
            xp.einsum("nd,nd->n", xb, xb, out=rb[:, 0])                # sum_i x_i^2, no temporary
            rb *= 1.0 / D
            rb += eps
            xp.sqrt(rb, out=rb)
            xp.divide(1.0, rb, out=rb)                                 # r = 1/sqrt(mean x^2 + eps)
            xp.multiply(xb, rb, out=out[lo:hi])                        # x_hat = x r
            out[lo:hi] *= weight                                       # y = x_hat w

        run_blocks(block, x2.shape[0], elementwise_rows(D))
        # x is kept alive by the graph anyway, x_hat = x r would be one more (N, D) array; r in
        # x's shape, (..., 1)
        ctx.save_for_backward(x, r.reshape(x.shape[:-1] + (1,)), weight)
        return out.reshape(x.shape)                                    # (..., D)

    @staticmethod
    def backward(ctx, grad):
        # forward: y_i = w_i x_i r with r = (mean_j x_j^2 + eps)^(-1/2), one r per token. So
        #   dw_i = sum over tokens of dy_i x_hat_i                     (x_hat = x r)
        #   with g_i = dy_i w_i (the gradient reaching x_hat), and dr/dx_j = -r^3 x_j / D:
        #   dx_j = g_j r + sum_i g_i x_i dr/dx_j = r (g_j - x_hat_j mean_i(g_i x_hat_i))
        # dw is summed per fixed row block (parallel.row_blocks), then over the blocks in order,
        # so it does not depend on the number of threads.
        x, r, weight = ctx.saved
        D = x.shape[-1]
        x2, g2, r = x.reshape(-1, D), grad.reshape(-1, D), r.reshape(-1, 1)  # (N, D), (N, 1)
        want_dx, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        blocks = row_blocks(g2.shape[0], elementwise_rows(D))
        partial = xp.empty((len(blocks), D), dtype=grad.dtype)         # dw of each row block
        dx = xp.empty_like(g2) if want_dx else None

        def block(i):
            lo, hi = blocks[i]
            x_hat = x2[lo:hi] * r[lo:hi]                               # (n, D)
            if want_dw:
                xp.einsum("nd,nd->d", g2[lo:hi], x_hat, out=partial[i])  # sum_n dy x_hat
            if want_dx:
                g = g2[lo:hi] * weight                                 # g = dy w
                dot = xp.einsum("nd,nd->n", g, x_hat)[:, None]         # sum_i g_i x_hat_i
                dot *= 1.0 / D                                         # mean_i(g_i x_hat_i)
                x_hat *= dot
                g -= x_hat
                xp.multiply(g, r[lo:hi], out=dx[lo:hi])                # r (g - x_hat mean(g x_hat))

        run_tasks(block, len(blocks))
        dw = partial.sum(axis=0) if want_dw else None                  # (D,)
        return (dx.reshape(grad.shape) if want_dx else None), dw


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


@lru_cache(maxsize=32)
def rope_rotations(seq_len, head_dim, theta, dtype):
    """cos + i sin of the same angles as rope_tables, as complex numbers (seq_len, head_dim/2) of
    the complex dtype that pairs with `dtype` (float32 -> complex64)."""
    cos, sin = rope_tables(seq_len, head_dim, theta, dtype)
    rot = xp.empty(cos.shape, dtype=xp.result_type(dtype, xp.complex64))
    rot.real, rot.imag = cos, sin
    rot.flags.writeable = False
    return rot


def _as_pairs(x):
    """x (..., D) viewed as D/2 complex numbers e + i o, one per (even, odd) pair: free for an
    array whose last axis is contiguous (a copy otherwise)."""
    if x.strides[-1] != x.itemsize:
        x = xp.ascontiguousarray(x)
    return x.view(xp.result_type(x.dtype, xp.complex64))


class Rope(Function):
    @staticmethod
    def forward(ctx, x, start_pos, theta):
        B, T, H, D = x.shape
        rot = rope_rotations(start_pos + T, D, theta, x.dtype)[start_pos:, None, :]  # (T, 1, D/2)
        ctx.save_for_backward(rot)
        # each pair (e, o) as the complex number e + i o, times cos a + i sin a:
        #   (e cos a - o sin a) + i (e sin a + o cos a), the rotation by a, one complex product
        return (_as_pairs(x) * rot).view(x.dtype)                      # (B, T, H, D)

    @staticmethod
    def backward(ctx, grad):
        # forward: each pair (e, o) is rotated by the angle a of its position and frequency:
        #   [y_e, y_o] = R(a) [e, o] with R(a) = [[cos a, -sin a], [sin a, cos a]].
        # A rotation is linear and orthogonal, so the gradient is rotated back by R(a)^T = R(-a):
        #   de = dy_e cos a + dy_o sin a,   do = -dy_e sin a + dy_o cos a
        # i.e. the pair (dy_e + i dy_o) times conj(cos a + i sin a) = cos a - i sin a.
        (rot,) = ctx.saved
        return (_as_pairs(grad) * rot.conj()).view(grad.dtype)


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


def _batch_axis(q):
    """The axis to split over threads: batch, or heads when there is one sequence (generation)."""
    return 0 if q.shape[0] > 1 else 1


def _min_chunk(q, k, axis):
    """min_items for run_chunks over `axis`: each thread gets at least HANDOFF_FLOP of the forward's
    two products (q k^T, P v), so one query per head (generation) stays in one thread."""
    B, H, Tq, D = q.shape
    per_item = 4 * B * H * Tq * k.shape[-2] * D // q.shape[axis]
    return -(-HANDOFF_FLOP // max(1, per_item))


def _transposed_like(shape, dtype):
    """An array shaped (B, H, T, D) whose memory is laid out as (B, T, H, D): the caller's
    `permute(0, 2, 1, 3)` back to (B, T, H, D) then gives a contiguous array, so the reshape to
    (B, T, H*D) that follows is free (no copy)."""
    B, H, T, D = shape
    return xp.empty((B, T, H, D), dtype=dtype).transpose(0, 2, 1, 3)


def _query_blocks(query_len, key_len):
    """Causal blocks [(q0, q1, k_end)]: queries q0..q1-1 see keys 0..k_end-1 only (k_end is the
    last query's position + 1), so the all-masked rectangle to the right of each block is never
    computed. 4 blocks (37.5% fewer attention products) from 256 queries on; below that one
    block: measured at 128 queries, 2 blocks of 64 saved 25% of the products but lost it again
    to the strided sub-blocks and the dk, dv accumulation."""
    n = min(4, query_len // 64) if query_len >= 256 else 1
    bounds = [query_len * i // n for i in range(n + 1)]
    offset = key_len - query_len  # queries are the last query_len of the key_len positions
    return [(bounds[i], bounds[i + 1], bounds[i + 1] + offset) for i in range(n)]


class CausalAttention(Function):
    @staticmethod
    def forward(ctx, q, k, v):
        scale = 1.0 / math.sqrt(q.shape[-1])
        B, H, Tq, D = q.shape
        Tk = k.shape[-2]
        mask = causal_mask(Tq, Tk, q.dtype)
        blocks = _query_blocks(Tq, Tk)
        offset = Tk - Tq  # query i is at position offset + i (earlier keys from a cache)
        # (B, H, Tq, Tk); for each query block only its first k_end columns are written and read
        probs = xp.empty((B, H, Tq, Tk), dtype=q.dtype)
        out = _transposed_like(q.shape, q.dtype)                        # (B, H, Tq, D)
        axis = _batch_axis(q)

        def chunk(start, stop):  # each thread: its own slice of batch (or heads), disjoint
            sl = (slice(None),) * axis + (slice(start, stop),)
            # the scale goes on q (D wide) rather than on the scores (Tk wide)
            qs, ks, vs, ps, os_ = q[sl] * scale, k[sl], v[sl], probs[sl], out[sl]
            for q0, q1, k_end in blocks:
                scores = ps[..., q0:q1, :k_end]                         # (b, H, q1-q0, k_end)

                def compute_scores():
                    xp.matmul(qs[..., q0:q1, :], xp.swapaxes(ks[..., :k_end, :], -1, -2),
                              out=scores)                               # scale q k^T
                    xp.add(scores, mask[q0:q1, :k_end], out=scores)

                compute_scores()
                # softmax, in place. It is the same for any constant c_i taken off row i; the
                # usual c_i is the row's max, but a max along short rows costs 40-80 ns a row,
                # more than the rest of the softmax when there are thousands of rows (training).
                # Query i always sees its own key, so c_i = s_ii (a diagonal, copied out) keeps
                # the row's largest exp >= 1: the total never underflows, and a term that does is
                # below e^-87 of the total. A score far above the own key's can overflow float32
                # (s_ij - s_ii > 88) or make 1/total subnormal: a row whose total is beyond 1e30
                # (or inf, or nan) is done again with its max. Each row's shift depends on that
                # row alone, so results do not depend on the number of threads. With few rows
                # (one query per head in generation) the max is cheaper than the extra calls.
                shift = None  # set when the row max is needed (few rows, or a row to redo)
                if B * H * (q1 - q0) >= 256:  # rows of the whole block, not of this chunk
                    own = xp.diagonal(scores, offset=offset + q0, axis1=-2, axis2=-1)[..., None].copy()
                    scores -= own                                       # (b, H, q1-q0, 1)
                    with xp.errstate(over="ignore"):  # an overflow is caught just below
                        xp.exp(scores, out=scores)
                    total = xp.einsum("...k->...", scores)[..., None]   # (einsum: 4x a .sum here)
                    redo = ~(total < 1e30)
                    if redo.any():
                        compute_scores()
                        shift = xp.where(redo, scores.max(axis=-1, keepdims=True), own)
                else:
                    shift = scores.max(axis=-1, keepdims=True)
                if shift is not None:
                    scores -= shift
                    xp.exp(scores, out=scores)
                    total = xp.einsum("...k->...", scores)[..., None]
                xp.divide(1.0, total, out=total)
                scores *= total
                xp.matmul(scores, vs[..., :k_end, :], out=os_[..., q0:q1, :])  # P v

        run_chunks(chunk, q.shape[axis], _min_chunk(q, k, axis))
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, probs, out)
        return out                                                      # (B, H, Tq, D)

    @staticmethod
    def backward(ctx, grad):
        # forward: S = scale q k^T + mask, P = softmax(S) over keys, O = P v. So
        #   dv = P^T dO                           (O is linear in v)
        #   dP = dO v^T                           (O is linear in P)
        #   dS = P * (dP - sum_j dP_j P_j)        (softmax backward, per query row;
        #                                          masked entries have P = 0, so dS = 0 there)
        #   and sum_j dP_ij P_ij = sum_j (dO_i . v_j) P_ij = dO_i . (sum_j P_ij v_j) = dO_i . O_i,
        #   a sum over D per row instead of over Tk (O was saved by the forward)
        #   dq = scale dS k,  dk = scale dS^T q   (S is bilinear in q and k)
        # Per causal query block (rows q0..q1-1, keys 0..k_end-1; P = 0 beyond k_end): dq of the
        # block is its rows of scale dS k, and dv, dk sum P^T dO and scale dS^T q over the
        # blocks, each block adding to the keys it sees.
        q, k, v, probs, out = ctx.saved
        scale = ctx.scale
        Tq, Tk = q.shape[-2], k.shape[-2]
        blocks = _query_blocks(Tq, Tk)
        dq = _transposed_like(q.shape, q.dtype)                          # (B, H, Tq, D)
        dk = _transposed_like(k.shape, k.dtype)                          # (B, H, Tk, D)
        dv = _transposed_like(v.shape, v.dtype)                          # (B, H, Tk, D)
        axis = _batch_axis(q)

        def chunk(start, stop):
            sl = (slice(None),) * axis + (slice(start, stop),)
            qs, ks, vs, ps, gs, os_ = q[sl], k[sl], v[sl], probs[sl], grad[sl], out[sl]
            dqs, dks, dvs = dq[sl], dk[sl], dv[sl]
            last = len(blocks) - 1
            for i in range(last, -1, -1):  # the widest block first: it writes every key row
                q0, q1, k_end = blocks[i]
                p, g = ps[..., q0:q1, :k_end], gs[..., q0:q1, :]
                first = i == last  # the last block's last query sees every key: k_end == Tk,
                #                    so it writes every row of dv, dk; the others add to theirs
                pt = xp.swapaxes(p, -1, -2)
                if first:
                    xp.matmul(pt, g, out=dvs)                            # P^T dO
                else:
                    dvs[..., :k_end, :] += pt @ g
                row_dot = xp.einsum("...d,...d->...", g, os_[..., q0:q1, :])[..., None]  # dO_i . O_i
                d_scores = g @ xp.swapaxes(vs[..., :k_end, :], -1, -2)   # dP
                d_scores -= row_dot
                d_scores *= p                                            # dS
                dq_block = dqs[..., q0:q1, :]
                xp.matmul(d_scores, ks[..., :k_end, :], out=dq_block)
                dq_block *= scale                                        # dq = scale dS k
                ds_t = xp.swapaxes(d_scores, -1, -2)
                if first:
                    xp.matmul(ds_t, qs[..., q0:q1, :], out=dks)          # dS^T q
                else:
                    dks[..., :k_end, :] += ds_t @ qs[..., q0:q1, :]
            dks *= scale                                                 # dk = scale dS^T q

        run_chunks(chunk, q.shape[axis], _min_chunk(q, k, axis))
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
        N, F = x2.shape[0], w1.shape[0]
        gate = xp.empty((N, F), dtype=x.dtype)                  # silu(h1)
        h3 = xp.empty((N, F), dtype=x.dtype)
        s = xp.empty((N, F), dtype=x.dtype)
        hidden = xp.empty((N, F), dtype=x.dtype)
        out = xp.empty((N, w2.shape[0]), dtype=x.dtype)

        def block(lo, hi):  # every step is row-local: one pass over each row block, in cache
            xb, a, sr = x2[lo:hi], gate[lo:hi], s[lo:hi]
            xp.matmul(xb, w1.T, out=a)                          # h1 = x W1^T, gate pre-activation
            xp.matmul(xb, w3.T, out=h3[lo:hi])                  # h3 = x W3^T, value
            xp.multiply(a, 0.5, out=sr)                         # s = sigmoid(h1)
            xp.tanh(sr, out=sr)                                 #   = (1 + tanh(h1/2)) / 2
            sr *= 0.5                                           #   (as ops.sigmoid_array)
            sr += 0.5
            a *= sr                                             # h1 <- gate = silu(h1) = h1 s
            xp.multiply(a, h3[lo:hi], out=hidden[lo:hi])        # hidden = gate * h3
            xp.matmul(hidden[lo:hi], w2.T, out=out[lo:hi])      # y = hidden W2^T

        run_blocks(block, N)
        ctx.save_for_backward(x, w1, w2, w3, gate, h3, s, hidden)
        return out.reshape(x.shape)                             # (..., D)

    @staticmethod
    def backward(ctx, grad):
        # forward: a = silu(h1) * h3 with h1 = x W1^T, h3 = x W3^T, then y = a W2^T. So
        #   dW2 = dy^T a,  da = dy W2                                  (as in Linear)
        #   dh3 = da * silu(h1),  dh1 = da * h3 * silu'(h1)
        #   silu(h) = h s(h)  =>  silu'(h) = s + h s (1 - s) = s + silu(h) (1 - s)
        #   (the forward saved s and gate = silu(h1), so h1 itself is not needed)
        #   dW1 = dh1^T x,  dW3 = dh3^T x,  dx = dh1 W1 + dh3 W3
        # da, dh1, dh3 and dx are row-local (one pass per row block); the weight gradients sum
        # over all rows, so they are products of their own, blocked over their output rows.
        x, w1, w2, w3, gate, h3, s, hidden = ctx.saved
        x2 = x.reshape(-1, x.shape[-1])                         # (N, D)
        g2 = grad.reshape(-1, grad.shape[-1])                   # (N, D)
        N, F = gate.shape
        want_dx = ctx.needs_input_grad[0]
        dh1 = xp.empty((N, F), dtype=grad.dtype)
        dh3 = xp.empty((N, F), dtype=grad.dtype)
        dx = xp.empty_like(x2) if want_dx else None

        def block(lo, hi):
            da, gr, sr = dh1[lo:hi], gate[lo:hi], s[lo:hi]
            xp.matmul(g2[lo:hi], w2, out=da)                    # da = dy W2 (becomes dh1)
            xp.multiply(da, gr, out=dh3[lo:hi])                 # dh3 = da * silu(h1)
            d_silu = gr * sr                                    # silu'(h1) = s + gate - gate s
            xp.subtract(gr, d_silu, out=d_silu)
            d_silu += sr
            da *= h3[lo:hi]                                     # dh1 = da * h3 * silu'(h1)
            da *= d_silu
            if want_dx:
                xp.matmul(da, w1, out=dx[lo:hi])                # dx = dh1 W1 + dh3 W3
                dx[lo:hi] += dh3[lo:hi] @ w3

        run_blocks(block, N)
        # (F, D), (D, F), (F, D), on another thread while the backward walk goes on (see Linear)
        dw1, dw2, dw3 = mm_later(dh1.T, x2), mm_later(g2.T, hidden), mm_later(dh3.T, x2)
        return (dx.reshape(x.shape) if want_dx else None), dw1, dw2, dw3


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
