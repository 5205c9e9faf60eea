"""A small thread pool for the work NumPy leaves on one core: many small matrix products.

`a @ b` on stacked (batch, m, k) arrays runs one BLAS call per matrix, one after another. Each call
is too small for the BLAS library to split well over its own threads (with two threads it mostly
synchronises; on a busy machine it can be many times slower than one thread), and the Python thread
that loops over them uses one core. `run_tasks(fn, n)` calls fn(i) for each i in range(n): the
calling thread and the pool threads (workers - 1 of them) each take the next task not yet started.
`run_chunks(fn, n)` runs `fn(start, stop)` that way over contiguous, disjoint chunks of range(n),
`run_blocks` over fixed row blocks. NumPy releases the GIL inside matmul and inside ufuncs on
large arrays, so the tasks run on different cores at the same time. Waking a pool thread costs
tens of microseconds, so products smaller than HANDOFF_FLOP stay in the calling thread.

Weight gradients are not needed until the optimizer runs, so `matmul_later(a, b)` starts a product
on a pool thread and returns its (not yet filled) output at once: Linear and SwiGLU compute dW that
way while the calling thread walks on through the backward pass. The engine's walk waits
(`wait_later`) before it reads such an array and before backward() returns. With one worker it is
an ordinary product.

Determinism: each chunk writes only its own slice of the outputs and every element is computed by
the same sequence of operations whatever the chunking (products per matrix, reductions per row),
so results are bit-identical for any number of workers.

How many workers: the environment variable TINYGRAD_LLAMA_THREADS if set, else the BLAS thread
count asked for with OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS, else the number of
CPUs this process may run on. `set_num_workers(n)` changes it at run time (1: no pool at all).

BLAS threads: the pool does the threading of products itself (`matmul` below cuts 2-D products
into row blocks), so while the pool exists the BLAS library is kept at ONE thread, and it gets
back its previous thread count when the pool is shut down (`set_num_workers`). Switching the count
per call does not work: OpenBLAS's thread count is process-wide (even `openblas_set_num_threads_local`
sets it for everyone in the builds NumPy ships), and raising it again wakes its idle threads, which
then spin on a core for a while and take it from the pool. So with a pool, other NumPy products in
the process run on one BLAS thread too; `set_num_workers(1)` gives the threads back to BLAS.
Without a pool (one worker) only the blocks run under `small_products()` (per-head products, too
small for BLAS threads to pay) drop to one BLAS thread, for their duration. Without an OpenBLAS
whose thread count can be found and set, all of this is a no-op.
"""
import ctypes
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

__all__ = ["num_workers", "set_num_workers", "run_tasks", "run_chunks", "run_blocks", "row_blocks",
           "elementwise_rows", "small_products", "matmul", "matmul_many", "matmul_later", "pending",
           "wait_later", "HANDOFF_FLOP"]

# Work smaller than this (in FLOP of matrix products) stays in the calling thread: handing it to
# another thread costs 22-31 us on the development VM (the sleeping thread's wake-up), about as
# long as 2 MFLOP of products take.
HANDOFF_FLOP = 1 << 21


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


_SET_NAMES = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
              "scipy_openblas_set_num_threads", "openblas_set_num_threads64_")
_GET_NAMES = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
              "scipy_openblas_get_num_threads", "openblas_get_num_threads64_")


def _find_thread_control():
    """(get, set) of the BLAS thread count of the OpenBLAS that NumPy loaded, or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        get = next((getattr(lib, n) for n in _GET_NAMES if hasattr(lib, n)), None)
        set_ = next((getattr(lib, n) for n in _SET_NAMES if hasattr(lib, n)), None)
        if get is None or set_ is None:
            continue
        get.argtypes, get.restype = [], ctypes.c_int
        set_.argtypes, set_.restype = [ctypes.c_int], None
        return get, set_
    return None


_lock = threading.Lock()
_workers = None
_pool = None
_blas_threads_before_pool = None
_control = None
_control_looked = False


def _blas_control():
    global _control, _control_looked
    if not _control_looked:
        from . import backend  # noqa: F401  (NumPy and its BLAS are loaded by now)
        _control = _find_thread_control()
        _control_looked = True
    return _control


def num_workers():
    global _workers
    if _workers is None:
        _workers = _default_workers()
    return _workers


def set_num_workers(n):
    """Use n pool threads from now on (1: run everything in the calling thread)."""
    global _workers, _pool, _blas_threads_before_pool
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_workers: need at least 1, got {n}")
    with _lock:
        if _pool is not None and n != _workers:
            _pool.shutdown(wait=True)
            _pool = None
            control = _blas_control()
            if control is not None and _blas_threads_before_pool is not None:
                control[1](_blas_threads_before_pool)  # BLAS threads back to what they were
            _blas_threads_before_pool = None
        _workers = n


def _get_pool():
    global _pool, _blas_threads_before_pool
    with _lock:
        if _pool is None:
            control = _blas_control()
            if control is not None:
                _blas_threads_before_pool = control[0]()
                control[1](1)  # the pool threads products itself (see the module docstring)
            _pool = ThreadPoolExecutor(max_workers=max(1, num_workers() - 1),
                                       thread_name_prefix="tinygrad_llama")
        return _pool


@contextmanager
def small_products():
    """Within this block BLAS products use one BLAS thread (the count is restored after)."""
    if _pool is None and num_workers() > 1:
        # the pool keeps BLAS at one thread for as long as it exists: made now, nothing is
        # switched back and forth (switching up wakes BLAS's idle threads, which then spin)
        _get_pool()
    control = _blas_control()
    previous = control[0]() if control is not None and _pool is None else 1
    if previous == 1:  # no BLAS control, or a pool exists and BLAS is at one thread already
        yield
        return
    control[1](1)
    try:
        yield
    finally:
        control[1](previous)


def run_chunks(fn, n, min_items=1):
    """Call fn(start, stop) over disjoint contiguous chunks that cover range(n), one per worker
    (fewer when n is small: every chunk has at least `min_items` items), and wait for all. With
    one worker or one chunk it runs in the calling thread. The first exception is re-raised."""
    chunks = max(1, min(num_workers(), n // max(1, min_items)))
    bounds = [n * i // chunks for i in range(chunks + 1)]
    run_tasks(lambda i: fn(bounds[i], bounds[i + 1]), chunks)


def run_tasks(fn, n, max_workers=None):
    """Call fn(i) for every i in range(n) and wait for all: the calling thread and the pool threads
    each take the next task not yet started, so unequal tasks still keep every thread busy (put
    the big ones first). Which thread runs a task never changes what it computes. The first
    exception is re-raised after every started task has finished. `max_workers=1` runs every task
    in the calling thread."""
    workers = min(num_workers(), n, max_workers or n)
    if workers <= 1:
        with small_products():
            for i in range(n):
                fn(i)
        return
    next_task = itertools.count().__next__  # one C call: atomic under the GIL

    def work():
        try:
            i = next_task()
            while i < n:
                fn(i)
                i = next_task()
        except BaseException:
            while next_task() < n:  # after a failure nobody starts another task
                pass
            raise

    pool = _get_pool()
    futures = [pool.submit(work) for _ in range(workers - 1)]
    errors = []
    try:
        work()
    except BaseException as error:  # noqa: BLE001
        errors.append(error)
    for f in futures:  # wait for every task, even after one failed: they write shared outputs
        if f.cancel():  # never started (its thread was busy with a product from matmul_later)
            continue
        try:
            f.result()
        except BaseException as error:  # noqa: BLE001
            errors.append(error)
    if errors:
        raise errors[0]


# ---- products whose result is needed later --------------------------------------------------------
_later = []            # (future, a, b, out) of the products matmul_later started; keeps `out`
_later_outputs = set()  # alive, so these ids of outputs still being computed are not reused


def matmul_later(a, b):
    """a @ b, computed on a pool thread while the caller goes on; with one worker, right away.

    For weight gradients: the backward walk needs dx at once but dW only at the end, so dW's
    product runs on the second core while the first walks on. The result must not be read
    before `wait_later()` (or while `pending(out)`): the engine's backward walk waits before it
    reads, adds to or passes on such an array, and before it returns."""
    from .backend import xp
    out = xp.empty((a.shape[0], b.shape[1]), dtype=xp.result_type(a.dtype, b.dtype))
    if num_workers() == 1 or 2 * a.shape[0] * a.shape[1] * b.shape[1] < HANDOFF_FLOP:
        with small_products():
            xp.matmul(a, b, out=out)
        return out
    _later.append((_get_pool().submit(xp.matmul, a, b, out=out), a, b, out))
    _later_outputs.add(id(out))
    return out


def pending(array):
    """Whether `array` is the output of a matmul_later product that may still be running."""
    return bool(_later_outputs) and id(array) in _later_outputs


def wait_later():
    """Wait for every product started by matmul_later; the first error is re-raised. A product
    whose thread has not started it yet is computed here, in the calling thread, meanwhile."""
    from .backend import xp
    errors = []
    for future, a, b, out in _later:
        try:
            if future.cancel():
                xp.matmul(a, b, out=out)
            else:
                future.result()
        except BaseException as error:  # noqa: BLE001
            errors.append(error)
    _later.clear()
    _later_outputs.clear()
    if errors:
        raise errors[0]


# Products are cut into row blocks of at least 256 rows: a smaller block of a 2-D product runs
# 10-15% below a whole product's rate (fewer rows to amortise packing the other operand).
_MIN_BLOCK_ROWS = 256


def row_blocks(n, min_rows=_MIN_BLOCK_ROWS):
    """Fixed [lo, hi) row blocks covering range(n): at most 4, each of at least `min_rows` rows
    (one block when n is smaller). A function of n and min_rows alone, so the blocks (and the BLAS
    calls, whose kernels can depend on the block's shape, and any per-block partial sums) are the
    same for any number of workers."""
    k = max(1, min(4, n // max(1, min_rows)))
    bounds = [n * i // k for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k)]


def elementwise_rows(row_size):
    """min_rows for row blocks of elementwise work on rows of `row_size` elements: a block of
    fewer than 64 Ki elements does not outweigh the hand-off to another thread."""
    return max(1, (1 << 16) // max(1, row_size))


def run_blocks(fn, n, min_rows=_MIN_BLOCK_ROWS):
    """fn(lo, hi) for each of row_blocks(n, min_rows), the blocks spread over the pool. For work
    whose result could depend on where rows are cut (a product's kernels, partial sums): the cuts
    are the same for any number of workers."""
    blocks = row_blocks(n, min_rows)
    run_tasks(lambda i: fn(*blocks[i]), len(blocks))


def matmul(a, b):
    """a @ b for 2-D arrays, as row blocks of the output computed on the pool (one BLAS thread
    each). Bit-identical for any number of workers: the blocks depend only on a's shape.

    Why not let the BLAS library thread it: its idle threads spin for a while after each product
    and would take the core from the pool threads that run the attention and elementwise work."""
    return matmul_many([(a, b)])[0]


def matmul_many(pairs):
    """[a @ b for a, b in pairs], all their row blocks in one round on the pool (fewer hand-offs
    than one `matmul` each), the biggest blocks first. Blocks as in `matmul`: bit-identical for
    any number of workers."""
    from .backend import xp
    outs, tasks, flop = [], [], 0
    for a, b in pairs:
        out = xp.empty((a.shape[0], b.shape[1]), dtype=xp.result_type(a.dtype, b.dtype))
        outs.append(out)
        work = a.shape[1] * b.shape[1]  # per output row
        tasks += [((hi - lo) * work, a, b, out, lo, hi) for lo, hi in row_blocks(a.shape[0])]
        flop += 2 * a.shape[0] * work
    tasks.sort(key=lambda task: -task[0])

    def run(i):
        _, a, b, out, lo, hi = tasks[i]
        xp.matmul(a[lo:hi], b, out=out[lo:hi])

    run_tasks(run, len(tasks), max_workers=1 if flop < HANDOFF_FLOP else None)
    return outs


def _after_fork_in_child():
    """A forked child has none of the parent's pool threads: forget the pool (a new one is made
    on first use) and give BLAS back the thread count it had before the parent's pool."""
    global _pool, _lock, _blas_threads_before_pool
    _lock = threading.Lock()
    _later.clear()  # products the parent's threads were computing: not this process's
    _later_outputs.clear()
    if _pool is not None:
        _pool = None
        control = _blas_control()
        if control is not None and _blas_threads_before_pool is not None:
            control[1](_blas_threads_before_pool)
        _blas_threads_before_pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
