"""examples/gradients_by_hand.py: passes on the real backward passes, and fails, naming the layer,
when one of them is wrong."""
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest

from tinygrad_llama import functional as F

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "examples",
                      "gradients_by_hand.py")
LAYERS = ["Linear", "Embedding", "RMSNorm", "RoPE", "CausalAttention", "SwiGLU", "CrossEntropy"]


def test_script_passes_and_shows_every_layer(tmp_path):
    result = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)   # from another directory: the script finds the package
    assert result.returncode == 0, result.stdout + result.stderr
    for name in LAYERS:
        assert f"== {name} ==" in result.stdout
    assert result.stdout.count(" OK\n") == len(LAYERS)
    assert f"all {len(LAYERS)} hand-written backward passes match finite differences" in result.stdout
    assert "FAIL" not in result.stdout


def test_layer_option_and_help():
    one = subprocess.run([sys.executable, SCRIPT, "--layer", "rmsnorm"], capture_output=True,
                         text=True, timeout=60)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "== RMSNorm ==" in one.stdout
    assert not any(f"== {n} ==" in one.stdout for n in LAYERS if n != "RMSNorm")
    helped = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--layer" in helped.stdout
    bad = subprocess.run([sys.executable, SCRIPT, "--layer", "nonesuch"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0 and "invalid choice" in bad.stderr


@pytest.fixture(scope="module")
def script():
    return runpy.run_path(SCRIPT, run_name="gradients_by_hand")   # not "__main__": main() not run


def test_wrong_swiglu_backward_is_reported(script, monkeypatch, capsys):
    real = F.SwiGLU.backward

    def wrong(ctx, grad):   # the gradient of x off by 1%
        dx, dw1, dw2, dw3 = real(ctx, grad)
        return dx * 1.01, dw1, dw2, dw3

    monkeypatch.setattr(F.SwiGLU, "backward", staticmethod(wrong))
    assert script["main"]([]) == 1
    out = capsys.readouterr().out
    assert "FAIL: SwiGLU" in out and "(gradient of x)" in out
    assert "1 of 7 hand-written backward passes do NOT match finite differences" in out
    assert "FAIL: RMSNorm" not in out


def test_wrong_rms_norm_backward_is_reported_with_layer_option(script, monkeypatch, capsys):
    def wrong(ctx, grad):   # dx without the term from r's dependence on x
        x, r, weight = ctx.saved
        x_hat = x * r
        return r * grad * weight, (grad * x_hat).reshape(-1, x_hat.shape[-1]).sum(axis=0)

    monkeypatch.setattr(F.RMSNorm, "backward", staticmethod(wrong))
    assert script["main"](["--layer", "RMSNorm"]) == 1
    assert "FAIL: RMSNorm" in capsys.readouterr().out


def test_crashing_backward_is_a_failure_not_a_crash(script, monkeypatch, capsys):
    def broken(ctx, grad):
        return np.zeros(grad.shape[:-1])   # wrong shape: the engine refuses it

    monkeypatch.setattr(F.Rope, "backward", staticmethod(broken))
    assert script["main"](["--layer", "rope"]) == 1
    assert "FAIL: RoPE: the check raised" in capsys.readouterr().out
