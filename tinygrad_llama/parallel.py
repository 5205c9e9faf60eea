"""A small thread pool for the work NumPy leaves on one core: many small matrix products.

`a @ b` on stacked (batch, m, k) arrays runs one BLAS call per matrix, one after another. Each call
is too small for the BLAS library to split well over its own threads (with two threads it mostly
synchronises; on a busy machine it can be many times slower than one thread), and the Python thread
that loops over them uses one core. `run_chunks(fn, n)` splits range(n) into contiguous, disjoint
chunks and runs `fn(start, stop)` on each in a pool thread. NumPy releases the GIL inside matmul and
inside ufuncs on large arrays, so the chunks run on different cores at the same time.

Determinism: each chunk writes only its own slice of the outputs and every element is computed by
the same sequence of operations whatever the chunking (products per matrix, reductions per row),
so results are bit-identical for any number of workers.

How many workers: the environment variable TINYGRAD_LLAMA_THREADS if set, else the BLAS thread
count asked for with OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS, else the number of
CPUs this process may run on. `set_num_workers(n)` changes it at run time (1: no pool at all).

BLAS threads inside the pool: when the loaded BLAS is an OpenBLAS that has
`openblas_set_num_threads_local` (0.3.27 and later), each pool thread asks for ONE BLAS thread for
its own calls; the main thread's setting is untouched, so large products elsewhere still use all
the BLAS threads. `small_products()` does the same around a block run in the calling thread (used
when the pool is not worth it). Without such a BLAS both are no-ops.
"""
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

__all__ = ["num_workers", "set_num_workers", "run_chunks", "small_products"]


def _cpu_count():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _default_workers():
    for name in ("TINYGRAD_LLAMA_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return min(int(value), _cpu_count())
    return _cpu_count()


def _find_local_thread_setter():
    """openblas_set_num_threads_local from the OpenBLAS that NumPy loaded, or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            setter = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local")
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        return setter
    return None


_lock = threading.Lock()
_workers = None
_pool = None
_setter = None
_setter_looked = False


def _blas_setter():
    global _setter, _setter_looked
    if not _setter_looked:
        from . import backend  # noqa: F401  (NumPy and its BLAS are loaded by now)
        _setter = _find_local_thread_setter()
        _setter_looked = True
    return _setter


def num_workers():
    global _workers
    if _workers is None:
        _workers = _default_workers()
    return _workers


def set_num_workers(n):
    """Use n pool threads from now on (1: run everything in the calling thread)."""
    global _workers, _pool
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_workers: need at least 1, got {n}")
    with _lock:
        if _pool is not None and n != _workers:
            _pool.shutdown(wait=True)
            _pool = None
        _workers = n


def _init_pool_thread():
    setter = _blas_setter()
    if setter is not None:
        setter(1)


def _get_pool():
    global _pool
    with _lock:
        if _pool is None:
            _blas_setter()
            _pool = ThreadPoolExecutor(max_workers=num_workers(), initializer=_init_pool_thread,
                                       thread_name_prefix="tinygrad_llama")
        return _pool


@contextmanager
def small_products():
    """Within this block, BLAS calls made by this thread use one BLAS thread."""
    setter = _blas_setter()
    if setter is None:
        yield
        return
    previous = setter(1)
    try:
        yield
    finally:
        setter(previous if previous > 0 else 0)


def run_chunks(fn, n, min_items=1):
    """Call fn(start, stop) over disjoint contiguous chunks that cover range(n), one per worker
    (fewer when n is small: every chunk has at least `min_items` items), and wait for all. With
    one worker or one chunk it runs in the calling thread. The first exception is re-raised."""
    workers = num_workers()
    chunks = max(1, min(workers, n // max(1, min_items)))
    if chunks == 1:
        with small_products():
            fn(0, n)
        return
    bounds = [n * i // chunks for i in range(chunks + 1)]
    futures = [_get_pool().submit(fn, bounds[i], bounds[i + 1]) for i in range(chunks)]
    errors = []
    for f in futures:  # wait for every chunk, even after one failed: they write shared outputs
        try:
            f.result()
        except BaseException as error:  # noqa: BLE001
            errors.append(error)
    if errors:
        raise errors[0]
