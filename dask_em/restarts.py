"""Restarts: EM runs from many starts, advanced together one round at a time, and their policy.

A :class:`Restart` is one EM run from one start. :func:`run_rounds` advances
every running restart by one iteration per round (one pass over the data for
all of them, :func:`dask_em.engine.round_graph`) until each has converged, failed,
been stopped, or reached ``max_iter``. :func:`run_schedule` adds the policy:

* ``init_strategy="single"``: every restart runs to convergence;
* ``init_strategy="emEM"`` (Biernacki, Celeux & Govaert 2003): a short phase of
  ``short_iter`` rounds for every start, then the best ``n_init`` of each group
  go on (:func:`keep_best`), and a continuing restart whose projected bound
  cannot catch up is stopped (:func:`prune`); a restart from mclust's hierarchical
  start (``starts.PROTECTED_STARTS``) is neither dropped nor pruned.

A *group* is the restarts of one model (one estimator, or one candidate of a
model-selection grid): emEM keeps the best of each group, and all groups share
every round's reads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import dask.array as da
import numpy as np

from . import accelerate, starts, stepwise
from .engine import RoundState, StepResult, run_round
from .family import Family
from .starts import StartPlan

logger = logging.getLogger("dask_em")


@dataclass
class Restart:
    """One EM run from one start; what ``restarts_`` reports."""

    index: int
    seed: int | None  # the int its start drew from; None where it drew on from the restart before it
    params: dict | None
    variant: str | None = None  # the family's variant (the Gaussian covariance type), for summaries
    history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    error: str | None = None
    dropped: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str | None = None  # why a healthy restart was stopped early (emEM selection, pruning)
    start: str = ""  # how it started (k-means, k-means++, ...)
    short_iter: int = 0  # iterations of emEM's short phase (0: none)
    accel: Any = None  # accelerate.Squarem: the SQUAREM cycle of an accelerated restart
    stepwise: dict | None = None  # stepwise EM's progress (dask_em.stepwise); {"done": True} after it
    # A reduced-precision E-step's restart whose tol its bounds cannot resolve continues in
    # float64 from history[refined_at] (accelerate.refine_below_resolution).
    refined_at: int | None = None
    roundoff_run: int = 0  # iterations in a row whose change was within the E-step's round-off
    falls: int = 0  # iterations whose bound fell beyond round-off (the first is warned)
    # The bound the first iteration's change is measured from: -inf, or a warm start's last bound
    # (scikit-learn's warm_start compares the first bound with the previous fit's lower_bound_).
    entry_bound: float = -np.inf

    @property
    def lower_bound(self) -> float:
        return self.history[-1] if self.history else -np.inf

    @property
    def running(self) -> bool:
        return self.error is None and not self.converged and self.params is not None and self.stopped is None

    def estep_params(self) -> dict:
        params = {k: v for k, v in self.params.items() if k not in ("dropped", "error")}
        if self.refined_at is not None:
            params["compute_dtype"] = "float64"
        return params

    def summary(self) -> dict:
        return {
            "restart": self.index,
            "seed": self.seed,
            "covariance_type": self.variant,
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
            "acceleration": None if self.accel is None else self.accel.summary(),
            "float64_from": None if self.refined_at is None else self.refined_at + 1,
            "bound_falls": self.falls,
        }

    def event(self) -> dict:
        """What progress bars and a fit's ``callback`` receive after each of this restart's iterations."""
        change = self.history[-1] - self.history[-2] if len(self.history) > 1 else None
        return {
            "restart": self.index,
            "iteration": self.n_iter,
            "lower_bound": self.lower_bound,
            "change": change,
            "converged": self.converged,
            "failed": self.error is not None,
        }


def restarts_from(plan: StartPlan, starts: list[dict]) -> list[Restart]:
    """Restart records from a plan's computed starts."""
    restarts = []
    for i, (seed, params) in enumerate(zip(plan.seeds, starts)):
        error = params.pop("error", None)
        dropped = params.pop("dropped", [])
        # A chained start drew on from the restart before it, not from its own seed: it records none.
        r = Restart(i, None if plan.chained and i else seed, None if error else params, plan.variant, error=error)
        r.dropped = [(0, k) for k in dropped]
        r.start = plan.methods[i]
        restarts.append(r)
    return restarts


# ---------------------------------------------------------------------------
# Stopping on request (SIGTERM)
# ---------------------------------------------------------------------------


class RestartsFailed(ValueError):
    """Every restart of a fit failed numerically; the message gives each one's reason.

    A ``ValueError``, as scikit-learn raises when a fit's covariances collapse;
    the command line exits with code 4 on it.
    """


class Preempted(RuntimeError):
    """A stop was requested (SIGTERM): the round in flight finished and was checkpointed.

    Raised by ``fit`` after :func:`request_stop`; the command line exits with
    code 75 on it.
    """


# Set by a signal handler (the CLI's, on SIGTERM) to stop after the round in flight.
STOP_REQUESTED = threading.Event()


def request_stop(*_args) -> None:
    """Ask a running fit to stop after its current round; usable as a signal handler.

    The fit finishes the round in flight, writes its checkpoint (when it has
    one) and raises :class:`Preempted`; rerun it with ``resume=True``.

    Parameters
    ----------
    *_args
        Ignored (a signal handler receives the signal number and the frame).

    Returns
    -------
    None
    """
    STOP_REQUESTED.set()


# ---------------------------------------------------------------------------
# Rounds
# ---------------------------------------------------------------------------


def run_rounds(
    X: da.Array,
    w: da.Array | None,
    restarts: list[Restart],
    *,
    family: Family,
    context: Any,
    tol: float,
    max_iter: int,
    split_every: int | None,
    runner,
    on_iteration: Callable[[Restart], None] | None = None,
    on_round: Callable[[list[Restart]], None] | None = None,
    stopping: str = "change",
) -> int:
    """Iterate every restart to convergence or ``max_iter``, sharing reads; returns the rounds run.

    Restarts may differ in K and covariance type (model selection runs a whole
    grid this way); each computes exactly what it would alone.

    ``stopping`` is the convergence rule (:func:`dask_em.accelerate.has_converged`);
    a restart with ``accel`` set is advanced by SQUAREM (:func:`dask_em.accelerate.step`),
    each of its passes one round. ``on_round`` runs after each round's M-step
    (the checkpoint). Then, if a stop was requested (:func:`request_stop`, e.g. on SIGTERM), raises
    :class:`Preempted`.
    """
    first = True
    rounds = 0
    while True:
        running = [r for r in restarts if r.running and r.n_iter < max_iter]
        if not running:
            break
        # Rows are validated in the first round; later rounds read the same rows.
        state = RoundState(
            family, context, [r.estep_params() for r in running], check_rows=first,
            entropy=family.needs_entropy, keep_stats=any(r.accel is not None for r in running),
        )
        first = False
        tic = time.perf_counter()
        results = run_round(runner, X, w, state, split_every=split_every, salt=runner.salt())
        rounds += 1
        seconds = time.perf_counter() - tic
        for restart, params, result in zip(running, state.params, results):
            restart.seconds += seconds
            if restart.accel is None:
                advance(restart, result, tol, family, stopping)
            else:
                accelerate.step(restart, result, params, tol=tol, rule=stopping, family=family,
                                n_rows=X.shape[0], warn=_log_failure)
            if on_iteration is not None:
                on_iteration(restart)
        if on_round is not None:
            on_round(restarts)
        if STOP_REQUESTED.is_set():
            raise Preempted(f"stopped after iteration {max(r.n_iter for r in restarts)} on request")
    return rounds


def score_restarts(X, w, restarts: list[Restart], *, family: Family, context, split_every, runner) -> list[StepResult]:
    """One pass giving the log-likelihood (and entropy) of every restart's current parameters."""
    state = RoundState(family, context, [r.estep_params() for r in restarts], entropy=True)
    return run_round(runner, X, w, state, split_every=split_every, salt=runner.salt())


def _log_failure(restart: Restart) -> None:
    logger.warning("restart %d failed at %s", restart.index, restart.error)


def advance(
    restart: Restart, result: StepResult, tol: float, family: Family | None = None, stopping: str = "change"
) -> None:
    """Record one round's result: the bound, the new parameters, convergence (by ``stopping``) or failure."""
    restart.n_iter += 1
    previous = restart.lower_bound
    restart.history.append(result.lower_bound)
    if result.error is not None:
        restart.error = f"iteration {restart.n_iter}: {result.error}"
        logger.warning("restart %d failed at %s", restart.index, restart.error)
        return
    current = result.lower_bound
    # A fall within the E-step's round-off is not a fall (float32: Family.bound_resolution);
    # beyond it, the first of a restart is warned (logged at INFO where the family's M-step lets the bound
    # fall by design, e.g. reg_covar added after it: scikit-learn is silent there), the others logged at DEBUG.
    # The first float64 bound of a refined restart follows a float32 one: their difference is
    # float32's bias in the bound (on iris, 5e-6 at a bound of -1.2), not a step of EM.
    first_refined = restart.refined_at == len(restart.history) - 1
    resolution = 0.0 if family is None else family.bound_resolution(previous, restart.estep_params())
    fell = math.isfinite(previous) and current < previous - accelerate.fall_slack(previous, resolution)
    if fell and not first_refined:
        restart.falls += 1
        hint = family.bound_fell_hint(restart.params) if family is not None else ""
        by_design = family is not None and family.bound_falls_by_design(restart.params)
        log = logger.debug if restart.falls > 1 else logger.info if by_design else logger.warning
        log(
            "restart %d: the lower bound fell at iteration %d, from %.12g to %.12g (more than "
            "round-off)%s%s",
            restart.index,
            restart.n_iter,
            previous,
            current,
            f": {hint}" if hint else "",
            "; its further falls are logged at DEBUG level" if restart.falls == 1 else "",
        )
    for k in result.dropped:
        restart.dropped.append((restart.n_iter, k))
    restart.params = result.params
    if accelerate.refine_below_resolution(restart, family, tol, previous, current):
        return
    # The stopping rule reads the bounds of one precision: after a refinement, float64's only.
    run = restart.history if restart.refined_at is None else restart.history[restart.refined_at :]
    if stopping == "change":
        reference = run[-2] if len(run) > 1 else (restart.entry_bound if restart.refined_at is None else -math.inf)
        if math.isfinite(reference) and abs(current - reference) < tol:
            restart.converged = True
    elif accelerate.has_converged(run, tol, stopping):
        restart.converged = True


# ---------------------------------------------------------------------------
# Policy: single runs, or emEM's short phase, selection and pruning
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """How the restarts of a fit are run (the estimator's settings that say so)."""

    tol: float
    max_iter: int
    n_init: int
    init_strategy: str = "single"
    short_iter: int = 10
    prune_margin: float | None = 0.01
    accelerate: str | None = None  # None (plain EM) or "squarem"
    stopping: str = "change"  # "change" (scikit-learn's) or "aitken"
    stepwise_passes: int = 0  # passes of stepwise EM before batch EM (dask_em.stepwise)

    @property
    def emem(self) -> bool:
        return self.init_strategy == "emEM"


def protected(restart: Restart, protect: tuple[str, ...] | None = None) -> bool:
    """True for a restart emEM never stops: its ``start`` kind is in ``protect`` [starts.PROTECTED_STARTS]."""
    return restart.start in (starts.PROTECTED_STARTS if protect is None else protect)


def keep_best(restarts: list[Restart], n_keep: int, protect: tuple[str, ...] | None = None) -> None:
    """End emEM's short phase: the best ``n_keep`` healthy restarts go on, the rest stop.

    Restarts of a protected start kind (:func:`protected`: mclust's hierarchical start) go on
    whatever their short-phase bound, and take none of the ``n_keep`` places: those go to the
    best of the other restarts, so adding a protected start never stops one that went on before.
    """
    for r in restarts:
        r.short_iter = max(r.n_iter, 1)
    ranked = sorted((r for r in restarts if r.error is None and r.params is not None and not protected(r, protect)),
                    key=lambda r: r.lower_bound, reverse=True)
    for r in ranked[n_keep:]:
        if not r.converged:
            r.stopped = f"not among the best {n_keep} after {r.n_iter} short iterations"


def prune(restarts: list[Restart], margin: float | None, protect: tuple[str, ...] | None = None) -> None:
    """Stop long-phase restarts whose projected bound stays below the best by ``margin``.

    A protected restart (:func:`protected`) is never pruned; it still sets the best.
    """
    if margin is None:
        return
    healthy = [r for r in restarts if r.error is None and r.history and math.isfinite(r.lower_bound)]
    if not healthy:
        return
    best = max(r.lower_bound for r in healthy)
    for r in healthy:
        h = r.history
        if not r.running or r.n_iter - r.short_iter < 2 or len(h) < 3 or protected(r, protect):
            continue
        last, before = h[-1] - h[-2], h[-2] - h[-3]
        rho = min(max(last / before, 0.0), 0.99) if before > 0 else 0.99
        projected = h[-1] + max(last, 0.0) * rho / (1.0 - rho)
        if projected + margin < best:
            r.stopped = (
                f"pruned at iteration {r.n_iter}: projected bound {projected:.6g} is more than "
                f"{margin} below the best {best:.6g}"
            )


def run_schedule(
    X: da.Array,
    w: da.Array | None,
    groups: list[list[Restart]],
    schedule: Schedule,
    *,
    family: Family,
    context: Any,
    split_every: int | None,
    runner,
    on_iteration: Callable[[Restart], None] | None = None,
    save: Callable[[list[Restart]], None] | None = None,
) -> int:
    """Run every group's restarts by ``schedule``, all groups in the same rounds; returns the rounds run.

    ``save`` (the checkpoint) runs after every round and after emEM's selection.
    A resumed fit whose restarts already went through the short phase goes
    straight on with the long one.
    """
    everything = [r for group in groups for r in group]
    if schedule.accelerate == "squarem":
        for r in everything:
            if r.accel is None:  # a resumed restart keeps its cycle
                r.accel = accelerate.Squarem()

    def on_round(_restarts: list[Restart]) -> None:
        if schedule.emem and any(r.short_iter for r in everything):
            for group in groups:
                prune(group, schedule.prune_margin)
        if save is not None:
            save(everything)

    common = dict(
        family=family, context=context, tol=schedule.tol, split_every=split_every, runner=runner,
        on_iteration=on_iteration, on_round=on_round, stopping=schedule.stopping,
    )
    def on_batch(_restarts: list[Restart]) -> None:
        if save is not None:
            save(everything)
        if STOP_REQUESTED.is_set():
            raise Preempted("stopped mid-way through stepwise EM on request")

    rounds = 0
    if schedule.stepwise_passes:
        rounds += stepwise.run_stepwise(
            X, w, everything, passes=schedule.stepwise_passes, family=family, context=context,
            split_every=split_every, runner=runner, on_iteration=on_iteration,
            on_batch=on_batch,
        )
    if schedule.emem and not any(r.short_iter for r in everything):
        rounds += run_rounds(X, w, everything, max_iter=min(schedule.short_iter, schedule.max_iter), **common)
        for group in groups:
            keep_best(group, schedule.n_init)
        if save is not None:
            save(everything)
    rounds += run_rounds(X, w, everything, max_iter=schedule.max_iter, **common)
    return rounds
