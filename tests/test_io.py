"""Every input kind, opened lazily with whole rows per chunk; bad input refused up front."""

import re

import dask.array as da
from dask.callbacks import Callback
import numpy as np
import pytest
import xarray as xr
import zarr

import dask_em
from dask_em.io import as_dask_array
from conftest import assert_close


class _RaiseOnCompute(Callback):
    """Fails any local dask compute, like flox's raise_if_dask_computes."""

    def _start(self, dsk):
        raise AssertionError("a dask compute ran during validation")


@pytest.fixture
def no_compute():
    with _RaiseOnCompute():
        yield


@pytest.fixture
def X(rng):
    return rng.normal(size=(500, 4))


def write(path, X, rows=64):
    z = zarr.create_array(path, shape=X.shape, chunks=(rows, X.shape[1]), dtype=X.dtype)
    z[:] = X
    return z


def n_tasks(arr: da.Array) -> int:
    return len(dict(arr.__dask_graph__()))


def test_numpy_and_dask_pass_through(X, no_compute):
    p = as_dask_array(X, chunk_rows=128)
    assert p.kind == "numpy" and p.data.chunks == ((128, 128, 128, 116), (4,))
    d = da.from_array(X, chunks=(100, -1))
    assert as_dask_array(d).data is d


def test_zarr_path_opened_with_row_chunks(X, tmp_path):
    write(tmp_path / "x.zarr", X, rows=50)
    with _RaiseOnCompute():
        p = as_dask_array(str(tmp_path / "x.zarr"), chunk_rows=200)
    assert p.kind == "zarr"
    assert p.data.chunks == ((200, 200, 100), (4,))
    # chunks=(rows, -1) at open: one task per chunk (plus the array node), no rechunk layers.
    assert n_tasks(p.data) <= p.data.numblocks[0] + 1
    np.testing.assert_array_equal(p.data.compute(scheduler="threads"), X)


def test_zarr_default_chunks_are_multiples_of_the_store(X, tmp_path):
    write(tmp_path / "x.zarr", X, rows=50)
    p = as_dask_array(tmp_path / "x.zarr")
    assert p.data.chunks == ((500,), (4,))  # 500 rows fit one default chunk
    # Enough rows for several chunks (the default is at most max(4096, n / (2 cores)) rows):
    # every dask chunk but the last spans whole store chunks of 300 rows.
    big = np.random.default_rng(0).normal(size=(20_000, 4))
    write(tmp_path / "big.zarr", big, rows=300)
    q = as_dask_array(tmp_path / "big.zarr")
    rows = q.data.chunks[0]
    assert len(rows) > 1 and sum(rows) == 20_000
    assert all(r % 300 == 0 for r in rows[:-1]), rows


def test_file_url_memory_url_and_zarr_array(X, tmp_path):
    write(tmp_path / "x.zarr", X)
    via_url = as_dask_array(f"file://{tmp_path}/x.zarr").data
    np.testing.assert_array_equal(via_url.compute(scheduler="threads"), X)

    z = zarr.create_array("memory://dask-em-test/x.zarr", shape=X.shape, chunks=(100, 4), dtype="f8")
    z[:] = X
    mem = as_dask_array("memory://dask-em-test/x.zarr").data
    np.testing.assert_array_equal(mem.compute(scheduler="threads"), X)

    arr = zarr.open_array(tmp_path / "x.zarr", mode="r")
    np.testing.assert_array_equal(as_dask_array(arr).data.compute(scheduler="threads"), X)


def test_xarray_dataset_in_zarr_needs_variable(X, tmp_path):
    ds = xr.Dataset(
        {"points": (("sample", "feature"), X), "other": (("sample",), X[:, 0])},
        coords={"feature": ["a", "b", "c", "d"]},
    )
    ds.to_zarr(tmp_path / "ds.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(ValueError, match=r"is a Zarr group, not an array.*variable=.*points"):
        as_dask_array(str(tmp_path / "ds.zarr"))
    p = as_dask_array(str(tmp_path / "ds.zarr"), variable="points", chunk_rows=128)
    assert p.kind == "xarray" and p.data.chunks[0][0] == 128 and p.data.numblocks[1] == 1
    np.testing.assert_array_equal(p.feature_names, ["a", "b", "c", "d"])
    gm = dask_em.GaussianMixture(2, random_state=0).fit(str(tmp_path / "ds.zarr"), variable="points")
    np.testing.assert_array_equal(gm.feature_names_in_, ["a", "b", "c", "d"])
    with pytest.raises(KeyError, match="'nope' not found.*points"):
        as_dask_array(str(tmp_path / "ds.zarr"), variable="nope")


def test_xarray_dataset_in_memory(X):
    ds = xr.Dataset({"points": (("sample", "feature"), X)})
    assert as_dask_array(ds).kind == "xarray"  # a single variable needs no name
    ds["more"] = ds["points"] * 2
    with pytest.raises(ValueError, match=r"Dataset with variables \['more', 'points'\]"):
        as_dask_array(ds)
    assert as_dask_array(ds, variable="more").data.shape == X.shape


def test_fit_from_every_kind_gives_one_model(X, tmp_path):
    write(tmp_path / "x.zarr", X, rows=100)
    kinds = {
        "numpy": X,
        "dask": da.from_array(X, chunks=(100, -1)),
        "xarray": xr.DataArray(da.from_array(X, chunks=(100, -1)), dims=("s", "f")),
        "zarr.Array": zarr.open_array(tmp_path / "x.zarr", mode="r"),
        "path": str(tmp_path / "x.zarr"),
    }
    kw = dict(n_components=2, random_state=0, max_iter=5, tol=0)
    start = dask_em.GaussianMixture(**kw).fit(X)
    init = dict(weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_)
    models = {k: dask_em.GaussianMixture(**kw, **init).fit(v, chunk_rows=100) for k, v in kinds.items()}
    for name, gm in models.items():
        assert_close(gm.means_, models["numpy"].means_, rtol=1e-10, err_msg=name)


# --------------------------------------------------------------------------
# Bad input: an error that names what was received and how to fix it,
# raised before any data are read.
# --------------------------------------------------------------------------

BAD_X = [
    (np.zeros(10), ValueError, r"must be 2-D .* received 1-D shape \(10,\): X.reshape\(-1, 1\)"),
    (np.zeros((4, 3, 2)), ValueError, r"received 3-D shape \(4, 3, 2\)"),
    (np.zeros((0, 3)), ValueError, r"X is empty: received shape \(0, 3\)"),
    (np.zeros((5, 0)), ValueError, r"X has no features: received shape \(5, 0\)"),
    (np.array([["a", "b"], ["c", "d"]]), TypeError, r"must hold real numbers .* dtype <U1"),
    # An object array of numbers is read as numbers (as scikit-learn does); one holding anything else is refused.
    (np.array([[{"a": 1}, 1.0], [2.0, 3.0]], dtype=object), TypeError, r"dtype object: convert it"),
    (np.zeros((4, 2), dtype=complex), TypeError, r"complex numbers"),
    ({"a": 1}, TypeError, r"must be a numpy array, dask array, .* received builtins.dict"),
    (da.zeros((10, 4), chunks=(5, 2)), ValueError, r"chunked along the feature axis .* X.rechunk\(\{1: -1\}\)"),
    (xr.DataArray(np.zeros((2, 3, 4)), dims=("a", "b", "c")), ValueError, r"2-D DataArray .* dims \('a', 'b', 'c'\)"),
]


@pytest.mark.parametrize("X, exc, match", BAD_X, ids=[m[:20] for _, _, m in BAD_X])
def test_bad_x(X, exc, match, no_compute):
    with pytest.raises(exc, match=match):
        dask_em.GaussianMixture(1).fit(X)


def test_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Zarr array or group at"):
        dask_em.GaussianMixture(1).fit(str(tmp_path / "nope.zarr"))


def test_fewer_rows_than_components(no_compute):
    with pytest.raises(ValueError, match="Expected n_samples >= n_components, but X has 3 rows and n_components=4"):
        dask_em.GaussianMixture(4).fit(da.zeros((3, 2), chunks=(2, -1)))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_named_by_chunk_rows(value, rng, tmp_path):
    X = rng.normal(size=(1000, 3))
    X[734, 1] = value
    write(tmp_path / "x.zarr", X, rows=100)
    # Outside the init sample: caught by the first E-step, with the chunk's rows.
    with pytest.raises(ValueError, match=r"NaN or infinity in rows 700-799 \(chunk 7\); the first is row 734"):
        dask_em.GaussianMixture(2, init_sample_size=5, random_state=0).fit(str(tmp_path / "x.zarr"), chunk_rows=100)
    # Inside the init sample: caught while it is drawn.
    with pytest.raises(ValueError, match=r"NaN or infinity in rows 700-799; the first found is row 734"):
        dask_em.GaussianMixture(2, random_state=0).fit(str(tmp_path / "x.zarr"), chunk_rows=100)


@pytest.mark.parametrize(
    "weights, match",
    [
        (np.full(10, -1.0), r"finite and non-negative; received -1.0 at row 0"),
        (np.r_[np.ones(9), np.nan], r"received nan at row 9"),
        (np.zeros(10), r"sums to zero"),
        (np.ones(7), r"shape \(10,\) to match X; received \(7,\)"),
    ],
)
def test_bad_sample_weight(weights, match, no_compute):
    X = da.zeros((10, 2), chunks=(5, -1))
    with pytest.raises(ValueError, match=match):
        dask_em.GaussianMixture(1).fit(X, sample_weight=weights)


def test_dask_sample_weight_checked_where_the_start_samples_it(rng):
    """A bad weight among the start's sampled rows is refused there, named as the E-step names it (it reached the
    start as a numerical failure: 'every restart failed numerically ... not positive definite')."""
    from dask_em.gaussian import GaussianFamily
    from dask_em.starts import sample_graph

    X = da.from_array(rng.normal(size=(100, 2)), chunks=(50, -1))
    w = np.ones(100)
    w[55] = -2
    _, sampled = sample_graph(X, da.from_array(w, chunks=50), np.array([3, 55, 70]), GaussianFamily())
    with pytest.raises(ValueError, match=r"non-negative; received -2.0 at row 5 \+ 50 \(chunk 1\)"):
        sampled.compute(scheduler="sync")
    _, sampled = sample_graph(X, da.from_array(w, chunks=50), np.array([3, 54, 70]), GaussianFamily())
    np.testing.assert_array_equal(sampled.compute(scheduler="sync"), [1.0, 1.0, 1.0])
    # random_state=26 draws row 55 into the start's sample of 3 rows (0 does not): both fits are refused alike.
    for seed in (26, 0):
        with pytest.raises(ValueError, match=r"non-negative; received -2.0 at row 5 \+ 50 \(chunk 1\)"):
            dask_em.GaussianMixture(1, init_sample_size=3, random_state=seed).fit(
                X, sample_weight=da.from_array(w, chunks=50))


def test_dask_sample_weight_checked_in_the_e_step(rng):
    X = rng.normal(size=(100, 2))
    w = np.ones(100)
    w[55] = -2
    # random_state=0's start samples no bad row: the E-step finds it.
    with pytest.raises(ValueError, match=r"non-negative; received -2.0 at row 5 \+ 50 \(chunk 1\)"):
        dask_em.GaussianMixture(1, init_sample_size=3, random_state=0).fit(
            da.from_array(X, chunks=(50, -1)), sample_weight=da.from_array(w, chunks=50)
        )
    with pytest.raises(ValueError, match=r"chunked like the rows of X.*rechunk\(X.chunks\[0\]\)"):
        dask_em.GaussianMixture(1).fit(da.from_array(X, chunks=(50, -1)), sample_weight=da.from_array(w, chunks=30))


def refused(name: str, allowed: str, got: str) -> str:
    """scikit-learn's InvalidParameterError sentence, as a pattern (``allowed`` a pattern itself)."""
    return rf"The '{name}' parameter of GaussianMixture must be {allowed}\. Got {re.escape(got)} instead\."


BAD_PARAMS = [
    ({"n_components": 0}, refused("n_components", r"an int in the range \[1, inf\)", "0")),
    ({"n_components": 2.5}, refused("n_components", r"an int in the range \[1, inf\)", "2.5")),
    ({"covariance_type": "ful"}, refused("covariance_type", r"a str among \{'full', 'tied', 'diag', 'spherical', 'EII', .*'VVV'\}", "'ful'")),
    ({"tol": -1.0}, refused("tol", r"a float in the range \[0.0, inf\) or None", "-1.0")),
    ({"tol": float("nan")}, refused("tol", r"a float in the range \[0.0, inf\) or None", "nan")),
    ({"reg_covar": -1e-6}, refused("reg_covar", r"a float in the range \[0.0, inf\)", "-1e-06")),
    ({"max_iter": -1}, refused("max_iter", r"an int in the range \[0, inf\)", "-1")),
    ({"verbose_interval": 0}, refused("verbose_interval", r"an int in the range \[1, inf\)", "0")),
    ({"warm_start": "yes"}, refused("warm_start", r"an instance of 'bool' or an instance of 'numpy.bool_?'", "'yes'")),
    ({"n_init": 0}, refused("n_init", r"an int in the range \[1, inf\)", "0")),
    ({"init_params": "kmeans++"}, refused("init_params", r"a str among \{'kmeans', .*\}", "'kmeans++'")),
    ({"init_sample_size": 0}, refused("init_sample_size", r"an int in the range \[1, inf\) or None", "0")),
    ({"split_every": 1}, refused("split_every", r"an int in the range \[2, inf\) or None", "1")),
    ({"verbose": -1}, refused("verbose", r"an int in the range \[0, inf\), an instance of 'bool' .*", "-1")),
    ({"random_state": "seed"}, refused("random_state", r"an int in the range \[0, inf\), .*Generator' or None", "'seed'")),
    ({"weights_init": [0.5, 0.5]}, r"'weights' should have the shape of \(3,\), but got \(2,\): weights_init takes one"),
    ({"weights_init": [1.5, 0.6, 0.1]}, r"'weights' should be in the range \[0, 1\], but got min value 0.10000, max value 1.5"),
    ({"weights_init": [0.5, 0.6, 0.1]}, r"'weights' should be normalized, but got sum\(weights\) = 1.20000: divide"),
    ({"means_init": np.zeros((3, 5))}, r"'means' should have the shape of \(3, 2\), but got \(3, 5\): means_init takes"),
    ({"precisions_init": np.zeros((3, 2))}, r"'full precision' should have the shape of \(3, 2, 2\), but got \(3, 2\)"),
    ({"precisions_init": np.stack([np.eye(2), -np.eye(2), np.eye(2)])}, r"'full precision' should be symmetric, positive-definite, but precisions_init\[1\] is not"),
    ({"covariance_type": "diag", "precisions_init": -np.ones((3, 2))}, r"'diag precision' should be positive, but precisions_init holds 6 value\(s\) <= 0"),
]


@pytest.mark.parametrize("params, match", BAD_PARAMS, ids=[m[:25] for _, m in BAD_PARAMS])
def test_bad_constructor_parameters(params, match, no_compute):
    kw = {"n_components": 3, **params}
    with pytest.raises(ValueError, match=match):
        dask_em.GaussianMixture(**kw).fit(da.zeros((10, 2), chunks=(5, -1)))


def test_predict_checks_feature_count(rng):
    gm = dask_em.GaussianMixture(2, random_state=0).fit(rng.normal(size=(50, 3)))
    with pytest.raises(ValueError, match="X has 4 features, but GaussianMixture is expecting 3 features as input. Pass the columns"):
        gm.predict(rng.normal(size=(5, 4)))


def test_predict_before_fit():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        dask_em.GaussianMixture(2).predict(np.zeros((3, 2)))
