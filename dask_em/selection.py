"""Model selection: an information-criterion grid over K (and covariance type), in one fit.

Every candidate (K, covariance type) and every one of its restarts runs in the
same rounds of the engine: each round reads each chunk once for the whole grid,
candidates that converge drop out, the others go on. A last pass scores every
candidate's final parameters (log-likelihood and classification entropy) for
BIC, AIC and ICL.

BIC and AIC follow scikit-learn's sign: lower is better,
``BIC = -2 log L + p log n``. mclust reports ``2 log L - p log n`` (higher is
better): the same number with the opposite sign, held beside it as
``result.criteria.bic_mclust`` (and ``icl_mclust``); ``result.table(sign="mclust")``
prints that, and a grid over mclust's fourteen models (``covariance_types="mclust"``)
prints as ``mclustBIC`` does: models across, K down, the top three. ICL (Biernacki, Celeux & Govaert 2000) is
``BIC - 2 sum_i sum_k r_ik log r_ik``: BIC plus twice the entropy of the
classification, which penalises overlapping components.

The other families (``family="bernoulli"``, ``"poisson"``, ``"categorical"``
or a :class:`~dask_em.family.Family` object) have no covariance types: their
grid is over K alone, and ``criteria`` has the one dimension ``n_components``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ._base import BaseMixture, fit_models
from ._fitted import information_criteria
from ._covariance import COVARIANCE_TYPES, GAUSSIAN_COVARIANCE_TYPES, MCLUST_MODELS
from .family import Family
from .mixture import Mixture
from .registry import GRID_FAMILIES, estimator_for_family

CRITERIA = ("bic", "aic", "icl")


@dataclass
class SelectionResult:
    """What :func:`select_model` found.

    Its fields are read as attributes (``result.best_estimator_``).

    Parameters
    ----------
    criteria : xarray.Dataset
        bic, aic, icl, lower_bound, log_likelihood, n_parameters, converged and
        n_iter over dims (n_components, covariance_type), or (n_components,)
        for the families without covariance types.
    best_estimator_ : GaussianMixture or another family's estimator
        The fitted candidate with the lowest criterion.
    best_params_ : dict
        Its n_components (and covariance_type).
    estimators_ : dict
        Every fitted candidate, keyed by (n_components, covariance_type), or
        by (n_components, family name).
    criterion : {"bic", "aic", "icl"}, default="bic"
        The criterion that ranked the candidates.
    """

    criteria: Any
    best_estimator_: BaseMixture
    best_params_: dict
    estimators_: dict = field(repr=False)
    criterion: str = "bic"

    def table(self, criterion: str | None = None, sign: str = "sklearn") -> str:
        """A plain-text table of one criterion: K down, covariance types across; * marks the best.

        ``sign="mclust"``: BIC and ICL as mclust reports them, ``2 log L - p log n``
        (higher is better), the same numbers negated.

        Parameters
        ----------
        criterion : {"bic", "aic", "icl", "lower_bound", "log_likelihood"}, optional
            A variable of :attr:`criteria`; by default the ranking criterion.
        sign : {"sklearn", "mclust"}, default="sklearn"
            "mclust" prints BIC and ICL on mclust's sign (higher is better).

        Returns
        -------
        str
            The table, one line per K.
        """
        name = criterion or self.criterion
        if sign not in ("sklearn", "mclust"):
            raise ValueError(f"sign must be 'sklearn' or 'mclust'; received {sign!r}.")
        if sign == "mclust":
            return self._mclust_table(name)
        values = self.criteria[name]
        if "covariance_type" not in values.dims:  # one column: the family
            values = values.expand_dims(covariance_type=[self.criteria.attrs["family"]], axis=1)
        types = [str(t) for t in values["covariance_type"].values]
        finite = values.values[np.isfinite(values.values)]
        widest = max((len(f"{v:.2f}") for v in finite), default=6)
        width = max(12, widest + 3, *(len(t) + 2 for t in types))
        lines = [f"{name.upper()} (lower is better)", f"{'K':>4}" + "".join(f"{t:>{width}}" for t in types)]
        best = (self.best_params_["n_components"], self.best_params_.get("covariance_type", types[0]))
        for k in values["n_components"].values:
            cells = []
            for t in types:
                v = float(values.sel(n_components=k, covariance_type=t))
                mark = "*" if (int(k), t) == best and name == self.criterion else " "
                cells.append(f"{v:>{width - 1}.2f}{mark}" if math.isfinite(v) else f"{'failed':>{width - 1}} ")
            lines.append(f"{int(k):>4}" + "".join(cells))
        return "\n".join(lines)

    def top(self, criterion: str | None = None, n: int = 3) -> list[tuple[str, int, float]]:
        """The ``n`` best candidates, best first (scikit-learn's sign: lower is better).

        Parameters
        ----------
        criterion : {"bic", "aic", "icl", "lower_bound", "log_likelihood"}, optional
            A variable of :attr:`criteria`; by default the ranking criterion.
        n : int, default=3
            How many candidates.

        Returns
        -------
        list of (str, int, float)
            Each candidate's covariance type (the family's name for the other
            families), number of components and criterion value.
        """
        values = self.criteria[criterion or self.criterion]
        if "covariance_type" not in values.dims:
            values = values.expand_dims(covariance_type=[self.criteria.attrs["family"]], axis=1)
        ks, types = values["n_components"].values, values["covariance_type"].values
        flat = values.values.ravel()
        order = [i for i in np.argsort(flat, kind="stable") if np.isfinite(flat[i])][:n]
        return [(str(types[i % len(types)]), int(ks[i // len(types)]), float(flat[i])) for i in order]

    def _mclust_table(self, name: str) -> str:
        if name not in ("bic", "icl"):
            raise ValueError(f"mclust's sign applies to 'bic' and 'icl'; received criterion={name!r}.")
        values = -self.criteria[name]
        if "covariance_type" not in values.dims:
            values = values.expand_dims(covariance_type=[self.criteria.attrs["family"]], axis=1)
        types = [str(t) for t in values["covariance_type"].values]
        finite = values.values[np.isfinite(values.values)]
        width = max(10, max((len(f"{v:.3f}") for v in finite), default=6) + 1, *(len(t) + 1 for t in types))
        title = {"bic": "Bayesian Information Criterion (BIC)", "icl": "Integrated Complete-data Likelihood (ICL)"}
        lines = [f"{title[name]}, mclust's sign: 2 log L - p log n, higher is better "
                 f"(scikit-learn's {name} is its negative)",
                 f"{'':>3}" + "".join(f"{t:>{width}}" for t in types)]
        for k in values["n_components"].values:
            row = values.sel(n_components=k).values
            lines.append(f"{int(k):>3}" + "".join(f"{v:>{width}.3f}" if math.isfinite(v) else f"{'NA':>{width}}"
                                                for v in row))
        best = self.top(name)
        labels = [f"{t},{k}" for t, k, _ in best]
        cell = max(width, *(len(label) + 1 for label in labels))
        lines += ["", f"Top {len(best)} models based on the {name.upper()} criterion:",
                  "".join(f"{label:>{cell}}" for label in labels),
                  "".join(f"{-v:>{cell}.3f}" for _, _, v in best)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        head = f"SelectionResult(best={self.best_params_}, criterion={self.criterion!r})\n"
        types = self.criteria.coords.get("covariance_type")
        if types is not None and all(str(t) in MCLUST_MODELS for t in types.values):
            return head + self.table("bic", sign="mclust") + "\n\n" + self.table("icl", sign="mclust")
        return head + self.table()


def _candidates(n_components, covariance_types, family) -> tuple[list[int], list[str]]:
    ks = [n_components] if isinstance(n_components, int) else list(n_components)
    if not ks or any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in ks):
        raise ValueError(f"n_components must be ints >= 1 (e.g. range(1, 11)); received {ks!r}.")
    if not isinstance(family, Family):
        estimator_for_family(family)  # refuses an unknown name, listing the valid ones
        if family not in GRID_FAMILIES:
            raise ValueError(
                f"select_model ranks {GRID_FAMILIES} by information criteria; received family={family!r}, "
                "which picks its own number of components: fit it once with a generous n_components."
            )
    if family != "gaussian":
        if covariance_types is not None:
            raise ValueError(
                f"covariance_types applies to family='gaussian'; received family={family!r}. Leave it out."
            )
        name = family.name if isinstance(family, Family) else family
        return sorted(set(int(k) for k in ks)), [name]
    if covariance_types is None:
        covariance_types = COVARIANCE_TYPES
    elif isinstance(covariance_types, str) and covariance_types in ("mclust", "sklearn"):
        covariance_types = MCLUST_MODELS if covariance_types == "mclust" else COVARIANCE_TYPES
    types = [covariance_types] if isinstance(covariance_types, str) else list(covariance_types)
    bad = [t for t in types if t not in GAUSSIAN_COVARIANCE_TYPES]
    if not types or bad:
        raise ValueError(
            f"covariance_types must be a subset of {GAUSSIAN_COVARIANCE_TYPES}, 'mclust' (its fourteen "
            f"models) or 'sklearn' (the default four); received {covariance_types!r}."
        )
    return sorted(set(int(k) for k in ks)), list(dict.fromkeys(types))


def select_model(
    X,
    n_components: Iterable[int] | int = range(1, 11),
    covariance_types: Iterable[str] | str | None = None,
    criterion: str = "bic",
    n_init: int = 1,
    random_state=None,
    *,
    family: str | Family = "gaussian",
    sample_weight=None,
    variable: str | None = None,
    storage_options: dict | None = None,
    chunk_rows: int | None = None,
    device: str | None = None,
    callback=None,
    **gaussian_mixture_params,
) -> SelectionResult:
    """Fit every (K, covariance type) candidate side by side and rank them.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features), zarr.Array, or str
        Anything :meth:`GaussianMixture.fit` takes.
    n_components : iterable of int, default=range(1, 11)
    covariance_types : iterable of str, "mclust" or "sklearn", default scikit-learn's four
        Gaussian only. "mclust": mclust's fourteen models (``Mclust``'s grid);
        any of :class:`GaussianMixture`'s ``covariance_type`` names.
    criterion : {"bic", "aic", "icl"}, default="bic"
        Which criterion picks ``best_estimator_`` (all three are computed).
    n_init, random_state, **gaussian_mixture_params
        As for :class:`GaussianMixture` (tol, reg_covar, max_iter, init_params,
        init_sample_size, split_every). Each candidate gets exactly the seeds
        ``GaussianMixture(K, covariance_type=t, n_init=n_init,
        random_state=random_state)`` would, so its fit equals that one's.
        For the other families these are that family's estimator's
        parameters (``pseudo_count``, ``n_categories``, ...).
    family : {"gaussian", "bernoulli", "poisson", "categorical"} or Family, default="gaussian"
        The component family; a grid over K alone for all but "gaussian".
    sample_weight : array-like of shape (n_samples,), optional
        Non-negative row weights.
    variable : str, optional
        Variable of a Zarr group or Dataset.
    storage_options : dict, optional
        fsspec options for remote stores.
    chunk_rows : int, optional
        Rows per chunk where dask-em chooses the chunking.
    device : {None, "cuda", "cpu"}, default=None
        Where the E-steps run, as in :meth:`GaussianMixture.fit`.
    callback : callable, optional
        Called once per candidate as soon as its restarts stop iterating
        (the others go on in the same passes), with a dict: ``n_components``,
        ``covariance_type`` (the family's name outside the Gaussian grid),
        ``n_iter``, ``converged`` and ``lower_bound`` of its best restart so
        far (None where every restart failed). The criteria come after every
        candidate is done, with one more pass.

    Returns
    -------
    SelectionResult
        The criteria of every candidate, the best one and all fitted candidates.

    Examples
    --------
    >>> import numpy as np
    >>> import dask_em
    >>> rng = np.random.default_rng(0)
    >>> X = np.concatenate([rng.normal(-4, 1, (300, 2)), rng.normal(4, 1, (300, 2))])
    >>> result = dask_em.select_model(X, n_components=range(1, 5), covariance_types="full", random_state=0)
    >>> result.best_params_
    {'n_components': 2, 'covariance_type': 'full'}
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; received {criterion!r}.")
    for name in ("weights_init", "means_init", "precisions_init", "n_components", "covariance_type", "family"):
        if name in gaussian_mixture_params:
            raise TypeError(f"select_model takes no {name}: each candidate starts on its own.")
    ks, types = _candidates(n_components, covariance_types, family)
    common = dict(n_init=n_init, random_state=random_state, **gaussian_mixture_params)
    if isinstance(family, Family):
        estimators = {(k, types[0]): Mixture(family, k, **common) for k in ks}
    elif family == "gaussian":
        cls = estimator_for_family(family)
        estimators = {(k, t): cls(k, covariance_type=t, **common) for k in ks for t in types}
    else:
        cls = estimator_for_family(family)
        estimators = {(k, types[0]): cls(k, **common) for k in ks}
    template = next(iter(estimators.values()))
    keys = list(estimators)

    def candidate_done(i: int, restarts: list) -> None:
        ok = [r for r in restarts if r.error is None and r.params is not None]
        best = max(ok, key=lambda r: r.lower_bound) if ok else None
        callback({
            "n_components": keys[i][0], "covariance_type": keys[i][1],
            "n_iter": None if best is None else best.n_iter, "converged": best is not None and best.converged,
            "lower_bound": None if best is None else float(best.lower_bound),
        })

    scores = fit_models(
        list(estimators.values()), X, sample_weight=sample_weight, variable=variable,
        storage_options=storage_options, chunk_rows=chunk_rows, score=True, device=device,
        on_model_done=None if callback is None else candidate_done,
    )
    fitted = {key: est for key, est in estimators.items() if hasattr(est, "weights_")}
    n = next(iter(fitted.values())).training_data_["shape"][0] if fitted else 0
    family_name = template.make_family().name

    import xarray as xr

    shape = (len(ks), len(types))
    table = {name: np.full(shape, np.nan) for name in ("bic", "aic", "icl", "lower_bound", "log_likelihood")}
    n_params = np.zeros(shape, dtype=np.int64)
    converged = np.zeros(shape, dtype=bool)
    n_iter = np.zeros(shape, dtype=np.int64)
    for (key, est), score in zip(estimators.items(), scores):
        if score is None:
            continue  # every restart failed: the table says so
        i, j = ks.index(key[0]), types.index(key[1])
        p = est.n_parameters()
        # As GaussianMixture.bic: the mean log-likelihood times rows (with a prior, at the MAP
        # estimate, the log prior not added: mclust's BIC).
        loglik = score.log_likelihood * n
        criteria = information_criteria(score.log_likelihood, n, p)
        table["bic"][i, j] = criteria["bic"]
        table["aic"][i, j] = criteria["aic"]
        table["icl"][i, j] = criteria["bic"] - 2 * score.entropy * n / score.wsum
        table["lower_bound"][i, j] = est.lower_bound_
        table["log_likelihood"][i, j] = loglik
        n_params[i, j] = p
        converged[i, j] = est.converged_
        n_iter[i, j] = est.n_iter_
    dims = ("n_components", "covariance_type")
    criteria = xr.Dataset(
        {
            **{name: (dims, values) for name, values in table.items()},
            # mclust's sign (2 log L - p log n: higher is better) beside scikit-learn's.
            "bic_mclust": (dims, -table["bic"]),
            "icl_mclust": (dims, -table["icl"]),
            "n_parameters": (dims, n_params),
            "converged": (dims, converged),
            "n_iter": (dims, n_iter),
        },
        coords={"n_components": ks, "covariance_type": types},
        attrs={"criterion": criterion, "n_samples": n, "sign": "lower is better (scikit-learn)",
               "family": family_name},
    )
    if family != "gaussian":
        criteria = criteria.isel(covariance_type=0, drop=True)
    values = table[criterion]
    if not np.isfinite(values).any():
        raise ValueError(
            "every candidate failed numerically; lower n_components (or, for Gaussians, raise reg_covar)."
        )
    i, j = np.unravel_index(np.nanargmin(values), values.shape)
    best_key = (ks[i], types[j])
    unconverged = int((~converged & np.isfinite(values)).sum())
    if unconverged:
        from sklearn.exceptions import ConvergenceWarning

        warnings.warn(
            f"{unconverged} candidate(s) did not converge in max_iter={template.max_iter}; "
            "see result.criteria.converged.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return SelectionResult(
        criteria=criteria,
        best_estimator_=fitted[best_key],
        best_params_=(
            {"n_components": best_key[0], "covariance_type": best_key[1]} if family == "gaussian"
            else {"n_components": best_key[0]}
        ),
        estimators_=fitted,
        criterion=criterion,
    )
