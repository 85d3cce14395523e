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
    parser.add_argument("--features", type=int, default=3)
    parser.add_argument("--true-components", type=int, default=3)
    parser.add_argument("--components", default="1-9", help="K grid, e.g. 1-9")
    parser.add_argument("--tol", type=float, default=1e-6, help="dask-em's tol per row")
    parser.add_argument("--zarr", action="store_true", help="dask-em reads a Zarr store (written first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default=",".join(MODELS), help="mclust's model names, comma-separated")
    parser.add_argument("--fixture", help="a data set of tests/data/mclust (iris, wine, diabetes, ...)")
    args = parser.parse_args(argv)
    lo, hi = (int(v) for v in args.components.split("-"))
    ks = list(range(lo, hi + 1))
    models = tuple(args.models.split(","))
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected some of {MODELS}")
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
