"""Primitive differentiable operations, one Function each: forward and backward side by side.

Every backward returns the gradient of the loss with respect to each input, given `grad`, the
gradient with respect to the output. Gradients may keep the output's broadcast shape: the engine
sums them back to each input's shape (see tensor._unbroadcast), so no op here does that itself.
"""
from .backend import xp
from .tensor import Function


# ---- elementwise arithmetic -------------------------------------------------------------------
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, grad):
        return grad, grad  # d(a+b)/da = d(a+b)/db = 1


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        return a - b

    @staticmethod
    def backward(ctx, grad):
        return grad, -grad


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved
        da, db = ctx.needs_input_grad
        return (grad * b if da else None), (grad * a if db else None)


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, grad):
        # y = a / b:  dy/da = 1/b,  dy/db = -a/b^2
        a, b = ctx.saved
        da, db = ctx.needs_input_grad
        grad_a = grad / b
        return (grad_a if da else None), (-grad_a * a / b if db else None)


class Pow(Function):
    @staticmethod
    def forward(ctx, a, b):
        out = a ** b
        ctx.save_for_backward(a, b, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        # y = a^b:  dy/da = b a^(b-1),  dy/db = a^b ln(a)  (only defined for a > 0)
        a, b, out = ctx.saved
        da, db = ctx.needs_input_grad
        grad_a = grad * b * a ** (b - 1) if da else None
        grad_b = grad * out * xp.log(a) if db else None
        return grad_a, grad_b


class MatMul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b  # (..., m, k) @ (..., k, n) -> (..., m, n)

    @staticmethod
    def backward(ctx, grad):
        # Y = A B:  dA = dY B^T,  dB = A^T dY, each per batch entry
        a, b = ctx.saved
        da, db = ctx.needs_input_grad
        grad_a = grad @ xp.swapaxes(b, -1, -2) if da else None
        grad_b = None
        if db:
            if b.ndim == 2 and a.ndim > 2:
                # a shared 2-D B (a weight): sum A^T dY over the batch as ONE product
                k, n = b.shape
                grad_b = a.reshape(-1, k).T @ grad.reshape(-1, n)  # (k, n)
            else:
                grad_b = xp.swapaxes(a, -1, -2) @ grad
        return grad_a, grad_b


# ---- elementwise functions --------------------------------------------------------------------
class Exp(Function):
    @staticmethod
    def forward(ctx, x):
        out = xp.exp(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad * out  # d e^x = e^x


class Log(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return xp.log(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved
        return grad / x


class Sqrt(Function):
    @staticmethod
    def forward(ctx, x):
        out = xp.sqrt(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad * 0.5 / out  # d sqrt(x) = 1 / (2 sqrt(x))


class Tanh(Function):
    @staticmethod
    def forward(ctx, x):
        out = xp.tanh(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad * (1.0 - out * out)


def sigmoid_array(x):
    """1 / (1 + e^-x) computed as (1 + tanh(x/2)) / 2: the same function, no overflow for large
    |x|, and about ten times faster in NumPy than a two-branch np.where."""
    s = xp.asarray(x * 0.5)  # asarray: for a 0-d x, `x * 0.5` is a NumPy scalar, not a buffer
    xp.tanh(s, out=s)
    s *= 0.5
    s += 0.5
    return s


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, x):
        out = sigmoid_array(x)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad * out * (1.0 - out)  # s' = s (1 - s)


class Relu(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x > 0)
        return xp.maximum(x, 0)

    @staticmethod
    def backward(ctx, grad):
        (positive,) = ctx.saved
        return grad * positive


class Silu(Function):
    @staticmethod
    def forward(ctx, x):
        s = sigmoid_array(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, grad):
        # y = x s(x):  y' = s + x s (1 - s)
        x, s = ctx.saved
        return grad * (s * (1.0 + x * (1.0 - s)))


class Cast(Function):
    @staticmethod
    def forward(ctx, x, dtype):
        ctx.input_dtype = x.dtype
        return x.astype(dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad.astype(ctx.input_dtype)


# ---- reductions -------------------------------------------------------------------------------
def _axes(axis, ndim):
    """axis as a sorted tuple of non-negative ints (None means all axes)."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} axes")
    return tuple(sorted(a % ndim for a in axes))


def _spread(grad, axes, keepdims, shape):
    """The reduced gradient broadcast back over the axes that were reduced (a read-only view)."""
    if not keepdims:
        grad = xp.expand_dims(grad, axes)
    return xp.broadcast_to(grad, shape)


class Sum(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes, ctx.keepdims, ctx.shape = _axes(axis, x.ndim), keepdims, x.shape
        return x.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        return _spread(grad, ctx.axes, ctx.keepdims, ctx.shape)  # each summand gets the grad


class Mean(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes, ctx.keepdims, ctx.shape = _axes(axis, x.ndim), keepdims, x.shape
        return x.mean(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        count = 1
        for a in ctx.axes:
            count *= ctx.shape[a]
        return _spread(grad / float(count), ctx.axes, ctx.keepdims, ctx.shape)


class Max(Function):
    @staticmethod
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes, ctx.keepdims, ctx.shape = _axes(axis, x.ndim), keepdims, x.shape
        out = x.max(axis=ctx.axes, keepdims=True)
        ctx.save_for_backward(x == out)
        return out if keepdims else out.squeeze(ctx.axes)

    @staticmethod
    def backward(ctx, grad):
        # the gradient goes to the maximum; tied maxima share it equally
        (is_max,) = ctx.saved
        share = is_max / is_max.sum(axis=ctx.axes, keepdims=True).astype(grad.dtype)
        return share * _spread(grad, ctx.axes, ctx.keepdims, ctx.shape)


class Softmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        out = x - x.max(axis=axis, keepdims=True)  # shift so exp cannot overflow
        xp.exp(out, out=out)
        out /= out.sum(axis=axis, keepdims=True)
        ctx.axis = axis
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        # p = softmax(x):  dx_i = sum_j dp_j p_j (delta_ij - p_i) = p_i (dp_i - sum_j dp_j p_j)
        (p,) = ctx.saved
        return p * (grad - (grad * p).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, x, axis=-1):
        shifted = x - x.max(axis=axis, keepdims=True)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        ctx.axis = axis
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        # y_i = x_i - log sum_j e^x_j:  dx_i = dy_i - softmax(x)_i sum_j dy_j
        (out,) = ctx.saved
        return grad - xp.exp(out) * grad.sum(axis=ctx.axis, keepdims=True)


# ---- moving data around -----------------------------------------------------------------------
class Reshape(Function):
    @staticmethod
    def forward(ctx, x, shape):
        ctx.shape = x.shape
        return x.reshape(shape)

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape)


class Permute(Function):
    @staticmethod
    def forward(ctx, x, axes):
        ctx.inverse = tuple(sorted(range(len(axes)), key=axes.__getitem__))  # argsort, in Python
        return x.transpose(axes)

    @staticmethod
    def backward(ctx, grad):
        return grad.transpose(ctx.inverse)


class Expand(Function):
    @staticmethod
    def forward(ctx, x, shape):
        return xp.broadcast_to(x, shape)

    @staticmethod
    def backward(ctx, grad):
        return grad  # the engine sums it back over the broadcast axes


class GetItem(Function):
    @staticmethod
    def forward(ctx, x, index):
        ctx.index, ctx.shape = index, x.shape
        return x[index]

    @staticmethod
    def backward(ctx, grad):
        index = ctx.index if isinstance(ctx.index, tuple) else (ctx.index,)
        out = xp.zeros(ctx.shape, dtype=grad.dtype)
        if any(isinstance(i, (xp.ndarray, list)) for i in index):
            xp.add.at(out, ctx.index, grad)  # scatter-add: a repeated index gets every share
        else:
            out[ctx.index] = grad  # basic slices pick each element at most once
        return out


class Concatenate(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis = axis
        ctx.splits = xp.cumsum([a.shape[axis] for a in arrays])[:-1]
        return xp.concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        return tuple(xp.split(grad, ctx.splits, axis=ctx.axis))


class Stack(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis, ctx.count = axis, len(arrays)
        return xp.stack(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        return tuple(xp.take(grad, i, axis=ctx.axis) for i in range(ctx.count))


class Where(Function):
    @staticmethod
    def forward(ctx, a, b, condition):
        ctx.condition = condition
        return xp.where(condition, a, b)

    @staticmethod
    def backward(ctx, grad):
        da, db = ctx.needs_input_grad
        return (xp.where(ctx.condition, grad, 0) if da else None,
                xp.where(ctx.condition, 0, grad) if db else None)
