"""The Gaussian family: pure functions from data to statistics to parameters.

Nothing here knows about Dask. The engine (:mod:`dask_em._engine`) calls four
things, for one covariance type at a time:

``prepare(params)``
    Turn the parameters of one restart into the matrices a tile needs (stacked
    precision Cholesky factors, offsets, log-normalisers). Done once per chunk.
``augment(x, shift, out)``
    Write the float64 design matrix of a row tile into ``out`` (``x - shift``
    followed by whatever columns the type's products need), shared by every
    restart that visits the tile.
``tile_stats(xa, w, view, acc)``
    Log-density of every row under every component, responsibilities, and the
    partial sufficient statistics, added into the accumulator ``acc``.
``m_step(stats, reg_covar)``
    Reduced statistics to new parameters.

All coordinates are *centered*: the engine subtracts one shift ``c`` (the mean
of the initialisation sample) from every row before anything else, and the
``means`` held in ``params`` are ``mu - c``. Statistics are additive dicts of
float64 arrays, so merging partial statistics is a plain sum (``merge_stats``).

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
* Log space throughout; responsibilities from ``scipy.special.logsumexp``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import linalg
from scipy.special import logsumexp

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
# "full"/"tied": the design matrix is xa = [x - c, 1] of shape (t, d + 1) and
# one GEMM against [U_1 .. U_K ; -m_1 U_1 .. -m_K U_K] gives every whitened
# residual (x - m_k) U_k at once; a second GEMM with a block indicator sums
# their squares per component.
#
# "diag"/"spherical": xa = [(x - c)**2, x - c, 1] of shape (t, 2d + 1); one GEMM
# against a (2d + 1, K) matrix gives every log-density, and one GEMM of the
# weighted responsibilities against xa gives all statistics.


def _augment_full(x: np.ndarray, shift: np.ndarray, out: np.ndarray) -> np.ndarray:
    d = shift.shape[0]
    np.subtract(x, shift, out=out[:, :d])
    out[:, d] = 1.0
    return out


def _augment_diag(x: np.ndarray, shift: np.ndarray, out: np.ndarray) -> np.ndarray:
    d = shift.shape[0]
    np.subtract(x, shift, out=out[:, d : 2 * d])
    np.square(out[:, d : 2 * d], out=out[:, :d])
    out[:, 2 * d] = 1.0
    return out


def augmented_width(covariance_type: str, n_features: int) -> int:
    return n_features + 1 if covariance_type in ("full", "tied") else 2 * n_features + 1


def augment(covariance_type: str, x: np.ndarray, shift: np.ndarray, out: np.ndarray) -> np.ndarray:
    if covariance_type in ("full", "tied"):
        return _augment_full(x, shift, out)
    return _augment_diag(x, shift, out)


def _log_const(params: Params, covariance_type: str, d: int) -> np.ndarray:
    with np.errstate(divide="ignore"):
        log_w = np.log(params["weights"])
    log_det = log_det_cholesky(params["precisions_cholesky"], covariance_type, d)
    return log_w + log_det - 0.5 * d * _LOG_2PI


def _prepare_full(params: Params, covariance_type: str) -> dict:
    means = params["means"]
    k, d = means.shape
    pc = params["precisions_cholesky"]
    if covariance_type == "tied":
        pc = np.broadcast_to(pc, (k, d, d))
    stacked = np.empty((d + 1, k * d))
    stacked[:d] = pc.transpose(1, 0, 2).reshape(d, k * d)
    stacked[d] = -np.einsum("kd,kde->ke", means, pc).reshape(k * d)
    block_sum = np.kron(np.eye(k), np.ones((d, 1)))
    return {
        "stacked": stacked,
        "block_sum": block_sum,
        "const": _log_const(params, covariance_type, d),
        "means": means,
    }


def _prepare_diag(params: Params, covariance_type: str) -> dict:
    means = params["means"]
    k, d = means.shape
    pc = params["precisions_cholesky"]
    prec = np.broadcast_to((pc**2)[:, None], (k, d)) if covariance_type == "spherical" else pc**2
    proj = np.empty((2 * d + 1, k))
    proj[:d] = -0.5 * prec.T
    proj[d : 2 * d] = (means * prec).T
    proj[2 * d] = -0.5 * (means**2 * prec).sum(1) + _log_const(params, covariance_type, d)
    return {"proj": proj, "means": means}


def prepare(params: Params, covariance_type: str) -> dict:
    """Per-restart matrices for :func:`tile_stats`, built once per chunk."""
    if covariance_type in ("full", "tied"):
        return _prepare_full(params, covariance_type)
    return _prepare_diag(params, covariance_type)


def _weighted_log_prob_full(xa: np.ndarray, view: dict) -> np.ndarray:
    resid = xa @ view["stacked"]
    np.square(resid, out=resid)
    return view["const"] - 0.5 * (resid @ view["block_sum"])


def _weighted_log_prob_diag(xa: np.ndarray, view: dict) -> np.ndarray:
    return xa @ view["proj"]


def weighted_log_prob(xa: np.ndarray, view: dict, covariance_type: str) -> np.ndarray:
    """log(weight_k) + log N(x | mu_k, Sigma_k) for a tile, shape (t, K)."""
    if covariance_type in ("full", "tied"):
        return _weighted_log_prob_full(xa, view)
    return _weighted_log_prob_diag(xa, view)


def responsibilities(wlp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row log-likelihood and responsibilities from weighted log-probs."""
    log_norm = logsumexp(wlp, axis=1)
    with np.errstate(invalid="ignore"):
        resp = np.exp(wlp - log_norm[:, None])
    return log_norm, resp


def empty_stats(covariance_type: str, n_components: int, n_features: int) -> Stats:
    k, d = n_components, n_features
    stats: Stats = {"loglik": 0.0, "wsum": 0.0}
    if covariance_type in ("full", "tied"):
        stats.update(n=np.zeros(k), a=np.zeros((k, d)), xw=np.zeros((d, k * d)))
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
) -> None:
    """Add the statistics of one tile with given responsibilities into ``acc``."""
    rw = resp if w is None else resp * w[:, None]
    if covariance_type in ("full", "tied"):
        t = xa.shape[0]
        k, d = means.shape
        xc = xa[:, :d]
        # r_ik (x_i - m_k), laid out (t, K*d) for one GEMM against x - c.
        centered = np.subtract(xc[:, None, :], means[None])
        centered *= rw[:, :, None]
        centered = centered.reshape(t, k * d)
        acc["n"] += rw.sum(0)
        acc["a"] += centered.sum(0).reshape(k, d)
        acc["xw"] += xc.T @ centered
    else:
        acc["moments"] += rw.T @ xa


def tile_stats(
    xa: np.ndarray, w: np.ndarray | None, view: dict, covariance_type: str, acc: Stats
) -> None:
    """E-step on one tile: log-likelihood and statistics added into ``acc``."""
    log_norm, resp = responsibilities(weighted_log_prob(xa, view, covariance_type))
    if w is None:
        acc["loglik"] += float(log_norm.sum())
        acc["wsum"] += float(xa.shape[0])
    else:
        acc["loglik"] += float(np.dot(w, log_norm))
        acc["wsum"] += float(w.sum())
    accumulate(xa, w, resp, view["means"], covariance_type, acc)


def finish_stats(stats: Stats, means: np.ndarray, covariance_type: str) -> Stats:
    """Close a chunk's accumulator: express every moment about the means used.

    Turns the GEMM output ``sum_i (x_i - c) r_ik (x_i - m_k)^T`` into the
    centered second moment ``b_k = sum_i r_ik (x_i - m_k)(x_i - m_k)^T`` by
    removing ``m_k a_k^T``; only full/tied need it.
    """
    if covariance_type not in ("full", "tied"):
        return stats
    k, d = means.shape
    xw = stats.pop("xw").reshape(d, k, d).transpose(1, 0, 2)
    stats["b"] = xw - means[:, :, None] * stats["a"][:, None, :]
    return stats


def merge_stats(parts: list[Stats]) -> Stats:
    """Sum partial statistics (all taken about the same reference means)."""
    out = {key: (np.copy(v) if isinstance(v, np.ndarray) else v) for key, v in parts[0].items()}
    for part in parts[1:]:
        for key, value in part.items():
            out[key] = out[key] + value
    return out


# ---------------------------------------------------------------------------
# M-step
# ---------------------------------------------------------------------------


def component_mass(stats: Stats, covariance_type: str) -> np.ndarray:
    if covariance_type in ("full", "tied"):
        return stats["n"]
    return stats["moments"][:, -1]


def drop_components(stats: Stats, keep: np.ndarray, covariance_type: str) -> Stats:
    out = dict(stats)
    if covariance_type in ("full", "tied"):
        out.update(n=stats["n"][keep], a=stats["a"][keep], b=stats["b"][keep])
    else:
        out["moments"] = stats["moments"][keep]
    return out


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


def sample(params: Params, covariance_type: str, n_samples: int, rng: np.random.Generator):
    """Draw ``n_samples`` rows (centered coordinates) and their component labels."""
    weights, means, cov = params["weights"], params["means"], params["covariances"]
    k, d = means.shape
    counts = rng.multinomial(n_samples, weights)
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
