"""The estimator layer's base: what every dask-em mixture shares, and the one fit path.

``BaseMixture`` is scikit-learn's face (parameters, validation of settings,
fitted attributes, inference, reprs). Every fit, of one estimator or of a
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
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import delayed
from sklearn.base import BaseEstimator, ClusterMixin, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from . import checkpoint as ckpt
from ._validation import fail, is_int, is_real, seed_sequence
from .engine import StepResult, infer_block, local_rows, runs_directly
from .family import Family
from .io import Prepared, as_dask_array, fingerprint, prepare_weights, split_rows
from .restarts import Restart, Schedule, restarts_from, run_schedule, score_restarts
from .runner import Runner
from .starts import INIT_METHODS, MIXED_STARTS, StartPlan

logger = logging.getLogger("dask_em")


def information_criteria(mean_log_likelihood: float, n_samples: int, n_parameters: int) -> dict[str, float]:
    """BIC and AIC with scikit-learn's sign (lower is better): ``-2 log L + p log n`` and ``-2 log L + 2 p``."""
    log_likelihood = mean_log_likelihood * n_samples
    return {
        "bic": -2 * log_likelihood + n_parameters * math.log(n_samples),
        "aic": -2 * log_likelihood + 2 * n_parameters,
    }


@dataclass
class FittedState:
    """What inference and the model store need of a fitted model: its family, context and parameters."""

    family: Family
    context: Any
    params: dict


class BaseMixture(DensityMixin, ClusterMixin, BaseEstimator):
    """What every dask-em mixture shares: restarts of EM on one family, out-of-core.

    Parameters common to every subclass are documented on
    :class:`~dask_em.GaussianMixture`.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        tol: float = 1e-3,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        random_state=None,
        init_sample_size: int | None = None,
        split_every: int | None = None,
        verbose: int = 0,
        init_strategy: str = "single",
        n_short: int = 20,
        short_iter: int = 10,
        prune_margin: float | None = 0.01,
    ):
        self.n_components = n_components
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.random_state = random_state
        self.init_sample_size = init_sample_size
        self.split_every = split_every
        self.init_strategy = init_strategy
        self.n_short = n_short
        self.short_iter = short_iter
        self.prune_margin = prune_margin
        self.verbose = verbose

    # -- what a subclass fills in ---------------------------------------------

    def make_family(self) -> Family:
        """The family object this estimator's settings describe (no data read)."""
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
        """Shapes of the internal parameter arrays a fitted model holds (besides weights)."""
        return {}

    # -- settings -------------------------------------------------------------

    def check_params(self) -> None:
        """Refuse settings out of range, naming what was received and what is allowed (no data read)."""
        if not is_int(self.n_components) or self.n_components < 1:
            raise fail("n_components", self.n_components, "an int >= 1")
        self._check_family_params()
        if not is_real(self.tol) or self.tol < 0:
            raise fail("tol", self.tol, "a finite float >= 0")
        if not is_int(self.max_iter) or self.max_iter < 1:
            raise fail("max_iter", self.max_iter, "an int >= 1")
        if not is_int(self.n_init) or self.n_init < 1:
            raise fail("n_init", self.n_init, "an int >= 1")
        if self.init_params not in INIT_METHODS:
            raise fail("init_params", self.init_params, f"one of {INIT_METHODS}")
        if self.init_sample_size is not None and (
            not is_int(self.init_sample_size) or self.init_sample_size < 1
        ):
            raise fail("init_sample_size", self.init_sample_size, "None or an int >= 1")
        if self.split_every is not None and (not is_int(self.split_every) or self.split_every < 2):
            raise fail("split_every", self.split_every, "None or an int >= 2")
        if self.init_strategy not in ("single", "emEM"):
            raise fail("init_strategy", self.init_strategy, "'single' or 'emEM'")
        if not is_int(self.n_short) or self.n_short < 1:
            raise fail("n_short", self.n_short, "an int >= 1")
        if not is_int(self.short_iter) or self.short_iter < 1:
            raise fail("short_iter", self.short_iter, "an int >= 1")
        if self.prune_margin is not None and (not is_real(self.prune_margin) or self.prune_margin < 0):
            raise fail("prune_margin", self.prune_margin, "None or a finite float >= 0")
        if self.init_strategy == "emEM" and self.init_params != "kmeans":
            raise ValueError(
                f"init_params={self.init_params!r} applies to init_strategy='single'; emEM mixes "
                "k-means++, random-row and half-sample k-means starts. Leave init_params at its default."
            )
        if not is_int(self.verbose) or self.verbose < 0:
            raise fail("verbose", self.verbose, "an int >= 0")
        seed_sequence(self.random_state)

    def _start_plan(self, n: int, d: int) -> StartPlan:
        emem = self.init_strategy == "emEM"
        n_starts = max(self.n_short, self.n_init) if emem else self.n_init
        methods = [MIXED_STARTS[i % len(MIXED_STARTS)] for i in range(n_starts)] if emem else self.init_params
        return StartPlan.make(
            self.make_family(), self._start_settings(d), n_samples=n, n_starts=n_starts, methods=methods,
            random_state=self.random_state, sample_size=self.init_sample_size, variant=self._variant(),
        )

    def _schedule(self) -> Schedule:
        return Schedule(
            tol=self.tol, max_iter=self.max_iter, n_init=self.n_init, init_strategy=self.init_strategy,
            short_iter=self.short_iter, prune_margin=self.prune_margin,
        )

    # -- fit ------------------------------------------------------------------

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
    ):
        """Fit the mixture by EM, reading ``X`` one row chunk at a time.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), zarr.Array, or str
            numpy, dask, xarray (DataArray or Dataset with ``variable``),
            ``zarr.Array``, or a Zarr path/URL.
        y : ignored
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

        Returns
        -------
        self
        """
        fit_models(
            [self], X, sample_weight=sample_weight, variable=variable, storage_options=storage_options,
            chunk_rows=chunk_rows, checkpoint=checkpoint, resume=resume, checkpoint_options=checkpoint_options,
            callback=callback, read_retries=read_retries,
        )
        return self

    def fit_predict(self, X, y=None, *, sample_weight=None, variable=None, storage_options=None, chunk_rows=None):
        """Fit, then return the labels of ``X`` (lazy for lazy input)."""
        self.fit(X, sample_weight=sample_weight, variable=variable, storage_options=storage_options, chunk_rows=chunk_rows)
        return self.predict(X, variable=variable, storage_options=storage_options, chunk_rows=chunk_rows)

    def _keep_best(self, restarts: list[Restart], context: Any, d: int, prep: Prepared) -> Restart:
        """Set the fitted attributes from the best healthy restart (warning about the others)."""
        ok = [r for r in restarts if r.error is None and r.params is not None]
        if not ok:
            reasons = "; ".join(f"restart {r.index}: {r.error}" for r in restarts)
            raise ValueError(f"every restart failed numerically ({reasons}).")
        for r in restarts:
            if r.error is not None:
                warnings.warn(f"restart {r.index} failed and was skipped: {r.error}", RuntimeWarning, stacklevel=4)
        best = max(ok, key=lambda r: r.lower_bound)
        self._params = {k: v for k, v in best.params.items() if k not in ("dropped", "error")}
        self._context = context
        self._set_public()
        self.converged_ = best.converged
        self.n_iter_ = best.n_iter
        self.lower_bound_ = best.lower_bound
        self.lower_bounds_ = list(best.history)
        self.restarts_ = [r.summary() for r in restarts]
        self.best_restart_ = best.index
        self.n_components_ = len(self.weights_)
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
        if not self.converged_:
            last = abs(best.history[-1] - best.history[-2]) if len(best.history) > 1 else float("nan")
            warnings.warn(
                f"the best restart did not converge in max_iter={self.max_iter} iterations "
                f"(last change of the lower bound {last:.3g} >= tol={self.tol}). Raise max_iter or tol.",
                ConvergenceWarning,
                stacklevel=4,
            )
        return best

    # -- the fitted state -------------------------------------------------------

    def _set_public(self) -> None:
        """The fitted attributes (``weights_`` and the family's) from the internal parameters."""
        self.weights_ = self._params["weights"]
        for name, value in self.make_family().to_public(self._params, self._context).items():
            setattr(self, name, value)

    def fitted_state(self) -> FittedState:
        """The fitted model's family, context and internal parameters (for inference and the model store)."""
        check_is_fitted(self, "weights_")
        return FittedState(self.make_family(), self._context, self._params)

    def n_parameters(self) -> int:
        """Free parameters of the fitted model: the family's plus the K - 1 of the weights."""
        state = self.fitted_state()
        return int(state.family.n_parameters(state.params)) + self.n_components_ - 1

    # -- inference --------------------------------------------------------------

    def _apply(self, X, what: str, kwargs: dict):
        state = self.fitted_state()
        block_state = {"family": state.family, "context": state.context, "params": state.params}
        prep = as_dask_array(X, **kwargs)
        d = prep.data.shape[1]
        if d != self.n_features_in_:
            raise ValueError(
                f"X has {d} features, but {type(self).__name__} was fitted with "
                f"{self.n_features_in_} features."
            )
        if not prep.lazy:
            out = infer_block(np.asarray(prep.data), block_state, what)
        else:
            token = tokenize(prep.data, block_state, what)
            key = delayed(block_state, name=f"em-params-{token}", pure=True, traverse=False)
            drop = {"labels": 1, "score_samples": 1}.get(what)
            out = da.map_blocks(
                infer_block,
                prep.data,
                key,
                what,
                dtype=np.int64 if what == "labels" else np.float64,
                drop_axis=drop,
                chunks=(prep.data.chunks[0], (self.n_components_,)) if what == "proba" else None,
                name=f"em-{'predict' if what == 'labels' else what.replace('_', '-')}-{token}",
                meta=np.empty((0,) * (1 if drop else 2), dtype=np.int64 if what == "labels" else np.float64),
            )
        return _wrap(out, prep, what)

    def predict(self, X, **kwargs):
        """Component labels, shape (n_samples,). Lazy for dask/xarray/Zarr input."""
        return self._apply(X, "labels", kwargs)

    def predict_proba(self, X, **kwargs):
        """Responsibilities, shape (n_samples, n_components_)."""
        return self._apply(X, "proba", kwargs)

    def score_samples(self, X, **kwargs):
        """Per-row log-likelihood, shape (n_samples,)."""
        return self._apply(X, "score_samples", kwargs)

    def score(self, X, y=None, **kwargs) -> float:
        """Mean per-row log-likelihood of ``X`` (computed)."""
        values = self.score_samples(X, **kwargs)
        if type(values).__module__.split(".")[0] == "xarray":
            values = values.data
        if isinstance(values, da.Array):
            with Runner() as runner:
                return float(runner.compute(values.mean()))
        return float(np.mean(values))

    def _criteria(self, X, kwargs) -> dict[str, float]:
        n = as_dask_array(X, **kwargs).data.shape[0]
        return information_criteria(self.score(X, **kwargs), n, self.n_parameters())

    def bic(self, X, **kwargs) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        return self._criteria(X, kwargs)["bic"]

    def aic(self, X, **kwargs) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        return self._criteria(X, kwargs)["aic"]

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted mixture, with their labels."""
        check_is_fitted(self, "weights_")
        if not is_int(n_samples) or n_samples < 1:
            raise fail("n_samples", n_samples, "an int >= 1")
        rng = np.random.default_rng(seed_sequence(self.random_state).spawn(1)[0] if self.random_state is not None else None)
        counts = rng.multinomial(n_samples, self.weights_)
        labels = np.repeat(np.arange(len(counts)), counts)
        state = self.fitted_state()
        return state.family.sample(state.params, labels, state.context, rng), labels

    # -- reprs --------------------------------------------------------------------

    def _summary_rows(self) -> list[tuple[str, str]]:
        weights = " ".join(f"{w:.3f}" for w in self.weights_)
        return [
            ("components", f"{self.n_components_} ({self._describe()}, {self.n_features_in_} features)"),
            ("converged", f"{self.converged_} after {self.n_iter_} iterations"),
            ("lower bound", f"{self.lower_bound_:.6f} (mean log-likelihood per row)"),
            ("restarts", f"{len(self.restarts_)}, best: {self.best_restart_}"),
            ("weights", weights),
        ]

    def summary(self) -> str:
        """A few lines on the fitted model: K, covariance, convergence, bound, weights."""
        check_is_fitted(self, "weights_")
        return "\n".join(f"{name:>12}: {value}" for name, value in self._summary_rows())

    def _html_repr(self) -> str:
        html = super()._html_repr()
        if not hasattr(self, "weights_"):
            return html
        from html import escape

        rows = "".join(
            f"<tr><th style='text-align:right;padding-right:1em'>{escape(n)}</th><td style='text-align:left'>{escape(v)}</td></tr>"
            for n, v in self._summary_rows()
        )
        return f"{html}<table class='dask-em-summary'>{rows}</table>"

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        if hasattr(self, "weights_"):
            bundle["text/plain"] = f"{bundle['text/plain']}\n{self.summary()}"
        return bundle


def _wrap(out, prep: Prepared, what: str):
    """Results shaped like the input: an xarray DataArray for xarray input."""
    if prep.kind != "xarray":
        return out
    import xarray as xr

    dims = (prep.sample_dim,) if out.ndim == 1 else (prep.sample_dim, "component")
    coords = {prep.sample_dim: prep.sample_coord} if prep.sample_coord is not None else {}
    return xr.DataArray(out, dims=dims, coords=coords, name=what)


def restore_fitted(model: BaseMixture, state: FittedState, fitted: dict) -> BaseMixture:
    """Make ``model`` the fitted model ``state`` and the scalar fitted attributes ``fitted`` describe."""
    model._params = state.params
    model._context = state.context
    model._set_public()
    for name, value in fitted.items():
        setattr(model, name, value)
    return model


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
    read_retries: int = 3,
    score: bool = False,
) -> list[StepResult | None]:
    """Fit several estimators of one family on ``X`` side by side, sharing every read.

    Every model keeps its own seeds and starts, so each ends exactly as it
    would alone. The models share the settings that shape the rounds (tol,
    max_iter, init_strategy, split_every, verbose; the first model's are used),
    as a model-selection grid does. With ``score``, one last pass gives each
    model's log-likelihood and classification entropy (for ICL); its result
    is returned per model (None for a model whose every restart failed, which
    then stays unfitted). A checkpoint is supported for a single model.
    """
    for model in models:
        model.check_params()
    lead = models[0]
    if checkpoint is not None and len(models) != 1:
        raise ValueError(f"a checkpoint holds one model's fit; received {len(models)} models.")
    prep = as_dask_array(
        X, variable=variable, storage_options=storage_options, chunk_rows=chunk_rows, read_retries=read_retries,
    )
    data = prep.data
    n, d = data.shape
    k_max = max(model.n_components for model in models)
    if n < k_max:
        raise ValueError(
            f"X has {n} rows, fewer than n_components={k_max}; lower n_components or pass more rows."
        )
    family = lead.make_family()  # one for every model: the Gaussian covariance type travels in params
    family.check_dtype(data.dtype, d)
    plans = [model._start_plan(n, d) for model in models]
    w = prepare_weights(sample_weight, data)
    schedule = lead._schedule()
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
    with Runner() as runner:
        if not prep.lazy:
            data = runner.persist_in_memory(data)
            w = runner.persist_in_memory(w) if w is not None else None
        # Small in-memory data: rounds run directly on the blocks, without a graph.
        rows, row_w = data, w
        if runs_directly(data, not prep.lazy, runner):
            rows, row_w = local_rows(data), (local_rows(w) if w is not None else None)
        logger.info(
            "fitting %d x %d in %d chunks on %s: %s, %d restart(s)",
            n, d, data.numblocks[0], runner.description,
            ", ".join(f"K={m.n_components} {m._describe()}" for m in models), sum(len(p.seeds) for p in plans),
        )
        if saved is not None:
            context, restarts = ckpt.restore(*saved)
            groups = [restarts]
            logger.info("resuming from %s at iteration %d", checkpoint, max(r.n_iter for r in restarts))
        else:
            context, groups = _start(plans, data, w, family, runner)
            save([r for group in groups for r in group])

        bars = None
        if lead.verbose and len(models) == 1:
            from .progress import FitProgress

            bars = FitProgress(len(groups[0]), lead.max_iter)
            for r in groups[0]:  # a resumed fit starts its bars where it left off
                if r.n_iter:
                    bars.update(r.event())

        def on_iteration(r: Restart) -> None:
            if bars is not None:
                bars.update(r.event())
            if lead.verbose >= 2:
                _log_iteration(r)
            if callback is not None:
                callback(r.event())

        with contextlib.ExitStack() as stack:
            if bars is not None:
                stack.callback(bars.close)
            rounds = run_schedule(
                rows, row_w, groups, schedule, family=family, context=context, split_every=lead.split_every,
                runner=runner, on_iteration=on_iteration, save=save if checkpoint is not None else None,
            )
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
            model.n_passes_ = (0 if saved is not None else 1) + rounds
        scores: list[StepResult | None] = [None] * len(models)
        if score:
            healthy = [r for r in best if r is not None]
            results = iter(
                score_restarts(rows, row_w, healthy, family=family, context=context, split_every=lead.split_every,
                               runner=runner) if healthy else []
            )
            scores = [next(results) if r is not None else None for r in best]
    return scores


def _start(plans: list[StartPlan], data, w, family: Family, runner: Runner):
    """Every model's restarts from its plan's starts, in one compute, under one context."""
    salt = runner.salt()  # one salt: models with the same sample share its reads
    starts = runner.compute([plan.graph(data, w, salt) for plan in plans])
    context = starts[0][0]
    groups = []
    for plan, (own_context, own_starts) in zip(plans, starts):
        # Models whose samples differ (a Gaussian grid with K > 20) are re-expressed under one context.
        if own_context is not context:
            own_starts = [family.recenter(p, own_context, context) for p in own_starts]
        groups.append(restarts_from(plan, own_starts))
    return context, groups


def _log_iteration(r: Restart) -> None:
    change = f"change {r.history[-1] - r.history[-2]:.3g}" if len(r.history) > 1 else "first"
    logger.info(
        "restart %d iteration %d: lower bound %.10g (%s)%s",
        r.index, r.n_iter, r.lower_bound, change, " converged" if r.converged else "",
    )
