"""dask-em: mixture models fitted by Expectation-Maximisation on Dask.

>>> import dask_em
>>> gm = dask_em.GaussianMixture(n_components=8, n_init=4, random_state=0)
>>> gm.fit("points.zarr")                      # doctest: +SKIP
>>> gm.predict("points.zarr")                  # lazy dask array, same row chunks  # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

from ._engine import Preempted, request_stop
from .io import as_dask_array, open_zarr
from .discrete import (
    BernoulliFamily,
    BernoulliMixture,
    CategoricalFamily,
    CategoricalMixture,
    PoissonFamily,
    PoissonMixture,
)
from .family import Family
from .gaussian import GaussianFamily
from .mixture import GaussianMixture, Mixture
from .selection import SelectionResult, select_model
from .store import load, save

try:
    __version__ = version("dask-em")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "BernoulliFamily",
    "BernoulliMixture",
    "CategoricalFamily",
    "CategoricalMixture",
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
