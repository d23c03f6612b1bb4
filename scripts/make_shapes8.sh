#!/usr/bin/env bash
# Regenerates bundles/shapes8.bin, the trainer-made bundle the firmware check embeds:
# 512 samples of the demo shape mixture -> EDM pre-training of a tiny DDPM++ U-Net
# (8 channels, mult 1,2; 600 steps) -> two-stage fine-tuning for T = 8 (2 rounds of 40
# schedule + 60 weight steps) -> export. About 5 minutes on 2 CPU cores. Deterministic
# up to the export time stamp. The dev profile builds dependencies at opt-level 3, so it
# trains about as fast as release without a second build of burn.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo build -p sampler-cli -p trainer
bin=target/debug
"$bin/sampler-cli" --bundle bundles/demo-shapes.bin --count 512 --seed 1 --batch 64 --out-dir "$work/shapes"
"$bin/trainer" pretrain --data "$work/shapes" --run "$work/base" --model-channels 8 --channel-mult 1,2 \
    --num-blocks 1 --steps 600 --batch 32 --lr 2e-3 --checkpoint-every 200
"$bin/trainer" export --run "$work/base" --out "$work/base.bin" --t 8
"$bin/trainer" finetune --base "$work/base.bin" --data "$work/shapes" --run "$work/t8" --t 8 --rounds 2 \
    --stage1-steps 40 --stage2-steps 60 --teacher-pool 128 --teacher-steps 32 --batch 32 --disc-batch 32 \
    --lr-weights 2e-4 --ema-decay 0.99
"$bin/trainer" export --run "$work/t8" --out bundles/shapes8.bin --name shapes8 \
    --description "DDPM++ U-Net (8 channels, mult 1,2) pre-trained 600 steps on 512 samples of the demo shapes, two-stage fine-tuned for T = 8"
