"""The compiled (numba, GIL-free) E-step kernels equal the numpy kernels to round-off.

Each test runs the same E-step, or the same fit, twice in one process: with
the compiled kernels and with them switched off (``_compiled._STATE["on"]``,
what ``DASK_EM_COMPILED=0`` sets at a process's first E-step), and compares.
The references are numpy's own ``exp``/``log``/``logaddexp`` and the numpy
kernels, which the rest of the suite checks against scikit-learn.
"""

import warnings

import numpy as np
import pytest

import dask_em
from dask_em import _compiled
from dask_em._covariance import LAYOUTS
from dask_em.discrete import BernoulliFamily, CategoricalFamily, PoissonFamily
from dask_em.family import add_likelihood, log_normalize
from dask_em.gaussian import GaussianFamily

pytestmark = pytest.mark.skipif(not _compiled.enabled(), reason="numba is not installed or DASK_EM_COMPILED=0")

F64, F32 = np.dtype(np.float64), np.dtype(np.float32)
# float32 round-off of a sum over a chunk's rows, relative to its largest entry.
RTOL = {F64: 1e-11, F32: 2e-5}


@pytest.fixture
def switch(monkeypatch):
    """``switch(False)`` runs the numpy kernels for the rest of the test (restored after it)."""
    _compiled.enabled()

    def set_to(on: bool) -> None:
        monkeypatch.setitem(_compiled._STATE, "on", on)

    return set_to


def _gaussian_params(ct, k, d, rng):
    factors = np.triu(rng.standard_normal((k, d, d)) * 0.1 + np.eye(d))
    pc = {"full": factors, "tied": factors[0], "diag": rng.uniform(0.6, 1.4, (k, d)),
          "spherical": rng.uniform(0.6, 1.4, k)}[ct]
    return {"means": rng.standard_normal((k, d)), "precisions_cholesky": pc, "covariances": LAYOUTS[ct].covariances(pc),
            "weights": rng.dirichlet(np.ones(k)), "covariance_type": ct}


def _assert_records_close(compiled, numpy_, rtol):
    for a, b in zip(compiled, numpy_):
        for key in ("loglik", "wsum", "entropy"):
            assert a[key] == pytest.approx(b[key], rel=rtol, abs=rtol), key
        np.testing.assert_allclose(a["nk"], b["nk"], rtol=rtol, atol=rtol * max(1.0, np.abs(b["nk"]).max()))
        for key, value in b["stats"].items():
            value = np.asarray(value)
            np.testing.assert_allclose(a["stats"][key], value, rtol=rtol, atol=rtol * max(1.0, np.abs(value).max()),
                                       err_msg=key)


def _assert_estep_equals_numpy_kernels(switch, family, x, w, params, shift, rtol):
    """The E-step with the compiled kernels and with numpy's, unweighted and weighted: equal to ``rtol``."""
    for weights in (None, w):
        compiled = family.estep(x, weights, params, shift, entropy=True)
        switch(False)
        reference = family.estep(x, weights, params, shift, entropy=True)
        switch(True)
        _assert_records_close(compiled, reference, rtol)


def _normalize_reference(wlp, w, entropy):
    """numpy's responsibilities, weighted, and the panel's sums: what the compiled kernel must equal."""
    record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0}
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        log_norm, resp = log_normalize(wlp.copy())
        add_likelihood(record, log_norm, resp, w, entropy)
    return (resp if w is None else resp * w), record


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("entropy", [False, True])
def test_normalize_equals_numpy(dtype, weighted, entropy):
    rng = np.random.default_rng(0)
    k, p = 7, 3001
    wlp = (rng.standard_normal((k, p)) * 30 - 5).astype(dtype)
    wlp[2, ::5] = -np.inf  # an empty component (log weight -inf) in some rows
    w = rng.uniform(0.0, 3.0, p) if weighted else None
    expected, reference = _normalize_reference(wlp, w, entropy)
    record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0}
    got = wlp.copy()
    assert _compiled.normalize(got, w, entropy, record, np.empty((5, p), dtype=dtype))
    rtol = 1e-13 if dtype == F64 else 3e-6
    # float32: responsibilities below exp(-64) ~ 1.6e-28 of a row's largest are zero compiled (times w <= 3).
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=(5.1e-28 if weighted else 1.7e-28) if dtype == F32 else 0)
    for key in ("loglik", "wsum", "entropy"):
        assert record[key] == pytest.approx(reference[key], rel=rtol, abs=1e-12), key


@pytest.mark.parametrize("dtype", [F64, F32])
def test_exp_and_log_within_two_units_in_the_last_place(dtype):
    """Two components [v, 0]: the row's log-likelihood is log(1 + e^v), its first responsibility e^v / (1 + e^v)."""
    floor = _compiled.FLOORS[dtype]
    v = np.concatenate([np.linspace(floor, 0.0, 20001)[1:], -np.logspace(-12, 0, 200)]).astype(dtype)
    wlp = np.stack([v, np.zeros_like(v)])
    work = np.empty((5, v.size), dtype=dtype)
    record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0}
    assert _compiled.normalize(wlp, None, False, record, work)
    exact = np.exp(v.astype(np.float64))
    eps = float(np.finfo(dtype).eps)
    np.testing.assert_allclose(wlp[0] * (1 + exact), exact, rtol=4 * eps)
    assert record["loglik"] == pytest.approx(np.logaddexp(0.0, v.astype(np.float64)).sum(), rel=4 * eps)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_below_the_floor(dtype):
    """float64 takes exp() below the floor at the floor, as the numpy kernels do; float32 takes it as
    zero (a responsibility near float32's smallest normal makes every product with it subnormal)."""
    floor = _compiled.FLOORS[dtype]
    wlp = np.array([[floor, floor - 1.0, -1e4, -np.inf], [0.0, 0.0, 0.0, 0.0]], dtype=dtype)
    record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0}
    assert _compiled.normalize(wlp, None, True, record, np.empty((5, 4), dtype=dtype))
    expected = [0.0] * 4 if dtype == F32 else [np.exp(floor)] * 4
    np.testing.assert_allclose(wlp[0], expected, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(wlp[1], np.ones(4, dtype=dtype) - wlp[0])
    assert np.isfinite(record["entropy"]) and record["loglik"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_normalize_keeps_nan_rows_nan(dtype):
    wlp = np.zeros((3, 10), dtype=dtype)
    wlp[1, 4] = np.nan
    record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0}
    assert _compiled.normalize(wlp, None, False, record, np.empty((5, 10), dtype=dtype))
    assert np.isnan(record["loglik"]) and np.isnan(wlp[:, 4]).all()
    everything_empty = np.full((3, 4), -np.inf, dtype=dtype)
    record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0}
    assert _compiled.normalize(everything_empty, None, False, record, np.empty((5, 4), dtype=dtype))
    assert np.isnan(record["loglik"])


def test_normalize_declines_what_it_does_not_cover(switch):
    record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0}
    ints = np.zeros((2, 3), dtype=np.int64)
    assert not _compiled.normalize(ints, None, False, record, np.empty((5, 3)))
    strided = np.zeros((2, 6))[:, ::2]
    assert not _compiled.normalize(strided, None, False, record, np.empty((5, 3)))
    switch(False)
    assert not _compiled.normalize(np.zeros((2, 3)), None, False, record, np.empty((5, 3)))
    assert record == {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0}


@pytest.mark.parametrize("n, k", [(1, 1), (7, 3), (1100, 8), (513, 2)])
def test_normalize_rows_equals_scipy(n, k):
    """Inference's log-sum-exp of (n, K) rows, in panels of 512: scipy's to 1e-13, its responsibilities to 1e-14."""
    from scipy.special import logsumexp

    rng = np.random.default_rng(n + k)
    wlp = rng.standard_normal((n, k)) * 200 - 300
    if k > 1:
        wlp[::5, 0] = -np.inf  # a component of no density for some rows
    log_norm, proba = _compiled.normalize_rows(wlp, True)
    expected = logsumexp(wlp, axis=1)
    np.testing.assert_allclose(log_norm, expected, rtol=1e-13, atol=0)
    np.testing.assert_allclose(proba, np.exp(wlp - expected[:, None]), rtol=1e-12, atol=1e-14)
    alone, none = _compiled.normalize_rows(wlp, False)
    np.testing.assert_array_equal(alone, log_norm)
    assert none is None
    if k > 1:  # a component of no density anywhere (no weight): responsibility exactly 0, as scikit-learn's
        wlp[:, -1] = -np.inf
        assert (_compiled.normalize_rows(wlp, True)[1][:, -1] == 0).all()


def test_normalize_rows_leaves_what_is_not_finite_to_numpy(switch, rng):
    """NaN rows and rows of no density give non-finite sums, which inference hands to numpy's path; other
    dtypes and layouts are declined."""
    wlp = rng.standard_normal((10, 3))
    wlp[2, 1] = np.nan
    wlp[5] = -np.inf
    log_norm, _ = _compiled.normalize_rows(wlp, False)
    assert np.isnan(log_norm[2]) and not np.isfinite(log_norm[5]) and np.isfinite(np.delete(log_norm, [2, 5])).all()
    assert _compiled.normalize_rows(wlp.astype(np.float32), True) is None
    assert _compiled.normalize_rows(np.asfortranarray(rng.standard_normal((10, 3))), True) is None
    switch(False)
    assert _compiled.normalize_rows(rng.standard_normal((10, 3)), True) is None


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("d", [3, 16])
def test_gaussian_inference_equals_numpy_kernels(switch, monkeypatch, ct, d):
    """Inference's log-densities on the E-step's product designs (compiled, panels of 64 rows here) equal the
    numpy kernels' (the residual design for full and tied), float64 and float32 rows, K=3 (padded) and 8."""
    if _compiled._STATE.get("product-logp") is None:
        pytest.skip("numpy's BLAS C interface was not found: the panel loop runs in Python")
    from dask_em import _covariance

    monkeypatch.setattr(_covariance, "MOMENT_PANEL_BYTES_COMPILED", 64 * (d * (d + 1) // 2 + d + 1) * 8)
    rng = np.random.default_rng(d)
    x = rng.standard_normal((3001, d)) * 2 + 1
    family = GaussianFamily()
    calls = []
    real = _compiled.product_logp
    monkeypatch.setattr(_compiled, "product_logp", lambda *a: calls.append(a[5]) or real(*a))
    for k in (3, 8):
        params = _gaussian_params(ct, k, d, rng)
        shift = x[:50].mean(0)
        for rows in (x, x.astype(np.float32)):
            switch(True)
            fast = family.weighted_log_prob(rows, params, shift)
            switch(False)
            slow = family.weighted_log_prob(rows, params, shift)
            assert np.abs(fast - slow).max() <= 1e-12 * np.abs(slow).max()
    assert len(calls) == 4 and (ct not in ("full", "tied") or set(calls) == {64})


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("d", [3, 16])
def test_gaussian_estep_equals_numpy_kernels(switch, ct, dtype, d):
    """Every product design (moments at small d, diag, spherical), K=3 (padded GEMM rows) and 8, weights, entropy."""
    rng = np.random.default_rng(d)
    x = rng.standard_normal((5003, d)) * 2 + 1
    w = rng.uniform(0.2, 2.0, len(x))
    params = [_gaussian_params(ct, k, d, rng) for k in (3, 8)]
    family = GaussianFamily(compute_dtype=dtype)
    shift = x[:50].mean(0)
    _assert_estep_equals_numpy_kernels(switch, family, x, w, params, shift, RTOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", [F64, F32])
def test_statistics_kernel_equals_numpy_products(dtype):
    """The compiled statistics product (blocks of 4 x 3 outputs, every tail shape) equals numpy's, over any rows."""
    rng = np.random.default_rng(11)
    tol = 1e-14 if dtype == F64 else 2e-6
    for ka, kb, start, rows in [(8, 153, 0, 2048), (5, 34, 7, 1001), (3, 10, 3, 33), (1, 1, 0, 5), (7, 2, 1, 64),
                                (4, 3, 0, 0), (6, 8, 100, 1)]:
        a = rng.standard_normal((ka + 2, start + rows + 9)).astype(dtype)
        b = rng.standard_normal((kb, start + rows + 9)).astype(dtype)
        out = np.full((ka + 2, kb), 7.0, dtype=dtype)
        _compiled._dots_jit(a, b, out, dtype.type(0), start, rows, ka)
        exact = a[:ka, start : start + rows].astype(np.float64) @ b[:, start : start + rows].T.astype(np.float64)
        np.testing.assert_allclose(out[:ka], exact, rtol=0, atol=tol * max(1.0, np.abs(exact).max()) * max(1, rows))
        assert (out[ka:] == 7.0).all()  # rows past ka are left alone


@pytest.mark.parametrize("dtype", [F64, F32])
def test_statistics_kernel_lower_triangle_equals_numpy(dtype):
    """The residual design's symmetric statistics (the lower triangle of ``u u^T``, blocks of 4 x 3 outputs and
    every tail shape) equal numpy's over any rows, and write nothing past the ``n x n`` corner of ``out``."""
    rng = np.random.default_rng(12)
    tol = 1e-14 if dtype == F64 else 2e-6
    for n, start, rows in [(65, 0, 1024), (17, 5, 513), (8, 3, 33), (7, 0, 64), (2, 1, 9), (1, 0, 5), (4, 0, 0),
                           (6, 100, 1)]:
        u = rng.standard_normal((n, start + rows + 9)).astype(dtype)
        out = np.full((n + 2, n + 3), 7.0, dtype=dtype)
        _compiled._dots_jit(u, u, out, dtype.type(0), start, rows, n, True)
        part = u[:, start : start + rows].astype(np.float64)
        exact = part @ part.T
        lower = np.tril_indices(n)
        np.testing.assert_allclose(out[:n, :n][lower], exact[lower], rtol=0,
                                   atol=tol * max(1.0, np.abs(exact).max()) * max(1, rows))
        assert (out[n:] == 7.0).all() and (out[:, n:] == 7.0).all()  # only the n x n corner is written


@pytest.mark.parametrize("ct", ["full", "tied"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", ["raw moments (d above the moment design's)", "about the means (far from the shift)"])
@pytest.mark.parametrize("shape", ["usual", (1, 1), (1, 6), (2, 7)])
def test_residual_design_equals_numpy_kernels(switch, ct, dtype, case, shape):
    """Full/tied on the residual design: one compiled call per restart and chunk, equal to the numpy kernels.

    The shapes cover every remainder of the statistics' blocks of four rows (``d + 1`` of 2, 7, 8, 25 and 7)
    and a component count whose ``K d`` is below ``d + 1``.
    """
    if _compiled._STATE.get("residual") is None:
        pytest.skip("numpy's BLAS C interface was not found: the panel loop runs in Python")
    rng = np.random.default_rng(3)
    raw = case.startswith("raw")
    k, d = ((3, 24) if raw else (8, 6)) if shape == "usual" else shape
    x = rng.standard_normal((6007, d)) * 2 + 1
    w = rng.uniform(0.2, 2.0, len(x))
    params = [_gaussian_params(ct, k, d, rng)]
    if not raw:
        params[0]["means"] = params[0]["means"] * 3000  # beyond MOMENT_MAX_DISTANCE2: statistics about the means
    layout = LAYOUTS[ct].kernel(params[0], np.dtype(dtype))
    assert type(layout).__name__ == f"{ct.capitalize()}{'Raw' if raw else ''}Layout"
    family = GaussianFamily(compute_dtype=dtype)
    shift = x[:50].mean(0)
    calls = len(_compiled._STATE["residual"].signatures)
    _assert_estep_equals_numpy_kernels(switch, family, x, w, params, shift, RTOL[np.dtype(dtype)])
    assert len(_compiled._STATE["residual"].signatures) >= max(calls, 1)
    assert _compiled._STATE["residual"].targetoptions["nogil"] is True


def test_product_estep_runs_for_product_designs_only():
    """The moment and diagonal designs run compiled, in one call that releases the GIL; the residual design does not."""
    if _compiled._STATE.get("product") is None:
        pytest.skip("numpy's BLAS C interface was not found: the panel loop runs in Python")
    dispatcher = _compiled._STATE["product"]
    assert dispatcher.targetoptions["nogil"] is True
    rng = np.random.default_rng(1)
    family = GaussianFamily()
    x = rng.standard_normal((2000, 4))
    before = len(dispatcher.signatures)
    family.estep(x, None, [_gaussian_params("full", 8, 4, rng)], np.zeros(4))
    family.estep(x, None, [_gaussian_params("diag", 8, 4, rng)], np.zeros(4))
    assert len(dispatcher.signatures) >= max(before, 1)
    record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0, "moments": np.zeros((2, 7))}
    pairs = (np.arange(3), np.arange(3))
    buffers = lambda name, shape, dt: np.empty(shape, dtype=dt)  # noqa: E731
    coef = np.zeros((2, 7))
    assert _compiled.product_estep(x[:, :3], None, np.zeros(3), pairs, coef, 2, 64, False, False, record, buffers)
    assert record["wsum"] == 2000 and record["moments"][:, -1].sum() == pytest.approx(2000)



def _count_calls(monkeypatch, name: str) -> list:
    """Count the calls of the compiled kernel ``name`` (its dispatcher still runs them)."""
    calls, dispatcher = [], _compiled._STATE[name]

    def counted(*args):
        calls.append(len(args[0]))
        return dispatcher(*args)

    monkeypatch.setitem(_compiled._STATE, name, counted)
    return calls


def _product_record(x, w, shift, pairs, coef, k, panel, entropy=True, stop_at_nan=False):
    record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0, "moments": np.zeros((k, coef.shape[1]))}
    buffers = lambda name, shape, dt: np.empty(shape, dtype=dt)  # noqa: E731
    done = _compiled.product_estep(x, w, shift, pairs, coef, k, panel, entropy, stop_at_nan, record, buffers)
    return done, record


def test_pair_blocks_cover_every_design_column_once():
    """The pair kernel's blocks make each design column (products, y, the ones) exactly once, as its rows' product."""
    from dask_em._covariance import _vech_pairs

    for d in range(1, 12):
        for pairs in (_vech_pairs(d), (np.arange(d), np.arange(d))):
            q, width = len(pairs[0]), len(pairs[0]) + d + 1
            blocks = _compiled.pair_blocks(pairs, d)
            assert _compiled.pair_blocks(pairs, d) is blocks  # cached
            made = {}
            for u, v0, v1, v2, m0, m1, m2 in blocks.tolist():
                for v, m in ((v0, m0), (v1, m1), (v2, m2)):
                    if m == width:  # a block's unused place: the scratch column
                        continue
                    assert m not in made
                    made[m] = tuple(sorted((u, v)))
            expect = {m: tuple(sorted((int(i), int(j)))) for m, (i, j) in enumerate(zip(*pairs))}
            expect.update({q + a: (a, d) for a in range(d)})
            expect[q + d] = (d, d)
            assert made == expect


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("k", [3, 5, 8, 9])
def test_pair_kernel_equals_the_design_product_and_numpy(dtype, k, monkeypatch):
    """Short design panels take the pair kernel (statistics over taller panels, the design's columns made on the
    fly); its records equal the design product's and exact float64 sums, weighted or not, any K, any tail."""
    if _compiled._STATE.get("pairs") is None:
        pytest.skip("numpy's BLAS C interface was not found: the panel loop runs in Python")
    from dask_em._covariance import _vech_pairs

    monkeypatch.setattr(_compiled, "PAIRS_L2_SHARE", 1.0)
    monkeypatch.setattr(_compiled, "PAIRS_MAX_ROWS", 64)
    rng = np.random.default_rng(k)
    d, n, panel = 7, 1003, 8  # statistics panels of 64 rows; the last one 43 rows, its last design panel 3
    pairs = _vech_pairs(d)
    width = len(pairs[0]) + d + 1
    x = rng.standard_normal((n, d)) * 1.5 + 0.3
    w = rng.uniform(0.2, 2.0, n)
    shift = x[:40].mean(0)
    kp = -(-k // 4) * 4
    coef = np.zeros((kp, width), dtype=dtype)
    coef[:k] = rng.standard_normal((k, width)) * 0.2
    assert _compiled.stats_rows(panel, d, kp, dtype) == 64
    assert _compiled._STATE["pairs"].targetoptions["nogil"] is True
    calls = _count_calls(monkeypatch, "pairs")
    for weights in (None, w):
        done, pair = _product_record(x, weights, shift, pairs, coef, k, panel)
        assert done is True and len(calls) == 1
        calls.clear()
        monkeypatch.setattr(_compiled, "PAIRS_MAX_PANEL_BYTES", 0)  # the design's own product
        _, design = _product_record(x, weights, shift, pairs, coef, k, panel)
        monkeypatch.setattr(_compiled, "PAIRS_MAX_PANEL_BYTES", 256)
        for key in ("loglik", "wsum", "entropy"):
            assert pair[key] == pytest.approx(design[key], rel=RTOL[dtype], abs=RTOL[dtype])
        np.testing.assert_allclose(pair["moments"], design["moments"], rtol=0,
                                   atol=RTOL[dtype] * np.abs(design["moments"]).max())
        # Against numpy in float64: the responsibilities of these log-densities times the design.
        y = (x - shift).astype(dtype).astype(np.float64)
        phi = np.hstack([y[:, pairs[0]] * y[:, pairs[1]], y, np.ones((n, 1))])
        logp = phi @ coef[:k].astype(np.float64).T
        resp = np.exp(logp - np.logaddexp.reduce(logp, axis=1, keepdims=True))
        if weights is not None:
            resp *= weights[:, None]
        exact = resp.T @ phi
        np.testing.assert_allclose(pair["moments"], exact, rtol=0, atol=50 * RTOL[dtype] * np.abs(exact).max())


def test_the_diagonal_design_keeps_its_own_product(monkeypatch):
    """The diagonal design's squares share no first row: even in short panels its statistics stay the design's."""
    if _compiled._STATE.get("pairs") is None:
        pytest.skip("numpy's BLAS C interface was not found: the panel loop runs in Python")
    d, k = 6, 4
    pairs = (np.arange(d), np.arange(d))
    x = np.random.default_rng(2).standard_normal((600, d))
    assert _compiled.stats_rows(8, d, k, F64) > 8
    calls = _count_calls(monkeypatch, "pairs")
    done, record = _product_record(x, None, np.zeros(d), pairs, np.zeros((k, 2 * d + 1)), k, 8)
    assert done is True and calls == [] and record["wsum"] == 600


def test_warm_up_compiles_what_fits_call(monkeypatch):
    """After ``warm_up()`` (what the container image runs at build time), E-steps on the layouts' own pairs
    (read-only arrays), float32 data computed in float64 and the pair kernel compile nothing more."""
    if _compiled._STATE.get("pairs") is None:
        pytest.skip("numpy's BLAS C interface was not found: the panel loop runs in Python")
    from dask_em import _covariance

    assert _compiled.warm_up()
    names = ("product", "pairs", "residual", "design", "kernel")
    before = {name: len(_compiled._STATE[name].signatures) for name in names}
    rng = np.random.default_rng(8)
    d = 6
    width = d * (d + 1) // 2 + d + 1
    for data in (np.float64, np.float32):
        x = rng.standard_normal((600, d)).astype(data)
        for dtype in ("float64", "float32"):
            family = GaussianFamily(compute_dtype=dtype)
            for ct in ("full", "diag"):
                family.estep(x, None, [_gaussian_params(ct, 4, d, rng)], np.zeros(d))
            itemsize = np.dtype(dtype).itemsize
            monkeypatch.setattr(_covariance, "MOMENT_PANEL_BYTES_COMPILED", 16 * width * itemsize)
            family.estep(x, rng.uniform(0.5, 1.5, len(x)), [_gaussian_params("full", 4, d, rng)], np.zeros(d))
            monkeypatch.undo()
    assert {name: len(_compiled._STATE[name].signatures) for name in names} == before
    # ... and neither does inference (its log-densities, its log-sum-exp).
    names = ("product-logp", "rows-normalize", "design", "kernel")
    before = {name: len(_compiled._STATE[name].signatures) for name in names}
    for data in (np.float64, np.float32):
        x = rng.standard_normal((600, d)).astype(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = dask_em.GaussianMixture(3, max_iter=2).fit(x)
        model.predict_proba(x), model.score_samples(x)
    assert {name: len(_compiled._STATE[name].signatures) for name in names} == before


def test_pair_kernel_stops_at_a_nan_row(monkeypatch):
    """Watching for NaN, the pair kernel returns False at a statistics panel whose log-likelihood is NaN."""
    if _compiled._STATE.get("pairs") is None:
        pytest.skip("numpy's BLAS C interface was not found: the panel loop runs in Python")
    from dask_em._covariance import _vech_pairs

    monkeypatch.setattr(_compiled, "PAIRS_MAX_ROWS", 64)
    d = 5
    pairs = _vech_pairs(d)
    x = np.random.default_rng(0).standard_normal((500, d))
    x[300, 2] = np.nan
    coef = np.zeros((4, len(pairs[0]) + d + 1))
    assert _compiled.stats_rows(8, d, 4, F64) > 8
    assert _product_record(x, None, np.zeros(d), pairs, coef, 4, 8, stop_at_nan=True)[0] is False
    assert _product_record(x[:300], None, np.zeros(d), pairs, coef, 4, 8, stop_at_nan=True)[0] is True


@pytest.mark.parametrize("ct", ["full", "tied"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_short_moment_panels_take_the_pair_kernel_and_equal_numpy(switch, monkeypatch, ct, dtype):
    """Where half of one core's L2 holds 16-32 design rows (the moment design at large d), the E-step takes the
    pair kernel; it equals the numpy kernels, weighted and not."""
    if _compiled._STATE.get("pairs") is None:
        pytest.skip("numpy's BLAS C interface was not found: the panel loop runs in Python")
    from dask_em import _covariance

    rng = np.random.default_rng(4)
    d, k = 12, 8
    width = d * (d + 1) // 2 + d + 1
    itemsize = np.dtype(dtype).itemsize
    monkeypatch.setattr(_covariance, "MOMENT_PANEL_BYTES_COMPILED", 16 * width * itemsize)  # 16-row panels
    assert _covariance.compiled_panel_rows(width, dtype) == 16
    assert _compiled.stats_rows(16, d, k, np.dtype(dtype)) > 16
    x = rng.standard_normal((3001, d)) * 2 + 1
    w = rng.uniform(0.2, 2.0, len(x))
    params = [_gaussian_params(ct, k, d, rng)]
    family = GaussianFamily(compute_dtype=dtype)
    calls = _count_calls(monkeypatch, "pairs")
    _assert_estep_equals_numpy_kernels(switch, family, x, w, params, x[:50].mean(0), RTOL[np.dtype(dtype)])
    assert sum(calls) == 2 * len(x)  # every row of both E-steps (unweighted, weighted) on the pair kernel


def test_missing_values_route_equals_numpy(switch):
    """A chunk with NaN stops the compiled walk and takes the missing-values route: same records either way."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4000, 5))
    x[rng.random(4000) < 0.05, 2] = np.nan
    params = [_gaussian_params(ct, 4, 5, rng) for ct in ("full", "diag")]
    family = GaussianFamily(missing="marginalize")
    compiled = family.estep(x, None, params, np.zeros(5), entropy=True)
    switch(False)
    reference = family.estep(x, None, params, np.zeros(5), entropy=True)
    _assert_records_close(compiled, reference, 1e-11)


@pytest.mark.parametrize("ct, d, most_missing", [("full", 5, 1), ("tied", 6, 3), ("full", 9, 6), ("full", 16, 2)])
@pytest.mark.parametrize("data", [F64, F32])
def test_profiled_rows_run_compiled_and_equal_numpy(switch, monkeypatch, ct, d, most_missing, data):
    """Rows of rare missingness patterns (1 to 6 values missing, one pattern frequent enough for the dense
    route) run compiled, one call per restart and number of missing values, equal to the numpy route."""
    rng = np.random.default_rng(d + most_missing)
    n = 6000
    x = rng.standard_normal((n, d)) + 3.0
    for s in range(1, most_missing + 1):
        for r in np.flatnonzero(rng.random(n) < 0.04):
            x[r, rng.choice(d, s, replace=False)] = np.nan
    x[:3000, 1] = np.nan  # one pattern frequent enough for the dense route (2048 rows or more)
    x = x.astype(data)
    params = [_gaussian_params(ct, k, d, rng) for k in (4, 2)]
    calls = []
    original = _compiled.profile_estep
    monkeypatch.setattr(_compiled, "profile_estep", lambda *a: calls.append((_compiled.enabled(), original(*a))) or
                        calls[-1][1])
    _assert_estep_equals_numpy_kernels(switch, GaussianFamily(missing="marginalize"), x, rng.uniform(0.5, 2.0, n),
                                       params, np.full(d, 2.9), 1e-11)
    ran = [done for on, done in calls if on]
    assert ran and all(ran)


@pytest.mark.parametrize("name", ["bernoulli", "categorical", "categorical-float-codes", "categorical-uneven",
                                  "poisson"])
def test_discrete_estep_equals_numpy(switch, name):
    """Bernoulli and categorical chunks run compiled whole (the rows kernel); Poisson its log-sum-exp."""
    rng = np.random.default_rng(4)
    if name == "bernoulli":
        family, x = BernoulliFamily(), rng.random((3000, 12)) < 0.3
        probabilities = [rng.uniform(0.05, 0.95, (k, 12)) for k in (5, 2)]
    elif name == "poisson":
        family, x = PoissonFamily(), rng.poisson(3.0, (3000, 7)).astype(np.int16)
        probabilities = None
    else:
        sizes = [4, 2, 7] if name == "categorical-uneven" else [4] * 6
        family = CategoricalFamily(n_categories=sizes if name == "categorical-uneven" else 4)
        x = np.stack([rng.integers(0, c, 3000) for c in sizes], axis=1).astype(np.int8)
        x = x.astype(np.float64) if name == "categorical-float-codes" else x
        probabilities = [np.concatenate([rng.dirichlet(np.ones(c), size=k) for c in sizes], axis=1) for k in (5, 2)]
    if probabilities is None:
        params = [{"rates": rng.uniform(0.5, 6.0, (k, 7))} for k in (5, 2)]
    else:
        params = [{"probabilities": p} for p in probabilities]
    for p in params:
        p["weights"] = rng.dirichlet(np.ones(len(next(iter(p.values())))))
    w = rng.uniform(0.5, 1.5, len(x))
    rows = _compiled._STATE.get("rows")
    before = len(rows.signatures) if rows is not None else 0
    for weights in (None, w):
        compiled = family.estep(x, weights, params, None, entropy=True)
        switch(False)
        reference = family.estep(x, weights, params, None, entropy=True)
        switch(True)
        _assert_records_close(compiled, reference, 1e-11)
    if rows is not None and name != "poisson":
        assert len(rows.signatures) >= max(before, 1)


@pytest.mark.parametrize("ct, d", [("full", 5), ("diag", 5), ("full", 24)])
def test_fit_equals_numpy_kernels_and_is_chunk_and_thread_invariant(switch, ct, d):
    """Whole fits: compiled against numpy's kernels, over other chunkings and thread counts (d=24, K=3: the
    residual design)."""
    import dask
    import dask.array as da

    from dask_em.datasets import make_mixture

    x, _, _ = make_mixture(6000, d, 3, chunk_rows=1500, seed=2)
    x = x.compute()
    settings = dict(covariance_type=ct, n_init=2, random_state=0, max_iter=30, tol=1e-8)

    def fit(data, threads=2):
        with dask.config.set(scheduler="threads", num_workers=threads):
            return dask_em.GaussianMixture(3, **settings).fit(data)

    compiled = fit(da.from_array(x, chunks=(1500, d)))
    others = [fit(da.from_array(x, chunks=(700, d))), fit(da.from_array(x, chunks=(1500, d)), threads=1)]
    switch(False)
    reference = fit(da.from_array(x, chunks=(1500, d)))
    for other in [reference] + others:
        assert other.n_iter_ == compiled.n_iter_
        np.testing.assert_allclose(other.weights_, compiled.weights_, rtol=1e-9)
        np.testing.assert_allclose(other.means_, compiled.means_, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(other.covariances_, compiled.covariances_, rtol=1e-8, atol=1e-10)
        assert other.lower_bound_ == pytest.approx(compiled.lower_bound_, rel=1e-11)
    # The same chunks on one thread or two: the same sums, bitwise.
    np.testing.assert_array_equal(others[1].means_, compiled.means_)


def test_fit_on_the_pair_kernel_equals_numpy_kernels_and_is_chunk_invariant(switch, monkeypatch):
    """Whole fits whose moment-design panels are short enough for the pair kernel: equal to the numpy kernels',
    and over other chunkings and thread counts."""
    import dask
    import dask.array as da

    from dask_em import _covariance
    from dask_em.datasets import make_mixture

    if _compiled._STATE.get("pairs") is None:
        pytest.skip("numpy's BLAS C interface was not found: the panel loop runs in Python")
    d, k = 10, 3
    width = d * (d + 1) // 2 + d + 1
    monkeypatch.setattr(_covariance, "MOMENT_PANEL_BYTES_COMPILED", 32 * width * 8)  # 32-row panels
    x = make_mixture(6000, d, k, chunk_rows=1500, seed=5)[0].compute()
    settings = dict(covariance_type="full", n_init=2, random_state=0, max_iter=30, tol=1e-8)

    def fit(chunks, threads=2):
        with dask.config.set(scheduler="threads", num_workers=threads):
            return dask_em.GaussianMixture(k, **settings).fit(da.from_array(x, chunks=(chunks, d)))

    calls = _count_calls(monkeypatch, "pairs")
    compiled = fit(1500)
    assert sum(calls) >= compiled.n_iter_ * len(x)
    others = [fit(1100), fit(1500, threads=1)]
    switch(False)
    reference = fit(1500)
    for other in [reference] + others:
        assert other.n_iter_ == compiled.n_iter_
        np.testing.assert_allclose(other.means_, compiled.means_, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(other.covariances_, compiled.covariances_, rtol=1e-8, atol=1e-10)
        assert other.lower_bound_ == pytest.approx(compiled.lower_bound_, rel=1e-11)
    np.testing.assert_array_equal(others[1].means_, compiled.means_)

@pytest.mark.parametrize("ct", ["diag", "full"])
def test_float32_statistics_as_accurate_as_numpys(switch, ct):
    """A panel's float32 statistics are summed in blocks added in float64: at least as accurate as numpy's kernel."""
    rng = np.random.default_rng(6)
    d = 2 if ct == "diag" else 16
    x = rng.standard_normal((2**18, d))
    means = np.zeros((2, d))
    means[:, 0] = [0.5, -0.5]
    pc = np.ones((2, d)) if ct == "diag" else np.stack([np.eye(d)] * 2)
    params = [{"means": means, "precisions_cholesky": pc, "weights": np.array([0.5, 0.5]), "covariance_type": ct}]

    def statistics(family):
        stats = family.estep(x, None, params, np.zeros(d))[0]["stats"]
        return np.concatenate([np.ravel(stats[key]) for key in sorted(stats)])

    exact = statistics(GaussianFamily())

    def error():
        got = statistics(GaussianFamily(compute_dtype="float32"))
        return np.abs(got - exact).max() / np.abs(exact).max()

    compiled = error()
    switch(False)
    assert compiled <= 4 * max(error(), float(np.finfo(np.float32).eps) / 16)


@pytest.mark.parametrize("dtype", [np.float16, np.dtype(">f8")])
def test_other_float_data_leave_the_kernels_on(dtype):
    """float16 or big-endian data take the numpy kernels for that chunk; the compiled kernels stay on."""
    import warnings

    rng = np.random.default_rng(7)
    x = rng.standard_normal((400, 3)).astype(dtype)
    record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0, "moments": np.zeros((2, 7))}
    pairs = (np.arange(3), np.arange(3))
    buffers = lambda name, shape, dt: np.empty(shape, dtype=dt)  # noqa: E731
    assert _compiled.product_estep(x, None, np.zeros(3), pairs, np.zeros((2, 7)), 2, 64, False, False, record,
                                   buffers) is None
    assert not _compiled.product_design(x, np.zeros(3), pairs, np.ones((7, 400)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ct in ("diag", "full"):
            dask_em.GaussianMixture(2, covariance_type=ct, max_iter=3, tol=0, random_state=0).fit(x)
    assert _compiled.enabled() and _compiled.products_run()


def test_switched_off_numba_is_not_imported(tmp_path):
    """DASK_EM_COMPILED=0 before the first E-step: numpy's kernels, and numba is never imported (its memory stays
    free)."""
    import os
    import subprocess
    import sys

    code = ("import sys, numpy as np, dask_em\n"
            "x = np.random.default_rng(0).standard_normal((500, 3))\n"
            "dask_em.GaussianMixture(2, max_iter=2, random_state=0).fit(x)\n"
            "print('numba' in sys.modules)\n")
    env = {**os.environ, "DASK_EM_COMPILED": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_only_the_first_restart_sends_a_chunk_to_the_missing_values_route(monkeypatch):
    """A restart whose own parameters give NaN must not send clean chunks down the missing-values route."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3000, 4))
    good = _gaussian_params("diag", 3, 4, rng)
    bad = dict(_gaussian_params("diag", 3, 4, rng), means=np.full((3, 4), np.nan))
    family = GaussianFamily(missing="marginalize")
    routed = []
    original = GaussianFamily._estep_with_missing
    monkeypatch.setattr(GaussianFamily, "_estep_with_missing",
                        lambda self, *args: routed.append(1) or original(self, *args))
    records = family.estep(x, None, [good, bad], np.zeros(4))
    assert not routed
    assert np.isnan(records[1]["loglik"])
    alone = family.estep(x, None, [good], np.zeros(4))[0]
    assert records[0]["loglik"] == alone["loglik"]


def test_normalize_refuses_a_work_array_too_small():
    record = {"loglik": 0.0, "wsum": 0.0, "entropy": 0.0}
    with pytest.raises(ValueError, match="work array"):
        _compiled.normalize(np.zeros((2, 10)), None, False, record, np.empty((5, 9)))
    with pytest.raises(ValueError, match="work array"):
        _compiled.normalize(np.zeros((2, 10)), None, False, record, np.empty((5, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="one weight per row"):
        _compiled.normalize(np.zeros((2, 10)), np.ones(9), False, record, np.empty((5, 10)))


def test_a_subclass_with_its_own_design_keeps_the_numpy_kernel():
    class Shifted(BernoulliFamily):
        def fill_design(self, x, z):
            np.copyto(z[:, :-1], 1 - x)

    assert BernoulliFamily().compiled_design(4) == "copy"
    assert Shifted().compiled_design(4) is None
    assert CategoricalFamily(n_categories=3).compiled_design(2).tolist() == [0, 3, 6]
