"""What a Jupyter user sees: task names on the scheduler, live progress, reprs, plots."""

import io
import warnings

import matplotlib
import numpy as np
import pytest
import zarr

matplotlib.use("Agg")

import dask_em  # noqa: E402
import dask_em.plot  # noqa: E402
from conftest import mixture  # noqa: E402


@pytest.fixture
def fitted(rng):
    X = mixture(rng, n=2000, d=3, k=3)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = dask_em.GaussianMixture(3, n_init=3, init_params="random_from_data", random_state=0).fit(X)
    return gm, X


@pytest.mark.timeout(120)
def test_task_prefixes_reaching_the_scheduler(tmp_path):
    """The names the dashboard shows, read from the scheduler itself (fused names included)."""
    from distributed import Client, LocalCluster

    X = mixture(np.random.default_rng(1), n=4000, d=3, k=3)[0]
    zarr.create_array(tmp_path / "x.zarr", shape=X.shape, chunks=(500, 3), dtype="f8")[:] = X
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster):
        gm = dask_em.GaussianMixture(3, n_init=2, random_state=0, split_every=2)
        gm.fit(str(tmp_path / "x.zarr"), chunk_rows=500)
        gm.predict(str(tmp_path / "x.zarr"), chunk_rows=500).compute()
        gm.predict_proba(str(tmp_path / "x.zarr"), chunk_rows=500).compute()
        prefixes = set(cluster.scheduler.task_prefixes)
    ours = {p for p in prefixes if p.startswith("em-")}
    assert ours == {
        "em-init-sample", "em-init-context", "em-init", "em-init-draw", "em-init-state", "em-init-collect",
        "em-params",
        "em-estep", "em-combine-partial", "em-combine-aggregate", "em-mstep",
        "em-predict", "em-proba",
    }, ours
    # Everything else is dask's own reading of the store.
    assert prefixes - ours <= {"from-zarr", "original-from-zarr", "finalize", "finalize-hlgfinalizecompute"}, prefixes - ours


class CountingBar:
    """Stands in for tqdm to count updates (the real one draws to a terminal or widget)."""

    instances: list = []

    def __init__(self, *args, **kwargs):
        self.n = 0
        self.updates = 0
        self.postfix = None
        CountingBar.instances.append(self)

    def update(self, k):
        self.n += k
        self.updates += 1

    def set_postfix(self, **kw):
        self.postfix = kw

    def set_description(self, d, refresh=True):
        self.desc = d

    def refresh(self):
        pass

    def close(self):
        pass


def test_progress_updates_once_per_iteration_per_restart(monkeypatch, rng):
    import dask_em.progress

    monkeypatch.setattr(dask_em.progress, "tqdm", CountingBar)
    CountingBar.instances = []
    X = mixture(rng, n=500, d=2, k=2)[0]
    gm = dask_em.GaussianMixture(2, n_init=3, random_state=0, verbose=1).fit(X)
    assert len(CountingBar.instances) == 3
    for bar, r in zip(CountingBar.instances, gm.restarts_):
        assert bar.updates == r["n_iter"] and bar.n == r["n_iter"]
        assert float(bar.postfix["lower_bound"]) == pytest.approx(r["lower_bound"], abs=1e-6)


def test_progress_draws_each_iteration_with_its_own_figures_and_the_last_once():
    """The real tqdm bar, drawn on every update: the frame that shows iteration i shows iteration i's bound and
    change (not the previous iteration's), and a converged restart's last frame is drawn once."""
    import re

    from dask_em.progress import FitProgress

    out = io.StringIO()
    events = [
        {"restart": 0, "iteration": 1, "lower_bound": -3.5, "change": None, "converged": False, "failed": False},
        {"restart": 0, "iteration": 2, "lower_bound": -2.25, "change": 1.25, "converged": False, "failed": False},
        {"restart": 0, "iteration": 3, "lower_bound": -2.0, "change": 0.25, "converged": True, "failed": False},
    ]
    with FitProgress(1, 100, file=out) as progress:
        progress.bars[0].mininterval = 0  # draw on every update, as a slow round would
        for event in events:
            progress.update(event)
    frames = [f for f in re.split(r"[\r\n]+", out.getvalue()) if "restart 0" in f]
    seen = {}
    for frame in frames:
        m = re.search(r"(\d+)/(\d+)", frame)
        if m and int(m.group(1)) in (1, 2, 3):
            seen.setdefault(int(m.group(1)), []).append(frame)
    assert set(seen) == {1, 2, 3}, frames
    assert all("lower_bound=-3.500000" in f and "change=first" in f for f in seen[1]), seen[1]
    assert all("lower_bound=-2.250000" in f and "change=+1.25e+00" in f for f in seen[2]), seen[2]
    assert all("lower_bound=-2.000000" in f and "change=+2.50e-01" in f for f in seen[3]), seen[3]
    converged = [f for f in frames if "converged" in f and "3/3" in f]
    assert len(converged) == 2, frames  # drawn once when it converged, once more as the bar closes
    assert not any("converged" in f for f in seen[1] + seen[2])


def test_progress_writes_a_text_bar_and_nothing_when_off(capsys, rng):
    X = mixture(rng, n=500, d=2, k=2)[0]
    dask_em.GaussianMixture(2, random_state=0).fit(X)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    dask_em.GaussianMixture(2, random_state=0, verbose=1).fit(X)
    err = capsys.readouterr().err
    assert "restart 0" in err and "lower_bound=" in err


def test_fitted_repr(fitted):
    gm, _ = fitted
    bundle = gm._repr_mimebundle_()
    assert "converged" in bundle["text/plain"] and "lower bound" in bundle["text/plain"]
    html = gm._repr_html_()
    assert "dask-em-summary" in html and "GaussianMixture" in html
    assert "dask-em-summary" not in dask_em.GaussianMixture(2)._repr_html_()


def test_convergence_plot(fitted):
    gm, _ = fitted
    ax = dask_em.plot.convergence(gm)
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == 3
    best = [line for line in lines if "(best)" in line.get_label()]
    assert len(best) == 1 and best[0].get_linewidth() > lines[0 if lines[0] is not best[0] else 1].get_linewidth()
    star = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(star) == 1 and star[0].get_ydata()[0] == pytest.approx(gm.lower_bound_)
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png")
    assert buf.getvalue()[:4] == b"\x89PNG"


@pytest.mark.parametrize("cov_type", ["full", "tied", "diag", "spherical"])
def test_clusters_plot(cov_type, rng):
    from matplotlib.patches import Ellipse

    X = mixture(rng, n=3000, d=3, k=3)[0]
    gm = dask_em.GaussianMixture(3, covariance_type=cov_type, random_state=0).fit(X)
    ax = dask_em.plot.clusters(gm, X, dims=(0, 2), n=1000)
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == 3
    (points,) = ax.collections
    assert points.get_offsets().shape == (1000, 2)
    np.testing.assert_allclose(sorted(e.center[0] for e in ellipses), sorted(gm.means_[:, 0]))
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png")
    assert len(buf.getvalue()) > 1000


def test_clusters_plot_of_named_features_keeps_their_names(rng):
    """A model fitted on an xarray Dataset with feature names, drawn on the same Dataset: the sampled rows keep
    the names, so no "X does not have valid feature names" warning; the axes are labelled by them."""
    import warnings

    import xarray as xr

    X = mixture(rng, n=2000, d=3, k=2)[0]
    ds = xr.Dataset({"points": (("sample", "feature"), X)}, coords={"feature": ["a", "b", "c"]})
    gm = dask_em.GaussianMixture(2, random_state=0).fit(ds, variable="points")
    assert list(gm.feature_names_in_) == ["a", "b", "c"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = dask_em.plot.clusters(gm, ds["points"], dims=(0, 2), n=500)
    assert ax.get_xlabel() == "a" and ax.get_ylabel() == "c"
    with pytest.warns(UserWarning, match="X does not have valid feature names"):  # unnamed rows: scikit-learn's
        dask_em.plot.clusters(gm, X, n=500)


def test_plots_for_another_family(rng):
    """convergence works for every family; clusters says why it is Gaussian-only."""
    X = (rng.random((2000, 4)) < 0.3)
    model = dask_em.BernoulliMixture(2, n_init=2, random_state=0).fit(X)
    ax = dask_em.plot.convergence(model)
    assert len(ax.lines) >= 2
    with pytest.raises(TypeError, match="clusters draws Gaussian covariance ellipses; received a BernoulliMixture"):
        dask_em.plot.clusters(model, X)
    html = model._repr_html_()
    assert "dask-em-summary" in html and "bernoulli" in html
