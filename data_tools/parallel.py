"""Run a function over a stream of work items in worker processes, results in input order."""

import collections
import multiprocessing
import signal

from tqdm import tqdm


class ProgressBar(tqdm):
    """A tqdm bar without tqdm's monitor thread: these processes fork workers, and forking a
    process that runs extra threads can leave a lock held in the child."""

    monitor_interval = 0


def batched(items, size):
    """Lists of `size` consecutive items (the last may be shorter): the tasks handed to workers."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def ordered_map(function, items, workers, initializer=None, initargs=()):
    """Yield function(item) for each item, in the order of `items`.

    With workers <= 1 everything runs in this process. Otherwise `workers` forked processes do the
    calls, and at most 2 items per worker are in flight, so memory stays bounded however fast
    `items` comes. Closing the generator (or an exception) stops the workers at once.
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield function(item)
        return
    pool = multiprocessing.get_context("fork").Pool(
        workers, initializer=_start_worker, initargs=(initializer, initargs))
    try:
        pending = collections.deque()
        for item in items:
            pending.append(pool.apply_async(function, (item,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def _start_worker(initializer, initargs):
    # Ctrl-C reaches the whole process group; only the parent should react (and clean up).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)
