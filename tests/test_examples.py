"""The example notebooks run top to bottom in a real kernel, at small sizes; so does the script."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = {
    "quickstart.ipynb": {"N_SAMPLES": 60_000, "N_FEATURES": 3, "N_COMPONENTS": 3, "N_INIT": 2},
    "real_data.ipynb": {"N_COMPONENTS": 10, "N_INIT": 1},
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", sorted(SMALL))
def test_notebook_runs(name, tmp_path, monkeypatch):
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    # Like papermill: a cell after the parameters cell overrides them.
    overrides = "\n".join(f"{k} = {v!r}" for k, v in SMALL[name].items())
    if "WORKDIR" in params.source:
        overrides += f"\nWORKDIR = {str(tmp_path / 'work')!r}"
    index = nb.cells.index(params)
    nb.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides))
    # The kernel must be this interpreter, with this environment's packages.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on any error
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the convergence and cluster plots


@pytest.mark.timeout(300)
def test_quickstart_script(tmp_path):
    figure = tmp_path / "quickstart.png"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py"), "--samples", "50000", "--features", "3",
         "--components", "3", "--n-init", "2", "--workdir", str(tmp_path), "--figure", str(figure)],
        capture_output=True, text=True, timeout=280,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "saved and reloaded" in result.stdout and "dashboard:" in result.stdout
    assert figure.read_bytes()[:4] == b"\x89PNG"
