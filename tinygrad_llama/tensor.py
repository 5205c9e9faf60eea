"""Tensor, Function and the backward walk: the whole autograd engine.

A Tensor wraps an array (`.data`). Applying a Function to tensors computes the output array with
`Function.forward` and, when a gradient is wanted, remembers the Function's context (`ctx`) and its
input tensors on the output. `Tensor.backward()` walks those records in reverse topological order and
calls each `Function.backward(ctx, grad)`, which returns one gradient per input.

The engine, not the ops, does four things for every gradient an op returns:
  * un-broadcasts it: sums it back to its input's shape (so `Add.backward` may return `grad` as is);
  * checks its shape and dtype against the input and names the op if they differ;
  * accumulates it: in place when the engine owns the array, else by making a new one;
  * waits for it when its product still runs on another thread (parallel.matmul_later, used for
    weight gradients) before reading it, and for all of them before backward() returns.
"""
from contextlib import contextmanager

from .backend import xp, DEFAULT_FLOAT, is_float

_grad_enabled = True


@contextmanager
def no_grad():
    """Within this block no graph is recorded: outputs never require grad."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


class Context:
    """What a Function's backward needs from its forward: saved arrays and a few flags."""

    __slots__ = ("saved", "needs_input_grad", "parents", "function", "__dict__")

    def save_for_backward(self, *arrays):
        self.saved = arrays


class Function:
    """One differentiable operation: `forward(ctx, *arrays, **options)` -> array and
    `backward(ctx, grad)` -> one gradient (or None) per array input. Both work on plain arrays.

    A backward returns new arrays or views of `grad`, never an array saved from the forward pass.
    It may return a weight gradient whose product is still running on another thread
    (`parallel.matmul_later`): the engine waits for it; if you call a backward yourself, call
    `parallel.wait_later()` before reading what it returned.
    """

    @staticmethod
    def forward(ctx, *arrays, **options):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options):
        tensors = [x if isinstance(x, Tensor) else Tensor(x) for x in inputs]
        ctx = Context()
        ctx.saved = ()
        ctx.needs_input_grad = tuple(t.requires_grad for t in tensors)
        out = Tensor.__new__(Tensor)
        out.data = cls.forward(ctx, *[t.data for t in tensors], **options)
        out.grad = None
        out._retain = False
        if _grad_enabled and any(ctx.needs_input_grad):
            out.requires_grad = True
            ctx.parents = tensors
            ctx.function = cls
            out._ctx = ctx
        else:
            out.requires_grad = False
            out._ctx = None
        return out


class Tensor:
    __slots__ = ("data", "grad", "requires_grad", "_ctx", "_retain")
    __array_priority__ = 1000  # so `ndarray + Tensor` calls Tensor.__radd__

    def __init__(self, data, requires_grad=False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        from_array = isinstance(data, xp.ndarray) or isinstance(data, xp.generic)
        data = xp.asarray(data, dtype=dtype)
        if dtype is None and not from_array and data.dtype == xp.float64:
            data = data.astype(DEFAULT_FLOAT)  # Python floats and lists default to float32
        if requires_grad and not is_float(data.dtype):
            raise TypeError(f"only floating-point tensors can require grad, got dtype {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None
        self._retain = False

    # ---- plain attributes -------------------------------------------------------------------
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._ctx is None)

    def numpy(self):
        return self.data

    def item(self):
        return self.data.item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def zero_grad(self):
        self.grad = None

    def retain_grad(self):
        """Keep this non-leaf tensor's gradient in `.grad` after backward (for studying it)."""
        self._retain = True
        return self

    def requires_grad_(self, flag=True):
        if flag and not is_float(self.data.dtype):
            raise TypeError(f"only floating-point tensors can require grad, got dtype {self.dtype}")
        self.requires_grad = bool(flag)
        return self

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = xp.array2string(self.data, precision=4, threshold=20, edgeitems=2,
                               prefix="Tensor(").replace("\n", "\n")
        extra = f", dtype={self.dtype}"
        if self._ctx is not None:
            extra += f", grad_fn={self._ctx.function.__name__}"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"Tensor({body}{extra})"

    # ---- the backward walk ------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) * grad into `.grad` of every leaf that requires grad.

        `grad` is the upstream gradient, shaped like self; it may be omitted for a scalar (one
        element), where it is 1. The graph is released afterwards unless `retain_graph=True`.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: no input of "
                               "the computation had requires_grad=True (or it ran under no_grad())")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() on a non-scalar tensor of shape {self.shape} needs "
                                   "an explicit upstream gradient: call .backward(grad) with an "
                                   "array of that shape")
            grad = xp.ones(self.shape, dtype=self.dtype)
        else:
            grad = xp.array(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): upstream gradient has shape {grad.shape}, "
                                 f"the tensor has shape {self.shape}")

        try:
            self._walk_backward(grad, retain_graph)
        finally:
            parallel.wait_later()  # weight-gradient products still running (see below)

    def _walk_backward(self, grad, retain_graph):
        # A Function's backward may return a gradient whose product is still running on another
        # thread (parallel.matmul_later: weight gradients, needed only by the optimizer). Such an
        # array may be stored as a leaf's .grad, but before the walk reads it, adds to it, or
        # passes it to a backward, it waits for it (`_ready`).
        # pending[id(t)] = [gradient so far, whether the engine alone owns that array]
        pending = {id(self): [grad, True]}
        for node in _reverse_topological_order(self):
            entry = pending.pop(id(node), None)
            if entry is None:
                continue  # no gradient flows here (e.g. through a non-differentiable branch)
            g, owned = entry
            ctx = node._ctx
            if ctx is None or node._retain:
                _store_grad(node, g, owned and ctx is None)  # a retained one is still used below
            if ctx is None:
                continue
            _ready(g)
            if not hasattr(ctx, "parents"):
                raise RuntimeError("backward() through a graph that was already released: call "
                                   "backward(retain_graph=True) the first time to go through it twice")
            input_grads = ctx.function.backward(ctx, g)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            for parent, parent_grad in zip(ctx.parents, input_grads):
                if parent_grad is None or not parent.requires_grad:
                    continue
                returned = parent_grad
                parent_data = parent.data
                if returned.shape != parent_data.shape:
                    _ready(returned)
                    parent_grad = _unbroadcast(returned, parent_data.shape, ctx.function)
                if parent_grad.dtype != parent_data.dtype:
                    raise TypeError(f"{ctx.function.__name__}.backward returned a {parent_grad.dtype} "
                                    f"gradient for a {parent_data.dtype} input")
                # an array is ours to modify in place only if it owns its memory, is not handed to
                # two inputs at once, and is not the upstream gradient that someone else also holds
                mine = parent_grad is not returned or (
                    (returned is not g or owned)
                    and returned.flags.owndata and returned.flags.writeable
                    and (len(input_grads) == 1 or sum(pg is returned for pg in input_grads) == 1))
                slot = pending.get(id(parent))
                if slot is None:
                    pending[id(parent)] = [parent_grad, mine]
                    continue
                _ready(slot[0], parent_grad)
                if slot[1]:
                    slot[0] += parent_grad
                else:
                    slot[0] = slot[0] + parent_grad
                    slot[1] = True
            if not retain_graph:
                del ctx.parents, ctx.saved  # free the graph and the forward's saved arrays
                ctx.__dict__.clear()

    # ---- operators (each one Function from ops.py) ---------------------------------------------
    def __add__(self, other): return ops.Add.apply(*_pair(self, other, "+"))
    def __radd__(self, other): return ops.Add.apply(*_pair(other, self, "+"))
    def __sub__(self, other): return ops.Sub.apply(*_pair(self, other, "-"))
    def __rsub__(self, other): return ops.Sub.apply(*_pair(other, self, "-"))
    def __mul__(self, other): return ops.Mul.apply(*_pair(self, other, "*"))
    def __rmul__(self, other): return ops.Mul.apply(*_pair(other, self, "*"))
    def __truediv__(self, other): return ops.Div.apply(*_pair(self, other, "/"))
    def __rtruediv__(self, other): return ops.Div.apply(*_pair(other, self, "/"))
    def __pow__(self, other): return ops.Pow.apply(*_pair(self, other, "**"))
    def __rpow__(self, other): return ops.Pow.apply(*_pair(other, self, "**"))
    def __neg__(self): return ops.Neg.apply(self)
    def __matmul__(self, other): return matmul(self, other)
    def __rmatmul__(self, other): return matmul(other, self)

    # comparisons give plain boolean tensors: there is no gradient through them
    def __lt__(self, other): return Tensor(self.data < _raw(other))
    def __le__(self, other): return Tensor(self.data <= _raw(other))
    def __gt__(self, other): return Tensor(self.data > _raw(other))
    def __ge__(self, other): return Tensor(self.data >= _raw(other))
    def __eq__(self, other): return Tensor(self.data == _raw(other))
    def __ne__(self, other): return Tensor(self.data != _raw(other))
    __hash__ = object.__hash__

    def sum(self, axis=None, keepdims=False): return ops.Sum.apply(self, axis=axis, keepdims=keepdims)
    def mean(self, axis=None, keepdims=False): return ops.Mean.apply(self, axis=axis, keepdims=keepdims)
    def max(self, axis=None, keepdims=False): return ops.Max.apply(self, axis=axis, keepdims=keepdims)
    def exp(self): return ops.Exp.apply(self)
    def log(self): return ops.Log.apply(self)
    def sqrt(self): return ops.Sqrt.apply(self)
    def tanh(self): return ops.Tanh.apply(self)
    def sigmoid(self): return ops.Sigmoid.apply(self)
    def relu(self): return ops.Relu.apply(self)
    def silu(self): return ops.Silu.apply(self)
    def softmax(self, axis=-1): return ops.Softmax.apply(self, axis=axis)
    def log_softmax(self, axis=-1): return ops.LogSoftmax.apply(self, axis=axis)
    def astype(self, dtype): return ops.Cast.apply(self, dtype=xp.dtype(dtype))

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return ops.Reshape.apply(self, shape=shape)

    def permute(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if sorted(a % self.ndim for a in axes) != list(range(self.ndim)):
            raise ValueError(f"permute: axes {axes} are not a permutation of {self.ndim} axes")
        return ops.Permute.apply(self, axes=tuple(a % self.ndim for a in axes))

    def transpose(self, *axes):
        """NumPy's transpose: no axes reverses them, else a permutation."""
        return self.permute(*axes) if axes else self.permute(tuple(reversed(range(self.ndim))))

    def swapaxes(self, a, b):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.permute(axes)

    T = property(lambda self: self.transpose())

    def expand(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        try:
            xp.broadcast_shapes(self.shape, shape)
        except ValueError:
            raise ValueError(f"cannot expand shape {self.shape} to {shape}") from None
        return ops.Expand.apply(self, shape=tuple(shape))

    broadcast_to = expand

    def __getitem__(self, index):
        return ops.GetItem.apply(self, index=_raw_index(index))


# ---- helpers used by the walk -----------------------------------------------------------------
def _reverse_topological_order(root):
    """Nodes that need a gradient, each after every node that consumes it. Iterative, so graphs of
    any depth work (a recursive walk overflows Python's stack at about a thousand ops)."""
    # a node is marked visited when it is expanded, not when it is pushed: marking on push lets a
    # consumer finish before an input that is still waiting on the stack (y + f(y) lost f's share)
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        ctx = node._ctx
        if ctx is not None and hasattr(ctx, "parents"):
            for parent in ctx.parents:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    order.reverse()
    return order


def _unbroadcast(grad, shape, function):
    """Sum a gradient over the axes that broadcasting added or stretched, back to `shape`."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra < 0:
        raise ValueError(f"{function.__name__}.backward returned a gradient of shape {grad.shape} "
                         f"for an input of shape {shape}")
    stretched = tuple(i + extra for i, n in enumerate(shape) if n == 1 and grad.shape[i + extra] != 1)
    summed = grad.sum(axis=tuple(range(extra)) + stretched, keepdims=True)
    if summed.shape[extra:] != shape:
        raise ValueError(f"{function.__name__}.backward returned a gradient of shape {grad.shape} "
                         f"for an input of shape {shape}")
    return summed.reshape(shape)


def _ready(*arrays):
    """Wait for the products still running on other threads if any of `arrays` is theirs."""
    if any(parallel.pending(a) for a in arrays):
        parallel.wait_later()


def _store_grad(tensor, grad, owned):
    if tensor.grad is None and owned:
        tensor.grad = grad  # may still be filled in by another thread: backward() waits for it
        return
    _ready(grad)
    if tensor.grad is None:
        tensor.grad = xp.array(grad)
    else:
        tensor.grad += grad


# ---- helpers used by the operators ------------------------------------------------------------
def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _raw_index(index):
    if isinstance(index, tuple):
        return tuple(_raw(i) for i in index)
    return _raw(index)


def _as_operand(value, like):
    """A constant (Python number or array) as an array of the tensor's float dtype, so that
    `float32_tensor * np.float64(2.0)` stays float32 (NumPy 2 would promote it)."""
    array = xp.asarray(value)
    if is_float(like.dtype) and array.dtype != like.dtype and array.dtype.kind in "biuf":
        array = array.astype(like.dtype)
    return Tensor(array)


def _pair(a, b, symbol):
    if not isinstance(a, Tensor):
        a = _as_operand(a, b)
    elif not isinstance(b, Tensor):
        b = _as_operand(b, a)
    # the checks below cost microseconds each (np.issubdtype, np.broadcast_shapes), more than a
    # small op itself: run them only when dtypes or shapes differ
    if a.dtype != b.dtype:
        if is_float(a.dtype) != is_float(b.dtype):  # an integer/bool tensor is a constant
            a, b = (a, _as_operand(b.data, a)) if is_float(a.dtype) else (_as_operand(a.data, b), b)
        if a.dtype != b.dtype and is_float(a.dtype) and is_float(b.dtype):
            raise TypeError(f"'{symbol}' between {a.dtype} and {b.dtype} tensors: cast one with "
                            ".astype() first (mixing would silently change the precision)")
    if a.shape != b.shape:
        try:
            xp.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise ValueError(f"'{symbol}': shapes {a.shape} and {b.shape} do not broadcast") from None
    return a, b


def matmul(a, b):
    """a @ b for 2-D and batched operands (batch dimensions broadcast); a 1-D operand is treated
    as a row (left) or a column (right) vector and that axis is dropped again, as in NumPy."""
    if not isinstance(a, Tensor):
        a = _as_operand(a, b)
    if not isinstance(b, Tensor):
        b = _as_operand(b, a)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"'@' needs operands with at least one axis, got shapes {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"'@' between {a.dtype} and {b.dtype} tensors: cast one with .astype() first")
    if a.shape[-1] != b.shape[-2 if b.ndim > 1 else 0]:
        raise ValueError(f"'@': shapes {a.shape} and {b.shape} do not match "
                         f"({a.shape[-1]} != {b.shape[-2 if b.ndim > 1 else 0]})")
    if a.ndim == 1:
        return matmul(a.reshape(1, -1), b).reshape(b.shape[:-2] + b.shape[-1:] if b.ndim > 1 else ())
    if b.ndim == 1:
        return matmul(a, b.reshape(-1, 1)).reshape(a.shape[:-1])
    if a.shape[:-2] != b.shape[:-2]:
        try:
            xp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise ValueError(f"'@': batch dimensions of shapes {a.shape} and {b.shape} do not broadcast") from None
    return ops.MatMul.apply(a, b)


def concatenate(tensors, axis=0):
    tensors = _same_float_dtype(tensors, "concatenate")
    return ops.Concatenate.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    tensors = _same_float_dtype(tensors, "stack")
    return ops.Stack.apply(*tensors, axis=axis)


def where(condition, a, b):
    """Elementwise `a if condition else b`; the gradient flows to a where the condition holds and
    to b elsewhere. The condition itself is not differentiable."""
    a, b = _pair(a, b, "where")
    condition = xp.asarray(_raw(condition), dtype=bool)
    return ops.Where.apply(a, b, condition=condition)


def _same_float_dtype(tensors, name):
    tensors = [t if isinstance(t, Tensor) else Tensor(t) for t in tensors]
    if not tensors:
        raise ValueError(f"{name} needs at least one tensor")
    if len({t.dtype for t in tensors}) > 1:
        raise TypeError(f"{name}: tensors have different dtypes {sorted({str(t.dtype) for t in tensors})}")
    return tensors


from . import ops, parallel  # noqa: E402  (ops needs Function from this module)
