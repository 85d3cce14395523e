"""What the default settings return, before and after: passes, gap to the converged bound, parameter error.

The rows of issue 15's table: wine (standardized) K=6 diag, breast_cancer
(standardized) K=6 full, digits -> 10 PCs K=6 diag, and a Bernoulli mixture of
30,000 x 12 with three well-separated block patterns (probabilities 0.7 on a
component's block, 0.3 elsewhere, weights 0.6/0.3/0.1), K=3, ``n_init=3``;
plus the overlapping binary data of ``bench_passes.py`` (a fit that crawls past
a saddle: no stopping rule sees it).

For each row, L* is plain EM's bound at tol 1e-10 (change rule, max_iter 3000)
from the same starts (``random_state=0``). Columns:

* before: plain EM, scikit-learn's rule at tol 1e-3 (the defaults before issue 15);
* defaults: the estimator's defaults now (``GaussianMixture()`` is unchanged);
* aitken: ``stopping="aitken"`` with the default tol (one parameter away for Gaussians);
* squarem: ``accelerate="squarem"`` with its defaults.

    python benchmarks/bench_defaults.py
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).parent))
from bench_passes import discrete_data, gaussian_data, patterns_data  # noqa: E402


def error(model, truth):
    """Max abs difference to the true probabilities, components matched by the closest parameters."""
    if truth is None:
        return ""
    got = model.probabilities_.reshape(len(model.probabilities_), -1)
    val = truth.reshape(len(truth), -1)
    r, c = linear_sum_assignment(np.abs(got[:, None] - val[None]).sum(-1))
    return f" err {np.abs(got[r] - val[c]).max():.3f}"


def main():
    import dask_em

    logging.getLogger("dask_em").setLevel(logging.ERROR)
    g = gaussian_data()
    pat_X, pat_truth = patterns_data()
    _, bin_X, bin_truth = discrete_data()["binary"]

    def gm(cov):
        return lambda **kw: dask_em.GaussianMixture(6, covariance_type=cov, random_state=0, **kw)

    def bm(**kw):
        return dask_em.BernoulliMixture(3, n_init=3, random_state=0, **kw)

    rows = [
        ("wine", "diag K=6", gm("diag"), g["wine"], None),
        ("breast_cancer", "full K=6", gm("full"), g["breast_cancer"], None),
        ("digits-pca10", "diag K=6", gm("diag"), g["digits-pca10"], None),
        ("bernoulli patterns", "K=3 n_init=3", bm, pat_X, pat_truth),
        ("binary (saddle)", "K=3 n_init=3", bm, bin_X, bin_truth["probabilities_"]),
    ]
    settings = {
        "before": dict(stopping="change", tol=1e-3),
        "defaults": {},
        "aitken": dict(stopping="aitken"),
        "squarem": dict(accelerate="squarem"),
    }
    print("passes, gap to L* (nats/row; L*: plain EM at tol 1e-10), parameter error (max abs, truth known)")
    print(f"{'data':<20} {'model':<14} {'L* (passes)':>16} " + " ".join(f"{k:>24}" for k in settings))
    for name, label, make, X, truth in rows:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = make(tol=1e-10, stopping="change", max_iter=3000).fit(X)
            cells = []
            for kw in settings.values():
                m = make(**kw).fit(X)
                cells.append(f"{m.n_passes_} p, {ref.lower_bound_ - m.lower_bound_:.1e}{error(m, truth)}")
        ref_cell = f"{ref.n_passes_}{error(ref, truth)}"
        print(f"{name:<20} {label:<14} {ref_cell:>16} " + " ".join(f"{c:>24}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
