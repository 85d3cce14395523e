"""The model store: a Zarr group of parameter arrays and JSON attributes.

No pickle anywhere: loading reads float arrays and JSON, never code. Layout::

    MODEL/                      zarr group, attrs["dask_em"] = {...} (see below)
      weights, means, covariances, precisions_cholesky, shift, lower_bounds
      init/weights_init, init/means_init, init/precisions_init   (when given)

``attrs["dask_em"]`` holds the format version, the library version, the family,
the constructor parameters, the scalar fitted attributes, the restarts'
histories and the training data's fingerprint. It is written last, in one
metadata update, so a store whose write was interrupted has no such attribute
and is refused as "not a model store".
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

FORMAT_VERSION = 1
_ARRAYS = ("weights", "means", "covariances", "precisions_cholesky")
_INIT_ARRAYS = ("weights_init", "means_init", "precisions_init")


class ModelStoreError(ValueError):
    """A path that is not a readable dask-em model store."""


def _json_safe(value: Any) -> Any:
    """Numbers, lists and dicts that JSON can hold (NaN and inf become None)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def fingerprint(prepared, X) -> dict:
    """What identifies the training data without reading it (``X`` as given to fit)."""
    data = prepared.data
    source = os.fspath(X) if isinstance(X, (str, os.PathLike)) else None
    return {
        "shape": list(data.shape),
        "dtype": str(data.dtype),
        "row_chunks": [int(data.chunks[0][0]), len(data.chunks[0])],
        "source": source,
    }


def save(model, path: str | os.PathLike, *, storage_options: dict | None = None, overwrite: bool = False) -> None:
    """Write a fitted model to a Zarr group at ``path`` (local path or fsspec URL)."""
    import zarr

    from . import __version__

    if not hasattr(model, "means_"):
        raise ValueError("the model is not fitted; call fit before save.")
    path = os.fspath(path)
    try:
        group = zarr.open_group(store=path, mode="w" if overwrite else "w-", storage_options=storage_options)
    except (FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
        raise FileExistsError(f"{path!r} exists; pass overwrite=True (--overwrite) to replace it.") from None
    for name in _ARRAYS:
        group.create_array(name, data=np.asarray(getattr(model, f"{name}_"), dtype=np.float64))
    group.create_array("shift", data=np.asarray(model._shift, dtype=np.float64))
    group.create_array("lower_bounds", data=np.asarray(model.lower_bounds_, dtype=np.float64))
    params = model.get_params()
    for name in _INIT_ARRAYS:
        if params.get(name) is not None:
            group.create_array(f"init/{name}", data=np.asarray(params[name], dtype=np.float64))
        params[name] = None
    if not isinstance(params.get("random_state"), (int, type(None))):
        params["random_state"] = None  # a Generator is not data; the seeds are in restarts
    attrs = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "family": "gaussian",
        "estimator": type(model).__name__,
        "params": params,
        "fitted": {
            "converged": model.converged_,
            "n_iter": model.n_iter_,
            "lower_bound": model.lower_bound_,
            "n_components": model.n_components_,
            "n_features_in": model.n_features_in_,
            "best_restart": model.best_restart_,
            "feature_names_in": list(map(str, getattr(model, "feature_names_in_", []))) or None,
        },
        "restarts": model.restarts_,
        "training_data": getattr(model, "training_data_", None),
    }
    group.attrs["dask_em"] = _json_safe(attrs)


def read_attrs(path: str | os.PathLike, storage_options: dict | None = None) -> tuple[Any, dict]:
    import zarr

    path = os.fspath(path)
    try:
        group = zarr.open_group(store=path, mode="r", storage_options=storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise ModelStoreError(f"{path!r} is not a dask-em model store: no Zarr group there ({type(exc).__name__}).") from None
    except Exception as exc:
        raise ModelStoreError(f"{path!r} is not a dask-em model store: {exc}") from None
    attrs = group.attrs.get("dask_em")
    if not isinstance(attrs, dict) or "format_version" not in attrs:
        raise ModelStoreError(
            f"{path!r} is a Zarr group but not a dask-em model store (no 'dask_em' attributes; "
            "an interrupted save leaves none). Write one with dask_em.save or `dask-em fit --output`."
        )
    version = attrs["format_version"]
    if version != FORMAT_VERSION:
        raise ModelStoreError(
            f"{path!r} holds model format version {version}, written by dask-em "
            f"{attrs.get('library_version')}; this dask-em reads format version {FORMAT_VERSION}. "
            "Refit, or load it with the dask-em version that wrote it."
        )
    return group, attrs


def _check_layout(path: str, group, attrs: dict) -> None:
    """Refuse a store whose attributes or arrays do not describe a model (before reading data)."""
    from . import gaussian
    from .mixture import GaussianMixture

    def bad(why: str) -> ModelStoreError:
        return ModelStoreError(f"{path!r} is not a valid dask-em model store: {why}.")

    params, fitted = attrs.get("params"), attrs.get("fitted")
    if not isinstance(params, dict) or not isinstance(fitted, dict):
        raise bad("its 'params' and 'fitted' attributes are missing or not mappings")
    allowed = set(GaussianMixture().get_params())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise bad(f"unknown parameters {unknown}")
    cov = params.get("covariance_type")
    if cov not in gaussian.COVARIANCE_TYPES:
        raise bad(f"covariance_type {cov!r} is not one of {gaussian.COVARIANCE_TYPES}")
    k, d = fitted.get("n_components"), fitted.get("n_features_in")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000 for v in (k, d)):
        raise bad(f"n_components {k!r} and n_features_in {d!r} must be ints in [1, 1e6]")
    expected = {
        "weights": (k,),
        "means": (k, d),
        "shift": (d,),
        "covariances": {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[cov],
    }
    expected["precisions_cholesky"] = expected["covariances"]
    for name, shape in expected.items():
        if name not in group:
            raise bad(f"the array {name!r} is missing")
        arr = group[name]
        if tuple(arr.shape) != shape or np.dtype(arr.dtype) != np.float64:
            raise bad(f"{name} has shape {tuple(arr.shape)} and dtype {arr.dtype}; expected {shape} float64")


def load(path: str | os.PathLike, *, storage_options: dict | None = None):
    """Read a model written by :func:`save`; it predicts bitwise as the saved one.

    Only float64 arrays and JSON are read; a store whose attributes or array
    shapes do not describe a model is refused before any array is read.
    """
    from .mixture import GaussianMixture

    group, attrs = read_attrs(path, storage_options)
    if attrs.get("family") != "gaussian":
        raise ModelStoreError(f"{os.fspath(path)!r} holds a {attrs.get('family')!r} model; this dask-em loads 'gaussian'.")
    _check_layout(os.fspath(path), group, attrs)
    params = dict(attrs["params"])
    for name in _INIT_ARRAYS:
        if f"init/{name}" in group:
            params[name] = group[f"init/{name}"][...]
    model = GaussianMixture(**params)
    for name in _ARRAYS:
        setattr(model, f"{name}_", group[name][...])
    if not all(np.isfinite(getattr(model, f"{name}_")).all() for name in _ARRAYS):
        raise ModelStoreError(f"{os.fspath(path)!r} holds NaN or infinite parameters; it is not a usable model.")
    from . import gaussian

    model.precisions_ = gaussian.precisions_from_cholesky(model.precisions_cholesky_, model.covariance_type)
    model._shift = group["shift"][...]
    model.lower_bounds_ = group["lower_bounds"][...].tolist()
    fitted = attrs["fitted"]
    model.converged_ = fitted["converged"]
    model.n_iter_ = fitted["n_iter"]
    model.lower_bound_ = fitted["lower_bound"]
    model.n_components_ = fitted["n_components"]
    model.n_features_in_ = fitted["n_features_in"]
    model.best_restart_ = fitted["best_restart"]
    if fitted.get("feature_names_in"):
        model.feature_names_in_ = np.asarray(fitted["feature_names_in"], dtype=object)
    model.restarts_ = attrs["restarts"]
    model.training_data_ = attrs.get("training_data")
    return model
