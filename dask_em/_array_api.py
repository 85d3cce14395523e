"""The Gaussian E-step and log-densities in the Python array API standard: chunks on any device.

A chunk that is not a numpy array (CuPy on a GPU, PyTorch, ``array_api_strict``)
is fitted where it lives, with the operations of its own namespace only
(``array_api_compat`` names it): matrix products, elementwise functions and
reductions from the standard, nothing numpy-specific, so the code a GPU runs is
the code the CPU tests run under ``array_api_strict``. The parameters travel to
the chunk's device once per chunk (a few KiB); only the reduced statistics —
the same dictionaries the numpy kernels produce, so the M-step, the tree
reduction and the accelerations do not know where a chunk was read — come back
to the host.

The chunk is walked in tiles of rows sized so that the largest temporary (the
whitened residuals of every component, ``tile x K*d``) stays under
:data:`TILE_ELEMENTS`; the responsibilities exist for one tile at a time, and
every restart of the round visits the tile while it is resident. Per tile and
restart::

    whitened residuals  Y = X_c @ U - (m_k U_k)     one GEMM (full, tied, mclust's models)
    or raw moments      [X_c**2, X_c] @ P^T          two GEMMs (diag, spherical)
    log-sum-exp over the K components (max, exp, sum, log: elementwise)
    statistics          (r * (X_c - m_k))^T @ X_c    one GEMM, and r^T @ [X_c**2, X_c] (diag)

In ``float32`` the log-densities and products are float32 and each tile's
statistics are summed into float64 accumulators, as the numpy kernels do.
"""

from __future__ import annotations

import numpy as np

from ._covariance import LAYOUTS, log_const
from ._namespace import (add_likelihood_xp, device, like, likelihood_record, likelihood_sums, namespace, to_numpy,
                         weights_like, xp_log_normalize)

# The largest temporary of a tile, in elements (256 MiB in float64): large enough that a GPU
# runs each GEMM at its rate, small enough that a tile's responsibilities and residuals fit
# beside the chunk on a device of a few GiB.
TILE_ELEMENTS = 2**25


def _is_moments(covariance_type: str) -> bool:
    return covariance_type in ("diag", "spherical")


def tile_rows(params_list: list, n_features: int) -> int:
    """Rows per tile: the widest temporary of any restart (``rows x K*d``, diag ``rows x 2d``... per
    component) within :data:`TILE_ELEMENTS`."""
    wide = max(
        len(p["weights"]) * (2 * n_features if _is_moments(p["covariance_type"]) else max(n_features, 2))
        for p in params_list
    )
    return max(1, TILE_ELEMENTS // max(1, wide))


def _host_view(params: dict, dtype) -> dict:
    """The numbers a tile multiplies with, on the host, in the compute dtype."""
    ct = params["covariance_type"]
    layout = LAYOUTS[ct]
    means = params["means"]
    k, d = means.shape
    pc = params["precisions_cholesky"]
    const = log_const(params, layout.log_det(pc, d), d)
    if _is_moments(ct):
        prec = layout._precision_rows(pc, k, d)
        return {
            "quad": (-0.5 * prec).T.astype(dtype),  # (d, K)
            "lin": (means * prec).T.astype(dtype),  # (d, K)
            "const": (-0.5 * (means**2 * prec).sum(1) + const).astype(dtype),  # (K,)
        }
    factors = layout._stacked_factors(pc, k, d)  # (K, d, d): U_k, with U_k U_k^T the precision
    rounded = means.astype(dtype)
    return {
        "factors": np.ascontiguousarray(factors.transpose(1, 0, 2).reshape(d, k * d)).astype(dtype),  # (d, K*d)
        # The shift m_k U_k of each component's whitened residuals, about the rounded means.
        "offset": np.einsum("kd,kde->ke", rounded.astype(np.float64), factors).reshape(k * d).astype(dtype),
        "const": const.astype(dtype),
        "rounded": rounded,
        "rounded_host": rounded,  # kept on the host: the statistics are finished about it
    }


def _device_view(view: dict, x) -> dict:
    return {key: (value if key == "rounded_host" else like(value, x)) for key, value in view.items()}


def _weighted_log_prob(xp, xc, view: dict, k: int, d: int):
    """(rows, K) log(w_k) + log N(x | m_k, Sigma_k) of a centered tile, in the view's dtype."""
    if "quad" in view:
        return xc * xc @ view["quad"] + xc @ view["lin"] + view["const"]
    y = xc @ view["factors"] - view["offset"]
    y = y * y
    return -0.5 * xp.sum(xp.reshape(y, (xc.shape[0], k, d)), axis=2) + view["const"]


def _f64(xp, a):
    return xp.astype(a, xp.float64)


def estep(x, w, params_list: list, shift: np.ndarray, entropy: bool, dtypes: list) -> list[dict]:
    """Every restart's E-step record on one chunk ``x`` of any array-API namespace.

    ``w`` (rows,) row weights (host or device) or None; ``shift`` the context
    ``c`` (host); ``dtypes`` each restart's compute dtype (numpy dtypes). The
    records equal the numpy kernels' (``GaussianFamily._estep_complete``) to
    round-off: ``loglik``, ``wsum``, ``entropy``, ``nk`` and ``stats`` in the
    layout's form, on the host.
    """
    xp = namespace(x)
    n, d = x.shape
    if w is not None:
        w = weights_like(w, x)
    shifts = {dt: like(shift, x, dt) for dt in set(dtypes)}
    views = [_device_view(_host_view(p, dt), x) for p, dt in zip(params_list, dtypes)]
    ks = [len(p["weights"]) for p in params_list]
    tile = tile_rows(params_list, d)
    accs = [{**likelihood_sums(xp, x), "parts": None} for _ in params_list]
    for lo in range(0, n, tile):
        hi = min(lo + tile, n)
        xt = x[lo:hi, :]
        wt = None if w is None else w[lo:hi]
        centered = {dt: _center(xp, xt, shifts[dt], dt) for dt in shifts}
        for p, dt, view, k, acc in zip(params_list, dtypes, views, ks, accs):
            xc = centered[dt]
            log_norm, resp = xp_log_normalize(xp, _weighted_log_prob(xp, xc, view, k, d))
            add_likelihood_xp(xp, acc, log_norm, resp, wt, entropy)
            rw = resp if wt is None else resp * xp.astype(wt, resp.dtype)[:, None]
            parts = _tile_stats(xp, xc, rw, view, k, d)
            acc["parts"] = parts if acc["parts"] is None else [a + b for a, b in zip(acc["parts"], parts)]
    return [_record(p, acc, view, k, d) for p, acc, view, k in zip(params_list, accs, views, ks)]


def _center(xp, xt, shift, dt):
    target = xp.float32 if np.dtype(dt) == np.float32 else xp.float64
    return xp.astype(xt, target) - shift


def _tile_stats(xp, xc, rw, view: dict, k: int, d: int) -> list:
    """One tile's statistics, each summed in float64."""
    mass = xp.sum(_f64(xp, rw), axis=0)  # (K,)
    if "quad" in view:
        rt = xp.matrix_transpose(rw)
        return [_f64(xp, rt @ (xc * xc)), _f64(xp, rt @ xc), mass]
    rows = xc.shape[0]
    # r_ik (x_i - m_k) for every component, side by side: (rows, K*d).
    weighted = rw[:, :, None] * (xc[:, None, :] - view["rounded"][None, :, :])
    weighted = xp.reshape(weighted, (rows, k * d))
    return [_f64(xp, xp.matrix_transpose(weighted) @ xc), xp.sum(_f64(xp, weighted), axis=0), mass]


def _record(params: dict, acc: dict, view: dict, k: int, d: int) -> dict:
    ct = params["covariance_type"]
    layout = LAYOUTS[ct]
    means = params["means"]
    if acc["parts"] is None:  # an empty chunk
        stats = layout.empty_stats(k, d)
        for key in ("loglik", "wsum", "entropy"):
            stats.pop(key)
        stats = layout.finish(stats, means)
    elif "quad" in view:
        s2, s1, mass = (to_numpy(a) for a in acc["parts"])
        stats = {"moments": np.concatenate([s2, s1, mass[:, None]], axis=1)}
    else:
        xw, a, mass = (to_numpy(a) for a in acc["parts"])
        stats = {"n": mass, "xw": np.concatenate([xw, a[:, None]], axis=1)}
        rounded = view["rounded_host"].astype(np.float64)
        stats = layout.finish(stats, rounded)
        if view["rounded_host"].dtype != means.dtype:  # float32: residuals about the rounded means
            stats = layout.shift_stats(stats, rounded, means)
    return {**likelihood_record(acc), "nk": np.array(layout.mass(stats)), "stats": stats}


def weighted_log_prob(x, params: dict, shift: np.ndarray):
    """(rows, K) weighted log-densities of a chunk in its own namespace and on its device (float64)."""
    xp = namespace(x)
    n, d = x.shape
    k = len(params["weights"])
    view = _device_view(_host_view(params, np.float64), x)
    centered_shift = like(shift, x, np.float64)
    tile = tile_rows([params], d)
    parts = [
        _weighted_log_prob(xp, _center(xp, x[lo : min(lo + tile, n), :], centered_shift, np.float64), view, k, d)
        for lo in range(0, n, tile)
    ]
    if not parts:
        return xp.zeros((0, k), dtype=xp.float64, device=device(x))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
