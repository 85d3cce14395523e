"""``Mixture``: a mixture of any family that follows the protocol of :mod:`dask_em.family`."""

from __future__ import annotations

from ._base import BaseMixture
from .family import Family


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
    n_components, tol, max_iter, n_init, init_params, random_state, warm_start, verbose, verbose_interval, init_sample_size, split_every, init_strategy, n_short, short_iter, prune_margin, accelerate, stopping, stepwise_passes, missing
        As for :class:`GaussianMixture` (``missing="marginalize"`` needs a family that
        supports it).

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    <name>_ : the family's fitted parameters (``Family.to_public``)
    converged_, n_iter_, lower_bound_, lower_bounds_, restarts_, n_components_, n_features_in_
        As for :class:`GaussianMixture`.
    """

    _parameter_constraints: dict = {**BaseMixture._parameter_constraints, "family": [Family]}

    def __init__(
        self,
        family: Family | None = None,
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
        super().__init__(
            n_components, tol=tol, max_iter=max_iter, n_init=n_init, init_params=init_params,
            random_state=random_state, init_sample_size=init_sample_size, split_every=split_every,
            warm_start=warm_start, verbose=verbose, verbose_interval=verbose_interval, init_strategy=init_strategy, n_short=n_short, short_iter=short_iter,
            prune_margin=prune_margin, missing=missing, accelerate=accelerate, stopping=stopping, stepwise_passes=stepwise_passes,
        )
        self.family = family

    def make_family(self) -> Family:
        return self.family.with_missing(self.missing)

    def _check_family_params(self) -> None:
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
