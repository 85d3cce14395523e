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
from conftest import assert_close

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
    assert_close(prior["mean"], expected["mean"], rtol=1e-13)
    assert_close(np.ravel(prior["scale"]), expected["scale"], rtol=1e-12)
    # The same from moments computed elsewhere (out of core).
    moments = {"n": len(x), "mean": x.mean(0), "covariance": np.cov(x, rowvar=False)}
    assert_close(np.ravel(default_prior(moments, ct, k)["scale"]), expected["scale"], rtol=1e-12)


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
    assert_close(out["weights"], FIXTURE["mstep"][ct]["pro"], rtol=1e-12)


@pytest.mark.parametrize("ct", TYPES)
def test_map_em_converges_to_mclust_me_with_prior(ct):
    x, z = np.array(FIXTURE["x"]), np.array(FIXTURE["z"])
    (_, d), k = x.shape, z.shape[1]
    expected = FIXTURE["me"][ct]
    params, bounds, logliks = map_em(x, z, ct, default_prior(x, ct, k), expected["iterations"] + 50, x.mean(0))
    assert_close(logliks[-1], expected["loglik"], rtol=1e-7)
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
    assert_close(ll_weak[-1], ll_plain[-1], rtol=1e-7)


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


# ---------------------------------------------------------------------------
# The prior wired into GaussianMixture: MAP-EM through the engine
# ---------------------------------------------------------------------------

import logging  # noqa: E402

from scipy.stats import invgamma, invwishart  # noqa: E402

import dask_em  # noqa: E402
from dask_em import checkpoint as ckpt  # noqa: E402


def blobs(seed, n=240, d=3, k=3):
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(rng.normal(scale=3, size=d), rng.uniform(0.3, 1.5), size=(n // k, d))
                      for _ in range(k)])


def scipy_log_prior(gm, prior):
    """log p(means, covariances) of a fitted model under ``prior`` (uncentered), with scipy's densities."""
    ct = gm.covariance_type
    kappa, mu0, nu, scale = prior["shrinkage"], prior["mean"], prior["dof"], prior["scale"]
    covs = full_covariances({"covariance_type": ct, "covariances": gm.covariances_, "means": gm.means_})
    means_part = sum(multivariate_normal(mu0, c / kappa).logpdf(m) for m, c in zip(gm.means_, covs))
    if ct == "full":
        return means_part + sum(invwishart(df=nu, scale=scale).logpdf(c) for c in covs)
    if ct == "tied":
        return means_part + invwishart(df=nu, scale=scale).logpdf(gm.covariances_)
    return means_part + float(invgamma(nu / 2, scale=np.asarray(scale) / 2).logpdf(gm.covariances_).sum())


@pytest.mark.parametrize("ct", TYPES)
def test_fit_bound_is_the_loglik_plus_the_log_prior_of_the_entering_parameters(ct):
    x = blobs(1)
    kw = dict(covariance_type=ct, prior="default", random_state=0, tol=0.0)
    before = dask_em.GaussianMixture(3, max_iter=4, **kw).fit(x)
    after = dask_em.GaussianMixture(3, max_iter=5, **kw).fit(x)
    # The fifth round's bound is that of the parameters the fourth M-step made.
    loglik = sum(
        np.log(sum(w * multivariate_normal(m, c).pdf(x) for w, m, c in zip(
            before.weights_, before.means_,
            full_covariances({"covariance_type": ct, "covariances": before.covariances_, "means": before.means_}))))
    )
    expected = (loglik + scipy_log_prior(before, before.prior_)) / len(x)
    assert_close(after.lower_bounds_[-1], expected, rtol=1e-10)
    np.testing.assert_allclose(after.lower_bounds_[:4], before.lower_bounds_, rtol=0, atol=0)
    # The default prior is mclust's defaultPrior of all rows.
    reference = default_prior(x, ct, 3)
    assert_close(before.prior_["mean"], reference["mean"], rtol=1e-12)
    assert_close(before.prior_["scale"], reference["scale"], rtol=1e-10)


@pytest.mark.parametrize("ct", TYPES)
@pytest.mark.parametrize("seed", range(3))
def test_fit_penalized_bound_never_falls_and_nothing_is_dropped(ct, seed, caplog):
    rng = np.random.default_rng(seed)
    # Small, overlapping clusters and more components than clusters: components shrink and empty.
    x = np.vstack([rng.normal(rng.normal(size=2), 0.3, size=(rng.integers(4, 30), 2)) for _ in range(3)])
    with caplog.at_level(logging.WARNING, logger="dask_em"):
        gm = dask_em.GaussianMixture(5, covariance_type=ct, prior="default", tol=1e-12, max_iter=300,
                                     n_init=2, init_params="random", random_state=seed).fit(x)
    for restart in gm.restarts_:
        _bounds_never_fall(np.array(restart["history"]))
    assert gm.n_components_ == 5
    assert not [r for r in caplog.records if "fell" in r.getMessage()]


def test_fit_on_breast_cancer_k6_full_is_monotone_with_the_prior_and_warns_without(caplog):
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    x = StandardScaler().fit_transform(load_breast_cancer().data)
    # A start (k-means with RandomState(3757552657)) from which the fit without a prior meets a fall of its bound.
    kw = dict(covariance_type="full", tol=1e-9, max_iter=300, random_state=3757552657)
    with caplog.at_level(logging.WARNING, logger="dask_em"):
        gm = dask_em.GaussianMixture(6, prior="default", **kw).fit(x)
    _bounds_never_fall(np.array(gm.lower_bounds_))
    assert not [r for r in caplog.records if "fell" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dask_em"):
        dask_em.GaussianMixture(6, **kw).fit(x)
    fell = [r for r in caplog.records if "fell" in r.getMessage()]
    assert fell and all("reg_covar=1e-06 is added" in r.getMessage() and "prior='default'" in r.getMessage()
                        for r in fell)
    # A fall reg_covar explains is no warning (scikit-learn is silent on it): INFO.
    assert {r.levelno for r in fell} == {logging.INFO}


@pytest.mark.parametrize("ct", TYPES)
def test_fit_with_a_vanishing_prior_tends_to_scikit_learns_unpenalized_fit(ct):
    from sklearn.mixture import GaussianMixture as SkGM

    x = blobs(4)
    k, d = 3, 3
    start = SkGM(k, covariance_type=ct, reg_covar=0.0, max_iter=1, random_state=0).fit(x)
    init = dict(weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_)
    ref = SkGM(k, covariance_type=ct, reg_covar=0.0, max_iter=20, tol=0, **init).fit(x)
    gaps = []
    for t in (1e-3, 1e-6, 1e-9):
        prior = weakened(default_prior(x, ct, k), ct, d, k, t)
        gm = dask_em.GaussianMixture(k, covariance_type=ct, prior=prior, max_iter=20, tol=0, **init).fit(x)
        gaps.append(np.abs(gm.means_ - ref.means_).max())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-6, gaps


def test_bic_with_a_prior_is_mclusts_loglik_at_the_map_estimate():
    x = blobs(2)
    gm = dask_em.GaussianMixture(3, covariance_type="diag", prior="default", tol=1e-10, random_state=0).fit(x)
    loglik = float(np.sum(np.log(sum(
        w * multivariate_normal(m, np.diag(v)).pdf(x) for w, m, v in zip(gm.weights_, gm.means_, gm.covariances_)
    ))))
    p = 3 * 3 + 3 * 3 + 2
    assert_close(gm.bic(x), -2 * loglik + p * np.log(len(x)), rtol=1e-10)
    # The penalized bound is another number: the log prior is not in the BIC.
    assert abs(gm.lower_bound_ * len(x) - loglik) > 1.0


def test_prior_in_select_model_store_and_checkpoint(tmp_path):
    x = blobs(3)
    sel = dask_em.select_model(x, n_components=[2, 3], covariance_types=["full", "spherical"], prior="default",
                               random_state=0)
    assert all(est.prior == "default" for est in sel.estimators_.values())
    best = sel.best_estimator_
    assert best.prior == "default" and "prior_" in vars(best)
    np.testing.assert_allclose(sel.criteria["log_likelihood"].sel(
        n_components=best.n_components, covariance_type=best.covariance_type).item(),
        best.score(x) * len(x), rtol=1e-9)

    gm = dask_em.GaussianMixture(3, prior={"shrinkage": 0.1}, random_state=0).fit(x)
    dask_em.save(gm, tmp_path / "m.zarr")
    loaded = dask_em.load(tmp_path / "m.zarr")
    assert loaded.prior == {"shrinkage": 0.1}
    np.testing.assert_array_equal(loaded.prior_["scale"], gm.prior_["scale"])
    assert loaded.prior_["shrinkage"] == 0.1
    np.testing.assert_array_equal(loaded.predict_proba(x), gm.predict_proba(x))

    path = str(tmp_path / "fit.ckpt.npz")
    kw = dict(random_state=0, max_iter=3, tol=0)
    first = dask_em.GaussianMixture(3, prior="default", **kw).fit(x, checkpoint=path)
    resumed = dask_em.GaussianMixture(3, prior="default", **dict(kw, max_iter=6)).fit(x, checkpoint=path, resume=True)
    whole = dask_em.GaussianMixture(3, prior="default", **dict(kw, max_iter=6)).fit(x)
    np.testing.assert_array_equal(resumed.means_, whole.means_)
    assert resumed.lower_bounds_ == whole.lower_bounds_ and first.n_iter_ == 3
    with pytest.raises(ckpt.CheckpointError, match="prior"):
        dask_em.GaussianMixture(3, **dict(kw, max_iter=6)).fit(x, checkpoint=path, resume=True)


def test_bad_prior_settings_of_the_estimator_say_what_is_expected():
    x = blobs(0)
    with pytest.raises(ValueError, match=r"'prior' parameter .* must be a str among \{'default'\}, .* Got 'mclust'"):
        dask_em.GaussianMixture(2, prior="mclust").fit(x)
    with pytest.raises(ValueError, match=r"prior has unknown keys \['strength'\]"):
        dask_em.GaussianMixture(2, prior={"strength": 1.0}).fit(x)
    with pytest.raises(ValueError, match=r"prior mean has shape \(2,\); expected \(3,\)"):
        dask_em.GaussianMixture(2, prior={"mean": [0.0, 0.0]}).fit(x)
    with pytest.raises(ValueError, match="reg_covar=0.01 is not used with prior='default'"):
        dask_em.GaussianMixture(2, prior="default", reg_covar=1e-2).fit(x)
