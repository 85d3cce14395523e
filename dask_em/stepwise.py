"""Stepwise (online) EM (Cappé & Moulines 2009; Liang & Klein 2009): the first passes, and ``partial_fit``.

Stepwise EM keeps a running estimate ``s`` of the expected sufficient
statistics and, after each mini-batch of row chunks, mixes in that batch's
statistics and takes an M-step::

    s <- (1 - g_t) s + g_t s_hat(batch),   g_t = (t + 2) ** -alpha,   theta <- M(s)

The first update (``t = 0``, no ``s`` yet) takes ``g = 1``: ``s = s_hat``.
``s_hat(batch)`` is the batch's statistics scaled by ``scale`` (``n_rows /
rows in the batch`` inside a fit: an estimate of the full data's statistics,
so that a pseudo-count or a prior weighs as in batch EM). Statistics taken
under different parameters are re-expressed in one frame
(``Family.align_stats``) before they are mixed, as SQUAREM does.

Inside a fit (``stepwise_passes``): each pass visits the chunks in a random
order (drawn from the first restart's seed and the pass number, so a resumed
fit draws the same order), in mini-batches of :func:`batch_chunks` chunks; all
restarts share each batch's read. Then batch EM (accelerated or not) runs from
there to convergence, so the answer is still an exact EM fixed point. A pass
(every chunk read once) counts as one iteration (``n_iter_``, ``n_passes_``);
its entry in a restart's history is NaN: the batches' bounds belong to moving
parameters, none is the bound of one set of parameters, and a stopping rule
must not read them.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .engine import RoundState, mstep_round, run_round, take_blocks
from .family import Family

STEP_EXPONENT = 0.6  # alpha in (0.5, 1]: Liang & Klein's good range for mixtures
BATCHES_PER_PASS = 8  # mini-batches per pass (at least one chunk each)


def step_size(t: int, alpha: float = STEP_EXPONENT) -> float:
    """g_t = (t + 2) ** -alpha; the first update (t = 0 with no statistics yet) uses 1 instead."""
    return (t + 2.0) ** -alpha


def batch_chunks(n_chunks: int) -> int:
    """Chunks per mini-batch: ``ceil(n_chunks / BATCHES_PER_PASS)``."""
    return max(1, math.ceil(n_chunks / BATCHES_PER_PASS))


def pass_batches(n_chunks: int, seed: int, pass_index: int) -> list[list[int]]:
    """The mini-batches (chunk indices) of one pass, in a random order fixed by (seed, pass)."""
    order = np.random.default_rng([int(seed) % (2**32), int(pass_index)]).permutation(n_chunks)
    size = batch_chunks(n_chunks)
    return [sorted(int(i) for i in order[j:j + size]) for j in range(0, n_chunks, size)]


def _scaled(record: dict, factor: float) -> dict:
    stats = {k: (v * factor if isinstance(v, (np.ndarray, float, np.floating)) else v)
             for k, v in record["stats"].items()}
    return {"nk": record["nk"] * factor, "stats": stats}


def _mix(old: dict, new: dict, g: float) -> dict:
    stats = {}
    for k, v in new["stats"].items():
        stats[k] = (1.0 - g) * old["stats"][k] + g * v if isinstance(v, (np.ndarray, float, np.floating)) else v
    return {"nk": (1.0 - g) * old["nk"] + g * new["nk"], "stats": stats}


def update(state: dict | None, record: dict, entering: dict, *, family: Family, scale: float,
           alpha: float = STEP_EXPONENT, gamma: float | None = None) -> dict:
    """One stepwise update of ``state`` ({"t", "s", "frame"} or None) with a batch's statistics.

    ``record`` is the batch's reduced ``{"nk", "stats"}`` under the parameters
    ``entering``; ``gamma`` overrides the step size ``g_t`` (tests use 1).
    Returns the new state: ``s`` in the frame of ``entering``.
    """
    batch = _scaled(record, scale)
    if state is None:
        return {"t": 1, "s": batch, "frame": entering}
    g = step_size(state["t"], alpha) if gamma is None else gamma
    old = state["s"]
    old = {"nk": old["nk"], "stats": family.align_stats(old["stats"], state["frame"], entering)}
    return {"t": state["t"] + 1, "s": _mix(old, batch, g), "frame": entering}


def m_step(state: dict, family: Family, n_rows: int, wsum: float):
    """theta = M(s): a :class:`~dask_em.engine.StepResult` (its ``error`` set when the M-step failed)."""
    s = state["s"]
    record = {"loglik": 0.0, "wsum": wsum, "entropy": 0.0, "nk": s["nk"], "stats": s["stats"]}
    return mstep_round([record], RoundState(family, None, [state["frame"]]), n_rows)[0]


def _estep_params(params: dict) -> dict:
    return {k: v for k, v in params.items() if k not in ("dropped", "error")}


def run_stepwise(X, w, restarts: list, *, passes: int, family: Family, context, split_every, runner,
                 on_iteration: Callable | None = None, on_batch: Callable | None = None) -> int:
    """Stepwise EM for ``passes`` passes on every running restart, sharing each batch's read.

    A restart's progress lives in ``restart.stepwise`` ({"t", "s", "frame",
    "pass", "batch", "bounds"}: a checkpoint after any batch resumes there);
    it is set to ``{"done": True}`` at the end. A restart whose batch loses a
    component or whose M-step fails leaves stepwise EM with the parameters it
    has (batch EM goes on from there). ``on_batch`` (the checkpoint) runs after
    each batch. Returns the passes run.
    """
    n_chunks, n_rows = X.numblocks[0], X.shape[0]
    lead = restarts[0]
    done = 0
    while True:
        active = [r for r in restarts if r.running and not (r.stepwise or {}).get("done")]
        if not active:
            return done
        for r in active:
            if r.stepwise is None:
                r.stepwise = {"t": 0, "s": None, "frame": None, "pass": 0, "batch": 0, "bounds": []}
        progress = active[0].stepwise  # restarts that run together share (pass, batch)
        if progress["pass"] >= passes:
            for r in active:
                r.stepwise = {"done": True}
            return done
        batches = pass_batches(n_chunks, lead.seed, progress["pass"])
        index = batches[progress["batch"]]
        xb = take_blocks(X, index)
        wb = take_blocks(w, index) if w is not None else None
        entering = [r.estep_params() for r in active]
        state = RoundState(family, context, entering, check_rows=progress["pass"] == 0, keep_stats=True)
        results = run_round(runner, xb, wb, state, split_every=split_every, salt=runner.salt())
        last_batch = progress["batch"] + 1 == len(batches)
        for r, params, result in zip(active, entering, results):
            sw = r.stepwise
            if result.error is None and not result.dropped:
                held = None if sw["s"] is None else {"t": sw["t"], "s": sw["s"], "frame": sw["frame"]}
                new = update(held, result.record, params, family=family, scale=n_rows / xb.shape[0])
                step = m_step(new, family, n_rows, result.wsum * n_rows / xb.shape[0])
                if step.error is None and not step.dropped:
                    sw.update(new)
                    r.params = step.params
                    sw["bounds"].append(result.lower_bound)
                else:
                    sw["leave"] = True
            else:
                sw["leave"] = True
            sw["batch"] += 1
            if last_batch:
                sw["pass"], sw["batch"] = sw["pass"] + 1, 0
                r.n_iter += 1
                r.history.append(math.nan)
                sw["bounds"] = []
                if sw.pop("leave", False):
                    r.stepwise = {"done": True}
                if on_iteration is not None:
                    on_iteration(r)
        if last_batch:
            done += 1
        if on_batch is not None:
            on_batch(restarts)
