"""The estimators of the Bernoulli, Poisson and categorical families (see :mod:`dask_em.discrete`)."""

from __future__ import annotations

import functools
from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval

from ._base import BaseMixture
from ._validation import is_int
from .discrete import BernoulliFamily, CategoricalFamily, PoissonFamily
from .family import Family

_COMMON_DOC = """
    n_components : int, default=1
    pseudo_count : float, default=1e-3
        {prior}
    tol, max_iter, n_init, init_params, random_state, warm_start, verbose, verbose_interval, init_sample_size, split_every, init_strategy, n_short, short_iter, prune_margin, accelerate, stopping, stepwise_passes, missing
        As for :class:`dask_em.GaussianMixture`. The starts (k-means and the
        others) run on {space} of a uniform sample of rows.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    {attrs}
    converged_, n_iter_, lower_bound_, lower_bounds_, restarts_, n_components_, n_features_in_
        As for :class:`dask_em.GaussianMixture`.
"""


def binarize_block(x, threshold: float, block_info=None):
    """One block of rows as ``x > threshold`` (bool), refusing NaN and inf (which no threshold places)."""
    x = np.asarray(x)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        from .engine import row_range

        start, stop, index = row_range(block_info, x.shape[0])
        row = int(np.flatnonzero(~np.isfinite(x).all(1))[0])
        raise ValueError(
            f"X contains NaN or infinity in rows {start}-{stop - 1} (block {index}); the first is row "
            f"{start + row}. binarize={threshold} places finite values only: remove or impute those rows."
        )
    return x > threshold


def _integer_input_tags(tags):
    # scikit-learn has no tag for counts or codes; "categorical" is the one under which its
    # checks pass non-negative integers (np.round(X - X.min()).astype(np.int32)), and
    # "positive_only" says negative values are refused ("Negative values in data").
    tags.input_tags.categorical = True
    tags.input_tags.positive_only = True
    return tags


class _DiscreteMixture(BaseMixture):
    _family_class: type = Family
    _parameter_constraints: dict = {
        **BaseMixture._parameter_constraints,
        "pseudo_count": [Interval(Real, 0.0, None, closed="left")],
    }

    def __init__(
        self,
        n_components: int = 1,
        *,
        pseudo_count: float = 1e-3,
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
        super().__init__(
            n_components, tol=tol, max_iter=max_iter, n_init=n_init, init_params=init_params,
            random_state=random_state, init_sample_size=init_sample_size, split_every=split_every,
            warm_start=warm_start, verbose=verbose, verbose_interval=verbose_interval, init_strategy=init_strategy, n_short=n_short, short_iter=short_iter,
            prune_margin=prune_margin, missing=missing, accelerate=accelerate, stopping=stopping, stepwise_passes=stepwise_passes,
        )
        self.pseudo_count = pseudo_count

    def make_family(self) -> Family:
        return self._family_class(pseudo_count=float(self.pseudo_count), missing=self.missing)

    def _describe(self) -> str:
        return self.make_family().name


class BernoulliMixture(_DiscreteMixture):
    __doc__ = (
        "Mixture of independent Bernoulli features (binary 0/1 data), fitted out-of-core.\n\n"
        "    ``X`` holds 0 and 1, stored as bool, any integer or float type; it is read as\n"
        "    stored. Any other value stops the fit, naming its chunk's rows, unless\n"
        "    ``binarize`` is set.\n\n"
        "    Parameters\n    ----------\n"
        "    binarize : float or None, default=None\n"
        "        As scikit-learn's ``BernoulliNB``: when a float, every value is read as\n"
        "        ``x > binarize`` (chunk by chunk, in fit and inference; NaN and inf are refused).\n"
        "        None: X must hold 0 and 1." + _COMMON_DOC.format(
            prior="Beta(1 + a, 1 + a) prior: keeps every probability off 0 and 1.",
            space="the 0/1 rows",
            attrs="probabilities_ : ndarray of shape (n_components, n_features)\n"
                  "        P(x_j = 1) in each component.",
        )
        + """
    Examples
    --------
    >>> import numpy as np
    >>> from dask_em import BernoulliMixture
    >>> rng = np.random.default_rng(0)
    >>> p = np.where(np.arange(1000)[:, None] < 500, 0.9, 0.1)   # two groups of rows
    >>> X = (rng.random((1000, 6)) < p).astype("uint8")
    >>> bm = BernoulliMixture(n_components=2, random_state=0).fit(X)
    >>> np.sort(bm.probabilities_[:, 0]).round(1)
    array([0.1, 0.9])
"""
    )
    _family_class = BernoulliFamily
    _parameter_constraints: dict = {
        **_DiscreteMixture._parameter_constraints,
        "binarize": [Interval(Real, None, None, closed="neither"), None],
    }

    def __init__(
        self,
        n_components: int = 1,
        *,
        binarize: float | None = None,
        pseudo_count: float = 1e-3,
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
        missing: str = "error",
        accelerate: str | None = None,
        stopping: str = "auto",
        stepwise_passes: int = 0,
    ):
        super().__init__(
            n_components, pseudo_count=pseudo_count, tol=tol, max_iter=max_iter, n_init=n_init,
            init_params=init_params, random_state=random_state, init_sample_size=init_sample_size,
            split_every=split_every, warm_start=warm_start, verbose=verbose, verbose_interval=verbose_interval, init_strategy=init_strategy, n_short=n_short,
            short_iter=short_iter, prune_margin=prune_margin, missing=missing, accelerate=accelerate,
            stopping=stopping, stepwise_passes=stepwise_passes,
        )
        self.binarize = binarize

    def _input_transform(self):
        if self.binarize is None:
            return None
        return functools.partial(binarize_block, threshold=float(self.binarize))

    def expected_shapes(self, k, d, values):
        return {"probabilities": (k, d)}


class PoissonMixture(_DiscreteMixture):
    __doc__ = (
        "Mixture of independent Poisson counts, fitted out-of-core.\n\n"
        "    ``X`` holds non-negative integer counts, stored as any integer type (or\n"
        "    float holding whole numbers); it is read as stored. A negative or fractional\n"
        "    value stops the fit, naming its chunk's rows.\n\n"
        "    Parameters\n    ----------" + _COMMON_DOC.format(
            prior="Added to every component's count sums (a Gamma(1 + a, 0) prior): keeps rates positive.",
            space="the counts",
            attrs="rates_ : ndarray of shape (n_components, n_features)\n"
                  "        The Poisson rate of each feature in each component.",
        )
    )
    _family_class = PoissonFamily

    def __sklearn_tags__(self):
        return _integer_input_tags(super().__sklearn_tags__())

    def expected_shapes(self, k, d, values):
        return {"rates": (k, d)}


class CategoricalMixture(_DiscreteMixture):
    __doc__ = (
        "Mixture of independent categorical features (integer codes), fitted out-of-core.\n\n"
        "    ``X`` holds codes ``0 .. n_categories[j] - 1`` in feature j, stored as an\n"
        "    integer type and read as stored. A code out of range stops the fit, naming\n"
        "    its chunk's rows.\n\n"
        "    Parameters\n    ----------\n"
        "    n_categories : int or sequence of int\n"
        "        Categories of every feature (one int) or of each feature. Required:\n"
        "        for codes in a dask array, ``(X.max(axis=0) + 1).compute()`` gives it."
        + _COMMON_DOC.format(
            prior="Symmetric Dirichlet(1 + a) prior: keeps every category's probability positive.",
            space="one-hot encodings",
            attrs="probabilities_ : list of ndarray, one of shape (n_components, n_categories[j]) per feature\n"
                  "        Category probabilities of each feature in each component.",
        )
    )
    _family_class = CategoricalFamily
    _parameter_constraints: dict = {
        **_DiscreteMixture._parameter_constraints,
        "n_categories": [Interval(Integral, 1, None, closed="left"), "array-like", None],  # None: refused, with how
    }

    def __init__(
        self,
        n_components: int = 1,
        *,
        n_categories=None,
        pseudo_count: float = 1e-3,
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
        super().__init__(
            n_components, pseudo_count=pseudo_count, tol=tol, max_iter=max_iter, n_init=n_init,
            init_params=init_params, random_state=random_state, init_sample_size=init_sample_size,
            split_every=split_every, warm_start=warm_start, verbose=verbose, verbose_interval=verbose_interval, init_strategy=init_strategy, n_short=n_short,
            short_iter=short_iter, prune_margin=prune_margin, missing=missing, accelerate=accelerate, stopping=stopping, stepwise_passes=stepwise_passes,
        )
        self.n_categories = n_categories

    def __sklearn_tags__(self):
        return _integer_input_tags(super().__sklearn_tags__())

    def _check_family_params(self) -> None:
        c = self.n_categories
        fix = "Pass an int >= 2 for all features or one per feature, e.g. n_categories=(X.max(axis=0) + 1)."
        if c is None:
            raise ValueError(f"n_categories is required for CategoricalMixture; received None. {fix}")
        values = [c] if is_int(c) else (list(c) if isinstance(c, (list, tuple, np.ndarray)) else None)
        if not values or not all(is_int(v) and v >= 1 for v in values):
            raise ValueError(f"n_categories must be an int >= 1 or a sequence of them; received {c!r}. {fix}")

    def make_family(self) -> Family:
        c = self.n_categories
        c = int(c) if is_int(c) else tuple(int(v) for v in c)
        return CategoricalFamily(n_categories=c, pseudo_count=float(self.pseudo_count), missing=self.missing)

    def expected_shapes(self, k, d, values):
        return {"probabilities": (k, int(self.make_family().sizes(d).sum()))}
