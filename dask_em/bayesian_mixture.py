"""``BayesianGaussianMixture``: scikit-learn's variational Gaussian mixture, fitted out-of-core.

The model, its statistics and its bound are in :mod:`dask_em.bayesian`.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions

from ._base import BaseMixture
from ._covariance import COVARIANCE_TYPES, LAYOUTS
from ._namespace import to_numpy
from ._validation import invalid, is_real, ordered
from .bayesian import PRIOR_TYPES, BayesianGaussianFamily, resolve_prior
from .gaussian_mixture import COMPUTE_DTYPE_CONSTRAINTS, compute_dtype_name
from .starts import data_moments_graph
from .family import Family


class _Absent:
    """A method the estimator does not have: absent to ``hasattr`` on the estimator and its class (as the
    method of a parent class it hides), an AttributeError saying why."""

    def __init__(self, name: str, instead: str):
        self.name, self.instead = name, instead
        self.__doc__ = (f"Not defined for a variational model (scikit-learn's has no ``{name}`` either): "
                        "reading it raises ``AttributeError``.")

    def __get__(self, model, owner=None):
        kind = owner.__name__ if model is None else type(model).__name__
        raise AttributeError(f"This {kind!r} has no attribute {self.name!r}: {self.instead}")


class BayesianGaussianMixture(BaseMixture):
    """Variational Bayesian Gaussian mixture fitted on data larger than memory.

    The parameters and fitted attributes mean what they mean in
    :class:`sklearn.mixture.BayesianGaussianMixture`; fit takes numpy, dask,
    xarray, ``zarr.Array`` or a Zarr path/URL and reads it one row chunk at a
    time. Each iteration is one pass (the E-step's reduction gives the
    statistics, the entropy of the responsibilities and hence the bound).

    Parameters
    ----------
    n_components : int, default=1
        Upper bound on the number of components; superfluous ones get weights
        near zero (they are kept, as in scikit-learn).
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    tol : float or None, default=1e-3
        Convergence threshold on the change of the lower bound (a total over
        rows, as scikit-learn's). Aitken's rule under ``stopping="auto"``
        stops at ``min(tol, 1 / n_samples)`` (in [1e-6, 1e-3]), as for
        :class:`dask_em.GaussianMixture`; None: each rule's default.
    reg_covar : float, default=1e-6
    max_iter : int, default=100
        0 returns the starting parameters, as scikit-learn does.
    n_init : int, default=1
        Restarts, run side by side sharing every read; the highest final
        lower bound wins.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        Computed on a uniform sample of ``init_sample_size`` rows (all rows
        when the sample is at least as large as the data).
    weight_concentration_prior_type : {"dirichlet_process", "dirichlet_distribution"}, default="dirichlet_process"
    weight_concentration_prior : float > 0, optional
        Default ``1 / n_components``.
    mean_precision_prior : float > 0, optional
        Default 1.
    mean_prior : array-like of shape (n_features,), optional
        Default: the mean of all rows (one read per chunk, shared with the
        initialisation sample's; weighted by ``sample_weight`` if given).
    degrees_of_freedom_prior : float > n_features - 1, optional
        Default ``n_features``.
    covariance_prior : float or array-like, optional
        Shape (d, d) full/tied, (d,) diag, float spherical. Default: the
        covariance of all rows (ddof=1; for diag its diagonal, for spherical
        the mean of that), computed with ``mean_prior``'s pass.
    random_state, verbose, verbose_interval
        As for :class:`dask_em.GaussianMixture`.
    warm_start : bool, default=False
        As for :class:`dask_em.GaussianMixture`: one restart from the last
        fit's variational parameters; the priors from the data's moments
        (``mean_prior``, ``covariance_prior`` left None) are recomputed from
        the rows of the new fit, as scikit-learn's are.
    init_sample_size, split_every, init_strategy, n_short, short_iter, accelerate, stopping, stepwise_passes
        As for :class:`dask_em.GaussianMixture`.
    missing : {"error"}, default="error"
        NaN is refused; this estimator does not marginalise missing values.
    prune_margin : float or None, default=None
        As for :class:`dask_em.GaussianMixture`, in units of this bound (a
        total over rows, not a per-row mean); None never prunes.
    compute_dtype : {"float64", "float32"}, default="float64"
        As for :class:`dask_em.GaussianMixture`: "float32" computes the
        E-step's log-densities and matrix products in float32 (statistics
        summed in float64, the variational updates in float64); "float64"
        matches scikit-learn to round-off. A ``tol`` below float32's
        resolution of the bound is met by finishing in float64, as there;
        this bound is scikit-learn's total over the rows, so from a few
        hundred rows on, the default ``tol`` is below that resolution and a
        float32 fit's last iterations run in float64.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
        Posterior mean of the weights.
    means_ : ndarray of shape (n_components, n_features)
    covariances_, precisions_, precisions_cholesky_ : ndarray
    weight_concentration_ : ndarray (K,) or tuple of two (K,) arrays (dirichlet_process)
    mean_precision_ : ndarray of shape (n_components,)
    degrees_of_freedom_ : ndarray of shape (n_components,) (a float for tied)
    weight_concentration_prior_, mean_precision_prior_, mean_prior_,
    degrees_of_freedom_prior_, covariance_prior_
        The prior used. For float32 input ``mean_prior_`` (and for diag and
        spherical ``covariance_prior_``) is float32 and the rest float64,
        as in scikit-learn.
    converged_, n_iter_, restarts_, n_components_, n_features_in_
        As for :class:`dask_em.GaussianMixture`.
    lower_bound_ : float
        scikit-learn's evidence lower bound (without its constant terms) of
        the best restart at its last iteration.
    lower_bounds_ : list of float
        That bound at every iteration.
    """

    _parameter_constraints: dict = {
        **BaseMixture._parameter_constraints,
        "covariance_type": [StrOptions(ordered(COVARIANCE_TYPES))],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "weight_concentration_prior_type": [StrOptions(ordered(PRIOR_TYPES))],
        # In scikit-learn's order (None first), so that its sentences are word for word.
        "weight_concentration_prior": [None, Interval(Real, 0.0, None, closed="neither")],
        "mean_precision_prior": [None, Interval(Real, 0.0, None, closed="neither")],
        "mean_prior": [None, "array-like"],
        "degrees_of_freedom_prior": [None, Interval(Real, 0.0, None, closed="neither")],
        "covariance_prior": [None, "array-like", Interval(Real, 0.0, None, closed="neither")],
        "compute_dtype": COMPUTE_DTYPE_CONSTRAINTS,
    }

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float | None = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weight_concentration_prior_type: str = "dirichlet_process",
        weight_concentration_prior: float | None = None,
        mean_precision_prior: float | None = None,
        mean_prior=None,
        degrees_of_freedom_prior: float | None = None,
        covariance_prior=None,
        random_state=None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        init_sample_size: int | None = None,
        split_every: int | None = None,
        init_strategy: str = "single",
        n_short: int = 20,
        short_iter: int = 10,
        prune_margin: float | None = None,
        missing: str = "error",
        accelerate: str | None = None,
        stopping: str = "auto",
        stepwise_passes: int = 0,
        compute_dtype: str = "float64",
    ):
        super().__init__(
            n_components, tol=tol, max_iter=max_iter, n_init=n_init, init_params=init_params,
            random_state=random_state, init_sample_size=init_sample_size, split_every=split_every,
            warm_start=warm_start, verbose=verbose, verbose_interval=verbose_interval, init_strategy=init_strategy, n_short=n_short, short_iter=short_iter,
            prune_margin=prune_margin, missing=missing, accelerate=accelerate, stopping=stopping, stepwise_passes=stepwise_passes,
        )
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.compute_dtype = compute_dtype

    _plain_stopping = "change"  # scikit-learn's rule on the ELBO: equal to scikit-learn's estimator
    @property
    def _input_dtype_attributes(self) -> tuple[str, ...]:
        # scikit-learn's other attributes are float64 whatever X is; its covariance prior follows
        # X where it comes from np.var (diag, spherical), not from np.cov (full, tied).
        return ("mean_prior_", "covariance_prior_") if self.covariance_type in ("diag", "spherical") else ("mean_prior_",)

    def _refresh_warm_params(self, params: dict, data_settings: dict, context) -> dict:
        """The prior from this fit's rows, as scikit-learn's warm start recomputes it on every fit."""
        return {**params, **resolve_prior(data_settings, context)}

    def make_family(self) -> Family:
        return BayesianGaussianFamily(reg_covar=float(self.reg_covar), compute_dtype=compute_dtype_name(self.compute_dtype))

    def _check_family_params(self) -> None:
        if self.missing != "error":
            raise ValueError(
                f"missing={self.missing!r}: BayesianGaussianMixture does not marginalise missing values yet "
                "(its variational bound is not derived for incomplete rows here). Use missing='error' and "
                "remove or impute incomplete rows, or fit GaussianMixture(missing='marginalize')."
            )

    def _start_settings(self, d: int) -> dict:
        return {
            "n_components": self.n_components,
            "covariance_type": self.covariance_type,
            "weight_concentration_prior_type": self.weight_concentration_prior_type,
            "weight_concentration_prior": self.weight_concentration_prior,
            "mean_precision_prior": self.mean_precision_prior,
            "degrees_of_freedom_prior": self._check_dof(d),
            "mean_prior": self._check_mean_prior(d),
            "covariance_prior": self._check_covariance_prior(d),
        }

    def _check_dof(self, d: int):
        dof = self.degrees_of_freedom_prior
        if dof is not None and not dof > d - 1:
            raise ValueError(
                f"The parameter 'degrees_of_freedom_prior' should be greater than {d - 1}, but got {dof:.3f}. "
                f"It must exceed n_features - 1 = {d - 1}; leave it None for the default {d} (n_features)."
            )
        return dof

    def _check_mean_prior(self, d: int):
        if self.mean_prior is None:
            return None
        m = to_numpy(self.mean_prior, np.float64)
        if m.shape != (d,) or not np.isfinite(m).all():
            raise ValueError(
                f"mean_prior must be a finite array of shape ({d},) for {d} features; received shape {m.shape}."
            )
        return m

    def _check_covariance_prior(self, d: int):
        value, ct = self.covariance_prior, self.covariance_type
        if value is None:
            return None
        if ct == "spherical":
            if not is_real(value) or value <= 0:
                raise invalid(
                    type(self).__name__, "covariance_prior", value, "a float > 0 for covariance_type='spherical'"
                )
            return float(value)
        c = to_numpy(value, np.float64)
        shape = (d, d) if ct in ("full", "tied") else (d,)
        if c.shape != shape:
            raise ValueError(
                f"covariance_prior must have shape {shape} for covariance_type={ct!r}; received shape {c.shape}."
            )
        if ct in ("full", "tied"):
            if not np.allclose(c, c.T) or np.linalg.eigvalsh(c).min() <= 0:
                raise ValueError("covariance_prior must be symmetric positive definite.")
        elif not (c > 0).all():
            raise ValueError(f"covariance_prior must be positive; received {c}.")
        return c

    def _start_plan(self, n: int, d: int, taken: dict | None = None):
        """The start, plus the data-dependent prior's moments in the same compute (one read per chunk)."""
        if n < 2 and self.covariance_prior is None:
            raise ValueError(
                f"X has {n} row (n_samples={n}); the default covariance_prior is the covariance of all rows "
                "(ddof=1), which needs at least 2. Pass more rows, or give covariance_prior."
            )
        plan = super()._start_plan(n, d, taken)
        if self.mean_prior is None or self.covariance_prior is None:
            ct = self.covariance_type
            plan.data_settings = lambda X, w: {"data_moments": data_moments_graph(X, w, ct)}
        return plan

    def _variant(self) -> str | None:
        return self.covariance_type

    def _bound_meaning(self) -> str:
        return "evidence lower bound, total over the rows"  # scikit-learn's, not divided by n

    def _describe(self) -> str:
        return f"{self.covariance_type} covariance, {self.weight_concentration_prior_type} prior"

    def expected_shapes(self, k: int, d: int, values: dict) -> dict:
        if values.get("covariance_type") != self.covariance_type:
            raise ValueError(
                f"covariance_type {values.get('covariance_type')!r} of the parameters differs from "
                f"the estimator's {self.covariance_type!r}"
            )
        cov = LAYOUTS[self.covariance_type].shape(k, d)
        concentration = (k, 2) if self.weight_concentration_prior_type == "dirichlet_process" else (k,)
        return {
            "means": (k, d), "covariances": cov, "precisions_cholesky": cov, "mean_precision": (k,),
            "weight_concentration": concentration, "mean_prior": (d,),
        }

    # No information criteria, as scikit-learn's variational mixture has none: hasattr(model, "bic") is False,
    # and model.bic raises AttributeError saying what to use instead.
    bic = _Absent(
        "bic", "its evidence lower bound (lower_bound_) scores the fit, and its weights_ show the components the "
        "data support. For a BIC grid use dask_em.select_model."
    )
    aic = _Absent(
        "aic", "its evidence lower bound (lower_bound_) scores the fit. For an information-criterion grid use "
        "dask_em.select_model."
    )
