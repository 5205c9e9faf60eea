"""End-to-end tests of examples/train.py (and examples/plot.py) through the command line:
the run directory, resume exactness, Ctrl-C, a non-finite loss, and bad flags."""
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import EXAMPLES, load_example, run_script, script_env
from tinygrad_llama.checkpoint import load_checkpoint

try:
    import matplotlib  # noqa: F401  (the scripts draw loss.png only with it)
    HAVE_MATPLOTLIB = True
except ImportError:
    HAVE_MATPLOTLIB = False
RUN_FILES = ("config.json", "tokenizer.json", "metrics.jsonl", "latest.npz", "latest.json",
             "best.npz", "best.json")
TIMING_KEYS = {"tokens_per_s", "elapsed_s"}


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def model_arrays(path):
    arrays, meta = load_checkpoint(path)
    return {k: v for k, v in arrays.items() if k.startswith("model.")}, meta


def temp_files(run_dir):
    return [n for n in os.listdir(run_dir) if n.startswith(".") or n.endswith(".tmp") or ".tmp." in n]


def train(*args, data, out, cwd, timeout=120):
    return run_script("train.py", "--preset", "tiny", "--data", data, "--out-dir", out,
                      "--no-progress", "--sample-tokens", 0, *args, cwd=cwd, timeout=timeout)


def assert_clean_error(proc, code, *needles):
    """Exit `code`, an `error:` line naming each needle, and no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


# ---- 1. a tiny run writes the whole run directory -----------------------------------------------
def test_tiny_run_writes_every_file(tiny_run, tiny_data_dir):
    run_dir, proc = tiny_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for name in RUN_FILES:
        assert os.path.getsize(run_dir / name) > 0, name
    assert temp_files(run_dir) == []

    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["dim"] == 32 and config["train"]["steps"] == 20
    assert os.path.samefile(config["data_dir"], tiny_data_dir)
    assert (run_dir / "tokenizer.json").read_bytes() == (tiny_data_dir / "tokenizer.json").read_bytes()

    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [10, 20]
    for r in records:
        for key in ("step", "train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s"):
            assert key in r, (key, r)
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]), r
        assert 0 < r["train_loss"] < 10 and 0 < r["val_loss"] < 10, r
        assert r["lr"] > 0 and r["tokens_per_s"] > 0 and r["elapsed_s"] >= 0, r

    _, latest = model_arrays(run_dir / "latest.npz")
    assert latest["step"] == 20
    assert json.loads((run_dir / "latest.json").read_text())["step"] == 20
    _, best = model_arrays(run_dir / "best.npz")
    assert best["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in records))

    out = proc.stdout
    done = [line for line in out.splitlines() if line.startswith("done:")]
    assert len(done) == 1, out
    m = re.search(r"train ([\d.]+), val ([\d.]+) \(best [\d.]+\), test ([\d.]+); "
                  r"unigram baseline \(val\) ([\d.]+)", done[0])
    assert m, done[0]
    train_loss, val_loss, test_loss, baseline = map(float, m.groups())
    assert train_loss == pytest.approx(records[-1]["train_loss"], abs=1e-3)
    assert val_loss == pytest.approx(records[-1]["val_loss"], abs=1e-3)
    assert 0 < test_loss < 10 and 0 < baseline < math.log(config["model"]["vocab_size"])
    after = out[out.index(done[0]):]   # the report comes last (the plot note and sample follow)
    assert "sample from the best checkpoint" in after

    if HAVE_MATPLOTLIB:
        assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "loss curve:" in after
    else:
        assert not (run_dir / "loss.png").exists()
        notes = [line for line in after.splitlines() if line.startswith("note:")]
        assert len(notes) == 1 and "matplotlib" in notes[0] and "pip install" in notes[0], out


def test_without_matplotlib_the_run_prints_a_note(tiny_run, tmp_path, monkeypatch, capsys):
    train_module = load_example("train")
    metrics = tiny_run[0] / "metrics.jsonl"
    (tmp_path / "metrics.jsonl").write_bytes(metrics.read_bytes())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    train_module.draw_plot(str(tmp_path))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("note:"), out
    assert "matplotlib" in out[0] and 'pip install -e ".[plot]"' in out[0]
    assert not (tmp_path / "loss.png").exists()


def test_loss_decreases(tiny_data_dir, tmp_path):
    proc = train("--steps", 60, "--eval-interval", 10, data=tiny_data_dir, out=tmp_path / "run",
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read_metrics(tmp_path / "run")
    assert [r["step"] for r in records] == [10, 20, 30, 40, 50, 60]
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 0.3, records
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.3, records


# ---- 2. resume exactness ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def straight_run(tiny_data_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("straight")
    proc = train("--steps", 12, "--eval-interval", 2, data=tiny_data_dir, out=work / "run", cwd=work)
    assert proc.returncode == 0, proc.stderr
    return work / "run"


@pytest.mark.parametrize("stop_after", [6, 5])  # at an evaluation, and between two
def test_stop_and_resume_is_exact(straight_run, tiny_data_dir, tmp_path, stop_after):
    run_dir = tmp_path / "run"
    first = train("--steps", 12, "--eval-interval", 2, "--stop-after", stop_after,
                  data=tiny_data_dir, out=run_dir, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "--resume" in first.stderr
    _, meta = model_arrays(run_dir / "latest.npz")
    assert meta["step"] == stop_after
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(2, stop_after + 1, 2))

    second = run_script("train.py", "--out-dir", run_dir, "--resume", "--no-progress",
                        "--sample-tokens", 0, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr

    expected, resumed = read_metrics(straight_run), read_metrics(run_dir)
    assert [r["step"] for r in resumed] == [2, 4, 6, 8, 10, 12]
    strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]
    assert strip(resumed) == strip(expected)   # exact: train_loss, val_loss, step_loss, lr

    for name in ("latest.npz", "best.npz"):
        want, want_meta = model_arrays(straight_run / name)
        got, got_meta = model_arrays(run_dir / name)
        assert want_meta["step"] == got_meta["step"]
        assert want.keys() == got.keys()
        for key in want:
            assert want[key].dtype == got[key].dtype
            assert np.array_equal(want[key], got[key]), (name, key)
    full_want, _ = load_checkpoint(straight_run / "latest.npz")
    full_got, _ = load_checkpoint(run_dir / "latest.npz")
    for key in full_want:   # optimizer moments too
        assert np.array_equal(full_want[key], full_got[key]), key


# ---- 3. Ctrl-C --------------------------------------------------------------------------------
def test_ctrl_c_saves_and_resumes(tiny_data_dir, tmp_path):
    run_dir = tmp_path / "run"
    out_path, err_path = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(EXAMPLES, "train.py"), "--preset", "tiny", "--data",
             str(tiny_data_dir), "--out-dir", str(run_dir), "--steps", "100000", "--eval-interval", "5",
             "--no-progress", "--sample-tokens", "0"],
            stdout=out, stderr=err, cwd=str(tmp_path), env=script_env(),
            # a child of a shell that ignores SIGINT (e.g. a background job) would inherit that
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            deadline = time.monotonic() + 60
            while not (run_dir / "metrics.jsonl").exists():
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, "no metrics.jsonl after 60 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    stderr = err_path.read_text()
    assert code == 130, (code, stderr)
    assert "Traceback" not in stderr, stderr
    assert "--resume" in stderr
    _, meta = model_arrays(run_dir / "latest.npz")
    assert meta["step"] > 0
    assert json.loads((run_dir / "latest.json").read_text())["step"] == meta["step"]
    assert temp_files(run_dir) == []
    assert all(r["step"] <= meta["step"] for r in read_metrics(run_dir))

    again = run_script("train.py", "--out-dir", run_dir, "--resume", "--stop-after", 2,
                       "--no-progress", "--sample-tokens", 0, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    _, meta2 = model_arrays(run_dir / "latest.npz")
    assert meta2["step"] == meta["step"] + 2
    assert temp_files(run_dir) == []


# ---- 4. a non-finite loss -----------------------------------------------------------------------
def nan_from_call(monkeypatch, first_bad):
    """Make Llama.loss return NaN from its `first_bad`-th call on."""
    from tinygrad_llama.model import Llama
    original, calls = Llama.loss, []

    def loss(self, *args, **kwargs):
        calls.append(1)
        value = original(self, *args, **kwargs)
        return value * float("nan") if len(calls) >= first_bad else value
    monkeypatch.setattr(Llama, "loss", loss)
    return calls


@pytest.mark.parametrize("eval_batches, first_bad, total_calls", [
    (1, 5, 5),    # calls: steps 1, 2, eval train + val at step 2, step 3 -> NaN: stop at once
    (2, 9, 12),   # steps 1, 2, 2+2 evals at step 2, steps 3, 4, eval at step 4 -> NaN: stop
])                # after that evaluation, before it overwrites latest.npz
def test_non_finite_loss_stops_with_one_line(tiny_data_dir, tmp_path, monkeypatch, capsys,
                                             eval_batches, first_bad, total_calls):
    train_module = load_example("train")
    calls = nan_from_call(monkeypatch, first_bad)
    run_dir = tmp_path / "run"
    code = train_module.run_cli(["--preset", "tiny", "--data", str(tiny_data_dir), "--out-dir",
                                 str(run_dir), "--steps", "20", "--eval-interval", "2",
                                 "--eval-batches", str(eval_batches), "--no-progress",
                                 "--sample-tokens", "0"])
    captured = capsys.readouterr()
    assert code == 1, (captured.out, captured.err)
    assert len(calls) == total_calls
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error:"), captured.err
    assert "nan" in lines[0] and "loss" in lines[0], lines[0]
    assert "Traceback" not in captured.err
    _, meta = model_arrays(run_dir / "latest.npz")
    assert meta["step"] == 2                          # the last good checkpoint
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == [2]
    assert all(math.isfinite(r["val_loss"]) and math.isfinite(r["train_loss"]) for r in records)
    assert temp_files(run_dir) == []


# ---- 5. bad flags -----------------------------------------------------------------------------
@pytest.mark.parametrize("flags, needle", [
    (["--dim", "30", "--n-heads", "4"], "not divisible"),
    (["--dim", "12", "--n-heads", "4"], "must be even"),
    (["--steps", "0"], "--steps"),
    (["--warmup", "50", "--steps", "10"], "--warmup"),
])
def test_bad_model_flags_exit_2_before_any_work(tiny_data_dir, tmp_path, flags, needle):
    proc = train(*flags, data=tiny_data_dir, out=tmp_path / "run", cwd=tmp_path)
    assert_clean_error(proc, 2, needle)
    assert proc.stdout == ""                          # nothing was built or printed
    assert not (tmp_path / "run").exists()


def test_context_larger_than_data(tmp_path):
    text = tmp_path / "small.txt"
    text.write_text(("Let x be a real number; then x squared is nonnegative. " * 6)[:300])
    proc = run_script("train.py", "--preset", "tiny", "--data", text, "--data-dir", tmp_path / "data",
                      "--out-dir", tmp_path / "run", "--context", 512, "--no-progress", cwd=tmp_path)
    assert_clean_error(proc, 2, "--context 512", "tokens")
    assert not (tmp_path / "run").exists()


def test_resume_on_empty_dir(tmp_path):
    (tmp_path / "run").mkdir()
    proc = run_script("train.py", "--out-dir", tmp_path / "run", "--resume", "--no-progress",
                      cwd=tmp_path)
    assert_clean_error(proc, 2, "--resume", "config.json")
    assert os.listdir(tmp_path / "run") == []


def test_missing_data_file(tmp_path):
    missing = tmp_path / "no_such_posts.txt"
    proc = run_script("train.py", "--preset", "tiny", "--data", missing, "--data-dir",
                      tmp_path / "data", "--out-dir", tmp_path / "run", "--no-progress", cwd=tmp_path)
    line = assert_clean_error(proc, 1, str(missing))
    assert line.startswith("train.py: error:")
    assert not (tmp_path / "run").exists()


# ---- 7. plot.py -------------------------------------------------------------------------------
def two_runs(tiny_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    records = read_metrics(tiny_run[0])
    with open(other / "metrics.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(dict(r, val_loss=r["val_loss"] + 0.1)) + "\n")
    return [str(tiny_run[0]), str(other)]


def test_plot_two_runs_writes_png(tiny_run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plot = load_example("plot")
    out = tmp_path / "compare.png"
    assert plot.main([*two_runs(tiny_run, tmp_path), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out) in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_plot_without_matplotlib(tiny_run, tmp_path, monkeypatch, capsys):
    plot = load_example("plot")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "compare.png"
    with pytest.raises(plot.PlotUnavailable, match=r'pip install -e "\.\[plot\]"'):
        plot.plot_runs(two_runs(tiny_run, tmp_path), str(out))
    assert plot.main([str(tiny_run[0]), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("plot.py: error:") and "matplotlib" in err
    assert not out.exists()


def test_plot_missing_run_dir(tmp_path, capsys):
    plot = load_example("plot")
    assert plot.main([str(tmp_path / "nope"), "-o", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plot.py: error:"), err
    assert ("metrics.jsonl" if HAVE_MATPLOTLIB else "matplotlib") in err[0]
