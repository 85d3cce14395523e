"""Array namespaces: which library an array belongs to, and the moves between it and numpy.

A chunk may be a numpy array (the fast, tuned kernels), or an array of any
library that implements the Python array API standard: CuPy on a GPU, PyTorch,
``array_api_strict`` (the standard and nothing more, which the tests use on
CPU). :func:`namespace` names the library through ``array_api_compat``;
:func:`to_numpy` brings a (small) result to the host, explicitly, because
CuPy refuses the implicit conversion; :func:`like` puts host parameters on the
device of a chunk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_cupy_array, is_numpy_array, is_torch_array
from array_api_compat import device as _device


def is_numpy(x) -> bool:
    """True for numpy arrays (and their subclasses, memmaps included) and numpy scalars."""
    return isinstance(x, (np.ndarray, np.generic)) or is_numpy_array(x)


def is_foreign(x) -> bool:
    """True for an array of another array-API library (CuPy, PyTorch, array_api_strict, ...)."""
    if is_numpy(x) or not hasattr(x, "shape"):
        return False
    try:
        array_namespace(x)
    except TypeError:
        return False
    return True


def namespace(x) -> Any:
    """The array-API namespace of ``x`` (numpy arrays: ``array_api_compat.numpy``)."""
    return array_namespace(x)


def device(x) -> Any:
    """The device ``x`` lives on, as its library names it."""
    return _device(x)


def to_numpy(x, dtype=None) -> np.ndarray:
    """``x`` as a numpy array on the host: a copy from a GPU, a view where the library allows."""
    if is_numpy(x) or not hasattr(x, "shape"):
        return np.asarray(x, dtype=dtype)
    if is_cupy_array(x):
        out = x.get()
    elif is_torch_array(x):
        out = x.detach().cpu().numpy()
    else:
        try:
            out = np.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError, AttributeError):
            out = np.asarray(x)
    return np.asarray(out, dtype=dtype)


def like(a, x, dtype=None):
    """The host array ``a`` in the namespace and on the device of ``x`` (a copy to a GPU)."""
    xp = array_namespace(x)
    a = np.ascontiguousarray(a if dtype is None else np.asarray(a, dtype=dtype))
    return xp.asarray(a, device=_device(x))


def weights_like(w, x):
    """Row weights ``w`` (host or device) as a float64 vector on the device of the chunk ``x``.

    Weights already on the chunk's device stay there (no round trip through the host); weights of
    another library or device go through the host.
    """
    if is_foreign(w) and is_foreign(x):
        xp = array_namespace(w)
        if xp is array_namespace(x) and _device(w) == _device(x):
            return xp.reshape(xp.astype(w, xp.float64), (-1,))
    return like(to_numpy(w, np.float64).reshape(-1), x)


def split_holes(x):
    """A device chunk's rows without NaN and with, as index vectors on its device: ``(whole, part)``; None if
    no row holds NaN."""
    xp = array_namespace(x)
    holes = xp.any(xp.isnan(x), axis=1)
    if not bool(xp.any(holes)):
        return None
    return xp.nonzero(~holes)[0], xp.nonzero(holes)[0]


def in_row_order(split, top, rest, x):
    """Results for a device chunk ``x`` split by :func:`split_holes`: ``top`` for its rows without NaN (on
    its device), ``rest`` for the others (computed on the host), joined in ``x``'s row order on its device.

    The array API standard has no assignment through integer arrays; a take by the inverse of the split's
    order puts each row back.
    """
    xp = array_namespace(top)
    both = xp.concat([top, like(rest, x, np.dtype(dtype_name(top.dtype)))], axis=0)
    return xp.take(both, xp.argsort(xp.concat(list(split))), axis=0)


def dtype_kind(x) -> str:
    """numpy's kind letter (``"f"``, ``"i"``, ``"u"``, ``"b"``) of the dtype of an array of any library."""
    return np.dtype(dtype_name(x.dtype)).kind


def dtype_name(dtype) -> str:
    """A dtype of any namespace by its standard name ("float64", "int32", ...)."""
    if isinstance(dtype, np.dtype) or isinstance(dtype, type):
        return np.dtype(dtype).name
    text = str(dtype)
    for name in ("complex128", "complex64", "float64", "float32", "float16", "uint64", "uint32",
                 "uint16", "uint8", "int64", "int32", "int16", "int8", "bool"):
        if name in text:
            return name
    return text


def xp_log_normalize(xp, wlp):
    """(log-normaliser (rows,), responsibilities (rows, K)) of log-densities ``wlp`` (rows, K), in ``xp``.

    ``family.log_normalize`` for any namespace (not in place; component axis last).

    The log-sum-exp over the components; a row whose every value is -inf
    (or NaN) gets a NaN normaliser, as numpy's route gives.
    """
    top = xp.max(wlp, axis=1, keepdims=True)
    top = xp.where(xp.isfinite(top), top, xp.zeros_like(top))
    e = xp.exp(wlp - top)
    total = xp.sum(e, axis=1, keepdims=True)
    return xp.log(total[:, 0]) + top[:, 0], e / total


def rlogr_rows(xp, resp):
    """(rows,) float64 sums over components of ``r log r`` (0 where r = 0), in ``xp``."""
    positive = resp > 0
    safe = xp.where(positive, resp, xp.ones_like(resp))
    terms = xp.where(positive, resp * xp.log(safe), xp.zeros_like(resp))
    return xp.sum(xp.astype(terms, xp.float64), axis=1)


def likelihood_sums(xp, x) -> dict:
    """Zeroed device accumulators of a chunk's log-likelihood, weight and entropy (see :func:`add_likelihood_xp`)."""
    zero = xp.zeros((), dtype=xp.float64, device=_device(x))
    return {"loglik": zero, "wsum": zero, "entropy": zero}


def add_likelihood_xp(xp, acc: dict, log_norm, resp, w, entropy: bool) -> None:
    """``family.add_likelihood`` on a device: a tile's (weighted) log-likelihood, weight and, with
    ``entropy``, sum of ``r log r`` added into ``acc``'s device scalars (no copy to the host)."""
    log_norm = xp.astype(log_norm, xp.float64)
    acc["loglik"] = acc["loglik"] + xp.sum(log_norm if w is None else log_norm * w)
    acc["wsum"] = acc["wsum"] + (float(log_norm.shape[0]) if w is None else xp.sum(w))
    if entropy:
        per_row = rlogr_rows(xp, resp)
        acc["entropy"] = acc["entropy"] + xp.sum(per_row if w is None else per_row * w)


def likelihood_record(acc: dict) -> dict:
    """The accumulators of :func:`add_likelihood_xp` as the host floats of an E-step record."""
    return {key: float(to_numpy(acc[key])) for key in ("loglik", "wsum", "entropy")}
