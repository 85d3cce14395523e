"""Batch jobs that outlive their cluster: a `dask scheduler` or every `dask worker` killed under a
running `dask-em fit` or `dask-em predict` (real processes on 127.0.0.1), reconnection, exit 75,
resumption."""

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import warnings

import cloudpickle
import numpy as np
import pytest
import zarr
from distributed import Client, WorkerPlugin
from distributed.utils import key_split

import dask_em
from conftest import free_port, mixture

# The plugin below travels to the worker processes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

BIN = os.path.dirname(sys.executable)
MAX_ITER = 25
CHUNK = 1000
PREDICT_CHUNK = 500


class Cluster:
    """A `dask scheduler` and `dask worker` processes on one port, each killable (SIGKILL) and restartable."""

    def __init__(self, log):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log = log
        self.scheduler = None
        self.workers = []

    def _spawn(self, *args):
        return subprocess.Popen([os.path.join(BIN, "dask"), *args], stdout=self.log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def start_scheduler(self):
        self.scheduler = self._spawn("scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard")

    def start_worker(self):
        self.workers.append(self._spawn("worker", self.address, "--nthreads", "1", "--no-dashboard",
                                        "--host", "127.0.0.1"))

    def wait_for_workers(self, n=1):
        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(n, timeout=60)

    def wait_for_no_workers(self, timeout=30):
        """Until the scheduler has dropped every worker (a killed one leaves when its connection breaks)."""
        deadline = time.monotonic() + timeout
        with Client(self.address, timeout="30s") as client:
            while client.scheduler_info()["workers"]:
                assert time.monotonic() < deadline, f"the scheduler still lists workers after {timeout} s"
                time.sleep(0.05)

    def kill_scheduler(self):
        _kill(self.scheduler)

    def kill_workers(self):
        for w in self.workers:
            _kill(w)
        self.workers = []

    def close(self):
        self.kill_workers()
        if self.scheduler is not None:
            _kill(self.scheduler)


def _kill(proc):
    """SIGKILL a process and its children (a worker's nanny and worker), as a lost node would."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path):
    with open(tmp_path / "cluster.log", "w") as log:
        c = Cluster(log)
        c.start_scheduler()
        c.start_worker()
        try:
            c.wait_for_workers()
            yield c
        finally:
            c.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    X = mixture(np.random.default_rng(3), n=6000, d=3, k=3)[0]
    path = tmp_path_factory.mktemp("batch") / "x.zarr"
    zarr.create_array(path, shape=X.shape, chunks=(CHUNK, 3), dtype="f8")[:] = X
    return str(path), X


@pytest.fixture(scope="module")
def reference(store):
    """The uninterrupted fit, on local threads: the CLI's estimator with the same settings."""
    gm = dask_em.GaussianMixture(3, max_iter=MAX_ITER, tol=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gm.fit(store[0])


def assert_bitwise(model, reference):
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_array_equal(getattr(model, name), getattr(reference, name))
    assert model.lower_bounds_ == reference.lower_bounds_


def fit_command(store, tmp_path, address, timeout, *extra):
    return [os.path.join(BIN, "dask-em"), "fit", store, "-o", str(tmp_path / "model.zarr"), "-k", "3",
            "--max-iter", str(MAX_ITER), "--tol", "0", "--seed", "0", "--scheduler", address,
            "--checkpoint", str(tmp_path / "ck.npz"), "--reconnect-timeout", str(timeout), "--json", *extra]


def run_until(cmd, iteration, then, env=None):
    """Start ``cmd``; when its progress reports ``iteration``, call ``then()``; return (rc, stderr lines)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if line.startswith("{") and json.loads(line).get("iteration") == iteration and then is not None:
            then()
            then = None
    proc.stdout.read()
    return proc.wait(timeout=120), lines


def events(lines):
    return [json.loads(line)["event"] for line in lines if line.startswith("{")]


# ---------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------


@pytest.mark.timeout(240)
@pytest.mark.parametrize("via", ["--scheduler", "DASK_SCHEDULER_ADDRESS"])
def test_scheduler_restarted_within_the_bound_fit_finishes_bitwise(via, cluster, store, reference, tmp_path):
    """The CLI's Client (--scheduler) reconnects by itself; the library's own (from DASK_SCHEDULER_ADDRESS, as a
    DaskJob runner has it), its reconnection given up after 1 s, is replaced by a new Client at the address."""
    def restart():
        cluster.kill_scheduler()
        cluster.kill_workers()  # workers leave with their scheduler; the operator restarts them
        if via == "DASK_SCHEDULER_ADDRESS":
            time.sleep(3)  # past the Client's own reconnection (1 s here)
        cluster.start_scheduler()
        cluster.start_worker()

    cmd = fit_command(store[0], tmp_path, cluster.address, 120)
    env = dict(os.environ)
    if via == "DASK_SCHEDULER_ADDRESS":
        i = cmd.index("--scheduler")
        del cmd[i:i + 2]
        env.update(DASK_SCHEDULER_ADDRESS=cluster.address, DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s")
    rc, lines = run_until(cmd, 3, restart, env)
    assert rc == 0, "\n".join(lines[-20:])
    seen = events(lines)
    assert "scheduler-lost" in seen and "reconnected" in seen, seen  # the fit was interrupted, and went on
    assert seen.index("scheduler-lost") < seen.index("reconnected")
    if via == "DASK_SCHEDULER_ADDRESS":
        (reconnected,) = [json.loads(x) for x in lines if x.startswith('{"event": "reconnected"')]
        assert reconnected["new_client"] is True
    assert "Traceback" not in "\n".join(lines)
    assert_bitwise(dask_em.load(tmp_path / "model.zarr"), reference)


@pytest.mark.timeout(240)
def test_no_scheduler_within_the_bound_exits_75_then_resumes_bitwise(cluster, store, reference, tmp_path):
    def lose():
        cluster.kill_scheduler()
        cluster.kill_workers()

    cmd = fit_command(store[0], tmp_path, cluster.address, 2)
    rc, lines = run_until(cmd, 3, lose)
    assert rc == 75, "\n".join(lines[-20:])
    text = "\n".join(lines)
    assert "Traceback" not in text
    last = lines[-1]
    assert last.startswith(f"dask-em: lost the scheduler at {cluster.address}: none answered within 2 s")
    assert f"the checkpoint {tmp_path / 'ck.npz'} (iteration " in last and "is intact" in last
    assert not (tmp_path / "model.zarr").exists()
    # The command the line gives, against a new cluster.
    resume = shlex.split(last.split("resume with: ", 1)[1])
    assert resume[0] == "dask-em" and "--resume" in resume
    new = Cluster(cluster.log)
    new.start_scheduler()
    new.start_worker()
    try:
        new.wait_for_workers()
        resume[0] = os.path.join(BIN, "dask-em")
        resume[resume.index("--scheduler") + 1] = new.address
        result = subprocess.run(resume, capture_output=True, text=True, timeout=180)
    finally:
        new.close()
    assert result.returncode == 0, result.stderr[-3000:]
    assert_bitwise(dask_em.load(tmp_path / "model.zarr"), reference)


@pytest.mark.timeout(240)
def test_sigterm_while_waiting_for_the_scheduler_exits_75_at_once(cluster, store, tmp_path):
    proc = subprocess.Popen(fit_command(store[0], tmp_path, cluster.address, 600), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("iteration") == 3:
            cluster.kill_scheduler()
            cluster.kill_workers()
        elif event.get("event") == "scheduler-lost":
            proc.send_signal(signal.SIGTERM)  # the pod is being stopped: no point waiting 600 s
    proc.stdout.read()
    assert proc.wait(timeout=60) == 75, "\n".join(lines[-20:])
    assert lines[-1].startswith(f"dask-em: lost the scheduler at {cluster.address}: stopped on request while "
                                "waiting for it; the checkpoint")


@pytest.mark.timeout(240)
def test_every_worker_killed_and_new_ones_started_fit_finishes_bitwise(cluster, store, reference, tmp_path):
    def replace_workers():
        cluster.kill_workers()
        cluster.wait_for_no_workers()
        time.sleep(1.5)  # then several of the fit's polls (every 0.5 s) see no worker at all
        cluster.start_worker()

    rc, lines = run_until(fit_command(store[0], tmp_path, cluster.address, 120), 3, replace_workers)
    assert rc == 0, "\n".join(lines[-20:])
    seen = events(lines)
    assert "workers-lost" in seen and "workers-back" in seen, seen
    assert_bitwise(dask_em.load(tmp_path / "model.zarr"), reference)


@pytest.mark.timeout(240)
def test_every_worker_gone_longer_than_the_bound_exits_75(cluster, store, tmp_path):
    cmd = fit_command(store[0], tmp_path, cluster.address, 2)
    i = cmd.index("--checkpoint")
    del cmd[i:i + 2]  # and no checkpoint: the line says a rerun starts afresh
    rc, lines = run_until(cmd, 3, cluster.kill_workers)
    assert rc == 75, "\n".join(lines[-20:])
    assert "Traceback" not in "\n".join(lines)
    assert lines[-1].startswith(f"dask-em: lost every worker at {cluster.address}: no worker joined within 2 s; "
                                "no --checkpoint was given, so a rerun starts afresh")
    assert "workers-lost" in events(lines)
    assert lines[-1].endswith(shlex.join(["dask-em"] + cmd[1:]))  # the command, as it was run


def test_reconnect_timeout_is_checked_and_a_first_connection_fails_fast(store, tmp_path):
    """reconnect_timeout covers a connection lost, not one never made: a wrong address fails as before."""
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens here
    with pytest.raises(ValueError, match=r"reconnect_timeout must be a number of seconds >= 0 or None; received -1"):
        dask_em.GaussianMixture(2).fit(store[0], reconnect_timeout=-1)
    with pytest.raises(OSError):  # the first connection is not retried: a wrong address fails fast
        import dask

        with dask.config.set({"scheduler-address": address, "distributed.comm.timeouts.connect": "1s"}):
            dask_em.GaussianMixture(2).fit(store[0], reconnect_timeout=1)


# ---------------------------------------------------------------------------
# predict
# ---------------------------------------------------------------------------


class SlowWrites(WorkerPlugin):
    """Holds each chunk write for a moment, so that the test can kill `dask-em predict` halfway."""

    def transition(self, key, start, finish, **kwargs):
        if finish == "executing" and key_split(key) == "em-write-chunk":
            time.sleep(0.4)


def chunk_files(store_path):
    """(inode, mtime) of every chunk file of a Zarr array: a chunk written again gets new ones."""
    out = {}
    for root, _, files in os.walk(os.path.join(store_path, "c")):
        for f in files:
            st = os.stat(os.path.join(root, f))
            out[os.path.relpath(os.path.join(root, f), store_path)] = (st.st_ino, st.st_mtime_ns)
    return out


@pytest.mark.timeout(240)
def test_predict_killed_halfway_and_rerun_writes_each_chunk_once(cluster, store, reference, tmp_path):
    model = tmp_path / "model.zarr"
    dask_em.save(reference, model)
    out = tmp_path / "labels.zarr"
    partial = tmp_path / "labels.zarr.partial"
    cmd = [os.path.join(BIN, "dask-em"), "predict", str(model), store[0], "-o", str(out), "--chunk-rows",
           str(PREDICT_CHUNK), "--scheduler", cluster.address]
    with Client(cluster.address) as client:
        client.register_plugin(SlowWrites(), name="slow")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marks = partial / ".dask-em-written"
    while not (marks.exists() and len(os.listdir(marks)) >= 2) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    cluster.kill_workers()  # and the worker, mid-write: the chunk it was writing has no marker
    assert not out.exists()  # nothing under the output's name until it is whole
    done = sorted(int(n) for n in os.listdir(marks))
    n_chunks = len(store[1]) // PREDICT_CHUNK
    assert 2 <= len(done) < n_chunks, done
    before = chunk_files(partial)
    cluster.start_worker()
    cluster.wait_for_workers()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"({len(done)} written before, kept)" in result.stdout
    after = chunk_files(out)
    for name in before:  # inode and mtime unchanged: not written again
        if int(name.split(os.sep)[1]) in done:
            assert after[name] == before[name], name
    assert not partial.exists() and not (out / ".dask-em-written").exists()
    written = zarr.open_array(out, mode="r")
    assert "dask_em_partial" not in written.attrs
    np.testing.assert_array_equal(written[:], reference.predict(store[1]))
    assert written.chunks[0] == PREDICT_CHUNK


def test_predict_partial_of_other_work_is_not_resumed(store, reference, tmp_path):
    from click.testing import CliRunner

    from dask_em.cli import main

    model = tmp_path / "model.zarr"
    dask_em.save(reference, model)
    out = tmp_path / "labels.zarr"
    # A partial store of other work (another model), every chunk marked written.
    partial = tmp_path / "labels.zarr.partial"
    z = zarr.create_array(partial, shape=(len(store[1]), 2), chunks=(CHUNK, 2), dtype="f8",
                          attributes={"dask_em_partial": {"model": "another"}})
    z[:] = 0.5
    (partial / ".dask-em-written").mkdir()
    for i in range(len(store[1]) // CHUNK):
        (partial / ".dask-em-written" / str(i)).touch()
    result = CliRunner().invoke(main, ["predict", str(model), store[0], "-o", str(out), "--proba"])
    assert result.exit_code == 0, result.output
    assert "written before" not in result.output
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], reference.predict_proba(store[1]))
    assert not partial.exists()


def test_data_lost_with_the_scheduler_is_named_not_retried_forever(store):
    """A persisted input whose keys are gone (as after a scheduler restart): an error saying so, not a loop."""
    import dask.array as da
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc, \
            Client(lc) as client:
        X = client.persist(da.from_array(store[1], chunks=(CHUNK, 3)))
        client.cancel(X)
        with pytest.raises(RuntimeError, match=r"cancelled 4 times on a connected scheduler .* was lost with the"):
            dask_em.GaussianMixture(2, max_iter=3).fit(X, reconnect_timeout=5)


@pytest.mark.timeout(240)
def test_library_fit_with_your_own_client_waits_for_it_to_reconnect(cluster, store, reference, caplog):
    """fit(reconnect_timeout=...) with a Client you made: the same Client reconnects; the fit finishes bitwise."""
    restarted = threading.Event()

    def start_again():
        cluster.start_scheduler()
        cluster.start_worker()
        restarted.set()

    def restart_at_iteration_3(event):
        if event["iteration"] == 3:
            cluster.kill_scheduler()
            cluster.kill_workers()
            # Back after a pause, so that the fit's next step finds no scheduler (a new one started at once
            # could take the Client back before the fit asked, and the fit would see only missing workers).
            threading.Timer(2.0, start_again).start()

    with Client(cluster.address, timeout="120s") as client:
        gm = dask_em.GaussianMixture(3, max_iter=MAX_ITER, tol=0, random_state=0)
        with warnings.catch_warnings(), caplog.at_level("WARNING", logger="dask_em"):
            warnings.simplefilter("ignore")
            gm.fit(store[0], callback=restart_at_iteration_3, reconnect_timeout=120)
        assert restarted.is_set()
        assert client.status == "running"  # yours, reconnected by itself; never replaced
    assert any("lost the connection to the scheduler" in r.getMessage() for r in caplog.records)
    assert any("reconnected to the scheduler" in r.getMessage() and "new Client" not in r.getMessage()
               for r in caplog.records)
    assert_bitwise(gm, reference)
