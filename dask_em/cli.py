"""The ``dask-em`` command (click, as dask's own CLI)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import warnings

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dask-em")
def main() -> None:
    """Fit mixture models by EM on data larger than memory, with Dask."""


@main.command()
@click.option("--samples", default=1_000_000, show_default=True, help="Rows to generate.")
@click.option("--features", default=8, show_default=True, help="Columns to generate.")
@click.option("--components", default=6, show_default=True, help="True (and fitted) number of components.")
@click.option("--n-init", default=3, show_default=True, help="Restarts, run side by side.")
@click.option("--seed", default=0, show_default=True)
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Write the store here and keep it.")
def demo(samples: int, features: int, components: int, n_init: int, seed: int, keep: str | None) -> None:
    """Generate a mixture into a Zarr store, fit it on the local default, print the model."""
    import dask.array as da
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    from . import GaussianMixture
    from .datasets import make_mixture

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = keep or tempfile.mkdtemp(prefix="dask-em-demo-")
    path = os.path.join(workdir, "points.zarr")
    try:
        x, _, spec = make_mixture(samples, features, components, chunk_rows=125_000, seed=seed)
        tic = time.perf_counter()
        da.to_zarr(x, path, overwrite=True)
        click.echo(
            f"wrote {samples:,} x {features} rows ({x.nbytes / 2**20:.0f} MiB) to {path} "
            f"in {time.perf_counter() - tic:.1f} s"
        )
        gm = GaussianMixture(components, n_init=n_init, random_state=seed, verbose=1)
        tic = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            gm.fit(path)
        seconds = time.perf_counter() - tic
        click.echo(
            f"\nfitted K={gm.n_components_} {gm.covariance_type} in {seconds:.1f} s: "
            f"converged={gm.converged_} after {gm.n_iter_} iterations, "
            f"mean log-likelihood {gm.lower_bound_:.4f}"
        )
        for r in gm.restarts_:
            click.echo(
                f"  restart {r['restart']}: lower bound {r['lower_bound']:.6f}, "
                f"{r['n_iter']} iterations, {r['status']}"
            )
        cost = ((gm.means_[:, None] - spec.means[None]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        err = np.sqrt(cost[rows, cols]).max()
        click.echo(f"largest distance from a fitted mean to its true mean: {err:.4f}")
        click.echo("weights: " + " ".join(f"{w:.3f}" for w in gm.weights_))
        click.echo(f"dashboard: {_dashboard_link()}")
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _dashboard_link() -> str:
    try:
        from distributed import default_client

        return default_client().dashboard_link
    except (ImportError, ValueError):
        return (
            "none (the local default runs on threads; start a distributed.Client() "
            "first to fit on a cluster with its dashboard)"
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
