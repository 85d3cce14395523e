"""scikit-learn's own conformance suite over the built-in estimators.

``parametrize_with_checks`` runs every check scikit-learn applies to a density
estimator, over the five built-in estimators. The instances are small (K=2,
``max_iter=20``) so the suite stays quick; each expected failure is declared with its reason in
``EXPECTED_FAILED`` (scikit-learn reports it as xfail and fails if it passes). The checks
scikit-learn runs over its own estimators beside those (its ``test_common.py``) run below.
"""

import warnings

import pytest
from sklearn.utils import estimator_checks
from sklearn.utils.estimator_checks import check_param_validation, parametrize_with_checks

import dask_em

SETTINGS = dict(n_components=2, max_iter=20, random_state=0)

WEIGHT_EQUIVALENCE = (
    "The start is a k-means on a random sample of rows, drawn by row index: repeating a row "
    "changes which rows the sample holds, so fits with integer weights and with repeated rows "
    "start, and end, at different optima. tests/test_discrete.py and tests/test_mixture.py check the "
    "equivalence from a given start instead."
)
FLOAT_CODES = (
    "CategoricalMixture takes codes stored as integers and refuses float storage before reading "
    "anything (a float code may hide a fraction or a NaN); this check passes floats or objects."
)

EXPECTED_FAILED = {
    "GaussianMixture": {"check_sample_weight_equivalence_on_dense_data": WEIGHT_EQUIVALENCE},
    "BayesianGaussianMixture": {"check_sample_weight_equivalence_on_dense_data": WEIGHT_EQUIVALENCE},
    "BernoulliMixture": {},
    "PoissonMixture": {
        "check_sample_weight_equivalence_on_dense_data": (
            "This check passes uniform floats without applying the input tags, and a Poisson "
            "mixture takes counts only (it refuses 0.37 naming the row). " + WEIGHT_EQUIVALENCE
        ),
    },
    "CategoricalMixture": {
        "check_estimators_dtypes": FLOAT_CODES,
        "check_dtype_object": FLOAT_CODES,
        "check_fit_non_negative": FLOAT_CODES,
        "check_sample_weights_not_overwritten": FLOAT_CODES,
        "check_sample_weight_equivalence_on_dense_data": FLOAT_CODES + " " + WEIGHT_EQUIVALENCE,
        "check_estimators_nan_inf": (
            "NaN and inf exist only in float storage, which CategoricalMixture refuses by its dtype "
            "(a TypeError naming the dtype) before any value is read; integer codes cannot hold them."
        ),
    },
}

ESTIMATORS = [
    dask_em.GaussianMixture(**SETTINGS),
    dask_em.BayesianGaussianMixture(**SETTINGS),
    # As scikit-learn's BernoulliNB: the checks' Gaussian data read as x > 0.
    dask_em.BernoulliMixture(binarize=0.0, **SETTINGS),
    dask_em.PoissonMixture(**SETTINGS),
    # The checks pass codes round(X - X.min()), below 64 in every check.
    dask_em.CategoricalMixture(n_categories=64, **SETTINGS),
]


def expected_failed_checks(estimator):
    return EXPECTED_FAILED[type(estimator).__name__]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks)
def test_sklearn_compatible_estimator(estimator, check):
    with warnings.catch_warnings():
        # Tiny data: non-convergence in 20 iterations and a bound that falls under the
        # pseudo-count prior are expected and say nothing about conformance.
        warnings.simplefilter("ignore")
        check(estimator)


def test_every_expected_failure_has_a_reason():
    for name, checks in EXPECTED_FAILED.items():
        for check, reason in checks.items():
            assert check.startswith("check_") and len(reason) > 40, (name, check)


# What scikit-learn's own test_common.py runs over its estimators besides parametrize_with_checks, where it
# applies to a density estimator: every parameter's constraints and the error a bad value gets, a frame's
# column names at inference and in partial_fit, read-only input, all-zero weights.
# The last two are newer than the oldest scikit-learn dask-em takes: run where installed.
COMMON_CHECKS = [
    getattr(estimator_checks, name) for name in (
        "check_param_validation", "check_dataframe_column_names_consistency", "check_inplace_ensure_writeable",
        "check_all_zero_sample_weights_error",
    ) if hasattr(estimator_checks, name)
]


@pytest.mark.parametrize("check", COMMON_CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda estimator: type(estimator).__name__)
def test_scikit_learns_common_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(type(estimator).__name__, estimator)


def test_the_generic_mixture_declares_its_parameters_constraints():
    """``Mixture`` (any family) is checked as the built-in estimators are."""
    estimator = dask_em.Mixture(dask_em.PoissonFamily(), n_components=2, max_iter=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_param_validation("Mixture", estimator)
