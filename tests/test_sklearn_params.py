"""Every parameter of scikit-learn's two Gaussian mixtures, and the behaviours its users rely on,
against the installed scikit-learn itself.

The starts agree without private API: dask-em's restart 0 runs k-means with
``RandomState(seed)`` (``restarts_[0]["seed"]``) on its initialisation sample,
which is every row here (n <= 20,000), and scikit-learn's estimator with
``random_state=seed`` runs the same k-means on the same rows.

Run this file as a script (``python tests/test_sklearn_params.py``) to rewrite the
generated tables of ``docs/compatibility.md``; the test below fails when they drift.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import inspect
import re
import sys
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture as SkBGM
from sklearn.mixture import GaussianMixture as SkGM
from sklearn.utils._param_validation import InvalidParameterError, generate_invalid_param_val, make_constraint

import dask_em

sys.path.insert(0, str(Path(__file__).parent))
from conftest import mixture  # noqa: E402

COV_TYPES = ["full", "tied", "diag", "spherical"]
PAIRS = [(dask_em.GaussianMixture, SkGM), (dask_em.BayesianGaussianMixture, SkBGM)]
DOC = Path(__file__).parent.parent / "docs" / "compatibility.md"


def quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


def close(actual, desired, what, rtol=1e-8):
    actual, desired = np.asarray(actual, dtype=np.float64), np.asarray(desired, dtype=np.float64)
    # An absolute floor at rtol of the array's scale: entries near zero come from cancellation.
    scale = max(1.0, float(np.abs(desired).max()))
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * scale, err_msg=what)


def fitted_arrays(model) -> dict:
    """The fitted attributes both libraries have, as float arrays (the concentration tuple flattened)."""
    names = ["weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"]
    if hasattr(model, "mean_precision_"):
        names += ["mean_precision_", "degrees_of_freedom_", "mean_prior_", "covariance_prior_"]
    out = {name: np.asarray(getattr(model, name), dtype=np.float64) for name in names}
    if hasattr(model, "weight_concentration_"):
        out["weight_concentration_"] = np.ravel(np.asarray(model.weight_concentration_, dtype=np.float64))
    return out


def assert_same_model(ours, ref, what, rtol=1e-8):
    assert ours.n_iter_ == ref.n_iter_, f"{what}: n_iter_ {ours.n_iter_} != {ref.n_iter_}"
    assert ours.converged_ == ref.converged_, what
    close(np.ravel(ours.lower_bounds_), np.ravel(ref.lower_bounds_), f"{what}: lower_bounds_", rtol)
    ref_arrays = fitted_arrays(ref)
    for name, value in fitted_arrays(ours).items():
        close(value, ref_arrays[name], f"{what}: {name}", rtol)


@pytest.fixture(scope="module")
def rows():
    X, _, _ = mixture(np.random.default_rng(5), n=900, d=3, k=3, spread=5.0, offset=20.0)
    return X


# -- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_every_scikit_learn_parameter_with_its_default_first(ours, theirs):
    """scikit-learn's parameters, in scikit-learn's order and with its defaults; dask-em's own after them."""
    sk = inspect.signature(theirs).parameters
    here = inspect.signature(ours).parameters
    assert list(here)[: len(sk)] == list(sk)
    for name, parameter in sk.items():
        assert here[name].default == parameter.default, name
    defaults = ours().get_params()
    assert {k: defaults[k] for k in sk} == theirs().get_params()


NON_DEFAULT = dict(
    n_components=3, covariance_type="diag", tol=1e-5, reg_covar=1e-4, max_iter=7, n_init=2,
    init_params="k-means++", random_state=3, warm_start=True, verbose=0, verbose_interval=4,
)
BAYESIAN_NON_DEFAULT = dict(
    weight_concentration_prior_type="dirichlet_distribution", weight_concentration_prior=0.5,
    mean_precision_prior=2.0, mean_prior=[0.0, 1.0, 2.0], degrees_of_freedom_prior=4.0,
    covariance_prior=[1.0, 2.0, 3.0],
)


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_get_params_of_a_non_default_estimator_equal_scikit_learns(ours, theirs):
    kw = dict(NON_DEFAULT)
    if theirs is SkBGM:
        kw.update(BAYESIAN_NON_DEFAULT)
    else:
        kw.update(weights_init=[0.2, 0.3, 0.5], means_init=np.zeros((3, 3)), precisions_init=np.ones((3, 3)))
    here, sk = ours(**kw).get_params(), theirs(**kw).get_params()
    for name, value in sk.items():
        np.testing.assert_equal(here[name], value, err_msg=name)
    ours(**kw).check_params()  # every value scikit-learn takes is taken


def _refusal(estimator, name, value, X):
    with pytest.raises(InvalidParameterError) as caught:
        quiet(estimator.set_params(**{name: value}).fit, X)
    return str(caught.value)


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_a_refused_parameter_raises_scikit_learns_error_in_its_words(rows, ours, theirs):
    """Each of scikit-learn's parameters: a value of no allowed type, and one outside each allowed range, get
    scikit-learn's InvalidParameterError; where both libraries allow the same values, in the same words."""
    bad_type = type("BadType", (), {"__repr__": lambda self: "BadType()"})()
    compared = 0
    for name, rules in theirs._parameter_constraints.items():
        mine = ours._parameter_constraints[name]
        same = [str(make_constraint(r)) for r in mine] == [str(make_constraint(r)) for r in rules]
        bad_values = [bad_type]
        for rule in map(make_constraint, rules):
            with contextlib.suppress(NotImplementedError):
                bad_values.append(generate_invalid_param_val(rule))
        for value in bad_values:
            if any(make_constraint(r).is_satisfied_by(value) for r in mine):
                continue  # dask-em takes more (tol=None, other starts, numpy's newer seeds)
            message = _refusal(ours(), name, value, rows)
            assert message.startswith(f"The {name!r} parameter of {ours.__name__} must be "), message
            if same:
                assert message == _refusal(theirs(), name, value, rows)
                compared += 1
    assert compared >= 10


@pytest.mark.parametrize("ours", [dask_em.GaussianMixture, dask_em.BayesianGaussianMixture])
def test_verbose_true_is_taken_and_a_bool_count_or_an_infinite_float_refused(rows, ours):
    assert ours(3, verbose=True, max_iter=2, random_state=0).fit(rows).n_iter_ >= 1  # scikit-learn's "verbose"
    assert "Got True instead" in _refusal(ours(), "n_components", True, rows)
    assert "must be a float in the range [0.0, inf). Got inf instead" in _refusal(ours(), "reg_covar", np.inf, rows)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_the_default_tol_is_the_change_rule_at_scikit_learns_threshold(rows, cov_type):
    """GaussianMixture() stops where scikit-learn's does: same iteration, same model."""
    ours = quiet(dask_em.GaussianMixture(3, covariance_type=cov_type, random_state=0).fit, rows)
    ref = quiet(SkGM(3, covariance_type=cov_type, random_state=ours.restarts_[0]["seed"]).fit, rows)
    assert ours.tol == ref.tol == 1e-3 and ours.stopping_rule() == "change"
    assert_same_model(ours, ref, cov_type)


@pytest.mark.parametrize("ours, theirs", PAIRS)
@pytest.mark.parametrize("init_params", ["kmeans", "random"])
def test_the_same_random_state_gives_scikit_learns_fit(rows, ours, theirs, init_params):
    """No start passed, no seed looked up: an int random_state seeds the first restart as scikit-learn's first
    initialisation, so code that fixes random_state gets scikit-learn's numbers (a sample of every row)."""
    for cov_type in COV_TYPES:
        for seed in (0, 7):
            kw = dict(n_components=3, covariance_type=cov_type, init_params=init_params, random_state=seed)
            model, ref = quiet(ours(**kw).fit, rows), quiet(theirs(**kw).fit, rows)
            assert model.restarts_[0]["seed"] == seed
            assert_same_model(model, ref, f"{ours.__name__} {cov_type} {init_params} seed {seed}")


@pytest.fixture(scope="module")
def overlapping():
    """Five overlapping groups fitted with four components: the starts reach different optima."""
    rng = np.random.default_rng(11)
    centres = rng.uniform(-10, 10, size=(5, 3))
    return centres[rng.integers(0, 5, size=400)] + 2.5 * rng.standard_normal((400, 3))


@pytest.mark.parametrize("ours, theirs", PAIRS)
@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_the_same_random_state_gives_scikit_learns_fit_with_several_restarts(overlapping, ours, theirs, init_params):
    """n_init > 1: the later starts draw on from the stream the earlier ones left, as scikit-learn's
    initialisations, so the same random_state (an int, or a RandomState left where scikit-learn leaves it)
    picks scikit-learn's winner with scikit-learn's numbers."""
    kw = dict(n_components=4, n_init=4, init_params=init_params, covariance_type="full", max_iter=500)
    for random_state in (0, 3, "instance"):
        mine, theirs_rs = (
            (np.random.RandomState(21), np.random.RandomState(21)) if random_state == "instance"
            else (random_state, random_state)
        )
        model = quiet(ours(random_state=mine, **kw).fit, overlapping)
        ref = quiet(theirs(random_state=theirs_rs, **kw).fit, overlapping)
        what = f"{ours.__name__} {init_params} random_state={random_state}"
        assert len({round(r["lower_bound"], 6) for r in model.restarts_}) > 1, f"{what}: the starts must differ"
        assert [r["seed"] is None for r in model.restarts_] == [False, True, True, True], what
        assert_same_model(model, ref, what)
        if random_state == "instance":
            assert mine.randint(2**31) == theirs_rs.randint(2**31), f"{what}: the stream left where scikit-learn's is"


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_repeated_rows_give_scikit_learns_k_means_start(ours, theirs):
    """Binary and rounded data (many equal rows, so equal distances): k-means breaks its ties as scikit-learn's
    does only on the rows as scikit-learn passes them (uncentred, in their own float type)."""
    rng = np.random.default_rng(0)
    binary = (rng.random((400, 6)) < 0.3).astype(np.float64)
    rounded = np.round(rng.uniform(-6, 6, size=(4, 3))[rng.integers(0, 4, 300)] + rng.standard_normal((300, 3)))
    for name, X in (("binary", binary), ("rounded", rounded), ("rounded float32", rounded.astype(np.float32))):
        assert len(np.unique(X, axis=0)) < 0.7 * len(X), name
        for k, seed in ((3, 0), (5, 1), (4, 2)):
            kw = dict(n_components=k, covariance_type="diag", reg_covar=1e-3, random_state=seed)
            model, ref = quiet(ours(**kw).fit, X), quiet(theirs(**kw).fit, X)
            rtol = 1e-8 if X.dtype == np.float64 else 1e-5
            assert_same_model(model, ref, f"{ours.__name__} {name} K={k} seed {seed}", rtol=rtol)


def test_a_component_of_little_mass_is_kept_as_scikit_learn_keeps_it():
    """25 components on 75 rows: a component falls below a millionth of a row (and, in the full model, gains
    mass again). Only an empty one (below 10 eps of a row) is dropped, so the model, its columns and its BIC
    are scikit-learn's."""
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(n_samples=60, n_features=2, centers=3, random_state=0, cluster_std=[1.0, 2.0, 0.5])
    X = np.vstack([X, np.repeat(X[:3], 5, axis=0)])
    for cov_type, seed in (("full", 2), ("diag", 2)):
        kw = dict(n_components=25, covariance_type=cov_type, init_params="random", random_state=seed)
        ref = quiet(SkGM(max_iter=500, **kw).fit, X)
        # scikit-learn one iteration at a time: the smallest component's mass, in rows, at every iteration.
        stepped, masses = SkGM(warm_start=True, max_iter=1, **kw), []
        for _ in range(ref.n_iter_):
            quiet(stepped.fit, X)
            masses.append(stepped.weights_.min() * len(X))
        assert min(masses) < 1e-6, f"{cov_type}: the case needs a component below a millionth of a row"
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no component dropped
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = dask_em.GaussianMixture(max_iter=500, **kw).fit(X)
        assert model.n_components_ == 25 and model.predict_proba(X).shape == (75, 25)
        close(model.bic(X), ref.bic(X), f"{cov_type}: bic", 1e-8)
        close(model.weights_, ref.weights_, f"{cov_type}: weights_", 1e-6)


def test_starts_on_a_sample_of_the_rows_keep_streams_of_their_own(overlapping):
    """Where the sample is not every row (scikit-learn's starts cannot be reproduced), each restart has its
    own seed and the starts are independent of one another and of n_init (the sample too): the first two
    restarts start at the same points with n_init=2 and 4, so more restarts only add candidates."""
    kw = dict(n_components=4, init_params="random_from_data", init_sample_size=300, random_state=5, max_iter=1)
    two = quiet(dask_em.GaussianMixture(n_init=2, **kw).fit, overlapping)
    four = quiet(dask_em.GaussianMixture(n_init=4, **kw).fit, overlapping)
    seeds = [r["seed"] for r in four.restarts_]
    assert None not in seeds and len(set(seeds)) == 4 and seeds[0] == 5
    assert [r["seed"] for r in two.restarts_] == seeds[:2]
    starts = [r["history"][0] for r in four.restarts_]  # each start's bound on every row
    assert len(set(starts)) == 4
    assert [r["history"][0] for r in two.restarts_] == pytest.approx(starts[:2], rel=1e-12)


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_no_random_state_draws_from_numpys_global_stream_as_scikit_learn(overlapping, ours, theirs):
    """random_state=None is numpy's global RandomState, as scikit-learn reads it: np.random.seed before the
    fit gives scikit-learn's fit (any n_init), and the fit leaves the global stream where scikit-learn's does."""
    kw = dict(n_components=4, n_init=3, init_params="k-means++")
    np.random.seed(11)
    ref = quiet(theirs(**kw).fit, overlapping)
    after_ref = np.random.randint(2**31)
    np.random.seed(11)
    model = quiet(ours(**kw).fit, overlapping)
    assert np.random.randint(2**31) == after_ref
    assert_same_model(model, ref, f"{ours.__name__}, random_state=None")
    np.random.seed(12)
    rows = model.sample(7)[0]
    np.random.seed(12)
    np.testing.assert_allclose(rows, ref.sample(7)[0], rtol=1e-8, atol=1e-8)


def test_an_unseeded_warm_start_leaves_the_global_stream_as_scikit_learn(rows):
    """A warm fit draws no start: the global stream is where scikit-learn's warm fits leave it."""
    after = []
    for cls in (dask_em.GaussianMixture, SkGM):
        np.random.seed(5)
        model = quiet(cls(3, warm_start=True, max_iter=5).fit, rows)
        quiet(model.fit, rows)
        after.append((np.random.randint(2**31), model.n_iter_))
    assert after[0] == after[1]


def test_an_unseeded_grid_starts_each_candidate_as_it_would_alone(overlapping):
    """select_model without a seed: every candidate draws from the global stream where it stood, as it would
    fitted alone, and the stream ends where the last candidate alone leaves it."""
    kw = dict(n_init=2, max_iter=3)
    np.random.seed(7)
    grid = quiet(dask_em.select_model, overlapping, n_components=[2, 3], covariance_types="full", **kw)
    after_grid = np.random.randint(2**31)
    for k in (2, 3):
        np.random.seed(7)
        alone = quiet(dask_em.GaussianMixture(k, **kw).fit, overlapping)
        np.testing.assert_array_equal(grid.estimators_[(k, "full")].means_, alone.means_)
    assert np.random.randint(2**31) == after_grid


def test_a_fit_refused_at_its_start_leaves_the_global_stream_as_it_was(overlapping):
    """Rows refused by the pass that reads them (the start's): no start drawn, the stream where it was."""
    bad = overlapping.copy()
    bad[5, 0] = np.inf
    np.random.seed(9)
    with pytest.raises(ValueError, match="infinity"):
        quiet(dask_em.GaussianMixture(3).fit, bad)
    after = np.random.randint(2**31)
    np.random.seed(9)
    assert np.random.randint(2**31) == after


def test_unseeded_fits_started_together_on_threads_start_apart(overlapping):
    """The global stream is moved on as a fit takes it: fits started side by side do not share their starts."""
    kw = dict(n_components=4, n_init=2, init_params="random", max_iter=2)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        fits = list(pool.map(lambda _: quiet(dask_em.GaussianMixture(**kw).fit, overlapping), range(3)))
    firsts = {float(f.restarts_[0]["history"][0]) for f in fits}
    assert len(firsts) == 3


def test_no_random_state_on_a_sample_of_the_rows_is_set_by_numpys_seed(overlapping):
    """Where the start takes a sample of the rows, np.random.seed still decides the whole fit."""
    kw = dict(n_components=4, n_init=2, init_sample_size=300, max_iter=3)
    fits = []
    for seed in (3, 3, 4):
        np.random.seed(seed)
        fits.append(quiet(dask_em.GaussianMixture(**kw).fit, overlapping))
    np.testing.assert_array_equal(fits[0].means_, fits[1].means_)
    assert not np.array_equal(fits[0].means_, fits[2].means_)


def test_a_seed_sequence_is_a_seed_not_a_stream(overlapping):
    """A SeedSequence given as random_state is not spawned from: two fits with it are the same."""
    seq = np.random.SeedSequence(17)
    kw = dict(n_components=4, n_init=3, init_sample_size=300, random_state=seq, max_iter=3)
    first = quiet(dask_em.GaussianMixture(**kw).fit, overlapping)
    again = quiet(dask_em.GaussianMixture(**kw).fit, overlapping)
    assert seq.n_children_spawned == 0
    np.testing.assert_array_equal(first.means_, again.means_)
    np.testing.assert_array_equal(first.sample(5)[0], again.sample(5)[0])


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_the_same_random_state_samples_scikit_learns_rows(rows, ours, theirs):
    for cov_type in COV_TYPES:
        kw = dict(n_components=3, covariance_type=cov_type, random_state=4)
        model, ref = quiet(ours(**kw).fit, rows), quiet(theirs(**kw).fit, rows)
        for n in (1, 500):
            X, y = model.sample(n)
            X_ref, y_ref = ref.sample(n)
            np.testing.assert_array_equal(y, y_ref)
            close(X, X_ref, f"{ours.__name__} {cov_type}: sample({n})", 1e-6)


def test_sample_takes_a_whole_number_of_any_type_as_scikit_learn(rows):
    model = quiet(dask_em.GaussianMixture(3, random_state=0).fit, rows)
    ref = quiet(SkGM(3, random_state=0).fit, rows)
    for n in (2.0, np.int64(3), np.float32(4.0)):
        np.testing.assert_allclose(model.sample(n)[0], ref.sample(n)[0], rtol=1e-8, atol=1e-8)
    for bad in (0, 2.5, -1.0, "2"):
        with pytest.raises(ValueError, match=f"Invalid value for 'n_samples': {re.escape(repr(bad))}"):
            model.sample(bad)


@pytest.mark.parametrize("init_params", ["kmeans", "random", "random_from_data", "k-means++"])
def test_a_shared_random_state_instance_is_drawn_from_as_scikit_learn(rows, init_params):
    """scikit-learn's gallery pattern: one RandomState passed to fits in turn (each start draws from it and leaves
    it advanced), then sample from it: the same fits, the same rows, the instance left in the same state."""
    ours, theirs = np.random.RandomState(1234), np.random.RandomState(1234)
    kw = dict(n_components=3, init_params=init_params)
    first = quiet(dask_em.GaussianMixture(max_iter=0, random_state=ours, **kw).fit, rows)
    ref = quiet(SkGM(max_iter=0, random_state=theirs, **kw).fit, rows)
    close(first.means_, ref.means_, f"{init_params}: the start", 1e-10)
    assert ours.randint(2**31) == theirs.randint(2**31)  # the same draws consumed
    model = quiet(dask_em.GaussianMixture(3, means_init=first.means_, random_state=ours).fit, rows)
    ref = quiet(SkGM(3, means_init=ref.means_, random_state=theirs).fit, rows)
    assert_same_model(model, ref, f"{init_params}: the second fit")
    X, y = model.sample(200)
    X_ref, y_ref = ref.sample(200)
    np.testing.assert_array_equal(y, y_ref)
    close(X, X_ref, f"{init_params}: sample", 1e-6)
    assert ours.randint(2**31) == theirs.randint(2**31)


def test_aitken_under_auto_stops_no_later_than_one_nat_in_all():
    """tol=1e-3 with acceleration keeps the rule's own threshold: 1/n_samples within [1e-6, 1e-3]."""
    gm = dask_em.GaussianMixture(accelerate="squarem")
    assert gm.tol_in_force(100) == 1e-3
    assert gm.tol_in_force(50_000) == pytest.approx(1 / 50_000)
    assert gm.tol_in_force(10**9) == 1e-6
    assert dask_em.GaussianMixture(accelerate="squarem", tol=1e-7).tol_in_force(50_000) == 1e-7
    # An explicit rule takes tol as given; tol=None is still each rule's default.
    assert dask_em.GaussianMixture(stopping="aitken").tol_in_force(50_000) == 1e-3
    assert dask_em.GaussianMixture(stopping="aitken", tol=None).tol_in_force(50_000) == pytest.approx(1 / 50_000)


# -- max_iter=0 ---------------------------------------------------------------------------


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random_from_data"])
@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_max_iter_zero_returns_the_start_as_scikit_learn(rows, ours, theirs, cov_type, init_params):
    """The start itself, weights included: a start of one row a component (k-means++, random_from_data) has
    scikit-learn's weights of 1 / n_samples each, summing to K / n_samples, not to one."""
    if cov_type == "tied" and init_params != "kmeans":
        pytest.skip("scikit-learn's tied start of one row a component counts every row (a documented difference)")
    X = rows[:400]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # neither warns: the start was asked for
        model = ours(3, covariance_type=cov_type, max_iter=0, init_params=init_params, random_state=0).fit(X)
        ref = theirs(n_components=3, covariance_type=cov_type, max_iter=0, init_params=init_params,
                     random_state=model.restarts_[0]["seed"]).fit(X)
    assert model.n_iter_ == ref.n_iter_ == 0
    assert model.converged_ is ref.converged_ is False
    assert model.lower_bound_ == ref.lower_bound_ == -np.inf
    assert model.lower_bounds_ == ref.lower_bounds_ == []
    ref_arrays = fitted_arrays(ref)
    if init_params != "kmeans" and cov_type in ("diag", "spherical"):
        # One row a component: the variances are reg_covar (1e-6) plus nothing, which scikit-learn's diagonal
        # estimate E[x^2] - 2 m E[x] + m^2 finds through cancellation, off by up to a few eps of max x^2
        # (1.4e-12 here: 1e-6 relative); dask-em's, about the mean, is reg_covar. Its inverses are derived.
        floor = 16 * np.finfo(np.float64).eps * float((X**2).max())
        np.testing.assert_allclose(model.covariances_, ref.covariances_, rtol=0, atol=floor)
        ref_arrays = {k: v for k, v in ref_arrays.items() if k in ("weights_", "means_")}
    for name, value in fitted_arrays(model).items():
        if name in ref_arrays:
            close(value, ref_arrays[name], name)
    np.testing.assert_array_equal(model.predict(X), ref.predict(X))


def test_max_iter_zero_with_given_starting_parameters(rows):
    start = dict(weights_init=[0.2, 0.3, 0.5], means_init=rows[:3])
    model = dask_em.GaussianMixture(3, max_iter=0, random_state=0, **start).fit(rows)
    ref = SkGM(3, max_iter=0, random_state=model.restarts_[0]["seed"], **start).fit(rows)
    for name, value in fitted_arrays(ref).items():
        close(getattr(model, name), value, name)
    close(model.predict_proba(rows), ref.predict_proba(rows), "predict_proba")
    # With precisions_init too, scikit-learn 1.9 fails (its start has no covariances_ to return);
    # dask-em returns the given start.
    precisions = np.stack([np.eye(3) * v for v in (1.0, 2.0, 4.0)])
    given = dask_em.GaussianMixture(3, max_iter=0, precisions_init=precisions, **start).fit(rows)
    close(given.precisions_, precisions, "precisions_")
    close(given.covariances_, np.linalg.inv(precisions), "covariances_")
    close(given.means_, rows[:3], "means_")
    close(given.weights_, start["weights_init"], "weights_")


# -- float32 ------------------------------------------------------------------------------


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_float32_in_gives_scikit_learns_dtypes_and_values(rows, ours, theirs, cov_type):
    X32 = rows[:600].astype(np.float32)
    kw = dict(n_components=3, covariance_type=cov_type, max_iter=20, tol=0.0)  # every iteration in both
    model = quiet(ours(random_state=0, **kw).fit, X32)
    ref = quiet(theirs(random_state=model.restarts_[0]["seed"], **kw).fit, X32)
    for name, value in vars(ref).items():
        if name.endswith("_") and not name.startswith("_") and isinstance(value, (np.ndarray, np.floating)):
            assert np.asarray(getattr(model, name)).dtype == value.dtype, name
    assert np.asarray(model.lower_bound_).dtype == np.asarray(ref.lower_bound_).dtype
    # Responsibilities and scores: float32 where scikit-learn's are (float32 rows, float32 parameters), in
    # memory and lazily; the values are the float64 computation's, rounded once.
    for x in (X32, X32.astype(np.float64)):
        for method in ("predict_proba", "score_samples"):
            want = getattr(ref, method)(x).dtype
            assert getattr(model, method)(x).dtype == want, (method, x.dtype)
            lazy = getattr(model, method)(da.from_array(x, chunks=(250, -1)))
            assert lazy.dtype == want and lazy.compute().dtype == want, (method, x.dtype)
    # score (and the criteria) average the float64 scores, whatever score_samples' dtype: the same rows in
    # float32 or float64 storage give the same number.
    for source in (lambda a: a, lambda a: da.from_array(a, chunks=(250, -1))):
        assert model.score(source(X32)) == pytest.approx(model.score(source(X32.astype(np.float64))), rel=1e-15)
    # scikit-learn computes in float32 for GaussianMixture; dask-em in float64 and rounds at the end,
    # so dask-em's values are scikit-learn's float64 fit of the same rows, to float32's rounding.
    # The distance to scikit-learn's float32 fit is then that fit's own round-off after twenty
    # iterations, which depends on the BLAS kernel (2.9e-4 relative in one precision under
    # OpenBLAS's Sandybridge kernels, below 1e-4 under Haswell): measured here, as the floor.
    ref_arrays = fitted_arrays(ref)
    ref64 = fitted_arrays(quiet(theirs(random_state=model.restarts_[0]["seed"], **kw).fit, X32.astype(np.float64)))
    for name, value in fitted_arrays(model).items():
        close(value, ref64[name], name, rtol=1e-6)
        scale = max(1.0, float(np.abs(ref64[name]).max()))
        floor = float(np.abs(ref_arrays[name] - ref64[name]).max()) / scale
        close(value, ref_arrays[name], name, rtol=max(1e-4, 2 * floor))
    # The float32 attributes are the float64 fit of the same values, rounded once.
    wide = quiet(ours(random_state=0, **kw).fit, X32.astype(np.float64))
    for name in model._input_dtype_attributes:
        np.testing.assert_array_equal(getattr(model, name), np.asarray(getattr(wide, name)).astype(np.float32))


# -- reg_covar=0: a collapsed component ---------------------------------------------------


@pytest.mark.parametrize("cov_type", COV_TYPES)
@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_a_collapse_under_reg_covar_zero_as_scikit_learn(ours, theirs, cov_type):
    """Ten rows at two points, ten components: scikit-learn refuses it with ValueError for every
    covariance type of GaussianMixture; where its variational model fits it (diag, spherical: the
    prior keeps every covariance proper), dask-em fits the same numbers."""
    X = np.repeat(np.array([[0.0, 1.0], [3.0, 5.0]]), 5, axis=0)
    kw = dict(n_components=10, covariance_type=cov_type, reg_covar=0.0)
    try:
        ref = quiet(theirs(random_state=0, **kw).fit, X)
    except ValueError:
        ref = None
    if theirs is SkGM:
        assert ref is None
    if ref is None:
        with pytest.raises(ValueError, match="not positive definite"):
            quiet(ours(random_state=0, **kw).fit, X)
    else:
        model = quiet(ours(random_state=0, init_sample_size=10, **kw).fit, X)
        ref = quiet(theirs(random_state=model.restarts_[0]["seed"], **kw).fit, X)
        assert_same_model(model, ref, cov_type, rtol=1e-6)


@pytest.mark.parametrize("cov_type", ["diag", "spherical"])
def test_a_collapse_mid_fit_is_refused_and_reg_covar_keeps_it(rows, cov_type):
    """A component alone on 30 copies of one point: variance zero, refused at reg_covar=0; with
    reg_covar it sits on the point with variance reg_covar (a closed form)."""
    X = np.vstack([rows[:300], np.repeat(rows[:1] + 100.0, 30, axis=0)])
    with pytest.raises(ValueError, match="not positive definite"):
        quiet(dask_em.GaussianMixture(3, covariance_type=cov_type, reg_covar=0.0, random_state=0).fit, X)
    try:
        ref = quiet(SkGM(3, covariance_type=cov_type, reg_covar=0.0, random_state=0).fit, X)
    except ValueError:
        ref = None
    if cov_type == "diag":
        assert ref is None
    else:
        # scikit-learn takes its spherical variance from moments about zero, and the collapsed
        # component keeps their round-off (6e-12 here, at values near 120): it misses this collapse.
        assert ref.covariances_.min() < 1e-10
    gm = quiet(dask_em.GaussianMixture(3, covariance_type=cov_type, reg_covar=1e-6, random_state=0).fit, X)
    (alone,) = np.flatnonzero(np.isclose(gm.weights_, 30 / 330))
    np.testing.assert_allclose(gm.means_[alone], rows[0] + 100.0, rtol=1e-12)
    np.testing.assert_allclose(gm.covariances_[alone], 1e-6, rtol=1e-6)


# -- warm_start ---------------------------------------------------------------------------


def warm_sequence(ours, theirs, parts, **kw):
    """fit, fit, fit with warm_start=True on growing data, in both libraries from the same start."""
    model = ours(warm_start=True, random_state=0, **kw)
    fits = []
    ref = None
    for i, part in enumerate(parts):
        quiet(model.fit, part)
        if ref is None:
            ref = theirs(warm_start=True, random_state=model.restarts_[0]["seed"], **kw)
        quiet(ref.fit, np.asarray(part) if not isinstance(part, str) else zarr.open_array(part, mode="r")[...])
        fits.append((model.n_iter_, model.restarts_[0]["start"]))
        assert_same_model(model, ref, f"fit {i}")
    return model, ref, fits


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_warm_start_sequence_equals_scikit_learn(rows, cov_type):
    parts = [rows[:300], da.from_array(rows[:600], chunks=170), rows]
    model, ref, fits = warm_sequence(dask_em.GaussianMixture, SkGM, parts, n_components=3, covariance_type=cov_type)
    assert [start for _, start in fits] == ["kmeans", "warm_start", "warm_start"]
    assert len(model.restarts_) == 1


@pytest.mark.parametrize("prior_type", ["dirichlet_process", "dirichlet_distribution"])
@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_bayesian_warm_start_sequence_equals_scikit_learn(rows, cov_type, prior_type):
    """scikit-learn recomputes the data-dependent prior from each fit's rows; so does dask-em."""
    parts = [rows[:300], rows[:600], rows]
    model, ref, _ = warm_sequence(
        dask_em.BayesianGaussianMixture, SkBGM, parts, n_components=4, covariance_type=cov_type,
        weight_concentration_prior_type=prior_type, max_iter=40,
    )
    close(model.mean_prior_, rows.mean(0), "mean_prior_ from every row of the last fit")


def test_warm_start_on_a_zarr_store_appended_to(rows, tmp_path):
    path = str(tmp_path / "rows.zarr")
    store = zarr.create_array(path, shape=(300, 3), chunks=(100, 3), dtype="f8")
    store[:] = rows[:300]
    appended = []

    def grow(stop):
        store.resize((stop, 3))
        store[stop - 300 : stop] = rows[stop - 300 : stop]
        appended.append(stop)
        return path

    model = dask_em.GaussianMixture(3, warm_start=True, random_state=0)
    ref = None
    for stop in (300, 600, 900):
        source = path if stop == 300 else grow(stop)
        quiet(model.fit, source)
        ref = ref or SkGM(3, warm_start=True, random_state=model.restarts_[0]["seed"])
        quiet(ref.fit, rows[:stop])
        assert model.training_data_["shape"] == [stop, 3]
        assert_same_model(model, ref, f"{stop} rows")
    assert appended == [600, 900]


def test_warm_start_false_starts_afresh_and_partial_fit_is_a_different_start(rows):
    cold = quiet(dask_em.GaussianMixture(3, random_state=0).fit, rows[:300])
    quiet(cold.fit, rows)
    fresh = quiet(dask_em.GaussianMixture(3, random_state=0).fit, rows)
    assert_same_model(cold, fresh, "warm_start=False refits from the start")
    warm = quiet(dask_em.GaussianMixture(3, random_state=0, warm_start=True).fit, rows[:300])
    quiet(warm.fit, rows)
    assert warm.restarts_[0]["start"] == "warm_start"
    warm.partial_fit(rows[:100])  # partial_fit continues too, as one stepwise update, its own kind
    assert warm.restarts_[0]["start"] == "fit" and warm.n_iter_ == 1


def test_warm_start_after_a_dropped_component_continues_with_the_rest():
    """GaussianMixture drops an emptied component; a warm start goes on with the others."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 8.0])
    start = dict(weights_init=[0.4, 0.4, 0.2], means_init=[[0.0, 0.0], [8.0, 8.0], [500.0, 500.0]])
    gm = dask_em.GaussianMixture(3, warm_start=True, **start)
    with pytest.warns(UserWarning, match="dropped"):
        gm.fit(X)
    assert gm.n_components_ == 2
    quiet(gm.fit, X[::2])
    quiet(gm.fit, X)
    assert gm.n_components_ == 2 and gm.restarts_[0]["start"] == "warm_start"
    ref = SkGM(2, weights_init=gm.weights_, means_init=gm.means_, precisions_init=gm.precisions_).fit(X)
    close(gm.means_, ref.means_, "means_", rtol=1e-6)  # ours is already at the fixed point


def test_warm_start_refuses_other_features_or_components(rows):
    gm = quiet(dask_em.GaussianMixture(3, warm_start=True, random_state=0).fit, rows)
    with pytest.raises(ValueError, match="had 3 features; X has 2.*warm_start=False"):
        gm.fit(rows[:, :2])
    gm.set_params(n_components=4)
    with pytest.raises(ValueError, match=r"continues the last fit .*\(3, 'full', 'gaussian'\).*\(4, 'full'"):
        gm.fit(rows)


def test_a_warm_fit_resumed_from_its_checkpoint_ends_as_uninterrupted(rows, tmp_path):
    first = quiet(dask_em.GaussianMixture(3, warm_start=True, random_state=0).fit, rows[:300])
    whole = quiet(dask_em.GaussianMixture(3, warm_start=True, random_state=0).fit, rows[:300])
    quiet(whole.fit, rows)
    checkpoint = str(tmp_path / "warm.npz")
    first.set_params(max_iter=1)
    quiet(first.fit, rows, checkpoint=checkpoint)
    assert first.n_iter_ == 1 and first.restarts_[0]["start"] == "warm_start"
    # A new estimator resumes the warm restart (its first change measured from the last fit's bound).
    resumed = dask_em.GaussianMixture(3, warm_start=True, random_state=0)
    quiet(resumed.fit, rows, checkpoint=checkpoint, resume=True)
    assert_same_model(resumed, whole, "resumed", rtol=1e-12)


# -- verbose ------------------------------------------------------------------------------


def test_verbose_two_logs_every_verbose_interval_iterations_and_the_last(rows, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="dask_em"):
        gm = quiet(dask_em.GaussianMixture(3, verbose=2, verbose_interval=4, tol=1e-8, random_state=0).fit, rows)
    logged = [int(i) for i in re.findall(r"restart 0 iteration (\d+)", caplog.text)]
    assert gm.n_iter_ >= 5 and gm.n_iter_ % 4  # lines at 4, 8, ... and the last, off the interval
    assert logged == [i for i in range(1, gm.n_iter_ + 1) if i % 4 == 0 or i == gm.n_iter_]


# -- the model store ------------------------------------------------------------------------


@pytest.mark.parametrize("ours", [dask_em.GaussianMixture, dask_em.BayesianGaussianMixture])
def test_the_store_round_trips_the_parameters_and_a_warm_start(rows, tmp_path, ours):
    model = quiet(ours(n_components=3, warm_start=True, verbose_interval=3, tol=1e-4, max_iter=0, random_state=0).fit,
                  rows[:300].astype(np.float32))
    dask_em.save(model, tmp_path / "m.zarr")
    loaded = dask_em.load(tmp_path / "m.zarr")
    assert loaded.get_params() == model.get_params()
    for name in model._input_dtype_attributes:
        value = getattr(model, name)
        assert np.asarray(getattr(loaded, name)).dtype == np.asarray(value).dtype
        np.testing.assert_array_equal(getattr(loaded, name), value)
    # The loaded model continues as the saved one would.
    for m in (model, loaded):
        m.set_params(max_iter=100)
        quiet(m.fit, rows)
    assert loaded.restarts_[0]["start"] == "warm_start"
    assert_same_model(loaded, model, "after the store", rtol=0)


# -- the generated tables of docs/compatibility.md ------------------------------------------

# What differs, per scikit-learn parameter (the same for both estimators unless keyed by one).
DIFFERENCES = {
    "n_components": "none",
    "covariance_type": "none",
    "tol": (
        "none for plain EM (scikit-learn's rule: the bound's change per iteration below `tol`). With "
        "`accelerate=\"squarem\"` (and for `stopping=\"auto\"`), Aitken's estimate of the remaining gain "
        "must fall below `min(tol, 1/n_samples)` (1/n clipped to [1e-6, 1e-3]); `stopping=\"aitken\"` "
        "uses `tol` as given; `tol=None` is each rule's own default"
    ),
    "reg_covar": (
        "none; `reg_covar=0` with a component collapsed onto a point raises `ValueError` for every "
        "covariance type (a diagonal variance at round-off of its second moment reads as zero)"
    ),
    ("BayesianGaussianMixture", "reg_covar"): (
        "none; with `reg_covar=0` a fit raises `ValueError` where scikit-learn's does, and fits the "
        "same numbers where the prior keeps every covariance proper"
    ),
    "max_iter": "none (`0` returns the start); a SQUAREM or stepwise pass counts as one iteration",
    "n_init": (
        "restarts run side by side, sharing every read. Where the sample is every row and `random_state` is an int "
        "or a `RandomState`, the starts draw one after another from one stream, as scikit-learn's initialisations, "
        "so the same `random_state` gives scikit-learn's fit for any `n_init`; on a sample of the rows each start "
        "has its own seed (`SeedSequence.spawn`) and they run side by side too; `restarts_` reports the seeds"
    ),
    "init_params": (
        "same names (plus `\"hierarchical\"` for GaussianMixture), computed on a uniform sample of "
        "`init_sample_size` rows: every row up to 20,000 rows by default, so `restarts_[0][\"seed\"]` "
        "given to scikit-learn starts it at the same point"
    ),
    "weights_init": "none",
    "means_init": "none",
    "precisions_init": "none",
    "weight_concentration_prior_type": "none",
    "weight_concentration_prior": "none",
    "mean_precision_prior": "none",
    "mean_prior": "none (the default's mean of all rows comes from a pass shared with the start's reads)",
    "degrees_of_freedom_prior": "none",
    "covariance_prior": "none (the default's covariance of all rows comes from the same pass)",
    "random_state": (
        "any seed, `SeedSequence`, `Generator` or `RandomState`; it drives the sample, every restart's stream and "
        "`sample`. An int seeds the first restart's `RandomState`, and a `RandomState` is drawn from (and left "
        "advanced) by the starts, as by scikit-learn's initialisations: on a sample of every row, the same "
        "`random_state` gives scikit-learn's fit. `None` is numpy's global `RandomState`, as in scikit-learn: "
        "`np.random.seed` before a fit gives scikit-learn's fit, and the fit advances the global stream as its does"
    ),
    "warm_start": (
        "none: each `fit` is one restart from the last fit's parameters (fitted by `fit`, `partial_fit` or "
        "loaded from a model store), its first change measured from the last `lower_bound_`, the "
        "data-dependent prior recomputed from the new rows; on any input, a Zarr store appended to included"
    ),
    "verbose": (
        "`1` draws a progress bar per restart instead of printing; `2` adds one INFO line on the "
        "`dask_em` logger every `verbose_interval` iterations (never `print`)"
    ),
    "verbose_interval": "none (verbose=2's lines; the last iteration's is always logged)",
}

BEHAVIOURS = [
    ("`max_iter=0`", "the start's parameters, `n_iter_=0`, `lower_bound_=-inf`, no warning",
     "the same", "test_max_iter_zero_returns_the_start_as_scikit_learn"),
    ("float32 input", "GaussianMixture: float32 `weights_`, `means_`, `covariances_`, `precisions_`, "
     "`precisions_cholesky_`, `lower_bound_`, and float32 `predict_proba` and `score_samples` of float32 rows; "
     "BayesianGaussianMixture: float32 `mean_prior_` only",
     "the same dtypes; statistics and parameters inside stay float64, the attributes and outputs are rounded once",
     "test_float32_in_gives_scikit_learns_dtypes_and_values"),
    ("`reg_covar=0`, a collapsed component", "GaussianMixture: `ValueError` for every covariance type; "
     "BayesianGaussianMixture: `ValueError` where its prior leaves a covariance singular",
     "the same (and the same numbers where the variational fit succeeds)",
     "test_a_collapse_under_reg_covar_zero_as_scikit_learn"),
    ("`warm_start=True` on growing data", "one restart from the last fit", "the same numbers to 1e-8",
     "test_warm_start_sequence_equals_scikit_learn"),
    ("array-API arrays (CuPy, PyTorch, ...) under `array_api_dispatch=True`",
     "GaussianMixture: fitted arrays and the outputs of `predict`, `predict_proba`, `score_samples`, `sample` in "
     "the input's library, on its device; `lower_bound_` a 0-d array of it; BayesianGaussianMixture: refused",
     "the same arrays, and `sample_weight` and the `*_init` arrays taken on the device; `lower_bound_` a "
     "numpy float (`float()` of either is the same number); BayesianGaussianMixture takes them too",
     "tests/test_array_api.py"),
    ("empty component (`reg_covar>0`)", "kept, weight ~1e-15",
     "GaussianMixture drops a component whose mass is below 10 eps of a row, with a warning (`n_components_` says "
     "how many are left); one with more mass, however little, is kept as in scikit-learn",
     "tests/test_mixture.py"),
    ("fitted attributes set by hand (`gm.means_ = ...`, in place too, or on an estimator never fitted)",
     "inference, `sample` and a warm start read `weights_`, `means_`, `precisions_cholesky_` and `covariances_`",
     "GaussianMixture: the same (`covariances_` alone is enough, the Cholesky factors follow); "
     "BayesianGaussianMixture and the other families refuse changed attributes with an error",
     "tests/test_sklearn_compat.py"),
    ("scikit-learn's own tests of `sklearn.mixture`", "pass",
     "pass with the estimators imported from dask-em, but for seven that call scikit-learn's private methods, "
     "match a mislabelled message, expect a collapse to go undetected, expect k-means starts to be refused "
     "under the array API, or compare a float32 score to finer than float32 resolves (each named with its "
     "reason in the test)",
     "tests/test_sklearn_suite.py"),
]


def _cell(value) -> str:
    return f"`{value!r}`"


def compatibility_tables() -> str:
    """The generated part of docs/compatibility.md."""
    lines = []
    for ours, theirs in PAIRS:
        sk = inspect.signature(theirs).parameters
        here = inspect.signature(ours).parameters
        lines += [
            f"### {ours.__name__}",
            "",
            "| parameter | scikit-learn's default | dask-em's default | difference |",
            "| --- | --- | --- | --- |",
        ]
        for name, parameter in sk.items():
            difference = DIFFERENCES.get((ours.__name__, name), DIFFERENCES[name])
            lines.append(f"| `{name}` | {_cell(parameter.default)} | {_cell(here[name].default)} | {difference} |")
        own = [name for name in here if name not in sk and name != "self"]
        lines += ["", f"dask-em's own parameters, after scikit-learn's: {', '.join(f'`{n}`' for n in own)}.", ""]
    lines += [
        "### Behaviours",
        "",
        "| case | scikit-learn | dask-em | checked by |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {case} | {sk} | {here} | `{test}` |" for case, sk, here, test in BEHAVIOURS]
    return "\n".join(lines) + "\n"


BEGIN = "<!-- generated by tests/test_sklearn_params.py: do not edit below -->\n"
END = "<!-- end of the generated tables -->\n"


def _with_tables(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + BEGIN + compatibility_tables() + END + tail


def test_the_compatibility_tables_are_generated_from_the_installed_scikit_learn():
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"{DOC} lost its markers"
    assert text == _with_tables(text), f"{DOC} drifted: run `python tests/test_sklearn_params.py` to regenerate it"
    for _, _, _, test in BEHAVIOURS:
        assert test.startswith("tests/") or test in globals(), test
    names = {n for _, sk in PAIRS for n in inspect.signature(sk).parameters}
    assert {k for k in DIFFERENCES if isinstance(k, str)} == names


if __name__ == "__main__":
    DOC.write_text(_with_tables(DOC.read_text()))
    print(f"wrote {DOC}")
