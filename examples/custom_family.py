"""A family defined outside dask-em: a mixture of exponential distributions.

Run: ``python examples/custom_family.py [--cluster]``. With ``--cluster`` the
fit runs on a two-process LocalCluster, so the class (defined here, in
``__main__``, as it would be in a notebook) travels to the workers by value.
"""

import sys
from dataclasses import dataclass

import numpy as np

import dask_em


# --- the family: 24 lines -------------------------------------------------
@dataclass(frozen=True)
class Exponential(dask_em.Family):
    """Independent exponential features; parameters: rates (K, d)."""

    name = "exponential"

    def check_rows(self, x):
        bad = ~(x >= 0)
        if not bad.any():
            return None
        return int(np.flatnonzero(bad.any(1))[0]), "X holds negative values", "Exponentials need x >= 0."

    def log_prob(self, x, params):  # (n, K): sum_j log(l_kj) - l_kj x_j
        rates = params["rates"]
        return np.log(rates).sum(1) - x @ rates.T

    def chunk_stats(self, x, rw, params):
        return {"sums": rw.T @ x}  # (K, d): sum_i r_ik x_ij

    def m_step(self, stats, nk, params):
        return {"rates": nk[:, None] / stats["sums"]}

    def n_parameters(self, params):
        return params["rates"].size

    def sample(self, params, labels, context, rng):
        return rng.exponential(1.0 / params["rates"][labels])
# ---------------------------------------------------------------------------


def main(cluster: bool = False) -> dask_em.Mixture:
    rng = np.random.default_rng(0)
    true_rates = np.array([[0.5, 5.0], [8.0, 0.3]])
    labels = rng.integers(0, 2, size=40_000)
    X = rng.exponential(1.0 / true_rates[labels])
    model = dask_em.Mixture(Exponential(), n_components=2, n_init=2, random_state=0)
    if cluster:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc, Client(lc):
            model.fit(X, chunk_rows=5_000)
    else:
        model.fit(X, chunk_rows=5_000)
    order = np.argsort(model.rates_[:, 0])
    print("rates:\n", np.round(model.rates_[order], 3), "\nweights:", np.round(model.weights_[order], 3))
    return model


if __name__ == "__main__":
    main(cluster="--cluster" in sys.argv)
