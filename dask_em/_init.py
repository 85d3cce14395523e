"""Initial parameters from a uniform sample of rows drawn out-of-core.

The sample is read in one pass (tasks ``em-init-sample-*``, one per row chunk
that holds sampled rows); each restart then fits its start on the sample in a
task of its own (``em-init-*``), so the restarts' k-means runs side by side on
the cluster. The initial parameters are the M-step of the sample's statistics
under the start's responsibilities, as scikit-learn computes them on all rows.
"""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import delayed

from . import gaussian

INIT_METHODS = ("kmeans", "k-means++", "random", "random_from_data")
# The mix of starts for init_strategy="emEM": restart i uses MIXED_STARTS[i % 3].
MIXED_STARTS = ("k-means++", "random_from_data", "kmeans-subsample")


def default_sample_size(n_samples: int, n_components: int) -> int:
    """Rows for k-means: plenty per component, capped by the data."""
    return int(min(n_samples, max(20_000, 1_000 * n_components)))


def sample_indices(n_samples: int, size: int, rng: np.random.Generator) -> np.ndarray:
    if size >= n_samples:
        return np.arange(n_samples)
    return np.sort(rng.choice(n_samples, size=size, replace=False))


def _take_rows(block, local_rows, start: int):
    rows = np.asarray(block)[local_rows]
    finite = np.isfinite(rows)
    if not finite.all():
        bad = int(np.flatnonzero(~finite.all(1))[0])
        row = start + int(local_rows[bad])
        stop = start + block.shape[0] - 1
        raise ValueError(
            f"X contains NaN or infinity in rows {start}-{stop}; the first found is "
            f"row {row} (read while drawing the initialisation sample). Remove or "
            "impute those rows before fitting, e.g. X[da.isfinite(X).all(axis=1)]."
        )
    return rows


def _take_weights(block, local_rows):
    return np.asarray(block, dtype=np.float64).reshape(-1)[local_rows]


def _concat(parts):
    return np.concatenate(parts, axis=0)


def sample_graph(X: da.Array, w: da.Array | None, indices: np.ndarray, salt: str = ""):
    """Delayed (rows, weights) of the sampled rows, one read task per chunk."""
    token = tokenize(X, w, indices, salt)
    bounds = np.cumsum((0,) + X.chunks[0])
    blocks = X.to_delayed().ravel()
    wblocks = w.to_delayed().ravel() if w is not None else [None] * len(blocks)
    rows, weights = [], []
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        sel = indices[(indices >= lo) & (indices < hi)] - lo
        if sel.size == 0:
            continue
        rows.append(
            delayed(_take_rows, pure=True)(
                blocks[i], sel, int(lo), dask_key_name=(f"em-init-sample-{token}", i)
            )
        )
        if wblocks[i] is not None:
            weights.append(
                delayed(_take_weights, pure=True)(
                    wblocks[i], sel, dask_key_name=(f"em-init-sample-weight-{token}", i)
                )
            )
    sample = delayed(_concat, pure=True)(rows, dask_key_name=f"em-init-sample-{token}")
    sw = (
        delayed(_concat, pure=True)(weights, dask_key_name=f"em-init-sample-weight-{token}")
        if weights
        else None
    )
    return sample, sw


def _shift(sample: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """The centering point: the (weighted) mean of the sample, in float64."""
    sample = np.asarray(sample, dtype=np.float64)
    if weights is not None and weights.sum() > 0:
        return np.average(sample, axis=0, weights=weights)
    return sample.mean(0)


def start_responsibilities(
    xc: np.ndarray, n_components: int, method: str, seed: int
) -> np.ndarray:
    """Responsibilities of the sample rows under one restart's start."""
    from sklearn.cluster import KMeans, kmeans_plusplus

    n = xc.shape[0]
    rng = np.random.RandomState(seed)
    resp = np.zeros((n, n_components))
    if method == "kmeans":
        with warnings.catch_warnings():
            # More components than distinct rows: reported by the M-step instead.
            warnings.filterwarnings("ignore", message="Number of distinct clusters")
            labels = KMeans(n_clusters=n_components, n_init=1, random_state=rng).fit(xc).labels_
        resp[np.arange(n), labels] = 1
    elif method == "random":
        resp = rng.uniform(size=(n, n_components))
        resp /= resp.sum(1, keepdims=True)
    elif method == "random_from_data":
        idx = rng.choice(n, size=n_components, replace=False)
        resp[idx, np.arange(n_components)] = 1
    elif method == "k-means++":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Number of distinct clusters")
            _, idx = kmeans_plusplus(xc, n_components, random_state=rng)
        resp[idx, np.arange(n_components)] = 1
    elif method == "kmeans-subsample":
        # k-means on a random half of the sample: restarts see different data.
        half = rng.choice(n, size=max(n_components, n // 2), replace=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Number of distinct clusters")
            km = KMeans(n_clusters=n_components, n_init=1, random_state=rng).fit(xc[half])
        resp[np.arange(n), km.predict(xc)] = 1
    else:  # pragma: no cover - validated by the estimator
        raise ValueError(method)
    return resp


def init_restart(
    sample, sample_weight, shift, *, n_components, covariance_type, reg_covar, method,
    seed, weights_init, means_init, precisions_init,
) -> dict:
    """Initial (centered) parameters of one restart, as ``GaussianMixture._initialize``."""
    d = shift.shape[0]
    sample = np.asarray(sample, dtype=np.float64)
    params: dict = {"dropped": []}
    if weights_init is None or means_init is None or precisions_init is None:
        resp = start_responsibilities(sample - shift, n_components, method, seed)
        xa = gaussian.augment(
            covariance_type, sample, shift, gaussian.design_buffer(covariance_type, d, len(sample))
        )
        acc = gaussian.empty_stats(covariance_type, n_components, d)
        ref = np.zeros((n_components, d))
        gaussian.accumulate(xa, sample_weight, resp.T, ref, covariance_type, acc)
        stats = gaussian.finish_stats(acc, ref, covariance_type)
        mass = gaussian.component_mass(stats, covariance_type)
        total = float(mass.sum())
        keep = mass >= 1e-6 * total / max(sample.shape[0], 1)
        user_given = not (weights_init is None and means_init is None)
        if not keep.all() and not user_given:
            # More components than distinct rows: the start has empty clusters,
            # which are dropped here as the engine drops components that empty.
            # (With user-given weights or means the shapes must stay; the
            # engine drops the component after its first E-step instead.)
            stats = gaussian.drop_components(stats, keep, covariance_type)
            ref, mass = ref[keep], mass[keep]
            params["dropped"] = [int(k) for k in np.flatnonzero(~keep)]
        try:
            params.update(gaussian.m_step(stats, ref, covariance_type, reg_covar))
        except gaussian.NotPositiveDefiniteError as exc:
            return {"error": f"at the start: {exc}"}
        # scikit-learn divides the start's masses by n_samples, not by their sum.
        params["weights"] = (mass + gaussian._MASS_EPS) / total
    if weights_init is not None:
        params["weights"] = np.asarray(weights_init, dtype=np.float64)
    if means_init is not None:
        params["means"] = np.asarray(means_init, dtype=np.float64) - shift
    if precisions_init is not None:
        pc = gaussian.precision_cholesky_from_precisions(
            np.asarray(precisions_init, dtype=np.float64), covariance_type
        )
        params["precisions_cholesky"] = pc
        params["covariances"] = gaussian.covariances_from_cholesky(pc, covariance_type)
    return params


def init_graph(
    X: da.Array,
    w: da.Array | None,
    *,
    n_components: int,
    covariance_type: str,
    reg_covar: float,
    method: str | list[str],
    seeds: list[int],
    sample_rows: np.ndarray,
    weights_init=None,
    means_init=None,
    precisions_init=None,
    salt: str = "",
):
    """Delayed (shift, [params of each restart]) for one compute."""
    methods = [method] * len(seeds) if isinstance(method, str) else list(method)
    sample, sw = sample_graph(X, w, sample_rows, salt)
    token = tokenize(
        sample, sw, seeds, methods, n_components, covariance_type, reg_covar,
        weights_init, means_init, precisions_init,
    )
    shift = delayed(_shift, pure=True)(sample, sw, dask_key_name=f"em-init-shift-{tokenize(sample, sw)}")
    starts = [
        delayed(init_restart, pure=True)(
            sample,
            sw,
            shift,
            n_components=n_components,
            covariance_type=covariance_type,
            reg_covar=reg_covar,
            method=methods[i],
            seed=seed,
            weights_init=weights_init,
            means_init=means_init,
            precisions_init=precisions_init,
            dask_key_name=f"em-init-{token}-{i}",
        )
        for i, seed in enumerate(seeds)
    ]
    return delayed(tuple, pure=True)([shift, starts], dask_key_name=f"em-init-collect-{token}")
