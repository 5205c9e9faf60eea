"""Optimizers (AdamW, SGD), global gradient-norm clipping and the cosine learning-rate schedule.

Flat buffers
------------
An optimizer copies the values of its parameters into ONE contiguous array and re-points each
parameter's `.data` at a view of its slice (`p.data = flat[offset:offset + n].reshape(shape)`).
Its state (Adam's m and v, SGD's momentum) is flat the same way, and each step first copies every
`p.grad` into a flat gradient buffer of the optimizer's own. An update is then a handful of large
vectorised in-place operations over those buffers, not a Python loop of small ones.

Parameters are laid out with the weight-decayed ones first, so decay touches one contiguous slice.

The optimizer never writes to a `p.grad` array (it only reads them) and never rebinds `p.grad`
except in `zero_grad()`, which sets every `p.grad = None`.

If someone rebinds `p.data` to a new array after construction (loading weights by assignment, for
example), the next `step()` notices it, copies the new values into the flat buffer and re-points
`p.data` at its view again. Writing into `p.data` in place (`p.data[...] = w`) needs nothing.

Parameters whose `.grad` is None at a step are treated as having a zero gradient: nothing is
skipped, so their moments still decay, Adam's momentum still moves them and weight decay still
shrinks them. Tensors with `requires_grad=False` are left out entirely (frozen). A tensor passed
twice (tied weights) is optimized once, under the first name given.
"""
import math

from .backend import xp, is_float
from .parallel import run_chunks

__all__ = ["AdamW", "SGD", "clip_grad_norm", "cosine_schedule"]


def _named(params, what):
    """[(name, Tensor)] from a list of Tensors or of (name, Tensor) pairs; names given or not."""
    params = list(params)
    if not params:
        raise ValueError(f"{what}: got an empty parameter list")
    named, given = [], None
    for i, item in enumerate(params):
        is_pair = isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)
        if given is None:
            given = is_pair
        elif given != is_pair:
            raise TypeError(f"{what}: mix of plain Tensors and (name, Tensor) pairs in params "
                            f"(item {i}); pass one kind")
        name, tensor = item if is_pair else (f"param{i}", item)
        if not hasattr(tensor, "data") or not hasattr(tensor, "grad"):
            raise TypeError(f"{what}: parameter {name!r} is a {type(tensor).__name__}, not a Tensor")
        named.append((name, tensor))
    return named, given


class _FlatOptimizer:
    """The parameter bookkeeping shared by AdamW and SGD: flat buffer, views, gradient gathering."""

    def __init__(self, params, lr, weight_decay, no_decay, what):
        named, have_names = _named(params, what)
        if no_decay is not None and not have_names:
            raise ValueError(f"{what}: no_decay names parameters, so pass params as (name, Tensor) "
                             "pairs (model.named_parameters())")
        seen_ids, seen_names, kept = set(), set(), []
        for name, p in named:
            if name in seen_names:
                raise ValueError(f"{what}: two parameters are named {name!r}")
            seen_names.add(name)
            if id(p) in seen_ids or not p.requires_grad:
                continue  # tied weight already listed, or frozen
            seen_ids.add(id(p))
            kept.append((name, p))
        if not kept:
            raise ValueError(f"{what}: no parameter requires grad")
        if no_decay is not None:
            no_decay = set(no_decay)
            unknown = no_decay - seen_names
            if unknown:
                raise ValueError(f"{what}: no_decay names unknown parameters: {sorted(unknown)}")
            decays = [name not in no_decay for name, _ in kept]
        else:
            decays = [p.data.ndim >= 2 for _, p in kept]
        dtypes = {p.data.dtype for _, p in kept}
        if len(dtypes) != 1 or not is_float(next(iter(dtypes))):
            raise TypeError(f"{what}: all parameters must share one floating dtype, got "
                            f"{sorted(str(d) for d in dtypes)}")
        dtype = dtypes.pop()

        # decayed parameters first, each group in the order given: decay is then one slice
        order = [i for i, d in enumerate(decays) if d] + [i for i, d in enumerate(decays) if not d]
        self.names = [kept[i][0] for i in order]
        self.params = [kept[i][1] for i in order]
        self.decayed = [decays[i] for i in order]
        self.shapes = [tuple(p.data.shape) for p in self.params]
        self.sizes = [int(p.data.size) for p in self.params]
        self.offsets, total = [], 0
        for n in self.sizes:
            self.offsets.append(total)
            total += n
        self.numel = total
        self.n_decayed = sum(n for n, d in zip(self.sizes, self.decayed) if d)
        self.dtype = dtype

        self.flat = xp.empty(total, dtype=dtype)
        self._grad = xp.empty(total, dtype=dtype)
        self._views = [None] * len(self.params)
        self._grad_views = []
        for i, p in enumerate(self.params):
            self._relink(i)
            o, n = self.offsets[i], self.sizes[i]
            self._grad_views.append(self._grad[o:o + n].reshape(self.shapes[i]))
        self.lr = lr
        self.weight_decay = float(weight_decay)
        self.step_count = 0

    def _relink(self, i):
        """Copy parameter i's current values into its slice and point its .data at the view."""
        p, o, n = self.params[i], self.offsets[i], self.sizes[i]
        if tuple(p.data.shape) != self.shapes[i]:
            raise ValueError(f"parameter {self.names[i]!r} changed shape from {self.shapes[i]} to "
                             f"{tuple(p.data.shape)} after the optimizer was made")
        view = self.flat[o:o + n].reshape(self.shapes[i])
        if p.data is not view:
            xp.copyto(view, p.data, casting="same_kind")
        p.data = view
        self._views[i] = view

    def _gather_grads(self):
        """Copy every p.grad (None: zeros) into the flat gradient buffer; p.grad is only read."""
        for i, p in enumerate(self.params):
            if p.data is not self._views[i]:
                self._relink(i)
            g = p.grad
            if g is None:
                self._grad_views[i].fill(0)
                continue
            if tuple(g.shape) != self.shapes[i]:
                raise ValueError(f"parameter {self.names[i]!r} has shape {self.shapes[i]} but its "
                                 f"gradient has shape {tuple(g.shape)}")
            xp.copyto(self._grad_views[i], g, casting="same_kind")
        return self._grad

    def zero_grad(self):
        """Set every parameter's .grad to None (the engine then allocates fresh ones)."""
        for p in self.params:
            p.grad = None

    def _check_state(self, d, array_keys, what):
        missing = [k for k in ("step", "sizes") + array_keys if k not in d]
        if missing:
            raise KeyError(f"{what}.load_state_dict: the state has no {missing}")
        sizes = xp.asarray(d["sizes"]).tolist()
        if sizes != self.sizes:
            raise ValueError(f"{what}.load_state_dict: the state was made for {len(sizes)} "
                             f"parameters of sizes {_short(sizes)}, this optimizer has "
                             f"{len(self.sizes)} of sizes {_short(self.sizes)} (decayed ones first)")
        for k in array_keys:
            shape = tuple(xp.shape(d[k]))
            if shape != (self.numel,):
                raise ValueError(f"{what}.load_state_dict: {k!r} has shape {shape}, expected "
                                 f"({self.numel},), the parameters' total element count")


# Elementwise updates run block by block: each block's dozen passes then stay in cache instead of
# streaming the whole buffers through memory a dozen times; blocks are spread over the thread pool.
_BLOCK = 1 << 16


def _blocked(update, n):
    """update(lo, hi) over consecutive blocks of at most _BLOCK elements covering range(n); the
    blocks are split over the pool threads (disjoint: results do not depend on the split)."""
    n_blocks = -(-n // _BLOCK)

    def blocks(first, last):
        for i in range(first, last):
            update(i * _BLOCK, min(n, (i + 1) * _BLOCK))

    run_chunks(blocks, n_blocks, min_items=4)


def _short(sizes):
    return str(sizes) if len(sizes) <= 8 else str(sizes[:8])[:-1] + ", ...]"


class AdamW(_FlatOptimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter, "Decoupled Weight Decay Regularization").

    At step t (1, 2, ...) with gradient g:
        m = b1 * m + (1 - b1) * g              v = b2 * v + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)                v_hat = v / (1 - b2**t)
        p = p - lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)      (wd only for decayed parameters)

    Which parameters decay: those with ndim >= 2 (matrices: linear and embedding weights); 1-D
    parameters (RMSNorm scales) are not decayed. `no_decay`, a set of parameter names (params must
    then be (name, Tensor) pairs), replaces that rule: exactly the named parameters are not decayed
    and all others are. A parameter whose .grad is None at a step counts as a zero gradient (see
    the module docstring). `lr` may be reassigned between steps (a schedule does).

    float32 parameters stay float32: every constant is a Python float.
    """

    def __init__(self, params, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, no_decay=None):
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"AdamW: betas must lie in [0, 1), got {betas}")
        if eps <= 0 or weight_decay < 0:
            raise ValueError(f"AdamW: need eps > 0 and weight_decay >= 0, got eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, lr, weight_decay, no_decay, "AdamW")
        self.betas = (b1, b2)
        self.eps = float(eps)
        self.m = xp.zeros(self.numel, dtype=self.dtype)
        self.v = xp.zeros(self.numel, dtype=self.dtype)

    def step(self):
        g = self._gather_grads()  # our own buffer: used as scratch below
        self.step_count += 1
        t = self.step_count
        b1, b2 = self.betas
        lr, wd, eps = float(self.lr), self.weight_decay, self.eps
        m, v, flat = self.m, self.v, self.flat
        bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        decay_end = self.n_decayed if wd else 0
        decay = 1.0 - lr * wd
        eps_scaled, step_size = eps * math.sqrt(bc2), lr * math.sqrt(bc2) / bc1

        def update(lo, hi):
            # the same operations for every element in the same order, whatever the blocking
            gb, mb, vb = g[lo:hi], m[lo:hi], v[lo:hi]
            # m = b1 m + (1-b1) g ; v = b2 v + (1-b2) g^2, without a temporary: g scaled in place
            mb *= b1
            gb *= 1.0 - b1
            mb += gb
            gb *= gb                                   # (1-b1)^2 g^2
            gb *= (1.0 - b2) / (1.0 - b1) ** 2         # (1-b2) g^2
            vb *= b2
            vb += gb
            # g <- lr * m_hat / (sqrt(v_hat) + eps) = (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
            #    = (lr sqrt(bc2)/bc1) * m / (sqrt(v) + eps sqrt(bc2)): one pass fewer
            xp.sqrt(vb, out=gb)
            gb += eps_scaled
            xp.divide(mb, gb, out=gb)
            gb *= step_size
            if lo < decay_end:  # p - lr*wd*p, with p before this step's update
                flat[lo:min(hi, decay_end)] *= decay
            flat[lo:hi] -= gb

        _blocked(update, self.numel)

    def state_dict(self):
        """Plain arrays and numbers: step, m, v, the layout's sizes and the hyperparameters."""
        return {"step": int(self.step_count), "m": self.m.copy(), "v": self.v.copy(),
                "sizes": xp.asarray(self.sizes, dtype=xp.int64), "lr": float(self.lr),
                "beta1": self.betas[0], "beta2": self.betas[1], "eps": self.eps,
                "weight_decay": self.weight_decay}

    def load_state_dict(self, d):
        """Restore a state_dict (also the hyperparameters in it). Values are copied in."""
        self._check_state(d, ("m", "v"), "AdamW")
        self.m[...] = xp.asarray(d["m"])
        self.v[...] = xp.asarray(d["v"])
        self.step_count = int(d["step"])
        if "lr" in d:
            self.lr = float(d["lr"])
        if "beta1" in d and "beta2" in d:
            self.betas = (float(d["beta1"]), float(d["beta2"]))
        if "eps" in d:
            self.eps = float(d["eps"])
        if "weight_decay" in d:
            self.weight_decay = float(d["weight_decay"])


class SGD(_FlatOptimizer):
    """Stochastic gradient descent with optional momentum and (L2, coupled) weight decay.

        g = g + wd * p             (decayed parameters only: ndim >= 2, or per `no_decay`)
        buf = momentum * buf + g   (buf starts at zero, so the first step's buf is g)
        p = p - lr * buf           (p = p - lr * g without momentum)

    The decay rule and the other conventions are AdamW's (see there and the module docstring).
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, no_decay=None):
        if not 0.0 <= momentum < 1.0 or weight_decay < 0:
            raise ValueError(f"SGD: need 0 <= momentum < 1 and weight_decay >= 0, got "
                             f"momentum={momentum}, weight_decay={weight_decay}")
        super().__init__(params, lr, weight_decay, no_decay, "SGD")
        self.momentum = float(momentum)
        self.buf = xp.zeros(self.numel, dtype=self.dtype) if self.momentum else None

    def step(self):
        g = self._gather_grads()
        self.step_count += 1
        lr, wd = float(self.lr), self.weight_decay
        nd = self.n_decayed
        if wd and nd:
            g[:nd] += wd * self.flat[:nd]
        if self.buf is not None:
            self.buf *= self.momentum
            self.buf += g
            xp.multiply(self.buf, lr, out=g)
        else:
            g *= lr
        self.flat -= g

    def state_dict(self):
        d = {"step": int(self.step_count), "sizes": xp.asarray(self.sizes, dtype=xp.int64),
             "lr": float(self.lr), "momentum": self.momentum, "weight_decay": self.weight_decay}
        if self.buf is not None:
            d["buf"] = self.buf.copy()
        return d

    def load_state_dict(self, d):
        self._check_state(d, ("buf",) if self.buf is not None else (), "SGD")
        if self.buf is not None:
            self.buf[...] = xp.asarray(d["buf"])
        self.step_count = int(d["step"])
        if "lr" in d:
            self.lr = float(d["lr"])
        if "weight_decay" in d:
            self.weight_decay = float(d["weight_decay"])


def clip_grad_norm(params, max_norm):
    """Scale all gradients together so their global L2 norm is at most max_norm.

    The norm is taken over every parameter's .grad (None counts as zero; a tensor listed twice
    counts once) and returned as a Python float, as it was BEFORE clipping. When it exceeds
    max_norm, each p.grad is multiplied in place by max_norm / (norm + 1e-6). A non-finite norm
    (inf/nan) is returned as is and the gradients are left untouched: check it and skip the step.
    Each parameter's sum of squares is accumulated in the gradient's dtype, so float32 gradients
    beyond about 1e19 (squares past float32's range) give an infinite norm.
    """
    named, _ = _named(params, "clip_grad_norm")
    grads, seen = [], set()
    for _, p in named:
        if id(p) not in seen and p.grad is not None:
            seen.add(id(p))
            grads.append(p)
    total = 0.0  # a Python float: the per-parameter sums are added in float64
    for p in grads:
        g = p.grad.reshape(-1)
        total += float(xp.dot(g, g))  # one BLAS dot (6x faster than summing squares in float64)
    norm = math.sqrt(total)
    if math.isfinite(norm) and norm > max_norm:
        scale = float(max_norm) / (norm + 1e-6)
        for p in grads:
            if p.grad.flags.writeable:
                p.grad *= scale
            else:  # a read-only array (not one the engine made): replace it instead
                p.grad = p.grad * scale
    return norm


def cosine_schedule(step, max_lr, warmup_steps, total_steps, min_lr=None):
    """Learning rate at `step` (0-based): linear warmup, cosine decay, then constant.

    * step < warmup_steps: max_lr * (step + 1) / warmup_steps (so the last warmup step is max_lr);
    * warmup_steps <= step < total_steps: min_lr + (max_lr - min_lr) * (1 + cos(pi * s)) / 2 with
      s = (step - warmup_steps) / (total_steps - warmup_steps), from max_lr towards min_lr;
    * step >= total_steps: min_lr.
    min_lr defaults to 10% of max_lr (as in the LLaMA paper). Returns a Python float.
    """
    if warmup_steps < 0 or total_steps < warmup_steps:
        raise ValueError(f"cosine_schedule: need 0 <= warmup_steps <= total_steps, got "
                         f"warmup_steps={warmup_steps}, total_steps={total_steps}")
    max_lr = float(max_lr)
    min_lr = 0.1 * max_lr if min_lr is None else float(min_lr)
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    s = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * s))
