"""Reading a local Zarr store: zarr's reader against dask-em's, on threads and on processes.

A pass over a store is read chunk by chunk, on 1, 2, 4, ... threads of one
process and on as many processes, two ways:

* zarr       ``zarr.Array.__getitem__`` of each chunk's rows (zarr-python's
             asyncio event loop, one per process; what ``da.from_zarr`` and
             dask-em before its own reader ran);
* dask-em    :class:`dask_em._zarr_read.ChunkFiles` (each chunk file read once
             and decoded into the rows of the result, without the event loop).

Beside each figure: milliseconds per chunk (wall time over the chunks read,
best of ``--repeats``), the speedup over one thread of the same reader, and
threads against processes at that count (1.00x: threads scale as processes
do; above: something in the process serialises the threads). For the threads,
the process's CPU time and minor page faults per chunk (``getrusage``). Then a
whole EM iteration from the same store on the threaded scheduler (full
covariance, K=8, the same start) with each reader.

Stores: random float64 rows (``--shape``) written with zarr's default codec
(Zstd) and uncompressed (``--codecs``), in chunks of ``--chunk-mib`` MiB, in
``/dev/shm`` where it exists (the page cache, as a store a node has read
before). Chunks of 32 MiB or more are worth a look of their own: glibc maps
every allocation that large afresh (``mmap``), so each one costs page faults.

Usage::

    python benchmarks/bench_read.py
    python benchmarks/bench_read.py --chunk-mib 32,24 --codecs zstd --threads 1,2,4,8,16
    python benchmarks/bench_read.py --quick
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cores import cores, thread_counts  # noqa: E402
from bench_em import initial_parameters  # noqa: E402

_ARRAYS: dict = {}


def _open(path: str, reader: str):
    """(zarr array, ChunkFiles or None) of ``path`` for ``reader``, once per process."""
    import zarr

    from dask_em._zarr_read import chunk_files

    key = (path, reader)
    if key not in _ARRAYS:
        arr = zarr.open_array(path, mode="r")
        files = chunk_files(arr) if reader == "dask-em" else None
        if reader == "dask-em" and files is None:
            raise SystemExit(f"dask-em's reader does not cover {path}")
        _ARRAYS[key] = (arr, files)
    return _ARRAYS[key]


def read_chunks(path: str, reader: str, chunks: list[int]) -> float:
    arr, files = _open(path, reader)
    rows, d = arr.chunks[0], arr.shape[1]
    total = 0.0
    for c in chunks:
        key = (slice(c * rows, min((c + 1) * rows, arr.shape[0])), slice(0, d))
        block = files.read(key) if files is not None else arr[key]
        total += float(block[0, 0])
    return total


def per_chunk_ms(path: str, reader: str, workers: int, kind: str, passes: int, repeats: int) -> tuple:
    """(ms per chunk, CPU ms per chunk, minor faults per chunk): the last two only for threads."""
    import zarr

    n_chunks = zarr.open_array(path, mode="r").nchunks
    order = [c % n_chunks for c in range(passes * n_chunks)]
    parts = [order[w::workers] for w in range(workers)]
    pool = ThreadPoolExecutor if kind == "threads" else ProcessPoolExecutor
    best = (np.inf, np.nan, np.nan)
    with pool(workers) as ex:
        list(ex.map(read_chunks, [path] * workers, [reader] * workers, [[0]] * workers))  # open, warm
        for _ in range(repeats):
            before = resource.getrusage(resource.RUSAGE_SELF)
            tic = time.perf_counter()
            list(ex.map(read_chunks, [path] * workers, [reader] * workers, parts))
            wall = time.perf_counter() - tic
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / len(order) * 1e3
            faults = (after.ru_minflt - before.ru_minflt) / len(order)
            if kind != "threads":
                cpu = faults = np.nan
            best = min(best, (wall / len(order) * 1e3, cpu, faults))
    return best


def fit_seconds(path: str, spec, reader: str, iters: int, threads: int) -> float:
    import dask

    import dask_em
    from dask_em._zarr_read import ENV_SWITCH

    init = initial_parameters(spec, "full", np.random.default_rng(0))
    previous = os.environ.get(ENV_SWITCH)
    os.environ[ENV_SWITCH] = "1" if reader == "dask-em" else "0"  # read when the graph is built
    try:
        gm = dask_em.GaussianMixture(spec.means.shape[0], covariance_type="full", tol=0, max_iter=iters, **init)
        with warnings.catch_warnings(), dask.config.set(scheduler="threads", num_workers=threads):
            warnings.simplefilter("ignore")
            gm.fit(path)
    finally:
        if previous is None:
            os.environ.pop(ENV_SWITCH, None)
        else:
            os.environ[ENV_SWITCH] = previous
    r = gm.restarts_[0]
    return r["seconds"] / r["n_iter"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="2000000x16")
    parser.add_argument("--codecs", default="zstd,none")
    parser.add_argument("--chunk-mib", default="32,24", help="store chunk sizes, MiB (comma-separated)")
    parser.add_argument("--threads", default="", help="comma-separated counts [1, 2, 4, ... up to the cores]")
    parser.add_argument("--passes", type=int, default=2, help="passes over the store per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3, help="EM iterations of the fit table (0: no fit table)")
    parser.add_argument("--quick", action="store_true", help="500k x 16, one codec and chunk size, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.shape, args.codecs, args.chunk_mib, args.repeats, args.iters = "500000x16", "zstd", "8", 1, 2
    start = time.perf_counter()

    import zarr

    from dask_em import _compiled
    from dask_em.datasets import make_mixture

    n_cores = cores()
    counts = [int(v) for v in args.threads.split(",")] if args.threads else thread_counts(n_cores)
    n, d = (int(v) for v in args.shape.lower().split("x"))
    print(f"# {n_cores} cores; zarr {zarr.__version__}; {args.shape} float64, {args.passes} passes a measurement, "
          f"best of {args.repeats}; load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    x, _, spec = make_mixture(n, d, 8, chunk_rows=max(1, n // 8), seed=1)
    X = x.compute(scheduler="threads")
    _compiled.warm_up()
    workdir = tempfile.mkdtemp(prefix="dask-em-read-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        stores = []
        for codec in args.codecs.split(","):
            for mib in (float(v) for v in args.chunk_mib.split(",")):
                rows = max(1, int(mib * 2**20) // (8 * d))
                path = os.path.join(workdir, f"{codec}-{mib:g}.zarr")
                compressors = {"zstd": "auto", "none": None}[codec]
                z = zarr.create_array(path, shape=X.shape, chunks=(rows, d), dtype=X.dtype, compressors=compressors)
                for lo in range(0, n, rows):
                    z[lo : lo + rows] = X[lo : lo + rows]
                stores.append((codec, mib, path))

        print("\n## one pass, chunk by chunk (ms per chunk; CPU and minor faults per chunk for threads)")
        print("| codec | chunk MiB | reader | workers | threads ms | speedup | processes ms | threads over processes "
              "| CPU ms | minor faults |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for codec, mib, path in stores:
            for reader in ("zarr", "dask-em"):
                one = None
                for t in counts:
                    th, cpu, faults = per_chunk_ms(path, reader, t, "threads", args.passes, args.repeats)
                    pr = per_chunk_ms(path, reader, t, "processes", args.passes, args.repeats)[0]
                    one = th if one is None else one
                    print(f"| {codec} | {mib:g} | {reader} | {t} | {th:.1f} | {one / th:.2f}x | {pr:.1f} | "
                          f"{th / pr:.2f}x | {cpu:.1f} | {faults:.0f} |")
                    sys.stdout.flush()

        if args.iters:
            print(f"\n## a fit from the store, threaded scheduler (full, K=8, s/iter over {args.iters} iterations)")
            print("| codec | chunk MiB | threads | zarr | dask-em | zarr over dask-em |")
            print("| --- | --- | --- | --- | --- | --- |")
            for codec, mib, path in stores:
                for t in counts[-1:]:
                    secs = {r: min(fit_seconds(path, spec, r, args.iters, t) for _ in range(args.repeats))
                            for r in ("zarr", "dask-em")}
                    print(f"| {codec} | {mib:g} | {t} | {secs['zarr']:.3f} | {secs['dask-em']:.3f} | "
                          f"{secs['zarr'] / secs['dask-em']:.2f}x |")
                    sys.stdout.flush()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n# load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
