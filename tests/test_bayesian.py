"""BayesianGaussianMixture against scikit-learn's, from the same start.

A fair identical start: dask-em's restart 0 runs k-means with
``RandomState(seed)`` (``seed`` reported in ``restarts_[0]["seed"]``) on its
initialisation sample, which is every row when ``init_sample_size`` >= n, and
scikit-learn's ``BayesianGaussianMixture(random_state=seed)`` runs the same
``KMeans(n_init=1, random_state=RandomState(seed))`` on the same rows (ours
shifted by their mean, which k-means removes anyway). So both start from the
same k-means labels, with no private scikit-learn API; the equality of the
first lower bound checks that the starts agree.
"""

import warnings

import dask.array as da
import numpy as np
import pytest
import zarr
from sklearn.mixture import BayesianGaussianMixture as SkBGM
from sklearn.utils._param_validation import InvalidParameterError

import dask_em
from dask_em import bayesian

from conftest import mixture, assert_close

COV_TYPES = ["full", "tied", "diag", "spherical"]
PRIOR_TYPES = ["dirichlet_process", "dirichlet_distribution"]


def _fit_pair(X, data=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = dask_em.BayesianGaussianMixture(random_state=0, **kw).fit(X if data is None else data)
        ref = SkBGM(random_state=ours.restarts_[0]["seed"], **kw).fit(X)
    return ours, ref


def _close(a, b, what):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-8 * scale, err_msg=what)


@pytest.fixture(scope="module")
def data():
    X, _, _ = mixture(np.random.default_rng(7), n=500, d=3, k=3, spread=5.0, offset=40.0)
    return X


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_equals_scikit_learn_from_the_same_start(data, cov_type, prior_type):
    kw = dict(
        n_components=5, covariance_type=cov_type, weight_concentration_prior_type=prior_type,
        max_iter=25, tol=0.0,  # every iteration, whatever round-off does to a change near tol
    )
    ours, ref = _fit_pair(data, da.from_array(data, chunks=97), **kw)  # uneven chunks, offset data
    assert ours.n_iter_ == ref.n_iter_ == 25
    # scikit-learn's tied bound is a (1,) array per iteration; ravel both.
    _close(np.ravel(ours.lower_bounds_), np.ravel(ref.lower_bounds_), "lower_bounds_")
    _close(ours.lower_bound_, np.ravel(ref.lower_bound_)[0], "lower_bound_")
    for name in (
        "weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_",
        "mean_precision_", "degrees_of_freedom_", "mean_prior_", "covariance_prior_",
        "degrees_of_freedom_prior_", "mean_precision_prior_", "weight_concentration_prior_",
    ):
        _close(getattr(ours, name), getattr(ref, name), name)
    if prior_type == "dirichlet_process":
        assert isinstance(ours.weight_concentration_, tuple) and len(ours.weight_concentration_) == 2
        for a, b in zip(ours.weight_concentration_, ref.weight_concentration_):
            _close(a, b, "weight_concentration_")
    else:
        _close(ours.weight_concentration_, ref.weight_concentration_, "weight_concentration_")
    _close(ours.predict_proba(data), ref.predict_proba(data), "predict_proba")
    _close(ours.score_samples(data), ref.score_samples(data), "score_samples")
    assert ours.score(data) == pytest.approx(ref.score(data), rel=1e-10)
    np.testing.assert_array_equal(ours.predict(data), ref.predict(data))


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_the_bound_never_falls(data, cov_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = dask_em.BayesianGaussianMixture(
            6, covariance_type=cov_type, max_iter=60, tol=1e-10, random_state=1, init_params="random"
        ).fit(data)
    bounds = np.asarray(model.lower_bounds_)
    assert len(bounds) > 5
    assert (np.diff(bounds) >= -1e-9 * np.abs(bounds[1:])).all()


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_float32_compute_stays_within_its_tolerance(cov_type):
    """compute_dtype="float32" (as GaussianMixture's): the variational fixed point within 1e-4 of float64's.

    Fixed points, not stopping points: float64 converged to tol=1e-6 on the total bound
    (scikit-learn's, about -2.4e5 here: 4e-12 relative), float32 run at tol=0 for three
    times float64's iterations.
    """
    X, _, _ = mixture(np.random.default_rng(11), n=20_000, d=6, k=4, spread=4.0, offset=50.0)
    kw = dict(n_components=4, covariance_type=cov_type, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f64 = dask_em.BayesianGaussianMixture(tol=1e-6, max_iter=2000, **kw).fit(X)
        assert f64.converged_
        f32 = dask_em.BayesianGaussianMixture(compute_dtype="float32", tol=0, max_iter=3 * f64.n_iter_, **kw).fit(X)
    for name in ("weights_", "means_", "covariances_", "mean_precision_", "degrees_of_freedom_"):
        a, b = np.asarray(getattr(f32, name)), np.asarray(getattr(f64, name))
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), name
    assert abs(f32.lower_bound_ - f64.lower_bound_) <= 1e-4 * abs(f64.lower_bound_)
    assert (f32.predict(X) == f64.predict(X)).mean() >= 0.999


def test_float32_compute_is_refused_when_misspelt(data):
    with pytest.raises(InvalidParameterError, match=(
        r"The 'compute_dtype' parameter of BayesianGaussianMixture must be a str among \{'float64', 'float32'\}.* "
        "Got 'float16' instead."
    )):
        dask_em.BayesianGaussianMixture(2, compute_dtype="float16").fit(data)


@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_twelve_components_on_four_leave_four(prior_type):
    rng = np.random.default_rng(3)
    centers = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    X = np.vstack([c + rng.normal(size=(250, 2)) for c in centers])
    ours, ref = _fit_pair(X, n_components=12, weight_concentration_prior_type=prior_type, max_iter=300)
    assert ours.converged_ and ref.converged_ and ours.n_iter_ == ref.n_iter_
    assert ours.weights_.shape == (12,)  # superfluous components are kept, as in scikit-learn
    assert (ours.weights_ >= 1e-2).sum() == 4
    assert (ref.weights_ >= 1e-2).sum() == 4
    _close(ours.weights_, ref.weights_, "weights_")
    big = np.sort(ours.means_[ours.weights_ >= 1e-2], axis=0)
    np.testing.assert_allclose(big, np.sort(centers, axis=0), atol=0.3)


def test_data_priors_come_from_every_row_of_a_zarr_store(tmp_path, data):
    """A 50-row start sample, yet the priors are scikit-learn's on all 500 rows."""
    path = str(tmp_path / "x.zarr")
    zarr.create_array(path, shape=data.shape, chunks=(64, 3), dtype="f8")[...] = data
    for cov_type, expected in [
        ("full", np.cov(data.T)), ("tied", np.cov(data.T)),
        ("diag", data.var(0, ddof=1)), ("spherical", data.var(0, ddof=1).mean()),
    ]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = dask_em.BayesianGaussianMixture(
                3, covariance_type=cov_type, init_sample_size=50, max_iter=3, random_state=0
            ).fit(path)
        _close(model.mean_prior_, data.mean(0), "mean_prior_")
        _close(model.covariance_prior_, expected, "covariance_prior_")


def test_weighted_priors_are_frequency_weighted(data):
    w = np.random.default_rng(0).integers(0, 4, len(data)).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = dask_em.BayesianGaussianMixture(2, max_iter=2, random_state=0).fit(
            da.from_array(data, chunks=97), sample_weight=w
        )
    _close(model.mean_prior_, np.average(data, axis=0, weights=w), "mean_prior_")
    _close(model.covariance_prior_, np.cov(data.T, fweights=w.astype(int)), "covariance_prior_")


def test_given_priors_are_used_as_given(data):
    mean, cov = np.array([1.0, 2.0, 3.0]), np.diag([2.0, 3.0, 4.0])
    kw = dict(
        n_components=3, mean_prior=mean, covariance_prior=cov, mean_precision_prior=0.5,
        degrees_of_freedom_prior=4.5, weight_concentration_prior=0.01, max_iter=20, tol=0.0,
    )
    ours, ref = _fit_pair(data, **kw)
    _close(ours.mean_prior_, mean, "mean_prior_")
    for name in ("weights_", "means_", "covariances_", "degrees_of_freedom_"):
        _close(getattr(ours, name), getattr(ref, name), name)
    _close(ours.lower_bounds_, ref.lower_bounds_, "lower_bounds_")


def test_resume_from_a_checkpoint_continues_the_same_fit(tmp_path, data):
    kw = dict(n_components=4, covariance_type="diag", tol=1e-8, random_state=0)
    path = str(tmp_path / "fit.ckpt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        straight = dask_em.BayesianGaussianMixture(max_iter=30, **kw).fit(data)
        dask_em.BayesianGaussianMixture(max_iter=5, **kw).fit(data, checkpoint=path)
        resumed = dask_em.BayesianGaussianMixture(max_iter=30, **kw).fit(data, checkpoint=path, resume=True)
    assert resumed.n_iter_ == straight.n_iter_
    np.testing.assert_array_equal(resumed.lower_bounds_, straight.lower_bounds_)
    np.testing.assert_array_equal(resumed.means_, straight.means_)


def test_model_store_round_trip(tmp_path, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = dask_em.BayesianGaussianMixture(4, covariance_type="tied", max_iter=10, random_state=0).fit(data)
    dask_em.save(model, tmp_path / "m.zarr")
    loaded = dask_em.load(tmp_path / "m.zarr")
    assert isinstance(loaded, dask_em.BayesianGaussianMixture)
    np.testing.assert_array_equal(loaded.predict_proba(data), model.predict_proba(data))
    for name in ("weights_", "means_", "mean_prior_", "covariance_prior_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    for a, b in zip(loaded.weight_concentration_, model.weight_concentration_):
        np.testing.assert_array_equal(a, b)
    assert loaded.degrees_of_freedom_ == model.degrees_of_freedom_


def test_sample_draws_from_the_fitted_components(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = dask_em.BayesianGaussianMixture(3, max_iter=50, random_state=0).fit(data)
    X, labels = model.sample(4000)
    assert X.shape == (4000, 3) and labels.shape == (4000,)
    for k in np.unique(labels):
        np.testing.assert_allclose(X[labels == k].mean(0), model.means_[k], atol=0.5)


def test_elbo_function_against_scikit_learn_private_bound(data):
    """elbo() of scikit-learn's own fitted parameters equals its _compute_lower_bound."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = SkBGM(n_components=4, covariance_type="full", max_iter=5, random_state=0).fit(data)
    _, log_resp = ref._e_step(data)
    params = {
        "covariance_type": "full", "means": ref.means_, "mean_precision": ref.mean_precision_,
        "degrees_of_freedom": ref.degrees_of_freedom_, "precisions_cholesky": ref.precisions_cholesky_,
        "weight_concentration": np.stack(ref.weight_concentration_, axis=1),
        "weight_concentration_prior_type": "dirichlet_process",
    }
    entropy = float(np.sum(np.exp(log_resp) * log_resp))
    assert bayesian.elbo(entropy, params) == pytest.approx(ref._compute_lower_bound(log_resp, 0.0), rel=1e-12)
    params["weight_concentration_prior"] = ref.weight_concentration_prior_
    _close(bayesian.effective_log_weights(params) + 0.0,
           ref._estimate_log_weights() + ref._estimate_log_prob(np.zeros((1, 3)))[0]
           - _gauss_log_prob(np.zeros((1, 3)), ref)[0], "effective log weights")


def _gauss_log_prob(X, ref):
    from sklearn.mixture._gaussian_mixture import _estimate_log_gaussian_prob

    return _estimate_log_gaussian_prob(X, ref.means_, ref.precisions_cholesky_, ref.covariance_type)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"weight_concentration_prior_type": "dirichlet"}, (
            r"The 'weight_concentration_prior_type' parameter of BayesianGaussianMixture must be a str among "
            r"\{'dirichlet_process', 'dirichlet_distribution'\}. Got 'dirichlet' instead.")),
        ({"weight_concentration_prior": 0.0}, (
            r"The 'weight_concentration_prior' parameter of BayesianGaussianMixture must be None or a float in the "
            r"range \(0.0, inf\). Got 0.0 instead.")),
        ({"mean_precision_prior": -1.0}, r"'mean_precision_prior' parameter .* or a float in the range \(0.0, "),
        ({"weight_concentration_prior": np.inf}, r"'weight_concentration_prior' parameter .* Got inf instead."),
        ({"degrees_of_freedom_prior": 1.5}, "'degrees_of_freedom_prior' should be greater than 2, but got 1.500. It must exceed n_features - 1 = 2"),
        ({"mean_prior": [0.0, 1.0]}, r"mean_prior must be a finite array of shape \(3,\)"),
        ({"covariance_prior": np.eye(2)}, r"covariance_prior must have shape \(3, 3\)"),
        ({"covariance_prior": -np.eye(3)}, "covariance_prior must be symmetric positive definite"),
        ({"covariance_type": "diag", "covariance_prior": [1.0, 0.0, 1.0]}, "covariance_prior must be positive"),
        ({"covariance_type": "spherical", "covariance_prior": [1.0]}, (
            r"The 'covariance_prior' parameter of BayesianGaussianMixture must be a float > 0 for "
            r"covariance_type='spherical'. Got \[1.0\] instead.")),
    ],
)
def test_bad_priors_are_refused(data, kw, match):
    with pytest.raises(ValueError, match=match):
        dask_em.BayesianGaussianMixture(2, **kw).fit(data)


def test_on_a_distributed_cluster_it_fits_as_on_threads(data):
    from distributed import Client, LocalCluster

    kw = dict(n_components=3, covariance_type="full", max_iter=10, random_state=0)
    X = da.from_array(data, chunks=128)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = dask_em.BayesianGaussianMixture(**kw).fit(X)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster):
            remote = dask_em.BayesianGaussianMixture(**kw).fit(X)
    assert_close(remote.lower_bounds_, local.lower_bounds_, rtol=1e-12)
    assert_close(remote.means_, local.means_, rtol=1e-12)


def test_command_line_fits_the_bayesian_family(tmp_path):
    """`dask-em fit --family bayesian_gaussian` writes a model that loads and equals the library's fit."""
    from click.testing import CliRunner

    from dask_em.cli import main

    X = mixture(np.random.default_rng(3), n=600, d=2, k=3)[0]
    path = str(tmp_path / "x.zarr")
    zarr.create_array(path, shape=X.shape, chunks=(200, 2), dtype=X.dtype)[:] = X
    out = CliRunner().invoke(main, ["fit", path, "-o", str(tmp_path / "m.zarr"), "-k", "6", "--family",
                                    "bayesian_gaussian", "--covariance-type", "diag", "--seed", "0",
                                    "--weight-concentration-prior", "0.01", "-q"])
    assert out.exit_code == 0, out.output
    back = dask_em.load(str(tmp_path / "m.zarr"))
    ref = dask_em.BayesianGaussianMixture(6, covariance_type="diag", weight_concentration_prior=0.01,
                                          random_state=0).fit(path)
    assert type(back) is dask_em.BayesianGaussianMixture
    np.testing.assert_array_equal(back.weights_, ref.weights_)
    bad = CliRunner().invoke(main, ["fit", path, "-o", str(tmp_path / "n.zarr"), "--weight-concentration-prior", "0.1"])
    assert bad.exit_code == 2 and "applies to --family bayesian_gaussian" in bad.output
    # No information criteria, as scikit-learn's: absent to hasattr, and the error says what to use.
    assert not hasattr(ref, "bic") and not hasattr(ref, "aic") and hasattr(dask_em.GaussianMixture(), "bic")
    with pytest.raises(AttributeError, match="has no attribute 'bic': .*select_model"):
        ref.bic(X)
    with pytest.raises(ValueError, match="picks its own number of components"):
        dask_em.select_model(X, n_components=[1, 2], family="bayesian_gaussian")


def test_weights_plot_marks_the_active_components():
    import matplotlib

    matplotlib.use("Agg")
    import dask_em.plot

    X = mixture(np.random.default_rng(4), n=800, d=2, k=3)[0]
    model = dask_em.BayesianGaussianMixture(8, weight_concentration_prior=1e-3, random_state=0, max_iter=200).fit(X)
    ax = dask_em.plot.weights(model)
    active = int((model.weights_ >= 1e-2).sum())
    assert ax.get_title().startswith(f"{active} of 8 components")
    assert len(ax.patches) == 8


def test_float32_below_its_resolution_finishes_in_float64():
    """The variational fit at a tol float32's total bound cannot resolve: converged, no fall warned."""
    X, _, _ = mixture(np.random.default_rng(11), n=20_000, d=6, k=4, spread=4.0, offset=50.0)
    kw = dict(n_components=4, covariance_type="spherical", random_state=0, tol=1e-6, max_iter=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f64 = dask_em.BayesianGaussianMixture(**kw).fit(X)
        f32 = dask_em.BayesianGaussianMixture(compute_dtype="float32", **kw).fit(X)
    assert f32.converged_ and f32.n_iter_ <= f64.n_iter_ + 3
    assert f32.restarts_[0]["float64_from"] is not None and f32.restarts_[0]["bound_falls"] == 0
    assert_close(f32.means_, f64.means_, rtol=1e-6)
