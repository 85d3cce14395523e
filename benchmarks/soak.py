"""Soak: many fits in a row on a LocalCluster while a chaos thread kills workers.

Every fit must finish with the model of an undisturbed run (bitwise), and the
scheduler's and workers' memory must not grow across the loop.

    python benchmarks/soak.py                 # 30 fits, a worker killed every 2-6 s
    python benchmarks/soak.py --fits 10
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import tempfile
import threading
import time
import warnings

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", type=int, default=30)
    parser.add_argument("--min-interval", type=float, default=2.0)
    parser.add_argument("--max-interval", type=float, default=6.0)
    parser.add_argument("--no-chaos", action="store_true", help="the same loop with no worker killed")
    args = parser.parse_args(argv)

    import psutil
    import zarr
    from distributed import Client, LocalCluster

    import dask_em
    from dask_em.datasets import make_mixture

    workdir = tempfile.mkdtemp(prefix="dask-em-soak-")
    path = os.path.join(workdir, "x.zarr")
    x, _, _ = make_mixture(400_000, 8, 5, chunk_rows=25_000, seed=4)
    zarr.create_array(path, shape=x.shape, chunks=(25_000, 8), dtype="f8")[:] = x.compute()

    def fit():
        gm = dask_em.GaussianMixture(5, n_init=2, random_state=0, max_iter=25, tol=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gm.fit(path, chunk_rows=25_000)

    reference = fit()
    rng = random.Random(0)
    with LocalCluster(n_workers=3, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        stop = threading.Event()
        kills = []

        def chaos():
            # Only workers seen at the previous poll: a worker killed while it is
            # still starting up made LocalCluster's nanny give up on it for good
            # (seen in earlier runs), which is not the preemption this models.
            seen: set = set()
            while not stop.wait(rng.uniform(args.min_interval, args.max_interval)):
                pids = set(client.run(os.getpid).values())
                settled = sorted(pids & seen)
                seen = pids
                if settled:
                    victim = rng.choice(settled)
                    os.kill(victim, signal.SIGKILL)
                    seen.discard(victim)
                    kills.append(time.time())

        thread = threading.Thread(target=chaos, daemon=True)
        if not args.no_chaos:
            thread.start()
        print(f"{'fit':>4} {'seconds':>8} {'same model':>10} {'kills so far':>12} {'scheduler MiB':>13} {'workers MiB':>12}")
        scheduler_proc = psutil.Process()  # the scheduler lives in this process
        ok = 0
        for i in range(args.fits):
            tic = time.perf_counter()
            gm = fit()
            seconds = time.perf_counter() - tic
            same = all(np.array_equal(getattr(gm, a), getattr(reference, a)) for a in ("means_", "covariances_", "weights_"))
            ok += same
            workers = sum(v for v in client.run(lambda: psutil.Process().memory_info().rss).values())
            print(f"{i:4d} {seconds:8.2f} {str(same):>10} {len(kills):12d} "
                  f"{scheduler_proc.memory_info().rss / 2**20:13.0f} {workers / 2**20:12.0f}", flush=True)
        stop.set()
        if thread.is_alive():
            thread.join()
    print(f"# {ok}/{args.fits} fits equal to the undisturbed model; {len(kills)} workers killed")


if __name__ == "__main__":
    main()
