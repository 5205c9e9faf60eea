"""examples/benchmark.py end to end on the tiny config, our engine only: the throughput table and
the per-Function profile (--profile) come out, and --json holds the same numbers."""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_profiles_a_tiny_run(tmp_path):
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "benchmark.py"), "--configs", "tiny",
         "--threads", "1", "--no-torch", "--no-extras", "--profile", "--steps", "2", "--warmup", "1",
         "--rounds", "1", "--quick", "--json", str(out_json)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^\| tiny \| 1 \| [\d,]+ \|", out, re.M), out
    assert "### Where a step goes: tiny, 1 thread(s)" in out
    run = json.loads(out_json.read_text())["runs"][0]["ours"]
    rows = {name: (ms, calls) for name, ms, calls in run["profile"]}
    # the model's fused layers, once per layer (tiny: 2 layers) and per step
    assert rows["SwiGLU.forward"][1] == 2 and rows["SwiGLU.backward"][1] == 2
    assert rows["CrossEntropy.forward"][1] == 1
    inside = sum(ms for ms, _ in rows.values())
    assert 0 < inside < run["step_ms"]  # the Functions are part of the step, not more
    # one thread: every Function was also timed in cache, in an extra step of its own
    assert set(run["hot"]) == set(rows) and all(ms > 0 for ms in run["hot"].values())
    in_cache = sum(run["hot"].values())
    assert f"| (all Functions) | {inside:.2f} | | {in_cache:.2f} |" in out
    assert re.search(r"^\| SwiGLU\.forward \| [\d.]+ \| 2 \| [\d.]+ \|$", out, re.M), out
    assert re.search(r"would take [\d.]+ ms: [\d,]+ tokens/s\.$", out, re.M), out
    # the budget row: no target for tiny, no PyTorch; the products alone are part of the step
    budget = re.search(r"^\| tiny \| 1 \| - \| - \| - \| ([\d.]+) \| ([\d.]+) \| - \| (-?[\d.]+) \|$",
                       out, re.M)
    assert budget, out
    step, products, rest = map(float, budget.groups())
    assert products > 0 and abs(step - products - rest) < 0.11


def test_step_products_add_up_to_the_flop_formula():
    # the products the budget times are the ones the FLOP formula counts, for every config
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import benchmark
    finally:
        sys.path.remove(os.path.join(ROOT, "examples"))
    for cfg in benchmark.CONFIGS.values():
        mc = benchmark.make_config(cfg)
        flop = sum(2 * batch * m * k * n for batch, m, k, n in benchmark.step_products(cfg, mc))
        assert flop == benchmark.flop_per_token(cfg, mc) * cfg["batch"] * cfg["context"]


def test_benchmark_compares_with_pytorch_when_installed():
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        import pytest
        pytest.skip("PyTorch is not installed (it is optional, for this comparison only)")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "benchmark.py"), "--configs", "tiny",
         "--threads", "1", "--no-extras", "--steps", "2", "--warmup", "1", "--rounds", "1", "--quick"],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0 and "failed" not in proc.stderr, proc.stderr
    row = re.search(r"^\| tiny \| 1 \| [\d,]+ \| [\d,]+ / [\d,]+ \| (\d+\.\d\d) \|", proc.stdout, re.M)
    assert row, proc.stdout
    first = re.search(r"^\| tiny \| 1 \| .* \| (\d\.\d{4}) / (\d\.\d{4}) \|$", proc.stdout, re.M)
    assert first and first.group(1) == first.group(2)  # the same model, weights and data


def test_benchmark_rejects_bad_arguments_in_one_line():
    for argv, message in [(["--configs", "nope"], "unknown config 'nope'"),
                          (["--threads", "x"], "--threads: expected positive thread counts"),
                          (["--threads", "2,0"], "got '2,0'")]:
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "benchmark.py"), *argv],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.returncode in (1, 2), (argv, proc.returncode)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (argv, proc.stderr)
