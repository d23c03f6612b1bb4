#!/usr/bin/env bash
# The trajectory cache of stage 1 (issue 9) against the uncached paper gradient: stage 1 only
# on the frozen network of bundles/mnist8.bin, T = 8, the paper estimator with the teacher
# target, the trajectory cache off and at three refresh rates; then `trainer eval` of the
# learned levels. Outputs docs/results/traj-cache/. ~25 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
mkdir -p "$RUNS"
cargo build -p trainer
T=target/debug/trainer
common=(--base bundles/mnist8.bin --data mnist --labels --t 8 --mode stage1-only
    --disc-grad paper --rounds 4 --stage1-steps 40 --batch 32 --disc-batch 32
    --teacher-pool 128 --teacher-steps 32 --quiet)
tuned=()
for refresh in 0 4 16 64; do
    run="$RUNS/traj-cache-r$refresh"
    "$T" finetune "${common[@]}" --traj-refresh "$refresh" --run "$run"
    "$T" export --run "$run" --out "$run.bin" --name "traj-cache-r$refresh"
    name=$([ "$refresh" = 0 ] && echo "uncached" || echo "cache, refresh $refresh")
    tuned+=(--tuned "$name=$run.bin")
done
"$T" eval --base bundles/mnist8.bin "${tuned[@]}" --t 8 --real mnist-test \
    --classifier "$RUNS/mnist-classifier.bin" --classifier-data mnist --count 250 \
    --ref-count 16 --title "stage 1 (paper gradient), trajectory cache vs none, MNIST T = 8" \
    --out docs/results/traj-cache --quiet
