"""The training loop: batches, AdamW with warmup + cosine decay, evaluation, checkpoints, resume.

The trainer takes token arrays (anything indexable like a 1-D integer array, e.g. an np.memmap),
so it needs nothing from data_tools. A run directory holds
    metrics.jsonl          one JSON object per evaluation, appended as it is computed
    latest.npz / .json     the state after the last evaluation (or Ctrl-C), to resume from
    best.npz / .json       the weights with the lowest validation loss so far
Everything that decides the next batch (the RNG) and the next update (AdamW's moments and step)
is in the checkpoint, so a resumed run computes exactly the losses an uninterrupted one would.
"""
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, asdict

from tqdm import tqdm

from .backend import xp, keep_freed_memory
from .checkpoint import (CheckpointError, save_checkpoint, load_checkpoint, rng_state_to_json,
                         rng_from_json, check_compatible)
from .optim import AdamW, clip_grad_norm, cosine_schedule
from .tensor import no_grad

CHECKPOINT_KIND = "tinygrad_llama-checkpoint-v1"


def with_prefix(arrays, prefix):
    """The arrays whose key starts with `prefix` ("model." or "optimizer."), keyed without it: a
    training checkpoint stores the model's state_dict and the optimizer's arrays side by side."""
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a checkpoint that does not fit, bad settings)."""


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    context: int = 128
    lr: float = 1e-3
    min_lr: float = None          # default: 10% of lr, as in the LLaMA paper
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_interval: int = 100
    eval_batches: int = 8
    seed: int = 1337

    def __post_init__(self):
        for name in ("steps", "batch_size", "context", "eval_interval", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.warmup < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("warmup, weight_decay and grad_clip must not be negative")
        if self.warmup > self.steps:
            raise ValueError(f"warmup ({self.warmup} steps) must not exceed steps ({self.steps})")
        if self.min_lr is None:
            self.min_lr = 0.1 * self.lr


def batch_at(tokens, offsets, context):
    """Inputs and next-token targets, each (B, context), from windows starting at `offsets`."""
    windows = xp.asarray(tokens[offsets[:, None] + xp.arange(context + 1)], dtype=xp.int64)  # (B, C+1)
    return windows[:, :-1], windows[:, 1:]


def random_offsets(rng, n_tokens, batch_size, context):
    return rng.integers(0, n_tokens - context, size=batch_size)


def check_split_size(name, tokens, context):
    if len(tokens) < context + 1:
        raise TrainingError(f"the {name} split has {len(tokens)} tokens, fewer than context + 1 = "
                            f"{context + 1}: use a smaller --context or more data")


class Trainer:
    def __init__(self, model, train_tokens, val_tokens, config, out_dir, test_tokens=None,
                 metadata=None, progress=True):
        self.model, self.config, self.out_dir = model, config, out_dir
        self.train_tokens, self.val_tokens, self.test_tokens = train_tokens, val_tokens, test_tokens
        self.metadata = metadata or {}   # extra JSON saved in each checkpoint (e.g. the tokenizer)
        self.progress = progress
        for name, tokens in (("train", train_tokens), ("val", val_tokens), ("test", test_tokens)):
            if tokens is not None:
                check_split_size(name, tokens, config.context)
        keep_freed_memory()  # each step's arrays reuse the last step's memory (no page faults)
        self.optimizer = AdamW(model.named_parameters(), lr=config.lr, betas=(0.9, 0.95),
                               weight_decay=config.weight_decay)
        self.rng = xp.random.default_rng(config.seed)
        self.step = 0
        self.best_val_loss = math.inf
        self.step_losses = []   # this process's training losses, one per step (for tests/plots)
        # fixed evaluation windows, the same at every evaluation and in every resumed run
        eval_rng = xp.random.default_rng(config.seed + 1)
        self.eval_offsets = {
            name: [random_offsets(eval_rng, len(tokens), config.batch_size, config.context)
                   for _ in range(config.eval_batches)]
            for name, tokens in (("train", train_tokens), ("val", val_tokens), ("test", test_tokens))
            if tokens is not None}

    # ---- paths and metadata -------------------------------------------------------------------
    def path(self, name):
        return os.path.join(self.out_dir, name)

    def _state_metadata(self):
        optimizer_state = self.optimizer.state_dict()
        return {"kind": CHECKPOINT_KIND, "step": self.step, "best_val_loss": self.best_val_loss,
                "model_config": self.model.config.to_dict(), "dtype": str(self.model.dtype),
                "train_config": asdict(self.config), "rng": rng_state_to_json(self.rng),
                "optimizer": {k: v for k, v in optimizer_state.items()
                              if not isinstance(v, xp.ndarray)},
                **self.metadata}

    def save(self, name):
        arrays = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for k, v in self.optimizer.state_dict().items():
            if isinstance(v, xp.ndarray):
                arrays[f"optimizer.{k}"] = v
        save_checkpoint(self.path(f"{name}.npz"), arrays, self._state_metadata())

    def resume(self):
        """Continue from latest.npz: weights, optimizer moments, step, RNG, best loss."""
        path = self.path("latest.npz")
        if not os.path.exists(path):
            raise TrainingError(f"--resume: no checkpoint {path} to resume from")
        arrays, meta = load_checkpoint(path)
        if meta.get("kind") != CHECKPOINT_KIND:
            raise CheckpointError(f"{path}: not a training checkpoint of this project")
        check_compatible(meta["model_config"], self.model.config.to_dict())
        saved_train = dict(meta["train_config"])
        wanted = asdict(self.config)
        for key in ("batch_size", "context", "seed"):  # these decide which batches come next
            if saved_train.get(key) != wanted[key]:
                raise CheckpointError(f"{path}: the run was started with {key}={saved_train.get(key)}, "
                                      f"now {key}={wanted[key]}; resume with the same value")
        self.model.load_state_dict(with_prefix(arrays, "model."))
        optimizer_state = dict(meta["optimizer"])
        optimizer_state.update(with_prefix(arrays, "optimizer."))
        optimizer_state.pop("lr", None)   # the schedule sets lr at every step
        self.optimizer.load_state_dict(optimizer_state)
        self.rng = rng_from_json(meta["rng"])
        self.step = int(meta["step"])
        self.best_val_loss = float(meta["best_val_loss"])
        self._truncate_metrics(self.step)
        return self.step

    def _truncate_metrics(self, step):
        """Drop metric lines written after the checkpoint we resume from (they will be redone)."""
        path = self.path("metrics.jsonl")
        if not os.path.exists(path):
            return
        with open(path, encoding="utf-8") as f:
            kept = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)

    # ---- evaluation ---------------------------------------------------------------------------
    def evaluate(self, split):
        tokens = {"train": self.train_tokens, "val": self.val_tokens, "test": self.test_tokens}[split]
        losses = []
        with no_grad():
            for offsets in self.eval_offsets[split]:
                x, y = batch_at(tokens, offsets, self.config.context)
                losses.append(self.model.loss(x, y).item())
        return float(sum(losses) / len(losses))

    def _log(self, record):
        with open(self.path("metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # ---- the loop ------------------------------------------------------------------------------
    def train_step(self):
        """One update. Returns (loss, lr); raises TrainingError before updating on a bad loss."""
        c = self.config
        lr = cosine_schedule(self.step, c.lr, c.warmup, c.steps, c.min_lr)
        x, y = batch_at(self.train_tokens, random_offsets(self.rng, len(self.train_tokens),
                                                          c.batch_size, c.context), c.context)
        loss = self.model.loss(x, y)                # (,)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingError(f"the loss became {loss_value} at step {self.step + 1}; training "
                                f"stopped, the last good checkpoint is {self.path('latest.npz')}")
        self.optimizer.zero_grad()
        loss.backward()
        norm = clip_grad_norm(self.model.parameters(), c.grad_clip) if c.grad_clip else 0.0
        if not math.isfinite(norm):
            raise TrainingError(f"the gradient norm became {norm} at step {self.step + 1}; training "
                                f"stopped, the last good checkpoint is {self.path('latest.npz')}")
        self.optimizer.lr = lr
        self.optimizer.step()
        self.step += 1
        return loss_value, lr

    def run(self, resume=False, stop_after=None, max_seconds=None):
        """Train to config.steps. Returns a summary dict; `summary["interrupted"]` is True when
        Ctrl-C, or `stop_after` steps taken in this call, stopped it early (after saving
        latest.npz, from which `run(resume=True)` goes on). `max_seconds` is a time budget for
        this call: once it is spent the run evaluates, saves and ends there as a finished run
        (`summary["time_limited"]` True); the LR schedule is still the one of config.steps, and
        where it stops depends on the machine's speed, so it is not bit-reproducible."""
        os.makedirs(self.out_dir, exist_ok=True)
        if resume:
            self.resume()
        elif os.path.exists(self.path("metrics.jsonl")):
            os.remove(self.path("metrics.jsonl"))
        c = self.config
        interrupted = _InterruptFlag()
        start_time = time.perf_counter()
        window_time, window_tokens = start_time, 0
        bar = tqdm(total=c.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not self.progress)
        last_record = None
        time_limited = False
        with interrupted:
            steps_here = 0
            while self.step < c.steps and not interrupted.flag:
                if stop_after is not None and steps_here == stop_after:
                    interrupted.flag = True
                    break
                steps_here += 1
                loss, lr = self.train_step()
                self.step_losses.append(loss)
                window_tokens += c.batch_size * c.context
                now = time.perf_counter()
                tokens_per_s = window_tokens / max(now - window_time, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
                out_of_time = max_seconds is not None and now - start_time >= max_seconds
                if self.step % c.eval_interval == 0 or self.step == c.steps or out_of_time:
                    last_record = self._evaluate_and_save(loss, lr, tokens_per_s, now - start_time)
                    window_time, window_tokens = time.perf_counter(), 0
                if out_of_time and self.step < c.steps:
                    time_limited = True
                    break
        bar.close()
        if interrupted.flag:
            self.save("latest")
            return {"interrupted": True, "step": self.step}
        summary = {"interrupted": False, "time_limited": time_limited, "step": self.step,
                   "best_val_loss": self.best_val_loss,
                   "elapsed_s": time.perf_counter() - start_time, **(last_record or {})}
        if self.test_tokens is not None:
            summary["test_loss"] = self._best_test_loss()
        return summary

    def _evaluate_and_save(self, step_loss, lr, tokens_per_s, elapsed):
        record = {"step": self.step, "train_loss": self.evaluate("train"),
                  "val_loss": self.evaluate("val"), "step_loss": step_loss, "lr": lr,
                  "tokens_per_s": round(tokens_per_s, 1), "elapsed_s": round(elapsed, 3)}
        for split in ("train", "val"):   # before saving: latest.npz must stay the last good state
            if not math.isfinite(record[f"{split}_loss"]):
                raise TrainingError(f"the {split} evaluation loss became {record[f'{split}_loss']} at "
                                    f"step {self.step}; training stopped, the last good checkpoint "
                                    f"is {self.path('latest.npz')}")
        if record["val_loss"] < self.best_val_loss:
            self.best_val_loss = record["val_loss"]
            self.save("best")
        self.save("latest")
        self._log(record)
        if self.progress:
            tqdm.write(f"step {self.step:>6}  train {record['train_loss']:.4f}  val "
                       f"{record['val_loss']:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s")
        return record

    def _best_test_loss(self):
        """Test-split loss of the best checkpoint's weights (the current ones are restored)."""
        current = self.model.state_dict()
        if os.path.exists(self.path("best.npz")):
            arrays, _ = load_checkpoint(self.path("best.npz"))
            self.model.load_state_dict(with_prefix(arrays, "model."))
        loss = self.evaluate("test")
        self.model.load_state_dict(current)
        return loss


class _InterruptFlag:
    """While active, the first Ctrl-C (SIGINT) only sets `flag`, so the loop stops after the step
    it is in and saves a consistent checkpoint; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.flag = False
        self._previous = None

    def _handler(self, signum, frame):
        self.flag = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
