"""The model-based hierarchical start against a direct numpy reference and mclust's hc.

mclust's merges were recorded once by tests/data/record_mclust.py (Rscript, mclust 6.0.0)
into tests/data/mclust_fixture.json: ``hclass(hc(X, modelName, use), G)`` for every G.
"""

import json
import math
import pathlib

import numpy as np
import pytest

from dask_em import GaussianMixture
from dask_em.starts import start_responsibilities
from dask_em.hierarchical import (
    cut_tree,
    hc_alpha,
    hc_merges,
    hc_partition,
    hc_responsibilities,
    hc_transform,
)

FIXTURE = json.loads((pathlib.Path(__file__).parent / "data" / "mclust_fixture.json").read_text())


def _term(rows: np.ndarray, model: str, alpha: float) -> float:
    """The criterion of one cluster, written from the formulas (Fraley 1998; mclust's hc)."""
    n, p = rows.shape
    resid = rows - rows.mean(0)
    w = resid.T @ resid
    tr = float(np.trace(w))
    if model == "EII":
        return tr
    if model == "VII":
        return n * math.log((tr + alpha) / n)
    if model == "VVI":
        return n / p * float(np.log((np.diag(w) + alpha / p) / n).sum())
    if n <= p or n == 2:
        return n * math.log((tr + alpha) / n)
    return n * math.log(max(np.linalg.det(w / n), 0.0) + (tr + alpha) / n)


def brute_force_merges(x: np.ndarray, model: str) -> np.ndarray:
    """Every step: the criterion of every pair recomputed from the member rows."""
    alpha = hc_alpha(x)
    clusters = [[i] for i in range(len(x))]
    pairs = []
    while len(clusters) > 1:
        best = None
        for i in range(len(clusters)):
            for j in range(i + 1, len(clusters)):
                a, b = clusters[i], clusters[j]
                cost = _term(x[a + b], model, alpha) - _term(x[a], model, alpha) - _term(x[b], model, alpha)
                if best is None or cost < best[0]:
                    best = (cost, i, j)
        _, i, j = best
        merged = sorted(clusters[i] + clusters[j])
        pairs.append(sorted((clusters[i][0], clusters[j][0])))
        clusters = [c for t, c in enumerate(clusters) if t not in (i, j)] + [merged]
        clusters.sort()
    return np.array(pairs)


def canonical(labels) -> np.ndarray:
    _, first, inverse = np.unique(np.asarray(labels), return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]


@pytest.mark.parametrize("model", ["VVV", "VVI", "VII", "EII"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merges_equal_a_direct_numpy_reference(model, seed):
    rng = np.random.default_rng(seed)
    x = np.vstack([rng.normal(loc, scale, size=(8, 3)) for loc, scale in ((0, 1), (4, 0.5), (-3, 2))])
    pairs, costs = hc_merges(x, model)
    np.testing.assert_array_equal(pairs, brute_force_merges(x, model))
    assert costs.shape == (len(x) - 1,)


def test_merges_equal_the_reference_on_the_mclust_fixture_data():
    x = np.array(FIXTURE["x"])
    np.testing.assert_array_equal(hc_merges(x, "VVV")[0], brute_force_merges(x, "VVV"))


@pytest.mark.parametrize("key, model, use", [
    ("VII_VARS", "VII", "VARS"),
    ("EII_VARS", "EII", "VARS"),
    ("VVV_SVD", "VVV", "SVD"),
])
def test_partitions_equal_mclust_hc_at_every_level(key, model, use):
    x = np.array(FIXTURE["x"])
    n = len(x)
    pairs, _ = hc_merges(hc_transform(x, use), model)
    for g in range(1, n):
        expected = canonical(FIXTURE["hc"][key][g - 1])
        np.testing.assert_array_equal(cut_tree(pairs, n, g), expected, err_msg=f"G={g}")


def test_cut_tree_numbers_clusters_by_first_row_and_checks_its_range():
    pairs = np.array([[0, 2], [1, 3], [0, 1]])
    np.testing.assert_array_equal(cut_tree(pairs, 4, 4), [0, 1, 2, 3])
    np.testing.assert_array_equal(cut_tree(pairs, 4, 2), [0, 1, 0, 1])
    np.testing.assert_array_equal(cut_tree(pairs, 4, 1), [0, 0, 0, 0])
    with pytest.raises(ValueError, match="cannot cut 4 rows into 0 clusters"):
        cut_tree(pairs, 4, 0)


def test_unknown_model_and_transform_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="model='XYZ' is not a hierarchical model; expected one of"):
        hc_merges(np.zeros((3, 2)), "XYZ")
    with pytest.raises(ValueError, match="use='PCA' is not a transformation"):
        hc_transform(np.zeros((3, 2)), "PCA")


def test_separated_blobs_are_recovered_from_a_subsample():
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [10, 0], [0, 10], [10, 10]])
    truth = rng.integers(0, 4, size=3000)
    x = centers[truth] + rng.normal(size=(3000, 2))
    resp = hc_responsibilities(x, 4, max_rows=500, rng=1, others="posterior")
    np.testing.assert_allclose(resp.sum(1), 1.0)
    labels = resp.argmax(1)
    # Every cluster is one true blob: the contingency table is a permutation.
    table = np.zeros((4, 4), dtype=int)
    np.add.at(table, (truth, labels), 1)
    assert (table > 0).sum() == 4
    np.testing.assert_array_equal(hc_partition(x[:400], 4), canonical(truth[:400]))


def test_a_subset_start_is_mclusts_tree_on_the_subsets_own_transformation():
    # Mclust with more rows than its subset runs hc(data[subset, ]): the SVD transformation
    # of the drawn rows themselves, whose tree (checked against mclust's hc on the fixture
    # above) is cut at K; the start's M-step then sees those rows only.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 3)) * [1.0, 4.0, 0.5] + rng.integers(0, 3, size=(300, 1)) * 2.0
    resp = hc_responsibilities(x, 4, max_rows=120, rng=7)
    rows = np.sort(np.random.default_rng(7).choice(300, size=120, replace=False))
    assert resp.sum() == 120 and set(np.unique(resp)) == {0.0, 1.0}
    np.testing.assert_array_equal(np.flatnonzero(resp.sum(1)), rows)
    np.testing.assert_array_equal(resp[rows].argmax(1), hc_partition(x[rows], 4))
    # The tree on those rows of the all-row transformation is another partition here.
    z_all = hc_transform(x)[rows]
    assert not np.array_equal(cut_tree(hc_merges(z_all, "VVV", min_clusters=4)[0], 120, 4), resp[rows].argmax(1))
    with pytest.raises(ValueError, match="others='all'; expected 'subset'"):
        hc_responsibilities(x, 4, max_rows=120, others="all")


def test_start_responsibilities_and_the_estimator_accept_hierarchical():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(c, 0.3, size=(60, 2)) for c in ((0, 0), (3, 0), (0, 3))])
    resp = start_responsibilities(x - x.mean(0), 3, "hierarchical", 0)
    assert set(np.unique(resp)) == {0.0, 1.0}
    assert sorted(resp.sum(0)) == [60, 60, 60]
    gm = GaussianMixture(3, init_params="hierarchical", random_state=0).fit(x)
    assert gm.converged_
    np.testing.assert_allclose(np.sort(gm.weights_), [1 / 3] * 3, atol=1e-6)


# ---------------------------------------------------------------------------
# The discrete families' criteria (Family.merge_criterion) against a brute-force greedy merge
# ---------------------------------------------------------------------------


def _neg_loglik(rows: np.ndarray, family: str, n_categories: int = 0) -> float:
    """Minus the maximised log-likelihood of one cluster's rows, from scipy's distributions."""
    from scipy import stats

    if family == "bernoulli":
        return -float(stats.bernoulli.logpmf(rows, rows.mean(0)).sum())
    if family == "poisson":
        return -float(stats.poisson.logpmf(rows, rows.mean(0)).sum())
    total = 0.0
    for column in rows.T:  # categorical codes: the multinomial of one draw per row and feature
        p = np.bincount(column, minlength=n_categories) / len(column)
        total -= float(np.log(p[column]).sum())
    return total


def _discrete_data(family: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if family == "bernoulli":
        p = np.array([[0.9, 0.8, 0.1, 0.2, 0.5, 0.3], [0.1, 0.2, 0.9, 0.7, 0.5, 0.6], [0.5, 0.9, 0.9, 0.1, 0.1, 0.9]])
        return (rng.random((18, 6)) < np.repeat(p, 6, axis=0)).astype(np.uint8)
    if family == "poisson":
        rates = np.array([[1.0, 8.0, 3.0], [6.0, 1.0, 0.5], [12.0, 4.0, 9.0]])
        return rng.poisson(np.repeat(rates, 6, axis=0))
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
    return np.stack([np.stack([rng.choice(3, p=p[(c + j) % 3]) for j in range(4)]) for c in np.repeat([0, 1, 2], 6)])


def _family(name: str):
    from dask_em.discrete import BernoulliFamily, CategoricalFamily, PoissonFamily

    return {"bernoulli": BernoulliFamily(), "poisson": PoissonFamily(), "categorical": CategoricalFamily(3)}[name]


@pytest.mark.parametrize("family", ["bernoulli", "categorical", "poisson"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_discrete_merges_equal_the_brute_force_greedy_merge_of_the_criterion(family, seed):
    """Every step: the cost of every pair recomputed from its member rows by scipy's log-pmfs.

    Discrete rows tie often (two singletons one bit apart cost 2 log 2, whatever bits), and the
    two computations round differently, so the reference takes every pair within 1e-9 of its
    minimum as tied: the pair merged must be the first of those in row order.
    """
    from dask_em.hierarchical import term_merges

    x = _discrete_data(family, seed)
    fam = _family(family)
    features = fam.init_features(x, None)
    pairs, costs = term_merges(features, fam.merge_criterion())
    clusters = [[i] for i in range(len(x))]
    unique = 0
    for step, (a, b) in enumerate(pairs):
        candidates = {}
        for i in range(len(clusters)):
            for j in range(i + 1, len(clusters)):
                ci, cj = clusters[i], clusters[j]
                candidates[(ci[0], cj[0])] = (
                    _neg_loglik(x[ci + cj], family, 3) - _neg_loglik(x[ci], family, 3) - _neg_loglik(x[cj], family, 3)
                )
        least = min(candidates.values())
        near = {pair for pair, cost in candidates.items() if cost <= least + 1e-9 * max(1.0, abs(least))}
        assert (a, b) in near, (step, (a, b), sorted(near))
        assert costs[step] == pytest.approx(least, rel=1e-9, abs=1e-9)
        assert costs[step] >= -1e-9  # merging never raises the likelihood at the maximum
        if len(near) == 1:
            unique += 1
        assert (a, b) == min(near)  # ties go to the first pair in row order
        ia = next(t for t, c in enumerate(clusters) if c[0] == a)
        ib = next(t for t, c in enumerate(clusters) if c[0] == b)
        merged = sorted(clusters[ia] + clusters[ib])
        clusters = sorted([c for t, c in enumerate(clusters) if t not in (ia, ib)] + [merged])
    assert len(clusters) == 1
    assert unique >= 5, unique  # the data leave most late merges unambiguous


@pytest.mark.parametrize("family", ["bernoulli", "categorical", "poisson"])
def test_discrete_hierarchical_start_recovers_separated_clusters(family):
    from dask_em import BernoulliMixture, CategoricalMixture, PoissonMixture
    from dask_em.hierarchical import term_responsibilities

    rng = np.random.default_rng(3)
    truth = np.repeat([0, 1, 2], 80)
    if family == "bernoulli":
        p = np.array([[0.95] * 4 + [0.05] * 8, [0.05] * 4 + [0.95] * 4 + [0.05] * 4, [0.05] * 8 + [0.95] * 4])
        x = (rng.random((240, 12)) < p[truth]).astype(np.uint8)
        estimator = BernoulliMixture
    elif family == "poisson":
        x = rng.poisson(np.array([[1.0, 20.0], [20.0, 1.0], [20.0, 20.0]])[truth])
        estimator = PoissonMixture
    else:
        x = np.where(rng.random((240, 6)) < 0.9, truth[:, None], rng.integers(0, 3, (240, 6)))
        estimator = lambda k, **kw: CategoricalMixture(k, n_categories=3, **kw)  # noqa: E731
    fam = _family(family)
    resp = term_responsibilities(fam.init_features(x, None), 3, fam.merge_criterion(), max_rows=120, rng=0)
    clustered = resp.sum(1) == 1
    assert clustered.sum() == 120 and not resp[~clustered].any()  # the others wait for EM's first E-step
    table = np.zeros((3, 3), dtype=int)
    np.add.at(table, (truth[clustered], resp[clustered].argmax(1)), 1)
    assert (table > 0).sum() == 3  # each cluster is one true group
    fitted = estimator(3, init_params="hierarchical", random_state=0).fit(x)
    assert fitted.restarts_[0]["start"] == "hierarchical"
    labels = fitted.predict(x)
    assert len({(t, l) for t, l in zip(truth, labels)}) == 3


def test_the_gaussian_family_keeps_the_vvv_tree():
    from dask_em.family import Family
    from dask_em.gaussian import GaussianFamily

    assert Family().merge_criterion() is None
    assert GaussianFamily.merge_criterion is Family.merge_criterion
