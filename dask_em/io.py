"""Inputs: numpy, any array-like (lists, pandas), dask arrays and DataFrames, xarray,
zarr.Array or a Zarr store path/URL -> row-chunked dask array.

In-memory inputs go through scikit-learn's own ``check_array`` (pandas
DataFrames give their column names as feature names). Nothing here reads
chunked data. Shape and dtype are checked from metadata; stores
are opened with ``chunks=(rows, -1)`` so that each dask chunk is one task
holding whole rows.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from ._machine import local_cores
from ._namespace import dtype_name, is_foreign, namespace, to_numpy
from ._zarr_read import ChunkFiles, chunk_files

# Attempts beyond the first when a chunk read fails (transient storage errors).
DEFAULT_READ_RETRIES = 3

# Target bytes per dask chunk when we choose the row chunking ourselves.
DEFAULT_CHUNK_BYTES = 32 * 2**20
# ... for chunks read from a store, whose every read allocates its rows: under 32 MiB, the most glibc's
# malloc ever serves from its heap (larger blocks are mapped afresh, page-faulted and zeroed on every read).
# A fit of 2M x 16 from a store of 8 MiB chunks, threaded scheduler, 2 cores (Intel Xeon): 0.230-0.255 s an
# iteration in 32 MiB chunks (0.5-0.6 s of system time), 0.205-0.212 in 24 MiB chunks (0.25-0.29 s).
STORE_CHUNK_BYTES = 30 * 2**20


@dataclass
class Prepared:
    """A validated input: the dask array and how to shape results like the input."""

    data: da.Array
    kind: str  # "numpy" (any in-memory array-like), "dask", "xarray", "zarr"
    sample_dim: str | None = None
    sample_coord: Any = None
    feature_names: np.ndarray | None = None
    xarray_backed_by_numpy: bool = False
    # In-memory data of another array-API library (CuPy, PyTorch, ...): the array itself,
    # which inference reads whole (dask cannot concatenate every library's blocks).
    foreign: Any = None

    @property
    def lazy(self) -> bool:
        return self.kind != "numpy" and not self.xarray_backed_by_numpy


def _describe(X) -> str:
    shape = getattr(X, "shape", None)
    dtype = getattr(X, "dtype", None)
    return f"{type(X).__module__}.{type(X).__name__}" + (
        f" of shape {shape} and dtype {dtype}" if shape is not None else ""
    )


class InputDtypeError(TypeError, ValueError):
    """A dtype dask-em cannot fit: a TypeError, and a ValueError as scikit-learn raises for complex data."""


def _check_dtype(dtype, what: str) -> None:
    dtype = np.dtype(dtype)
    if dtype.kind in "fiub":
        return
    hint = {
        "c": "Complex data not supported; complex numbers have no Gaussian mixture here; pass np.abs(X) or "
             "the real and imaginary parts as separate features",
        "O": "convert it with X.astype(np.float64) after checking its contents",
        "U": "encode strings as numbers first",
        "S": "encode bytes as numbers first",
    }.get(dtype.kind, "convert it with X.astype(np.float64)")
    raise InputDtypeError(f"{what} must hold real numbers (float or int); received dtype {dtype}: {hint}.")


def _check_shape(shape, what: str) -> None:
    # The parenthesised phrases are scikit-learn's (its checks and users' tools look for them).
    if len(shape) != 2:
        fix = (
            "X.reshape(-1, 1) for a single feature" if len(shape) == 1 else "reshape it to (n_samples, n_features)"
        )
        raise ValueError(
            f"{what} must be 2-D of shape (n_samples, n_features); received {len(shape)}-D "
            f"shape {tuple(shape)}: {fix}. Reshape your data to (n_samples, n_features)."
        )
    if shape[0] == 0:
        raise ValueError(
            f"{what} is empty: received shape {tuple(shape)}; at least one row is needed "
            f"(0 sample(s) (shape={tuple(shape)}) while a minimum of 1 is required)."
        )
    if shape[1] == 0:
        raise ValueError(
            f"{what} has no features: received shape {tuple(shape)}; at least one column is needed "
            f"(0 feature(s) (shape={tuple(shape)}) while a minimum of 1 is required)."
        )


def auto_row_chunks(n_rows: int, n_features: int, itemsize: int, previous: int | None = None) -> int:
    """Rows per dask chunk when dask-em chooses: about 32 MiB, at least two chunks
    per local core when the data allow (so every core has work); for a store
    (``previous``, its row chunk), a multiple of its chunk of at most 30 MiB
    (``STORE_CHUNK_BYTES``) where its chunks are smaller.

    The budget counts 8 bytes per value whatever the stored dtype: the E-step
    works in float64, and a bool store sized by its own bytes made 5 tasks of
    2M rows for 10M x 16 on 2 cores (one core idle for the last; 0.53 s per
    Bernoulli iteration against 0.51 s for 39 chunks, at half the peak memory).

    Without a store's chunk to follow, the chunks are equal and their count a
    multiple of the cores: 2M rows in chunks of 262,144 left a last one of
    164,992, so two threads worked 4 blocks against 3.6 (a 1.91x ceiling on
    two cores before any other cost); 8 chunks of 250,000 have none.
    """
    cores = local_cores()
    budget = STORE_CHUNK_BYTES if previous else DEFAULT_CHUNK_BYTES
    rows = max(1, budget // max(1, n_features * max(itemsize, 8)))
    rows = min(rows, max(4096, -(-n_rows // (2 * cores))))
    if previous:
        rows = max(previous, (rows // previous) * previous)
    elif n_rows > rows:
        count = -(-n_rows // rows)
        count = -(-count // cores) * cores
        rows = -(-n_rows // count)
    return int(min(rows, n_rows))


def split_rows(X: da.Array, w: da.Array | None = None) -> tuple[da.Array, da.Array | None]:
    """``X`` (and its weights) with every chunk larger than dask-em's own split into equal row blocks.

    The target is :func:`auto_row_chunks`' (about 32 MiB, at least two chunks
    per local core when the data allow): three chunks of 100,000 rows on two
    cores left one core idle half of every pass (2.1x scikit-learn's
    iteration against 3.9x). Chunks are only split, never merged, so a split
    block is a slice of its chunk: a view, no copy, for in-memory data.
    """
    n, d = X.shape
    target = auto_row_chunks(n, d, 8)
    rows: list[int] = []
    for c in X.chunks[0]:
        parts = max(1, -(-c // target))
        base, extra = divmod(c, parts)
        rows.extend([base + 1] * extra + [base] * (parts - extra))
    if len(rows) == len(X.chunks[0]):
        return X, w
    return _slice_blocks(X, rows), (_slice_blocks(w, rows) if w is not None else None)


def _row_slice(block, lo: int, hi: int):
    return block[lo:hi]


def _slice_blocks(X: da.Array, rows: list[int]) -> da.Array:
    """``X`` rechunked to ``rows``, each new block a basic slice of one old block.

    Not ``X.rechunk``: dask's rechunk and getitem copy a slice that is a small
    part of its block (to free the block), which would copy every chunk of
    in-memory data in every round.
    """
    from dask.highlevelgraph import HighLevelGraph

    name = "em-split-rows-" + tokenize(X, tuple(rows))
    tail = (0,) * (X.ndim - 1)
    dsk, i, lo, bounds = {}, 0, 0, X.chunks[0]
    for j, size in enumerate(rows):
        if lo == bounds[i]:
            i, lo = i + 1, 0
        dsk[(name, j) + tail] = (_row_slice, (X.name, i) + tail, lo, lo + size)
        lo += size
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[X])
    return da.Array(graph, name, (tuple(rows),) + X.chunks[1:], meta=X._meta)


def _from_dask(X: da.Array, what: str) -> da.Array:
    if X.numblocks[1] != 1:
        raise ValueError(
            f"{what} is chunked along the feature axis ({X.numblocks[1]} chunks of "
            f"{X.chunks[1]}); dask-em needs whole rows per chunk. Use "
            "X.rechunk({1: -1}), or open the store with chunks=(rows, -1)."
        )
    if any(np.isnan(c) for c in X.chunks[0]):
        raise ValueError(
            f"{what} has unknown row chunk sizes; call X.compute_chunk_sizes() first."
        )
    return X


def open_zarr(
    url: str | os.PathLike,
    *,
    variable: str | None = None,
    storage_options: dict | None = None,
    chunk_rows: int | None = None,
    read_retries: int = DEFAULT_READ_RETRIES,
) -> Prepared:
    """Open a Zarr array (or an xarray variable of a Zarr group) lazily.

    ``url`` is a local path or any fsspec URL (``file://``, ``memory://``,
    ``s3://bucket/key`` with ``storage_options``). A group needs ``variable``.
    A chunk read that fails is retried ``read_retries`` times with backoff
    (0.05 s doubling) before the error, naming the rows, stops the fit.

    Parameters
    ----------
    url : str or PathLike
        A local path or fsspec URL of a Zarr array or group.
    variable : str, optional
        The array of a Zarr group to read.
    storage_options : dict, optional
        Passed to fsspec for remote stores (credentials, endpoint).
    chunk_rows : int, optional
        Rows per chunk; by default a multiple of the store's chunks of at most
        30 MiB (or the store's chunk, where that is larger).
    read_retries : int, default=3
        Attempts beyond the first for a chunk read that fails.

    Returns
    -------
    Prepared
        ``data``, the row-chunked dask array (the feature axis in one chunk,
        nothing computed), with what is needed to shape results like the
        input (``kind``, the sample coordinate, ``feature_names``).
    """
    import zarr

    url = os.fspath(url)
    try:
        node = zarr.open(store=url, mode="r", storage_options=storage_options)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no Zarr array or group at {url!r}; check the path (and storage_options for remote stores)."
        ) from None
    except Exception as exc:  # zarr raises several types for a missing store
        if "not found" in str(exc).lower() or "No such" in str(exc) or "nothing found" in str(exc).lower():
            raise FileNotFoundError(
                f"no Zarr array or group at {url!r}; check the path (and storage_options for remote stores)."
            ) from exc
        raise
    if isinstance(node, zarr.Group):
        if variable is None:
            names = sorted(node.array_keys())
            raise ValueError(
                f"{url!r} is a Zarr group, not an array; name the variable to fit, "
                f"variable=... (the group holds {names})."
            )
        names = sorted(node.array_keys())
        if variable not in names:
            raise KeyError(f"variable {variable!r} not found in {url!r}; it holds {names}.")
        import xarray as xr

        prepared = _from_zarr_array(node[variable], chunk_rows, kind="zarr", read_retries=read_retries)
        try:
            ds = xr.open_zarr(url, storage_options=storage_options, chunks=None)
        except (ValueError, KeyError):
            return prepared  # not written by xarray (no dimension names): no coordinates
        var = ds[variable]
        if var.ndim != 2:
            raise ValueError(f"variable {variable!r} must be 2-D (sample, feature); received dims {var.dims}.")
        sample_dim, feature_dim = var.dims
        names = None
        if feature_dim in var.coords and np.asarray(var.coords[feature_dim].values).dtype.kind in "USO":
            names = np.asarray(var.coords[feature_dim].values).astype(object)
        coord = var.coords[sample_dim] if sample_dim in var.coords else None
        return Prepared(prepared.data, "xarray", sample_dim, coord, names)
    return _from_zarr_array(node, chunk_rows, kind="zarr", read_retries=read_retries)


def read_rows(arr, key, *, retries: int, source: str, files: ChunkFiles | None = None):
    """Read one block of rows, retrying transient failures with backoff.

    ``files``: the store's chunk files where dask-em reads them itself
    (:func:`dask_em._zarr_read.chunk_files`: local stores of the usual
    layouts, decoded without zarr's event loop); else ``arr[key]``.
    The last failure is re-raised as an ``OSError`` that names the rows and the
    store, with the store's own error (the failing key, a codec error for a
    corrupted chunk) attached.
    """
    direct = files is not None and files.covers(key)
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            return files.read(key) if direct else arr[key]
        except Exception as exc:  # storage errors come in many types
            last = exc
            if attempt < retries:
                time.sleep(min(2.0, 0.05 * 2**attempt))
    rows = key[0]
    raise OSError(
        f"reading rows {rows.start}-{rows.stop - 1} of {source} failed after {retries + 1} "
        f"attempt(s): {type(last).__name__}: {last}"
    ) from last


def _from_zarr_array(arr, chunk_rows: int | None, kind: str, read_retries: int = DEFAULT_READ_RETRIES) -> Prepared:
    source = str(getattr(arr, "store_path", "the Zarr array"))
    what = f"the Zarr array {source}"
    _check_shape(arr.shape, what)
    _check_dtype(arr.dtype, what)
    rows = chunk_rows or auto_row_chunks(arr.shape[0], arr.shape[1], arr.dtype.itemsize, arr.chunks[0])
    # As da.from_zarr (one task per chunk, the array object in one key), with a
    # reader that retries and names the rows of a chunk that cannot be read.
    reader = functools.partial(read_rows, retries=read_retries, source=source, files=chunk_files(arr))
    name = "from-zarr-" + tokenize(arr, rows, read_retries)
    data = da.from_array(arr, chunks=(rows, -1), name=name, getitem=reader, asarray=False, fancy=False)
    return Prepared(data, kind)


def as_dask_array(
    X,
    *,
    variable: str | None = None,
    storage_options: dict | None = None,
    chunk_rows: int | None = None,
    read_retries: int = DEFAULT_READ_RETRIES,
    what: str = "X",
    device: str | None = None,
) -> Prepared:
    """Validate ``X`` from metadata only and return it as a row-chunked dask array.

    Parameters
    ----------
    X : array-like, dask array or DataFrame, xarray.DataArray or Dataset, zarr.Array, or str/PathLike
        The data, of shape (n_samples, n_features). A string is a Zarr path or URL;
        numpy arrays, lists of rows and pandas DataFrames are validated by
        scikit-learn's ``check_array`` (a DataFrame's columns are the feature names).
    variable : str, optional
        The variable of a Zarr group or ``xarray.Dataset``.
    storage_options : dict, optional
        Passed to fsspec for remote stores.
    chunk_rows : int, optional
        Rows per chunk when dask-em chooses the chunking (numpy input, stores).
    read_retries : int, default=3
        Attempts beyond the first for a Zarr chunk read that fails.
    what : str, default="X"
        The name errors give the input.
    device : {None, "cuda", "cpu"}, default=None
        Where the chunks go as they are read: None leaves them where they are
        (numpy in host memory, CuPy on its GPU); "cuda" copies each to the GPU
        (CuPy); "cpu" copies each to host memory (numpy).

    Returns
    -------
    Prepared
        ``data``, the row-chunked dask array (the feature axis in one chunk,
        nothing computed), with what is needed to shape results like the
        input (``kind``, the sample coordinate, ``feature_names``). For a
        C-ordered numpy array its chunks are views of ``X``, not a copy:
        what changes in ``X`` before they are computed changes them.

    Examples
    --------
    >>> import numpy as np
    >>> from dask_em import as_dask_array
    >>> prepared = as_dask_array(np.zeros((1000, 3)), chunk_rows=250)
    >>> prepared.data.chunks
    ((250, 250, 250, 250), (3,))
    """
    if device is not None:
        move = chunk_mover(device)
        prep = as_dask_array(X, variable=variable, storage_options=storage_options, chunk_rows=chunk_rows,
                             read_retries=read_retries, what=what)
        return move(prep)
    if isinstance(X, Prepared):
        return X
    if X is None:
        raise TypeError(f"{what} must be an array-like of shape (n_samples, n_features); received None.")
    if isinstance(X, (str, os.PathLike)):
        return open_zarr(
            X, variable=variable, storage_options=storage_options, chunk_rows=chunk_rows,
            read_retries=read_retries,
        )
    module = type(X).__module__.split(".")[0]
    if module == "zarr":
        import zarr

        if isinstance(X, zarr.Group):
            if variable is None:
                raise ValueError(
                    f"{what} is a Zarr group, not an array; pass variable=... "
                    f"(the group holds {sorted(X.array_keys())})."
                )
            X = X[variable]
        return _from_zarr_array(X, chunk_rows, kind="zarr", read_retries=read_retries)
    if module == "xarray":
        return _from_xarray(X, variable, chunk_rows, what)
    if isinstance(X, da.Array):
        _check_shape(X.shape, what)
        _check_dtype(X.dtype, what)
        return Prepared(_from_dask(X, what), "dask")
    if module == "dask" and hasattr(X, "columns") and hasattr(X, "npartitions"):  # a dask DataFrame
        return _from_dask_dataframe(X, what)
    if is_foreign(X):
        return _from_foreign(X, what, chunk_rows)
    if isinstance(X, (Mapping, set, frozenset)) or not (
        hasattr(X, "__array__") or hasattr(X, "__array_interface__") or isinstance(X, Sequence)
        or hasattr(X, "tocsr")  # scipy.sparse: check_array refuses it with its fix (.toarray())
    ):
        raise TypeError(
            f"{what} must be a numpy array, dask array, array-like (list of rows, pandas or dask "
            f"DataFrame), xarray DataArray, zarr.Array or a Zarr path/URL; received {_describe(X)}."
        )
    return _from_memory(X, what, chunk_rows)


def _from_memory(X, what: str, chunk_rows: int | None) -> Prepared:
    """Any in-memory array-like, through scikit-learn's ``check_array`` (no NaN check: the
    first E-step or the inference pass finds NaN, naming the rows)."""
    from sklearn.utils.validation import _get_feature_names, check_array

    names = _get_feature_names(X)
    if isinstance(X, np.ndarray) and X.dtype.kind in "cUS":
        _check_dtype(X.dtype, what)  # our message, before check_array's
    try:
        arr = check_array(
            X, dtype=None, accept_sparse=False, ensure_all_finite=False, ensure_2d=False, allow_nd=True,
            ensure_min_samples=0, ensure_min_features=0, input_name=what,
        )
    except ValueError as exc:
        if "Complex data" in str(exc):
            _check_dtype(np.complex128, what)
        raise
    _check_shape(arr.shape, what)
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.float64)  # scikit-learn treats object arrays as numeric when they are
        except (TypeError, ValueError) as exc:
            raise InputDtypeError(
                f"{what} must hold real numbers (float or int); received dtype object: convert it with "
                f"X.astype(np.float64) after checking its contents ({exc})."
            ) from exc
    _check_dtype(arr.dtype, what)
    rows = chunk_rows or auto_row_chunks(arr.shape[0], arr.shape[1], 8)
    return Prepared(row_views(np.ascontiguousarray(arr), (rows, -1)), "numpy", feature_names=names)


def row_views(arr: np.ndarray, chunks) -> da.Array:
    """``arr`` as a dask array whose blocks are views of it: no copy, nothing hashed (row blocks of a
    C-contiguous array are C-contiguous, as the kernels want them).

    ``da.from_array`` copies a numpy array whole (twice its memory for the
    whole fit) and hashes every byte of it for the array's name (0.07 s and
    0.2 s per 256 MiB here, before any work); nothing of dask-em looks an
    array up by its contents, so the name is random.
    """
    chunks = da.core.normalize_chunks(chunks, arr.shape, dtype=arr.dtype)
    name = f"em-rows-{uuid.uuid4().hex}"
    bounds = [np.cumsum((0,) + c) for c in chunks]
    graph = {}
    for index in itertools.product(*(range(len(c)) for c in chunks)):
        where = tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(bounds, index))
        graph[(name,) + index] = arr[where]
    return da.Array(graph, name, chunks, dtype=arr.dtype, meta=np.empty((0,) * arr.ndim, dtype=arr.dtype))


DEVICES = ("cuda", "cpu")


def chunk_mover(device: str):
    """The function that moves a :class:`Prepared` input's chunks to ``device`` (checked first)."""
    if device not in DEVICES:
        raise ValueError(
            f"device must be None (compute where each chunk lives), 'cuda' (copy each chunk to the GPU "
            f"with CuPy) or 'cpu' (copy each chunk to host memory); received {device!r}."
        )
    if device == "cpu":
        return _to_host
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(
            "device='cuda' copies each chunk to the GPU with CuPy, which is not importable here "
            f"({exc}). Install the CuPy wheel of your CUDA version, e.g. pip install cupy-cuda12x, "
            "or pass device=None to compute on the CPU."
        ) from None
    return functools.partial(_to_gpu, cupy)


def _to_host(prep: Prepared) -> Prepared:
    if prep.foreign is not None:  # in memory on a device: one copy of the whole array
        return _from_memory(to_numpy(prep.foreign), "X", prep.data.chunks[0][0])
    data = prep.data.map_blocks(to_numpy, dtype=prep.data.dtype, meta=np.empty((0, 0), dtype=prep.data.dtype))
    return dataclasses.replace(prep, data=data)


def _to_gpu(cupy, prep: Prepared) -> Prepared:
    dtype = prep.data.dtype
    data = prep.data.map_blocks(cupy.asarray, dtype=dtype, meta=cupy.empty((0, 0), dtype=dtype))
    return dataclasses.replace(prep, data=data, foreign=None)


class _ForeignRows:
    """An in-memory array of another array-API library as ``da.from_array`` reads it.

    It gives numpy's dtype and hands out row blocks by slicing: the blocks stay
    arrays of their library, on their device.
    """

    def __init__(self, array, dtype: np.dtype):
        self.array, self.dtype = array, dtype
        self.shape, self.ndim = tuple(int(s) for s in array.shape), len(array.shape)

    def __getitem__(self, key):
        return self.array[key]

    def __dask_tokenize__(self):
        return ("dask-em-foreign-rows", id(self.array), self.shape, str(self.dtype))


def _from_foreign(X, what: str, chunk_rows: int | None) -> Prepared:
    """In-memory data of another array-API library (CuPy, PyTorch, array_api_strict): kept on its device."""
    shape = tuple(X.shape)
    _check_shape(shape, what)
    try:
        dtype = np.dtype(dtype_name(X.dtype))
    except TypeError:
        raise InputDtypeError(f"{what} must hold real numbers (float or int); received dtype {X.dtype}.") from None
    _check_dtype(dtype, what)
    rows = chunk_rows or auto_row_chunks(shape[0], shape[1], dtype.itemsize)
    data = da.from_array(_ForeignRows(X, dtype), chunks=(rows, -1), asarray=False,
                         meta=np.empty((0, 0), dtype=dtype))
    return Prepared(data, "numpy", foreign=X)


def _from_dask_dataframe(X, what: str) -> Prepared:
    """A dask DataFrame as a dask array with known row chunks (one pass over its partitions'
    lengths), its column names as feature names. Needs dask's dataframe extra."""
    try:
        importlib.import_module("dask.dataframe")
    except ImportError as exc:
        raise ImportError(
            f"{what} is a dask DataFrame, which needs dask's dataframe extra ({exc}); install it with "
            "pip install 'dask[dataframe]', or pass X.to_dask_array(lengths=True)."
        ) from exc
    columns = np.asarray(list(X.columns), dtype=object)
    names = columns if len(columns) and all(isinstance(c, str) for c in columns) else None
    data = X.to_dask_array(lengths=True)
    _check_shape(data.shape, what)
    _check_dtype(data.dtype, what)
    return Prepared(_from_dask(data, what), "dask", feature_names=names)


def _from_xarray(X, variable, chunk_rows, what) -> Prepared:
    import xarray as xr

    if isinstance(X, xr.Dataset):
        names = sorted(X.data_vars)
        if variable is None:
            if len(names) != 1:
                raise ValueError(
                    f"{what} is an xarray.Dataset with variables {names}; name the one to fit with variable=..."
                )
            variable = names[0]
        if variable not in X:
            raise KeyError(f"variable {variable!r} not found in the Dataset; it holds {names}.")
        X = X[variable]
    if X.ndim != 2:
        raise ValueError(
            f"{what} must be a 2-D DataArray with a sample dim and a feature dim; received "
            f"dims {X.dims}. Stack the sample dims first, e.g. X.stack(sample=(...)).transpose('sample', ...)."
        )
    _check_shape(X.shape, what)
    _check_dtype(X.dtype, what)
    sample_dim, feature_dim = X.dims
    coord = X.coords[sample_dim] if sample_dim in X.coords else None
    names = None
    if feature_dim in X.coords:
        values = np.asarray(X.coords[feature_dim].values)
        if values.dtype.kind in "USO":
            names = values.astype(object)
    data = X.data
    if isinstance(data, da.Array):
        return Prepared(_from_dask(data, what), "xarray", sample_dim, coord, names)
    rows = chunk_rows or auto_row_chunks(X.shape[0], X.shape[1], 8)
    arr = row_views(np.ascontiguousarray(data), (rows, -1))
    return Prepared(arr, "xarray", sample_dim, coord, names, xarray_backed_by_numpy=True)


# ---------------------------------------------------------------------------
# Row weights and the training data's fingerprint
# ---------------------------------------------------------------------------


def check_weights(w, where: str, rows=None) -> None:
    """Refuse negative or non-finite row weights, naming the first (``where`` formats its index, or ``rows[index]``
    where ``rows`` says which rows ``w`` holds).

    Weights on a device are tested there (one boolean back); only weights found
    bad come to the host, for the message.
    """
    if is_foreign(w):
        xp = namespace(w)
        if bool(xp.all(xp.isfinite(w) & (w >= 0))):
            return
        w = to_numpy(w)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"sample_weight must be finite and non-negative; received {float(w[first])!r} "
            f"at {where.format(first if rows is None else int(rows[first]))}. Replace or drop those rows."
        )


def prepare_weights(sample_weight, X: da.Array) -> da.Array | None:
    """``sample_weight`` as a dask array chunked like the rows of ``X`` (None stays None).

    In-memory weights are checked here, whole; dask weights chunk by chunk in
    the first E-step.
    """
    if sample_weight is None:
        return None
    module = type(sample_weight).__module__.split(".")[0]
    if module == "xarray":
        sample_weight = sample_weight.data
    elif module == "dask" and not isinstance(sample_weight, da.Array) and hasattr(sample_weight, "npartitions"):
        sample_weight = sample_weight.to_dask_array(lengths=True)
    n = X.shape[0]
    if isinstance(sample_weight, da.Array):
        if sample_weight.shape != (n,):
            raise ValueError(
                f"sample_weight must have shape ({n},) to match X; received {sample_weight.shape}."
            )
        if sample_weight.chunks[0] != X.chunks[0]:
            raise ValueError(
                "sample_weight must be chunked like the rows of X; received chunks "
                f"{sample_weight.chunks[0][:4]}... for X's {X.chunks[0][:4]}...: use "
                "sample_weight.rechunk(X.chunks[0])."
            )
        return sample_weight
    # In memory: numpy, or another array-API library's array, kept on its device (scikit-learn's convention).
    foreign = is_foreign(sample_weight)
    w = sample_weight if foreign else np.asarray(sample_weight)
    shape = tuple(int(s) for s in w.shape)
    if shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},) to match X; received {shape}.")
    try:
        dtype = np.dtype(dtype_name(w.dtype)) if foreign else w.dtype
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "fiub":
        raise TypeError(f"sample_weight must be numeric; received dtype {w.dtype}.")
    xp = namespace(w)
    w = xp.astype(w, xp.float64)
    check_weights(w, "row {}")
    if not float(xp.sum(w)) > 0:
        raise ValueError("sample_weight sums to zero; at least one row needs a positive weight.")
    if foreign:
        return da.from_array(_ForeignRows(w, np.dtype(np.float64)), chunks=(X.chunks[0],), asarray=False,
                             meta=np.empty((0,), dtype=np.float64))
    return row_views(w, (X.chunks[0],))


def fingerprint(prepared: Prepared, X) -> dict:
    """What identifies the training data without reading it (``X`` as given to fit)."""
    data = prepared.data
    source = os.fspath(X) if isinstance(X, (str, os.PathLike)) else None
    return {
        "shape": list(data.shape),
        "dtype": str(data.dtype),
        "row_chunks": [int(data.chunks[0][0]), len(data.chunks[0])],
        "source": source,
    }


def is_local_filesystem(fs) -> bool:
    """Whether an fsspec filesystem is this machine's disk (where ``os.replace`` is atomic)."""
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols
