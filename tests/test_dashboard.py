"""The dashboard a person opens during a fit, read in a real (headless) browser.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) are
driven by Selenium with both paths given explicitly: Selenium's own driver
manager would try to download a driver from the internet. The page is read
through its own Bokeh document (``Bokeh.documents``), the objects the browser
draws, not through the scheduler's Python state.
"""

import json
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import dask_em
from conftest import mixture

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("DASK_EM_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts"))

# What the page's Bokeh document holds: the task names in the Progress panel and
# the Task Stream, the Progress title, and how many plot canvases were drawn
# with a size (Bokeh 3 draws inside shadow roots, so they are walked).
READ_PAGE = """
const read = (source, column) => {
  const data = source.data;
  return Array.from((data instanceof Map ? data.get(column) : data[column]) || []);
};
const out = {progress: [], stream: [], title: null, canvases: 0};
for (const doc of Bokeh.documents) {
  for (const model of doc.all_models) {
    if (model.name === "task_progress") {
      out.title = model.title ? model.title.text : null;
      for (const r of model.renderers) if (r.data_source) out.progress.push(...read(r.data_source, "name"));
    }
    if (model.name === "task_stream") {
      for (const r of model.renderers) if (r.data_source) out.stream.push(...read(r.data_source, "name"));
    }
  }
}
const walk = (root) => {
  for (const el of root.querySelectorAll("*")) {
    if (el.tagName === "CANVAS" && el.width > 0 && el.height > 0) out.canvases += 1;
    if (el.shadowRoot) walk(el.shadowRoot);
  }
};
walk(document);
return JSON.stringify(out);
"""

class _Enough(Exception):
    """Raised from the fit's callback to end it once the page has been read."""


STREAMED = {"em-estep", "em-mstep"}
ROUND = {"em-params", "em-estep", "em-combine-partial", "em-combine-aggregate", "em-mstep"}


def headless_chromium():
    """A Selenium driver for Debian's Chromium, or a skip saying what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    pytest.importorskip("bokeh", reason="bokeh is not installed: the dashboard would serve no plots")
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run does this when it runs as root with apt)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.mark.timeout(180)
def test_dashboard_status_page_shows_the_fit(tmp_path):
    from distributed import Client, LocalCluster

    X = mixture(np.random.default_rng(3), n=200_000, d=4, k=3)[0]
    path = str(tmp_path / "x.zarr")
    zarr.create_array(path, shape=X.shape, chunks=(10_000, 4), dtype="f8")[:] = X
    browser = headless_chromium()
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0") as cluster, \
                Client(cluster) as client:
            assert client.dashboard_link.endswith("/status"), client.dashboard_link
            errors, enough = [], threading.Event()

            def stop_when_read(event):
                if enough.is_set():
                    raise _Enough

            def fit():
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        # tol=0 and many iterations: the fit runs until the page has been read.
                        dask_em.GaussianMixture(3, n_init=2, tol=0, max_iter=500, random_state=0, split_every=4).fit(
                            path, chunk_rows=10_000, callback=stop_when_read)
                except _Enough:
                    pass
                except BaseException as exc:  # surfaced by the assertion below
                    errors.append(exc)

            worker = threading.Thread(target=fit)
            worker.start()
            browser.get(client.dashboard_link)
            seen, streamed, page, deadline = set(), set(), None, time.monotonic() + 90
            # The task stream's rectangles arrive in batches, after the Progress panel's counts.
            while worker.is_alive() and not (ROUND <= seen and STREAMED <= streamed) and time.monotonic() < deadline:
                time.sleep(0.25)
                read = json.loads(browser.execute_script(READ_PAGE))
                seen |= set(read["progress"])
                streamed |= set(read["stream"])
                # The page as last seen with a round on it: between two rounds the Progress panel
                # reads "total: 0" for a moment, and a read can land there (rounds take ~0.1 s).
                # Before Bokeh has built the panel, it has no title: not a read of a round either.
                if read["title"] and "total: 0," not in read["title"]:
                    page = read
            # A mid-fit picture, taken while the Progress panel still holds the round.
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "dashboard-status.png"
            browser.save_screenshot(str(shot))
            enough.set()
            worker.join()
            assert not errors, errors
    finally:
        browser.quit()

    assert page is not None, "the page was never read while a round was on it"
    assert ROUND <= seen, f"the Progress panel showed {sorted(seen)}; expected at least {sorted(ROUND)}"
    assert STREAMED <= streamed, f"the task stream showed {sorted(streamed)}"
    assert page["title"].startswith("Progress") and "total: 0," not in page["title"], page["title"]
    # Bytes stored, per worker, task stream, processing, progress ... all drawn with a size.
    assert page["canvases"] >= 5, page
    assert shot.read_bytes()[:4] == b"\x89PNG"
