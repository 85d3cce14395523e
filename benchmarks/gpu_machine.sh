#!/usr/bin/env bash
# The GPU checks as one prepared run, for a GPU machine without network or dask.
#
#   bash benchmarks/gpu_machine.sh download   # here, with network: wheels into .whl/ (ignored by git)
#   bash benchmarks/gpu_machine.sh run [ARGS]  # there, from the checkout's root, .whl/ carried along:
#                                              # the CuPy tests, then bench_gpu.py ARGS
#   bash benchmarks/gpu_machine.sh cores [ARGS] # there: bench_cores.py ARGS (the host's 16 cores)
#   bash benchmarks/gpu_machine.sh read [ARGS]  # there: bench_read.py ARGS (Zarr reads on 1-16 threads)
#
# The GPU machine has Python 3.12, numpy, scipy, scikit-learn, xarray and CuPy, but not dask,
# distributed, zarr or the small packages dask-em needs beside them: their wheels travel in .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
download)
    py=$(python3 -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
    dask_v=$(python3 -c 'import dask; print(dask.__version__)' 2>/dev/null || echo "")
    pins=(dask distributed zarr)
    if [ -n "$dask_v" ]; then pins=("dask==$dask_v" "distributed==$dask_v" zarr); fi
    rm -rf .whl && mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
        -d .whl "${pins[@]}" partd locket tblib tornado zict donfig google-crc32c numcodecs cloudpickle \
        toolz fsspec click pyyaml tqdm threadpoolctl msgpack psutil sortedcontainers jinja2 markupsafe \
        array-api-compat array-api-strict pytest pytest-timeout pluggy iniconfig packaging crc32c \
        typing-extensions importlib-metadata zipp
    du -sh .whl && echo "python here: $py; carry .whl with the run (carry: [\".whl\"])"
    ;;
run | cores | read)
    mode=$1
    shift || true
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
    if [ "$mode" = cores ]; then
        exec timeout 300 python3 benchmarks/bench_cores.py "$@"
    fi
    if [ "$mode" = read ]; then
        exec timeout 300 python3 benchmarks/bench_read.py "$@"
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c 'import cupy, dask, dask_em; print("cupy", cupy.__version__, "dask", dask.__version__)'
    timeout 240 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_array_api.py
    timeout 300 python3 benchmarks/bench_gpu.py "$@"
    ;;
*)
    echo "usage: bash benchmarks/gpu_machine.sh download|run|cores|read [benchmark arguments]" >&2
    exit 2
    ;;
esac
