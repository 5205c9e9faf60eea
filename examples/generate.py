"""Generate text from a trained run, printing tokens as they come (with the KV cache).

    python examples/generate.py runs/laptop --prompt "Let $x > 0$" --max-new-tokens 200
"""
import argparse
import os
import sys

import numpy as np

import data_tools
from data_tools import DataToolsError
from tinygrad_llama import LlamaConfig, create_model
from tinygrad_llama.checkpoint import CheckpointError, load_checkpoint
from tinygrad_llama.trainer import with_prefix


def build_parser():
    p = argparse.ArgumentParser(description="Sample from a model trained by examples/train.py.")
    p.add_argument("run_dir", help="a run directory written by examples/train.py")
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best",
                   help="which checkpoint (default: %(default)s)")
    p.add_argument("--prompt", default="Let $n$ be a positive integer",
                   help="text to continue (default: %(default)r)")
    p.add_argument("--max-new-tokens", type=int, default=200,
                   help="tokens to generate (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="0 means greedy (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=None,
                   help="sample among the k most likely tokens (default: all)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling threshold in (0, 1] (default: off)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed for sampling (default: a fresh one each run)")
    return p


def load_run(run_dir, which):
    path = os.path.join(run_dir, f"{which}.npz")
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"{run_dir}: no such run directory")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint (train first, or pick --checkpoint latest)")
    arrays, meta = load_checkpoint(path)
    if "model_config" not in meta:
        raise CheckpointError(f"{path}: not a training checkpoint (no model_config)")
    config = LlamaConfig.from_dict(meta["model_config"])
    model = create_model(config, dtype=np.dtype(meta.get("dtype", "float32")))
    weights = with_prefix(arrays, "model.")
    try:
        model.load_state_dict(weights)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    tokenizer_path = os.path.join(run_dir, "tokenizer.json")
    tokenizer = data_tools.load_tokenizer(tokenizer_path)
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{tokenizer_path} has a vocabulary of {tokenizer.vocab_size} tokens, but "
                              f"{path} was trained with vocab_size={config.vocab_size}: the tokenizer "
                              "does not belong to this checkpoint")
    return model, tokenizer


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_new_tokens < 0:
        parser.error("--max-new-tokens must not be negative")
    if args.temperature < 0:
        parser.error("--temperature must not be negative")
    if args.top_k is not None and args.top_k < 1:
        parser.error("--top-k must be at least 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error("--top-p must lie in (0, 1]")
    try:
        model, tokenizer = load_run(args.run_dir, args.checkpoint)
        prompt_ids = tokenizer.encode(args.prompt)
        if len(prompt_ids) == 0:
            parser.error("--prompt must not be empty")
        sys.stdout.write(args.prompt)
        produced = []
        for token in model.generate_stream(prompt_ids, args.max_new_tokens, args.temperature,
                                           args.top_k, args.top_p, args.seed):
            produced.append(token)
            text = tokenizer.decode(produced)
            if not text.endswith("\ufffd"):  # a byte-level token may end mid-character: wait
                sys.stdout.write(text)
                sys.stdout.flush()
                produced = []
        sys.stdout.write(tokenizer.decode(produced) + "\n")
    except (CheckpointError, DataToolsError) as exc:
        print(f"generate.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ngenerate.py: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
