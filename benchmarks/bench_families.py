"""Per-iteration cost of the Bernoulli, Poisson and categorical mixtures against a bare read.

For each family a Zarr store of ``--rows`` rows (default 10 million) and
``--features`` columns is written in the family's natural dtype (bool for
Bernoulli, uint8 counts for Poisson, int8 codes for categorical), chunk by
chunk, so the dataset is never whole in memory. Then, in one run:

* read     a bare pass over the store with dask-em's own chunking: each chunk
           read and summed (``da.from_zarr(...).sum(axis=0)``), best of 3;
           the floor for an iteration that must read every row.
* zarr     the family's estimator fitting the store: ``max_iter`` iterations
           with tol=0 from a k-means start on the default sample; seconds
           per iteration from the rounds' wall times (the start excluded).
* ratio    zarr / read: the issue's aim is within 1.5x.
* memory   the same fit on the array held in memory (same dtype): the cost
           of the E-step and M-step alone.
* cluster  (with ``--cluster``) the zarr fit on a LocalCluster of 2 worker
           processes with 1 thread each: processes do not share a GIL.
* peak     the highest resident set size of this process during the zarr fit.
* 1 thread the in-memory fit on one thread of the threaded scheduler
           (``num_workers=1``); ``scaling`` is its time over the default
           (every core): the issue's aim is >= 1.8x on two cores. The
           "DGEMM control" lines before and after the table give the scaling
           of work that never holds the GIL, measured the same way: what the
           machine allowed then (on a shared machine it can fall to 1.0x, and
           the column then says nothing about the code).

Usage::

    python benchmarks/bench_families.py                     # 10M x 16, K=8 (a few minutes)
    python benchmarks/bench_families.py --rows 1000000      # a smoke run
    python benchmarks/bench_families.py --codec zstd        # a compressed store
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings

import numpy as np
from _sampling import PeakSampler

FAMILIES = ("bernoulli", "poisson", "categorical")
N_CATEGORIES = 5


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _chunk(family: str, rows: int, d: int, k: int, seed: int) -> np.ndarray:
    """One chunk of a K-component mixture of the family, in its stored dtype."""
    rng = np.random.default_rng(seed)
    truth = np.random.default_rng(12345)  # the same components in every chunk
    labels = rng.integers(0, k, rows)
    if family == "bernoulli":
        p = truth.uniform(0.05, 0.95, (k, d))
        return rng.random((rows, d)) < p[labels]
    if family == "poisson":
        rates = truth.uniform(0.5, 12.0, (k, d))
        return np.minimum(rng.poisson(rates[labels]), 255).astype(np.uint8)
    probs = truth.dirichlet(np.ones(N_CATEGORIES), size=(k, d))  # (k, d, C)
    cdf = np.cumsum(probs[labels], axis=2)
    u = rng.random((rows, d, 1))
    return np.minimum((u >= cdf).sum(2), N_CATEGORIES - 1).astype(np.int8)


def write_store(path: str, family: str, n: int, d: int, k: int, chunk_rows: int, codec: str) -> None:
    import zarr

    dtype = {"bernoulli": bool, "poisson": np.uint8, "categorical": np.int8}[family]
    compressors = None if codec == "none" else zarr.codecs.ZstdCodec(level=3)
    arr = zarr.create_array(path, shape=(n, d), chunks=(chunk_rows, d), dtype=dtype, compressors=compressors)
    for i, lo in enumerate(range(0, n, chunk_rows)):
        hi = min(lo + chunk_rows, n)
        arr[lo:hi] = _chunk(family, hi - lo, d, k, seed=i)


def estimator(family: str, k: int, iters: int):
    import dask_em

    kw = dict(n_init=1, max_iter=iters, tol=0, random_state=0)
    if family == "bernoulli":
        return dask_em.BernoulliMixture(k, **kw)
    if family == "poisson":
        return dask_em.PoissonMixture(k, **kw)
    return dask_em.CategoricalMixture(k, n_categories=N_CATEGORIES, **kw)


def per_iteration(model) -> float:
    best = model.restarts_[model.best_restart_]
    return best["seconds"] / best["n_iter"]


def read_pass(path: str, chunk_rows: int | None) -> float:
    import dask

    import dask_em

    X = dask_em.as_dask_array(path, chunk_rows=chunk_rows).data
    times = []
    for _ in range(3):
        tic = time.perf_counter()
        dask.compute(X.sum(axis=0, dtype=np.int64), scheduler="threads")
        times.append(time.perf_counter() - tic)
    return min(times)


def control_scaling(repeats: int = 5) -> float:
    """Two threads over one on one-thread DGEMMs (no GIL held): the scaling the machine allows now."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).random((384, 384))

    def work(_=None):
        for _ in range(8):
            a @ a

    one, two = [], []
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(2) as pool:
        list(pool.map(work, range(2)))
        for _ in range(repeats):
            tic = time.perf_counter()
            work(), work()
            one.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            list(pool.map(work, range(2)))
            two.append(time.perf_counter() - tic)
    return min(one) / min(two)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--codec", choices=("none", "zstd"), default="none")
    parser.add_argument("--store-chunk-rows", type=int, default=262_144)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--skip-memory", action="store_true", help="skip the in-memory fit")
    parser.add_argument("--chunk-rows", type=int, default=None, help="rows per dask chunk (default: dask-em's choice)")
    parser.add_argument("--cluster", action="store_true", help="also fit on a 2-process LocalCluster")
    parser.add_argument("--workdir", help="where the stores go (default: a temporary folder, removed after)")
    args = parser.parse_args()

    import dask_em

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-families-")
    n, d, k = args.rows, args.features, args.components
    print(f"# {n:,} x {d}, K={k}, {args.iters} iterations, codec {args.codec}, {os.cpu_count()} cores, "
          f"local threads")
    print(f"# load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"# DGEMM control scaling at start: {control_scaling():.2f}x")
    header = ("family", "dtype", "store MiB", "chunks", "read s", "zarr s/iter", "ratio", "memory s/iter",
              "1 thread s/iter", "scaling", "cluster s/iter", "peak MiB", "lower bound")
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    try:
        for family in args.families.split(","):
            path = os.path.join(workdir, f"{family}.zarr")
            if not os.path.exists(path):
                write_store(path, family, n, d, k, args.store_chunk_rows, args.codec)
            size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
            prepared = dask_em.as_dask_array(path, chunk_rows=args.chunk_rows).data
            read = read_pass(path, args.chunk_rows)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tol=0: never converges, by design
                with PeakSampler(_rss) as peak:
                    model = estimator(family, k, args.iters).fit(path, chunk_rows=args.chunk_rows)
                zarr_it = per_iteration(model)
                memory_it = single_it = float("nan")
                if not args.skip_memory:
                    import dask
                    import zarr

                    X = zarr.open_array(path, mode="r")[...]
                    memory_it = per_iteration(estimator(family, k, args.iters).fit(X, chunk_rows=args.chunk_rows))
                    with dask.config.set(num_workers=1):
                        single_it = per_iteration(estimator(family, k, args.iters).fit(X, chunk_rows=args.chunk_rows))
                    del X
                cluster_it = float("nan")
                if args.cluster:
                    import dask
                    from distributed import Client, LocalCluster

                    # As the README advises: the nanny's MALLOC_TRIM_THRESHOLD_ slows every allocation.
                    trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
                    with dask.config.set(trim), LocalCluster(
                        n_workers=2, threads_per_worker=1, dashboard_address=None
                    ) as lc, Client(lc):
                        cluster_it = per_iteration(
                            estimator(family, k, args.iters).fit(path, chunk_rows=args.chunk_rows)
                        )
            print(
                f"| {family} | {prepared.dtype} | {size / 2**20:.0f} | {prepared.numblocks[0]} | {read:.3f} | "
                f"{zarr_it:.3f} | {zarr_it / read:.2f}x | {memory_it:.3f} | {single_it:.3f} | {single_it / memory_it:.2f}x | "
                f"{cluster_it:.3f} | {peak.peak / 2**20:.0f} | "
                f"{model.lower_bound_:.6f} |",
                flush=True,
            )
        print(f"# load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(f"# DGEMM control scaling at end: {control_scaling():.2f}x")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
