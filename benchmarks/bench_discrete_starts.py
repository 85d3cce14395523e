"""The discrete families' hierarchical start (Family.merge_criterion) against k-means and emEM.

For Bernoulli, categorical and Poisson data drawn from random 6-component mixtures
(``dask_em.datasets.make_family_mixture``: 3,000 rows, 12 features, 5 categories; two
seeds), and K = 2..8, one EM run from each start at tol 1e-6 per row:

* ``kmeans``: ``init_params="kmeans"`` (the estimators' default; k-means of the family's
  init features: the 0/1 values, the one-hot codes, the counts);
* ``hier``: ``init_params="hierarchical"``: the family's own agglomerative tree
  (Bernoulli: the increase of sum_k n_k H(p_k); categorical the same per category;
  Poisson the pooled rates' log-likelihood loss) on at most 2,000 sampled rows;
* ``emEM``: ``init_strategy="emEM"`` with its defaults (its starts include both trees).

The final mean log-likelihood per row; hier is better / equal / worse than kmeans within
1e-4, and the seconds each fit took.

    python benchmarks/bench_discrete_starts.py
"""

from __future__ import annotations

import time
import warnings



def main():
    import dask_em
    from dask_em.datasets import make_family_mixture

    warnings.simplefilter("ignore")
    estimators = {
        "bernoulli": lambda k, **kw: dask_em.BernoulliMixture(k, **kw),
        "categorical": lambda k, **kw: dask_em.CategoricalMixture(k, n_categories=5, **kw),
        "poisson": lambda k, **kw: dask_em.PoissonMixture(k, **kw),
    }
    tally = {name: {"better": 0, "equal": 0, "worse": 0} for name in estimators}
    emem_tally = {"better": 0, "equal": 0, "worse": 0}
    print(f"{'family':>12} {'seed':>4} {'K':>2} {'kmeans ll':>11} {'s':>5} {'hier ll':>11} {'s':>5} "
          f"{'hier vs km':>10} {'emEM ll':>11} {'s':>5}")
    for name, make in estimators.items():
        for seed in (0, 1):
            X = make_family_mixture(name, 3000, 12, 6, seed=seed)[0].compute()
            for k in range(2, 9):
                row = {}
                for label, kw in (("kmeans", {}), ("hier", {"init_params": "hierarchical"}),
                                  ("emEM", {"init_strategy": "emEM"})):
                    tic = time.perf_counter()
                    fitted = make(k, tol=1e-6, max_iter=2000, random_state=0, **kw).fit(X)
                    row[label] = (fitted.score(X), time.perf_counter() - tic)
                gap = row["hier"][0] - row["kmeans"][0]
                verdict = "better" if gap > 1e-4 else ("worse" if gap < -1e-4 else "equal")
                tally[name][verdict] += 1
                best_single = max(row["hier"][0], row["kmeans"][0])
                emem_tally["better" if row["emEM"][0] > best_single + 1e-4 else
                           "worse" if row["emEM"][0] < best_single - 1e-4 else "equal"] += 1
                print(f"{name:>12} {seed:4d} {k:2d} {row['kmeans'][0]:11.4f} {row['kmeans'][1]:5.1f} "
                      f"{row['hier'][0]:11.4f} {row['hier'][1]:5.1f} {verdict:>10} {row['emEM'][0]:11.4f} "
                      f"{row['emEM'][1]:5.1f}", flush=True)
    for name, t in tally.items():
        print(f"# {name}: hierarchical start vs k-means start: {t}")
    print(f"# emEM vs the better of the two single runs: {emem_tally}")


if __name__ == "__main__":
    main()
