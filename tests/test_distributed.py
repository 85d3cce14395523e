"""A real distributed cluster: worker processes on 127.0.0.1, a Zarr store on disk."""

import collections
import warnings

import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster, get_task_stream
from distributed.utils import key_split

import dask_em
from conftest import mixture

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        yield cluster


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(3)
    X = mixture(rng, n=3000, d=3, k=3)[0]
    path = tmp_path / "points.zarr"
    zarr.create_array(path, shape=X.shape, chunks=(250, 3), dtype="f8")[:] = X
    return str(path), X


def fit(path):
    gm = dask_em.GaussianMixture(3, n_init=2, random_state=0, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gm.fit(path, chunk_rows=250)


def test_cluster_fit_equals_threaded_fit(cluster, store):
    path, X = store
    threaded = fit(path)
    with Client(cluster) as client:
        with get_task_stream(client) as stream:
            on_cluster = fit(path)
            labels = on_cluster.predict(path, chunk_rows=250).compute()
        workers = {t["worker"] for t in stream.data}
    # Bitwise: same seed and chunking give the same model on any number of workers.
    np.testing.assert_array_equal(on_cluster.means_, threaded.means_)
    np.testing.assert_array_equal(on_cluster.covariances_, threaded.covariances_)
    assert on_cluster.lower_bound_ == threaded.lower_bound_
    np.testing.assert_array_equal(labels, threaded.predict(X))
    assert len(workers) == 2
    # The restarts' draws chained through the workers' processes (each from the state the one before left):
    # scikit-learn's fit with the same random_state and n_init.
    from sklearn.mixture import GaussianMixture as SkGM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = SkGM(3, n_init=2, random_state=0, max_iter=50).fit(X)
    np.testing.assert_allclose(on_cluster.means_, ref.means_, rtol=1e-8, atol=1e-10)
    assert on_cluster.n_iter_ == ref.n_iter_
    prefixes = collections.Counter(key_split(t["key"]) for t in stream.data)
    for name in ("em-init-sample", "em-init-draw", "em-init", "em-estep", "em-combine-aggregate", "em-mstep",
                 "em-predict"):
        assert prefixes[name] > 0, (name, prefixes)
    # 12 chunks read by the E-step in each round.
    rounds = max(r["n_iter"] for r in on_cluster.restarts_)
    assert prefixes["em-estep"] == 12 * rounds


def test_scheduler_address_from_environment(cluster, store, monkeypatch):
    """As on Kubernetes: no Client in the process, DASK_SCHEDULER_ADDRESS names one."""
    path, _ = store
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.scheduler_address)
    before = cluster.scheduler.task_prefixes.get("em-mstep")
    before = before.states.get("memory", 0) + sum(before.state_counts.values()) if before else 0
    fit(path)
    prefix = cluster.scheduler.task_prefixes.get("em-mstep")
    assert prefix is not None and sum(prefix.state_counts.values()) > before


def test_accelerated_cluster_fit_reaches_the_threaded_fixed_point(cluster, tmp_path):
    """SQUAREM on worker processes: the same extrapolations, so the same fixed point and pass count."""
    rng = np.random.default_rng(5)
    X = mixture(rng, n=1500, d=3, k=3, spread=1.5)[0]  # overlapping: the extrapolation has work to do
    path = str(tmp_path / "overlap.zarr")
    zarr.create_array(path, shape=X.shape, chunks=(250, 3), dtype="f8")[:] = X

    def accelerated():
        gm = dask_em.GaussianMixture(3, covariance_type="full", n_init=2, random_state=0, max_iter=300,
                                     tol=1e-8, accelerate="squarem")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gm.fit(path, chunk_rows=250)

    threaded = accelerated()
    with Client(cluster) as client:
        with get_task_stream(client) as stream:
            on_cluster = accelerated()
        workers = {t["worker"] for t in stream.data}
    assert len(workers) == 2
    assert any(r["acceleration"]["extrapolated"] > 0 for r in threaded.restarts_), threaded.restarts_
    assert on_cluster.n_passes_ == threaded.n_passes_ and on_cluster.n_iter_ == threaded.n_iter_
    assert [r["acceleration"] for r in on_cluster.restarts_] == [r["acceleration"] for r in threaded.restarts_]
    # Bitwise: the reduction tree is fixed by the chunking, not by where the tasks run.
    np.testing.assert_array_equal(on_cluster.means_, threaded.means_)
    np.testing.assert_array_equal(on_cluster.covariances_, threaded.covariances_)
    np.testing.assert_array_equal(on_cluster.weights_, threaded.weights_)
    assert on_cluster.lower_bound_ == threaded.lower_bound_
