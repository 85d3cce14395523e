"""Seconds per iteration of BayesianGaussianMixture: dask-em against scikit-learn, in one run.

Both start from the same start and run the same iterations (tol=0):
``init_params="random_from_data"`` with dask-em's ``init_sample_size`` equal to
n draws the same K rows in both (``RandomState(seed).choice(n, K)``), so the
two fits are the same computation and their final lower bounds must agree;
the table prints both. scikit-learn's time is its own loop body
(``_e_step``, ``_m_step``, ``_compute_lower_bound``) on the in-memory array,
without its start; dask-em's is the rounds' wall time (restart ``seconds``
over ``n_iter``) on the same numpy array, threaded scheduler.

Also in the same run, so the ratios can be compared on one machine at one load:

* ``float32``: dask-em with ``compute_dtype="float32"``;
* ``zarr``: dask-em reading the same rows from a zstd Zarr store on disk
  (~32 MiB chunks, written once before the timings);
* ``GMM ratio``: scikit-learn's ``GaussianMixture`` loop body against dask-em's
  ``GaussianMixture`` on the same array (same ``random_from_data`` start), the
  ratio the issue asks the variational estimator to match.

Usage::

    python benchmarks/bench_bayesian.py            # 2M x 16 and 500k x 64, K=8 (minutes)
    python benchmarks/bench_bayesian.py --quick    # small shapes, a smoke run
    python benchmarks/bench_bayesian.py --versus-select   # one generous fit against a BIC grid over K
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings

import numpy as np


def make_data(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    labels = rng.integers(0, k, n)
    X = rng.standard_normal((n, d))
    X += centers[labels]
    return X


def sklearn_per_iter(X, kw, seed, iters, estimator="BayesianGaussianMixture"):
    """scikit-learn's loop body per iteration (without its start), and its last lower bound."""
    from sklearn import mixture

    m = getattr(mixture, estimator)(random_state=seed, tol=0, max_iter=iters, init_params="random_from_data", **kw)
    m._check_parameters(X)
    m._initialize_parameters(X, np.random.RandomState(seed))
    tic = time.perf_counter()
    for _ in range(iters):
        log_prob_norm, log_resp = m._e_step(X)
        m._m_step(X, log_resp)
        bound = m._compute_lower_bound(log_resp, log_prob_norm)
    return (time.perf_counter() - tic) / iters, float(np.ravel(bound)[0])


def dask_em_per_iter(X, kw, iters, n_rows=None, estimator="BayesianGaussianMixture", **extra):
    import dask_em

    n_rows = len(X) if n_rows is None else n_rows
    m = getattr(dask_em, estimator)(
        random_state=0, tol=0, max_iter=iters, init_params="random_from_data", init_sample_size=n_rows, **kw, **extra
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(X)
    r = m.restarts_[0]
    return r["seconds"] / r["n_iter"], m.lower_bound_, r["seed"]


def write_store(X, path):
    import zarr

    chunk_rows = max(1024, (32 * 2**20) // (8 * X.shape[1]))
    z = zarr.create_array(path, shape=X.shape, chunks=(chunk_rows, X.shape[1]), dtype=X.dtype,
                          compressors=zarr.codecs.ZstdCodec(level=3), overwrite=True)
    for lo in range(0, len(X), chunk_rows):
        z[lo : lo + chunk_rows] = X[lo : lo + chunk_rows]
    return path


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def versus_select(n: int, d: int, k_true: int, k_max: int) -> None:
    """Whole fits on the same data: select_model over K=1..k_max against one BayesianGaussianMixture(k_max)."""
    import dask_em

    rng = np.random.default_rng(1)
    centers = rng.normal(scale=5.0, size=(k_true, d))
    weights = rng.dirichlet(np.full(k_true, 5.0))
    labels = rng.choice(k_true, size=n, p=weights)
    X = rng.standard_normal((n, d)) * rng.uniform(0.5, 1.5, size=(k_true, 1))[labels] + centers[labels]
    print(f"# {cpu_name()}; {n:,} x {d}, {k_true} true components, full covariance, n_init=1, default tol")
    print(f"{'method':>40} {'seconds':>8} {'passes':>7} {'chosen K':>9}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tic = time.perf_counter()
        result = dask_em.select_model(X, n_components=range(1, k_max + 1), covariance_types="full", random_state=0)
        grid_s = time.perf_counter() - tic
        passes = max(est.n_passes_ for est in result.estimators_.values())
        print(f"{f'select_model K=1..{k_max} (BIC)':>40} {grid_s:8.2f} {passes:7d} {result.best_params_['n_components']:9d}")
        # scikit-learn's tol applies to the *total* ELBO (its bound is not divided by the rows);
        # tol = 1e-3 * n is the same per-row change as GaussianMixture's default.
        for tol in (1e-3, 1e-3 * n):
            tic = time.perf_counter()
            bgm = dask_em.BayesianGaussianMixture(k_max, random_state=0, max_iter=3000, tol=tol).fit(X)
            active = int((bgm.weights_ >= 1e-2).sum())
            name = f"BayesianGaussianMixture({k_max}), tol={tol:g}"
            print(f"{name:>40} {time.perf_counter() - tic:8.2f} {bgm.n_passes_:7d} {active:9d}"
                  + ("" if bgm.converged_ else " (not converged)"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--versus-select", action="store_true",
                        help="whole fits: a BIC grid over K against one generous variational fit")
    args = parser.parse_args(argv)
    if args.versus_select:
        versus_select(50_000, 8, 5, 10)
        return
    cases = (
        [(200_000, 16, "full"), (200_000, 16, "diag"), (50_000, 64, "full")]
        if args.quick
        else [(2_000_000, 16, "full"), (2_000_000, 16, "diag"), (500_000, 64, "full"), (500_000, 64, "diag")]
    )
    k = 8
    print(f"# {cpu_name()}, {os.cpu_count()} cores; K={k}, {args.iters} iterations, tol=0, dirichlet_process prior; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"{'n x d':>12} {'cov':>5} {'sklearn s/it':>13} {'dask-em s/it':>13} {'ratio':>6} {'float32':>8} {'ratio':>6} "
          f"{'zarr s/it':>9} {'GMM ratio':>9}  {'sklearn bound':>18} {'dask-em bound':>18} {'rel. diff':>9}")
    workdir = tempfile.mkdtemp(prefix="dask-em-bench-bgm-")
    try:
        for n, d, ct in cases:
            X = make_data(n, d, k)
            path = write_store(X, os.path.join(workdir, f"x-{n}x{d}.zarr"))
            kw = dict(n_components=k, covariance_type=ct)
            ours, our_bound, seed = dask_em_per_iter(X, kw, args.iters)
            theirs, their_bound = sklearn_per_iter(X, kw, seed, args.iters)
            f32, _, _ = dask_em_per_iter(X, kw, args.iters, compute_dtype="float32")
            from_store, store_bound, _ = dask_em_per_iter(path, kw, args.iters, n_rows=n)
            gmm_ours, _, gmm_seed = dask_em_per_iter(X, kw, args.iters, estimator="GaussianMixture")
            gmm_theirs, _ = sklearn_per_iter(X, kw, gmm_seed, args.iters, estimator="GaussianMixture")
            rel = abs(our_bound - their_bound) / abs(their_bound)
            assert abs(store_bound - our_bound) <= 1e-9 * abs(our_bound), (store_bound, our_bound)
            print(f"{n:>9}x{d:<3} {ct:>5} {theirs:13.3f} {ours:13.3f} {theirs / ours:6.2f} {f32:8.3f} "
                  f"{theirs / f32:6.2f} {from_store:9.3f} {gmm_theirs / gmm_ours:9.2f}  "
                  f"{their_bound:18.8g} {our_bound:18.8g} {rel:9.1e}", flush=True)
            del X
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

if __name__ == "__main__":
    main()
