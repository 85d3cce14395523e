"""The EM engine: one round of EM as one Dask graph, for several restarts at once.

A *round* advances every restart it is given by one EM iteration::

    row chunk --em-estep--> [record of restart 0, record of restart 1, ...]
              --em-combine (dask.array.reduction, split_every)-->
              --em-mstep--> [StepResult per restart]

The round's :class:`RoundState` (the family, its context and one parameter
dict per restart) enters the graph once, as the single key
``em-params-<token>``; each E-step task reads its chunk once and visits every
restart on each panel of rows while it is in cache, so the restarts share
every chunk read. Only the new parameters and the lower bounds come back to
the client. The engine knows the component distributions only through the
family protocol (:mod:`dask_em.family`); it does not know where its graphs run
(:mod:`dask_em.runner`) nor what a restart is (:mod:`dask_em.restarts`).
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import dask.local
import numpy as np
from dask.base import tokenize
from dask.delayed import Delayed, delayed
from scipy.special import logsumexp

from . import _compiled
from ._machine import local_cores
from ._namespace import (dtype_kind, in_row_order, is_foreign, like, namespace, split_holes, to_numpy, weights_like,
                         xp_log_normalize)
from .family import Family, empty_components, merge_records
from .io import check_weights

# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundState:
    """What every task of a round reads: the family, its context, each restart's parameters.

    ``check_rows`` runs the family's row check (the first round of a fit;
    later rounds read the same rows). ``entropy`` asks the E-step for the
    weighted sum of ``sum_k r log r`` (ICL).
    """

    family: Family
    context: Any
    params: list[dict]
    check_rows: bool = True
    entropy: bool = False
    keep_stats: bool = False  # send each restart's reduced statistics back (accelerated EM)

    def __post_init__(self):
        if type(self.params) is list:
            object.__setattr__(self, "params", ParamsList(self.params))


class ParamsList(list):
    """A round's list of each restart's parameters, which can be weakly referenced: a family may keep what it
    prepares from them for the round's chunks (:func:`dask_em.gaussian._round_plan`) while the round lives."""

    __slots__ = ("__weakref__",)


@dataclass
class StepResult:
    """What one restart's M-step sends back to the client.

    ``lower_bound`` is the family's ``round_bound`` (by default the mean
    log-likelihood of the parameters that entered the round); ``entropy`` the
    weighted sum of sum_k r log r (when asked for); ``record`` the reduced
    ``{"nk", "stats"}`` the M-step read (with ``keep_stats``); ``log_likelihood`` the mean
    log-likelihood of the entering parameters (the bound without a family's
    penalty: a prior's, a variational bound's).
    """

    lower_bound: float
    params: dict | None = None
    dropped: list[int] = field(default_factory=list)
    error: str | None = None
    entropy: float = 0.0
    wsum: float = 0.0
    record: dict | None = None
    log_likelihood: float = float("nan")


# ---------------------------------------------------------------------------
# Task functions (module level so that they pickle by reference)
# ---------------------------------------------------------------------------


def row_range(block_info: dict | None, n_rows: int) -> tuple[int, int, int]:
    """(first row, end row, chunk index) of a block, from dask's ``block_info``."""
    if not block_info or 0 not in block_info:
        return 0, n_rows, 0
    info = block_info[0]
    start, stop = info["array-location"][0]
    return int(start), int(stop), int(info["chunk-location"][0])


def check_rows(family: Family, x, start: int, stop: int, where: str) -> None:
    """Raise the family's complaint about the first invalid row, naming the chunk's rows.

    A chunk on a device is tested there (:meth:`Family.rows_valid`); only a chunk that
    fails (or a family without that test) comes to the host, where the row is found.
    """
    if is_foreign(x):
        if family.rows_valid(x):
            return
        x = to_numpy(x)
    bad = family.check_rows(x)
    if bad is None:
        return
    row, what, fix = bad
    raise ValueError(f"{what} in rows {start}-{stop - 1} {where}; the first is row {start + row}. {fix}")


def estep_block(x, w, state: RoundState, block_info=None) -> list[dict]:
    """E-step of every restart of the round on one row chunk: one record per restart.

    A record is the family's statistics plus the log-likelihood, weight sum,
    masses (and entropy) the engine needs. Invalid rows (NaN for a Gaussian, a
    2 for a Bernoulli) raise ``ValueError`` naming the chunk's rows;
    ``state.check_rows`` False skips the family's row check (rounds after the
    first: 6-15% of a discrete E-step, measured, for rows already checked).
    """
    start, stop, index = row_range(block_info, x.shape[0])
    family = state.family
    if not family.array_api and is_foreign(x):  # a family of numpy kernels: the chunk to the host
        x = to_numpy(x)
    if w is not None:
        # Weights on a device stay there where the chunk is on one (checked there); else float64 on the host.
        w = weights_like(w, x) if is_foreign(x) else to_numpy(w, np.float64).reshape(-1)
        check_weights(w, f"row {{}} + {start} (chunk {index})")
    where = f"(chunk {index})"
    if not family.lazy_row_check and state.check_rows:
        check_rows(family, x, start, stop, where)
    records = family.estep(x, w, state.params, state.context, state.entropy)
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


def mstep_round(records, state: RoundState, n_rows: int) -> list[StepResult]:
    """M-step of every restart; failures are returned, not raised.

    The family's ``mixture_weights`` gives the new weights (by default
    ``(n_k + eps) / sum``) and its ``round_bound`` the reported bound (by default
    the mean log-likelihood of the entering parameters); a component with less
    than 10 eps of an average row's weight (``family.empty_components``) is empty and, unless the family
    keeps empty components, is dropped from the statistics and the parameters
    before the family's M-step.
    """
    if isinstance(records, np.ndarray):  # a reduction output of object dtype
        records = records.item() if records.ndim == 0 else records.ravel()[0]
    family = state.family
    out = []
    for rec, params in zip(records, state.params):
        wsum = rec["wsum"]
        lower_bound = rec["loglik"] / wsum if wsum > 0 else float("nan")
        if not math.isfinite(lower_bound):
            out.append(StepResult(lower_bound, error="the log-likelihood is not finite"))
            continue
        extra = {"entropy": rec["entropy"], "wsum": wsum, "log_likelihood": lower_bound}
        nk, stats = rec["nk"], rec["stats"]
        keep = ~empty_components(nk, wsum, n_rows) if family.drops_empty_components else np.ones(len(nk), bool)
        dropped = [int(i) for i in np.flatnonzero(~keep)]
        if dropped:
            if not keep.any():
                out.append(StepResult(lower_bound, error="every component lost its mass", **extra))
                continue
            stats, params, nk = family.select(stats, keep), family.select(params, keep), nk[keep]
        try:
            new = family.m_step(stats, nk, params)
            new["weights"] = family.mixture_weights(nk, new)
        except (ArithmeticError, np.linalg.LinAlgError) as exc:
            out.append(StepResult(lower_bound, error=str(exc), **extra))
            continue
        record = {"nk": nk, "stats": stats} if state.keep_stats else None
        out.append(StepResult(family.round_bound(rec, new), new, dropped, record=record, **extra))
    return out


def infer_block(x, state: dict, what: str, block_info=None):
    """Labels, responsibilities or log-likelihood of one block of rows under a fitted model.

    ``state`` holds the fitted ``family``, ``context`` and ``params``. Invalid rows raise
    ``ValueError`` naming the block's rows and the first bad row, found in this same pass:
    a family with ``lazy_row_check`` (NaN or inf make the log-likelihood non-finite) runs
    its row check only when the block's result is not finite.
    """
    family: Family = state["family"]
    if not family.array_api and is_foreign(x):  # numpy kernels: on the host, the answer back on the device
        out = infer_block(to_numpy(x), state, what, block_info)
        return like(out, x)
    start, stop, index = row_range(block_info, x.shape[0])
    where = f"(block {index})"
    if not family.lazy_row_check:
        check_rows(family, x, start, stop, where)
    if what == "impute":
        if is_foreign(x):  # the rows with NaN are imputed on the host and go back; float64, as on the host
            xp = namespace(x)
            split = split_holes(x) if dtype_kind(x) == "f" else None
            if split is None:
                return xp.astype(x, xp.float64)
            whole, part = split
            done = family.impute(to_numpy(xp.take(x, part, axis=0)), state["params"], state["context"])
            return in_row_order(split, xp.astype(xp.take(x, whole, axis=0), xp.float64), done, x)
        return family.impute(x, state["params"], state["context"])
    wlp = family.weighted_log_prob(x, state["params"], state["context"])
    if is_foreign(wlp):
        return _infer_foreign(wlp, x, family, start, stop, where, what)
    if what == "labels":
        if family.lazy_row_check and not math.isfinite(float(wlp.sum())):
            check_rows(family, x, start, stop, where)
        return wlp.argmax(1)
    # Compiled, without the GIL: the rows' log-sum-exp (and responsibilities); where a row's is not finite
    # (NaN in the rows, or no finite density), numpy's below, which finds the rows and says what they hold.
    fast = _compiled.normalize_rows(wlp, what == "proba")
    if fast is not None and np.isfinite(fast[0]).all():
        return fast[1] if what == "proba" else fast[0]
    log_norm = logsumexp(wlp, axis=1)
    if family.lazy_row_check and not math.isfinite(float(log_norm.sum())):
        check_rows(family, x, start, stop, where)
    if what == "proba":
        with np.errstate(invalid="ignore"):
            return np.exp(wlp - log_norm[:, None])
    return log_norm


def _infer_foreign(wlp, x, family: Family, start: int, stop: int, where: str, what: str):
    """:func:`infer_block`'s answers from log-densities on a device, left there."""
    xp = namespace(wlp)
    if what == "labels":
        if family.lazy_row_check and not math.isfinite(float(xp.sum(wlp))):
            check_rows(family, x, start, stop, where)
        return xp.argmax(wlp, axis=1)
    log_norm, resp = xp_log_normalize(xp, wlp)
    if family.lazy_row_check and not math.isfinite(float(xp.sum(log_norm))):
        check_rows(family, x, start, stop, where)
    return resp if what == "proba" else log_norm


# ---------------------------------------------------------------------------
# Graph construction
# ---------------------------------------------------------------------------


def round_graph(
    X: da.Array,
    w: da.Array | None,
    state: RoundState,
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
        combine=functools.partial(_combine, family=state.family),
        aggregate=functools.partial(_combine, family=state.family),
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


def compute_round(runner, X: da.Array, graph):
    """Compute a round on ``runner``; a chunk that keeps killing workers is named by its rows."""
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


# ---------------------------------------------------------------------------
# Rounds on in-memory data, without a graph
# ---------------------------------------------------------------------------

# In-memory data on local threads runs its rounds directly: building, optimizing
# and scheduling a round's graph cost 6-8 ms (profiled on wine, n_init=10: 55% of
# a whole fit), more than the E-step of every restart on a few thousand rows; on
# 2M rows it was the serial part that held a Bernoulli fit's two-thread scaling
# to 1.68x (3.7 ms of a 45 ms round). Larger data gains less, loses nothing: the
# blocks run on a pool of dask's ``num_workers`` threads (by default the cores this process may use: its affinity
# mask and a container's CPU quota count, as for dask's own pool).


@dataclass(frozen=True)
class LocalRows:
    """Row blocks held in this process (numpy views of in-memory data), chunked as the dask array was.

    :func:`run_round` runs a round on them directly: the same task functions
    (:func:`estep_block`, the combine, :func:`mstep_round`) in the same order
    of reduction as the round's graph, so the results are bitwise those of
    the graph, without building or scheduling one.
    """

    blocks: list
    chunks: tuple
    shape: tuple

    @property
    def numblocks(self) -> tuple:
        return (len(self.blocks),) + ((1,) if len(self.shape) > 1 else ())


def take_blocks(X, index: list[int]):
    """The row blocks ``index`` of a dask array or of :class:`LocalRows`, as the same kind."""
    if isinstance(X, LocalRows):
        chunks = (tuple(X.chunks[0][i] for i in index),) + tuple(X.chunks[1:])
        return LocalRows([X.blocks[i] for i in index], chunks, (sum(chunks[0]),) + tuple(X.shape[1:]))
    return X.blocks[index]


def local_rows(X: da.Array) -> LocalRows:
    """The blocks of an in-memory dask array (one compute, views of its numpy array)."""
    # The getter itself, not its name: a name makes dask import distributed to look for a Client (0.3 s).
    blocks = list(dask.compute(*X.to_delayed().ravel(), scheduler=dask.local.get_sync))
    return LocalRows(blocks, X.chunks, X.shape)


def runs_directly(X: da.Array, in_memory: bool, runner) -> bool:
    """Whether a fit's rounds run directly (:class:`LocalRows`): in memory, on local threads."""
    return in_memory and getattr(runner, "client", None) is None


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _workers() -> int:
    """The threads dask's threaded scheduler would use now (``num_workers``; 1 when set synchronous)."""
    if dask.config.get("scheduler", None) in ("sync", "synchronous", "single-threaded"):
        return 1
    return max(1, int(dask.config.get("num_workers", None) or local_cores()))


if hasattr(os, "register_at_fork"):  # a forked child inherits the pools without their threads
    os.register_at_fork(after_in_child=_POOLS.clear)


def _pool(size: int) -> ThreadPoolExecutor:
    if size not in _POOLS:
        _POOLS[size] = ThreadPoolExecutor(size, thread_name_prefix="dask-em-direct")
    return _POOLS[size]


def _each_block(X: LocalRows, task, limit_blas: bool = False) -> list:
    """``task(i, block_info)`` for every block ``i`` of ``X``, the answers in row order: on the local threads
    where there are several blocks and threads (with ``limit_blas``, one BLAS thread each), else here."""
    bounds = np.cumsum((0,) + tuple(X.chunks[0]))

    def one(i: int):
        return task(i, {0: {"array-location": [(int(bounds[i]), int(bounds[i + 1]))], "chunk-location": (i, 0)}})

    n, workers = len(X.blocks), _workers()
    if n == 1 or workers == 1:
        return [one(i) for i in range(n)]
    if not limit_blas:
        return list(_pool(workers).map(one, range(n)))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return list(_pool(workers).map(one, range(n)))


def infer_direct(X: LocalRows, state: dict, what: str):
    """:func:`infer_block` on in-memory blocks without a graph, on the local threads, a BLAS thread each (as in
    a fit's rounds); the blocks' answers in row order, joined (a bad row raises the complaint of the first
    block that has one, as in order)."""
    parts = _each_block(X, lambda i, info: infer_block(X.blocks[i], state, what, block_info=info), limit_blas=True)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _tree_combine(parts: list, family: Family, split_every: int | None) -> list:
    """The reduction of :func:`round_graph` (dask's ``_tree_reduce``): the same groups, the same order."""
    every = split_every or dask.config.get("split_every", None) or 4
    every = max(int(every), 2)
    depth = max(1, math.ceil(math.log(len(parts), every)))
    for _ in range(depth - 1):
        parts = [_combine(parts[i : i + every], family=family) for i in range(0, len(parts), every)]
    return _combine(parts, family=family)


def run_direct(X: LocalRows, w: LocalRows | None, state: RoundState, split_every: int | None) -> list[StepResult]:
    """One round on in-memory blocks, without a graph (blocks on a thread pool when there are several)."""
    parts = _each_block(X, lambda i, info: estep_block(X.blocks[i], None if w is None else w.blocks[i], state,
                                                       block_info=info))
    return mstep_round(_tree_combine(parts, state.family, split_every), state, X.shape[0])


def run_round(runner, X, w, state: RoundState, *, split_every: int | None, salt: str = "") -> list[StepResult]:
    """One round: directly on :class:`LocalRows`, else as a graph on ``runner``."""
    if isinstance(X, LocalRows):
        return run_direct(X, w, state, split_every)
    return compute_round(runner, X, round_graph(X, w, state, split_every=split_every, salt=salt))
