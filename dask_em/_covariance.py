"""The Gaussian covariance layouts, as objects chosen by a dict keyed by covariance type.

scikit-learn's four (``full``, ``tied``, ``diag``, ``spherical``) and mclust's
fourteen parsimonious models (``EII`` ... ``VVV``, :class:`ParsimoniousLayout`:
the full layout's E-step and statistics, the model's own M-step from
:mod:`dask_em._parsimonious`).

A layout bundles everything that differs between ``full``, ``tied``, ``diag``
and ``spherical`` (as flox bundles an aggregation's chunk / combine /
finalize): the design matrix a panel of rows is turned into, the per-restart
matrices the E-step multiplies it with, the statistics it accumulates, the
M-step, the Cholesky algebra of its precisions and its shapes. Pure numpy;
nothing here knows about Dask or mixtures of restarts::

    LAYOUTS[covariance_type].kernel(params, dtype)           the layout the fused E-step runs on
    LAYOUTS[covariance_type].augment(x, shift, buf)          rows -> design matrix (width, P)
    LAYOUTS[...].prepare(params, tile)                       params -> view (once per chunk)
    LAYOUTS[...].weighted_log_prob(xa, view)                 (K, P) log(w_k) + log N(x | k)
    LAYOUTS[...].accumulate(xa, w, resp, means, acc, view)   statistics of a panel into acc
    LAYOUTS[...].finish(stats, means)                        a chunk's statistics, centered
    LAYOUTS[...].m_step(stats, means, reg_covar)             reduced statistics -> parameters

Design matrices (one column per data row, so elementwise work runs over long rows):

* ``full``/``tied``: ``xa = [x - c, 1]^T`` of shape (d + 1, P). One GEMM against
  the stacked factors ``[U_k^T, -U_k^T m_k]`` gives every whitened residual of a
  tile; their squares are summed per component (a reduction over d rows) and
  the log-normalisers added once per panel. Second moments are accumulated
  as raw moments about ``c`` (:class:`_RawStatistics`: ``r_ik (x_i - c)``
  times the design, one elementwise pass) and turned into ``b_k = sum_i r_ik
  (x_i - m_k)(x_i - m_k)^T`` by ``finish``; where a mean lies far from ``c``
  (see below) about the previous means instead (``r_ik (x_i - m_k)``, two
  passes), so such a component loses nothing to cancellation.
* ``full``/``tied`` at small d (the *moment design*, :class:`_MomentDesign`,
  picked per restart by :meth:`FullLayout.kernel`): ``phi = [vech((x - c)(x -
  c)^T), x - c, 1]^T`` of shape (d(d+1)/2 + d + 1, P), built once per panel and
  shared by every restart on it. One (K, width) GEMM gives every log-density (the
  quadratic forms expanded about ``c``), one GEMM of the responsibilities every
  statistic, as raw moments about ``c``; ``finish`` turns them into the
  residual design's ``n, a, b`` by exact algebra, so nothing downstream changes.
  Half the GEMM flops and no (K·d, P) elementwise passes: 0.44-0.47 s per 2M
  rows at d=16, K=8 (one thread's CPU time) against 0.70-0.78 s. Raw moments carry the
  covariance error ``eps * (1 + D_k**2)``, ``D_k`` the Mahalanobis distance of
  ``c`` from mean k: a restart with any ``D_k**2`` above
  ``MOMENT_MAX_DISTANCE2`` (2**20 in float64, 2**10 in float32) stays on the
  residual design with statistics about the means; d above the measured
  crossover for its K (``moment_max_features``) takes the residual design with
  raw statistics.
* ``diag``/``spherical``: ``xa = [(x - c)**2, x - c, 1]^T`` of shape (2d + 1, P);
  one GEMM against a (K, 2d + 1) matrix gives every log-density of the panel,
  and one GEMM of the weighted responsibilities against ``xa`` all statistics.
  Raw moments about the shift ``c``: the variance of component k carries a
  relative error of about ``eps * (|mu_k - c| / sigma_k)**2`` (2e-12 at 100
  sigma from the center); centering per component would cost K*d elementwise
  passes per row, several times the whole diagonal E-step.
"""

from __future__ import annotations

import functools
import functools
import math
from typing import Any

import numpy as np
from scipy import linalg

from . import _compiled, _parsimonious
from ._machine import aligned_empty
from .family import MASS_EPS, core_caches, gemm_nt, work_array

_LOG_2PI = math.log(2 * math.pi)

Params = dict[str, Any]
Stats = dict[str, Any]


class NotPositiveDefiniteError(ArithmeticError):
    """A covariance estimate is not positive definite."""


# What a restart's error says when a covariance collapsed (the fit's error then leads with scikit-learn's words).
COLLAPSED = "not positive definite (a component collapsed onto a point or a line)"

# scikit-learn's error when a fit's covariances collapse, word for word: code written against it matches it.
ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined empirical covariance (for instance "
    "caused by singleton or collapsed samples). Try to decrease the number of components, increase reg_covar, or "
    "scale the input data."
)


def not_positive_definite(component: int | None) -> NotPositiveDefiniteError:
    which = "the tied covariance" if component is None else f"component {component}"
    return NotPositiveDefiniteError(
        f"the covariance of {which} is {COLLAPSED}. Increase reg_covar, reduce "
        "n_components, or scale the features."
    )


def _multivariate_normal(rng, mean: np.ndarray, cov: np.ndarray, count: int) -> np.ndarray:
    """``count`` draws: a ``RandomState`` draws as scikit-learn's ``sample`` (its SVD method, its rows for its
    seed), a ``Generator`` by the Cholesky factor."""
    if isinstance(rng, np.random.RandomState):
        return rng.multivariate_normal(mean, cov, count)
    return rng.multivariate_normal(mean, cov, count, method="cholesky")


def _chol_precision_from_cov(cov: np.ndarray, component: int | None) -> np.ndarray:
    # The finiteness check once, here: scipy's own (check_finite) on both calls cost
    # half of a small fit's M-step (breast_cancer, K=2, n_init=10), with the same LAPACK results.
    if not np.isfinite(cov).all():
        raise ValueError("array must not contain infs or NaNs")
    try:
        cov_chol = linalg.cholesky(cov, lower=True, check_finite=False)
    except linalg.LinAlgError:
        raise not_positive_definite(component) from None
    eye = np.eye(cov.shape[0])
    return linalg.solve_triangular(cov_chol, eye, lower=True, check_finite=False).T


def _flip(a: np.ndarray) -> np.ndarray:
    return a[::-1, ::-1]


def _cov_from_upper(u: np.ndarray) -> np.ndarray:
    inv = linalg.solve_triangular(u, np.eye(u.shape[0]), lower=False)
    return inv.T @ inv


def log_const(params: Params, log_det: np.ndarray, d: int) -> np.ndarray:
    """log(weight_k) + log det(U_k) - d/2 log(2 pi): the row-independent part of each log-density."""
    with np.errstate(divide="ignore"):
        log_w = np.log(params["weights"])
    return log_w + log_det - 0.5 * d * _LOG_2PI


def log_density_work(dtype) -> str:
    """The name of this thread's work array (:func:`dask_em.family.work_array`) for a panel's (K, P) log-densities.

    One per compute dtype; the restarts of a round use it one after another
    (each panel's log-densities are consumed before the next restart's).
    """
    return f"gaussian-log-density-{np.dtype(dtype).char}"  # .char: .name is Python code, run every chunk


# ---------------------------------------------------------------------------
# full / tied
# ---------------------------------------------------------------------------


class FullLayout:
    """One (d, d) covariance per component; the design ``[x - c, 1]``."""

    name = "full"
    design = "full"  # restarts whose layouts share a design share its matrix on every panel
    per_component = True  # the covariance arrays have a component axis

    # -- shapes and counts --------------------------------------------------

    def shape(self, k: int, d: int) -> tuple[int, ...]:
        return (k, d, d)

    def n_cov_parameters(self, k: int, d: int) -> float:
        return k * d * (d + 1) / 2.0

    # -- Cholesky algebra -----------------------------------------------------

    def precision_cholesky(self, cov: np.ndarray) -> np.ndarray:
        """Upper-triangular ``U`` with ``U @ U.T = inv(cov)``, as scikit-learn."""
        return np.stack([_chol_precision_from_cov(c, k) for k, c in enumerate(cov)])

    def cholesky_from_precisions(self, precisions: np.ndarray) -> np.ndarray:
        return np.stack([_flip(linalg.cholesky(_flip(p), lower=True)) for p in precisions])

    def precisions(self, prec_chol: np.ndarray) -> np.ndarray:
        return np.matmul(prec_chol, prec_chol.transpose(0, 2, 1))

    def covariances(self, prec_chol: np.ndarray) -> np.ndarray:
        return np.stack([_cov_from_upper(u) for u in prec_chol])

    def log_det(self, prec_chol: np.ndarray, d: int) -> np.ndarray:
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(1)

    def check_precisions(self, p: np.ndarray) -> None:
        for i, mat in enumerate(p):
            if not np.allclose(mat, mat.T) or np.linalg.eigvalsh(mat).min() <= 0:
                raise ValueError(
                    f"The parameter '{self.name} precision' should be symmetric, positive-definite, but precisions_init[{i}] "
                    "is not: pass each component's inverse covariance."
                )

    def _stacked_factors(self, prec_chol: np.ndarray, k: int, d: int) -> np.ndarray:
        return prec_chol

    # -- E-step -------------------------------------------------------------

    def kernel(self, params: Params, dtype=np.float64) -> FullLayout:
        """The layout whose design the fused E-step of ``params`` runs on.

        Where raw moments about the shift lose nothing that matters (every
        mean within ``MOMENT_MAX_DISTANCE2`` of it): the moment design
        (:class:`_MomentDesign`) where it is faster (d at most
        ``moment_max_features(K)``), else this design with raw-moment
        statistics (:class:`_RawStatistics`). Otherwise this layout itself.
        """
        k, d = params["means"].shape
        dist2 = _mahalanobis2(params, self)
        if not (dist2.max(initial=0.0) <= MOMENT_MAX_DISTANCE2[np.dtype(dtype)]):  # NaN: not safe either
            return self
        return MOMENT_LAYOUTS[self.name] if d <= moment_max_features(k) else RAW_LAYOUTS[self.name]

    def panel_rows(self, k: int, d: int, dtype) -> int | None:
        """Rows per panel where this layout wants its own (None: the family's default)."""
        return None

    # -- E-step on the residual design ---------------------------------------

    def width(self, d: int) -> int:
        return d + 1

    def buffer_rows(self, d: int) -> int:
        """Rows of a design buffer (the design's width, plus any scratch rows its ``augment`` uses)."""
        return self.width(d)

    def product_design(self, view: dict, d: int) -> tuple | None:
        """None: the residual design is no product design (see :meth:`residual_design`)."""
        return None

    def residual_design(self, view: dict, d: int) -> tuple | None:
        """``(stacked, log_const, means, raw)`` of ``view`` for :func:`dask_em._compiled.residual_estep`.

        ``raw``: statistics as raw moments about the shift (:class:`_RawStatistics`).
        """
        return view["stacked"], view["log_const"], view["means"], False

    def augment(self, x: np.ndarray, shift: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the design matrix of ``x`` into ``out[:, :len(x)]`` (its last row stays 1)."""
        d, t = shift.shape[0], x.shape[0]
        out = out[:, :t]
        np.subtract(x.T, shift[:, None], out=out[:d])
        return out

    def prepare(self, params: Params, tile: int, dtype=np.float64) -> dict:
        """The view of ``params`` the E-step multiplies panels with, in the compute ``dtype``.

        In float32 the residuals are taken about the means rounded to float32
        (``view["means"]``); :meth:`shift_stats` moves the statistics back to
        the float64 means.
        """
        means = params["means"]
        k, d = means.shape
        pc = self._stacked_factors(params["precisions_cholesky"], k, d)
        stacked = np.empty((k * d, d + 1))
        stacked[:, :d] = pc.transpose(0, 2, 1).reshape(k * d, d)
        stacked[:, d] = -np.einsum("kd,kde->ke", means, pc).reshape(k * d)
        resid = aligned_empty(k * d * tile, dtype).reshape(k * d, tile)
        return {
            "stacked": stacked.astype(dtype, copy=False),
            # log(w_k) + log det(U_k) - d/2 log(2 pi), added once per panel.
            "log_const": log_const(params, self.log_det(params["precisions_cholesky"], d), d).astype(dtype)[:, None],
            "means": means.astype(dtype, copy=False),
            "tile": tile,
            # Work matrices reused by every tile.
            "resid": resid,
            "weighted": aligned_empty(k * d * tile, dtype).reshape(k, d, tile),
            "work": log_density_work(dtype),
        }

    def weighted_log_prob(self, xa: np.ndarray, view: dict) -> np.ndarray:
        p, t = xa.shape[1], view["tile"]
        k = view["log_const"].shape[0]
        d = view["resid"].shape[0] // k
        out = work_array(view["work"], (k, p), view["resid"].dtype)
        for lo in range(0, p, t):
            hi = min(lo + t, p)
            resid = view["resid"][:, : hi - lo]
            np.matmul(view["stacked"], xa[:, lo:hi], out=resid)
            np.square(resid, out=resid)
            # The squared whitened residuals summed per component: a reduction over d
            # rows of the tile. (It replaced a GEMM with a (K, K*d) block indicator,
            # K times the additions: 0.12 s of 0.80 s thread time per 2M rows at d=16,
            # K=8, against 0.04 s; 0.74 s of 6.7 s against 0.23 s at d=64.)
            np.add.reduce(resid.reshape(k, d, hi - lo), axis=1, out=out[:, lo:hi])
        out *= -0.5
        out += view["log_const"]
        return out

    def empty_stats(self, k: int, d: int) -> Stats:
        return {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0, "n": np.zeros(k), "xw": np.zeros((k * d, d + 1))}

    def accumulate(self, xa, w, resp, means, acc: Stats, view: dict | None = None) -> None:
        """Add the statistics of one panel (``resp`` (K, P), row weights ``w`` (P,) or None) into ``acc``."""
        rw = resp if w is None else np.multiply(resp, w, out=resp)
        p = xa.shape[1]
        k, d = means.shape
        # Without an E-step's view (a start's M-step on its whole sample), tiles of at most 2**20 weighted
        # values (8 MiB) keep the work array small whatever the sample's rows.
        t = view["tile"] if view else max(1, min(p, 2**20 // max(k * d, 1)))
        work = view["weighted"] if view else np.empty((k, d, t))
        acc["n"] += rw.sum(1, dtype=np.float64)
        for lo in range(0, p, t):
            hi = min(lo + t, p)
            weighted = self._weigh(xa[:d, lo:hi], means, rw[:, lo:hi], work[:, :, : hi - lo])
            acc["xw"] += gemm_nt(weighted.reshape(k * d, hi - lo), xa[:, lo:hi])

    @staticmethod
    def _weigh(x: np.ndarray, means: np.ndarray, rw: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``r_ik (x_i - m_k)`` as a (K, d, t) array: its GEMM with ``[x - c, 1]`` gives
        ``sum_i r_ik (x_i - m_k)(x_i - c)^T`` and, in its last column, ``a_k``."""
        np.subtract(x[None], means[:, :, None], out=out)
        out *= rw[:, None]
        return out

    def finish(self, stats: Stats, means: np.ndarray) -> Stats:
        """Turn ``sum_i r_ik (x_i - m_k)(x_i - c)^T`` into ``b_k`` by removing ``a_k m_k^T``."""
        k, d = means.shape
        xw = stats.pop("xw")
        stats["a"] = xw[:, d].reshape(k, d)
        stats["b"] = xw[:, :d].reshape(k, d, d) - stats["a"][:, :, None] * means[:, None, :]
        return stats

    def shift_stats(self, stats: Stats, means: np.ndarray, new_means: np.ndarray) -> Stats:
        """Statistics taken about ``means`` re-expressed about ``new_means`` (exact algebra)."""
        e = new_means - means
        a, n = stats["a"], stats["n"]
        b = stats["b"] - a[:, :, None] * e[:, None, :] - e[:, :, None] * a[:, None, :]
        b += n[:, None, None] * e[:, :, None] * e[:, None, :]
        return {**stats, "a": a - n[:, None] * e, "b": b}

    def mass(self, stats: Stats) -> np.ndarray:
        return stats["n"]

    # -- M-step -------------------------------------------------------------

    def _scatter(self, stats: Stats, means: np.ndarray):
        n, a, b = stats["n"], stats["a"], stats["b"]
        nk = n + MASS_EPS
        delta = a / nk[:, None]
        new_means = means + delta
        # sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T with mu_k = m_k + delta_k.
        scatter = b - (2.0 - n / nk)[:, None, None] * a[:, :, None] * delta[:, None, :]
        scatter = 0.5 * (scatter + scatter.transpose(0, 2, 1))
        return nk, new_means, scatter

    def m_step(self, stats: Stats, means: np.ndarray, reg_covar: float, previous: np.ndarray | None = None):
        """(mass + eps, new means, covariances) from statistics taken about ``means``.

        ``previous``: the covariances EM holds now (a warm start for the models
        whose M-step iterates; the closed forms ignore it).
        """
        d = means.shape[1]
        nk, new_means, scatter = self._scatter(stats, means)
        cov = scatter / nk[:, None, None]
        cov[:, np.arange(d), np.arange(d)] += reg_covar
        return nk, new_means, cov

    # -- sampling -----------------------------------------------------------

    def draw(self, mean, cov, j: int, count: int, rng: np.random.Generator | np.random.RandomState) -> np.ndarray:
        return _multivariate_normal(rng, mean, cov[j], count)


class TiedLayout(FullLayout):
    """One (d, d) covariance shared by every component."""

    name = "tied"
    per_component = False

    def shape(self, k, d):
        return (d, d)

    def n_cov_parameters(self, k, d):
        return d * (d + 1) / 2.0

    def precision_cholesky(self, cov):
        return _chol_precision_from_cov(cov, None)

    def cholesky_from_precisions(self, precisions):
        return _flip(linalg.cholesky(_flip(precisions), lower=True))

    def precisions(self, prec_chol):
        return prec_chol @ prec_chol.T

    def covariances(self, prec_chol):
        return _cov_from_upper(prec_chol)

    def log_det(self, prec_chol, d):
        return np.log(np.diag(prec_chol)).sum()

    def check_precisions(self, p):
        if not np.allclose(p, p.T) or np.linalg.eigvalsh(p).min() <= 0:
            raise ValueError(
                "The parameter 'tied precision' should be symmetric, positive-definite, but precisions_init is not: "
                "pass the inverse of the shared covariance."
            )

    def _stacked_factors(self, prec_chol, k, d):
        return np.broadcast_to(prec_chol, (k, d, d))

    def m_step(self, stats, means, reg_covar, previous=None):
        d = means.shape[1]
        nk, new_means, scatter = self._scatter(stats, means)
        cov = scatter.sum(0) / nk.sum()
        cov.flat[:: d + 1] += reg_covar
        return nk, new_means, cov

    def draw(self, mean, cov, j, count, rng):
        return _multivariate_normal(rng, mean, cov, count)


# ---------------------------------------------------------------------------
# full / tied at small d: the moment design
# ---------------------------------------------------------------------------

# The moment design replaces the residual design of full/tied restarts with K
# components when d is at most MOMENT_MAX_FEATURES[i] for the last i with
# MOMENT_MIN_COMPONENTS[i] <= K ... Its cost hardly depends on K below 8 (building
# the design, d(d+1)/2 products a row, and GEMMs of K rows that BLAS runs at a
# fraction of its peak: 10-20 GFLOP/s for K < 8, 36 at K = 8, one thread), the
# residual design's grows with K: measured crossovers (thread CPU time,
# benchmarks/bench_kernel.py --components, float64; float32 gains more):
# K=2 none at d >= 16 (d=8: 0.91x), K=3-4 about d=8-16, K=6 d=16, K=8 d=32-48 (0.75x at
# d=28, 0.96-0.98x at 32-40, 1.13x at 48),
# K=16 above 56 (0.77x at d=56), K=32 0.47x at d=32.
MOMENT_MIN_COMPONENTS = (3, 5, 8, 16)
MOMENT_MAX_FEATURES = (8, 16, 32, 56)
# With the compiled kernels (dask_em._compiled: the design built in one pass, no numpy call per
# panel) the moment design wins further out. Thread CPU time per row, moment over residual,
# float64, one thread, AMD EPYC (OpenBLAS Haswell kernels), chunks of 32 MiB: K=3 0.91 at d=16,
# 1.30 at 32; K=4 0.75 at 16, 1.04 at 32; K=5 0.90 at 32, 1.20 at 64; K=6 0.80 at 32, 1.02 at 64;
# K=8 0.77 at 64, 0.87 at 96, 0.99 at 128 (float32 0.89 at 64); K=16 0.60 at 64, 0.73 at 128;
# K=32 0.43 at 64, 0.55 at 128. Measured again with both designs' whole chunks compiled (the moment
# design's statistics product and the residual design's kernel, chunks of 16 MiB): K=3 1.03 at d=16,
# 1.32 at 24; K=4 0.80 at 16, 0.94 at 24, 1.07 at 32; K=5 0.99 at 32, 1.13 at 48; K=8 0.78 at 64,
# 0.92 at 96, 0.98 at 128; K=16 0.75 at 128: the same limits hold. On an Intel Xeon (AVX-512,
# 2 MiB L2, OpenBLAS SkylakeX kernels), with the panels below, moment over residual: K=8 0.45 at
# d=16, 0.58 at 32, 0.77 at 64, 0.84-0.88 at 80, 1.12-1.28 at 96 (float32 0.99-1.02 at 64-80, 1.37-1.50
# at 96); K=16 0.94 at 96, 0.99 at 128. With the pair kernel for short panels (Intel, 2M rows, one
# thread, float64): K=8 0.80 at d=96 (9.5 against 11.9 s), 0.75 at 112 (12.2 against 16.4), 1.25 at
# 128 (27.2 against 21.7: there the panels fall back to the last-level cache's); float32 1.00, 1.02,
# 1.12. On the AMD machine the moment design was at 0.92 at 96 and 0.98 at 128. Then the residual
# design's statistics became a symmetric product (half the multiply-adds: 1.2-1.3x faster in float64,
# 1.1-1.15x in float32); again on the Intel Xeon, one thread, moment over residual, float64 (float32):
# K=3 0.79 (0.93) at d=16; K=4 0.57 (0.72) at 16; K=5 0.97 (1.15) at 32; K=6 0.94 (1.12) at 32;
# K=8 0.79-0.85 (0.87-1.00) at 80, 1.17-1.20 (1.29-1.32) at 88, 0.98-1.06 (1.44) at 96, 1.09 (1.54) at 112;
# K=12 0.93-0.96 (0.96-1.11) at 80-88, 0.80 (1.03) at 96; K=16 0.95-0.96 (0.93-1.07) at 80-88, 1.05-1.24
# (1.29) at 96, 2.26 (1.84) at 128; K=32 0.94 (0.99) at 96. K=8-15 stop at 80, K >= 16 at 88.
MOMENT_MAX_FEATURES_COMPILED = (16, 32, 80, 88)

# ... and every component's mean lies within this squared Mahalanobis distance
# (under its own precision) of the shift: the moments are raw, about the shift,
# and the covariance of component k carries a relative error of about
# eps * (1 + D_k**2) (float64: 2**20 -> 2e-10; float32: 2**10 -> 6e-5, inside the 1e-4 that
# compute_dtype="float32" states; on benchmarks/bench_em.py's data, D**2 of 128-396, float32's
# covariances came out 1.5e-6 from float64's, and at 64 that data kept the slower residual design).
MOMENT_MAX_DISTANCE2 = {np.dtype(np.float64): 2.0**20, np.dtype(np.float32): 2.0**10}

# Bytes of one moment-design panel: the panel is written once and read by the
# log-density GEMM and the statistics GEMM, so it should stay in cache between them;
# and each panel costs a dozen numpy calls whose fixed part holds the GIL, so small
# panels serialise two threads. Measured on 2M x 16, K=8, whole iterations (AMD EPYC,
# 2 cores, quiet, three interleaved runs): 4 MiB 0.247-0.255 s on two threads (1.74-1.79x
# one thread), 8 MiB 0.227-0.228 s (1.83-1.89x), 16 MiB 0.260-0.262 s (1.50-1.57x: two
# threads' panels no longer share the cache), 1 MiB 0.41-0.45 s (1.2-1.3x). So a panel
# fills one core's share of the last-level cache (16 MiB shared by 2 cores there),
# read from the machine, within 1-32 MiB.
MOMENT_PANEL_BYTES = min(2**25, max(2**20, core_caches()[1]))
# The compiled kernel (no numpy call per panel, one BLAS call) prefers panels that fit one core's
# L2 cache, of at least 256 rows (float64; 512 in float32): thread time per 256k x 16 chunk, K=8,
# one thread, AMD EPYC (L2 512 KiB): 60.5 ms with 512 KiB panels against 65.5 ms with 8 MiB ones
# (float32 33.5 against 36.4), two threads equal within noise; at d=64 a 512 KiB panel is 32
# rows, and fewer than 256 rows cost up to 2x (407 ms at 32 rows against 196 at 256).
# Measured again on an Intel Xeon (AVX-512, 2 MiB L2 a core), one thread, K=8, 2M rows, thread time
# (benchmarks/bench_kernel.py), float64, by the panel's bytes: d=16 0.31 s at 80-310 KiB (64-256
# rows), 0.32 at 620 KiB, 0.40 at 1.2 MiB, 0.46 at 2.5 MiB; d=32 0.98 s at 560 KiB, 1.13 at 280,
# 1.32 at 1.1 MiB; d=64 4.3-4.5 s at 540 KiB (32 rows), 5.3-5.6 at 1.1 MiB, 6.8 at 4.2 MiB (256
# rows), 5.6 at 270 KiB (16 rows), 8.2 at 8 rows. The design and the BLAS's packed copy of it share
# the cache: a panel takes at most half of one core's L2. Where that holds fewer than 16 rows,
# panels of 256 rows (float64; 512 in float32) run from the last-level cache instead, as on the AMD
# EPYC above. Panels of 16 to 64 rows (float64; 128 in float32) take the pair kernel
# (dask_em._compiled.stats_rows), whose statistics do not read the design: on the Intel Xeon, d=96,
# K=8, float64, 2M rows, one thread, 9.1 s at 16 rows against 19.0 s at 256 rows (d=64, BLAS threads
# not limited: 3.6 s at 32 rows, 4.0 at 16, 7.3-7.7 at 64 or 256; d=128: 16 rows 24 s, 8 rows 23 s).
MOMENT_PANEL_BYTES_COMPILED = core_caches()[0] // 2
MOMENT_PANEL_MIN_ROWS_COMPILED = 16
MOMENT_PANEL_LLC_ROWS_COMPILED = 256


def compiled_panel_rows(width: int, dtype) -> int:
    """Rows per panel of the compiled kernel on a product design ``width`` rows tall: the design
    takes at most half of one core's L2 (``MOMENT_PANEL_BYTES_COMPILED``), or where that holds
    fewer than ``MOMENT_PANEL_MIN_ROWS_COMPILED`` rows, ``MOMENT_PANEL_LLC_ROWS_COMPILED`` float64
    rows' bytes from the last-level cache. A power of two."""
    itemsize = np.dtype(dtype).itemsize
    fits = _pow2(MOMENT_PANEL_BYTES_COMPILED // (width * itemsize))
    return fits if fits >= MOMENT_PANEL_MIN_ROWS_COMPILED else MOMENT_PANEL_LLC_ROWS_COMPILED * 8 // itemsize


def moment_max_features(k: int) -> int:
    """The largest d at which a K-component full/tied E-step runs on the moment design (0: never)."""
    i = int(np.searchsorted(MOMENT_MIN_COMPONENTS, k, side="right"))
    limits = MOMENT_MAX_FEATURES_COMPILED if _compiled.products_run() else MOMENT_MAX_FEATURES
    return limits[i - 1] if i else 0


def _mahalanobis2(params: Params, layout: FullLayout) -> np.ndarray:
    """(K,) squared distances ``|U_k^T m_k|**2`` of the shift (the origin) from each mean."""
    means = params["means"]
    k, d = means.shape
    pc = layout._stacked_factors(params["precisions_cholesky"], k, d)
    return (np.einsum("kd,kde->ke", means, pc) ** 2).sum(1)


class _MomentDesign:
    """Full/tied E-step on the design ``phi = [vech((x - c)(x - c)^T), x - c, 1]``.

    Width ``d(d+1)/2 + d + 1``; the last ``d + 1`` rows are the residual design
    (the products come first, ordered by :func:`_vech_pairs`).
    Every component's log-density is one row of one (K, width) @ (width, P)
    GEMM (the quadratic form expanded about the shift ``c``, off-diagonal
    coefficients doubled), and every statistic one (K, P) @ (P, width) GEMM:
    raw moments about ``c``, which :meth:`finish` turns into the residual
    design's ``n, a, b`` about the means by exact algebra, so the M-step and
    everything downstream see the same statistics.
    """

    design = "moments"

    def width(self, d: int) -> int:
        return d * (d + 1) // 2 + d + 1

    def panel_rows(self, k: int, d: int, dtype) -> int:
        row = self.width(d) * np.dtype(dtype).itemsize
        rows = _pow2(MOMENT_PANEL_BYTES // row)
        if _compiled.products_run():
            rows = min(rows, compiled_panel_rows(self.width(d), dtype))
        return rows

    def buffer_rows(self, d: int) -> int:
        """Rows of a design buffer: the design, then the scratch rows ``[y, y[:offsets - 1]]`` of :meth:`augment`."""
        return self.width(d) + d + (d + 1) // 2 - 1

    def augment(self, x: np.ndarray, shift: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The design of ``x`` in ``out[:width, :len(x)]`` (see :func:`_vech_pairs` for the order of the products).

        The products of each circular offset ``o < (d + 1) // 2`` are one window
        ``z[o : o + d]`` of the scratch rows ``z = [y, y[:offsets - 1]]``, so all of
        them are one broadcast multiply: a handful of numpy calls a panel, not
        one per feature (each call's fixed cost holds the GIL).
        """
        d, t = shift.shape[0], x.shape[0]
        q, width, offsets = d * (d + 1) // 2, self.width(d), (d + 1) // 2
        design = out[:width, :t]
        if _compiled.product_design(x, shift, _vech_pairs(d), out):  # one call that releases the GIL
            return design
        y = design[q : q + d]
        np.subtract(x.T, shift[:, None], out=y)
        z = out[width : width + d + offsets - 1, :t]
        np.copyto(z[:d], y)
        np.copyto(z[d:], y[: offsets - 1])
        step, shape = z.strides[0], (offsets, d, t)
        if out.flags.c_contiguous:  # a strided view in 2.5 us; as_strided takes 14 us of held GIL
            windows = np.ndarray(shape, out.dtype, out, width * step, (step, step, z.strides[1]))
        else:
            windows = np.lib.stride_tricks.as_strided(z, shape=shape, strides=(step, step, z.strides[1]))
        np.multiply(z[None, :d], windows, out=design[: offsets * d].reshape(offsets, d, t))
        if d % 2 == 0:  # offset d/2 pairs row i with row i + d/2: d/2 distinct products
            np.multiply(y[: d // 2], y[d // 2 :], out=design[offsets * d : q])
        return design

    def prepare(self, params: Params, tile: int, dtype=np.float64) -> dict:
        means = params["means"]
        k, d = means.shape
        q = d * (d + 1) // 2
        pc = self._stacked_factors(params["precisions_cholesky"], k, d)
        prec = np.matmul(pc, pc.transpose(0, 2, 1))
        rows, cols = _vech_pairs(d)
        coef = np.empty((k, self.width(d)))
        # -1/2 y^T P y: -1/2 P_ii on the squares, -P_ij on each product i < j.
        coef[:, :q] = -prec[:, rows, cols]
        coef[:, :q][:, rows == cols] *= 0.5
        coef[:, q : q + d] = np.einsum("kij,kj->ki", prec, means)
        coef[:, -1] = log_const(params, self.log_det(params["precisions_cholesky"], d), d) - 0.5 * _mahalanobis2(
            params, self
        )
        padded = np.zeros((_gemm_rows(k), coef.shape[1]), dtype=dtype)
        padded[:k] = coef
        # The statistics are float64 moments about the shift: "means" stay float64 (nothing to shift back).
        return {"coef": padded, "k": k, "means": means, "tile": tile, "out": None, "resp": None,
                "work": log_density_work(dtype)}

    def product_design(self, view: dict, d: int) -> tuple:
        """(pairs, coefficients, K) of the compiled E-step on this design (:func:`dask_em._compiled.product_estep`)."""
        return _vech_pairs(d), view["coef"], view["k"]

    def weighted_log_prob(self, xa: np.ndarray, view: dict) -> np.ndarray:
        """(K, P) log-densities: the first K rows of a (padded rows, P) product whose padding rows stay 0 (or NaN).

        The product goes into this thread's work array; ``view`` remembers it,
        so that :meth:`accumulate` runs its statistics GEMM on the padded rows
        when it receives these rows back as responsibilities.
        """
        coef, k = view["coef"], view["k"]
        out = work_array(view["work"], (coef.shape[0], xa.shape[1]), coef.dtype)
        np.matmul(coef, xa, out=out)
        view["out"], view["resp"] = out, out[:k]
        return view["resp"]

    def empty_stats(self, k: int, d: int) -> Stats:
        return {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0, "moments": np.zeros((k, self.width(d)))}

    def accumulate(self, xa, w, resp, means, acc: Stats, view: dict | None = None) -> None:
        rw = resp if w is None else np.multiply(resp, w, out=resp)
        if view is not None and rw is view["resp"] and view["out"].shape[0] > rw.shape[0]:
            # the responsibilities in their padded rows: the faster GEMM
            acc["moments"] += gemm_nt(view["out"], xa)[: rw.shape[0]]
        else:
            acc["moments"] += gemm_nt(rw, xa)

    def finish(self, stats: Stats, means: np.ndarray) -> Stats:
        """Raw moments about the shift -> ``n``, ``a_k = sum r (x - m_k)``, ``b_k = sum r (x - m_k)(x - m_k)^T``."""
        k, d = means.shape
        q = d * (d + 1) // 2
        moments = stats.pop("moments")
        n, s1 = moments[:, -1].copy(), moments[:, q : q + d]
        rows, cols = _vech_pairs(d)
        b = np.empty((k, d, d))
        b[:, rows, cols] = moments[:, :q]
        b[:, cols, rows] = moments[:, :q]
        a, b = _about_means(n, s1, b, means)
        stats.update(n=n, a=a, b=b)
        return stats


class FullMomentLayout(_MomentDesign, FullLayout):
    """``full`` on the moment design (small d)."""


class TiedMomentLayout(_MomentDesign, TiedLayout):
    """``tied`` on the moment design (small d)."""


class _RawStatistics:
    """The residual design's E-step, its statistics as raw moments about the shift.

    ``accumulate`` weights ``x - c`` by each component's responsibilities (one
    elementwise pass over the (K*d, tile) matrix instead of two: no
    subtraction of the means) and multiplies with the design: ``sum_i r_ik
    (x_i - c)(x_i - c)^T`` and, in the last column, ``sum_i r_ik (x_i - c)``;
    ``finish`` turns them into ``n, a, b`` about the means as the moment
    design's does. Same error bound (``MOMENT_MAX_DISTANCE2``). At d=64, K=8
    (one thread): 6.07-6.21 s per 2M rows against 6.52-6.53 s.
    """

    @staticmethod
    def _weigh(x: np.ndarray, means: np.ndarray, rw: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``r_ik (x_i - c)``: the raw moments need no subtraction of the means."""
        return np.multiply(x[None], rw[:, None], out=out)

    def residual_design(self, view: dict, d: int) -> tuple:
        return view["stacked"], view["log_const"], view["means"], True

    def finish(self, stats: Stats, means: np.ndarray) -> Stats:
        k, d = means.shape
        xw = stats.pop("xw")
        n, s1 = stats["n"], xw[:, d].reshape(k, d)
        a, b = _about_means(n, s1, xw[:, :d].reshape(k, d, d).copy(), means)
        stats.update(a=a, b=b)
        return stats


class FullRawLayout(_RawStatistics, FullLayout):
    """``full``: the residual design, raw-moment statistics (above the moment design's d)."""


class TiedRawLayout(_RawStatistics, TiedLayout):
    """``tied``: the residual design, raw-moment statistics."""


def _about_means(n: np.ndarray, s1: np.ndarray, b: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw moments about the shift -> about the means: ``(a, b)``, ``b`` updated in place.

    ``n_k``, ``s1_k = sum_i r_ik y_i`` and ``b_k = sum_i r_ik y_i y_i^T`` (``y = x - c``) give
    ``a_k = s1_k - n_k m_k`` and ``b_k - s1_k m_k^T - m_k s1_k^T + n_k m_k m_k^T`` (``m_k`` about ``c``).
    """
    cross = s1[:, :, None] * means[:, None, :]
    b -= cross
    b -= cross.transpose(0, 2, 1)
    b += n[:, None, None] * means[:, :, None] * means[:, None, :]
    return s1 - n[:, None] * means, b


@functools.lru_cache(maxsize=None)
def _vech_pairs(d: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) of the moment design's d(d+1)/2 products ``y_i y_j``: each unordered pair once, by circular offset.

    Offsets ``o = 0 .. (d+1)//2 - 1`` give ``d`` products each, ``y_i y_((i + o) mod d)``
    for ``i = 0 .. d-1``; for even d, offset ``d/2`` adds its ``d/2`` distinct products.
    """
    offsets = (d + 1) // 2
    i = np.tile(np.arange(d), offsets)
    j = (i + np.repeat(np.arange(offsets), d)) % d
    if d % 2 == 0:
        i = np.concatenate([i, np.arange(d // 2)])
        j = np.concatenate([j, np.arange(d // 2) + d // 2])
    i.flags.writeable = j.flags.writeable = False
    return i, j


@functools.lru_cache(maxsize=None)
def _diagonal_pairs(d: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, i) for i < d: the diagonal design's squares, as the pairs of a product design."""
    i = np.arange(d, dtype=np.int64)
    i.flags.writeable = False
    return i, i


def _gemm_rows(k: int) -> int:
    """Rows the moment design's GEMMs run with for K components (zero rows added).

    One thread, the 153-wide design of d=16, both GEMMs per 2M rows: K=3 0.28 s,
    K=4 0.24 s; K=5-7 0.28-0.43 s, K=8 0.27 s (OpenBLAS' kernels favour 4 and 8
    rows); above 8 no padding gained.
    """
    return 4 if k == 3 else 8 if 4 < k < 8 else k


def _pow2(value: float) -> int:
    return 1 << max(0, int(value).bit_length() - 1)


# ---------------------------------------------------------------------------
# diag / spherical
# ---------------------------------------------------------------------------


# A diagonal variance at most this fraction of its raw second moment is round-off (4,000-row
# tiles summed in BLAS leave a few thousand eps at most): read as zero.
ROUNDOFF_VARIANCE = 1e-12


class DiagLayout:
    """A diagonal covariance per component, (K, d); the design ``[(x - c)**2, x - c, 1]``."""

    name = "diag"
    design = "diag"
    per_component = True

    def shape(self, k, d):
        return (k, d)

    def n_cov_parameters(self, k, d):
        return k * d

    def precision_cholesky(self, cov):
        bad = np.flatnonzero(np.atleast_1d(cov <= 0).reshape(len(cov), -1).any(1))
        if bad.size:
            raise not_positive_definite(int(bad[0]))
        return 1.0 / np.sqrt(cov)

    def cholesky_from_precisions(self, precisions):
        return np.sqrt(precisions)

    def precisions(self, prec_chol):
        return prec_chol**2

    def covariances(self, prec_chol):
        return 1.0 / prec_chol**2

    def log_det(self, prec_chol, d):
        return np.log(prec_chol).sum(1)

    def check_precisions(self, p):
        if (p <= 0).any():
            raise ValueError(
                f"The parameter '{self.name} precision' should be positive, but precisions_init holds "
                f"{int((p <= 0).sum())} value(s) <= 0 (the smallest {p.min():.5g}): pass inverse variances."
            )

    def _precision_rows(self, prec_chol, k, d):
        return prec_chol**2

    # -- E-step -------------------------------------------------------------

    def kernel(self, params, dtype=np.float64):
        return self

    def panel_rows(self, k, d, dtype):
        # Compiled, the design's panel takes half of one core's L2, as the moment design's: on an
        # Intel Xeon (2 MiB L2), one thread, d=64, the kernel's parts per 500k rows took 0.23 s in
        # 8192-row panels (the numpy kernels' size, 8.4 MiB), 0.17 in 1024, 0.12-0.13 in 256-512.
        return compiled_panel_rows(self.width(d), dtype) if _compiled.products_run() else None

    def width(self, d):
        return 2 * d + 1

    def buffer_rows(self, d):
        return self.width(d)

    def augment(self, x, shift, out):
        d, t = shift.shape[0], x.shape[0]
        if _compiled.product_design(x, shift, _diagonal_pairs(d), out):  # one call that releases the GIL
            return out[:, :t]
        out = out[:, :t]
        np.subtract(x.T, shift[:, None], out=out[d : 2 * d])
        np.square(out[d : 2 * d], out=out[:d])
        return out

    def prepare(self, params, tile, dtype=np.float64):
        means = params["means"]
        k, d = means.shape
        pc = params["precisions_cholesky"]
        prec = self._precision_rows(pc, k, d)
        proj = np.empty((k, 2 * d + 1))
        proj[:, :d] = -0.5 * prec
        proj[:, d : 2 * d] = means * prec
        proj[:, 2 * d] = -0.5 * (means**2 * prec).sum(1) + log_const(params, self.log_det(pc, d), d)
        return {"proj": proj.astype(dtype, copy=False), "means": means, "tile": tile, "work": log_density_work(dtype)}

    def product_design(self, view, d):
        """(pairs, coefficients, K) of the compiled E-step on this design: the squares are the pairs (i, i)."""
        return _diagonal_pairs(d), view["proj"], view["proj"].shape[0]

    def residual_design(self, view, d):
        """None: the diagonal design is a product design."""
        return None

    def weighted_log_prob(self, xa, view):
        proj = view["proj"]
        return np.matmul(proj, xa, out=work_array(view["work"], (proj.shape[0], xa.shape[1]), proj.dtype))

    def empty_stats(self, k, d):
        return {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0, "moments": np.zeros((k, 2 * d + 1))}

    def accumulate(self, xa, w, resp, means, acc, view=None):
        rw = resp if w is None else np.multiply(resp, w, out=resp)
        acc["moments"] += gemm_nt(rw, xa)

    def finish(self, stats, means):
        return stats

    def shift_stats(self, stats, means, new_means):
        return stats  # raw moments about the shift: no means involved

    def mass(self, stats):
        return stats["moments"][:, -1]

    # -- M-step -------------------------------------------------------------

    def m_step(self, stats, means, reg_covar, previous=None):
        d = means.shape[1]
        moments = stats["moments"]
        s2, s1, n = moments[:, :d], moments[:, d : 2 * d], moments[:, 2 * d]
        nk = n + MASS_EPS
        new_means = s1 / nk[:, None]
        second = s2 / nk[:, None]
        var = second - new_means**2
        # A component collapsed onto a value has variance zero; from raw moments it comes back
        # as round-off of the second moment (about 1e-16 of it). Read such a variance as the zero
        # it is, so that with reg_covar=0 the collapse is refused, as scikit-learn refuses it.
        var[var <= ROUNDOFF_VARIANCE * second] = 0.0
        cov = var + reg_covar
        return nk, new_means, cov

    def draw(self, mean, cov, j, count, rng):
        return mean + rng.standard_normal((count, len(mean))) * np.sqrt(cov[j])


class SphericalLayout(DiagLayout):
    """One variance per component, (K,)."""

    name = "spherical"

    def shape(self, k, d):
        return (k,)

    def n_cov_parameters(self, k, d):
        return k

    def log_det(self, prec_chol, d):
        return d * np.log(prec_chol)

    def _precision_rows(self, prec_chol, k, d):
        # An outer product, not np.broadcast_to: a few microseconds of held GIL less a chunk and restart.
        return np.multiply.outer(prec_chol**2, np.ones(d))

    def m_step(self, stats, means, reg_covar, previous=None):
        nk, new_means, cov = super().m_step(stats, means, reg_covar)
        return nk, new_means, cov.mean(1)


# ---------------------------------------------------------------------------
# mclust's fourteen models
# ---------------------------------------------------------------------------


class ParsimoniousLayout(FullLayout):
    """One of mclust's fourteen models, ``Sigma_k = lambda_k D_k A_k D_k^T`` constrained by its name.

    Held as the full layout holds its covariances, (K, d, d), and run on its
    E-step: the statistics (mass, weighted mean, weighted scatter per
    component) are the full layout's, and only the M-step differs
    (:func:`dask_em._parsimonious.covariances`). ``reg_covar`` is added to
    the diagonal after it, as for the other types; with ``reg_covar=0`` the
    covariances are the model's exactly.
    """

    def __init__(self, model: str):
        self.name = model

    def n_cov_parameters(self, k, d):
        return _parsimonious.n_covariance_parameters(self.name, k, d)

    def kernel(self, params, dtype=np.float64):
        # The full layout's E-step, with its moment and raw-moment designs where they apply.
        return LAYOUTS["full"].kernel(params, dtype)

    def m_step(self, stats, means, reg_covar, previous=None):
        d = means.shape[1]
        nk, new_means, scatter = self._scatter(stats, means)
        if previous is not None and np.shape(previous) != scatter.shape:
            previous = None  # a component was dropped since: start afresh
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            try:
                cov = _parsimonious.covariances(self.name, nk, scatter, previous)
            except np.linalg.LinAlgError:  # a singular scatter met an inverse or a decomposition
                raise NotPositiveDefiniteError(
                    f"the {self.name} covariances are {COLLAPSED}. Increase reg_covar, reduce n_components, or "
                    "scale the features."
                ) from None
        bad = np.flatnonzero(~np.isfinite(cov).reshape(len(cov), -1).all(1))
        if bad.size:
            raise not_positive_definite(int(bad[0]))
        cov[:, np.arange(d), np.arange(d)] += reg_covar
        return nk, new_means, cov

    def factors(self, cov: np.ndarray) -> dict:
        """mclust's ``scale``, ``shape`` and ``orientation`` of the covariances."""
        return _parsimonious.factors(self.name, cov)


MCLUST_MODELS = _parsimonious.MODELS
# scikit-learn's names for the four of mclust's models they are.
SYNONYMS = {"spherical": "VII", "diag": "VVI", "tied": "EEE", "full": "VVV"}

LAYOUTS: dict[str, FullLayout | DiagLayout] = {
    layout.name: layout for layout in (FullLayout(), TiedLayout(), DiagLayout(), SphericalLayout())
}
LAYOUTS.update({model: ParsimoniousLayout(model) for model in MCLUST_MODELS})
# scikit-learn's four: also the types the Bayesian mixture and the conjugate prior know.
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
# What GaussianMixture accepts: scikit-learn's four and mclust's fourteen.
GAUSSIAN_COVARIANCE_TYPES = COVARIANCE_TYPES + MCLUST_MODELS
# The E-step's alternative layouts for small d (see FullLayout.kernel); same statistics after finish.
MOMENT_LAYOUTS: dict[str, FullLayout] = {layout.name: layout for layout in (FullMomentLayout(), TiedMomentLayout())}
RAW_LAYOUTS: dict[str, FullLayout] = {layout.name: layout for layout in (FullRawLayout(), TiedRawLayout())}
