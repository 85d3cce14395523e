"""The model store: bitwise round trip, no pickle, versions, interrupted writes."""

import pickle
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

import dask_em
from dask_em.store import ModelStoreError
from conftest import mixture

COV_TYPES = ["full", "tied", "diag", "spherical"]


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_round_trip_predicts_bitwise(cov_type, tmp_path, rng):
    X = mixture(rng, n=500, d=3, k=3)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = dask_em.GaussianMixture(3, covariance_type=cov_type, n_init=2, random_state=0).fit(X)
    dask_em.save(gm, tmp_path / "m.zarr")
    back = dask_em.load(tmp_path / "m.zarr")
    np.testing.assert_array_equal(back.predict_proba(X), gm.predict_proba(X))
    np.testing.assert_array_equal(back.score_samples(X), gm.score_samples(X))
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        np.testing.assert_array_equal(getattr(back, name), getattr(gm, name))
    assert back.get_params() == gm.get_params()
    assert back.lower_bounds_ == gm.lower_bounds_
    assert back.restarts_[1]["history"] == gm.restarts_[1]["history"]
    assert back.training_data_["shape"] == [500, 3]


def test_loading_runs_no_pickle(tmp_path, rng, monkeypatch):
    X = mixture(rng, n=200, d=2, k=2)[0]
    gm = dask_em.GaussianMixture(2, random_state=0, means_init=[[0, 0], [1, 1]]).fit(X)
    dask_em.save(gm, tmp_path / "m.zarr")

    def refuse(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    back = dask_em.load(tmp_path / "m.zarr")
    np.testing.assert_array_equal(back.means_init, [[0, 0], [1, 1]])
    files = [p.name for p in (tmp_path / "m.zarr").rglob("*") if p.is_file()]
    assert set(files) <= {"zarr.json", "0", "c"} | {f for f in files if f.isdigit()}


def test_feature_names_survive(tmp_path, rng):
    X = xr.DataArray(mixture(rng, n=200, d=2, k=2)[0], dims=("s", "f"), coords={"f": ["x", "y"]})
    gm = dask_em.GaussianMixture(2, random_state=0).fit(X)
    dask_em.save(gm, tmp_path / "m.zarr")
    np.testing.assert_array_equal(dask_em.load(tmp_path / "m.zarr").feature_names_in_, ["x", "y"])


def test_refusals(tmp_path, rng):
    gm = dask_em.GaussianMixture(2, random_state=0).fit(mixture(rng, n=200, d=2, k=2)[0])
    dask_em.save(gm, tmp_path / "m.zarr")
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        dask_em.save(gm, tmp_path / "m.zarr")
    dask_em.save(gm, tmp_path / "m.zarr", overwrite=True)

    with pytest.raises(ValueError, match="not fitted"):
        dask_em.save(dask_em.GaussianMixture(2), tmp_path / "x.zarr")
    with pytest.raises(ModelStoreError, match="not a dask-em model store: no Zarr group"):
        dask_em.load(tmp_path / "missing.zarr")

    # A Zarr group without our attributes (another tool's, or a save killed before its last write).
    zarr.open_group(tmp_path / "other.zarr", mode="w").create_array("means", data=np.zeros(3))
    with pytest.raises(ModelStoreError, match="Zarr group but not a dask-em model store"):
        dask_em.load(tmp_path / "other.zarr")

    group = zarr.open_group(tmp_path / "m.zarr", mode="r+")
    attrs = dict(group.attrs["dask_em"])
    attrs["format_version"] = 99
    attrs["library_version"] = "9.9.9"
    group.attrs["dask_em"] = attrs
    with pytest.raises(ModelStoreError, match="holds model format version 99, written by dask-em 9.9.9; this dask-em reads format version 2"):
        dask_em.load(tmp_path / "m.zarr")


@pytest.mark.parametrize("compute_dtype", [np.float32, np.dtype("float32"), "float32"])
def test_compute_dtype_of_any_spelling_is_stored_by_its_name(compute_dtype, tmp_path, rng):
    X = mixture(rng, n=300, d=2, k=2)[0]
    gm = dask_em.GaussianMixture(2, compute_dtype=compute_dtype, random_state=0).fit(X)
    dask_em.save(gm, tmp_path / "m.zarr")
    assert zarr.open_group(tmp_path / "m.zarr").attrs["dask_em"]["params"]["compute_dtype"] == "float32"
    assert dask_em.load(tmp_path / "m.zarr").compute_dtype == "float32"


def test_a_store_with_a_compute_dtype_spelt_another_way_loads(tmp_path, rng):
    """Stores written when any numpy spelling was taken ("f4") load with its name."""
    X = mixture(rng, n=300, d=2, k=2)[0]
    dask_em.save(dask_em.GaussianMixture(2, compute_dtype="float32", random_state=0).fit(X), tmp_path / "m.zarr")
    group = zarr.open_group(tmp_path / "m.zarr", mode="r+")
    record = dict(group.attrs["dask_em"])
    group.attrs["dask_em"] = {**record, "params": {**record["params"], "compute_dtype": "f4"}}
    assert dask_em.load(tmp_path / "m.zarr").compute_dtype == "float32"


def test_a_save_that_fails_midway_leaves_nothing_half_written(tmp_path, rng):
    """The arrays are written, then the attributes fail: nothing appears at the path, no temporary is left
    beside it, and a model it was to overwrite is still there."""
    X = mixture(rng, n=300, d=2, k=2)[0]
    good = dask_em.GaussianMixture(2, random_state=0).fit(X)
    bad = dask_em.GaussianMixture(2, random_state=1).fit(X)
    bad.restarts_[0]["note"] = object()  # not JSON: the group's attributes, written last, fail
    with pytest.raises(TypeError):
        dask_em.save(bad, tmp_path / "new.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    dask_em.save(good, tmp_path / "m.zarr")
    with pytest.raises(TypeError):
        dask_em.save(bad, tmp_path / "m.zarr", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr"]
    np.testing.assert_array_equal(dask_em.load(tmp_path / "m.zarr").means_, good.means_)


def test_an_output_that_appears_while_it_is_written_is_kept_and_the_temporary_removed(tmp_path):
    """Another writer's output at the path, made during the write: refused, theirs kept, no temporary left."""
    from dask_em.output import atomic_output

    path = str(tmp_path / "m.zarr")
    with pytest.raises(FileExistsError, match="appeared while writing"):
        with atomic_output(path, None, overwrite=False) as written:
            zarr.open_group(written, mode="w").attrs["mine"] = True
            zarr.open_group(path, mode="w").attrs["theirs"] = True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.zarr"]
    assert dict(zarr.open_group(path).attrs) == {"theirs": True}
