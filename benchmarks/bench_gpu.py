"""Per-iteration cost of dask-em on a GPU, against the host's cores, scikit-learn's array-API
``GaussianMixture`` on the same GPU, and the GPU's own floors, measured in one run.

For each data shape, covariance type, K and dtype, every system starts from the
same parameters and runs the same iterations (tol=0):

* gpu           dask-em on a CuPy array resident on the GPU (``fit(cupy_array)``):
                the E-step of each chunk on the device, statistics to the host,
                the M-step there.
* sklearn-gpu   scikit-learn's own E-step and M-step (``_e_step`` / ``_m_step``)
                under ``array_api_dispatch=True`` on the same CuPy array (or a
                PyTorch tensor with ``--sklearn-backend torch``).
* cpu           dask-em on the same rows in host memory, on all the host's
                cores (direct rounds on local threads), at the smallest K of
                ``--components`` only unless ``--cpu-all``.
* floor         max(FLOP floor, read floor): 4·n·K·d² flops (full/tied, the two
                GEMMs of an iteration; diag: 4·n·K·d) at the GEMM rate measured
                at the start (a 8192² GEMM of the dtype), and the bytes of X at
                the device-to-device copy rate.
* zarr          dask-em from an uncompressed Zarr store in host memory
                (``/dev/shm``) with ``device="cuda"``: each chunk decoded on the
                host and copied once; beside it ``h2d``, the host-to-device copy
                of the same bytes (pinned-free ``cupy.asarray``). With ``--smoke``
                the store's chunks go to the emulated device through
                ``map_blocks`` (what ``device="cuda"`` does with CuPy).

The last columns: the largest relative difference of the GPU fit's means and
covariances from the CPU fit of the same start (float64: expected ~1e-12), and
the peak GPU memory in use (sampled every 50 ms).

Usage (on a GPU machine; ``--smoke`` runs the same code path on CPU through
``array_api_strict``, tiny shapes, to check the script)::

    python benchmarks/bench_gpu.py                 # the full table (~4 minutes on one H200)
    python benchmarks/bench_gpu.py --quick         # 1M x 16 and 250k x 64, K=8
    python benchmarks/bench_gpu.py --smoke         # no GPU: the script's own check
"""

from __future__ import annotations

import os

# scikit-learn's array-API dispatch needs scipy's array API support, chosen before scipy loads.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sampling import PeakSampler  # noqa: E402


class Backend:
    """The device: CuPy on a GPU, or array_api_strict's emulated device for ``--smoke``."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        if smoke:
            import array_api_strict as xp

            self.xp, self.device = xp, xp.Device("device1")
            self.name = "array_api_strict (CPU, smoke)"
        else:
            import cupy as xp

            self.xp, self.device = xp, None
            props = xp.cuda.runtime.getDeviceProperties(0)
            self.name = f"{props['name'].decode()} (CuPy {xp.__version__})"

    def put(self, a):
        return self.xp.asarray(a, device=self.device) if self.smoke else self.xp.asarray(a)

    def sync(self):
        if not self.smoke:
            self.xp.cuda.Device().synchronize()

    def store_input(self, path) -> tuple:
        """``fit``'s input and keywords that read the store at ``path`` onto the device, chunk by chunk."""
        if not self.smoke:
            return path, {"device": "cuda"}
        import dask.array as da

        X = da.from_zarr(path)
        return X.map_blocks(self.put, dtype=X.dtype, meta=np.empty((0, 0), X.dtype)), {}

    def used_bytes(self) -> int:
        if self.smoke:
            return 0
        free, total = self.xp.cuda.runtime.memGetInfo()
        return total - free

    def best(self, fn, repeats=3) -> float:
        fn()
        self.sync()
        best = np.inf
        for _ in range(repeats):
            tic = time.perf_counter()
            fn()
            self.sync()
            best = min(best, time.perf_counter() - tic)
        return best

    def gemm_flops(self, dtype) -> float:
        size = 1024 if self.smoke else 8192
        a = self.put(np.random.default_rng(0).standard_normal((size, size)).astype(dtype))
        return 2 * size**3 / self.best(lambda: a @ a)

    def copy_bytes_per_s(self, x) -> float:
        xp = self.xp
        nbytes = int(np.prod(x.shape)) * (8 if x.dtype == xp.float64 else 4)
        return 2 * nbytes / self.best(lambda: xp.asarray(x, copy=True))  # read + write


def make_data(n, d, k, dtype, rng):
    means = rng.normal(scale=6.0, size=(k, d))
    labels = rng.integers(0, k, n)
    X = (means[labels] + rng.standard_normal((n, d))).astype(dtype)
    return X, means


def start(X, means, cov_type, rng):
    k, d = means.shape
    m = means + 0.3 * rng.standard_normal((k, d))
    prec = {"full": np.broadcast_to(np.eye(d), (k, d, d)).copy(), "tied": np.eye(d),
            "diag": np.ones((k, d)), "spherical": np.ones(k)}[cov_type]
    return {"weights_init": np.full(k, 1.0 / k), "means_init": m, "precisions_init": prec}


def dask_em_fit(X, k, cov_type, init, iters, dtype, **fit_kw):
    import dask_em

    gm = dask_em.GaussianMixture(k, covariance_type=cov_type, tol=0, max_iter=iters, compute_dtype=dtype, **init)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X, **fit_kw)
    r = gm.restarts_[0]
    return r["seconds"] / r["n_iter"], gm


def sklearn_fit(backend, Xd, k, cov_type, init, iters):
    """scikit-learn's own iteration (``_e_step`` then ``_m_step``) on the device array, seconds each."""
    import sklearn
    from sklearn.mixture import GaussianMixture
    from sklearn.utils._array_api import get_namespace

    dtype = np.float32 if "float32" in str(Xd.dtype) else np.float64  # scikit-learn keeps X's dtype
    on = {key: backend.put(np.asarray(v, dtype=dtype)) for key, v in init.items()}
    with sklearn.config_context(array_api_dispatch=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xp, _ = get_namespace(Xd)
        # One iteration through fit: validation, the given start, the fitted state set up.
        gm = GaussianMixture(k, covariance_type=cov_type, tol=0, max_iter=1, init_params="random", **on).fit(Xd)
        backend.sync()
        tic = time.perf_counter()
        for _ in range(iters):
            _, log_resp = gm._e_step(Xd, xp=xp)
            gm._m_step(Xd, log_resp)
        backend.sync()
    return (time.perf_counter() - tic) / iters


def flops(n, d, k, cov_type) -> float:
    return 4.0 * n * k * (d * d if cov_type in ("full", "tied") else 2 * d)


def rel(a, b) -> float:
    from dask_em._namespace import to_numpy

    a, b = to_numpy(a), to_numpy(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="no GPU: array_api_strict on CPU, tiny shapes")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--shapes", default=None, help="e.g. 8000000x16,2000000x64")
    p.add_argument("--types", default="full,diag")
    p.add_argument("--components", default="8,64")
    p.add_argument("--dtypes", default="float64,float32")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--cpu-all", action="store_true", help="the host's cores for every case (slow)")
    p.add_argument("--sklearn-backend", choices=["cupy", "torch"], default="cupy")
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per chunk on the GPU (default: 4 chunks)")
    p.add_argument("--no-zarr", action="store_true")
    args = p.parse_args(argv)

    backend = Backend(args.smoke)
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    elif args.smoke:
        shapes = [(4000, 4), (2000, 8)]
    elif args.quick:
        shapes = [(1_000_000, 16), (250_000, 64)]
    else:
        shapes = [(8_000_000, 16), (2_000_000, 64)]
    types = args.types.split(",")
    ks = [int(k) for k in args.components.split(",")] if not (args.quick or args.smoke) else [8]
    dtypes = args.dtypes.split(",")
    rng = np.random.default_rng(0)

    import threadpoolctl

    blas = threadpoolctl.threadpool_info()
    print(f"device: {backend.name}; host: {os.cpu_count()} cores, "
          f"{', '.join(sorted({b.get('internal_api', '?') + ' ' + str(b.get('architecture')) for b in blas}))}")
    rates = {dt: backend.gemm_flops(dt) for dt in dtypes}
    print("GEMM " + ", ".join(f"{dt} {r / 1e12:.2f} TFLOP/s" for dt, r in rates.items()))

    header = ("shape", "type", "K", "dtype", "gpu s/it", "sklearn-gpu", "x", "cpu s/it", "x", "floor s",
              "of floor", "zarr s/it", "h2d s", "x", "rel diff", "GPU GiB")
    rows = []
    for n, d in shapes:
        host = {}
        for dt in dtypes:
            X, means = make_data(n, d, max(ks), dt, np.random.default_rng(n + d))
            host[dt] = (X, means)
        for dt in dtypes:
            X, means = host[dt]
            Xd = backend.put(X)
            copy_rate = backend.copy_bytes_per_s(Xd)
            chunk_rows = args.chunk_rows or max(1, -(-n // 4))
            zarr_dir = None
            for cov_type in types:
                for k in ks:
                    init = start(X, means[:k], cov_type, rng)
                    with PeakSampler(backend.used_bytes) as peak:
                        gpu_s, gpu_model = dask_em_fit(Xd, k, cov_type, init, args.iters, dt, chunk_rows=chunk_rows)
                    try:
                        sk_backend_x = Xd if args.sklearn_backend == "cupy" else _torch(Xd)
                        sk_s = sklearn_fit(backend, sk_backend_x, k, cov_type, init, args.iters)
                    except Exception as exc:  # report, do not hide: the column says why
                        sk_s = float("nan")
                        print(f"  sklearn-gpu failed ({n}x{d} {cov_type} K={k} {dt}): {type(exc).__name__}: {exc}")
                    cpu_s, diff = float("nan"), float("nan")
                    if args.cpu_all or (k == min(ks)):
                        cpu_s, cpu_model = dask_em_fit(X, k, cov_type, init, args.iters, dt)
                        diff = max(rel(gpu_model.means_, cpu_model.means_),
                                   rel(gpu_model.covariances_, cpu_model.covariances_))
                    floor = max(flops(n, d, k, cov_type) / rates[dt], n * d * np.dtype(dt).itemsize / (copy_rate / 2))
                    zarr_s = h2d = float("nan")
                    if not args.no_zarr and k == min(ks):
                        zarr_dir = zarr_dir or _write_store(X, chunk_rows)
                        if zarr_dir is not None:
                            source, fit_kw = backend.store_input(zarr_dir)
                            zarr_s, _ = dask_em_fit(source, k, cov_type, init, args.iters, dt, **fit_kw)
                            h2d = backend.best(lambda: backend.put(X), repeats=2)
                    rows.append((f"{n}x{d}", cov_type, k, dt, gpu_s, sk_s, sk_s / gpu_s, cpu_s, cpu_s / gpu_s, floor,
                                 floor / gpu_s, zarr_s, h2d, zarr_s / h2d, diff, peak.peak / 2**30))
                    _print_row(rows[-1], header if len(rows) == 1 else None)
            del Xd
            if zarr_dir:
                shutil.rmtree(zarr_dir, ignore_errors=True)
    return rows


def _torch(x):
    import torch

    return torch.from_dlpack(x)


def _write_store(X, chunk_rows):
    try:
        import zarr
    except ImportError:
        print("  zarr not importable here: the zarr column is skipped")
        return None
    root = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = tempfile.mkdtemp(prefix="dask-em-gpu-", dir=root)
    z = zarr.create_array(os.path.join(path, "x.zarr"), shape=X.shape, chunks=(chunk_rows, X.shape[1]),
                          dtype=X.dtype, compressors=None, overwrite=True)
    for lo in range(0, X.shape[0], chunk_rows):
        z[lo : lo + chunk_rows] = X[lo : lo + chunk_rows]
    return os.path.join(path, "x.zarr")


def _print_row(row, header):
    if header:
        print(" | ".join(header))
        print(" | ".join("---" for _ in header))
    cells = []
    for v in row:
        if isinstance(v, float):
            cells.append("n/a" if np.isnan(v) else (f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.1e}"))
        else:
            cells.append(str(v))
    print(" | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
