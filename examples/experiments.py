"""Reproducible experiments: the source tutorial's progression, learning-rate schedules, and grids
over any train.py flags. Every run is an ordinary train.py run (same data, seed and budget).

    python examples/experiments.py progression --preset laptop --steps 300
    python examples/experiments.py lr-schedule --preset tiny
    python examples/experiments.py sweep --grid lr=1e-3,3e-3 dim=64,128 --preset tiny
    python examples/experiments.py progression --seconds 60 --batch-size 8   # other train.py flags pass through

Each subcommand writes into one directory (--out-dir, default experiments/<subcommand>): one
subdirectory per run, named after its settings, plus results.md (a table: parameters, final train
and validation loss, tokens/s, wall time) and val_loss.png (the runs' validation curves; needs
matplotlib). Rerunning the same command skips the finished runs and redraws the table; after
Ctrl-C the finished runs stay, and the interrupted one is resumed from its last checkpoint
(a --steps budget: bit-exact) or redone from the start (a --seconds budget).

Budgets: --steps N (the default: the preset's) trains every run for exactly N steps, reproducibly.
--seconds S stops each run after S seconds of training instead (or at --steps if that comes
first; the LR schedule still spans --steps, so take --steps larger than any run will reach): how
far a run gets then depends on the machine's speed and load, so a seconds budget is not
bit-reproducible, and an interrupted run is redone rather than resumed.
"""
import argparse
import contextlib
import itertools
import json
import math
import os
import re
import shlex
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # examples/train.py, plot.py

from tqdm import tqdm  # noqa: E402

import data_tools  # noqa: E402
import train  # noqa: E402
from plot import PlotUnavailable, import_pyplot, read_metrics  # noqa: E402
from tinygrad_llama import LlamaConfig, create_model  # noqa: E402

LLAMA = ["--model", "llama", "--norm", "rms", "--pos", "rope", "--ffn", "swiglu", "--attention", "causal"]

# (run name, what it is, train.py flags): the tutorial's stages, each adding one component
PROGRESSION = [
    ("1-baseline", "baseline: embedding, Linear, ReLU, Linear", ["--model", "baseline"]),
    ("2-rmsnorm", "+ RMSNorm (1 block: RMSNorm, ReLU MLP)",
     ["--model", "llama", "--norm", "rms", "--pos", "none", "--ffn", "relu", "--attention", "none",
      "--n-layers", "1"]),
    ("3-rope-attention", "+ rotary causal attention (1 block, ReLU MLP)",
     ["--model", "llama", "--norm", "rms", "--pos", "rope", "--ffn", "relu", "--attention", "causal",
      "--n-layers", "1"]),
    ("4-swiglu", "+ SwiGLU (1 LLaMA block)", LLAMA + ["--n-layers", "1"]),
    ("5-llama", "full LLaMA (the preset's blocks)", LLAMA),
]

# flags the experiment sets itself, so neither pass-through flags nor a grid may
RESERVED = {"out-dir", "resume", "data", "data-dir", "stop-after", "max-seconds", "no-progress", "help"}
# flags that do not change what a run computes (so changing them does not make a finished run stale)
COSMETIC = {"out_dir", "resume", "stop_after", "no_progress", "prompt", "sample_tokens"}
MARKER = "experiment.json"     # written when a run has finished: its row of the table
STARTED = "run.json"           # written when a run starts: its settings and time spent so far


class ExperimentError(Exception):
    """Bad experiment settings (a grid that does not parse, a run directory of other settings)."""


class _Interrupted(Exception):
    pass


# ---- train.py's parser, raising instead of exiting ------------------------------------------------
def _train_parser():
    parser = train.build_parser()

    def error(message):
        raise ExperimentError(message)
    parser.error = error
    return parser


def _train_options():
    """train.py's long options that take a value: name (without --) -> argparse action."""
    options = {}
    for action in train.build_parser()._actions:
        for opt in action.option_strings:
            if opt.startswith("--"):
                options[opt[2:]] = action
    return options


def check_train_argv(argv):
    """Parse argv as train.py would (including its settings checks); return the Namespace.
    Raises ExperimentError with train.py's message."""
    parser = _train_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help and the like
        raise ExperimentError(f"train.py does not accept {' '.join(argv)}") from None
    if not args.resume:
        train.settings_from_args(args, parser)
    return args


def identity(argv):
    """What decides a run's result: its parsed train.py settings, without the cosmetic ones."""
    args = vars(check_train_argv(argv))
    return {k: v for k, v in sorted(args.items()) if k not in COSMETIC}


# ---- grids ----------------------------------------------------------------------------------------
def parse_grid(items):
    """["lr=1e-3,3e-3", "dim=64,128"] -> [("lr", ["1e-3", "3e-3"]), ("dim", ["64", "128"])].
    Keys are train.py flags without the dashes (n-layers or n_layers). Raises ExperimentError."""
    if not items:
        raise ExperimentError("--grid needs at least one KEY=V1,V2,... (e.g. --grid lr=1e-3,3e-3)")
    options = _train_options()
    grid, seen = [], set()
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().lstrip("-").replace("_", "-")
        if not sep or not key:
            raise ExperimentError(f"--grid {item!r}: expected KEY=V1,V2,... (e.g. lr=1e-3,3e-3)")
        if key not in options:
            raise ExperimentError(f"--grid {item!r}: train.py has no flag --{key} "
                                  f"(see python examples/train.py --help)")
        if key in RESERVED:
            raise ExperimentError(f"--grid {item!r}: --{key} is set by experiments.py itself")
        if options[key].nargs == 0:
            raise ExperimentError(f"--grid {item!r}: --{key} is an on/off flag that takes no value")
        if key in seen:
            raise ExperimentError(f"--grid {item!r}: --{key} appears twice in the grid")
        seen.add(key)
        values = [v.strip() for v in values.split(",")]
        if not values or any(v == "" for v in values):
            raise ExperimentError(f"--grid {item!r}: empty value (write KEY=V1,V2 with no empty entries)")
        if len(set(values)) != len(values):
            raise ExperimentError(f"--grid {item!r}: a value is repeated")
        grid.append((key, values))
    return grid


def grid_runs(grid):
    """Every combination as (run name, flags)."""
    runs = []
    for combo in itertools.product(*[[(key, v) for v in values] for key, values in grid]):
        name = "_".join(f"{key}={v}" for key, v in combo)
        name = re.sub(r"[^A-Za-z0-9._+=-]", "-", name)
        runs.append((name, " ".join(f"--{k} {v}" for k, v in combo),
                     [a for k, v in combo for a in (f"--{k}", v)]))
    return runs


# ---- the runs of each subcommand ------------------------------------------------------------------
def base_argv(args, extras, data_dir):
    argv = ["--preset", args.preset, "--data", data_dir, "--no-progress"]
    if args.steps is not None:
        argv += ["--steps", str(args.steps)]
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    if args.seconds is not None:
        argv += ["--max-seconds", str(args.seconds)]
    if not any(a == "--sample-tokens" or a.startswith("--sample-tokens=") for a in extras):
        argv += ["--sample-tokens", "0"]
    return argv + list(extras)


def plan_runs(args, base):
    """[(name, description, full train.py argv without --out-dir)] for the subcommand."""
    if args.command == "progression":
        return [(name, desc, base + flags) for name, desc, flags in PROGRESSION]
    if args.command == "lr-schedule":
        parser = _train_parser()
        chosen = train.settings_from_args(parser.parse_args(base), parser)
        lr, warmup = chosen["lr"], chosen["warmup"] or min(chosen["steps"], max(2, chosen["steps"] // 10))
        return [
            ("constant", f"constant LR {lr:g}", base + ["--warmup", "0", "--min-lr", repr(lr)]),
            ("warmup-cosine", f"{warmup} warmup steps, cosine to {chosen['min_lr'] or 0.1 * lr:g}",
             base + ["--warmup", str(warmup)]),
            ("cosine", f"cosine to {chosen['min_lr'] or 0.1 * lr:g}, no warmup", base + ["--warmup", "0"]),
        ]
    return [(name, desc, base + flags) for name, desc, flags in grid_runs(parse_grid(args.grid))]


# ---- one run ----------------------------------------------------------------------------------------
def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path, obj):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def run_state(run_dir, wanted):
    """'new', 'finished', 'resumable' or 'redo' for a run directory; raises ExperimentError when
    it holds a run of other settings (we never delete what we did not make)."""
    if not os.path.isdir(run_dir) or not os.listdir(run_dir):
        return "new"
    if not os.path.exists(os.path.join(run_dir, STARTED)):
        raise ExperimentError(f"{run_dir} exists but is not a run of experiments.py; move it away "
                              "or choose another --out-dir")
    if _read_json(os.path.join(run_dir, STARTED))["settings"] != wanted:
        raise ExperimentError(f"{run_dir} holds a run with other settings (a different preset, budget, "
                              "data or flags); choose another --out-dir, or delete it to redo it")
    if os.path.exists(os.path.join(run_dir, MARKER)):
        return "finished"
    if (wanted.get("max_seconds") is None and os.path.exists(os.path.join(run_dir, "latest.npz"))
            and os.path.exists(os.path.join(run_dir, "config.json"))):
        planned = _read_json(os.path.join(run_dir, "config.json"))["train"]["steps"]
        records = read_metrics(run_dir) if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) else []
        if records and records[-1]["step"] == planned:
            return "unmarked"   # trained to the end, stopped before its marker was written
        return "resumable"
    return "redo"


def summarize(run_dir, wall_s):
    """The table row of a finished run, from its config.json and metrics.jsonl."""
    config = _read_json(os.path.join(run_dir, "config.json"))
    records = read_metrics(run_dir)
    model_config = LlamaConfig.from_dict(config["model"])
    params = create_model(model_config, dtype="float32").num_parameters()
    tokens_per_step = config["train"]["batch_size"] * config["train"]["context"]
    tokens, seconds, previous = 0, 0.0, 0
    for r in records:  # training throughput, evaluation time excluded
        n = (r["step"] - previous) * tokens_per_step
        tokens, seconds, previous = tokens + n, seconds + n / max(r["tokens_per_s"], 1e-9), r["step"]
    last = records[-1]
    return {"params": params, "steps": last["step"], "planned_steps": config["train"]["steps"],
            "train_loss": last["train_loss"], "val_loss": last["val_loss"],
            "best_val_loss": min(r["val_loss"] for r in records),
            "tokens_per_s": tokens / seconds if seconds else float("nan"), "wall_s": wall_s}


def train_one(name, argv, run_dir, state):
    """Run train.py in this process; stdout goes to run_dir/train.log. Returns train.py's exit code."""
    started = os.path.join(run_dir, STARTED)
    if state in ("new", "redo"):
        if os.path.isdir(run_dir):
            shutil.rmtree(run_dir)      # ours (STARTED matched): an unfinished run, redone cleanly
        os.makedirs(run_dir)
        _write_json(started, {"name": name, "argv": argv, "settings": identity(argv), "wall_s": 0.0})
        call = argv + ["--out-dir", run_dir]
    elif state == "resumable":   # train.py continues with the saved settings, bit-exact
        args = check_train_argv(argv)
        call = ["--out-dir", run_dir, "--resume", "--no-progress", "--sample-tokens", str(args.sample_tokens),
                "--prompt", args.prompt]
    else:
        call = None                 # "unmarked": nothing left to train
    start = time.perf_counter()
    try:
        with open(os.path.join(run_dir, "train.log"), "a", encoding="utf-8") as log, \
                contextlib.redirect_stdout(log):
            rc = 0
            if call is not None:
                print(f"$ python examples/train.py {' '.join(call)}", flush=True)
                try:
                    rc = train.run_cli(call)
                except SystemExit as exc:   # train.py's own argument errors
                    rc = exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:        # a second Ctrl-C, outside the trainer's graceful handler
        rc = 130
    finally:
        info = _read_json(started)
        info["wall_s"] += time.perf_counter() - start
        _write_json(started, info)
    if rc == 0:
        _write_json(os.path.join(run_dir, MARKER),
                    {"name": name, "argv": argv, **summarize(run_dir, info["wall_s"])})
    return rc


# ---- table and plot ---------------------------------------------------------------------------------
def write_table(out_dir, title, command, runs, states, data_dir):
    lines = [f"# {title}", "", f"Command: `{command}`", "",
             "| run | settings | parameters | steps | train loss | val loss | best val | tokens/s | wall time |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, desc, _ in runs:
        marker = os.path.join(out_dir, name, MARKER)
        if os.path.exists(marker):
            r = _read_json(marker)
            steps = f"{r['steps']}" + (f" of {r['planned_steps']}" if r["steps"] < r["planned_steps"] else "")
            lines.append(f"| {name} | {desc} | {r['params']:,} | {steps} | {r['train_loss']:.3f} | "
                         f"{r['val_loss']:.3f} | {r['best_val_loss']:.3f} | {r['tokens_per_s']:,.0f} | "
                         f"{r['wall_s']:.{0 if r['wall_s'] >= 10 else 1}f} s |")
        else:
            lines.append(f"| {name} | {desc} | | | | | | | {states.get(name, 'not run')} |")
    meta = data_tools.load_meta(data_dir)
    vocab = int(meta["vocab_size"])
    unigram = train.unigram_loss(data_tools.load_split(data_dir, "train"),
                                 data_tools.load_split(data_dir, "val"), vocab)
    lines += ["", "Losses are cross-entropy in nats/token on fixed evaluation batches at the final step "
              "(best val: the lowest validation loss of any evaluation). For reference on this data "
              f"({data_dir}): a unigram model scores {unigram:.3f} on val, uniform guessing "
              f"ln(V) = {math.log(vocab):.3f}. Tokens/s is training throughput without evaluation; "
              "wall time is the whole train.py run (data loading, evaluations, checkpoints).", ""]
    path = os.path.join(out_dir, "results.md")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)
    return path


def plot_val_curves(out_dir, runs, x_key="step"):
    """val_loss.png: every run's validation loss against step (or training seconds)."""
    plt = import_pyplot('no val_loss.png; get it with pip install -e ".[plot]" and rerun '
                        '(finished runs are skipped)')
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for i, (name, _, _) in enumerate(runs):
        if not os.path.exists(os.path.join(out_dir, name, "metrics.jsonl")):
            continue
        records = read_metrics(os.path.join(out_dir, name))
        if records:
            ax.plot([r[x_key] for r in records], [r["val_loss"] for r in records], color=f"C{i % 10}",
                    marker="." if len(records) < 30 else None, label=name)
            drawn += 1
    ax.set_xlabel("step" if x_key == "step" else "training seconds")
    ax.set_ylabel("validation loss (nats/token)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, "val_loss.png")
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
    return path


# ---- the command line ----------------------------------------------------------------------------
TITLES = {"progression": "The tutorial's progression: from a bigram MLP to LLaMA",
          "lr-schedule": "Learning-rate schedules", "sweep": "Sweep"}


def build_parser():
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--preset", choices=sorted(train.PRESETS), default="laptop",
                        help="train.py preset every run starts from")
    common.add_argument("--steps", type=int, default=None,
                        help="steps per run (default: the preset's); a steps budget is bit-reproducible")
    common.add_argument("--seconds", type=float, default=None,
                        help="a time budget: each run stops after this many seconds of training (or at "
                             "--steps, whichever comes first); the LR schedule still spans --steps, so "
                             "give a --steps the runs will not reach. Not bit-reproducible")
    common.add_argument("--data", default=None,
                        help="as train.py --data (default: the bundled Math Stack Exchange sample)")
    common.add_argument("--data-dir", default=None,
                        help="where to prepare --data, once for all runs (as train.py --data-dir)")
    common.add_argument("--seed", type=int, default=None, help="seed of every run (default: the preset's)")
    common.add_argument("--out-dir", default=None, help="experiment directory (default: experiments/<subcommand>)")
    common.add_argument("--no-progress", action="store_true", help="no progress bar over the runs")
    p = argparse.ArgumentParser(
        description="Reproducible experiments over train.py runs. Flags not listed here are passed "
                    "to every train.py run (e.g. --dim 64 --batch-size 8).", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("progression", parents=[common], allow_abbrev=False,
                   help="baseline, +RMSNorm, +rotary causal attention, +SwiGLU, full LLaMA")
    sub.add_parser("lr-schedule", parents=[common], allow_abbrev=False,
                   help="constant LR vs linear warmup + cosine vs cosine without warmup")
    s = sub.add_parser("sweep", parents=[common], allow_abbrev=False, help="a grid over train.py flags")
    s.add_argument("--grid", nargs="+", metavar="KEY=V1,V2", default=None, required=True,
                   help="train.py flags (without --) and their values, e.g. lr=1e-3,3e-3 dim=64,128")
    return p


def prepare_data(args, extras):
    """The prepared data directory shared by all runs (prepared here once)."""
    ns = _train_parser().parse_known_args(list(extras))[0]
    ns.data, ns.data_dir = args.data, args.data_dir
    return os.path.abspath(train.resolve_data(ns))


def main(argv=None):
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    extras = [a for a in extras if a != "--"]
    out_dir = args.out_dir or os.path.join("experiments", args.command)
    try:
        if args.seconds is not None and not args.seconds > 0:
            raise ExperimentError(f"--seconds must be positive, got {args.seconds}")
        if args.steps is not None and args.steps < 1:
            raise ExperimentError(f"--steps must be at least 1, got {args.steps}")
        for a in extras:
            if a.startswith("--") and a[2:].split("=")[0] in RESERVED:
                raise ExperimentError(f"{a} is set by experiments.py itself; it cannot be passed through")
        if args.command == "sweep":
            parse_grid(args.grid)       # a bad grid fails before any data is prepared
        check_train_argv(base_argv(args, extras, "."))
        data_dir = prepare_data(args, extras)
        runs = plan_runs(args, base_argv(args, extras, data_dir))
        wanted = {}
        for name, _, run_argv in runs:  # every run's settings are checked before the first trains
            try:
                wanted[name] = identity(run_argv)
            except ExperimentError as exc:
                raise ExperimentError(f"run {name}: {exc}") from None
        os.makedirs(out_dir, exist_ok=True)
        lock = _lock(out_dir)
        try:
            states = {name: run_state(os.path.join(out_dir, name), wanted[name]) for name, _, _ in runs}
        except BaseException:
            os.remove(lock)
            raise
    except (ExperimentError, data_tools.DataToolsError) as exc:
        print(f"experiments.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _run_all(args, argv, out_dir, runs, states, data_dir)
    finally:
        os.remove(lock)


def _lock(out_dir):
    """Take out_dir/.lock (holding our pid), so that two experiments never train the same runs."""
    path = os.path.join(out_dir, ".lock")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    pid = int(f.read().strip() or 0)
                os.kill(pid, 0)
            except (OSError, ValueError):   # a lock left by a process that is gone
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            raise ExperimentError(f"another experiments.py (pid {pid}) is working in {out_dir}; wait "
                                  f"for it, or remove {path} if that process is not ours") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))
        return path
    raise ExperimentError(f"could not take the lock {path}")


def _run_all(args, argv, out_dir, runs, states, data_dir):
    command = "python examples/experiments.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    labels = {"finished": "skipped (finished)", "resumable": "resuming from its last checkpoint",
              "redo": "redoing (unfinished)", "new": "training", "unmarked": "finished; recording it"}
    failed, interrupted = [], False
    bar = tqdm(runs, desc=args.command, unit="run", dynamic_ncols=True, disable=args.no_progress)
    try:
        for name, desc, run_argv in bar:
            bar.set_postfix_str(name)
            run_dir = os.path.join(out_dir, name)
            state = states[name]
            tqdm.write(f"{name}: {labels[state]}")
            if state == "finished":
                continue
            rc = train_one(name, run_argv, run_dir, state)
            if rc == 0:
                r = _read_json(os.path.join(run_dir, MARKER))
                states[name] = "finished"
                tqdm.write(f"{name}: val {r['val_loss']:.3f}, train {r['train_loss']:.3f}, "
                           f"{r['params']:,} parameters, {r['wall_s']:.0f} s")
            elif rc == 130:
                states[name] = "interrupted"
                raise _Interrupted
            else:
                states[name] = f"failed (exit {rc}, see {name}/train.log)"
                failed.append(name)
                tqdm.write(f"{name}: failed (exit {rc}); see {os.path.join(run_dir, 'train.log')}")
    except (_Interrupted, KeyboardInterrupt):
        interrupted = True
    finally:
        bar.close()
    table = write_table(out_dir, TITLES[args.command], command, runs, states, data_dir)
    print(f"table: {table}")
    try:
        print(f"validation curves: {plot_val_curves(out_dir, runs, 'elapsed_s' if args.seconds else 'step')}")
    except PlotUnavailable as exc:
        print(f"note: {exc}")
    if interrupted:
        print("interrupted: the finished runs are kept; run the same command again to go on "
              "(the interrupted run resumes from its last checkpoint)", file=sys.stderr)
        return 130
    if failed:
        print(f"experiments.py: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
