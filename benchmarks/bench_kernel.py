"""The Gaussian full-covariance E-step kernel against its FLOP floor, on one thread.

Thread CPU time (``time.thread_time``, which a loaded machine moves far less
than wall time) of ``engine.estep_block`` on 65,536 rows, best of 7, scaled to
2M rows, for float64 and ``compute_dtype="float32"``; the floor is 4·K·d² flops
a row at a one-thread DGEMM (2048²) measured in the same run.

Usage::

    python benchmarks/bench_kernel.py              # d = 16 and 64, K = 8
    python benchmarks/bench_kernel.py --dims 16 --repeats 3
    python benchmarks/bench_kernel.py --design residual   # the residual design at every d
    python benchmarks/bench_kernel.py --design moments --components 4 --dims 8,16   # the moment design

The "design" column names what ``FullLayout.kernel`` picked for float64:
``moments`` at small d, else the residual design ``[x - c, 1]`` with its
statistics as raw moments about the shift (``residual, raw stats``) or about
the means (``residual``; where a mean lies far from the shift).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

from dask_em import _covariance, engine, gaussian


def dgemm_one_thread(size=2048, repeats=3) -> float:
    a = np.random.default_rng(0).standard_normal((size, size))
    best = np.inf
    for _ in range(repeats):
        tic = time.thread_time()
        a @ a
        best = min(best, time.thread_time() - tic)
    return 2 * size**3 / best


def bench_params(d: int, k: int, rng=None) -> dict:
    rng = np.random.default_rng(0) if rng is None else rng
    factors = rng.standard_normal((k, d, d)) * 0.05 + np.eye(d)
    return {
        "means": rng.standard_normal((k, d)) * 0.3, "precisions_cholesky": np.triu(factors),
        "weights": np.full(k, 1.0 / k), "covariance_type": "full",
    }


def estep_seconds(d: int, k: int, dtype: str, rows=65_536, repeats=7) -> float:
    rng = np.random.default_rng(0)
    params = bench_params(d, k, rng)
    state = engine.RoundState(gaussian.GaussianFamily(compute_dtype=dtype), np.zeros(d), [params], check_rows=False)
    X = rng.standard_normal((rows, d))
    engine.estep_block(X, None, state)
    best = np.inf
    for _ in range(repeats):
        tic = time.thread_time()
        engine.estep_block(X, None, state)
        best = min(best, time.thread_time() - tic)
    return best * 2e6 / rows


def describe(layout) -> str:
    if isinstance(layout, _covariance._MomentDesign):
        return "moments"
    return "residual, raw stats" if isinstance(layout, _covariance._RawStatistics) else "residual"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="16,64")
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="whole measurements per d (their spread is printed)")
    parser.add_argument("--design", choices=["auto", "residual", "moments"], default="auto",
                        help="auto: the library's choice per d and K; residual: the residual design with "
                             "statistics about the means at every d; moments: the moment design at every d")
    args = parser.parse_args()
    k = args.components
    if args.design != "auto":
        _covariance.moment_max_features = (lambda k: 0) if args.design == "residual" else (lambda k: 10**9)
        if args.design == "residual":  # about the means, as before the moment design
            _covariance.MOMENT_MAX_DISTANCE2 = {dt: -1.0 for dt in _covariance.MOMENT_MAX_DISTANCE2}
    print(f"# one thread, K={k}, thread CPU s per 2M rows; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| d | design | float64 s | float32 s | 1-thread DGEMM GFLOP/s | floor s | float64 of floor | float32 of floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with threadpool_limits(1):
        for d in (int(v) for v in args.dims.split(",")):
            for _ in range(args.repeats):
                f64, f32 = estep_seconds(d, k, "float64"), estep_seconds(d, k, "float32")
                rate = dgemm_one_thread()
                floor = 4 * 2e6 * k * d * d / rate
                design = describe(_covariance.LAYOUTS["full"].kernel(bench_params(d, k)))
                print(f"| {d} | {design} | {f64:.3f} | {f32:.3f} | {rate / 1e9:.1f} | {floor:.3f} | {floor / f64:.0%} | {floor / f32:.0%} |")


if __name__ == "__main__":
    main()
