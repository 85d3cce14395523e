"""The discrete families' E-step: one design matrix per panel of rows, two GEMMs per restart.

Every discrete family here has a log-density linear in a per-row design
vector ``z`` (the row itself for Bernoulli and Poisson, its one-hot codes for
the categorical), plus a per-row term no component changes::

    log p(x | k) + log w_k = A[k] @ z + c[k] + log w_k        (+ row constant)
    statistics of component k = sum_i r_ik z_i                 (and n_k = sum_i r_ik)

So a panel of ``P`` rows becomes one design matrix ``Z`` (P, m + 1) whose
last column is ones, and per restart the E-step is::

    L = [A | c + log w] @ Z.T        (K, P): one GEMM
    R = responsibilities of L        in place (log-sum-exp over components)
    S += R @ Z                       (K, m + 1): one GEMM; its last column is n_k

This replaces the default panelled E-step (:meth:`dask_em.family.Family.estep`)
for these families because that one, on two threads, scaled 1.2-1.7x on two
cores: each panel allocated its float copy, its (K, P) products and several
(P,) temporaries, and a fresh multi-MiB allocation from glibc comes back as
pages the kernel must fault in and zero (2,200 minor faults and 4 ms of
system time per 262,144-row Bernoulli block, a third of its CPU time), with
the address-space lock and TLB shootdowns shared by both threads. Here every
array that scales with the panel lives in a buffer owned by the thread
(:func:`buffer`) and is reused by every panel, block and round that thread
runs, and every call on a panel is one long ufunc or GEMM that releases the GIL.

A family plugs in with four methods (see :class:`DesignFamily`).
"""

from __future__ import annotations

import threading

import numpy as np
from scipy.special import xlogy

from . import _compiled
from ._machine import aligned_empty
from ._namespace import (add_likelihood_xp, is_foreign, like, likelihood_record, likelihood_sums, namespace,
                         to_numpy, weights_like, xp_log_normalize)
from .family import Family, Params

# Values per panel's design matrix: up to 2**20 (8 MiB), which gives 16384 rows (the cap)
# of a 16-feature Bernoulli or Poisson design and 8192 of a 16 x 5-category one-hot design.
# The rows depend on the design's width alone, not on K: every restart of a round walks
# the same panels, so it sums exactly what it sums alone (as the Gaussian's nested panels
# do). Each panel costs about 25-35 us of calls that hold the GIL (measured on 16-row
# panels): 16-32 panels per 262,144-row block keep that at 3-5% of its CPU time.
# CPU time per 262,144-row block, K=8, d=16, one thread (ms; panels of 2048 / 4096 / 8192 /
# 16384 / 32768 rows): Bernoulli 11.9 / 10.2 / 9.4 / 9.2 / 9.1, Poisson 15.0 / 13.2 / 11.8 /
# 11.4 / 11.6, categorical 41.2 / 38.0 / 38.2 / 39.5 / 47.2.
DESIGN_CELLS = 2**20

# exp() of anything below this is floored (see dask_em.family.responsibilities).
_LOG_RESP_FLOOR = -600.0

_LOCAL = threading.local()


def buffer(name: str, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """A C-contiguous array of ``shape``, a view of this thread's reusable buffer ``name``.

    The buffer grows to the largest shape asked for and is kept for the
    thread's lifetime (a few MiB per worker thread), so panels of every
    later block and round reuse pages already mapped. Its contents are
    whatever the last user left.
    """
    store = _LOCAL.__dict__.setdefault("buffers", {})
    size = int(np.prod(shape, dtype=np.int64))
    key = (name, np.dtype(dtype).str)
    buf = store.get(key)
    if buf is None or buf.size < size:
        buf = store[key] = aligned_empty(max(size, 1), dtype)
    return buf[:size].reshape(shape)


def cached(name: str, key: tuple, make) -> np.ndarray:
    """This thread's array ``name`` made by ``make()`` for ``key``, made again when the key changes."""
    store = _LOCAL.__dict__.setdefault("cached", {})
    held = store.get(name)
    if held is None or held[0] != key:
        held = store[name] = (key, make())
    return held[1]


def panel_rows(width: int) -> int:
    """Rows per panel for designs ``width`` wide: a power of two, 1024 to 16384."""
    rows = DESIGN_CELLS // max(1, width + 1)
    return min(16384, max(1024, 1 << (rows.bit_length() - 1)))


class DesignFamily(Family):
    """A family whose log-density is linear in a design vector per row (see the module docstring).

    It provides:

    ``design_width(n_features)``
        ``m``, the width of a row's design vector.
    ``fill_design(x, z)``
        Write the design of rows ``x`` (as stored) into the first ``m``
        columns of ``z`` (rows, m + 1), C-contiguous float64 whose last
        column is ones and must stay so; each of those ``m`` columns must be
        written (the buffer holds the previous panel).
    ``coefficients(params)``
        ``(A, c)``: A (K, m) and c (K,) with ``log p(x | k) = A[k] @ z + c[k]``
        (less the row constant).
    ``stats_from(sums, params)``
        The family's statistics from ``sums`` (K, m) = ``sum_i r_ik z_i``.
    ``design_constant(x, z, w)``
        The (``w``-weighted) total over rows ``x`` of the row constant
        (:meth:`Family.row_log_constant`); ``z`` their design, as
        ``fill_design`` left it (the ones column last). [0.0]

    Rows with missing values go through the default E-step (the families'
    ``prepare_rows`` / ``log_prob`` / ``chunk_stats``).

    Chunks of another array-API library (CuPy on a GPU, ...) are fitted on
    their device (:func:`device_estep`) through two more methods, written
    with the standard's operations only:

    ``device_design(xp, x)``
        The (rows, m) float64 design of rows ``x`` in their namespace ``xp``;
        None: this chunk's E-step runs on the host (a copy). [None]
    ``device_row_constant(xp, x, z)``
        The (rows,) row constant on the device, 0.0 when there is none, None
        to compute on the host. [0.0]
    """

    array_api = True  # device chunks: device_estep, or a copy to the host where it declines

    def design_width(self, n_features: int) -> int:
        raise NotImplementedError

    def fill_design(self, x: np.ndarray, z: np.ndarray) -> None:
        raise NotImplementedError

    def coefficients(self, params: Params) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def stats_from(self, sums: np.ndarray, params: Params) -> dict:
        raise NotImplementedError

    def design_constant(self, x: np.ndarray, z: np.ndarray, w: np.ndarray | None) -> float:
        return 0.0

    def compiled_design(self, n_features: int):
        """The design as the compiled E-step (``dask_em._compiled.rows_estep``) knows it, or None.

        ``"copy"`` for the design ``[x, 1]``, the (d + 1,) category offsets
        for a one-hot design, None (here, and in every subclass that does not
        say otherwise) for a design only :meth:`fill_design` knows. Only for
        designs whose row constant (:meth:`design_constant`) is 0.
        """
        return None

    def device_design(self, xp, x):
        return None

    def device_row_constant(self, xp, x, z):
        return 0.0

    def weighted_log_prob(self, x, params, context):
        if is_foreign(x):
            out = device_weighted_log_prob(self, x, params)
            return out if out is not None else like(super().weighted_log_prob(to_numpy(x), params, context), x)
        return super().weighted_log_prob(x, params, context)

    def estep(self, x, w, params_list, context, entropy=False):
        if is_foreign(x):
            records = device_estep(self, x, w, params_list, entropy)
            if records is not None:
                return records
            x, w = to_numpy(x), None if w is None else to_numpy(w)
        if self.missing != "error" and x.dtype.kind == "f" and np.isnan(x).any():
            return super().estep(x, w, params_list, context, entropy)
        return design_estep(self, x, w, params_list, entropy)


def _panel_views(rows: int, width: int, ks: set[int]) -> tuple:
    """The design (rows, width), the log-densities (K, rows) per K and three (rows,) arrays: thread buffers."""
    return (buffer("design", (rows, width)), {k: buffer("logp", (k, rows)) for k in ks},
            tuple(buffer(name, (rows,)) for name in ("top", "total", "scale")) + (buffer("lse", (5, rows)),))


def _responsibilities(lp: np.ndarray, w: np.ndarray | None, entropy: bool, record: dict, work: tuple) -> None:
    """Overwrite the (K, P) log-densities ``lp`` with the weighted responsibilities; add the likelihood to ``record``.

    The same operations as :func:`dask_em.family.responsibilities` and
    :func:`dask_em.family.add_likelihood`, written into the thread's buffers;
    with row weights the division by each row's total and the weighting are
    one multiply by ``w / total``. ``work``: three (P,) arrays to write into
    and the (5, P) work array of the compiled kernel, which runs where it can
    (:func:`dask_em._compiled.normalize`: the same in one call that releases the GIL).
    """
    if _compiled.normalize(lp, w, entropy, record, work[3]):
        return
    p = lp.shape[1]
    top, total, scale = work[:3]
    # Reductions through the ufuncs' own methods: np.max / np.sum / ndarray.min are Python
    # wrappers whose cost holds the GIL, once per panel.
    np.maximum.reduce(lp, axis=0, out=top)
    # The floor only where some value falls below it: np.maximum costs twice the
    # np.min that rules it out (55 us against 18 us per 131,072 values).
    needs_floor = not np.minimum.reduce(lp, axis=None) - np.maximum.reduce(top) >= _LOG_RESP_FLOOR
    np.subtract(lp, top, out=lp)
    if needs_floor:
        np.maximum(lp, _LOG_RESP_FLOOR, out=lp)
    np.exp(lp, out=lp)
    np.add.reduce(lp, axis=0, out=total)
    if w is None or entropy:
        np.divide(lp, total, out=lp)
        if entropy:
            per_row = xlogy(lp, lp).sum(0)
            record["entropy"] += float(per_row.sum() if w is None else np.dot(w, per_row))
        if w is not None:
            np.multiply(lp, w, out=lp)
    else:
        np.divide(w, total, out=scale)
        np.multiply(lp, scale, out=lp)
    np.log(total, out=total)
    total += top  # the rows' log-likelihoods
    if w is None:
        record["loglik"] += float(total.sum())
        record["wsum"] += float(p)
    else:
        record["loglik"] += float(np.dot(w, total))
        record["wsum"] += float(w.sum())


def _empty_records(coefs: list[np.ndarray], m: int) -> tuple[list[dict], list[np.ndarray]]:
    """Each restart's empty record and (K, m + 1) sums."""
    return ([{"loglik": 0.0, "wsum": 0.0, "entropy": 0.0} for _ in coefs],
            [np.zeros((len(coef), m + 1)) for coef in coefs])


def _finish(family: DesignFamily, records: list[dict], sums: list[np.ndarray], params_list: list[Params],
            m: int) -> list[dict]:
    """Each restart's record from its summed (K, m + 1) statistics (the masses in the last column)."""
    for rec, acc, params in zip(records, sums, params_list):
        rec["nk"] = acc[:, m].copy()
        rec["stats"] = family.stats_from(np.ascontiguousarray(acc[:, :m]), params)
    return records


def design_estep(
    family: DesignFamily, x: np.ndarray, w: np.ndarray | None, params_list: list[Params], entropy: bool = False,
    panel: int | None = None,
) -> list[dict]:
    """E-step of several restarts on one chunk of complete rows: one record per restart (see ``Family.estep``).

    ``panel`` rows per panel [:func:`panel_rows` of the design's width].
    """
    n, d = x.shape
    m = family.design_width(d)
    panel = max(1, min(n, panel or panel_rows(m)))
    coefs = []
    for params in params_list:
        a, c = family.coefficients(params)
        with np.errstate(divide="ignore"):
            log_w = np.log(params["weights"])
        coefs.append(np.ascontiguousarray(np.concatenate([a, (c + log_w)[:, None]], axis=1)))
    records, sums = _empty_records(coefs, m)
    # Bernoulli and categorical designs run compiled where they can: a restart's whole chunk in one
    # call that releases the GIL, with the same panels, GEMMs and sums as the loop below.
    design = family.compiled_design(d) if n > 0 else None
    compiled = design is not None and all(
        _compiled.rows_estep(x, w, None if isinstance(design, str) else design, coef, panel, entropy, rec, acc,
                             buffer)
        for coef, rec, acc in zip(coefs, records, sums))
    if compiled:
        return _finish(family, records, sums, params_list, m)
    if design is not None:  # a later restart's kernel declined after earlier ones ran: start again in numpy
        records, sums = _empty_records(coefs, m)
    ks = {len(coef) for coef in coefs}
    full = _panel_views(panel, m + 1, ks)  # made once: each view costs a few us of held GIL
    full[0][:, m] = 1.0  # panels of fewer rows are prefixes of this buffer: the same ones column
    part = [buffer(f"part{len(coef)}", coef.shape) for coef in coefs]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for lo in range(0, n, panel):
            hi = min(lo + panel, n)
            z, lps, work = full if hi - lo == panel else _panel_views(hi - lo, m + 1, ks)
            xp = x[lo:hi]
            wp = None if w is None else w[lo:hi]
            family.fill_design(xp, z)
            constant = family.design_constant(xp, z, wp)
            for coef, rec, acc, out in zip(coefs, records, sums, part):
                lp = lps[len(coef)]
                # np.dot, not np.matmul: matmul keeps the GIL through a GEMM whose output is
                # small (the (K, m + 1) statistics: 100-300 us a panel, measured), which
                # serialised two threads; np.dot releases it around every BLAS call.
                np.dot(coef, z.T, out=lp)
                rec["loglik"] += constant
                _responsibilities(lp, wp, entropy, rec, work)
                np.dot(lp, z, out=out)
                acc += out
    return _finish(family, records, sums, params_list, m)


# Values of a device tile's widest temporary (its design, or its (rows, K) log-densities).
DEVICE_TILE_ELEMENTS = 2**25


def _device_design(family: DesignFamily, x):
    """The chunk's design and row constant on its device, or None where the family declines."""
    xp = namespace(x)
    if family.missing != "error" and "float" in str(x.dtype) and bool(xp.any(xp.isnan(x))):
        return None  # missing values: the host's route
    z = family.device_design(xp, x)
    if z is None:
        return None
    constant = family.device_row_constant(xp, x, z)
    if constant is None:
        return None
    return xp, z, constant


def device_estep(family: DesignFamily, x, w, params_list: list[Params], entropy: bool = False) -> list[dict] | None:
    """:func:`design_estep` on a chunk of another array-API library, on its device; None to decline.

    Per tile of rows and restart: ``L = Z @ A.T + c + log w`` (one GEMM), the
    log-sum-exp over components, ``S += R.T @ Z`` (one GEMM); only ``S`` and
    the scalars come to the host.
    """
    made = _device_design(family, x)
    if made is None:
        return None
    xp, z, constant = made
    n, m = z.shape
    wd = None if w is None else weights_like(w, x)
    coefs = []
    for params in params_list:
        a, c = family.coefficients(params)
        with np.errstate(divide="ignore"):
            log_w = np.log(params["weights"])
        coefs.append((like(np.ascontiguousarray(a.T), x, np.float64), like(c + log_w, x, np.float64)))
    widest = max(m, max(len(params["weights"]) for params in params_list), 1)
    tile = max(1, DEVICE_TILE_ELEMENTS // widest)
    accs = [{**likelihood_sums(xp, x), "sums": None} for _ in params_list]
    for lo in range(0, n, tile):
        hi = min(lo + tile, n)
        zt = z[lo:hi, :]
        wt = None if wd is None else wd[lo:hi]
        ct = None if isinstance(constant, float) else constant[lo:hi]
        for (a_t, c), acc in zip(coefs, accs):
            log_norm, resp = xp_log_normalize(xp, zt @ a_t + c)
            add_likelihood_xp(xp, acc, log_norm if ct is None else log_norm + ct, resp, wt, entropy)
            rw = resp if wt is None else resp * wt[:, None]
            part = xp.concat([xp.matrix_transpose(rw) @ zt, xp.sum(rw, axis=0)[:, None]], axis=1)
            acc["sums"] = part if acc["sums"] is None else acc["sums"] + part
    records = []
    for acc, params in zip(accs, params_list):
        k = len(params["weights"])
        sums = np.zeros((k, m + 1)) if acc["sums"] is None else to_numpy(acc["sums"])
        records.append({**likelihood_record(acc), "nk": sums[:, m].copy(),
                        "stats": family.stats_from(np.ascontiguousarray(sums[:, :m]), params)})
    return records


def device_weighted_log_prob(family: DesignFamily, x, params: Params):
    """(rows, K) weighted log-densities of a device chunk, on its device; None to decline."""
    made = _device_design(family, x)
    if made is None:
        return None
    xp, z, constant = made
    a, c = family.coefficients(params)
    with np.errstate(divide="ignore"):
        log_w = np.log(params["weights"])
    out = z @ like(np.ascontiguousarray(a.T), x, np.float64) + like(c + log_w, x, np.float64)
    return out if isinstance(constant, float) else out + constant[:, None]
