"""mclust's fourteen parsimonious covariance models: their M-steps from reduced statistics.

Celeux & Govaert (1995) write a component's covariance as ``Sigma_k = lambda_k D_k
A_k D_k^T``: a volume ``lambda_k`` (the scalar ``det(Sigma_k)**(1/d)``), a shape
``A_k`` (diagonal, determinant 1) and an orientation ``D_k`` (orthogonal). Each
of the three letters of a model's name says whether that factor is Equal across
components, Variable, or (shape and orientation) the Identity::

    EII VII            spherical
    EEI VEI EVI VVI    diagonal
    EEE VEE EVE VVE    common orientation
    EEV VEV EVV VVV    free orientation

Every M-step needs only what one pass over the rows gives for each component:
its mass ``n_k`` and weighted scatter ``W_k = sum_i r_ik (x_i - mu_k)(x_i -
mu_k)^T`` about its new mean (Celeux & Govaert 1995, section 3). Closed forms
exist for all but VEI, VEE, VEV (mclust's alternating updates of volume and
shape) and EVE, VVE (the majorise-minimise steps of Browne & McNicholas 2014
for the common orientation). Those iterate here as mclust does (same starting
point, same updates, same stopping rule: the relative change of the criterion,
or of the factors, below ``tol``), to a tighter default tolerance.

Pure numpy; nothing here knows about rows, chunks or restarts.
"""

from __future__ import annotations

import numpy as np

MODELS = ("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV")

# The inner iterations stop at this relative change (mclust's default is sqrt(eps), 1.5e-8,
# on the same criteria) or after INNER_MAX_ITER steps, whichever comes first.
INNER_TOL = 1e-13
INNER_MAX_ITER = 10_000


def n_covariance_parameters(model: str, k: int, d: int) -> int:
    """Free parameters of the K covariance matrices: mclust's ``nVarParams``."""
    orientation = d * (d - 1) // 2
    return {
        "EII": 1,
        "VII": k,
        "EEI": d,
        "VEI": k + d - 1,
        "EVI": 1 + k * (d - 1),
        "VVI": k * d,
        "EEE": d * (d + 1) // 2,
        "VEE": k + d - 1 + orientation,
        "EVE": 1 + k * (d - 1) + orientation,
        "VVE": k * d + orientation,
        "EEV": d + k * orientation,
        "VEV": k + d - 1 + k * orientation,
        "EVV": 1 + k * (d * (d + 1) // 2 - 1),
        "VVV": k * d * (d + 1) // 2,
    }[model]


def _geomean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """``prod(values) ** (1/d)`` along ``axis``, through logs (no overflow at large d)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(np.log(values).mean(axis))


def _relative_change(new, old) -> float:
    return float(np.max(np.abs(np.asarray(new) - np.asarray(old)) / (1.0 + np.abs(new))))


def _eigh_descending(scatter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (K, d) and eigenvectors (K, d, d) of each scatter, largest first (as mclust's SVD)."""
    values, vectors = np.linalg.eigh(scatter)
    return values[..., ::-1], vectors[..., ::-1]


def _diag(values: np.ndarray) -> np.ndarray:
    """(..., d) -> (..., d, d) diagonal matrices."""
    out = np.zeros(values.shape + values.shape[-1:])
    idx = np.arange(values.shape[-1])
    out[..., idx, idx] = values
    return out


def _rotate(orientation: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """``D diag(a) D^T`` for (K or 1, d, d) orientations and (K, d) diagonals."""
    return np.matmul(orientation * diagonal[:, None, :], np.swapaxes(orientation, -1, -2))


def covariances(model: str, n: np.ndarray, scatter: np.ndarray, previous: np.ndarray | None = None,
                tol: float = INNER_TOL, max_iter: int = INNER_MAX_ITER) -> np.ndarray:
    """The (K, d, d) covariances of ``model`` maximising the expected log-likelihood.

    Parameters
    ----------
    model : str
        One of :data:`MODELS`.
    n : ndarray of shape (n_components,)
        Each component's mass ``n_k`` (sum of its responsibilities times row weights).
    scatter : ndarray of shape (n_components, n_features, n_features)
        ``W_k``, each component's weighted scatter about its new mean.
    previous : ndarray of shape (n_components, n_features, n_features), optional
        The covariances EM holds now: EVE and VVE start their orientation there
        (mclust carries it from one M-step to the next as well); without it,
        they start from the identity, as mclust's ``mstep``.
    tol, max_iter : float, int
        Stopping rule of the iterative models (VEI, VEE, EVE, VVE, VEV).
    """
    k, d = scatter.shape[0], scatter.shape[1]
    total = float(n.sum())
    diag = np.diagonal(scatter, axis1=1, axis2=2)
    eye = np.eye(d)
    if model == "EII":
        return np.broadcast_to(eye * (np.trace(scatter.sum(0)) / (total * d)), (k, d, d)).copy()
    if model == "VII":
        return eye * (np.trace(scatter, axis1=1, axis2=2) / (n * d))[:, None, None]
    if model == "EEI":
        return np.broadcast_to(np.diag(diag.sum(0) / total), (k, d, d)).copy()
    if model == "VEI":
        return _vei(n, diag, tol, max_iter)
    if model == "EVI":
        volumes = _geomean(diag)
        return _diag(diag * (volumes.sum() / total / volumes)[:, None])
    if model == "VVI":
        return _diag(diag / n[:, None])
    if model == "EEE":
        return np.broadcast_to(scatter.sum(0) / total, (k, d, d)).copy()
    if model == "VEE":
        return _vee(n, scatter, tol, max_iter)
    if model in ("EVE", "VVE"):
        return _common_orientation(model, n, scatter, previous, tol, max_iter)
    if model == "EEV":
        values, vectors = _eigh_descending(scatter)
        return _rotate(vectors, np.broadcast_to(values.sum(0) / total, (k, d)))
    if model == "VEV":
        return _vev(n, scatter, tol, max_iter)
    if model == "EVV":
        sign, logdet = np.linalg.slogdet(scatter)
        volumes = np.where(sign > 0, np.exp(logdet / d), np.nan)
        return scatter * (volumes.sum() / total / volumes)[:, None, None]
    if model == "VVV":
        return scatter / n[:, None, None]
    raise ValueError(f"model must be one of {MODELS}; received {model!r}.")


def _vei(n, diag, tol, max_iter):
    """Variable volume, equal diagonal shape: mclust's ``msvei`` (alternate volume and shape)."""
    k, d = diag.shape
    shape, scale = np.ones(d), np.ones(k)
    for _ in range(max_iter):
        new_scale = (diag / shape).sum(1) / (d * n)
        new_shape = (diag / new_scale[:, None]).sum(0)
        new_shape /= _geomean(new_shape)
        err = max(_relative_change(new_scale, scale), _relative_change(new_shape, shape))
        shape, scale = new_shape, new_scale
        if not err > tol:
            break
    return _diag(scale[:, None] * shape)


def _vee(n, scatter, tol, max_iter):
    """Variable volume, equal shape and orientation: mclust's ``msvee`` (``C`` the common ``D A D^T``)."""
    k, d = scatter.shape[:2]
    scale, target = np.ones(k), np.inf
    total = n.sum()
    for _ in range(max_iter):
        common = (scatter / scale[:, None, None]).sum(0)
        common /= _geomean(np.linalg.eigvalsh(common))
        inverse = np.linalg.inv(common)
        scale = np.einsum("kij,ji->k", scatter, inverse) / (d * n)
        new_target = total * d + d * (np.log(scale) * n).sum()
        err = abs(new_target - target) / (1.0 + abs(new_target))
        target = new_target
        if not err > tol:
            break
    return scale[:, None, None] * common


def _vev(n, scatter, tol, max_iter):
    """Variable volume and orientation, equal shape: mclust's ``msvev``."""
    k, d = scatter.shape[:2]
    values, vectors = _eigh_descending(scatter)
    shape = values.sum(0)
    shape /= _geomean(shape)
    scale = np.full(k, np.inf)
    for _ in range(max_iter):
        new_scale = (values / shape).sum(1) / (n * d)
        new_shape = (values / new_scale[:, None]).sum(0)
        new_shape /= _geomean(new_shape)
        err = max(_relative_change(new_shape, shape), _relative_change(new_scale, scale))
        shape, scale = new_shape, new_scale
        if not err > tol:
            break
    return _rotate(vectors, scale[:, None] * shape)


def _common_orientation(model, n, scatter, previous, tol, max_iter):
    """EVE and VVE: a common orientation ``D`` and per-component shapes ``A_k``.

    As mclust's ``mseve``/``msvve``: each step is Browne & McNicholas' two
    majorise-minimise updates of ``D`` (MM1, MM2) under the current shapes, then
    the shapes (and, for VVE, the volumes) from ``diag(D^T W_k D)``. EVE
    minimises ``sum_k tr(D^T W_k D A_k^{-1})`` exactly as mclust does. For VVE
    the updates of ``D`` here weigh component k by ``1 / lambda_k`` (the
    likelihood's own criterion, ``sum_k tr(D^T W_k D A_k^{-1}) / lambda_k``, and
    the stopping rule on ``sum_k n_k log det(lambda_k A_k)``); mclust's
    ``msvve`` leaves the volumes out of the ``D`` step, so its step is not the
    maximiser where the volumes differ and its EM can lower the likelihood.
    """
    k, d = scatter.shape[:2]
    largest = np.linalg.eigvalsh(scatter)[:, -1]
    scale = np.ones(k)
    if previous is not None and np.isfinite(previous).all():
        orientation = np.linalg.eigh(previous[0])[1]
        shape = np.diagonal(orientation.T @ previous @ orientation, axis1=1, axis2=2).copy()
        scale = _geomean(shape)
        shape /= scale[:, None]
        if model == "EVE":
            scale = np.ones(k)
    else:
        orientation, shape = np.eye(d), np.ones((k, d))
    target = np.inf
    for _ in range(max_iter):
        inv_shape = 1.0 / (shape * scale[:, None])
        # MM1 on D^T: F = sum_k A_k^{-1} D^T W_k - omega_k A_k^{-1} D^T.
        at = inv_shape[:, :, None] * orientation.T[None]
        f = (np.matmul(at, scatter) - largest[:, None, None] * at).sum(0)
        p, _, rt = np.linalg.svd(f)
        orientation = (p @ rt).T
        # MM2 on D: F = sum_k W_k D A_k^{-1} - max(1/a_k) W_k D.
        wd = np.matmul(scatter, orientation)
        f = (wd * inv_shape[:, None, :] - inv_shape.max(1)[:, None, None] * wd).sum(0)
        p, _, rt = np.linalg.svd(f)
        orientation = p @ rt
        rotated = np.diagonal(orientation.T @ scatter @ orientation, axis1=1, axis2=2)
        shape = rotated / _geomean(rotated)[:, None]
        if model == "VVE":
            scale = _geomean(rotated / n[:, None])
            new_target = float((n * np.log(scale)).sum())
        else:
            new_target = float((rotated / shape).sum())
        err = abs(new_target - target) / (1.0 + abs(new_target))
        target = new_target
        if not err > tol:
            break
    if model == "VVE":
        return _rotate(orientation[None], scale[:, None] * shape)
    return _rotate(orientation[None], target / (n.sum() * d) * shape)


def factors(model: str, cov: np.ndarray) -> dict[str, np.ndarray]:
    """mclust's ``scale``, ``shape`` and ``orientation`` of (K, d, d) covariances of ``model``.

    ``scale``: (K,) volumes ``det(Sigma_k)**(1/d)`` (one value repeated where the
    volume is Equal); ``shape``: (K, d) diagonals of ``A_k``, determinant 1;
    ``orientation``: (K, d, d) ``D_k`` (identity for the diagonal models). Shapes
    are ordered largest first along each component's own eigenvectors, except for
    the models of common orientation, whose shapes follow the common ``D``.
    """
    k, d = cov.shape[:2]
    if model[2] == "I":
        shape = np.diagonal(cov, axis1=1, axis2=2).copy()
        orientation = np.broadcast_to(np.eye(d), (k, d, d)).copy()
    elif model[2] == "E":
        orientation = np.broadcast_to(_eigh_descending(cov[0])[1], (k, d, d)).copy()
        shape = np.diagonal(np.swapaxes(orientation, 1, 2) @ cov @ orientation, axis1=1, axis2=2).copy()
    else:
        shape, orientation = _eigh_descending(cov)
        shape = shape.copy()
    scale = _geomean(shape)
    return {"scale": scale, "shape": shape / scale[:, None], "orientation": orientation}
