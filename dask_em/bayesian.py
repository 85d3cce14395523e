"""Variational Bayesian Gaussian mixtures: scikit-learn's ``BayesianGaussianMixture`` out-of-core.

The model is scikit-learn's (Bishop 2006, ch. 10; Blei & Jordan 2006 for the
Dirichlet process): a Dirichlet (or stick-breaking Dirichlet process) prior on
the weights and a Gaussian-Wishart prior on each component's mean and
precision. Its variational E-step is a Gaussian E-step in disguise:
scikit-learn's weighted log-probability of row x under component k is

    log N(x | m_k, (nu_k W_k)^-1) + E[log pi_k]
        - d/2 log nu_k + 1/2 (E[log |Lambda_k|] - d / beta_k)

where ``precisions_cholesky_`` already holds the factor of ``nu_k W_k``. So the
fused Gaussian E-step of :mod:`dask_em.gaussian` runs unchanged with
*effective weights* ``exp(E[log pi_k] - d/2 log nu_k + 1/2 (E[log|Lambda_k|] -
d/beta_k))``, which do not sum to one (:func:`effective_log_weights`). The
statistics it reduces are the ones GaussianMixture's M-step reads; the
posterior update (:func:`posterior`) turns GaussianMixture's ``(N_k, x̄_k,
S_k)`` into scikit-learn's variational parameters, and the evidence lower
bound (:func:`elbo`) needs only those parameters and the responsibilities'
entropy, which the E-step sums as it goes: no extra pass.

This module holds pure functions over reduced statistics and the family
(the estimator is :mod:`dask_em.bayesian_mixture`);
:class:`BayesianGaussianFamily` puts them behind the family protocol with
three engine hooks (``mixture_weights``, ``round_bound``, ``needs_entropy``)
and ``drops_empty_components = False``: a component that empties is kept, as
scikit-learn keeps it (its prior keeps its covariance regular, and the
stick-breaking order of the weights depends on every component's place).

Data-dependent priors (``mean_prior=None``, ``covariance_prior=None``) are
scikit-learn's: the mean and the (ddof=1) covariance of *all* rows, computed
in the same compute as the initialisation sample (each chunk is read once for
both; :func:`dask_em.starts.data_moments_graph`), merged with Chan's update, so they equal
``X.mean(0)`` and ``np.cov(X.T)`` to round-off on data of any size. With
``sample_weight`` they are the frequency-weighted mean and covariance
(``np.cov(X.T, fweights=w)`` for integer weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import betaln, digamma, gammaln

from . import gaussian
from ._covariance import LAYOUTS, NotPositiveDefiniteError
from ._validation import is_int
from .family import MASS_EPS
from .gaussian import GaussianFamily

PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")

# Keys of the prior held in every restart's parameters, so that the M-step, the
# bound, checkpoints and the model store see them without the family's context.
PRIOR_KEYS = (
    "weight_concentration_prior_type",
    "weight_concentration_prior",
    "mean_precision_prior",
    "mean_prior",
    "degrees_of_freedom_prior",
    "covariance_prior",
)

Params = dict[str, Any]
Stats = dict[str, Any]


# ---------------------------------------------------------------------------
# Weights: Dirichlet distribution or Dirichlet process (stick breaking)
# ---------------------------------------------------------------------------


def weight_concentration(nk: np.ndarray, prior: float, prior_type: str) -> np.ndarray:
    """Posterior concentration: (K,) Dirichlet, or (K, 2) Beta (a, b) of each stick.

    As ``BayesianGaussianMixture._estimate_weights``; ``nk`` includes the 10 eps.
    """
    if prior_type == "dirichlet_process":
        # b_k = prior + sum_{j > k} N_j
        tail = np.hstack((np.cumsum(nk[::-1])[-2::-1], 0.0))
        return np.stack([1.0 + nk, prior + tail], axis=1)
    return prior + nk


def expected_log_weights(concentration: np.ndarray, prior_type: str) -> np.ndarray:
    """E[log pi_k] under the posterior, as ``_estimate_log_weights``."""
    if prior_type == "dirichlet_process":
        a, b = concentration[:, 0], concentration[:, 1]
        digamma_sum = digamma(a + b)
        stick = digamma(b) - digamma_sum
        return digamma(a) - digamma_sum + np.hstack((0.0, np.cumsum(stick)[:-1]))
    return digamma(concentration) - digamma(np.sum(concentration))


def mean_weights(concentration: np.ndarray, prior_type: str) -> np.ndarray:
    """``weights_``: the posterior mean of the weights, normalised (as ``_set_parameters``)."""
    if prior_type == "dirichlet_process":
        a, b = concentration[:, 0], concentration[:, 1]
        total = a + b
        weights = a / total * np.hstack((1.0, np.cumprod(b / total)[:-1]))
        return weights / weights.sum()
    return concentration / concentration.sum()


def public_concentration(concentration: np.ndarray, prior_type: str):
    """``weight_concentration_`` as scikit-learn shapes it: a tuple (a, b) for the process."""
    if prior_type == "dirichlet_process":
        return (concentration[:, 0].copy(), concentration[:, 1].copy())
    return concentration


# ---------------------------------------------------------------------------
# Gaussian-Wishart posterior
# ---------------------------------------------------------------------------


def _wishart_full(nk, xk, sk, prior: Params, beta):
    dof = prior["degrees_of_freedom_prior"] + nk
    diff = xk - prior["mean_prior"]
    scale = nk * prior["mean_precision_prior"] / beta
    cov = prior["covariance_prior"] + nk[:, None, None] * sk + scale[:, None, None] * (diff[:, :, None] * diff[:, None, :])
    return dof, cov / dof[:, None, None]


def _wishart_tied(nk, xk, sk, prior: Params, beta):
    k = len(nk)
    dof = prior["degrees_of_freedom_prior"] + nk.sum() / k
    diff = xk - prior["mean_prior"]
    cov = (
        prior["covariance_prior"]
        + sk * nk.sum() / k
        + prior["mean_precision_prior"] / k * np.dot((nk / beta) * diff.T, diff)
    )
    return float(dof), cov / dof


def _wishart_diag(nk, xk, sk, prior: Params, beta):
    dof = prior["degrees_of_freedom_prior"] + nk
    diff = xk - prior["mean_prior"]
    cov = prior["covariance_prior"] + nk[:, None] * (sk + (prior["mean_precision_prior"] / beta)[:, None] * diff**2)
    return dof, cov / dof[:, None]


def _wishart_spherical(nk, xk, sk, prior: Params, beta):
    dof = prior["degrees_of_freedom_prior"] + nk
    diff = xk - prior["mean_prior"]
    cov = prior["covariance_prior"] + nk * (sk + prior["mean_precision_prior"] / beta * np.mean(diff**2, 1))
    return dof, cov / dof


_WISHART = {"full": _wishart_full, "tied": _wishart_tied, "diag": _wishart_diag, "spherical": _wishart_spherical}


def posterior(nk: np.ndarray, xk: np.ndarray, sk: np.ndarray, prior: Params, covariance_type: str) -> Params:
    """Variational parameters from GaussianMixture's M-step estimates.

    ``nk`` (K,) masses plus 10 eps, ``xk`` (K, d) weighted means and ``sk`` the
    weighted covariances (with ``reg_covar``) in scikit-learn's shape for the
    covariance type; ``prior`` holds the :data:`PRIOR_KEYS` (the mean prior in
    the same coordinates as ``xk``). As ``_estimate_weights``,
    ``_estimate_means`` and ``_estimate_precisions``.
    """
    concentration = weight_concentration(nk, prior["weight_concentration_prior"], prior["weight_concentration_prior_type"])
    beta0 = prior["mean_precision_prior"]
    beta = beta0 + nk
    means = (beta0 * prior["mean_prior"] + nk[:, None] * xk) / beta[:, None]
    dof, cov = _WISHART[covariance_type](nk, xk, sk, prior, beta)
    return {
        "weight_concentration": concentration,
        "mean_precision": beta,
        "means": means,
        "degrees_of_freedom": dof,
        "covariances": cov,
        "precisions_cholesky": LAYOUTS[covariance_type].precision_cholesky(cov),
        "covariance_type": covariance_type,
    }


def _log_lambda(dof, d: int) -> np.ndarray:
    """E[log |Lambda_k|] less d log nu_k (the precision factors are normalised by nu_k)."""
    dof = np.atleast_1d(dof)
    return d * math.log(2.0) + digamma(0.5 * (dof - np.arange(d)[:, None])).sum(0)


def effective_log_weights(params: Params) -> np.ndarray:
    """What the Gaussian E-step adds to log N(x | m_k, (nu_k W_k)^-1), per component (K,).

    E[log pi_k] - d/2 log nu_k + 1/2 (E[log|Lambda_k|] - d / beta_k): with these
    as log-weights the Gaussian E-step gives scikit-learn's
    ``_estimate_weighted_log_prob`` exactly.
    """
    d = params["means"].shape[1]
    k = len(params["mean_precision"])
    dof = np.broadcast_to(params["degrees_of_freedom"], (k,))
    log_pi = expected_log_weights(params["weight_concentration"], params["weight_concentration_prior_type"])
    return log_pi - 0.5 * d * np.log(dof) + 0.5 * (_log_lambda(dof, d) - d / params["mean_precision"])


def _log_wishart_norm(dof, log_det_chol, d: int):
    # scikit-learn leaves out the log(pi) term; so do we, to report the same number.
    dof = np.asarray(dof, dtype=np.float64)
    return -(
        dof * log_det_chol
        + dof * d * 0.5 * math.log(2.0)
        + gammaln(0.5 * (dof - np.arange(d)[:, None])).sum(0)
    )


def elbo(entropy: float, params: Params) -> float:
    """scikit-learn's lower bound (``_compute_lower_bound``) after an M-step.

    ``entropy`` is the E-step's (weighted) sum of r log r over rows and
    components; ``params`` the variational parameters the M-step made from it.
    Like scikit-learn, a total over rows (not a per-row mean), without its
    constant terms.
    """
    ct = params["covariance_type"]
    d = params["means"].shape[1]
    k = len(params["mean_precision"])
    dof = params["degrees_of_freedom"]
    log_det = LAYOUTS[ct].log_det(params["precisions_cholesky"], d) - 0.5 * d * np.log(dof)
    if ct == "tied":
        log_wishart = k * float(_log_wishart_norm(dof, log_det, d)[0])
    else:
        log_wishart = float(np.sum(_log_wishart_norm(dof, log_det, d)))
    concentration = params["weight_concentration"]
    if params["weight_concentration_prior_type"] == "dirichlet_process":
        log_norm_weight = -float(np.sum(betaln(concentration[:, 0], concentration[:, 1])))
    else:
        log_norm_weight = float(gammaln(np.sum(concentration)) - np.sum(gammaln(concentration)))
    return (
        -float(entropy) - log_wishart - log_norm_weight - 0.5 * d * float(np.sum(np.log(params["mean_precision"])))
    )


def m_step(stats: Stats, nk: np.ndarray, means: np.ndarray, prior: Params, covariance_type: str, reg_covar: float) -> Params:
    """Variational M-step from the Gaussian family's reduced statistics taken about ``means``.

    GaussianMixture's M-step of the same statistics gives ``x̄_k`` and ``S_k``
    (:func:`dask_em.gaussian.m_step`), then :func:`posterior`.
    """
    # Only the estimates: their own precision factors are never used (a singular estimate of an
    # empty component is fine under the prior, as in scikit-learn).
    _, xk, sk = LAYOUTS[covariance_type].m_step(stats, means, reg_covar)
    return posterior(nk + MASS_EPS, xk, sk, prior, covariance_type)


# ---------------------------------------------------------------------------
# Data-dependent priors (the moments of all rows come from starts.data_moments_graph)
# ---------------------------------------------------------------------------


def priors_from_moments(moments: dict, covariance_type: str) -> tuple[np.ndarray, Any]:
    """scikit-learn's data-dependent ``mean_prior_`` and ``covariance_prior_`` (ddof=1)."""
    n = moments["n"]
    cov = moments["scatter"] / (n - 1.0)
    if covariance_type in ("full", "tied"):
        return moments["mean"], np.atleast_2d(cov)
    if covariance_type == "diag":
        return moments["mean"], cov
    return moments["mean"], float(cov.mean())


# ---------------------------------------------------------------------------
# The family
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BayesianGaussianFamily(GaussianFamily):
    """Gaussian components under scikit-learn's variational Bayesian treatment.

    The parameters of a restart hold the variational posterior (means,
    covariances, precision factors, ``weight_concentration`` (K,) or (K, 2),
    ``mean_precision``, ``degrees_of_freedom``), the prior (:data:`PRIOR_KEYS`,
    the mean prior centered like the means) and, as ``weights``, the
    *effective* weights of :func:`effective_log_weights`, which the inherited
    fused E-step, ``predict_proba`` and ``score_samples`` use as they are.

    Parameters
    ----------
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance.
    missing : {"error"}, default="error"
        NaN is refused.
    prior : None
        Not used: the variational prior travels in each restart's parameters.
    compute_dtype : {"float64", "float32"}, default="float64"
        Precision of the E-step's log-densities and matrix products.
    """

    name = "bayesian_gaussian"
    needs_entropy = True
    drops_empty_components = False

    def init_params(self, x, w, resp, context, settings):
        """As ``BayesianGaussianMixture._initialize``: the M-step of the sample under ``resp``."""
        ct = settings["covariance_type"]
        prior = resolve_prior(settings, context)
        x = np.asarray(x, dtype=np.float64)
        k, d = settings["n_components"], context.shape[0]
        layout = LAYOUTS[ct]
        xa = layout.augment(x, context, gaussian.design_buffer(ct, d, len(x)))
        acc = layout.empty_stats(k, d)
        ref = np.zeros((k, d))
        layout.accumulate(xa, None if w is None else np.asarray(w, dtype=np.float64), resp.T.copy(), ref, acc)
        stats = layout.finish(acc, ref)
        for key in ("loglik", "wsum", "entropy"):
            stats.pop(key)
        nk = layout.mass(stats)
        try:
            params = {**m_step(stats, nk, ref, prior, ct, self.reg_covar), **prior}
        except NotPositiveDefiniteError as exc:
            return {"error": f"at the start: {exc}"}
        params["weights"] = self.mixture_weights(nk, params)
        params["dropped"] = []
        return params

    def m_step(self, stats, nk, params):
        prior = {key: params[key] for key in PRIOR_KEYS}
        new = m_step(stats, nk, params["means"], prior, params["covariance_type"], self.reg_covar)
        return {**new, **prior}

    def mixture_weights(self, nk, params):
        with np.errstate(under="ignore"):
            return np.exp(effective_log_weights(params))

    def round_bound(self, record, params):
        return elbo(record["entropy"], params)

    def select(self, params_or_stats, keep):  # pragma: no cover - components are never dropped
        raise NotImplementedError("BayesianGaussianFamily keeps every component")

    def n_parameters(self, params):
        k, d = params["means"].shape
        return gaussian.n_parameters(k, d, params["covariance_type"]) - (k - 1)

    def to_public(self, params, context):
        ct = params["covariance_type"]
        prior_type = params["weight_concentration_prior_type"]
        out = super().to_public(params, context)
        out.update(
            weights_=mean_weights(params["weight_concentration"], prior_type),
            weight_concentration_=public_concentration(params["weight_concentration"], prior_type),
            mean_precision_=params["mean_precision"],
            degrees_of_freedom_=params["degrees_of_freedom"],
            weight_concentration_prior_=params["weight_concentration_prior"],
            mean_precision_prior_=params["mean_precision_prior"],
            mean_prior_=params["mean_prior"] + context,
            degrees_of_freedom_prior_=params["degrees_of_freedom_prior"],
            covariance_prior_=params["covariance_prior"],
        )
        if ct == "tied":
            out["degrees_of_freedom_"] = float(params["degrees_of_freedom"])
        return out


def resolve_prior(settings: dict, context: np.ndarray) -> Params:
    """The prior of a fit, with scikit-learn's defaults, the mean prior centered about ``context``.

    ``settings["data_moments"]`` holds the moments of all rows when a
    data-dependent prior is asked for.
    """
    ct = settings["covariance_type"]
    k, d = settings["n_components"], context.shape[0]
    mean_prior, covariance_prior = settings.get("mean_prior"), settings.get("covariance_prior")
    if mean_prior is None or covariance_prior is None:
        data_mean, data_cov = priors_from_moments(settings["data_moments"], ct)
        mean_prior = data_mean if mean_prior is None else mean_prior
        covariance_prior = data_cov if covariance_prior is None else covariance_prior
    wcp = settings.get("weight_concentration_prior")
    mpp = settings.get("mean_precision_prior")
    dofp = settings.get("degrees_of_freedom_prior")
    if ct == "spherical":
        covariance_prior = float(covariance_prior)
    else:
        covariance_prior = np.array(covariance_prior, dtype=np.float64)
    return {
        "weight_concentration_prior_type": settings["weight_concentration_prior_type"],
        "weight_concentration_prior": 1.0 / k if wcp is None else float(wcp),
        "mean_precision_prior": 1.0 if mpp is None else float(mpp),
        "mean_prior": np.asarray(mean_prior, dtype=np.float64) - context,
        # As scikit-learn's: n_features itself (an int) by default, an int given stays one.
        "degrees_of_freedom_prior": int(d) if dofp is None else int(dofp) if is_int(dofp) else float(dofp),
        "covariance_prior": covariance_prior,
    }
