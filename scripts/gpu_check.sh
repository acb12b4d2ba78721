#!/usr/bin/env bash
# One-shot GPU check (target: under 8 minutes on a machine with an NVIDIA GPU and a CUDA torch):
#   1. build the CUDA extension (XHYP_FORCE_CUDA=1 pip install --no-build-isolation -e .)
#   2. run the CUDA tests (tests/test_cuda_vs_cpu.py, the ext-cuda cases of tests/test_kernels.py)
#   3. compute-sanitizer memcheck and racecheck on tiny inputs (knn, clustered_knn, vote_topk)
#   4. time exact and clustered kNN on the Delicious-200K shape (196,606 x 50 database, 100,095
#      queries, k 10) on the GPU with CUDA events, and the CPU exact kernel on a 2,000-query
#      sample, written as JSON
#   5. GPU training timing with bench/bench_train.py --device cuda --quick, when that script and
#      option exist (skipped with a message otherwise)
# Every step has its own timeout; a failed step does not stop the others; the summary at the end
# lists each step's status and the script exits non-zero if any step failed.
#
# Usage: bash scripts/gpu_check.sh [OUT_DIR]      (default OUT_DIR: $OUT, else ./gpu_check_out)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"
: > "$LOG"
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
declare -a NAMES=() STATUS=() SECS=()

step() {  # step NAME TIMEOUT_S CMD...
    local name="$1" limit="$2"; shift 2
    local t0 rc
    t0=$(date +%s)
    echo "=== [$name] (timeout ${limit}s): $*" | tee -a "$LOG"
    set +e
    timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    set -e
    local dt=$(( $(date +%s) - t0 ))
    local st="ok"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then st="TIMEOUT"; elif [ "$rc" -ne 0 ]; then st="FAIL(rc=$rc)"; fi
    NAMES+=("$name"); STATUS+=("$st"); SECS+=("$dt")
    echo "=== [$name] $st in ${dt}s" | tee -a "$LOG"
    tail -n 5 "$LOG" | sed 's/^/    /'
}

skip() {
    NAMES+=("$1"); STATUS+=("skipped: $2"); SECS+=(0)
    echo "=== [$1] skipped: $2" | tee -a "$LOG"
}

T_START=$(date +%s)
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    | tee -a "$LOG" || echo "nvidia-smi not found" | tee -a "$LOG"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >> "$LOG" 2>&1; then
    echo "torch.cuda.is_available() is False (or torch missing): this script needs a GPU and a CUDA torch" | tee -a "$LOG"
    exit 2
fi

# 1. build
step build 200 env XHYP_FORCE_CUDA=1 "$PY" -m pip install -q --no-build-isolation -e .
HAVE_EXT=1
"$PY" -c "import sys, torch; from xhyp.knn import extension; sys.exit(0 if extension.ext_available('cuda') else 1)" \
    >> "$LOG" 2>&1 || HAVE_EXT=0

# 2. tests
if [ "$HAVE_EXT" = 1 ]; then
    step tests 120 "$PY" -m pytest -q -x tests/test_cuda_vs_cpu.py tests/test_kernels.py -k "cuda or gpu"
else
    skip tests "the CUDA operators are not registered after the build (see $LOG)"
fi

# 3. compute-sanitizer on tiny inputs
cat > "$OUT_DIR/tiny.py" << 'EOF'
import torch
from xhyp.knn import kernels as K
torch.manual_seed(0)
db = (torch.rand(300, 17) - 0.5) * 0.5
q = (torch.rand(70, 17) - 0.5) * 0.5
for k in (1, 17, 65):
    K.knn(q.cuda(), db.cuda(), k)
off = torch.tensor([0, 0, 100, 100, 250, 300])
K.clustered_knn(q.cuda(), db.cuda(), torch.arange(300).cuda(), off.cuda(), db[[0, 50, 120, 200, 260]].cuda(), 10, 3)
ip = torch.arange(0, 601, 2)
ix = torch.randint(0, 40, (600,))
I = torch.randint(0, 300, (70, 10))
K.vote_topk([I.cuda()], [torch.rand(70, 10).sort(1).values.double().cuda()], [ip.cuda()], [ix.cuda()], 40, 5)
torch.cuda.synchronize()
print("tiny ok")
EOF
if [ "$HAVE_EXT" = 1 ] && command -v compute-sanitizer > /dev/null; then
    step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" "$OUT_DIR/tiny.py"
    step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 1 "$PY" "$OUT_DIR/tiny.py"
else
    skip memcheck "compute-sanitizer or the CUDA extension missing"
    skip racecheck "compute-sanitizer or the CUDA extension missing"
fi

# 4. timing on the Delicious-200K shape
cat > "$OUT_DIR/timing.py" << 'EOF'
import json, os, sys, time
import numpy as np
import torch
sys.path.insert(0, "bench")
from bench_knn import synthetic
from xhyp.knn import kernels as K
from xhyp.knn.index import make_index
out = sys.argv[1]
torch.set_num_threads(os.cpu_count() or 1)
db, q = synthetic(196_606, 100_095, 50, 2000, 0.9, 0.6, 0.07, 0)
db, q = torch.from_numpy(db), torch.from_numpy(q)
res = {"gpu": torch.cuda.get_device_name(0), "n_db": 196_606, "n_q": 100_095, "k": 10}

def gpu_time(fn, reps=3):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); r = fn(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) / 1e3)
    return float(np.median(ts)), r

dbg, qg = db.cuda(), q.cuda()
aug = K.knn_prepare(dbg)
s, (Dg, Ig) = gpu_time(lambda: K.knn(qg, dbg, 10, db_aug=aug))
res["gpu_exact_qps"] = q.shape[0] / s
sample = torch.randperm(q.shape[0], generator=torch.Generator().manual_seed(1))[:2000]
t0 = time.perf_counter(); Dc, Ic = K.knn(q[sample], db, 10); tc = time.perf_counter() - t0
res["cpu_exact_qps"] = 2000 / tc
res["gpu_vs_cpu_exact"] = res["gpu_exact_qps"] / res["cpu_exact_qps"]
res["gpu_cpu_ids_agree"] = float((Ig.cpu()[sample] == Ic).float().mean())
idx = make_index("clustered", n_clusters=1024).add(db)
for nprobe in (8, 32):
    args = [t.cuda() if torch.is_tensor(t) else t for t in (idx.db_sorted, idx.ids, idx.offsets, idx.centroids)]
    s, (D, I) = gpu_time(lambda: K.clustered_knn(qg, args[0], args[1], args[2], args[3], 10, nprobe))
    rec = float((I.cpu()[:, :, None] == Ig.cpu()[:, None, :]).any(2).float().mean())
    res[f"gpu_clustered_C1024_nprobe{nprobe}"] = {"qps": q.shape[0] / s, "recall@10": rec}
print(json.dumps(res, indent=2))
with open(out + ".tmp", "w") as f:
    json.dump(res, f, indent=2)
os.replace(out + ".tmp", out)
EOF
if [ "$HAVE_EXT" = 1 ]; then
    step timing 120 "$PY" "$OUT_DIR/timing.py" "$OUT_DIR/gpu_knn.json"
else
    skip timing "the CUDA extension is missing"
fi

# 5. GPU training timing (another script; tolerate its absence or a missing option)
if [ -f bench/bench_train.py ]; then
    if "$PY" bench/bench_train.py --help 2>/dev/null | grep -q -- "--device" && \
       "$PY" bench/bench_train.py --help 2>/dev/null | grep -q -- "--quick"; then
        TRAIN_OUT=()
        if "$PY" bench/bench_train.py --help 2>/dev/null | grep -q -- "--out"; then
            TRAIN_OUT=(--out "$OUT_DIR/gpu_train.json")
        fi
        step train 90 "$PY" bench/bench_train.py --device cuda --quick "${TRAIN_OUT[@]}"
    else
        skip train "bench/bench_train.py has no --device/--quick option"
    fi
else
    skip train "bench/bench_train.py not found"
fi

# summary
echo
echo "==================== gpu_check summary ($(( $(date +%s) - T_START )) s) ===================="
FAILED=0
for i in "${!NAMES[@]}"; do
    printf '%-10s %-40s %5ss\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}"
    case "${STATUS[$i]}" in ok|skipped*) ;; *) FAILED=1 ;; esac
done
[ -f "$OUT_DIR/gpu_knn.json" ] && cat "$OUT_DIR/gpu_knn.json"
echo "full log: $LOG"
exit $FAILED
