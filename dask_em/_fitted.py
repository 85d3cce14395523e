"""The fitted model's face: inference, information criteria, sampling and reprs.

:class:`FittedMixture` is mixed into every estimator (:class:`dask_em._base.BaseMixture`);
it reads only the fitted state (:meth:`FittedMixture.fitted_state`: the family,
its context and the internal parameters) and the fitted attributes. Inference
maps :func:`dask_em.engine.infer_block` over the row chunks, lazily for lazy
input (in-memory rows: their blocks on local threads, without a graph); rows
are checked in the pass that computes the result.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import threading
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.delayed import delayed
from sklearn.utils.validation import _check_feature_names, check_is_fitted

from ._namespace import dtype_name, is_foreign, is_numpy, like, namespace, to_numpy
from ._validation import child_sequence, is_int, scikit_learn_none, seed_sequence
from .engine import infer_block, infer_direct, local_rows
from .family import Family
from .io import Prepared, as_dask_array
from .runner import Runner


def information_criteria(mean_log_likelihood: float, n_samples: int, n_parameters: int) -> dict[str, float]:
    """BIC and AIC with scikit-learn's sign (lower is better): ``-2 log L + p log n`` and ``-2 log L + 2 p``."""
    log_likelihood = mean_log_likelihood * n_samples
    return {
        "bic": -2 * log_likelihood + n_parameters * math.log(n_samples),
        "aic": -2 * log_likelihood + 2 * n_parameters,
    }


# Held while an estimator takes its fitted attributes as its parameters (FittedMixture.fitted_state).
_ADOPTING = threading.RLock()


@dataclass
class FittedState:
    """What inference and the model store need of a fitted model: its family, context and parameters."""

    family: Family
    context: Any
    params: dict


class FittedMixture:
    """Inference, criteria, sampling and reprs of a fitted mixture (mixed into every estimator)."""

    def fitted_state(self) -> FittedState:
        """The fitted model's family, context and internal parameters (for inference and the model store).

        As scikit-learn's estimators read their fitted attributes, fitted
        attributes assigned after fit (``model.means_ = ...``, or in place), or
        on an estimator never fitted, are the model from then on where the
        estimator can take them (:meth:`_adopt_attributes`); an estimator that
        cannot says so rather than use parameters its attributes no longer show.
        """
        check_is_fitted(self, "weights_")
        if self._edited_attributes():
            with _ADOPTING:  # one thread takes the attributes; the others find them taken
                edited = self._edited_attributes()
                if edited:
                    self._adopt_attributes(edited)
                    self._published = self._snapshot(self._attribute_parameters)
        return FittedState(self._family, self._context, self._params)

    def __getstate__(self):
        # Attributes changed since the last inference are made the model first, so that the copy (which records
        # its attributes as fitted when it is loaded) is the model they show.
        refused = False
        if hasattr(self, "_params") and hasattr(self, "weights_"):
            try:
                self.fitted_state()
            except (ValueError, AttributeError):  # refused edits travel with their record, refused again
                refused = True
        state = dict(super().__getstate__())  # object's is the instance's own __dict__: not to be popped
        if not refused:
            state.pop("_published", None)  # recorded again on load: half the size of the parameters
        return state

    # The fitted attributes :meth:`_adopt_attributes` builds a model from, as scikit-learn's inference reads
    # them; None: the estimator cannot, and every attribute its fitted state sets is watched for edits.
    _attribute_parameters: tuple[str, ...] | None = None

    def _snapshot(self, names) -> dict:
        """numpy copies of the attributes ``names`` as they are now, to tell later edits from them."""
        return {name: _numpy_copy(getattr(self, name, None)) for name in names}

    def _edited_attributes(self) -> list[str]:
        """The watched attributes that differ from the fitted state's (those set, when there is none)."""
        if not hasattr(self, "_params"):
            return [name for name in self._attribute_parameters or ("weights_",) if hasattr(self, name)]
        published = getattr(self, "_published", None)
        if published is None:  # pickled by a dask-em that kept no record: its attributes are taken as fitted
            names = self._attribute_parameters or ["weights_", *self._family.to_public(self._params, self._context)]
            self._published = self._snapshot(names)
            return []
        return [name for name, value in published.items() if not _same(getattr(self, name, None), value)]

    def _adopt_attributes(self, edited: list[str]) -> None:
        """Make the current fitted attributes the model (here: refused, naming what changed)."""
        name = type(self).__name__
        if not hasattr(self, "_params"):
            raise AttributeError(
                f"this {name} has {', '.join(edited)} but was not fitted: {name} takes its parameters from fit, "
                "partial_fit or a model store, not from attributes set by hand. Call fit first."
            )
        raise ValueError(
            f"{', '.join(edited)} of this {name} changed after fit, and {name} does not read its parameters back "
            "from its attributes. Refit (warm_start=False), or restore the fitted values."
        )

    def n_parameters(self) -> int:
        """Free parameters of the fitted model: the family's plus the K - 1 of the weights."""
        state = self.fitted_state()
        return int(state.family.n_parameters(state.params)) + self.n_components_ - 1

    # -- inference --------------------------------------------------------------

    def _prepare_inference(self, X, kwargs: dict, state: FittedState | None = None) -> Prepared:
        """``X`` checked as fit checks it, from metadata only: shape, feature count and names, dtype.

        Its rows (NaN, inf, a family's invalid values) are checked by the pass that computes
        the result (``engine.infer_block``), not by another one.
        """
        state = state or self.fitted_state()
        prep = as_dask_array(X, **kwargs)
        d = prep.data.shape[1]
        # scikit-learn's order: the names first (a frame missing a column is told which), then the count.
        _check_feature_names(self, _names_frame(prep.feature_names), reset=False)
        if d != self.n_features_in_:
            name = type(self).__name__
            raise ValueError(  # scikit-learn's sentence (its checks look for it), then how to mend it
                f"X has {d} features, but {name} is expecting {self.n_features_in_} features as input. "
                "Pass the columns it was fitted on."
            )
        state.family.check_dtype(prep.data.dtype, d)
        transform = getattr(self, "_transform", None)
        if transform is not None:
            prep = dataclasses.replace(prep, data=prep.data.map_blocks(transform, dtype=bool))
        return prep

    def _apply(self, X, what: str, kwargs: dict, dtype=None):
        """``what`` of the rows of ``X``: in ``dtype`` where given, else the output's (:meth:`_output_dtype`)."""
        state = self.fitted_state()
        block_state = {"family": state.family, "context": state.context, "params": state.params}
        prep = self._prepare_inference(X, kwargs, state)
        if dtype is None:
            dtype = np.int64 if what == "labels" else self._output_dtype(prep.data.dtype, what)
        if not prep.lazy and prep.foreign is not None:  # an in-memory array of another library, on its device
            out = _rounded(infer_block(prep.foreign, block_state, what), dtype)
        elif not prep.lazy:  # in memory: its row blocks on the local threads, no graph
            out = _rounded(infer_direct(local_rows(prep.data), block_state, what), dtype)
        else:
            token = tokenize(prep.data, block_state, what)
            key = delayed(block_state, name=f"em-params-{token}", pure=True, traverse=False)
            drop = {"labels": 1, "score_samples": 1}.get(what)
            chunks = {"proba": (prep.data.chunks[0], (self.n_components_,)), "impute": prep.data.chunks}.get(what)
            out = da.map_blocks(
                _infer_rounded,
                prep.data,
                key,
                what,
                np.dtype(dtype),
                dtype=dtype,
                drop_axis=drop,
                chunks=chunks,
                name=f"em-{'predict' if what == 'labels' else what.replace('_', '-')}-{token}",
                meta=_meta(prep.data, 1 if drop else 2, dtype),
            )
        return _wrap(out, prep, what)

    def _output_dtype(self, dtype: np.dtype, what: str) -> np.dtype:
        """float32 for the responsibilities and scores of float32 rows under a model whose parameters are
        float32 (fitted on float32 rows), as scikit-learn's GaussianMixture gives them; float64 otherwise.

        They are computed in float64 and rounded once.
        """
        if (what in ("proba", "score_samples") and np.dtype(dtype) == np.float32
                and getattr(self, "_public_dtype", None) == np.float32 and "means_" in self._input_dtype_attributes):
            return np.dtype(np.float32)
        return np.dtype(np.float64)

    def predict(self, X, **kwargs):
        """Component labels of the rows of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), zarr.Array, or str
            numpy, dask, xarray, pandas, ``zarr.Array``, or a Zarr path/URL,
            with the features the model was fitted on.
        **kwargs
            How to read ``X``: ``variable``, ``storage_options``,
            ``chunk_rows``, ``device`` (as in :meth:`fit`).

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples,)
            The most probable component of each row; lazy (with the input's row
            chunks) for dask, xarray or Zarr input, numpy otherwise.
        """
        return self._apply(X, "labels", kwargs)

    def predict_proba(self, X, **kwargs):
        """Responsibilities: the posterior probability of each component for each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), zarr.Array, or str
            numpy, dask, xarray, pandas, ``zarr.Array``, or a Zarr path/URL,
            with the features the model was fitted on.
        **kwargs
            How to read ``X``: ``variable``, ``storage_options``,
            ``chunk_rows``, ``device`` (as in :meth:`fit`).

        Returns
        -------
        proba : ndarray or dask array of shape (n_samples, n_components)
            Rows sum to one (one column per fitted component, ``n_components_``);
            lazy for dask, xarray or Zarr input.
        """
        return self._apply(X, "proba", kwargs)

    def impute(self, X, **kwargs):
        """``X`` with each missing value (NaN) replaced by its conditional expectation under the fitted mixture.

        E[x_m | x_o] = sum_k P(k | x_o) E_k[x_m | x_o] (for a categorical
        mixture, the most probable code). Observed values are returned as
        they are. Shape (n_samples, n_features); lazy for dask/xarray/Zarr input.
        Needs ``missing="marginalize"`` (with ``"error"`` a NaN is refused).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), zarr.Array, or str
            numpy, dask, xarray, pandas, ``zarr.Array``, or a Zarr path/URL,
            with the features the model was fitted on.
        **kwargs
            How to read ``X``: ``variable``, ``storage_options``,
            ``chunk_rows``, ``device`` (as in :meth:`fit`).

        Returns
        -------
        X_imputed : ndarray or dask array of shape (n_samples, n_features)
            ``X`` with its NaN filled; lazy for dask, xarray or Zarr input.
        """
        if self.missing == "error":
            raise ValueError(
                "impute needs a model fitted with missing='marginalize'; this one has missing='error', "
                "which refuses NaN. Set model.missing = 'marginalize' (the fitted parameters stay valid)."
            )
        return self._apply(X, "impute", kwargs)

    def score_samples(self, X, **kwargs):
        """Log-likelihood of each row under the fitted mixture.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), zarr.Array, or str
            numpy, dask, xarray, pandas, ``zarr.Array``, or a Zarr path/URL,
            with the features the model was fitted on.
        **kwargs
            How to read ``X``: ``variable``, ``storage_options``,
            ``chunk_rows``, ``device`` (as in :meth:`fit`).

        Returns
        -------
        log_likelihood : ndarray or dask array of shape (n_samples,)
            Lazy for dask, xarray or Zarr input.
        """
        return self._apply(X, "score_samples", kwargs)

    def score(self, X, y=None, **kwargs) -> float:
        """Mean per-row log-likelihood of ``X`` (computed).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), zarr.Array, or str
            numpy, dask, xarray, pandas, ``zarr.Array``, or a Zarr path/URL,
            with the features the model was fitted on.
        y : ignored
            Not used, present for scikit-learn's API.
        **kwargs
            How to read ``X``: ``variable``, ``storage_options``,
            ``chunk_rows``, ``device`` (as in :meth:`fit`).

        Returns
        -------
        score : float
        """
        # From the float64 scores, even where score_samples rounds them to float32: the mean of many rows
        # (and the criteria made from it) keeps float64's digits.
        values = self._apply(X, "score_samples", kwargs, np.dtype(np.float64))
        if type(values).__module__.split(".")[0] == "xarray":
            values = values.data
        if isinstance(values, da.Array):
            # Each block's scores to the host (a no-op for numpy blocks), then dask's mean.
            values = values.map_blocks(to_numpy, dtype=values.dtype, meta=np.empty((0,), dtype=values.dtype))
            with Runner() as runner:
                return float(runner.compute(values.mean()))
        return float(np.mean(to_numpy(values)))

    def _criteria(self, X, kwargs) -> dict[str, float]:
        n = as_dask_array(X, **kwargs).data.shape[0]
        return information_criteria(self.score(X, **kwargs), n, self.n_parameters())

    def bic(self, X, **kwargs) -> float:
        """Bayesian information criterion on ``X`` (lower is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), zarr.Array, or str
            numpy, dask, xarray, pandas, ``zarr.Array``, or a Zarr path/URL,
            with the features the model was fitted on.
        **kwargs
            How to read ``X``: ``variable``, ``storage_options``,
            ``chunk_rows``, ``device`` (as in :meth:`fit`).

        Returns
        -------
        bic : float
            ``-2 n score(X) + p log(n)``, with ``p`` free parameters.
        """
        return self._criteria(X, kwargs)["bic"]

    def aic(self, X, **kwargs) -> float:
        """Akaike information criterion on ``X`` (lower is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), zarr.Array, or str
            numpy, dask, xarray, pandas, ``zarr.Array``, or a Zarr path/URL,
            with the features the model was fitted on.
        **kwargs
            How to read ``X``: ``variable``, ``storage_options``,
            ``chunk_rows``, ``device`` (as in :meth:`fit`).

        Returns
        -------
        aic : float
            ``-2 n score(X) + 2 p``, with ``p`` free parameters.
        """
        return self._criteria(X, kwargs)["aic"]

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n_samples`` rows from the fitted mixture, with their labels.

        Parameters
        ----------
        n_samples : int, default=1
            Number of rows to draw.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            The rows, grouped by component. For the Gaussian mixtures with an
            int ``random_state``, drawn as scikit-learn draws them (its
            ``RandomState`` stream): a model equal to scikit-learn's gives its
            rows.
        y : ndarray of shape (n_samples,)
            The component each row was drawn from.
        """
        check_is_fitted(self, "weights_")
        # A whole number of any numeric type, as scikit-learn's sample takes it (2.0 draws 2 rows).
        if not (isinstance(n_samples, numbers.Real) and float(n_samples).is_integer() and n_samples >= 1):
            raise ValueError(f"Invalid value for 'n_samples': {n_samples!r}; sample draws a whole number >= 1 of rows.")
        n_samples = int(n_samples)
        state = self.fitted_state()
        seed = scikit_learn_none(self.random_state)
        if state.family.draws_as_scikit_learn and is_int(seed) and 0 <= seed < 2**32:
            # scikit-learn's stream and draws: the same random_state gives its rows (to the parameters' round-off)
            rng = np.random.RandomState(int(seed))
        elif state.family.draws_as_scikit_learn and isinstance(seed, np.random.RandomState):
            rng = seed  # drawn from and advanced, as scikit-learn's sample does
        else:
            rng = np.random.default_rng(child_sequence(seed_sequence(seed), 0))
        counts = rng.multinomial(n_samples, to_numpy(self.weights_))
        labels = np.repeat(np.arange(len(counts)), counts)
        rows = state.family.sample(state.params, labels, state.context, rng)
        on = getattr(self, "_public_like", None)  # scikit-learn's array-API convention: the fit's namespace
        return (rows, labels) if on is None else (like(rows, on), like(labels, on))

    # -- reprs --------------------------------------------------------------------

    def _summary_rows(self) -> list[tuple[str, str]]:
        self.fitted_state()  # a model built from its attributes by hand: its counts
        weights = " ".join(f"{w:.3f}" for w in to_numpy(self.weights_))
        rows = [("components", f"{self.n_components_} ({self._describe()}, {self.n_features_in_} features)")]
        if not hasattr(self, "restarts_"):  # set by hand, not fitted
            return rows + [("fitted", "no: parameters set by hand"), ("weights", weights)]
        return rows + [
            ("converged", f"{self.converged_} after {self.n_iter_} iterations"),
            ("lower bound", f"{self.lower_bound_:.6f} ({self._bound_meaning()})"),
            ("restarts", f"{len(self.restarts_)}, best: {self.best_restart_}"),
            ("weights", weights),
        ]

    def _bound_meaning(self) -> str:
        """What ``lower_bound_`` is, in words for summaries and plots."""
        if hasattr(self, "prior_"):
            return "mean log-likelihood per row, plus the log prior over the rows"
        return "mean log-likelihood per row"

    def summary(self) -> str:
        """A few lines on the fitted model: K, covariance, convergence, bound, weights.

        Returns
        -------
        str
        """
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


def _names_frame(names):
    """Feature names as scikit-learn's ``_check_feature_names`` reads them (a frame's columns), or None."""
    if names is None:
        return None
    import pandas as pd  # installed with xarray

    return pd.DataFrame(columns=list(names))


def _meta(data, ndim: int, dtype):
    """An empty block of the results' kind: CuPy's for CuPy chunks, so that dask concatenates on the device."""
    base = getattr(data, "_meta", None)
    if base is None or is_numpy(base):
        return np.empty((0,) * ndim, dtype=dtype)
    return namespace(base).empty((0,) * ndim, dtype=dtype)


def _rounded(out, dtype):
    """``out`` (numpy or another library's array) in ``dtype``: the same array where it already is."""
    if dtype == np.int64 or np.dtype(dtype_name(out.dtype)) == dtype:
        return out
    if is_foreign(out):
        xp = namespace(out)
        return xp.astype(out, getattr(xp, np.dtype(dtype).name))
    return out.astype(dtype)


def _infer_rounded(x, state: dict, what: str, dtype: np.dtype, block_info=None):
    """:func:`engine.infer_block` in the output's ``dtype``."""
    return _rounded(infer_block(x, state, what, block_info=block_info), dtype)


def _wrap(out, prep: Prepared, what: str):
    """Results shaped like the input: an xarray DataArray for xarray input."""
    if prep.kind != "xarray":
        return out
    import xarray as xr

    dims = (prep.sample_dim,) if out.ndim == 1 else (prep.sample_dim, "feature" if what == "impute" else "component")
    coords = {prep.sample_dim: prep.sample_coord} if prep.sample_coord is not None else {}
    return xr.DataArray(out, dims=dims, coords=coords, name=what)


def _numpy_copy(value):
    """A numpy copy of a fitted attribute (arrays of any array-API library, tuples and lists of them)."""
    if isinstance(value, (tuple, list)):
        return type(value)(_numpy_copy(v) for v in value)
    if value is None or isinstance(value, (str, bytes, dict)):
        return value
    try:
        return np.array(to_numpy(value), copy=True)
    except (TypeError, ValueError):
        return value


def _same(value, snapshot) -> bool:
    """Whether a fitted attribute still holds what ``snapshot`` recorded (NaN equal to NaN)."""
    if isinstance(snapshot, (tuple, list)):
        return (isinstance(value, (tuple, list)) and len(value) == len(snapshot)
                and all(_same(v, s) for v, s in zip(value, snapshot)))
    if not isinstance(snapshot, np.ndarray):
        try:
            return value is snapshot or bool(value == snapshot)
        except (TypeError, ValueError):  # containers of arrays: only the same object is known unchanged
            return False
    try:
        current = to_numpy(value)
    except (TypeError, ValueError):
        return False
    # Bytes, not values: a memcmp (NaN equal to the same NaN), without the boolean array of an elementwise ==.
    return (isinstance(current, np.ndarray) and current.shape == snapshot.shape and current.dtype == snapshot.dtype
            and current.tobytes() == snapshot.tobytes())


def restore_fitted(model, state: FittedState, fitted: dict):
    """Make ``model`` the fitted model ``state`` and the scalar fitted attributes ``fitted`` describe."""
    model._params = state.params
    model._context = state.context
    model._family = state.family
    model._transform = model._input_transform()
    model._set_public()
    for name, value in fitted.items():
        setattr(model, name, value)
    return model
