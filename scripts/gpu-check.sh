#!/usr/bin/env bash
# The CUDA backend's check on a GPU machine: build with CUDA=1, run the GPU
# tests once under compute-sanitizer (memcheck), then plainly, then the GPU
# benchmark and the PyTorch comparison, and write a short report.
#
#   bash scripts/gpu-check.sh                  # on the GPU machine, from the repo
#   bash scripts/gpu-check.sh --pack-deps DIR  # on a dev machine: copy the build
#                                              # dependencies' headers and libraries
#                                              # into DIR (e.g. .gpudeps) to carry
#
# test_cuda covers float32, bfloat16 and Q8_0 weights (test_q8_* are checked
# by name in its log); gpu_bench measures all three (q8.* keys get their own
# section in the report).
#
# Output: ${OUT:-gpu-report}/gpu-report.md and the raw logs beside it
# (build.log, sanitizer.log, test_cuda.log, bench.log, test_c.log: the
# CPU-path tests of the CUDA build).
# The whole run stays under 8 minutes: every phase runs under `timeout`,
# bounded by what is left of a 7.5-minute budget.
#
# Build dependencies (Debian/Ubuntu names): libopenblas-dev libcmocka-dev
# libcjson-dev libxxhash-dev. Where they are missing and apt-get cannot
# install them (no network), the script uses prebuilt copies from
# $BDH_DEPS (default: .gpudeps/ in the repository), made with --pack-deps.
#
# Knobs: GPU_CHECK_QUICK=1 (no sanitizer phase unless GPU_CHECK_SANITIZER=1,
# shorter benchmark, no CPU tests),
# GPU_CHECK_BUDGET=seconds (default 450), BUILD=dir (default build-gpu).
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1

# ---------------------------------------------------------------- --pack-deps
if [ "${1:-}" = "--pack-deps" ]; then
    DIR=${2:?usage: $0 --pack-deps DIR}
    mkdir -p "$DIR/include/cjson" "$DIR/lib"
    find_header() { # first existing path among the arguments
        for p in "$@"; do [ -f "$p" ] && { echo "$p"; return 0; }; done
        return 1
    }
    ob_inc=$(pkg-config --cflags-only-I openblas 2>/dev/null | sed 's/^-I//;s/ .*//')
    for h in cblas.h openblas_config.h f77blas.h; do
        src=$(find_header "$ob_inc/$h" /usr/include/x86_64-linux-gnu/openblas-pthread/$h /usr/include/$h) &&
            cp "$src" "$DIR/include/" || echo "pack-deps: $h not found"
    done
    for h in xxhash.h xxh3.h cmocka.h cmocka_pbc.h; do
        [ -f /usr/include/$h ] && cp /usr/include/$h "$DIR/include/" || echo "pack-deps: $h not found"
    done
    cp /usr/include/cjson/cJSON.h "$DIR/include/cjson/" || echo "pack-deps: cjson/cJSON.h not found"
    # the shared libraries, by soname, plus the link-time name
    for l in openblas cjson xxhash cmocka; do
        so=$(ldconfig -p | awk -v n="lib$l.so" '$1 ~ "^"n"\\.[0-9]+$" {print $NF; exit}')
        [ -z "$so" ] && { echo "pack-deps: lib$l not found"; continue; }
        soname=$(basename "$(ldconfig -p | awk -v n="lib$l.so" '$1 ~ "^"n"\\.[0-9]+$" {print $1; exit}')")
        cp -L "$so" "$DIR/lib/$soname"
        ln -sf "$soname" "$DIR/lib/lib$l.so"
        # openblas needs gfortran and quadmath at run time
        for dep in $(ldd "$so" | awk '/gfortran|quadmath/ {print $3}'); do cp -L "$dep" "$DIR/lib/"; done
    done
    du -sh "$DIR"
    echo "carry $DIR to the GPU machine (it is looked for as \$BDH_DEPS or .gpudeps/)"
    exit 0
fi

# ---------------------------------------------------------------- setup
R=${OUT:-gpu-report}
mkdir -p "$R"
R=$(cd "$R" && pwd)
WORK=${TMPDIR:-/tmp}/bdh-gpu-check
rm -rf "$WORK"
mkdir -p "$WORK"
BUILD=${BUILD:-build-gpu}
BUDGET=${GPU_CHECK_BUDGET:-450}
QUICK=${GPU_CHECK_QUICK:-0}
START=$(date +%s)
NPROC=$(nproc 2>/dev/null || echo 4)
export PATH="$PATH:/usr/local/cuda/bin"
PY=${PYTHON:-python3}

PHASES=()   # "name|result|seconds|log"
left() { echo $((BUDGET - ($(date +%s) - START))); }

# run_phase NAME CAP_SECONDS LOG CMD...: run under timeout min(CAP, time left);
# appends to LOG; records PASS / FAIL (rc) / TIMEOUT / SKIPPED (no time).
run_phase() {
    local name=$1 cap=$2 log=$3
    shift 3
    local t
    t=$(left)
    [ "$t" -gt "$cap" ] && t=$cap
    if [ "$t" -lt 10 ]; then
        PHASES+=("$name|SKIPPED (out of time)|0|$(basename "$log")")
        echo "== $name: skipped, out of time" | tee -a "$log"
        return 1
    fi
    echo "== $name (limit ${t}s): $*" | tee -a "$log"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$t" "$@" >>"$log" 2>&1
    rc=$?
    local dt=$(($(date +%s) - t0)) res
    if [ $rc -eq 0 ]; then res=PASS
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then res="TIMEOUT after ${t}s"
    else res="FAIL (exit $rc)"; fi
    PHASES+=("$name|$res|$dt|$(basename "$log")")
    echo "== $name: $res in ${dt}s" | tee -a "$log"
    return $rc
}

BLOG=$R/build.log
: >"$BLOG"
{
    echo "== environment"
    date -u
    uname -a
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
    nvcc --version 2>&1 | tail -2
    command -v compute-sanitizer || echo "compute-sanitizer: not found"
    $PY -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available())' 2>&1
} >>"$BLOG" 2>&1
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
NVCC_V=$(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "unknown (no .git)")
[ -n "$(git status --porcelain 2>/dev/null | grep -v '^??')" ] && COMMIT="$COMMIT + local changes"

# ---------------------------------------------------------------- dependencies
# One check per dependency: header compiles and library links.
# shellcheck disable=SC2046 # pkg-config's flags are meant to split
dep_ok() { # name header lib
    printf '#include <stddef.h>\n#include <stdarg.h>\n#include <setjmp.h>\n#include <%s>\nint main(void){return 0;}\n' "$2" |
        cc $(pkg-config --cflags openblas 2>/dev/null) -x c - -l"$3" -o "$WORK/depcheck" >/dev/null 2>&1
}
DEPS="openblas:cblas.h:openblas:libopenblas-dev cjson:cjson/cJSON.h:cjson:libcjson-dev xxhash:xxhash.h:xxhash:libxxhash-dev cmocka:cmocka.h:cmocka:libcmocka-dev"
missing_deps() {
    local out=""
    for d in $DEPS; do
        IFS=: read -r n h l p <<<"$d"
        dep_ok "$n" "$h" "$l" || out="$out $n:$p"
    done
    echo "$out"
}
DEP_NOTE="all present"
MISSING=$(missing_deps)
if [ -n "$MISSING" ]; then
    echo "== missing build dependencies:$MISSING" | tee -a "$BLOG"
    pkgs=$(for m in $MISSING; do echo "${m#*:}"; done | tr '\n' ' ')
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "== trying: apt-get install $pkgs (no update; fails fast offline)" | tee -a "$BLOG"
        DEBIAN_FRONTEND=noninteractive timeout 60 apt-get install -y -q --no-install-recommends $pkgs >>"$BLOG" 2>&1
    fi
    MISSING=$(missing_deps)
    DEPDIR=${BDH_DEPS:-$ROOT/.gpudeps}
    if [ -n "$MISSING" ] && [ -d "$DEPDIR" ]; then
        DEPDIR=$(cd "$DEPDIR" && pwd)
        echo "== using prebuilt dependencies from $DEPDIR" | tee -a "$BLOG"
        export CPATH="$DEPDIR/include${CPATH:+:$CPATH}"
        export LIBRARY_PATH="$DEPDIR/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
        export LD_LIBRARY_PATH="$DEPDIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        MISSING=$(missing_deps)
        DEP_NOTE="prebuilt copies from $DEPDIR"
    fi
    if [ -n "$MISSING" ]; then
        DEP_NOTE="MISSING:$MISSING"
        {
            echo "!! MISSING build dependencies:$MISSING"
            echo "!! apt-get could not install them. On a machine that has them, run"
            echo "!!   bash scripts/gpu-check.sh --pack-deps .gpudeps"
            echo "!! and carry .gpudeps/ here (or point BDH_DEPS at such a folder)."
        } | tee -a "$BLOG"
    else
        [ "$DEP_NOTE" = "all present" ] && DEP_NOTE="installed with apt-get"
    fi
fi
echo "== dependencies: $DEP_NOTE" | tee -a "$BLOG"
has_dep() { ! echo " $MISSING " | grep -q " $1:"; }

# ---------------------------------------------------------------- build
BUILD_OK=0
if has_dep openblas && has_dep cjson && has_dep xxhash; then
    run_phase "build (make CUDA=1)" 300 "$BLOG" make BUILD="$BUILD" CUDA=1 -j"$NPROC" lib && BUILD_OK=1
    if [ $BUILD_OK = 1 ]; then
        # the benchmark links the static library to read the backend's counters
        run_phase "build gpu_bench" 60 "$BLOG" cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Iinclude -Ikernels \
            -I/usr/local/cuda/include bench/gpu_bench.c "$BUILD/libbdh.a" -L/usr/local/cuda/lib64 \
            -Wl,-rpath,/usr/local/cuda/lib64 -lcublas -lcudart -lstdc++ -lopenblas -lcjson -lxxhash -lm -pthread \
            -o "$BUILD/gpu_bench"
    fi
else
    PHASES+=("build (make CUDA=1)|SKIPPED (missing dependencies)|0|build.log")
fi
TESTS_OK=0
if [ $BUILD_OK = 1 ] && has_dep cmocka; then
    run_phase "build tests" 120 "$BLOG" make BUILD="$BUILD" CUDA=1 -j"$NPROC" "$BUILD/tests/test_cuda" && TESTS_OK=1
fi

# ---------------------------------------------------------------- tests
SLOG=$R/sanitizer.log
TLOG=$R/test_cuda.log
: >"$SLOG"
: >"$TLOG"
if [ $TESTS_OK = 1 ]; then
    if { [ "$QUICK" != 1 ] || [ "${GPU_CHECK_SANITIZER:-0}" = 1 ]; } && command -v compute-sanitizer >/dev/null; then
        run_phase "test_cuda under compute-sanitizer memcheck (quick)" 220 "$SLOG" \
            env BDH_TEST_QUICK=1 compute-sanitizer --tool memcheck --leak-check full --error-exitcode 99 "$BUILD/tests/test_cuda"
    else
        PHASES+=("test_cuda under compute-sanitizer|SKIPPED|0|sanitizer.log")
    fi
    # every CUDA test, the Q8_0 ones (test_q8_*) included
    run_phase "test_cuda" 180 "$TLOG" "$BUILD/tests/test_cuda"
    q8_missing=""
    for t in test_q8_parity test_q8_batch test_q8_prefill test_q8_prequantized; do
        grep -q "\[ \+OK \] $t" "$TLOG" || q8_missing="$q8_missing $t"
    done
    if [ -n "$q8_missing" ]; then
        echo "!! Q8_0 tests that did not pass (or did not run):$q8_missing" | tee -a "$TLOG"
        PHASES+=("Q8_0 tests in test_cuda|FAIL (not passed:$q8_missing)|0|test_cuda.log")
    else
        PHASES+=("Q8_0 tests in test_cuda|PASS|0|test_cuda.log")
    fi
fi

# ---------------------------------------------------------------- benchmark
BENCH=$R/bench.log
: >"$BENCH"
MODEL=$WORK/bench_model.safetensors
if [ $BUILD_OK = 1 ] && [ -x "$BUILD/gpu_bench" ]; then
    qflag=""
    [ "$QUICK" = 1 ] && qflag=--quick
    run_phase "gpu_bench" 200 "$BENCH" "$BUILD/gpu_bench" --model "$MODEL" --out "$WORK" $qflag
    if [ -f "$MODEL" ]; then
        steps=100
        [ "$QUICK" = 1 ] && steps=40
        run_phase "PyTorch comparison" 120 "$BENCH" env PYTHONUNBUFFERED=1 $PY bench/torch_gpu.py --model "$MODEL" \
            --c-results "$WORK/gpu_bench.txt" --logits "$WORK/gpu_bench_logits.bin" --out "$WORK/torch_gpu.txt" \
            --table "$WORK/bench-table.md" --steps $steps
    fi
fi

# ---------------------------------------------------------------- the other tests
CLOG=$R/test_c.log
: >"$CLOG"
if [ $TESTS_OK = 1 ] && [ "$QUICK" != 1 ]; then
    # the CPU-path tests of the CUDA build (test_cuda already ran above)
    OTHER=$(for f in tests/test_*.c; do t=$(basename "$f" .c); [ "$t" = test_cuda ] || echo "$BUILD/tests/$t"; done)
    # shellcheck disable=SC2086 # one word per test
    run_phase "other C tests in the CUDA build" 150 "$CLOG" bash -c \
        "make BUILD='$BUILD' CUDA=1 -j$NPROC $(echo $OTHER) && for t in $(echo $OTHER); do echo \"== \$t\"; \$t || exit 1; done"
fi

# ---------------------------------------------------------------- report
REPORT=$R/gpu-report.md
{
    echo "# libbdh GPU check"
    echo
    echo "- when: $(date -u '+%Y-%m-%d %H:%M UTC'), $(($(date +%s) - START)) s in all"
    echo "- GPU: ${GPU_NAME:-unknown}, driver ${DRIVER:-?}; nvcc ${NVCC_V:-?}; commit $COMMIT"
    echo "- dependencies: $DEP_NOTE"
    echo "- command: \`bash scripts/gpu-check.sh\` (BUILD=$BUILD, quick=$QUICK)"
    echo
    echo "| phase | result | seconds | log |"
    echo "| --- | --- | ---: | --- |"
    for p in "${PHASES[@]}"; do
        IFS='|' read -r n res dt log <<<"$p"
        echo "| $n | $res | $dt | $log |"
    done
    echo
    if grep -q "ERROR SUMMARY" "$SLOG" 2>/dev/null; then
        echo "compute-sanitizer: $(grep 'ERROR SUMMARY' "$SLOG" | tail -1)"
        echo
    fi
    if [ -s "$TLOG" ]; then
        echo "## GPU tests (test_cuda)"
        echo
        echo '```'
        grep -E '^  |PASSED|FAILED|skipped|\[  (OK|FAILED)|ERROR|rel err|^!!' "$TLOG" | head -160
        echo '```'
        echo
    fi
    if grep -q '^q8\.' "$WORK/gpu_bench.txt" 2>/dev/null; then
        # bench/torch_gpu.py's table has float32 and bfloat16 only
        echo "## Q8_0 weights (libbdh, gpu_bench)"
        echo
        echo '```'
        grep -E '^(f32\.(decode_ms|bytes_per_token|GBps|weight_bytes|batch_tok_s|prefill_tok_s)|q8\.[a-z0-9_]+|bf16\.decode_vs_f32)=' "$WORK/gpu_bench.txt"
        echo '```'
        echo
    fi
    if [ -s "$WORK/bench-table.md" ]; then
        echo "## Benchmark"
        echo
        cat "$WORK/bench-table.md"
        echo
    elif [ -s "$WORK/gpu_bench.txt" ]; then
        echo "## Benchmark (libbdh only)"
        echo
        echo '```'
        cat "$WORK/gpu_bench.txt"
        echo '```'
        echo
    fi
    for p in "${PHASES[@]}"; do
        IFS='|' read -r n res dt log <<<"$p"
        case $res in PASS | SKIPPED*) continue ;; esac
        echo "## $n: $res (last lines of $log)"
        echo
        echo '```'
        tail -n 40 "$R/$log"
        echo '```'
        echo
    done
} >"$REPORT"
cat "$REPORT"

for p in "${PHASES[@]}"; do
    case $p in *"|PASS|"* | *"|SKIPPED"*) ;; *) exit 1 ;; esac
done
exit 0
