"""The EM engine: one Dask graph per round, restarts side by side.

A *round* advances every restart that is still running by one EM iteration::

    row chunk --em-estep--> [stats of restart 0, stats of restart 1, ...]
              --em-combine (dask.array.reduction, split_every)-->
              --em-mstep--> [(new params, lower bound) per restart]

The parameters of all running restarts enter the round's graph once, as the
single key ``em-params-<token>``; each E-step task reads its chunk once and
visits every restart on each row tile while it is in cache, so the restarts
share every chunk read. Only the new parameters and the lower bounds come
back to the client. The engine knows the component distributions only
through the family protocol (:mod:`dask_em.family`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed, delayed

from .family import MASS_EPS, Family, merge_records

logger = logging.getLogger("dask_em")

# ---------------------------------------------------------------------------
# Task functions (module level so that they pickle by reference)
# ---------------------------------------------------------------------------


def _row_range(block_info: dict | None, n_rows: int) -> tuple[int, int, int]:
    if not block_info or 0 not in block_info:
        return 0, n_rows, 0
    info = block_info[0]
    start, stop = info["array-location"][0]
    return int(start), int(stop), int(info["chunk-location"][0])


def check_weights(w: np.ndarray, where: str) -> None:
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"sample_weight must be finite and non-negative; received {float(w[first])!r} "
            f"at {where.format(first)}. Replace or drop those rows."
        )


def check_rows(family: Family, x, start: int, stop: int, where: str) -> None:
    """Raise the family's complaint about the first invalid row, naming the chunk's rows."""
    bad = family.check_rows(x)
    if bad is None:
        return
    row, what, fix = bad
    raise ValueError(f"{what} in rows {start}-{stop - 1} {where}; the first is row {start + row}. {fix}")


def estep_block(x, w, state: dict, block_info=None) -> list[dict]:
    """E-step of every running restart on one row chunk: one record per restart.

    ``state`` holds the family, its context and one parameter dict per
    restart. A record is the family's statistics plus the log-likelihood,
    weight sum, masses (and entropy) the engine needs. Invalid rows (NaN for
    a Gaussian, a 2 for a Bernoulli) raise ``ValueError`` naming the chunk's
    rows; ``state["check_rows"]`` False skips the family's row check (rounds
    after the first: 6-15% of a discrete E-step, measured, for rows already checked).
    """
    start, stop, index = _row_range(block_info, x.shape[0])
    family: Family = state["family"]
    if w is not None:
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        check_weights(w, f"row {{}} + {start} (chunk {index})")
    where = f"(chunk {index})"
    if not family.lazy_row_check and state.get("check_rows", True):
        check_rows(family, x, start, stop, where)
    records = family.estep(x, w, state["params"], state["context"], state.get("entropy", False))
    if family.lazy_row_check and not all(math.isfinite(r["loglik"]) for r in records):
        check_rows(family, x, start, stop, where)
    return records


def _flatten(parts) -> list:
    if isinstance(parts, list) and parts and isinstance(parts[0], list) and (
        not parts[0] or isinstance(parts[0][0], list)
    ):
        return [leaf for p in parts for leaf in _flatten(p)]
    if isinstance(parts, list) and parts and isinstance(parts[0], dict):
        return [parts]
    return list(parts)


def _identity(stats, axis=None, keepdims=None, computing_meta=False):
    return stats


def _combine(parts, axis=None, keepdims=None, computing_meta=False, family: Family | None = None):
    if computing_meta:
        return parts
    per_block = _flatten(parts)
    return [merge_records(family, list(group)) for group in zip(*per_block)]


# The reduction names its layers after these functions, so they read as the
# algorithm in the dashboard: em-estep-*, em-combine-partial-*, em-combine-aggregate-*.
_identity.__name__ = "em-estep"
_combine.__name__ = "em-combine"


@dataclass
class StepResult:
    """What one restart's M-step sends back to the client.

    ``lower_bound`` is the mean log-likelihood of the parameters that entered
    the round; ``entropy`` the weighted sum of sum_k r log r (when asked for).
    """

    lower_bound: float
    params: dict | None = None
    dropped: list[int] = field(default_factory=list)
    error: str | None = None
    entropy: float = 0.0
    wsum: float = 0.0


def mstep_round(records, state: dict, n_rows: int) -> list[StepResult]:
    """M-step of every restart; failures are returned, not raised.

    The engine owns the mixture weights, ``(n_k + eps) / sum``; a component
    with less than a millionth of an average row's weight is empty and is
    dropped from the statistics and the parameters before the family's M-step.
    """
    if isinstance(records, np.ndarray):  # a reduction output of object dtype
        records = records.item() if records.ndim == 0 else records.ravel()[0]
    family: Family = state["family"]
    out = []
    for rec, params in zip(records, state["params"]):
        wsum = rec["wsum"]
        lower_bound = rec["loglik"] / wsum if wsum > 0 else float("nan")
        if not math.isfinite(lower_bound):
            out.append(StepResult(lower_bound, error="the log-likelihood is not finite"))
            continue
        extra = {"entropy": rec["entropy"], "wsum": wsum}
        nk, stats = rec["nk"], rec["stats"]
        keep = nk >= 1e-6 * wsum / max(n_rows, 1)
        dropped = [int(i) for i in np.flatnonzero(~keep)]
        if dropped:
            if not keep.any():
                out.append(StepResult(lower_bound, error="every component lost its mass", **extra))
                continue
            stats, params, nk = family.select(stats, keep), family.select(params, keep), nk[keep]
        try:
            new = family.m_step(stats, nk, params)
        except (ArithmeticError, np.linalg.LinAlgError) as exc:
            out.append(StepResult(lower_bound, error=str(exc), **extra))
            continue
        mass = nk + MASS_EPS
        new["weights"] = mass / mass.sum()
        out.append(StepResult(lower_bound, new, dropped, **extra))
    return out


# ---------------------------------------------------------------------------
# Graph construction
# ---------------------------------------------------------------------------


def round_graph(
    X: da.Array,
    w: da.Array | None,
    state: dict,
    *,
    split_every: int | None,
    salt: str = "",
) -> Delayed:
    """One EM round as a single Delayed whose value is a list of StepResult.

    ``salt`` makes the keys of this fit's rounds unique: a round whose
    parameters equal the previous round's (a fixed point) must not reuse the
    key that the scheduler is still releasing.
    """
    token = tokenize(X, w, state, split_every, salt)
    state_key = delayed(state, name=f"em-params-{token}", pure=True, traverse=False)
    args = [X, w[:, None] if w is not None else None, state_key]
    stats = da.map_blocks(
        estep_block,
        *args,
        chunks=((1,) * X.numblocks[0], (1,)),
        dtype=object,
        meta=np.empty((0, 0), dtype=object),
        name=f"em-estep-stats-{token}",
    )
    reduced = da.reduction(
        stats,
        chunk=_identity,
        combine=functools.partial(_combine, family=state["family"]),
        aggregate=functools.partial(_combine, family=state["family"]),
        axis=0,
        keepdims=False,
        dtype=object,
        concatenate=False,
        split_every=split_every,
        meta=np.empty((0,), dtype=object),
    )
    (total,) = reduced.to_delayed().ravel()
    return delayed(mstep_round, pure=True)(
        total, state_key, X.shape[0], dask_key_name=f"em-mstep-{token}"
    )


# ---------------------------------------------------------------------------
# Where graphs run
# ---------------------------------------------------------------------------


class Runner:
    """Computes graphs on the active distributed Client, or on local threads.

    A Client made by the user (``distributed.default_client()``) is used as
    is; ``DASK_SCHEDULER_ADDRESS`` (as set by the Dask Kubernetes operator)
    makes us connect one for the duration of ``with Runner()``. Otherwise the
    threaded scheduler runs the graph, with BLAS held to one thread per task.
    """

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
        self.client = _active_client()
        if self.client is None:
            # The operator sets DASK_SCHEDULER_ADDRESS; dask.config reads it only at import.
            address = os.environ.get("DASK_SCHEDULER_ADDRESS") or dask.config.get(
                "scheduler-address", None
            )
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


def _active_client():
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# The loop over rounds
# ---------------------------------------------------------------------------


@dataclass
class Restart:
    """One EM run from one start; what ``restarts_`` reports."""

    index: int
    seed: int
    params: dict | None
    covariance_type: str | None = None  # the Gaussian family's variant, reported in summaries
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    error: str | None = None
    dropped: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str | None = None  # why a healthy restart was stopped early (emEM selection, pruning)
    start: str = ""  # how it started (k-means, k-means++, ...)
    short_iter: int = 0  # iterations of emEM's short phase (0: none)

    @property
    def lower_bound(self) -> float:
        return self.history[-1] if self.history else -np.inf

    @property
    def running(self) -> bool:
        return self.error is None and not self.converged and self.params is not None and self.stopped is None

    def summary(self) -> dict:
        return {
            "restart": self.index,
            "seed": self.seed,
            "covariance_type": self.covariance_type,
            "lower_bound": self.lower_bound,
            "n_iter": self.n_iter,
            "converged": self.converged,
            "status": "failed" if self.error else ("stopped" if self.stopped else "ok"),
            "stopped": self.stopped,
            "start": self.start,
            "short_iter": self.short_iter,
            "error": self.error,
            "history": list(self.history),
            "dropped_components": list(self.dropped),
            "seconds": self.seconds,
        }


def run_em(
    X: da.Array,
    w: da.Array | None,
    restarts: list[Restart],
    *,
    family: Family,
    context: Any,
    tol: float,
    max_iter: int,
    split_every: int | None,
    runner: Runner,
    on_iteration: Callable[[Restart], None] | None = None,
    on_round: Callable[[list[Restart]], None] | None = None,
) -> list[Restart]:
    """Iterate every restart to convergence or ``max_iter``, sharing reads.

    Restarts may differ in K and covariance type (model selection runs a whole
    grid this way); each computes exactly what it would alone.

    ``on_round`` runs after each round's M-step (the checkpoint). Then, if a
    stop was requested (:func:`request_stop`, e.g. on SIGTERM), raises
    :class:`Preempted`.
    """
    first = True
    while True:
        running = [r for r in restarts if r.running and r.n_iter < max_iter]
        if not running:
            break
        state = {"family": family, "context": context, "params": [_estep_params(r) for r in running]}
        # Rows are validated in the first round; later rounds read the same rows.
        state["check_rows"], first = first, False
        tic = time.perf_counter()
        results = _compute_round(
            runner, X, round_graph(X, w, state, split_every=split_every, salt=runner.salt())
        )
        seconds = time.perf_counter() - tic
        for restart, result in zip(running, results):
            restart.seconds += seconds
            _advance(restart, result, tol)
            if on_iteration is not None:
                on_iteration(restart)
        if on_round is not None:
            on_round(restarts)
        if STOP_REQUESTED.is_set():
            raise Preempted(
                f"stopped after iteration {max(r.n_iter for r in restarts)} on request"
            )
    return restarts


class Preempted(RuntimeError):
    """A stop was requested (SIGTERM): the round in flight finished and was checkpointed."""


# Set by a signal handler (the CLI's, on SIGTERM) to stop after the round in flight.
STOP_REQUESTED = threading.Event()


def request_stop(*_args) -> None:
    """Ask a running fit to stop after its current round; usable as a signal handler."""
    STOP_REQUESTED.set()


def _compute_round(runner: Runner, X: da.Array, graph):
    """Compute a round; a chunk that keeps killing workers is named by its rows."""
    try:
        return runner.compute(graph)
    except Exception as exc:
        if type(exc).__name__ != "KilledWorker":
            raise
        key = getattr(exc, "task", None)
        from distributed.utils import key_split

        if isinstance(key, tuple) and key_split(key) == "em-estep":
            index = int(key[1])
            bounds = np.cumsum((0,) + X.chunks[0])
            raise RuntimeError(
                f"the E-step of rows {bounds[index]}-{bounds[index + 1] - 1} (chunk {index}) killed "
                f"every worker that ran it ({exc}); a chunk that large may exceed a worker's memory "
                "(open the store with a smaller chunk_rows) or crash a native library on its data."
            ) from exc
        raise


def _estep_params(restart: Restart) -> dict:
    return {k: v for k, v in restart.params.items() if k not in ("dropped", "error")}


def score_round(
    X, w, restarts: list[Restart], *, family: Family, context, split_every, runner: Runner
) -> list[StepResult]:
    """One pass giving the log-likelihood (and entropy) of every restart's current parameters."""
    state = {"family": family, "context": context, "entropy": True, "params": [_estep_params(r) for r in restarts]}
    return runner.compute(round_graph(X, w, state, split_every=split_every, salt=runner.salt()))


def _advance(restart: Restart, result: StepResult, tol: float) -> None:
    restart.n_iter += 1
    previous = restart.lower_bound
    restart.history.append(result.lower_bound)
    if result.error is not None:
        restart.error = f"iteration {restart.n_iter}: {result.error}"
        logger.warning("restart %d failed at %s", restart.index, restart.error)
        return
    current = result.lower_bound
    if math.isfinite(previous) and current < previous - 1e-9 * max(1.0, abs(previous)):
        logger.warning(
            "restart %d: the lower bound fell at iteration %d, from %.12g to %.12g "
            "(more than round-off); the data may hold near-duplicate rows with a tiny "
            "reg_covar",
            restart.index,
            restart.n_iter,
            previous,
            current,
        )
    for k in result.dropped:
        restart.dropped.append((restart.n_iter, k))
    restart.params = result.params
    if math.isfinite(previous) and abs(current - previous) < tol:
        restart.converged = True
