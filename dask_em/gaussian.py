"""The Gaussian family: pure functions from data to statistics to parameters.

Nothing here knows about Dask. :class:`GaussianFamily` (at the end) puts them
behind the family protocol of :mod:`dask_em.family`; its fused ``estep`` calls
four things, for one covariance type at a time:

``prepare(params)``
    Turn the parameters of one restart into the matrices a panel needs (stacked
    precision Cholesky factors, offsets, log-normalisers). Done once per chunk.
``augment(x, shift, out)``
    Write the float64 design matrix of a panel of rows into ``out`` (``x - shift``
    followed by whatever columns the type's products need), shared by every
    restart that visits the tile.
``panel_stats(xa, w, view, acc)``
    Log-density of every row under every component, responsibilities, and the
    partial sufficient statistics, added into the accumulator ``acc``.
``m_step(stats, reg_covar)``
    Reduced statistics to new parameters.

All coordinates are *centered*: the engine subtracts one shift ``c`` (the mean
of the initialisation sample) from every row before anything else, and the
``means`` held in ``params`` are ``mu - c``. Statistics are additive dicts of
float64 arrays, so merging partial statistics is a plain sum (the family's
default ``merge``).

Numerics
--------
* ``full`` and ``tied``: second moments are accumulated about the previous
  iteration's means, ``b_k = sum_i w_i r_ik (x_i - m_k)(x_i - m_k)^T``, so a
  component far from the data's center loses nothing to cancellation.
* ``diag`` and ``spherical``: raw moments about the shift ``c``; the variance
  of component k then carries a relative error of about
  ``eps * (|mu_k - c| / sigma_k)**2`` (2e-12 for components 100 sigma from
  the center). Centering per component would cost K*d elementwise passes per
  row, several times the whole diagonal E-step.
* Log space throughout (an in-place log-sum-exp over the components).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg

from .family import Family, add_likelihood, responsibilities

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

# Mirrors scikit-learn: component masses get 10 eps so empty components
# divide by a tiny number instead of zero.
_MASS_EPS = 10 * np.finfo(np.float64).eps
_LOG_2PI = math.log(2 * math.pi)

Params = dict[str, Any]
Stats = dict[str, Any]


class NotPositiveDefiniteError(ArithmeticError):
    """A covariance estimate is not positive definite."""


# ---------------------------------------------------------------------------
# Precision Cholesky factors
# ---------------------------------------------------------------------------


def _not_pd(component: int | None) -> NotPositiveDefiniteError:
    which = "the tied covariance" if component is None else f"component {component}"
    return NotPositiveDefiniteError(
        f"the covariance of {which} is not positive definite (a component "
        "collapsed onto a point or a line). Increase reg_covar, reduce "
        "n_components, or scale the features."
    )


def _chol_precision_from_cov(cov: np.ndarray, component: int | None) -> np.ndarray:
    try:
        cov_chol = linalg.cholesky(cov, lower=True)
    except linalg.LinAlgError:
        raise _not_pd(component) from None
    eye = np.eye(cov.shape[0])
    return linalg.solve_triangular(cov_chol, eye, lower=True).T


def precision_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Upper-triangular factors ``U`` with ``U @ U.T = inv(cov)``, as scikit-learn."""
    if covariance_type == "full":
        return np.stack(
            [_chol_precision_from_cov(c, k) for k, c in enumerate(covariances)]
        )
    if covariance_type == "tied":
        return _chol_precision_from_cov(covariances, None)
    bad = np.flatnonzero(np.atleast_1d(covariances <= 0).reshape(len(covariances), -1).any(1))
    if bad.size:
        raise _not_pd(int(bad[0]))
    return 1.0 / np.sqrt(covariances)


def _flip(a: np.ndarray) -> np.ndarray:
    return a[::-1, ::-1]


def precision_cholesky_from_precisions(
    precisions: np.ndarray, covariance_type: str
) -> np.ndarray:
    """Cholesky factors from user-given precisions (``precisions_init``)."""
    if covariance_type == "full":
        return np.stack(
            [_flip(linalg.cholesky(_flip(p), lower=True)) for p in precisions]
        )
    if covariance_type == "tied":
        return _flip(linalg.cholesky(_flip(precisions), lower=True))
    return np.sqrt(precisions)


def precisions_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    if covariance_type == "full":
        return np.matmul(prec_chol, prec_chol.transpose(0, 2, 1))
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def covariances_from_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Covariances from precision factors (for parameters given as precisions)."""
    if covariance_type == "full":
        return np.stack([_cov_from_upper(u) for u in prec_chol])
    if covariance_type == "tied":
        return _cov_from_upper(prec_chol)
    return 1.0 / prec_chol**2


def _cov_from_upper(u: np.ndarray) -> np.ndarray:
    inv = linalg.solve_triangular(u, np.eye(u.shape[0]), lower=False)
    return inv.T @ inv


def log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, n_features: int) -> np.ndarray:
    """log det of each component's precision Cholesky factor, shape (K,) or ()."""
    if covariance_type == "full":
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(1)
    if covariance_type == "tied":
        return np.log(np.diag(prec_chol)).sum()
    if covariance_type == "diag":
        return np.log(prec_chol).sum(1)
    return n_features * np.log(prec_chol)


# ---------------------------------------------------------------------------
# E-step on one row tile
# ---------------------------------------------------------------------------
#
# Work is done on *panels* of rows laid out feature-major: ``xa`` has one
# column per data row. Elementwise work (the log-sum-exp, the weighting) runs
# once over a whole panel, in long vectorized calls that release the GIL; on
# 512-row tiles the same calls were too short to (measured: two threads gave
# no speed-up on 4096-element ufuncs, 2x on 1M-element ones). Only the GEMMs
# whose outputs are K*d rows tall walk the panel in cache-sized tiles.
#
# "full"/"tied": xa = [x - c, 1]^T of shape (d + 1, P). One GEMM against the
# stacked factors [U_k^T, -U_k^T m_k] gives every whitened residual
# U_k^T (x - m_k) of a tile at once; a second GEMM with a block indicator
# sums their squares per component and adds the log-normalisers.
#
# "diag"/"spherical": xa = [(x - c)**2, x - c, 1]^T of shape (2d + 1, P); one
# GEMM against a (K, 2d + 1) matrix gives every log-density of the panel, and
# one GEMM of the weighted responsibilities against xa gives all statistics.

# Rows per tile times K*d: 2**16 (512 rows at d=16, K=8). Measured on 2 cores,
# one thread: 512-row tiles 0.94-1.0 s per 2M rows, 128 rows 1.16 s, 2048 1.17 s.
_TILE_CELLS = 2**16

# Panel size: the (K, P) log-density matrix holds 2**16 values (P = 8192 rows
# at K = 8). Measured on 2 cores at d=16, K=8: 2**16 gave 0.52 s per 2M rows
# on two threads, 2**14 0.59 s, 2**19 0.58 s, 512-row tiles alone 0.69 s.
_PANEL_CELLS = 2**16


def _pow2_floor(value: float) -> int:
    return 1 << max(0, int(value).bit_length() - 1)


def tile_rows(n_components: int, n_features: int) -> int:
    """Rows per GEMM tile: the (K*d, tile) work matrices stay in a 1-2 MiB L2 cache.

    A power of two, so that tiles and panels nest (see :func:`panel_rows`).
    """
    return min(4096, max(128, _pow2_floor(_TILE_CELLS // max(1, n_components * n_features))))


def panel_rows(n_components: int, n_features: int) -> int:
    """Rows per panel for one restart: a power of two, a multiple of its tile.

    Powers of two nest: a chunk walked in panels of the largest size among the
    restarts of a round visits each restart's own panels exactly as a fit of
    that restart alone would, so its sums (and its model) are bitwise the same
    whatever other restarts or candidates share the round.
    """
    width = 2 * n_features + 1
    rows = min(_PANEL_CELLS // max(n_components, 1), 8 * _PANEL_CELLS // width)
    return max(tile_rows(n_components, n_features), _pow2_floor(rows))


def layout(covariance_type: str) -> str:
    """Which design matrix a covariance type reads: restarts of one layout share it."""
    return "full" if covariance_type in ("full", "tied") else "diag"


def _augment_full(x: np.ndarray, shift: np.ndarray, out: np.ndarray) -> np.ndarray:
    d, t = shift.shape[0], x.shape[0]
    out = out[:, :t]
    np.subtract(x.T, shift[:, None], out=out[:d])
    return out


def _augment_diag(x: np.ndarray, shift: np.ndarray, out: np.ndarray) -> np.ndarray:
    d, t = shift.shape[0], x.shape[0]
    out = out[:, :t]
    np.subtract(x.T, shift[:, None], out=out[d : 2 * d])
    np.square(out[d : 2 * d], out=out[:d])
    return out


def augmented_width(covariance_type: str, n_features: int) -> int:
    return n_features + 1 if covariance_type in ("full", "tied") else 2 * n_features + 1


def design_buffer(covariance_type: str, n_features: int, rows: int) -> np.ndarray:
    """An empty design matrix for panels of up to ``rows`` rows (its ones row set)."""
    buf = np.empty((augmented_width(covariance_type, n_features), rows))
    buf[-1] = 1.0
    return buf


def augment(covariance_type: str, x: np.ndarray, shift: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write the design matrix of the rows ``x`` into ``out[:, :len(x)]`` and return it.

    ``out`` comes from :func:`design_buffer`, whose last row stays 1.
    """
    if covariance_type in ("full", "tied"):
        return _augment_full(x, shift, out)
    return _augment_diag(x, shift, out)


def _log_const(params: Params, covariance_type: str, d: int) -> np.ndarray:
    with np.errstate(divide="ignore"):
        log_w = np.log(params["weights"])
    log_det = log_det_cholesky(params["precisions_cholesky"], covariance_type, d)
    return log_w + log_det - 0.5 * d * _LOG_2PI


def _prepare_full(params: Params, covariance_type: str, tile: int) -> dict:
    means = params["means"]
    k, d = means.shape
    pc = params["precisions_cholesky"]
    if covariance_type == "tied":
        pc = np.broadcast_to(pc, (k, d, d))
    stacked = np.empty((k * d, d + 1))
    stacked[:, :d] = pc.transpose(0, 2, 1).reshape(k * d, d)
    stacked[:, d] = -np.einsum("kd,kde->ke", means, pc).reshape(k * d)
    # [-0.5 * block indicator, log-normaliser]: against [squared residuals; 1]
    # it gives every weighted log-density in one GEMM.
    collect = np.empty((k, k * d + 1))
    collect[:, : k * d] = -0.5 * np.kron(np.eye(k), np.ones((1, d)))
    collect[:, k * d] = _log_const(params, covariance_type, d)
    resid = np.empty((k * d + 1, tile))
    resid[k * d] = 1.0
    return {
        "stacked": stacked,
        "collect": collect,
        "means": means,
        "tile": tile,
        # Work matrices reused by every tile.
        "resid": resid,
        "weighted": np.empty((k, d, tile)),
    }


def _prepare_diag(params: Params, covariance_type: str, tile: int) -> dict:
    means = params["means"]
    k, d = means.shape
    pc = params["precisions_cholesky"]
    prec = np.broadcast_to((pc**2)[:, None], (k, d)) if covariance_type == "spherical" else pc**2
    proj = np.empty((k, 2 * d + 1))
    proj[:, :d] = -0.5 * prec
    proj[:, d : 2 * d] = means * prec
    proj[:, 2 * d] = -0.5 * (means**2 * prec).sum(1) + _log_const(params, covariance_type, d)
    return {"proj": proj, "means": means, "tile": tile}


def prepare(params: Params, covariance_type: str, tile: int) -> dict:
    """Per-restart matrices for :func:`panel_stats`; GEMMs walk ``tile`` rows at a time."""
    if covariance_type in ("full", "tied"):
        return _prepare_full(params, covariance_type, tile)
    return _prepare_diag(params, covariance_type, tile)


def _weighted_log_prob_full(xa: np.ndarray, view: dict) -> np.ndarray:
    p, t = xa.shape[1], view["tile"]
    k = view["collect"].shape[0]
    out = np.empty((k, p))
    for lo in range(0, p, t):
        hi = min(lo + t, p)
        resid = view["resid"][:, : hi - lo]
        np.matmul(view["stacked"], xa[:, lo:hi], out=resid[:-1])
        np.square(resid[:-1], out=resid[:-1])
        np.matmul(view["collect"], resid, out=out[:, lo:hi])
    return out


def _weighted_log_prob_diag(xa: np.ndarray, view: dict) -> np.ndarray:
    return view["proj"] @ xa


def weighted_log_prob(xa: np.ndarray, view: dict, covariance_type: str) -> np.ndarray:
    """log(weight_k) + log N(x | mu_k, Sigma_k) for a panel, shape (K, P)."""
    if covariance_type in ("full", "tied"):
        return _weighted_log_prob_full(xa, view)
    return _weighted_log_prob_diag(xa, view)


def empty_stats(covariance_type: str, n_components: int, n_features: int) -> Stats:
    k, d = n_components, n_features
    stats: Stats = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0}
    if covariance_type in ("full", "tied"):
        stats.update(n=np.zeros(k), xw=np.zeros((k * d, d + 1)))
    else:
        stats["moments"] = np.zeros((k, 2 * d + 1))
    return stats


def accumulate(
    xa: np.ndarray,
    w: np.ndarray | None,
    resp: np.ndarray,
    means: np.ndarray,
    covariance_type: str,
    acc: Stats,
    view: dict | None = None,
) -> None:
    """Add the statistics of one panel into ``acc``.

    ``xa`` is the panel's design matrix (width, P), ``resp`` its
    responsibilities (K, P), ``w`` its row weights (P,) or None.
    """
    rw = resp if w is None else np.multiply(resp, w, out=resp)
    if covariance_type in ("full", "tied"):
        p = xa.shape[1]
        k, d = means.shape
        t = view["tile"] if view else p
        work = view["weighted"] if view else np.empty((k, d, t))
        acc["n"] += rw.sum(1)
        for lo in range(0, p, t):
            hi = min(lo + t, p)
            # r_ik (x_i - m_k) as a (K*d, t) matrix; one GEMM with [x - c, 1]
            # gives sum_i r_ik (x_i - m_k)(x_i - c)^T and, in its last column, a_k.
            weighted = work[:, :, : hi - lo]
            np.subtract(xa[None, :d, lo:hi], means[:, :, None], out=weighted)
            weighted *= rw[:, None, lo:hi]
            acc["xw"] += weighted.reshape(k * d, hi - lo) @ xa[:, lo:hi].T
    else:
        acc["moments"] += rw @ xa.T


def panel_stats(
    xa: np.ndarray,
    w: np.ndarray | None,
    view: dict,
    covariance_type: str,
    acc: Stats,
    entropy: bool = False,
) -> None:
    """E-step on one panel: log-likelihood and statistics added into ``acc``.

    With ``entropy``, also the (weighted) sum of sum_k r_ik log r_ik, for ICL.
    """
    log_norm, resp = responsibilities(weighted_log_prob(xa, view, covariance_type))
    add_likelihood(acc, log_norm, resp, w, entropy)
    accumulate(xa, w, resp, view["means"], covariance_type, acc, view)


def finish_stats(stats: Stats, means: np.ndarray, covariance_type: str) -> Stats:
    """Close a chunk's accumulator: express every moment about the means used.

    Turns the GEMM output ``sum_i r_ik (x_i - m_k)(x_i - c)^T`` into the
    centered second moment ``b_k = sum_i r_ik (x_i - m_k)(x_i - m_k)^T`` by
    removing ``a_k m_k^T``; only full/tied need it.
    """
    if covariance_type not in ("full", "tied"):
        return stats
    k, d = means.shape
    xw = stats.pop("xw")
    stats["a"] = xw[:, d].reshape(k, d)
    # xw[k] = sum_i r_ik (x_i - m_k)(x_i - c)^T; subtract a_k m_k^T.
    stats["b"] = xw[:, :d].reshape(k, d, d) - stats["a"][:, :, None] * means[:, None, :]
    return stats


# ---------------------------------------------------------------------------
# M-step
# ---------------------------------------------------------------------------


def component_mass(stats: Stats, covariance_type: str) -> np.ndarray:
    if covariance_type in ("full", "tied"):
        return stats["n"]
    return stats["moments"][:, -1]


def m_step(
    stats: Stats, means: np.ndarray, covariance_type: str, reg_covar: float
) -> Params:
    """New parameters from reduced statistics taken about ``means`` (centered).

    Matches ``sklearn.mixture.GaussianMixture._m_step`` in exact arithmetic.
    Raises :class:`NotPositiveDefiniteError` when a covariance is singular.
    """
    d = means.shape[1]
    if covariance_type in ("full", "tied"):
        n, a, b = stats["n"], stats["a"], stats["b"]
        nk = n + _MASS_EPS
        delta = a / nk[:, None]
        new_means = means + delta
        # sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T with mu_k = m_k + delta_k.
        scatter = b - (2.0 - n / nk)[:, None, None] * a[:, :, None] * delta[:, None, :]
        scatter = 0.5 * (scatter + scatter.transpose(0, 2, 1))
        if covariance_type == "full":
            cov = scatter / nk[:, None, None]
            cov[:, np.arange(d), np.arange(d)] += reg_covar
        else:
            cov = scatter.sum(0) / nk.sum()
            cov.flat[:: d + 1] += reg_covar
    else:
        moments = stats["moments"]
        s2, s1, n = moments[:, :d], moments[:, d : 2 * d], moments[:, 2 * d]
        nk = n + _MASS_EPS
        new_means = s1 / nk[:, None]
        cov = s2 / nk[:, None] - new_means**2 + reg_covar
        if covariance_type == "spherical":
            cov = cov.mean(1)
    weights = nk / nk.sum()
    return {
        "weights": weights,
        "means": new_means,
        "covariances": cov,
        "precisions_cholesky": precision_cholesky(cov, covariance_type),
    }


def n_parameters(n_components: int, n_features: int, covariance_type: str) -> int:
    """Free parameters of the mixture, as ``GaussianMixture._n_parameters``."""
    k, d = n_components, n_features
    cov = {
        "full": k * d * (d + 1) / 2.0,
        "tied": d * (d + 1) / 2.0,
        "diag": k * d,
        "spherical": k,
    }[covariance_type]
    return int(cov + k * d + k - 1)


def _sample_counts(params: Params, covariance_type: str, counts: np.ndarray, rng: np.random.Generator):
    """``counts[k]`` rows of each component k, in component order, and their labels."""
    means, cov = params["means"], params["covariances"]
    k, d = means.shape
    xs, ys = [], []
    for j, (mean, count) in enumerate(zip(means, counts)):
        if covariance_type == "full":
            draws = rng.multivariate_normal(mean, cov[j], count, method="cholesky")
        elif covariance_type == "tied":
            draws = rng.multivariate_normal(mean, cov, count, method="cholesky")
        else:
            scale = np.sqrt(cov[j])
            draws = mean + rng.standard_normal((count, d)) * scale
        xs.append(draws)
        ys.append(np.full(count, j, dtype=np.int64))
    return np.vstack(xs), np.concatenate(ys)


# ---------------------------------------------------------------------------
# The family object the engine uses
# ---------------------------------------------------------------------------


def _shift(sample: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """The centering point: the (weighted) mean of the sample, in float64."""
    sample = np.asarray(sample, dtype=np.float64)
    if weights is not None and weights.sum() > 0:
        return np.average(sample, axis=0, weights=weights)
    return sample.mean(0)


_PER_COMPONENT = ("weights", "means", "n", "a", "b", "moments")


@dataclass(frozen=True)
class GaussianFamily(Family):
    """Gaussian components; the covariance type travels in each restart's params.

    One family object serves every covariance type, so a model-selection grid
    runs all its candidates in one E-step task per chunk, sharing the design
    matrices of the panels. ``context`` is the shift ``c`` (see the module
    docstring); parameters are held centered.
    """

    reg_covar: float = 1e-6
    name = "gaussian"
    lazy_row_check = True  # NaN or inf rows make the log-likelihood non-finite

    def check_rows(self, x):
        finite = np.isfinite(x)
        if finite.all():
            return None
        row = int(np.flatnonzero(~finite.all(1))[0])
        return row, "X contains NaN or infinity", (
            "Remove or impute those rows before fitting, e.g. X[da.isfinite(X).all(axis=1)]."
        )

    def context(self, sample, weights):
        return _shift(sample, weights)

    def init_features(self, sample, context):
        return np.asarray(sample, dtype=np.float64) - context

    def start_given(self, settings):
        return all(settings.get(k) is not None for k in ("weights_init", "means_init", "precisions_init"))

    def init_params(self, x, w, resp, context, settings):
        """As ``sklearn.mixture.GaussianMixture._initialize``, on the sample."""
        ct = settings["covariance_type"]
        weights_init, means_init, precisions_init = (
            settings.get(k) for k in ("weights_init", "means_init", "precisions_init")
        )
        x = np.asarray(x, dtype=np.float64)
        k, d = settings["n_components"], context.shape[0]
        params: Params = {"dropped": []}
        if resp is not None:
            xa = augment(ct, x, context, design_buffer(ct, d, len(x)))
            acc = empty_stats(ct, k, d)
            ref = np.zeros((k, d))
            accumulate(xa, w, resp.T, ref, ct, acc)
            stats = finish_stats(acc, ref, ct)
            mass = component_mass(stats, ct)
            total = float(mass.sum())
            keep = mass >= 1e-6 * total / max(x.shape[0], 1)
            if not keep.all() and weights_init is None and means_init is None:
                # More components than distinct rows: the start's empty clusters are
                # dropped here as the engine drops components that empty. (With
                # user-given weights or means the shapes must stay; the engine
                # drops the component after its first E-step instead.)
                stats = self.select(stats, keep)
                ref, mass = ref[keep], mass[keep]
                params["dropped"] = [int(i) for i in np.flatnonzero(~keep)]
            try:
                params.update(m_step(stats, ref, ct, self.reg_covar))
            except NotPositiveDefiniteError as exc:
                return {"error": f"at the start: {exc}"}
            # scikit-learn divides the start's masses by n_samples, not by their sum.
            params["weights"] = (mass + _MASS_EPS) / total
        if weights_init is not None:
            params["weights"] = np.asarray(weights_init, dtype=np.float64)
        if means_init is not None:
            params["means"] = np.asarray(means_init, dtype=np.float64) - context
        if precisions_init is not None:
            pc = precision_cholesky_from_precisions(np.asarray(precisions_init, dtype=np.float64), ct)
            params["precisions_cholesky"] = pc
            params["covariances"] = covariances_from_cholesky(pc, ct)
        params["covariance_type"] = ct
        return params

    def estep(self, x, w, params_list, context, entropy=False):
        """All restarts on one chunk, walking it in panels shared by every restart.

        The panel sizes are nested powers of two (:func:`panel_rows`), so each
        restart sums exactly what it would sum alone.
        """
        shift = context
        n, d = x.shape[0], shift.shape[0]
        sizes = [(tile_rows(len(p["weights"]), d), panel_rows(len(p["weights"]), d)) for p in params_list]
        views = [prepare(p, p["covariance_type"], min(t, n)) for p, (t, _) in zip(params_list, sizes)]
        accs = [empty_stats(p["covariance_type"], len(p["weights"]), d) for p in params_list]
        shared = max(1, min(max(panel for _, panel in sizes), n))
        bufs = {name: design_buffer(name, d, shared) for name in {layout(p["covariance_type"]) for p in params_list}}
        with np.errstate(invalid="ignore", over="ignore"):
            for lo in range(0, n, shared):
                hi = min(lo + shared, n)
                xas = {name: augment(name, x[lo:hi], shift, buf) for name, buf in bufs.items()}
                for p, (_, panel), view, acc in zip(params_list, sizes, views, accs):
                    ct = p["covariance_type"]
                    xa = xas[layout(ct)]
                    for sub in range(0, hi - lo, panel):
                        end = min(sub + panel, hi - lo)
                        wp = None if w is None else w[lo + sub : lo + end]
                        panel_stats(xa[:, sub:end], wp, view, ct, acc, entropy)
        records = []
        for acc, p in zip(accs, params_list):
            scalars = {key: acc.pop(key) for key in ("loglik", "wsum", "entropy")}
            stats = finish_stats(acc, p["means"], p["covariance_type"])
            records.append({**scalars, "nk": np.array(component_mass(stats, p["covariance_type"])), "stats": stats})
        return records

    def select(self, params_or_stats, keep):
        per_component = set(_PER_COMPONENT)
        if params_or_stats.get("covariance_type") != "tied":
            per_component |= {"covariances", "precisions_cholesky"}
        return {
            key: (value[keep] if key in per_component and value is not None else value)
            for key, value in params_or_stats.items()
        }

    def m_step(self, stats, nk, params):
        ct = params["covariance_type"]
        new = m_step(stats, params["means"], ct, self.reg_covar)
        del new["weights"]  # the engine's, from nk
        new["covariance_type"] = ct
        return new

    def weighted_log_prob(self, x, params, context):
        ct = params["covariance_type"]
        n, d = x.shape
        k = len(params["weights"])
        tile = max(1, min(tile_rows(k, d), n))
        panel = max(1, min(panel_rows(k, d), n))
        view = prepare(params, ct, tile)
        out = np.empty((n, k))
        buf = design_buffer(ct, d, panel)
        for lo in range(0, n, panel):
            hi = min(lo + panel, n)
            out[lo:hi] = weighted_log_prob(augment(ct, x[lo:hi], context, buf), view, ct).T
        return out

    def log_prob(self, x, params):
        shifted = dict(params, weights=np.ones(len(params["weights"])))
        return self.weighted_log_prob(x, shifted, np.zeros(x.shape[1]))

    def chunk_stats(self, x, rw, params):  # pragma: no cover - estep is overridden
        raise NotImplementedError("GaussianFamily computes its statistics in its fused estep")

    def n_parameters(self, params):
        k, d = params["means"].shape
        return n_parameters(k, d, params["covariance_type"]) - (k - 1)

    def sample(self, params, labels, context, rng):
        ct = params["covariance_type"]
        counts = np.bincount(labels, minlength=len(params["weights"]))
        draws, _ = _sample_counts(params, ct, counts, rng)
        return draws + context

    def to_public(self, params, context):
        ct = params["covariance_type"]
        return {
            "means_": params["means"] + context,
            "covariances_": params["covariances"],
            "precisions_cholesky_": params["precisions_cholesky"],
            "precisions_": precisions_from_cholesky(params["precisions_cholesky"], ct),
        }
