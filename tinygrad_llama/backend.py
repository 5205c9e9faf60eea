"""The one place that names the array module.

Everything in tinygrad_llama does `from .backend import xp` and calls `xp.<fn>` instead of importing
NumPy itself, so a NumPy-compatible module (CuPy, for instance) can stand in for it by changing the
line below. Tests and data_tools use NumPy directly: they run on the host.
"""
import numpy as xp

DEFAULT_FLOAT = xp.float32  # training runs in float32; float64 is kept when given (gradient checks)


def is_float(dtype):
    return xp.issubdtype(dtype, xp.floating)
