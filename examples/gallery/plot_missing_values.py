"""
Fit with missing values
=======================

With ``missing="marginalize"`` EM treats NaN as missing at random: an
incomplete row contributes through the density of its observed values, and
its missing values through their conditional expectations. ``impute`` fills
each NaN with its conditional expectation under the fitted mixture.
Here 30% of the values of 2,000 rows are removed at random; the marginalised fit
is compared with two common shortcuts: fitting only the complete rows (still
unbiased when values are missing at random, but three rows in four are thrown
away, so its estimates are noisier) and filling each hole with its column's mean
before fitting (which pulls every component toward the middle and distorts its
covariance).
"""

# %%
import matplotlib.pyplot as plt
import numpy as np

import dask_em
from dask_em.datasets import make_mixture

X, y, truth = make_mixture(2_000, 4, 3, chunk_rows=2_000, seed=2)
X = X.compute()
rng = np.random.default_rng(0)
holes = X.copy()
holes[rng.random(X.shape) < 0.3] = np.nan
keep = ~np.isnan(holes).all(1)  # a row with nothing observed carries no information
X, holes = X[keep], holes[keep]
complete = ~np.isnan(holes).any(1)
print(f"complete rows: {complete.mean():.0%}")


def errors(model):
    """Mean distance from each true mean to the nearest fitted mean, and between their covariances."""
    distance = ((truth.means[:, None] - model.means_[None]) ** 2).sum(-1)
    nearest = distance.argmin(1)
    covariance = [np.linalg.norm(model.covariances_[j] - truth.covariances[k]) for k, j in enumerate(nearest)]
    return f"means {np.sqrt(distance.min(1)).mean():.3f}, covariances {np.mean(covariance):.3f}"


marginal = dask_em.GaussianMixture(3, missing="marginalize", n_init=2, random_state=0).fit(holes)
dropped = dask_em.GaussianMixture(3, n_init=2, random_state=0).fit(holes[complete])
mean_filled = np.where(np.isnan(holes), np.nanmean(holes, axis=0), holes)
imputed = dask_em.GaussianMixture(3, n_init=2, random_state=0).fit(mean_filled)
print("marginalised:      ", errors(marginal))
print("complete rows only:", errors(dropped))
print("mean-imputed:      ", errors(imputed))

# %%
# Imputed values against the values that were removed, for the first feature.
filled = marginal.impute(holes)
removed = np.isnan(holes[:, 0])
fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.scatter(X[removed, 0], filled[removed, 0], s=3, alpha=0.4)
ax.set_xlabel("removed value")
ax.set_ylabel("imputed value")
