"""The estimator layer's base: what every dask-em mixture shares, and the one fit path.

``BaseMixture`` is scikit-learn's face (parameters, validation of settings,
fitted attributes; inference and reprs come from :class:`dask_em._fitted.FittedMixture`). Every fit, of one estimator or of a
whole model-selection grid, goes through :func:`fit_models`::

    X --io.as_dask_array--> row-chunked dask array (+ weights, fingerprint)
      --starts.StartPlan--> every restart's start, one compute (or a checkpoint's restarts)
      --restarts.run_schedule--> rounds of engine.round_graph until every restart stops
      --> each estimator keeps its best restart's parameters

A subclass names its family (:meth:`BaseMixture.make_family`) and, if the family
needs them, the settings its start takes (``_start_settings``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn import get_config
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import _check_feature_names

from . import checkpoint as ckpt
from ._namespace import device, like, namespace
from ._validation import check_constraints, invalid, is_real, ordered
from .accelerate import ACCELERATIONS, STOPPING_RULES, default_tol
from . import stepwise
from ._fitted import FittedMixture, _names_frame
from .engine import RoundState, StepResult, compute_round, local_rows, round_graph, runs_directly
from .family import MISSING_MODES, Family
from .io import Prepared, as_dask_array, fingerprint, prepare_weights, split_rows
from .restarts import STOP_REQUESTED, Restart, RestartsFailed, Schedule, restarts_from, run_schedule, score_restarts
from .runner import Runner
from .starts import INIT_METHODS, StartPlan, default_sample_size, emem_methods, settle_stream

logger = logging.getLogger("dask_em")


class BaseMixture(FittedMixture, DensityMixin, BaseEstimator):
    """What every dask-em mixture shares: restarts of EM on one family, out-of-core.

    Parameters common to every subclass are documented on
    :class:`~dask_em.GaussianMixture`.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        tol: float | None = None,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
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
    ):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose_interval = verbose_interval
        self.init_sample_size = init_sample_size
        self.split_every = split_every
        self.init_strategy = init_strategy
        self.n_short = n_short
        self.short_iter = short_iter
        self.prune_margin = prune_margin
        self.accelerate = accelerate
        self.stopping = stopping
        self.stepwise_passes = stepwise_passes
        self.verbose = verbose
        self.missing = missing

    # The stopping rule of stopping="auto" for plain EM: Aitken's remaining-gain
    # estimate; GaussianMixture keeps scikit-learn's rule (equality with it is its contract).
    _plain_stopping = "aitken"

    # -- what a subclass fills in ---------------------------------------------

    def make_family(self) -> Family:
        """The family object this estimator's settings describe (no data read).

        Returns
        -------
        Family
        """
        raise NotImplementedError

    def _check_family_params(self) -> None:
        """Check the subclass's own constructor parameters (no data read)."""

    def _start_settings(self, d: int) -> dict:
        """What the family's ``init_params`` receives besides the sample."""
        return {"n_components": self.n_components}

    def _variant(self) -> str | None:
        return None

    def _describe(self) -> str:
        return f"{self.make_family().name} components"

    def expected_shapes(self, k: int, d: int, values: dict) -> dict:
        """Shapes of the internal parameter arrays a fitted model holds (besides weights).

        Parameters
        ----------
        k : int
            Number of components.
        d : int
            Number of features.
        values : dict
            The parameter arrays, by name (some shapes depend on settings stored beside them).

        Returns
        -------
        dict
            Expected shape of each parameter array, by name.
        """
        return {}

    # Fitted attributes that follow the input's float dtype, as scikit-learn's do (float32 in,
    # float32 out); the statistics and the internal parameters stay float64.
    _input_dtype_attributes: tuple[str, ...] = ()

    def _refresh_warm_params(self, params: dict, data_settings: dict, context: Any) -> dict:
        """A warm start's parameters with whatever the new data decide (a data-dependent prior)."""
        return params

    def _input_transform(self):
        """A function of one row block applied to the data before the family sees it, or None.

        Fixed at fit (``set_params`` after fit changes nothing until the next fit).
        """
        return None

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False  # a fixed random_state gives the same fit, bit for bit
        return tags

    # -- settings -------------------------------------------------------------

    # scikit-learn's parameter constraints (``sklearn.utils._param_validation``), as its estimators
    # declare them: its own checks read them, and a refused setting raises its InvalidParameterError.
    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0.0, None, closed="left"), None],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions(ordered(INIT_METHODS))],
        # scikit-learn's kinds, numpy's newer two, and ints past 2**32 (a SeedSequence takes them).
        "random_state": [
            Interval(Integral, 0, None, closed="left"), np.random.RandomState, np.random.SeedSequence,
            np.random.Generator, None,
        ],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "init_sample_size": [Interval(Integral, 1, None, closed="left"), None],
        "split_every": [Interval(Integral, 2, None, closed="left"), None],
        "init_strategy": [StrOptions(ordered(("single", "emEM")))],
        "n_short": [Interval(Integral, 1, None, closed="left")],
        "short_iter": [Interval(Integral, 1, None, closed="left")],
        "prune_margin": [Interval(Real, 0.0, None, closed="left"), None],
        "accelerate": [StrOptions(ordered(a for a in ACCELERATIONS if a is not None)), None],
        "stopping": [StrOptions(ordered(("auto", *STOPPING_RULES)))],
        "stepwise_passes": [Interval(Integral, 0, None, closed="left")],
        "missing": [StrOptions(ordered(MISSING_MODES))],
    }

    def check_params(self) -> None:
        """Refuse settings out of range, naming what was received and what is allowed (no data read).

        Raises scikit-learn's ``InvalidParameterError`` (a ``ValueError``) in its words where
        ``_parameter_constraints`` decides, and a ``ValueError`` naming the conflict where two
        settings do not go together.
        """
        owner = type(self).__name__
        check_constraints(owner, self._parameter_constraints, self.get_params(deep=False))
        self._check_family_params()
        if self.init_strategy == "emEM" and self.init_params != "kmeans":
            raise ValueError(
                f"init_params={self.init_params!r} applies to init_strategy='single'; emEM mixes "
                "the hierarchical tree, k-means++, random-row, half-sample k-means and half-sample tree "
                "starts. Leave init_params at its default."
            )
        if self.stepwise_passes and not self.stepwise_passes < self.max_iter:
            raise invalid(owner, "stepwise_passes", self.stepwise_passes, f"0 or below max_iter={self.max_iter}")
        self.make_family()  # a family that cannot marginalise is refused here, with the reason

    def _start_plan(self, n: int, d: int, taken: dict | None = None) -> StartPlan:
        """The plan of this model's starts; ``taken``: the fit's takes of its RandomStates (``StartPlan.make``)."""
        emem = self.init_strategy == "emEM"
        n_starts = max(self.n_short, self.n_init) if emem else self.n_init
        if emem:  # more tree draws join the n_short starts on a sample larger than one tree clusters
            methods = emem_methods(n_starts, min(n, self.init_sample_size or default_sample_size(n, self.n_components)))
            n_starts = len(methods)
        else:
            methods = self.init_params
        return StartPlan.make(
            self.make_family(), self._start_settings(d), n_samples=n, n_starts=n_starts, methods=methods,
            random_state=self.random_state, sample_size=self.init_sample_size, variant=self._variant(), chain=not emem,
            taken=taken,
        )

    def _schedule(self, n_samples: int) -> Schedule:
        return Schedule(
            tol=self.tol_in_force(n_samples), max_iter=self.max_iter, n_init=self.n_init, init_strategy=self.init_strategy,
            short_iter=self.short_iter, prune_margin=self.prune_margin, accelerate=self.accelerate,
            stopping=self.stopping_rule(), stepwise_passes=self.stepwise_passes,
        )

    def stopping_rule(self) -> str:
        """The stopping rule in force: ``stopping``, or for "auto" Aitken's, except plain Gaussian EM's.

        Returns
        -------
        str
            ``"change"`` or ``"aitken"``.
        """
        if self.stopping != "auto":
            return self.stopping
        return "aitken" if self.accelerate is not None else self._plain_stopping

    def tol_in_force(self, n_samples: int) -> float:
        """The threshold of the stopping rule in force on ``n_samples`` rows.

        ``tol=None``: the rule's default (:func:`dask_em.accelerate.default_tol`).
        Otherwise ``tol``, except that Aitken's rule picked by ``stopping="auto"``
        stops at ``min(tol, default_tol("aitken", n_samples))``: it never stops
        while the estimated remaining gain exceeds about one nat in all, so
        scikit-learn's ``tol=1e-3`` leaves an accelerated fit where ``tol=None``
        did. An explicit ``stopping`` uses ``tol`` as given.

        Parameters
        ----------
        n_samples : int
            Rows of the data the fit reads.

        Returns
        -------
        float
            The threshold the stopping rule compares with.
        """
        rule = self.stopping_rule()
        if self.tol is None:
            return default_tol(rule, n_samples)
        if rule == "aitken" and self.stopping == "auto":
            return min(float(self.tol), default_tol(rule, n_samples))
        return float(self.tol)

    # -- fit ------------------------------------------------------------------

    def _warm_restart(self, d: int) -> Restart | None:
        """The one restart of a warm start (the last fit's parameters), or None when fit starts afresh.

        As scikit-learn's: ``warm_start=True`` on a fitted estimator (fitted by
        :meth:`fit`, :meth:`partial_fit`, or loaded from a model store) skips the
        starts and ``n_init``, and the first iteration's change is measured from
        the last fit's ``lower_bound_``.
        """
        if not self.warm_start or not hasattr(self, "converged_") or not hasattr(self, "weights_"):
            return None  # as scikit-learn's: warm only after a fit (or with converged_ set by hand)
        self.fitted_state()  # attributes set or changed by hand are where it continues from
        if d != self.n_features_in_:
            raise ValueError(
                f"warm_start=True continues the last fit, which had {self.n_features_in_} features; X has {d}. "
                "Pass the columns of the last fit, or set warm_start=False to start afresh."
            )
        restarts, index = getattr(self, "restarts_", []), getattr(self, "best_restart_", -1)
        best = restarts[index] if 0 <= index < len(restarts) else {}
        wanted = self._settings_shape()
        fitted = getattr(self, "_fitted_with", wanted)  # a model pickled by an older dask-em has none
        if fitted != wanted:
            raise ValueError(
                f"warm_start=True continues the last fit (n_components, variant, family) = {fitted}, but the "
                f"estimator now asks for {wanted}. Set warm_start=False to start afresh with the new settings."
            )
        # The seed orders stepwise EM's batches only; a chained best restart has none: its chain's first seed.
        seed = best.get("seed", None)
        seed = seed if seed is not None else (restarts[0].get("seed") if restarts else None)
        restart = Restart(0, int(seed or 0), dict(self._params), self._variant(), start="warm_start")
        # float64 even for float32 input; a store keeps -inf (no iteration yet) as null
        bound = best.get("lower_bound", getattr(self, "lower_bound_", -np.inf))
        restart.entry_bound = -np.inf if bound is None else float(bound)
        return restart

    def _settings_shape(self) -> tuple:
        """What a warm start needs unchanged: (n_components, variant, family name)."""
        return (self.n_components, self._variant(), self.make_family().name)

    def fit(
        self,
        X,
        y=None,
        *,
        sample_weight=None,
        variable=None,
        storage_options=None,
        chunk_rows=None,
        checkpoint: str | None = None,
        resume: bool = False,
        checkpoint_options: dict | None = None,
        callback=None,
        read_retries: int = 3,
        reconnect_timeout: float | None = None,
        device: str | None = None,
    ):
        """Fit the mixture by EM, reading ``X`` one row chunk at a time.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), zarr.Array, or str
            numpy, dask, xarray (DataArray or Dataset with ``variable``),
            ``zarr.Array``, or a Zarr path/URL.
        y : ignored
            Not used, present for scikit-learn's API.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative row weights, numpy or dask chunked like ``X``.
        variable : str, optional
            Variable of a Zarr group or Dataset.
        storage_options : dict, optional
            fsspec options for remote stores (credentials, endpoint).
        chunk_rows : int, optional
            Rows per chunk where dask-em chooses the chunking.
        checkpoint : str, optional
            Path or fsspec URL of a checkpoint file, replaced atomically after
            the start and after every M-step with the whole fitting state.
        resume : bool, default=False
            Continue from ``checkpoint`` when it exists (and start afresh when
            it does not). A checkpoint of other data or settings is refused.
        checkpoint_options : dict, optional
            fsspec options for a remote checkpoint.
        callback : callable, optional
            Called after every iteration of every restart with a dict
            (restart, iteration, lower_bound, change, converged).
        read_retries : int, default=3
            Attempts beyond the first for a Zarr chunk read that fails.
        reconnect_timeout : float, optional
            On a distributed scheduler: seconds to wait, when the connection to
            the scheduler is lost, for a scheduler to answer at the same address
            (and, when every worker is gone, for a worker to join). The
            interrupted iteration then runs again from the last completed one,
            held in memory, and the fit ends as an uninterrupted one would,
            bitwise. A Client that dask-em made itself (from
            ``DASK_SCHEDULER_ADDRESS`` or the scheduler-address config) is
            replaced by a new one at the same address; a Client you made is
            waited for while it reconnects by itself (its own ``timeout``).
            Past the bound :class:`dask_em.ClusterLost` is raised, the
            checkpoint holding the last completed iteration. None (default):
            no waiting; a lost connection raises as ``distributed`` does.
            In-memory data is then not kept on the workers but sent with each
            iteration's graph.
        device : {None, "cuda", "cpu"}, default=None
            Where the E-steps run. None: where each chunk lives (numpy on the
            CPU; CuPy, PyTorch or any array-API library's arrays on their
            device). "cuda": each chunk is copied to the GPU as it is read
            (CuPy) and its E-step runs there. "cpu": each chunk is copied to
            host memory. Only the reduced statistics leave the device.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        fit_models(
            [self], X, sample_weight=sample_weight, variable=variable, storage_options=storage_options,
            chunk_rows=chunk_rows, checkpoint=checkpoint, resume=resume, checkpoint_options=checkpoint_options,
            callback=callback, read_retries=read_retries, reconnect_timeout=reconnect_timeout, device=device,
        )
        return self

    def partial_fit(self, X, y=None, *, sample_weight=None, chunk_rows=None):
        """One stepwise EM update with the rows of ``X`` (a mini-batch of a stream).

        Semantics (Cappé & Moulines 2009, :mod:`dask_em.stepwise`): the
        estimator keeps, per restart, a running estimate ``s`` of the sufficient
        statistics of a batch. A call reads ``X`` once, computes its statistics
        under the current parameters, sets ``s <- (1 - g_t) s + g_t s_X`` with
        ``g_t = (t + 2) ** -0.6`` (``g = 1`` on the first call: ``s = s_X``)
        and takes one M-step. ``s`` holds sums over a batch, so batches of
        about the same size keep the recursion's meaning. The first call on an
        unfitted estimator draws its starts from ``X`` (``n_init``,
        ``init_params``, ``random_state``); the first call after :meth:`fit`
        continues from the fitted parameters; :meth:`fit` starts afresh and
        forgets the stream. ``lower_bound_`` is the mean log-likelihood of the
        latest batch under the parameters it was read with; ``n_iter_`` counts
        calls; ``converged_`` is False (a stream has no end). Repeated calls
        are a stream's warm start; ``warm_start=True`` is :meth:`fit`'s (one
        batch EM restart from the current parameters, which may be these).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            One mini-batch: numpy, dask, xarray or ``zarr.Array``.
        y : ignored
            Not used, present for scikit-learn's API.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative row weights.
        chunk_rows : int, optional
            Rows per chunk where dask-em chooses the chunking.

        Returns
        -------
        self : object
            The estimator, updated.
        """
        self.check_params()
        prep = as_dask_array(X, chunk_rows=chunk_rows)
        data = prep.data
        n, d = data.shape
        stream = getattr(self, "_stream", None)
        if hasattr(self, "weights_") and self._edited_attributes():
            self.fitted_state()  # attributes set or changed by hand: the stream goes on from them
            stream = self._stream = None
        going_on = stream is not None or hasattr(self, "_params")
        if going_on:  # scikit-learn's checks of a later batch: its names, then its width; the first batch's names stay
            _check_feature_names(self, _names_frame(prep.feature_names), reset=False)
            prep = dataclasses.replace(prep, feature_names=getattr(self, "feature_names_in_", None))
        if going_on and d != self.n_features_in_:
            raise ValueError(
                f"X has {d} features, but {type(self).__name__} is expecting {self.n_features_in_} features "
                "as input; pass batches with the columns of the first one (or call fit to start afresh)."
            )
        family = stream["family"] if stream else self.make_family()
        family.check_dtype(data.dtype, d)
        transform = stream["transform"] if stream else self._input_transform()
        if transform is not None:
            data = data.map_blocks(transform, dtype=bool)
        w = prepare_weights(sample_weight, data)
        with Runner() as runner:
            if stream is not None:
                context, restarts = stream["context"], stream["restarts"]
            elif hasattr(self, "_params"):  # after fit: one restart from the fitted parameters
                context = self._context
                restarts = [Restart(0, 0, dict(self._params), self._variant(), start="fit")]
            else:
                if n < self.n_components:
                    raise ValueError(
                        f"Expected n_samples >= n_components, but the first batch has {n} row{'s' * (n != 1)} and "
                        f"n_components={self.n_components}; pass a larger first batch."
                    )
                context, (restarts,) = _start([self._start_plan(n, d)], data, w, family, runner)
            running = [r for r in restarts if r.error is None and r.params is not None]
            entering = [r.estep_params() for r in running]
            state = RoundState(family, context, entering, keep_stats=True)
            results = compute_round(
                runner, data, round_graph(data, w, state, split_every=self.split_every, salt=runner.salt())
            )
        for r, params, result in zip(running, entering, results):
            r.n_iter += 1
            r.history.append(result.lower_bound)
            if result.error is None and result.dropped:
                result.error = f"component(s) {result.dropped} received no mass from this batch"
            if result.error is None:
                new = stepwise.update(r.stepwise, result.record, params, family=family, scale=1.0)
                result = stepwise.m_step(new, family, n, result.wsum)
                r.stepwise = new
            if result.error is not None:
                r.error = f"partial_fit call {r.n_iter}: {result.error}"
                continue
            r.params = result.params
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self._keep_best(restarts, context, d, prep)
        self.converged_ = False
        self.restarts_ = [r.summary() for r in restarts]
        self._stream = {"family": family, "transform": transform, "context": context, "restarts": restarts}
        return self

    def fit_predict(self, X, y=None, *, sample_weight=None, variable=None, storage_options=None, chunk_rows=None,
                    device=None):
        """Fit, then return the labels of ``X`` (lazy for lazy input).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), zarr.Array, or str
            As in :meth:`fit`.
        y : ignored
            Not used, present for scikit-learn's API.
        sample_weight : array-like of shape (n_samples,), optional
            Non-negative row weights.
        variable : str, optional
            Variable of a Zarr group or Dataset.
        storage_options : dict, optional
            fsspec options for remote stores.
        chunk_rows : int, optional
            Rows per chunk where dask-em chooses the chunking.
        device : {None, "cuda", "cpu"}, default=None
            Where the E-steps run, as in :meth:`fit`.

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples,)
        """
        self.fit(X, sample_weight=sample_weight, variable=variable, storage_options=storage_options, chunk_rows=chunk_rows,
                 device=device)
        return self.predict(X, variable=variable, storage_options=storage_options, chunk_rows=chunk_rows, device=device)

    def _keep_best(self, restarts: list[Restart], context: Any, d: int, prep: Prepared) -> Restart:
        """Set the fitted attributes from the best healthy restart (warning about the others)."""
        ok = [r for r in restarts if r.error is None and r.params is not None]
        if not ok:
            reasons = "; ".join(f"restart {r.index}: {r.error}" for r in restarts)
            summary = self.make_family().failure_summary([r.error or "" for r in restarts])
            raise RestartsFailed(f"{summary + ' ' if summary else ''}Every restart failed numerically ({reasons}).")
        for r in restarts:
            if r.error is not None:
                warnings.warn(f"restart {r.index} failed and was skipped: {r.error}", RuntimeWarning, stacklevel=4)
        best = max(ok, key=lambda r: r.lower_bound)
        self._params = {k: v for k, v in best.params.items() if k not in ("dropped", "error")}
        self._context = context
        self._family = self.make_family()  # the fit's family: a later set_params does not change it
        self._transform = self._input_transform()
        self._public_dtype = np.dtype(np.float32) if prep.data.dtype == np.float32 else None
        self._public_like = _attributes_like(prep)
        self._set_public()
        self.converged_ = best.converged
        self.n_iter_ = best.n_iter
        self.lower_bound_ = np.float64(best.lower_bound)  # numpy's float, as scikit-learn's
        self.lower_bounds_ = [np.float64(b) for b in best.history]
        self._cast_bounds()
        self.restarts_ = [r.summary() for r in restarts]
        self.best_restart_ = best.index
        self.n_components_ = len(self._params["weights"])
        self.n_features_in_ = d
        if prep.feature_names is not None:
            self.feature_names_in_ = prep.feature_names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        if best.dropped:
            warnings.warn(
                f"{len(best.dropped)} component(s) lost all their mass and were dropped "
                f"(iteration, index): {best.dropped}; the model has {self.n_components_} of "
                f"{self.n_components} components. Lower n_components or change the start.",
                UserWarning,
                stacklevel=4,
            )
        if not self.converged_ and self.max_iter > 0:  # max_iter=0 asks for the start, as scikit-learn
            last = abs(best.history[-1] - best.history[-2]) if len(best.history) > 1 else float("nan")
            warnings.warn(
                "Best performing initialization did not converge. Try different init parameters, or increase "
                f"max_iter, tol, or check for degenerate data. It stopped at max_iter={self.max_iter} iterations "
                f"with a last change of the lower bound of {last:.3g} >= tol={self.tol_in_force(prep.data.shape[0]):.3g}.",
                ConvergenceWarning,
                stacklevel=4,
            )
        return best

    # -- the fitted state -------------------------------------------------------

    def _cast_bounds(self) -> None:
        """``lower_bound_`` and ``lower_bounds_`` in the input's float32, where scikit-learn's are."""
        dtype = getattr(self, "_public_dtype", None)
        if dtype is not None and "lower_bound_" in self._input_dtype_attributes:
            self.lower_bound_ = dtype.type(self.lower_bound_)
            self.lower_bounds_ = [dtype.type(b) for b in self.lower_bounds_]

    def _set_public(self) -> None:
        """The fitted attributes (``weights_`` and the family's) from the internal parameters.

        With float32 input (``_public_dtype``) the attributes scikit-learn keeps in
        float32 (``_input_dtype_attributes``) are float32 copies; inference
        reads the float64 internal parameters.
        """
        self._fitted_with = self._settings_shape()  # what this fitted state was made under (warm_start)
        public = {"weights_": self._params["weights"], **self._family.to_public(self._params, self._context)}
        dtype = getattr(self, "_public_dtype", None)
        on = getattr(self, "_public_like", None)
        for name, value in public.items():
            if dtype is not None and name in self._input_dtype_attributes:
                value = value.astype(dtype) if isinstance(value, np.ndarray) else dtype.type(value)
            if on is not None:
                value = _public_like(value, on)
            setattr(self, name, value)
        self._published = self._snapshot(self._attribute_parameters or list(public))


def _public_like(value, on):
    """A fitted attribute in the namespace and on the device of ``on``: arrays, and the arrays of a tuple or
    list (``weight_concentration_``, a categorical mixture's ``probabilities_``); anything else as it is."""
    if isinstance(value, np.ndarray):
        return like(value, on)
    if isinstance(value, (tuple, list)) and any(isinstance(v, np.ndarray) for v in value):
        return type(value)(_public_like(v, on) for v in value)
    return value


def _attributes_like(prep: Prepared):
    """An empty array in the namespace and on the device the fitted attributes go to (None: numpy).

    As scikit-learn's convention: in-memory data of another array-API library
    (CuPy, PyTorch, ...) under ``sklearn.config_context(array_api_dispatch=True)``
    gets its fitted attributes in that library, on the data's device.
    """
    if prep.foreign is None or not get_config().get("array_api_dispatch", False):
        return None
    xp = namespace(prep.foreign)
    return xp.empty((0,), dtype=xp.float64, device=device(prep.foreign))


# ---------------------------------------------------------------------------
# The one fit path
# ---------------------------------------------------------------------------


def fit_models(
    models: list[BaseMixture],
    X,
    *,
    sample_weight=None,
    variable=None,
    storage_options=None,
    chunk_rows=None,
    checkpoint: str | None = None,
    resume: bool = False,
    checkpoint_options: dict | None = None,
    callback=None,
    on_model_done=None,
    read_retries: int = 3,
    score: bool = False,
    reconnect_timeout: float | None = None,
    device: str | None = None,
) -> list[StepResult | None]:
    """Fit several estimators of one family on ``X`` side by side, sharing every read.

    Every model keeps its own seeds and starts, so each ends exactly as it
    would alone. The models share the settings that shape the rounds (tol,
    max_iter, init_strategy, split_every, verbose; the first model's are used),
    as a model-selection grid does. With ``score``, one last pass gives each
    model's log-likelihood and classification entropy (for ICL); its result
    is returned per model (None for a model whose every restart failed, which
    then stays unfitted). A checkpoint is supported for a single model.
    ``reconnect_timeout``, ``device``: see :meth:`BaseMixture.fit`.
    ``on_model_done(i, restarts)``: called once for each model, with its
    index in ``models`` and its restarts, as soon as none of them iterates
    any more (converged, failed, stopped or at ``max_iter``), while the
    others go on; a model whose every restart failed at its start, after
    the passes.
    """
    if reconnect_timeout is not None and not (is_real(reconnect_timeout) and reconnect_timeout >= 0):
        raise ValueError(
            f"reconnect_timeout must be a number of seconds >= 0 or None; received {reconnect_timeout!r}."
        )
    for model in models:
        model.check_params()
    lead = models[0]
    if checkpoint is not None and len(models) != 1:
        raise ValueError(f"a checkpoint holds one model's fit; received {len(models)} models.")
    prep = as_dask_array(
        X, variable=variable, storage_options=storage_options, chunk_rows=chunk_rows, read_retries=read_retries,
        device=device,
    )
    data = prep.data
    n, d = data.shape
    k_max = max(model.n_components for model in models)
    if n < 2:  # scikit-learn's mixtures fit two rows at least, whatever n_components
        raise ValueError(
            f"Found array with {n} sample(s) (shape={(n, d)}) while a minimum of 2 is required by "
            f"{type(lead).__name__}; pass at least two rows."
        )
    if n < k_max:
        raise ValueError(
            f"Expected n_samples >= n_components, but X has {n} row{'s' * (n != 1)} and n_components={k_max}; lower n_components "
            "or pass more rows."
        )
    family = lead.make_family()  # one for every model: the Gaussian covariance type travels in params
    family.check_dtype(data.dtype, d)
    transform = lead._input_transform()
    if transform is not None:
        data = data.map_blocks(transform, dtype=bool)
    for model in models:  # the starts' settings refused here, before any work; their plans are made below
        model._start_settings(d)
    warm = lead._warm_restart(d) if len(models) == 1 else None  # a grid's candidates start afresh
    w = prepare_weights(sample_weight, data)
    schedule = lead._schedule(n)
    fp = fingerprint(prep, X)

    saved = None
    if checkpoint is not None and resume:
        saved = ckpt.read(checkpoint, checkpoint_options)
        if saved is not None:
            ckpt.check_compatible(checkpoint, saved[0], fp, lead.get_params())

    def save(restarts: list[Restart]) -> None:
        if checkpoint is not None:
            ckpt.write(checkpoint, *ckpt.state(restarts, context, fp, lead.get_params()), checkpoint_options)

    data, w = split_rows(data, w)  # after the fingerprint: a checkpoint names the chunking as given
    with Runner(reconnect_timeout, stop=STOP_REQUESTED) as runner:
        if not prep.lazy:
            data = runner.persist_in_memory(data)
            w = runner.persist_in_memory(w) if w is not None else None
        # In-memory data on local threads: rounds run directly on the blocks, without a graph.
        rows, row_w = data, w
        if runs_directly(data, not prep.lazy, runner):
            rows, row_w = local_rows(data), (local_rows(w) if w is not None else None)
        plans = _plans(models, n, d)  # here a RandomState is taken: from here to the starts nothing is refused
        logger.info(
            "fitting %d x %d in %d chunk%s on %s: %s, %d restart(s)",
            n, d, data.numblocks[0], "" if data.numblocks[0] == 1 else "s", runner.description,
            ", ".join(f"K={m.n_components} {m._describe()}" for m in models), sum(len(p.seeds) for p in plans),
        )
        if saved is not None or warm is not None:  # no start drawn: a RandomState is left as the plan found it
            for plan in plans:
                plan.give_back()
        if saved is not None:
            context, restarts = ckpt.restore(*saved)
            groups = [restarts]
            logger.info("resuming from %s at iteration %d", checkpoint, max(r.n_iter for r in restarts))
        elif warm is not None:
            context, groups = lead._context, [[_warm_start(lead, warm, plans[0], data, w, runner)]]
            logger.info("warm start from the last fit's parameters")
            save(groups[0])
        else:
            with _grid_starts(len(models) > 1):
                context, groups = _start(plans, data, w, family, runner)
            save([r for group in groups for r in group])

        bars = None
        if lead.verbose and len(models) == 1:
            from .progress import FitProgress

            bars = FitProgress(len(groups[0]), lead.max_iter)
            for r in groups[0]:  # a resumed fit starts its bars where it left off
                if r.n_iter:
                    bars.update(r.event())

        owner = {id(r): i for i, group in enumerate(groups) for r in group}
        done: set[int] = set()

        def report_done(i: int) -> None:
            if on_model_done is not None and i not in done and not any(
                r.running and r.n_iter < lead.max_iter for r in groups[i]
            ):
                done.add(i)
                on_model_done(i, groups[i])

        def on_iteration(r: Restart) -> None:
            if bars is not None:
                bars.update(r.event())
            if lead.verbose >= 2 and (
                r.n_iter % lead.verbose_interval == 0 or not r.running or r.n_iter >= lead.max_iter
            ):
                _log_iteration(r)
            if callback is not None:
                callback(r.event())
            report_done(owner[id(r)])

        with contextlib.ExitStack() as stack:
            if bars is not None:
                stack.callback(bars.close)
            rounds = run_schedule(
                rows, row_w, groups, schedule, family=family, context=context, split_every=lead.split_every,
                runner=runner, on_iteration=on_iteration, save=save if checkpoint is not None else None,
            )
        for i in range(len(groups)):  # those that never iterated (every start failed)
            report_done(i)
        best = []
        for model, group in zip(models, groups):
            try:
                if len(models) == 1:
                    best.append(model._keep_best(group, context, d, prep))
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # a grid summarises them in its table
                        best.append(model._keep_best(group, context, d, prep))
            except ValueError:
                if len(models) == 1:
                    raise
                best.append(None)  # every restart failed: the grid's table says so
                continue
            model.training_data_ = fp
            model._stream = None  # fit starts afresh: partial_fit's stream is forgotten
            # The start reads the data once (a warm start: once if the new data set a prior).
            started = saved is None and (warm is None or plans[0].data_settings is not None)
            model.n_passes_ = int(started) + rounds
        scores: list[StepResult | None] = [None] * len(models)
        if score:
            healthy = [r for r in best if r is not None]
            results = iter(
                score_restarts(rows, row_w, healthy, family=family, context=context, split_every=lead.split_every,
                               runner=runner) if healthy else []
            )
            scores = [next(results) if r is not None else None for r in best]
    return scores


@contextlib.contextmanager
def _grid_starts(grid: bool):
    """A grid's starts without k-means's "Number of distinct clusters" warnings (its table reports the
    candidates that lost components); a single fit shows them, as scikit-learn's does."""
    if not grid:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        yield


def _plans(models: list[BaseMixture], n: int, d: int) -> list[StartPlan]:
    """Every model's start plan, taking each RandomState once for them all (a grid's candidates start as each
    would alone); a plan refused gives back the streams the others took."""
    taken: dict = {}
    plans: list[StartPlan] = []
    try:
        for model in models:
            plans.append(model._start_plan(n, d, taken))
    except BaseException:
        for plan in plans:
            plan.give_back()
        raise
    return plans


def _start(plans: list[StartPlan], data, w, family: Family, runner: Runner):
    """Every model's restarts from its plan's starts, in one compute, under one context."""
    salt = runner.salt()  # one salt: models with the same sample share its reads
    try:
        starts = runner.compute([plan.graph(data, w, salt) for plan in plans])
    except BaseException:  # refused rows, a lost cluster: no start drawn, the RandomStates as they were found
        for plan in plans:
            plan.give_back()
        raise
    context = starts[0][0]
    groups = []
    ends = {}
    for plan, (own_context, own_starts) in zip(plans, starts):
        # A RandomState given as random_state is left where its starts left the stream (the last plan's that
        # drew from it), as scikit-learn's is.
        states = [s for s in (p.pop("rng_state", None) for p in own_starts) if s is not None]
        if states and plan.owner is not None:
            ends[id(plan.owner)] = (plan, states[-1])
        # Models whose samples differ (a Gaussian grid with K > 20) are re-expressed under one context.
        if own_context is not context:
            own_starts = [family.recenter(p, own_context, context) for p in own_starts]
        groups.append(restarts_from(plan, own_starts))
    for plan, state in ends.values():
        settle_stream(plan.owner, plan.moved_state, state)
    return context, groups


def _warm_start(model: BaseMixture, restart: Restart, plan: StartPlan, data, w, runner: Runner) -> Restart:
    """The warm restart, its parameters refreshed by the new data's settings (one compute, if any)."""
    settings = {}
    if plan.data_settings is not None:
        wanted = plan.data_settings(data, w)
        settings = dict(zip(wanted, runner.compute(list(wanted.values()))))
    restart.params = model._refresh_warm_params(restart.params, {**plan.settings, **settings}, model._context)
    return restart


def _log_iteration(r: Restart) -> None:
    change = f"change {r.history[-1] - r.history[-2]:.3g}" if len(r.history) > 1 else "first"
    logger.info(
        "restart %d iteration %d: lower bound %.10g (%s)%s",
        r.index, r.n_iter, r.lower_bound, change, " converged" if r.converged else "",
    )
