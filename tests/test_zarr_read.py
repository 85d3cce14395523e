"""dask-em's own reads of local Zarr stores: the same rows as zarr's, or zarr reads them."""

import pickle
import warnings

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

import dask_em
from dask_em import io
from dask_em._zarr_read import ENV_SWITCH, chunk_files

ROWS = 100

# name -> (zarr.create_array keywords, the codec dask-em's reader decodes)
READ = {
    "v3 zstd (zarr's default)": ({}, "zstd"),
    "v3 uncompressed": ({"compressors": None}, "none"),
    "v3 blosc lz4 shuffle": ({"compressors": BloscCodec(cname="lz4", shuffle="shuffle")}, "blosc"),
    "v3 blosc zstd bitshuffle": ({"compressors": BloscCodec(cname="zstd", shuffle="bitshuffle")}, "blosc"),
    "v3 zstd with checksum": ({"compressors": ZstdCodec(level=5, checksum=True)}, "zstd"),
    "v3 '.' keys": ({"chunk_key_encoding": {"name": "default", "separator": "."}}, "zstd"),
    "v3 v2-style keys": ({"chunk_key_encoding": {"name": "v2", "separator": "."}}, "zstd"),
    "v2 zstd": ({"zarr_format": 2}, "zstd"),
    "v2 blosc": ({"zarr_format": 2, "compressors": numcodecs.Blosc()}, "blosc"),
    "v2 uncompressed": ({"zarr_format": 2, "compressors": None}, "none"),
    "v2 '/' keys": ({"zarr_format": 2, "chunk_key_encoding": {"name": "v2", "separator": "/"}}, "zstd"),
}


def table(rng, dtype, n=1037, d=3):
    X = (rng.standard_normal((n, d)) * 40).astype(dtype)
    X[3 * ROWS : 4 * ROWS] = 0  # a chunk of fill values: zarr writes no file for it
    return X


def store(path, X, **kw):
    z = zarr.create_array(path, shape=X.shape, chunks=(ROWS, X.shape[1]), dtype=X.dtype, **kw)
    z[:] = X
    return zarr.open_array(path, mode="r")


@pytest.mark.parametrize("layout", sorted(READ))
@pytest.mark.parametrize("dtype", ["f8", "f4", "i2", "bool"])
def test_reads_what_zarr_reads(tmp_path, rng, layout, dtype):
    kw, codec = READ[layout]
    X = table(rng, dtype)
    arr = store(tmp_path / "x.zarr", X, **kw)
    files = chunk_files(arr)
    assert files is not None and files.codec == codec
    assert pickle.loads(pickle.dumps(files)) == files  # it travels in the graph
    for chunk_rows in (None, ROWS, 3 * ROWS, 250, 37):  # whole store chunks, several, and parts of them
        got = io.open_zarr(tmp_path / "x.zarr", chunk_rows=chunk_rows).data.compute(scheduler="sync")
        assert got.dtype == arr.dtype
        np.testing.assert_array_equal(got, X)
        np.testing.assert_array_equal(got, arr[:])


@pytest.mark.parametrize("fill", [0.0, 7.5, np.nan])
def test_chunks_never_written_hold_the_fill_value(tmp_path, rng, fill):
    X = rng.standard_normal((530, 4))
    X[200:300] = fill
    z = zarr.create_array(tmp_path / "x.zarr", shape=X.shape, chunks=(ROWS, 4), dtype="f8", fill_value=fill)
    z[:] = X
    assert not (tmp_path / "x.zarr" / "c" / "2" / "0").exists()
    assert chunk_files(zarr.open_array(tmp_path / "x.zarr", mode="r")) is not None
    for chunk_rows in (ROWS, 150):
        got = io.open_zarr(tmp_path / "x.zarr", chunk_rows=chunk_rows).data.compute(scheduler="sync")
        np.testing.assert_array_equal(got, X)


def test_an_array_of_a_group(tmp_path, rng):
    X = rng.standard_normal((420, 3))
    group = zarr.open_group(tmp_path / "g.zarr", mode="w")
    group.create_array("data/x", shape=X.shape, chunks=(ROWS, 3), dtype="f8")[:] = X
    arr = zarr.open_group(tmp_path / "g.zarr", mode="r")["data/x"]
    assert chunk_files(arr) is not None
    np.testing.assert_array_equal(io.as_dask_array(arr).data.compute(scheduler="sync"), X)


ZARR_READS = {
    "sharded": {"shards": (2 * ROWS, 3)},
    "gzip": {"compressors": GzipCodec()},
    "v2 with a filter": {"zarr_format": 2, "filters": [numcodecs.Delta(dtype="f8")]},
    "v2 Fortran order": {"zarr_format": 2, "order": "F"},
    "v2 zlib": {"zarr_format": 2, "compressors": numcodecs.Zlib()},
}


@pytest.mark.parametrize("layout", sorted(ZARR_READS))
def test_other_layouts_are_read_by_zarr(tmp_path, rng, layout):
    X = table(rng, "f8")
    arr = store(tmp_path / "x.zarr", X, **ZARR_READS[layout])
    assert chunk_files(arr) is None
    got = io.open_zarr(tmp_path / "x.zarr", chunk_rows=250).data.compute(scheduler="sync")
    np.testing.assert_array_equal(got, arr[:])  # zarr's own rows (a Delta filter rounds float64)


def test_a_file_url(tmp_path, rng):
    X = rng.standard_normal((420, 3))
    store(tmp_path / "x.zarr", X)
    arr = zarr.open_array(f"file://{tmp_path / 'x.zarr'}", mode="r")
    assert chunk_files(arr) == chunk_files(zarr.open_array(tmp_path / "x.zarr", mode="r"))
    np.testing.assert_array_equal(io.open_zarr(f"file://{tmp_path / 'x.zarr'}").data.compute(scheduler="sync"), X)


class CountingStore(zarr.storage.LocalStore):
    """A store that reads its chunks its own way: dask-em must leave them to it."""

    reads = 0

    async def get(self, key, prototype=None, byte_range=None):
        CountingStore.reads += key.startswith("c/")
        return await super().get(key, prototype, byte_range)


def test_other_stores_and_shapes_are_read_by_zarr(tmp_path, rng, monkeypatch):
    X = rng.standard_normal((300, 4))
    by_columns = zarr.create_array(tmp_path / "cols.zarr", shape=X.shape, chunks=(ROWS, 2), dtype="f8")
    by_columns[:] = X
    big_endian = zarr.create_array(tmp_path / "be.zarr", shape=X.shape, chunks=(ROWS, 4), dtype=">f8", zarr_format=2)
    big_endian[:] = X
    in_memory = zarr.create_array(zarr.storage.MemoryStore(), shape=X.shape, chunks=(ROWS, 4), dtype="f8")
    in_memory[:] = X
    store(tmp_path / "x.zarr", X)
    subclass = zarr.open_array(CountingStore(tmp_path / "x.zarr", read_only=True), mode="r")
    for arr in (by_columns, big_endian, in_memory, subclass):
        assert chunk_files(arr) is None
        np.testing.assert_array_equal(io.as_dask_array(arr).data.compute(scheduler="sync"), X)
    assert CountingStore.reads == 3
    plain = zarr.open_array(tmp_path / "x.zarr", mode="r")
    assert chunk_files(plain) is not None
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert chunk_files(plain) is None


def read_all(path, **kw):
    return io.open_zarr(path, chunk_rows=ROWS, read_retries=0, **kw).data.compute(scheduler="sync")


def test_a_truncated_chunk_is_an_error_naming_its_rows(tmp_path, rng):
    store(tmp_path / "x.zarr", rng.standard_normal((500, 3)))
    chunk = tmp_path / "x.zarr" / "c" / "2" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-40])
    with pytest.raises(OSError, match=r"reading rows 200-299 of .*x.zarr failed"):
        read_all(tmp_path / "x.zarr")


@pytest.mark.parametrize("kw", [{}, {"compressors": None}, {"compressors": BloscCodec()}],
                         ids=["zstd", "none", "blosc"])
def test_a_chunk_of_another_shape_is_an_error_naming_its_rows(tmp_path, rng, kw):
    """A chunk file of the right codec whose decoded size does not fit the chunk: refused before it is decoded."""
    store(tmp_path / "x.zarr", rng.standard_normal((500, 3)), **kw)
    other = zarr.create_array(tmp_path / "y.zarr", shape=(500, 3), chunks=(ROWS - 1, 3), dtype="f8", **kw)
    other[:] = rng.standard_normal((500, 3))
    (tmp_path / "x.zarr" / "c" / "1" / "0").write_bytes((tmp_path / "y.zarr" / "c" / "1" / "0").read_bytes())
    with pytest.raises(OSError, match=r"reading rows 100-199 of .*x.zarr failed.*(decodes to|holds) 2376 bytes"):
        read_all(tmp_path / "x.zarr")


def test_a_fit_reads_the_same_either_way(tmp_path, rng, monkeypatch):
    from conftest import mixture

    X = mixture(rng, n=2400, d=3, k=3)[0]
    store(tmp_path / "x.zarr", X)

    def fit():
        gm = dask_em.GaussianMixture(3, n_init=2, random_state=0, max_iter=10, tol=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gm.fit(str(tmp_path / "x.zarr"), chunk_rows=600)

    ours = fit()
    monkeypatch.setenv(ENV_SWITCH, "0")
    theirs = fit()
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(theirs, name))
    assert ours.lower_bounds_ == theirs.lower_bounds_


def test_a_zstd_frame_that_states_no_size(tmp_path, rng):
    """A Zstandard frame without its content size (what streaming encoders write) is decoded and checked."""
    X = rng.standard_normal((4, 3))
    store(tmp_path / "x.zarr", X)  # one chunk (of ROWS rows, 4 of them written)
    chunk = tmp_path / "x.zarr" / "c" / "0" / "0"
    raw = chunk.read_bytes()
    descriptor = raw[4]
    single, dict_flag, size_flag = (descriptor >> 5) & 1, descriptor & 3, descriptor >> 6
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    size = (1 if single else 0, 2, 4, 8)[size_flag]
    # No size, no single segment: a window descriptor of 8 KiB (the chunk holds 2,400 bytes) in its place.
    unsized = raw[:4] + bytes([descriptor & 0b111, 0x18]) + raw[5 + (0 if single else 1) : at] + raw[at + size :]
    assert np.array_equal(np.frombuffer(numcodecs.Zstd().decode(unsized), "f8").reshape(-1, 3)[:4], X)
    chunk.write_bytes(unsized)
    arr = zarr.open_array(tmp_path / "x.zarr", mode="r")
    assert chunk_files(arr) is not None
    np.testing.assert_array_equal(read_all(tmp_path / "x.zarr"), X)
