"""Where graphs run: the active Client, a scheduler address, a Kubernetes cluster, or local threads.

The one place that decides it, for the library and the CLI alike:

1. a ``distributed.Client`` the user made (``default_client()``) is used as is;
2. else ``DASK_SCHEDULER_ADDRESS`` (as the Dask Kubernetes operator sets it) or
   dask's ``scheduler-address`` config: a Client is connected for the duration
   of ``with Runner()``;
3. else the threaded scheduler, with BLAS held to one thread per task.

The CLI adds two sources in front, for a command's duration: ``--scheduler``
(:func:`connect`) and ``--kube-cluster`` (:func:`cluster`).

With ``reconnect_timeout`` a runner outlives its scheduler: a computation whose
connection is lost waits up to that many seconds for a scheduler to answer at
the same address, then runs again from the start (a graph is a pure function of
its inputs, so the second run gives the same values, bitwise). A Client the
library made (cases 2, ``--scheduler``, ``--kube-cluster``) is replaced by a new
one at the same address when its own reconnection gives up; a user's Client is
only waited for. When every worker is gone, the computation waits as long for
one to join. Past the bound: :class:`ClusterLost`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import sys
import uuid
from typing import Any, Callable, Iterator

import dask
import dask.array as da
import dask.threaded

logger = logging.getLogger("dask_em")


# How often a watched computation checks its connection and its workers (seconds).
POLL_SECONDS = 0.5


class ClusterLost(RuntimeError):
    """The scheduler, or every worker, stayed away longer than the reconnect timeout.

    A fit that raises it stopped at its last completed iteration (whose
    checkpoint, when it has one, is intact): it is a temporary failure, and
    the command line exits 75 on it.

    Parameters
    ----------
    what : str
        "the scheduler" or "every worker".
    address : str
        The scheduler's address.
    waited : float
        The seconds waited for it to come back.
    reason : str, optional
        What came back instead, when not the default "none answered within N s".
    """

    def __init__(self, what: str, address: str, waited: float, reason: str | None = None):
        self.what, self.address, self.waited = what, address, waited
        if reason is None:
            came_back = "none answered" if what == "the scheduler" else "no worker joined"
            reason = f"{came_back} within {waited:.0f} s"
        super().__init__(f"lost {what} at {address}: {reason}")


class _Owned:
    """The Client the library itself made for a command (:func:`connect`, :func:`cluster`): one it may replace."""

    client = None


class _Lost(Exception):
    """Internal: the connection to the scheduler was lost during a computation."""


def scheduler_address() -> str | None:
    """The address of case 2 above, or None."""
    # The operator sets DASK_SCHEDULER_ADDRESS; dask.config reads it only at import.
    return os.environ.get("DASK_SCHEDULER_ADDRESS") or dask.config.get("scheduler-address", None)


def active_client():
    """The Client the user made, or None."""
    if "distributed" not in sys.modules:  # no Client can exist: importing distributed to ask costs 0.3 s
        return None
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


class Runner:
    """Computes graphs on the active distributed Client, or on local threads (see the module docstring).

    Parameters
    ----------
    reconnect_timeout : float, optional
        Seconds to wait for the scheduler after a lost connection, and for a
        worker when every worker is gone, before raising :class:`ClusterLost`.
        None: no waiting; a lost connection raises as ``distributed`` does.
    stop : threading.Event, optional
        When set during such a wait, stop waiting and raise :class:`ClusterLost`
        (a SIGTERM must not wait out the bound).
    """

    def __init__(self, reconnect_timeout: float | None = None, stop: threading.Event | None = None) -> None:
        self.client = None
        self.reconnect_timeout = reconnect_timeout
        self._stop = stop
        self._owned = False  # whether self.client may be replaced after a loss
        self._address: str | None = None
        self._stack = contextlib.ExitStack()
        self._rounds = 0
        self._nonce = uuid.uuid4().hex

    def salt(self) -> str:
        """A key suffix unique to each graph this runner computes."""
        self._rounds += 1
        return f"{self._nonce}-{self._rounds}"

    def __enter__(self) -> "Runner":
        self.client = active_client()
        self._owned = self.client is not None and self.client is _Owned.client
        if self.client is None:
            address = scheduler_address()
            if address:
                from distributed import Client

                logger.info("connecting to the scheduler at %s", address)
                self.client = self._stack.enter_context(Client(address, set_as_default=False))
                self._owned = True
        if self.client is not None:
            self._address = self.client.scheduler.address
        if self.client is None:
            from threadpoolctl import threadpool_limits

            self._stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def description(self) -> str:
        if self.client is None:
            return "local threads"
        return f"distributed scheduler {self.client.scheduler.address}"

    def compute(self, obj) -> Any:
        """The value of the dask collection (or list of them) ``obj``."""
        return self.compute_fresh(lambda: obj)

    def compute_fresh(self, build: Callable[[], Any]) -> Any:
        """The value of ``build()``, a dask collection built anew for every attempt.

        After a lost connection the computation runs again; ``build`` may leave
        out what the lost attempt already finished (chunks written to a store).
        """
        if self.client is None:
            # The getter itself, not "threads": a name makes dask import distributed to look for a Client.
            (value,) = dask.compute(build(), scheduler=dask.threaded.get)
            return value
        if self.reconnect_timeout is None:
            return self.client.gather(self.client.compute(build()))
        at_once = 0  # losses in a row after which the client was back at once
        while True:
            try:
                return self._watched(build())
            except _Lost as exc:
                if self.client.status == "running":
                    at_once += 1
                    if at_once > 3:  # not a lost connection: inputs the old scheduler held are gone
                        raise RuntimeError(
                            f"the computation was cancelled {at_once} times on a connected scheduler at "
                            f"{self._address}; data it depends on (a persisted collection, scattered data) "
                            "was lost with the scheduler: pass the data itself, or a Zarr store."
                        ) from exc.__cause__
                else:
                    at_once = 0
                self._reconnect()

    def _watched(self, obj) -> Any:
        """Compute ``obj``, checking the connection and the workers while it runs."""
        from distributed import futures_of

        try:
            futures = self.client.compute(obj)
        except Exception as exc:
            if self._connection_lost(exc):
                raise _Lost from exc
            raise
        pending = futures_of(futures)
        done = threading.Event()
        count = [len(pending)]
        lock = threading.Lock()

        def one_done(_future) -> None:
            with lock:
                count[0] -= 1
                if count[0] <= 0:
                    done.set()

        for future in pending:
            future.add_done_callback(one_done)
        if not pending:
            done.set()
        idle_since = None
        while not done.wait(POLL_SECONDS):
            if self.client.status != "running":
                raise _Lost
            idle_since = self._check_workers(idle_since, futures)
        try:
            return self.client.gather(futures)
        except Exception as exc:
            if self._connection_lost(exc):
                raise _Lost from exc
            raise

    def _connection_lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` comes from the lost connection rather than from a task."""
        from concurrent.futures import CancelledError  # distributed's FutureCancelledError derives from it

        from distributed.comm import CommClosedError

        if self.client.status != "running":
            return True
        # The futures were cancelled by the lost connection; the client may have reconnected already.
        return isinstance(exc, (CancelledError, CommClosedError))

    def _check_workers(self, idle_since: float | None, futures) -> float | None:
        """Track how long no worker has been connected; give up past the bound."""
        try:
            n_workers = len(self.client.nthreads())
        except Exception as exc:
            if self._connection_lost(exc):
                raise _Lost from exc
            raise
        if n_workers:
            if idle_since is not None:
                logger.warning("%d worker(s) joined the scheduler at %s after %.1f s; continuing",
                               n_workers, self._address, time.monotonic() - idle_since,
                               extra={"event": {"event": "workers-back", "address": self._address,
                                                "workers": n_workers}})
            return None
        now = time.monotonic()
        if idle_since is None:
            logger.warning("no worker is connected to the scheduler at %s; waiting up to %.0f s for one to join",
                           self._address, self.reconnect_timeout,
                           extra={"event": {"event": "workers-lost", "address": self._address,
                                            "timeout": self.reconnect_timeout}})
            return now
        stopped = self._stop is not None and self._stop.is_set()
        if stopped or now - idle_since > self.reconnect_timeout:
            with contextlib.suppress(Exception):
                self.client.cancel(futures)
            raise ClusterLost("every worker", self._address, now - idle_since,
                              "stopped on request while waiting for a worker" if stopped else None)
        return idle_since

    def _reconnect(self) -> None:
        """Wait for the scheduler at the same address: the client's own reconnection, else a new Client."""
        tic = time.monotonic()
        deadline = tic + self.reconnect_timeout
        logger.warning("lost the connection to the scheduler at %s; waiting up to %.0f s for it to answer",
                       self._address, self.reconnect_timeout,
                       extra={"event": {"event": "scheduler-lost", "address": self._address,
                                        "timeout": self.reconnect_timeout}})
        replaced = False
        while True:
            if self.client.status == "running":
                break
            if self._stop is not None and self._stop.is_set():
                raise ClusterLost("the scheduler", self._address, time.monotonic() - tic,
                                  "stopped on request while waiting for it")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterLost("the scheduler", self._address, self.reconnect_timeout)
            if self.client.status in ("closing", "closed", "failed"):  # its own reconnection gave up
                if not self._owned:
                    raise ClusterLost("the scheduler", self._address, time.monotonic() - tic,
                                      "the Client closed after its own reconnection failed")
                replaced = self._replace_client(remaining) or replaced
                continue
            time.sleep(0.1)
        logger.warning("reconnected to the scheduler at %s after %.1f s%s; running the interrupted step again",
                       self._address, time.monotonic() - tic, " with a new Client" if replaced else "",
                       extra={"event": {"event": "reconnected", "address": self._address, "new_client": replaced,
                                        "seconds": round(time.monotonic() - tic, 3)}})

    def _replace_client(self, timeout: float) -> bool:
        """A new Client at the same address, in place of the one this runner may replace; whether one answered."""
        from distributed import Client

        old = self.client
        was_default = _Owned.client is old or old is active_client()
        try:
            new = Client(self._address, timeout=max(timeout, 1.0), set_as_default=was_default)
        except (OSError, TimeoutError):
            return False  # the deadline is checked by the caller
        with contextlib.suppress(Exception):
            old.close(timeout=2)
        self.client = new
        if _Owned.client is old:
            _Owned.client = new  # connect() / cluster() close it at the end of the command
        else:
            self._stack.callback(new.close)
        return True

    def persist_in_memory(self, X: da.Array) -> da.Array:
        """Keep numpy-backed data on the workers instead of shipping it each round.

        Not with ``reconnect_timeout``: data held on the workers is gone with a
        lost scheduler, so the rounds carry it in their graphs instead.
        """
        if self.client is None or self.reconnect_timeout is not None:
            return X
        from distributed import wait

        X = self.client.persist(X)
        wait(X)
        return X


@contextlib.contextmanager
def connect(address: str | None) -> Iterator[None]:
    """Make a Client of ``address`` the default for the block (nothing when None)."""
    if not address:
        yield
        return
    from distributed import Client

    try:
        client = Client(address, timeout="20s")
    except OSError as exc:
        raise ConnectionError(f"cannot reach the scheduler at {address!r}: {exc}") from None
    with _owned(client):
        yield


@contextlib.contextmanager
def _owned(client) -> Iterator[None]:
    """Mark ``client`` as the library's own for the block (a Runner may replace it); close it, or its replacement."""
    _Owned.client = client
    try:
        yield
    finally:
        current, _Owned.client = _Owned.client, None
        for c in {id(client): client, id(current): current}.values():
            with contextlib.suppress(Exception):
                c.close()


def cluster_spec(spec_path: str) -> dict:
    """A DaskCluster spec whose ``image: SAME`` entries take this pod's image (``DASK_EM_IMAGE``)."""
    import yaml

    try:
        with open(spec_path) as f:
            spec = yaml.safe_load(f)
    except OSError as exc:
        raise ValueError(f"cannot read the cluster spec {spec_path!r}: {exc.strerror}") from None
    if not isinstance(spec, dict) or spec.get("kind") != "DaskCluster":
        raise ValueError(f"{spec_path!r} must hold a DaskCluster manifest (kind: DaskCluster).")
    image = os.environ.get("DASK_EM_IMAGE")
    for part in ("scheduler", "worker"):
        for container in spec["spec"][part]["spec"]["containers"]:
            if container.get("image") == "SAME":
                if not image:
                    raise ValueError(f"{spec_path!r} asks for image SAME but DASK_EM_IMAGE is not set.")
                container["image"] = image
    return spec


@contextlib.contextmanager
def cluster(address: str | None, kube_cluster: str | None) -> Iterator[None]:
    """``address``, else ``DASK_SCHEDULER_ADDRESS``, else a KubeCluster from the spec ``kube_cluster``, else local."""
    if address or os.environ.get("DASK_SCHEDULER_ADDRESS") or not kube_cluster:
        with connect(address):
            yield
        return
    spec = cluster_spec(kube_cluster)
    from dask_kubernetes.operator import KubeCluster
    from distributed import Client

    logger.info("starting the Dask cluster %s through the operator", spec["metadata"]["name"])
    with KubeCluster(custom_cluster_spec=spec, shutdown_on_close=True) as kube, _owned(Client(kube)):
        yield
