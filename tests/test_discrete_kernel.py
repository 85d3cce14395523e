"""The discrete families' design-matrix E-step against scipy's pmfs and a direct log-sum-exp."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from scipy import stats as st
from scipy.special import gammaln, logsumexp, xlogy

from dask_em._discrete_kernel import buffer, design_estep, panel_rows
from dask_em.discrete import BernoulliFamily, CategoricalFamily, PoissonFamily
from conftest import assert_close

SIZES = (3, 2, 4, 5)  # categories per feature


def family_of(name: str):
    return {"bernoulli": BernoulliFamily(), "poisson": PoissonFamily(),
            "categorical": CategoricalFamily(n_categories=SIZES)}[name]


def draw_params(name: str, rng: np.random.Generator, k: int) -> dict:
    d = len(SIZES)
    weights = rng.dirichlet(np.ones(k))
    if name == "bernoulli":
        return {"probabilities": rng.uniform(0.05, 0.95, (k, d)), "weights": weights}
    if name == "poisson":
        return {"rates": rng.uniform(0.5, 9.0, (k, d)), "weights": weights}
    return {"probabilities": np.concatenate([rng.dirichlet(np.ones(c), size=k) for c in SIZES], axis=1),
            "weights": weights}


def draw_rows(name: str, rng: np.random.Generator, n: int, dtype=None) -> np.ndarray:
    """Rows as stored (bool, uint8 counts, int8 codes unless ``dtype``)."""
    if name == "bernoulli":
        return (rng.random((n, len(SIZES))) < 0.4).astype(dtype or bool)
    if name == "poisson":
        return rng.poisson(4.0, (n, len(SIZES))).astype(dtype or np.uint8)
    return np.stack([rng.integers(0, c, n) for c in SIZES], axis=1).astype(dtype or np.int8)


def log_pmf(name: str, x: np.ndarray, params: dict) -> np.ndarray:
    """(n, K) log-pmf of the rows under each component, by scipy.stats (categorical: a direct look-up)."""
    if name == "bernoulli":
        return st.bernoulli.logpmf(x[:, None, :], params["probabilities"][None]).sum(2)
    if name == "poisson":
        return st.poisson.logpmf(x[:, None, :], params["rates"][None]).sum(2)
    offsets = np.concatenate([[0], np.cumsum(SIZES)])
    return sum(np.log(params["probabilities"][:, offsets[j] + x[:, j].astype(int)]).T for j in range(len(SIZES)))


def draw(name: str, rng: np.random.Generator, n: int, k: int, dtype=None):
    x = draw_rows(name, rng, n, dtype)
    params = draw_params(name, rng, k)
    return family_of(name), x, params, log_pmf(name, x, params)


def design_of(name: str, x: np.ndarray) -> np.ndarray:
    if name != "categorical":
        return x.astype(np.float64)
    return np.concatenate([np.eye(c)[x[:, j]] for j, c in enumerate(SIZES)], axis=1)


def reference(name, x, w, params, logp):
    """The E-step record computed directly: log-sum-exp of log w_k + log p(x | k), r^T z."""
    wlp = logp + np.log(params["weights"])
    log_norm = logsumexp(wlp, axis=1)
    resp = np.exp(wlp - log_norm[:, None])
    rw = resp if w is None else resp * w[:, None]
    key = {"bernoulli": "ones", "poisson": "sums", "categorical": "counts"}[name]
    per_row_entropy = xlogy(resp, resp).sum(1)
    return {
        "loglik": float(log_norm.sum() if w is None else w @ log_norm),
        "wsum": float(len(x) if w is None else w.sum()),
        "entropy": float(per_row_entropy.sum() if w is None else w @ per_row_entropy),
        "nk": rw.sum(0),
        "stats": {key: rw.T @ design_of(name, x)},
    }


def assert_record(got, want, terms=0.0, rows=0):
    """The E-step's record against the reference's.

    ``terms``: the size of one row's log-density terms before they cancel (for large
    counts, ``x log(rate)`` and ``log(x!)`` of about 1e6 that sum to about -10). A
    log-density then carries an absolute round-off of a few ulps of ``terms``, which
    BLAS kernels order differently (measured under OpenBLAS's Sandybridge kernels:
    2.5e-11 relative in the statistics, 1.8e-7 in a log-likelihood of -14558 over
    700 rows of terms of 4.7e6): the responsibilities, and the statistics they weigh,
    move by that relative amount, the log-likelihood by that much per row.
    """
    ulps = 4 * np.finfo(float).eps * terms
    rtol, atol_bound = max(1e-11, ulps), max(1e-9, ulps * rows)
    for key in ("loglik", "wsum", "entropy"):
        assert got[key] == pytest.approx(want[key], rel=1e-11, abs=atol_bound), key
    assert_close(got["nk"], want["nk"], rtol=rtol)
    for key, value in want["stats"].items():
        np.testing.assert_allclose(got["stats"][key], value, rtol=rtol, atol=1e-9)


@pytest.mark.parametrize("name", ["bernoulli", "poisson", "categorical"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("panel", [None, 97])
def test_estep_matches_scipy(name, weighted, panel, rng):
    """Two restarts of different K in one call (shared panels and buffers), a partial last panel."""
    n = 2_003
    family, x, p3, logp3 = draw(name, rng, n, 3)
    p5 = draw_params(name, rng, 5)
    w = rng.uniform(0.2, 3.0, n) if weighted else None
    got = design_estep(family, x, w, [p3, p5], entropy=True, panel=panel)
    assert_record(got[0], reference(name, x, w, p3, logp3))
    assert_record(got[1], reference(name, x, w, p5, log_pmf(name, x, p5)))


@pytest.mark.parametrize("name", ["bernoulli", "poisson", "categorical"])
def test_family_estep_takes_the_design_path_and_leaves_entropy_zero(name, rng):
    family, x, params, logp = draw(name, rng, 600, 4)
    (got,) = family.estep(x, None, [params], None)
    want = reference(name, x, None, params, logp)
    assert got["entropy"] == 0.0
    want["entropy"] = 0.0
    assert_record(got, want)


@pytest.mark.parametrize("dtype", [np.int64, np.float64, np.uint16])
def test_poisson_counts_of_any_dtype_and_size(dtype, rng):
    """Counts beyond the log-factorial table (and float counts) take gammaln; the table the rest."""
    family = PoissonFamily()
    x = draw_rows("poisson", rng, 500, dtype)
    x[::7, 1] = 65_535 if dtype == np.uint16 else 70_000
    z = np.concatenate([x, np.ones((len(x), 1))], axis=1)  # the design: the counts and a ones column
    w = rng.uniform(0.5, 2.0, len(x))
    log_factorials = gammaln(x.astype(np.float64) + 1.0).sum(1)
    assert_close(family.design_constant(x, z, w), -w @ log_factorials, rtol=1e-13)
    assert_close(family.design_constant(x, z, None), -log_factorials.sum(), rtol=1e-13)
    small = draw_rows("poisson", rng, 300, dtype)
    zs = np.concatenate([small, np.ones((len(small), 1))], axis=1)
    np.testing.assert_allclose(family.design_constant(small, zs, None),
                               -gammaln(small.astype(np.float64) + 1.0).sum(), rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, bool])
@pytest.mark.parametrize("columns", [slice(None), slice(0, 3)])
def test_poisson_one_byte_counts_in_pairs(dtype, columns, rng):
    """One-byte counts are looked up two at a time (even width, contiguous), else one at a time."""
    family = PoissonFamily()
    x = np.minimum(rng.poisson(30.0, (257, 6)), 127).astype(dtype)[:, columns]
    z = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    w = rng.uniform(0.5, 2.0, len(x))
    log_factorials = gammaln(x.astype(np.float64) + 1.0).sum(1)
    assert_close(family.design_constant(x, z, None), -log_factorials.sum(), rtol=1e-13)
    assert_close(family.design_constant(x, z, w), -w @ log_factorials, rtol=1e-13)


def test_empty_chunk(rng):
    family, x, params, _ = draw("categorical", rng, 10, 3)
    (got,) = family.estep(x[:0], None, [params], None)
    assert got["loglik"] == 0.0 and got["wsum"] == 0.0
    assert not got["nk"].any() and got["stats"]["counts"].shape == (3, sum(SIZES)) and not got["stats"]["counts"].any()


def test_threads_keep_their_own_buffers(rng):
    """Each thread reuses its own buffers: E-steps run concurrently give bitwise the serial records."""
    cases = [draw(name, np.random.default_rng(seed), 5_000 + 37 * seed, 3 + seed % 3)[:3]
             for seed, name in enumerate(["bernoulli", "poisson", "categorical"] * 3)]

    def run(case):
        family, x, params = case
        return design_estep(family, x, None, [params], panel=512)

    serial = [run(case) for case in cases]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            for got, want in zip(pool.map(run, cases), serial):
                np.testing.assert_array_equal(got[0]["nk"], want[0]["nk"])
                for key in want[0]["stats"]:
                    np.testing.assert_array_equal(got[0]["stats"][key], want[0]["stats"][key])
                assert got[0]["loglik"] == want[0]["loglik"]


def test_buffer_grows_and_is_reused():
    a = buffer("test-buffer", (4, 3))
    b = buffer("test-buffer", (2, 3))
    assert np.shares_memory(a, b) and b.flags.c_contiguous
    c = buffer("test-buffer", (10, 10))
    assert c.shape == (10, 10) and not np.shares_memory(a, c)


def test_panel_rows_depend_on_the_width_only():
    assert panel_rows(16) == 16384 and panel_rows(80) == 8192
    assert panel_rows(100_000) == 1024 and panel_rows(1) == 16384


def test_far_components_are_floored_not_nan(rng):
    """Log-densities 10^4 apart: responsibilities of the far component are ~exp(-600), the record finite."""
    family = PoissonFamily()
    x = np.concatenate([rng.poisson(1.0, (300, 4)), rng.poisson(3_000.0, (300, 4))]).astype(np.int64)
    params = {"rates": np.array([[1.0] * 4, [3_000.0] * 4]), "weights": np.array([0.5, 0.5])}
    (got,) = design_estep(family, x, None, [params], panel=128)
    want = reference("poisson", x, None, params, log_pmf("poisson", x, params))
    want["entropy"] = 0.0
    assert_record(got, want)
    assert_close(got["nk"], [300, 300], rtol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_poisson_estep_with_counts_beyond_the_table(weighted, rng):
    """Counts of 2**16 and more: the log-factorials from gammaln of the design's columns, every one of them."""
    family = PoissonFamily()
    x = rng.poisson(70_000.0, (700, 3)).astype(np.int64)
    x[:, 0] = rng.poisson(2.0, 700)
    params = {"rates": np.array([[2.0, 7e4, 7e4], [3.0, 6.9e4, 7.1e4]]), "weights": np.array([0.3, 0.7])}
    w = rng.uniform(0.5, 2.0, len(x)) if weighted else None
    (got,) = design_estep(family, x, w, [params], panel=256)
    want = reference("poisson", x, w, params, log_pmf("poisson", x, params))
    want["entropy"] = 0.0
    rates = params["rates"]  # each row's largest sum of |x log(rate)| + rate + log(x!) over components
    terms = float((x @ np.abs(np.log(rates)).T + rates.sum(1) + gammaln(x + 1.0).sum(1, keepdims=True)).max())
    assert_record(got, want, terms=terms, rows=len(x) if w is None else float(w.sum()))
