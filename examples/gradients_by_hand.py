"""Every hand-written backward pass of functional.py, checked against finite differences.

For each fused layer (Linear, Embedding, RMSNorm, RoPE, CausalAttention, SwiGLU, CrossEntropy) this
script builds tiny float64 inputs with a fixed seed, contracts the layer's output with a fixed random
array u into the scalar

    L(inputs) = sum(u * f(inputs))

and compares the gradient that the layer's backward computes (dL/dinput, i.e. backward(u)) with the
central finite difference (L(x + h e_j) - L(x - h e_j)) / 2h, computed below with plain loops over
the elements of each input. It prints the formula the backward uses, both gradients of one input,
and the largest absolute difference over all inputs.

    python examples/gradients_by_hand.py                 # all layers
    python examples/gradients_by_hand.py --layer rmsnorm # just one

Exit status 0 when every difference is within the tolerance, 1 otherwise.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from tinygrad_llama import functional as F  # noqa: E402
from tinygrad_llama.tensor import Tensor, no_grad  # noqa: E402

TOLERANCE = 1e-6   # on |analytic - numeric|; central differences in float64 are good to ~1e-9 here
STEP = 1e-6        # the finite-difference step h


def _layer(name, forward, backward, shown, build):
    """name, what the forward computes, the backward formula, which input to print, and
    build(rng) -> (fn, {input: array}) where fn(*tensors) applies the fused layer to the inputs."""
    return {"name": name, "forward": forward, "backward": backward, "shown": shown, "build": build}


def _linear(rng):
    return F.linear, {"x": rng.standard_normal((2, 3)), "W": rng.standard_normal((2, 3))}


def _embedding(rng):
    ids = np.array([[1, 3, 1, 0]])                               # id 1 twice: its rows add up
    return (lambda w: F.embedding(ids, w)), {"W": rng.standard_normal((4, 3))}


def _rms_norm(rng):
    return (lambda x, w: F.rms_norm(x, w, 1e-5)), {"x": rng.standard_normal((2, 4)),
                                                  "w": rng.standard_normal(4)}


def _rope(rng):
    return (lambda x: F.rope(x, start_pos=2)), {"x": rng.standard_normal((1, 2, 1, 4))}


def _attention(rng):
    # 2 new queries against 3 keys: the first key comes from "the cache"
    return F.causal_attention, {"q": rng.standard_normal((1, 1, 2, 3)),
                                "k": rng.standard_normal((1, 1, 3, 3)),
                                "v": rng.standard_normal((1, 1, 3, 3))}


def _swiglu(rng):
    return F.swiglu, {"x": rng.standard_normal((2, 3)), "W1": rng.standard_normal((4, 3)),
                      "W2": rng.standard_normal((3, 4)), "W3": rng.standard_normal((4, 3))}


def _cross_entropy(rng):
    targets = np.array([[2, -100, 0]])                          # the middle token is ignored
    return (lambda z: F.cross_entropy(z, targets, ignore_index=-100)), {"z": rng.standard_normal((1, 3, 4))}


LAYERS = [
    _layer("Linear", "y = x W^T",
           "dx = dy W,  dW = dy^T x", "x", _linear),
    _layer("Embedding", "y[n] = W[ids[n]]",
           "dW[v] = sum of dy[n] over the tokens n with ids[n] == v (0 for unused rows)", "W", _embedding),
    _layer("RMSNorm", "y = w * x_hat,  x_hat = x * r,  r = 1 / sqrt(mean(x^2) + eps)",
           "dx = r * (g - x_hat * mean(g * x_hat)),  g = dy * w;  dw = sum over tokens of dy * x_hat",
           "x", _rms_norm),
    _layer("RoPE", "pair (x[2i], x[2i+1]) at position pos rotated by a = pos * theta^(-2i/D)",
           "rotate the gradient back:  dx[2i] = dy[2i] cos a + dy[2i+1] sin a,  "
           "dx[2i+1] = dy[2i+1] cos a - dy[2i] sin a", "x", _rope),
    _layer("CausalAttention", "S = q k^T / sqrt(d) + causal mask,  P = softmax(S),  O = P v",
           "dv = P^T dO,  dP = dO v^T,  dS = P * (dP - rowsum(dP * P)),  dq = dS k / sqrt(d),  "
           "dk = dS^T q / sqrt(d)", "q", _attention),
    _layer("SwiGLU", "h1 = x W1^T,  h3 = x W3^T,  a = silu(h1) * h3,  y = a W2^T",
           "dW2 = dy^T a,  da = dy W2,  dh3 = da * silu(h1),  dh1 = da * h3 * s * (1 + h1 (1 - s)) "
           "with s = sigmoid(h1),  dW1 = dh1^T x,  dW3 = dh3^T x,  dx = dh1 W1 + dh3 W3",
           "x", _swiglu),
    _layer("CrossEntropy", "L = mean over counted tokens of logsumexp(z) - z[target]",
           "dz = (softmax(z) - onehot(target)) / n_counted,  0 for ignored tokens", "z", _cross_entropy),
]


def analytic_gradients(fn, arrays, u):
    """backward(u) through the fused layer: dL/dinput for L = sum(u * f(inputs))."""
    leaves = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*leaves)
    out.backward(u)
    return [leaf.grad if leaf.grad is not None else np.zeros_like(leaf.data) for leaf in leaves]


def numeric_gradient(fn, arrays, which, u, h=STEP):
    """Central differences of L = sum(u * f(inputs)) for every element of input `which`."""
    def loss(values):
        with no_grad():
            return float((fn(*[Tensor(v) for v in values]).data * u).sum())

    values = [a.copy() for a in arrays]
    x = values[which]
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        original = x[index]
        x[index] = original + h
        plus = loss(values)
        x[index] = original - h
        minus = loss(values)
        x[index] = original
        grad[index] = (plus - minus) / (2 * h)
    return grad


def _wrap(label, text, width=100):
    """The label, then the formula's terms (separated by ",  "), broken only between terms."""
    lines, line = [], ""
    for term in text.split(",  "):
        if line and len(label) + len(line) + len(term) + 3 > width:
            lines.append(line + ",")
            line = term
        else:
            line = f"{line},  {term}" if line else term
    lines.append(line)
    return "\n".join((label if i == 0 else " " * len(label)) + l for i, l in enumerate(lines))


def _show(a):
    a = a + 0.0                                            # -0.0 prints as 0.0
    a = a.reshape(-1, a.shape[-1]) if a.ndim > 2 else a   # print as rows, whatever the shape
    return np.array2string(a, precision=4, suppress_small=True, floatmode="fixed", sign=" ")


def check_layer(layer, seed=0, out=print):
    """Print one layer's check; return the largest |analytic - numeric| over all its inputs."""
    rng = np.random.default_rng(seed)
    fn, inputs = layer["build"](rng)
    names, arrays = list(inputs), list(inputs.values())
    with no_grad():
        out_shape = fn(*[Tensor(a) for a in arrays]).shape
    u = rng.standard_normal(out_shape)
    analytic = analytic_gradients(fn, arrays, u)
    numeric = [numeric_gradient(fn, arrays, i, u) for i in range(len(arrays))]
    diffs = {n: float(np.max(np.abs(a - g), initial=0.0)) for n, a, g in zip(names, analytic, numeric)}
    shown = names.index(layer["shown"])
    shape = arrays[shown].shape
    out(f"== {layer['name']} ==")
    out(_wrap("forward:  ", layer["forward"]))
    out(_wrap("backward: ", layer["backward"]))
    out(f"analytic dL/d{names[shown]} (shape {shape}):")
    out(_show(analytic[shown]))
    out(f"finite-difference dL/d{names[shown]}:")
    out(_show(numeric[shown]))
    worst = max(diffs.values())
    per_input = ", ".join(f"{n} {d:.1e}" for n, d in diffs.items())
    out(f"max |analytic - numeric| = {worst:.2e}  (per input: {per_input})  "
        f"{'OK' if worst <= TOLERANCE else 'FAIL'}")
    out("")
    return worst, diffs


def main(argv=None):
    by_key = {layer["name"].lower(): layer for layer in LAYERS}
    parser = argparse.ArgumentParser(
        description="Check every hand-written backward pass of tinygrad_llama.functional against "
                    "central finite differences, on tiny float64 inputs with a fixed seed.")
    parser.add_argument("--layer", metavar="NAME", type=str.lower, choices=sorted(by_key),
                        help="check only this layer (one of: " + ", ".join(l["name"] for l in LAYERS)
                             + "; case does not matter)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and of u (default 0)")
    args = parser.parse_args(argv)
    layers = [by_key[args.layer]] if args.layer else LAYERS

    failures = []
    for layer in layers:
        try:
            worst, diffs = check_layer(layer, args.seed)
        except BrokenPipeError:
            raise
        except Exception as e:  # a backward that crashes is a failure too, reported like one
            print(f"== {layer['name']} ==\nerror: {type(e).__name__}: {e}\n")
            failures.append(f"FAIL: {layer['name']}: the check raised {type(e).__name__}: {e}")
            continue
        if not worst <= TOLERANCE:   # also catches nan
            bad = [n for n, d in diffs.items() if not d <= TOLERANCE]
            failures.append(f"FAIL: {layer['name']}: max |analytic - numeric| = {worst:.2e} exceeds "
                            f"the tolerance {TOLERANCE:g} (gradient of {', '.join(bad)})")
    n = len(layers)
    if failures:
        for line in failures:
            print(line)
        print(f"{len(failures)} of {n} hand-written backward passes do NOT match finite differences")
        return 1
    if n == 1:
        print("the 1 hand-written backward pass checked matches finite differences")
    else:
        print(f"all {n} hand-written backward passes match finite differences")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into `head`, say: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
