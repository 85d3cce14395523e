"""scikit-learn habits: pandas and array-like inputs, feature names, NaN/inf in every inference
method, model selection tools, clone / pickle, set_params after fit."""

import pickle
import warnings

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import dask_em

from conftest import mixture, assert_close

INFERENCE = ["predict", "predict_proba", "score_samples", "score", "bic", "aic"]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="the best restart did not converge")
        yield


def frame(rng, n=300):
    X, labels, _ = mixture(rng, n=n, d=3, k=2)
    return pd.DataFrame(X, columns=["a", "b", "c"]), labels


# -- pandas and array-likes ---------------------------------------------------------------


def test_pandas_dataframe_in_feature_names_and_numpy_out(rng):
    df, _ = frame(rng)
    gm = dask_em.GaussianMixture(2, random_state=0).fit(df)
    np.testing.assert_array_equal(gm.feature_names_in_, ["a", "b", "c"])
    ref = dask_em.GaussianMixture(2, random_state=0).fit(df.to_numpy())
    np.testing.assert_array_equal(gm.means_, ref.means_)  # the same fit, bit for bit
    labels = gm.predict(df)
    assert isinstance(labels, np.ndarray) and labels.shape == (300,)
    np.testing.assert_array_equal(labels, ref.predict(df.to_numpy()))
    assert isinstance(gm.score(df), float)


def test_feature_name_mismatch_warns_and_errors_as_scikit_learn(rng):
    df, _ = frame(rng)
    gm = dask_em.GaussianMixture(2, random_state=0).fit(df)
    with pytest.warns(UserWarning, match="X does not have valid feature names, but GaussianMixture was fitted with feature names"):
        gm.predict(df.to_numpy())
    with pytest.raises(ValueError, match="The feature names should match those that were passed during fit"):
        gm.predict(df[["c", "b", "a"]])
    plain = dask_em.GaussianMixture(2, random_state=0).fit(df.to_numpy())
    assert not hasattr(plain, "feature_names_in_")
    with pytest.warns(UserWarning, match="X has feature names, but GaussianMixture was fitted without feature names"):
        plain.predict(df)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gm.predict(df)  # the same names: no warning


def test_a_frame_missing_columns_is_told_which_as_by_scikit_learn(rng):
    df, _ = frame(rng)
    gm = dask_em.GaussianMixture(2, random_state=0).fit(df)
    with pytest.raises(ValueError, match="Feature names seen at fit time, yet now missing:\n- c\n"):
        gm.predict(df[["a", "b"]])


def test_later_partial_fit_batches_keep_the_first_batchs_names(rng):
    df, _ = frame(rng)
    gm = dask_em.GaussianMixture(2, random_state=0).partial_fit(df)
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        gm.partial_fit(df.to_numpy())
    assert list(gm.feature_names_in_) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="Feature names must be in the same order as they were in fit"):
        gm.partial_fit(df[["c", "b", "a"]])


def test_refit_without_names_forgets_them(rng):
    df, _ = frame(rng)
    gm = dask_em.GaussianMixture(2, random_state=0).fit(df).fit(df.to_numpy())
    assert not hasattr(gm, "feature_names_in_")


@pytest.mark.parametrize("kind", ["list", "tuple-of-lists", "series", "dask-series"])
def test_sample_weight_as_series_or_list(kind, rng):
    df, _ = frame(rng, n=200)
    w = rng.integers(1, 4, 200).astype(float)
    ref = dask_em.GaussianMixture(2, random_state=0).fit(df.to_numpy(), sample_weight=w)
    X = df
    weights = {"list": list(w), "tuple-of-lists": tuple(w), "series": pd.Series(w)}.get(kind)
    if kind == "dask-series":
        dd = pytest.importorskip("dask.dataframe")
        X = dd.from_pandas(df, npartitions=2)
        weights = dd.from_pandas(pd.Series(w), npartitions=2)
    gm = dask_em.GaussianMixture(2, random_state=0).fit(X, sample_weight=weights)
    assert_close(gm.means_, ref.means_, rtol=1e-9)


def test_array_likes(rng):
    from sklearn.utils.estimator_checks import _NotAnArray

    X, _, _ = mixture(rng, n=120, d=2, k=2)
    ref = dask_em.GaussianMixture(2, random_state=0).fit(X)
    for like in (X.tolist(), [tuple(r) for r in X], _NotAnArray(X), X.astype(object), np.asfortranarray(X)):
        gm = dask_em.GaussianMixture(2, random_state=0).fit(like)
        np.testing.assert_array_equal(gm.means_, ref.means_)
        np.testing.assert_array_equal(gm.predict(like), ref.predict(X))


def test_bad_array_likes_say_what_and_how(rng):
    from scipy import sparse

    with pytest.raises(ValueError, match=r"0 feature\(s\) \(shape=\(12, 0\)\) while a minimum of 1 is required"):
        dask_em.GaussianMixture(1).fit(np.empty((12, 0)))
    with pytest.raises(ValueError, match=r"X.reshape\(-1, 1\) for a single feature. Reshape your data"):
        dask_em.GaussianMixture(1).fit([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="Complex data not supported"):
        dask_em.GaussianMixture(1).fit(np.ones((4, 2), dtype=complex))
    with pytest.raises(TypeError, match="argument must be a string or a real number"):
        dask_em.GaussianMixture(1).fit(np.array([[{"a": 1}, 1.0]], dtype=object))
    with pytest.raises(TypeError, match="dense data is required"):
        dask_em.GaussianMixture(1).fit(sparse.csr_matrix(np.ones((4, 2))))
    # Two rows at least, whatever n_components, as scikit-learn's mixtures (its sentence).
    for k in (1, 2):
        with pytest.raises(ValueError, match=r"^Found array with 1 sample\(s\) \(shape=\(1, 2\)\) while a minimum of 2 "
                                             r"is required by GaussianMixture"):
            dask_em.GaussianMixture(k).fit([[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"Expected n_samples >= n_components, but X has 2 rows and n_components=3"):
        dask_em.GaussianMixture(3).fit([[1.0, 2.0], [3.0, 4.0]])


def test_dask_dataframe(rng):
    dd = pytest.importorskip("dask.dataframe")
    df, _ = frame(rng)
    ddf = dd.from_pandas(df, npartitions=3)
    gm = dask_em.GaussianMixture(2, random_state=0).fit(ddf)
    np.testing.assert_array_equal(gm.feature_names_in_, ["a", "b", "c"])
    ref = dask_em.GaussianMixture(2, random_state=0).fit(df)
    assert_close(gm.means_, ref.means_, rtol=1e-9)
    labels = gm.predict(ddf)
    assert isinstance(labels, da.Array)
    np.testing.assert_array_equal(labels.compute(), ref.predict(df))


def test_dask_dataframe_without_the_extra_names_the_install(monkeypatch, rng):
    import sys

    class FakeFrame:  # stands for a dask DataFrame where dask.dataframe cannot be imported
        columns = ["a"]
        npartitions = 1

    FakeFrame.__module__ = "dask.dataframe.dask_expr._collection"
    monkeypatch.setitem(sys.modules, "dask.dataframe", None)
    with pytest.raises(ImportError, match=r"pip install 'dask\[dataframe\]'"):
        dask_em.GaussianMixture(1).fit(FakeFrame())


# -- inference checks what fit checks -------------------------------------------------------


@pytest.mark.parametrize("method", INFERENCE)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_inference_named_by_row_in_memory(method, value, rng):
    X, _, _ = mixture(rng, n=200, d=3, k=2)
    gm = dask_em.GaussianMixture(2, random_state=0).fit(X)
    bad = X.copy()
    bad[37, 1] = value
    with pytest.raises(ValueError, match=r"X contains NaN or infinity in rows 0-199 \(block 0\); the first is row 37"):
        getattr(gm, method)(bad)


@pytest.mark.parametrize("method", INFERENCE)
def test_nan_in_inference_named_by_chunk_rows_for_dask(method, rng):
    X, _, _ = mixture(rng, n=400, d=3, k=2)
    gm = dask_em.GaussianMixture(2, random_state=0).fit(X)
    bad = X.copy()
    bad[250, 0] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or infinity in rows 200-299 \(block 2\); the first is row 250"):
        dask.compute(getattr(gm, method)(da.from_array(bad, chunks=(100, -1))))  # lazy but for score, bic, aic


@pytest.mark.parametrize("name", ["bernoulli", "poisson"])
@pytest.mark.parametrize("method", INFERENCE)
def test_discrete_families_check_values_in_inference(name, method, rng):
    X = rng.integers(0, 2, size=(200, 4)).astype(float)
    est = {"bernoulli": dask_em.BernoulliMixture, "poisson": dask_em.PoissonMixture}[name](2, random_state=0).fit(X)
    bad = X.copy()
    bad[11, 2] = np.nan
    with pytest.raises(ValueError, match=r"X contains NaN or infinity.*the first is row 11"):
        dask.compute(getattr(est, method)(da.from_array(bad, chunks=(50, -1))))
    bad[11, 2] = -1.0
    with pytest.raises(ValueError, match=r"Negative values in data.*the first is row 11"):
        getattr(est, method)(bad)


@pytest.mark.parametrize("method", INFERENCE)
def test_inference_checks_feature_count_and_dtype(method, rng):
    X, _, _ = mixture(rng, n=100, d=3, k=2)
    gm = dask_em.GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="X has 2 features, but GaussianMixture is expecting 3 features as input"):
        getattr(gm, method)(X[:, :2])
    with pytest.raises(TypeError, match="must hold real numbers .* dtype <U"):
        getattr(gm, method)(X.astype(str))
    codes = rng.integers(0, 3, size=(100, 2))
    cm = dask_em.CategoricalMixture(2, n_categories=3, random_state=0).fit(codes)
    with pytest.raises(TypeError, match="codes must be stored as integers; received dtype float64"):
        getattr(cm, method)(codes.astype(float))
    with pytest.raises(ValueError, match=r"feature 1 has 3 categories \(codes 0..2\), but X holds code 7"):
        getattr(cm, method)(np.where(np.arange(100)[:, None] == 5, [0, 7], codes))


# -- model selection tools, clone, pickle, set_params -----------------------------------------


def test_grid_search_on_k_with_the_default_scorer(rng):
    X, _, _ = mixture(rng, n=600, d=2, k=3, spread=8.0)
    search = GridSearchCV(dask_em.GaussianMixture(random_state=0), {"n_components": [1, 2, 3, 4]}, cv=3)
    search.fit(X)
    ref = GridSearchCV(dask_em.GaussianMixture(random_state=0), {"n_components": [1, 2, 3, 4]}, cv=3,
                       scoring=lambda est, X_, y=None: est.score(X_))
    ref.fit(X)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"])
    assert search.best_params_["n_components"] >= 3  # three clusters, well apart: one component is not enough
    assert search.cv_results_["mean_test_score"][0] < search.cv_results_["mean_test_score"][2]


def test_cross_val_score_and_pipeline_with_dask_input(rng):
    X, _, _ = mixture(rng, n=300, d=2, k=2)
    Xd = da.from_array(X, chunks=(100, -1))
    scores = cross_val_score(dask_em.GaussianMixture(2, random_state=0), X, cv=3)
    assert scores.shape == (3,) and np.isfinite(scores).all()
    gm = dask_em.GaussianMixture(2, random_state=0).fit(Xd)
    ref = dask_em.GaussianMixture(2, random_state=0).fit(X, chunk_rows=100)
    assert_close(gm.score(Xd), ref.score(X), rtol=1e-12)
    pipe = make_pipeline(StandardScaler(), dask_em.GaussianMixture(2, random_state=0)).fit(X)
    np.testing.assert_array_equal(pipe.predict(X), pipe[-1].predict(StandardScaler().fit_transform(X)))


FAMILIES = {
    "gaussian": lambda rng: (dask_em.GaussianMixture(2, random_state=0), rng.normal(size=(300, 3))),
    "bernoulli": lambda rng: (dask_em.BernoulliMixture(2, random_state=0), rng.integers(0, 2, (300, 5)).astype(np.uint8)),
    "poisson": lambda rng: (dask_em.PoissonMixture(2, random_state=0), rng.poisson(3.0, (300, 4))),
    "categorical": lambda rng: (dask_em.CategoricalMixture(2, n_categories=4, random_state=0), rng.integers(0, 4, (300, 3))),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_pickle_and_joblib_predict_bitwise_the_same(name, rng, tmp_path):
    import joblib

    est, X = FAMILIES[name](rng)
    est.fit(X)
    for restored in (pickle.loads(pickle.dumps(est)), joblib.load(joblib.dump(est, tmp_path / "m.joblib")[0])):
        np.testing.assert_array_equal(restored.predict(X), est.predict(X))
        np.testing.assert_array_equal(restored.predict_proba(X), est.predict_proba(X))
        np.testing.assert_array_equal(restored.score_samples(X), est.score_samples(X))
        Xd = da.from_array(X, chunks=(100, -1))
        np.testing.assert_array_equal(restored.score_samples(Xd).compute(), est.score_samples(Xd).compute())
    fresh = clone(est)
    assert not hasattr(fresh, "weights_") and fresh.get_params() == est.get_params()


def test_set_params_after_fit_changes_nothing_until_the_next_fit(rng):
    codes = rng.integers(0, 3, size=(200, 2))
    cm = dask_em.CategoricalMixture(2, n_categories=3, random_state=0).fit(codes)
    before = cm.score_samples(codes)
    cm.set_params(n_categories=5)  # would change every feature's offsets if inference re-read it
    np.testing.assert_array_equal(cm.score_samples(codes), before)
    assert cm.probabilities_[0].shape == (2, 3)
    cm.fit(codes)
    assert cm.probabilities_[0].shape == (2, 5)
    bm = dask_em.BernoulliMixture(2, binarize=0.5, random_state=0).fit(rng.uniform(size=(200, 3)))
    fitted = bm.predict_proba(np.full((1, 3), 0.7))
    bm.set_params(binarize=None)
    np.testing.assert_array_equal(bm.predict_proba(np.full((1, 3), 0.7)), fitted)


def test_binarize_reads_values_above_the_threshold_as_one(rng):
    X = rng.normal(size=(300, 4))
    a = dask_em.BernoulliMixture(2, binarize=0.0, random_state=0).fit(X)
    b = dask_em.BernoulliMixture(2, random_state=0).fit((X > 0).astype(np.uint8))
    assert_close(a.probabilities_, b.probabilities_, rtol=1e-12)
    assert_close(a.score_samples(X), b.score_samples((X > 0).astype(np.uint8)), rtol=1e-12)
    with pytest.raises(ValueError, match=r"'binarize' parameter of BernoulliMixture must be a float .* or None"):
        dask_em.BernoulliMixture(2, binarize="yes").fit(X)


READS: list[int] = []


def _counted_rows(x, block_info=None):
    READS.append(block_info[0]["chunk-location"][0])
    return x


@pytest.mark.parametrize("method", ["predict", "score"])
def test_nan_is_found_by_the_pass_that_computes_the_result(method, rng):
    """Every chunk is read once for clean data and at most once with a NaN: no extra checking pass."""
    X, _, _ = mixture(rng, n=800, d=3, k=2)
    gm = dask_em.GaussianMixture(2, random_state=0).fit(X)
    for nan_row in (None, 790):
        data = X.copy()
        if nan_row is not None:
            data[nan_row, 2] = np.nan
        counted = da.from_array(data, chunks=(100, -1)).map_blocks(_counted_rows, dtype=data.dtype)
        READS.clear()
        if nan_row is None:
            dask.compute(getattr(gm, method)(counted))
            assert sorted(READS) == list(range(8))
        else:
            with pytest.raises(ValueError, match=r"rows 700-799 \(block 7\); the first is row 790"):
                dask.compute(getattr(gm, method)(counted))
            assert len(READS) == len(set(READS)) <= 8


# -- fitted attributes set by hand ----------------------------------------------------------


def _sklearn_model(covariance_type, weights, means, covariances):
    """scikit-learn's GaussianMixture built from parameters, as its users build one without fitting."""
    from sklearn.mixture import GaussianMixture
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    sk = GaussianMixture(len(weights), covariance_type=covariance_type)
    sk.weights_, sk.means_, sk.covariances_ = weights, means, covariances
    sk.precisions_cholesky_ = _compute_precision_cholesky(covariances, covariance_type)
    return sk


def _assert_warm_fits_agree(ours, theirs, X):
    """One warm ``fit`` of each on ``X``: the same means and covariances (1e-8)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(X)
        theirs.fit(X)
    assert_close(ours.means_, theirs.means_, rtol=1e-8)
    assert_close(ours.covariances_, theirs.covariances_, rtol=1e-8)


def _parameters(rng, covariance_type, k=3, d=4):
    weights = rng.dirichlet(np.ones(k))
    means = rng.normal(scale=4.0, size=(k, d)) + 50.0  # far from the origin: the context matters
    a = rng.normal(size=(k, d, d)) / 2
    full = a @ a.transpose(0, 2, 1) + np.eye(d)
    covariances = {"full": full, "tied": full[0], "diag": np.diagonal(full, axis1=1, axis2=2).copy(),
                   "spherical": np.diagonal(full, axis1=1, axis2=2).mean(1)}[covariance_type]
    return weights, means, covariances


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_a_model_built_from_its_attributes_infers_as_scikit_learn(rng, covariance_type):
    weights, means, covariances = _parameters(rng, covariance_type)
    sk = _sklearn_model(covariance_type, weights, means, covariances)
    X = means[rng.integers(0, 3, 500)] + rng.normal(size=(500, 4))
    gm = dask_em.GaussianMixture(3, covariance_type=covariance_type)
    gm.weights_, gm.means_, gm.covariances_ = weights, means, covariances
    gm.precisions_cholesky_ = sk.precisions_cholesky_
    assert_close(gm.score_samples(X), sk.score_samples(X), rtol=1e-10)
    assert_close(gm.predict_proba(X), sk.predict_proba(X), rtol=1e-10)
    np.testing.assert_array_equal(gm.predict(X), sk.predict(X))
    assert gm.bic(X) == pytest.approx(sk.bic(X), rel=1e-10)
    rows, labels = gm.sample(20_000)
    assert rows.shape == (20_000, 4) and np.bincount(labels, minlength=3).sum() == 20_000
    for j in range(3):  # the draws follow the means set by hand
        assert_close(rows[labels == j].mean(0), means[j], rtol=0.02)
    # covariances_ alone is enough: the Cholesky factors of the precisions follow from it
    alone = dask_em.GaussianMixture(3, covariance_type=covariance_type)
    alone.weights_, alone.means_, alone.covariances_ = weights, means, covariances
    assert_close(alone.score_samples(X), sk.score_samples(X), rtol=1e-10)


def test_attributes_changed_after_fit_are_the_model_as_in_scikit_learn(rng):
    X = rng.normal(scale=5.0, size=(3, 3))[rng.integers(0, 3, 600)] + rng.normal(size=(600, 3))
    gm = dask_em.GaussianMixture(3, random_state=0).fit(X)
    sk = _sklearn_model("full", gm.weights_, gm.means_, gm.covariances_)
    assert_close(gm.score_samples(X), sk.score_samples(X), rtol=1e-10)
    gm.means_ = gm.means_ + 0.3  # assigned
    sk.means_ = sk.means_ + 0.3
    assert_close(gm.score_samples(X), sk.score_samples(X), rtol=1e-10)
    gm.means_[0] -= 0.5  # in place
    sk.means_[0] -= 0.5
    assert_close(gm.score_samples(X), sk.score_samples(X), rtol=1e-10)
    np.testing.assert_array_equal(gm.predict(X), sk.predict(X))
    # a warm start continues from the changed parameters, as scikit-learn's does
    from sklearn.mixture import GaussianMixture

    gm.set_params(warm_start=True, max_iter=1)
    ref = GaussianMixture(3, warm_start=True, max_iter=1)
    ref.weights_, ref.means_, ref.covariances_ = gm.weights_.copy(), gm.means_.copy(), gm.covariances_.copy()
    ref.precisions_cholesky_, ref.converged_, ref.lower_bound_ = gm.precisions_cholesky_.copy(), False, -np.inf
    _assert_warm_fits_agree(gm, ref, X)


def test_an_unchanged_fitted_model_keeps_its_float64_state(rng):
    X, _, _ = mixture(rng, n=400, d=3, k=2)
    gm = dask_em.GaussianMixture(2, random_state=0).fit(X.astype(np.float32))
    assert gm.means_.dtype == np.float32
    before = gm.score_samples(X)
    gm.means_ = gm.means_.copy()  # the same values: nothing to take back
    np.testing.assert_array_equal(gm.score_samples(X), before)
    state = gm.fitted_state()
    assert state.params["means"].dtype == np.float64
    restored = pickle.loads(pickle.dumps(gm))
    np.testing.assert_array_equal(restored.score_samples(X), before)
    del gm._published  # as a model pickled before attributes were watched: its float64 state stands
    older = pickle.loads(pickle.dumps(gm))
    np.testing.assert_array_equal(older.score_samples(X), before)
    older.means_ = older.means_ + np.float32(1.0)  # and later changes still count
    assert not np.allclose(older.score_samples(X), before)


def test_attributes_a_model_cannot_read_back_are_refused_not_ignored(rng):
    X, _, _ = mixture(rng, n=400, d=2, k=2)
    bgm = dask_em.BayesianGaussianMixture(n_components=2, random_state=0, max_iter=20).fit(X)
    bgm.means_ = bgm.means_ + 5.0
    with pytest.raises(ValueError, match="means_ of this BayesianGaussianMixture changed after fit"):
        bgm.predict(X)
    hand = dask_em.BayesianGaussianMixture(n_components=2)
    hand.weights_ = np.array([0.5, 0.5])
    with pytest.raises(AttributeError, match="has weights_ but was not fitted"):
        hand.predict(X)
    partial = dask_em.GaussianMixture(2)
    partial.weights_, partial.means_ = np.array([0.5, 0.5]), np.zeros((2, 2))
    with pytest.raises(AttributeError, match=r"covariances_ \(or precisions_cholesky_\) not set"):
        partial.predict(X)
    partial.covariances_ = np.ones((3, 2, 2))
    with pytest.raises(ValueError, match=r"covariances_ has shape \(3, 2, 2\); covariance_type='full' with 2 "):
        partial.predict(X)


def test_a_hand_built_model_warm_starts_and_streams_from_its_attributes(rng):
    from sklearn.mixture import GaussianMixture

    X = rng.normal(scale=5.0, size=(2, 3))[rng.integers(0, 2, 400)] + rng.normal(size=(400, 3))
    weights, means, covariances = np.array([0.4, 0.6]), X[:2] + 0.5, np.stack([np.eye(3), 2 * np.eye(3)])
    sk = _sklearn_model("full", weights, means, covariances)
    sk.set_params(warm_start=True, max_iter=2)
    sk.converged_, sk.lower_bound_ = False, -np.inf  # scikit-learn continues a model that has converged_
    gm = dask_em.GaussianMixture(2, warm_start=True, max_iter=2)
    gm.weights_, gm.means_, gm.covariances_ = weights, means, covariances
    gm.precisions_cholesky_, gm.converged_, gm.lower_bound_ = sk.precisions_cholesky_, False, -np.inf
    assert "parameters set by hand" in gm.summary() and "GaussianMixture" in repr(gm)
    with pytest.raises(ValueError, match="parameters were set by hand, and the model store keeps fitted models"):
        dask_em.save(gm, "never-written.zarr")
    _assert_warm_fits_agree(gm, sk, X)
    # a partial_fit stream goes on from attributes changed between its batches
    stream = dask_em.GaussianMixture(2, random_state=0).partial_fit(X[:200])
    stream.means_ = stream.means_ + 0.3
    hand = dask_em.GaussianMixture(2)
    hand.weights_, hand.means_, hand.covariances_ = stream.weights_, stream.means_, stream.covariances_
    stream.partial_fit(X[200:])
    hand.partial_fit(X[200:])
    assert_close(stream.means_, hand.means_, rtol=1e-10)


def test_one_of_covariances_and_their_cholesky_factors_changed_moves_the_other(rng):
    X = rng.normal(scale=5.0, size=(2, 3))[rng.integers(0, 2, 400)] + rng.normal(size=(400, 3))
    gm = dask_em.GaussianMixture(2, random_state=0).fit(X)
    gm.covariances_ = gm.covariances_ * 4.0
    ref = _sklearn_model("full", gm.weights_, gm.means_, gm.covariances_)
    assert_close(gm.score_samples(X), ref.score_samples(X), rtol=1e-10)
    rows, labels = gm.sample(20_000)
    assert_close(np.cov(rows[labels == 0].T), gm.covariances_[0], rtol=0.1)


def test_a_pickle_carries_changed_attributes_and_refusals(rng):
    X = rng.normal(scale=5.0, size=(2, 2))[rng.integers(0, 2, 300)] + rng.normal(size=(300, 2))
    gm = dask_em.GaussianMixture(2, random_state=0).fit(X)
    gm.means_ = gm.means_ + 0.5  # pickled before any inference read it
    ref = _sklearn_model("full", gm.weights_, gm.means_, gm.covariances_)
    copy = pickle.loads(pickle.dumps(gm))
    assert_close(copy.score_samples(X), ref.score_samples(X), rtol=1e-10)
    bgm = dask_em.BayesianGaussianMixture(n_components=2, random_state=0, max_iter=20).fit(X)
    bgm.means_ = bgm.means_ + 0.5
    with pytest.raises(ValueError, match="means_ of this BayesianGaussianMixture changed after fit"):
        pickle.loads(pickle.dumps(bgm)).predict(X)
