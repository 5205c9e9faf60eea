"""tinygrad_llama: a LLaMA-style language model on a small NumPy autograd engine."""
from .tensor import Tensor, Function, no_grad, is_grad_enabled, matmul, concatenate, stack, where
from .gradcheck import gradcheck, directional_gradcheck, GradcheckError
from .model import Llama, LlamaConfig, KVCache, Baseline, create_model
from . import functional, nn, optim, reference

__version__ = "0.1.0"
