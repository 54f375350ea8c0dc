#!/usr/bin/env bash
# One call on a lent GPU machine (an H100 or H200, 16 CPU cores, torch 2.11+cu130, no package registry). Device
# time is scarce (about 15 minutes a session, machine start included), so this script takes at most about 5
# minutes, each step under its own timeout, and is safe to rerun (every step rewrites its own files).
#
# Steps, each writing into $OUT (the folder whose files come back) as it goes, with $OUT/status.json (written
# atomically by the Python steps) and $OUT/steps.txt (one line per finished step: name, exit code, seconds):
#   0. preflight: torch / CUDA / cuDNN versions, TF32 flags, import models, one block forward (preflight.json);
#      no GPU -> status "no-gpu", exit 2 (DRY_RUN=1: a tiny CPU plan first, so the plan code is exercised)
#   1. the GPU plan, benchmarks/gpu_plan.py, 70 s                                          -> gpu_plan.json
#   2. the CUDA tests (tests/test_cuda.py and the reset-before GRU's), 140 s; FAILS when any is skipped
#                                                                                          -> cuda_tests.log
#   3. the CPU kernel at 4, 8 and 16 threads, 45 s in all                       -> kernel_matrix-<N>t.json
#   plus machine.txt (nvidia-smi, lscpu) and session.log (everything printed; plain redirection, no tee).
#
# Before the call, here: bash benchmarks/build_device_wheels.sh   (hydra-core, omegaconf, antlr4 into .whl/)
# The call (device tool): run(command="bash benchmarks/device_session.sh", carry=[".whl"], timeout_s=420)
# After it: copy gpu_plan.json and kernel_matrix-*.json into benchmarks/results/, the tables into
# benchmarks/RESULTS.md and docs/benchmarks.md, and commit; the goals are checked against gpu_plan.json's
# "meets_goal" and the tests against cuda_tests.log.
set -u
OUT="${OUT:-/tmp/device_session}"
mkdir -p "$OUT"
exec >"$OUT/session.log" 2>&1
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE BIRNN_ZOO_CACHE="${BIRNN_ZOO_CACHE:-/tmp/birnn-zoo-cache}"
PY="${PYTHON:-python3}"
: >"$OUT/steps.txt"

# The GPU path's step limits add up to 295 s (40 + 70 + 140 + 20 + 15 + 10; a test checks it stays <= 300 s).
step() {  # step NAME SECONDS COMMAND...: run under a timeout, record exit code and seconds
  local name="$1" seconds="$2" started rc
  shift 2
  started=$(date +%s)
  echo "== $name $(date -u +%T) (timeout ${seconds}s)"
  timeout "$seconds" "$@"
  rc=$?
  echo "$name rc=$rc seconds=$(($(date +%s) - started))" >>"$OUT/steps.txt"
  echo "== $name done rc=$rc"
  return $rc
}

if [ -d .whl ] && ! "$PY" -c "import hydra, omegaconf" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "wheel install failed"
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{ date -u; nvidia-smi || echo "nvidia-smi: none"; lscpu | head -20; } >"$OUT/machine.txt" 2>&1

step preflight 40 "$PY" -m benchmarks.gpu_plan --out "$OUT" --preflight-only
rc=$?
if [ "$rc" = 2 ]; then
  echo "NO GPU: torch.cuda.is_available() is False; see $OUT/status.json"
  if [ "${DRY_RUN:-0}" = 1 ]; then
    step dry-run 60 "$PY" -m benchmarks.gpu_plan --out "$OUT" --dry-run --budget "${DRY_RUN_BUDGET:-2}"
    "$PY" -c "import json, sys; from benchmarks.gpu_plan import status
status(__import__('pathlib').Path(sys.argv[1]), 'no-gpu', message='no GPU visible; dry run on the CPU done',
       dry_run_rows=len(json.load(open(sys.argv[1] + '/gpu_plan.json'))['rows']))" "$OUT"
  fi
  exit 2
elif [ "$rc" != 0 ]; then
  echo "PREFLIGHT FAILED (rc=$rc): see $OUT/status.json and this log; stopping"
  exit 1
fi

step gpu-plan 70 "$PY" -m benchmarks.gpu_plan --out "$OUT" --budget 55

# The CUDA tests must run, not skip: the fixture fails instead of skipping, and any skip fails the step.
export BIRNN_ZOO_REQUIRE_CUDA=1
step cuda-tests 140 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py \
  tests/blocks/test_gru_reset_before.py -k cuda >"$OUT/cuda_tests.log" 2>&1
tests_rc=$?
if grep -q "SKIPPED" "$OUT/cuda_tests.log"; then
  echo "CUDA TESTS SKIPPED where a GPU is visible: counted as a failure"
  tests_rc=1
fi
tail -5 "$OUT/cuda_tests.log"

# The first step builds the kernel (about 7 s on 16 cores) unless the cache has it.
for threads in 4 8 16; do
  step "kernel-${threads}t" $((threads == 4 ? 20 : (threads == 8 ? 15 : 10))) "$PY" -m benchmarks.kernel_matrix --threads "$threads" --batches 64 --hidden 256 \
    --steps 64 --rounds 3 --max-gflop 20 --out "$OUT/kernel_matrix-${threads}t.json"
done

"$PY" -c "import sys; from pathlib import Path; from benchmarks.gpu_plan import status
status(Path(sys.argv[1]), 'done' if sys.argv[2] == '0' else 'tests-failed', cuda_tests_rc=int(sys.argv[2]))" \
  "$OUT" "$tests_rc"
echo "== session done $(date -u +%T), tests rc=$tests_rc"
ls -la "$OUT"
exit "$tests_rc"
