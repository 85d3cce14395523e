"""Two-thread scaling of the discrete families' E-step, measured so that a shared machine disturbs it little.

The engine runs one E-step task per row block on a thread pool with one BLAS
thread per task, so what limits two threads on two cores is the time each
task holds the GIL (numpy's per-call overhead, allocation) and the memory
bandwidth both cores share. A whole fit's wall time mixes that with the
scheduler and with other people's jobs; this measures the kernel alone:

* 1 thread   the E-step of two blocks, one after the other (seconds).
* 2 threads  the same two blocks on a ``ThreadPoolExecutor(2)`` (seconds).
* scaling    1 thread / 2 threads: 2.0 is perfect on two cores.
* cpu/block  the CPU time (``time.thread_time``) of one block's E-step,
             run alone: the work, whatever the machine's load.

Serial and parallel runs alternate and each figure is the best of
``--repeats``: a run that another job slowed is discarded, not averaged.
The load average is printed before and after; quote it with the figures.

Usage::

    python benchmarks/bench_estep_threads.py                  # 262,144-row blocks (2M rows' chunks), K=8, d=16
    python benchmarks/bench_estep_threads.py --repeats 40 --families bernoulli
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

FAMILIES = ("bernoulli", "poisson", "categorical")
N_CATEGORIES = 5


def family_and_params(name: str, k: int, d: int):
    """The family object and K-component parameters drawn once (the same in every run)."""
    from dask_em.discrete import BernoulliFamily, CategoricalFamily, PoissonFamily

    rng = np.random.default_rng(12345)
    weights = np.full(k, 1.0 / k)
    if name == "bernoulli":
        return BernoulliFamily(), {"probabilities": rng.uniform(0.05, 0.95, (k, d)), "weights": weights}
    if name == "poisson":
        return PoissonFamily(), {"rates": rng.uniform(0.5, 12.0, (k, d)), "weights": weights}
    probs = rng.dirichlet(np.ones(N_CATEGORIES), size=(k, d)).reshape(k, d * N_CATEGORIES)
    return CategoricalFamily(n_categories=N_CATEGORIES), {"probabilities": probs, "weights": weights}


def block(name: str, rows: int, d: int, k: int, seed: int) -> np.ndarray:
    """One row block in the family's stored dtype (bool, uint8 counts, int8 codes), as bench_families writes."""
    rng = np.random.default_rng(seed)
    if name == "bernoulli":
        return rng.random((rows, d)) < 0.4
    if name == "poisson":
        return np.minimum(rng.poisson(5.0, (rows, d)), 255).astype(np.uint8)
    return rng.integers(0, N_CATEGORIES, (rows, d)).astype(np.int8)


def measure(name: str, rows: int, d: int, k: int, repeats: int) -> tuple[float, float, float]:
    family, params = family_and_params(name, k, d)
    blocks = [block(name, rows, d, k, seed) for seed in (1, 2)]

    def one(x):
        return family.estep(x, None, [params], None)

    serial, parallel, cpu = [], [], []
    with ThreadPoolExecutor(2) as pool, threadpool_limits(limits=1, user_api="blas"):
        list(pool.map(one, blocks))  # warm both threads and every cache
        for _ in range(repeats):
            tic = time.perf_counter()
            for x in blocks:
                one(x)
            serial.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            list(pool.map(one, blocks))
            parallel.append(time.perf_counter() - tic)
            tic = time.thread_time()
            one(blocks[0])
            cpu.append(time.thread_time() - tic)
    return min(serial), min(parallel), min(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=262_144, help="rows per block (the engine's chunk at 2M x 16)")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()

    print(f"# 2 blocks of {args.rows:,} x {args.features}, K={args.components}, best of {args.repeats}, "
          f"{os.cpu_count()} cores, one BLAS thread per task")
    print(f"# load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| family | 1 thread s | 2 threads s | scaling | cpu s/block |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.families.split(","):
        one, two, cpu = measure(name, args.rows, args.features, args.components, args.repeats)
        print(f"| {name} | {one:.4f} | {two:.4f} | {one / two:.2f}x | {cpu:.4f} |", flush=True)
    print(f"# load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
