"""Stepwise (online) EM: one update with g = 1 is one EM step; partial_fit; stepwise passes inside fit."""

import warnings

import dask.array as da
import numpy as np
import pytest

import dask_em
from dask_em import stepwise
from dask_em.datasets import make_family_mixture
from dask_em.engine import RoundState, round_graph
from dask_em.restarts import STOP_REQUESTED, Preempted


def three_blobs(n=1200, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    labels = rng.choice(3, n, p=[0.5, 0.3, 0.2])
    return centres[labels] + rng.normal(size=(n, 2))


def quiet(model, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X, **kw)


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_gamma_one_on_one_batch_is_one_plain_em_step(cov):
    X = da.from_array(three_blobs(), chunks=(300, 2))
    m = quiet(dask_em.GaussianMixture(3, covariance_type=cov, max_iter=2, random_state=0), X)
    params = dict(m._params)
    state = RoundState(m._family, m._context, [params], keep_stats=True)
    (plain,) = round_graph(X, None, state, split_every=None).compute(scheduler="sync")
    first = stepwise.update(None, plain.record, params, family=m._family, scale=1.0)
    got = stepwise.m_step(first, m._family, X.shape[0], plain.wsum)
    # With statistics already held, g = 1 forgets them: the same plain EM step again.
    older = {"t": 5, "s": first["s"], "frame": {**params, "means": params["means"] + 0.5}}
    again = stepwise.m_step(stepwise.update(older, plain.record, params, family=m._family, scale=1.0,
                                            gamma=1.0), m._family, X.shape[0], plain.wsum)
    for key in ("means", "weights"):
        np.testing.assert_array_equal(got.params[key], plain.params[key])
        np.testing.assert_allclose(again.params[key], plain.params[key], rtol=1e-12, atol=1e-14)


def test_step_sizes_and_batches():
    assert stepwise.step_size(0) == pytest.approx(2 ** -0.6)
    batches = stepwise.pass_batches(20, seed=3, pass_index=0)
    assert sorted(i for b in batches for i in b) == list(range(20))  # every chunk once per pass
    assert all(len(b) == stepwise.batch_chunks(20) for b in batches[:-1])
    assert batches == stepwise.pass_batches(20, seed=3, pass_index=0)
    assert batches != stepwise.pass_batches(20, seed=3, pass_index=1)


def test_partial_fit_over_the_chunks_approaches_fit():
    X = three_blobs(n=2400)
    ref = quiet(dask_em.GaussianMixture(3, random_state=0, tol=1e-10, max_iter=500), X)
    order = np.argsort(ref.means_[:, 0] + 10 * ref.means_[:, 1])
    stream = dask_em.GaussianMixture(3, random_state=0)
    errors = []
    for epoch in range(12):
        for start in range(0, len(X), 400):
            stream.partial_fit(X[start:start + 400])
        got = stream.means_[np.argsort(stream.means_[:, 0] + 10 * stream.means_[:, 1])]
        errors.append(np.abs(got - ref.means_[order]).max())
    assert stream.n_iter_ == 12 * 6 and not stream.converged_
    assert errors[-1] < 0.05 and errors[-1] < errors[0]
    # fit forgets the stream; partial_fit after fit continues from the fitted parameters
    quiet(stream, X)
    assert stream._stream is None
    stream.partial_fit(X[:400])
    assert stream.n_iter_ == 1


@pytest.mark.parametrize("accelerate", [None, "squarem"])
def test_stepwise_passes_reach_the_plain_fixed_point(accelerate):
    X = da.from_array(three_blobs(n=1600), chunks=(100, 2))
    plain = quiet(dask_em.GaussianMixture(3, covariance_type="diag", random_state=0, tol=1e-12, max_iter=500,
                                          stopping="change"), X)
    warm = quiet(dask_em.GaussianMixture(3, covariance_type="diag", random_state=0, tol=1e-12, max_iter=500,
                                         stopping="change", stepwise_passes=2, accelerate=accelerate), X)
    np.testing.assert_allclose(warm.means_, plain.means_, atol=1e-6)
    assert np.isnan(warm.lower_bounds_[:2]).all()  # stepwise passes: no bound of one set of parameters
    assert warm.n_passes_ == 1 + warm.n_iter_  # the start's read, then one per pass


def test_bernoulli_stepwise_then_batch():
    X, _ = make_family_mixture("bernoulli", 4000, 8, 3, chunk_rows=250, seed=0)
    X = X.compute()
    plain = quiet(dask_em.BernoulliMixture(3, random_state=0, tol=1e-10, max_iter=500), X, chunk_rows=250)
    warm = quiet(dask_em.BernoulliMixture(3, random_state=0, tol=1e-10, max_iter=500, stepwise_passes=1), X,
                 chunk_rows=250)
    assert warm.lower_bound_ == pytest.approx(plain.lower_bound_, abs=1e-8)


def test_resume_mid_stepwise_is_bitwise(tmp_path):
    X = three_blobs(n=1600)
    reads = []

    def weight_block(block, block_info=None):
        reads.append(block_info[0]["chunk-location"][0])
        if len(reads) == 20:  # the 20th chunk read (mid-way through the second stepwise pass): stop
            STOP_REQUESTED.set()
        return np.ones_like(block)

    w = da.map_blocks(weight_block, da.ones(1600, chunks=100), dtype=float)
    settings = dict(covariance_type="full", random_state=0, stepwise_passes=3, tol=1e-8, max_iter=200)
    whole = quiet(dask_em.GaussianMixture(3, **settings), da.from_array(X, chunks=(100, 2)))
    path = str(tmp_path / "fit.ckpt.npz")
    try:
        with pytest.raises(Preempted, match="stepwise"):
            quiet(dask_em.GaussianMixture(3, **settings), da.from_array(X, chunks=(100, 2)), sample_weight=w,
                  checkpoint=path)
    finally:
        STOP_REQUESTED.clear()
    resumed = quiet(dask_em.GaussianMixture(3, **settings), da.from_array(X, chunks=(100, 2)),
                    sample_weight=np.ones(1600), checkpoint=path, resume=True)
    np.testing.assert_array_equal(resumed.means_, whole.means_)
    np.testing.assert_array_equal(resumed.covariances_, whole.covariances_)
    assert resumed.n_iter_ == whole.n_iter_
