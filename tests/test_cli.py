"""The dask-em command: click's runner, real subprocesses, kills, SIGTERM, a real scheduler."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import dask_em
from dask_em import checkpoint as ckpt
from dask_em.cli import main

pytestmark = pytest.mark.timeout(240)


def run(*args, **kw):
    result = CliRunner().invoke(main, [str(a) for a in args], **kw)
    return result


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    """A 60,000 x 4 mixture written by `dask-em generate`, in 12 chunks."""
    path = tmp_path_factory.mktemp("data") / "points.zarr"
    result = run("generate", path, "-n", 60_000, "-d", 4, "-k", 4, "--seed", 3, "--chunk-rows", 5000)
    assert result.exit_code == 0, result.output
    return path


def test_generate_writes_the_mixture_out_of_core(points):
    arr = zarr.open_array(points, mode="r")
    assert arr.shape == (60_000, 4) and arr.chunks == (5000, 4)
    truth = arr.attrs["dask_em_truth"]
    assert len(truth["weights"]) == 4 and np.isclose(sum(truth["weights"]), 1)
    # Generated chunk by chunk from (seed, chunk): the same as the library's lazy array.
    from dask_em.datasets import make_mixture

    x, _, _ = make_mixture(60_000, 4, 4, chunk_rows=5000, seed=3)
    np.testing.assert_array_equal(arr[:5000], x[:5000].compute())


def test_fit_info_predict_score(points, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("components: 4\nn-init: 2\nmax-iter: 50\nseed: 1\nchunk-rows: 5000\ncovariance-type: diag\n")
    model = tmp_path / "m.zarr"
    # The flag overrides the config's covariance type.
    result = run("fit", points, "-o", model, "--config", config, "--covariance-type", "full", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["n_components"] == 4 and summary["covariance_type"] == "full"
    assert len(summary["restarts"]) == 2 and summary["converged"]

    reference = dask_em.GaussianMixture(4, n_init=2, max_iter=50, random_state=1).fit(str(points), chunk_rows=5000)
    loaded = dask_em.load(model)
    np.testing.assert_array_equal(loaded.means_, reference.means_)

    info = run("info", model, "--json")
    assert info.exit_code == 0
    data = json.loads(info.stdout)
    assert data["training_data"]["source"] == str(points)
    assert len(data["restarts"][0]["history"]) == data["restarts"][0]["n_iter"]
    assert "covariance" in run("info", model).stdout

    labels = tmp_path / "labels.zarr"
    assert run("predict", model, points, "-o", labels, "--chunk-rows", 5000).exit_code == 0
    written = zarr.open_array(labels, mode="r")
    assert written.chunks == (5000,)
    np.testing.assert_array_equal(written[:], reference.predict(zarr.open_array(points)[:]))
    proba = tmp_path / "proba.zarr"
    assert run("predict", model, points, "-o", proba, "--proba").exit_code == 0
    assert zarr.open_array(proba, mode="r").shape == (60_000, 4)

    scored = json.loads(run("score", model, points, "--json").stdout)
    assert scored["mean_log_likelihood"] == pytest.approx(reference.score(str(points)), rel=1e-12)
    assert scored["bic"] == pytest.approx(reference.bic(str(points)), rel=1e-12)
    assert scored["aic"] == pytest.approx(reference.aic(str(points)), rel=1e-12)


def test_not_converged_exit_code(points, tmp_path):
    result = run("fit", points, "-o", tmp_path / "m.zarr", "-k", 4, "--max-iter", 1, "--fail-on-no-converge", "-q")
    assert result.exit_code == 3
    assert "did not converge" in result.stderr
    assert (tmp_path / "m.zarr").exists()  # the model is still written


@pytest.fixture
def a_model(points, tmp_path):
    path = tmp_path / "m.zarr"
    assert run("fit", points, "-o", path, "-k", 2, "-q").exit_code == 0
    return path


def bad_cases(points, a_model, tmp_path):
    other = tmp_path / "three.zarr"
    zarr.create_array(other, shape=(10, 3), chunks=(5, 3), dtype="f8")[:] = 0
    group = tmp_path / "group.zarr"
    zarr.open_group(group, mode="w").create_array("x", data=np.zeros((10, 4)))
    out = tmp_path / "out.zarr"
    return [
        (["fit", tmp_path / "missing.zarr", "-o", out], "no Zarr array or group at"),
        (["fit", group, "-o", out, "--variable", "nope"], "variable 'nope' not found"),
        (["fit", group, "-o", out], "is a Zarr group, not an array"),
        (["fit", points, "-o", out, "-k", 0], "--components/-k must be an int in the range [1, inf). Got 0 instead."),
        (["fit", points, "-o", out, "-k", 2, "--stepwise-passes", -1],
         "--stepwise-passes must be an int in the range [0, inf). Got -1 instead."),
        (["fit", points, "-o", out, "-k", 2, "--stepwise-passes", 100],
         "--stepwise-passes must be 0 or below --max-iter=100"),
        (["fit", points, "-o", a_model, "-k", 2], "exists; pass --overwrite"),
        (["fit", points], "no --output"),
        (["predict", points, points, "-o", out], "not a dask-em model store"),
        (["predict", tmp_path / "nothing", points, "-o", out], "not a dask-em model store"),
        (["predict", a_model, other, "-o", out], "X has 3 features, but GaussianMixture was fitted with 4"),
        (["predict", a_model, points, "-o", a_model], "exists; pass --overwrite"),
        (["score", a_model, tmp_path / "missing.zarr"], "no Zarr array or group at"),
        (["score", group, points], "Zarr group but not a dask-em model store"),
        (["info", points], "not a dask-em model store"),
        (["generate", out, "-n", 0, "-d", 2, "-k", 1], "--samples must be >= 1"),
        (["generate", points, "-n", 10, "-d", 2, "-k", 1], "exists; pass --overwrite"),
    ]


def test_bad_input_one_line_no_traceback_nothing_written(points, a_model, tmp_path):
    for args, message in bad_cases(points, a_model, tmp_path):
        before = sorted(p.name for p in tmp_path.iterdir())
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output
        lines = [line for line in result.stderr.splitlines() if line.startswith("dask-em: error:")]
        assert len(lines) == 1, result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == before, args


@pytest.mark.parametrize("how", ["flag", "config"])
def test_fit_stepwise_passes_is_the_librarys_fit(tmp_path, how):
    X = np.random.default_rng(4).normal(size=(3000, 3)) + np.repeat(np.eye(3) * 4, 1000, axis=0)
    data = tmp_path / "x.zarr"
    zarr.create_array(data, shape=X.shape, chunks=(250, 3), dtype="f8")[:] = X
    settings = dict(covariance_type="diag", random_state=2, max_iter=200, accelerate="squarem", stepwise_passes=2)
    model = tmp_path / "m.zarr"
    args = ["fit", data, "-o", model, "-k", 3, "--covariance-type", "diag", "--seed", 2, "--max-iter", 200,
            "--accelerate", "squarem", "--chunk-rows", 250, "-q"]
    if how == "flag":
        args += ["--stepwise-passes", 2]
    else:
        config = tmp_path / "job.yaml"
        config.write_text("stepwise-passes: 2\n")
        args += ["--config", config]
    result = run(*args)
    assert result.exit_code == 0, result.output
    reference = dask_em.GaussianMixture(3, **settings).fit(str(data), chunk_rows=250)
    loaded = dask_em.load(model)
    assert loaded.stepwise_passes == 2 and loaded.n_iter_ == reference.n_iter_
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(reference, name))
    assert loaded.lower_bound_ == reference.lower_bound_
    # Stepwise passes change the path: the plain fit from the same seed is not this one.
    plain = dask_em.GaussianMixture(3, **{**settings, "stepwise_passes": 0}).fit(str(data), chunk_rows=250)
    assert plain.n_passes_ != reference.n_passes_ or not np.array_equal(plain.means_, reference.means_)


def test_bad_config(points, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("components: 2\nbogus: 1\n")
    result = run("fit", points, "-o", tmp_path / "m.zarr", "--config", config)
    assert result.exit_code == 2 and "unknown keys ['bogus']" in result.output


# ---------------------------------------------------------------------------
# Real processes: kill, SIGTERM, resume
# ---------------------------------------------------------------------------

FIT_ARGS = ["-k", 4, "--n-init", 2, "--seed", 5, "--tol", 0, "--max-iter", 12, "--chunk-rows", 5000]


# The CLI in a child process whose checkpoint writes pause between the temporary file and
# the rename, so a test can kill it mid-write (fault injection lives here, not in the library).
SLOW_CHECKPOINT_CLI = (
    "import sys, time; import dask_em.checkpoint as c; replace = c.replace_file; delay = float(sys.argv.pop(1)); "
    "c.replace_file = lambda tmp, final: (time.sleep(delay), replace(tmp, final)); "
    "from dask_em.cli import main; sys.argv[0] = 'dask-em'; main()"
)


def start_fit(points, model, checkpoint, *extra, env=None, write_delay=None):
    cli = [sys.executable, "-m", "dask_em"] if write_delay is None else [sys.executable, "-c", SLOW_CHECKPOINT_CLI, write_delay]
    args = [*cli, "fit", points, "-o", model, *FIT_ARGS, "--json", *extra]
    if checkpoint:
        args += ["--checkpoint", checkpoint]
    return subprocess.Popen(
        [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for_iteration(proc, k):
    """Read JSON progress until every restart reported iteration k (k=0: the start)."""
    seen = set()
    for line in proc.stderr:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if k == 0 and event.get("event") == "started":
            return
        if event.get("event") == "iteration" and event["iteration"] >= k:
            seen.add(event["restart"])
            if len(seen) == 2:
                return
    raise AssertionError(f"the fit ended before iteration {k}: {proc.wait()}")


@pytest.fixture(scope="module")
def uninterrupted(points, tmp_path_factory):
    model = tmp_path_factory.mktemp("ref") / "m.zarr"
    proc = start_fit(points, model, None)
    proc.communicate(timeout=120)
    assert proc.returncode == 0
    return dask_em.load(model)


def assert_same_model(path, ref):
    got = dask_em.load(path)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    assert got.lower_bounds_ == ref.lower_bounds_
    assert [r["history"] for r in got.restarts_] == [r["history"] for r in ref.restarts_]


@pytest.mark.parametrize("k", [0, 1, 4])
def test_sigkill_then_resume_equals_uninterrupted(k, points, tmp_path, uninterrupted):
    model, checkpoint = tmp_path / "m.zarr", tmp_path / "ck.npz"
    # Each checkpoint write pauses 0.2 s: the fit outlasts the kill on a slow, loaded machine too.
    proc = start_fit(points, model, checkpoint, write_delay=0.2)
    wait_for_iteration(proc, k)
    proc.kill()
    proc.wait()
    assert not model.exists()
    resumed = start_fit(points, model, checkpoint, "--resume")
    resumed.communicate(timeout=120)
    assert resumed.returncode == 0
    assert_same_model(model, uninterrupted)


def test_sigkill_during_a_checkpoint_write(points, tmp_path, uninterrupted):
    model, checkpoint = tmp_path / "m.zarr", tmp_path / "ck.npz"
    # Each checkpoint write pauses 1.5 s between its temporary file and the rename.
    proc = start_fit(points, model, checkpoint, write_delay=1.5)
    wait_for_iteration(proc, 2)
    time.sleep(0.5)  # inside the write of iteration 2's checkpoint
    proc.kill()
    proc.wait()
    meta, _ = ckpt.read(str(checkpoint))  # the previous checkpoint, whole
    assert max(r["n_iter"] for r in meta["restarts"]) == 1
    assert any(p.name.startswith(".ck.npz.tmp") for p in tmp_path.iterdir())  # the torn write, beside it
    resumed = start_fit(points, model, checkpoint, "--resume")
    resumed.communicate(timeout=120)
    assert resumed.returncode == 0
    assert_same_model(model, uninterrupted)


def test_sigterm_checkpoints_and_exits_preempted(points, tmp_path, uninterrupted):
    model, checkpoint = tmp_path / "m.zarr", tmp_path / "ck.npz"
    # Each checkpoint write pauses 0.2 s: the fit is still running when the signal lands, however slow the machine.
    proc = start_fit(points, model, checkpoint, write_delay=0.2)
    wait_for_iteration(proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "preempted" in err and "--resume" in err
    meta, _ = ckpt.read(str(checkpoint))
    done = max(r["n_iter"] for r in meta["restarts"])
    assert 2 <= done < 12
    assert not model.exists()
    resumed = start_fit(points, model, checkpoint, "--resume")
    resumed.communicate(timeout=120)
    assert resumed.returncode == 0
    assert_same_model(model, uninterrupted)


def test_resume_against_other_data_refuses(points, tmp_path):
    checkpoint = tmp_path / "ck.npz"
    assert run("fit", points, "-o", tmp_path / "a.zarr", *FIT_ARGS[:4], "--max-iter", 2, "--checkpoint", checkpoint, "-q").exit_code == 0
    other = tmp_path / "other.zarr"
    assert run("generate", other, "-n", 30_000, "-d", 4, "-k", 4, "--chunk-rows", 5000).exit_code == 0
    result = run("fit", other, "-o", tmp_path / "b.zarr", *FIT_ARGS[:4], "--checkpoint", checkpoint, "--resume", "-q")
    assert result.exit_code == 2
    assert "was written for other data" in result.stderr
    assert "shape: checkpoint [60000, 4] vs input [30000, 4]" in result.stderr
    result = run("fit", points, "-o", tmp_path / "b.zarr", "-k", 3, "--n-init", 2, "--seed", 5,
                 "--checkpoint", checkpoint, "--resume", "-q")
    assert result.exit_code == 2 and "written with n_components=4, but this fit has n_components=3" in result.stderr
    assert not (tmp_path / "b.zarr").exists()


# ---------------------------------------------------------------------------
# A real `dask scheduler` and two `dask worker` processes, as on Kubernetes
# ---------------------------------------------------------------------------


def test_fit_on_scheduler_from_environment(points, tmp_path, dask_cluster_processes, uninterrupted):
    model = tmp_path / "m.zarr"
    proc = start_fit(points, model, tmp_path / "ck.npz", env={"DASK_SCHEDULER_ADDRESS": dask_cluster_processes})
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    # The same model as the threaded run, bitwise: same seed, same chunking.
    assert_same_model(model, uninterrupted)
    from distributed import Client

    with Client(dask_cluster_processes) as client:
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "em-estep" in prefixes and "em-mstep" in prefixes


@pytest.mark.parametrize("family, dtype, extra", [
    ("bernoulli", "bool", []),
    ("poisson", "uint16", ["--pseudo-count", "0.01"]),
    ("categorical", "int8", ["--n-categories", "3,5,2,4"]),
])
def test_fit_other_families(family, dtype, extra, tmp_path):
    """--family end to end: fit, info, predict, score, against the library on the same store."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 6000)
    if family == "bernoulli":
        X = rng.random((6000, 4)) < np.array([[0.9, 0.1, 0.8, 0.2], [0.1, 0.9, 0.2, 0.8], [0.5, 0.5, 0.9, 0.9]])[labels]
    elif family == "poisson":
        X = rng.poisson(np.array([[1, 9, 2, 5], [8, 1, 6, 1], [4, 4, 12, 12]])[labels])
    else:
        X = np.stack([(labels + j) % c for j, c in enumerate((3, 5, 2, 4))], 1)
        X[rng.random(X.shape) < 0.1] = 0
    store = tmp_path / "x.zarr"
    zarr.create_array(store, shape=X.shape, chunks=(1000, 4), dtype=dtype)[:] = X.astype(dtype)
    model = tmp_path / "m.zarr"
    result = run("fit", store, "-o", model, "-k", 3, "--family", family, "--n-init", 2, "--seed", 0, *extra, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["family"] == family and summary["covariance_type"] is None

    cls = {"bernoulli": dask_em.BernoulliMixture, "poisson": dask_em.PoissonMixture,
           "categorical": dask_em.CategoricalMixture}[family]
    kw = {"pseudo_count": 0.01} if family == "poisson" else {}
    if family == "categorical":
        kw["n_categories"] = (3, 5, 2, 4)
    reference = cls(3, n_init=2, random_state=0, **kw).fit(str(store))
    loaded = dask_em.load(model)
    assert type(loaded) is cls
    np.testing.assert_array_equal(loaded.weights_, reference.weights_)
    assert run("info", model).stdout.splitlines()[1].split() == ["family:", family]

    labels_out = tmp_path / "labels.zarr"
    assert run("predict", model, store, "-o", labels_out).exit_code == 0
    np.testing.assert_array_equal(zarr.open_array(labels_out, mode="r")[:], reference.predict(X.astype(dtype)))
    scored = json.loads(run("score", model, store, "--json").stdout)
    assert scored["bic"] == pytest.approx(reference.bic(str(store)), rel=1e-12)


def test_family_input_errors_exit_2(tmp_path):
    X = np.zeros((3000, 3), dtype=np.uint8)
    X[::2] = 1
    X[2345, 1] = 7
    store = tmp_path / "x.zarr"
    zarr.create_array(store, shape=X.shape, chunks=(500, 3), dtype="u1")[:] = X
    cases = [
        (["--family", "bernoulli"], r"Bernoulli mixture takes only 0 and 1, but X holds 7 \(feature 1\) in rows"),
        (["--family", "poisson", "--covariance-type", "diag"], "--covariance-type applies to --family gaussian"),
        (["--family", "gaussian", "--pseudo-count", "1"], "--pseudo-count applies to the discrete families"),
        (["--family", "bernoulli", "--compute-dtype", "float32"], "--compute-dtype applies to --family gaussian"),
        (["--family", "bernoulli", "--n-categories", "3"], "--n-categories applies to --family categorical"),
        (["--family", "categorical"], "--family categorical needs --n-categories"),
        (["--family", "categorical", "--n-categories", "2,x"], "--n-categories takes an int or a list"),
        (["--family", "categorical", "--n-categories", "2,2"], "n_categories has 2 entries but X has 3 features"),
    ]
    for args, match in cases:
        out = tmp_path / "m.zarr"
        result = run("fit", store, "-o", out, "-k", 2, "-q", *args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dask-em: error:"), result.stderr
        assert re.search(match, lines[0]), (match, lines[0])
        assert not out.exists()


@pytest.mark.parametrize("family, extra", [("bernoulli", []), ("poisson", []), ("categorical", ["--n-categories", "4"])])
def test_generate_and_fit_each_family(family, extra, tmp_path):
    """generate --family writes the family's natural dtype; fit --family recovers the truth it records."""
    from scipy.optimize import linear_sum_assignment

    store, model = tmp_path / "x.zarr", tmp_path / "m.zarr"
    result = run("generate", store, "-n", 20_000, "-d", 6, "-k", 3, "--seed", 2, "--chunk-rows", 4000,
                 "--family", family, *extra)
    assert result.exit_code == 0, result.output
    arr = zarr.open_array(store, mode="r")
    assert arr.dtype == {"bernoulli": np.dtype(bool), "poisson": np.dtype("uint16"), "categorical": np.dtype("int8")}[family]
    truth = arr.attrs["dask_em_truth"]
    assert truth["family"] == family
    result = run("fit", store, "-o", model, "-k", 3, "--family", family, "--n-init", 3, "--seed", 0, "-q", *extra)
    assert result.exit_code == 0, result.output
    fitted = dask_em.load(model)
    key = "rates" if family == "poisson" else "probabilities"
    true, got = np.asarray(truth[key]), fitted._params[key]
    rows, cols = linear_sum_assignment(((got[:, None] - true[None]) ** 2).sum(-1))
    # Within 5 standard errors from each component's expected n w_k rows: sqrt(rate / n_k) for a
    # Poisson rate (rates 0.5-50: 0.006-0.11), sqrt(p (1 - p) / n_k) for a probability; never
    # looser than the former absolute 0.6 (Poisson) and 0.03.
    w = np.asarray(truth["weights"])[cols]
    n_k = 20_000 * w[:, None]
    se = np.sqrt((true[cols] if family == "poisson" else true[cols] * (1 - true[cols])) / n_k)
    np.testing.assert_array_less(np.abs(got[rows] - true[cols]), np.minimum(0.6 if family == "poisson" else 0.03, 5 * se))
    np.testing.assert_array_less(np.abs(fitted.weights_[rows] - w), np.minimum(0.02, 5 * np.sqrt(w * (1 - w) / 20_000)))


def test_select_a_family(tmp_path):
    store, model, table = tmp_path / "x.zarr", tmp_path / "best.zarr", tmp_path / "t.json"
    assert run("generate", store, "-n", 12_000, "-d", 8, "-k", 3, "--family", "bernoulli", "--seed", 1).exit_code == 0
    result = run("select", store, "-o", model, "--family", "bernoulli", "-k", "1-5", "--n-init", 2, "--seed", 0,
                 "--table", table)
    assert result.exit_code == 0, result.output
    assert "best: K=3 bernoulli" in result.stdout
    assert type(dask_em.load(model)).__name__ == "BernoulliMixture"
    rows = json.loads(table.read_text())
    assert [r["n_components"] for r in rows] == [1, 2, 3, 4, 5] and "covariance_type" not in rows[0]
    bad = run("select", store, "-o", tmp_path / "x2.zarr", "--family", "poisson", "--covariance-types", "full")
    assert bad.exit_code == 2 and "--covariance-types applies to --family gaussian" in bad.stderr


def test_fit_with_the_prior_and_the_hierarchical_start(points, tmp_path):
    model = tmp_path / "m.zarr"
    result = run("fit", points, "-o", model, "-k", 4, "--prior", "default", "--init-params", "hierarchical",
                 "--max-iter", 20, "--seed", 1, "--chunk-rows", 5000, "--quiet")
    assert result.exit_code == 0, result.output
    loaded = dask_em.load(model)
    assert loaded.prior == "default" and loaded.init_params == "hierarchical"
    reference = dask_em.GaussianMixture(4, prior="default", init_params="hierarchical", max_iter=20,
                                        random_state=1).fit(str(points), chunk_rows=5000)
    np.testing.assert_array_equal(loaded.means_, reference.means_)
    np.testing.assert_array_equal(loaded.prior_["scale"], reference.prior_["scale"])
    refused = run("fit", points, "-o", tmp_path / "b.zarr", "--family", "poisson", "--prior", "default")
    assert refused.exit_code != 0 and "--prior applies to --family gaussian" in refused.output


def test_fit_in_float32_is_the_librarys_float32_fit(points, tmp_path):
    model = tmp_path / "m.zarr"
    result = run("fit", points, "-o", model, "-k", 4, "--compute-dtype", "float32", "--max-iter", 20,
                 "--seed", 1, "--chunk-rows", 5000, "--quiet")
    assert result.exit_code == 0, result.output
    loaded = dask_em.load(model)
    assert loaded.compute_dtype == "float32"
    reference = dask_em.GaussianMixture(4, compute_dtype="float32", max_iter=20, random_state=1).fit(
        str(points), chunk_rows=5000
    )
    np.testing.assert_array_equal(loaded.means_, reference.means_)


def test_fit_with_emem_is_the_librarys_emem_fit(points, tmp_path):
    # The CLI's --init-strategy emEM: the same restarts (the tree draws among them: 60,000 rows) and
    # the same model as the library's; --init-params with it is refused before anything is read.
    model = tmp_path / "m.zarr"
    result = run("fit", points, "-o", model, "-k", 4, "--init-strategy", "emEM", "--max-iter", 30,
                 "--seed", 2, "--chunk-rows", 5000, "--quiet", "--json")
    assert result.exit_code == 0, result.output
    reference = dask_em.GaussianMixture(4, init_strategy="emEM", max_iter=30, random_state=2).fit(
        str(points), chunk_rows=5000
    )
    from dask_em.starts import TREE_DRAWS

    assert [r["start"] for r in reference.restarts_].count("hierarchical") == TREE_DRAWS
    np.testing.assert_array_equal(dask_em.load(model).means_, reference.means_)
    refused = run("fit", points, "-o", tmp_path / "b.zarr", "-k", 4, "--init-strategy", "emEM",
                  "--init-params", "random")
    assert refused.exit_code == 2 and not (tmp_path / "b.zarr").exists()
    assert "--init-params random applies to --init-strategy single" in refused.stderr


# -- scikit-learn's warm_start and verbose_interval -------------------------------------------


@pytest.fixture(scope="module")
def small_points(tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "points.zarr"
    result = run("generate", path, "-n", 3000, "-d", 3, "-k", 3, "--seed", 4, "--chunk-rows", 1000)
    assert result.exit_code == 0, result.output
    return path


def test_fit_warm_start_continues_a_stored_model_as_the_library(small_points, tmp_path):
    start, model = tmp_path / "start.zarr", tmp_path / "warm.zarr"
    result = run("fit", small_points, "-o", start, "-k", 3, "--seed", 0, "--max-iter", 2, "--verbose-interval", 5, "-q")
    assert result.exit_code == 0, result.output
    stored = dask_em.load(start)
    assert stored.get_params()["tol"] == 1e-3 == dask_em.GaussianMixture().tol  # the estimator's default
    assert stored.verbose_interval == 5 and stored.warm_start is False

    result = run("fit", small_points, "-o", model, "--warm-start", start, "--max-iter", 50)
    assert result.exit_code == 0, result.output
    # Progress every 5 iterations, and the last one.
    shown = [int(m) for m in re.findall(r"restart 0 iteration +(\d+)", result.output)]
    warm = dask_em.load(model)
    assert shown == [i for i in range(1, warm.n_iter_ + 1) if i % 5 == 0 or i == warm.n_iter_]

    reference = dask_em.load(start).set_params(warm_start=True, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference.fit(str(small_points))
    assert warm.get_params() == reference.get_params() and warm.warm_start is True
    assert warm.restarts_[0]["start"] == "warm_start"
    np.testing.assert_array_equal(warm.means_, reference.means_)
    assert warm.n_iter_ == reference.n_iter_


def test_fit_warm_start_refuses_settings_that_define_the_model(small_points, tmp_path):
    start = tmp_path / "start.zarr"
    assert run("fit", small_points, "-o", start, "-k", 3, "--seed", 0, "--max-iter", 2, "-q").exit_code == 0
    result = run("fit", small_points, "-o", tmp_path / "x.zarr", "--warm-start", start, "-k", 4, "--seed", 1)
    assert result.exit_code == 2
    assert re.search(r"--components, --seed: --warm-start .* continues that model", result.output)
    result = run("fit", small_points, "-o", tmp_path / "x.zarr", "--warm-start", tmp_path / "missing.zarr")
    assert result.exit_code == 2 and "not a dask-em model store" in result.output


def test_mclust_models_on_the_command_line(tmp_path):
    store, model, best = tmp_path / "x.zarr", tmp_path / "vev.zarr", tmp_path / "best.zarr"
    assert run("generate", store, "-n", 3000, "-d", 2, "-k", 3, "--seed", 2).exit_code == 0
    fitted = run("fit", store, "-o", model, "-k", 3, "--covariance-type", "VEV", "--seed", 0, "--quiet")
    assert fitted.exit_code == 0, fitted.output
    loaded = dask_em.load(model)
    assert loaded.covariance_type == "VEV" and loaded.covariances_.shape == (3, 2, 2)
    result = run("select", store, "-o", best, "--covariance-types", "mclust", "-k", "1-3", "--seed", 0)
    assert result.exit_code == 0, result.output
    assert "2 log L - p log n" in result.stdout and "Top 3 models based on the BIC criterion" in result.stdout
    assert dask_em.load(best).covariance_type in dask_em.gaussian.GAUSSIAN_COVARIANCE_TYPES
    bad = run("fit", store, "-o", tmp_path / "b.zarr", "--covariance-type", "VVX")
    assert bad.exit_code == 2 and "VVV" in bad.output


# -- what a new user reads: config keys, messages, progress, help -----------------------------


def test_config_takes_every_option_of_fit(small_points, tmp_path):
    from dask_em.cli import _FIT_CONFIG_KEYS, fit

    # Every option of fit can be set in the file, under its long name (dashes or underscores).
    options = {p.opts[0] for p in fit.params if p.name != "config" and p.opts[0].startswith("--")}
    options = {o.removeprefix("--").replace("-", "_") for o in options} - {"storage_option"}
    assert options and options <= _FIT_CONFIG_KEYS, options - _FIT_CONFIG_KEYS
    config, model = tmp_path / "job.yaml", tmp_path / "m.zarr"
    config.write_text("components: 3\ninit-strategy: emEM\ndevice: cpu\nmax_iter: 5\nseed: 0\nquiet: true\n"
                      "json: true\n")
    result = run("fit", small_points, "-o", model, "--config", config)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_components"] == 3  # json: true is --json
    loaded = dask_em.load(model)
    assert loaded.init_strategy == "emEM" and loaded.max_iter == 5


def demo_args():
    return ["demo", "--samples", 20_000, "--features", 2, "--components", 2, "--n-init", 1]


def dashboard_line(stdout):
    (line,) = [line for line in stdout.splitlines() if line.startswith("dashboard:")]
    return line.removeprefix("dashboard:").strip()


def test_demo_on_threads_says_how_to_get_a_dashboard(monkeypatch):
    from dask_em.cli import demo

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    result = run(*demo_args())
    assert result.exit_code == 0, result.output
    line = dashboard_line(result.stdout)
    assert line.startswith("none: this ran on threads of this process") and "DASK_SCHEDULER_ADDRESS" in line
    named = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", line))
    assert named <= {opt for p in demo.params for opt in p.opts}, named  # no option demo lacks


def start_demo(address):
    return subprocess.run(
        [sys.executable, "-m", "dask_em", *map(str, demo_args())], capture_output=True, text=True, timeout=180,
        env={**os.environ, "DASK_SCHEDULER_ADDRESS": address},
    )


def test_demo_on_a_scheduler_without_a_dashboard_says_so(dask_cluster_processes):
    address = dask_cluster_processes  # started with --no-dashboard
    result = start_demo(address)
    assert result.returncode == 0, result.stderr
    assert f"connecting to the scheduler at {address}" in result.stderr
    assert dashboard_line(result.stdout) == f"none: the scheduler at {address} serves no dashboard"
    from distributed import Client

    with Client(address) as client:  # the demo did run there
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "em-estep" in prefixes


def test_demo_on_a_scheduler_prints_its_dashboard():
    pytest.importorskip("bokeh", reason="bokeh is not installed: no scheduler serves a dashboard")
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        result = start_demo(cluster.scheduler_address)
        assert result.returncode == 0, result.stderr
        assert cluster.dashboard_link.startswith("http://127.0.0.1:")
        assert dashboard_line(result.stdout) == cluster.dashboard_link


def test_wrong_feature_count_is_said_once(points, a_model, tmp_path):
    other = tmp_path / "three.zarr"
    zarr.create_array(other, shape=(10, 3), chunks=(5, 3), dtype="f8")[:] = 0
    for args in (["predict", a_model, other, "-o", tmp_path / "out.zarr"], ["score", a_model, other]):
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert result.stderr.count("features, but") == 1, result.stderr
        assert "X has 3 features, but GaussianMixture was fitted with 4 features" in result.stderr
        assert str(other) in result.stderr and "Pass the columns it was fitted on." in result.stderr


def test_info_on_a_data_array_says_what_it_found(points):
    result = run("info", points)
    assert result.exit_code == 2
    assert "holds a Zarr array of shape (60000, 4) (float64), not a dask-em model store" in result.stderr
    assert "`dask-em fit -o PATH` or dask_em.save(model, PATH)" in result.stderr
    assert "already exists" not in result.stderr


def test_one_iteration_and_one_chunk_are_singular(small_points, tmp_path):
    model = tmp_path / "m.zarr"
    result = run("fit", small_points, "-o", model, "-k", 3, "--max-iter", 1, "--seed", 0, "--fail-on-no-converge")
    assert result.exit_code == 3, result.output
    assert "False after 1 iteration\n" in result.stdout and ", 1 iteration, not converged" in result.stdout
    assert "did not converge in 1 iteration;" in result.stderr
    assert not re.search(r"\b1 (iterations|chunks|rows)\b", result.stdout)
    labels = run("predict", model, small_points, "-o", tmp_path / "l.zarr", "--chunk-rows", 3000)
    assert labels.exit_code == 0, labels.output
    assert " in 1 chunk to " in labels.stdout


def test_fit_summary_states_the_chunks_of_its_first_line(tmp_path):
    # A store in 3 chunks of 10,000 rows: read as such, split by the fit where the local cores need more chunks.
    store, model = tmp_path / "x.zarr", tmp_path / "m.zarr"
    assert run("generate", store, "-n", 30_000, "-d", 4, "-k", 2, "--chunk-rows", 10_000).exit_code == 0
    result = run("fit", store, "-o", model, "-k", 2, "--max-iter", 3, "--seed", 0)
    assert result.exit_code == 0, result.output
    (used,) = re.findall(r"fitting 30000 x 4 in (\d+) chunks", result.stderr)
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("training data:")]
    if used == "3":
        assert line.endswith(", 3 chunks of 10000 rows"), line
    else:
        assert re.search(rf", read in 3 chunks of 10000 rows, fitted in {used} chunks of \d+ rows$", line), line
    summary = json.loads(run("fit", store, "-o", model, "-k", 2, "--max-iter", 3, "--seed", 0, "--overwrite",
                             "--json", "-q").stdout)
    assert summary["fitted_row_chunks"][1] == int(used)
    assert summary["training_data"]["row_chunks"] == [10_000, 3]


CANDIDATE = re.compile(r"K=(\d+) (full|diag): lower bound (\S+), (?:not )?converged after \d+ iterations? \([\d.]+ s\)")


def test_select_reports_each_candidate_and_quiet_silences_it(small_points, tmp_path):
    table = tmp_path / "t.json"
    result = run("select", small_points, "-o", tmp_path / "b.zarr", "-k", "1-3", "--covariance-types", "full,diag",
                 "--seed", 0, "--table", table)
    assert result.exit_code == 0, result.output
    lines = [CANDIDATE.fullmatch(line) for line in result.stderr.splitlines() if line.startswith("K=")]
    assert all(lines) and len(lines) == 6, result.stderr
    # A line as each candidate stops iterating (before the scoring pass): its best restart's bound, as the table's.
    rows = {(r["n_components"], r["covariance_type"]): r["lower_bound"] for r in json.loads(table.read_text())}
    shown = {(int(m[1]), m[2]): float(m[3]) for m in lines}
    assert shown.keys() == rows.keys()
    for key, bound in rows.items():
        assert shown[key] == pytest.approx(bound, rel=1e-9)
    quiet = run("select", small_points, "-o", tmp_path / "q.zarr", "-k", "1-2", "--covariance-types", "full",
                "--seed", 0, "-q")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and "best: K=" in quiet.stdout
    as_json = run("select", small_points, "-o", tmp_path / "j.zarr", "-k", "1-2", "--covariance-types", "full",
                  "--seed", 0, "--json")
    events = [json.loads(line) for line in as_json.stderr.splitlines()]
    candidates = [e for e in events if e["event"] == "candidate"]
    assert [(e["n_components"], e["covariance_type"]) for e in candidates] == [(1, "full"), (2, "full")]
    assert all(np.isfinite(e["lower_bound"]) and e["n_iter"] >= 1 and e["seconds"] >= 0 for e in candidates)
    final = json.loads(as_json.stdout)
    assert {r["n_components"]: r["lower_bound"] for r in final["table"]} == {
        e["n_components"]: e["lower_bound"] for e in candidates}


def test_every_option_has_help():
    missing = [(name, p.opts[0]) for name, command in main.commands.items() for p in command.params
               if p.param_type_name == "option" and not p.help]
    assert not missing, missing


def test_help_of_tol_states_the_defaults_in_force():
    from dask_em.registry import estimator_for_family

    def tol(family, **settings):
        n = 10**5  # 1/n_samples within [1e-6, 1e-3]
        return estimator_for_family(family)(2, **settings).tol_in_force(n) * n

    # What the help says, as the estimators apply it (1 stands for 1/n_samples).
    assert tol("gaussian") == tol("bayesian_gaussian") == tol("gaussian", stopping="aitken") == 100
    assert tol("bernoulli") == tol("poisson") == 1 and tol("bernoulli", stopping="change") == 100
    assert tol("gaussian", accelerate="squarem") == tol("gaussian", accelerate="squarem", tol=0.1) == 1
    assert tol("poisson", tol=0.1) == 1
    fit_help = " ".join(run("fit", "--help").stdout.split())
    assert "Default: 1e-3 for gaussian and bayesian_gaussian;" in fit_help
    assert "categorical, 1/n_samples clipped to [1e-6, 1e-3] under aitken and 1e-3 under change" in fit_help
    assert "the threshold is at most 1/n_samples clipped to [1e-6, 1e-3], whatever --tol is" in fit_help
    select_help = run("select", "--help").stdout
    assert "aitken" not in select_help.lower() and "--stopping" not in select_help
    demo_help = " ".join(run("demo", "--help").stdout.split())
    assert "threads of this process, or on the scheduler at DASK_SCHEDULER_ADDRESS" in demo_help


@pytest.mark.parametrize("family, extra, meaning", [
    ("gaussian", [], "(mean log-likelihood per row)"),
    ("gaussian", ["--prior", "default"], "(mean log-likelihood per row, plus the log prior over the rows)"),
    ("bayesian_gaussian", [], "(evidence lower bound, total over the rows)"),
])
def test_the_summary_says_what_the_lower_bound_is(points, tmp_path, family, extra, meaning):
    result = run("fit", points, "-o", tmp_path / "m.zarr", "-k", 2, "--family", family, "--max-iter", 3, *extra)
    assert result.exit_code == 0, result.output
    assert meaning in result.output
    assert meaning in run("info", tmp_path / "m.zarr").output
