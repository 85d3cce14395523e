"""Where graphs run: the active Client, a scheduler address, a Kubernetes cluster, or local threads.

The one place that decides it, for the library and the CLI alike:

1. a ``distributed.Client`` the user made (``default_client()``) is used as is;
2. else ``DASK_SCHEDULER_ADDRESS`` (as the Dask Kubernetes operator sets it) or
   dask's ``scheduler-address`` config: a Client is connected for the duration
   of ``with Runner()``;
3. else the threaded scheduler, with BLAS held to one thread per task.

The CLI adds two sources in front, for a command's duration: ``--scheduler``
(:func:`connect`) and ``--kube-cluster`` (:func:`cluster`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from typing import Any, Iterator

import dask
import dask.array as da

logger = logging.getLogger("dask_em")


def scheduler_address() -> str | None:
    """The address of case 2 above, or None."""
    # The operator sets DASK_SCHEDULER_ADDRESS; dask.config reads it only at import.
    return os.environ.get("DASK_SCHEDULER_ADDRESS") or dask.config.get("scheduler-address", None)


def active_client():
    """The Client the user made, or None."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


class Runner:
    """Computes graphs on the active distributed Client, or on local threads (see the module docstring)."""

    def __init__(self) -> None:
        self.client = None
        self._stack = contextlib.ExitStack()
        self._rounds = 0
        self._nonce = uuid.uuid4().hex

    def salt(self) -> str:
        """A key suffix unique to each graph this runner computes."""
        self._rounds += 1
        return f"{self._nonce}-{self._rounds}"

    def __enter__(self) -> "Runner":
        self.client = active_client()
        if self.client is None:
            address = scheduler_address()
            if address:
                from distributed import Client

                logger.info("connecting to the scheduler at %s", address)
                self.client = self._stack.enter_context(Client(address, set_as_default=False))
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
        if self.client is not None:
            return self.client.gather(self.client.compute(obj))
        (value,) = dask.compute(obj, scheduler="threads")
        return value

    def persist_in_memory(self, X: da.Array) -> da.Array:
        """Keep numpy-backed data on the workers instead of shipping it each round."""
        if self.client is None:
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
    with client:
        yield


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
    with KubeCluster(custom_cluster_spec=spec, shutdown_on_close=True) as kube, Client(kube):
        yield
