#!/usr/bin/env bash
# One-shot GPU check, under 8 minutes on a machine with an NVIDIA GPU, a CUDA torch and nvcc:
#   1. build the CUDA extension in place (XHYP_FORCE_CUDA=1 setup.py build_ext --inplace, for the
#      GPU's own architecture only)
#   2. run the CUDA tests (tests/test_cuda_vs_cpu.py, the ext-cuda cases of tests/test_kernels.py)
#   3. time exact and clustered kNN on the Delicious-200K shape (196,606 x 50 database, 100,095
#      queries, k 10) on the GPU with CUDA events, beside the CPU exact kernel (2 threads, 2,000-query
#      sample), and check GPU/CPU agreement: $OUT_DIR/gpu_knn.json
#   4. GPU training timing: bench/bench_train.py --device cuda, one whole epoch of the current
#      trainer on both of its default shapes (wiki10-31k, delicious-200k@0.05): $OUT_DIR/gpu_train.json
#   5. compute-sanitizer memcheck and racecheck on tiny inputs (knn, clustered_knn, vote_topk,
#      scan_plan)
# Every step has its own timeout and all of them share one deadline (GPU_CHECK_BUDGET seconds,
# default 470); a failed step does not stop the others; the summary at the end lists each step's
# status and the script exits non-zero if any step failed or the environment is unusable.
#
# Usage: bash scripts/gpu_check.sh [OUT_DIR]      (default OUT_DIR: $OUT, else ./gpu_check_out)
#
# Python: $PYTHON if set, else the first of python3, python, .venv/bin/python whose torch sees a
# GPU. The machine needs torch, numpy, scipy, pytest and geoopt; a missing geoopt (pure Python) is
# installed from .whl/geoopt-*.whl when that file is there (on a machine with pip access:
# `pip download --no-deps geoopt==0.5.1 -d .whl`; .whl/ is git-ignored, carry it along).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT="$PWD"
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
T_START=$(date +%s)
DEADLINE=$((T_START + ${GPU_CHECK_BUDGET:-470}))
export PYTHONUNBUFFERED=1
declare -a NAMES=() STATUS=() SECS=()

note() { echo "$*" | tee -a "$LOG"; }

skip() {
    NAMES+=("$1"); STATUS+=("skipped: $2"); SECS+=(0)
    note "=== [$1] skipped: $2"
}

step() {  # step NAME TIMEOUT_S CMD...  (the timeout is cut to what the deadline leaves)
    local name="$1" limit="$2"; shift 2
    local left=$((DEADLINE - $(date +%s)))
    if [ "$left" -lt 20 ]; then skip "$name" "out of time (${left}s left of the budget)"; return 0; fi
    if [ "$limit" -gt "$left" ]; then limit="$left"; fi
    local t0 rc st
    t0=$(date +%s)
    note "=== [$name] (timeout ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    st="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then st="TIMEOUT"; elif [ "$rc" -ne 0 ]; then st="FAIL(rc=$rc)"; fi
    local dt=$(( $(date +%s) - t0 ))
    NAMES+=("$name"); STATUS+=("$st"); SECS+=("$dt")
    note "=== [$name] $st in ${dt}s"
    tail -n 5 "$LOG" | sed 's/^/    /'
    return 0
}

# --- environment ---------------------------------------------------------------------------------
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
else
    note "nvidia-smi not found"
fi
PY=""
for cand in ${PYTHON:-} python3 python .venv/bin/python; do
    if command -v "$cand" > /dev/null 2>&1 &&
        "$cand" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >> "$LOG" 2>&1; then
        PY="$cand"
        break
    fi
done
if [ -z "$PY" ]; then
    note "no Python whose torch sees a GPU (tried \$PYTHON, python3, python, .venv/bin/python): this script needs one"
    exit 2
fi
note "python: $(command -v "$PY") ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'))"
SITE="$OUT_DIR/site"
if ! "$PY" -c "import geoopt" > /dev/null 2>&1; then
    if ls .whl/geoopt-*.whl > /dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/geoopt-*.whl >> "$LOG" 2>&1 &&
            note "geoopt installed from .whl into $SITE"
    else
        note "WARNING: geoopt is missing and .whl/geoopt-*.whl is not there: the tests and timings that import" \
             "xhyp.embedding.manifold will fail (see the header of this script)"
    fi
fi
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
ARCH="$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability(0))' 2>> "$LOG")"

# --- 1. build --------------------------------------------------------------------------------------
step build 240 env XHYP_FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="${MAX_JOBS:-16}" \
    "$PY" setup.py build_ext --inplace
HAVE_EXT=1
"$PY" -c "import sys; from xhyp.knn import extension; sys.exit(0 if extension.ext_available('cuda') else 1)" \
    >> "$LOG" 2>&1 || HAVE_EXT=0
[ "$HAVE_EXT" = 1 ] || note "the CUDA operators are not registered after the build (see $LOG)"

# --- 2. tests --------------------------------------------------------------------------------------
if [ "$HAVE_EXT" = 1 ]; then
    step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_vs_cpu.py tests/test_kernels.py \
        -k "(cuda or gpu or plan) and not nvcc"
else
    skip tests "no CUDA extension"
fi

# --- 3. timing on the Delicious-200K shape ---------------------------------------------------------
cat > "$OUT_DIR/timing.py" << 'EOF'
"""GPU kNN timings (CUDA events) on the Delicious-200K shape, beside the CPU exact kernel."""
import json, os, sys, time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
from bench_knn import synthetic  # noqa: E402

from xhyp.knn import kernels as K  # noqa: E402
from xhyp.knn.index import make_index  # noqa: E402

out = sys.argv[1]
res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "n_db": 196_606, "n_q": 100_095, "k": 10,
       "cpu_threads": 2, "cpu_count": os.cpu_count()}
t0 = time.perf_counter()
db, q = synthetic(196_606, 100_095, 50, 2000, 0.9, 0.6, 0.07, 0)  # bench_knn.py's defaults
db, q = torch.from_numpy(db), torch.from_numpy(q)
res["data_seconds"] = time.perf_counter() - t0


def gpu_time(fn, reps=3):
    """median seconds of fn() between CUDA events (after one warm-up call), and its last result"""
    r = fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        r = fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return float(np.median(ts)), r


def dump():
    with open(out + ".tmp", "w") as f:
        json.dump(res, f, indent=2)
    os.replace(out + ".tmp", out)


dbg, qg = db.cuda(), q.cuda()
aug = K.knn_prepare(dbg)
s, (Dg, Ig) = gpu_time(lambda: K.knn(qg, dbg, 10, db_aug=aug))
res["gpu_exact"] = {"seconds": s, "qps": q.shape[0] / s}
sample = torch.randperm(q.shape[0], generator=torch.Generator().manual_seed(1))[:2000]
torch.set_num_threads(2)
K.knn(q[sample[:100]], db, 10)  # warm-up
t0 = time.perf_counter()
Dc, Ic = K.knn(q[sample], db, 10)
tc = time.perf_counter() - t0
res["cpu_exact_2threads"] = {"seconds": tc, "qps": 2000 / tc}
res["gpu_exact_vs_cpu_exact"] = res["gpu_exact"]["qps"] / res["cpu_exact_2threads"]["qps"]
res["gpu_cpu_exact_ids_equal"] = float((Ig.cpu()[sample] == Ic).all(1).float().mean())
res["gpu_cpu_exact_max_abs_dist_diff"] = float((Dg.cpu()[sample] - Dc).abs().max())
dump()
torch.set_num_threads(os.cpu_count() or 1)
t0 = time.perf_counter()
idx = make_index("clustered", n_clusters=1024).add(db)
res["clustered_build_cpu_seconds"] = time.perf_counter() - t0
args = [t.cuda() for t in (idx.db_sorted, idx.ids, idx.offsets, idx.centroids)]
for nprobe in (8, 32):
    s, (D, I) = gpu_time(lambda: K.clustered_knn(qg, args[0], args[1], args[2], args[3], 10, nprobe))
    rec = float((I[:, :, None] == Ig[:, None, :]).any(2).float().mean())
    res[f"gpu_clustered_C1024_nprobe{nprobe}"] = {"seconds": s, "qps": q.shape[0] / s, "recall@10": rec}
    dump()
print(json.dumps(res, indent=2))
EOF
if [ "$HAVE_EXT" = 1 ]; then
    step timing 150 "$PY" "$OUT_DIR/timing.py" "$OUT_DIR/gpu_knn.json"
else
    skip timing "no CUDA extension"
fi

# --- 4. GPU training timing ------------------------------------------------------------------------
# one whole epoch of the current trainer ("new") on both default shapes of bench_train.py
if [ -f bench/bench_train.py ] && "$PY" bench/bench_train.py --help 2>/dev/null | grep -q -- "--device"; then
    step train 120 "$PY" bench/bench_train.py --device cuda --shapes wiki10-31k delicious-200k@0.05 --trainers new \
        --json "$OUT_DIR/gpu_train.json"
else
    skip train "bench/bench_train.py has no --device option"
fi

# --- 5. compute-sanitizer on tiny inputs -----------------------------------------------------------
cat > "$OUT_DIR/tiny.py" << 'EOF'
"""Tiny calls of every CUDA operator, for compute-sanitizer."""
import torch

from xhyp.knn import kernels as K
from xhyp.knn.vote import neighbour_weights

g = torch.Generator().manual_seed(0)
db = ((torch.rand(300, 17, generator=g) - 0.5) * 0.5).cuda()
q = ((torch.rand(70, 17, generator=g) - 0.5) * 0.5).cuda()
for k in (1, 17, 65):
    K.knn(q, db, k)
K.knn(((torch.rand(9, 70, generator=g) - 0.5) * 0.2).cuda(), ((torch.rand(40, 70, generator=g) - 0.5) * 0.2).cuda(), 5)
off = torch.tensor([0, 0, 100, 100, 250, 300]).cuda()
K.clustered_knn(q, db, torch.arange(300).cuda(), off, db[[0, 50, 120, 200, 260]], 10, 3)
torch.ops.xhyp_ext.scan_plan(torch.randint(-1, 5, (70, 3), generator=g).cuda(), 5, 32)
ip = torch.arange(0, 601, 2).cuda()
ix = torch.randint(0, 40, (600,), generator=g).cuda()
I = torch.randint(0, 300, (70, 10), generator=g)
I[:, 3] = I[:, 2]
D = torch.rand(70, 10, generator=g).sort(1).values
W = torch.from_numpy(neighbour_weights(D.numpy(), "count"))
K.vote_topk([I.cuda()], [W.cuda()], [ip], [ix], 40, 5)
torch.cuda.synchronize()
print("tiny ok")
EOF
if [ "$HAVE_EXT" = 1 ] && command -v compute-sanitizer > /dev/null; then
    step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" "$OUT_DIR/tiny.py"
    step racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 1 "$PY" "$OUT_DIR/tiny.py"
else
    skip memcheck "compute-sanitizer or the CUDA extension missing"
    skip racecheck "compute-sanitizer or the CUDA extension missing"
fi

# --- summary ---------------------------------------------------------------------------------------
echo
echo "==================== gpu_check summary ($(( $(date +%s) - T_START )) s) ===================="
FAILED=0
for i in "${!NAMES[@]}"; do
    printf '%-10s %-48s %5ss\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}"
    case "${STATUS[$i]}" in ok | skipped*) ;; *) FAILED=1 ;; esac
done
[ "$HAVE_EXT" = 1 ] || FAILED=1
[ -f "$OUT_DIR/gpu_knn.json" ] && cat "$OUT_DIR/gpu_knn.json"
[ -f "$OUT_DIR/gpu_train.json" ] && cat "$OUT_DIR/gpu_train.json"
echo "full log: $LOG"
exit $FAILED
