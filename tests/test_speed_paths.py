"""The fast paths of issue 19 pinned for correctness (no wall time here; benchmarks/bench_em.py times them).

* small in-memory data runs its rounds directly (engine.run_round on LocalRows), bitwise as the graph;
* chunks larger than dask-em's own are split into row blocks (io.split_rows), views of in-memory data,
  and a fit on split chunks equals scikit-learn and the fit on that finer chunking;
* compute_dtype="float32" stays within its stated tolerance of float64 (1e-4 relative, labels).
"""

import re
import warnings

import dask.array as da
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dask_em
from dask_em import engine
from dask_em.io import auto_row_chunks, split_rows
from conftest import mixture, sklearn_start

COV_TYPES = ["full", "tied", "diag", "spherical"]


def fit_quiet(model, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(X, **kw)


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bounds_")


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_direct_rounds_are_bitwise_the_graph_rounds(cov_type, rng, monkeypatch):
    """The same restarts through the graph and directly: every bit equal, also over several chunks."""
    X = mixture(rng, n=900, d=3, k=3)[0]
    w = rng.uniform(0.5, 2.0, size=len(X))
    kw = dict(covariance_type=cov_type, n_init=3, max_iter=8, tol=0, random_state=1, split_every=2)
    direct = fit_quiet(dask_em.GaussianMixture(3, **kw), X, sample_weight=w, chunk_rows=100)
    from dask_em import _base

    monkeypatch.setattr(_base, "runs_directly", lambda *args: False)
    graph = fit_quiet(dask_em.GaussianMixture(3, **kw), X, sample_weight=w, chunk_rows=100)
    for name in FITTED:
        np.testing.assert_array_equal(getattr(direct, name), getattr(graph, name), err_msg=name)
    assert [r["lower_bound"] for r in direct.restarts_] == [r["lower_bound"] for r in graph.restarts_]


def test_direct_path_is_taken_for_in_memory_data_on_local_threads(rng):
    from types import SimpleNamespace

    X = da.from_array(mixture(rng, n=100, d=2, k=2)[0], chunks=50)
    assert engine.runs_directly(X, True, runner=None)
    assert not engine.runs_directly(X, False, runner=None)  # lazy data: a graph, reads in tasks
    big = da.zeros((2**22, 1), chunks=(4096, 1))  # 32 MiB in memory: directly too
    assert engine.runs_directly(big, True, runner=None)
    # A distributed client: a graph, so the work runs (and shows) on its workers.
    assert not engine.runs_directly(X, True, runner=SimpleNamespace(client=object()))


def test_direct_rounds_use_dasks_thread_count(rng):
    """The direct rounds' pool follows dask's num_workers (and runs serially when dask is set
    synchronous): a benchmark's one-thread column is one thread; the results are bitwise the same."""
    import dask

    assert engine._workers() >= 1
    with dask.config.set(num_workers=1):
        assert engine._workers() == 1
    with dask.config.set(scheduler="synchronous"):
        assert engine._workers() == 1
    X = mixture(rng, n=3000, d=3, k=3)[0]
    kw = dict(n_init=2, max_iter=5, tol=0, random_state=2)
    many = fit_quiet(dask_em.GaussianMixture(3, **kw), X, chunk_rows=400)
    with dask.config.set(num_workers=1):
        one = fit_quiet(dask_em.GaussianMixture(3, **kw), X, chunk_rows=400)
    for name in FITTED:
        np.testing.assert_array_equal(getattr(many, name), getattr(one, name), err_msg=name)


def test_oversized_chunks_are_split_into_views(rng):
    n, d = 30_000, 4
    target = auto_row_chunks(n, d, 8)
    X = rng.normal(size=(n, d))
    x = da.from_array(X, chunks=(10_000, d))
    w = da.from_array(np.ones(n), chunks=(10_000,))
    split, sw = split_rows(x, w)
    assert max(split.chunks[0]) <= target and sum(split.chunks[0]) == n
    assert sw.chunks[0] == split.chunks[0]
    # Only split, never merged: every block lies inside one of the original chunks.
    edges = set(np.cumsum(split.chunks[0]))
    assert {10_000, 20_000, 30_000} <= edges
    # A view of the chunk dask holds, not a copy (dask's rechunk would copy each slice, every round).
    chunks = engine.local_rows(x).blocks
    for block in engine.local_rows(split).blocks:
        assert any(np.shares_memory(block, chunk) for chunk in chunks)
    np.testing.assert_array_equal(split.compute(scheduler="sync"), X)
    small = da.from_array(X, chunks=(target, d))
    assert split_rows(small)[0] is small  # nothing to split


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_fit_on_split_chunks_matches_sklearn_and_the_finer_chunking(cov_type, rng):
    n = 3 * auto_row_chunks(24_000, 3, 8)  # three chunks of two targets each: every one is split
    X = mixture(rng, n=n, d=3, k=3)[0]
    start = sklearn_start(X, 3, cov_type)
    ref = fit_quiet(SkGaussianMixture(3, covariance_type=cov_type, tol=0, max_iter=6, **start), X)
    coarse = da.from_array(X, chunks=(n // 3, -1))
    split = split_rows(coarse)[0]
    assert split.numblocks[0] == 6
    kw = dict(covariance_type=cov_type, tol=0, max_iter=6, **start)
    ours = fit_quiet(dask_em.GaussianMixture(3, **kw), coarse)
    finer = fit_quiet(dask_em.GaussianMixture(3, **kw), da.from_array(X, chunks=(split.chunks[0], -1)))
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bound_"):
        assert rel(getattr(ours, name), getattr(ref, name)) < 1e-8, name
        np.testing.assert_array_equal(getattr(ours, name), getattr(finer, name), err_msg=name)


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_float32_compute_within_its_tolerance(cov_type, rng):
    """float32's fixed point within 1e-4 (relative) of float64's, labels on >= 99.9% of rows.

    Fixed points, not stopping points: float64 converged to tol=1e-12 (its bound's change
    below 1e-12 per row), float32 run at tol=0 for three times float64's iterations. Two
    fits stopped by a looser tol differ by where each stopped (tol=1e-7 left float64
    5e-4 from its fixed point on the spherical case), not by float32's accuracy.
    """
    X = mixture(rng, n=20_000, d=6, k=4, spread=4.0, offset=50.0)[0]  # an offset: centering must hold in float32
    start = sklearn_start(X, 4, cov_type)
    f64 = fit_quiet(dask_em.GaussianMixture(4, covariance_type=cov_type, tol=1e-12, max_iter=1000, **start), X)
    assert f64.converged_
    f32 = fit_quiet(dask_em.GaussianMixture(4, covariance_type=cov_type, tol=0, max_iter=3 * f64.n_iter_,
                                            compute_dtype="float32", **start), X)
    assert f32.restarts_[0]["float64_from"] is None  # tol=0: every iteration in float32
    for name in ("weights_", "means_", "covariances_"):
        assert rel(getattr(f32, name), getattr(f64, name)) < 1e-4, name
    assert abs(f32.lower_bound_ - f64.lower_bound_) < 1e-4 * abs(f64.lower_bound_)
    assert (f32.predict(X) == f64.predict(X)).mean() >= 0.999
    # float64 stays scikit-learn's (the default is unchanged): the same iterations, tol=0.
    kw = dict(covariance_type=cov_type, tol=0, max_iter=10, **start)
    ours = fit_quiet(dask_em.GaussianMixture(4, **kw), X)
    ref = fit_quiet(SkGaussianMixture(4, **kw), X)
    assert ours.n_iter_ == ref.n_iter_ == 10
    assert rel(ours.means_, ref.means_) < 1e-8


@pytest.mark.parametrize("cov_type", COV_TYPES)
def test_float32_below_its_resolution_continues_in_float64(cov_type, rng, caplog):
    """A tol float32's bound cannot resolve: the restart goes on in float64 and converges as float64 does.

    float32's bound wanders by about 1e-7 of its size from one iteration to the next near
    the fixed point; tol=1e-10 asks for 1000x less. The fit converges (never by max_iter),
    in no more iterations than float64 from the same start needs, without one warning that
    the bound fell, and ends where float64 ends.
    """
    import logging

    X = mixture(rng, n=20_000, d=6, k=4, spread=4.0, offset=50.0)[0]
    start = sklearn_start(X, 4, cov_type)
    kw = dict(covariance_type=cov_type, tol=1e-10, max_iter=2000, **start)
    f64 = fit_quiet(dask_em.GaussianMixture(4, **kw), X)
    fixed = fit_quiet(dask_em.GaussianMixture(4, **{**kw, "tol": 1e-13}), X)
    with caplog.at_level(logging.DEBUG, logger="dask_em"):
        f32 = fit_quiet(dask_em.GaussianMixture(4, compute_dtype="float32", **kw), X)
    assert f64.converged_ and f32.converged_
    assert f32.n_iter_ <= f64.n_iter_ + 3  # the switch waits up to 3 iterations of round-off
    switched = f32.restarts_[0]["float64_from"]
    assert switched is not None and 1 < switched <= f32.n_iter_
    assert "its next iterations compute in float64" in caplog.text
    assert not [r for r in caplog.records if "fell" in r.getMessage()]
    assert f32.restarts_[0]["bound_falls"] == 0
    for name in ("weights_", "means_", "covariances_"):
        # float64 stopped by the same tol: both within float64's own distance of the fixed point.
        assert rel(getattr(f32, name), getattr(fixed, name)) < max(1e-4, 2 * rel(getattr(f64, name), getattr(fixed, name))), name


def test_float32_resolution_scales_with_the_terms_summed():
    from dask_em.gaussian import FLOAT32_BOUND_RTOL, GaussianFamily

    params = {"means": np.zeros((3, 5))}
    f32, f64 = GaussianFamily(compute_dtype="float32"), GaussianFamily()
    assert f64.bound_resolution(-12.0, params) == 0.0
    assert f32.bound_resolution(-12.0, params) == FLOAT32_BOUND_RTOL * 12.0
    assert f32.bound_resolution(-0.01, params) == FLOAT32_BOUND_RTOL * 5  # near 0: the d terms' size
    assert f32.bound_resolution(-12.0, {**params, "compute_dtype": "float64"}) == 0.0  # a refined restart


def test_float32_statistics_are_float64_about_the_float64_means(rng):
    """One float32 E-step against the float64 one: same statistics to float32 round-off, float64 arrays."""
    from test_engine import round_state
    import dataclasses

    X = mixture(rng, n=3000, d=5, k=3, offset=20.0)[0]
    state = round_state(3, 5, rng, cov="full")
    state.params[0]["means"] = state.params[0]["means"] + 0.123456789  # not representable in float32
    f64 = engine.estep_block(X, None, state)[0]
    f32 = engine.estep_block(
        X, None, dataclasses.replace(state, family=dataclasses.replace(state.family, compute_dtype="float32"))
    )[0]
    assert rel(f32["nk"], f64["nk"]) < 1e-5
    for key in f64["stats"]:
        assert f32["stats"][key].dtype == np.float64
        assert rel(f32["stats"][key], f64["stats"][key]) < 1e-5, key
    assert abs(f32["loglik"] - f64["loglik"]) < 1e-5 * abs(f64["loglik"])


@pytest.mark.parametrize("bad", ["float16", "double-ish", None, 3])
def test_compute_dtype_is_refused_with_the_choices(bad, rng):
    X = mixture(rng, n=50, d=2, k=2)[0]
    with pytest.raises(ValueError, match=(
        r"The 'compute_dtype' parameter of GaussianMixture must be a str among \{'float64', 'float32'\}, a type among "
        r"\{<class 'numpy.float64'>, <class 'numpy.float32'>, <class 'float'>\} or a numpy.dtype among "
        rf"\{{dtype\('float64'\), dtype\('float32'\)\}}. Got {re.escape(repr(bad))} instead."
    )):
        dask_em.GaussianMixture(2, compute_dtype=bad).fit(X)


def test_float32_accepts_numpy_dtypes():
    assert dask_em.GaussianMixture(2, compute_dtype=np.float32).make_family().compute_dtype == "float32"


def test_float32_refinement_resumes_bitwise_from_a_checkpoint(rng, tmp_path):
    """A checkpoint taken after the switch to float64 resumes in float64: bitwise the uninterrupted fit."""
    X = mixture(rng, n=5000, d=6, k=4, spread=2.5, offset=20.0)[0]  # overlapping: a slow fit
    start = sklearn_start(X, 4, "spherical")
    kw = dict(covariance_type="spherical", tol=1e-10, compute_dtype="float32", **start)
    whole = fit_quiet(dask_em.GaussianMixture(4, max_iter=500, **kw), X)
    switched = whole.restarts_[0]["float64_from"]
    assert switched is not None and switched + 2 < whole.n_iter_
    path = tmp_path / "ck.npz"
    fit_quiet(dask_em.GaussianMixture(4, max_iter=switched + 1, **kw), X, checkpoint=path)
    resumed = fit_quiet(dask_em.GaussianMixture(4, max_iter=500, **kw), X, checkpoint=path, resume=True)
    assert resumed.restarts_[0]["float64_from"] == switched
    for name in FITTED:
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name), err_msg=name)


def test_float32_switch_to_float64_is_not_a_fall(caplog):
    """iris: float32's bias in the bound (5e-6 at -1.2) shows at the switch; it is not EM's bound falling."""
    import logging

    from sklearn.datasets import load_iris

    X = load_iris().data
    with caplog.at_level(logging.DEBUG, logger="dask_em"):
        gm = fit_quiet(dask_em.GaussianMixture(3, compute_dtype="float32", tol=1e-10, max_iter=2000,
                                               random_state=0), X)
    assert gm.converged_ and gm.restarts_[0]["float64_from"] is not None
    assert not [r for r in caplog.records if "fell" in r.getMessage()]


@pytest.mark.parametrize("cov_type", ["full", "diag"])
def test_in_memory_inference_on_threads_equals_the_graph(cov_type, rng):
    """predict, predict_proba and score_samples of in-memory rows run their blocks on local threads, without
    a graph: bitwise the lazy results of the same chunks, on one thread or two; scikit-learn's to round-off."""
    import dask

    X = mixture(rng, n=6000, d=4, k=3)[0]
    start = sklearn_start(X, 3, cov_type)
    model = fit_quiet(dask_em.GaussianMixture(3, covariance_type=cov_type, max_iter=5, **start), X, chunk_rows=1000)
    reference = SkGaussianMixture(3, covariance_type=cov_type).fit(X[:50])
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        setattr(reference, name, getattr(model, name))
    lazy = da.from_array(X, chunks=(1000, -1))
    for method, tol in (("predict", 0), ("predict_proba", 1e-12), ("score_samples", 1e-12)):
        expected = getattr(model, method)(lazy).compute()
        for threads in (1, 2):
            with dask.config.set(scheduler="threads", num_workers=threads):
                got = getattr(model, method)(X, chunk_rows=1000)
            assert isinstance(got, np.ndarray)
            np.testing.assert_array_equal(got, expected)
        theirs = getattr(reference, method)(X)
        if tol:
            np.testing.assert_allclose(got, theirs, rtol=tol, atol=1e-14)
        else:
            np.testing.assert_array_equal(got, theirs)


def test_in_memory_rows_are_views_of_the_input(rng):
    """An in-memory array is neither copied nor hashed: its dask blocks are views of it (row blocks of a
    C-ordered copy for an array in another order, as the kernels want them)."""
    from dask_em.io import as_dask_array, row_views

    X = rng.standard_normal((5000, 3))
    prep = as_dask_array(X, chunk_rows=1200)
    blocks = engine.local_rows(prep.data).blocks
    assert prep.data.chunks[0] == (1200, 1200, 1200, 1200, 200)
    assert all(np.shares_memory(b, X) and b.flags.c_contiguous for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), X)
    fortran = np.asfortranarray(X)
    blocks = engine.local_rows(as_dask_array(fortran, chunk_rows=1200).data).blocks
    assert all(b.flags.c_contiguous for b in blocks) and not np.shares_memory(blocks[0], fortran)
    w = rng.uniform(size=5000)
    weights = row_views(w, (prep.data.chunks[0],))
    assert weights.chunks == (prep.data.chunks[0],)
    np.testing.assert_array_equal(weights.compute(), w)


def test_inference_in_a_forked_child(rng):
    """The local thread pool of a parent is not the child's: inference in a forked process runs (it hung)."""
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    X = mixture(rng, n=3000, d=3, k=2)[0]
    model = fit_quiet(dask_em.GaussianMixture(2, max_iter=3, random_state=0), X, chunk_rows=500)
    expected = model.predict(X, chunk_rows=500)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(model.predict, (X,), {"chunk_rows": 500}).get(timeout=60)
    np.testing.assert_array_equal(got, expected)


def test_a_local_fit_does_not_import_distributed():
    """No Client can exist before ``distributed`` is imported, and importing it to look for one cost 0.3 s of a
    small first fit: in-memory fits, inference and sampling on local threads leave it unimported."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, dask.array as da, dask_em\n"
        "X = np.random.default_rng(0).standard_normal((400, 2))\n"
        "gm = dask_em.GaussianMixture(2, random_state=0).fit(X)\n"
        "gm.predict(X); gm.score(X); gm.sample(5); gm.bic(X)\n"
        "gm.fit(da.from_array(X, chunks=100))\n"
        "dask_em.BernoulliMixture(2, random_state=0).fit((X > 0).astype(np.uint8))\n"
        "print('distributed' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
