"""The README's "In Jupyter" code, run in JupyterLab in a headless browser: docs/jupyter.png and docs/dashboard.png.

    python examples/jupyter_pictures.py                        # writes docs/jupyter.png, docs/dashboard.png
    python examples/jupyter_pictures.py --samples 100000 --outdir /tmp/pictures

What a person would do, driven by Selenium: generate ``points.zarr``
(``dask-em generate``), start JupyterLab, open a notebook whose cells are the
README's "In Jupyter" code block verbatim (one cell per line, plus a
``client.dashboard_link`` cell, as the README's comment says to open it), and
run all cells. While the fit runs, the script reads the widget bars from the
page and opens the dashboard link in a second tab. It checks what it shows:
one bar per restart, each advancing during the fit, and the dashboard's
Progress panel holding the fit's task names (read from ``Bokeh.documents``).

Needs the ``jupyter`` extra (JupyterLab, Bokeh, ipywidgets, matplotlib),
selenium, and Debian's ``chromium`` and ``chromium-driver`` (both paths are
given to Selenium, whose own driver manager would try to download a driver).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# The tqdm widget bars: HBox(HTML description, FloatProgress, HTML counts/postfix).
READ_BARS = """
return Array.from(document.querySelectorAll('.jp-OutputArea-output .widget-hprogress')).map(p => {
  const box = p.parentElement;
  const labels = Array.from(box.querySelectorAll('.widget-html-content')).map(e => e.textContent.trim());
  const bar = p.querySelector('.progress-bar');
  return {labels: labels, width: bar ? bar.style.width : null};
});
"""

READ_PROGRESS_PANEL = """
const names = [];
for (const doc of Bokeh.documents) for (const m of doc.all_models) if (m.name === 'task_progress')
  for (const r of m.renderers) if (r.data_source) {
    const d = r.data_source.data; names.push(...Array.from((d instanceof Map ? d.get('name') : d.name) || []));
  }
return names;
"""


def readme_cells() -> list[str]:
    """The README's "In Jupyter" code block, one cell per line (comments kept)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## In Jupyter", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    cells = []
    for line in block.splitlines():
        if not line.strip():
            continue
        cells.append(line)
        if line.startswith("client = Client("):
            cells.append("client.dashboard_link")
    return cells


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(predicate, timeout: float, what: str, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=500_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--components", type=int, default=8, help="of the generated data (the README fits K=8)")
    parser.add_argument("--separation", type=float, default=3.0,
                        help="closer components than the CLI's default 6, so the bars have iterations to show")
    parser.add_argument("--outdir", default=str(REPO / "docs"))
    parser.add_argument("--workdir", default=None, help="where points.zarr and the notebook go (default: temporary)")
    args = parser.parse_args(argv)

    from selenium.webdriver.common.by import By

    t_start = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dask-em-jupyter-"))
    workdir.mkdir(parents=True, exist_ok=True)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JUPYTERLAB_SETTINGS_DIR=str(workdir / "lab-settings"), JUPYTER_RUNTIME_DIR=str(workdir / "runtime"))
    # No news or update toasts over the picture.
    settings = workdir / "lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # ... and no "Select Kernel" dialog: the notebook's own kernel starts.
    docmanager = workdir / "lab-settings" / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True, exist_ok=True)
    (docmanager / "plugin.jupyterlab-settings").write_text(json.dumps({"autoStartDefaultKernel": True}))

    subprocess.run([sys.executable, "-m", "dask_em", "generate", str(workdir / "points.zarr"), "--samples",
                    str(args.samples), "--features", str(args.features), "--components", str(args.components),
                    "--seed", "1", "--separation", str(args.separation), "--overwrite"], check=True, env=env)

    import nbformat

    cells = readme_cells()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, workdir / "dask-em.ipynb")
    print(f"notebook: {len(cells)} cells from the README's In Jupyter block")

    port, token = free_port(), os.urandom(12).hex()
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--ServerApp.port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={workdir}", "--ServerApp.ip=127.0.0.1"],
        env=env, stdout=open(workdir / "jupyterlab.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    driver = None
    try:
        base = f"http://127.0.0.1:{port}"

        def lab_up():
            try:
                return urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).status == 200
            except OSError:
                return False

        wait_for(lab_up, 60, "JupyterLab to start")
        driver = browser(1280, 1700)
        driver.get(f"{base}/doc/tree/dask-em.ipynb?token={token}")
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 60, "the notebook")
        wait_for(lambda: driver.execute_script(
            "const s = document.querySelector('.jp-Notebook-ExecutionIndicator');"
            "return s && s.getAttribute('data-status') === 'idle';"), 60, "the kernel")
        notebook_tab = driver.current_window_handle

        time.sleep(2)
        for button in driver.find_elements(By.CSS_SELECTOR, ".jp-Dialog .jp-mod-accept"):  # "Select Kernel", if asked
            button.click()
        # Run > Run All Cells, as a person would.
        wait_for(lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel")
                          if e.text == "Run"], 30, "the Run menu")[0].click()
        wait_for(lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-Menu-itemLabel")
                          if e.text == "Run All Cells"], 10, "Run All Cells")[0].click()
        t_run = time.perf_counter()

        link = wait_for(lambda: re.search(r"http://[\w.:-]+/status", driver.execute_script(
            "return Array.from(document.querySelectorAll('.jp-OutputArea-output')).map(e => e.textContent).join(' ')")),
            60, "client.dashboard_link's output").group(0)
        print("dashboard:", link)

        # The bars, as the page shows them, until the first one moves.
        timeline = []

        def bars():
            state = driver.execute_script(READ_BARS)
            if state:
                timeline.append((time.perf_counter() - t_run, state))
            return state

        wait_for(lambda: (bars() or [None])[0] and len(timeline) > 1 and timeline[-1][1] != timeline[0][1],
                 600, "the widget bars to advance", every=0.5)

        # The dashboard in a second tab, mid-fit.
        driver.switch_to.new_window("tab")
        driver.get(link)
        seen = set()
        wait_for(lambda: seen.update(driver.execute_script(READ_PROGRESS_PANEL) or [])
                 or {"em-estep", "em-mstep"} <= seen, 120, "the fit's tasks in the Progress panel")
        time.sleep(2)  # a few more rounds in the task stream
        driver.save_screenshot(str(outdir / "dashboard.png"))
        print("dashboard's Progress panel held:", ", ".join(sorted(seen)))
        driver.close()
        driver.switch_to.window(notebook_tab)

        # Until every cell has run (no "[*]" left), reading the bars on the way.
        def all_ran():
            bars()
            prompts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".jp-InputArea-prompt")]
            return prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts)

        wait_for(all_ran, 1200, "every cell to run", every=0.5)
        errors = driver.find_elements(By.CSS_SELECTOR, "[data-mime-type='application/vnd.jupyter.stderr'] pre")
        tracebacks = [e.text for e in errors if "Traceback" in e.text or "Error" in e.text]
        if tracebacks:
            raise RuntimeError("a README cell failed:\n" + tracebacks[0][-2000:])
        # Scroll so the bars, the model's summary and the first plot share the picture.
        driver.execute_script("document.querySelector('.jp-Notebook').scrollTop = 0;")
        time.sleep(1)
        driver.save_screenshot(str(outdir / "jupyter.png"))
    except BaseException:
        if driver is not None:
            driver.save_screenshot(str(outdir / "failure.png"))
            print(f"what the browser showed: {outdir / 'failure.png'}", file=sys.stderr)
        raise
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(lab.pid, signal.SIGTERM)  # JupyterLab, its kernel and the kernel's cluster
        try:
            lab.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
            lab.wait()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    report(timeline)
    print(f"wrote {outdir / 'jupyter.png'} and {outdir / 'dashboard.png'} in {time.perf_counter() - t_start:.0f} s")


def report(timeline) -> None:
    """One bar per restart, and each advanced during the fit (read from the page, not from Python)."""
    final = timeline[-1][1]
    print(f"{len(final)} bars; what the page showed over time:")
    shown = None
    for t, state in timeline:
        counts = [re.search(r"(\d+)/(\d+)", " ".join(b["labels"])) for b in state]
        row = [c.group(1) if c else "-" for c in counts]
        if row != shown:
            print(f"  {t:6.1f} s  iterations per bar: {' '.join(row)}")
            shown = row
    for i in range(len(final)):
        values = [int(m.group(1)) for _, state in timeline if i < len(state)
                  for m in [re.search(r"(\d+)/\d+", " ".join(state[i]["labels"]))] if m]
        if len(set(values)) < 2:
            raise AssertionError(f"bar {i} did not advance while the page was read: {values}")


if __name__ == "__main__":
    main()
