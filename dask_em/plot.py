"""Plots of a fitted mixture (matplotlib, an optional extra: ``pip install dask-em[plot]``).

Every function draws on ``ax`` (a new figure when None) and returns the Axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "dask_em.plot needs matplotlib; install it with `pip install dask-em[plot]`."
        ) from None
    return plt


def _axes(ax):
    if ax is not None:
        return ax
    _, ax = _pyplot().subplots(figsize=(6, 4))
    return ax


def convergence(model, ax=None):
    """The lower bound per iteration for every restart; the winner drawn thick and marked.

    One line per restart (label ``restart i``); the winning restart's final
    bound carries a star marker.

    Parameters
    ----------
    model : fitted estimator
        Any fitted dask-em estimator (it holds ``restarts_``).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure's axes by default.

    Returns
    -------
    matplotlib.axes.Axes
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model, "restarts_")
    ax = _axes(ax)
    best = model.best_restart_
    for r in model.restarts_:
        history = np.asarray([np.nan if v is None else v for v in r["history"]], dtype=float)
        iterations = np.arange(1, len(history) + 1)
        winner = r["restart"] == best
        ax.plot(
            iterations,
            history,
            lw=2.5 if winner else 1.0,
            alpha=1.0 if winner else 0.6,
            label=f"restart {r['restart']}" + (" (best)" if winner else ""),
            zorder=3 if winner else 2,
        )
        if winner and len(history):
            ax.plot(iterations[-1], history[-1], marker="*", ms=14, color="black", ls="none", zorder=4, label="_best")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"lower bound ({model._bound_meaning()})")
    ax.set_title(f"EM convergence, {len(model.restarts_)} restart(s)")
    ax.legend(loc="lower right", fontsize="small")
    return ax


def _ellipse_axes(cov2: np.ndarray, n_std: float) -> tuple[float, float, float]:
    values, vectors = np.linalg.eigh(cov2)
    values = np.clip(values, 0, None)
    angle = float(np.degrees(np.arctan2(vectors[1, -1], vectors[0, -1])))
    width, height = 2 * n_std * np.sqrt(values[::-1])
    return float(width), float(height), angle


def _covariance_2d(model, k: int, dims: tuple[int, int]) -> np.ndarray:
    i, j = dims
    cov = model.covariances_
    kind = model.covariance_type
    if kind == "full" or cov.ndim == 3:  # full, and mclust's models
        full = cov[k]
    elif kind == "tied":
        full = cov
    elif kind == "diag":
        full = np.diag(cov[k])
    else:
        full = np.eye(model.n_features_in_) * cov[k]
    return full[np.ix_([i, j], [i, j])]


def clusters(model, X: Any, dims: tuple[int, int] = (0, 1), n: int = 10_000, *, n_std: float = 2.0,
             random_state: int = 0, ax=None):
    """A sample of rows coloured by label, with each component's covariance ellipse.

    ``X`` is anything ``fit`` takes (Zarr path, dask, xarray, numpy); only a
    uniform sample of ``n`` rows is read. Ellipses are the projections of the
    components' covariances on the two ``dims``, at ``n_std`` standard deviations.

    Parameters
    ----------
    model : GaussianMixture or BayesianGaussianMixture
        A fitted Gaussian model.
    X : array-like of shape (n_samples, n_features), zarr.Array, or str
        The data to sample from.
    dims : tuple of two int, default=(0, 1)
        The two features drawn.
    n : int, default=10_000
        Rows sampled.
    n_std : float, default=2.0
        Size of the ellipses, in standard deviations.
    random_state : int, default=0
        Seed of the row sample.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure's axes by default.

    Returns
    -------
    matplotlib.axes.Axes
    """
    from matplotlib.patches import Ellipse

    from .starts import sample_indices
    from .io import as_dask_array

    if not hasattr(model, "covariances_"):
        raise TypeError(
            f"clusters draws Gaussian covariance ellipses; received a {type(model).__name__}. "
            "For the other families plot model.probabilities_ or model.rates_ (e.g. as a heat map)."
        )
    prep = as_dask_array(X)
    data = prep.data
    rows = sample_indices(data.shape[0], min(n, data.shape[0]), np.random.default_rng(random_state))
    points = np.asarray(data[rows].compute())
    if prep.feature_names is not None:  # the sample keeps X's column names, so predict checks them as for X
        import pandas as pd  # installed with xarray

        labels = model.predict(pd.DataFrame(points, columns=list(prep.feature_names)))
    else:
        labels = model.predict(points)
    ax = _axes(ax)
    i, j = dims
    colors = _pyplot().get_cmap("tab10")
    ax.scatter(points[:, i], points[:, j], c=colors(labels % 10), s=4, alpha=0.5, linewidths=0)
    for k in range(model.n_components_):
        width, height, angle = _ellipse_axes(_covariance_2d(model, k, dims), n_std)
        ax.add_patch(
            Ellipse(
                model.means_[k, [i, j]], width, height, angle=angle, fill=False,
                lw=2, color=colors(k % 10), label=f"component {k} ({model.weights_[k]:.2f})",
            )
        )
    names = getattr(model, "feature_names_in_", None)
    ax.set_xlabel(str(names[i]) if names is not None else f"feature {i}")
    ax.set_ylabel(str(names[j]) if names is not None else f"feature {j}")
    ax.set_title(f"{len(points):,} sampled rows, K={model.n_components_} ({model.covariance_type})")
    return ax


def weights(model, threshold: float = 1e-2, ax=None):
    """The mixture weights, largest first; the components above ``threshold`` (the active ones) coloured.

    For a :class:`~dask_em.BayesianGaussianMixture` fitted with a generous
    ``n_components`` this shows how many components the data support.

    Parameters
    ----------
    model : fitted estimator
        Any fitted dask-em estimator.
    threshold : float, default=1e-2
        Weights at or above it are drawn as active.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure's axes by default.

    Returns
    -------
    matplotlib.axes.Axes
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model, "weights_")
    w = np.asarray(model.weights_, dtype=float)
    order = np.argsort(w)[::-1]
    active = w[order] >= threshold
    ax = _axes(ax)
    ax.bar(np.arange(len(w)), w[order], color=np.where(active, "tab:blue", "lightgray"))
    ax.set_xticks(np.arange(len(w)), [str(k) for k in order])
    ax.axhline(threshold, color="black", lw=0.8, ls="--")
    ax.set_xlabel("component")
    ax.set_ylabel("weight")
    ax.set_yscale("log")
    ax.set_title(f"{int(active.sum())} of {len(w)} components above {threshold:g}")
    return ax


def criterion(result, name: str | None = None, ax=None):
    """The criterion against K, one line per covariance type; the chosen model marked.

    ``result`` is what :func:`dask_em.select_model` returns; ``name`` one of
    bic, aic, icl (default: the criterion the selection used).

    Parameters
    ----------
    result : SelectionResult
        What :func:`dask_em.select_model` returned.
    name : {"bic", "aic", "icl"}, optional
        The criterion drawn.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure's axes by default.

    Returns
    -------
    matplotlib.axes.Axes
    """
    name = name or result.criterion
    ax = _axes(ax)
    values = result.criteria[name]
    ks = values["n_components"].values
    for t in values["covariance_type"].values:
        ax.plot(ks, values.sel(covariance_type=t).values, marker="o", ms=4, label=str(t))
    best = result.best_params_
    best_value = float(values.sel(n_components=best["n_components"], covariance_type=best["covariance_type"]))
    ax.plot([best["n_components"]], [best_value], marker="*", ms=16, color="black", ls="none", label="_best")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of components K")
    ax.set_ylabel(f"{name.upper()} (lower is better)")
    ax.set_title(f"best: K={best['n_components']}, {best['covariance_type']}")
    ax.legend(title="covariance", fontsize="small")
    return ax
