"""The Gaussian family: rows -> statistics -> parameters, for every covariance layout.

:class:`GaussianFamily` puts the covariance layouts of :mod:`dask_em._covariance`
behind the family protocol of :mod:`dask_em.family`. Its fused ``estep`` walks a
chunk in panels of rows shared by every restart of a round; for each restart it
asks its layout for the ``kernel`` it runs on (full/tied at small d: the moment
design), then calls its ``prepare`` (once per chunk), ``weighted_log_prob``, the
shared in-place log-sum-exp, ``accumulate`` and, at the end, ``finish``.

All coordinates are *centered*: the family's context is one shift ``c`` (the
mean of the initialisation sample), subtracted from every row before anything
else, and the ``means`` held in ``params`` are ``mu - c``. Statistics are
additive dicts of float64 arrays, so merging partial statistics is a plain sum
(the family's default ``merge``). Log space throughout.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _array_api, _compiled, _incomplete
from ._covariance import COLLAPSED, COVARIANCE_TYPES, GAUSSIAN_COVARIANCE_TYPES, ILL_DEFINED, LAYOUTS, NotPositiveDefiniteError
from ._machine import aligned_empty
from ._namespace import dtype_kind, in_row_order, is_foreign, like, namespace, split_holes, to_numpy, weights_like
from .family import (
    MASS_EPS, SCIKIT_LEARN_STARTS, Family, empty_components, add_likelihood, all_missing_row,
    core_caches, log_normalize, responsibilities, work_array,
)
from .prior import PARAM_KEYS, log_prior, map_m_step, prior_of, resolve_prior

__all__ = ["COVARIANCE_TYPES", "GAUSSIAN_COVARIANCE_TYPES", "GaussianFamily", "NotPositiveDefiniteError", "check_initial_parameters",
           "n_parameters"]

Params = dict[str, Any]

# Work is done on *panels* of rows laid out feature-major (one column per data
# row): elementwise work (the log-sum-exp, the weighting) runs once over a whole
# panel, in long vectorized calls that release the GIL; on 512-row tiles the same
# calls were too short to (two threads gave no speed-up on 4096-element ufuncs,
# 2x on 1M-element ones). Only the GEMMs whose outputs are K*d rows tall walk the
# panel in cache-sized tiles.

# Rows per tile times K*d: one core's L2 cache of float64 values (2**16 on the AMD EPYC
# machines with 512 KiB: 512 rows at d=16, K=8). Measured there on 2 cores, one
# thread: 512-row tiles 0.94-1.0 s per 2M rows, 128 rows 1.16 s, 2048 1.17 s.
TILE_CELLS = core_caches()[0] // 8

# The (K, P) log-density matrix of a Gaussian panel fills one core's L2 cache (512 KiB on the
# AMD EPYC machines the figures come from: P = 8192 rows at K = 8 in float64, 16384 in float32),
# and its design at most eight times that. Measured on those 2 cores at d=16, K=8: 2**16
# float64 values gave 0.52 s per 2M rows on two threads, 2**14 0.59 s, 2**19 0.58 s, 512-row
# tiles alone 0.69 s; the diagonal kernel on two threads ran 5-10% slower with panels sized to
# the last-level cache share instead (16384 rows at d=16, 4096 at d=64: 0.49 against 0.44 s an
# iteration at 2M x 16). Counting bytes, not values, gives float32 panels twice the rows, so
# each panel's fixed dozen numpy calls (whose fixed part holds the GIL) carries as much work
# as in float64. (The default E-step of the other families has its own panels: family.PANEL_CELLS.)
GAUSSIAN_PANEL_BYTES = core_caches()[0]


def _pow2_floor(value: float) -> int:
    return 1 << max(0, int(value).bit_length() - 1)


def tile_rows(n_components: int, n_features: int, itemsize: int = 8) -> int:
    """Rows per GEMM tile: the (K*d, tile) work matrices stay in a 1-2 MiB L2 cache.

    A power of two, so that tiles and panels nest (see :func:`panel_rows`).
    Counted in bytes: a float32 tile (``itemsize`` 4) holds twice the rows of
    a float64 one, so each tile's fixed handful of numpy calls (whose fixed
    part holds the GIL) carries as much work.
    """
    # At least 512 rows: at d=64, K=8 (K*d = 512) 128-row tiles took 0.766-0.774 s a 500k-row
    # iteration on two threads, 512-row tiles 0.715-0.729 s (a GEMM's fixed cost over fewer rows);
    # K=16, d=64 measured the same either way (0.743-0.752 against 0.739-0.744 s).
    scale = max(1, 8 // itemsize)
    rows = _pow2_floor(scale * TILE_CELLS // max(1, n_components * n_features))
    return min(4096 * scale, max(512 * scale, rows))


def panel_rows(n_components: int, n_features: int, itemsize: int = 8, width: int | None = None) -> int:
    """Rows per panel for one restart: a power of two, a multiple of its tile.

    The panel's (K, P) log-densities, of ``itemsize`` bytes a value, fill
    :data:`GAUSSIAN_PANEL_BYTES`, and its design (``width`` rows; by default
    the diagonal layout's ``2d + 1``) at most eight times that. Powers of two nest: a chunk
    walked in panels of the largest size among the restarts of a round visits
    each restart's own panels exactly as a fit of that restart alone would, so
    its sums (and its model) are bitwise the same whatever other restarts or
    candidates share the round.
    """
    width = width or 2 * n_features + 1
    values = GAUSSIAN_PANEL_BYTES // itemsize
    rows = min(values // max(n_components, 1), 8 * values // width)
    return max(tile_rows(n_components, n_features, itemsize), _pow2_floor(rows))


# float32's round-off in a round's bound, relative to the magnitudes summed (see
# GaussianFamily.bound_resolution). Measured: on 20,000 x 6 rows at an offset of 50 (K=4),
# the bound of float32 iterates at float64's fixed point wandered by up to 0.42 eps32 of
# |bound| (spherical) and 0.19 eps32 (full) from one iteration to the next; four eps32
# leaves a tenfold margin, so a change within it is round-off, not progress.
FLOAT32_BOUND_RTOL = 4.0 * float(np.finfo(np.float32).eps)


# The plans of the rounds under way (_round_plan), each kept while its params list lives (a weak reference
# to it, whose end removes the plan).
_PLANS: dict = {}
# Reentrant: a collection inside the locked block may end a list and run _forget_plans in the same thread.
_PLANS_LOCK = threading.RLock()


def _round_plan(params_list: list, compute_dtype, d: int) -> tuple:
    """Each restart's kernel layout, compute dtype, (tile, panel) rows and prepared view (for whole tiles).

    The same for every chunk of a round, so made once per round and process: a chunk's Python outside
    the compiled kernel runs on caches the kernel has just filled with rows (0.3-1 ms a chunk where the
    same lines take 60 us warm, measured at d=16-64), and holds the GIL meanwhile. The plan is found
    again by the params list's identity and each parameter's (the E-step never writes to them); the views
    are only read (the numpy route, which writes into a view's work matrices, prepares its own).
    """
    # Which kernels run (compiled or numpy's) picks layouts and panels: a switch between rounds makes new plans.
    key = (id(params_list), d, str(compute_dtype), _compiled.products_run())
    values = [tuple(p.values()) for p in params_list]
    hit = _PLANS.get(key)
    if hit is not None and hit[0]() is params_list and len(hit[1]) == len(values) and all(
        len(a) == len(b) and all(u is v for u, v in zip(a, b)) for a, b in zip(hit[1], values)
    ):
        return hit[2]
    # A restart refined past float32's resolution carries "compute_dtype": "float64".
    dtypes = [np.dtype(p.get("compute_dtype", compute_dtype)) for p in params_list]
    # Each restart's kernel: full/tied at small d run on the moment design (_covariance.FullLayout.kernel).
    layouts = [LAYOUTS[p["covariance_type"]].kernel(p, dt) for p, dt in zip(params_list, dtypes)]
    sizes = [
        (tile_rows(len(p["weights"]), d, dt.itemsize),
         lay.panel_rows(len(p["weights"]), d, dt) or panel_rows(len(p["weights"]), d, dt.itemsize, lay.width(d)))
        for lay, p, dt in zip(layouts, params_list, dtypes)
    ]
    views = [lay.prepare(p, t, dt) for lay, p, (t, _), dt in zip(layouts, params_list, sizes, dtypes)]
    plan = (layouts, dtypes, sizes, views)
    try:  # a plain list (a caller of the family's E-step of its own) cannot be referenced weakly: no plan kept
        ref = weakref.ref(params_list, functools.partial(_forget_plans, id(params_list)))
    except TypeError:
        return plan
    with _PLANS_LOCK:
        _PLANS[key] = (ref, values, plan)
    return plan


def _forget_plans(list_id: int, _ref=None) -> None:
    """Drop the plans of the params list whose id was ``list_id`` (it has gone)."""
    with _PLANS_LOCK:
        for key in list(_PLANS):
            if key[0] == list_id:
                _PLANS.pop(key, None)


def design_buffer(covariance_type, n_features: int, rows: int, dtype=np.float64) -> np.ndarray:
    """An empty design matrix for panels of up to ``rows`` rows (its ones row set).

    ``covariance_type``: a name, or the layout object whose design it is.
    """
    layout = LAYOUTS[covariance_type] if isinstance(covariance_type, str) else covariance_type
    rows_in = layout.buffer_rows(n_features)
    buf = aligned_empty(rows_in * rows, dtype).reshape(rows_in, rows)
    buf[layout.width(n_features) - 1] = 1.0
    return buf


def _work_design(layout, n_features: int, rows: int, dtype: np.dtype) -> np.ndarray:
    """:func:`design_buffer` in this thread's work array for the design (kept from chunk to chunk)."""
    buf = work_array(f"gaussian-design-{layout.design}-{dtype.char}", (layout.buffer_rows(n_features), rows), dtype)
    buf[layout.width(n_features) - 1] = 1.0
    return buf


def m_step(stats: dict, means: np.ndarray, covariance_type: str, reg_covar: float, previous=None) -> Params:
    """New parameters from reduced statistics taken about ``means`` (centered).

    Matches ``sklearn.mixture.GaussianMixture._m_step`` in exact arithmetic
    for scikit-learn's four types, mclust's M-steps for its fourteen models
    (``previous``: the covariances EM holds now, where an M-step iterates).
    Raises :class:`NotPositiveDefiniteError` when a covariance is singular.
    """
    layout = LAYOUTS[covariance_type]
    nk, new_means, cov = layout.m_step(stats, means, reg_covar, previous=previous)
    return {
        "weights": nk / nk.sum(),
        "means": new_means,
        "covariances": cov,
        "precisions_cholesky": layout.precision_cholesky(cov),
    }


def n_parameters(n_components: int, n_features: int, covariance_type: str) -> int:
    """Free parameters of the mixture, as ``GaussianMixture._n_parameters``."""
    k, d = n_components, n_features
    return int(LAYOUTS[covariance_type].n_cov_parameters(k, d) + k * d + k - 1)


def check_initial_parameters(
    n_components: int, n_features: int, covariance_type: str, weights_init, means_init, precisions_init
) -> tuple:
    """User-given initial parameters as float64 arrays, refused with the reason when unusable."""
    k, d, layout = n_components, n_features, LAYOUTS[covariance_type]
    w = m = p = None
    if weights_init is not None:
        w = to_numpy(weights_init, np.float64)
        if w.shape != (k,):
            raise ValueError(
                f"The parameter 'weights' should have the shape of ({k},), but got {w.shape}: weights_init takes "
                f"one weight per component (n_components={k})."
            )
        if (w < 0).any() or (w > 1).any() or not np.isfinite(w).all():
            raise ValueError(
                f"The parameter 'weights' should be in the range [0, 1], but got min value {np.min(w):.5f}, "
                f"max value {np.max(w):.5f}: weights_init received {w}."
            )
        if not np.isclose(w.sum(), 1.0, rtol=0, atol=1e-6):
            raise ValueError(
                f"The parameter 'weights' should be normalized, but got sum(weights) = {w.sum():.5f}: "
                "divide weights_init by its sum."
            )
    if means_init is not None:
        m = to_numpy(means_init, np.float64)
        if m.shape != (k, d):
            raise ValueError(
                f"The parameter 'means' should have the shape of ({k}, {d}), but got {m.shape}: means_init takes "
                f"a row of {d} features per component (n_components={k})."
            )
        if not np.isfinite(m).all():
            raise ValueError("means_init holds NaN or infinity.")
    if precisions_init is not None:
        p = to_numpy(precisions_init, np.float64)
        shape = layout.shape(k, d)
        if p.shape != shape:
            raise ValueError(
                f"The parameter '{covariance_type} precision' should have the shape of {shape}, but got {p.shape}: "
                f"precisions_init for covariance_type={covariance_type!r} and n_components={k}."
            )
        layout.check_precisions(p)
    return w, m, p


def parameters_from_attributes(covariance_type: str, attributes: dict, previous: dict | None, context) -> tuple:
    """The internal parameters and context of the model scikit-learn's fitted attributes describe.

    ``attributes`` holds ``weights_`` and ``means_`` and at least one of
    ``covariances_`` and ``precisions_cholesky_`` (the other is derived, as
    scikit-learn's inference reads the Cholesky factors and its ``sample``
    the covariances). ``previous`` (a fitted model's parameters, or None)
    lends what the attributes do not show (a prior); ``context`` is its
    centering point (None: the weighted mean of the means).
    """
    layout = LAYOUTS[covariance_type]
    values = {name: None if value is None else to_numpy(value, np.float64) for name, value in attributes.items()}
    w, m = values.get("weights_"), values.get("means_")
    cov, chol = values.get("covariances_"), values.get("precisions_cholesky_")
    if w is None or m is None or (cov is None and chol is None):
        missing = [name for name, value in (("weights_", w), ("means_", m)) if value is None]
        missing += ["covariances_ (or precisions_cholesky_)"] if cov is None and chol is None else []
        raise AttributeError(
            f"a GaussianMixture built from its attributes needs weights_, means_ and covariances_ or "
            f"precisions_cholesky_; {' and '.join(missing)} not set. Set them, or call fit."
        )
    k = w.shape[0] if w.ndim == 1 else -1
    if w.ndim != 1 or m.ndim != 2 or m.shape[0] != k:
        raise ValueError(
            f"weights_ has shape {w.shape} and means_ {m.shape}: expected (n_components,) and (n_components, "
            "n_features) with the same n_components. Set one weight and one mean row per component."
        )
    d = m.shape[1]
    shape = layout.shape(k, d)
    for name, value in (("covariances_", cov), ("precisions_cholesky_", chol)):
        if value is not None and value.shape != shape:
            raise ValueError(
                f"{name} has shape {value.shape}; covariance_type={covariance_type!r} with {k} components and "
                f"{d} features expects {shape}. Set it in that layout."
            )
    if not all(np.isfinite(v).all() for v in (w, m, cov, chol) if v is not None):
        raise ValueError("weights_, means_, covariances_ and precisions_cholesky_ must be finite; one holds NaN or inf.")
    if chol is None:
        chol = layout.precision_cholesky(cov)
    if cov is None:
        cov = layout.covariances(chol)
    if context is None or np.shape(context) != (d,):
        context = (w @ m) / w.sum() if w.sum() > 0 else m.mean(0)
    kept = {key: value for key, value in (previous or {}).items()
            if key not in ("means", "covariances", "precisions_cholesky", "weights", "covariance_type")}
    params = {**kept, "means": m - context, "covariances": cov, "precisions_cholesky": chol,
              "covariance_type": covariance_type, "weights": w}
    return params, np.asarray(context, dtype=np.float64)


def _shift(sample: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """The centering point: the (weighted) mean of the sample, in float64."""
    sample = np.asarray(sample, dtype=np.float64)
    if np.isnan(sample).any():  # missing="marginalize": the mean of the observed values
        observed = ~np.isnan(sample)
        w = np.ones(len(sample)) if weights is None else np.asarray(weights, dtype=np.float64)
        mass = w @ observed
        with np.errstate(invalid="ignore", divide="ignore"):
            shift = (w @ np.where(observed, sample, 0.0)) / mass
        return np.where(mass > 0, shift, 0.0)
    if weights is not None and weights.sum() > 0:
        return np.average(sample, axis=0, weights=weights)
    return sample.mean(0)


_PER_COMPONENT = ("weights", "means", "n", "a", "b", "moments")


@dataclass(frozen=True)
class GaussianFamily(Family):
    """Gaussian components; the covariance type travels in each restart's params.

    One family object serves every covariance type, so a model-selection grid
    runs all its candidates in one E-step task per chunk, sharing the design
    matrices of the panels. ``context`` is the shift ``c`` (see the module
    docstring); parameters are held centered.

    ``prior`` (a spec from :func:`dask_em.prior.prior_spec`, None for none)
    makes the M-step mclust's MAP step (:func:`dask_em.prior.map_m_step`): each
    restart's params hold its resolved prior (``prior_*``, from the data's
    moments in ``settings["prior_moments"]``), the reported bound is the
    penalized one, ``(loglik + log prior) / rows`` of the entering parameters,
    and empty components are kept (the prior keeps them regular).
    ``compute_dtype`` "float32" runs the E-step's log-densities and GEMMs in
    float32 (statistics summed in float64 per tile or panel, the M-step in
    float64); "float64" (the default) matches scikit-learn to round-off.

    Parameters
    ----------
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance (not used with a prior).
    missing : {"error", "marginalize"}, default="error"
        How NaN is treated: refused, or marginalised by EM (missing at random).
    prior : tuple or None, default=None
        A conjugate prior spec from :func:`dask_em.prior.prior_spec`.
    compute_dtype : {"float64", "float32"}, default="float64"
        Precision of the E-step's log-densities and matrix products.
    """

    reg_covar: float = 1e-6
    missing: str = "error"
    prior: tuple | None = None
    compute_dtype: str = "float64"
    name = "gaussian"
    supports_missing = True
    array_api = True  # chunks of CuPy, PyTorch, ...: the E-step in dask_em._array_api, on their device

    @property
    def lazy_row_check(self):
        # NaN or inf rows make the log-likelihood non-finite; with missing values
        # marginalised, NaN does not, so the rows are checked in the first round.
        return self.missing == "error"

    def rows_valid(self, x):
        if dtype_kind(x) != "f":
            return True
        xp = namespace(x)
        if self.missing == "error":
            return bool(xp.all(xp.isfinite(x)))
        return not bool(xp.any(xp.isinf(x)) | xp.any(xp.all(xp.isnan(x), axis=1)))

    def check_rows(self, x):
        x = to_numpy(x)
        if self.missing != "error":
            if x.dtype.kind != "f":
                return None
            infinite = np.isinf(x)
            if infinite.any():
                row = int(np.flatnonzero(infinite.any(1))[0])
                return row, "X contains infinity", "Replace infinite values by NaN to marginalise them, or drop the rows."
            return all_missing_row(x)
        finite = np.isfinite(x)
        if finite.all():
            return None
        row = int(np.flatnonzero(~finite.all(1))[0])
        return row, "X contains NaN or infinity", (
            "Remove or impute those rows first (for fit and for predict), e.g. X[da.isfinite(X).all(axis=1)]."
        )

    def context(self, sample, weights):
        return _shift(sample, weights)

    def recenter(self, params, context, new_context):
        if "means" not in params:
            return params
        out = {**params, "means": params["means"] + (context - new_context)}
        if "prior_mean" in params:
            out["prior_mean"] = params["prior_mean"] + (context - new_context)
        return out

    @property
    def drops_empty_components(self) -> bool:  # type: ignore[override]
        return self.prior is None

    def init_features(self, sample, context):
        # The rows as scikit-learn's starts see them: not centred (its KMeans centres them itself, and a
        # centring of ours changes the round-off that breaks ties between equal distances on repeated rows),
        # in their own float type. The hierarchical trees transform their rows by their own moments.
        sample = np.asarray(sample)
        return sample if sample.dtype in (np.float32, np.float64) else sample.astype(np.float64)

    def start_given(self, settings):
        return all(settings.get(k) is not None for k in ("weights_init", "means_init", "precisions_init"))

    def init_params(self, x, w, resp, context, settings):
        """As ``sklearn.mixture.GaussianMixture._initialize``, on the sample."""
        ct = settings["covariance_type"]
        layout = LAYOUTS[ct]
        weights_init, means_init, precisions_init = (
            settings.get(k) for k in ("weights_init", "means_init", "precisions_init")
        )
        x = np.asarray(x, dtype=np.float64)
        k, d = settings["n_components"], context.shape[0]
        params: Params = {"dropped": []}
        if self.prior is not None:
            params.update(resolve_prior(self.prior, ct, k, d, settings.get("prior_moments"), context))
        if resp is not None:
            xa = layout.augment(x, context, design_buffer(ct, d, len(x)))
            acc = layout.empty_stats(k, d)
            ref = np.zeros((k, d))
            layout.accumulate(xa, w, resp.T, ref, acc)
            stats = layout.finish(acc, ref)
            mass = layout.mass(stats)
            total = float(mass.sum())
            keep = ~empty_components(mass, total, x.shape[0])
            if not keep.all() and weights_init is None and means_init is None and self.prior is None:
                # More components than distinct rows: the start's empty clusters are
                # dropped here as the engine drops components that empty. (With
                # user-given weights or means the shapes must stay; the engine
                # drops the component after its first E-step instead.)
                stats = self.select(stats, keep)
                ref, mass = ref[keep], mass[keep]
                params["dropped"] = [int(i) for i in np.flatnonzero(~keep)]
            try:
                if self.prior is None:
                    params.update(m_step(stats, ref, ct, self.reg_covar))
                else:
                    params.update(map_m_step(stats, ref, ct, self.reg_covar, prior_of(params)))
            except NotPositiveDefiniteError as exc:
                return {"error": f"at the start: {exc}"}
            # scikit-learn's starts divide their masses by n_samples, not by their sum: k-means++ and
            # random_from_data (one row a component) begin with weights summing to K / n_samples. mclust's
            # tree weighs the rows it clustered (a subset of the sample) by their own count.
            if settings.get("start") in SCIKIT_LEARN_STARTS:
                total = float(x.shape[0]) if w is None else float(np.sum(w))
            params["weights"] = (mass + MASS_EPS) / total
        if weights_init is not None:
            params["weights"] = to_numpy(weights_init, np.float64)
        if means_init is not None:
            params["means"] = to_numpy(means_init, np.float64) - context
        if precisions_init is not None:
            pc = layout.cholesky_from_precisions(to_numpy(precisions_init, np.float64))
            params["precisions_cholesky"] = pc
            params["covariances"] = layout.covariances(pc)
        params["covariance_type"] = ct
        return params

    def estep(self, x, w, params_list, context, entropy=False):
        """All restarts on one chunk, walking it in panels shared by every restart.

        The panel sizes are nested powers of two (:func:`panel_rows`), so each
        restart sums exactly what it would sum alone. With ``missing="marginalize"``
        the rows that miss a value are split off and go through
        :func:`dask_em._incomplete.estep_incomplete`; the complete rows take the
        path below unchanged (a chunk without NaN is summed bitwise as with
        ``missing="error"``).
        """
        if is_foreign(x):
            return self._estep_foreign(x, w, params_list, context, entropy)
        if self.missing == "error":
            return self._estep_complete(x, w, params_list, context, entropy)
        # Optimistic: a clean chunk pays no NaN scan (a scan of the rows cost 4% of the diag
        # E-step); a row holding NaN makes its panel's log-likelihood NaN, which stops the
        # walk at that panel and sends the chunk to the missing-values route.
        records = self._estep_complete(x, w, params_list, context, entropy, stop_at_nan=True)
        if records is None:
            return self._estep_with_missing(x, w, params_list, context, entropy)
        return records

    def _estep_foreign(self, x, w, params_list, context, entropy):
        """A chunk of another array-API library (a GPU's CuPy, PyTorch): the E-step on its device.

        With ``missing="marginalize"``, the rows that miss a value are gathered
        and copied to the host, where the missing-values route takes them; the
        complete rows stay on the device.
        """
        dtypes = [np.dtype(p.get("compute_dtype", self.compute_dtype)) for p in params_list]
        split = split_holes(x) if self.missing != "error" and dtype_kind(x) == "f" else None
        if split is not None:
            xp = namespace(x)
            whole, part = split
            wd = None if w is None else weights_like(w, x)
            records = _array_api.estep(xp.take(x, whole, axis=0), None if wd is None else xp.take(wd, whole),
                                       params_list, context, entropy, dtypes)
            rows = to_numpy(xp.take(x, part, axis=0))
            extras = _incomplete.estep_incomplete(
                rows, None if wd is None else to_numpy(xp.take(wd, part)), params_list, context, entropy,
                self._estep_complete, _incomplete.missing_counts(rows),
            )
            return self._merge_records(records, extras, params_list)
        return _array_api.estep(x, w, params_list, context, entropy, dtypes)

    def _merge_records(self, records, extras, params_list):
        for rec, params, extra in zip(records, params_list, extras):
            for key in ("loglik", "wsum", "entropy"):
                rec[key] += extra[key]
            rec["stats"] = self.merge([rec["stats"], extra["stats"]])
            rec["nk"] = np.array(LAYOUTS[params["covariance_type"]].mass(rec["stats"]))
        return records

    def _estep_with_missing(self, x, w, params_list, context, entropy):
        miss, counts = _incomplete.missing_counts(x)
        part = np.flatnonzero(counts)
        # One gather puts the complete rows, then the incomplete ones, each contiguous:
        # 2.8 ms per 250k x 16 chunk against 5.2 ms for x[whole] and x[part].
        order = np.concatenate([np.flatnonzero(counts == 0), part])
        xs = np.take(x, order, axis=0)
        ws = None if w is None else np.take(w, order)
        n = len(x) - len(part)
        records = self._estep_complete(xs[:n], None if w is None else ws[:n], params_list, context, entropy)
        extras = _incomplete.estep_incomplete(xs[n:], None if w is None else ws[n:], params_list, context, entropy,
                                              self._estep_complete, (miss[part], counts[part]))
        return self._merge_records(records, extras, params_list)

    def _estep_complete(self, x, w, params_list, context, entropy=False, stop_at_nan=False):
        """The complete rows' E-step; with ``stop_at_nan``, None as soon as a panel's log-likelihood is NaN."""
        shift = context
        n, d = x.shape[0], shift.shape[0]
        layouts, dtypes, sizes, views = _round_plan(params_list, self.compute_dtype, d)
        accs = [lay.empty_stats(len(p["weights"]), d) for lay, p in zip(layouts, params_list)]
        # A restart runs its whole chunk compiled where it can, in one call that releases the GIL: on a
        # product design (moments, diag) with the same panels and sums as the loop below, its statistics
        # product compiled rather than a GEMM (the moment design's panels then fit one core's L2:
        # _covariance.MOMENT_PANEL_BYTES_COMPILED); full/tied on the residual design in tiles.
        run = []
        for i, (lay, dt, size, view, acc) in enumerate(zip(layouts, dtypes, sizes, views, accs)):
            product = lay.product_design(view, d) if n else None
            # Only the first restart watches for NaN (a NaN row makes every restart's NaN; a restart whose
            # own parameters give NaN must not send clean chunks down the missing-values route).
            watch = stop_at_nan and i == 0
            if product is not None:
                done = _compiled.product_estep(x, w, shift, product[0], product[1], product[2], size[1], entropy,
                                               watch, acc, work_array)
            else:  # full/tied on the residual design: also one compiled call where it can
                residual = lay.residual_design(view, d) if n else None
                done = None if residual is None else _compiled.residual_estep(
                    x, w, shift, *residual, size[0], entropy, watch, acc, work_array)
            if done is False:
                return None
            if done is None:  # numpy's kernels, on a view of this chunk's own: they write into its work matrices
                run.append((lay, dt, size, lay.prepare(params_list[i], min(size[0], n), dt), acc))
        if run and not self._estep_numpy(x, w, shift, run, accs, entropy, stop_at_nan):
            return None
        records = []
        for lay, acc, p, view in zip(layouts, accs, params_list, views):
            scalars = {key: acc.pop(key) for key in ("loglik", "wsum", "entropy")}
            if view["means"].dtype == p["means"].dtype:
                stats = lay.finish(acc, p["means"])
            else:  # float32: residuals were taken about the rounded means
                rounded = view["means"].astype(p["means"].dtype)
                stats = lay.shift_stats(lay.finish(acc, rounded), rounded, p["means"])
            records.append({**scalars, "nk": np.array(lay.mass(stats)), "stats": stats})
        return records

    def _estep_numpy(self, x, w, shift, run, accs, entropy, stop_at_nan) -> bool:
        """The restarts of ``run`` on numpy's kernels, panel by panel, into their ``accs``; with ``stop_at_nan``,
        False as soon as the first restart's log-likelihood is NaN."""
        n, d = x.shape[0], shift.shape[0]
        shared = max(1, min(max((size[1] for _, _, size, _, _ in run), default=1), n))
        # One design matrix per design in use, shared by the restarts that read it.
        designs = {(lay.design, dt): lay for lay, dt, _, _, _ in run}
        bufs = {key: _work_design(lay, d, shared, key[1]) for key, lay in designs.items()}
        # Each panel's log-sum-exp work rows (the compiled kernel's five; numpy's row maxima and sums).
        rows = {dt: work_array(f"gaussian-rows-{dt.char}", (5, shared), dt) for _, dt, _, _, _ in run}
        with np.errstate(invalid="ignore", over="ignore"):
            for lo in range(0, n, shared):
                hi = min(lo + shared, n)
                xas = {key: designs[key].augment(x[lo:hi], shift, buf) for key, buf in bufs.items()}
                for lay, dt, (_, panel), view, acc in run:
                    xa = xas[(lay.design, dt)]
                    for sub in range(0, hi - lo, panel):
                        end = min(sub + panel, hi - lo)
                        wp = None if w is None else w[lo + sub : lo + end]
                        xp = xa[:, sub:end]
                        resp = lay.weighted_log_prob(xp, view)
                        # Responsibilities times the row weights in one call that releases the GIL where
                        # compiled; else numpy's responsibilities, weighted in accumulate.
                        if _compiled.normalize(resp, wp, entropy, acc, rows[dt]):
                            wp = None
                        else:
                            log_norm, resp = log_normalize(resp, rows[dt][:2, : end - sub])
                            add_likelihood(acc, log_norm, resp, wp, entropy)
                        if stop_at_nan and acc is accs[0] and math.isnan(acc["loglik"]):
                            return False
                        lay.accumulate(xp, wp, resp, view["means"], acc, view)
        return True

    def select(self, params_or_stats, keep):
        per_component = set(_PER_COMPONENT)
        if params_or_stats.get("covariance_type") != "tied":
            per_component |= {"covariances", "precisions_cholesky"}
        return {
            key: (value[keep] if key in per_component and value is not None else value)
            for key, value in params_or_stats.items()
        }

    def m_step(self, stats, nk, params):
        ct = params["covariance_type"]
        if self.prior is None:
            new = m_step(stats, params["means"], ct, self.reg_covar, previous=params.get("covariances"))
        else:
            prior = prior_of(params)
            new = map_m_step(stats, params["means"], ct, self.reg_covar, prior)
            new.update({key: params[key] for key in PARAM_KEYS})
            # The round's record holds the log-likelihood of the *entering* parameters;
            # their log prior completes the penalized bound (round_bound takes it out).
            new["entering_log_prior"] = log_prior(params, prior)
        del new["weights"]  # the engine's, from nk
        new["covariance_type"] = ct
        return new

    def align_stats(self, stats, params, reference):
        if "a" not in stats:  # diag / spherical moments are raw (about the context)
            return stats
        # a, b are sums of r (y - m) and r (y - m)(y - m)^T about params' means m.
        n, a, b = stats["n"], stats["a"], stats["b"]
        delta = params["means"] - reference["means"]
        cross = a[:, :, None] * delta[:, None, :]
        return {
            **stats,
            "a": a + n[:, None] * delta,
            "b": b + cross + cross.transpose(0, 2, 1) + n[:, None, None] * delta[:, :, None] * delta[:, None, :],
        }

    def round_bound(self, record, params):
        """Mean log-likelihood of the entering parameters; with a prior, plus their log prior per row.

        EM with the MAP M-step never lowers ``loglik + log prior``: the bound is
        exactly monotone in exact arithmetic.
        """
        entering = params.pop("entering_log_prior", None)
        if entering is None:
            return record["loglik"] / record["wsum"]
        return (record["loglik"] + entering) / record["wsum"]

    def weighted_log_prob(self, x, params, context):
        if is_foreign(x):  # on the chunk's device; only the rows with NaN (marginalised) on the host
            if self.missing != "error" and dtype_kind(x) == "f":
                split = split_holes(x)
                if split is not None:
                    whole, part = split
                    xp = namespace(x)
                    top = _array_api.weighted_log_prob(xp.take(x, whole, axis=0), params, context)
                    rest = self.weighted_log_prob(to_numpy(xp.take(x, part, axis=0)), params, context)
                    return in_row_order(split, top, rest, x)
            return _array_api.weighted_log_prob(x, params, context)
        if self.missing != "error" and _incomplete.any_missing(x):
            holes = np.isnan(x).any(1)
            out = np.empty((x.shape[0], len(params["weights"])))
            out[~holes] = self._weighted_log_prob(x[~holes], params, context)
            out[holes] = _incomplete.weighted_log_prob_incomplete(x[holes], params, context)
            return out
        return self._weighted_log_prob(x, params, context)

    def impute(self, x, params, context):
        return _incomplete.impute(x, params, context)

    def _weighted_log_prob(self, x, params, context):
        ct = params["covariance_type"]
        layout = LAYOUTS[ct]
        n, d = x.shape
        k = len(params["weights"])
        # Compiled where the E-step runs a product design (the moment design of full/tied at small d, under
        # its precision guard; the diagonal and spherical designs): its panels and log-density GEMM, in one
        # call that releases the GIL.
        if n and _compiled.products_run():
            lay = layout.kernel(params)
            view = lay.prepare(params, 1)
            product = lay.product_design(view, d)
            if product is not None:
                panel = lay.panel_rows(k, d, np.dtype(np.float64)) or panel_rows(k, d, 8, lay.width(d))
                out = np.empty((n, k))
                if _compiled.product_logp(x, context, product[0], product[1], product[2], panel, out, work_array):
                    return out
        tile = max(1, min(tile_rows(k, d), n))
        panel = max(1, min(panel_rows(k, d), n))
        view = layout.prepare(params, tile)
        out = np.empty((n, k))
        buf = design_buffer(ct, d, panel)
        for lo in range(0, n, panel):
            hi = min(lo + panel, n)
            out[lo:hi] = layout.weighted_log_prob(layout.augment(x[lo:hi], context, buf), view).T
        return out

    def log_prob(self, x, params):
        shifted = dict(params, weights=np.ones(len(params["weights"])))
        return self.weighted_log_prob(x, shifted, np.zeros(x.shape[1]))

    def chunk_stats(self, x, rw, params):  # pragma: no cover - estep is overridden
        raise NotImplementedError("GaussianFamily computes its statistics in its fused estep")

    def n_parameters(self, params):
        k, d = params["means"].shape
        return n_parameters(k, d, params["covariance_type"]) - (k - 1)

    draws_as_scikit_learn = True

    def sample(self, params, labels, context, rng):
        layout = LAYOUTS[params["covariance_type"]]
        counts = np.bincount(labels, minlength=len(params["weights"]))
        means, cov = params["means"], params["covariances"]
        draws = [layout.draw(mean, cov, j, count, rng) for j, (mean, count) in enumerate(zip(means, counts))]
        return np.vstack(draws) + context

    def to_public(self, params, context):
        layout = LAYOUTS[params["covariance_type"]]
        out = {
            "means_": params["means"] + context,
            "covariances_": params["covariances"],
            "precisions_cholesky_": params["precisions_cholesky"],
            "precisions_": layout.precisions(params["precisions_cholesky"]),
        }
        if hasattr(layout, "factors"):  # mclust's models: volume, shape and orientation by mclust's names
            out.update({f"{name}_": value for name, value in layout.factors(params["covariances"]).items()})
        if "prior_mean" in params:
            prior = prior_of(params)
            out["prior_"] = {**prior, "mean": prior["mean"] + context}
        return out

    def bound_resolution(self, bound, params):
        """float32's round-off in the bound: :data:`FLOAT32_BOUND_RTOL` of the magnitudes summed.

        A row's log-density sums terms of about ``n_features`` in size (the
        Mahalanobis distance, the log-determinant, ``d/2 log(2 pi)``), each
        computed from float32 coefficients: the bound's round-off scales with
        ``max(|bound|, n_features)``, not with the bound alone, which these
        terms can cancel to near zero. A restart refined to float64
        (``params["compute_dtype"]``) resolves to round-off of float64's: 0.
        """
        if params.get("compute_dtype", self.compute_dtype) != "float32":
            return 0.0
        return FLOAT32_BOUND_RTOL * max(abs(bound), params["means"].shape[1], 1.0)

    def failure_summary(self, errors):
        # scikit-learn's own words when covariances collapsed, so that code matching its error still matches.
        return ILL_DEFINED if any(COLLAPSED in error for error in errors) else None

    def bound_falls_by_design(self, params):
        return self.reg_covar > 0 or (self.prior is not None and params.get("covariance_type") == "EEI")

    def bound_fell_hint(self, params):
        if self.prior is not None:
            if self.reg_covar > 0:
                return (
                    f"reg_covar={self.reg_covar:g} is added after the prior's MAP step, so the step is not "
                    "the penalized bound's maximiser; pass reg_covar=0 with a prior"
                )
            if params.get("covariance_type") == "EEI":
                return (
                    "mclust's EEI step with a prior keeps each component's own mean while its covariance "
                    "counts the shrunk one's, so it is not the penalized bound's maximiser and the bound "
                    "may fall by small amounts"
                )
            return (
                "with the prior the M-step maximises the penalized bound exactly, so a fall is round-off "
                "in near-singular covariances"
            )
        if self.reg_covar > 0:
            return (
                f"reg_covar={self.reg_covar:g} is added to the covariances after each M-step, so the "
                "M-step is not the likelihood's maximiser and EM's bound need not rise; a covariance "
                "near reg_covar's size shows a component shrinking onto few rows. prior='default' "
                "(mclust's conjugate prior) regularises instead and keeps EM monotone"
            )
        return "with reg_covar=0 this is round-off from near-singular covariances"
