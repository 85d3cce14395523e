"""dask-em: mixture models fitted by Expectation-Maximisation on Dask.

>>> import dask_em
>>> gm = dask_em.GaussianMixture(n_components=8, n_init=4, random_state=0)
>>> gm.fit("points.zarr")                      # doctest: +SKIP
>>> gm.predict("points.zarr")                  # lazy dask array, same row chunks  # doctest: +SKIP

The modules, in the order data flows through them, are described in
``docs/architecture.md``.
"""

from ._version import __version__
from .bayesian import BayesianGaussianFamily
from .bayesian_mixture import BayesianGaussianMixture
from .discrete import BernoulliFamily, CategoricalFamily, PoissonFamily
from .discrete_mixture import BernoulliMixture, CategoricalMixture, PoissonMixture
from .family import Family
from .gaussian import GaussianFamily
from .gaussian_mixture import GaussianMixture
from .io import as_dask_array, open_zarr
from .mixture import Mixture
from .restarts import Preempted, request_stop
from .runner import ClusterLost
from .selection import SelectionResult, select_model
from .store import load, save

__all__ = [
    "BayesianGaussianFamily",
    "BayesianGaussianMixture",
    "BernoulliFamily",
    "BernoulliMixture",
    "CategoricalFamily",
    "CategoricalMixture",
    "ClusterLost",
    "Family",
    "GaussianFamily",
    "GaussianMixture",
    "Mixture",
    "PoissonFamily",
    "PoissonMixture",
    "Preempted",
    "__version__",
    "as_dask_array",
    "load",
    "open_zarr",
    "request_stop",
    "save",
    "select_model",
    "SelectionResult",
]
