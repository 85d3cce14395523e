"""The share of an E-step thread's time spent holding the GIL, per kernel, with the Amdahl bound it implies.

Threads of one process (``dask worker --nthreads 16``, the direct rounds on
local threads) run E-step tasks side by side; whatever a task does while it
holds the GIL (Python between numpy calls, the fixed cost of each call,
allocations) runs one thread at a time. If a share ``s`` of a thread's time
holds the GIL, ``n`` threads run at most ``1 / (s + (1 - s) / n)`` times one
(Amdahl): 7% caps 16 threads at 7.8x, 3% at 11.0x. That share is a ratio, so
it can be measured on any machine, two cores included.

How: the kernels run one after another in a child process under
`py-spy <https://github.com/benfred/py-spy>`_ (``pip install py-spy``), twice:
``py-spy record --gil`` keeps only the samples where the thread holds the GIL,
plain ``py-spy record`` every sample where it is active. Each kernel runs
inside a function named after it (``gil_probe__full_d16_float64``), so its
samples are found in both recordings; the share is GIL samples over active
samples. One BLAS thread, as the E-step tasks run (the library's local
threads and a distributed worker both limit BLAS to one thread per task).
Sampling pauses the child for a few microseconds each time; at ``--rate``
samples a second and ``--seconds`` per kernel a share of 3% rests on a few
dozen samples (at the default 500 a second); ``--repeats`` takes the median of several pairs of recordings.
Measure on a quiet machine: under heavy load (other processes on the same
cores) the share reads higher and moves between runs.

Kernels: ``engine.estep_block`` on one chunk of the size the library picks
(32 MiB of float64 rows), K=8, one restart, random parameters: Gaussian full,
tied, diag and spherical at d=16 and d=64 in float64 and float32; full on
the residual design (d=128, above the moment design's limit, and at d=16
with means 1000 sigma from the shift, ``fullfar``); full with
5% of rows missing one value (``missing="marginalize"``); Bernoulli and
categorical (the discrete design kernel).

Usage::

    python benchmarks/bench_gil.py                    # gaussian, missing, discrete; 2 s each per recording
    python benchmarks/bench_gil.py --kernels gaussian --repeats 3 --seconds 3   # the table of the docs
    python benchmarks/bench_gil.py --kernels full_d16_float64,diag_d64_float32 --seconds 4
    python benchmarks/bench_gil.py --top 8            # also the lines that hold the GIL most
    python benchmarks/bench_gil.py --repeats 3 --seconds 4   # the median of three pairs of recordings
    DASK_EM_COMPILED=0 python benchmarks/bench_gil.py        # the numpy kernels (without the compiled ones)
    python benchmarks/bench_gil.py --thread-time             # thread CPU time per chunk, numpy against compiled

The table prints, per kernel, the median share over the repeats, their range
and each repeat's share, and Amdahl's bound at the median. On a machine other
processes load, the share of one kernel moves between repeats by a factor of
up to two (two cores under a load average of 6: 2.9% to 6.3% for one
kernel): compare kernels, or two versions of one, by medians of interleaved
repeats.
"""

from __future__ import annotations

import argparse
import functools
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

K = 8
PROBE = "gil_probe__"
# The method's own floor, measured in every run: a compiled loop whose true GIL-held share is ~0.01%.
FLOOR = "floor"


def _gaussian_params(ct: str, k: int, d: int, rng: np.random.Generator) -> dict:
    """Random parameters; ``fullfar``: full covariances whose means lie 1000 sigma out (the residual design)."""
    far = ct == "fullfar"
    ct = "full" if far else ct
    factors = np.triu(rng.standard_normal((k, d, d)) * 0.05 + np.eye(d))
    pc = {
        "full": factors,
        "tied": factors[0],
        "diag": rng.uniform(0.7, 1.3, (k, d)),
        "spherical": rng.uniform(0.7, 1.3, k),
    }[ct]
    return {"means": rng.standard_normal((k, d)) * (1000.0 if far else 0.3), "precisions_cholesky": pc,
            "weights": np.full(k, 1.0 / k), "covariance_type": ct}


def _chunk_rows(d: int) -> int:
    """The rows of one chunk the library makes for d float64 features (io.DEFAULT_CHUNK_BYTES)."""
    from dask_em.io import DEFAULT_CHUNK_BYTES

    return DEFAULT_CHUNK_BYTES // (8 * d)


def kernel_labels() -> list[str]:
    return GROUPS["gaussian"] + GROUPS["residual"] + GROUPS["missing"] + GROUPS["discrete"]


# Names --kernels accepts for several kernels at once.
GROUPS = {
    "gaussian": [f"{ct}_d{d}_{dt}" for d in (16, 64) for ct in ("full", "tied", "diag", "spherical")
                 for dt in ("float64", "float32")],
    # Full covariances on the residual design: d above the moment design's limit for K=8 (raw moments), and
    # means far from the shift (statistics about the means).
    "residual": ["full_d128_float64", "full_d128_float32", "fullfar_d16_float64", "fullfar_d16_float32"],
    "missing": ["full_d16_missing"],
    "discrete": ["bernoulli_d16", "categorical_d16"],
}


def expand(names: str) -> list[str]:
    """Kernel labels from a comma-separated list of labels and group names (``gaussian``, ``residual``, ``missing``,
    ``discrete``)."""
    out = []
    for name in filter(None, names.split(",")):
        out += GROUPS.get(name, [name])
    return out


def make_kernel(label: str):
    """(state, rows, weights) for ``engine.estep_block`` of the kernel ``label``."""
    from dask_em import engine
    from dask_em.discrete import BernoulliFamily, CategoricalFamily
    from dask_em.gaussian import GaussianFamily

    rng = np.random.default_rng(7)
    parts = label.split("_")
    name, d = parts[0], int(parts[1][1:])
    rows = _chunk_rows(d)
    if name == "bernoulli":
        params = {"probabilities": rng.uniform(0.05, 0.95, (K, d)), "weights": np.full(K, 1.0 / K)}
        return engine.RoundState(BernoulliFamily(), None, [params], check_rows=False), rng.random((rows, d)) < 0.5
    if name == "categorical":
        c = 5
        probs = rng.dirichlet(np.ones(c), size=(K, d)).reshape(K, d * c)
        params = {"probabilities": probs, "weights": np.full(K, 1.0 / K)}
        x = rng.integers(0, c, (rows, d)).astype(np.int8)
        return engine.RoundState(CategoricalFamily(n_categories=c), None, [params], check_rows=False), x
    x = rng.standard_normal((rows, d))
    if parts[2] == "missing":
        holes = rng.random(rows) < 0.05
        x[np.flatnonzero(holes), rng.integers(0, d, holes.sum())] = np.nan
        family = GaussianFamily(missing="marginalize")
    else:
        family = GaussianFamily(compute_dtype=parts[2])
    return engine.RoundState(family, np.zeros(d), [_gaussian_params(name, K, d, rng)], check_rows=False), x


@functools.lru_cache(maxsize=None)
def _spin_kernel():
    """The floor's kernel: a compiled loop that releases the GIL for about 10 ms a call, called from Python in
    a loop as the E-step is; the GIL is held only for the call itself (microseconds: ~0.01% of the time)."""
    import numba

    @numba.njit(nogil=True)
    def spin(x, reps):
        total = 0.0
        for _ in range(reps):
            for i in range(x.shape[0]):
                total = total * 0.999999 + x[i]  # a dependent chain: about 4 cycles a value
        return total

    return spin


def _probe(label: str):
    """A function named ``gil_probe__<label>`` that runs the kernel until ``deadline``: its frame names the samples."""
    from dask_em import engine

    if label == FLOOR:
        spin = _spin_kernel()

        def run(x, state, deadline):
            calls = 0
            while time.perf_counter() < deadline:
                spin(x, 80)
                calls += 1
            return calls
    else:
        def run(x, state, deadline):
            calls = 0
            while time.perf_counter() < deadline:
                engine.estep_block(x, None, state)
                calls += 1
            return calls

    run.__code__ = run.__code__.replace(co_name=PROBE + label, co_qualname=PROBE + label)
    return run


def child(labels: list[str], seconds: float) -> None:
    """Run each kernel for ``seconds`` (after one warm call), one BLAS thread."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        for label in labels:
            if label == FLOOR:
                x = np.random.default_rng(0).standard_normal(100_000)
                _spin_kernel()(x, 1)
                _probe(label)(x, None, time.perf_counter() + seconds)
                continue
            state, x = make_kernel(label)
            from dask_em import engine

            engine.estep_block(x, None, state)
            _probe(label)(x, state, time.perf_counter() + seconds)


def _record(labels, seconds, rate, gil: bool, pyspy: str) -> dict[str, collections.Counter]:
    """Per kernel: a Counter of leaf frames (samples), from one py-spy recording of the child."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "raw.txt")
        cmd = [pyspy, "record", "--rate", str(rate), "--format", "raw", "--output", out]
        cmd += ["--gil"] if gil else []
        cmd += ["--", sys.executable, os.path.abspath(__file__), "--child", ",".join(labels),
                "--seconds", str(seconds)]
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        per_kernel: dict[str, collections.Counter] = {label: collections.Counter() for label in labels}
        with open(out) as fh:
            for line in fh:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                frames = stack.split(";")
                label = next((f.split(" ")[0][len(PROBE):] for f in frames if f.startswith(PROBE)), None)
                if label in per_kernel:
                    per_kernel[label][frames[-1]] += int(count)
    return per_kernel


def amdahl(share: float, threads: int) -> float:
    return 1.0 / (share + (1.0 - share) / threads)


def gil_shares(labels, seconds=2.0, rate=500, pyspy=None, repeats=1) -> dict[str, tuple]:
    """``{label: (GIL-held share, active samples, Counter of GIL-holding leaf frames, shares of each repeat)}``.

    With ``repeats`` above one the share is the median of the repeats' shares (each a
    pair of recordings); samples and frames are summed over them.
    """
    pyspy = pyspy or shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(pyspy):
        raise FileNotFoundError("py-spy is not installed: pip install py-spy")
    runs = []
    for _ in range(repeats):
        active = _record(labels, seconds, rate, False, pyspy)
        held = _record(labels, seconds, rate, True, pyspy)
        runs.append((active, held))
    out = {}
    for label in labels:
        shares, total, frames = [], 0, collections.Counter()
        for active, held in runs:
            count = sum(active[label].values())
            shares.append(sum(held[label].values()) / count if count else float("nan"))
            total += count
            frames.update(held[label])
        out[label] = (float(np.median(shares)), total, frames, shares)
    return out


def print_table(shares: dict, top: int = 0) -> None:
    """One row per kernel: the median share over the repeats, their range, and Amdahl's bounds at the median."""
    print("| kernel | active samples | GIL held (median) | range | each repeat | Amdahl bound at 16 threads | at 64 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, (share, total, _, each) in shares.items():
        spread = " ".join(f"{v:.1%}" for v in each)
        print(f"| {label} | {total} | {share:.1%} | {min(each):.1%}-{max(each):.1%} | {spread} "
              f"| {amdahl(share, 16):.1f}x | {amdahl(share, 64):.1f}x |")
    if top:
        for label, (_, total, frames, _) in shares.items():
            print(f"\n# {label}: the lines holding the GIL most (share of active samples)")
            for frame, count in frames.most_common(top):
                print(f"    {count / total:6.2%}  {frame}")


def thread_times(labels, seconds: float = 1.0, repeats: int = 3) -> None:
    """Print each kernel's thread CPU time per chunk with the compiled kernels and with numpy's, in this process.

    The two alternate ``repeats`` times (best of each: a loaded machine moves
    thread time far less than wall time); one BLAS thread.
    """
    from threadpoolctl import threadpool_limits

    from dask_em import _compiled, engine

    if not _compiled.warm_up():
        print("(the compiled kernels do not run here: numba is missing or DASK_EM_COMPILED=0)")
        return
    print("\n# Thread CPU time of one chunk's E-step (ms, best of the repeats), numpy kernels against compiled")
    print("| kernel | rows | numpy kernels | compiled | numpy / compiled |")
    print("| --- | --- | --- | --- | --- |")
    with threadpool_limits(1):
        for label in labels:
            state, x = make_kernel(label)
            best = {True: np.inf, False: np.inf}
            for _ in range(repeats):
                for on in (False, True):
                    _compiled._STATE["on"] = on
                    engine.estep_block(x, None, state)
                    tic, calls = time.thread_time(), 0
                    while time.thread_time() - tic < seconds:
                        engine.estep_block(x, None, state)
                        calls += 1
                    best[on] = min(best[on], (time.thread_time() - tic) / calls)
            _compiled._STATE["on"] = True
            print(f"| {label} | {len(x)} | {best[False] * 1e3:.1f} | {best[True] * 1e3:.1f} | "
                  f"{best[False] / best[True]:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default="gaussian,missing,discrete",
                        help="comma-separated labels or groups (gaussian, residual, missing, discrete); "
                             "default: all but residual")
    parser.add_argument("--seconds", type=float, default=2.0, help="per kernel and recording")
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples a second")
    parser.add_argument("--top", type=int, default=0, help="print the N leaf lines holding the GIL most per kernel")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of recordings; the share is their median")
    parser.add_argument("--thread-time", action="store_true",
                        help="instead: thread CPU time per chunk, numpy kernels against the compiled ones")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child.split(","), args.seconds)
        return
    labels = expand(args.kernels)
    unknown = sorted(set(labels) - set(kernel_labels()))
    if unknown:
        parser.error(f"unknown kernels {unknown}; valid: {', '.join(kernel_labels())}")
    if args.thread_time:
        thread_times(labels, args.seconds, max(args.repeats, 3))
        return
    from dask_em import _compiled

    print(f"# compiled E-step kernels: {'on' if _compiled.warm_up() else 'off (numpy kernels)'}")
    print(f"# GIL-held share of an E-step thread (py-spy --gil over active samples), K={K}, one BLAS thread; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("# floor: a compiled loop that releases the GIL for ~10 ms a call (its true share ~0.01%): what the"
          " method reads for a kernel that holds the GIL for nothing but its call")
    print_table(gil_shares([FLOOR] + labels, args.seconds, args.rate, repeats=args.repeats), args.top)


if __name__ == "__main__":
    main()
