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


def test_predict_to_s3_resumes_from_marked_chunks(s3_endpoint, tmp_path, monkeypatch):
    """`dask-em predict` onto an object store: chunks with a marker are kept, the rest written, then moved."""
    import zarr
    from click.testing import CliRunner

    from dask_em.cli import _model_digest, main
    from dask_em.output import _open_partial, _write_chunk

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("resume")
    X = mixture(np.random.default_rng(1), n=2000, d=3, k=3)[0]
    zarr.create_array("s3://resume/x.zarr", shape=X.shape, chunks=(500, 3), dtype="f8", storage_options=options)[:] = X
    model = dask_em.GaussianMixture(3, random_state=0).fit(X)
    saved = "s3://resume/m.zarr"  # the command's storage options apply to MODEL too
    dask_em.save(model, saved, storage_options=options)
    flags = ["--storage-option=key=testing", "--storage-option=secret=testing",
             f"--storage-option=client_kwargs.endpoint_url={s3_endpoint}"]
    out = "s3://resume/labels.zarr"
    # What an interrupted run leaves: the partial store, chunk 1 written and marked. Its value (7,
    # not a label of this 3-component model) shows whether the rerun kept it or computed it again.
    loaded = dask_em.load(saved, storage_options=options)
    labels = loaded.predict("s3://resume/x.zarr", storage_options=options, chunk_rows=500)
    identity = {"model": _model_digest(loaded), "input": "s3://resume/x.zarr",
                "variable": None, "what": "labels", "shape": [2000], "row_chunks": [500]}
    url = _open_partial(labels, out, options, identity)
    _write_chunk(np.full(500, 7), url, 1, 500, options)
    result = CliRunner().invoke(main, ["predict", saved, "s3://resume/x.zarr", "-o", out,
                                       "--chunk-rows", "500", *flags])
    assert result.exit_code == 0, result.output
    assert "(1 written before, kept)" in result.output
    written = zarr.open_array(out, mode="r", storage_options=options)[:]
    expected = model.predict(X)
    np.testing.assert_array_equal(written[500:1000], 7)  # kept, not recomputed
    np.testing.assert_array_equal(np.delete(written, np.s_[500:1000]), np.delete(expected, np.s_[500:1000]))
    assert not fs.exists("resume/labels.zarr.partial")
    assert not any(".dask-em-written" in p for p in fs.find("resume/labels.zarr"))


def test_outputs_written_whole_onto_s3(s3_endpoint, monkeypatch):
    """An output moved into place on an object store (no directory left behind to remove)."""
    import zarr
    from click.testing import CliRunner

    from dask_em.cli import main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = s3fs.S3FileSystem(**options)
    fs.mkdir("whole")
    result = CliRunner().invoke(main, ["generate", "s3://whole/g.zarr", "-n", "1000", "-d", "2", "-k", "2",
                                       "--chunk-rows", "500", "--storage-option=key=testing",
                                       "--storage-option=secret=testing",
                                       f"--storage-option=client_kwargs.endpoint_url={s3_endpoint}"])
    assert result.exit_code == 0, result.output
    assert zarr.open_array("s3://whole/g.zarr", mode="r", storage_options=options).shape == (1000, 2)
    assert [p for p in fs.ls("whole") if ".tmp-" in p] == []
