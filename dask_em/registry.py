"""The estimators by family name and by class name: where the CLI, model selection and the store look.

A string-keyed registry (as opt_einsum's backends): an unknown name is refused
with the list of valid ones.
"""

from __future__ import annotations

from .bayesian_mixture import BayesianGaussianMixture
from .discrete_mixture import BernoulliMixture, CategoricalMixture, PoissonMixture
from .gaussian_mixture import GaussianMixture
from .mixture import Mixture

# The built-in families, each with its estimator.
ESTIMATORS_BY_FAMILY: dict[str, type] = {
    "gaussian": GaussianMixture,
    "bernoulli": BernoulliMixture,
    "poisson": PoissonMixture,
    "categorical": CategoricalMixture,
    "bayesian_gaussian": BayesianGaussianMixture,
}
FAMILY_NAMES = tuple(ESTIMATORS_BY_FAMILY)
# The families select_model ranks by information criteria (and `dask-em generate` writes data
# for): a variational model picks its number of components itself and has no BIC.
GRID_FAMILIES = ("gaussian", "bernoulli", "poisson", "categorical")

# Every estimator a model store may name.
ESTIMATORS: dict[str, type] = {cls.__name__: cls for cls in (*ESTIMATORS_BY_FAMILY.values(), Mixture)}


def estimator_for_family(name: str) -> type:
    """The estimator class of the built-in family ``name``."""
    try:
        return ESTIMATORS_BY_FAMILY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"family must be one of {FAMILY_NAMES} or a dask_em.family.Family; received {name!r}."
        ) from None


def estimator_class(class_name: str) -> type:
    """The estimator class a model store names."""
    try:
        return ESTIMATORS[class_name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown estimator {class_name!r}; expected one of {sorted(ESTIMATORS)}") from None
