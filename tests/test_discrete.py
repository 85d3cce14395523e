"""Bernoulli, Poisson and categorical mixtures against numpy, scipy and scikit-learn."""

import dataclasses
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from scipy import stats as sps
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp
from sklearn.utils._param_validation import InvalidParameterError

import dask_em
from dask_em import engine
from dask_em.discrete import BernoulliFamily, CategoricalFamily, PoissonFamily
from dask_em.family import merge_records
from conftest import assert_close

K, D = 3, 6
CATEGORIES = (3, 5, 2, 4, 3, 6)
FAMILIES = ["bernoulli", "poisson", "categorical"]


def truth(family: str, rng):
    """True parameters of a well-separated K-component mixture."""
    if family == "bernoulli":
        return {"probabilities": np.array([[0.9, 0.1] * 3, [0.1, 0.9] * 3, [0.85, 0.85, 0.15, 0.15, 0.5, 0.5]])}
    if family == "poisson":
        return {"rates": np.array([[1.0, 8.0] * 3, [9.0, 0.5] * 3, [4.0, 4.0, 15.0, 15.0, 0.2, 0.2]])}
    probs = []
    for j, c in enumerate(CATEGORIES):
        block = np.full((K, c), 0.1 / (c - 1))
        for k in range(K):
            block[k, (k + j) % c] = 0.9  # each component favours its own code
        probs.append(block)
    return {"probabilities": np.hstack(probs)}


def family_of(name: str, pseudo_count=1e-3):
    return {
        "bernoulli": BernoulliFamily(pseudo_count),
        "poisson": PoissonFamily(pseudo_count),
        "categorical": CategoricalFamily(CATEGORIES, pseudo_count),
    }[name]


def estimator(name: str, k=K, **kw):
    cls = {"bernoulli": dask_em.BernoulliMixture, "poisson": dask_em.PoissonMixture,
           "categorical": dask_em.CategoricalMixture}[name]
    if name == "categorical":
        kw.setdefault("n_categories", CATEGORIES)
    return cls(k, **kw)


def draw(name: str, rng, n=6000, weights=(0.5, 0.3, 0.2)):
    """Rows of the true mixture, in the family's natural stored dtype."""
    params = {"weights": np.asarray(weights), **truth(name, rng)}
    labels = np.sort(rng.choice(K, size=n, p=params["weights"]))
    X = family_of(name).sample(params, labels, None, rng)
    dtype = {"bernoulli": bool, "poisson": np.int32, "categorical": np.int16}[name]
    return X.astype(dtype), labels, params


def reference_log_prob(name: str, X, params):
    """log p(x | k), (n, K), from scipy.stats: an implementation independent of ours."""
    cols = []
    for k in range(K):
        if name == "bernoulli":
            cols.append(sps.bernoulli.logpmf(X, params["probabilities"][k]).sum(1))
        elif name == "poisson":
            cols.append(sps.poisson.logpmf(X, params["rates"][k]).sum(1))
        else:
            offsets = np.concatenate([[0], np.cumsum(CATEGORIES)])
            total = np.zeros(len(X))
            for j, c in enumerate(CATEGORIES):
                p = params["probabilities"][k, offsets[j] : offsets[j + 1]]
                total += sps.multinomial.logpmf(np.eye(c)[X[:, j]], 1, p)
            cols.append(total)
    return np.stack(cols, 1)


def gamma_posterior_mode(X, resp, a, prior_rate=0.0):
    """Poisson rates as the mode of their conjugate posterior, written from the prior.

    A Gamma(shape 1 + a, rate ``prior_rate``) prior and weighted counts give the posterior
    Gamma(shape 1 + a + sum_i r_ik x_ij, rate prior_rate + sum_i r_ik), whose mode is
    (shape - 1) / rate: the textbook conjugate update, not the library's expression.
    """
    shape = (1.0 + a) + resp.T @ X
    rate = prior_rate + resp.sum(0)[:, None]
    return (shape - 1.0) / rate


def reference_m_step(name: str, X, resp, a):
    """The M-steps written out in numpy: Beta, Gamma and Dirichlet posterior modes."""
    nk = resp.sum(0)
    if name == "bernoulli":
        return {"probabilities": (resp.T @ X + a) / (nk[:, None] + 2 * a)}
    if name == "poisson":
        return {"rates": gamma_posterior_mode(X, resp, a)}
    blocks = []
    for j, c in enumerate(CATEGORIES):
        counts = resp.T @ np.eye(c)[X[:, j].astype(np.int64)] + a
        blocks.append(counts / counts.sum(1, keepdims=True))
    return {"probabilities": np.hstack(blocks)}


def start(name, rng):
    """A start near, not at, the truth: weights even, parameters blurred."""
    params = {k: v.copy() for k, v in truth(name, rng).items()}
    key = "rates" if name == "poisson" else "probabilities"
    params[key] = 0.7 * params[key] + 0.3 * params[key].mean(0)
    return {"weights": np.full(K, 1 / K), **params}


def state_for(name, params):
    return engine.RoundState(family=family_of(name), context=None, params=[params])


def param_key(name):
    return "rates" if name == "poisson" else "probabilities"


# ---------------------------------------------------------------------------
# One EM step against independent references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_log_prob_equals_scipy(name, rng):
    X, _, params = draw(name, rng, n=500)
    fam = family_of(name)
    xp = fam.prepare_rows(X)
    ours = fam.log_prob(xp, params)
    constant = fam.row_log_constant(xp)  # the part no component changes (Poisson: -log x!)
    if constant is not None:
        ours = ours + constant[:, None]
        assert fam.total_log_constant(xp, None) == pytest.approx(constant.sum(), rel=1e-12)
    assert_close(ours, reference_log_prob(name, X.astype(np.int64), params), rtol=1e-12)
    weights = np.full(K, 1 / K)
    np.testing.assert_allclose(
        fam.weighted_log_prob(X, {**params, "weights": weights}, None),
        reference_log_prob(name, X.astype(np.int64), params) + np.log(weights), rtol=1e-12,
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_one_em_step_equals_numpy(name, rng):
    """E-step (scipy log-pmfs + log-sum-exp) and M-step (the formulas) written out by hand."""
    X, _, _ = draw(name, rng, n=900)
    p0 = start(name, rng)
    w = rng.uniform(0.5, 2.0, size=len(X))
    lp = reference_log_prob(name, X.astype(np.int64), p0) + np.log(p0["weights"])
    log_norm = logsumexp(lp, axis=1)
    resp = np.exp(lp - log_norm[:, None]) * w[:, None]
    expected = reference_m_step(name, X.astype(np.float64), resp, 1e-3)

    graph = engine.round_graph(da.from_array(X, chunks=(200, -1)), da.from_array(w, chunks=200),
                                state_for(name, p0), split_every=2)
    (result,) = dask.compute(graph, scheduler="sync")[0]
    assert result.lower_bound == pytest.approx((w * log_norm).sum() / w.sum(), rel=1e-12)
    assert_close(result.params["weights"], resp.sum(0) / resp.sum(), rtol=1e-12)
    key = param_key(name)
    assert_close(result.params[key], expected[key], rtol=1e-10)


def test_bernoulli_m_step_equals_sklearn_bernoulli_nb(rng):
    """Given fixed responsibilities, our M-step is BernoulliNB's estimate on rows weighted by them."""
    from sklearn.naive_bayes import BernoulliNB

    X, _, _ = draw("bernoulli", rng, n=800)
    resp = rng.dirichlet(np.ones(K), size=len(X))
    nb = BernoulliNB(alpha=0.5, force_alpha=True).fit(
        np.tile(X, (K, 1)), np.repeat(np.arange(K), len(X)), sample_weight=resp.T.ravel()
    )
    fam = BernoulliFamily(pseudo_count=0.5)
    ours = fam.m_step(fam.chunk_stats(fam.prepare_rows(X), resp, {}), resp.sum(0), {})
    assert_close(np.log(ours["probabilities"]), nb.feature_log_prob_, rtol=1e-12)
    # and the log-likelihood of a row under each class is the family's log_prob
    jll = nb.predict_joint_log_proba(X) - nb.class_log_prior_
    assert_close(fam.log_prob(fam.prepare_rows(X), ours), jll, rtol=1e-10)


def test_categorical_m_step_equals_sklearn_categorical_nb(rng):
    from sklearn.naive_bayes import CategoricalNB

    X, _, _ = draw("categorical", rng, n=800)
    resp = rng.dirichlet(np.ones(K), size=len(X))
    nb = CategoricalNB(alpha=0.3, force_alpha=True, min_categories=np.array(CATEGORIES)).fit(
        np.tile(X, (K, 1)), np.repeat(np.arange(K), len(X)), sample_weight=resp.T.ravel()
    )
    fam = CategoricalFamily(CATEGORIES, pseudo_count=0.3)
    ours = fam.m_step(fam.chunk_stats(fam.prepare_rows(X), resp, {}), resp.sum(0), {})
    for j, block in enumerate(fam.to_public(ours, None)["probabilities_"]):
        assert_close(np.log(block), nb.feature_log_prob_[j], rtol=1e-12)


def test_poisson_m_step_is_the_gamma_posterior_mode(rng):
    """Given fixed responsibilities, each rate maximises the weighted Poisson log-likelihood
    plus the log-density of its Gamma(1 + a, rate -> 0) prior: both from scipy.stats, the
    maximum found numerically, so no M-step formula is restated."""
    from scipy.optimize import minimize_scalar

    X, _, _ = draw("poisson", rng, n=800)
    X[:, 5] = 0  # a feature never seen: maximum likelihood says rate 0, the prior a / n_k
    resp = rng.dirichlet(np.ones(K), size=len(X))
    a = 0.5
    fam = PoissonFamily(pseudo_count=a)
    ours = fam.m_step(fam.chunk_stats(fam.prepare_rows(X), resp, {}), resp.sum(0), {})["rates"]
    prior = sps.gamma(1 + a, scale=1e12)  # rate 1e-12: the improper rate-0 prior, to 1e-12 / n_k
    numeric = np.empty((K, D))
    for k in range(K):
        for j in range(D):
            def neg_log_posterior(lam):
                return -(resp[:, k] @ sps.poisson.logpmf(X[:, j], lam) + prior.logpdf(lam))

            hi = 2 * X[:, j].max() + 1
            numeric[k, j] = minimize_scalar(neg_log_posterior, bounds=(1e-9, hi), method="bounded",
                                            options={"xatol": 1e-12}).x
    # The optimiser finds the argmax to ~sqrt(machine epsilon) of the flat top: rtol 1e-6.
    assert_close(ours, numeric, rtol=1e-6)
    assert_close(ours, gamma_posterior_mode(X.astype(np.float64), resp, a), rtol=1e-12)
    # The prior moves every rate by a / n_k (about 2e-3 here): far above the tolerance.
    shift = ours - gamma_posterior_mode(X.astype(np.float64), resp, 0.0)
    assert (np.abs(shift) > 100 * 1e-6 * ours).all()


# ---------------------------------------------------------------------------
# Statistics, chunkings, monotone bound, recovery
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_statistics_merge(name, rng):
    """Statistics of X[:a] merged with X[a:] equal those of X."""
    X, _, _ = draw(name, rng, n=301)
    state = state_for(name, start(name, rng))
    whole = engine.estep_block(X, None, state)[0]
    for a in (1, 37, 150, 300):
        parts = [engine.estep_block(X[:a], None, state)[0], engine.estep_block(X[a:], None, state)[0]]
        merged = merge_records(state.family, parts)
        for key in ("loglik", "wsum", "nk"):
            assert_close(merged[key], whole[key], rtol=1e-12, err_msg=key)
        for key in whole["stats"]:
            assert_close(merged["stats"][key], whole["stats"][key], rtol=1e-12, err_msg=key)


@pytest.mark.parametrize("name", FAMILIES)
def test_chunk_invariance(name, rng):
    X, _, _ = draw(name, rng, n=1500)
    models = []
    for chunks in ((1500,), (700, 800), (100,) * 15, (1, 499, 1000)):
        gm = dask_em.Mixture(family_of(name), K, max_iter=8, tol=0, init_params="random", random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Same start for every chunking: the starts are computed on the same sample.
            models.append(gm.fit(da.from_array(X, chunks=(chunks, -1))))
    key = param_key(name) + "_"
    for m in models[1:]:
        assert_close(m.weights_, models[0].weights_, rtol=1e-10)
        np.testing.assert_allclose(np.hstack(getattr(m, key)) if name == "categorical" else getattr(m, key),
                                   np.hstack(getattr(models[0], key)) if name == "categorical" else getattr(models[0], key),
                                   rtol=1e-10)
        assert_close(m.lower_bounds_, models[0].lower_bounds_, rtol=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_lower_bound_never_falls(name):
    for seed in range(4):
        rng = np.random.default_rng(seed)
        X, _, _ = draw(name, rng, n=1200, weights=(0.4, 0.4, 0.2))
        gm = estimator(name, K, pseudo_count=0.0, max_iter=30, tol=0, init_params="random", random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(X)
        h = np.asarray(gm.lower_bounds_)
        assert np.all(np.diff(h) >= -1e-12 * np.abs(h[1:])), (seed, np.diff(h).min())


@pytest.mark.parametrize("name", FAMILIES)
def test_recovers_true_parameters(name, rng):
    X, labels, params = draw(name, rng, n=20_000)
    gm = estimator(name, K, n_init=3, random_state=0).fit(da.from_array(X, chunks=(3000, -1)))
    key = param_key(name)
    fitted = gm._params[key]
    cost = ((fitted[:, None] - params[key][None]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    # Within 5 standard errors of the maximum-likelihood estimate from each component's n_k
    # rows: sqrt(rate / n_k) for a Poisson rate (0.007 at rate 0.2, 0.06 at rate 15), sqrt(p (1 - p) / n_k)
    # for a probability; never looser than the former absolute 0.5 (Poisson) and 0.03.
    true, n_k = params[key][cols], np.bincount(labels, minlength=K)[cols][:, None]
    se = np.sqrt((true if name == "poisson" else true * (1 - true)) / n_k)
    np.testing.assert_array_less(np.abs(fitted[rows] - true), np.minimum(0.5 if name == "poisson" else 0.03, 5 * se))
    w = params["weights"][cols]
    np.testing.assert_array_less(np.abs(gm.weights_[rows] - w), np.minimum(0.02, 5 * np.sqrt(w * (1 - w) / len(X))))
    # Labels agree with the Bayes classifier of the true mixture (which itself errs where components overlap).
    bayes = (reference_log_prob(name, X.astype(np.int64), params) + np.log(params["weights"])).argmax(1)
    agree = (np.asarray(gm.predict(X)) == rows[np.argsort(cols)][bayes]).mean()
    assert agree > 0.99


@pytest.mark.parametrize("name", FAMILIES)
def test_methods_and_criteria(name, rng):
    X, _, _ = draw(name, rng, n=2000)
    gm = estimator(name, K, random_state=0).fit(X)
    proba = gm.predict_proba(X)
    assert_close(proba.sum(1), 1.0, rtol=1e-12)
    assert (gm.predict(X) == proba.argmax(1)).all()
    wlp = reference_log_prob(name, X.astype(np.int64), gm._params) + np.log(gm.weights_)
    assert_close(gm.score_samples(X), logsumexp(wlp, axis=1), rtol=1e-10)
    assert gm.score(X) == pytest.approx(logsumexp(wlp, axis=1).mean(), rel=1e-10)
    free = {"bernoulli": K * D, "poisson": K * D, "categorical": K * sum(c - 1 for c in CATEGORIES)}[name] + K - 1
    n = len(X)
    assert gm.bic(X) == pytest.approx(-2 * gm.score(X) * n + free * np.log(n), rel=1e-12)
    assert gm.aic(X) == pytest.approx(-2 * gm.score(X) * n + 2 * free, rel=1e-12)
    n_s = 20_000
    Xs, ys = gm.sample(n_s)
    assert Xs.shape == (n_s, D) and ys.shape == (n_s,)
    assert family_of(name).check_rows(Xs) is None  # every draw is valid data
    # The draws follow the model: label frequencies and each component's per-feature means
    # (Poisson: variances too, which equal the rates) within 5 standard errors.
    w = gm.weights_
    np.testing.assert_array_less(np.abs(np.bincount(ys, minlength=K) / n_s - w), 5 * np.sqrt(w * (1 - w) / n_s))
    if name == "categorical":
        draws = np.hstack([np.eye(c)[Xs[:, j]] for j, c in enumerate(CATEGORIES)])  # one-hot codes
    else:
        draws = Xs.astype(np.float64)
    for k in range(K):
        rows, m = draws[ys == k], int((ys == k).sum())
        if name == "poisson":
            lam = gm._params["rates"][k]
            np.testing.assert_array_less(np.abs(rows.mean(0) - lam), 5 * np.sqrt(lam / m))
            # Var(sample variance) = (mu_4 - sigma^4) / m = (lam + 2 lam^2) / m for a Poisson
            np.testing.assert_array_less(np.abs(rows.var(0, ddof=1) - lam), 5 * np.sqrt((lam + 2 * lam**2) / m))
        else:
            p = gm._params["probabilities"][k]
            np.testing.assert_array_less(np.abs(rows.mean(0) - p), 5 * np.sqrt(p * (1 - p) / m) + 1e-12)
    lazy = gm.predict(da.from_array(X, chunks=(500, -1)))
    assert isinstance(lazy, da.Array) and (lazy.compute() == gm.predict(X)).all()
    assert gm.summary().splitlines()[0].strip().startswith("components: 3 (" + name)


# ---------------------------------------------------------------------------
# Input: stored dtypes, invalid values, settings
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, dtype", [("bernoulli", "bool"), ("bernoulli", "uint8"), ("poisson", "uint16"),
                                         ("poisson", "int64"), ("categorical", "int8")])
def test_integer_and_bool_stores_are_read_as_stored(name, dtype, tmp_path, rng):
    """No float64 copy of the data: chunks reach the family as stored."""
    X, _, _ = draw(name, rng, n=2000)
    path = tmp_path / "x.zarr"
    zarr.create_array(path, shape=X.shape, chunks=(250, D), dtype=dtype)[:] = X.astype(dtype)
    log = tmp_path / "dtypes.txt"
    base = type(family_of(name))

    @dataclasses.dataclass(frozen=True)
    class Recording(base):
        # A file, not a Python object: dask's tokenize round-trips a class defined
        # in a function through cloudpickle, which detaches its closure.
        log: str = ""

        def prepare_rows(self, x):
            with open(self.log, "a") as f:
                f.write(f"{np.asarray(x).dtype}\n")
            return super().prepare_rows(x)

        def estep(self, x, w, params_list, context, entropy=False):
            # The E-step builds its own design per panel (fill_design), not through prepare_rows.
            with open(self.log, "a") as f:
                f.write(f"{np.asarray(x).dtype}\n")
            return super().estep(x, w, params_list, context, entropy)

        def check_rows(self, x):
            with open(self.log + ".checks", "a") as f:
                f.write(f"{len(x)}\n")
            return super().check_rows(x)

    fam = Recording(**({"n_categories": CATEGORIES} if name == "categorical" else {}), log=str(log))
    assert dask_em.as_dask_array(str(path)).data.dtype == np.dtype(dtype)
    gm = dask_em.Mixture(fam, K, max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(str(path), chunk_rows=250)
    seen = log.read_text().split()
    assert len(seen) >= 1 + 8 and set(seen) == {str(np.dtype(dtype))}
    # Rows are checked where the sample reads them (all 8 chunks here) and in the
    # first E-step, not again in later rounds.
    assert gm.n_iter_ >= 2
    assert len((tmp_path / "dtypes.txt.checks").read_text().split()) == 8 + 8
    ref = estimator(name, K, max_iter=3, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(X.astype(np.int64) if name == "categorical" else X.astype(np.float64))
    assert_close(gm.weights_, ref.weights_, rtol=1e-12)


BAD = [
    ("bernoulli", np.uint8, 2, r"Bernoulli mixture takes only 0 and 1, but X holds 2 \(feature 4\) in rows 1000-1499 \(chunk 2\); the first is row 1234\. Binarise"),
    ("bernoulli", np.float64, 0.5, r"but X holds 0\.5 \(feature 4\) in rows 1000-1499"),
    ("poisson", np.int32, -3, r"non-negative integer counts, but X holds -3 \(feature 4\) in rows 1000-1499 \(chunk 2\); the first is row 1234"),
    ("poisson", np.float64, 2.5, r"but X holds 2\.5 \(feature 4\)"),
    ("poisson", np.float64, np.nan, r"but X holds nan \(feature 4\)"),
    ("categorical", np.int16, 3, r"feature 4 has 3 categories \(codes 0\.\.2\), but X holds code 3 in rows 1000-1499 \(chunk 2\); the first is row 1234"),
    ("categorical", np.int16, -1, r"but X holds code -1"),
]


@pytest.mark.parametrize("name, dtype, value, match", BAD)
def test_invalid_values_are_named_with_their_chunk(name, dtype, value, match, rng, tmp_path):
    X, _, _ = draw(name, rng, n=3000)
    X = X.astype(dtype)
    X[1234, 4] = value
    arr = da.from_array(X, chunks=(500, -1))
    # A sample of 100 rows misses row 1234: the first E-step finds it, before any M-step.
    gm = estimator(name, K, init_sample_size=100, random_state=0)
    with pytest.raises(ValueError, match=match):
        gm.fit(arr, checkpoint=str(tmp_path / "ck.npz"))
    # The initialisation sample finds it when it holds the row.
    with pytest.raises(ValueError, match="read while drawing the initialisation sample"):
        estimator(name, K, init_sample_size=3000, random_state=0).fit(arr)
    # and predict names the block
    good = estimator(name, K, max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        good.fit(X[:1000])
    with pytest.raises(ValueError, match=r"rows 1000-1499 \(block 2\)"):
        good.predict(arr).compute()


def test_bad_dtypes_and_settings_fail_before_any_compute(rng):
    X, _, _ = draw("categorical", rng, n=500)
    computes = []
    with dask.callbacks.Callback(start=lambda dsk: computes.append(1)):
        with pytest.raises(TypeError, match=r"codes must be stored as integers; received dtype float64.*astype\('i4'\)"):
            dask_em.CategoricalMixture(2, n_categories=CATEGORIES).fit(da.from_array(X.astype(float)))
        with pytest.raises(ValueError, match="n_categories has 5 entries but X has 6 features"):
            dask_em.CategoricalMixture(2, n_categories=CATEGORIES[:5]).fit(da.from_array(X))
        with pytest.raises(ValueError, match=r"n_categories is required.*X.max\(axis=0\) \+ 1"):
            dask_em.CategoricalMixture(2).fit(da.from_array(X))
        with pytest.raises(ValueError, match=r"n_categories must be an int >= 1 or a sequence.*received \[3, 0\]"):
            dask_em.CategoricalMixture(2, n_categories=[3, 0]).fit(da.from_array(X))
        with pytest.raises(InvalidParameterError, match=(
            r"The 'n_categories' parameter of CategoricalMixture must be an int in the range \[1, inf\), an array-like "
            "or None. Got 'abc' instead."
        )):
            dask_em.CategoricalMixture(2, n_categories="abc").fit(da.from_array(X))
        with pytest.raises(InvalidParameterError, match=(
            r"The 'pseudo_count' parameter of BernoulliMixture must be a float in the range \[0.0, inf\). "
            "Got -1 instead."
        )):
            dask_em.BernoulliMixture(2, pseudo_count=-1).fit(da.from_array(X))
        with pytest.raises(TypeError, match=r"Bernoulli data must be numeric.*received dtype complex128"):
            dask_em.BernoulliFamily().check_dtype(np.complex128, 2)  # io refuses it first, for X
        with pytest.raises(InvalidParameterError, match=(
            "The 'family' parameter of Mixture must be an instance of 'dask_em.family.Family'. Got 'poisson' instead."
        )):
            dask_em.Mixture("poisson", 2).fit(da.from_array(X))
    assert computes == []


# ---------------------------------------------------------------------------
# Checkpoints and the model store
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIES)
def test_save_load_predicts_bitwise(name, rng, tmp_path):
    X, _, _ = draw(name, rng, n=1500)
    gm = estimator(name, K, n_init=2, random_state=0).fit(X)
    dask_em.save(gm, tmp_path / "m.zarr")
    back = dask_em.load(tmp_path / "m.zarr")
    assert type(back) is type(gm) and back.get_params() == gm.get_params()
    np.testing.assert_array_equal(back.predict_proba(X), gm.predict_proba(X))
    np.testing.assert_array_equal(back.score_samples(X), gm.score_samples(X))
    key = param_key(name) + "_"
    np.testing.assert_array_equal(np.hstack(getattr(back, key)), np.hstack(getattr(gm, key)))
    assert back.lower_bounds_ == gm.lower_bounds_


@pytest.mark.parametrize("name", FAMILIES)
def test_checkpoint_resume_is_bitwise(name, rng, tmp_path):
    X, _, _ = draw(name, rng, n=1500)
    arr = da.from_array(X, chunks=(300, -1))
    kw = dict(n_init=2, tol=0, init_params="random", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = estimator(name, K, max_iter=8, **kw).fit(arr)
        ck = str(tmp_path / "ck.npz")
        estimator(name, K, max_iter=3, **kw).fit(arr, checkpoint=ck)
        resumed = estimator(name, K, max_iter=8, **kw).fit(arr, checkpoint=ck, resume=True)
    assert resumed.n_passes_ == 5
    for a, b in zip(resumed.restarts_, whole.restarts_):
        assert a["history"] == b["history"]
    np.testing.assert_array_equal(resumed._params[param_key(name)], whole._params[param_key(name)])
    with pytest.raises(ValueError, match="pseudo_count"):
        estimator(name, K, max_iter=8, pseudo_count=0.5, **kw).fit(arr, checkpoint=ck, resume=True)


def test_emem_and_restarts_run_for_discrete_families(rng):
    X, _, _ = draw("bernoulli", rng, n=3000)
    gm = dask_em.BernoulliMixture(K, n_init=2, init_strategy="emEM", n_short=6, short_iter=3, random_state=0).fit(X)
    # 3,000 rows: more than one tree clusters, so TREE_DRAWS - 1 more tree draws join the 6.
    from dask_em.starts import TREE_DRAWS

    assert len(gm.restarts_) == 6 + TREE_DRAWS - 1
    assert [r["start"] for r in gm.restarts_].count("hierarchical") == TREE_DRAWS
    assert sum(r["stopped"] is None for r in gm.restarts_) >= 2


@pytest.mark.parametrize("name", FAMILIES)
def test_sample_weight_equals_repeated_rows(name, rng):
    X, _, _ = draw(name, rng, n=800)
    counts = rng.integers(0, 4, size=len(X))
    p0 = start(name, rng)
    # One round from the same start, on integer weights and on the rows repeated that often.
    results = []
    for data, w in ((X, counts.astype(float)), (np.repeat(X, counts, axis=0), None)):
        graph = engine.round_graph(da.from_array(data, chunks=(300, -1)),
                                    None if w is None else da.from_array(w, chunks=300),
                                    state_for(name, p0), split_every=3)
        results.append(dask.compute(graph, scheduler="sync")[0][0])
    a, b = results
    assert a.lower_bound == pytest.approx(b.lower_bound, rel=1e-12)
    assert_close(a.params["weights"], b.params["weights"], rtol=1e-12)
    assert_close(a.params[param_key(name)], b.params[param_key(name)], rtol=1e-11)


def test_poisson_large_and_float_counts_equal_scipy(rng):
    fam = PoissonFamily()
    params = {"rates": np.array([[1e5, 3.0], [2e5, 40.0]])}
    for X in (rng.poisson([1.5e5, 20.0], size=(300, 2)).astype(np.int64),  # beyond the look-up table
              rng.poisson([2.0, 20.0], size=(300, 2)).astype(np.float32)):  # whole numbers stored as float
        assert fam.check_rows(X) is None
        xp = fam.prepare_rows(X)
        ours = fam.log_prob(xp, params) + fam.row_log_constant(xp)[:, None]
        ref = np.stack([sps.poisson.logpmf(X, r).sum(1) for r in params["rates"]], 1)
        assert_close(ours, ref, rtol=1e-10)
        assert fam.total_log_constant(xp, None) == pytest.approx(fam.row_log_constant(xp).sum(), rel=1e-12)
