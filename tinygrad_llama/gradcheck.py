"""Finite-difference checks of the engine's gradients, in float64.

Both checks contract the function's output with a random upstream gradient u, so a function with
any output shape reduces to the scalar L(x) = sum(u * f(x)) whose gradient backward() computes.

* gradcheck: every input element, central differences (L(x + eps e_i) - L(x - eps e_i)) / 2 eps.
  Exact element by element, 2 evaluations per element: for small inputs.
* directional_gradcheck: one random direction v over all inputs at once. The directional derivative
  (L(x + eps v) - L(x - eps v)) / 2 eps must equal sum_i <grad_i, v_i>. Two evaluations whatever the
  size, so it checks a whole model; a wrong gradient anywhere changes the dot product.
"""
from .backend import xp
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    pass


def _prepare(inputs, name):
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: input {i} is a {type(t).__name__}, expected a Tensor")
        if t.requires_grad and t.dtype != xp.float64:
            raise TypeError(f"{name}: input {i} is {t.dtype}; finite differences need float64 "
                            "inputs (float32 rounding swamps the difference): use float64")
    checked = [i for i, t in enumerate(inputs) if t.requires_grad]
    for i in checked:  # the checks perturb inputs in place, so each needs its own writable buffer
        if not (inputs[i].data.flags.c_contiguous and inputs[i].data.flags.writeable):
            inputs[i].data = inputs[i].data.copy()
    if not checked:
        raise ValueError(f"{name}: no input has requires_grad=True, so there is nothing to check")
    return inputs, checked


def _analytic(fn, inputs, checked, upstream_seed):
    saved = [inputs[i].grad for i in checked]
    for i in checked:
        inputs[i].grad = None
    out = fn(*inputs)
    u = xp.random.default_rng(upstream_seed).standard_normal(out.shape)
    out.backward(u)
    grads = [inputs[i].grad if inputs[i].grad is not None else xp.zeros(inputs[i].shape)
             for i in checked]
    for i, g in zip(checked, saved):
        inputs[i].grad = g
    return u, grads


def _loss(fn, inputs, u):
    with no_grad():
        return float((fn(*inputs).data * u).sum())


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, seed=0):
    """Check backward() of `fn(*inputs)` against central differences for every element of every
    input that requires grad. Returns True, or raises GradcheckError naming the input, the worst
    index, and the analytic and numeric values there."""
    inputs, checked = _prepare(inputs, "gradcheck")
    u, analytic = _analytic(fn, inputs, checked, seed)
    for i, grad in zip(checked, analytic):
        x = inputs[i].data
        numeric = xp.zeros(x.shape)
        flat_x, flat_numeric = x.reshape(-1), numeric.reshape(-1)  # views: writes reach x
        for j in range(x.size):
            original = flat_x[j]
            flat_x[j] = original + eps
            plus = _loss(fn, inputs, u)
            flat_x[j] = original - eps
            minus = _loss(fn, inputs, u)
            flat_x[j] = original
            flat_numeric[j] = (plus - minus) / (2 * eps)
        excess = xp.abs(grad - numeric) - (atol + rtol * xp.abs(numeric))
        if x.size and excess.max() > 0:
            worst = xp.unravel_index(int(xp.argmax(excess)), x.shape)
            raise GradcheckError(
                f"gradient of input {i} (shape {x.shape}) is wrong at index {tuple(int(k) for k in worst)}: "
                f"analytic {grad[worst]:.6g}, numeric {numeric[worst]:.6g}")
    return True


def directional_gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, seed=0):
    """Check the whole gradient of `fn(*inputs)` along one random direction, in two evaluations.
    Returns True, or raises GradcheckError with the analytic and numeric directional derivatives."""
    inputs, checked = _prepare(inputs, "directional_gradcheck")
    u, analytic = _analytic(fn, inputs, checked, seed)
    rng = xp.random.default_rng(seed + 1)
    directions = [rng.standard_normal(inputs[i].shape) for i in checked]
    originals = [inputs[i].data.copy() for i in checked]
    try:
        for i, v, x in zip(checked, directions, originals):
            inputs[i].data[...] = x + eps * v
        plus = _loss(fn, inputs, u)
        for i, v, x in zip(checked, directions, originals):
            inputs[i].data[...] = x - eps * v
        minus = _loss(fn, inputs, u)
    finally:
        for i, x in zip(checked, originals):
            inputs[i].data[...] = x
    numeric = (plus - minus) / (2 * eps)
    predicted = float(sum((g * v).sum() for g, v in zip(analytic, directions)))
    if abs(predicted - numeric) > atol + rtol * abs(numeric):
        raise GradcheckError(f"directional derivative along a random direction: analytic "
                             f"{predicted:.8g}, numeric {numeric:.8g} (inputs {checked})")
    return True
