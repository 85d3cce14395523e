"""The quickstart notebook as a plain script.

    python examples/quickstart.py                       # 2,000,000 x 8, a local 2-worker cluster
    python examples/quickstart.py --samples 100000 --figure docs/quickstart.png

Generates a mixture into a Zarr store, starts a LocalCluster (printing its
dashboard link), fits with several restarts and a progress bar per restart,
predicts to Zarr, saves and loads the model, and (with --figure) writes the
convergence and cluster plots to one PNG: the README's figure comes from here.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster
from scipy.optimize import linear_sum_assignment

import dask_em
from dask_em.datasets import make_mixture


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--components", type=int, default=6)
    parser.add_argument("--n-init", type=int, default=4)
    parser.add_argument("--workdir", default=None, help="where the stores go (default: a temporary folder)")
    parser.add_argument("--figure", default=None, help="write the plots to this PNG")
    args = parser.parse_args(argv)

    workdir = args.workdir or tempfile.mkdtemp(prefix="dask-em-quickstart-")
    path = os.path.join(workdir, "points.zarr")
    x, _, truth = make_mixture(args.samples, args.features, args.components, chunk_rows=250_000, seed=1)
    da.to_zarr(x, path, overwrite=True)
    print(f"wrote {args.samples:,} x {args.features} to {path}")

    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        print("dashboard:", client.dashboard_link)
        gm = dask_em.GaussianMixture(args.components, n_init=args.n_init, random_state=0, verbose=1).fit(path)
        print(gm.summary())

        cost = ((gm.means_[:, None] - truth.means[None]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        print("largest distance from a fitted mean to its true mean:", round(float(np.sqrt(cost[rows, cols]).max()), 4))

        labels = gm.predict(path)
        labels.to_zarr(os.path.join(workdir, "labels.zarr"), overwrite=True)
        model_path = os.path.join(workdir, "model.zarr")
        dask_em.save(gm, model_path, overwrite=True)
        loaded = dask_em.load(model_path)
        assert (loaded.predict(path)[:1000].compute() == labels[:1000].compute()).all()
        print("saved and reloaded", model_path)

        if args.figure:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            from dask_em import plot

            fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
            plot.convergence(gm, ax=left)
            plot.clusters(gm, path, dims=(0, 1), n=10_000, ax=right)
            fig.tight_layout()
            fig.savefig(args.figure, dpi=90)
            print("figure:", args.figure)


if __name__ == "__main__":
    main()
