"""Inference's cost per pass: predict, predict_proba and score_samples against an EM iteration and scikit-learn.

One model per case (the true parameters, perturbed, then one EM iteration), and for each method:

* memory     the numpy array (rows on local threads, ``num_workers`` of them);
* lazy       the same rows as a dask array of 250,000-row chunks, ``.compute()`` on
             the threaded scheduler;
* sklearn    ``sklearn.mixture.GaussianMixture`` with the same parameters (its own
             threads: BLAS's);
* EM         one EM iteration of dask-em on the numpy array, for scale.

Seconds per pass, the best of ``--repeats``, on 1, 2, 4, ... threads up to the
cores (``--threads``). Data: ``--shapes`` (default 2M x 16 and 500k x 64), K=8.

Usage::

    python benchmarks/bench_inference.py
    python benchmarks/bench_inference.py --shapes 200000x16 --types full --repeats 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cores import cores, thread_counts  # noqa: E402
from bench_em import initial_parameters  # noqa: E402

METHODS = ("predict", "predict_proba", "score_samples")


def best_of(repeats: int, run) -> float:
    best = np.inf
    for _ in range(repeats):
        tic = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - tic)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="2000000x16,500000x64")
    parser.add_argument("--types", default="full,diag")
    parser.add_argument("--threads", default="", help="comma-separated counts [1, 2, 4, ... up to the cores]")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-sklearn", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()

    import dask
    import dask.array as da
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    import dask_em
    from dask_em.datasets import make_mixture

    if hasattr(dask_em, "_compiled"):
        dask_em._compiled.warm_up()
    counts = [int(v) for v in args.threads.split(",")] if args.threads else thread_counts(cores())
    print(f"# {cores()} cores; dask-em from {os.path.dirname(dask_em.__file__)}; K=8, best of {args.repeats}; "
          f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| data | cov | method | threads | memory s | lazy s | sklearn s | EM iteration s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for shape in args.shapes.split(","):
        n, d = (int(v) for v in shape.lower().split("x"))
        x, _, spec = make_mixture(n, d, 8, chunk_rows=250_000, seed=1)
        X = x.compute(scheduler="threads")
        lazy = da.from_array(X, chunks=(250_000, -1))
        for cov in args.types.split(","):
            init = initial_parameters(spec, cov, np.random.default_rng(0))
            model = dask_em.GaussianMixture(8, covariance_type=cov, tol=0, max_iter=1, **init)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(X)
            reference = SkGaussianMixture(8, covariance_type=cov).fit(X[:2000])
            for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
                setattr(reference, name, getattr(model, name))
            for t in counts:
                with dask.config.set(scheduler="threads", num_workers=t):
                    em = dask_em.GaussianMixture(8, covariance_type=cov, tol=0, max_iter=2, **init)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        em.fit(X)
                    iteration = em.restarts_[0]["seconds"] / em.restarts_[0]["n_iter"]
                    for method in METHODS:
                        memory = best_of(args.repeats, lambda: getattr(model, method)(X))
                        dask_s = best_of(args.repeats, lambda: getattr(model, method)(lazy).compute())
                        sk = (np.nan if args.no_sklearn or t != counts[-1]
                              else best_of(args.repeats, lambda: getattr(reference, method)(X)))
                        print(f"| {shape} | {cov} | {method} | {t} | {memory:.3f} | {dask_s:.3f} | {sk:.3f} | "
                              f"{iteration:.3f} |")
                        sys.stdout.flush()
    print(f"\n# load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
