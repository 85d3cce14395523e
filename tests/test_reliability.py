"""Reliability: workers that die, storage that fails or lies, numerical extremes, hostile stores."""

import os
import sys
import warnings

import cloudpickle
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster, WorkerPlugin
from distributed.utils import key_split
from zarr.storage import LocalStore

import dask_em
from conftest import mixture, sklearn_start, assert_close

# The plugin and the store wrapper below travel to worker processes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class KillOnTask(WorkerPlugin):
    """Kills its worker process the moment a task with ``prefix`` starts executing.

    With ``marker``, only the first time in the whole cluster (a file records it);
    with ``chunk``, only for that row chunk's E-step, on every attempt.
    """

    def __init__(self, prefix, marker=None, chunk=None):
        self.prefix, self.marker, self.chunk = prefix, marker, chunk

    def transition(self, key, start, finish, **kwargs):
        if finish != "executing" or key_split(key) != self.prefix:
            return
        if self.chunk is not None and not (isinstance(key, tuple) and key[1] == self.chunk):
            return
        if self.marker is not None:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return
            os.close(fd)
        os._exit(1)  # as a machine that vanishes: no cleanup, no goodbye


def write_store(path, X, rows):
    zarr.create_array(path, shape=X.shape, chunks=(rows, X.shape[1]), dtype="f8")[:] = X
    return str(path)


def assert_bitwise(a, b):
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.lower_bounds_ == b.lower_bounds_


def fit(path, **kw):
    gm = dask_em.GaussianMixture(3, n_init=2, random_state=0, max_iter=15, tol=0, split_every=2, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gm.fit(path, chunk_rows=500)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X = mixture(np.random.default_rng(7), n=8000, d=3, k=3)[0]
    return write_store(tmp_path_factory.mktemp("rel") / "x.zarr", X, 500), X


@pytest.fixture(scope="module")
def reference(store):
    return fit(store[0])  # threads, nothing killed


@pytest.fixture
def three_workers():
    with LocalCluster(n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        yield client


# ---------------------------------------------------------------------------
# Worker loss
# ---------------------------------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("moment", ["em-init-sample", "em-estep", "em-combine-partial", "em-mstep"])
def test_worker_killed_mid_fit(moment, store, reference, three_workers, tmp_path):
    marker = str(tmp_path / "killed")
    three_workers.register_plugin(KillOnTask(moment, marker=marker), name="chaos")
    model = fit(store[0])
    assert os.path.exists(marker), "the worker was not killed"
    assert_bitwise(model, reference)  # the same model as the uninterrupted run, bitwise


@pytest.mark.timeout(180)
def test_worker_killed_while_predict_writes_zarr(store, reference, three_workers, tmp_path):
    import dask.array as da

    marker = str(tmp_path / "killed")
    three_workers.register_plugin(KillOnTask("store-map", marker=marker), name="chaos")
    labels = reference.predict(store[0], chunk_rows=500)
    da.to_zarr(labels, str(tmp_path / "labels.zarr"))
    assert os.path.exists(marker)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "labels.zarr")[:], reference.predict(store[1]))


@pytest.mark.timeout(180)
def test_chunk_that_kills_every_worker_is_named(store, tmp_path):
    import dask

    # The scheduler reads both settings when it starts. One task at a time per worker thread: a
    # chunk queued on the worker that dies would count that death too, and could be named first.
    settings = {"distributed.scheduler.allowed-failures": 1, "distributed.scheduler.worker-saturation": 1.0}
    with dask.config.set(settings), LocalCluster(n_workers=3, threads_per_worker=1, processes=True,
                                                 dashboard_address=None, host="127.0.0.1") as cluster, \
            Client(cluster) as client:
        client.register_plugin(KillOnTask("em-estep", chunk=5), name="chaos")
        with pytest.raises(RuntimeError, match=r"E-step of rows 2500-2999 \(chunk 5\) killed every worker"):
            fit(store[0])


# ---------------------------------------------------------------------------
# Storage that fails, transiently or for good, and storage that lies
# ---------------------------------------------------------------------------


class FlakyStore(LocalStore):
    """A real on-disk store whose chunk reads fail: every ``every``-th read (never twice running for one key: a
    transient failure, whatever order threads read in), or always for ``broken``."""

    def __init__(self, root, every=0, broken=None, **kw):
        super().__init__(root, **kw)
        self.every, self.broken, self.count, self.failed, self.failures = every, broken, 0, set(), 0

    async def get(self, key, prototype=None, byte_range=None):
        if key.startswith("c/"):
            self.count += 1
            if key == self.broken:
                raise OSError(f"simulated storage failure reading {key}")
            if self.every and self.count % self.every == 0 and key not in self.failed:
                self.failed.add(key)
                self.failures += 1
                raise OSError(f"simulated storage failure reading {key}")
            self.failed.discard(key)
        return await super().get(key, prototype, byte_range)

    def with_read_only(self, read_only=False):
        return FlakyStore(self.root, self.every, self.broken, read_only=read_only)


def test_transient_read_failures_are_retried(store, reference):
    flaky = FlakyStore(store[0].replace("x.zarr", "x.zarr"), every=3, read_only=True)
    model = fit(zarr.open_array(flaky, mode="r"))
    assert flaky.failures > 0
    assert_bitwise(model, reference)


def test_permanent_read_failure_names_rows_and_key(store):
    broken = FlakyStore(store[0], broken="c/4/0", read_only=True)
    with pytest.raises(OSError, match=r"reading rows 2000-2499 of .* failed after 4 attempt\(s\).*c/4/0"):
        fit(zarr.open_array(broken, mode="r"))


def test_corrupted_chunk_is_named(tmp_path, store):
    path = write_store(tmp_path / "c.zarr", store[1], 500)
    chunk = tmp_path / "c.zarr" / "c" / "7" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[10:200] = os.urandom(190)
    chunk.write_bytes(bytes(raw))
    with pytest.raises(OSError, match=r"reading rows 3500-3999 of .*c.zarr failed"):
        fit(path)


# ---------------------------------------------------------------------------
# Numerical extremes
# ---------------------------------------------------------------------------


# Not (1e-8, 1e8) together: float64 spacing at 1e8 is 1.5e-8, wider than the
# scaled data's spread, so no algorithm could see the clusters in such numbers.
@pytest.mark.parametrize("scale, shift", [(1e-8, 0.0), (1e8, 0.0), (1.0, 1e8), (1e-4, 1e4)])
@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_affine_transform_of_the_data(scale, shift, cov_type, rng):
    """EM on a*x + b equals EM on x, transformed back (reg_covar scaled with a^2)."""
    X = mixture(rng, n=2000, d=3, k=3)[0]
    start = sklearn_start(X, 3, cov_type)
    base = dask_em.GaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=15, **start).fit(X)
    moved_start = dict(start)
    moved_start["means_init"] = start["means_init"] * scale + shift
    moved_start["precisions_init"] = start["precisions_init"] / scale**2
    moved = dask_em.GaussianMixture(
        3, covariance_type=cov_type, tol=0, max_iter=15, reg_covar=1e-6 * scale**2, **moved_start
    ).fit(X * scale + shift)
    np.testing.assert_allclose((moved.means_ - shift) / scale, base.means_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(moved.covariances_ / scale**2, base.covariances_, rtol=1e-6, atol=1e-9)
    assert_close(moved.weights_, base.weights_, rtol=1e-6)


def test_float32_within_1e5_of_float64(rng):
    X = mixture(rng, n=3000, d=4, k=3)[0]
    start = sklearn_start(X, 3, "full")
    a = dask_em.GaussianMixture(3, tol=0, max_iter=20, **start).fit(X)
    b = dask_em.GaussianMixture(3, tol=0, max_iter=20, **start).fit(X.astype(np.float32))
    np.testing.assert_allclose(b.means_, a.means_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.covariances_, a.covariances_, rtol=1e-5, atol=1e-5)


def closed_form(groups, cov_type, reg_covar=1e-6):
    """Maximum-likelihood parameters when each group of rows belongs wholly to one component.

    numpy only: means, biased (co)variances plus reg_covar, weights by counts; ``tied``
    pools the within-group scatter over all rows, ``spherical`` averages the variances.
    """
    n = sum(len(g) for g in groups)
    d = groups[0].shape[1]
    means = np.array([g.mean(0) for g in groups])
    covs = np.array([np.cov(g.T, bias=True).reshape(d, d) for g in groups])
    weights = np.array([len(g) / n for g in groups])
    if cov_type == "full":
        cov = covs + reg_covar * np.eye(d)
    elif cov_type == "tied":
        cov = sum(len(g) * c for g, c in zip(groups, covs)) / n + reg_covar * np.eye(d)
    elif cov_type == "diag":
        cov = np.diagonal(covs, axis1=1, axis2=2) + reg_covar
    else:
        cov = np.diagonal(covs, axis1=1, axis2=2).mean(1) + reg_covar
    return weights, means, cov


def full_covariances(cov, cov_type, k, d):
    return {"full": lambda: cov, "tied": lambda: np.broadcast_to(cov, (k, d, d)),
            "diag": lambda: np.stack([np.diag(c) for c in cov]),
            "spherical": lambda: np.stack([c * np.eye(d) for c in cov])}[cov_type]()


def mixture_loglik(X, weights, means, cov, cov_type):
    """Mean log-likelihood of X under a Gaussian mixture, from scipy.stats."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    full = full_covariances(cov, cov_type, len(weights), X.shape[1])
    cols = [np.log(w) + multivariate_normal(m, c).logpdf(X) for w, m, c in zip(weights, means, full)]
    return logsumexp(np.stack(cols, 1), axis=1).mean()


def assert_matches_closed_form(model, X, groups, cov_type):
    from scipy.optimize import linear_sum_assignment

    weights, means, cov = closed_form(groups, cov_type)
    _, order = linear_sum_assignment(((means[:, None] - model.means_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(model.means_[order], means, rtol=1e-9, atol=1e-9)
    assert_close(model.weights_[order], weights, rtol=1e-9)
    # Collapsed components hold exactly reg_covar (1e-6): atol 1e-11 is 1% of it.
    np.testing.assert_allclose(model.covariances_ if cov_type == "tied" else model.covariances_[order],
                               cov, rtol=1e-6, atol=1e-11)
    assert model.score(X) == pytest.approx(mixture_loglik(X, weights, means, cov, cov_type), rel=1e-9)


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_mostly_duplicates_and_k_equal_to_distinct_points(cov_type, rng):
    points = rng.normal(size=(4, 2)) * 5
    noise = rng.normal(size=(20, 2))
    X = np.vstack([np.repeat(points, 500, axis=0), noise])  # 99% duplicates
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = dask_em.GaussianMixture(4, covariance_type=cov_type, random_state=0).fit(X)
        exact = dask_em.GaussianMixture(4, covariance_type=cov_type, random_state=0).fit(np.repeat(points, 10, axis=0))
    for model in (gm, exact):
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
            assert np.isfinite(getattr(model, name)).all()
        assert np.isfinite(model.lower_bound_)
    # K = distinct points: each component sits on its point, weight 1/4, covariance reg_covar * I,
    # and the mean log-likelihood is log(1/4) + log N(0; 0, 1e-6 I) = log(1/4) - log(2 pi 1e-6).
    exact_groups = [np.repeat(p[None], 10, axis=0) for p in points]
    assert_matches_closed_form(exact, np.repeat(points, 10, axis=0), exact_groups, cov_type)
    assert exact.score(points) == pytest.approx(np.log(0.25) - np.log(2 * np.pi * 1e-6), rel=1e-9)
    # With noise: one component takes all 20 noisy rows and the other three collapse onto
    # their points (a row 1 away has density ~exp(-1 / 2e-6) under a collapsed component).
    # Which point keeps the wide component depends on the start: it is the heaviest one.
    j = np.argmin(((points - gm.means_[np.argmax(gm.weights_)]) ** 2).sum(1))
    groups = [np.repeat(p[None], 500, axis=0) for p in points]
    groups[j] = np.vstack([groups[j], noise])
    assert_matches_closed_form(gm, X, groups, cov_type)


def test_collapse_mid_fit_is_reported_not_nan():
    """reg_covar=0 and a component that shrinks onto one point: the restart fails with the reason."""
    X = np.vstack([np.zeros((30, 2)), np.random.default_rng(0).normal(size=(300, 2)) + 6])
    start = {
        "weights_init": [0.1, 0.9],
        "means_init": [[0.0, 0.0], [6.0, 6.0]],
        "precisions_init": [np.eye(2), np.eye(2)],
    }
    with pytest.raises(ValueError, match="Every restart failed numerically.*not positive definite"):
        dask_em.GaussianMixture(2, reg_covar=0.0, **start).fit(X)
    gm = dask_em.GaussianMixture(2, **start).fit(X)  # the default reg_covar keeps it finite
    assert np.isfinite(gm.covariances_).all() and np.isfinite(gm.lower_bound_)
    # ... and right: the collapsed component is the point (0, 0) with covariance reg_covar * I,
    # the other the 300 normal rows' own mean and covariance.
    assert_matches_closed_form(gm, X, [X[:30], X[30:]], "full")


@pytest.mark.timeout(180)
def test_same_model_on_one_two_three_workers(store, reference):
    for n in (1, 2, 3):
        with LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster):
            assert_bitwise(fit(store[0]), reference)
    assert_bitwise(fit(store[0]), reference)  # and again, on threads


# ---------------------------------------------------------------------------
# Hostile model stores
# ---------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path, rng):
    gm = dask_em.GaussianMixture(2, random_state=0).fit(mixture(rng, n=200, d=2, k=2)[0])
    path = tmp_path / "m.zarr"
    dask_em.save(gm, path)
    return path


def tamper(path, edit):
    group = zarr.open_group(path, mode="r+")
    attrs = dict(group.attrs["dask_em"])
    edit(attrs, group)
    group.attrs["dask_em"] = attrs


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda a, g: a["params"].update(covariance_type="__import__('os').system('echo hi')"), "covariance_type"),
        (lambda a, g: a["params"].update(evil="x"), r"unknown parameters \['evil'\]"),
        (lambda a, g: a["fitted"].update(n_components=10**9), "must be ints in"),
        (lambda a, g: a["fitted"].update(n_components=3), r"weights has shape \(2,\).*expected \(3,\)"),
        (lambda a, g: g.create_array("big", shape=(10**12,), dtype="f8") and a.update(params="nope"), "not mappings"),
    ],
)
def test_hostile_model_store_is_refused(saved, edit, match):
    from dask_em.store import ModelStoreError

    tamper(saved, edit)
    with pytest.raises(ModelStoreError, match=match):
        dask_em.load(saved)


def test_nan_parameters_are_refused(saved):
    from dask_em.store import ModelStoreError

    zarr.open_group(saved, mode="r+")["params/means"][0, 0] = np.nan
    with pytest.raises(ModelStoreError, match="NaN or infinite parameters"):
        dask_em.load(saved)


def test_read_retries_zero_fails_on_the_first_error(store):
    flaky = FlakyStore(store[0], every=3, read_only=True)
    with pytest.raises(OSError, match=r"failed after 1 attempt\(s\)"):
        gm = dask_em.GaussianMixture(3, random_state=0, max_iter=3)
        gm.fit(zarr.open_array(flaky, mode="r"), chunk_rows=500, read_retries=0)
