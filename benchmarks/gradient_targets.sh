#!/bin/bash
# The gradient kernel against its floor in every cell of the CPU targets (README, Speed): float32 and
# float64, squared and logistic, d = 16, 100 and 1000, at 1 rank x 1 thread, 2 ranks x 1 thread and
# 1 rank x 2 threads; one `pgd bench gradient` per cell (medians of 15 interleaved repeats), one line each.
# About 400 MB of X per cell, split over the ranks.
#
#   benchmarks/gradient_targets.sh [OUT]        (default OUT: bench-results/gradient-targets.txt)
#
# MPIRUN (default: mpirun from PATH) and MPIRUN_FLAGS (default: the Makefile's for one machine) are read
# from the environment; run from the repository root with the virtual environment active.
set -euo pipefail
out=${1:-bench-results/gradient-targets.txt}
mpirun=${MPIRUN:-mpirun}
if [ -z "${MPIRUN_FLAGS+set}" ]; then
  MPIRUN_FLAGS="--oversubscribe --mca btl ^ofi"
  [ "$(id -u)" = 0 ] && MPIRUN_FLAGS="$MPIRUN_FLAGS --allow-run-as-root"
fi
mkdir -p "$(dirname "$out")"
: > "$out"
for dtype in float32 float64; do for loss in squared logistic; do for d in 16 100 1000; do
  for layout in "1 1" "2 1" "1 2"; do
    read -r ranks threads <<< "$layout"
    itemsize=4; [ "$dtype" = float64 ] && itemsize=8
    n=$((400000000 / (d * itemsize)))
    # shellcheck disable=SC2086
    ratio=$(PGD_BLAS_THREADS=$threads $mpirun $MPIRUN_FLAGS -n "$ranks" pgd bench gradient --n "$n" --d "$d" \
            --dtype "$dtype" --repeats 15 --loss "$loss" 2>&1 | awk '/compiled one-pass/ {print $(NF-1)}')
    echo "$dtype $loss d=$d ranks=$ranks threads=$threads kernel/floor ${ratio:-failed}" | tee -a "$out"
  done
done; done; done
