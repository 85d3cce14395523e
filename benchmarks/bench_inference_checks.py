"""Inference on data with NaN costs no extra pass: chunk reads and seconds, dask input.

The rows are generated chunk by chunk by a counting reader (a ``map_blocks``
over a seed per chunk), so every chunk read is counted. For ``score_samples``
(then ``.mean()``, as ``score`` computes it) on

* clean     finite data: each chunk must be read once (the floor);
* nan-last  the same data with one NaN in the last chunk: the error, naming the
            rows, must come from the pass that computes the result (reads <= chunks);
* check+run what a separate NaN check would cost: ``da.isfinite(X).all()`` first,
            then the scores (two reads of every chunk).

Usage::

    python benchmarks/bench_inference_checks.py                  # 2M x 16, K=8
    python benchmarks/bench_inference_checks.py --rows 200000    # a smoke run
"""

from __future__ import annotations

import argparse
import threading
import time
import warnings

import dask
import dask.array as da
import numpy as np

import dask_em

READS = []
LOCK = threading.Lock()


def rows_of(rows, d, nan_row=None, block_info=None):
    with LOCK:
        READS.append(1)
    index = block_info[None]["chunk-location"][0]
    x = np.random.default_rng(index).normal(size=(rows, d))
    x[: rows // 2] += 4.0
    if nan_row is not None and block_info[None]["array-location"][0][1] > nan_row >= block_info[None]["array-location"][0][0]:
        x[nan_row - block_info[None]["array-location"][0][0], 3] = np.nan
    return x


def counting_array(n, d, chunk, nan_row=None):
    chunks = ((chunk,) * (n // chunk), (d,))
    return da.map_blocks(rows_of, chunk, d, nan_row, chunks=chunks, dtype=np.float64, meta=np.empty((0, 0)))


def run(label, fn):
    READS.clear()
    t = time.perf_counter()
    error = ""
    try:
        fn()
    except ValueError as exc:
        error = str(exc)[:60]
    return label, len(READS), time.perf_counter() - t, error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--components", type=int, default=8)
    ap.add_argument("--chunk-rows", type=int, default=125_000)
    args = ap.parse_args()
    n, d = args.rows, args.features
    warnings.simplefilter("ignore")
    train = np.random.default_rng(0).normal(size=(20_000, d))
    gm = dask_em.GaussianMixture(args.components, covariance_type="full", max_iter=5, random_state=0).fit(train)
    clean = counting_array(n, d, args.chunk_rows)
    dirty = counting_array(n, d, args.chunk_rows, nan_row=n - 7)
    chunks = clean.numblocks[0]
    results = []
    with dask.config.set(scheduler="threads"):
        for _ in range(2):  # the first round warms caches and threads; the second is reported
            results = [
                run("clean", lambda: gm.score_samples(clean).mean().compute()),
                run("nan-last", lambda: gm.score_samples(dirty).mean().compute()),
                run("check+run (clean)", lambda: (bool(da.isfinite(clean).all().compute()),
                                                  gm.score_samples(clean).mean().compute())),
            ]
    print(f"score_samples on {n} x {d}, K={args.components} full, {chunks} chunks of {args.chunk_rows} rows")
    print(f"{'case':<20} {'chunk reads':>11} {'seconds':>8}  error")
    for label, reads, seconds, error in results:
        print(f"{label:<20} {reads:>11} {seconds:>8.3f}  {error}")


if __name__ == "__main__":
    main()
