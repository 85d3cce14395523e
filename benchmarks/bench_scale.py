"""Out-of-core and scale-out on one machine, and the per-iteration graph at terabyte scale.

Sections (each prints a table):

1. out-of-core   a Zarr store several times larger than the workers' total memory
                 limit, fitted on a LocalCluster: per-iteration seconds, peak RSS per
                 worker (psutil, sampled every 50 ms), bytes spilled to disk, and the
                 ratio to a bare read pass over the same store on the same cluster.
2. chunk size    peak RSS per worker above its idle level, against the chunk's bytes.
3. scale-out     per-iteration seconds with 1 and 2 worker processes.
4. scheduler     tasks per iteration and the scheduler's cost per task, from rounds
                 over many tiny chunks.
5. graph         the per-iteration graph of a 1 TB array (built, not run): tasks,
                 construction time and pickled bytes, for 1 and 8 restarts.

    python benchmarks/bench_scale.py                       # an 8 GiB store, 2 workers x 1 GiB
    python benchmarks/bench_scale.py --store-gib 2 --quick # a smaller rehearsal
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import tempfile
import time
import warnings

import numpy as np
from _sampling import PeakSampler


def worker_peaks(client) -> PeakSampler:
    """Peak RSS of each worker process, sampled in a thread."""
    import psutil

    procs = {addr: psutil.Process(pid) for addr, pid in client.run(os.getpid).items()}

    def measure():
        out = {}
        for addr, p in procs.items():
            try:
                out[addr] = p.memory_info().rss
            except psutil.Error:
                pass
        return out

    return PeakSampler(measure)


def spilled(client) -> int:
    return sum(client.run(lambda dask_worker: dask_worker.data.spilled_total.disk).values())


def idle_rss(client) -> dict:
    import psutil

    return {a: psutil.Process(pid).memory_info().rss for a, pid in client.run(os.getpid).items()}


def fit_seconds(X, k, iters, **fit_kw):
    import dask_em

    gm = dask_em.GaussianMixture(k, max_iter=iters, tol=0, init_params="random_from_data", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X, **fit_kw)
    r = gm.restarts_[0]
    return r["seconds"] / r["n_iter"]


def read_seconds(X) -> float:
    import dask

    tic = time.perf_counter()
    dask.compute(X.sum(axis=0))
    return time.perf_counter() - tic


def cluster(n_workers, memory_limit):
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, memory_limit=memory_limit,
                            dashboard_address=None, processes=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store-gib", type=float, default=8.0)
    parser.add_argument("--worker-memory", default="1GiB")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--quick", action="store_true", help="skip sections 2-4")
    args = parser.parse_args(argv)

    import dask.array as da
    from distributed import Client

    from dask_em import engine
    from dask_em.gaussian import GaussianFamily
    from dask_em.datasets import make_mixture

    d, k = args.features, args.components
    store_rows = 131_072  # 16 MiB store chunks at d=16
    n = int(args.store_gib * 2**30 // (8 * d)) // store_rows * store_rows
    workdir = args.workdir or tempfile.mkdtemp(prefix="dask-em-scale-")
    path = os.path.join(workdir, "big.zarr")
    print(f"# {os.cpu_count()} cores; store {n:,} x {d} float64 = {n * d * 8 / 2**30:.1f} GiB (zstd), K={k} full")
    tic = time.perf_counter()
    x, _, _ = make_mixture(n, d, k, chunk_rows=store_rows, seed=3)
    da.to_zarr(x, path, overwrite=True)
    print(f"# generated in {time.perf_counter() - tic:.0f} s at {path}")

    # 1. Out-of-core
    print("\n## 1. out-of-core: 2 workers x", args.worker_memory)
    with cluster(2, args.worker_memory) as c, Client(c) as client:
        limit = sum(w.memory_limit for w in c.scheduler.workers.values())
        X = da.from_zarr(path, chunks=(4 * store_rows, -1))
        read = read_seconds(X)
        with worker_peaks(client) as peaks:
            per_iter = fit_seconds(X, k, args.iters)
        spill = spilled(client)
    print(f"{'store GiB':>10} {'limit GiB':>10} {'s/iter':>8} {'read s':>8} {'iter/read':>10} {'peak RSS/worker MiB':>20} {'spilled':>8}")
    print(f"{n * d * 8 / 2**30:10.2f} {limit / 2**30:10.2f} {per_iter:8.2f} {read:8.2f} {per_iter / read:9.2f}x "
          f"{' '.join(f'{v / 2**20:.0f}' for v in peaks.peak.values()):>20} {spill:8d}")

    if not args.quick:
        # 2. Chunk size vs peak memory
        print("\n## 2. peak RSS above idle per worker vs chunk size (2 workers, 1 thread each)")
        print(f"{'chunk MiB':>10} {'peak-idle MiB':>14} {'ratio':>6}")
        sub = int(min(n, 4_000_000))
        for mult in (1, 4, 16):
            rows = store_rows * mult
            with cluster(2, "4GiB") as c, Client(c) as client:
                X = da.from_zarr(path, chunks=(rows, -1))[:sub]
                base = idle_rss(client)
                fit_seconds(X[: rows * 2], k, 1)  # warm imports
                base = idle_rss(client)
                with worker_peaks(client) as peaks:
                    fit_seconds(X, k, 2)
            above = max(peaks.peak[a] - base[a] for a in base)
            chunk_mib = rows * d * 8 / 2**20
            print(f"{chunk_mib:10.0f} {above / 2**20:14.0f} {above / 2**20 / chunk_mib:5.1f}x")

        # 3. Scale-out
        print("\n## 3. scale-out on the same store")
        sub = int(min(n, 4_000_000))
        times = {}
        for workers in (1, 2):
            with cluster(workers, "4GiB") as c, Client(c):
                X = da.from_zarr(path, chunks=(4 * store_rows, -1))[:sub]
                fit_seconds(X[: 8 * store_rows], k, 1)
                times[workers] = fit_seconds(X, k, args.iters)
        print(f"{'workers':>8} {'s/iter':>8} {'speed-up':>9}")
        for workers, t in times.items():
            print(f"{workers:8d} {t:8.2f} {times[1] / t:8.2f}x")

        # 4. Scheduler cost per task
        print("\n## 4. scheduler: rounds over tiny chunks (2 workers)")
        print(f"{'chunks':>7} {'tasks/iter':>10} {'s/iter':>8} {'ms/task':>8}")
        with cluster(2, "4GiB") as c, Client(c):
            small = np.random.default_rng(0).normal(size=(200_000, 4))
            for chunks in (50, 200, 800):
                X = da.from_array(small, chunks=(len(small) // chunks, -1))
                state = engine.RoundState(GaussianFamily(), np.zeros(4), [{
                    "covariance_type": "full", "weights": np.full(2, 0.5),
                    "means": np.zeros((2, 4)), "precisions_cholesky": np.stack([np.eye(4)] * 2)}])
                g = engine.round_graph(X, None, state, split_every=None)
                tasks = len(dict(g.__dask_graph__()))
                t = fit_seconds(X, 2, 5)
                print(f"{chunks:7d} {tasks:10d} {t:8.3f} {1e3 * t / tasks:8.3f}")

    # 5. The per-iteration graph of a 1 TB array
    print("\n## 5. per-iteration graph for 1 TB (built, not run)")
    print(f"{'d':>3} {'chunk MiB':>9} {'chunks':>7} {'restarts':>8} {'tasks':>7} {'build s':>8} {'pickled MiB':>11}")
    for dd, chunk_mib in ((16, 64), (16, 256), (64, 64)):
        rows_tb = int(2**40 // (8 * dd))
        chunk_rows = int(chunk_mib * 2**20 // (8 * dd))
        X = da.zeros((rows_tb, dd), chunks=(chunk_rows, dd))
        for restarts in (1, 8):
            rng = np.random.default_rng(0)
            state = engine.RoundState(GaussianFamily(), np.zeros(dd), [{
                "covariance_type": "full", "weights": np.full(8, 1 / 8), "means": rng.normal(size=(8, dd)),
                "precisions_cholesky": np.stack([np.eye(dd)] * 8)} for _ in range(restarts)])
            tic = time.perf_counter()
            g = engine.round_graph(X, None, state, split_every=None)
            graph = dict(g.__dask_graph__())
            built = time.perf_counter() - tic
            size = len(pickle.dumps(graph, protocol=5))
            print(f"{dd:3d} {chunk_mib:9d} {X.numblocks[0]:7d} {restarts:8d} {len(graph):7d} {built:8.2f} {size / 2**20:11.2f}")

    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
