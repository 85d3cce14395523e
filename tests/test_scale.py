"""Out-of-core, for real: a store larger than the workers' memory, fitted without spilling."""

import os
import warnings

import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

import dask_em
from dask_em.datasets import make_mixture

pytestmark = pytest.mark.timeout(400)


def test_store_larger_than_worker_memory_fits_without_spilling(tmp_path):
    import psutil

    d, rows = 16, 65_536  # 8 MiB chunks
    n = 12 * 1024 * 1024 // 8 // d * 128  # 1.5 GiB of float64
    n = n // rows * rows
    x, _, spec = make_mixture(n, d, 4, chunk_rows=rows, seed=5)
    path = str(tmp_path / "big.zarr")
    da.to_zarr(x, path)
    store_bytes = n * d * 8
    limit = 500 * 2**20
    with LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=limit, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert store_bytes > 1.4 * 2 * limit  # the store is well beyond what the workers may hold
        pids = client.run(os.getpid)
        gm = dask_em.GaussianMixture(4, max_iter=2, tol=0, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(path, chunk_rows=rows)
        spilled = client.run(lambda dask_worker: dask_worker.data.spilled_total.disk)
        rss = {a: psutil.Process(pid).memory_info().rss for a, pid in pids.items()}
    assert set(spilled.values()) == {0}
    assert all(v < limit for v in rss.values()), rss
    assert gm.n_iter_ == 2 and np.isfinite(gm.lower_bound_)
    assert gm.training_data_["shape"] == [n, d]
