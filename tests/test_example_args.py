"""The measuring scripts in examples/ turn a bad argument into one usage line and exit status 2,
before any work starts (no traceback)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("script, argv, message", [
    ("op_overhead.py", ["--n", "0"], "--n: need at least 4 iterations, got 0"),
    ("op_overhead.py", ["--shape", "3", "5"], "--shape: need a square matrix"),
    ("op_overhead.py", ["--shape", "0", "0"], "got 0 0"),
    ("bench_data.py", ["--size-mb", "-1"], "must not be negative"),
    ("bench_data.py", ["--workers", "0"], "--workers: need at least 1, got 0"),
    ("bench_data.py", ["--size-mb", "0", "--bpe-mb", "1", "--vocab-size", "100"],
     "--vocab-size: a byte-level BPE vocabulary needs at least 257, got 100"),
])
def test_bad_arguments_are_one_usage_line(script, argv, message):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *argv],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""  # nothing measured or generated


@pytest.mark.parametrize("script", ["train.py", "generate.py"])
def test_help_names_real_defaults_only(script):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), "--help"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert "default: None" not in text and "default: False" not in text
    assert "(default: data/<name>-<tokenizer>) (default:" not in text  # not said twice either
    assert "(default: 1337)" in text if script == "train.py" else "(default: 200)" in text
