"""The benchmark scripts that run on machines this suite never sees (many cores, a GPU host) must not rot:
each runs here on tiny data and prints every table it promises."""

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


@pytest.mark.timeout(300)
def test_bench_cores_runs_and_prints_every_table():
    out = subprocess.run(
        [sys.executable, os.path.join(BENCH, "bench_cores.py"), "--quick", "--no-gil", "--shapes", "20000x4",
         "--types", "full,diag", "--threads", "1,2"],
        capture_output=True, text=True, timeout=280,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for heading in ("## DGEMM", "## direct rounds", "## float32's speedup", "## LocalCluster (workers x threads)",
                    "## LocalCluster: how busy"):
        assert heading in text, text
    rows = [line for line in text.splitlines() if line.startswith("| 20000x4 |")]
    # direct rounds: 2 covariance types x 2 dtypes x 2 thread counts; float32 ratios: 2; cluster: 4 + 4
    assert len(rows) == 8 + 2 + 4 + 4, text
    direct = [r.split(" | ") for r in rows[:8]]
    for cells in direct:
        busy = float(cells[10].rstrip("%"))
        assert 0 < busy <= 400, cells  # a share of wall x threads (other processes' threads are not counted)
        assert float(cells[4]) > 0  # s/iter


@pytest.mark.timeout(200)
def test_bench_read_runs_and_prints_every_table():
    out = subprocess.run([sys.executable, os.path.join(BENCH, "bench_read.py"), "--quick", "--threads", "1,2"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "## one pass, chunk by chunk" in out.stdout and "## a fit from the store" in out.stdout, out.stdout
    readers = [line for line in out.stdout.splitlines() if line.startswith("| zstd |")]
    assert {"zarr", "dask-em"} <= {line.split(" | ")[2] for line in readers}, out.stdout
