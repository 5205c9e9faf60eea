"""tinygrad_llama: a LLaMA-style model on a small NumPy autograd engine."""
