"""Gaussian rows with missing values: the E-step on each row's observed coordinates.

Under missing-at-random the likelihood of a row is the marginal density of its
observed coordinates, ``N(x_o; mu_o, S_oo)``, and EM's statistics carry the
conditional expectations of the missing ones (Ghahramani & Jordan 1994)::

    x^_m = mu_m + S_mo S_oo^-1 (x_o - mu_o)        C = S_mm - S_mo S_oo^-1 S_om

Full / tied. Written with the precision ``L = S^-1``, both need only the
missing block: ``C = (L_mm)^-1``, ``x^_m - mu_m = -C L_mo (x_o - mu_o)``,
``log det S_oo = log det S + log det L_mm`` and ``(x_o - mu_o)^T S_oo^-1
(x_o - mu_o) = z^T L z - t^T C t`` with ``z`` the residual zeroed at the
missing coordinates and ``t = (L z)_m``. So each (pattern, component) pair
needs one small |m| x |m| inverse, done once per chunk; patterns with the same
number of missing values are factorised together in one batched call, and a
row only gathers its pattern's factors. The statistics are those of
:class:`dask_em._covariance.FullLayout` (``n``, ``a``, ``b`` about the previous
means) with ``x^`` in place of ``x`` and ``C`` added to ``b``'s missing block,
so the M-step is unchanged.

Diag / spherical. The coordinates are independent within a component: a
missing one drops out of the product, its expectation is ``mu_kj`` and its
second moment ``mu_kj**2 + s_kj**2``. No grouping is needed; three GEMMs
against the zero-filled rows and the missingness mask give the log-densities
and the ``moments`` statistics of :class:`dask_em._covariance.DiagLayout`.

Everything here is centered as in :mod:`dask_em.gaussian`: rows arrive as
``x - c`` with NaN kept, and ``params["means"]`` are ``mu - c``.
"""

from __future__ import annotations

import math

import numpy as np

from ._covariance import LAYOUTS
from .family import add_likelihood, responsibilities

_LOG_2PI = math.log(2 * math.pi)

# Rows per block of the full-covariance work: the (K, rows, s, s) gathered inverses
# stay near 2**21 values (16 MiB).
_BLOCK_CELLS = 2**21


def _precisions(params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per-component precision matrices (K, d, d) and log det S_k (K,)."""
    ct = params["covariance_type"]
    pc = params["precisions_cholesky"]
    k, d = params["means"].shape
    if ct == "tied":
        pc = np.broadcast_to(pc, (k, d, d))
    prec = np.matmul(pc, pc.transpose(0, 2, 1))
    log_det_cov = -2.0 * np.log(np.diagonal(pc, axis1=1, axis2=2)).sum(1)
    return prec, log_det_cov


def _diag_variances(params: dict) -> np.ndarray:
    k, d = params["means"].shape
    cov = np.asarray(params["covariances"], dtype=np.float64)
    return np.broadcast_to(cov[:, None], (k, d)) if cov.ndim == 1 else cov


def _groups(miss: np.ndarray):
    """Rows grouped by their number of missing values s, then by pattern.

    Yields ``(s, rows, inverse, patterns)``: the rows (indices into ``miss``)
    with s missing values, each row's pattern index, and the patterns'
    missing coordinates (n_patterns, s), sorted.
    """
    counts = miss.sum(1)
    for s in np.unique(counts):
        s = int(s)
        if s == 0:
            continue
        rows = np.flatnonzero(counts == s)
        if miss.shape[1] <= 62:  # one int64 key per pattern: a 1-d unique, not a row-wise sort
            keys = miss[rows].astype(np.int64) @ (np.int64(1) << np.arange(miss.shape[1], dtype=np.int64))
            _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            patterns = np.nonzero(miss[rows[first]])[1].reshape(len(first), s)
        else:
            cols = np.nonzero(miss[rows])[1].reshape(len(rows), s)
            patterns, inverse = np.unique(cols, axis=0, return_inverse=True)
        yield s, rows, inverse.reshape(-1), patterns


class _FullWork:
    """One restart's full/tied quantities for incomplete rows (one object per chunk)."""

    def __init__(self, params: dict):
        self.means = params["means"]
        self.prec, self.log_det_cov = _precisions(params)
        with np.errstate(divide="ignore"):
            self.log_w = np.log(params["weights"])

    def pattern_factors(self, patterns: np.ndarray):
        """(K, P, s, s) inverses of L_mm (the conditional covariances) and (K, P) log det L_mm."""
        lmm = self.prec[:, patterns[:, :, None], patterns[:, None, :]]
        chol = np.linalg.cholesky(lmm)
        log_det = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(-1)
        cond_cov = np.linalg.inv(lmm)
        cond_cov = 0.5 * (cond_cov + np.swapaxes(cond_cov, -1, -2))
        return cond_cov, log_det

    def rows(self, x0: np.ndarray, obs: np.ndarray, cols: np.ndarray, cond_cov: np.ndarray,
             log_det_mm: np.ndarray, inverse: np.ndarray):
        """(K, n) weighted log-densities and (K, n, d) completed residuals x^ - mu_k of rows with s missing."""
        k, d = self.means.shape
        s = cols.shape[1]
        z = x0[None] - self.means[:, None, :] * obs[None]  # zero at the missing coordinates
        g = np.matmul(z, self.prec)  # L_k z (L symmetric)
        quad = np.einsum("knd,knd->kn", z, g)
        t = np.take_along_axis(g, np.broadcast_to(cols[None], (k,) + cols.shape), axis=2)
        c = np.einsum("knij,knj->kni", cond_cov[:, inverse], t)
        quad -= np.einsum("kni,kni->kn", t, c)
        wlp = -0.5 * ((d - s) * _LOG_2PI + self.log_det_cov[:, None] + log_det_mm[:, inverse] + quad)
        wlp += self.log_w[:, None]
        np.put_along_axis(z, np.broadcast_to(cols[None], (k,) + cols.shape), -c, axis=2)
        return wlp, z


def _blocks(n: int, k: int, s: int):
    step = max(1, _BLOCK_CELLS // max(1, k * (s * s + 4 * s + 8)))
    for lo in range(0, n, step):
        yield lo, min(lo + step, n)


def _likelihood(acc: dict, wlp: np.ndarray, w: np.ndarray | None, entropy: bool) -> np.ndarray:
    """Responsibilities (K, n) times the row weights; adds the block's likelihood to ``acc``."""
    log_norm, resp = responsibilities(wlp)
    add_likelihood(acc, log_norm, resp, w, entropy)
    return resp if w is None else resp * w


def estep_incomplete(x: np.ndarray, w: np.ndarray | None, params: dict, shift: np.ndarray,
                     entropy: bool = False) -> dict:
    """The E-step record of rows that each miss at least one value (NaN), in the layout's format.

    ``{"loglik", "wsum", "entropy", "nk", "stats"}`` as :meth:`GaussianFamily.estep`
    returns; ``stats`` adds to the complete rows' statistics key by key.
    """
    ct = params["covariance_type"]
    k, d = params["means"].shape
    miss = np.isnan(x)
    x0 = np.where(miss, 0.0, x - shift)
    obs = (~miss).astype(np.float64)
    acc = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0}
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if LAYOUTS[ct].design == "diag":
            stats = _diag_stats(x0, obs, w, params, acc, entropy)
        else:
            stats = _full_stats(x0, obs, miss, w, params, acc, entropy)
    return {**acc, "nk": np.array(LAYOUTS[ct].mass(stats)), "stats": stats}


def _full_stats(x0, obs, miss, w, params, acc, entropy) -> dict:
    k, d = params["means"].shape
    work = _FullWork(params)
    n_k, a, b = np.zeros(k), np.zeros((k, d)), np.zeros((k, d, d))
    b_flat = b.reshape(k, d * d)
    for s, rows, inverse, patterns in _groups(miss):
        cond_cov, log_det_mm = work.pattern_factors(patterns)
        mass = np.zeros((k, len(patterns)))
        for lo, hi in _blocks(len(rows), k, s):
            idx = rows[lo:hi]
            cols = patterns[inverse[lo:hi]]
            wlp, xt = work.rows(x0[idx], obs[idx], cols, cond_cov, log_det_mm, inverse[lo:hi])
            rw = _likelihood(acc, wlp, None if w is None else w[idx], entropy)
            n_k += rw.sum(1)
            weighted = xt * rw[:, :, None]
            a += weighted.sum(1)
            for j in range(k):  # one BLAS GEMM per component
                b[j] += weighted[j].T @ xt[j]
            for j in range(k):
                mass[j] += np.bincount(inverse[lo:hi], rw[j], minlength=len(patterns))
        # Each pattern's conditional covariance, once, weighted by its rows' mass.
        flat = (patterns[:, :, None] * d + patterns[:, None, :]).ravel()
        values = mass[:, :, None, None] * cond_cov
        for j in range(k):
            b_flat[j] += np.bincount(flat, values[j].ravel(), minlength=d * d)
    return {"n": n_k, "a": a, "b": b}


def _diag_parts(x0, obs, params):
    """(K, n) weighted log-densities of the observed coordinates; diag/spherical."""
    means = params["means"]
    var = _diag_variances(params)
    prec = 1.0 / var
    with np.errstate(divide="ignore"):
        log_w = np.log(params["weights"])
    per_coord = -0.5 * means**2 * prec - 0.5 * np.log(var) - 0.5 * _LOG_2PI
    wlp = (-0.5 * prec) @ (x0 * x0).T
    wlp += (means * prec) @ x0.T
    wlp += per_coord @ obs.T
    wlp += log_w[:, None]
    return wlp, var


def _diag_stats(x0, obs, w, params, acc, entropy) -> dict:
    k, d = params["means"].shape
    wlp, var = _diag_parts(x0, obs, params)
    rw = _likelihood(acc, wlp, w, entropy)
    means = params["means"]
    missing_mass = rw @ (1.0 - obs)  # (K, d): sum_i r_ik [x_ij missing]
    moments = np.empty((k, 2 * d + 1))
    moments[:, :d] = rw @ (x0 * x0) + missing_mass * (means**2 + var)
    moments[:, d : 2 * d] = rw @ x0 + missing_mass * means
    moments[:, 2 * d] = rw.sum(1)
    return {"moments": moments}


def weighted_log_prob_incomplete(x: np.ndarray, params: dict, shift: np.ndarray) -> np.ndarray:
    """(n, K) log(w_k) + log N(x_o | k) of rows with missing values (NaN)."""
    wlp, _ = _infer(x, params, shift, complete=False)
    return wlp.T


def _infer(x, params, shift, complete: bool):
    """(K, n) weighted log-densities and, with ``complete``, the rows completed per component."""
    ct = params["covariance_type"]
    k, d = params["means"].shape
    n = x.shape[0]
    miss = np.isnan(x)
    x0 = np.where(miss, 0.0, x - shift)
    obs = (~miss).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if LAYOUTS[ct].design == "diag":
            wlp, _ = _diag_parts(x0, obs, params)
            filled = None
            if complete:
                filled = np.where(miss[None], params["means"][:, None, :], x0[None])
            return wlp, filled
        work = _FullWork(params)
        wlp = np.empty((k, n))
        filled = np.empty((k, n, d)) if complete else None
        full_rows = np.flatnonzero(~miss.any(1))
        if full_rows.size:
            z = x0[full_rows][None] - params["means"][:, None, :]
            quad = np.einsum("knd,knd->kn", z, np.matmul(z, work.prec))
            wlp[:, full_rows] = -0.5 * (d * _LOG_2PI + work.log_det_cov[:, None] + quad) + work.log_w[:, None]
            if complete:
                filled[:, full_rows] = x0[full_rows][None]
        for s, rows, inverse, patterns in _groups(miss):
            cond_cov, log_det_mm = work.pattern_factors(patterns)
            for lo, hi in _blocks(len(rows), k, s):
                idx = rows[lo:hi]
                part, xt = work.rows(x0[idx], obs[idx], patterns[inverse[lo:hi]], cond_cov, log_det_mm,
                                     inverse[lo:hi])
                wlp[:, idx] = part
                if complete:
                    filled[:, idx] = xt + params["means"][:, None, :]
    return wlp, filled


def impute(x: np.ndarray, params: dict, shift: np.ndarray) -> np.ndarray:
    """Rows with each missing value replaced by E[x_m | x_o] under the mixture (observed values kept)."""
    x = np.asarray(x, dtype=np.float64)
    miss = np.isnan(x)
    out = x.copy()
    if not miss.any():
        return out
    rows = np.flatnonzero(miss.any(1))
    wlp, filled = _infer(x[rows], params, shift, complete=True)
    _, resp = responsibilities(wlp)
    expected = np.einsum("kn,knd->nd", resp, filled) + shift
    sub = out[rows]
    sub[miss[rows]] = expected[miss[rows]]
    out[rows] = sub
    return out


def any_missing(x: np.ndarray) -> bool:
    return bool(np.isnan(x).any()) if x.dtype.kind == "f" else False


__all__ = ["any_missing", "estep_incomplete", "impute", "weighted_log_prob_incomplete"]
