"""Per-iteration cost of dask-em against scikit-learn, in one run.

For each data shape and covariance type, every system starts from the same
parameters and runs the same number of EM iterations (tol=0):

* sklearn       ``sklearn.mixture.GaussianMixture``'s own E-step and M-step
                (``_e_step`` / ``_m_step``, the body of its fit loop) on the
                in-memory array; its k-means start is skipped, as ours is.
* memory        dask-em on the numpy array, local default scheduler.
* zarr          dask-em reading a zstd-compressed Zarr store on disk.
* read+sum      a bare ``da.from_zarr(...).sum(axis=0)`` pass over the same
                store: the floor for a read-bound iteration.
* cluster       dask-em from the Zarr store on a LocalCluster of 2 worker
                processes (1 thread each).
* threads       dask-em from the Zarr store on the threaded scheduler.
* float32       dask-em in memory with ``compute_dtype="float32"``; its last
                column is the largest relative difference of its means and
                covariances from the float64 ("memory") fit after the same
                iterations, and the share of rows whose label agrees.

For full covariance, ``floor`` is the FLOP floor of one iteration, 4·n·K·d²
flops at the DGEMM rate measured at the start of the same run (a 4096² DGEMM
on every core), and ``of floor`` the share of it an iteration reaches.

Two more tables (``--extras``, on by default):

* a user's chunking: 300,000 x 64 held as a persisted dask array in three
  100,000-row chunks against the same data chunked by dask-em (numpy input);
* whole small fits (iris, wine, breast_cancer; n_init=10, default tol),
  dask-em against scikit-learn, repeated, min and spread.

Peak memory is the highest resident set size of this process and its
children, sampled every 50 ms during each measurement. The final lower bounds
of sklearn and dask-em are printed side by side so a wrong peer is visible.

Usage::

    python benchmarks/bench_em.py                 # the issue's shapes (several minutes)
    python benchmarks/bench_em.py --quick         # small shapes, a smoke run
    python benchmarks/bench_em.py --shapes 2000000x16 --types full
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
from _sampling import PeakSampler


def _rss_tree() -> int:
    import psutil

    proc = psutil.Process()
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def sklearn_per_iter(X, k, cov_type, init, iters):
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(k, covariance_type=cov_type, tol=0, max_iter=iters, **init)
    gm._initialize(X, None)
    lower_bound = None
    tic = time.perf_counter()
    for _ in range(iters):
        log_prob_norm, log_resp = gm._e_step(X)
        gm._m_step(X, log_resp)
        lower_bound = log_prob_norm
    return (time.perf_counter() - tic) / iters, lower_bound, gm


def dask_em_per_iter(X, k, cov_type, init, iters, **fit_kw):
    import dask_em

    gm = dask_em.GaussianMixture(
        k, covariance_type=cov_type, tol=0, max_iter=iters, compute_dtype=fit_kw.pop("compute_dtype", "float64"), **init
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X, **fit_kw)
    r = gm.restarts_[0]
    return r["seconds"] / r["n_iter"], gm.lower_bound_, gm


def dgemm_gflops(size=4096, repeats=3, threads=None) -> float:
    """The DGEMM rate of this machine now, GFLOP/s (best of ``repeats``), on ``threads`` BLAS threads
    (None: the default, all cores)."""
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((size, size))
    with threadpool_limits(threads, user_api="blas"):
        a @ a
        best = np.inf
        for _ in range(repeats):
            tic = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - tic)
    return 2 * size**3 / best / 1e9


def chunking_table(iters, repeats=3):
    """A user's three 100,000-row chunks (persisted dask) against dask-em's own chunking, per iteration."""
    import dask.array as da

    from dask_em.datasets import make_mixture

    n, d, k = 300_000, 64, 8
    x, _, spec = make_mixture(n, d, k, chunk_rows=100_000, seed=2)
    X = x.compute(scheduler="threads")
    init = initial_parameters(spec, "full", np.random.default_rng(1))
    user = da.from_array(X, chunks=(100_000, -1)).persist(scheduler="threads")
    print(f"\n# a user's chunking: {n} x {d}, K={k} full, {iters} iterations; s/iter, {repeats} repeats")
    print(f"{'chunking':>26} {'s/iter min':>10} {'max':>7} {'vs own':>7}")
    times = {"dask-em's own (numpy)": [], "user's 3 x 100,000 (dask)": []}
    for _ in range(repeats):  # interleaved, so both see the same load
        times["dask-em's own (numpy)"].append(dask_em_per_iter(X, k, "full", init, iters)[0])
        times["user's 3 x 100,000 (dask)"].append(dask_em_per_iter(user, k, "full", init, iters)[0])
    own = min(times["dask-em's own (numpy)"])
    for name, t in times.items():
        print(f"{name:>26} {min(t):10.3f} {max(t):7.3f} {min(t) / own:6.2f}x")


def small_fits_table(repeats=7):
    """Whole fits on small data, n_init=10, default tol: dask-em against scikit-learn (same run)."""
    from sklearn import datasets
    from sklearn.mixture import GaussianMixture as SkGaussianMixture
    from threadpoolctl import threadpool_limits

    import dask_em

    print(f"\n# whole small fits, n_init=10, default tol; ms, {repeats} repeats interleaved")
    # scikit-learn twice: as a user gets it (OpenMP/BLAS on every core) and held to one
    # thread (its k-means' OpenMP threads spin badly on a loaded machine); the ratio is
    # against the faster of the two.
    print(
        f"{'data':>14} {'cov':>5} {'K':>2} {'sklearn min':>11} {'1 thread':>8} {'dask-em min':>11} {'ratio':>6} "
        f"{'ratio range':>12}"
    )
    for name, load, k, cov in (
        ("iris", datasets.load_iris, 3, "full"),
        ("wine", datasets.load_wine, 3, "diag"),
        ("breast_cancer", datasets.load_breast_cancer, 2, "full"),
    ):
        X = load().data
        sk, sk1, ours = [], [], []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(repeats):
                tic = time.perf_counter()
                SkGaussianMixture(k, covariance_type=cov, n_init=10, random_state=0).fit(X)
                sk.append(time.perf_counter() - tic)
                with threadpool_limits(1):
                    tic = time.perf_counter()
                    SkGaussianMixture(k, covariance_type=cov, n_init=10, random_state=0).fit(X)
                    sk1.append(time.perf_counter() - tic)
                tic = time.perf_counter()
                dask_em.GaussianMixture(k, covariance_type=cov, n_init=10, random_state=0).fit(X)
                ours.append(time.perf_counter() - tic)
        best = np.minimum(sk, sk1)
        ratios = np.array(ours) / best
        print(
            f"{name:>14} {cov:>5} {k:>2} {min(sk) * 1e3:11.1f} {min(sk1) * 1e3:8.1f} {min(ours) * 1e3:11.1f} "
            f"{min(ours) / best.min():5.2f}x {ratios.min():5.2f}-{ratios.max():.2f}x"
        )


def read_sum_seconds(path, chunk_rows, repeats=3):
    import dask
    import dask.array as da

    best = np.inf
    for _ in range(repeats):
        x = da.from_zarr(path, chunks=(chunk_rows, -1))
        tic = time.perf_counter()
        dask.compute(x.sum(axis=0), scheduler="threads")
        best = min(best, time.perf_counter() - tic)
    return best


def initial_parameters(spec, cov_type, rng):
    """The true parameters, perturbed: a start every system shares."""
    k, d = spec.means.shape
    means = spec.means + 0.5 * rng.standard_normal((k, d))
    weights = np.full(k, 1.0 / k)
    covs = spec.covariances * rng.uniform(0.8, 1.6, size=(k, 1, 1))
    if cov_type == "full":
        prec = np.linalg.inv(covs)
    elif cov_type == "tied":
        prec = np.linalg.inv(covs.mean(0))
    elif cov_type == "diag":
        prec = 1.0 / np.diagonal(covs, axis1=1, axis2=2)
    else:
        prec = 1.0 / np.diagonal(covs, axis1=1, axis2=2).mean(1)
    return {"weights_init": weights, "means_init": means, "precisions_init": prec}


def write_store(X, path, chunk_rows, codec):
    import zarr

    compressors = {"zstd": zarr.codecs.ZstdCodec(level=3), "none": None}[codec]
    z = zarr.create_array(
        path, shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype=X.dtype,
        compressors=compressors, overwrite=True,
    )
    for lo in range(0, X.shape[0], chunk_rows):
        z[lo : lo + chunk_rows] = X[lo : lo + chunk_rows]
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="2000000x16,500000x64")
    parser.add_argument("--types", default="full,diag")
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--chunk-rows", type=int, default=0, help="rows per chunk (default ~32 MiB)")
    parser.add_argument("--codec", default="zstd", choices=["zstd", "none"])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 iterations")
    parser.add_argument("--skip", default="", help="comma list of systems to skip")
    parser.add_argument("--no-extras", action="store_true", help="skip the chunking and small-fit tables")
    args = parser.parse_args(argv)
    if args.quick:
        args.shapes, args.iters = "100000x16,20000x64", 3

    import dask
    from distributed import Client, LocalCluster

    from dask_em.datasets import make_mixture

    skip = set(filter(None, args.skip.split(",")))
    workdir = args.workdir or tempfile.mkdtemp(prefix="dask-em-bench-")
    print(f"# machine: {os.cpu_count()} cores; numpy {np.__version__}; dask {dask.__version__}")
    print(f"# K={args.components}, {args.iters} iterations, codec={args.codec}, workdir={workdir}")
    print(f"# load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    from dask_em import _compiled

    # The compiled kernels load once per process (from numba's cache; compiled on a machine's first run):
    # before the clock, so that no figure below carries it.
    print(f"# compiled E-step kernels: {'on' if _compiled.warm_up() else 'off (numpy kernels)'}")
    gflops = dgemm_gflops()
    print(f"# DGEMM (4096^2, all cores): {gflops:.1f} GFLOP/s; full-covariance floor 4*n*K*d^2 flops at that rate")
    header = (
        f"{'shape':>12} {'cov':>5} {'system':>9} {'s/iter':>8} {'vs sklearn':>10} {'vs memory':>9} {'vs read':>8} "
        f"{'floor':>6} {'of floor':>8} {'peak GB':>8}  lower bound"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        n, d = (int(v) for v in shape.lower().split("x"))
        chunk_rows = args.chunk_rows or max(1024, (32 * 2**20) // (8 * d))
        x, _, spec = make_mixture(n, d, args.components, chunk_rows=chunk_rows, seed=1)
        X = x.compute(scheduler="threads")
        path = write_store(X, os.path.join(workdir, f"x-{n}x{d}.zarr"), chunk_rows, args.codec)
        read_s = read_sum_seconds(path, chunk_rows)
        for cov in args.types.split(","):
            init = initial_parameters(spec, cov, rng)
            rows = {}

            def record(system, fn):
                if system in skip:
                    return
                with PeakSampler(_rss_tree) as mem:
                    sec, lb, _ = fn()
                rows[system] = (sec, float(lb), mem.peak / 2**30)

            record("sklearn", lambda: sklearn_per_iter(X, args.components, cov, init, args.iters))
            record("memory", lambda: dask_em_per_iter(X, args.components, cov, init, args.iters))
            agreement = ""
            if "float32" not in skip:
                with PeakSampler(_rss_tree) as mem:
                    sec, lb, g32 = dask_em_per_iter(X, args.components, cov, init, args.iters, compute_dtype="float32")
                rows["float32"] = (sec, float(lb), mem.peak / 2**30)
                _, _, g64 = dask_em_per_iter(X[:200_000], args.components, cov, init, args.iters)
                _, _, g32 = dask_em_per_iter(X[:200_000], args.components, cov, init, args.iters, compute_dtype="float32")
                worst = max(
                    np.max(np.abs(getattr(g32, a) - getattr(g64, a))) / np.max(np.abs(getattr(g64, a)))
                    for a in ("means_", "covariances_", "weights_")
                )
                same = float((g32.predict(X[:200_000]) == g64.predict(X[:200_000])).mean())
                agreement = f"  float32 vs float64 (first 200,000 rows): params {worst:.1e} relative, labels {same:.5f}"
            record("zarr", lambda: dask_em_per_iter(path, args.components, cov, init, args.iters, chunk_rows=chunk_rows))
            if "cluster" not in skip:
                with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
                with cluster, Client(cluster) as client:
                    client.run(_compiled.warm_up)  # each worker loads the compiled kernels once: not timed
                    record("cluster", lambda: dask_em_per_iter(path, args.components, cov, init, args.iters, chunk_rows=chunk_rows))
            rows["read+sum"] = (read_s, float("nan"), float("nan"))
            ref = rows.get("sklearn", (np.nan,))[0]
            mem_s = rows.get("memory", (np.nan,))[0]
            floor = 4 * n * args.components * d * d / (gflops * 1e9) if cov == "full" else float("nan")
            for system, (sec, lb, peak) in rows.items():
                share = floor / sec if system != "read+sum" else float("nan")
                print(
                    f"{shape:>12} {cov:>5} {system:>9} {sec:8.3f} {ref / sec:9.2f}x {sec / mem_s:8.2f}x "
                    f"{sec / read_s:7.2f}x {floor:6.3f} {share:7.0%} {peak:8.2f}  {lb:.10g}"
                )
            if agreement:
                print(agreement)
            sys.stdout.flush()
        shutil.rmtree(path, ignore_errors=True)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.no_extras:
        chunking_table(args.iters)
        small_fits_table()
    print(f"# load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
