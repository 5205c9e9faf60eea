"""Modules: objects that own parameters and know their names.

A Module finds its parameters by looking at its attributes, in the order they were set: a Tensor
that requires grad is a parameter, a Module or a list of Modules is looked into. So a parameter's
name is the attribute path to it, e.g. `layers.0.attention.wq.weight`, as in Meta's checkpoints.
"""
from .backend import xp
from .tensor import Tensor
from . import functional as F


class Module:
    def named_parameters(self, prefix=""):
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.requires_grad:
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(f"{prefix}{name}.")
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Module):
                        yield from item.named_parameters(f"{prefix}{name}.{i}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    def state_dict(self):
        """{name: array} (copies, so later training does not change a saved state)."""
        return {name: p.data.copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy arrays into the parameters, in place. Every name must be present with its shape;
        otherwise nothing is loaded and the error lists each difference."""
        params = dict(self.named_parameters())
        problems = [f"missing {name}" for name in params if name not in state]
        problems += [f"unexpected {name}" for name in state if name not in params]
        problems += [f"{name}: shape {tuple(xp.shape(state[name]))} in the state, "
                     f"{params[name].shape} in the model"
                     for name in params if name in state and tuple(xp.shape(state[name])) != params[name].shape]
        if problems:
            raise ValueError("load_state_dict: " + "; ".join(problems))
        for name, p in params.items():
            p.data[...] = state[name]  # in place: an optimizer's views stay valid

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


def _init(rng, shape, std, dtype):
    return Tensor(rng.standard_normal(shape).astype(dtype) * std, requires_grad=True)


class Linear(Module):
    """y = x W^T with W shaped (out_features, in_features); no bias, as in LLaMA."""

    def __init__(self, in_features, out_features, rng, dtype, std=0.02):
        self.weight = _init(rng, (out_features, in_features), std, dtype)

    def forward(self, x):
        return F.linear(x, self.weight)


class Embedding(Module):
    def __init__(self, num_embeddings, dim, rng, dtype, std=0.02):
        self.weight = _init(rng, (num_embeddings, dim), std, dtype)

    def forward(self, ids):
        return F.embedding(ids, self.weight)


class RMSNorm(Module):
    def __init__(self, dim, eps, dtype):
        self.eps = eps
        self.weight = Tensor(xp.ones(dim, dtype=dtype), requires_grad=True)

    def forward(self, x):
        return F.rms_norm(x, self.weight, self.eps)
