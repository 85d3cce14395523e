"""The whole ``Mclust`` grid: dask-em against R's mclust on the same data.

Fourteen models x K = 1..9 (``--components``), BIC on mclust's sign (2 log L - p log n,
higher is better). mclust: ``mclustBIC(X, G = ks)`` in memory, its default start (hc VVV on
the SVD transform; a random subset of 2,000 rows above that, ``set.seed(0)``) and its default
tolerance. dask-em: ``select_model(X, ks, covariance_types="mclust",
init_params="hierarchical", random_state=0, reg_covar=0, tol=--tol)``, in memory or (``--zarr``) from a Zarr
store of row chunks written first. Prints wall times, both BIC tables, the best model of each,
and per cell the difference dask-em minus mclust (positive: dask-em's fit is better).

Needs ``Rscript`` with mclust (``apt-get install r-base-core r-cran-mclust``); without it the
mclust column is skipped with a message.

    python benchmarks/bench_mclust.py                          # 3,000 rows, d=3, in memory
    python benchmarks/bench_mclust.py --rows 2000000 --zarr    # dask-em from a Zarr store
    python benchmarks/bench_mclust.py --rows 2000000 --zarr --models EII,VVI,EEE,VVV --components 1-5
    python benchmarks/bench_mclust.py --fixture iris           # a set of tests/data/mclust, no R:
                                                               # mclust's table from fixture.json
    python benchmarks/bench_mclust.py --out-of-core --store-gib 4 --models VVV,EEE,VEV
        # no R: each model (K = --true-components) from a Zarr store written chunk by chunk under
        # --workdir (deleted after), on a LocalCluster of 2 workers x 1 thread x --worker-memory;
        # seconds per iteration, each worker's peak RSS (psutil, every 50 ms), bytes spilled
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

MODELS = ("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV")

R_SCRIPT = """
suppressPackageStartupMessages(library(mclust))
X <- as.matrix(read.csv(file.path(dir, "x.csv"), header = FALSE))
set.seed(0)
tic <- proc.time()[["elapsed"]]
bic <- mclustBIC(X, G = ks, modelNames = models)
elapsed <- proc.time()[["elapsed"]] - tic
tab <- matrix(as.numeric(bic), nrow = length(ks))
write.table(tab, file.path(dir, "bic.csv"), sep = ",", row.names = FALSE, col.names = FALSE)
writeLines(format(elapsed), file.path(dir, "seconds.txt"))
"""


def generated(rows: int, d: int, k: int, seed: int) -> np.ndarray:
    """K Gaussian components with unequal volumes, shapes and orientations."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(rows, rng.dirichlet(np.full(k, 4.0)))
    parts = []
    for count in counts:
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        rot = q * np.sign(np.diag(r))
        parts.append(rng.normal(0.0, 4.0, d) + (rng.standard_normal((count, d)) * rng.uniform(0.5, 2.0, d)) @ rot.T)
    return rng.permutation(np.vstack(parts))


def run_mclust(x: np.ndarray, ks: list[int], models=MODELS):
    if shutil.which("Rscript") is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        np.savetxt(Path(tmp) / "x.csv", x, delimiter=",", fmt="%.17g")
        ks_r = "c(" + ",".join(map(str, ks)) + ")"
        models_r = "c(" + ",".join(f'"{m}"' for m in models) + ")"
        subprocess.run(["Rscript", "-e", f"dir <- '{tmp}'; ks <- {ks_r}; models <- {models_r};" + R_SCRIPT],
                       check=True)
        table = np.loadtxt(Path(tmp) / "bic.csv", delimiter=",", ndmin=2)
        seconds = float((Path(tmp) / "seconds.txt").read_text())
    return table, seconds


def run_dask_em(x, ks, tol, zarr_path, models=MODELS):
    from dask_em import select_model

    data = x
    if zarr_path is not None:
        import dask.array as da

        da.from_array(x, chunks=(min(len(x), 250_000), x.shape[1])).to_zarr(str(zarr_path), overwrite=True)
        data = str(zarr_path)
    tic = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # One random_state: every candidate starts from the same rows, as Mclust cuts one tree.
        result = select_model(data, n_components=ks, covariance_types=list(models), init_params="hierarchical",
                              random_state=0, reg_covar=0.0, tol=tol, max_iter=1000)
    return result, time.perf_counter() - tic


def out_of_core(args, models) -> None:
    """Each model fitted from a Zarr store larger than the workers' memory: a table."""
    import os

    import dask.array as da
    import psutil
    from _sampling import PeakSampler
    from distributed import Client, LocalCluster

    from dask_em import GaussianMixture
    from dask_em.datasets import make_mixture

    d, k = args.features, args.true_components
    store_rows = 65_536  # 4 MiB chunks at d = 8
    n = int(args.store_gib * 2**30 // (8 * d)) // store_rows * store_rows
    workdir = Path(tempfile.mkdtemp(prefix="dask-em-mclust-", dir=args.workdir))
    path = workdir / "x.zarr"
    try:
        tic = time.perf_counter()
        x, _, _ = make_mixture(n, d, k, chunk_rows=store_rows, seed=args.seed)
        da.to_zarr(x, str(path), overwrite=True)
        on_disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"# store: {n:,} rows x {d} float64 = {n * d * 8 / 2**30:.2f} GiB ({on_disk / 2**30:.2f} GiB on disk), "
              f"{n // store_rows} chunks of {store_rows * d * 8 / 2**20:.0f} MiB; written in {time.perf_counter() - tic:.0f} s")
        print(f"# LocalCluster: 2 workers x 1 thread x {args.worker_memory}; K = {k}, max_iter = {args.iters}, tol = 0")
        print(f"{'model':>6} {'fit s':>7} {'iters':>6} {'s/iter':>7} {'peak RSS MiB (worker 1, 2)':>28} "
              f"{'spilled MiB':>12} {'lower_bound_':>12}")
        with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=args.worker_memory,
                          dashboard_address=None, processes=True) as cluster, Client(cluster) as client:
            procs = [psutil.Process(pid) for pid in client.run(os.getpid).values()]

            def rss():
                out = {}
                for i, proc in enumerate(procs):
                    try:
                        out[i] = proc.memory_info().rss
                    except psutil.Error:
                        pass
                return out

            for model in models:
                tic = time.perf_counter()
                with PeakSampler(rss) as peaks, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    gm = GaussianMixture(k, covariance_type=model, max_iter=args.iters, tol=0,
                                         random_state=0).fit(str(path))
                seconds = time.perf_counter() - tic
                best = gm.restarts_[gm.best_restart_]
                spilled = sum(client.run(lambda dask_worker: dask_worker.data.spilled_total.disk).values())
                peak = " ".join(f"{v / 2**20:.0f}" for v in peaks.peak.values())
                print(f"{model:>6} {seconds:7.1f} {best['n_iter']:6d} {best['seconds'] / best['n_iter']:7.1f} "
                      f"{peak:>28} {spilled / 2**20:12.1f} {gm.lower_bound_:12.4f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def show(name: str, table: np.ndarray, ks: list[int], models=MODELS) -> None:
    print(f"\n{name}: BIC, mclust's sign (higher is better)")
    print("   " + "".join(f"{m:>11}" for m in models))
    for k, row in zip(ks, table):
        print(f"{k:>3}" + "".join(f"{v:>11.2f}" if np.isfinite(v) else f"{'NA':>11}" for v in row))
    i, j = np.unravel_index(np.nanargmax(table), table.shape)
    print(f"best: {models[j]},{ks[i]} {table[i, j]:.3f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--features", type=int, default=None, help="3 (8 with --out-of-core)")
    parser.add_argument("--true-components", type=int, default=3)
    parser.add_argument("--components", default="1-9", help="K grid, e.g. 1-9")
    parser.add_argument("--tol", type=float, default=1e-6, help="dask-em's tol per row")
    parser.add_argument("--zarr", action="store_true", help="dask-em reads a Zarr store (written first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(MODELS), help="mclust's model names, comma-separated")
    parser.add_argument("--fixture", help="a data set of tests/data/mclust (iris, wine, diabetes, ...)")
    parser.add_argument("--out-of-core", action="store_true",
                        help="each of --models from a Zarr store of --store-gib on 2 workers of --worker-memory")
    parser.add_argument("--store-gib", type=float, default=4.0)
    parser.add_argument("--worker-memory", default="512MiB")
    parser.add_argument("--iters", type=int, default=3, help="max_iter of each --out-of-core fit")
    parser.add_argument("--workdir", default=None, help="where the --out-of-core store is written (then deleted)")
    args = parser.parse_args(argv)
    lo, hi = (int(v) for v in args.components.split("-"))
    ks = list(range(lo, hi + 1))
    models = tuple(args.models.split(","))
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected some of {MODELS}")
    if args.features is None:
        args.features = 8 if args.out_of_core else 3
    if args.out_of_core:
        out_of_core(args, models)
        return
    recorded = None
    if args.fixture:
        import gzip
        import json

        data = Path(__file__).parent.parent / "tests" / "data" / "mclust"
        with gzip.open(data / f"{args.fixture}.csv.gz", "rt") as f:
            x = np.loadtxt(f, delimiter=",")
        bic = json.loads((data / "fixture.json").read_text())["sets"][args.fixture]["bic"]
        recorded = np.array([[np.nan if v is None else v for v in bic[m]] for m in models], dtype=float).T
        recorded = recorded[[k - 1 for k in ks]]
        print(f"# {args.fixture}: {x.shape[0]} rows x {x.shape[1]} features; K = {ks}; mclust from fixture.json")
    else:
        x = generated(args.rows, args.features, args.true_components, args.seed)
        print(f"# {args.rows} rows x {args.features} features, {args.true_components} true components; K = {ks}")
    with tempfile.TemporaryDirectory() as tmp:
        result, seconds = run_dask_em(x, ks, args.tol, Path(tmp) / "x.zarr" if args.zarr else None, models)
    ours = result.criteria.bic_mclust.transpose("n_components", "covariance_type").sel(covariance_type=list(models))
    ours = ours.values
    print(f"dask-em: {seconds:.1f} s" + (" (from a Zarr store)" if args.zarr else " (in memory)"))
    theirs, r_seconds = (recorded, None) if recorded is not None else run_mclust(x, ks, models)
    show("dask-em", ours, ks, models)
    if theirs is None:
        print("# Rscript not found: the mclust column is skipped (apt-get install r-base-core r-cran-mclust)")
        return
    print("\nmclust: " + ("recorded (tests/data/mclust/fixture.json)" if r_seconds is None
                          else f"{r_seconds:.1f} s (mclustBIC, in memory)"))
    show("mclust", theirs, ks, models)
    diff = ours - theirs
    print("\ndask-em minus mclust (positive: dask-em's fit has the higher BIC)")
    print("   " + "".join(f"{m:>11}" for m in models))
    for k, row in zip(ks, diff):
        print(f"{k:>3}" + "".join(f"{v:>11.3f}" if np.isfinite(v) else f"{'NA':>11}" for v in row))
    finite = np.isfinite(diff)
    print(f"cells: {finite.sum()} both fitted; dask-em higher by > 0.01: {(diff[finite] > 0.01).sum()}, "
          f"within 0.01: {(np.abs(diff[finite]) <= 0.01).sum()}, lower by > 0.01: {(diff[finite] < -0.01).sum()}")


if __name__ == "__main__":
    main()
