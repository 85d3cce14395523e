"""GaussianMixture against scikit-learn, closed forms and its own invariants."""

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from scipy.optimize import linear_sum_assignment
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dask_em
from conftest import mixture, sklearn_start, assert_close

COV_TYPES = ["full", "tied", "diag", "spherical"]


def fit_quiet(model, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, **kw)


def assert_rel(a, b, rtol):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = np.maximum(np.abs(b), 1e-300)
    np.testing.assert_array_less(np.abs(a - b) / scale, rtol)


def as_input(kind, X, tmp_path, rows=97):
    if kind == "numpy":
        return X
    if kind == "dask":
        return da.from_array(X, chunks=(rows, -1))
    path = tmp_path / "x.zarr"
    z = zarr.create_array(path, shape=X.shape, chunks=(rows, X.shape[1]), dtype=X.dtype)
    z[:] = X
    return str(path)


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr"])
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_same_iterations_as_sklearn(cov_type, kind, blobs, tmp_path):
    X = blobs[0]
    start = sklearn_start(X, 3, cov_type)
    ref = fit_quiet(SkGaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=10, **start), X)
    ours = fit_quiet(
        dask_em.GaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=10, **start),
        as_input(kind, X, tmp_path),
    )
    assert ours.n_iter_ == ref.n_iter_ == 10
    assert_rel(ours.weights_, ref.weights_, 1e-8)
    assert_rel(ours.means_, ref.means_, 1e-8)
    assert_rel(ours.covariances_, ref.covariances_, 1e-8)
    assert_rel(ours.precisions_cholesky_, ref.precisions_cholesky_, 1e-8)
    assert_rel(ours.lower_bound_, ref.lower_bound_, 1e-8)
    # Inference on the fitted parameters, against sklearn's own.
    assert_rel(ours.score_samples(X), ref.score_samples(X), 1e-8)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-10)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    assert_rel(ours.bic(X), ref.bic(X), 1e-8)
    assert_rel(ours.aic(X), ref.aic(X), 1e-8)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_convergence_matches_sklearn(cov_type, blobs):
    """With tol > 0 both stop at the same iteration with the same bound."""
    X = blobs[0]
    start = sklearn_start(X, 3, cov_type, seed=3)
    ref = SkGaussianMixture(3, covariance_type=cov_type, tol=1e-6, max_iter=500, **start).fit(X)
    ours = dask_em.GaussianMixture(3, covariance_type=cov_type, tol=1e-6, max_iter=500, **start).fit(X)
    assert ours.converged_ and ref.converged_
    assert ours.n_iter_ == ref.n_iter_
    assert_rel(ours.lower_bound_, ref.lower_bound_, 1e-8)
    assert len(ours.lower_bounds_) == ours.n_iter_


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_chunk_invariance(cov_type, rng):
    X = mixture(rng, n=157, d=3, k=2)[0]
    start = sklearn_start(X, 2, cov_type)
    models = []
    for chunks in [157, 50, 64, 1, 23]:  # one chunk, uneven last chunks, one-row chunks
        gm = dask_em.GaussianMixture(2, covariance_type=cov_type, tol=0, max_iter=5, **start)
        models.append(fit_quiet(gm, da.from_array(X, chunks=(chunks, -1))))
    for gm in models[1:]:
        assert_rel(gm.means_, models[0].means_, 1e-10)
        assert_rel(gm.covariances_, models[0].covariances_, 1e-10)
        assert_rel(gm.weights_, models[0].weights_, 1e-10)
        assert_rel(gm.lower_bound_, models[0].lower_bound_, 1e-10)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_lower_bound_never_falls(cov_type, seed):
    rng = np.random.default_rng(seed)
    X = mixture(rng, n=400, d=2 + seed, k=4, spread=2.0)[0]  # overlapping: many iterations
    gm = fit_quiet(
        dask_em.GaussianMixture(4, covariance_type=cov_type, tol=0, max_iter=60, init_params="random", random_state=seed),
        da.from_array(X, chunks=(70, -1)),
    )
    bounds = np.array(gm.lower_bounds_)
    assert len(bounds) == 60
    steps = np.diff(bounds)
    assert (steps >= -1e-10 * np.abs(bounds[1:])).all(), steps.min()


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_recovers_true_means(cov_type, rng):
    X, labels, true_means = mixture(rng, n=3000, d=4, k=4, spread=8.0)
    gm = dask_em.GaussianMixture(4, covariance_type=cov_type, n_init=2, random_state=0)
    gm.fit(da.from_array(X, chunks=(500, -1)))
    cost = ((gm.means_[:, None] - true_means[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    # The sample mean of each true cluster is what EM can recover.
    empirical = np.stack([X[labels == j].mean(0) for j in range(4)])
    np.testing.assert_allclose(gm.means_[rows], empirical[cols], atol=0.15)
    assert gm.converged_


def test_shifted_data_same_covariances(rng):
    """A 1e6 offset changes no covariance beyond 1e-6 relative (centered statistics)."""
    X = mixture(rng, n=2000, d=3, k=3)[0]
    for cov_type in COV_TYPES:
        start = sklearn_start(X, 3, cov_type)
        shifted_start = dict(start, means_init=start["means_init"] + 1e6)
        a = fit_quiet(dask_em.GaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=20, **start), X)
        b = fit_quiet(dask_em.GaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=20, **shifted_start), X + 1e6)
        assert_rel(b.covariances_, a.covariances_, 1e-6)
        np.testing.assert_allclose(b.means_ - 1e6, a.means_, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float32_input_accumulates_in_float64(dtype, blobs):
    X = blobs[0]
    start = sklearn_start(X, 3, "full")
    ref = fit_quiet(SkGaussianMixture(3, tol=0, max_iter=5, **start), X.astype(dtype).astype(np.float64))
    ours = fit_quiet(dask_em.GaussianMixture(3, tol=0, max_iter=5, **start), da.from_array(X.astype(dtype), chunks=(100, -1)))
    assert ours.means_.dtype == ours.covariances_.dtype == dtype  # the input's, as scikit-learn's
    # Accumulated in float64: the float64 fit's covariances, rounded once to the input's dtype
    # (values within 1e-8 of each other round to float32 values at most one ulp, 6e-8, apart).
    assert_rel(ours.covariances_, ref.covariances_.astype(dtype), 1e-8 if dtype == np.float64 else 1.2e-7)
    # Inference reads the float64 parameters; its float32 answer (scikit-learn's dtype for float32 rows
    # and a float32 model) is the float64 computation rounded once: at most one ulp from it.
    Xd = X.astype(dtype)
    scores = ours.score_samples(Xd)
    assert scores.dtype == dtype
    assert_rel(scores, ref.score_samples(Xd.astype(np.float64)).astype(dtype), 1e-8 if dtype == np.float64 else 1.2e-7)


def test_restarts_best_wins_and_all_are_kept(rng):
    X = mixture(rng, n=800, d=2, k=5, spread=3.0)[0]
    # A Generator: scikit-learn's stream cannot be followed, so each restart draws from a seed of its own.
    gm = fit_quiet(dask_em.GaussianMixture(5, n_init=4, init_params="random_from_data",
                                           random_state=np.random.default_rng(1)), X)
    assert len(gm.restarts_) == 4
    bounds = [r["lower_bound"] for r in gm.restarts_]
    assert gm.lower_bound_ == max(bounds)
    assert gm.restarts_[gm.best_restart_]["lower_bound"] == gm.lower_bound_
    assert len({r["seed"] for r in gm.restarts_}) == 4
    for r in gm.restarts_:
        assert r["status"] == "ok" and r["n_iter"] == len(r["history"])
    assert len(set(np.round(bounds, 8))) > 1  # the starts really differ
    # Each restart alone, with its own seed stream, gives the same result: scikit-learn's
    # "random_from_data" start draws its K rows with RandomState(seed).choice, as ours does
    # (the sample is every row here), so one scikit-learn run per recorded seed is the reference.
    for r in gm.restarts_:
        ref = fit_quiet(SkGaussianMixture(5, init_params="random_from_data", random_state=r["seed"]), X)
        assert r["n_iter"] == ref.n_iter_
        assert r["lower_bound"] == pytest.approx(ref.lower_bound_, rel=1e-10)
        if r["restart"] == gm.best_restart_:
            assert_rel(gm.means_, ref.means_, 1e-8)
            assert_rel(gm.covariances_, ref.covariances_, 1e-8)


def test_same_seed_same_chunking_bitwise(rng):
    X = da.from_array(mixture(rng, n=900, d=3, k=3)[0], chunks=(128, -1))
    fits = []
    for workers in (1, 2, 4):
        with dask.config.set(num_workers=workers):
            fits.append(fit_quiet(dask_em.GaussianMixture(3, n_init=3, init_params="random", random_state=7), X))
    for gm in fits[1:]:
        np.testing.assert_array_equal(gm.means_, fits[0].means_)
        np.testing.assert_array_equal(gm.covariances_, fits[0].covariances_)
        assert gm.lower_bound_ == fits[0].lower_bound_
    other = fit_quiet(dask_em.GaussianMixture(3, n_init=3, init_params="random", random_state=8), X)
    # Another seed, other random responsibilities: every restart's first bound differs.
    for r, r0 in zip(other.restarts_, fits[0].restarts_):
        assert r["history"][0] != r0["history"][0]


@pytest.mark.parametrize("method", ["kmeans", "k-means++", "random", "random_from_data"])
def test_init_methods(method, rng):
    X, labels, true_means = mixture(rng, n=1500, d=2, k=3, spread=10.0)
    gm = dask_em.GaussianMixture(3, init_params=method, n_init=3, random_state=0, max_iter=300)
    gm.fit(da.from_array(X, chunks=(400, -1)))
    ref = SkGaussianMixture(3, init_params=method, n_init=3, random_state=0, max_iter=300).fit(X)
    # The same start method reaches as good an optimum as scikit-learn's (other
    # random streams, so up to a small tolerance).
    assert gm.lower_bound_ > ref.lower_bound_ - 0.01
    if method != "random":
        # "random" responsibilities put every mean at the data mean: EM (sklearn's
        # too) stalls within tol of that saddle, which is what the check above shows.
        cost = ((gm.means_[:, None] - true_means[None]) ** 2).sum(-1)
        r, c = linear_sum_assignment(cost)
        assert cost[r, c].max() < 0.5


def test_init_sample_is_a_sample(rng):
    """k-means runs on init_sample_size rows, and the result still recovers the clusters."""
    X, _, true_means = mixture(rng, n=5000, d=2, k=3, spread=10.0)
    gm = dask_em.GaussianMixture(3, init_sample_size=200, random_state=0).fit(da.from_array(X, chunks=(1000, -1)))
    cost = ((gm.means_[:, None] - true_means[None]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    assert cost[r, c].max() < 0.5


def test_sample_weight_equals_repeated_rows(rng):
    X = mixture(rng, n=300, d=2, k=2)[0]
    counts = rng.integers(0, 4, size=300)
    start = sklearn_start(X, 2, "full")
    weighted = fit_quiet(dask_em.GaussianMixture(2, tol=0, max_iter=8, **start), X, sample_weight=counts)
    repeated = np.repeat(X, counts, axis=0)
    ref = fit_quiet(SkGaussianMixture(2, tol=0, max_iter=8, **start), repeated)
    assert_rel(weighted.means_, ref.means_, 1e-8)
    assert_rel(weighted.covariances_, ref.covariances_, 1e-8)
    assert_rel(weighted.lower_bound_, ref.lower_bound_, 1e-8)
    # Dask weights chunked like X give the same model.
    dw = fit_quiet(
        dask_em.GaussianMixture(2, tol=0, max_iter=8, **start),
        da.from_array(X, chunks=(64, -1)),
        sample_weight=da.from_array(counts.astype(float), chunks=64),
    )
    assert_rel(dw.means_, weighted.means_, 1e-10)


def test_output_types_follow_input(blobs, tmp_path):
    X = blobs[0]
    gm = dask_em.GaussianMixture(3, random_state=0).fit(X)
    assert isinstance(gm.predict(X), np.ndarray)
    dX = da.from_array(X, chunks=(100, -1))
    labels = gm.predict(dX)
    assert isinstance(labels, da.Array) and labels.chunks == (dX.chunks[0],)
    proba = gm.predict_proba(dX)
    assert proba.chunks == (dX.chunks[0], (3,))
    np.testing.assert_allclose(proba.compute().sum(1), 1.0)
    np.testing.assert_array_equal(labels.compute(), gm.predict(X))
    np.testing.assert_allclose(gm.score_samples(dX).compute(), gm.score_samples(X))
    assert isinstance(gm.score(dX), float)

    samples = np.arange(len(X)) * 10
    xa = xr.DataArray(dX, dims=("time", "band"), coords={"time": samples, "band": ["a", "b", "c"]})
    gmx = dask_em.GaussianMixture(3, random_state=0).fit(xa)
    np.testing.assert_array_equal(gmx.feature_names_in_, ["a", "b", "c"])
    out = gmx.predict(xa)
    assert isinstance(out, xr.DataArray) and out.dims == ("time",)
    np.testing.assert_array_equal(out["time"].values, samples)
    assert isinstance(out.data, da.Array)
    assert gmx.predict_proba(xa).dims == ("time", "component")

    path = as_input("zarr", X, tmp_path)
    zlabels = gm.predict(path, chunk_rows=150)
    assert isinstance(zlabels, da.Array) and zlabels.chunks == ((150, 150, 150, 150),)


def full_covariances(gm):
    """(K, d, d) covariances of any covariance_type, written out in numpy."""
    k, d = gm.means_.shape
    cov = gm.covariances_
    return {"full": lambda: cov, "tied": lambda: np.broadcast_to(cov, (k, d, d)),
            "diag": lambda: np.stack([np.diag(c) for c in cov]),
            "spherical": lambda: cov[:, None, None] * np.eye(d)}[gm.covariance_type]()


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_sample(cov_type, blobs):
    """Sample moments within 5 standard errors of the model's (Gaussian sampling theory)."""
    X = blobs[0]
    gm = dask_em.GaussianMixture(3, covariance_type=cov_type, random_state=0).fit(X)
    n = 20000
    xs, ys = gm.sample(n)
    assert xs.shape == (n, 3) and ys.shape == (n,)
    # Label counts are multinomial: standard error sqrt(w (1 - w) / n), about 0.0033 here.
    se_w = np.sqrt(gm.weights_ * (1 - gm.weights_) / n)
    np.testing.assert_array_less(np.abs(np.bincount(ys, minlength=3) / n - gm.weights_), np.minimum(0.02, 5 * se_w))
    for k, cov in enumerate(full_covariances(gm)):
        rows = xs[ys == k]
        m = len(rows)
        # mean: se sqrt(S_ii / m); covariance entry: se sqrt((S_ii S_jj + S_ij^2) / m)
        se_mean = np.sqrt(np.diag(cov) / m)
        np.testing.assert_array_less(np.abs(rows.mean(0) - gm.means_[k]), np.minimum(0.1, 5 * se_mean))
        se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / m)
        np.testing.assert_array_less(np.abs(np.cov(rows.T) - cov), 5 * se_cov)
    again, _ = gm.sample(n)
    np.testing.assert_array_equal(again, xs)  # random_state=0 drives sample too


def test_sklearn_estimator_protocol():
    gm = dask_em.GaussianMixture(4, covariance_type="diag", n_init=2)
    assert gm.get_params()["n_components"] == 4
    c = clone(gm).set_params(n_components=5)
    assert c.n_components == 5 and gm.n_components == 4
    assert "GaussianMixture" in gm._repr_html_()


def test_not_converged_warns(blobs):
    with pytest.warns(ConvergenceWarning, match="Best performing initialization did not converge.*max_iter=2 iterations"):
        dask_em.GaussianMixture(3, max_iter=2, tol=1e-12, random_state=0).fit(blobs[0])


def test_fit_predict(blobs):
    X = blobs[0]
    gm = dask_em.GaussianMixture(3, random_state=0)
    labels = gm.fit_predict(da.from_array(X, chunks=(200, -1)))
    np.testing.assert_array_equal(labels.compute(), gm.predict(X))


class TestDegenerate:
    def test_duplicate_points(self, rng):
        points = rng.normal(size=(10, 2))
        X = np.repeat(points, 30, axis=0)
        gm = fit_quiet(dask_em.GaussianMixture(3, random_state=0), X)
        assert np.isfinite(gm.lower_bound_)
        assert all(np.linalg.eigvalsh(c).min() > 0 for c in gm.covariances_)
        # scikit-learn's k-means start draws from RandomState(seed) on the same rows as ours
        # (the sample is every row here): from the recorded seed it must reach the same model.
        ref = fit_quiet(SkGaussianMixture(3, random_state=gm.restarts_[0]["seed"]), X)
        assert gm.n_iter_ == ref.n_iter_
        assert gm.lower_bound_ == pytest.approx(ref.lower_bound_, rel=1e-10)
        assert_close(gm.weights_, ref.weights_, rtol=1e-10)
        np.testing.assert_allclose(gm.means_, ref.means_, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(gm.covariances_, ref.covariances_, rtol=1e-8, atol=1e-12)
        # Here one component holds one point's 30 copies alone: it sits on the point with
        # covariance reg_covar * I (1e-6), a closed form.
        (alone,) = np.flatnonzero(np.isclose(gm.weights_, 30 / 300))
        assert np.min(np.abs(points - gm.means_[alone]).max(1)) < 1e-12
        np.testing.assert_allclose(gm.covariances_[alone], 1e-6 * np.eye(2), rtol=1e-6, atol=1e-12)

    @pytest.mark.parametrize("cov_type", COV_TYPES)
    def test_constant_feature(self, cov_type, rng):
        X = mixture(rng, n=300, d=3, k=2)[0]
        X[:, 1] = 4.0
        gm = fit_quiet(dask_em.GaussianMixture(2, covariance_type=cov_type, random_state=0), X)
        assert np.isfinite(gm.lower_bound_)
        np.testing.assert_allclose(gm.means_[:, 1], 4.0)

    def test_more_components_than_distinct_points(self):
        X = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0]]), 20, axis=0)
        with pytest.warns(UserWarning, match=r"lost all their mass and were dropped.*3 of 5 components"):
            gm = fit_quiet(dask_em.GaussianMixture(5, random_state=0), X)
        assert gm.n_components_ == 3
        assert gm.predict_proba(X).shape == (60, 3)
        np.testing.assert_allclose(np.sort(gm.means_[:, 0]), [0.0, 5.0, 10.0], atol=1e-6)

    def test_component_emptied_during_em_is_dropped(self, rng):
        X = rng.normal(size=(200, 2))
        start = {
            "weights_init": np.array([0.5, 0.5, 0.0]),
            "means_init": np.array([[-1.0, 0.0], [1.0, 0.0], [50.0, 50.0]]),
            "precisions_init": np.stack([np.eye(2)] * 3),
        }
        with pytest.warns(UserWarning, match=r"\(1, 2\)"):
            gm = fit_quiet(dask_em.GaussianMixture(3, max_iter=10, **start), X)
        assert gm.n_components_ == 2

    def test_all_restarts_failing_raises(self):
        X = np.repeat(np.array([[0.0, 1.0], [3.0, 1.0]]), 10, axis=0)
        with pytest.raises(ValueError, match="^Fitting the mixture model failed because some components have ill-defined empirical covariance.*Every restart failed numerically.*not positive definite.*reg_covar"):
            fit_quiet(dask_em.GaussianMixture(2, reg_covar=0.0, n_init=2, random_state=0), X)
