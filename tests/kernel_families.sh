#!/usr/bin/env bash
# Run the test suite once per OpenBLAS kernel family, so that a tolerance which holds on
# one BLAS kernel and not on another is found before it lands.
#
#   bash tests/kernel_families.sh                 # the machine's own choice, Haswell, SkylakeX, Zen
#   KERNELS="auto Sandybridge" bash tests/kernel_families.sh -x tests/test_gaussian.py
#
# Arguments go to pytest. OPENBLAS_CORETYPE forces a family; a family whose instructions
# this processor lacks (SkylakeX needs AVX-512, Haswell and Zen AVX2 and FMA) cannot run
# here (it dies with "Illegal instruction") and is reported as skipped, not as passed.
# Each run's kernel is read back through threadpoolctl and printed beside its counts.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
KERNELS=${KERNELS:-"auto Haswell SkylakeX Zen"}
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { [[ " $flags " == *" $1 "* ]]; }
supported() {
    case "$1" in
        auto) return 0 ;;
        SkylakeX|Cooperlake|SapphireRapids) has avx512f && has avx512bw && has avx512vl ;;
        Haswell|Zen) has avx2 && has fma ;;
        Sandybridge) has avx ;;
        *) return 0 ;;
    esac
}
summary=()
status=0
for kernel in $KERNELS; do
    if ! supported "$kernel"; then
        summary+=("$(printf '%-12s %-12s %s' "$kernel" "-" "skipped: this processor lacks its instructions")")
        continue
    fi
    if [ "$kernel" = auto ]; then unset OPENBLAS_CORETYPE; else export OPENBLAS_CORETYPE=$kernel; fi
    picked=$("$PY" -c "import numpy, threadpoolctl; print(threadpoolctl.threadpool_info()[0].get('architecture'))" 2>&1 | tail -1)
    log=$(mktemp)
    echo "== OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-<unset>} (OpenBLAS reports: $picked)"
    "$PY" -m pytest -q -p no:cacheprovider "$@" > "$log" 2>&1
    rc=$?
    grep -E '^(FAILED|ERROR) ' "$log"
    tail -1 "$log"
    counts=$(grep -E '^(=+ )?[0-9]+ (passed|failed)|[0-9]+ passed|[0-9]+ failed' "$log" | tail -1 | sed 's/=//g')
    summary+=("$(printf '%-12s %-12s %s' "$kernel" "$picked" "$counts")")
    [ "$rc" -ne 0 ] && status=1
    rm -f "$log"
done
unset OPENBLAS_CORETYPE
echo
printf '%-12s %-12s %s\n' "asked" "reported" "result"
printf '%s\n' "${summary[@]}"
echo "processor: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
exit $status
