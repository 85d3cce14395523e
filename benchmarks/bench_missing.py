"""Per-iteration cost of marginalising missing values (``missing="marginalize"``) against complete data.

One dataset of ``--rows`` x 16 float64 rows from a K=8 mixture, held in memory
as a row-chunked dask array, and copies of it with holes punched in:

* 0% error       today's path (``missing="error"``): the baseline of the run.
* 0% marg.       no NaN, ``missing="marginalize"``: the price of the NaN scan.
* 1/10/30% MCAR  each value missing with that probability, independently.
* block 5x20%    5 columns missing together in 20% of the rows.

Each fit starts from the true parameters (no k-means) and runs ``--iters``
iterations with tol=0; seconds per iteration are the median gap between the
iteration callbacks (the first round, which also checks the rows, left out).
``x complete`` divides by the 0%-error time of the same covariance type.
``peak`` is the highest resident set size of this process during the fit
above its size when the fit started (the datasets, all held, left out).

On a shared machine wall time swings with the load: ``--repeats R`` runs every
configuration R times, in rounds (each round visits every configuration once,
after one unmeasured warm-up fit), and prints the median with the range over
the rounds. ``cpu s/iter`` is the process's CPU time per iteration (all
threads): the work done, far less sensitive to other jobs than wall time. The
load average is printed before and after.

Usage::

    python benchmarks/bench_missing.py                     # 2M x 16 (slow on 2 shared cores)
    python benchmarks/bench_missing.py --rows 200000       # a smoke run
    python benchmarks/bench_missing.py --repeats 3         # spread over 3 rounds
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
from _sampling import PeakSampler


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def make_data(n: int, d: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d)) * 4
    a = rng.normal(size=(k, d, d)) / np.sqrt(d)
    covs = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(d)
    weights = np.full(k, 1.0 / k)
    labels = rng.integers(0, k, n)
    chol = np.linalg.cholesky(covs)
    X = means[labels] + np.einsum("nij,nj->ni", chol[labels], rng.standard_normal((n, d)))
    return X, weights, means, covs


def punch(X: np.ndarray, pattern: str, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = X.copy()
    if pattern.endswith("% MCAR"):
        X[rng.random(X.shape) < float(pattern.split("%")[0]) / 100] = np.nan
    elif pattern == "block 5x20%":
        X[np.ix_(rng.random(len(X)) < 0.2, np.arange(5))] = np.nan
    X[np.isnan(X).all(1), 0] = 0.0
    return X


def time_fit(X, chunk_rows: int, ct: str, missing: str, start, iters: int):
    import dask.array as da

    from dask_em import GaussianMixture

    weights, means, covs = start
    prec = np.linalg.inv(covs) if ct == "full" else 1.0 / np.stack([np.diag(c) for c in covs])
    gm = GaussianMixture(len(weights), covariance_type=ct, weights_init=weights, means_init=means,
                         precisions_init=prec, max_iter=iters, tol=0, missing=missing)
    stamps = []
    data = da.from_array(X, chunks=(chunk_rows, -1))
    before = _rss()
    with PeakSampler(_rss) as peak, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(data, callback=lambda event: stamps.append((time.perf_counter(), time.process_time())))
    gaps = np.diff(np.array(stamps), axis=0)
    return float(np.median(gaps[:, 0])), float(np.median(gaps[:, 1])), peak.peak - before


def _spread(values) -> str:
    return f"{np.median(values):.3f} ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    parser.add_argument("--iters", type=int, default=4)
    parser.add_argument("--types", default="full,diag")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    X, weights, means, covs = make_data(args.rows, args.features, args.components)
    start = (weights, means, covs)
    patterns = ["0%", "1% MCAR", "10% MCAR", "30% MCAR", "block 5x20%"]
    configs = [(ct, pattern, missing) for ct in args.types.split(",") for pattern in patterns
               for missing in (["error", "marginalize"] if pattern == "0%" else ["marginalize"])]
    datasets = {pattern: X if pattern == "0%" else punch(X, pattern) for pattern in patterns}
    print(f"{args.rows} x {args.features}, K={args.components}, chunks of {args.chunk_rows} rows, "
          f"{args.iters} iterations (median of the last {args.iters - 1}), {args.repeats} round(s); "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    time_fit(X, args.chunk_rows, configs[0][0], "error", start, 2)  # warm-up, not measured
    results = {config: [] for config in configs}
    for _ in range(args.repeats):
        for ct, pattern, missing in configs:
            results[ct, pattern, missing].append(time_fit(datasets[pattern], args.chunk_rows, ct, missing, start,
                                                          args.iters))
    wall_w, cpu_w = (16, 12) if args.repeats == 1 else (22, 22)
    print(f"{'covariance':<10} {'pattern':<12} {'missing':<11} {'incomplete':>10} {'s/iter':>{wall_w}} "
          f"{'x complete':>{cpu_w}} {'cpu s/iter':>{wall_w}} {'cpu x compl.':>{cpu_w}} {'+peak MiB':>9}")
    for ct, pattern, missing in configs:
        runs = results[ct, pattern, missing]
        base = results[ct, "0%", "error"]
        wall = [r[0] for r in runs]
        cpu = [r[1] for r in runs]
        # ratios within a round: the same round's complete-data fit, then their spread
        ratio = [r[0] / b[0] for r, b in zip(runs, base)]
        cpu_ratio = [r[1] / b[1] for r, b in zip(runs, base)]
        incomplete = float(np.isnan(datasets[pattern]).any(1).mean())
        print(f"{ct:<10} {pattern:<12} {missing:<11} {incomplete:>10.1%} {_spread(wall):>{wall_w}} "
              f"{_spread(ratio):>{cpu_w}} {_spread(cpu):>{wall_w}} {_spread(cpu_ratio):>{cpu_w}} "
              f"{max(r[2] for r in runs) / 2**20:>9.0f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
