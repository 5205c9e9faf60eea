"""Checkpoint files: round trips, atomic writes, damaged files, RNG state, configuration checks."""
import json
import os

import numpy as np
import pytest

from tinygrad_llama import checkpoint
from tinygrad_llama.checkpoint import (CheckpointError, save_checkpoint, load_checkpoint,
                                       rng_state_to_json, rng_from_json, check_compatible)


def sample_arrays():
    rng = np.random.default_rng(0)
    return {"tok_emb": rng.standard_normal((7, 3)).astype(np.float32),
            "layers.0.attn.wq": rng.standard_normal((3, 3)),  # float64
            "norm.weight": np.ones(3, np.float32),
            "tokens": np.arange(10, dtype=np.int64),
            "mask": np.array([True, False]),
            "scalar": np.array(2.5, np.float32)}


def sample_metadata():
    return {"step": 12, "config": {"dim": 128, "n_layers": 2}, "loss": 3.25, "note": "héllo",
            "rng": rng_state_to_json(np.random.default_rng(5))}


def test_round_trip_arrays_and_metadata(tmp_path):
    arrays, meta = sample_arrays(), sample_metadata()
    path = save_checkpoint(tmp_path / "ckpt.npz", arrays, meta)
    assert path == str(tmp_path / "ckpt.npz")
    loaded, meta2 = load_checkpoint(path)
    assert set(loaded) == set(arrays)
    for k, a in arrays.items():
        assert loaded[k].dtype == a.dtype and loaded[k].shape == a.shape, k
        np.testing.assert_array_equal(loaded[k], a)
    assert meta2 == meta
    # the sidecar holds the same metadata, readably
    sidecar = tmp_path / "ckpt.json"
    assert json.loads(sidecar.read_text(encoding="utf-8")) == meta
    assert "\n" in sidecar.read_text(encoding="utf-8")
    # the npz alone is complete: metadata is inside it
    sidecar.unlink()
    assert load_checkpoint(path)[1] == meta


def test_npz_suffix_is_added(tmp_path):
    path = save_checkpoint(tmp_path / "run" / "ckpt", {"a": np.zeros(2)}, {"k": 1})
    assert path.endswith("ckpt.npz") and os.path.exists(path)
    assert (tmp_path / "run" / "ckpt.json").exists()
    assert load_checkpoint(tmp_path / "run" / "ckpt")[1] == {"k": 1}


def test_overwrite_replaces_previous(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"a": np.zeros(2)}, {"step": 1})
    save_checkpoint(path, {"b": np.ones(3)}, {"step": 2})
    arrays, meta = load_checkpoint(path)
    assert list(arrays) == ["b"] and meta == {"step": 2}
    assert sorted(os.listdir(tmp_path)) == ["c.json", "c.npz"]


def test_metadata_must_be_pure_json(tmp_path):
    with pytest.raises(TypeError, match="pure JSON"):
        save_checkpoint(tmp_path / "c.npz", {}, {"step": np.int64(3)})
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "c.npz", {"__metadata__": np.zeros(1)}, {})
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(tmp_path / "c.npz", {"o": np.array([{}], dtype=object)}, {})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fail_at", ["savez", "first_replace"])
def test_crash_before_commit_leaves_previous_checkpoint_and_no_temp_files(tmp_path, monkeypatch,
                                                                          fail_at):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.arange(4.0)}, {"step": 1})
    before_npz = path.read_bytes()
    before_json = (tmp_path / "ckpt.json").read_bytes()

    class Crash(Exception):
        pass

    if fail_at == "savez":
        real_savez = np.savez

        def savez(f, **arrays):  # writes part of the file, then dies
            real_savez(f, **{k: a for k, a in list(arrays.items())[:1]})
            raise Crash()
        monkeypatch.setattr(checkpoint.xp, "savez", savez)
    else:
        def replace(src, dst):
            raise Crash()
        monkeypatch.setattr(checkpoint.os, "replace", replace)

    with pytest.raises(Crash):
        save_checkpoint(path, {"w": np.arange(1000.0), "v": np.ones(5)}, {"step": 2})
    assert path.read_bytes() == before_npz
    assert (tmp_path / "ckpt.json").read_bytes() == before_json
    assert sorted(os.listdir(tmp_path)) == ["ckpt.json", "ckpt.npz"]
    monkeypatch.undo()
    assert load_checkpoint(path)[1] == {"step": 1}


def test_crash_after_commit_keeps_new_npz_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.arange(4.0)}, {"step": 1})
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk gone")
        real_replace(src, dst)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    with pytest.raises(OSError):
        save_checkpoint(path, {"w": np.arange(6.0)}, {"step": 2})
    monkeypatch.undo()
    assert str(calls[0]).endswith(".npz")  # the npz is the commit point: replaced first
    assert sorted(os.listdir(tmp_path)) == ["ckpt.json", "ckpt.npz"]
    arrays, meta = load_checkpoint(path)
    assert meta == {"step": 2} and arrays["w"].shape == (6,)


def test_truncated_file_raises_checkpoint_error_naming_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, sample_arrays(), sample_metadata())
    data = path.read_bytes()
    bad = tmp_path / "truncated.npz"
    for n in (0, 10, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        bad.write_bytes(data[:n])
        with pytest.raises(CheckpointError, match="truncated") as info:
            load_checkpoint(bad)
        assert str(bad) in str(info.value)
        assert "\n" not in str(info.value)


def test_corrupt_bytes_raise_checkpoint_error(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.random.default_rng(0).standard_normal(2000)}, {"s": 1})
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_and_non_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint") as info:
        load_checkpoint(tmp_path / "nope.npz")
    assert "nope.npz" in str(info.value)
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "single.npy")
    (tmp_path / "text.npz").write_text("hello, I am not a zip file" * 5)
    with pytest.raises(CheckpointError, match="text.npz"):
        load_checkpoint(tmp_path / "text.npz")
    assert issubclass(CheckpointError, ValueError)


def test_object_array_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, __metadata__=np.frombuffer(b"{}", np.uint8),
             payload=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(CheckpointError, match="object") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_bad_metadata_raises(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, __metadata__=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(CheckpointError, match="metadata"):
        load_checkpoint(path)


@pytest.mark.parametrize("bit_generator", ["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"])
def test_rng_round_trip_reproduces_draws(tmp_path, bit_generator):
    rng = np.random.Generator(getattr(np.random, bit_generator)(1234))
    rng.standard_normal(17)  # advance; leave a buffered uint32 behind for some generators
    rng.integers(0, 10, size=3, dtype=np.uint32)
    state = rng_state_to_json(rng)
    text = json.dumps(state)  # pure JSON
    save_checkpoint(tmp_path / "r.npz", {}, {"rng": state})
    restored = rng_from_json(load_checkpoint(tmp_path / "r.npz")[1]["rng"])
    restored2 = rng_from_json(json.loads(text))
    expected = rng.standard_normal(50)
    np.testing.assert_array_equal(restored.standard_normal(50), expected)
    np.testing.assert_array_equal(restored2.standard_normal(50), expected)
    np.testing.assert_array_equal(restored.integers(0, 1000, 20), rng.integers(0, 1000, 20))


def test_rng_from_json_rejects_garbage():
    with pytest.raises(CheckpointError):
        rng_from_json({"bit_generator": "os.system"})
    with pytest.raises(CheckpointError):
        rng_from_json({"bit_generator": "PCG64", "state": {"nope": 1}})


def test_check_compatible():
    check_compatible({"dim": 128, "shape": [2, 3]}, {"dim": 128, "shape": (2, 3)})  # tuple == list
    with pytest.raises(CheckpointError) as info:
        check_compatible({"dim": 128, "n_layers": 4, "vocab": 100, "old": 1},
                         {"dim": 256, "n_layers": 4, "vocab": 200, "new": 2})
    msg = str(info.value)
    assert "checkpoint was made for dim=128, this model has dim=256" in msg
    assert "vocab=100, this model has vocab=200" in msg
    assert "n_layers" not in msg
    assert "made for old=1, this model has no old" in msg
    assert "made for no new, this model has new=2" in msg
