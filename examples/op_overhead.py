"""The engine's per-op Python overhead, next to the bare NumPy calls on the same arrays.

On tiny (4, 4) float32 arrays the arithmetic costs almost nothing, so the time per op is what the
engine adds: building the Tensor, the Context, recording the graph, and in backward the walk,
un-broadcasting, the dtype/shape checks and the accumulation.

    python examples/op_overhead.py            # N = 20,000 iterations per op
    python examples/op_overhead.py --n 5000 --profile   # and cProfile the forward+backward loops
"""
import argparse
import cProfile
import pstats
import time

import numpy as np

from tinygrad_llama import Tensor, no_grad


def best_time(fn, n, repeats=5):
    """Seconds per call of fn(), the best of a few runs of n calls."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def cases(shape):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape).astype(np.float32)
    g = np.ones(shape, dtype=np.float32)
    ta, tb = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)

    def engine_step(op):
        def step():
            ta.grad = tb.grad = None  # as an optimizer's zero_grad would
            op(ta, tb).backward(g)
        return step

    # name: (numpy forward, numpy forward + the backward formulas, engine op)
    return {
        "add": (lambda: a + b, lambda: (a + b, g.copy(), g.copy()), lambda x, y: x + y),
        "mul": (lambda: a * b, lambda: (a * b, g * b, g * a), lambda x, y: x * y),
        "matmul": (lambda: a @ b, lambda: (a @ b, g @ b.T, a.T @ g), lambda x, y: x @ y),
        "tanh": (lambda: np.tanh(a), lambda: (1.0 - np.tanh(a) ** 2) * g, lambda x, y: x.tanh()),
    }, ta, tb, engine_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="iterations per measurement")
    parser.add_argument("--shape", type=int, nargs=2, default=[4, 4], help="a square matrix (default 4 4)")
    parser.add_argument("--profile", action="store_true", help="cProfile the engine fwd+bwd loops")
    args = parser.parse_args()
    shape = tuple(args.shape)
    if args.n < 4:
        parser.error(f"argument --n: need at least 4 iterations, got {args.n}")
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        parser.error(f"argument --shape: need a square matrix, two equal positive sizes such as "
                     f"4 4 (matmul multiplies it by itself), got {' '.join(map(str, shape))}")
    table, ta, tb, engine_step = cases(shape)

    print(f"per-op time in microseconds, {shape} float32, N={args.n}, best of 5")
    header = f"{'op':8} {'numpy fwd':>10} {'engine fwd':>11} {'no_grad fwd':>12} " \
             f"{'numpy f+b':>10} {'engine f+b':>11} {'overhead f+b':>13}"
    print(header)
    print("-" * len(header))
    for _, _, op in table.values():  # warm up (caches, CPU clock) before measuring anything
        best_time(engine_step(op), args.n // 4, repeats=1)
    for name, (np_fwd, np_fwd_bwd, op) in table.items():
        t_np = best_time(np_fwd, args.n)
        t_fwd = best_time(lambda: op(ta, tb), args.n)
        with no_grad():
            t_nograd = best_time(lambda: op(ta, tb), args.n)
        t_np_fb = best_time(np_fwd_bwd, args.n)
        t_fb = best_time(engine_step(op), args.n)
        us = 1e6
        print(f"{name:8} {t_np * us:10.2f} {t_fwd * us:11.2f} {t_nograd * us:12.2f} "
              f"{t_np_fb * us:10.2f} {t_fb * us:11.2f} {(t_fb - t_np_fb) * us:13.2f}")

    if args.profile:
        profiler = cProfile.Profile()
        steps = [engine_step(op) for _, _, op in table.values()]
        profiler.enable()
        for step in steps:
            for _ in range(args.n):
                step()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
