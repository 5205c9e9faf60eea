"""Shared fixtures for the end-to-end tests of the example scripts (examples/*.py).

`tiny_data_dir` prepares the bundled sample once per session (char tokenizer) into a temporary
directory; `tiny_run` trains one `--preset tiny` run on it through the command line. Nothing is
written into the repository: every run gets --data and --out-dir under pytest's tmp dirs and the
scripts run with a temporary working directory.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "examples")


def script_env():
    """The environment for a script subprocess: the repository importable even when the
    package is not installed, and no inherited PYTHONWARNINGS noise in stderr."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONWARNINGS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_script(name, *args, cwd, timeout=120):
    """Run examples/<name> with this interpreter; the CompletedProcess (text stdout/stderr)."""
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=str(cwd),
                          env=script_env())


_EXAMPLE_MODULES = {}


def load_example(name):
    """Import examples/<name>.py in this process (once), e.g. to call train.run_cli([...])."""
    if name not in _EXAMPLE_MODULES:
        spec = importlib.util.spec_from_file_location(f"_example_{name}",
                                                      os.path.join(EXAMPLES, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _EXAMPLE_MODULES[name] = module
    return _EXAMPLE_MODULES[name]


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    import data_tools
    out = tmp_path_factory.mktemp("tiny_data") / "sample-char"
    data_tools.prepare(data_tools.sample_path(), str(out), tokenizer="char", progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_data_dir, tmp_path_factory):
    """(run_dir, CompletedProcess) of `train.py --preset tiny` (20 steps, evals at 10 and 20)."""
    work = tmp_path_factory.mktemp("tiny_run")
    run_dir = work / "run"
    proc = run_script("train.py", "--preset", "tiny", "--data", tiny_data_dir, "--out-dir", run_dir,
                      "--no-progress", "--sample-tokens", 20, cwd=work)
    return run_dir, proc
