#!/usr/bin/env bash
# Every speed number of docs/performance.md: the trainer's steps (16x16 and 28x28, batch 16
# and 64; stage 1 at T = 5, 10, 20) and the sampler (face8, mnist8 at batch 1 and 16), in
# release builds. With TORCH_PYTHON=/path/to/venv/bin/python the PyTorch reference
# (scripts/torch_bench.py) runs right after, on the same machine. Run it on an idle machine:
# every figure is a ratio of two timings taken minutes apart.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p trainer -p sampler-cli
T=target/release/trainer
S=target/release/sampler-cli
for res in 16 28; do
    for batch in 16 64; do
        ts=5,10,20
        [ "$batch" = 64 ] && ts=5
        "$T" bench --resolution "$res" --batch "$batch" --t "$ts" --steps 10
        echo
    done
done
for b in face8 mnist8; do
    "$S" --bundle "bundles/$b.bin" --count 256 --bench 1,16
    echo
done
if [ -n "${TORCH_PYTHON:-}" ]; then
    "$TORCH_PYTHON" scripts/torch_bench.py --threads 2 --reps 5 --stat mean
fi
