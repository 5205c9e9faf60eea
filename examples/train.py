"""Train a small LLaMA on the Math Stack Exchange sample (or your own data) on a laptop CPU.

    python examples/train.py                      # the bundled sample, `laptop` preset, ~5 minutes
    python examples/train.py --preset tiny        # a few seconds, for a smoke test
    python examples/train.py --data Posts.xml     # a real dump (or a .7z, a text file, a data dir)
    python examples/train.py --out-dir runs/laptop --resume

The run directory (--out-dir, default runs/<preset>) receives config.json, tokenizer.json,
metrics.jsonl, latest.npz and best.npz checkpoints, and loss.png when matplotlib is installed.
"""
import argparse
import json
import math
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # examples/plot.py

import data_tools  # noqa: E402
from data_tools import DataToolsError  # noqa: E402
from tinygrad_llama import LlamaConfig, create_model  # noqa: E402
from tinygrad_llama.checkpoint import CheckpointError  # noqa: E402
from tinygrad_llama.trainer import Trainer, TrainConfig, TrainingError, with_prefix  # noqa: E402

PRESETS = {
    # the source tutorial's configuration
    "seed": dict(dim=128, n_layers=4, n_heads=8, context=16, batch_size=32, steps=2000, lr=1e-3,
                 warmup=100, eval_interval=200, eval_batches=10),
    # the default: about five minutes on a 2-core laptop
    "laptop": dict(dim=128, n_layers=4, n_heads=8, context=128, batch_size=16, steps=1200, lr=2e-3,
                   warmup=100, eval_interval=100, eval_batches=8),
    # seconds: for tests and smoke checks
    "tiny": dict(dim=32, n_layers=2, n_heads=4, context=32, batch_size=4, steps=20, lr=3e-3,
                 warmup=5, eval_interval=10, eval_batches=2),
}
TRAIN_DEFAULTS = dict(min_lr=None, weight_decay=0.1, grad_clip=1.0, seed=1337)
DEFAULT_PROMPT = "Prove that the sum of"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to a flag's help only where X is a value: a flag whose default is None
    takes the preset's value, an on/off flag is off unless given, and a help that already names
    its default keeps its own words."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    p = argparse.ArgumentParser(
        description="Train a small LLaMA on the engine. Flags left out take the preset's value.",
        formatter_class=_HelpFormatter)
    p.add_argument("--data", default=None,
                   help="a prepared data directory (with meta.json), a Posts.xml or .7z dump, or a "
                        "plain text file; default: the Math Stack Exchange sample bundled with data_tools")
    p.add_argument("--data-dir", default=None,
                   help="where to prepare --data when it is not a data directory "
                        "(default: data/<name>-<tokenizer>)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="laptop",
                   help="seed: the source tutorial's config (dim 128, context 16, batch 32); "
                        "laptop: ~5 minutes on 2 cores; tiny: seconds")
    g = p.add_argument_group("model")
    g.add_argument("--dim", type=int, help="model width")
    g.add_argument("--n-layers", type=int, help="transformer blocks")
    g.add_argument("--n-heads", type=int, help="attention heads (dim must be divisible by it)")
    g.add_argument("--n-kv-heads", type=int, help="key/value heads for grouped-query attention")
    g.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="parameter dtype")
    g = p.add_argument_group("ablations (defaults: the full LLaMA)")
    g.add_argument("--model", choices=["llama", "baseline"], default="llama",
                   help="baseline: the source tutorial's embedding-Linear-ReLU-Linear model")
    g.add_argument("--norm", choices=["rms", "none"], default="rms", help="RMSNorm pre-normalisation or none")
    g.add_argument("--pos", choices=["rope", "none"], default="rope", help="rotary position embedding or none")
    g.add_argument("--ffn", choices=["swiglu", "relu"], default="swiglu", help="feed-forward: SwiGLU or a ReLU MLP")
    g.add_argument("--attention", choices=["causal", "none"], default="causal",
                   help="causal self-attention, or no attention sub-layer")
    g = p.add_argument_group("training")
    g.add_argument("--context", type=int, help="tokens per training window (max_seq_len)")
    g.add_argument("--batch-size", type=int, help="windows per step")
    g.add_argument("--steps", type=int, help="optimizer steps")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--min-lr", type=float, help="final learning rate (default: 10%% of --lr)")
    g.add_argument("--warmup", type=int, help="linear warmup steps")
    g.add_argument("--weight-decay", type=float, help="AdamW decoupled weight decay (matrices "
                   f"only; default: {TRAIN_DEFAULTS['weight_decay']})")
    g.add_argument("--grad-clip", type=float, help="clip the global gradient norm to this (0: "
                   f"off; default: {TRAIN_DEFAULTS['grad_clip']})")
    g.add_argument("--eval-interval", type=int, help="evaluate and checkpoint every N steps")
    g.add_argument("--eval-batches", type=int, help="fixed batches per evaluation")
    g.add_argument("--seed", type=int,
                   help=f"seed for weights and batches (default: {TRAIN_DEFAULTS['seed']})")
    g.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps in this process (saving latest.npz); "
                        "continue later with --resume")
    g.add_argument("--max-seconds", type=float, default=None,
                   help="time budget: end the run (evaluated and saved) once this many seconds of "
                        "training have passed, even before --steps; the LR schedule stays the one "
                        "of --steps, and the result depends on the machine's speed")
    g = p.add_argument_group("data preparation")
    g.add_argument("--tokenizer", choices=["char", "bpe"], default="char", help="tokenizer to train")
    g.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size (default 512)")
    g = p.add_argument_group("output")
    g.add_argument("--out-dir", default=None, help="run directory (default: runs/<preset>)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out-dir from its latest checkpoint, with its saved settings")
    g.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt for the sample printed at the end")
    g.add_argument("--sample-tokens", type=int, default=300, help="tokens to generate at the end (0: none)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def settings_from_args(args, parser):
    """Model and training settings: the preset, overridden by the flags given."""
    preset = dict(PRESETS[args.preset], **TRAIN_DEFAULTS)
    chosen = {}
    for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "context", "batch_size", "steps", "lr",
                "min_lr", "warmup", "weight_decay", "grad_clip", "eval_interval", "eval_batches", "seed"):
        value = getattr(args, key)
        chosen[key] = value if value is not None else preset.get(key)
    for key in ("dim", "n_layers", "n_heads", "context", "batch_size", "steps", "eval_interval",
                "eval_batches"):
        if chosen[key] < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1, got {chosen[key]}")
    if chosen["dim"] % chosen["n_heads"]:
        parser.error(f"--dim {chosen['dim']} is not divisible by --n-heads {chosen['n_heads']}")
    if (chosen["dim"] // chosen["n_heads"]) % 2:
        parser.error(f"the head dimension dim/n_heads = {chosen['dim'] // chosen['n_heads']} must be "
                     "even (rotary embeddings rotate pairs)")
    if chosen["n_kv_heads"] is not None and (chosen["n_kv_heads"] < 1 or chosen["n_heads"] % chosen["n_kv_heads"]):
        parser.error(f"--n-heads {chosen['n_heads']} must be a multiple of --n-kv-heads {chosen['n_kv_heads']}")
    if chosen["lr"] <= 0:
        parser.error(f"--lr must be positive, got {chosen['lr']}")
    if args.warmup is None:  # the preset's warmup, shortened for a short run
        chosen["warmup"] = min(chosen["warmup"], chosen["steps"] // 10)
    elif chosen["warmup"] > chosen["steps"]:
        parser.error(f"--warmup {chosen['warmup']} is longer than --steps {chosen['steps']}")
    for key in ("warmup", "weight_decay", "grad_clip"):
        if chosen[key] < 0:
            parser.error(f"--{key.replace('_', '-')} must not be negative, got {chosen[key]}")
    if args.vocab_size is not None and args.tokenizer == "bpe" and not 257 <= args.vocab_size <= 65535:
        parser.error(f"--vocab-size must lie in [257, 65535] for the byte-level BPE, got {args.vocab_size}")
    return chosen


def resolve_data(args):
    """A prepared data directory for --data, preparing it on first use."""
    source = args.data or data_tools.sample_path()
    if os.path.isdir(source) and os.path.exists(os.path.join(source, "meta.json")):
        return source
    if os.path.isdir(source):
        raise DataToolsError("is a directory without meta.json: not a prepared data directory", source)
    name = "sample" if args.data is None else os.path.splitext(os.path.basename(source))[0]
    suffix = args.tokenizer + (f"{args.vocab_size}" if args.tokenizer == "bpe" and args.vocab_size else "")
    data_dir = args.data_dir or os.path.join("data", f"{name}-{suffix}")
    if not os.path.exists(os.path.join(data_dir, "meta.json")):
        print(f"preparing {source} -> {data_dir} ({args.tokenizer} tokenizer)")
        vocab = args.vocab_size or (512 if args.tokenizer == "bpe" else None)
        data_tools.prepare(source, data_dir, tokenizer=args.tokenizer, vocab_size=vocab)
    return data_dir


def unigram_loss(train_tokens, eval_tokens, vocab_size):
    """Cross-entropy (nats/token) of eval_tokens under the train split's token frequencies
    (add-one smoothed): what a model that ignores context achieves."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    log_p = np.log(counts / counts.sum())
    return float(-log_p[np.asarray(eval_tokens)].mean())


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_seconds is not None and not args.max_seconds > 0:
        parser.error(f"--max-seconds must be positive, got {args.max_seconds}")
    out_dir = args.out_dir or os.path.join("runs", args.preset)
    config_path = os.path.join(out_dir, "config.json")
    if args.resume:
        if not os.path.exists(config_path):
            parser.error(f"--resume: {config_path} does not exist (no run to resume in {out_dir})")
        with open(config_path, encoding="utf-8") as f:
            saved = json.load(f)
        model_config = LlamaConfig.from_dict(saved["model"])
        train_config = TrainConfig(**saved["train"])
        data_dir, dtype = saved["data_dir"], saved["dtype"]
    else:
        chosen = settings_from_args(args, parser)
        data_dir = resolve_data(args)
        meta = data_tools.load_meta(data_dir)
        model_config = LlamaConfig(vocab_size=int(meta["vocab_size"]), dim=chosen["dim"],
                                   n_layers=chosen["n_layers"], n_heads=chosen["n_heads"],
                                   n_kv_heads=chosen["n_kv_heads"], max_seq_len=chosen["context"],
                                   arch=args.model, norm=args.norm, pos=args.pos, ffn=args.ffn,
                                   attention=args.attention)
        train_config = TrainConfig(**{k: chosen[k] for k in (
            "steps", "batch_size", "context", "lr", "min_lr", "warmup", "weight_decay", "grad_clip",
            "eval_interval", "eval_batches", "seed")})
        dtype = args.dtype
    splits = {name: data_tools.load_split(data_dir, name) for name in ("train", "val", "test")}
    for name, tokens in splits.items():
        if len(tokens) < train_config.context + 1:
            parser.error(f"--context {train_config.context} is larger than the {name} split of "
                         f"{data_dir} ({len(tokens)} tokens): use a smaller context or more data")

    os.makedirs(out_dir, exist_ok=True)
    tokenizer_path = os.path.join(out_dir, "tokenizer.json")
    if not args.resume:
        shutil.copyfile(os.path.join(data_dir, data_tools.load_meta(data_dir)["tokenizer_file"]),
                        tokenizer_path)
        with open(config_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({"model": model_config.to_dict(), "train": vars(train_config),
                       "data_dir": os.path.abspath(data_dir), "dtype": dtype,
                       "tokenizer_file": "tokenizer.json"}, f, indent=2)
        os.replace(config_path + ".tmp", config_path)

    model = create_model(model_config, dtype=np.dtype(dtype), seed=train_config.seed)
    print(f"model: {model.num_parameters():,} parameters, dim {model_config.dim}, "
          f"{model_config.n_layers} layers, {model_config.n_heads} heads, context {train_config.context}, "
          f"vocab {model_config.vocab_size}; data: {data_dir} ({len(splits['train']):,} training tokens)")
    trainer = Trainer(model, splits["train"], splits["val"], train_config, out_dir,
                      test_tokens=splits["test"], progress=not args.no_progress)
    summary = trainer.run(resume=args.resume, stop_after=args.stop_after, max_seconds=args.max_seconds)
    if summary["interrupted"]:
        print(f"stopped at step {summary['step']}; checkpoint saved. Resume with:\n"
              f"  python examples/train.py --out-dir {out_dir} --resume", file=sys.stderr)
        return 130 if args.stop_after is None else 0

    baseline = unigram_loss(splits["train"], splits["val"], model_config.vocab_size)
    print(f"done: {summary['step']} steps{' (time budget reached)' if summary.get('time_limited') else ''} "
          f"in {summary['elapsed_s']:.0f} s; loss in nats/token: "
          f"train {summary['train_loss']:.3f}, val {summary['val_loss']:.3f} (best {summary['best_val_loss']:.3f}), "
          f"test {summary['test_loss']:.3f}; unigram baseline (val) {baseline:.3f}, "
          f"uniform ln(V) {math.log(model_config.vocab_size):.3f}")
    draw_plot(out_dir)
    if args.sample_tokens > 0:
        print_sample(model, out_dir, tokenizer_path, args.prompt, args.sample_tokens)
    return 0


def draw_plot(out_dir):
    try:
        from plot import plot_runs, PlotUnavailable
    except ImportError:
        return
    try:
        path = plot_runs([out_dir], os.path.join(out_dir, "loss.png"))
        print(f"loss curve: {path}")
    except PlotUnavailable as exc:
        print(f"note: {exc}")


def print_sample(model, out_dir, tokenizer_path, prompt, n_tokens):
    from tinygrad_llama.checkpoint import load_checkpoint
    arrays, _ = load_checkpoint(os.path.join(out_dir, "best.npz"))
    model.load_state_dict(with_prefix(arrays, "model."))
    tokenizer = data_tools.load_tokenizer(tokenizer_path)
    ids = model.generate(tokenizer.encode(prompt), n_tokens, temperature=0.8, top_k=40, seed=0)
    print(f"\nsample from the best checkpoint (temperature 0.8, top-k 40):\n{tokenizer.decode(ids)}\n")


def run_cli(argv=None):
    try:
        return main(argv)
    except (DataToolsError, TrainingError, CheckpointError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run_cli())
