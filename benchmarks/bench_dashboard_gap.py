"""The idle gap between EM rounds that the dashboard's task stream shows, measured.

A fit on a 2-worker ``LocalCluster`` (1 thread each, what ``Client()`` gives on
a 2-core machine), from a Zarr store on disk, ``tol=0`` for a fixed number of
rounds. The scheduler's task stream (``client.get_task_stream``) gives each
task's compute start and stop on its worker; the client's own clock (the same
machine, the same ``time.time``) marks when each round's graph was built and
when its result came back. Per round boundary:

* gap        last M-step stop -> first task start of the next round: no worker
             computes anything of the fit
* result     M-step stop -> ``compute`` returns on the client (the scheduler
             learns the task finished, the client gathers the parameters)
* client     the client's bookkeeping: lower bounds, progress, checkpoint
* graph      ``round_graph``: building the next round's graph
* submit     graph built -> first task computing on a worker (serialization,
             the scheduler's ``update_graph``, dispatch)
* tail       last E-step stop -> M-step stop: the reduction's tail, when at
             most one worker computes (part of the round, not of the gap)
* period     M-step stop -> next M-step stop
* idle %     the share of the period's 2 x period worker-seconds not computing
             (gap, tail and uneven E-steps together)

Usage::

    python benchmarks/bench_dashboard_gap.py                      # 2M x 16, K=8 full, n_init=4
    python benchmarks/bench_dashboard_gap.py --samples 200000     # a quick run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--n-init", type=int, default=4)
    parser.add_argument("--chunk-rows", type=int, default=125_000)
    parser.add_argument("--rounds", type=int, default=6, help="EM iterations (tol=0)")
    parser.add_argument("--trim", action="store_true",
                        help="keep the nanny's MALLOC_TRIM_THRESHOLD_ (Client()'s default is to set it)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    import dask
    from distributed import Client, LocalCluster

    import dask_em
    import dask_em.engine as engine
    from dask_em.runner import Runner
    from dask_em.cli import _generate

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-gap-")
    path = os.path.join(workdir, "points.zarr")
    tic = time.perf_counter()
    _generate(path, args.samples, args.features, args.components, 1, args.chunk_rows, 6.0, None, None, True)
    print(f"generated {args.samples:,} x {args.features} in {time.perf_counter() - tic:.1f} s")

    # Client-side marks, on the clock the workers' task stream uses (time.time).
    marks: list[tuple[str, float]] = []
    round_graph, compute = engine.round_graph, Runner.compute

    def timed_round_graph(*a, **k):
        marks.append(("graph-start", time.time()))
        graph = round_graph(*a, **k)
        marks.append(("graph-end", time.time()))
        return graph

    def timed_compute(self, obj):
        value = compute(self, obj)
        marks.append(("returned", time.time()))
        return value

    engine.round_graph, Runner.compute = timed_round_graph, timed_compute
    config = {} if args.trim else {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    try:
        with dask.config.set(config), LocalCluster(n_workers=2, threads_per_worker=1) as cluster, \
                Client(cluster) as client:
            gm = dask_em.GaussianMixture(args.components, n_init=args.n_init, tol=0, max_iter=args.rounds,
                                         random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                client.get_task_stream()  # registers the scheduler's task-stream plugin
                start, tic = time.time(), time.perf_counter()
                gm.fit(path)
                seconds = time.perf_counter() - tic
            tasks = client.get_task_stream(start=start)
    finally:
        engine.round_graph, Runner.compute = round_graph, compute
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = analyse(tasks, marks)
    print(f"fit: {seconds:.1f} s, {gm.n_iter_} rounds of {args.samples:,} x {args.features}, K={args.components} full, "
          f"n_init={args.n_init}, {args.chunk_rows:,}-row chunks, 2 workers x 1 thread"
          f"{'' if args.trim else ', MALLOC_TRIM_THRESHOLD_ unset'}")
    cols = ["period", "gap", "result", "client", "graph", "submit", "tail", "gap %", "tail %", "idle %"]
    print("| round | " + " | ".join(cols) + " |")
    print("|" + " --- |" * (len(cols) + 1))
    for i, r in enumerate(rows, start=2):
        print(f"| {i} | " + " | ".join(_fmt(c, r[c]) for c in cols) + " |")
    med = {c: statistics.median(r[c] for r in rows) for c in cols}
    print("| median | " + " | ".join(_fmt(c, med[c]) for c in cols) + " |")
    print("(seconds, except the shares; gap = result + client + graph + submit)")


def _fmt(col: str, v: float) -> str:
    return f"{v:.1f}%" if "%" in col else f"{v:.3f}"


def _compute_spans(tasks):
    for t in tasks:
        name = _prefix(t["key"])
        for ss in t.get("startstops", ()):
            if ss["action"] == "compute":
                yield name, ss["start"], ss["stop"]


def _prefix(key) -> str:
    from distributed.utils import key_split

    return key_split(key)


def analyse(tasks, marks) -> list[dict]:
    spans = sorted(_compute_spans(tasks), key=lambda s: s[1])
    msteps = sorted(stop for name, _, stop in spans if name == "em-mstep")
    graph_starts = [t for m, t in marks if m == "graph-start"]
    graph_ends = [t for m, t in marks if m == "graph-end"]
    returned = [t for m, t in marks if m == "returned"]
    rows = []
    for prev, this in zip(msteps, msteps[1:]):
        inside = [s for s in spans if prev < s[1] <= this]
        first = min(s[1] for s in inside)
        last_estep = max(s[2] for s in inside if s[0] == "em-estep")
        back = min(t for t in returned if t >= prev)
        g0 = min(t for t in graph_starts if t >= back)
        g1 = min(t for t in graph_ends if t >= g0)
        period = this - prev
        busy = sum(min(stop, this) - max(start, prev) for _, start, stop in spans if stop > prev and start < this)
        rows.append({
            "period": period, "gap": first - prev, "result": back - prev, "client": g0 - back,
            "graph": g1 - g0, "submit": first - g1, "tail": this - last_estep,
            "gap %": 100 * (first - prev) / period, "tail %": 100 * (this - last_estep) / period,
            "idle %": 100 * (1 - busy / (2 * period)),
        })
    return rows


if __name__ == "__main__":
    main()
