"""
A mixture of your own distributions
===================================

A family is a few pure functions: the log-density of rows under each
component, the sufficient statistics of responsibility-weighted rows, and the
M-step. The engine does the rest (weights, restarts, the tree reduction,
checkpoints, the model store). This one fits mixtures of exponential
distributions; a family defined in a notebook runs on a cluster as a built-in
one does.
"""

# %%
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

import dask_em


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


# %%
# Two components with rates 0.5 and 5, 30% and 70% of the rows:
rng = np.random.default_rng(0)
X = np.concatenate([rng.exponential(2.0, (3_000, 1)), rng.exponential(0.2, (7_000, 1))])

model = dask_em.Mixture(Exponential(), n_components=2, n_init=2, random_state=0).fit(X)
print("rates", model.rates_.ravel().round(3), "weights", model.weights_.round(3))

# %%
# The fitted density over the histogram of the data.
grid = np.linspace(0, 8, 400)
density = (model.weights_ * model.rates_[:, 0] * np.exp(-np.outer(grid, model.rates_[:, 0]))).sum(1)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(X[:, 0], bins=200, range=(0, 8), density=True, color="lightgray")
ax.plot(grid, density, color="black")
ax.set_yscale("log")
ax.set_xlabel("x")
ax.set_ylabel("density")
