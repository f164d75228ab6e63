#!/usr/bin/env bash
# One command for the lent GPU machine (see docs/gpu.md): install pgd, run the GPU tests, benchmark.
#   bash benchmarks/gpu_run.sh [OUTDIR]
# Results (test log, JSON and text tables) go to OUTDIR (default: $OUT if set, else ./gpu-results).
set -u
OUTDIR=${1:-${OUT:-gpu-results}}
mkdir -p "$OUTDIR"
PY=$(which python3)
MPIRUN="mpirun --allow-run-as-root --oversubscribe"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUTDIR/gpu.txt" 2>&1
$PY -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$OUTDIR/install.log" 2>&1 || {
  echo "install failed"; tail -20 "$OUTDIR/install.log"; exit 1; }
$MPIRUN -n 1 $PY -m pgd info > "$OUTDIR/info.txt" 2>&1; cat "$OUTDIR/info.txt"
# GPU tests and the CPU tests of this issue (the fast ones), with durations
timeout 420 $PY -m pytest -q -x -p no:cacheprovider --durations=10 \
  tests/gpu/test_gpu.py tests/unit/test_gpu_kernels.py tests/unit/test_gpu_staging.py tests/unit/test_gpu_loader.py \
  tests/unit/test_cuda_aware.py > "$OUTDIR/pytest.txt" 2>&1
echo "pytest rc=$?"; tail -25 "$OUTDIR/pytest.txt"
# kernels: copy bandwidth, two-pass, fused (TB/s and fraction of copy), then per-iteration step times
for dtype in float32 float64; do
  timeout 240 $MPIRUN -n 1 $PY -m pgd bench kernels --elements $((1 << 30)) --dtype $dtype \
    --loss squared --loss logistic --json > "$OUTDIR/kernels-$dtype.json" 2> "$OUTDIR/kernels-$dtype.err"
  $PY -c 'import json,sys; from pgd.bench.kernels import format_kernel_bench as f; r=json.load(open(sys.argv[1])); print(f(r["kernels"], r["steps"]))' \
    "$OUTDIR/kernels-$dtype.json" | tee "$OUTDIR/kernels-$dtype.txt" || tail -5 "$OUTDIR/kernels-$dtype.err"
done
# the step with 2 ranks sharing the GPU (host staging) and NCCL on one rank
timeout 120 $MPIRUN -n 2 $PY -m pgd bench kernels --d 64 --elements 1048576 --step-rows 100000 \
  --step-rows 16777216 > "$OUTDIR/steps-2ranks.txt" 2>&1; tail -3 "$OUTDIR/steps-2ranks.txt"
timeout 120 $MPIRUN -n 1 $PY -m pgd bench kernels --d 64 --elements 1048576 --comm nccl \
  > "$OUTDIR/steps-nccl.txt" 2>&1; tail -3 "$OUTDIR/steps-nccl.txt"
# the whole training loop (progress, stop tests, hooks) on one GPU: per-iteration time from the summary
$PY -m pgd data generate "$OUTDIR/train-100k.h5" --n 100000 --d 64 --seed 1 > /dev/null 2>&1
$PY -m pgd data generate "$OUTDIR/train-4m.h5" --n 4194304 --d 64 --seed 1 > /dev/null 2>&1
for data in train-100k train-4m; do
  timeout 240 $MPIRUN -n 1 $PY -m pgd train "$OUTDIR/$data.h5" --device gpu --loss squared --max-iter 2000 \
    --tol 0 --rtol 0 --quiet > "$OUTDIR/loop-$data.txt" 2>&1; grep -E "gradient:|wall" "$OUTDIR/loop-$data.txt"
  rm -f "$OUTDIR/$data.h5"
done
