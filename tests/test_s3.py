"""A remote store through fsspec: a real S3 protocol server (moto) on 127.0.0.1."""

import warnings

import numpy as np
import pytest

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

import dask_em  # noqa: E402
from conftest import mixture, assert_close  # noqa: E402


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_fit_and_predict_from_s3(s3_endpoint, tmp_path, monkeypatch):
    import zarr

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("points")
    X = mixture(np.random.default_rng(0), n=2000, d=3, k=3)[0]
    z = zarr.create_array(
        "s3://points/x.zarr", shape=X.shape, chunks=(250, 3), dtype="f8", storage_options=options
    )
    z[:] = X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        remote = dask_em.GaussianMixture(3, random_state=0).fit("s3://points/x.zarr", storage_options=options)
        local = dask_em.GaussianMixture(3, random_state=0).fit(X, chunk_rows=2000)
    assert_close(remote.means_, local.means_, rtol=1e-10)
    labels = remote.predict("s3://points/x.zarr", storage_options=options)
    np.testing.assert_array_equal(labels.compute(), local.predict(X))
    with pytest.raises(FileNotFoundError, match="no Zarr array or group at 's3://points/missing.zarr'"):
        dask_em.GaussianMixture(3).fit("s3://points/missing.zarr", storage_options=options)
