"""examples/experiments.py: the progression, LR schedules and sweeps as reproducible experiments,
and the ablation variants they train (every one causal, every one through train.py)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)

import experiments  # noqa: E402
import train  # noqa: E402
from experiments import ExperimentError, parse_grid  # noqa: E402
from tinygrad_llama import LlamaConfig, create_model  # noqa: E402

try:
    import matplotlib  # noqa: F401
    HAVE_MATPLOTLIB = True
except ImportError:
    HAVE_MATPLOTLIB = False

STAGES = {name: flags for name, _, flags in experiments.PROGRESSION}
# a tiny budget: 4 steps, evaluated every 2, one evaluation batch
TINY = ["--preset", "tiny", "--steps", "4", "--eval-interval", "2", "--eval-batches", "1", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The bundled sample, prepared once for the module."""
    path = str(tmp_path_factory.mktemp("data") / "sample-char")
    ns = train.build_parser().parse_args(["--data-dir", path])
    return train.resolve_data(ns)


@pytest.fixture(scope="module")
def progression(tmp_path_factory):
    """`experiments.py progression` with a tiny budget, preparing the data itself via --data-dir."""
    root = tmp_path_factory.mktemp("progression")
    out, data = str(root / "exp"), str(root / "data")
    argv = ["progression", *TINY, "--data-dir", data, "--out-dir", out]
    rc = experiments.main(argv)
    return {"rc": rc, "out": out, "data": data, "argv": argv}


def _config(flags, **kw):
    """The LlamaConfig train.py builds from a stage's flags."""
    args = train.build_parser().parse_args(flags)
    return LlamaConfig(vocab_size=kw.get("vocab_size", 13), dim=16, n_layers=args.n_layers or 2, n_heads=2,
                       max_seq_len=10, arch=args.model, norm=args.norm, pos=args.pos, ffn=args.ffn,
                       attention=args.attention)


# ---- the variants ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_variant_is_causal(stage):
    """Changing the tokens after position t never changes the logits at positions <= t."""
    model = create_model(_config(STAGES[stage]), dtype=np.float64, seed=3)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 13, size=(2, 10))
    logits = model(tokens).data
    for t in range(9):
        changed = tokens.copy()
        changed[:, t + 1:] = (tokens[:, t + 1:] + rng.integers(1, 13, size=(2, 9 - t))) % 13
        new = model(changed).data
        np.testing.assert_array_equal(new[:, :t + 1], logits[:, :t + 1])
        assert not np.allclose(new[:, t + 1], logits[:, t + 1])   # the test can see a change


@pytest.mark.parametrize("stage", ["3-rope-attention", "4-swiglu", "5-llama"])
def test_attention_variants_see_the_past(stage):
    """...while the attention stages do use earlier tokens (the bigram stages cannot)."""
    model = create_model(_config(STAGES[stage]), dtype=np.float64, seed=3)
    tokens = np.arange(10)[None] % 13
    changed = tokens.copy()
    changed[0, 0] = 12
    assert not np.allclose(model(changed).data[0, -1], model(tokens).data[0, -1])


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_variant_trains_and_generates_through_the_command_line(stage, data_dir, tmp_path, capsys):
    out = str(tmp_path / stage)
    rc = train.run_cli([*TINY, "--data", data_dir, "--out-dir", out, "--sample-tokens", "8", *STAGES[stage]])
    assert rc == 0
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [r["step"] for r in records] == [2, 4]
    assert all(np.isfinite(r["val_loss"]) for r in records)
    assert os.path.exists(os.path.join(out, "best.npz"))
    saved = json.load(open(os.path.join(out, "config.json")))["model"]
    args = train.build_parser().parse_args(STAGES[stage])
    assert (saved["arch"], saved["norm"], saved["pos"], saved["ffn"], saved["attention"]) == \
        (args.model, args.norm, args.pos, args.ffn, args.attention)
    assert "sample from the best checkpoint" in capsys.readouterr().out


# ---- progression -----------------------------------------------------------------------------------
def test_progression_writes_its_table_and_plot(progression):
    assert progression["rc"] == 0
    out = progression["out"]
    table = open(os.path.join(out, "results.md")).read()
    for name in STAGES:
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3] == "4"                                  # steps
        assert all(float(c) > 0 for c in cells[4:7])            # train, val, best val loss
        assert cells[8].endswith(" s")
    assert "unigram" in table and "--preset tiny" in table
    assert os.path.exists(os.path.join(out, "val_loss.png")) == HAVE_MATPLOTLIB
    # same data, seed and budget for every stage; the 1-block stages have one block
    configs = {n: json.load(open(os.path.join(out, n, "config.json"))) for n in STAGES}
    assert len({(c["data_dir"], c["train"]["seed"], c["train"]["steps"], c["model"]["dim"],
                 c["train"]["context"], c["train"]["batch_size"]) for c in configs.values()}) == 1
    assert [configs[n]["model"]["n_layers"] for n in ("2-rmsnorm", "3-rope-attention", "4-swiglu")] == [1, 1, 1]
    assert configs["5-llama"]["model"]["n_layers"] == train.PRESETS["tiny"]["n_layers"]
    assert os.path.exists(os.path.join(progression["data"], "meta.json"))  # prepared once, shared


def test_rerun_skips_finished_runs(progression, capsys):
    out = progression["out"]
    files = {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
             for d, _, fs in os.walk(out) for f in fs if d != out}
    capsys.readouterr()
    assert experiments.main(progression["argv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("skipped (finished)") == len(STAGES)
    assert {p: os.stat(p).st_mtime_ns for p in files} == files
    assert os.path.exists(os.path.join(out, "results.md"))


def test_other_settings_in_the_same_directory_are_refused(progression, capsys):
    argv = [a if a != "4" else "6" for a in progression["argv"]]   # --steps 6
    assert experiments.main(argv) == 2
    assert "other settings" in capsys.readouterr().err


def test_progression_without_matplotlib_notes_it(progression, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = str(tmp_path / "copy")
    import shutil
    shutil.copytree(progression["out"], out)
    os.remove(os.path.join(out, "results.md"))
    if os.path.exists(os.path.join(out, "val_loss.png")):
        os.remove(os.path.join(out, "val_loss.png"))
    argv = progression["argv"][:-1] + [out]
    assert experiments.main(argv) == 0
    printed = capsys.readouterr().out
    assert "note: matplotlib is not installed" in printed
    assert os.path.exists(os.path.join(out, "results.md"))
    assert not os.path.exists(os.path.join(out, "val_loss.png"))


def test_interrupted_run_resumes_to_the_same_result(data_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C (the trainer stops after a step, saving latest.npz) keeps the run resumable; the
    rerun finishes it with exactly the losses of an uninterrupted run."""
    from tinygrad_llama.trainer import Trainer
    argv = ["sweep", "--grid", "lr=3e-3", *TINY, "--steps", "6", "--data", data_dir]
    assert experiments.main(argv + ["--out-dir", str(tmp_path / "whole")]) == 0

    original = Trainer.run

    def interrupted_run(self, resume=False, stop_after=None, max_seconds=None):
        return original(self, resume=resume, stop_after=3)   # as if Ctrl-C came after step 3
    monkeypatch.setattr(Trainer, "run", interrupted_run)
    out = str(tmp_path / "cut")
    assert experiments.main(argv + ["--out-dir", out]) == 130
    run_dir = os.path.join(out, "lr=3e-3")
    assert not os.path.exists(os.path.join(run_dir, experiments.MARKER))
    assert os.path.exists(os.path.join(run_dir, "latest.npz"))
    assert "| lr=3e-3 |" in open(os.path.join(out, "results.md")).read()
    monkeypatch.setattr(Trainer, "run", original)
    capsys.readouterr()
    assert experiments.main(argv + ["--out-dir", out]) == 0
    assert "lr=3e-3: resuming" in capsys.readouterr().out
    whole = [json.loads(line) for line in open(tmp_path / "whole" / "lr=3e-3" / "metrics.jsonl")]
    cut = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert [(r["step"], r["val_loss"], r["train_loss"]) for r in cut] == \
        [(r["step"], r["val_loss"], r["train_loss"]) for r in whole]


# ---- lr-schedule and the time budget ---------------------------------------------------------------
def test_lr_schedule_runs_the_three_schedules(data_dir, tmp_path):
    out = str(tmp_path / "lr")
    argv = ["lr-schedule", *TINY, "--steps", "10", "--eval-interval", "1", "--lr", "2e-3", "--warmup", "4", "--data", data_dir,
            "--out-dir", out]
    assert experiments.main(argv) == 0
    lrs = {name: [json.loads(line)["lr"] for line in open(os.path.join(out, name, "metrics.jsonl"))]
           for name in ("constant", "warmup-cosine", "cosine")}
    assert lrs["constant"] == [2e-3] * 10
    assert lrs["warmup-cosine"][0] < 2e-3 and max(lrs["warmup-cosine"]) == pytest.approx(2e-3)
    assert lrs["cosine"][0] == pytest.approx(2e-3)
    assert all(a > b for a, b in zip(lrs["cosine"], lrs["cosine"][1:]))
    table = open(os.path.join(out, "results.md")).read()
    assert all(f"| {name} |" in table for name in lrs)


def test_seconds_budget_ends_runs_as_finished(data_dir, tmp_path):
    out = str(tmp_path / "sec")
    argv = ["sweep", "--grid", "dim=16", "--preset", "tiny", "--steps", "100000", "--seconds", "0.3",
            "--eval-batches", "1", "--no-progress", "--data", data_dir, "--out-dir", out]
    assert experiments.main(argv) == 0
    marker = json.load(open(os.path.join(out, "dim=16", experiments.MARKER)))
    assert 1 <= marker["steps"] < 100000
    records = [json.loads(line) for line in open(os.path.join(out, "dim=16", "metrics.jsonl"))]
    assert records[-1]["step"] == marker["steps"]   # evaluated where it stopped
    assert records[-1]["lr"] > 0.5 * train.PRESETS["tiny"]["lr"]   # the schedule spans --steps
    assert "of 100000" in open(os.path.join(out, "results.md")).read()


# ---- sweep grids -----------------------------------------------------------------------------------
def test_parse_grid():
    assert parse_grid(["lr=1e-3,3e-3", "n_layers=1,2", "--ffn=relu"]) == [
        ("lr", ["1e-3", "3e-3"]), ("n-layers", ["1", "2"]), ("ffn", ["relu"])]
    runs = experiments.grid_runs(parse_grid(["lr=1e-3,3e-3", "dim=64,128"]))
    assert [name for name, _, _ in runs] == ["lr=1e-3_dim=64", "lr=1e-3_dim=128", "lr=3e-3_dim=64",
                                             "lr=3e-3_dim=128"]
    assert runs[1][2] == ["--lr", "1e-3", "--dim", "128"]


@pytest.mark.parametrize("grid, message", [
    (["lr"], "expected KEY=V1,V2"),
    (["=1,2"], "expected KEY=V1,V2"),
    (["lr="], "empty value"),
    (["lr=1e-3,,3e-3"], "empty value"),
    (["lr=1,1"], "repeated"),
    (["bogus=1,2"], "no flag --bogus"),
    (["out-dir=a,b"], "set by experiments.py"),
    (["no-progress=1"], "set by experiments.py"),
    (["lr=1e-3", "lr=2e-3"], "twice"),
])
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(ExperimentError, match=message):
        parse_grid(grid)


@pytest.mark.parametrize("grid, message", [
    (["lr=abc"], "invalid float value: 'abc'"),
    (["dim=30"], "not divisible by --n-heads"),
    (["dim=12"], "must be even"),
    (["model=gpt"], "invalid choice: 'gpt'"),
])
def test_bad_grid_values_fail_before_any_training(grid, message, data_dir, tmp_path, capsys):
    out = tmp_path / "exp"
    assert experiments.main(["sweep", "--grid", *grid, *TINY, "--data", data_dir, "--out-dir", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_grid_on_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, "experiments.py"), "sweep", "--grid", "lr",
                           "--out-dir", str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "experiments.py: error: --grid 'lr': expected KEY=V1,V2" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_reserved_pass_through_flags_are_refused(data_dir, tmp_path, capsys):
    assert experiments.main(["progression", *TINY, "--data", data_dir, "--out-dir", str(tmp_path / "x"),
                             "--resume"]) == 2
    assert "--resume is set by experiments.py" in capsys.readouterr().err


def test_a_second_experiment_in_the_same_directory_is_refused(progression, capsys):
    lock = os.path.join(progression["out"], ".lock")
    with open(lock, "w") as f:
        f.write(str(os.getppid()))        # a live process holds it
    try:
        assert experiments.main(progression["argv"]) == 2
        assert "another experiments.py" in capsys.readouterr().err
    finally:
        os.remove(lock)
    with open(lock, "w") as f:
        f.write("999999999")              # a stale lock (no such process) is taken over
    assert experiments.main(progression["argv"]) == 0
    assert not os.path.exists(lock)
