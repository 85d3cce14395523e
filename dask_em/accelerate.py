"""Fewer passes to the same optimum: SQUAREM in the space of the expected sufficient statistics, and stopping rules.

**Stopping rules** (:func:`has_converged`) read the bounds of a run of plain EM
iterates (``L_0, L_1, ...``, each the mean log-likelihood per row):

* ``"change"``: scikit-learn's rule, ``|L_k - L_{k-1}| < tol``. Scale-blind: a
  slow fit changes little per iteration while it is still far from its optimum.
* ``"aitken"`` (Böhning et al. 1994; McNicholas et al. 2010): EM converges
  linearly, ``L_inf - L_k ~ a (L_k - L_{k-1}) / (1 - a)`` with the rate
  ``a = (L_k - L_{k-1}) / (L_{k-1} - L_{k-2})``; stop when that estimated
  *remaining gain per row* is below ``tol`` (:func:`remaining_gain`) for
  :data:`AITKEN_RUN` consecutive estimates. Early in a fit the rate still
  grows, and one estimate made with a rate that is too small under-estimates
  the remaining gain (a Bernoulli fit stopped after 4 passes, its parameters
  0.10 from the converged ones); a growing rate moves the next estimates up,
  so a run of estimates below ``tol`` is the evidence that the linear regime
  has been reached.

Each rule's default threshold (:func:`default_tol`; in force for ``tol=None``,
and for Aitken's rule picked by ``stopping="auto"`` as the cap ``min(tol, ...)``,
so the estimators' default ``tol=1e-3`` keeps it) is scikit-learn's 1e-3 for the
change rule, and for Aitken's ``1 / n_samples`` clipped to ``[1e-6, 1e-3]``:
a remaining gain of about one nat of total log-likelihood, below which the optimisation error is smaller than the sampling error of the
parameters (a likelihood-ratio difference of a few nats is noise), and no
looser than scikit-learn's rule on small data nor tighter than 1e-6 per row on
very large data, where each pass is expensive.

**SQUAREM** (Varadhan & Roland 2008, the SqS3 step) extrapolates the EM map.
Here the map is taken on the expected sufficient statistics ``s`` (the M-step's
input): ``G(s) = E(M(s))``. From three consecutive statistics ``s0, s1 = G(s0),
s2 = G(s1)`` (two passes after the one that gave ``s0``)::

    r = s1 - s0,  v = s2 - 2 s1 + s0,  alpha = -sqrt(<r, r> / <v, v>)   (SqS3)
    s' = s0 - 2 alpha r + alpha^2 v,   theta' = M(s')

``alpha = -1`` gives ``s' = s2``, plain EM. Statistics are additive float
arrays with the component axis first for every family, so the extrapolation is
family-agnostic and needs no parameter transform: a family only re-expresses
statistics taken about different centres in one frame
(``Family.align_stats``) and says when extrapolated statistics are outside the
set real data can produce (``Family.invalid_stats``); the M-step itself refuses
a covariance that is not positive definite.

Safeguards: ``alpha`` is capped in ``[-step_max, -1]``; ``step_max`` starts at 1,
grows 4x when a step at the cap is accepted, up to :data:`MAX_STEP`, and shrinks
4x when one at the cap is refused or invalid, to no less than :data:`SHRINK_FLOOR`
(the ``squarem`` package's policy in effect: see :func:`_shrunk`). Extrapolated
statistics outside the valid set (or whose M-step fails) are known to be so
without a pass: the step is backtracked toward plain EM's,
``alpha <- (alpha - 1) / 2``, up to :data:`BACKTRACKS` times (M-steps only);
only if none is valid does the fit take the plain EM iterate ``M(s2)``. A valid
point is used only if its bound (computed by the next pass) is not below the
bound of the last plain EM iterate; otherwise the fit falls back to ``M(s2)``,
so a refused step costs one pass and loses nothing. Accepted bounds never fall
(beyond round-off), as in plain EM.

The cycle: once the point ``theta' = M(s')`` is accepted, ``s'`` itself is the
first of the next three statistics, the pass at ``theta'`` (which also checked
it) gives the second and one plain EM pass the third: two passes per cycle.
(Varadhan & Roland's stabilisation, starting the next cycle from the statistics
of the pass at ``theta'``, costs a third pass per cycle: measured on
``benchmarks/bench_passes.py`` it took 1.86x fewer passes than plain EM at the
median against 2.09x without it, with the backtracking above.) Aitken's rule
needs a run of three plain iterates, which a two-pass cycle does not give:
when the last plain change is below ``tol`` the cycle waits one plain pass.

Extrapolation starts only once plain EM decelerates (:func:`_rate_settled`: its
last three changes positive and decreasing, i.e. two consecutive rate
estimates ``dL_k / dL_{k-1}`` in (0, 1)), the contracting regime SqS3's secant
model assumes; on ``benchmarks/bench_passes.py`` this gate is worth 2.09x ->
2.11x at the median. On breast_cancer (tied, K=6), without it the fit ended at
another fixed point, 2.8e-2 nats/row (1.0e-1 with two-pass cycles) below plain
EM's, one that 1,500 plain EM passes do not leave (a local maximum, not a
stall); with it the first extrapolation comes one pass later and the fit
reaches plain EM's fixed point. That is luck, not a guarantee: starting the
cap at 4 instead of 1 moves the first extrapolation back one pass and the fit
ends in the lower basin again, and from ``random_state`` 0-7 one start still
ends lower (2.2e-3 nats/row), two higher, as before the gate
(``benchmarks/bench_basins.py``). Which fixed point an extrapolated path
reaches is not controlled by any rule on the bounds.

Each pass counts as one iteration (``n_iter``), refused ones included.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from .engine import RoundState, mstep_round
from .family import Family, empty_components

logger = logging.getLogger("dask_em")

ACCELERATIONS = (None, "squarem")
# Aitken's rule stops after this many consecutive estimates below tol (one per plain EM
# iterate; one per cycle of an accelerated restart, whose runs of plain iterates are short).
AITKEN_RUN = 3
ACCEL_AITKEN_RUN = 2
# The default tol of Aitken's rule: 1 / n_samples within these bounds (nats per row).
AITKEN_TOL_BOUNDS = (1e-6, 1e-3)
CHANGE_TOL = 1e-3  # scikit-learn's default, for the change rule
STOPPING_RULES = ("change", "aitken")
# The largest extrapolation step: past it a step only re-walks the same line.
MAX_STEP = 256.0
# An extrapolated point whose bound is below the plain EM iterate's by more than this
# (relative) is refused; round-off at a fixed point must not count as a fall.
BOUND_SLACK = 1e-13
# An invalid extrapolated point is backtracked, alpha <- (alpha - 1) / 2, at most this many
# times (no pass: validity is known from the statistics); a step within BACKTRACK_FLOOR of
# -1 is plain EM's.
BACKTRACKS = 5
# A refused or invalid step at the cap shrinks it 4x, to no less than this (squarem1's net effect).
SHRINK_FLOOR = 4.0
BACKTRACK_FLOOR = 1e-2


# ---------------------------------------------------------------------------
# Stopping rules
# ---------------------------------------------------------------------------


def remaining_gain(bounds: list[float]) -> float:
    """Aitken's estimate of ``L_inf - L_k`` from the last three bounds of a plain EM run (inf if unknown).

    A rate ``a`` in (0, 1) gives ``(L_k - L_{k-1}) a / (1 - a)``; a rate >= 1
    (not yet linear) gives inf; a non-positive rate (the bound stalled or fell,
    e.g. with ``reg_covar``) gives the last change's size.
    """
    if len(bounds) < 3 or not all(math.isfinite(b) for b in bounds[-3:]):
        return math.inf
    before, last = bounds[-2] - bounds[-3], bounds[-1] - bounds[-2]
    if last == 0.0:
        return 0.0
    if before == 0.0:
        return abs(last)
    rate = last / before
    if rate >= 1.0:
        return math.inf
    if rate <= 0.0:
        return abs(last)
    return abs(last) * rate / (1.0 - rate)


def default_tol(rule: str, n_samples: int) -> float:
    """``tol=None`` resolved: 1e-3 for the change rule, ``1 / n_samples`` in [1e-6, 1e-3] for Aitken's."""
    if rule != "aitken":
        return CHANGE_TOL
    low, high = AITKEN_TOL_BOUNDS
    return min(high, max(low, 1.0 / max(n_samples, 1)))


def has_converged(bounds: list[float], tol: float, rule: str) -> bool:
    """Whether a run of plain EM bounds has converged by ``rule`` ("change" or "aitken").

    Aitken's rule needs its last :data:`AITKEN_RUN` estimates of the remaining gain below ``tol``.
    """
    if rule == "aitken":
        n = len(bounds)
        return n >= AITKEN_RUN + 2 and all(remaining_gain(bounds[: n - j]) < tol for j in range(AITKEN_RUN))
    if len(bounds) < 2 or not math.isfinite(bounds[-2]):
        return False
    return abs(bounds[-1] - bounds[-2]) < tol


# A reduced-precision E-step (compute_dtype="float32") computes the bound to a
# resolution (Family.bound_resolution). When ``tol`` asks for less than that, the
# rule cannot be met on those bounds: once the bound's change has stayed within
# the resolution for ROUNDOFF_RUN iterations in a row, the restart's further
# E-steps run in float64 (params["compute_dtype"]), where the rule applies as in
# any float64 fit. Stopping there instead would leave the parameters as far from
# the fixed point as a float64 fit stopped at a tol of the resolution's size.
ROUNDOFF_RUN = 3


def fall_slack(bound: float, resolution: float) -> float:
    """How far a bound may fall below ``bound`` as round-off: float64's, or the E-step's ``resolution``."""
    return max(1e-9 * max(1.0, abs(bound)), resolution)


def refine_below_resolution(restart, family: Family | None, tol: float, previous: float, current: float) -> bool:
    """Whether ``tol`` is below what this restart's bounds resolve (then no stopping test this round).

    Counts the iterations in a row whose change is within the resolution; at
    :data:`ROUNDOFF_RUN` the restart is refined: ``restart.refined_at`` is set
    to the index in ``restart.history`` of its first float64 bound (the next
    round's), and its E-step parameters carry ``compute_dtype="float64"``.
    """
    if family is None or restart.refined_at is not None or tol <= 0:
        return False  # tol=0 runs max_iter iterations of the E-step's own precision
    resolution = family.bound_resolution(current, restart.params)
    if not resolution > tol:
        return False
    within = math.isfinite(previous) and abs(current - previous) <= resolution
    restart.roundoff_run = restart.roundoff_run + 1 if within else 0
    if restart.roundoff_run >= ROUNDOFF_RUN:
        restart.refined_at = len(restart.history)
        logger.info(
            "restart %d: at iteration %d its bound's change has stayed within the E-step's round-off "
            "(%.2g) for %d iterations, and tol=%g asks for less: its next iterations compute in float64",
            restart.index, restart.n_iter, resolution, ROUNDOFF_RUN, tol,
        )
    return True


# ---------------------------------------------------------------------------
# SQUAREM state of one restart
# ---------------------------------------------------------------------------


@dataclass
class Squarem:
    """One restart's SQUAREM cycle: what it has seen, what it is checking, its counters.

    ``seen`` holds up to three (entering parameters, statistics record) pairs
    of consecutive plain EM passes; ``run`` the bounds of the current run of
    plain EM iterates (the stopping rule reads it); ``pending`` the
    extrapolated point being checked by the pass in flight: the bound to beat,
    the fallback parameters (the plain EM iterate) and the state to return to.
    """

    step_max: float = 1.0
    seen: list[tuple[dict, dict]] = field(default_factory=list)
    run: list[float] = field(default_factory=list)
    pending: dict | None = None
    n_extrapolated: int = 0
    n_rejected: int = 0  # extrapolated points whose bound fell below the plain EM iterate's
    n_invalid: int = 0  # extrapolated statistics outside the valid set (or an M-step that failed)
    n_backtracked: int = 0  # invalid extrapolations rescued by a shorter step
    warm: bool = False  # plain EM's rate has settled: extrapolation may start (see _rate_settled)
    below: int = 0  # consecutive Aitken estimates below tol (ACCEL_AITKEN_RUN of them stop the restart)

    def summary(self) -> dict:
        return {
            "extrapolated": self.n_extrapolated, "rejected": self.n_rejected, "invalid": self.n_invalid,
            "backtracked": self.n_backtracked, "step_max": self.step_max,
        }

    # -- checkpoint form: nested dicts of arrays and JSON scalars --------------

    def to_state(self) -> dict:
        return {
            "step_max": self.step_max, "seen": [[p, rec] for p, rec in self.seen], "run": list(self.run),
            "pending": self.pending, "below": self.below, "warm": self.warm,
            "counters": [self.n_extrapolated, self.n_rejected, self.n_invalid, self.n_backtracked],
        }

    @classmethod
    def from_state(cls, state: dict) -> "Squarem":
        out = cls(step_max=float(state["step_max"]), seen=[(p, rec) for p, rec in state["seen"]],
                  run=[float(b) for b in state["run"]], pending=state["pending"])
        counters = [int(c) for c in state["counters"]] + [0]  # a checkpoint before backtracking had three
        out.n_extrapolated, out.n_rejected, out.n_invalid, out.n_backtracked = counters[:4]
        out.below = int(state.get("below", 0))
        out.warm = bool(state.get("warm", True))  # a checkpoint from before the warm-up rule
        if out.pending is not None:
            out.pending["run"] = [float(b) for b in out.pending["run"]]
            out.pending["seen"] = [(p, rec) for p, rec in out.pending["seen"]]
            if out.pending.get("extrap") is not None:
                out.pending["extrap"] = list(out.pending["extrap"])
        return out


def _arrays(record: dict) -> list[np.ndarray]:
    return [np.asarray(record["nk"], dtype=np.float64)] + [
        np.asarray(v, dtype=np.float64) for _, v in sorted(record["stats"].items())
        if isinstance(v, np.ndarray) or isinstance(v, float)
    ]


def _combine(records: list[dict], coefficients: list[float]) -> dict:
    """sum_i c_i records_i, key by key (statistics are additive)."""
    stats = {}
    for key, value in records[0]["stats"].items():
        if isinstance(value, (np.ndarray, float, np.floating)):
            stats[key] = sum(c * rec["stats"][key] for c, rec in zip(coefficients, records))
        else:
            stats[key] = value
    return {"nk": sum(c * rec["nk"] for c, rec in zip(coefficients, records)), "stats": stats}


def _dot(a: dict, b: dict) -> float:
    return math.fsum(float(np.vdot(x, y)) for x, y in zip(_arrays(a), _arrays(b)))


def sqs3_alpha(s0: dict, s1: dict, s2: dict, step_max: float) -> tuple[float, dict, dict]:
    """SqS3's step length capped in [-step_max, -1], with ``r = s1 - s0`` and ``v = s2 - 2 s1 + s0``."""
    r = _combine([s1, s0], [1.0, -1.0])
    v = _combine([s2, s1, s0], [1.0, -2.0, 1.0])
    rr, vv = _dot(r, r), _dot(v, v)
    alpha = -math.sqrt(rr / vv) if vv > 0 and math.isfinite(rr / vv) else -1.0
    return min(-1.0, max(alpha, -step_max)), r, v


def sqs3_point(s0: dict, r: dict, v: dict, alpha: float) -> dict:
    """The extrapolated statistics ``s0 - 2 alpha r + alpha^2 v``."""
    return _combine([s0, r, v], [1.0, -2.0 * alpha, alpha * alpha])


def _same_shapes(records: list[dict]) -> bool:
    first = records[0]
    return all(
        rec["nk"].shape == first["nk"].shape
        and all(np.shape(rec["stats"][k]) == np.shape(v) for k, v in first["stats"].items())
        for rec in records[1:]
    )


def _checked(s_new: dict, family: Family, n_rows: int, wsum: float, frame: dict) -> tuple[dict | None, str | None]:
    """theta' = M(s') if s' is in the valid set and its M-step succeeds: (parameters, None) or (None, why not)."""
    nk = s_new["nk"]
    if not np.all(np.isfinite(nk)) or empty_components(nk, wsum, n_rows).any():
        return None, "a component's extrapolated mass is not positive"
    bad = family.invalid_stats(s_new["stats"], nk)
    if bad is not None:
        return None, bad
    record = {"loglik": 0.0, "wsum": wsum, "entropy": 0.0, "nk": nk, "stats": s_new["stats"]}
    result = mstep_round([record], RoundState(family, None, [frame]), n_rows)[0]
    if result.error is not None or result.dropped:
        return None, result.error or "a component emptied"
    if not all(np.all(np.isfinite(v)) for v in result.params.values() if isinstance(v, np.ndarray)):
        return None, "the extrapolated parameters are not finite"
    return result.params, None


def extrapolate(
    acc: Squarem, family: Family, n_rows: int, wsum: float
) -> tuple[float, dict | None, str | dict | None]:
    """SQUAREM's point from ``acc.seen`` (three passes): (alpha, new parameters or None, statistics or why not).

    An extrapolated point outside the valid set (or whose M-step fails) is known
    without a pass, so the step is backtracked toward plain EM's,
    ``alpha <- (alpha - 1) / 2``, up to :data:`BACKTRACKS` times (each costs an
    M-step, no pass); ``acc.n_invalid`` counts the extrapolations whose first
    step was invalid, ``acc.n_backtracked`` those a shorter step rescued. The
    returned ``alpha`` is the first step's when none is valid (its reason is
    the third item), else the step taken.
    """
    (p0, s0), (p1, s1), (p2, s2) = acc.seen
    s0 = {"nk": s0["nk"], "stats": family.align_stats(s0["stats"], p0, p2)}
    s1 = {"nk": s1["nk"], "stats": family.align_stats(s1["stats"], p1, p2)}
    first, r, v = sqs3_alpha(s0, s1, s2, acc.step_max)
    alpha, why = first, None
    for attempt in range(BACKTRACKS + 1):
        if alpha >= -1.0 - BACKTRACK_FLOOR:
            return first, None, why  # plain EM's own next point (or nothing valid beyond it)
        s_new = sqs3_point(s0, r, v, alpha)
        params, reason = _checked(s_new, family, n_rows, wsum, p2)
        if params is not None:
            if attempt:  # the first step was invalid: counted, and the cap shrinks if it was at the cap
                acc.n_invalid += 1
                acc.n_backtracked += 1
                if first <= -acc.step_max:
                    acc.step_max = _shrunk(acc.step_max)
            return alpha, params, s_new
        if attempt == 0:
            why = reason
        alpha = (alpha - 1.0) / 2.0
    return first, None, why


def _estep_params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in ("dropped", "error")}


def step(restart, result, entering: dict, *, tol: float, rule: str, family: Family, n_rows: int, warn) -> None:
    """Record one pass of an accelerated restart: check a pending point, collect, extrapolate.

    ``entering`` are the parameters the pass evaluated; ``result`` its
    :class:`~dask_em.engine.StepResult` (with ``record``, its statistics);
    ``warn(message)`` logs a failure.
    """
    acc: Squarem = restart.accel
    restart.n_iter += 1
    pending, acc.pending = acc.pending, None
    if pending is not None:
        slack = max(BOUND_SLACK * max(1.0, abs(pending["bound"])),
                    family.bound_resolution(pending["bound"], restart.params))
        fell = result.error is None and result.lower_bound < pending["bound"] - slack
        if result.error is not None or fell:
            # Back to the plain EM iterate the extrapolation replaced; nothing of it is kept.
            if fell:
                acc.n_rejected += 1
            else:
                acc.n_invalid += 1
            if pending["alpha"] <= -acc.step_max:
                acc.step_max = _shrunk(acc.step_max)
            restart.params = pending["fallback"]
            acc.seen, acc.run, acc.below = pending["seen"], pending["run"], int(pending.get("below", 0))
            return
        if pending["alpha"] <= -acc.step_max:
            acc.step_max = min(MAX_STEP, acc.step_max * 4.0)
        acc.run = []  # the extrapolated point starts a new run of plain EM iterates
        if pending.get("extrap") is not None:
            # s' itself is the first point of the next cycle (no stabilisation pass)
            acc.seen = [tuple(pending["extrap"])]
    if result.error is not None:
        restart.history.append(result.lower_bound)
        restart.error = f"iteration {restart.n_iter}: {result.error}"
        warn(restart)
        return
    restart.history.append(result.lower_bound)
    acc.run.append(result.lower_bound)
    for k in result.dropped:
        restart.dropped.append((restart.n_iter, k))
    restart.params = result.params
    previous = acc.run[-2] if len(acc.run) > 1 else math.nan
    refined = restart.refined_at
    if refine_below_resolution(restart, family, tol, previous, result.lower_bound):
        if restart.refined_at != refined:  # float64 from the next pass: a new run, a new cycle
            acc.run, acc.seen, acc.below = [], [], 0
        return
    if _converged(acc, tol, rule):
        restart.converged = True
        return
    acc.seen = [] if result.dropped else acc.seen[-2:] + [(_estep_params(entering), result.record)]
    if len(acc.seen) < 3 or not _same_shapes([rec for _, rec in acc.seen]):
        acc.seen = acc.seen[-1:] if len(acc.seen) == 3 else acc.seen
        return
    if not acc.warm:
        if not _rate_settled(acc.run):
            acc.seen = acc.seen[1:]  # slide the window: plain EM until its rate has settled
            return
        acc.warm = True
    if rule == "aitken" and len(acc.run) == 2 and abs(acc.run[-1] - acc.run[-2]) < tol:
        # Near the end: one more plain pass gives a run of three, which Aitken's rule reads.
        acc.seen = acc.seen[1:]
        return
    alpha, params, why = extrapolate(acc, family, n_rows, result.wsum)
    last = acc.seen[-1]
    if params is None:
        if why is not None:
            acc.n_invalid += 1
            if alpha <= -acc.step_max:
                acc.step_max = _shrunk(acc.step_max)
        elif alpha <= -acc.step_max:  # plain EM's step, held back by the cap: allow a longer one
            acc.step_max = min(MAX_STEP, acc.step_max * 4.0)
        acc.seen = [last]
        return
    acc.n_extrapolated += 1
    acc.pending = {
        "bound": result.lower_bound, "alpha": alpha, "fallback": result.params,
        "seen": [last], "run": list(acc.run), "below": acc.below,
        "extrap": [acc.seen[-1][0], why],
    }
    # s' itself starts the next cycle once theta' is accepted (no stabilisation pass): a
    # cycle is two passes, the pass at theta' (which checks it) and one plain EM step.
    acc.seen = []
    restart.params = params


def _shrunk(step_max: float) -> float:
    """The cap after a refused or invalid step at the cap: 4x shorter, but not below SHRINK_FLOOR.

    squarem1 (R package SQUAREM) shrinks ``step.max`` 4x to at least ``step.max0 = 1``
    and then, the fallback's ``alpha = 1`` being at that cap, grows it back to 4 in the
    same cycle: its cap never stays at 1 once it has grown.
    """
    return max(SHRINK_FLOOR, step_max / 4.0)


def _rate_settled(run: list[float]) -> bool:
    """Whether plain EM is decelerating: its last three changes positive and each smaller than the one before.

    That is, two consecutive rate estimates ``a_k = dL_k / dL_{k-1}`` in (0, 1): the
    contracting regime SqS3's secant model assumes. Changes that grow (EM leaving a
    plateau) or a bound that falls (``reg_covar`` near a fixed point) keep plain EM on.
    """
    if len(run) < 4:
        return False
    d = np.diff(run[-4:])
    return bool(np.all(d > 0) and d[1] < d[0] and d[2] < d[1])


def _converged(acc: Squarem, tol: float, rule: str) -> bool:
    """The stopping rule on an accelerated restart's current run of plain EM iterates.

    Aitken's rule counts the consecutive estimates below ``tol`` across cycles (a
    cycle's run holds two plain iterates, three when the cycle waits a pass near
    the end: one estimate).
    """
    if rule != "aitken":
        return has_converged(acc.run, tol, rule)
    if len(acc.run) < 3:
        return False
    acc.below = acc.below + 1 if remaining_gain(acc.run) < tol else 0
    return acc.below >= ACCEL_AITKEN_RUN

