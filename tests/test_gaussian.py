"""The Gaussian family and its covariance layouts (dask_em/gaussian.py, dask_em/_covariance.py).

Statistics of one E-step against numpy, merged statistics against whole ones,
and each layout's Cholesky algebra, shapes and parameter counts against numpy
and scikit-learn.
"""

import dataclasses

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from dask_em import engine, gaussian
from dask_em._covariance import COVARIANCE_TYPES, LAYOUTS
from dask_em.family import merge_records
from conftest import mixture, assert_close
from test_engine import round_state


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_statistics_merge(cov_type, rng):
    """Statistics of X[:a] merged with X[a:] equal those of X (pomegranate's test)."""
    X = mixture(rng, n=301, d=4, k=3)[0]
    state = round_state(3, 4, rng, cov=cov_type)
    state.params[0]["weights"] = np.array([0.2, 0.3, 0.5])
    whole = engine.estep_block(X, None, state)[0]
    for a in (1, 37, 150, 300):
        parts = [engine.estep_block(X[:a], None, state)[0], engine.estep_block(X[a:], None, state)[0]]
        merged = merge_records(state.family, parts)
        assert merged.keys() == whole.keys() and merged["stats"].keys() == whole["stats"].keys()
        for key in ("loglik", "wsum", "nk"):
            assert_close(merged[key], whole[key], rtol=1e-12, err_msg=key)
        for key in whole["stats"]:
            np.testing.assert_allclose(merged["stats"][key], whole["stats"][key], rtol=1e-12, atol=1e-9, err_msg=key)


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_statistics_against_numpy(cov_type, rng):
    """Weighted counts, means and scatter from the E-step equal a direct numpy computation."""
    from scipy.special import logsumexp

    X = mixture(rng, n=200, d=3, k=2)[0]
    w = rng.uniform(0.5, 2.0, size=200)
    state = round_state(2, 3, rng, cov=cov_type)
    p = state.params[0]
    record = engine.estep_block(X, w, state)[0]
    # Reference: identity covariances, so log N = -0.5 |x - m|^2 + const.
    logp = -0.5 * ((X[:, None] - p["means"][None]) ** 2).sum(-1) + np.log(p["weights"])
    resp = np.exp(logp - logsumexp(logp, axis=1, keepdims=True)) * w[:, None]
    n = resp.sum(0)
    assert_close(record["nk"], n, rtol=1e-12)
    assert record["loglik"] == pytest.approx((w * logsumexp(logp - 1.5 * np.log(2 * np.pi), axis=1)).sum(), rel=1e-12)
    (new,) = engine.mstep_round([record], dataclasses.replace(state, family=gaussian.GaussianFamily(reg_covar=0.0)), 200)
    assert_close(new.params["means"], resp.T @ X / n[:, None], rtol=1e-10)
    assert_close(new.params["weights"], n / n.sum(), rtol=1e-12)


def random_covariances(cov_type, k, d, rng):
    a = rng.normal(size=(k, d, d))
    full = a @ a.transpose(0, 2, 1) + d * np.eye(d)
    return {
        "full": full,
        "tied": full[0],
        "diag": rng.uniform(0.5, 2.0, size=(k, d)),
        "spherical": rng.uniform(0.5, 2.0, size=k),
    }[cov_type]


def dense(cov_type, cov, k, d):
    """The (K, d, d) covariance matrices a layout's array stands for."""
    if cov_type == "full":
        return cov
    if cov_type == "tied":
        return np.broadcast_to(cov, (k, d, d))
    if cov_type == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(d) for c in cov])


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_layout_algebra_against_numpy(cov_type, rng):
    k, d = 3, 4
    layout = LAYOUTS[cov_type]
    cov = random_covariances(cov_type, k, d, rng)
    assert cov.shape == layout.shape(k, d)
    pc = layout.precision_cholesky(cov)
    mats = dense(cov_type, cov, k, d)
    precisions = dense(cov_type, layout.precisions(pc), k, d)
    np.testing.assert_allclose(precisions, np.linalg.inv(mats), rtol=1e-10, atol=1e-12)
    assert_close(layout.covariances(pc), cov, rtol=1e-10)
    assert_close(layout.cholesky_from_precisions(layout.precisions(pc)), pc, rtol=1e-10)
    # log det of the precision factor = -1/2 log det of the covariance.
    log_det = np.broadcast_to(layout.log_det(pc, d), (k,))
    assert_close(log_det, -0.5 * np.linalg.slogdet(mats)[1], rtol=1e-12)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_a_starts_statistics_of_many_rows_in_tiles_equal_numpy(cov_type, rng):
    """A start's M-step on its whole sample (no E-step view): the full layout weighs the rows a tile at a time
    (8 MiB of work, not K x d x rows); its statistics are numpy's weighted moments."""
    from dask_em.gaussian import design_buffer

    k, d, n = 64, 32, 1500  # 2**20 // (k * d) = 512 rows a tile: three tiles
    layout = LAYOUTS[cov_type]
    x = rng.standard_normal((n, d)) + 5.0
    resp = rng.dirichlet(np.ones(k), size=n)
    centre = x.mean(0)
    xa = layout.augment(x, centre, design_buffer(cov_type, d, n))
    acc = layout.empty_stats(k, d)
    layout.accumulate(xa, None, resp.T.copy(), np.zeros((k, d)), acc)
    stats = layout.finish(acc, np.zeros((k, d)))
    nk = resp.sum(0)
    assert_close(layout.mass(stats), nk, rtol=1e-12)
    means = (resp.T @ x) / nk[:, None]
    params = gaussian.m_step(stats, np.zeros((k, d)), cov_type, 0.0)
    assert_close(params["means"] + centre, means, rtol=1e-10)
    scatter = np.einsum("nk,nkd,nke->kde", resp, x[:, None] - means, x[:, None] - means) / nk[:, None, None]
    expected = {"full": scatter, "tied": np.einsum("k,kde->de", nk, scatter) / n,
                "diag": np.einsum("kdd->kd", scatter), "spherical": np.einsum("kdd->k", scatter) / d}[cov_type]
    assert_close(params["covariances"], expected, rtol=1e-9)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_parameter_count_and_log_density_against_scikit_learn(cov_type, rng):
    X = mixture(rng, n=300, d=3, k=2)[0]
    ref = SkGaussianMixture(2, covariance_type=cov_type, max_iter=5, random_state=0).fit(X)
    assert gaussian.n_parameters(2, 3, cov_type) == ref._n_parameters()
    family = gaussian.GaussianFamily()
    params = {"covariance_type": cov_type, "weights": ref.weights_, "means": ref.means_,
              "covariances": ref.covariances_, "precisions_cholesky": ref.precisions_cholesky_}
    expected = ref._estimate_weighted_log_prob(X)
    # A log-density is a sum of terms (Mahalanobis distance, log-determinant, d/2 log 2 pi,
    # log weight) that can cancel to near 0: its round-off is absolute, of the terms' size,
    # which the largest |log-density| bounds from below. Relative alone failed under
    # OpenBLAS's SkylakeX kernels (-0.039 off by 8.7e-14: 9e-12 relative).
    terms = np.abs(expected).max()
    np.testing.assert_allclose(family.weighted_log_prob(X, params, np.zeros(3)), expected, rtol=1e-12,
                               atol=1e-12 * terms)


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
def test_m_step_equals_scikit_learn(cov_type, rng):
    """The M-step of one E-step's statistics equals scikit-learn's on the same responsibilities."""
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    X = mixture(rng, n=400, d=3, k=3)[0]
    state = round_state(3, 3, rng, cov=cov_type)
    (record,) = engine.estep_block(X, None, state)
    (new,) = engine.mstep_round([record], state, len(X))
    p = state.params[0]
    ref = SkGaussianMixture(3, covariance_type=cov_type, reg_covar=1e-6, weights_init=p["weights"],
                            means_init=p["means"], precisions_init=LAYOUTS[cov_type].precisions(p["precisions_cholesky"]),
                            max_iter=1)
    ref._initialize_parameters(X, np.random.RandomState(0))
    _, log_resp = ref._e_step(X)
    nk, means, covariances = _estimate_gaussian_parameters(X, np.exp(log_resp), 1e-6, cov_type)
    np.testing.assert_allclose(new.params["means"], means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new.params["covariances"], covariances, rtol=1e-9, atol=1e-12)
    assert_close(new.params["weights"], nk / nk.sum(), rtol=1e-12)


def test_initial_parameters_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"'spherical precision' should have the shape of \(3,\), but got \(3, 2\)"):
        gaussian.check_initial_parameters(3, 2, "spherical", None, None, np.ones((3, 2)))
    with pytest.raises(ValueError, match="'tied precision' should be symmetric, positive-definite"):
        gaussian.check_initial_parameters(3, 2, "tied", None, None, -np.eye(2))


def _sklearn_model(cov_type, k, d, rng):
    """A scikit-learn GaussianMixture holding random parameters (its own E-step is the reference)."""
    sk = SkGaussianMixture(k, covariance_type=cov_type)
    cov = random_covariances(cov_type, k, d, rng)
    sk.weights_ = rng.dirichlet(np.full(k, 5.0))
    sk.means_ = rng.normal(size=(k, d)) * 2.0
    sk.covariances_ = cov
    sk.precisions_cholesky_ = LAYOUTS[cov_type].precision_cholesky(cov)
    return sk


@pytest.mark.parametrize("cov_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("d, dtype, rtol", [(16, "float64", 1e-10), (16, "float32", 2e-4), (64, "float64", 1e-10)])
def test_chunks_of_many_panels_against_scikit_learn(cov_type, d, dtype, rtol, rng):
    """A chunk of several panels and a ragged last one (the panels, their tiles and the reused
    per-thread work arrays of the fused E-step): the log-likelihood and the M-step's parameters
    equal scikit-learn's E-step and ``_estimate_gaussian_parameters`` on the same rows.

    float32 computes the log-densities and products in float32 (its stated accuracy: 1e-4
    relative; 2e-4 leaves room for the spread of d=16 rows' float32 round-off)."""
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    k = 8
    sk = _sklearn_model(cov_type, k, d, rng)
    family = gaussian.GaussianFamily(reg_covar=0.0, compute_dtype=dtype)
    params = {"weights": sk.weights_, "means": sk.means_, "precisions_cholesky": sk.precisions_cholesky_,
              "covariances": sk.covariances_, "covariance_type": cov_type}
    lay = LAYOUTS[cov_type].kernel(params, np.dtype(dtype))
    panel = lay.panel_rows(k, d, np.dtype(dtype)) or gaussian.panel_rows(k, d)
    n = 3 * panel + 777
    labels = rng.integers(0, k, n)
    X = sk.means_[labels] + rng.normal(size=(n, d))
    state = engine.RoundState(family=family, context=np.zeros(d), params=[params])
    record = engine.estep_block(X, None, state)[0]
    (new,) = engine.mstep_round([record], state, n)

    log_norm, log_resp = sk._estimate_log_prob_resp(X)
    nk, means, cov = _estimate_gaussian_parameters(X, np.exp(log_resp), 0.0, cov_type)
    # The log-likelihood is a sum of n terms of size ~d: its round-off is relative to that sum.
    assert record["loglik"] == pytest.approx(log_norm.sum(), rel=rtol * 10)
    assert_close(record["nk"], nk, rtol=rtol, err_msg="nk")
    assert_close(new.params["means"], means, rtol=rtol, err_msg="means")
    assert_close(new.params["covariances"], cov, rtol=rtol * 10, err_msg="covariances")


def test_threads_and_reused_work_arrays_change_no_bit(rng):
    """Chunks of different widths, layouts and compute dtypes on four threads at once, twice over,
    in shuffled orders: every record is bitwise the one computed alone, one after another (each
    thread reuses its own design and log-density arrays from chunk to chunk)."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = []
    for cov_type in COVARIANCE_TYPES:
        for d, dtype in [(16, "float64"), (5, "float32"), (64, "float64")]:
            sk = _sklearn_model(cov_type, 4, d, rng)
            params = {"weights": sk.weights_, "means": sk.means_, "precisions_cholesky": sk.precisions_cholesky_,
                      "covariances": sk.covariances_, "covariance_type": cov_type}
            state = engine.RoundState(family=gaussian.GaussianFamily(compute_dtype=dtype), context=np.zeros(d),
                                      params=[params])
            x = sk.means_[rng.integers(0, 4, 20_000 if d < 64 else 5_000)] + rng.normal(size=(1, d))
            jobs.append((x + rng.normal(size=x.shape), state))

    def run(job):
        x, state = job
        record = engine.estep_block(x, None, state)[0]
        return record["loglik"], record["nk"], record["stats"]

    alone = [run(job) for job in jobs]
    order = np.concatenate([rng.permutation(len(jobs)), rng.permutation(len(jobs))])
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, [jobs[i] for i in order]))
    for i, (loglik, nk, stats) in zip(order, together):
        assert loglik == alone[i][0]
        np.testing.assert_array_equal(nk, alone[i][1])
        for key, value in stats.items():
            np.testing.assert_array_equal(value, alone[i][2][key], err_msg=key)
