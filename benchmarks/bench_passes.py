"""Passes to the optimum: plain EM against accelerated EM (SQUAREM), from the same starts.

For every case (a dataset, a family or covariance type, K), from the same start
(``random_state=0``, ``n_init=1``):

* plain EM run to ``tol=1e-10`` (scikit-learn's change rule) gives the converged bound L*;
* for plain EM, for ``accelerate="squarem"`` and for stepwise-then-accelerated
  (``stepwise_passes=P``, default 2, then SQUAREM; all to tol 1e-10): the passes and
  the wall time until the bound first comes within 1e-6 nats per row of L*, and the
  final bound's gap to L* (negative: higher than plain EM's). A stepwise pass reads
  every chunk once and counts as one pass; its bound is not one set of parameters'
  (NaN in the history), so the target is first met by a batch pass.

Then the defaults table: what the default settings return (passes, gap to L*,
parameter error where the truth is known) before (plain EM, scikit-learn's rule,
tol 1e-3: the defaults before accelerate/stopping existed) and after (the defaults
now; and ``accelerate="squarem"``).

    python benchmarks/bench_passes.py            # every case
    python benchmarks/bench_passes.py --quick    # four cases
    python benchmarks/bench_passes.py --only breast_cancer:tied   # cases whose "name:model" contains it
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import numpy as np
from _cases import hard_cases

TARGET = 1e-6


def gaussian_data():
    from sklearn.datasets import load_breast_cancer, load_digits, load_iris, load_wine
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    out = {
        "iris": StandardScaler().fit_transform(load_iris().data),
        "wine": StandardScaler().fit_transform(load_wine().data),
        "breast_cancer": StandardScaler().fit_transform(load_breast_cancer().data),
        "digits-pca10": PCA(10, random_state=0).fit_transform(load_digits().data),
    }

    out.update(hard_cases(rng, "ill-conditioned", 0.01))
    return out


def discrete_data():
    """Overlapping binary / count / code mixtures (3 components, 12 features, 30,000 rows) and their truth."""
    rng = np.random.default_rng(1)
    n, k, d = 30_000, 3, 12
    weights = np.array([0.5, 0.3, 0.2])
    labels = rng.choice(k, size=n, p=weights)
    probs = rng.uniform(0.2, 0.8, (k, d))
    rates = rng.uniform(1.0, 4.0, (k, d))
    cat = rng.dirichlet(np.full(4, 2.0), (k, d))
    codes = np.stack([
        np.array([rng.choice(4, p=cat[lab, j]) for lab in labels]) for j in range(d)
    ], axis=1).astype(np.int8)
    return {
        "binary": ("bernoulli", (rng.random((n, d)) < probs[labels]).astype(np.uint8), {"probabilities_": probs}),
        "counts": ("poisson", rng.poisson(rates[labels]).astype(np.uint16), {"rates_": rates}),
        "codes": ("categorical", codes, {"probabilities_": cat}),
    }


def patterns_data():
    """Bernoulli 30,000 x 12, three block patterns (0.7 on a component's 4+2 features, 0.3 elsewhere),
    weights 0.6/0.3/0.1: well separated, yet scikit-learn's rule at tol 1e-3 stops after 7 passes."""
    rng = np.random.default_rng(0)
    n, d, k = 30_000, 12, 3
    pattern = np.zeros((k, d), bool)
    for j in range(k):
        pattern[j, j * 4:(j + 1) * 4 + 2] = True
    probs = np.where(pattern, 0.7, 0.3)
    labels = rng.choice(k, n, p=[0.6, 0.3, 0.1])
    return (rng.random((n, d)) < probs[labels]).astype(np.uint8), probs


def make(family: str, variant: str | None, k: int, **kw):
    import dask_em

    if family == "gaussian":
        return dask_em.GaussianMixture(k, covariance_type=variant, random_state=0, **kw)
    cls = {"bernoulli": dask_em.BernoulliMixture, "poisson": dask_em.PoissonMixture,
           "categorical": dask_em.CategoricalMixture}[family]
    extra = {"n_categories": 4} if family == "categorical" else {}
    return cls(k, random_state=0, **extra, **kw)


def trace_fit(model, X):
    """Fit, recording (pass, seconds since the start of the fit, bound) after every pass."""
    trace = []
    tic = time.perf_counter()

    def callback(event):
        trace.append((event["iteration"], time.perf_counter() - tic, event["lower_bound"]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X, callback=callback)
    return trace, time.perf_counter() - tic


def reach(trace, target):
    for passes, seconds, bound in trace:
        if bound >= target:
            return passes, seconds
    return None, None


def cases(quick: bool):
    gauss = gaussian_data()
    types = ["full", "diag", "tied", "spherical"]
    chosen = [(name, types[i % 4]) for i, name in enumerate(gauss)]
    chosen += [("wine", "full"), ("breast_cancer", "diag"), ("digits-pca10", "full"), ("overlapping", "spherical")]
    out = [(name, "gaussian", t, 6 if name in ("wine", "breast_cancer", "digits-pca10") else 4, gauss[name], None)
           for name, t in chosen]
    for name, (family, X, truth) in discrete_data().items():
        out.append((name, family, None, 3, X, truth))
    if quick:
        out = [out[1], out[2], out[-3], out[-1]]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-iter", type=int, default=3000)
    parser.add_argument("--stepwise-passes", type=int, default=2)
    parser.add_argument("--only", default=None, help='run the cases whose "name:model" contains this')
    parser.add_argument("--no-defaults", action="store_true", help="skip the defaults table")
    args = parser.parse_args(argv)
    logging.getLogger("dask_em").setLevel(logging.ERROR)  # reg_covar's falling-bound warnings

    rows, ratios, sw_ratios, worst, sw_worst = [], [], [], -np.inf, -np.inf
    sw = args.stepwise_passes
    print(f"passes (and seconds) to within {TARGET:g} nats/row of plain EM's converged bound L* (tol 1e-10); "
          f"stepwise: {sw} stepwise passes, then SQUAREM")
    print(f"{'data':<16} {'model':<18} {'plain':>14} {'squarem':>14} {'ratio':>6} {'final gap':>10} "
          f"{'rej/inv':>7} {'stepwise+sq':>14} {'ratio':>6} {'final gap':>10}")
    for name, family, variant, k, X, _truth in cases(args.quick):
        label = f"{family if family != 'gaussian' else variant} K={k}"
        if args.only and args.only not in f"{name}:{label}":
            continue
        common = dict(tol=1e-10, max_iter=args.max_iter, stopping="change")
        plain_trace, _ = trace_fit(make(family, variant, k, **common), X)
        fast_model = make(family, variant, k, accelerate="squarem", **common)
        fast_trace, _ = trace_fit(fast_model, X)
        sw_model = make(family, variant, k, accelerate="squarem", stepwise_passes=sw, **common)
        sw_trace, _ = trace_fit(sw_model, X)
        best = plain_trace[-1][2]
        target = best - TARGET
        p_passes, p_sec = reach(plain_trace, target)
        f_passes, f_sec = reach(fast_trace, target)
        s_passes, s_sec = reach(sw_trace, target)
        gap = best - fast_model.lower_bound_
        sw_gap = best - sw_model.lower_bound_
        worst, sw_worst = max(worst, gap), max(sw_worst, sw_gap)
        acc = fast_model.restarts_[fast_model.best_restart_]["acceleration"]
        ratio = p_passes / f_passes if p_passes and f_passes else float("nan")
        sw_ratio = p_passes / s_passes if p_passes and s_passes else float("nan")
        ratios.append(ratio)
        sw_ratios.append(sw_ratio)
        fmt = lambda p, s: f"{p} ({s:.2f}s)" if p else "never"  # noqa: E731
        print(f"{name:<16} {label:<18} {fmt(p_passes, p_sec):>14} {fmt(f_passes, f_sec):>14} {ratio:>6.2f} "
              f"{gap:>10.2e} {acc['rejected']:>3}/{acc['invalid']:<3} {fmt(s_passes, s_sec):>14} {sw_ratio:>6.2f} "
              f"{sw_gap:>10.2e}", flush=True)
        rows.append((name, label))
    # a case that never reaches the target counts as no gain (ratio 0) in the median
    med = lambda r: np.median([0.0 if np.isnan(x) else x for x in r]) if r else float("nan")  # noqa: E731
    print(f"squarem: median ratio {med(ratios):.2f}x fewer passes (a case never within {TARGET:g} counts as 0); "
          f"worst final gap {worst:.2e} nats/row (positive: ended below plain EM)")
    print(f"stepwise+squarem: median ratio {med(sw_ratios):.2f}x; worst final gap {sw_worst:.2e} nats/row")
    if args.no_defaults:
        return

    print()
    print("what the default settings return: passes, gap to L* (nats/row), parameter error (max abs, truth known)")
    extra = {"wine": ("gaussian", "diag", 6), "digits-pca10": ("gaussian", "diag", 6)}
    gauss = gaussian_data()
    default_cases = [(n, *extra[n][:2], extra[n][2], gauss[n], None) for n in ("wine", "digits-pca10")]
    default_cases.insert(1, ("breast_cancer", "gaussian", "full", 6, gauss["breast_cancer"], None))
    default_cases += [c for c in cases(False) if c[0] == "binary"]
    print(f"{'data':<16} {'model':<22} {'before':>26} {'after (defaults)':>26} {'squarem':>26} "
          f"{'squarem, tol 1e-6':>26}")
    for name, family, variant, k, X, truth in default_cases:
        n_init = 3 if family != "gaussian" else 1
        ref = make(family, variant, k, tol=1e-10, max_iter=args.max_iter, stopping="change", n_init=n_init)
        trace_fit(ref, X)
        cells = []
        for kw in ({"stopping": "change"}, {}, {"accelerate": "squarem"}, {"accelerate": "squarem", "tol": 1e-6}):
            m = make(family, variant, k, n_init=n_init, **kw)
            trace_fit(m, X)
            err = ""
            if truth is not None:
                key, value = next(iter(truth.items()))
                got = getattr(m, key)
                got = np.stack(got, 1) if isinstance(got, list) else got
                # match components to the truth by the closest parameters
                from scipy.optimize import linear_sum_assignment

                cost = np.abs(got.reshape(len(got), -1)[:, None] - value.reshape(len(value), -1)[None]).sum(-1)
                r, c = linear_sum_assignment(cost)
                err = f" err {np.abs(got.reshape(len(got), -1)[r] - value.reshape(len(value), -1)[c]).max():.3f}"
            cells.append(f"{m.n_passes_} p, {ref.lower_bound_ - m.lower_bound_:.1e}{err}")
        print(f"{name:<16} {(family if family != 'gaussian' else variant) + f' K={k}':<22} "
              + " ".join(f"{c:>26}" for c in cells))


if __name__ == "__main__":
    main()
