"""Scaling over the cores of one machine: threads of one process, and LocalCluster shapes, against DGEMM's own.

Every fit starts from the same parameters (the true ones, perturbed) and runs
``--iters`` EM iterations (tol=0); a figure is seconds per iteration, the best
of ``--repeats``.

* direct rounds   in-memory data on 1, 2, 4, ... threads of this process
                  (``dask.config`` ``num_workers``; one BLAS thread per task),
                  up to the cores. Beside each figure: its speedup over one
                  thread, DGEMM's own speedup at that thread count (a 2048²
                  DGEMM with that many BLAS threads, measured in the same run),
                  the share of DGEMM's speedup reached, and for full covariance
                  the floor (4·n·K·d² flops at that count's DGEMM rate) and the
                  share of it reached; then what tells the causes apart where
                  the threads scale worse than DGEMM: how busy the threads
                  were (the process's CPU seconds over wall x threads: low
                  when they wait for the GIL or a lock, high when they compute
                  but contend for memory or cache), its minor page faults
                  (memory the allocator maps afresh) and the involuntary
                  context switches, per iteration.
* LocalCluster    the same data from a Zarr store (zarr's default codec, in
                  ``/dev/shm`` where it exists, chunks of ``--store-chunk-mib``,
                  read by dask-em's own reader unless the environment sets
                  ``DASK_EM_DIRECT_READS=0``) on ``LocalCluster`` s of 1 x n,
                  n/4 x 4 and n x 1 (workers x threads), n the cores, and
                  one worker of n threads over n workers of one thread; and
                  the same busy share and page faults, summed over the
                  workers.
* GIL             first, the GIL-held share of the kernels measured (see
                  ``bench_gil.py``; needs ``pip install py-spy``) with the
                  Amdahl bound at 16 and 64 threads.

Data: 2M x 16 and 500k x 64 (``--shapes``), K=8, full and diag, float64 and
``compute_dtype="float32"``. On 16 cores the whole run takes about 3-4 minutes;
``--quick`` (200k x 16, 50k x 64, two iterations, one repeat) under a minute.

Usage::

    python benchmarks/bench_cores.py
    python benchmarks/bench_cores.py --quick
    python benchmarks/bench_cores.py --shapes 8000000x16 --types full --no-cluster
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_em import dgemm_gflops, initial_parameters  # noqa: E402
from bench_gil import FLOOR, gil_shares, print_table  # noqa: E402


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_counts(n: int) -> list[int]:
    counts, t = [], 1
    while t < n:
        counts.append(t)
        t *= 2
    return counts + [n]


def dgemm_rate(threads: int) -> float:
    """FLOP/s of a 2048² DGEMM on ``threads`` BLAS threads (best of three)."""
    return dgemm_gflops(2048, threads=threads) * 1e9


def _usage() -> tuple[float, int, int]:
    """This process's CPU seconds (user + system), minor page faults and involuntary context switches so far."""
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime, u.ru_minflt, u.ru_nivcsw


def _usage_delta(before, after, wall: float, threads: int, iters: int) -> dict:
    cpu = sum(a[0] - b[0] for b, a in zip(before, after))
    return {"busy": cpu / (wall * threads), "faults": sum(a[1] - b[1] for b, a in zip(before, after)) / iters,
            "preempted": sum(a[2] - b[2] for b, a in zip(before, after)) / iters}


def seconds_per_iter(X, k, cov, init, iters, dtype, repeats, *, threads=1, client=None, **fit_kw) -> tuple[float, dict]:
    """Seconds per iteration (best of ``repeats``) and, for that fit, how busy its threads were.

    ``busy``: the CPU seconds of the processes that ran the fit (this one, or every worker of ``client``)
    over the fit's wall time times ``threads`` (all the threads that ran it): near 100% when the threads
    compute, low when they wait (for the GIL, a lock, the scheduler). ``faults``: minor page faults per
    iteration (memory mapped afresh and touched: an allocator returning large blocks to the system), the
    fit's set-up included: a thread's first fit touches its work arrays for the first time, so the first
    row of each thread count or cluster counts those too (steady state, in-process: a few a fit).
    ``preempted``: involuntary context switches per iteration (more runnable threads than cores).
    """
    import dask_em

    def usage():
        if client is None:
            return [_usage()]
        return list(client.run(_usage).values())

    best, seen = np.inf, {}
    for _ in range(repeats):
        gm = dask_em.GaussianMixture(k, covariance_type=cov, tol=0, max_iter=iters, compute_dtype=dtype, **init)
        before, tic = usage(), time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(X, **fit_kw)
        wall, after = time.perf_counter() - tic, usage()
        r = gm.restarts_[0]
        if r["seconds"] / r["n_iter"] < best:
            best, seen = r["seconds"] / r["n_iter"], _usage_delta(before, after, wall, threads, r["n_iter"])
    return best, seen


def write_store(X: np.ndarray, path: str, chunk_rows: int) -> str:
    import zarr

    z = zarr.create_array(path, shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype=X.dtype, overwrite=True)
    for lo in range(0, X.shape[0], chunk_rows):
        z[lo : lo + chunk_rows] = X[lo : lo + chunk_rows]
    return path


def cluster_shapes(n: int) -> list[tuple[int, int]]:
    shapes = [(1, n)]
    if n >= 8:
        shapes.append((n // 4, 4))
    return shapes + ([(n, 1)] if n > 1 else [])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=None, help="rows x features, comma-separated [2000000x16,500000x64; "
                        "with --quick 200000x16,50000x64]")
    parser.add_argument("--types", default="full,diag")
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", default="", help="comma-separated thread counts [1, 2, 4, ... up to the cores]")
    parser.add_argument("--no-cluster", action="store_true", help="skip the LocalCluster table")
    parser.add_argument("--store-chunk-mib", type=float, default=30,
                        help="row chunks of the Zarr store (and of every fit), MiB [30: the most dask-em takes itself]")
    parser.add_argument("--no-gil", action="store_true", help="skip the GIL-held share table")
    parser.add_argument("--gil-seconds", type=float, default=1.0, help="seconds per kernel and py-spy recording")
    parser.add_argument("--gil-repeats", type=int, default=1, help="pairs of py-spy recordings (median)")
    parser.add_argument("--quick", action="store_true", help="200k x 16 and 50k x 64, 2 iterations")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes = args.shapes or "200000x16,50000x64"
        args.iters, args.repeats, args.gil_seconds = 2, 1, 0.5
    args.shapes = args.shapes or "2000000x16,500000x64"
    start = time.perf_counter()

    import dask
    import threadpoolctl

    from dask_em.datasets import make_mixture

    n_cores = cores()
    counts = [int(v) for v in args.threads.split(",")] if args.threads else thread_counts(n_cores)
    blas = {(i.get("internal_api"), i.get("architecture")) for i in threadpoolctl.threadpool_info()}
    print(f"# {n_cores} cores; numpy {np.__version__}; BLAS {sorted(blas)}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '')!r}; K={args.components}, "
          f"{args.iters} iterations, best of {args.repeats}")
    print(f"# load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    from dask_em import _compiled

    print(f"# compiled E-step kernels: {'on' if _compiled.warm_up() else 'off (numpy kernels)'}")

    if not args.no_gil:
        labels = [f"{ct}_d{d}_{dt}" for d in (16, 64) for ct in ("full", "diag") for dt in ("float64", "float32")]
        print("\n## GIL-held share of one E-step thread (py-spy --gil over active samples)")
        try:
            print("(floor: a compiled loop that holds the GIL for nothing but its call, ~0.01% of its time: "
                  "what the method reads for such a kernel)")
            print_table(gil_shares([FLOOR] + labels, seconds=args.gil_seconds, repeats=args.gil_repeats))
        except (FileNotFoundError, OSError) as exc:
            print(f"(skipped: {exc})")
        sys.stdout.flush()

    rates = {t: dgemm_rate(t) for t in sorted(set(counts) | {1})}
    print("\n## DGEMM (2048², BLAS threads = the count)")
    print("| threads | " + " | ".join(str(t) for t in rates) + " |")
    print("| --- | " + " | ".join("---" for _ in rates) + " |")
    print("| GFLOP/s | " + " | ".join(f"{r / 1e9:.1f}" for r in rates.values()) + " |")
    print("| speedup | " + " | ".join(f"{r / rates[1]:.2f}x" for r in rates.values()) + " |")

    workdir = tempfile.mkdtemp(prefix="dask-em-cores-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    rng = np.random.default_rng(0)
    data = []
    try:
        for shape in args.shapes.split(","):
            n, d = (int(v) for v in shape.lower().split("x"))
            chunk_rows = int(args.store_chunk_mib * 2**20) // (8 * d)
            x, _, spec = make_mixture(n, d, args.components, chunk_rows=chunk_rows, seed=1)
            X = x.compute(scheduler="threads")
            data.append((shape, n, d, X, spec, chunk_rows))

        print("\n## direct rounds: in memory, threads of this process")
        print("| data | cov | dtype | threads | s/iter | speedup | DGEMM speedup | of DGEMM's | floor s | of floor "
              "| busy | minor faults/iter | preempted/iter |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        inits, direct = {}, {}
        for shape, n, d, X, spec, _ in data:
            for cov in args.types.split(","):
                inits[shape, cov] = init = initial_parameters(spec, cov, rng)
                for dtype in args.dtypes.split(","):
                    one = None
                    for t in counts:
                        with dask.config.set(num_workers=t, scheduler="threads"):
                            sec, use = seconds_per_iter(X, args.components, cov, init, args.iters, dtype,
                                                        args.repeats, threads=t)
                        one = sec if one is None else one
                        direct[shape, cov, dtype, t] = sec
                        speedup, gemm = one / sec, rates[t] / rates[1]
                        floor = 4 * n * args.components * d * d / rates[t] if cov == "full" else float("nan")
                        print(f"| {shape} | {cov} | {dtype} | {t} | {sec:.3f} | {speedup:.2f}x | {gemm:.2f}x | "
                              f"{speedup / gemm:.0%} | {floor:.3f} | {floor / sec:.0%} | {use['busy']:.0%} | "
                              f"{use['faults']:.0f} | {use['preempted']:.0f} |")
                        sys.stdout.flush()

        if {"float64", "float32"} <= set(args.dtypes.split(",")):
            print("\n## float32's speedup over float64 (direct rounds, s/iter float64 over float32)")
            print("| data | cov | " + " | ".join(f"{t} threads" for t in counts) + " |")
            print("| --- | --- | " + " | ".join("---" for _ in counts) + " |")
            for shape, *_ in data:
                for cov in args.types.split(","):
                    print(f"| {shape} | {cov} | " + " | ".join(
                        f"{direct[shape, cov, 'float64', t] / direct[shape, cov, 'float32', t]:.2f}x" for t in counts)
                        + " |")

        if not args.no_cluster:
            from distributed import Client, LocalCluster

            print("\n## LocalCluster (workers x threads), from a Zarr store")
            print("| data | cov | dtype | " + " | ".join(f"{w} x {t}" for w, t in cluster_shapes(n_cores))
                  + " | 1 x n over n x 1 | all-core floor s | best of floor |")
            print("| --- | --- | --- | " + " | ".join("---" for _ in cluster_shapes(n_cores)) + " | --- | --- | --- |")
            paths = {shape: write_store(X, os.path.join(workdir, f"{shape}.zarr"), rows)
                     for shape, _, _, X, _, rows in data}
            table: dict = {}
            for workers, threads in cluster_shapes(n_cores):
                with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                    cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                                           dashboard_address=":0")
                with cluster, Client(cluster) as client:
                    # Each worker process loads the compiled kernels once (numba's cache): not timed.
                    client.run(_compiled.warm_up)
                    for shape, n, d, _, _, rows in data:
                        for cov in args.types.split(","):
                            for dtype in args.dtypes.split(","):
                                table[shape, cov, dtype, workers] = seconds_per_iter(
                                    paths[shape], args.components, cov, inits[shape, cov], args.iters, dtype,
                                    args.repeats, threads=workers * threads, client=client, chunk_rows=rows)
            for shape, n, d, _, _, _ in data:
                for cov in args.types.split(","):
                    for dtype in args.dtypes.split(","):
                        secs = [table[shape, cov, dtype, w][0] for w, _ in cluster_shapes(n_cores)]
                        floor = 4 * n * args.components * d * d / rates[counts[-1]] if cov == "full" else float("nan")
                        print(f"| {shape} | {cov} | {dtype} | " + " | ".join(f"{s:.3f}" for s in secs)
                              + f" | {secs[0] / secs[-1]:.2f}x | {floor:.3f} | {floor / min(secs):.0%} |")
            print("\n## LocalCluster: how busy the workers' threads were (their CPU seconds over wall x threads), "
                  "and their minor page faults per iteration")
            print("| data | cov | dtype | " + " | ".join(f"{w} x {t} busy | faults/iter" for w, t in cluster_shapes(n_cores))
                  + " |")
            print("| --- | --- | --- | " + " | ".join("--- | ---" for _ in cluster_shapes(n_cores)) + " |")
            for shape, n, d, _, _, _ in data:
                for cov in args.types.split(","):
                    for dtype in args.dtypes.split(","):
                        uses = [table[shape, cov, dtype, w][1] for w, _ in cluster_shapes(n_cores)]
                        print(f"| {shape} | {cov} | {dtype} | "
                              + " | ".join(f"{u['busy']:.0%} | {u['faults']:.0f}" for u in uses) + " |")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n# load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
