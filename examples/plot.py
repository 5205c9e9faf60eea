"""Draw and compare loss curves of training runs (needs matplotlib: pip install -e ".[plot]").

    python examples/plot.py runs/laptop runs/seed -o compare.png
"""
import argparse
import json
import os
import sys


class PlotUnavailable(RuntimeError):
    pass


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (is {run_dir} a run directory?)")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def import_pyplot(missing_note):
    """matplotlib.pyplot on a file-only backend, or PlotUnavailable saying how to get it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(f'matplotlib is not installed, so {missing_note}') from None
    return plt


def plot_runs(run_dirs, out_path):
    """Train (dashed) and validation (solid) loss against step, one colour per run."""
    plt = import_pyplot('no loss.png; get it with pip install -e ".[plot]" and run '
                        'examples/plot.py RUN_DIR')
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, run_dir in enumerate(run_dirs):
        records = read_metrics(run_dir)
        steps = [r["step"] for r in records]
        label = os.path.basename(os.path.normpath(run_dir))
        color = f"C{i % 10}"
        ax.plot(steps, [r["val_loss"] for r in records], color=color, label=f"{label} val")
        ax.plot(steps, [r["train_loss"] for r in records], color=color, linestyle="--",
                label=f"{label} train")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_path)
    return out_path


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot the loss curves of one or more run directories.")
    p.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl)")
    p.add_argument("-o", "--output", default="loss_compare.png", help="image to write")
    args = p.parse_args(argv)
    try:
        print(plot_runs(args.runs, args.output))
    except (PlotUnavailable, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"plot.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
