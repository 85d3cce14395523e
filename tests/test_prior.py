"""The conjugate prior: mclust's defaults and M-step, a monotone penalized bound, the zero-prior limit.

mclust's values were recorded once by tests/data/record_mclust.py (Rscript, mclust 6.0.0) into
tests/data/mclust_fixture.json: defaultPrior(X, G, model), mstep(model, X, z, prior=priorControl())
and me(model, X, z, prior=priorControl()) for the four models.
"""

import json
import pathlib

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from dask_em.gaussian import m_step
from dask_em.prior import center_prior, default_prior, log_prior, map_m_step

FIXTURE = json.loads((pathlib.Path(__file__).parent / "data" / "mclust_fixture.json").read_text())
TYPES = ("full", "tied", "diag", "spherical")


def stats_about_zero(xc, resp, ct):
    """The statistics gaussian.m_step takes, about zero means, from centered rows (numpy)."""
    k, d = resp.shape[1], xc.shape[1]
    if ct in ("full", "tied"):
        stats = {"n": resp.sum(0), "a": resp.T @ xc, "b": np.einsum("ik,ij,il->kjl", resp, xc, xc)}
    else:
        stats = {"moments": np.hstack([resp.T @ xc**2, resp.T @ xc, resp.sum(0)[:, None]])}
    return stats, np.zeros((k, d))


def full_covariances(params):
    ct, cov = params["covariance_type"], params["covariances"]
    k, d = params["means"].shape
    if ct == "full":
        return cov
    if ct == "tied":
        return np.repeat(cov[None], k, 0)
    if ct == "diag":
        return np.stack([np.diag(v) for v in cov])
    return np.stack([np.eye(d) * v for v in cov])


def log_resp(xc, params):
    covs = full_covariances(params)
    logp = np.column_stack([
        np.log(w) + multivariate_normal(m, c).logpdf(xc) for w, m, c in zip(params["weights"], params["means"], covs)
    ])
    norm = logsumexp(logp, axis=1)
    return norm.sum(), np.exp(logp - norm[:, None])


def map_em(x, resp, ct, prior, n_iter, shift):
    """EM from responsibilities: M-step, E-step, ...; returns the params and the penalized bounds."""
    xc = x - shift
    centered = center_prior(prior, shift) if prior is not None else None
    bounds, logliks = [], []
    for _ in range(n_iter):
        stats, ref = stats_about_zero(xc, resp, ct)
        if prior is None:
            params = m_step(stats, ref, ct, 0.0)
        else:
            params = map_m_step(stats, ref, ct, 0.0, centered)
        params["covariance_type"] = ct
        loglik, resp = log_resp(xc, params)
        logliks.append(loglik)
        bounds.append(loglik + (log_prior(params, centered) if prior is not None else 0.0))
    return params, np.array(bounds), np.array(logliks)


def mclust_layout(entry, k, d):
    mean = np.reshape(entry["mean"], (d, k), order="F").T
    sigma = np.reshape(entry["sigma"], (d, d, k), order="F").transpose(2, 0, 1)
    return mean, sigma


@pytest.mark.parametrize("ct", TYPES)
def test_default_prior_matches_mclust_defaultPrior(ct):
    x, k = np.array(FIXTURE["x"]), len(FIXTURE["z"][0])
    expected = FIXTURE["prior"][ct]
    prior = default_prior(x, ct, k)
    assert prior["shrinkage"] == expected["shrinkage"] == 0.01
    assert prior["dof"] == expected["dof"]
    np.testing.assert_allclose(prior["mean"], expected["mean"], rtol=1e-13)
    np.testing.assert_allclose(np.ravel(prior["scale"]), expected["scale"], rtol=1e-12)
    # The same from moments computed elsewhere (out of core).
    moments = {"n": len(x), "mean": x.mean(0), "covariance": np.cov(x, rowvar=False)}
    np.testing.assert_allclose(np.ravel(default_prior(moments, ct, k)["scale"]), expected["scale"], rtol=1e-12)


@pytest.mark.parametrize("ct", TYPES)
def test_map_m_step_matches_mclust_mstep_with_prior(ct):
    x, z = np.array(FIXTURE["x"]), np.array(FIXTURE["z"])
    (_, d), k = x.shape, z.shape[1]
    shift = x.mean(0) + np.array([5.0, -3.0, 1.0])  # the library's centering, deliberately off
    stats, ref = stats_about_zero(x - shift, z, ct)
    out = map_m_step(stats, ref, ct, 0.0, center_prior(default_prior(x, ct, k), shift))
    out["covariance_type"] = ct
    mean, sigma = mclust_layout(FIXTURE["mstep"][ct], k, d)
    np.testing.assert_allclose(out["means"] + shift, mean, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(full_covariances(out), sigma, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["weights"], FIXTURE["mstep"][ct]["pro"], rtol=1e-12)


@pytest.mark.parametrize("ct", TYPES)
def test_map_em_converges_to_mclust_me_with_prior(ct):
    x, z = np.array(FIXTURE["x"]), np.array(FIXTURE["z"])
    (_, d), k = x.shape, z.shape[1]
    expected = FIXTURE["me"][ct]
    params, bounds, logliks = map_em(x, z, ct, default_prior(x, ct, k), expected["iterations"] + 50, x.mean(0))
    np.testing.assert_allclose(logliks[-1], expected["loglik"], rtol=1e-7)
    mean, sigma = mclust_layout(expected, k, d)
    np.testing.assert_allclose(params["means"] + x.mean(0), mean, atol=1e-4)


def _bounds_never_fall(bounds):
    steps = np.diff(bounds)
    assert (steps >= -1e-9 * np.abs(bounds[1:])).all(), steps.min()


@pytest.mark.parametrize("ct", TYPES)
@pytest.mark.parametrize("seed", range(6))
def test_penalized_bound_never_falls(ct, seed):
    rng = np.random.default_rng(seed)
    k = 2 + seed % 4
    d = 2 + seed % 3
    x = np.vstack([rng.normal(rng.normal(scale=2, size=d), rng.uniform(0.2, 2), size=(rng.integers(3, 40), d))
                   for _ in range(k)])
    resp = rng.dirichlet(np.ones(k), size=len(x))
    _, bounds, _ = map_em(x, resp, ct, default_prior(x, ct, k), 60, x.mean(0) + rng.normal(size=d))
    _bounds_never_fall(bounds)


def test_penalized_bound_never_falls_on_breast_cancer_k6_full():
    # Without the prior, reg_covar makes this bound fall in 18 of 57 iterations (FIELD_NOTES).
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(load_breast_cancer().data)
    rng = np.random.default_rng(0)
    resp = np.zeros((len(x), 6))
    resp[np.arange(len(x)), rng.integers(0, 6, len(x))] = 1
    _, bounds, _ = map_em(x, resp, "full", default_prior(x, "full", 6), 150, x.mean(0))
    _bounds_never_fall(bounds)
    assert bounds[-1] > bounds[0]


def test_an_empty_component_keeps_the_prior_covariance():
    x = np.random.default_rng(3).normal(size=(50, 3))
    resp = np.zeros((50, 3))
    resp[:, :2] = np.random.default_rng(4).dirichlet([1, 1], size=50)
    prior = default_prior(x, "full", 3)
    stats, ref = stats_about_zero(x - x.mean(0), resp, "full")
    out = map_m_step(stats, ref, "full", 0.0, center_prior(prior, x.mean(0)))
    np.testing.assert_allclose(out["covariances"][2], prior["scale"] / (prior["dof"] + 3 + 2))
    np.testing.assert_allclose(out["means"][2] + x.mean(0), prior["mean"])


def weakened(prior, ct, d, k, t):
    """The prior scaled to strength t: pseudo-counts and scale times t (t -> 0: no prior)."""
    # The M-step's denominators add (dof + c) to the counts; c per type with shrinkage > 0.
    c = {"full": d + 2, "tied": d + 1 + k, "diag": 3, "spherical": 2 + d}[ct]
    return dict(prior, shrinkage=prior["shrinkage"] * t, scale=np.asarray(prior["scale"]) * t,
                dof=t * (prior["dof"] + c) - c)


@pytest.mark.parametrize("ct", TYPES)
def test_a_vanishing_prior_gives_the_unpenalized_fit(ct):
    rng = np.random.default_rng(7)
    x = np.vstack([rng.normal(m, 1.0, size=(40, 3)) for m in (-3, 0, 3)])
    k, d = 3, 3
    resp = rng.dirichlet(np.ones(k), size=len(x))
    shift = x.mean(0)
    stats, ref = stats_about_zero(x - shift, resp, ct)
    plain = m_step(stats, ref, ct, 0.0)
    prior = default_prior(x, ct, k)
    gaps = []
    for t in (1e-2, 1e-4, 1e-6):
        out = map_m_step(stats, ref, ct, 0.0, center_prior(weakened(prior, ct, d, k, t), shift))
        gaps.append(max(np.abs(out["covariances"] - plain["covariances"]).max(),
                        np.abs(out["means"] - plain["means"]).max()))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-5, gaps
    _, _, ll_plain = map_em(x, resp, ct, None, 40, shift)
    _, _, ll_weak = map_em(x, resp, ct, weakened(prior, ct, d, k, 1e-8), 40, shift)
    np.testing.assert_allclose(ll_weak[-1], ll_plain[-1], rtol=1e-7)


def test_bad_prior_settings_say_what_is_expected():
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match=r"unknown prior settings \['strength'\]"):
        default_prior(x, "full", 2, strength=1)
    with pytest.raises(ValueError, match=r"prior scale has shape \(2, 2\); expected \(3, 3\)"):
        default_prior(x, "full", 2, scale=np.eye(2))
    with pytest.raises(ValueError, match="shrinkage=-1.0 is negative"):
        default_prior(x, "diag", 2, shrinkage=-1)
    with pytest.raises(ValueError, match="covariance_type='banded'"):
        default_prior(x, "banded", 2)
