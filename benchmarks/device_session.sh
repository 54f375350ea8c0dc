#!/usr/bin/env bash
# One call on a lent GPU machine (an H200 with 16 CPU cores; device time is scarce: about 15 minutes a session, so
# everything that needs that machine is in this one script, about 8 minutes, each step under its own timeout).
#
# What it measures, each into $OUT (the folder whose files come back):
#   1. the CUDA tests (tests/test_cuda.py and the reset-before GRU's CUDA test)       -> cuda_tests.log
#   2. python -m benchmarks.run --device cuda, budgets scaled to 0.3                  -> cuda.json, cuda.md
#   3. the CPU kernel against nn.LSTM/nn.GRU at 1, 2, 4, 8 and 16 threads (the kernel's batch split above two
#      threads, and the AVX-512 path if that CPU has it), B in {16, 64, 256}, H in {128, 512}, T 64
#                                                                                    -> kernel_matrix-many.json
#   plus machine.txt (nvidia-smi, lscpu, versions) and session.log (everything printed).
#
# Before the call, here (hydra-core and omegaconf are not on that machine; pure-Python wheels, built locally):
#   echo /.whl/ >> .git/info/exclude
#   python -m pip wheel --no-deps -w .whl hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3
# The call (device tool): run(command="bash benchmarks/device_session.sh", carry=[".whl"], timeout_s=600)
# After it: copy cuda.json/.md and kernel_matrix-many.json into benchmarks/results/, write the tables into
# benchmarks/RESULTS.md (python -m benchmarks.kernel_matrix --report FILE prints them) and the policy's thresholds
# for more than two threads into models/blocks/cpu_kernel/policy.py if the matrix supports them.
set -u
OUT="${OUT:-/tmp/device_session}"
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE BIRNN_ZOO_CACHE=/tmp/birnn-zoo-cache
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || echo "wheel install failed"
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

{ date -u; nvidia-smi; lscpu; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')"; } > "$OUT/machine.txt" 2>&1
python3 -c "import models.blocks.cpu_kernel as k; print('CPU kernel available:', k.available(), 'capability:',
k.capability())" || echo "models does not import: were the wheels carried?"

echo "== 1. CUDA tests $(date -u +%T)"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_gru_reset_before.py -k cuda \
  2>&1 | tee "$OUT/cuda_tests.log"

echo "== 2. benchmarks.run --device cuda $(date -u +%T)"
timeout 240 python3 -m benchmarks.run --device cuda --budget-scale 0.3 --out "$OUT/cuda"

echo "== 3. CPU kernel, 1-16 threads $(date -u +%T)"
timeout 150 python3 -m benchmarks.kernel_matrix --threads 1 2 4 8 16 --batches 16 64 256 --hidden 128 512 \
  --steps 64 --rounds 3 --max-gflop 20 --out "$OUT/kernel_matrix-many.json"

echo "== done $(date -u +%T)"
ls -la "$OUT"
