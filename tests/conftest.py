import os
import socket
import subprocess
import sys

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def assert_close(actual, desired, rtol, err_msg=""):
    """``assert_allclose`` relative to the magnitude of the array compared, entry by entry.

    Each entry within ``rtol`` of itself, or within ``rtol`` of the array's largest
    entry: an entry near zero (a centered mean, a log-density near 0, a small
    weight) is computed from terms of the array's size that cancelled, so its
    round-off is absolute, of that size. Different BLAS kernels (OpenBLAS's
    Haswell, SkylakeX, Zen) move it by that much; a purely relative bound on it
    measures the kernel, not the computation. A scalar keeps the relative bound.
    """
    desired = np.asarray(desired, dtype=float)
    atol = rtol * float(np.max(np.abs(desired))) if desired.size > 1 else 0.0
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=err_msg)


def mixture(rng, n=600, d=3, k=3, spread=6.0, offset=0.0):
    """Rows from k Gaussians with random full covariances, with their labels."""
    means = rng.normal(scale=spread, size=(k, d))
    labels = rng.integers(0, k, n)
    factors = rng.normal(size=(k, d, d)) / np.sqrt(d) + np.eye(d)
    z = rng.normal(size=(n, d))
    X = means[labels] + np.einsum("nij,nj->ni", factors[labels], z)
    return X + offset, labels, means + offset


@pytest.fixture
def blobs(rng):
    return mixture(rng)


def sklearn_start(X, k, cov_type, seed=0):
    """Start parameters taken from a short scikit-learn fit (an independent source)."""
    from sklearn.mixture import GaussianMixture

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = GaussianMixture(k, covariance_type=cov_type, max_iter=1, random_state=seed).fit(X)
    return {
        "weights_init": ref.weights_,
        "means_init": ref.means_,
        "precisions_init": ref.precisions_,
    }


def _ephemeral_ports() -> tuple[int, int]:
    """The range the kernel draws outgoing connections' ports from (Linux; elsewhere IANA's)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(v) for v in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 49152, 65535


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on, for a `dask scheduler` started next (and perhaps restarted).

    Drawn below the ephemeral range: a port the kernel hands out for bind(0) is also one it may give
    any outgoing connection (a worker's, a client's) between this call and the scheduler's bind, or
    while a test restarts the scheduler on it.
    """
    import random

    low = _ephemeral_ports()[0]
    if low > 12000:
        for port in random.Random().sample(range(10000, low), 200):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster_processes(tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    bindir = os.path.dirname(sys.executable)
    dask = os.path.join(bindir, "dask")
    logs = open(tmp_path / "cluster.log", "w")
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=logs, stderr=subprocess.STDOUT)]
    for _ in range(2):
        procs.append(subprocess.Popen(
            [dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
            stdout=logs, stderr=subprocess.STDOUT,
        ))
    try:
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        logs.close()
