"""``GaussianMixture``: scikit-learn's estimator, fitted out-of-core on Dask."""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.utils._param_validation import Interval, Options, StrOptions

from ._base import BaseMixture
from ._covariance import GAUSSIAN_COVARIANCE_TYPES, LAYOUTS, MCLUST_MODELS
from ._validation import fail, ordered
from .starts import data_moments_graph
from .family import Family
from .gaussian import GaussianFamily, check_initial_parameters, parameters_from_attributes
from .prior import MATRIX_SCALE_TYPES, PRIOR_TYPES, check_spec, needs_moments, prior_spec, resolve_prior
from .starts import StartPlan

# reg_covar's default: with a prior it must stay there (or be 0), since the prior regularises instead.
_DEFAULT_REG_COVAR = 1e-6


COMPUTE_DTYPES = ("float64", "float32")
# The names, the numpy scalar types (and Python's float) and the dtypes of COMPUTE_DTYPES.
COMPUTE_DTYPE_CONSTRAINTS = [
    StrOptions(ordered(COMPUTE_DTYPES)), Options(type, ordered((np.float64, np.float32, float))),
    Options(np.dtype, ordered(map(np.dtype, COMPUTE_DTYPES))),
]


def compute_dtype_name(value) -> str:
    """``"float64"`` or ``"float32"`` from a name or numpy dtype; anything else refused with the choices."""
    try:
        name = None if value is None else np.dtype(value).name
    except TypeError:
        name = None
    if name not in COMPUTE_DTYPES:
        raise fail("compute_dtype", value, f"one of {COMPUTE_DTYPES} (float64 matches scikit-learn)")
    return name


class GaussianMixture(BaseMixture):
    """Gaussian mixture fitted by EM on data larger than memory.

    The parameters and fitted attributes mean what they mean in
    :class:`sklearn.mixture.GaussianMixture`; fit takes numpy, dask, xarray,
    ``zarr.Array`` or a Zarr path/URL and reads it one row chunk at a time.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components K.
    covariance_type : str, default="full"
        scikit-learn's "full", "tied", "diag" or "spherical", or one of mclust's
        fourteen models "EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE",
        "EVE", "VVE", "EEV", "VEV", "EVV", "VVV" (volume, shape, orientation:
        Equal, Variable or Identity; see docs/mclust.md). scikit-learn's four are
        mclust's VVV, EEE, VVI and VII, and keep scikit-learn's array shapes; an
        mclust model holds ``covariances_`` as (n_components, n_features,
        n_features) and runs mclust's M-step (with ``reg_covar=0`` exactly).
    tol : float or None, default=1e-3
        Convergence threshold, in nats per row, of the stopping rule in force
        (``stopping``). For plain EM it is scikit-learn's: stop when the lower
        bound changes by less than ``tol`` in an iteration. Aitken's rule has
        a default of its own, ``1 / n_samples`` clipped to [1e-6, 1e-3] (a
        remaining gain of about one nat in all;
        :func:`dask_em.accelerate.default_tol`), kept in the rule rather than
        in ``tol`` so that ``get_params()`` equals scikit-learn's: when
        ``stopping="auto"`` picks Aitken's rule (``accelerate="squarem"``), it
        stops at ``min(tol, 1 / n_samples)``, which for the default ``tol`` is
        the rule's own default. An explicit ``stopping="aitken"`` takes
        ``tol`` as given; None asks for each rule's default.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance (scikit-learn's ridge). Not
        used with a ``prior``, which regularises instead (leave it at its
        default or 0 then).
    max_iter : int, default=100
        EM iterations per restart. 0 returns the starting parameters
        (``n_iter_=0``, ``lower_bound_=-inf``, no convergence warning), as
        scikit-learn does.
    n_init : int, default=1
        Restarts; they run side by side, sharing every chunk read, and the one
        with the highest final lower bound wins.
    init_params : {"kmeans", "k-means++", "random", "random_from_data", "hierarchical"}, default="kmeans"
        How each restart starts, computed on a uniform sample of rows.
        "hierarchical" is mclust's start: model-based agglomerative clustering
        (:mod:`dask_em.hierarchical`) of at most 2,000 of those rows.
    weights_init : array-like of shape (n_components,), optional
    means_init : array-like of shape (n_components, n_features), optional
    precisions_init : array-like, optional
        Shape (K, d, d) full, (d, d) tied, (K, d) diag, (K,) spherical.
    random_state : int, SeedSequence, Generator, RandomState or None
        Drives the sample, every start and :meth:`sample`. The first restart
        draws as scikit-learn's first initialisation does: from
        ``RandomState(random_state)`` for an int, from a ``RandomState``
        given (which the starts leave advanced, as scikit-learn's fit does).
        On a sample of every row (up to ``max(20_000, 1_000 * n_components)``
        rows by default) each later restart draws on from where the one
        before left the stream, as scikit-learn's initialisations, so the
        same ``random_state`` gives scikit-learn's starts and fit for any
        ``n_init``; on a sample of the rows each restart has its own stream
        (``SeedSequence.spawn``). None is numpy's global ``RandomState``, as
        in scikit-learn: ``np.random.seed`` sets it, and a fit draws from it.
    warm_start : bool, default=False
        As scikit-learn's: each :meth:`fit` of a fitted estimator (by
        :meth:`fit`, :meth:`partial_fit` or :func:`dask_em.load`) is one
        restart from its parameters (``n_init`` and the starts unused), the
        first iteration's change measured from the last ``lower_bound_``; a
        prior from the data's moments is recomputed from the new rows. Any
        input ``fit`` takes, e.g. a Zarr store that rows were appended to.
        The restart is reported as ``start="warm_start"`` in ``restarts_``.
    verbose : int, default=0
        0: silent. 1: a live progress bar per restart (a widget in Jupyter,
        a text bar on a terminal) with iteration, lower bound and its change.
        2: also an INFO line on the ``dask_em`` logger every
        ``verbose_interval`` iterations of each restart, and at its last.
        (scikit-learn prints; dask-em draws bars and logs.)
    verbose_interval : int, default=10
        Iterations between the INFO lines of ``verbose=2``.
    init_sample_size : int, optional
        Rows sampled for the starts; default ``max(20_000, 1_000 K)`` capped by
        n_samples.
    split_every : int, optional
        Fan-in of the tree reduction of the statistics (dask's default if None).
    init_strategy : {"single", "emEM"}, default="single"
        "single": ``n_init`` restarts from ``init_params`` starts, each run to
        convergence, as scikit-learn. "emEM" (small-EM, Biernacki, Celeux &
        Govaert 2003): ``n_short`` starts of mixed kinds (mclust's hierarchical
        tree, k-means++ seeds, random rows, k-means and trees on different
        half-samples) run ``short_iter`` iterations side by side, sharing every
        read; the tree's restarts and the best ``n_init`` of the others continue
        to convergence, and a continuing restart that cannot catch up is pruned
        (``prune_margin``; never the tree's). Histories record both phases.
    n_short : int, default=20
        Starts of emEM's short phase. On a start sample of more than 2,000
        rows (more than one tree clusters), ``starts.TREE_DRAWS - 1`` more
        tree starts, each on its own 2,000-row draw, join them.
    short_iter : int, default=10
        Iterations of emEM's short phase.
    prune_margin : float or None, default=0.01
        emEM's long phase stops a restart when its bound plus the rest of its
        geometric trend (its last change times rho / (1 - rho), rho the ratio
        of its last two changes) stays more than this many nats per row below
        the best bound. None never prunes.
    accelerate : {None, "squarem"}, default=None
        None: plain EM. "squarem": SQUAREM (Varadhan & Roland 2008, SqS3 step)
        extrapolating the expected sufficient statistics, with fallback to the
        plain EM step when the extrapolated point is invalid or lowers the
        bound; the same fixed point in fewer passes (each pass counts in
        ``n_iter_``). See :mod:`dask_em.accelerate`.
    stopping : {"auto", "change", "aitken"}, default="auto"
        "change": stop when the bound changes by less than ``tol`` per row
        (scikit-learn's rule). "aitken": stop when Aitken's estimate of the
        bound's remaining gain per row is below ``tol`` for three consecutive
        estimates (two cycles when accelerated): distance to the optimum, not
        the last step. "auto": "change" for plain EM (so that
        ``GaussianMixture()`` equals scikit-learn's), "aitken" with
        ``accelerate``; the discrete families' "auto" is always "aitken".
    stepwise_passes : int, default=0
        Passes of stepwise (online) EM before batch EM (Cappé & Moulines
        2009): the chunks in a random order, in mini-batches of about an
        eighth of them, the statistics updated as ``s <- (1 - g) s + g
        s_batch`` with ``g = (t + 2) ** -0.6`` and an M-step after each
        mini-batch. Batch EM (``accelerate``) then runs to convergence, so the
        answer is an EM fixed point. Each stepwise pass counts in ``n_iter_``.
        See :mod:`dask_em.stepwise`.
    prior : None, "default" or dict, default=None
        None: maximum likelihood, as scikit-learn. "default": mclust's
        conjugate prior (``priorControl()``, Fraley & Raftery 2007) with its
        ``defaultPrior`` hyperparameters from the moments of all rows
        (computed in the start's compute, sharing its reads): EM then
        maximises the posterior (MAP), its bound ``lower_bound_`` is the
        penalized one (mean log-likelihood plus the log prior per row) and
        never falls, and a component that empties keeps a proper covariance.
        A dict sets some of ``shrinkage``, ``mean``, ``dof``, ``scale`` (the
        others from ``defaultPrior``); see :mod:`dask_em.prior`. ``bic`` is
        mclust's: the log-likelihood at the MAP estimate, prior not added.
        Defined for scikit-learn's four types and for mclust's EII, VII, EEI,
        VEI, EVI, VVI, EEE, EEV, VEV and VVV, whose steps follow mclust's
        ``me`` (mclust has no prior for VEE, EVE, VVE, EVV; refused). For
        EEI, mclust's step is not a maximiser, so its bound may fall.
    compute_dtype : {"float64", "float32"}, default="float64"
        Precision of the E-step's log-densities and matrix products.
        "float64" matches scikit-learn to round-off. "float32" is faster
        (about twice the BLAS rate, half the memory traffic) and still sums
        the statistics in float64 per tile and runs the M-step in float64.
        Its fixed point is within 1e-4 (relative) of float64's; inference
        stays float64. Its bound is exact to about ``4 * 1.2e-7`` of the
        terms summed (``max(|lower bound|, n_features)``): changes within
        that are round-off, never reported as a falling bound. A ``tol``
        below that resolution cannot be met on float32's bounds, so once a
        restart's change has stayed within it for three iterations, its
        further iterations compute in float64 and stop by ``tol`` as a
        float64 fit does (``restarts_[i]["float64_from"]`` names the first;
        at the default ``tol=1e-3`` that needs a bound of magnitude above
        about 2,000 per row). ``tol=0`` keeps every iteration in float32.
    missing : {"error", "marginalize"}, default="error"
        "error" refuses NaN, naming its row, as scikit-learn does.
        "marginalize" fits by EM under missing at random: an incomplete row
        contributes through the marginal density of its observed values, and
        its missing values through their conditional expectations.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
    covariances_, precisions_, precisions_cholesky_ : ndarray
        Shapes as in scikit-learn for the covariance type. float32 for
        float32 input (as are ``weights_``, ``means_`` and the bounds), as
        scikit-learn's; EM's statistics and parameters stay float64.
        For mclust's models: (n_components, n_features, n_features).
    scale_, shape_, orientation_ : ndarray
        mclust's models only: the volumes (n_components,), the shapes
        (n_components, n_features; determinant 1) and the orientations
        (n_components, n_features, n_features) of the covariances, as mclust's
        ``parameters$variance`` names them.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean per-row log-likelihood of the best restart at its last E-step
        (with a prior: plus the log prior divided by the rows).
    prior_ : dict
        With a prior: its hyperparameters (shrinkage, mean, dof, scale).
    lower_bounds_ : list of float
        The best restart's lower bound at every iteration.
    restarts_ : list of dict
        Every restart: seed (None for a start that drew on from the restart
        before it), lower_bound, n_iter, converged, status, error, history,
        dropped_components.
    n_components_ : int
        Components left after empty ones were dropped (usually n_components).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        The columns of a pandas DataFrame, or the feature coordinate of xarray
        input, when the data had them.

    Examples
    --------
    >>> import numpy as np
    >>> import dask.array as da
    >>> from dask_em import GaussianMixture
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(-3, 1, (500, 2)), rng.normal(3, 1, (500, 2))])
    >>> gm = GaussianMixture(n_components=2, random_state=0).fit(X)
    >>> np.sort(gm.means_[:, 0]).round(1)
    array([-3.1,  3. ])
    >>> gm.predict(da.from_array(X, chunks=250))   # lazy for lazy input
    dask.array<em-predict, shape=(1000,), dtype=int64, chunksize=(250,), chunktype=numpy.ndarray>
    """

    _parameter_constraints: dict = {
        **BaseMixture._parameter_constraints,
        "covariance_type": [StrOptions(ordered(GAUSSIAN_COVARIANCE_TYPES))],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "prior": [StrOptions({"default"}), dict, None],
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
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start: bool = False,
        verbose: int = 0,
        verbose_interval: int = 10,
        init_sample_size: int | None = None,
        split_every: int | None = None,
        init_strategy: str = "single",
        n_short: int = 20,
        short_iter: int = 10,
        prune_margin: float | None = 0.01,
        accelerate: str | None = None,
        stopping: str = "auto",
        stepwise_passes: int = 0,
        missing: str = "error",
        prior=None,
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
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.prior = prior
        self.compute_dtype = compute_dtype

    _plain_stopping = "change"  # scikit-learn's rule: GaussianMixture() equals scikit-learn's
    _input_dtype_attributes = (
        "weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_", "lower_bound_",
    )

    def _refresh_warm_params(self, params: dict, data_settings: dict, context) -> dict:
        """A prior from the moments of all rows is recomputed from the rows of this fit."""
        spec = prior_spec(self.prior)
        if spec is None or not needs_moments(spec):
            return params
        d = params["means"].shape[1]
        prior = resolve_prior(spec, self.covariance_type, self.n_components, d, data_settings["prior_moments"], context)
        return {**params, **prior}

    # As scikit-learn's inference reads them: a model built by setting these, or a fitted model whose
    # attributes were changed, predicts, scores, samples and warm-starts from them.
    _attribute_parameters = ("weights_", "means_", "covariances_", "precisions_cholesky_")

    def _adopt_attributes(self, edited: list[str]) -> None:
        fitted = hasattr(self, "_params")
        covariance_type = self._params["covariance_type"] if fitted else self.covariance_type
        if covariance_type not in GAUSSIAN_COVARIANCE_TYPES:
            raise fail("covariance_type", covariance_type, f"one of {GAUSSIAN_COVARIANCE_TYPES}")
        attributes = {name: getattr(self, name, None) for name in self._attribute_parameters}
        if fitted:  # what was not changed keeps its float64 value (a float32 attribute is a rounded copy)
            p = self._params
            kept = {"weights_": p["weights"], "means_": p["means"] + self._context, "covariances_": p["covariances"],
                    "precisions_cholesky_": p["precisions_cholesky"]}
            attributes.update({name: value for name, value in kept.items() if name not in edited})
            # One of the pair changed: the other follows from it, so that inference and sample agree.
            pair = {"covariances_", "precisions_cholesky_"}
            if len(pair & set(edited)) == 1:
                attributes[(pair - set(edited)).pop()] = None
        params, context = parameters_from_attributes(
            covariance_type, attributes, self._params if fitted else None, self._context if fitted else None
        )
        # The parameters last: another thread's inference that sees them finds the rest in place.
        if not fitted:
            self._family = self.make_family()
            self._transform = self._input_transform()
        self.n_components_ = len(params["weights"])
        if not hasattr(self, "n_features_in_"):
            self.n_features_in_ = params["means"].shape[1]
        self._context = context
        self._params = params

    def _n_parameters(self) -> int:
        """scikit-learn's private spelling of :meth:`n_parameters`, kept so code that calls it runs unchanged."""
        return self.n_parameters()

    def make_family(self) -> Family:
        spec = prior_spec(self.prior)
        dtype = compute_dtype_name(self.compute_dtype)
        if spec is None:
            return GaussianFamily(reg_covar=float(self.reg_covar), missing=self.missing, compute_dtype=dtype)
        return GaussianFamily(reg_covar=0.0, prior=spec, missing=self.missing, compute_dtype=dtype)

    def _check_family_params(self) -> None:
        if prior_spec(self.prior) is not None and self.covariance_type not in PRIOR_TYPES:
            raise ValueError(
                f"prior={self.prior!r} is defined for covariance_type in {PRIOR_TYPES} (mclust defines none "
                f"for VEE, EVE, VVE or EVV); received covariance_type={self.covariance_type!r}. Pick one of "
                "those models, or drop the prior."
            )
        if prior_spec(self.prior) is not None and self.reg_covar not in (0, _DEFAULT_REG_COVAR):
            raise ValueError(
                f"reg_covar={self.reg_covar!r} is not used with prior={self.prior!r}: the prior regularises "
                "the covariances instead (its scale), and adding a ridge would make EM non-monotone. Leave "
                "reg_covar at its default, or set the prior's 'scale' to regularise more."
            )

    def _start_settings(self, d: int) -> dict:
        w, m, p = check_initial_parameters(
            self.n_components, d, self.covariance_type, self.weights_init, self.means_init, self.precisions_init
        )
        spec = prior_spec(self.prior)
        if spec is not None:
            check_spec(spec, self.covariance_type, d)
        return {
            "n_components": self.n_components, "covariance_type": self.covariance_type,
            "weights_init": w, "means_init": m, "precisions_init": p,
        }

    def _start_plan(self, n: int, d: int, taken: dict | None = None) -> StartPlan:
        """The start, plus the data's moments for a data-dependent prior in the same compute."""
        plan = super()._start_plan(n, d, taken)
        spec = prior_spec(self.prior)
        if spec is not None and needs_moments(spec):
            ct = self.covariance_type
            # The whole covariance where the prior's scale is a matrix, else the variances.
            moments_of = "full" if ct in MATRIX_SCALE_TYPES else "diag"
            plan.data_settings = lambda X, w: {"prior_moments": data_moments_graph(X, w, moments_of)}
        return plan

    def _variant(self) -> str | None:
        return self.covariance_type

    def _describe(self) -> str:
        prior = "" if self.prior is None else ", conjugate prior"
        return f"{self.covariance_type} covariance{prior}"

    def expected_shapes(self, k: int, d: int, values: dict) -> dict:
        if values.get("covariance_type") != self.covariance_type:
            raise ValueError(
                f"covariance_type {values.get('covariance_type')!r} of the parameters differs from "
                f"the estimator's {self.covariance_type!r}"
            )
        cov = LAYOUTS[self.covariance_type].shape(k, d)
        return {"means": (k, d), "covariances": cov, "precisions_cholesky": cov}
