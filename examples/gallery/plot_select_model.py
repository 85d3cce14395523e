"""
Choose the number of components
===============================

:func:`dask_em.select_model` fits every number of components and covariance
type of a grid side by side (every pass over the data serves all candidates)
and ranks them by BIC, AIC or ICL. A variational
:class:`~dask_em.BayesianGaussianMixture` is the other way: give it more
components than needed and see which ones the data keep.
"""

# %%

import dask_em
import dask_em.plot
from dask_em.datasets import make_mixture

X = make_mixture(5_000, 3, 4, chunk_rows=5_000, seed=3)[0].compute()

result = dask_em.select_model(X, n_components=range(1, 8), covariance_types=["full", "diag"], random_state=0)
print(result.best_params_)
print(result.table())

# %%
# The criterion against K, one line per covariance type; the chosen model is marked.
ax = dask_em.plot.criterion(result)

# %%
# The variational model
# ---------------------
# With a Dirichlet-process prior on the weights, components the data do not
# support end with weights near zero.
bgm = dask_em.BayesianGaussianMixture(n_components=8, weight_concentration_prior=0.01, max_iter=500,
                                       random_state=0).fit(X)
ax = dask_em.plot.weights(bgm)
print("weights:", bgm.weights_.round(3))
