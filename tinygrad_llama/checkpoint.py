"""Checkpoints: one .npz file of named arrays plus JSON metadata, written atomically.

`save_checkpoint("run/ckpt.npz", arrays, metadata)` writes
  * `run/ckpt.npz`: the arrays, and the metadata as UTF-8 JSON in a uint8 array under the key
    `__metadata__`, so this file alone is the complete checkpoint (the source of truth);
  * `run/ckpt.json`: the same metadata, readable, for people and tools (informational only).

Atomicity: both files are first written in full to temporary files in the target directory
(flushed and fsync'ed). Only then is the .npz moved into place with os.replace, which is atomic:
that is the commit point. The sidecar follows it. A crash before the commit leaves the previous
checkpoint (both files) as it was; a crash between the two replaces leaves the new .npz with the
previous sidecar, which can be stale but never describes a checkpoint that was not committed.
Temporary files are removed on any error.

Loading uses allow_pickle=False: metadata is pure JSON and arrays are plain numeric ones, so a
checkpoint can never run code when it is opened.

These functions deal with host arrays (the backend's xp, NumPy by default).
"""
import json
import os
import tempfile
import zipfile

from .backend import xp

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "rng_state_to_json",
           "rng_from_json", "check_compatible"]

METADATA_KEY = "__metadata__"


class CheckpointError(ValueError):
    """A checkpoint file is missing, is not a checkpoint, is damaged, or does not fit the model."""


def _npz_path(path):
    path = os.fspath(path)
    return path if path.endswith(".npz") else path + ".npz"


def _sidecar_path(npz_path):
    return npz_path[:-len(".npz")] + ".json"


def _metadata_json(metadata, indent=None):
    if not isinstance(metadata, dict):
        raise TypeError(f"checkpoint metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.dumps(metadata, indent=indent, sort_keys=indent is not None)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint metadata must be pure JSON (dict, list, str, int, float, bool, "
                        f"None; convert NumPy scalars with .item()): {e}") from e


def _write_temp(directory, final_name, write):
    """Write a temporary file in `directory` with write(fileobj), flush and fsync it; its path."""
    tmp = tempfile.NamedTemporaryFile(mode="wb", dir=directory, prefix=f".{final_name}.",
                                      suffix=".tmp", delete=False)
    try:
        with tmp:
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp.name, 0o644)  # NamedTemporaryFile makes it 0600
    except BaseException:
        _remove_quietly(tmp.name)
        raise
    return tmp.name


def _remove_quietly(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_directory(directory):
    """Make the renames durable too (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path, arrays, metadata):
    """Write arrays (dict name -> array) and metadata (pure-JSON dict) to `path` (.npz added if
    missing) and the sidecar `<path without .npz>.json`, atomically. Returns the .npz path."""
    npz_path = _npz_path(path)
    if METADATA_KEY in arrays:
        raise ValueError(f"save_checkpoint: {METADATA_KEY!r} is reserved for the metadata")
    host = {}
    for name, a in arrays.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"save_checkpoint: array names must be non-empty strings, got {name!r}")
        a = xp.asarray(a)
        if a.dtype.hasobject:
            raise TypeError(f"save_checkpoint: array {name!r} has dtype object; only plain "
                            "numeric/bool arrays can be saved (loading refuses pickles)")
        host[name] = a
    compact = _metadata_json(metadata)
    readable = _metadata_json(metadata, indent=2) + "\n"
    host[METADATA_KEY] = xp.frombuffer(compact.encode("utf-8"), dtype=xp.uint8)

    directory = os.path.dirname(os.path.abspath(npz_path))
    os.makedirs(directory, exist_ok=True)
    sidecar = _sidecar_path(npz_path)
    temps = []
    try:
        temps.append(_write_temp(directory, os.path.basename(npz_path),
                                 lambda f: xp.savez(f, **host)))
        temps.append(_write_temp(directory, os.path.basename(sidecar),
                                 lambda f: f.write(readable.encode("utf-8"))))
        os.replace(temps[0], npz_path)   # the commit point
        temps[0] = None
        os.replace(temps[1], sidecar)
        temps[1] = None
    finally:
        for t in temps:
            if t is not None:
                _remove_quietly(t)
    _fsync_directory(directory)
    return npz_path


def load_checkpoint(path):
    """(arrays: dict name -> array, metadata: dict) from a file save_checkpoint wrote.

    Raises CheckpointError, naming the file, when it is missing, is not a checkpoint, is
    truncated or corrupt, or holds pickled (object) data.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(_npz_path(path)):
        path = _npz_path(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        npz = xp.load(path, allow_pickle=False)
    except ValueError as e:  # not .npy/.npz magic: NumPy would have to unpickle it
        raise CheckpointError(f"{path}: not a checkpoint (not an .npz file): {e}") from e
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint: "
                              f"{type(e).__name__}: {e}") from e
    if not hasattr(npz, "files"):
        raise CheckpointError(f"{path}: not a checkpoint (a single .npy array, not an .npz)")
    try:
        if METADATA_KEY not in npz.files:
            raise CheckpointError(f"{path}: not a checkpoint (an .npz without {METADATA_KEY!r}: "
                                  "it was not written by save_checkpoint)")
        arrays = {name: npz[name] for name in npz.files if name != METADATA_KEY}
        raw = npz[METADATA_KEY]
    except CheckpointError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise CheckpointError(f"{path}: holds an object (pickled) array, which is refused: "
                                  f"{e}") from e
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint: {e}") from e
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint: "
                              f"{type(e).__name__}: {e}") from e
    finally:
        npz.close()
    try:
        if raw.dtype != xp.uint8 or raw.ndim != 1:
            raise ValueError(f"{METADATA_KEY} has dtype {raw.dtype} and shape {raw.shape}")
        metadata = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(metadata, dict):
            raise ValueError(f"metadata is a {type(metadata).__name__}, not a JSON object")
    except ValueError as e:  # includes JSONDecodeError and UnicodeDecodeError
        raise CheckpointError(f"{path}: corrupt checkpoint metadata: {e}") from e
    return arrays, metadata


# ---- random generator state -----------------------------------------------------------------
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _to_json(x):
    if isinstance(x, dict):
        return {k: _to_json(v) for k, v in x.items()}
    if isinstance(x, xp.ndarray):
        return {"__ndarray__": x.tolist(), "dtype": str(x.dtype)}
    if isinstance(x, xp.generic):
        return x.item()
    return x


def _from_json(x):
    if isinstance(x, dict):
        if set(x) == {"__ndarray__", "dtype"}:
            return xp.asarray(x["__ndarray__"], dtype=xp.dtype(x["dtype"]))
        return {k: _from_json(v) for k, v in x.items()}
    return x


def rng_state_to_json(rng):
    """The state of a numpy.random.Generator as a pure-JSON dict (ints may be big; JSON keeps
    them exactly in Python). Arrays inside some bit generators' states become tagged lists."""
    state = _to_json(rng.bit_generator.state)
    if state.get("bit_generator") not in _BIT_GENERATORS:
        raise ValueError(f"rng_state_to_json: unsupported bit generator "
                         f"{state.get('bit_generator')!r}; supported: {_BIT_GENERATORS}")
    return state


def rng_from_json(state):
    """A new numpy.random.Generator in the state rng_state_to_json recorded."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise CheckpointError(f"rng_from_json: not a saved generator state (bit_generator={name!r}; "
                              f"supported: {_BIT_GENERATORS})")
    bit_generator = getattr(xp.random, name)()
    try:
        bit_generator.state = _from_json(state)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"rng_from_json: invalid {name} state: {e}") from e
    return xp.random.Generator(bit_generator)


# ---- configuration check ------------------------------------------------------------------------
_MISSING = object()


def _canonical(value):
    """Compare values as JSON sees them: a tuple saved to JSON comes back as a list."""
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError):
        return value


def check_compatible(saved_config, config):
    """Raise CheckpointError naming every key whose value differs between the configuration a
    checkpoint was made for and this model's, e.g. "checkpoint was made for dim=128, this model has
    dim=256". A key present on only one side counts as a difference."""
    problems = []
    for key in list(saved_config) + [k for k in config if k not in saved_config]:
        a, b = saved_config.get(key, _MISSING), config.get(key, _MISSING)
        if a is not _MISSING and b is not _MISSING and _canonical(a) == _canonical(b):
            continue
        made = f"{key}={a!r}" if a is not _MISSING else f"no {key}"
        has = f"{key}={b!r}" if b is not _MISSING else f"no {key}"
        problems.append(f"checkpoint was made for {made}, this model has {has}")
    if problems:
        raise CheckpointError("checkpoint does not fit this model: " + "; ".join(problems))
