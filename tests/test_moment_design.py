"""The moment design of full/tied E-steps at small d (_covariance._MomentDesign), against direct sums.

The fused E-step of a full/tied restart with few features runs on the design
[vech((x-c)(x-c)^T), x-c, 1]: one GEMM for every log-density, one for every
statistic, as raw moments about the shift, turned into the residual design's
n, a, b about the means; above the crossover d the residual design's
statistics are raw moments about the shift too (_covariance._RawStatistics).
Checked here against log-densities from scipy.stats.multivariate_normal and
statistics summed directly with numpy; the fallback to statistics about the
means (a mean far from the shift in its own spread) is checked to be taken
and to stay accurate.
"""

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from dask_em import engine, gaussian
from dask_em._covariance import LAYOUTS, MOMENT_MAX_DISTANCE2, _MomentDesign, _RawStatistics, moment_max_features
from conftest import assert_close


def make_params(rng, ct, k, d, mean_scale=1.0):
    factors = np.triu(rng.standard_normal((k, d, d)) * 0.2 + np.eye(d) * rng.uniform(0.7, 1.5, (k, 1, 1)))
    return {
        "means": rng.standard_normal((k, d)) * mean_scale,
        "precisions_cholesky": factors if ct == "full" else factors[0],
        "weights": rng.dirichlet(np.ones(k) * 5),
        "covariance_type": ct,
    }


def direct(X, w, params, shift):
    """loglik, n, a, b about the (centered) means, from scipy log-densities and numpy sums."""
    ct, means = params["covariance_type"], params["means"]
    pcs = params["precisions_cholesky"]
    pcs = pcs if ct == "full" else np.broadcast_to(pcs, (len(means),) + pcs.shape)
    y = X - shift
    wlp = np.stack([
        np.log(wk) + multivariate_normal(m, np.linalg.inv(u @ u.T)).logpdf(y)
        for wk, m, u in zip(params["weights"], means, pcs)
    ], axis=1)
    norm = logsumexp(wlp, axis=1)
    resp = np.exp(wlp - norm[:, None]) * w[:, None]
    z = y[:, None, :] - means[None]
    return float(w @ norm), resp.sum(0), np.einsum("nk,nkd->kd", resp, z), np.einsum("nk,nki,nkj->kij", resp, z, z)


def estep(X, w, params, shift, dtype="float64"):
    family = gaussian.GaussianFamily(compute_dtype=dtype)
    state = engine.RoundState(family, shift, [params], check_rows=False)
    return engine.estep_block(X, w, state)[0]


def rel(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("ct", ["full", "tied"])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-11), ("float32", 2e-5)])
# k=6: the GEMMs run on 8 rows, two of them zero (_covariance._gemm_rows); k=2: above the moment design's d,
# the residual design with raw-moment statistics (_covariance._RawStatistics).
@pytest.mark.parametrize("k", [2, 4, 6])
def test_moment_design_equals_direct_sums(ct, dtype, tol, k, rng):
    d = 6
    params = make_params(rng, ct, k, d)
    shift = rng.standard_normal(d)
    X = shift + rng.standard_normal((7000, d)) * 1.3  # 7000 rows: several panels, a partial last one
    w = rng.uniform(0.2, 2.0, len(X))
    assert isinstance(LAYOUTS[ct].kernel(params, dtype), _MomentDesign if k > 2 else _RawStatistics)
    rec = estep(X, w, params, shift, dtype)
    loglik, n, a, b = direct(X, w, params, shift)
    assert abs(rec["loglik"] - loglik) <= tol * abs(loglik)
    assert rec["wsum"] == pytest.approx(w.sum(), rel=1e-12)
    for key, ref in (("n", n), ("a", a), ("b", b)):
        assert rec["stats"][key].dtype == np.float64
        assert rel(rec["stats"][key], ref) < tol, key
    assert_close(rec["nk"], n, rtol=tol)


@pytest.mark.parametrize("ct", ["full", "tied"])
@pytest.mark.parametrize("k", [2, 4])
def test_mean_far_from_the_shift_takes_the_residual_design(ct, k, rng):
    """A component 1e4 of its spreads from the shift: raw moments would lose ~eps * 1e8; the guard keeps them out."""
    d = 5
    params = make_params(rng, ct, k, d)
    params["means"][0] += 1e4
    shift = np.zeros(d)
    labels = rng.integers(0, k, 4000)
    X = params["means"][labels] + rng.standard_normal((4000, d)) * 0.8
    assert LAYOUTS[ct].kernel(params) is LAYOUTS[ct]
    rec = estep(X, np.ones(len(X)), params, shift)
    _, n, a, b = direct(X, np.ones(len(X)), params, shift)
    for key, ref in (("n", n), ("a", a), ("b", b)):
        assert rel(rec["stats"][key], ref) < 1e-10, key
    # The same components with every mean within a few spreads of the shift: the moment design.
    near = dict(params, means=params["means"] * 1e-4)
    assert isinstance(LAYOUTS[ct].kernel(near), _MomentDesign if k > 2 else _RawStatistics)


def test_the_rule_picks_by_components_features_and_distance(rng):
    for k in (2, 3, 5, 8, 16):
        limit = moment_max_features(k)
        for d in {1, 4, limit, limit + 1} - {0}:
            params = make_params(rng, "full", k, d, mean_scale=0.0)
            chosen = LAYOUTS["full"].kernel(params)
            assert isinstance(chosen, _MomentDesign if d <= limit else _RawStatistics), (k, d)
    assert moment_max_features(2) == 0  # two components: the residual design was faster at every d measured
    # Squared Mahalanobis distance of the shift from a mean of 1e4 (float32's limit is below, float64's above).
    params = make_params(rng, "full", 4, 4, mean_scale=0.0)
    params["precisions_cholesky"] = np.broadcast_to(np.eye(4), (4, 4, 4)).copy()
    params["means"][2, 0] = 100.0
    assert MOMENT_MAX_DISTANCE2[np.dtype("float32")] < 1e4 < MOMENT_MAX_DISTANCE2[np.dtype("float64")]
    assert isinstance(LAYOUTS["full"].kernel(params, "float64"), _MomentDesign)
    assert not isinstance(LAYOUTS["full"].kernel(params, "float32"), _MomentDesign)
    assert LAYOUTS["full"].kernel(params, "float32") is LAYOUTS["full"]
    params["means"][2, 0] = np.nan
    assert LAYOUTS["full"].kernel(params, "float64") is LAYOUTS["full"]
    for ct in ("diag", "spherical"):
        assert LAYOUTS[ct].kernel(params) is LAYOUTS[ct]


def test_a_restart_sums_the_same_beside_restarts_with_longer_panels(rng):
    """A moment-design restart (2048-row panels at d=16) beside a diag one (8192): bitwise its sums alone."""
    k, d = 8, 16
    full = make_params(rng, "full", k, d, mean_scale=0.3)
    diag = {"means": rng.standard_normal((k, d)), "precisions_cholesky": rng.uniform(0.5, 1.5, (k, d)),
            "weights": np.full(k, 1.0 / k), "covariance_type": "diag"}
    X = rng.standard_normal((20_000, d))
    family = gaussian.GaussianFamily()
    assert isinstance(LAYOUTS["full"].kernel(full), _MomentDesign)
    together = engine.estep_block(X, None, engine.RoundState(family, np.zeros(d), [diag, full], check_rows=False))
    alone = engine.estep_block(X, None, engine.RoundState(family, np.zeros(d), [full], check_rows=False))
    assert together[1]["loglik"] == alone[0]["loglik"]
    for key in ("n", "a", "b"):
        np.testing.assert_array_equal(together[1]["stats"][key], alone[0]["stats"][key], err_msg=key)


@pytest.mark.parametrize("d", range(1, 10))
def test_vech_pairs_cover_each_pair_once(d):
    from dask_em._covariance import _vech_pairs

    i, j = _vech_pairs(d)
    pairs = {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())}
    assert len(i) == d * (d + 1) // 2 == len(pairs)
    assert pairs == {(a, b) for a in range(d) for b in range(a, d)}


@pytest.mark.parametrize("d", [1, 2, 5, 6, 16])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_moment_design_holds_the_products_the_rows_and_ones(d, dtype, rng):
    """augment's few broadcast calls write [y_i y_j by _vech_pairs, y, 1] for a panel shorter than its buffer."""
    from dask_em._covariance import MOMENT_LAYOUTS, _vech_pairs

    layout = MOMENT_LAYOUTS["full"]
    X = rng.standard_normal((300, d)) * 3 + 5
    shift = rng.standard_normal(d)
    buf = gaussian.design_buffer(layout, d, 512, dtype)
    buf[:] = np.nan  # no stale value may survive
    buf[layout.width(d) - 1] = 1.0
    xa = layout.augment(X, shift, buf)
    assert xa.shape == (layout.width(d), 300) and xa.dtype == dtype
    y = (X - shift).T.astype(dtype)
    i, j = _vech_pairs(d)
    q = d * (d + 1) // 2
    np.testing.assert_array_equal(xa[q : q + d], y)
    np.testing.assert_array_equal(xa[:q], y[i] * y[j])  # the same products, rounded once
    np.testing.assert_array_equal(xa[-1], np.ones(300, dtype))
