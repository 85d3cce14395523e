"""The engine: one graph per round, parameters in one key, shared reads, tree reduction."""

import collections
import logging
import pickle
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from distributed.utils import key_split
from zarr.storage import LocalStore

import dask_em
from dask_em import engine, gaussian, restarts, runner
from conftest import mixture, assert_close


class CountingStore(LocalStore):
    """A real on-disk store that counts reads of each chunk key."""

    def __init__(self, root, **kw):
        super().__init__(root, **kw)
        self.reads = collections.Counter()

    async def get(self, key, prototype=None, byte_range=None):
        if not key.endswith("zarr.json"):
            self.reads[key] += 1
        return await super().get(key, prototype, byte_range)

    def with_read_only(self, read_only=False):
        clone = CountingStore(self.root, read_only=read_only)
        clone.reads = self.reads
        return clone


def counting_array(tmp_path, X, rows):
    zarr.create_array(tmp_path / "x.zarr", shape=X.shape, chunks=(rows, X.shape[1]), dtype=X.dtype)[:] = X
    store = CountingStore(tmp_path / "x.zarr", read_only=True)
    return zarr.open_array(store, mode="r"), store


def params_for(k, d, rng, cov="full"):
    """Unit covariances in the layout of each covariance type."""
    chol = {
        "full": np.stack([np.eye(d)] * k),
        "tied": np.eye(d),
        "diag": np.ones((k, d)),
        "spherical": np.ones(k),
    }[cov]
    return {
        "covariance_type": cov,
        "weights": np.full(k, 1.0 / k),
        "means": rng.normal(size=(k, d)),
        "precisions_cholesky": chol,
    }


def round_state(k, d, rng, n_restarts=1, cov="full"):
    return engine.RoundState(
        family=gaussian.GaussianFamily(reg_covar=1e-6),
        context=np.zeros(d),
        params=[params_for(k, d, rng, cov) for _ in range(n_restarts)],
    )


def test_restarts_share_every_chunk_read(tmp_path, rng):
    X = mixture(rng, n=1200, d=3, k=3)[0]
    arr, store = counting_array(tmp_path, X, rows=100)
    gm = dask_em.GaussianMixture(3, n_init=4, max_iter=3, tol=0, init_params="random", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(arr, chunk_rows=100)
    rounds = max(r["n_iter"] for r in gm.restarts_)
    assert rounds == 3 and all(r["n_iter"] == 3 for r in gm.restarts_)
    chunk_reads = {k: v for k, v in store.reads.items() if "/c/" in k or k.startswith("c/")}
    assert len(chunk_reads) == 12
    # One read for the init sample, then one per round: not one per restart per round.
    assert set(chunk_reads.values()) == {1 + rounds}


def test_parameters_enter_the_round_graph_once(rng):
    k, d = 8, 32
    state = round_state(k, d, rng, n_restarts=2)
    X = da.from_array(rng.normal(size=(4000, d)), chunks=(250, -1))
    graph = engine.round_graph(X, None, state, split_every=4)
    dsk = dict(graph.__dask_graph__())
    params_keys = [key for key in dsk if key_split(key) == "em-params"]
    assert len(params_keys) == 1
    params_size = len(pickle.dumps(state))
    assert params_size > 100_000
    estep = [key for key in dsk if key_split(key) == "em-estep"]
    assert len(estep) == 16
    for key, task in dsk.items():
        if key in params_keys or key_split(key) == "array":  # the data's own chunks
            continue
        # Every other task refers to the parameters by key; none carries a copy.
        assert len(pickle.dumps(task)) < params_size / 20, key
    for key in estep:
        assert params_keys[0] in dsk[key].dependencies


def test_round_graph_layers_read_as_the_algorithm(rng):
    state = round_state(3, 2, rng)
    X = da.from_array(rng.normal(size=(1600, 2)), chunks=(100, -1))
    graph = engine.round_graph(X, None, state, split_every=2)
    (optimized,) = dask.optimize(graph)
    prefixes = collections.Counter(key_split(k) for k in dict(optimized.__dask_graph__()))
    assert prefixes["em-mstep"] == 1
    assert prefixes["em-combine-aggregate"] == 1
    assert prefixes["em-combine-partial"] == 8 + 4 + 2  # 16 chunks, fan-in 2
    assert prefixes["em-estep"] == 16  # the E-step, fused with its identity chunk step
    wide = engine.round_graph(X, None, state, split_every=16)
    (wide,) = dask.optimize(wide)
    assert "em-combine-partial" not in {key_split(k) for k in dict(wide.__dask_graph__())}


@pytest.mark.parametrize("split_every", [2, 3, 16, None])
def test_tree_shape_does_not_change_the_result(split_every, rng):
    X = rng.normal(size=(1000, 3))
    state = round_state(2, 3, np.random.default_rng(0))
    results = []
    for se in (split_every, 2):
        graph = engine.round_graph(da.from_array(X, chunks=(60, -1)), None, state, split_every=se)
        (res,) = dask.compute(graph, scheduler="sync")
        results.append(res[0])
    assert_close(results[0].params["covariances"], results[1].params["covariances"], rtol=1e-12)
    assert results[0].lower_bound == pytest.approx(results[1].lower_bound, rel=1e-13)


def test_failed_restart_is_reported_and_skipped(rng):
    X = da.from_array(mixture(rng, n=300, d=2, k=2)[0], chunks=(100, -1))
    good = params_for(2, 2, rng)
    bad = params_for(2, 2, rng)
    bad["precisions_cholesky"] = bad["precisions_cholesky"] * np.nan
    runs = [restarts.Restart(0, 1, good, "full"), restarts.Restart(1, 2, bad, "full")]
    with runner.Runner() as on_threads:
        restarts.run_rounds(
            X, None, runs, family=gaussian.GaussianFamily(), context=np.zeros(2),
            tol=1e-3, max_iter=50, split_every=None, runner=on_threads,
        )
    assert runs[0].error is None and runs[0].converged
    assert "iteration 1: the log-likelihood is not finite" in runs[1].error
    assert runs[1].n_iter == 1  # it stopped; the good one went on


def test_falling_bound_is_logged_with_the_iteration(caplog):
    r = restarts.Restart(0, 0, {"weights": np.ones(1)})
    r.history = [-1.0]
    r.n_iter = 1
    with caplog.at_level(logging.WARNING, logger="dask_em"):
        restarts.advance(r, engine.StepResult(-1.5, params={"weights": np.ones(1)}), tol=1e-3)
    assert "fell at iteration 2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dask_em"):
        restarts.advance(r, engine.StepResult(-1.5 - 1e-14, params={"weights": np.ones(1)}), tol=1e-3)
    assert caplog.text == ""  # round-off is not a fall
    # A later fall of the same restart: counted, logged at DEBUG only (one warning per restart).
    with caplog.at_level(logging.DEBUG, logger="dask_em"):
        restarts.advance(r, engine.StepResult(-2.0, params={"weights": np.ones(1)}), tol=1e-3)
    assert [rec.levelno for rec in caplog.records] == [logging.DEBUG] and "fell at iteration 4" in caplog.text
    assert r.falls == 2 and r.summary()["bound_falls"] == 2


def test_a_fall_reg_covar_explains_is_logged_at_info_not_warned(caplog):
    """reg_covar is added after the M-step, so the bound may fall by design (scikit-learn is silent): INFO.
    Without it the same fall is unexpected: a warning."""
    from dask_em import gaussian

    params = {"weights": np.ones(1), "means": np.zeros((1, 2))}
    for reg_covar, level in ((1e-6, logging.INFO), (0.0, logging.WARNING)):
        r = restarts.Restart(0, 0, params)
        r.history, r.n_iter = [-1.0], 1
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="dask_em"):
            restarts.advance(r, engine.StepResult(-1.5, params=params), tol=1e-3,
                             family=gaussian.GaussianFamily(reg_covar=reg_covar))
        assert [rec.levelno for rec in caplog.records] == [level] and "fell at iteration 2" in caplog.text
        assert r.falls == 1


def test_float32_falls_within_its_resolution_are_not_falls(caplog):
    """A float32 bound that falls by less than its stated resolution: no warning, no count."""
    from dask_em import gaussian

    family = gaussian.GaussianFamily(compute_dtype="float32")
    params = {"weights": np.ones(1), "means": np.zeros((1, 2))}
    r = restarts.Restart(0, 0, params)
    r.history, r.n_iter = [-10.0], 1
    step = 0.5 * family.bound_resolution(-10.0, params)
    with caplog.at_level(logging.DEBUG, logger="dask_em"):
        restarts.advance(r, engine.StepResult(-10.0 - step, params=params), tol=1e-3, family=family)
    assert "fell" not in caplog.text and r.falls == 0
    with caplog.at_level(logging.DEBUG, logger="dask_em"):  # the same fall in float64 is one
        restarts.advance(r, engine.StepResult(-10.0 - 3 * step, params=params), tol=1e-3,
                         family=gaussian.GaussianFamily())
    assert "fell at iteration 3" in caplog.text and r.falls == 1


def test_verbose_logs_each_iteration(caplog, rng):
    X = mixture(rng, n=200, d=2, k=2)[0]
    with caplog.at_level(logging.INFO, logger="dask_em"):
        gm = dask_em.GaussianMixture(2, verbose=2, random_state=0).fit(X)
    assert f"restart 0 iteration {gm.n_iter_}" in caplog.text


@settings(max_examples=15, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 299), max_size=6, unique=True),
    cov_type=st.sampled_from(["full", "tied", "diag", "spherical"]),
)
def test_random_chunkings_give_the_one_chunk_round(cuts, cov_type):
    """Any row chunking gives the single-chunk round to round-off (flox-style)."""
    rng = np.random.default_rng(1)
    X = mixture(rng, n=300, d=3, k=2)[0]
    state = round_state(2, 3, np.random.default_rng(2), cov=cov_type)
    bounds = [0, *sorted(cuts), 300]
    chunks = tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    results = []
    for c in (chunks, (300,)):
        graph = engine.round_graph(da.from_array(X, chunks=(c, -1)), None, state, split_every=2)
        (res,) = dask.compute(graph, scheduler="sync")
        results.append(res[0])
    for key in ("weights", "means", "covariances"):
        np.testing.assert_allclose(results[0].params[key], results[1].params[key], rtol=1e-11, atol=1e-13)
    assert results[0].lower_bound == pytest.approx(results[1].lower_bound, rel=1e-12)


def test_a_rounds_e_step_plan_is_made_once_and_dropped_with_the_round():
    """The Gaussian E-step prepares a restart's coefficients once per round (its list of parameters), not
    per chunk; a parameter replaced makes a new plan; the plan goes when the round's list goes."""
    import gc

    from dask_em import gaussian
    from dask_em.engine import ParamsList, RoundState, estep_block

    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 3))
    model = dask_em.GaussianMixture(2, random_state=0, max_iter=2).fit(x)
    params = dict(model.fitted_state().params)
    state = RoundState(model.fitted_state().family, model.fitted_state().context, [params])
    assert isinstance(state.params, ParamsList)
    first = estep_block(x, None, state)
    plan = gaussian._round_plan(state.params, "float64", 3)
    assert gaussian._round_plan(state.params, "float64", 3) is plan  # found again, not remade
    again = estep_block(x, None, state)
    assert again[0]["loglik"] == first[0]["loglik"]
    params["means"] = params["means"] + 1.0  # a parameter replaced: a new plan, and the E-step sees it
    assert gaussian._round_plan(state.params, "float64", 3) is not plan
    moved = estep_block(x, None, state)
    fresh = estep_block(x, None, RoundState(state.family, state.context, [dict(params)]))
    assert moved[0]["loglik"] == fresh[0]["loglik"] != first[0]["loglik"]
    # One plan a round, whatever a chunk's rows (the missing-values route E-steps each chunk's complete rows).
    holes = x.copy()
    for i, chunk in enumerate(range(0, 600, 200)):
        holes[chunk : chunk + i + 1, 0] = np.nan
    missing = RoundState(state.family.with_missing("marginalize"), state.context, [params])
    for chunk in range(0, 600, 200):
        estep_block(holes[chunk : chunk + 200], None, missing)
    assert len([k for k in gaussian._PLANS if k[0] == id(missing.params)]) == 1
    key = id(state.params)
    del state, plan
    gc.collect()
    assert not [k for k in gaussian._PLANS if k[0] == key]
    # A plain list (a family's E-step called directly) keeps no plan.
    before = len(gaussian._PLANS)
    gaussian._round_plan([params], "float64", 3)
    assert len(gaussian._PLANS) == before
