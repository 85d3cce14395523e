"""The registry of estimators, and what every estimator shares (dask_em/registry.py)."""

import inspect

import pytest

from dask_em._base import BaseMixture
from dask_em.registry import ESTIMATORS, FAMILY_NAMES, estimator_class, estimator_for_family


def test_unknown_names_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"family must be one of \('gaussian', 'bernoulli'.*received 'gauss'"):
        estimator_for_family("gauss")
    with pytest.raises(ValueError, match=r"unknown estimator 'Nope'; expected one of \['BayesianGaussianMixture'"):
        estimator_class("Nope")


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_takes_every_common_parameter(name):
    """A parameter added to BaseMixture reaches every estimator's signature (scikit-learn reads it)."""
    common = set(inspect.signature(BaseMixture.__init__).parameters) - {"self"}
    cls = ESTIMATORS[name]
    assert common <= set(inspect.signature(cls.__init__).parameters)
    assert set(cls().get_params()) >= common


def test_every_family_name_resolves_to_its_estimator():
    for name in FAMILY_NAMES:
        assert estimator_for_family(name).__name__ in ESTIMATORS
