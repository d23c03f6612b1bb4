#!/usr/bin/env bash
# Regenerates docs/results/ and the shipped bundles bundles/{digits8,face8,mnist8}.bin: every
# training run and evaluation of issue 5, one data set per argument:
#   scripts/results.sh digits   # ~15 min on 2 CPU cores
#   scripts/results.sh mnist    # ~2 h
#   scripts/results.sh faces    # ~45 min
# Runs live in $RUNS (default ./runs, git-ignored); a run directory that exists is resumed,
# so an interrupted call picks up where it stopped. Deterministic up to export time stamps
# and wall times. The dev profile builds dependencies at opt-level 3, so training runs
# about as fast as release without a second build of burn.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-runs}
mkdir -p "$RUNS"
cargo build --workspace
T=target/debug/trainer

# Fine-tunes $base for T = $t in all four modes of paper Table 1 into $RUNS/$prefix-*.
finetune_all() {
    local base=$1 data=$2 prefix=$3 t=$4
    shift 4
    for mode in two-stage stage1-only stage2-only edm-weight-finetune; do
        "$T" finetune --base "$base" --data "$data" --labels --run "$RUNS/$prefix-$mode-t$t" \
            --t "$t" --mode "$mode" --quiet "$@"
        "$T" export --run "$RUNS/$prefix-$mode-t$t" --out "$RUNS/$prefix-$mode-t$t.bin" \
            --name "$prefix-$mode-t$t"
    done
}

# The --tuned arguments of `trainer eval` for the runs of finetune_all, in TUNED.
tuned_rows() {
    local prefix=$1
    TUNED=(--tuned "two-stage=$RUNS/$prefix-two-stage-t{T}.bin"
        --tuned "stage 1 only=$RUNS/$prefix-stage1-only-t{T}.bin"
        --tuned "stage 2 only=$RUNS/$prefix-stage2-only-t{T}.bin"
        --tuned "EDM-weight finetune=$RUNS/$prefix-edm-weight-finetune-t{T}.bin")
}

case "${1:-}" in
digits)
    # A tiny class-conditional U-Net (4 channels, mult 1,2) for the firmware's 256 KiB.
    "$T" pretrain --data digits --labels --run "$RUNS/digits-base" --model-channels 4 \
        --channel-mult 1,2 --num-blocks 1 --steps 4000 --batch 64 --lr 2e-3 --ema-decay 0.999 \
        --checkpoint-every 200 --quiet
    "$T" export --run "$RUNS/digits-base" --out "$RUNS/digits-base.bin" --t 8 --name digits-base
    finetune_all "$RUNS/digits-base.bin" digits digits 8 --rounds 4 --stage1-steps 40 \
        --stage2-steps 100 --batch 64 --disc-batch 64 --teacher-pool 256 --teacher-steps 64 \
        --lr-weights 2e-4 --ema-decay 0.99
    "$T" export --run "$RUNS/digits-two-stage-t8" --out bundles/digits8.bin --name digits8 \
        --description "Tiny class-conditional DDPM++ U-Net (4 channels, mult 1,2) on scikit-learn's 8x8 digits, two-stage fine-tuned for T = 8"
    tuned_rows digits
    "$T" eval --base "$RUNS/digits-base.bin" "${TUNED[@]}" --t 5,8,10,12,15,20 \
        --real digits --classifier "$RUNS/digits-classifier.bin" --classifier-data digits \
        --count 1000 --ref-count 200 --title "digits 8x8" --out docs/results/digits --quiet
    ;;
mnist)
    # Class-conditional U-Net at MNIST's native 28x28 (16 channels, mult 1,2: 28 -> 14).
    "$T" pretrain --data mnist --labels --run "$RUNS/mnist-base" --model-channels 16 \
        --channel-mult 1,2 --num-blocks 1 --steps 1500 --batch 32 --lr 2e-3 --ema-decay 0.998 \
        --checkpoint-every 100 --quiet
    "$T" export --run "$RUNS/mnist-base" --out "$RUNS/mnist-base.bin" --t 8 --name mnist-base
    # Two-stage for T = 5, 8, 10; the three ablation rows of paper Table 1 at T = 8 (the CPU
    # budget of one session does not cover them at every T).
    mnist_ft=(--rounds 2 --stage1-steps 15 --stage2-steps 60 --batch 32 --disc-batch 16
        --teacher-pool 64 --teacher-steps 32 --lr-weights 1e-4 --ema-decay 0.98)
    for t in 5 8 10; do
        "$T" finetune --base "$RUNS/mnist-base.bin" --data mnist --labels \
            --run "$RUNS/mnist-two-stage-t$t" --t "$t" --mode two-stage --quiet "${mnist_ft[@]}"
        "$T" export --run "$RUNS/mnist-two-stage-t$t" --out "$RUNS/mnist-two-stage-t$t.bin"
    done
    "$T" export --run "$RUNS/mnist-two-stage-t8" --out bundles/mnist8.bin --name mnist8 \
        --description "Class-conditional DDPM++ U-Net (16 channels, mult 1,2) on MNIST 28x28, 1500 pre-training steps, two-stage fine-tuned for T = 8"
    for mode in stage1-only stage2-only edm-weight-finetune; do
        "$T" finetune --base "$RUNS/mnist-base.bin" --data mnist --labels \
            --run "$RUNS/mnist-$mode-t8" --t 8 --mode "$mode" --quiet "${mnist_ft[@]}"
        "$T" export --run "$RUNS/mnist-$mode-t8" --out "$RUNS/mnist-$mode-t8.bin"
    done
    # T = 5, 8, 10 (the fine-tuned ones) and 150 samples per row: the full T list at 250
    # samples would take ~2 h of this CPU's time for the training-free rows alone.
    tuned_rows mnist
    "$T" eval --base "$RUNS/mnist-base.bin" "${TUNED[@]}" --t 5,8,10 \
        --real mnist-test --classifier "$RUNS/mnist-classifier.bin" --classifier-data mnist \
        --count 150 --ref-count 16 --title "MNIST 28x28" --out docs/results/mnist --quiet
    ;;
faces)
    # 100 LFW faces, 25x25 resized to 24x24; unconditional, so no FD-cls.
    "$T" pretrain --data faces --resize 24 --run "$RUNS/faces-base" --model-channels 16 \
        --channel-mult 1,2 --num-blocks 1 --steps 1200 --batch 32 --lr 2e-3 --ema-decay 0.998 \
        --checkpoint-every 100 --quiet
    "$T" export --run "$RUNS/faces-base" --out "$RUNS/faces-base.bin" --t 8 --name faces-base
    "$T" finetune --base "$RUNS/faces-base.bin" --data faces --resize 24 \
        --run "$RUNS/faces-two-stage-t8" --t 8 --mode two-stage --quiet --rounds 2 \
        --stage1-steps 20 --stage2-steps 60 --batch 32 --disc-batch 16 --teacher-pool 64 \
        --teacher-steps 32 --lr-weights 1e-4 --ema-decay 0.98
    "$T" export --run "$RUNS/faces-two-stage-t8" --out bundles/face8.bin --name face8 \
        --description "DDPM++ U-Net (16 channels, mult 1,2) pre-trained on 100 LFW faces at 24x24, two-stage fine-tuned for T = 8"
    "$T" eval --base "$RUNS/faces-base.bin" --tuned "two-stage=bundles/face{T}.bin" \
        --t 5,8,10,12,15,20 --real faces --resize 24 --count 250 --ref-count 32 \
        --title "LFW faces 24x24" --out docs/results/faces --quiet
    ;;
*)
    echo "usage: scripts/results.sh digits|mnist|faces" >&2
    exit 2
    ;;
esac
