#!/usr/bin/env bash
# On a machine with a CUDA GPU, in one go: the CUDA tests, then the GPU-path benchmark.
#   bash tests/gpu_check.sh            # log and figures in ./gpu_check.txt, ./gpu_benchmark.json, ./gpu_batched.json
#   OUT=/some/dir bash tests/gpu_check.sh
# The benchmark (ResNet18, WRN-40-10, ViT; fp32, bf16, bf16 + channels-last, bf16 + torch.compile)
# takes a few minutes on an H100; BENCH_ARGS narrows it, e.g. BENCH_ARGS="--networks resnet18".
# Then ResNet18 sweeps of 4 and 10 points (5 x 500 + 5 x 100 images, batch 128) trained as one
# batched model against one by one (time per epoch, largest |Z difference|), under SWEEP_TIMEOUT.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.}
log="$out/gpu_check.txt"
: > "$log"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true; } 2>&1 | tee -a "$log"
python -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tee -a "$log"
python -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_install.py 2>&1 | tee -a "$log"
tests_rc=${PIPESTATUS[0]}
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-420}" python benchmark.py --device cuda --json "$out/gpu_benchmark.json" --batched_sweep ${BENCH_ARGS:-} 2>&1 | tee -a "$log"
bench_rc=${PIPESTATUS[0]}
timeout "${SWEEP_TIMEOUT:-240}" python benchmark.py --device cuda --json "$out/gpu_batched.json" --networks --batched_sweep 4 10 2>&1 | tee -a "$log"
sweep_rc=${PIPESTATUS[0]}
echo "gpu_check: tests exit $tests_rc, benchmark exit $bench_rc, batched sweeps exit $sweep_rc" | tee -a "$log"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$sweep_rc" -eq 0 ]
