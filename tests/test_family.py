"""The family protocol: a family defined outside dask-em runs on the whole engine."""

import ast
import os
import pathlib
import runpy
import subprocess
import threading
import sys

import numpy as np
import pytest

import dask_em
from dask_em.family import Family
from conftest import assert_close

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_family.py"


@pytest.fixture(scope="module")
def example():
    return runpy.run_path(str(EXAMPLE), run_name="custom_family_example")


def family_source() -> str:
    text = EXAMPLE.read_text()
    start = text.index("@dataclass(frozen=True)")
    return text[start : text.index("# ----", start)].rstrip() + "\n"


def test_the_example_family_is_short_and_in_the_docs():
    source = family_source()
    assert len(source.splitlines()) < 40
    guide = (ROOT / "docs" / "families.md").read_text()
    assert source in guide, "docs/families.md shows examples/custom_family.py's family verbatim"
    gallery = (ROOT / "examples" / "gallery" / "plot_custom_family.py").read_text()
    assert source in gallery, "the gallery runs examples/custom_family.py's family verbatim"


def test_example_family_recovers_its_rates(example):
    model = example["main"]()
    order = np.argsort(model.rates_[:, 0])
    assert_close(model.rates_[order], [[0.5, 5.0], [8.0, 0.3]], rtol=0.05)
    np.testing.assert_allclose(model.weights_[order], [0.5, 0.5], atol=0.02)
    assert model.converged_ and len(model.restarts_) == 2
    # every method of the estimator works for a user family
    X, labels = model.sample(500)
    assert X.shape == (500, 2) and (X >= 0).all() and labels.shape == (500,)
    assert model.predict_proba(X).shape == (500, 2)
    assert model.bic(X) == pytest.approx(-2 * model.score(X) * 500 + (4 + 1) * np.log(500), rel=1e-12)


def test_example_family_equals_the_closed_form(example):
    """One component: EM's answer is the maximum-likelihood rate 1 / mean, per feature."""
    rng = np.random.default_rng(3)
    X = rng.exponential([2.0, 0.25], size=(5000, 2))
    w = rng.uniform(0.5, 2.0, size=5000)
    model = dask_em.Mixture(example["Exponential"](), 1, random_state=0).fit(X, sample_weight=w)
    assert_close(model.rates_[0], w.sum() / (w @ X), rtol=1e-12)
    expected = np.log(model.rates_[0]).sum() - X @ model.rates_[0]
    assert_close(model.score_samples(X), expected, rtol=1e-12)


def test_example_family_on_a_process_cluster():
    """As in a notebook: the class lives in __main__ and reaches the workers by value."""
    out = subprocess.run(
        [sys.executable, str(EXAMPLE), "--cluster"], capture_output=True, text=True, timeout=240, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rates:" in out.stdout and "weights:" in out.stdout


def test_user_family_checkpoint_and_store(example, tmp_path):
    Exponential = example["Exponential"]
    X = np.random.default_rng(0).exponential([1.0, 3.0], size=(2000, 2))
    kw = dict(n_init=2, max_iter=6, tol=0, random_state=0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = dask_em.Mixture(Exponential(), 2, **kw).fit(X)
        ck = str(tmp_path / "ck.npz")
        dask_em.Mixture(Exponential(), 2, **{**kw, "max_iter": 2}).fit(X, checkpoint=ck)
        resumed = dask_em.Mixture(Exponential(), 2, **kw).fit(X, checkpoint=ck, resume=True)
    np.testing.assert_array_equal(resumed.rates_, whole.rates_)
    dask_em.save(whole, tmp_path / "m.zarr")
    with pytest.raises(ValueError, match=r"user-defined family .*Exponential.*pass the family: dask_em.load\(path, family=MyFamily"):
        dask_em.load(tmp_path / "m.zarr")
    back = dask_em.load(tmp_path / "m.zarr", family=Exponential())
    np.testing.assert_array_equal(back.predict_proba(X), whole.predict_proba(X))
    with pytest.raises(ValueError, match="holds a 'exponential' model"):
        dask_em.load(tmp_path / "m.zarr", family=dask_em.PoissonFamily())


def test_an_incomplete_family_is_refused_before_any_work():
    class Half(Family):
        name = "half"

        def log_prob(self, x, params):
            return np.zeros((len(x), len(params["weights"])))

    with pytest.raises(TypeError, match="the family Half does not define check_rows, m_step, n_parameters, sample, chunk_stats"):
        dask_em.Mixture(Half(), 2).fit(np.zeros((10, 2)))


def test_the_engine_modules_know_no_family():
    """The engine, runner, starts, restarts, checkpoints and store import the protocol, never a family module."""
    for module in ("engine", "runner", "starts", "restarts", "checkpoint", "family", "store", "progress"):
        tree = ast.parse((ROOT / "dask_em" / f"{module}.py").read_text())
        imported = {(node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {
            alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        }
        assert not {"gaussian", "discrete"} & {name.split(".")[-1] for name in imported}, module


# ---------------------------------------------------------------------------
# the shared kernels' helpers: gemm_nt, log_normalize, core_caches
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "m, n, p", [(8, 33, 8192), (4, 9, 10007), (2, 7, 1000), (3, 13, 130), (8, 153, 4096), (4, 5, 40)]
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gemm_nt_is_the_product_of_strided_panels(m, n, p, dtype, rng):
    """``a @ b.T`` on a panel view of a wider buffer, whether split into batches (small outputs) or not."""
    from dask_em.family import gemm_nt

    a = rng.standard_normal((m, p)).astype(dtype)
    wide = rng.standard_normal((n, p + 37)).astype(dtype)
    b = wide[:, :p]  # as the E-step's design panels: a view of a longer buffer
    got = gemm_nt(a, b)
    ref = a.astype(np.float64) @ b.astype(np.float64).T
    assert got.shape == (m, n) and got.dtype in (dtype, np.float64)  # batches are summed in float64
    # Sums of p products of O(1) values: round-off of about sqrt(p) eps of the dtype in each entry.
    atol = 50 * np.sqrt(p) * np.finfo(dtype).eps
    np.testing.assert_allclose(got, ref, rtol=0, atol=atol)


def test_log_normalize_is_responsibilities_bitwise(rng):
    """The GIL-lean log-sum-exp gives the same bits as ``responsibilities``, -inf and NaN columns included."""
    from scipy.special import logsumexp

    from dask_em.family import log_normalize, responsibilities

    wlp = rng.standard_normal((8, 1000)) * 50
    wlp[:, 3] = -np.inf  # every component impossible: NaN, which the engine reports
    wlp[2, 5] = np.nan
    wlp[:, 7] = [-2000.0] + [-1.0] * 7  # below the exp floor
    with np.errstate(invalid="ignore", over="ignore"):
        log_a, resp_a = log_normalize(wlp.copy())
    log_b, resp_b = responsibilities(wlp.copy())
    np.testing.assert_array_equal(log_a, log_b)
    np.testing.assert_array_equal(resp_a, resp_b)
    ok = np.isfinite(wlp).all(0)
    np.testing.assert_allclose(log_a[ok], logsumexp(wlp[:, ok], axis=0), rtol=1e-14)
    assert np.isnan(log_a[3]) and np.isnan(log_a[5])


def test_core_caches_are_read_from_the_machine():
    """L2 per core and the core's share of the last level: positive, the share at least the L2."""
    from dask_em._machine import _cpus, _size, core_caches

    l2, share = core_caches()
    assert l2 > 0 and share >= l2
    assert _size("512K\n") == 2**19 and _size("16384K") == 2**24 and _size("2M") == 2**21
    assert _cpus("0-1\n") == 2 and _cpus("0-3,8-11") == 8 and _cpus("5") == 1
    for entry in pathlib.Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):  # Linux: what it reports
        if (entry / "level").read_text().strip() == "2" and (entry / "type").read_text().strip() != "Instruction":
            assert l2 == _size((entry / "size").read_text())


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64, np.uint8])
def test_work_arrays_start_on_a_cache_line(dtype):
    """aligned_empty and every thread's work arrays start on 64 bytes (numpy's own start 16 bytes past a
    page), at every size and after growing; a view of the asked shape and dtype, writable, its own memory."""
    from dask_em._machine import ALIGN_BYTES, aligned_empty
    from dask_em.family import work_array

    dt = np.dtype(dtype)
    for size in (1, 3, 17, 4096, 300_001):
        a = aligned_empty(size, dt)
        assert a.shape == (size,) and a.dtype == dt and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % ALIGN_BYTES == 0
        a[:] = 1
        assert (a == 1).all()
    assert aligned_empty(8, np.float64, align=4096).ctypes.data % 4096 == 0
    name = f"test-aligned-{dt.char}"
    for shape in ((5, 3), (2, 100_000), (7,), (3, 4, 5)):  # grows, then views of the grown array
        w = work_array(name, shape, dt)
        assert w.shape == shape and w.dtype == dt and w.flags.c_contiguous
        assert w.ctypes.data % ALIGN_BYTES == 0
    seen = []
    thread = threading.Thread(target=lambda: seen.append(work_array(name, (4, 4), dt).ctypes.data % ALIGN_BYTES))
    thread.start()
    thread.join()
    assert seen == [0]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_local_threads_and_chunks_follow_the_cores_this_process_may_use():
    """A process pinned to one core (as a container's cpuset or CPU limit leaves it) runs its direct rounds on one
    thread and chunks for one core, as dask's own pool does, not for every core of the node."""
    code = (
        "import os\n"
        "os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
        "import dask.system\n"
        "from dask_em import engine, io\n"
        "from dask_em._machine import local_cores\n"
        "print(os.cpu_count(), local_cores(), dask.system.CPU_COUNT, engine._workers(),"
        " io.auto_row_chunks(100_000, 16, 8))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    _, mine, dasks, workers, rows = (int(v) for v in out.stdout.split())
    assert mine == dasks == workers == 1
    assert rows == 50_000  # two chunks for its one core (for two cores four of 25,000, for 16 cores 4096-row ones)
    from dask_em._machine import local_cores

    assert 1 <= local_cores() <= len(os.sched_getaffinity(0))  # fewer where a cgroup quota is set
