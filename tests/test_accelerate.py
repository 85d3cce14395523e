"""Accelerated EM (SQUAREM on the sufficient statistics) and the stopping rules."""

import math
import warnings

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dask_em
from conftest import mixture, assert_close
from dask_em import accelerate
from dask_em.discrete import BernoulliFamily
from dask_em.engine import StepResult
from dask_em.restarts import Restart


def quiet_fit(model, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X, **kw)


def overlapping_gaussians(n=1500, d=3, seed=0):
    # Overlapping components: plain EM is slow here, so extrapolation has work to do.
    return mixture(np.random.default_rng(seed), n=n, d=d, k=3, spread=1.5)[0]


def discrete_rows(family, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    if family == "bernoulli":
        probs = np.where(rng.random((3, 8)) < 0.5, 0.25, 0.75)
        return (rng.random((n, 8)) < probs[labels]).astype(np.uint8)
    if family == "poisson":
        return rng.poisson(rng.uniform(0.5, 6.0, (3, 6))[labels]).astype(np.uint16)
    cat = rng.dirichlet(np.full(4, 1.0), (3, 6))
    u = rng.random((n, 6, 1))
    return (u > np.cumsum(cat[labels], -1)).sum(-1).astype(np.int8)


def discrete_model(family, **kw):
    cls = {"bernoulli": dask_em.BernoulliMixture, "poisson": dask_em.PoissonMixture,
           "categorical": dask_em.CategoricalMixture}[family]
    extra = {"n_categories": 4} if family == "categorical" else {}
    # pseudo_count=0 (plain likelihood, whose bound EM never lowers), except for Bernoulli,
    # whose maximum-likelihood probabilities reach 0 or 1 here, where EM converges sublinearly.
    prior = 1e-2 if family == "bernoulli" else 0.0
    return cls(3, random_state=0, pseudo_count=prior, **extra, **kw)


# ---------------------------------------------------------------------------
# Stopping rules: closed forms
# ---------------------------------------------------------------------------


def test_aitken_is_exact_on_a_geometric_sequence():
    # L_k = L* - c a^k converges linearly at rate a: the remaining gain is exactly c a^k.
    limit, c, a = -3.0, 0.5, 0.8
    bounds = [limit - c * a**k for k in range(12)]
    assert accelerate.remaining_gain(bounds) == pytest.approx(c * a**11, rel=1e-9)
    # The rule waits for AITKEN_RUN consecutive estimates below tol: the oldest of them is c a^(12 - run).
    oldest = c * a ** (12 - accelerate.AITKEN_RUN)
    assert accelerate.has_converged(bounds, 1.1 * oldest, "aitken")
    assert not accelerate.has_converged(bounds, 0.9 * oldest, "aitken")


def test_aitken_waits_while_the_rate_still_grows():
    # Early in a fit the rate grows (0.14, 0.37, 0.64, 0.77: the first changes of a Bernoulli fit):
    # the estimate made with the rate 0.37 is below tol, the next ones are not, so the rule goes on.
    changes = [1.80e-2, 2.49e-3, 9.17e-4, 5.91e-4, 4.58e-4]
    bounds = list(np.cumsum([-8.0] + changes))
    assert accelerate.remaining_gain(bounds[:4]) < 1e-3  # one estimate alone would stop here
    assert accelerate.remaining_gain(bounds[:5]) > 1e-3
    assert not any(accelerate.has_converged(bounds[:k], 1e-3, "aitken") for k in range(1, 7))


def test_default_tol_is_one_nat_in_all_within_bounds():
    assert accelerate.default_tol("change", 10) == 1e-3  # scikit-learn's
    assert accelerate.default_tol("aitken", 100) == 1e-3
    assert accelerate.default_tol("aitken", 30_000) == pytest.approx(1 / 30_000)
    assert accelerate.default_tol("aitken", 10**9) == 1e-6


def test_aitken_refuses_to_stop_on_a_small_change_far_from_the_optimum():
    # Slow linear convergence (a = 0.999): each change is 1e-4, the remaining gain ~0.1.
    bounds = [-1.0 - 0.1 * 0.999**k for k in range(3)]
    assert accelerate.has_converged(bounds, 1e-3, "change")
    assert not accelerate.has_converged(bounds, 1e-3, "aitken")
    assert accelerate.remaining_gain(bounds[:2]) == math.inf


def test_default_gaussian_mixture_keeps_scikit_learns_rule_and_equals_it():
    from conftest import sklearn_start

    X = mixture(np.random.default_rng(0), n=400)[0]
    start = sklearn_start(X, 3, "full")
    ours = dask_em.GaussianMixture(3, **start)
    assert ours.stopping_rule() == "change"
    assert dask_em.GaussianMixture(3, accelerate="squarem").stopping_rule() == "aitken"
    assert dask_em.GaussianMixture(3, stopping="aitken").stopping_rule() == "aitken"
    assert dask_em.BernoulliMixture(3).stopping_rule() == "aitken"
    ours.fit(X)
    ref = SkGaussianMixture(3, **start).fit(X)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=0, atol=1e-8)
    assert ours.n_iter_ == ref.n_iter_


def test_settings_are_refused_with_the_valid_values():
    with pytest.raises(ValueError, match="accelerate.*'squarem'"):
        dask_em.GaussianMixture(2, accelerate="anderson").fit(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="stopping.*aitken"):
        dask_em.PoissonMixture(2, stopping="relative").fit(np.zeros((10, 2), dtype=np.uint8))


# ---------------------------------------------------------------------------
# The same fixed point, in fewer passes
# ---------------------------------------------------------------------------


# Aitken's rule: plain EM's change rule stops 1e-6 short of the fixed point on slow fits.
TIGHT = dict(tol=1e-14, max_iter=5000, stopping="aitken")


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_accelerated_gaussian_reaches_plain_ems_fixed_point(covariance_type):
    X = overlapping_gaussians()
    plain = quiet_fit(dask_em.GaussianMixture(3, covariance_type=covariance_type, random_state=0, **TIGHT), X)
    fast = quiet_fit(dask_em.GaussianMixture(3, covariance_type=covariance_type, random_state=0,
                                             accelerate="squarem", **TIGHT), X)
    assert fast.converged_ and plain.converged_
    np.testing.assert_allclose(fast.means_, plain.means_, atol=1e-6)
    np.testing.assert_allclose(fast.covariances_, plain.covariances_, atol=1e-6)
    np.testing.assert_allclose(fast.weights_, plain.weights_, atol=1e-6)
    assert fast.lower_bound_ >= plain.lower_bound_ - 1e-9
    assert fast.restarts_[0]["acceleration"]["extrapolated"] > 0
    assert fast.n_iter_ < plain.n_iter_


@pytest.mark.parametrize("family", ["bernoulli", "poisson", "categorical"])
def test_accelerated_discrete_reaches_plain_ems_fixed_point_without_lowering_the_bound(family):
    X = discrete_rows(family, n=1000 if family == "bernoulli" else 3000)
    plain = quiet_fit(discrete_model(family, **TIGHT), X)
    fast = quiet_fit(discrete_model(family, accelerate="squarem", **TIGHT), X)
    key = "rates_" if family == "poisson" else "probabilities_"
    got, want = getattr(fast, key), getattr(plain, key)
    for a, b in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
        np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(fast.weights_, plain.weights_, atol=1e-6)
    assert fast.restarts_[0]["acceleration"]["extrapolated"] > 0
    # EM's bound cannot fall (beyond a prior's O(a / n_k)), and an accepted extrapolation never lowers it.
    history = np.array(fast.lower_bounds_)
    assert (np.diff(history) >= -(1e-12 if family != "bernoulli" else 1e-6) * np.abs(history[1:])).all()
    assert fast.n_iter_ <= plain.n_iter_


# ---------------------------------------------------------------------------
# Safeguards, on the SQUAREM step itself
# ---------------------------------------------------------------------------


def _bernoulli_record(ones):
    ones = np.asarray(ones, dtype=np.float64).reshape(2, 1)
    return {"nk": np.array([10.0, 10.0]), "stats": {"ones": ones}}


def _params(p):
    return {"probabilities": np.asarray(p, dtype=np.float64).reshape(2, 1), "weights": np.array([0.5, 0.5])}


def test_extrapolation_waits_for_plain_em_to_decelerate():
    # L_k = L* - c a^k: every change a times the one before, decelerating from the fourth bound on.
    geometric = [-3.0 - 0.5 * 0.8**k for k in range(6)]
    assert not accelerate._rate_settled(geometric[:3]) and accelerate._rate_settled(geometric[:4])
    # Changes that grow (rate > 1: EM leaving a plateau), or grow once among the last three: not yet.
    assert not accelerate._rate_settled([-3.0, -2.9, -2.7, -2.3])
    assert not accelerate._rate_settled(list(-3.0 + np.cumsum([0.1, 0.05, 0.06])))
    assert accelerate._rate_settled(list(-3.0 + np.cumsum([0.0, 0.1, 0.09, 0.06])))
    # A bound that falls (reg_covar near the optimum) never opens the gate: plain EM goes on.
    assert not accelerate._rate_settled([-3.0, -2.9, -2.85, -2.8500001])


def test_a_refused_step_at_the_cap_shrinks_it_to_no_less_than_four():
    # squarem1's net effect: 4x shorter, but its cap, once grown, never stays at 1.
    assert accelerate._shrunk(64.0) == 16.0 and accelerate._shrunk(16.0) == 4.0 and accelerate._shrunk(4.0) == 4.0


def test_an_invalid_extrapolation_is_backtracked_toward_the_em_step_without_a_pass():
    family = BernoulliFamily(pseudo_count=0.0)
    restart = Restart(0, 0, _params([0.3, 0.7]), accel=accelerate.Squarem(step_max=64.0, warm=True))
    acc = restart.accel
    acc.seen = [(_params([0.1, 0.9]), _bernoulli_record([1, 9])), (_params([0.3, 0.7]), _bernoulli_record([3, 7]))]
    acc.run = [-1.0, -0.9]
    # s0 = 1, s1 = 3, s2 = 4.9 (ones of component 0, out of 10 rows; component 1 mirrors it):
    # r = 2, v = -0.1, SqS3 gives alpha = -20 and s'(alpha) = 1 - 4 alpha - 0.1 alpha^2 = 41 ones.
    # Halving toward -1: alpha = -10.5 (32.0 ones), -5.75 (20.7), -3.375 (13.4): outside [0, 10];
    # alpha = -2.1875 gives 1 + 8.75 - 0.478515625 = 9.271484375 ones, inside.
    plain = _params([0.49, 0.51])
    result = StepResult(-0.85, plain, wsum=20.0, record=_bernoulli_record([4.9, 5.1]))
    first, _, _ = accelerate.sqs3_alpha(*[{"nk": r["nk"], "stats": r["stats"]} for r in
                                          (_bernoulli_record([1, 9]), _bernoulli_record([3, 7]), result.record)], 64.0)
    assert first == pytest.approx(-20.0)
    accelerate.step(restart, result, _params([0.45, 0.55]), tol=0.0, rule="change", family=family, n_rows=20,
                    warn=print)
    assert acc.pending is not None and acc.pending["alpha"] == pytest.approx(-2.1875)
    assert_close(restart.params["probabilities"][:, 0], [0.9271484375, 0.0728515625], rtol=1e-12)
    assert acc.n_invalid == 1 and acc.n_backtracked == 1 and acc.n_extrapolated == 1
    assert restart.n_iter == 1  # backtracking took M-steps, no pass
    assert acc.step_max == 64.0  # the first step was below the cap: the cap stays


def test_extrapolation_leaving_the_valid_set_falls_back_to_the_em_step():
    family = BernoulliFamily(pseudo_count=0.0)
    restart = Restart(0, 0, _params([0.5, 0.5]), accel=accelerate.Squarem(step_max=64.0, warm=True))
    acc = restart.accel
    acc.seen = [(_params([0.1, 0.9]), _bernoulli_record([1, 9])), (_params([0.5, 0.5]), _bernoulli_record([5, 5]))]
    acc.run = [-1.0, -0.9]
    # s0 = 1, s1 = 5, s2 = 9.99: s'(alpha) = 1 - 8 alpha + 0.99 alpha^2 is above 10 for every alpha < -1,
    # so every backtracked step (the last alpha = -1 - 3.04 / 2^5) leaves [0, 10] too.
    plain = _params([0.999, 0.001])
    result = StepResult(-0.85, plain, wsum=20.0, record=_bernoulli_record([9.99, 0.01]))
    alpha, params, why = accelerate.extrapolate(
        accelerate.Squarem(step_max=64.0, seen=acc.seen + [(_params([0.9, 0.1]), result.record)]),
        family, 20, 20.0,
    )
    assert alpha == pytest.approx(-math.sqrt(32 / 1.9602)) and params is None
    assert why == "a probability outside [0, 1]"
    accelerate.step(restart, result, _params([0.9, 0.1]), tol=0.0, rule="change", family=family, n_rows=20,
                    warn=print)
    assert restart.params is plain  # the plain EM step
    assert acc.n_invalid == 1 and acc.n_backtracked == 0 and acc.pending is None and acc.n_extrapolated == 0
    assert acc.step_max == 64.0  # below the cap: the cap stays


def test_an_extrapolated_point_that_lowers_the_bound_is_refused():
    family = BernoulliFamily(pseudo_count=0.0)
    fallback = _params([0.49, 0.51])
    restart = Restart(0, 0, _params([0.6, 0.4]), history=[-1.0, -0.9, -0.85], n_iter=3,
                      accel=accelerate.Squarem(step_max=16.0))
    restart.accel.pending = {"bound": -0.85, "alpha": -16.0, "fallback": fallback,
                             "seen": [(_params([0.45, 0.55]), _bernoulli_record([4.9, 5.1]))],
                             "run": [-1.0, -0.9, -0.85]}
    lower = StepResult(-0.86, _params([0.5, 0.5]), wsum=20.0, record=_bernoulli_record([5, 5]))
    accelerate.step(restart, lower, _params([0.6, 0.4]), tol=0.0, rule="change", family=family, n_rows=20, warn=print)
    assert restart.params is fallback and restart.history == [-1.0, -0.9, -0.85] and restart.n_iter == 4
    assert restart.accel.n_rejected == 1 and restart.accel.step_max == 4.0  # refused at the cap: 4x shorter
    assert len(restart.accel.seen) == 1 and restart.accel.run == [-1.0, -0.9, -0.85]
    # A point at least as good is kept, and starts a new run of plain EM iterates.
    restart.accel.pending = {"bound": -0.85, "alpha": -4.0, "fallback": fallback, "seen": [], "run": [-0.85]}
    restart.accel.step_max = 4.0
    better = StepResult(-0.84, _params([0.5, 0.5]), wsum=20.0, record=_bernoulli_record([5, 5]))
    accelerate.step(restart, better, _params([0.6, 0.4]), tol=0.0, rule="change", family=family, n_rows=20, warn=print)
    assert restart.history[-1] == -0.84 and restart.accel.run == [-0.84] and restart.accel.step_max == 16.0


def test_gaussian_statistics_are_aligned_exactly_between_centres():
    from dask_em.gaussian import GaussianFamily

    rng = np.random.default_rng(1)
    y, r = rng.normal(size=(50, 3)), rng.random((50, 2))
    m_from, m_to = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))

    def about(m):
        dev = y[None] - m[:, None]
        return {"n": r.sum(0), "a": np.einsum("nk,knd->kd", r, dev),
                "b": np.einsum("nk,knd,kne->kde", r, dev, dev)}

    got = GaussianFamily().align_stats(about(m_from), {"means": m_from}, {"means": m_to})
    for key, value in about(m_to).items():
        np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Checkpoints: a resume mid-acceleration is bitwise the uninterrupted fit
# ---------------------------------------------------------------------------


# 3: during the warm-up (plain EM until it decelerates); 4-5: the first cycle; 6: an extrapolated
# point pending; 7: just accepted (s' is the cycle's first point); 29: after a refused point.
@pytest.mark.parametrize("stop_at", [3, 4, 5, 6, 7, 29])
def test_resume_mid_acceleration_is_bitwise(tmp_path, stop_at):
    X = overlapping_gaussians(n=900)
    settings = dict(covariance_type="diag", random_state=0, accelerate="squarem", tol=1e-9)
    whole = quiet_fit(dask_em.GaussianMixture(3, max_iter=40, **settings), X)
    path = str(tmp_path / "fit.ckpt.npz")
    quiet_fit(dask_em.GaussianMixture(3, max_iter=stop_at, **settings), X, checkpoint=path)
    resumed = quiet_fit(dask_em.GaussianMixture(3, max_iter=40, **settings), X, checkpoint=path, resume=True)
    np.testing.assert_array_equal(resumed.means_, whole.means_)
    np.testing.assert_array_equal(resumed.covariances_, whole.covariances_)
    assert resumed.lower_bounds_ == whole.lower_bounds_
    assert resumed.n_iter_ == whole.n_iter_
    assert resumed.restarts_[0]["acceleration"] == whole.restarts_[0]["acceleration"]


def test_emem_and_select_model_run_accelerated():
    X = overlapping_gaussians(n=900)
    gm = quiet_fit(dask_em.GaussianMixture(3, init_strategy="emEM", n_short=4, n_init=2, random_state=0,
                                           accelerate="squarem", tol=1e-8), X)
    assert any(r["acceleration"]["extrapolated"] for r in gm.restarts_ if r["status"] == "ok")
    result = dask_em.select_model(X, n_components=[2, 3], covariance_types=["diag"], random_state=0,
                                  accelerate="squarem", tol=1e-8)
    assert result.best_estimator_.accelerate == "squarem"
