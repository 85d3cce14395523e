"""The model store: a Zarr group of parameter arrays and JSON attributes.

No pickle anywhere: loading reads numeric arrays and JSON, never code. Layout::

    MODEL/                      zarr group, attrs["dask_em"] = {...} (see below)
      params/weights, params/<the family's arrays>   (internal parameters)
      context                   (the family's data context, e.g. the Gaussian shift)
      lower_bounds
      init/<name>               (array-valued constructor parameters, when given)

``attrs["dask_em"]`` holds the format version, the library version, the
estimator and family, the constructor parameters, the scalar fitted
attributes, the restarts' histories and the training data's fingerprint. It
is written last, in one metadata update, so a store whose write was
interrupted has no such attribute and is refused as "not a model store".

A :class:`~dask_em.Mixture` of a family defined outside dask-em is saved
with the family's class path and fields for the record; loading it needs the
family object (``load(path, family=MyFamily())``): a store never names code
to import.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from ._fitted import FittedState, restore_fitted
from ._json import json_safe
from .gaussian_mixture import compute_dtype_name
from ._version import __version__
from .output import atomic_output, exists
from .registry import estimator_class

FORMAT_VERSION = 2


class ModelStoreError(ValueError):
    """A path that is not a readable dask-em model store."""


def _family_record(family) -> dict:
    cls = type(family)
    fields = dataclasses.asdict(family) if dataclasses.is_dataclass(family) else {}
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "name": family.name, "fields": json_safe(fields)}


def save(model, path: str | os.PathLike, *, storage_options: dict | None = None, overwrite: bool = False) -> None:
    """Write a fitted model to a Zarr group at ``path`` (local path or fsspec URL).

    The group holds float64 parameter arrays and JSON attributes (format and
    library versions, family, parameters, fitted attributes, restart histories,
    the training data's shape, chunks and source); no pickle. It is written
    beside ``path`` and moved into place when complete: a save that fails
    leaves nothing at ``path``, and a model it overwrites stays until the new
    one is complete. On a local disk the move is a rename; on an object store
    the objects are moved with the root ``zarr.json`` last, so a move cut short
    leaves nothing that opens as a model store.

    Parameters
    ----------
    model : fitted estimator
        Any fitted dask-em estimator.
    path : str or PathLike
        Where to write the group.
    storage_options : dict, optional
        fsspec options for a remote store.
    overwrite : bool, default=False
        Replace an existing group at ``path`` (else it is refused).

    Returns
    -------
    None
    """
    import zarr

    if not hasattr(model, "weights_"):
        raise ValueError("the model is not fitted; call fit before save.")
    if not hasattr(model, "restarts_"):
        how = (" max_iter=0 with weights_init, means_init and precisions_init gives a fitted model holding exactly "
               "those parameters." if "precisions_init" in model.get_params() else "")
        raise ValueError(
            f"this {type(model).__name__}'s parameters were set by hand, and the model store keeps fitted models "
            f"(with their iterations and bounds). Fit it first.{how}"
        )
    state = model.fitted_state()
    context = state.context
    if context is not None and not isinstance(context, np.ndarray):
        raise TypeError(
            f"the family's context is a {type(context).__name__}; the model store holds a numpy "
            "array or None. Return an array from Family.context."
        )
    path = os.fspath(path)
    if not overwrite and exists(path, storage_options):
        raise FileExistsError(f"{path!r} exists; pass overwrite=True (--overwrite) to replace it.")
    # Written beside the path and moved into place whole: a write that fails leaves nothing at the path (and an
    # overwritten model in place).
    with atomic_output(path, storage_options, overwrite) as written:
        _write(zarr.open_group(store=written, mode="w", storage_options=storage_options), model, state, context)


def _write(group, model, state, context) -> None:
    """The model store's arrays and attributes, into ``group``."""
    shapes, values = {}, {}
    for name, value in state.params.items():
        if isinstance(value, np.ndarray):
            group.create_array(f"params/{name}", data=value)
            shapes[name] = list(value.shape)
        else:
            values[name] = value
    if context is not None:
        group.create_array("context", data=context)
    group.create_array("lower_bounds", data=np.asarray(model.lower_bounds_, dtype=np.float64))
    params = model.get_params()
    for name, value in list(params.items()):
        if isinstance(value, (np.ndarray, list, tuple)) and name.endswith("_init"):
            group.create_array(f"init/{name}", data=np.asarray(value, dtype=np.float64))
            params[name] = None
    if not isinstance(params.get("random_state"), (int, type(None))):
        params["random_state"] = None  # a Generator is not data; the seeds are in restarts
    if "compute_dtype" in params:  # a numpy type or dtype, by its name
        params["compute_dtype"] = compute_dtype_name(params["compute_dtype"])
    tuples = sorted(name for name, value in params.items() if isinstance(value, tuple))
    family = state.family
    if "family" in params:
        params["family"] = None  # an object: recorded below, passed again to load
    attrs = {
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "family": family.name,
        "family_record": _family_record(family),
        "estimator": type(model).__name__,
        "params": params,
        "tuple_params": tuples,  # JSON has lists only; these were tuples
        "arrays": shapes,
        "param_values": values,
        "fitted": {
            "converged": model.converged_,
            "n_iter": model.n_iter_,
            "lower_bound": model.lower_bound_,
            "n_components": model.n_components_,
            "n_features_in": model.n_features_in_,
            "best_restart": model.best_restart_,
            # float32 input gives float32 public attributes (the parameters are stored in float64)
            "public_dtype": None if getattr(model, "_public_dtype", None) is None else str(model._public_dtype),
            "feature_names_in": list(map(str, getattr(model, "feature_names_in_", []))) or None,
        },
        "restarts": model.restarts_,
        "training_data": getattr(model, "training_data_", None),
    }
    group.attrs["dask_em"] = json_safe(attrs)


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
            f"{path!r} is a Zarr group but not a dask-em model store (no 'dask_em' attributes). Write one with "
            "dask_em.save or `dask-em fit --output`."
        )
    version = attrs["format_version"]
    if version != FORMAT_VERSION:
        raise ModelStoreError(
            f"{path!r} holds model format version {version}, written by dask-em "
            f"{attrs.get('library_version')}; this dask-em reads format version {FORMAT_VERSION}. "
            "Refit, or load it with the dask-em version that wrote it."
        )
    return group, attrs


def _check_layout(path: str, group, attrs: dict, family=None):
    """Refuse a store whose attributes or arrays do not describe a model (before reading data).

    Returns the unfitted estimator the attributes describe.
    """

    def bad(why: str) -> ModelStoreError:
        return ModelStoreError(f"{path!r} is not a valid dask-em model store: {why}.")

    params, fitted = attrs.get("params"), attrs.get("fitted")
    shapes, values = attrs.get("arrays"), attrs.get("param_values")
    if not all(isinstance(v, dict) for v in (params, fitted, shapes, values)):
        raise bad("its 'params', 'fitted', 'arrays' and 'param_values' attributes are missing or not mappings")
    try:
        cls = estimator_class(attrs.get("estimator"))
    except ValueError as exc:
        raise bad(str(exc)) from None
    allowed = set(cls().get_params())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise bad(f"unknown parameters {unknown}")
    params = dict(params)
    if "family" in allowed:
        if family is None:
            record = attrs.get("family_record") or {}
            raise ModelStoreError(
                f"{path!r} holds a mixture of the user-defined family {record.get('class')!r} "
                f"(fields {record.get('fields')}); a store never names code to import, so pass the "
                "family: dask_em.load(path, family=MyFamily(...))."
            )
        params["family"] = family
    for name in attrs.get("tuple_params") or []:
        if isinstance(params.get(name), list):
            params[name] = tuple(params[name])
    for name in list(params):
        if f"init/{name}" in group:
            params[name] = group[f"init/{name}"][...]
    try:
        if "compute_dtype" in params:  # stores written before only these names were taken ("f4")
            params["compute_dtype"] = compute_dtype_name(params["compute_dtype"])
        model = cls(**params)
        model.check_params()
    except (TypeError, ValueError) as exc:
        raise bad(f"its parameters are refused: {exc}") from None
    fits = model.make_family().name
    if fits != attrs.get("family"):
        raise bad(f"it holds a {attrs.get('family')!r} model; {cls.__name__} fits {fits!r}")
    k, d = fitted.get("n_components"), fitted.get("n_features_in")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000 for v in (k, d)):
        raise bad(f"n_components {k!r} and n_features_in {d!r} must be ints in [1, 1e6]")
    try:
        expected = {"weights": (k,), **model.expected_shapes(k, d, values)}
    except ValueError as exc:
        raise bad(str(exc)) from None
    for name in [*expected, *sorted(set(shapes) - set(expected))]:
        key = f"params/{name}"
        if key not in group:
            raise bad(f"the array {key!r} is missing")
        arr = group[key]
        shape = tuple(expected.get(name, shapes.get(name)))
        if tuple(arr.shape) != shape or np.dtype(arr.dtype).kind not in "fiu":
            raise bad(f"{name} has shape {tuple(arr.shape)} and dtype {arr.dtype}; expected {shape}, numeric")
    return model


def load(path: str | os.PathLike, *, storage_options: dict | None = None, family=None):
    """Read a model written by :func:`save`; it predicts bitwise as the saved one.

    Only numeric arrays and JSON are read; a store whose attributes or array
    shapes do not describe a model is refused before any array is read.
    ``family`` is needed (only) for a :class:`~dask_em.Mixture` of a
    user-defined family.

    Parameters
    ----------
    path : str or PathLike
        A group written by :func:`save` (local path or fsspec URL).
    storage_options : dict, optional
        fsspec options for a remote store.
    family : Family, optional
        The family instance of a :class:`~dask_em.Mixture` of a user-defined family.

    Returns
    -------
    model : fitted estimator
        An estimator of the saved class with the saved parameters and fitted attributes.

    Examples
    --------
    >>> import numpy as np
    >>> import dask_em
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> gm = dask_em.GaussianMixture(n_components=2, random_state=0).fit(X)
    >>> dask_em.save(gm, "model.zarr")
    >>> loaded = dask_em.load("model.zarr")
    >>> bool((loaded.predict(X) == gm.predict(X)).all())
    True
    """
    group, attrs = read_attrs(path, storage_options)
    model = _check_layout(os.fspath(path), group, attrs, family)
    params = {name: group[f"params/{name}"][...] for name in attrs["arrays"]}
    params.update(attrs["param_values"])
    if not all(np.isfinite(v).all() for v in params.values() if isinstance(v, np.ndarray)):
        raise ModelStoreError(f"{os.fspath(path)!r} holds NaN or infinite parameters; it is not a usable model.")
    context = group["context"][...] if "context" in group else None
    fitted = attrs["fitted"]
    if fitted.get("public_dtype") not in (None, "float32"):
        raise ModelStoreError(f"{os.fspath(path)!r} names public_dtype {fitted['public_dtype']!r}; expected null or 'float32'.")
    model._public_dtype = None if fitted.get("public_dtype") is None else np.dtype(fitted["public_dtype"])
    restore_fitted(model, FittedState(model.make_family(), context, params), {
        "lower_bounds_": [np.float64(b) for b in group["lower_bounds"][...]],
        "converged_": fitted["converged"],
        "n_iter_": fitted["n_iter"],
        # JSON has no -inf: a model of max_iter=0 (no iteration, as scikit-learn's) stores null
        "lower_bound_": np.float64(-np.inf if fitted["lower_bound"] is None else fitted["lower_bound"]),
        "n_components_": fitted["n_components"],
        "n_features_in_": fitted["n_features_in"],
        "best_restart_": fitted["best_restart"],
        "restarts_": attrs["restarts"],
        "training_data_": attrs.get("training_data"),
    })
    model._cast_bounds()
    if fitted.get("feature_names_in"):
        model.feature_names_in_ = np.asarray(fitted["feature_names_in"], dtype=object)
    return model
