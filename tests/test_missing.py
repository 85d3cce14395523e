"""Missing values marginalised inside EM (missing="marginalize"), against a direct numpy reference."""

import warnings

import dask.array as da
import numpy as np
import pytest
from scipy.special import gammaln, logsumexp

from dask_em import GaussianMixture
from dask_em.discrete_mixture import BernoulliMixture, CategoricalMixture, PoissonMixture
from conftest import assert_close

COV_TYPES = ["full", "tied", "diag", "spherical"]


# ---------------------------------------------------------------------------
# The independent reference: one EM iteration, row by row, with S_oo^-1 directly.
# ---------------------------------------------------------------------------


def full_covs(cov, ct, k, d):
    if ct == "full":
        return np.asarray(cov)
    if ct == "tied":
        return np.repeat(np.asarray(cov)[None], k, 0)
    if ct == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([np.eye(d) * c for c in cov])


def reference_iteration(X, weights, means, covs, ct, reg):
    """(mean log-likelihood, new weights, means, covariances in ct's shape) of one EM step."""
    n, d = X.shape
    k = len(weights)
    S = full_covs(covs, ct, k, d)
    logp = np.empty((n, k))
    xhat = np.empty((n, k, d))
    cond = np.zeros((n, k, d, d))
    for i in range(n):
        o = ~np.isnan(X[i])
        m = ~o
        for j in range(k):
            soo = S[j][np.ix_(o, o)]
            inv = np.linalg.inv(soo)
            r = X[i, o] - means[j, o]
            _, logdet = np.linalg.slogdet(soo)
            logp[i, j] = np.log(weights[j]) - 0.5 * (o.sum() * np.log(2 * np.pi) + logdet + r @ inv @ r)
            xhat[i, j] = X[i]
            if m.any():
                smo = S[j][np.ix_(m, o)]
                xhat[i, j, m] = means[j, m] + smo @ inv @ r
                cond[i, j][np.ix_(m, m)] = S[j][np.ix_(m, m)] - smo @ inv @ smo.T
    norm = logsumexp(logp, axis=1)
    resp = np.exp(logp - norm[:, None])
    nk = resp.sum(0)
    new_means = np.einsum("nk,nkd->kd", resp, xhat) / nk[:, None]
    scatter = np.zeros((k, d, d))
    for i in range(n):
        for j in range(k):
            e = xhat[i, j] - new_means[j]
            scatter[j] += resp[i, j] * (np.outer(e, e) + cond[i, j])
    if ct == "full":
        new_cov = scatter / nk[:, None, None] + reg * np.eye(d)
    elif ct == "tied":
        new_cov = scatter.sum(0) / nk.sum() + reg * np.eye(d)
    elif ct == "diag":
        new_cov = np.stack([np.diag(s) for s in scatter]) / nk[:, None] + reg
    else:
        new_cov = np.stack([np.diag(s).mean() for s in scatter]) / nk + reg
    return norm.mean(), nk / n, new_means, new_cov


def problem(ct, seed=0, n=60, d=4, k=3, frac=0.3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * 2 + rng.integers(0, 3, size=(n, 1)) * 3
    X[rng.random((n, d)) < frac] = np.nan
    X[np.isnan(X).all(1), 0] = 1.0  # no row wholly missing
    weights = rng.dirichlet(np.ones(k) * 5)
    means = rng.normal(size=(k, d)) * 2 + 3
    a = rng.normal(size=(k, d, d))
    full = a @ a.transpose(0, 2, 1) + np.eye(d)
    covs = {"full": full, "tied": full[0], "diag": np.stack([np.diag(f) for f in full]),
            "spherical": np.array([np.diag(f).mean() for f in full])}[ct]
    return X, weights, means, covs


def precisions(covs, ct):
    if ct == "full":
        return np.linalg.inv(covs)
    if ct == "tied":
        return np.linalg.inv(covs)
    return 1.0 / covs


def one_step(X, weights, means, covs, ct, **kw):
    gm = GaussianMixture(
        len(weights), covariance_type=ct, max_iter=1, tol=0, weights_init=weights, means_init=means,
        precisions_init=precisions(covs, ct), reg_covar=1e-6, **kw,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X)
    return gm


def step_matches_reference(X, weights, means, covs, ct, *, chunks, cov_atol):
    """One marginalising EM step on ``X`` in row chunks of ``chunks``, checked against the numpy reference:
    (the fitted estimator, the reference bound)."""
    bound, w_ref, m_ref, c_ref = reference_iteration(X, weights, means, covs, ct, 1e-6)
    gm = one_step(da.from_array(X, chunks=chunks), weights, means, covs, ct, missing="marginalize")
    np.testing.assert_allclose(gm.lower_bound_, bound, rtol=1e-10, atol=0)
    np.testing.assert_allclose(gm.weights_, w_ref, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gm.means_, m_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gm.covariances_, c_ref, rtol=1e-10, atol=cov_atol)
    return gm, bound


@pytest.mark.parametrize("ct", COV_TYPES)
def test_one_iteration_matches_direct_reference(ct):
    X, weights, means, covs = problem(ct)
    assert np.isnan(X).any() and (~np.isnan(X).any(1)).any()
    gm, bound = step_matches_reference(X, weights, means, covs, ct, chunks=17, cov_atol=1e-10)
    # the observed-data log-likelihood of the starting parameters, row by row
    start = one_step(X, weights, means, covs, ct, missing="marginalize")
    start._params = dict(start._params)
    ref_rows = []
    S = full_covs(covs, ct, len(weights), X.shape[1])
    for row in X:
        o = ~np.isnan(row)
        ref_rows.append(logsumexp([
            np.log(weights[j]) - 0.5 * (o.sum() * np.log(2 * np.pi) + np.linalg.slogdet(S[j][np.ix_(o, o)])[1]
                                         + (row[o] - means[j, o]) @ np.linalg.inv(S[j][np.ix_(o, o)]) @ (row[o] - means[j, o]))
            for j in range(len(weights))]))
    assert np.isclose(np.mean(ref_rows), bound, rtol=1e-12)


@pytest.mark.parametrize("ct", ["full", "tied"])
@pytest.mark.parametrize("dense_rows, vector_batch, row_gather_s",
                         [(1, 0.0, 4), (1, np.inf, 4), (10**9, 0.0, 4), (10**9, np.inf, 4), (4, 0.0, 4),
                          (10**9, 0.0, 0), (4, np.inf, 99)])
def test_every_route_matches_direct_reference(ct, dense_rows, vector_batch, row_gather_s, monkeypatch):
    """Frequent patterns through the complete rows' GEMMs (dense_rows=1), rare ones row by row
    (10**9), a mix (4); the patterns' small inverses written out over the batch (vector_batch=0)
    or by np.linalg (inf); the rows' conditional covariances gathered whole (row_gather_s=0) or
    entry by entry (99): each route equals the reference."""
    from dask_em import _incomplete

    monkeypatch.setattr(_incomplete, "DENSE_PATTERN_ROWS", dense_rows)
    monkeypatch.setattr(_incomplete, "_VECTOR_BATCH", vector_batch)
    monkeypatch.setattr(_incomplete, "_ROW_GATHER_S", row_gather_s)
    X, weights, means, covs = problem(ct, seed=12, n=120, d=6, frac=0.35)
    X[:50, [1, 4]] = np.nan  # one frequent pattern next to many rare ones
    X[np.isnan(X).all(1), 0] = 1.0
    gm, _ = step_matches_reference(X, weights, means, covs, ct, chunks=40, cov_atol=1e-10)
    # row weights: an integer weight is a repeated row
    reps = np.array([1, 2, 3] * 40)
    rep_bound, _, m_rep, c_rep = reference_iteration(np.repeat(X, reps, 0), weights, means, covs, ct, 1e-6)
    gw = GaussianMixture(len(weights), covariance_type=ct, max_iter=1, tol=0, weights_init=weights,
                         means_init=means, precisions_init=precisions(covs, ct), reg_covar=1e-6,
                         missing="marginalize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gw.fit(da.from_array(X, chunks=40), sample_weight=reps.astype(float))
    np.testing.assert_allclose(gw.means_, m_rep, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gw.covariances_, c_rep, rtol=1e-10, atol=1e-10)
    # inference: the weighted marginal log-densities of every row
    from dask_em._covariance import LAYOUTS
    from dask_em.gaussian import GaussianFamily

    params = {"weights": weights, "means": means, "covariances": covs, "covariance_type": ct,
              "precisions_cholesky": LAYOUTS[ct].precision_cholesky(covs)}
    got = GaussianFamily(missing="marginalize").weighted_log_prob(X, params, np.zeros(X.shape[1]))
    S = full_covs(covs, ct, len(weights), X.shape[1])
    ref = [[np.log(weights[j]) + _log_normal(row, means[j], S[j]) for j in range(len(weights))] for row in X]
    assert_close(got, ref, rtol=1e-10)


@pytest.mark.parametrize("ct", ["full", "tied"])
@pytest.mark.parametrize("row_gather_s", [0, 4])
def test_one_or_two_missing_values_profiled_out_match_reference(ct, row_gather_s, monkeypatch):
    """Rows missing one value (the rank-one correction h^2 / L_jj of the full quadratic form)
    or two, at every coordinate, far from the origin, through the profile route only:
    the EM step, the marginal log-densities and the imputed values equal direct numpy."""
    from dask_em import _incomplete
    from dask_em._covariance import LAYOUTS
    from dask_em.gaussian import GaussianFamily

    monkeypatch.setattr(_incomplete, "DENSE_PATTERN_ROWS", 10**9)
    monkeypatch.setattr(_incomplete, "_ROW_GATHER_S", row_gather_s)
    rng = np.random.default_rng(7)
    n, d = 150, 5
    X, weights, means, covs = problem(ct, seed=7, n=n, d=d, frac=0.0)
    X += 1e3  # the profile is taken about centered rows: no cancellation
    means = means + 1e3
    for i in range(n - 20):  # 20 complete rows stay
        X[i, rng.choice(d, size=1 + i % 2, replace=False)] = np.nan
    assert set(np.isnan(X).sum(1)) == {0, 1, 2}
    assert np.isnan(X[np.isnan(X).sum(1) == 1]).any(0).all()  # every coordinate missing alone
    gm, _ = step_matches_reference(X, weights, means, covs, ct, chunks=64, cov_atol=1e-9)
    params = {"weights": weights, "means": means - 1e3, "covariances": covs, "covariance_type": ct,
              "precisions_cholesky": LAYOUTS[ct].precision_cholesky(covs)}
    shift = np.full(d, 1e3)
    got = GaussianFamily(missing="marginalize").weighted_log_prob(X, params, shift)
    S = full_covs(covs, ct, len(weights), d)
    ref = [[np.log(weights[j]) + _log_normal(row, means[j], S[j]) for j in range(len(weights))] for row in X]
    assert_close(got, ref, rtol=1e-10)
    # E[x_m | x_o] = sum_k p(k | x_o) (mu_km + S_mo S_oo^-1 (x_o - mu_ko)), row by row
    filled = GaussianFamily(missing="marginalize").impute(X, params, shift)
    post = np.exp(np.array(ref) - logsumexp(ref, axis=1, keepdims=True))
    for i, row in enumerate(X):
        m = np.isnan(row)
        o = ~m
        expect = sum(post[i, j] * (means[j, m] + S[j][np.ix_(m, o)] @ np.linalg.solve(S[j][np.ix_(o, o)],
                                                                                       row[o] - means[j, o]))
                     for j in range(len(weights)))
        assert_close(filled[i, m], expect, rtol=1e-9)
        assert np.array_equal(filled[i, o], row[o])


@pytest.mark.parametrize("dense_rows", [10**9, 50])
def test_restarts_side_by_side_sum_bitwise_what_each_sums_alone(dense_rows, monkeypatch):
    """Restarts of different K and covariance types in one E-step on rows with NaN (as a
    select_model grid runs them) sum exactly what each sums alone: their profile tiles nest."""
    from dask_em import _incomplete
    from dask_em.gaussian import GaussianFamily

    monkeypatch.setattr(_incomplete, "DENSE_PATTERN_ROWS", dense_rows)
    monkeypatch.setattr(_incomplete, "_TILE_CELLS", 2**12)  # tiles of 64 to 256 rows by K
    rng = np.random.default_rng(3)
    n, d = 3000, 6
    X = rng.normal(size=(n, d)) * 2 + rng.integers(0, 3, (n, 1)) * 3
    X[rng.random(X.shape) < 0.25] = np.nan
    X[np.isnan(X).all(1), 0] = 0.5
    fam = GaussianFamily(missing="marginalize")
    ctx = np.nanmean(X, 0)

    def start(ct, k, seed):
        r = np.random.default_rng(seed)
        a = r.normal(size=(k, d, d))
        cov = a @ a.transpose(0, 2, 1) + np.eye(d)
        prec = {"full": np.linalg.inv(cov), "tied": np.linalg.inv(cov[0]),
                "diag": 1 / np.stack([np.diag(c) for c in cov])}[ct]
        settings = dict(covariance_type=ct, n_components=k, weights_init=r.dirichlet(np.ones(k)),
                        means_init=r.normal(size=(k, d)) + 3, precisions_init=prec)
        return fam.init_params(X[:10], None, None, ctx, settings)

    starts = [start("full", 3, 1), start("tied", 2, 2), start("diag", 4, 3), start("full", 5, 4)]
    w = rng.random(n)
    together = fam.estep(X, w, starts, ctx, entropy=True)
    for params, rec in zip(starts, together):
        alone = fam.estep(X, w, [params], ctx, entropy=True)[0]
        for key in ("loglik", "wsum", "entropy"):
            assert rec[key] == alone[key], key
        assert rec["stats"].keys() == alone["stats"].keys()
        for key in rec["stats"]:
            assert np.array_equal(rec["stats"][key], alone["stats"][key]), key


@pytest.mark.parametrize("where", ["first", "last", "none"])
def test_a_chunk_is_routed_by_its_nan_wherever_it_lies(where):
    """A clean chunk takes the complete rows' walk without a scan of its rows; one NaN in any
    panel (here the chunk's first or last row, many panels apart) stops that walk and the chunk
    is summed by the missing-values route, exactly as the route alone sums it."""
    from dask_em.gaussian import GaussianFamily

    rng = np.random.default_rng(5)
    n, d = 40_000, 5
    X = rng.normal(size=(n, d)) + rng.integers(0, 3, (n, 1)) * 4
    if where != "none":
        X[0 if where == "first" else n - 1, 2] = np.nan
    fam = GaussianFamily(missing="marginalize")
    ctx = np.nanmean(X, 0)
    starts = []
    for ct, k in (("full", 3), ("diag", 4)):
        r = np.random.default_rng(k)
        prec = np.eye(d) if ct == "full" else np.ones(d)
        settings = dict(covariance_type=ct, n_components=k, weights_init=np.full(k, 1 / k),
                        means_init=r.normal(size=(k, d)) * 3, precisions_init=np.stack([prec] * k))
        starts.append(fam.init_params(X[1:11], None, None, ctx, settings))
    got = fam.estep(X, None, starts, ctx, entropy=True)
    want = (fam._estep_complete(X, None, starts, ctx, entropy=True) if where == "none"
            else fam._estep_with_missing(X, None, starts, ctx, entropy=True))
    for rec, ref in zip(got, want):
        assert np.isfinite(rec["loglik"])
        for key in ("loglik", "wsum", "entropy"):
            assert rec[key] == ref[key], key
        for key in rec["stats"]:
            assert np.array_equal(rec["stats"][key], ref["stats"][key]), key


def _log_normal(row, mean, cov):
    o = ~np.isnan(row)
    r = row[o] - mean[o]
    soo = cov[np.ix_(o, o)]
    return -0.5 * (o.sum() * np.log(2 * np.pi) + np.linalg.slogdet(soo)[1] + r @ np.linalg.solve(soo, r))


@pytest.mark.parametrize("ct", COV_TYPES)
def test_no_nan_is_bitwise_today(ct):
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(300, 3)), rng.normal(size=(300, 3)) + 4])
    a = GaussianMixture(2, covariance_type=ct, random_state=0, max_iter=5).fit(da.from_array(X, chunks=128))
    b = GaussianMixture(2, covariance_type=ct, random_state=0, max_iter=5, missing="marginalize").fit(
        da.from_array(X, chunks=128))
    assert a.lower_bounds_ == b.lower_bounds_
    for name in ("weights_", "means_", "covariances_"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert np.array_equal(a.score_samples(X), b.score_samples(X))


@pytest.mark.parametrize("ct", COV_TYPES)
def test_chunk_invariance_with_nan_across_boundaries(ct):
    X, weights, means, covs = problem(ct, seed=3, n=90)
    fits = [one_step(da.from_array(X, chunks=c), weights, means, covs, ct, missing="marginalize")
            for c in (90, (7, -1), (31, -1), ((40, 1, 49), -1))]
    for other in fits[1:]:
        np.testing.assert_allclose(other.means_, fits[0].means_, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(other.covariances_, fits[0].covariances_, rtol=1e-12, atol=1e-12)
        assert_close(other.lower_bound_, fits[0].lower_bound_, rtol=1e-13)


def test_whole_column_missing_in_some_chunks():
    X, weights, means, covs = problem("full", seed=4, n=80, frac=0.1)
    X[:40, 2] = np.nan  # column 2 missing in the first two chunks of 20
    X[np.isnan(X).all(1), 0] = 1.0
    bound, _, m_ref, c_ref = reference_iteration(X, weights, means, covs, "full", 1e-6)
    gm = one_step(da.from_array(X, chunks=20), weights, means, covs, "full", missing="marginalize")
    np.testing.assert_allclose(gm.means_, m_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(gm.covariances_, c_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ct", COV_TYPES)
def test_bound_never_falls(ct):
    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal(size=(400, 4)) @ rng.normal(size=(4, 4)), rng.normal(size=(400, 4)) + 5])
    X[rng.random(X.shape) < 0.3] = np.nan
    X[np.isnan(X).all(1), 1] = 0.0
    gm = GaussianMixture(3, covariance_type=ct, random_state=0, max_iter=40, tol=0, reg_covar=0,
                         missing="marginalize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(da.from_array(X, chunks=150))
    steps = np.diff(gm.lower_bounds_)
    assert (steps >= -1e-10).all(), steps.min()


def test_error_mode_unchanged_and_all_missing_row_named():
    X = np.random.default_rng(0).normal(size=(50, 3))
    X[7, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity in rows .* row 7"):
        GaussianMixture(2, random_state=0).fit(da.from_array(X, chunks=20))
    X[23] = np.nan
    with pytest.raises(ValueError, match="every value missing .*row 23"):
        GaussianMixture(2, random_state=0, missing="marginalize").fit(da.from_array(X, chunks=20))
    with pytest.raises(ValueError, match=r"'missing' parameter .* must be a str among \{'error', 'marginalize'\}"):
        GaussianMixture(2, missing="drop").fit(X)


def test_predict_score_impute_on_incomplete_rows():
    X, weights, means, covs = problem("full", seed=6)
    gm = one_step(X, weights, means, covs, "full", missing="marginalize")
    p = gm.predict_proba(X)
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1)
    lazy = gm.score_samples(da.from_array(X, chunks=13)).compute()
    assert_close(lazy, gm.score_samples(X), rtol=1e-12)
    assert np.isfinite(gm.bic(X))
    imputed = gm.impute(da.from_array(X, chunks=13))
    assert isinstance(imputed, da.Array)
    imputed = imputed.compute()
    obs = ~np.isnan(X)
    assert np.array_equal(imputed[obs], X[obs]) and np.isfinite(imputed).all()
    # reference: sum_k P(k | x_o) (mu_km + S_mo S_oo^-1 (x_o - mu_o)) under the fitted model
    S, mu, w = gm.covariances_, gm.means_, gm.weights_
    for i in np.flatnonzero(~obs.all(1))[:10]:
        o, m = obs[i], ~obs[i]
        resp = gm.predict_proba(X[i : i + 1])[0]
        exp = sum(resp[j] * (mu[j, m] + S[j][np.ix_(m, o)] @ np.linalg.solve(S[j][np.ix_(o, o)], X[i, o] - mu[j, o]))
                  for j in range(len(w)))
        np.testing.assert_allclose(imputed[i, m], exp, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------
# Discrete families: one EM round through the engine against direct loops.
# ---------------------------------------------------------------------------


def discrete_reference(name, X, weights, table, a):
    n, d = X.shape
    k = len(weights)
    logp = np.tile(np.log(weights), (n, 1))
    for i in range(n):
        for j in range(k):
            for f in range(d):
                v = X[i, f]
                if np.isnan(v):
                    continue
                if name == "bernoulli":
                    logp[i, j] += np.log(table[j, f]) if v == 1 else np.log(1 - table[j, f])
                elif name == "poisson":
                    logp[i, j] += v * np.log(table[j, f]) - table[j, f] - gammaln(v + 1)
                else:
                    logp[i, j] += np.log(table[j][f][int(v)])
    norm = logsumexp(logp, axis=1)
    r = np.exp(logp - norm[:, None])
    nk = r.sum(0)
    if name == "categorical":
        new = []
        for j in range(k):
            feats = []
            for f in range(d):
                c = np.zeros(len(table[j][f]))
                for i in range(n):
                    if np.isnan(X[i, f]):
                        c += r[i, j] * table[j][f]
                    else:
                        c[int(X[i, f])] += r[i, j]
                feats.append((c + a) / (c + a).sum())
            new.append(np.concatenate(feats))
        return norm.mean(), nk / n, np.array(new)
    stat = np.zeros((k, d))
    for i in range(n):
        for j in range(k):
            for f in range(d):
                stat[j, f] += r[i, j] * (table[j, f] if np.isnan(X[i, f]) else X[i, f])
    if name == "bernoulli":
        return norm.mean(), nk / n, (stat + a) / (nk[:, None] + 2 * a)
    return norm.mean(), nk / n, (stat + a) / nk[:, None]


@pytest.mark.parametrize("name", ["bernoulli", "poisson", "categorical"])
def test_discrete_iteration_matches_direct_reference(name):
    from dask_em.discrete import BernoulliFamily, CategoricalFamily, PoissonFamily
    from dask_em.engine import RoundState, round_graph

    rng = np.random.default_rng(7)
    n, d, k, a = 70, 4, 3, 0.01
    weights = rng.dirichlet(np.ones(k) * 4)
    if name == "bernoulli":
        family = BernoulliFamily(pseudo_count=a, missing="marginalize")
        table = rng.uniform(0.1, 0.9, size=(k, d))
        X = (rng.random((n, d)) < 0.5).astype(float)
        params = {"probabilities": table}
    elif name == "poisson":
        family = PoissonFamily(pseudo_count=a, missing="marginalize")
        table = rng.uniform(0.5, 6, size=(k, d))
        X = rng.poisson(3, size=(n, d)).astype(float)
        params = {"rates": table}
    else:
        family = CategoricalFamily(n_categories=3, pseudo_count=a, missing="marginalize")
        table = [[rng.dirichlet(np.ones(3)) for _ in range(d)] for _ in range(k)]
        X = rng.integers(0, 3, size=(n, d)).astype(float)
        params = {"probabilities": np.array([np.concatenate(t) for t in table])}
    X[rng.random((n, d)) < 0.3] = np.nan
    X[np.isnan(X).all(1), 0] = 1.0
    params["weights"] = weights
    bound, w_ref, t_ref = discrete_reference(name, X, weights, table, a)
    for chunks in (n, 16, 9):
        graph = round_graph(da.from_array(X, chunks=(chunks, -1)), None, RoundState(family, None, [params]),
                            split_every=None)
        (result,) = graph.compute()
        assert_close(result.lower_bound, bound, rtol=1e-10)
        assert_close(result.params["weights"], w_ref, rtol=1e-10)
        key = "rates" if name == "poisson" else "probabilities"
        assert_close(result.params[key], t_ref, rtol=1e-10)


@pytest.mark.parametrize("cls", [BernoulliMixture, PoissonMixture])
def test_discrete_fit_no_nan_bitwise_and_with_nan(cls):
    rng = np.random.default_rng(8)
    X = (rng.random((400, 6)) < np.repeat([[0.2] * 6, [0.8] * 6], 200, axis=0)).astype(float)
    a = cls(2, random_state=0, max_iter=5).fit(da.from_array(X, chunks=(150, -1)))
    b = cls(2, random_state=0, max_iter=5, missing="marginalize").fit(da.from_array(X, chunks=(150, -1)))
    assert a.lower_bounds_ == b.lower_bounds_
    X[rng.random(X.shape) < 0.2] = np.nan
    X[np.isnan(X).all(1), 0] = 1.0
    with pytest.raises(ValueError, match="but X holds nan"):
        cls(2, random_state=0).fit(X)
    gm = cls(2, random_state=0, max_iter=30, tol=0, pseudo_count=0, missing="marginalize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(da.from_array(X, chunks=(150, -1)))
    assert (np.diff(gm.lower_bounds_) >= -1e-10).all()
    imputed = gm.impute(X)
    assert np.isfinite(imputed).all() and np.array_equal(imputed[~np.isnan(X)], X[~np.isnan(X)])
    assert np.isfinite(gm.score_samples(X)).all()


def test_categorical_fit_with_nan_and_impute():
    rng = np.random.default_rng(9)
    X = rng.integers(0, 3, size=(300, 5)).astype(float)
    X[rng.random(X.shape) < 0.2] = np.nan
    X[np.isnan(X).all(1), 0] = 1.0
    with pytest.raises(TypeError, match="integers"):
        CategoricalMixture(2, n_categories=3).fit(X)
    gm = CategoricalMixture(2, n_categories=3, random_state=0, missing="marginalize", max_iter=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X)
    imputed = gm.impute(X)
    assert set(np.unique(imputed)) <= {0.0, 1.0, 2.0}


def test_user_family_without_opt_in_refused():
    from dask_em import Mixture
    from dask_em.discrete import BernoulliFamily

    class Plain(BernoulliFamily):
        supports_missing = False

    with pytest.raises(ValueError, match="does not support missing values"):
        Mixture(Plain(), 2, missing="marginalize").fit(np.ones((10, 2)))
    # a user family that opts in (the built-in ones do) is accepted
    X = np.array([[1, 0], [np.nan, 1], [0, 1], [1, np.nan]] * 10, dtype=float)
    Mixture(BernoulliFamily(), 2, missing="marginalize", random_state=0, max_iter=3).fit(X)


# ---------------------------------------------------------------------------
# Recovery under MCAR against dropping incomplete rows and mean imputation.
# ---------------------------------------------------------------------------

TRUE_MEANS = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 0.0, -2.0], [-3.0, 4.0, 3.0, 2.0]])
TRUE_COVS = np.array([
    [[1.0, 0.6, 0.3, 0.0], [0.6, 1.0, 0.5, 0.2], [0.3, 0.5, 1.0, 0.4], [0.0, 0.2, 0.4, 1.0]],
    [[2.0, -0.8, 0.0, 0.3], [-0.8, 1.0, 0.2, 0.0], [0.0, 0.2, 0.5, 0.1], [0.3, 0.0, 0.1, 1.0]],
    [[0.7, 0.0, 0.2, 0.0], [0.0, 0.7, 0.0, 0.3], [0.2, 0.0, 1.5, -0.6], [0.0, 0.3, -0.6, 1.2]],
])


def parameter_error(gm):
    from scipy.optimize import linear_sum_assignment

    cost = ((gm.means_[:, None] - TRUE_MEANS[None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    return float(np.mean([np.linalg.norm(gm.means_[r] - TRUE_MEANS[c]) + np.linalg.norm(gm.covariances_[r] - TRUE_COVS[c])
                          for r, c in zip(rows, cols)]))


def mcar_problem(frac, seed=11, n=3000):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.4, 0.35, 0.25])
    X = np.stack([rng.multivariate_normal(TRUE_MEANS[j], TRUE_COVS[j]) for j in labels])
    X[rng.random(X.shape) < frac] = np.nan
    return X[~np.isnan(X).all(1)]


def fit3(X, **kw):
    gm = GaussianMixture(3, random_state=0, n_init=3, max_iter=300, tol=1e-6, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gm.fit(da.from_array(X, chunks=(700, -1)))


@pytest.mark.parametrize("frac", [0.1, 0.3, 0.5])
def test_recovery_beats_dropping_rows_and_mean_imputation(frac):
    X = mcar_problem(frac)
    marginal = parameter_error(fit3(X, missing="marginalize"))
    dropped = parameter_error(fit3(X[~np.isnan(X).any(1)]))
    filled = np.where(np.isnan(X), np.nanmean(X, 0), X)
    imputed = parameter_error(fit3(filled))
    print(f"MCAR {frac:.0%}: marginalised {marginal:.4f}, drop rows {dropped:.4f}, mean-impute {imputed:.4f}")
    assert marginal < dropped and marginal < imputed


# ---------------------------------------------------------------------------
# Around the fit: emEM, select_model, checkpoints, the store, the CLI.
# ---------------------------------------------------------------------------


def test_emem_select_checkpoint_store_roundtrip(tmp_path):
    from dask_em import load, save, select_model

    X = mcar_problem(0.2, n=900)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emem = GaussianMixture(3, random_state=0, init_strategy="emEM", n_short=4, short_iter=3, n_init=2,
                               missing="marginalize").fit(X)
        assert np.isfinite(emem.lower_bound_)
        result = select_model(X, n_components=[2, 3], covariance_types=["full", "diag"], random_state=0,
                              missing="marginalize")
        assert result.best_estimator_.missing == "marginalize"
        ck = str(tmp_path / "ck.npz")
        part = GaussianMixture(3, random_state=0, max_iter=4, tol=0, missing="marginalize")
        part.fit(X, checkpoint=ck)
        resumed = GaussianMixture(3, random_state=0, max_iter=8, tol=0, missing="marginalize")
        resumed.fit(X, checkpoint=ck, resume=True)
        whole = GaussianMixture(3, random_state=0, max_iter=8, tol=0, missing="marginalize").fit(X)
    assert_close(resumed.means_, whole.means_, rtol=1e-12)
    save(whole, str(tmp_path / "m.zarr"))
    back = load(str(tmp_path / "m.zarr"))
    assert back.missing == "marginalize"
    np.testing.assert_array_equal(back.score_samples(X), whole.score_samples(X))
    np.testing.assert_array_equal(back.impute(X), whole.impute(X))


def test_cli_fit_missing_marginalize(tmp_path):
    import json
    import os
    import subprocess
    import sys

    X = mcar_problem(0.2, n=600)
    store = str(tmp_path / "x.zarr")
    da.from_array(X, chunks=(200, 4)).to_zarr(store)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    base = [sys.executable, "-m", "dask_em", "fit", store, "-k", "3", "--seed", "0", "--quiet", "--json"]
    refused = subprocess.run(base + ["-o", str(tmp_path / "a.zarr")], capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "NaN" in refused.stderr
    ok = subprocess.run(base + ["-o", str(tmp_path / "b.zarr"), "--missing", "marginalize"], capture_output=True,
                        text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert np.isfinite(json.loads(ok.stdout)["lower_bound"])
