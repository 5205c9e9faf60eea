"""End-to-end tests of examples/generate.py on a tiny trained run (the session's `tiny_run`)."""
import shutil

import pytest

from conftest import run_script
from data_tools import CharTokenizer

PROMPT = "Let $x$ be"


def generate(run_dir, *args, cwd):
    return run_script("generate.py", run_dir, *args, cwd=cwd, timeout=60)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("generate.py: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def run_dir(tiny_run):
    assert tiny_run[1].returncode == 0, tiny_run[1].stderr
    return tiny_run[0]


def test_generate_continues_the_prompt(run_dir, tmp_path):
    proc = generate(run_dir, "--prompt", PROMPT, "--max-new-tokens", 30, "--seed", 1, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith(PROMPT)
    assert len(proc.stdout.rstrip("\n")) > len(PROMPT)


def test_greedy_is_deterministic_and_latest_works(run_dir, tmp_path):
    args = ("--prompt", PROMPT, "--max-new-tokens", 25, "--temperature", 0)
    a = generate(run_dir, *args, cwd=tmp_path)
    b = generate(run_dir, *args, cwd=tmp_path)
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout and a.stdout.startswith(PROMPT)
    latest = generate(run_dir, *args, "--checkpoint", "latest", "--top-k", 5, cwd=tmp_path)
    assert latest.returncode == 0, latest.stderr
    assert latest.stdout.startswith(PROMPT) and len(latest.stdout.rstrip("\n")) > len(PROMPT)


def test_missing_run_dir(tmp_path):
    missing = tmp_path / "no_such_run"
    assert_one_line_error(generate(missing, cwd=tmp_path), str(missing))


def test_missing_checkpoint(run_dir, tmp_path):
    partial = tmp_path / "run"
    partial.mkdir()
    for name in ("latest.npz", "latest.json", "tokenizer.json"):
        shutil.copy(run_dir / name, partial / name)
    assert_one_line_error(generate(partial, cwd=tmp_path), "best.npz")
    ok = generate(partial, "--checkpoint", "latest", "--max-new-tokens", 3, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


def test_damaged_checkpoint(run_dir, tmp_path):
    damaged = tmp_path / "run"
    shutil.copytree(run_dir, damaged)
    data = (damaged / "best.npz").read_bytes()
    (damaged / "best.npz").write_bytes(data[: len(data) // 2])
    assert_one_line_error(generate(damaged, cwd=tmp_path), "best.npz")


def test_tokenizer_of_another_vocabulary(run_dir, tmp_path):
    other = tmp_path / "run"
    shutil.copytree(run_dir, other)
    CharTokenizer.train(["only a few characters"]).save(str(other / "tokenizer.json"))
    line = assert_one_line_error(generate(other, cwd=tmp_path), "vocab")
    assert "tokenizer" in line


@pytest.mark.parametrize("flags", [["--temperature", "-1"], ["--top-k", "0"], ["--top-p", "1.5"],
                                   ["--prompt", ""]])
def test_bad_flags_exit_2(run_dir, tmp_path, flags):
    proc = generate(run_dir, *flags, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr
