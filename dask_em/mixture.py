"""``GaussianMixture``: scikit-learn's estimator, fitted out-of-core on Dask."""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import warnings
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import delayed
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, ClusterMixin, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from . import checkpoint as ckpt
from . import gaussian
from ._engine import Restart, Runner, _row_range, check_rows, check_weights, run_em
from .family import Family
from .gaussian import GaussianFamily
from ._init import INIT_METHODS, MIXED_STARTS, default_sample_size, init_graph, sample_indices
from .io import Prepared, as_dask_array
from .store import _json_safe, fingerprint

logger = logging.getLogger("dask_em")


def _fail(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{name} must be {allowed}; received {value!r}.")


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _seed_sequence(random_state) -> np.random.SeedSequence:
    if random_state is None:
        return np.random.SeedSequence()
    if _is_int(random_state):
        return np.random.SeedSequence(int(random_state))
    if isinstance(random_state, np.random.SeedSequence):
        return random_state
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(2**63)))
    if isinstance(random_state, np.random.RandomState):
        return np.random.SeedSequence(int(random_state.randint(2**31)))
    raise _fail("random_state", random_state, "None, an int, a numpy SeedSequence, Generator or RandomState")


class BaseMixture(DensityMixin, ClusterMixin, BaseEstimator):
    """What every dask-em mixture shares: restarts of EM on one family, out-of-core.

    A subclass names its family (:meth:`_family`) and, if the family needs
    them, the settings its start takes (:meth:`_start_settings`); the loop,
    restarts, checkpoints, progress, inference and the model store live here.
    Parameters common to every subclass are documented on
    :class:`GaussianMixture`.
    """

    # Every estimator class by name, for the model store (no code is ever imported from a store).
    registry: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            BaseMixture.registry[cls.__name__] = cls

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

    # -- hooks a subclass fills in ------------------------------------------

    def _family(self) -> Family:
        raise NotImplementedError

    def _validate_family_params(self) -> None:
        """Check the subclass's own constructor parameters (no data read)."""

    def _check_data(self, data: da.Array) -> None:
        """Check X's dtype and width against the family, from metadata only."""
        self._family().check_dtype(data.dtype, data.shape[1])

    def _start_settings(self, d: int) -> dict:
        """What the family's ``init_params`` receives besides the sample."""
        return {"n_components": self.n_components}

    def _variant(self) -> str | None:
        return None

    def _describe(self) -> str:
        return f"{self._family().name} components"

    def _expected_shapes(self, k: int, d: int, values: dict) -> dict:
        """Shapes of the internal parameter arrays a model store must hold (besides weights)."""
        return {}

    # ------------------------------------------------------------------
    # Validation
    # ------------------------------------------------------------------

    def _validate_params(self) -> None:
        if not _is_int(self.n_components) or self.n_components < 1:
            raise _fail("n_components", self.n_components, "an int >= 1")
        self._validate_family_params()
        if not _is_real(self.tol) or self.tol < 0:
            raise _fail("tol", self.tol, "a finite float >= 0")
        if not _is_int(self.max_iter) or self.max_iter < 1:
            raise _fail("max_iter", self.max_iter, "an int >= 1")
        if not _is_int(self.n_init) or self.n_init < 1:
            raise _fail("n_init", self.n_init, "an int >= 1")
        if self.init_params not in INIT_METHODS:
            raise _fail("init_params", self.init_params, f"one of {INIT_METHODS}")
        if self.init_sample_size is not None and (
            not _is_int(self.init_sample_size) or self.init_sample_size < 1
        ):
            raise _fail("init_sample_size", self.init_sample_size, "None or an int >= 1")
        if self.split_every is not None and (not _is_int(self.split_every) or self.split_every < 2):
            raise _fail("split_every", self.split_every, "None or an int >= 2")
        if self.init_strategy not in ("single", "emEM"):
            raise _fail("init_strategy", self.init_strategy, "'single' or 'emEM'")
        if not _is_int(self.n_short) or self.n_short < 1:
            raise _fail("n_short", self.n_short, "an int >= 1")
        if not _is_int(self.short_iter) or self.short_iter < 1:
            raise _fail("short_iter", self.short_iter, "an int >= 1")
        if self.prune_margin is not None and (not _is_real(self.prune_margin) or self.prune_margin < 0):
            raise _fail("prune_margin", self.prune_margin, "None or a finite float >= 0")
        if self.init_strategy == "emEM" and self.init_params != "kmeans":
            raise ValueError(
                f"init_params={self.init_params!r} applies to init_strategy='single'; emEM mixes "
                "k-means++, random-row and half-sample k-means starts. Leave init_params at its default."
            )
        if not _is_int(self.verbose) or self.verbose < 0:
            raise _fail("verbose", self.verbose, "an int >= 0")
        _seed_sequence(self.random_state)

    def _prepare_weights(self, sample_weight, X: da.Array) -> da.Array | None:
        if sample_weight is None:
            return None
        if type(sample_weight).__module__.split(".")[0] == "xarray":
            sample_weight = sample_weight.data
        n = X.shape[0]
        if isinstance(sample_weight, da.Array):
            if sample_weight.shape != (n,):
                raise ValueError(
                    f"sample_weight must have shape ({n},) to match X; received {sample_weight.shape}."
                )
            if sample_weight.chunks[0] != X.chunks[0]:
                raise ValueError(
                    "sample_weight must be chunked like the rows of X; received chunks "
                    f"{sample_weight.chunks[0][:4]}... for X's {X.chunks[0][:4]}...: use "
                    "sample_weight.rechunk(X.chunks[0])."
                )
            return sample_weight
        w = np.asarray(sample_weight)
        if w.shape != (n,):
            raise ValueError(f"sample_weight must have shape ({n},) to match X; received {w.shape}.")
        if w.dtype.kind not in "fiub":
            raise TypeError(f"sample_weight must be numeric; received dtype {w.dtype}.")
        w = w.astype(np.float64)
        check_weights(w, "row {}")
        if not w.sum() > 0:
            raise ValueError("sample_weight sums to zero; at least one row needs a positive weight.")
        return da.from_array(w, chunks=(X.chunks[0],))

    # ------------------------------------------------------------------
    # Fit
    # ------------------------------------------------------------------

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
        self._validate_params()
        prep = as_dask_array(
            X, variable=variable, storage_options=storage_options, chunk_rows=chunk_rows,
            read_retries=read_retries,
        )
        data = prep.data
        n, d = data.shape
        if n < self.n_components:
            raise ValueError(
                f"X has {n} rows, fewer than n_components={self.n_components}; "
                "lower n_components or pass more rows."
            )
        self._check_data(data)
        settings = self._start_settings(d)
        family = self._family()
        w = self._prepare_weights(sample_weight, data)

        self.training_data_ = fingerprint(prep, X)
        saved = None
        if checkpoint is not None and resume:
            saved = ckpt.read(checkpoint, checkpoint_options)
            if saved is not None:
                ckpt.check_compatible(checkpoint, saved[0], self.training_data_, self.get_params())

        def write_checkpoint(restarts: list[Restart]) -> None:
            if checkpoint is not None:
                meta, arrays = _checkpoint_state(restarts, context, self.training_data_, self.get_params())
                ckpt.write(checkpoint, meta, arrays, checkpoint_options)

        with Runner() as runner:
            if not prep.lazy:
                data = runner.persist_in_memory(data)
                w = runner.persist_in_memory(w) if w is not None else None
            logger.info(
                "fitting %d x %d in %d chunks on %s: K=%d %s, %d restart(s)",
                n, d, data.numblocks[0], runner.description, self.n_components,
                self._describe(), self.n_init,
            )
            if saved is not None:
                context, restarts = _restore(*saved)
                logger.info("resuming from %s at iteration %d", checkpoint, max(r.n_iter for r in restarts))
            else:
                context, restarts = self._start(data, w, n, settings, runner)
                write_checkpoint(restarts)

            bars = None
            if self.verbose:
                from .progress import FitProgress

                bars = FitProgress(len(restarts), self.max_iter)
                for r in restarts:  # a resumed fit starts its bars where it left off
                    if r.n_iter:
                        bars.update(_progress(r))

            def on_iteration(r: Restart) -> None:
                if bars is not None:
                    bars.update(_progress(r))
                if self.verbose >= 2:
                    self._log_iteration(r)
                if callback is not None:
                    callback(_progress(r))

            with contextlib.ExitStack() as stack:
                if bars is not None:
                    stack.callback(bars.close)
                rounds = [0]

                def on_round(rs: list[Restart]) -> None:
                    rounds[0] += 1
                    if self.init_strategy == "emEM" and any(r.short_iter for r in rs):
                        _prune(rs, self.prune_margin)
                    write_checkpoint(rs)

                common = dict(
                    family=family, context=context, tol=self.tol, split_every=self.split_every,
                    runner=runner, on_iteration=on_iteration, on_round=on_round,
                )
                if self.init_strategy == "emEM" and not any(r.short_iter for r in restarts):
                    run_em(data, w, restarts, max_iter=min(self.short_iter, self.max_iter), **common)
                    _keep_best(restarts, self.n_init)
                    write_checkpoint(restarts)
                run_em(data, w, restarts, max_iter=self.max_iter, **common)
        self._set_fitted(restarts, context, d, prep)
        self.n_passes_ = (0 if saved is not None else 1) + rounds[0]
        return self

    def _start_graph(self, data, w, n, settings: dict, salt: str = ""):
        """Delayed (context, starts) of this estimator's restarts, their seeds and start kinds.

        Seeds and sample rows depend only on random_state, n_init, K and n, so
        a candidate of a model-selection grid starts exactly as this estimator.
        """
        emem = self.init_strategy == "emEM"
        n_starts = max(self.n_short, self.n_init) if emem else self.n_init
        seeds_root = _seed_sequence(self.random_state)
        *children, sample_seed = seeds_root.spawn(n_starts + 1)
        seeds = [int(c.generate_state(1)[0]) for c in children]
        size = self.init_sample_size or default_sample_size(n, self.n_components)
        rows = sample_indices(n, min(size, n), np.random.default_rng(sample_seed))
        methods = (
            [MIXED_STARTS[i % len(MIXED_STARTS)] for i in range(n_starts)] if emem else [self.init_params] * n_starts
        )
        graph = init_graph(
            data, w, family=self._family(), settings=settings, method=methods, seeds=seeds,
            sample_rows=rows, salt=salt,
        )
        return graph, seeds, methods

    def _restarts_from(self, seeds: list[int], methods: list[str], starts: list[dict]) -> list[Restart]:
        """Restart records from computed starts."""
        restarts = []
        for i, (seed, params) in enumerate(zip(seeds, starts)):
            error = params.pop("error", None)
            dropped = params.pop("dropped", [])
            r = Restart(i, seed, None if error else params, self._variant(), error=error)
            r.dropped = [(0, k) for k in dropped]
            r.start = methods[i]
            restarts.append(r)
        return restarts

    def _start(self, data, w, n, settings: dict, runner) -> tuple[Any, list[Restart]]:
        """The family's context and every restart's initial parameters (one compute)."""
        graph, seeds, methods = self._start_graph(data, w, n, settings, runner.salt())
        context, starts = runner.compute(graph)
        return context, self._restarts_from(seeds, methods, starts)

    def _log_iteration(self, r: Restart) -> None:
        change = f"change {r.history[-1] - r.history[-2]:.3g}" if len(r.history) > 1 else "first"
        logger.info(
            "restart %d iteration %d: lower bound %.10g (%s)%s",
            r.index, r.n_iter, r.lower_bound, change, " converged" if r.converged else "",
        )

    def _set_fitted(self, restarts: list[Restart], context: Any, d: int, prep: Prepared) -> None:
        ok = [r for r in restarts if r.error is None and r.params is not None]
        if not ok:
            reasons = "; ".join(f"restart {r.index}: {r.error}" for r in restarts)
            raise ValueError(f"every restart failed numerically ({reasons}).")
        for r in restarts:
            if r.error is not None:
                warnings.warn(f"restart {r.index} failed and was skipped: {r.error}", RuntimeWarning, stacklevel=3)
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
                stacklevel=3,
            )
        if not self.converged_:
            warnings.warn(
                f"the best restart did not converge in max_iter={self.max_iter} iterations "
                f"(last change of the lower bound "
                f"{abs(best.history[-1] - best.history[-2]) if len(best.history) > 1 else float('nan'):.3g} "
                f">= tol={self.tol}). Raise max_iter or tol.",
                ConvergenceWarning,
                stacklevel=3,
            )

    def fit_predict(self, X, y=None, *, sample_weight=None, variable=None, storage_options=None, chunk_rows=None):
        """Fit, then return the labels of ``X`` (lazy for lazy input)."""
        self.fit(X, sample_weight=sample_weight, variable=variable, storage_options=storage_options, chunk_rows=chunk_rows)
        return self.predict(X, variable=variable, storage_options=storage_options, chunk_rows=chunk_rows)

    # ------------------------------------------------------------------
    # Inference
    # ------------------------------------------------------------------

    def _set_public(self) -> None:
        """The fitted attributes (``weights_`` and the family's) from the internal parameters."""
        self.weights_ = self._params["weights"]
        for name, value in self._family().to_public(self._params, self._context).items():
            setattr(self, name, value)

    def _state(self) -> dict:
        check_is_fitted(self, "weights_")
        return {"family": self._family(), "context": self._context, "params": self._params}

    def _apply(self, X, what: str, kwargs: dict):
        state = self._state()
        prep = as_dask_array(X, **kwargs)
        d = prep.data.shape[1]
        if d != self.n_features_in_:
            raise ValueError(
                f"X has {d} features, but {type(self).__name__} was fitted with "
                f"{self.n_features_in_} features."
            )
        if not prep.lazy:
            out = _infer_block(np.asarray(prep.data), state, what)
        else:
            token = tokenize(prep.data, state, what)
            key = delayed(state, name=f"em-params-{token}", pure=True, traverse=False)
            drop = {"labels": 1, "score_samples": 1}.get(what)
            out = da.map_blocks(
                _infer_block,
                prep.data,
                key,
                what,
                dtype=np.int64 if what == "labels" else np.float64,
                drop_axis=drop,
                chunks=(prep.data.chunks[0], (self.n_components_,)) if what == "proba" else None,
                name=f"em-{'predict' if what == 'labels' else what.replace('_', '-')}-{token}",
                meta=np.empty((0,) * (1 if drop else 2), dtype=np.int64 if what == "labels" else np.float64),
            )
        return self._wrap(out, prep, what)

    def _wrap(self, out, prep: Prepared, what: str):
        if prep.kind != "xarray":
            return out
        import xarray as xr

        dims = (prep.sample_dim,) if out.ndim == 1 else (prep.sample_dim, "component")
        coords = {prep.sample_dim: prep.sample_coord} if prep.sample_coord is not None else {}
        return xr.DataArray(out, dims=dims, coords=coords, name=what)

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

    # ------------------------------------------------------------------
    # Reprs
    # ------------------------------------------------------------------

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

    def _n_parameters(self) -> int:
        """Free parameters: the family's plus the K - 1 of the weights."""
        check_is_fitted(self, "weights_")
        return int(self._family().n_parameters(self._params)) + self.n_components_ - 1

    def bic(self, X, **kwargs) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        n = as_dask_array(X, **kwargs).data.shape[0]
        return -2 * self.score(X, **kwargs) * n + self._n_parameters() * math.log(n)

    def aic(self, X, **kwargs) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        n = as_dask_array(X, **kwargs).data.shape[0]
        return -2 * self.score(X, **kwargs) * n + 2 * self._n_parameters()

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted mixture, with their labels."""
        check_is_fitted(self, "weights_")
        if not _is_int(n_samples) or n_samples < 1:
            raise _fail("n_samples", n_samples, "an int >= 1")
        rng = np.random.default_rng(_seed_sequence(self.random_state).spawn(1)[0] if self.random_state is not None else None)
        counts = rng.multinomial(n_samples, self.weights_)
        labels = np.repeat(np.arange(len(counts)), counts)
        return self._family().sample(self._params, labels, self._context, rng), labels


class GaussianMixture(BaseMixture):
    """Gaussian mixture fitted by EM on data larger than memory.

    The parameters and fitted attributes mean what they mean in
    :class:`sklearn.mixture.GaussianMixture`; fit takes numpy, dask, xarray,
    ``zarr.Array`` or a Zarr path/URL and reads it one row chunk at a time.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components K.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    tol : float, default=1e-3
        Convergence threshold on the change of the mean per-row log-likelihood.
    reg_covar : float, default=1e-6
        Added to the diagonal of every covariance.
    max_iter : int, default=100
        EM iterations per restart.
    n_init : int, default=1
        Restarts; they run side by side, sharing every chunk read, and the one
        with the highest final lower bound wins.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        How each restart starts, computed on a uniform sample of rows.
    weights_init : array-like of shape (n_components,), optional
    means_init : array-like of shape (n_components, n_features), optional
    precisions_init : array-like, optional
        Shape (K, d, d) full, (d, d) tied, (K, d) diag, (K,) spherical.
    random_state : int, SeedSequence, Generator, RandomState or None
        Drives the sample, every start and :meth:`sample`. Each restart gets
        its own stream from ``SeedSequence.spawn``.
    init_sample_size : int, optional
        Rows sampled for the starts; default ``max(20_000, 1_000 K)`` capped by
        n_samples.
    split_every : int, optional
        Fan-in of the tree reduction of the statistics (dask's default if None).
    init_strategy : {"single", "emEM"}, default="single"
        "single": ``n_init`` restarts from ``init_params`` starts, each run to
        convergence, as scikit-learn. "emEM" (small-EM, Biernacki, Celeux &
        Govaert 2003): ``n_short`` starts of mixed kinds (k-means++ seeds,
        random rows, k-means on different half-samples) run ``short_iter``
        iterations side by side, sharing every read; the best ``n_init``
        continue to convergence, and a continuing restart that cannot catch
        up is pruned (``prune_margin``). Histories record both phases.
    n_short : int, default=20
        Starts of emEM's short phase.
    short_iter : int, default=10
        Iterations of emEM's short phase.
    prune_margin : float or None, default=0.01
        emEM's long phase stops a restart when its bound plus the rest of its
        geometric trend (its last change times rho / (1 - rho), rho the ratio
        of its last two changes) stays more than this many nats per row below
        the best bound. None never prunes.
    verbose : int, default=0
        0: silent. 1: a live progress bar per restart (a widget in Jupyter,
        a text bar on a terminal) with iteration, lower bound and its change.
        2: also one INFO line per restart per iteration on the ``dask_em`` logger.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components_,)
    means_ : ndarray of shape (n_components_, n_features)
    covariances_, precisions_, precisions_cholesky_ : ndarray
        Shapes as in scikit-learn for the covariance type.
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean per-row log-likelihood of the best restart at its last E-step.
    lower_bounds_ : list of float
        The best restart's lower bound at every iteration.
    restarts_ : list of dict
        Every restart: seed, lower_bound, n_iter, converged, status, error,
        history, dropped_components.
    n_components_ : int
        Components left after empty ones were dropped (usually n_components).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        From the feature coordinate of xarray input, when it has one.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        init_sample_size: int | None = None,
        split_every: int | None = None,
        verbose: int = 0,
        init_strategy: str = "single",
        n_short: int = 20,
        short_iter: int = 10,
        prune_margin: float | None = 0.01,
    ):
        super().__init__(
            n_components, tol=tol, max_iter=max_iter, n_init=n_init, init_params=init_params,
            random_state=random_state, init_sample_size=init_sample_size, split_every=split_every,
            verbose=verbose, init_strategy=init_strategy, n_short=n_short, short_iter=short_iter,
            prune_margin=prune_margin,
        )
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init

    def _family(self) -> Family:
        return GaussianFamily(reg_covar=float(self.reg_covar))

    def _validate_family_params(self) -> None:
        if self.covariance_type not in gaussian.COVARIANCE_TYPES:
            raise _fail("covariance_type", self.covariance_type, f"one of {gaussian.COVARIANCE_TYPES}")
        if not _is_real(self.reg_covar) or self.reg_covar < 0:
            raise _fail("reg_covar", self.reg_covar, "a finite float >= 0")

    def _start_settings(self, d: int) -> dict:
        w, m, p = self._validate_init(d)
        return {
            "n_components": self.n_components, "covariance_type": self.covariance_type,
            "weights_init": w, "means_init": m, "precisions_init": p,
        }

    def _variant(self) -> str | None:
        return self.covariance_type

    def _describe(self) -> str:
        return f"{self.covariance_type} covariance"

    def _expected_shapes(self, k: int, d: int, values: dict) -> dict:
        if values.get("covariance_type") != self.covariance_type:
            raise ValueError(
                f"covariance_type {values.get('covariance_type')!r} of the parameters differs from "
                f"the estimator's {self.covariance_type!r}"
            )
        cov = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[self.covariance_type]
        return {"means": (k, d), "covariances": cov, "precisions_cholesky": cov}


    def _validate_init(self, d: int) -> tuple:
        k, cov = self.n_components, self.covariance_type
        w = m = p = None
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, dtype=np.float64)
            if w.shape != (k,):
                raise ValueError(
                    f"weights_init must have shape ({k},) for n_components={k}; received shape {w.shape}."
                )
            if (w < 0).any() or (w > 1).any() or not np.isfinite(w).all():
                raise ValueError(f"weights_init must lie in [0, 1]; received {w}.")
            if not np.isclose(w.sum(), 1.0, rtol=0, atol=1e-6):
                raise ValueError(f"weights_init must sum to 1; received a sum of {w.sum():.6f}. Divide by its sum.")
        if self.means_init is not None:
            m = np.asarray(self.means_init, dtype=np.float64)
            if m.shape != (k, d):
                raise ValueError(
                    f"means_init must have shape ({k}, {d}) for n_components={k} and {d} features; "
                    f"received shape {m.shape}."
                )
            if not np.isfinite(m).all():
                raise ValueError("means_init holds NaN or infinity.")
        if self.precisions_init is not None:
            p = np.asarray(self.precisions_init, dtype=np.float64)
            shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[cov]
            if p.shape != shape:
                raise ValueError(
                    f"precisions_init must have shape {shape} for covariance_type={cov!r}; "
                    f"received shape {p.shape}."
                )
            mats = p if cov == "full" else (p[None] if cov == "tied" else None)
            if mats is not None:
                for i, mat in enumerate(mats):
                    if not np.allclose(mat, mat.T) or np.linalg.eigvalsh(mat).min() <= 0:
                        raise ValueError(
                            f"precisions_init[{i}] must be symmetric positive definite." if cov == "full"
                            else "precisions_init must be symmetric positive definite."
                        )
            elif (p <= 0).any():
                raise ValueError(f"precisions_init must be positive; received {p}.")
        return w, m, p


class Mixture(BaseMixture):
    """A mixture of any family that follows the protocol of :mod:`dask_em.family`.

    ``Mixture(MyFamily(), n_components=4)`` fits a family defined anywhere, a
    notebook included, with everything the built-in estimators have:
    restarts side by side, checkpoints, progress, predict / predict_proba /
    score_samples / score / bic / aic / sample, and the model store
    (``dask_em.load(path, family=MyFamily())``).

    Parameters
    ----------
    family : dask_em.family.Family
        The component distribution.
    n_components, tol, max_iter, n_init, init_params, random_state, init_sample_size,
    split_every, verbose, init_strategy, n_short, short_iter, prune_margin
        As for :class:`GaussianMixture`.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components_,)
    <name>_ : the family's fitted parameters (``Family.to_public``)
    converged_, n_iter_, lower_bound_, lower_bounds_, restarts_, n_components_, n_features_in_
        As for :class:`GaussianMixture`.
    """

    def __init__(
        self,
        family: Family | None = None,
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
        super().__init__(
            n_components, tol=tol, max_iter=max_iter, n_init=n_init, init_params=init_params,
            random_state=random_state, init_sample_size=init_sample_size, split_every=split_every,
            verbose=verbose, init_strategy=init_strategy, n_short=n_short, short_iter=short_iter,
            prune_margin=prune_margin,
        )
        self.family = family

    def _family(self) -> Family:
        return self.family

    def _validate_family_params(self) -> None:
        if not isinstance(self.family, Family):
            raise TypeError(
                f"family must be a dask_em.family.Family instance; received {self.family!r}. "
                "Subclass dask_em.family.Family (see its docstring) and pass an instance."
            )
        cls = type(self.family)
        required = ["check_rows", "log_prob", "m_step", "n_parameters", "sample"]
        if cls.estep is Family.estep:
            required.append("chunk_stats")
        missing = [name for name in required if getattr(cls, name) is getattr(Family, name)]
        if missing:
            raise TypeError(
                f"the family {cls.__name__} does not define {', '.join(missing)}, which every family "
                "must; see the protocol in dask_em.family's docstring."
            )


def _keep_best(restarts: list[Restart], n_keep: int) -> None:
    """End emEM's short phase: the best ``n_keep`` healthy restarts go on, the rest stop."""
    for r in restarts:
        r.short_iter = max(r.n_iter, 1)
    alive = sorted((r for r in restarts if r.error is None and r.params is not None),
                   key=lambda r: r.lower_bound, reverse=True)
    for r in alive[n_keep:]:
        if not r.converged:
            r.stopped = f"not among the best {n_keep} after {r.n_iter} short iterations"


def _prune(restarts: list[Restart], margin: float | None) -> None:
    """Stop long-phase restarts whose projected bound stays below the best by ``margin``."""
    if margin is None:
        return
    healthy = [r for r in restarts if r.error is None and r.history and math.isfinite(r.lower_bound)]
    if not healthy:
        return
    best = max(r.lower_bound for r in healthy)
    for r in healthy:
        h = r.history
        if not r.running or r.n_iter - r.short_iter < 2 or len(h) < 3:
            continue
        last, before = h[-1] - h[-2], h[-2] - h[-3]
        rho = min(max(last / before, 0.0), 0.99) if before > 0 else 0.99
        projected = h[-1] + max(last, 0.0) * rho / (1.0 - rho)
        if projected + margin < best:
            r.stopped = (
                f"pruned at iteration {r.n_iter}: projected bound {projected:.6g} is more than "
                f"{margin} below the best {best:.6g}"
            )


def _progress(r: Restart) -> dict:
    change = r.history[-1] - r.history[-2] if len(r.history) > 1 else None
    return {
        "restart": r.index,
        "iteration": r.n_iter,
        "lower_bound": r.lower_bound,
        "change": change,
        "converged": r.converged,
        "failed": r.error is not None,
    }


def _checkpoint_state(restarts: list[Restart], context, fp: dict, params: dict) -> tuple[dict, dict]:
    """JSON metadata and arrays of every restart: what a resume needs."""
    arrays = {} if context is None else {"context": np.asarray(context)}
    entries = []
    for r in restarts:
        entry = r.summary()
        entry["has_params"] = r.params is not None
        entry["dropped_components"] = [list(x) for x in r.dropped]
        entry["param_values"] = {}
        if r.params is not None:
            for key, value in r.params.items():
                if isinstance(value, np.ndarray):
                    arrays[f"r{r.index}.{key}"] = value
                elif key not in ("dropped", "error"):
                    entry["param_values"][key] = value
        entries.append(entry)
    meta = {"fingerprint": fp, "params": ckpt.matching_params(params), "restarts": _json_safe(entries)}
    return meta, arrays


def _restore(meta: dict, arrays: dict) -> tuple[Any, list[Restart]]:
    restarts = []
    for e in meta["restarts"]:
        params = None
        if e["has_params"]:
            prefix = f"r{e['restart']}."
            params = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            params.update(e.get("param_values", {}))
        restarts.append(
            Restart(
                index=e["restart"],
                seed=e["seed"],
                params=params,
                covariance_type=e["covariance_type"],
                history=[np.nan if v is None else v for v in e["history"]],
                n_iter=e["n_iter"],
                converged=e["converged"],
                error=e["error"],
                dropped=[tuple(x) for x in e["dropped_components"]],
                seconds=e.get("seconds", 0.0),
                stopped=e.get("stopped"),
                start=e.get("start", ""),
                short_iter=e.get("short_iter", 0),
            )
        )
    return arrays.get("context"), restarts


def _infer_block(x, state: dict, what: str, block_info=None):
    """Labels, responsibilities or log-likelihood of one block of rows."""
    family: Family = state["family"]
    if not family.lazy_row_check:
        start, stop, index = _row_range(block_info, x.shape[0])
        check_rows(family, x, start, stop, f"(block {index})")
    wlp = family.weighted_log_prob(x, state["params"], state["context"])
    if what == "labels":
        return wlp.argmax(1)
    log_norm = logsumexp(wlp, axis=1)
    if what == "proba":
        with np.errstate(invalid="ignore"):
            return np.exp(wlp - log_norm[:, None])
    return log_norm
