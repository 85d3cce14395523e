"""A K x covariance-type grid: dask-em's select_model against fitting the grid one candidate at a time.

Three ways to fill the same 10 x 4 table (K = 1..10, full/tied/diag/spherical):

* select_model   the whole grid side by side from a Zarr store: every round reads each
                 chunk once for all candidates still running;
* one-by-one     dask-em GaussianMixture per candidate, from the same store;
* sklearn        scikit-learn's GaussianMixture per candidate, on the array in memory.

Same n_init, tol and max_iter everywhere. Prints seconds, chunk passes, the ratio to
select_model, the chosen (K, type) and the largest BIC difference against sklearn.

    python benchmarks/bench_select.py                     # 200,000 x 8, true K = 5
    python benchmarks/bench_select.py --samples 50000     # quicker
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings



def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--true-k", type=int, default=5)
    parser.add_argument("--max-k", type=int, default=10)
    parser.add_argument("--n-init", type=int, default=1)
    parser.add_argument("--chunk-rows", type=int, default=25_000)
    args = parser.parse_args(argv)

    import dask.array as da
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    import dask_em
    from dask_em.datasets import make_mixture

    workdir = tempfile.mkdtemp(prefix="dask-em-bench-select-")
    path = os.path.join(workdir, "x.zarr")
    x, _, _ = make_mixture(args.samples, args.features, args.true_k, chunk_rows=args.chunk_rows, seed=2)
    da.to_zarr(x, path)
    X = x.compute()
    ks = list(range(1, args.max_k + 1))
    types = ["full", "tied", "diag", "spherical"]
    kw = {"n_init": args.n_init, "max_iter": 100, "tol": 1e-3}
    print(f"# {args.samples:,} x {args.features}, true K={args.true_k}, grid {len(ks)} x {len(types)}, "
          f"n_init={args.n_init}, {os.cpu_count()} cores, chunks of {args.chunk_rows} rows")

    warnings.simplefilter("ignore")
    tic = time.perf_counter()
    result = dask_em.select_model(path, n_components=ks, covariance_types=types, random_state=0,
                                  chunk_rows=args.chunk_rows, **kw)
    t_select = time.perf_counter() - tic
    passes_select = 1 + int(result.criteria.n_iter.max()) + 1

    tic = time.perf_counter()
    passes_one = 0
    ours = {}
    for k in ks:
        for t in types:
            gm = dask_em.GaussianMixture(k, covariance_type=t, random_state=0, **kw).fit(path, chunk_rows=args.chunk_rows)
            ours[k, t] = gm.bic(path, chunk_rows=args.chunk_rows)
            passes_one += 1 + gm.n_iter_ + 1
    t_one = time.perf_counter() - tic

    tic = time.perf_counter()
    ref = {}
    for k in ks:
        for t in types:
            sk = SkGaussianMixture(k, covariance_type=t, random_state=0, **kw).fit(X)
            ref[k, t] = sk.bic(X)
    t_sk = time.perf_counter() - tic

    sk_best = min(ref, key=ref.get)
    diffs = [abs(float(result.criteria.bic.sel(n_components=k, covariance_type=t)) - ref[k, t]) / abs(ref[k, t])
             for k in ks for t in types]
    print(f"{'method':>14} {'seconds':>9} {'passes':>7} {'vs select':>10}  best")
    best = (result.best_params_["n_components"], result.best_params_["covariance_type"])
    print(f"{'select_model':>14} {t_select:9.1f} {passes_select:7d} {1.0:9.2f}x  {best}")
    print(f"{'one-by-one':>14} {t_one:9.1f} {passes_one:7d} {t_one / t_select:9.2f}x  {min(ours, key=ours.get)}")
    print(f"{'sklearn':>14} {t_sk:9.1f} {'-':>7} {t_sk / t_select:9.2f}x  {sk_best}")
    print(f"# largest relative BIC difference, select_model vs sklearn (different starts): {max(diffs):.2e}")


if __name__ == "__main__":
    main()
