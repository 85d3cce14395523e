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
* cpu 2 thr  the CPU time of a block while the other thread works on the
             other block, over ``cpu/block``: what sharing caches and memory
             bandwidth costs (1.00 when nothing is shared).
* waits      how often, per block, a thread went to sleep while the other
             thread worked on the other block (voluntary context switches:
             waits for the GIL, or for a lock such as the kernel's address
             space lock during page faults), median of the repeats. On a
             loaded machine the two threads seldom run at the same time and
             the count says little.

The last row, ``gemm (control)``, runs the same measurement on work that
never holds the GIL (one-thread DGEMMs of about the same duration): the
scaling the machine allows at that moment. On a shared machine it can fall
to 1.0x (another job holds the second core); E-step figures taken then say
nothing about the code. Quote the control with them.
* held       the share of ``cpu/block`` spent in the fixed cost of the
             numpy calls (argument parsing, dispatch, small arrays), which
             holds the GIL: the E-step's cost per panel and per block,
             measured on 16-row panels (where the loops cost nothing), times
             the block's panels, over ``cpu/block``. Time inside a ufunc's or
             GEMM's loop releases the GIL (np.bincount's min/max pass,
             np.matmul with a small output, a page fault inside an
             allocation do not, and are not counted: a low share with a
             low scaling points at one of those).

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


def estep_in_panels(family, x, params, panel: int | None):
    """The family's E-step on ``x``; with ``panel``, in panels of that many rows. Returns the panel rows used."""
    try:
        from dask_em._discrete_kernel import DesignFamily, design_estep, panel_rows
    except ImportError:  # before the design-matrix E-step: the default one, panel_rows from the family
        from dask_em.family import PANEL_CELLS

        used = panel or family.panel_rows or PANEL_CELLS // len(params["weights"])
        object.__setattr__(family, "panel_rows", used)
        family.estep(x, None, [params], None)
        return used
    if not isinstance(family, DesignFamily):
        raise TypeError(f"{type(family).__name__} does not use the design-matrix E-step")
    design_estep(family, x, None, [params], panel=panel)
    return panel or panel_rows(family.design_width(x.shape[1]))


def best_cpu(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.thread_time()
        fn()
        times.append(time.thread_time() - tic)
    return min(times)


def held_share(family, params, x: np.ndarray, cpu: float, repeats: int) -> float:
    """The fixed (GIL-holding) cost of a block's numpy calls over its CPU time ``cpu`` (see the docstring)."""
    tiny = 16
    panel = estep_in_panels(family, x, params, None)
    one = best_cpu(lambda: estep_in_panels(family, x[:tiny], params, tiny), 5 * repeats)
    many = best_cpu(lambda: estep_in_panels(family, x[: 64 * tiny], params, tiny), repeats)
    estep_in_panels(family, x[:1], params, panel)  # the default panels back
    per_panel = (many - one) / 63
    return (one - per_panel + per_panel * -(-x.shape[0] // panel)) / cpu


class GemmControl:
    """Stands in for a family: an "E-step" of one-thread DGEMMs, which release the GIL throughout."""

    def __init__(self, rows: int):
        self.a = np.random.default_rng(0).random((384, 384))
        self.reps = max(1, rows // 32_768)

    def estep(self, x, w, params_list, context, entropy=False):
        for _ in range(self.reps):
            self.a @ self.a


def measure(name: str, rows: int, d: int, k: int, repeats: int) -> tuple[float, ...]:
    if name == "gemm (control)":
        family, params, blocks = GemmControl(rows), None, [None, None]
    else:
        family, params = family_and_params(name, k, d)
        blocks = [block(name, rows, d, k, seed) for seed in (1, 2)]

    def one(x):
        return family.estep(x, None, [params], None)

    def timed(x):
        tic = time.thread_time()
        one(x)
        return time.thread_time() - tic

    def timed_waits(x):
        before = voluntary_switches()
        cpu = timed(x)
        return cpu, voluntary_switches() - before

    serial, parallel, cpu, shared, waits = [], [], [], [], []
    with ThreadPoolExecutor(2) as pool, threadpool_limits(limits=1, user_api="blas"):
        list(pool.map(one, blocks))  # warm both threads and every cache
        for _ in range(repeats):
            tic = time.perf_counter()
            for x in blocks:
                one(x)
            serial.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            both = list(pool.map(timed_waits, blocks))
            parallel.append(time.perf_counter() - tic)
            shared.append(max(c for c, _ in both))
            waits.append(sum(n for _, n in both) / 2)
            cpu.append(timed(blocks[0]))
        held = 0.0 if params is None else held_share(family, params, blocks[0], min(cpu), repeats)
    return min(serial), min(parallel), min(cpu), min(shared) / min(cpu), float(np.median(waits)), held


def voluntary_switches() -> int:
    """This thread's voluntary context switches so far (Linux), 0 elsewhere."""
    try:
        with open("/proc/thread-self/status") as f:
            for line in f:
                if line.startswith("voluntary_ctxt_switches"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


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
    print("| family | 1 thread s | 2 threads s | scaling | cpu s/block | cpu 2 thr | waits | held |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.families.split(",") + ["gemm (control)"]:
        one, two, cpu, shared, waits, held = measure(name, args.rows, args.features, args.components, args.repeats)
        print(f"| {name} | {one:.4f} | {two:.4f} | {one / two:.2f}x | {cpu:.4f} | {shared:.2f}x | {waits:.0f} | "
              f"{100 * held:.1f}% |", flush=True)
    print(f"# load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
