"""A conjugate prior for Gaussian mixtures: MAP-EM with a monotone penalized bound.

Fraley & Raftery (2007), "Bayesian regularization for normal mixture
estimation and model-based clustering", the prior of mclust's
``priorControl()``. Each component gets a normal prior on its mean given its
covariance and a conjugate prior on the covariance:

``full``  (mclust ``VVV``): ``Sigma_k ~ IW(dof, scale)``, ``mu_k | Sigma_k ~ N(mean, Sigma_k / shrinkage)``.
``tied``  (``EEE``): one ``Sigma ~ IW(dof, scale)``, ``mu_k | Sigma ~ N(mean, Sigma / shrinkage)``.
``diag``  (``VVI``): ``sigma2_kj ~ InvGamma(dof / 2, scale_j / 2)``, ``mu_kj | . ~ N(mean_j, sigma2_kj / shrinkage)``.
``spherical`` (``VII``): ``sigma2_k ~ InvGamma(dof / 2, scale / 2)``, ``mu_k | . ~ N(mean, sigma2_k I / shrinkage)``.

The M-step then maximises ``Q + log prior`` exactly (:func:`map_m_step`),
so EM increases ``loglik + log_prior`` at every iteration: the *penalized
bound*. ``shrinkage = 0`` removes the prior on the means (and its
``|Sigma|^{-1/2}`` factor). There is no prior on the weights (as mclust).

mclust's names: VVV, EEE, VVI and VII are the four above. mclust defines its
prior for six more, EII, EEI, VEI, EVI, EEV and VEV, and for none of VEE, EVE,
VVE and EVV (refused here, as mclust refuses them). Its steps for the six are
each model's maximum-likelihood step applied to the penalized scatter
``B_k = W_k + kappa (m_k - mean)(m_k - mean)^T`` (about the shrunk mean ``m_k``)
plus the prior scale, with extra counts in the denominators; they follow
mclust's EM (``me``, what ``Mclust`` runs) line for line, including where it
departs from its own one-step ``mstep``:

``EII``  ``sigma^2 = sum_k tr B_k / (dof + (n + K) d + 2)``: the scale is not used.
``EEI``  ``diag(Sigma) = (scale + sum_k diag B_k) / (dof + 1 + [kappa > 0] + n)``; the means stay unshrunk.
``VEI``  volumes ``lambda_k`` and a common shape, alternated as without a prior, on ``scale + diag B_k``,
         with ``d n_k + dof + 2 + [kappa > 0]`` for ``d n_k``.
``EVI``  shapes from ``scale + diag B_k``, the common volume over ``dof + 1 + [kappa > 0] + n``.
``EEV``  ``Sigma_k = D_k diag(sum_j omega_j) D_k^T / (dof + d + 1 + [kappa > 0] + n)``, ``omega_k, D_k``
         the eigen-decomposition of ``scale + B_k``.
``VEV``  the step without a prior on ``scale + B_k`` (the dof is not used).

With one component, mclust (``mclustBIC``, ``Mclust``: its ``mvn`` functions)
takes VII's step for EII, VVI's for EEI, VEI and EVI, and VVV's for EEE, EEV
and VEV; so does dask-em.

Each of these but EEI's is the exact maximiser of ``Q`` plus a log prior of
the form ``-1/2 sum_k [c log|Sigma_k| + tr(Sigma_k^{-1} (scale + kappa (mu_k -
mean)(mu_k - mean)^T))]`` with the count ``c`` read off its denominator (the
common determinant counted once for the models of equal volume): that is the
log prior :func:`log_prior` adds to the bound for them (up to a constant), so
their EM is monotone too. EEI's is not (its covariance step uses the shrunk
means' scatter, its means are unshrunk), and neither is mclust's one-step
``mstep`` for EEI, EVI and EEV, which counts ``dof + n + 2 + K [kappa > 0]``
(EEI, EVI) or drops the shrinkage (EEV): dask-em follows ``me``.

The default hyperparameters (:func:`default_prior`) are mclust's
``defaultPrior``: shrinkage 0.01, mean = the data's mean, dof = d + 2, and
scale = ``var(X) / K^(2/d)`` (full, tied: the covariance matrix with
denominator n - 1; its diagonal when n <= d) or ``sum(var) / d / K^(2/d)``
(diag, spherical: a scalar).

``reg_covar`` keeps scikit-learn's meaning in :func:`map_m_step`: added to
the diagonal after the step. Any ``reg_covar > 0`` makes the step a
non-maximiser again; with a prior, pass 0 (the prior keeps every covariance
positive definite, even for an empty component).

All functions take *centered* coordinates, as the rest of the library: use
:func:`center_prior` to move a prior's mean by the shift ``c``.
mclust computes BIC with a prior as the usual ``2 loglik - npar log n`` at the
MAP estimate (the log prior is not added); dask-em's ``bic`` at a MAP fit is
the same number with scikit-learn's sign.

When to use which: ``reg_covar`` (no prior) is scikit-learn's behaviour and
the maximum-likelihood answer up to a tiny ridge; use it to compare with
scikit-learn. The prior is mclust's answer for small or degenerate
components, high dimensions, and many components: EM stays monotone, a
component that empties keeps a proper covariance, and BIC matches mclust's
``Mclust(..., prior = priorControl())``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import linalg
from scipy.special import multigammaln, gammaln

from . import _parsimonious
from ._covariance import COVARIANCE_TYPES, LAYOUTS, MCLUST_MODELS
from ._namespace import to_numpy

Prior = dict[str, Any]
PRIOR_KEYS = ("shrinkage", "mean", "dof", "scale")
_LOG_2PI = math.log(2 * math.pi)
# mclust's models with its conjugate prior (mclust has none for VEE, EVE, VVE, EVV).
PRIOR_MODELS = ("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "EEV", "VEV", "VVV")
# Every covariance_type the prior is defined for: scikit-learn's four and those ten.
PRIOR_TYPES = COVARIANCE_TYPES + PRIOR_MODELS
# Types whose prior scale is a (d, d) matrix (mclust's defaultPrior); the others take a number
# (or, for the diagonal models, one per feature).
MATRIX_SCALE_TYPES = ("full", "tied", "EEE", "EEV", "VEV", "VVV")
_DIAGONAL_TYPES = ("diag", "VVI", "EEI", "VEI", "EVI")
# scikit-learn's four under their mclust names: the same steps, held in the full layout.
_AS_SKLEARN = {"VVV": "full", "EEE": "tied", "VVI": "diag", "VII": "spherical"}


def check_prior_type(covariance_type: str) -> None:
    """Refuse a covariance type the prior is not defined for, naming those it is.

    Parameters
    ----------
    covariance_type : str
        The model asked for.

    Raises
    ------
    ValueError
        When ``covariance_type`` is not in :data:`PRIOR_TYPES`.
    """
    if covariance_type not in PRIOR_TYPES:
        extra = ""
        if covariance_type in MCLUST_MODELS:
            extra = " (mclust defines no conjugate prior for VEE, EVE, VVE or EVV either)"
        raise ValueError(
            f"the conjugate prior is defined for covariance_type in {PRIOR_TYPES}; received "
            f"covariance_type={covariance_type!r}{extra}. Pick one of those, or drop the prior."
        )


def _moments(x_or_moments) -> tuple[int, np.ndarray, np.ndarray]:
    if isinstance(x_or_moments, dict):
        n = int(x_or_moments["n"])
        mean = np.asarray(x_or_moments["mean"], dtype=np.float64)
        cov = np.asarray(x_or_moments["covariance"], dtype=np.float64)
        return n, mean, cov
    x = np.asarray(x_or_moments, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(
            f"default_prior needs a 2-d array of at least 2 rows, got shape {x.shape}; or pass "
            "moments as {'n': rows, 'mean': (d,), 'covariance': (d, d) with denominator n - 1}."
        )
    return x.shape[0], x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def default_prior(x_or_moments, covariance_type: str, n_components: int, **overrides) -> Prior:
    """mclust's ``defaultPrior(data, G, modelName)`` for one covariance type.

    Parameters
    ----------
    x_or_moments : array-like of shape (n_samples, n_features), or dict
        The data, or its moments ``{"n", "mean", "covariance"}`` (covariance with
        denominator n - 1, as R's ``var``), e.g. computed out of core.
    covariance_type : str
        One of :data:`PRIOR_TYPES`: scikit-learn's four or mclust's ten with a prior.
    n_components : int
        ``G``: the scale shrinks as ``G^(-2/d)``.
    **overrides
        ``shrinkage``, ``mean``, ``dof``, ``scale`` to use instead of the defaults.

    Returns
    -------
    dict with ``shrinkage`` (float), ``mean`` (d,), ``dof`` (float) and ``scale``:
    (d, d) for :data:`MATRIX_SCALE_TYPES`, a float for the others (or (d,) if given so
    for a diagonal model).
    """
    check_prior_type(covariance_type)
    unknown = set(overrides) - set(PRIOR_KEYS)
    if unknown:
        raise ValueError(f"unknown prior settings {sorted(unknown)}; expected some of {PRIOR_KEYS}.")
    n, mean, cov = _moments(x_or_moments)
    d = mean.shape[0]
    fac = (1.0 / n_components) ** (2.0 / d)
    if covariance_type in MATRIX_SCALE_TYPES:
        scale = fac * (cov if n > d else np.diag(np.diag(cov)))
    else:
        scale = fac * float(np.trace(cov)) / d
    prior = {"shrinkage": 0.01, "mean": mean, "dof": float(d + 2), "scale": scale}
    prior.update(overrides)
    return validate_prior(prior, covariance_type, d)


def validate_prior(prior: Prior, covariance_type: str, n_features: int) -> Prior:
    """The prior with arrays as float64, checked against the model; raises ValueError."""
    missing = [k for k in PRIOR_KEYS if k not in prior]
    if missing:
        raise ValueError(f"the prior lacks {missing}; expected the keys {PRIOR_KEYS} (see default_prior).")
    d = n_features
    out = dict(prior)
    out["shrinkage"] = float(prior["shrinkage"])
    out["dof"] = float(prior["dof"])
    out["mean"] = to_numpy(prior["mean"], np.float64).reshape(-1)
    if out["shrinkage"] < 0:
        raise ValueError(f"prior shrinkage={out['shrinkage']} is negative; expected >= 0.")
    if out["mean"].shape != (d,):
        raise ValueError(f"prior mean has shape {out['mean'].shape}; expected ({d},).")
    scale = to_numpy(prior["scale"], np.float64)
    check_prior_type(covariance_type)
    if covariance_type in MATRIX_SCALE_TYPES:
        if scale.shape != (d, d):
            raise ValueError(f"prior scale has shape {scale.shape}; expected ({d}, {d}) for {covariance_type!r}.")
        try:
            linalg.cholesky(scale, lower=True)
        except linalg.LinAlgError:
            raise ValueError("the prior scale is not positive definite; pass a positive definite (d, d) matrix.") from None
    elif covariance_type in _DIAGONAL_TYPES:
        if scale.shape not in ((), (d,)):
            raise ValueError(
                f"prior scale has shape {scale.shape}; expected a number or ({d},) for {covariance_type!r}."
            )
    elif scale.shape != ():
        raise ValueError(f"prior scale has shape {scale.shape}; expected a number for {covariance_type!r}.")
    if covariance_type not in MATRIX_SCALE_TYPES and np.any(scale < 0):
        raise ValueError("the prior scale is negative; expected >= 0.")
    out["scale"] = scale if scale.shape else float(scale)
    return out


def center_prior(prior: Prior, shift: np.ndarray) -> Prior:
    """The same prior in coordinates centered at ``shift`` (its mean moves, nothing else)."""
    return dict(prior, mean=to_numpy(prior["mean"], np.float64) - shift)


def _mean_factor(prior: Prior) -> int:
    """1 when the means have a prior (each contributes a |Sigma|^{-1/2}), else 0."""
    return int(prior["shrinkage"] > 0)


def map_m_step(
    stats: dict, means: np.ndarray, covariance_type: str, reg_covar: float, prior: Prior
) -> dict:
    """MAP parameters from reduced statistics taken about ``means`` (all centered).

    Takes the statistics :func:`dask_em.gaussian.m_step` takes (full, tied: ``n``
    (K,), ``a`` (K, d), ``b`` (K, d, d) about ``means``; diag, spherical:
    ``moments`` (K, 2d + 1) = [sum r x^2, sum r x, sum r] about the shift) and
    returns the same dict (``weights``, ``means``, ``covariances``,
    ``precisions_cholesky``). ``prior`` must be centered (:func:`center_prior`).
    The step maximises the expected complete log-likelihood plus the log prior
    exactly when ``reg_covar = 0``. Matches mclust's ``mstep(..., prior=)``.
    mclust's names (:data:`PRIOR_MODELS`) take the full layout's statistics and
    return (K, d, d) covariances: the steps of mclust's ``me`` (see the module
    docstring).
    """
    if covariance_type in MCLUST_MODELS:
        return _mclust_map_step(stats, means, covariance_type, reg_covar, prior)
    kappa, mu0, nu, scale = prior["shrinkage"], prior["mean"], prior["dof"], prior["scale"]
    d = means.shape[1]
    mf = _mean_factor(prior)
    if covariance_type in ("full", "tied"):
        n, a, b = stats["n"], stats["a"], stats["b"]
        new_means = (n[:, None] * means + a + kappa * mu0) / (n + kappa)[:, None]
        delta = new_means - means
        # sum_i r_ik (x_i - mu_k)(x_i - mu_k)^T about the new means, from moments about the old.
        cross = a[:, :, None] * delta[:, None, :]
        scatter = b - cross - cross.transpose(0, 2, 1) + n[:, None, None] * delta[:, :, None] * delta[:, None, :]
        off = new_means - mu0
        scatter = scatter + kappa * off[:, :, None] * off[:, None, :]
        scatter = 0.5 * (scatter + scatter.transpose(0, 2, 1))
        if covariance_type == "full":
            cov = (scale + scatter) / (nu + n + d + 1 + mf)[:, None, None]
            cov[:, np.arange(d), np.arange(d)] += reg_covar
        else:
            k = len(n)
            cov = (scale + scatter.sum(0)) / (nu + n.sum() + d + 1 + mf * k)
            cov.flat[:: d + 1] += reg_covar
    else:
        moments = stats["moments"]
        s2, s1, n = moments[:, :d], moments[:, d : 2 * d], moments[:, 2 * d]
        new_means = (s1 + kappa * mu0) / (n + kappa)[:, None]
        resid = s2 - 2 * new_means * s1 + n[:, None] * new_means**2 + kappa * (new_means - mu0) ** 2
        resid = np.maximum(resid, 0.0)
        if covariance_type == "diag":
            cov = (scale + resid) / (nu + n + 2 + mf)[:, None] + reg_covar
        else:
            cov = (scale + resid.sum(1)) / (nu + n * d + 2 + mf * d) + reg_covar
    total = n.sum()
    weights = n / total if total > 0 else np.full(len(n), 1.0 / len(n))
    return {
        "weights": weights,
        "means": new_means,
        "covariances": cov,
        "precisions_cholesky": LAYOUTS[covariance_type].precision_cholesky(cov),
    }


def _penalized_scatter(stats: dict, means: np.ndarray, kappa: float, mu0: np.ndarray):
    """Masses, shrunk means, the rows' own means and ``B_k`` (scatter about the shrunk mean plus the mean's penalty)."""
    n, a, b = stats["n"], stats["a"], stats["b"]
    shrunk = (n[:, None] * means + a + kappa * mu0) / (n + kappa)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        own = np.where(n[:, None] > 0, means + a / n[:, None], shrunk)
    delta = shrunk - means
    cross = a[:, :, None] * delta[:, None, :]
    scatter = b - cross - cross.transpose(0, 2, 1) + n[:, None, None] * delta[:, :, None] * delta[:, None, :]
    off = shrunk - mu0
    scatter = scatter + kappa * off[:, :, None] * off[:, None, :]
    return n, shrunk, own, 0.5 * (scatter + scatter.transpose(0, 2, 1))


def _mclust_covariances(model: str, n: np.ndarray, scatter: np.ndarray, prior: Prior) -> np.ndarray:
    """(K, d, d) covariances of mclust's ``me`` step with its prior, from the penalized scatters ``B_k``."""
    kappa, nu, scale = prior["shrinkage"], prior["dof"], prior["scale"]
    k, d = scatter.shape[:2]
    f = float(kappa > 0)
    total = float(n.sum())
    diag = np.diagonal(scatter, axis1=1, axis2=2)
    eye = np.eye(d)
    if model == "VVV":
        return (scale + scatter) / (nu + n + d + 1 + f)[:, None, None]
    if model == "EEE":
        return np.broadcast_to((scale + scatter.sum(0)) / (nu + total + d + 1 + f * k), (k, d, d)).copy()
    if model == "VVI":
        return _parsimonious._diag((scale + diag) / (nu + n + 2 + f)[:, None])
    if model == "VII":
        return eye * ((scale + diag.sum(1)) / (nu + n * d + 2 + f * d))[:, None, None]
    if model == "EII":  # mclust's meeiip leaves the scale out
        return np.broadcast_to(eye * (diag.sum() / (nu + (total + k) * d + 2)), (k, d, d)).copy()
    if model == "EEI":  # the scale added once, as mclust's meeeip
        return np.broadcast_to(np.diag((scale + diag.sum(0)) / (nu + 1 + f + total)), (k, d, d)).copy()
    if model == "VEI":
        return _parsimonious._vei(n + (nu + 2 + f) / d, scale + diag, _parsimonious.INNER_TOL,
                                  _parsimonious.INNER_MAX_ITER)
    if model == "EVI":
        penalized = scale + diag
        volumes = _parsimonious._geomean(penalized)
        return _parsimonious._diag(penalized * (volumes.sum() / (nu + 1 + f + total) / volumes)[:, None])
    penalized = scale + scatter
    if model == "EEV":
        values, vectors = _parsimonious._eigh_descending(penalized)
        return _parsimonious._rotate(vectors, np.broadcast_to(values.sum(0) / (nu + d + 1 + f + total), (k, d)))
    if model == "VEV":
        return _parsimonious._vev(n, penalized, _parsimonious.INNER_TOL, _parsimonious.INNER_MAX_ITER)
    raise ValueError(f"the conjugate prior is defined for {PRIOR_MODELS} of mclust's models; received {model!r}.")


def _mclust_map_step(stats: dict, means: np.ndarray, model: str, reg_covar: float, prior: Prior) -> dict:
    check_prior_type(model)
    if len(means) == 1:
        model = _ONE_COMPONENT[model]
    n, shrunk, own, scatter = _penalized_scatter(stats, means, prior["shrinkage"], prior["mean"])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cov = _mclust_covariances(model, n, scatter, prior)
    d = means.shape[1]
    cov[:, np.arange(d), np.arange(d)] += reg_covar
    total = n.sum()
    return {
        "weights": n / total if total > 0 else np.full(len(n), 1.0 / len(n)),
        # mclust's EEI step keeps each component's own weighted mean.
        "means": own if model == "EEI" else shrunk,
        "covariances": cov,
        "precisions_cholesky": LAYOUTS[model].precision_cholesky(cov),
    }


# One component: mclust's mclustBIC and Mclust fit G = 1 with mvnXII, mvnXXI, mvnXXX, whose
# prior steps are VII's, VVI's and VVV's for every model of the family.
_ONE_COMPONENT = {"EII": "VII", "VII": "VII", "EEI": "VVI", "VEI": "VVI", "EVI": "VVI", "VVI": "VVI",
                  "EEE": "VVV", "EEV": "VVV", "VEV": "VVV", "VVV": "VVV"}


# The log prior of mclust's six other models, up to a constant: -1/2 sum_k [each log|Sigma_k|
# + tr(Sigma_k^{-1} (S + kappa delta_k delta_k^T))] - 1/2 shared log|Sigma_1|, with S the scale
# (a matrix, a diagonal, or 0 for EII), added per component or (EEI) once. Read off the
# denominators of mclust's steps: each step maximises Q plus this (EEI's approximately).
def _mclust_counts(model: str, nu: float, f: float, k: int, d: int) -> tuple[float, float, bool]:
    """(each, shared, scale_once) of the log prior above."""
    return {
        "EII": (0.0, (nu + 2 + k * d) / d, False),
        "EEI": (0.0, nu + 1 + f, True),
        "VEI": ((nu + 2 + f) / d, 0.0, False),
        "EVI": (0.0, nu + 1 + f, False),
        "EEV": (0.0, nu + d + 1 + f, False),
        "VEV": (0.0, 0.0, False),
    }[model]


def _log_prior_mclust(model: str, means: np.ndarray, cov: np.ndarray, prior: Prior) -> float:
    kappa, mu0, nu, scale = prior["shrinkage"], prior["mean"], prior["dof"], prior["scale"]
    k, d = means.shape
    if k == 1:
        model = _ONE_COMPONENT[model]
    if model in _AS_SKLEARN:
        ct = _AS_SKLEARN[model]
        held = {"full": cov, "tied": cov[0], "diag": np.diagonal(cov, axis1=1, axis2=2),
                "spherical": cov[:, 0, 0]}[ct]
        return log_prior({"covariance_type": ct, "means": means, "covariances": held}, prior)
    each, shared, scale_once = _mclust_counts(model, nu, float(kappa > 0), k, d)
    if model == "EII":
        scale_matrix = np.zeros((d, d))
    else:
        scale_matrix = scale if np.ndim(scale) == 2 else np.diag(np.broadcast_to(scale, (d,)))
    chol = np.linalg.cholesky(cov)
    logdet = 2 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(1)
    inverse = np.linalg.inv(cov)
    diff = means - mu0
    traces = kappa * np.einsum("ki,kij,kj->k", diff, inverse, diff)
    scale_traces = np.einsum("kij,ji->k", inverse, scale_matrix)
    total = traces.sum() + (scale_traces[0] if scale_once else scale_traces.sum())
    return float(-0.5 * (each * logdet.sum() + shared * logdet[0] + total))


def _log_iw(cov: np.ndarray, nu: float, scale: np.ndarray) -> float:
    """log density of the inverse-Wishart IW(nu, scale) at ``cov``; constants only when proper."""
    d = cov.shape[0]
    chol = linalg.cholesky(cov, lower=True)
    logdet = 2 * np.log(np.diag(chol)).sum()
    trace = np.trace(linalg.cho_solve((chol, True), scale))
    value = -0.5 * (nu + d + 1) * logdet - 0.5 * trace
    if nu > d - 1:
        sign, logdet_scale = np.linalg.slogdet(scale)
        value += 0.5 * nu * logdet_scale - 0.5 * nu * d * math.log(2) - multigammaln(0.5 * nu, d)
    return float(value)


def _log_inv_gamma(var: np.ndarray, nu: float, scale) -> np.ndarray:
    """log InvGamma(var | nu / 2, scale / 2); constants only when proper."""
    shape, rate = 0.5 * nu, 0.5 * np.asarray(scale, dtype=np.float64)
    value = -(shape + 1) * np.log(var) - rate / var
    if shape > 0:
        value = value + shape * np.log(rate) - gammaln(shape)
    return value


def log_prior(params: dict, prior: Prior) -> float:
    """log p(means, covariances) under the prior, for the penalized bound.

    ``params`` as the library holds them (``means`` centered, ``covariances``,
    ``covariance_type``); ``prior`` centered the same way. Normalising constants
    are included where the prior is proper (dof > d - 1 for an inverse-Wishart,
    dof > 0 for an inverse gamma, shrinkage > 0 for the means). For mclust's
    EII, EEI, VEI, EVI, EEV and VEV: the log prior whose MAP step mclust's is
    (see the module docstring), without constants.
    """
    ct = params["covariance_type"]
    means, cov = params["means"], params["covariances"]
    if ct in MCLUST_MODELS:
        return _log_prior_mclust(ct, means, np.asarray(cov), prior)
    kappa, mu0, nu, scale = prior["shrinkage"], prior["mean"], prior["dof"], prior["scale"]
    k, d = means.shape
    total = 0.0
    diff = means - mu0
    if ct == "full":
        for j in range(k):
            total += _log_iw(cov[j], nu, scale)
            if kappa > 0:
                total += _log_normal(diff[j], cov[j] / kappa)
    elif ct == "tied":
        total += _log_iw(cov, nu, scale)
        if kappa > 0:
            total += sum(_log_normal(diff[j], cov / kappa) for j in range(k))
    else:
        var = cov if ct == "diag" else np.repeat(np.asarray(cov)[:, None], d, 1)
        if ct == "diag":
            total += float(_log_inv_gamma(var, nu, np.broadcast_to(scale, (d,))).sum())
        else:
            total += float(_log_inv_gamma(np.asarray(cov), nu, scale).sum())
        if kappa > 0:
            total += float((-0.5 * (_LOG_2PI + np.log(var / kappa)) - 0.5 * kappa * diff**2 / var).sum())
    return total


def _log_normal(x: np.ndarray, cov: np.ndarray) -> float:
    chol = linalg.cholesky(cov, lower=True)
    sol = linalg.solve_triangular(chol, x, lower=True)
    return float(-0.5 * (len(x) * _LOG_2PI + sol @ sol) - np.log(np.diag(chol)).sum())


# ---------------------------------------------------------------------------
# The prior of a fit: the estimator's setting, resolved on the data
# ---------------------------------------------------------------------------

# Keys under which a restart's params hold its resolved (centered) prior, so the
# M-step, checkpoints and the model store carry it like any other parameter.
PARAM_KEYS = tuple(f"prior_{key}" for key in PRIOR_KEYS)


def _freeze(value):
    array = np.asarray(value, dtype=np.float64)
    return float(array) if array.ndim == 0 else tuple(map(tuple, array)) if array.ndim == 2 else tuple(array.tolist())


def prior_spec(prior) -> tuple | None:
    """The estimator's ``prior`` setting as a hashable spec, or None; refuses what is not a prior.

    ``None`` (no prior), ``"default"`` (mclust's ``defaultPrior`` from the data)
    or a dict of some of :data:`PRIOR_KEYS` (the others from ``defaultPrior``).
    The spec is a sorted tuple of (key, value) pairs, values as floats or tuples.
    """
    if prior is None:
        return None
    if isinstance(prior, str):
        if prior != "default":
            raise ValueError(
                f"prior={prior!r}; expected None, 'default' (mclust's defaultPrior) or a dict of some of "
                f"{PRIOR_KEYS}."
            )
        return ()
    if not isinstance(prior, dict):
        raise ValueError(
            f"prior must be None, 'default' or a dict of some of {PRIOR_KEYS}; received {type(prior).__name__}."
        )
    unknown = sorted(set(prior) - set(PRIOR_KEYS))
    if unknown:
        raise ValueError(f"prior has unknown keys {unknown}; expected some of {PRIOR_KEYS}.")
    try:
        spec = tuple(sorted((key, _freeze(value)) for key, value in prior.items()))
    except (TypeError, ValueError):
        raise ValueError(f"prior values must be numbers or numeric arrays; received {prior!r}.") from None
    for key, value in spec:
        if not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            raise ValueError(f"prior {key} holds NaN or infinity.")
        if key in ("shrinkage", "dof") and np.ndim(value):
            raise ValueError(f"prior {key}={value!r}; expected a number.")
        if key == "shrinkage" and value < 0:
            raise ValueError(f"prior shrinkage={value!r}; expected a number >= 0.")
    return spec


def needs_moments(spec: tuple) -> bool:
    """True when the prior takes its mean or scale from the data's moments."""
    given = {key for key, _ in spec}
    return not {"mean", "scale"} <= given


def check_spec(spec: tuple, covariance_type: str, n_features: int) -> None:
    """Refuse given hyperparameters whose shapes do not fit the model (before any read)."""
    d = n_features
    trial = {"shrinkage": 0.01, "mean": np.zeros(d), "dof": d + 2.0,
             "scale": np.eye(d) if covariance_type in MATRIX_SCALE_TYPES else 1.0}
    validate_prior({**trial, **dict(spec)}, covariance_type, d)


def moments_of(data_moments: dict) -> dict:
    """``{"n", "mean", "covariance"}`` (denominator n - 1, as R's ``var``) from Chan-merged moments."""
    n = float(data_moments["n"])
    scatter = np.asarray(data_moments["scatter"], dtype=np.float64)
    cov = scatter / (n - 1.0)
    return {"n": n, "mean": data_moments["mean"], "covariance": cov if cov.ndim == 2 else np.diag(cov)}


def resolve_prior(spec: tuple, covariance_type: str, n_components: int, n_features: int,
                  data_moments: dict | None, context: np.ndarray) -> dict:
    """A restart's prior as params entries (:data:`PARAM_KEYS`), its mean centered about ``context``."""
    overrides = {key: np.asarray(value, dtype=np.float64) for key, value in spec}
    if needs_moments(spec):
        prior = default_prior(moments_of(data_moments), covariance_type, n_components, **overrides)
    else:
        prior = validate_prior({"shrinkage": 0.01, "dof": n_features + 2.0, **overrides}, covariance_type, n_features)
    prior = center_prior(prior, context)
    return {f"prior_{key}": prior[key] for key in PRIOR_KEYS}


def prior_of(params: dict) -> Prior:
    """The (centered) prior a restart's params hold."""
    return {key: params[f"prior_{key}"] for key in PRIOR_KEYS}
