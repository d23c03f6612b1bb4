#!/usr/bin/env bash
# Regenerates docs/results/ and the shipped bundles bundles/{digits8,face8,mnist8,mnist8-dpmpp,mnist5-dpmpp,mnist10-dpmpp}.bin: every
# training run and evaluation of issue 5, one data set per argument:
#   scripts/results.sh digits   # ~15 min on 2 CPU cores
#   scripts/results.sh mnist    # ~1 h after the ~1 h pre-training
#   scripts/results.sh mnist-long  # ~45 min: longer learned levels on the shipped base
#   scripts/results.sh mnist-distill  # ~2 h: stage 2 against the frozen base teacher
#   scripts/results.sh faces    # ~45 min
#   scripts/results.sh fid      # ~1.5 h: every ruler (FID, KID, FD-pixel, FD-cls) side by side
#   scripts/results.sh fid-learned  # ~5 h: learned rows for issue 21 (after fid)
#   scripts/results.sh fid-lof  # ~2.5 h: DPM-Solver++(2M) with a first-order last step (after fid-learned)
#   scripts/results.sh fid-ode  # ~25 min: the base network's ODE solution (Heun, 64 levels) under FID and FD-cls
#   scripts/results.sh cifar10  # ~3 h: the natural-image benchmark (CIFAR-10, FID)
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

# Fine-tunes bundles/mnist-base.bin (or $BASE): run name, T, then finetune flags; into
# $RUNS/mnist-*. TEACHER_POOL (default 64) sets --teacher-pool.
mnist_ft=(--data mnist --labels --batch 32 --disc-batch 16 --teacher-steps 32
    --lr-weights 1e-4 --ema-decay 0.98 --quiet)
ft() {
    local name=$1 t=$2
    shift 2
    "$T" finetune --base "${BASE:-bundles/mnist-base.bin}" --run "$RUNS/mnist-$name-t$t" \
        --t "$t" "${mnist_ft[@]}" --teacher-pool "${TEACHER_POOL:-64}" "$@"
    "$T" export --run "$RUNS/mnist-$name-t$t" --out "$RUNS/mnist-$name-t$t.bin" \
        --name "mnist-$name-t$t"
}

# docs/results/fid/results.csv, rebuilt from every evaluation under docs/results/fid: the free
# and shipped rows of `fid` (seed0/, seed1/), then every learned row of `fid-learned`
# (learned/*/, the Euler-EDM rows they repeat as a check left out), ordered by seed and T.
fid_csv() {
    local dir=docs/results/fid
    {
        head -n 1 "$dir/seed0/rulers.csv"
        tail -q -n +2 "$dir/seed0/rulers.csv" "$dir/seed1/rulers.csv" "$dir"/lof/seed*/rulers.csv
        tail -q -n +2 "$dir"/learned/*/rulers.csv | grep -v ',"Euler, EDM rho=7",' |
            sort -s -t, -k1,1n -k2,2n
    } > "$dir/results.csv"
}

# One evaluation of `fid-learned`: T, seed, directory under docs/results/fid/learned, then
# the --tuned rows; 2,000 samples in every ruler, the free rows left to `fid`.
learned_eval() {
    local t=$1 seed=$2 out=$3
    shift 3
    "$T" eval --base bundles/mnist-base.bin --t "$t" --solvers none "$@" \
        --real mnist-test --fid --classifier "$RUNS/mnist-classifier.bin" \
        --classifier-data mnist --count 2000 --ref-count 20 --seed "$seed" --grid 50 \
        --title "MNIST 28x28, learned rows at T = $t, noises image_seed($seed, k)" \
        --out "docs/results/fid/learned/$out" --quiet
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
    # Class-conditional U-Net at MNIST's native 28x28, 16 channels, mult 1,2: the size whose
    # int8 bundle fits the firmware's 1 MiB of flash and 256 KiB of RAM. Trained in batches of
    # 64 at a constant step size; the run resumes, and MNIST_STEPS is how far the shipped
    # bundles/mnist-base.bin went (~0.2 s a step on 2 CPU cores, ~14k steps an hour).
    MNIST_STEPS=${MNIST_STEPS:-16000}
    "$T" pretrain --data mnist --labels --run "$RUNS/mnist-base" --model-channels 16 \
        --channel-mult 1,2 --num-blocks 1 --steps 100000 --stop-after "$MNIST_STEPS" \
        --batch 64 --lr 2e-3 --ema-decay 0.9995 --checkpoint-every 250 --quiet
    "$T" export --run "$RUNS/mnist-base" --out bundles/mnist-base.bin --t 8 --name mnist-base \
        --description "Class-conditional DDPM++ U-Net (16 channels, mult 1,2) on MNIST 28x28, $MNIST_STEPS pre-training steps of batch 64, EDM's levels"
    for t in 5 8 10; do
        # The paper's two-stage Euler; iPNDM and DPM-Solver++(2M) with learned levels
        # (stage 1 through the unrolled solver), and iPNDM's weights fine-tuned on its L_disc.
        ft two-stage "$t" --mode two-stage --rounds 2 --stage1-steps 15 --stage2-steps 60
        ft ipndm-stage1 "$t" --solver ipndm --mode stage1-only --rounds 1 --stage1-steps 30
        ft ipndm-two-stage "$t" --solver ipndm --mode two-stage --teacher shipped --rounds 2 \
            --stage1-steps 15 --stage2-steps 60
        ft dpmpp-stage1 "$t" --solver dpmpp2m --mode stage1-only --rounds 1 --stage1-steps 30
    done
    # The three ablation rows of paper Table 1 at T = 8.
    for mode in stage1-only stage2-only edm-weight-finetune; do
        ft "$mode" 8 --mode "$mode" --rounds 2 --stage1-steps 15 --stage2-steps 60
    done
    "$T" export --run "$RUNS/mnist-two-stage-t8" --out bundles/mnist8.bin --name mnist8 \
        --description "Class-conditional DDPM++ U-Net (16 channels, mult 1,2) on MNIST 28x28, $MNIST_STEPS pre-training steps, two-stage fine-tuned for T = 8"
    # The learned iPNDM at T = 8 with 150 stage-1 steps instead of these 30 comes from
    # `mnist-long`.
    tuned_rows mnist
    TUNED+=(--tuned "iPNDM stage 1 only=$RUNS/mnist-ipndm-stage1-t{T}.bin"
        --tuned "iPNDM two-stage=$RUNS/mnist-ipndm-two-stage-t{T}.bin"
        --tuned "DPM-Solver++(2M) stage 1 only=$RUNS/mnist-dpmpp-stage1-t{T}.bin")
    # 1,000 samples per row; the truncation RMSE on the first 100 (one 511-evaluation Heun
    # reference per distinct network: nine of them).
    "$T" eval --base bundles/mnist-base.bin "${TUNED[@]}" --t 5,8,10 \
        --real mnist-test --classifier "$RUNS/mnist-classifier.bin" --classifier-data mnist \
        --count 1000 --ref-count 100 --title "MNIST 28x28" --out docs/results/mnist --quiet
    # The base network's own 256-level Heun samples, scored on 500 images.
    "$T" eval --base bundles/mnist-base.bin --t 8 --real mnist-test \
        --classifier "$RUNS/mnist-classifier.bin" --count 500 --ref-count 500 --grid 100 \
        --title "MNIST 28x28, base network" --out docs/results/mnist-base --quiet
    ;;
mnist-long)
    # Issue 10's follow-up on the same base: 5x longer stage 1 for iPNDM and DPM-Solver++(2M)
    # (150 steps), a longer Euler two-stage (3 x (40 + 200)), and the reference images' own
    # Frechet distances (one 256-level Heun solution per sample), which bound what a solver
    # faithful to the base network's ODE can score. ~45 min on 2 CPU cores.
    for t in 5 8 10; do
        ft ipndm-s1long "$t" --solver ipndm --mode stage1-only --rounds 1 --stage1-steps 150
        ft dpmpp-s1long "$t" --solver dpmpp2m --mode stage1-only --rounds 1 --stage1-steps 150
    done
    for t in 5 8; do
        ft euler-2s-long "$t" --mode two-stage --rounds 3 --stage1-steps 40 --stage2-steps 200
    done
    # Below both free solvers' FD-pixel and FD-cls at T = 8, it shipped as
    # bundles/mnist8-ipndm.bin until FID (`fid`) put it at 2.6x plain Euler's and
    # mnist8-dpmpp.bin (`fid-learned`) beat it under both rulers.
    "$T" export --run "$RUNS/mnist-ipndm-s1long-t8" --out "$RUNS/mnist8-ipndm.bin" \
        --name mnist8-ipndm --description "The mnist-base network with 8 levels learned for iPNDM (150 stage-1 steps through the unrolled solver)"
    "$T" eval --base bundles/mnist-base.bin --t 5,8,10 \
        --tuned "iPNDM stage 1 (150 steps)=$RUNS/mnist-ipndm-s1long-t{T}.bin" \
        --tuned "DPM-Solver++(2M) stage 1 (150 steps)=$RUNS/mnist-dpmpp-s1long-t{T}.bin" \
        --tuned "Euler two-stage (3 x (40 + 200))=$RUNS/mnist-euler-2s-long-t{T}.bin" \
        --real mnist-test --classifier "$RUNS/mnist-classifier.bin" --classifier-data mnist \
        --count 1000 --ref-count 100 --title "MNIST 28x28, longer learning" \
        --out docs/results/mnist-long --quiet
    # Euler two-stage at T = 5 with twice the weight steps again: FD-cls against Euler-EDM's.
    ft euler-2s-xl 5 --mode two-stage --rounds 4 --stage1-steps 40 --stage2-steps 400
    "$T" eval --base bundles/mnist-base.bin --t 5 \
        --tuned "Euler two-stage (4 x (40 + 400))=$RUNS/mnist-euler-2s-xl-t{T}.bin" \
        --real mnist-test --classifier "$RUNS/mnist-classifier.bin" --count 1000 \
        --ref-count 100 --title "MNIST 28x28, Euler two-stage at T = 5, 4 x (40 + 400)" \
        --out docs/results/mnist-euler5 --quiet
    # The T = 8 comparison again on other noises (seed 1): is the learned iPNDM's win noise?
    "$T" eval --base bundles/mnist-base.bin --t 8 --seed 1 \
        --tuned "iPNDM stage 1 (150 steps)=$RUNS/mnist8-ipndm.bin" \
        --real mnist-test --classifier "$RUNS/mnist-classifier.bin" --count 1000 \
        --ref-count 100 --title "MNIST 28x28, T = 8, second seed (noises image_seed(1, k))" \
        --out docs/results/mnist-seed1 --quiet
    # The free solvers at T = 8 with a reference for all 1,000 samples: the reference
    # images' FD-pixel and FD-cls.
    "$T" eval --base bundles/mnist-base.bin --t 8 --real mnist-test \
        --classifier "$RUNS/mnist-classifier.bin" --count 1000 --ref-count 1000 --grid 100 \
        --title "MNIST 28x28, the reference's own scores" \
        --out docs/results/mnist-reference --quiet
    ;;
mnist-distill)
    # Issue 10's third pass: stage 2 of iPNDM and DPM-Solver++(2M) distils toward the frozen
    # base network's solution (--teacher base, a pool of 256 noises a round) instead of a
    # teacher that moves with the fine-tuned weights; Euler two-stage with twice the weight
    # steps of mnist-long's 4 x (40 + 400); DPM-Solver++(2M) levels learned on that Euler
    # network. ~2 h on 2 CPU cores, about half of it evaluation.
    for t in 5 8 10; do
        for s in ipndm dpmpp2m; do
            TEACHER_POOL=256 ft "$s-2s-frozen" "$t" --solver "$s" --mode two-stage --rounds 2 \
                --stage1-steps 75 --stage2-steps 200 --teacher base
        done
    done
    TEACHER_POOL=256 ft ipndm-2s-frozen-xl 5 --solver ipndm --mode two-stage --rounds 2 \
        --stage1-steps 75 --stage2-steps 600 --teacher base
    ft euler-2s-xxl 5 --mode two-stage --rounds 4 --stage1-steps 40 --stage2-steps 800
    BASE="$RUNS/mnist-euler-2s-xxl-t5.bin" ft dpmpp-on-euler2s 5 --solver dpmpp2m \
        --mode stage1-only --rounds 1 --stage1-steps 150
    "$T" eval --base bundles/mnist-base.bin --t 5,8,10 \
        --tuned "iPNDM two-stage, frozen teacher (2 x (75 + 200))=$RUNS/mnist-ipndm-2s-frozen-t{T}.bin" \
        --tuned "iPNDM two-stage, frozen teacher (2 x (75 + 600))=$RUNS/mnist-ipndm-2s-frozen-xl-t{T}.bin" \
        --tuned "DPM-Solver++(2M) two-stage, frozen teacher (2 x (75 + 200))=$RUNS/mnist-dpmpp2m-2s-frozen-t{T}.bin" \
        --tuned "Euler two-stage (4 x (40 + 800))=$RUNS/mnist-euler-2s-xxl-t{T}.bin" \
        --tuned "DPM-Solver++(2M) stage 1 on that Euler network=$RUNS/mnist-dpmpp-on-euler2s-t{T}.bin" \
        --real mnist-test --classifier "$RUNS/mnist-classifier.bin" --classifier-data mnist \
        --count 1000 --ref-count 20 --title "MNIST 28x28, stage 2 against the frozen base teacher" \
        --out docs/results/mnist-distill --quiet
    # The T = 5 winner with twice the distillation again, on the noises of seeds 0 and 1.
    TEACHER_POOL=256 ft ipndm-2s-frozen-xxl 5 --solver ipndm --mode two-stage --rounds 2 \
        --stage1-steps 75 --stage2-steps 1200 --teacher base
    for seed in 0 1; do
        "$T" eval --base bundles/mnist-base.bin --t 5 --seed "$seed" \
            --tuned "iPNDM two-stage, frozen teacher (2 x (75 + 600))=$RUNS/mnist-ipndm-2s-frozen-xl-t{T}.bin" \
            --tuned "iPNDM two-stage, frozen teacher (2 x (75 + 1200))=$RUNS/mnist-ipndm-2s-frozen-xxl-t{T}.bin" \
            --real mnist-test --classifier "$RUNS/mnist-classifier.bin" --count 1000 \
            --ref-count 20 --title "MNIST 28x28, T = 5, frozen-teacher iPNDM, noises image_seed($seed, k)" \
            --out "docs/results/mnist-distill5-seed$seed" --quiet
    done
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
fid)
    # Issue 20: the training-free solvers on EDM's levels and the learned MNIST bundles of
    # its day (mnist8.bin; the iPNDM levels of `mnist-long`, then shipped) under every ruler,
    # 2,000 samples a row, on the noises of seeds 0 and 1, against the 1,000 held-out
    # mnist-test digits (all the held-out MNIST we ship). Needs
    # `python3 scripts/fetch_inception.py` once and `mnist-long`'s runs.
    for seed in 0 1; do
        "$T" eval --base bundles/mnist-base.bin --t 5,8,10 --solvers euler,dpmpp2m,ipndm \
            --tuned "Euler two-stage (mnist8.bin)=bundles/mnist{T}.bin" \
            --tuned "iPNDM, learned levels (mnist8-ipndm.bin)=$RUNS/mnist{T}-ipndm.bin" \
            --real mnist-test --fid --classifier "$RUNS/mnist-classifier.bin" \
            --classifier-data mnist --count 2000 --ref-count 20 --seed "$seed" --grid 50 \
            --title "MNIST 28x28, every ruler, noises image_seed($seed, k)" \
            --out "docs/results/fid/seed$seed" --quiet
    done
    fid_csv
    ;;
fid-learned)
    # Issue 21: learned rows against the free rows of `fid` in FID and FD-cls, 2,000 samples a
    # row on the noises of seeds 0 and 1: the paper's two-stage Euler with 3,200 weight steps
    # (4 x (40 + 800)) at T = 5, 8, 10; DPM-Solver++(2M) levels learned on each of those
    # networks (150 stage-1 steps, and 400 against a larger teacher pool: the shipped T = 5
    # row); at T = 5 also DPM-Solver++(2M) two-stage against that network as a frozen
    # teacher, a second two-stage chain and the paper's EDM-weight ablation. The free rows are `fid`'s (`--solvers none`); results.csv
    # is rebuilt with the learned rows, and scripts/fid_bars.py checks them against issue
    # 21's bars.
    # ~5 h on 2 CPU cores, half of it Inception (each 2,000-sample row ~6 min).
    for t in 5 8 10; do
        ft euler-2s-xxl "$t" --mode two-stage --rounds 4 --stage1-steps 40 --stage2-steps 800
        BASE="$RUNS/mnist-euler-2s-xxl-t$t.bin" ft dpmpp-on-euler2s "$t" --solver dpmpp2m \
            --mode stage1-only --rounds 1 --stage1-steps 150
    done
    # The T = 8 row beat the best free rows on both rulers and both seeds: shipped.
    "$T" export --run "$RUNS/mnist-dpmpp-on-euler2s-t8" --out bundles/mnist8-dpmpp.bin \
        --name mnist8-dpmpp --description "Class-conditional DDPM++ U-Net (16 channels, mult 1,2) on MNIST 28x28: mnist-base two-stage fine-tuned for Euler at T = 8 (4 x (40 + 800)), then 8 levels learned for DPM-Solver++(2M) (150 stage-1 steps)"
    TEACHER_POOL=256 BASE="$RUNS/mnist-euler-2s-xxl-t5.bin" ft dpmpp-2s-on-euler2s 5 \
        --solver dpmpp2m --mode two-stage --rounds 2 --stage1-steps 75 --stage2-steps 200 \
        --teacher base
    # That distilled sampler's scores (seed 0; not a results.csv row: it lost on both).
    rm -rf "$RUNS/dpmpp-2s-on-euler2s-t5-images"
    target/debug/sampler-cli --bundle "$RUNS/mnist-dpmpp-2s-on-euler2s-t5.bin" --count 2000 \
        --seed 0 --out-dir "$RUNS/dpmpp-2s-on-euler2s-t5-images"
    "$T" fid --real mnist-test --fake "$RUNS/dpmpp-2s-on-euler2s-t5-images" \
        --classifier "$RUNS/mnist-classifier.bin" --classifier-data mnist --json --quiet
    for t in 5 8 10; do
        for seed in 0 1; do
            learned_eval "$t" "$seed" "t$t-seed$seed" \
                --tuned "Euler two-stage (4 x (40 + 800))=$RUNS/mnist-euler-2s-xxl-t{T}.bin" \
                --tuned "DPM-Solver++(2M) stage 1 on that network=$RUNS/mnist-dpmpp-on-euler2s-t{T}.bin"
        done
    done
    # T = 5 missed the FID bar by 0.5% / 2.5%: a second 4 x (40 + 800) on that network, and
    # DPM-Solver++(2M) levels on the result (~35 min, then ~25 min of evaluation).
    BASE="$RUNS/mnist-euler-2s-xxl-t5.bin" ft euler-2s-x2 5 --mode two-stage --rounds 4 \
        --stage1-steps 40 --stage2-steps 800
    BASE="$RUNS/mnist-euler-2s-x2-t5.bin" ft dpmpp-on-x2 5 --solver dpmpp2m \
        --mode stage1-only --rounds 1 --stage1-steps 150
    for seed in 0 1; do
        learned_eval 5 "$seed" "x2-t5-seed$seed" \
            --tuned "Euler two-stage (4 x (40 + 800), twice)=$RUNS/mnist-euler-2s-x2-t{T}.bin" \
            --tuned "DPM-Solver++(2M) stage 1 on that network (twice)=$RUNS/mnist-dpmpp-on-x2-t{T}.bin"
    done
    # DPM-Solver++(2M) levels at T = 5 and 10 on the T = 8 network (seed 0): a network
    # fine-tuned for another T.
    for t in 5 10; do
        BASE="$RUNS/mnist-euler-2s-xxl-t8.bin" ft dpmpp-on-e2s8 "$t" --solver dpmpp2m \
            --mode stage1-only --rounds 1 --stage1-steps 150
        learned_eval "$t" 0 "e2s8-t$t-seed0" \
            --tuned "DPM-Solver++(2M) stage 1 on the T = 8 two-stage Euler network=$RUNS/mnist-dpmpp-on-e2s8-t{T}.bin"
    done
    # Stage 1 for DPM-Solver++(2M) longer (400 steps) against a larger teacher pool (256
    # noises) on the T = 5 and 10 networks (T = 10 on seed 0 only: it lost there); at T = 5
    # the pool alone (150 steps) as a control.
    for t in 5 10; do
        TEACHER_POOL=256 BASE="$RUNS/mnist-euler-2s-xxl-t$t.bin" ft dpmpp-long-on-euler2s "$t" \
            --solver dpmpp2m --mode stage1-only --rounds 1 --stage1-steps 400
        seeds="0 1"
        [ "$t" = 5 ] || seeds=0
        for seed in $seeds; do
            learned_eval "$t" "$seed" "dpmpp-long-t$t-seed$seed" \
                --tuned "DPM-Solver++(2M) stage 1 (400 steps, pool 256) on the T = $t two-stage Euler network=$RUNS/mnist-dpmpp-long-on-euler2s-t{T}.bin"
        done
    done
    TEACHER_POOL=256 BASE="$RUNS/mnist-euler-2s-xxl-t5.bin" ft dpmpp-p256-on-euler2s 5 \
        --solver dpmpp2m --mode stage1-only --rounds 1 --stage1-steps 150
    learned_eval 5 0 "dpmpp-p256-t5-seed0" \
        --tuned "DPM-Solver++(2M) stage 1 (150 steps, pool 256) on the T = 5 two-stage Euler network=$RUNS/mnist-dpmpp-p256-on-euler2s-t{T}.bin"
    # The T = 5 row beat the best free rows on both rulers and both seeds: shipped.
    "$T" export --run "$RUNS/mnist-dpmpp-long-on-euler2s-t5" --out bundles/mnist5-dpmpp.bin \
        --name mnist5-dpmpp --description "Class-conditional DDPM++ U-Net (16 channels, mult 1,2) on MNIST 28x28: mnist-base two-stage fine-tuned for Euler at T = 5 (4 x (40 + 800)), then 5 levels learned for DPM-Solver++(2M) (400 stage-1 steps, teacher pool 256)"
    # The paper's EDM-weight ablation at T = 5: 3,200 weight steps with EDM's loss weight on
    # EDM's levels, against the two-stage run's 3,200 with lambda on learned levels.
    ft edm-wf-xxl 5 --mode edm-weight-finetune --rounds 4 --stage1-steps 40 --stage2-steps 800
    for seed in 0 1; do
        learned_eval 5 "$seed" "edm-wf-t5-seed$seed" \
            --tuned "EDM-weight finetune (3,200 weight steps, EDM's levels)=$RUNS/mnist-edm-wf-xxl-t{T}.bin"
    done
    fid_csv
    ;;
"fid-lof")
    # DPM-Solver++(2M) with its step into s_min first order (`dpmpp2m-lof`, diffusers'
    # lower_order_final): free on EDM's levels of the base network (T = 5, 8, 10, both
    # seeds), then at T = 10 (seed 0) with levels learned for it (stage 1, 150 steps, pool
    # 64) on the two-stage Euler networks of `fid-learned`, and on the T = 10 one with EDM's
    # and its own Euler levels (sampler-cli's --solver and --levels, `trainer fid`).
    for seed in 0 1; do
        "$T" eval --base bundles/mnist-base.bin --t 5,8,10 --solvers dpmpp2m-lof \
            --real mnist-test --fid --classifier "$RUNS/mnist-classifier.bin" \
            --classifier-data mnist --count 2000 --ref-count 20 --seed "$seed" --grid 50 \
            --title "MNIST 28x28, DPM-Solver++(2M) with a first-order last step on EDM's levels, noises image_seed($seed, k)" \
            --out "docs/results/fid/lof/seed$seed" --quiet
    done
    BASE="$RUNS/mnist-euler-2s-xxl-t10.bin" ft lof-on-euler2s 10 --solver dpmpp2m-lof \
        --mode stage1-only --rounds 1 --stage1-steps 150
    BASE="$RUNS/mnist-euler-2s-xxl-t8.bin" ft lof-on-e2s8 10 --solver dpmpp2m-lof \
        --mode stage1-only --rounds 1 --stage1-steps 150
    learned_eval 10 0 "lof-t10-seed0" \
        --tuned "DPM-Solver++(2M) first-order last step, stage 1 (150 steps, pool 64) on the T = 10 two-stage Euler network=$RUNS/mnist-lof-on-euler2s-t{T}.bin" \
        --tuned "DPM-Solver++(2M) first-order last step, stage 1 (150 steps, pool 64) on the T = 8 two-stage Euler network=$RUNS/mnist-lof-on-e2s8-t{T}.bin"
    # The paper's two-stage for this solver, from the base network (seed 0 measured).
    ft lof-2s-xxl 10 --solver dpmpp2m-lof --mode two-stage --rounds 4 --stage1-steps 40 \
        --stage2-steps 800
    rm -rf "$RUNS/lof2s-seed0-images"
    target/debug/sampler-cli --bundle "$RUNS/mnist-lof-2s-xxl-t10.bin" --count 2000 --seed 0 \
        --out-dir "$RUNS/lof2s-seed0-images"
    "$T" fid --real mnist-test --fake "$RUNS/lof2s-seed0-images" \
        --classifier "$RUNS/mnist-classifier.bin"
    # Stage 1 alone for it on the base network, both seeds.
    ft lof-on-base 10 --solver dpmpp2m-lof --mode stage1-only --rounds 1 --stage1-steps 150
    for seed in 0 1; do
        learned_eval 10 "$seed" "lof-base-t10-seed$seed" \
            --tuned "DPM-Solver++(2M) first-order last step, stage 1 (150 steps, pool 64) on mnist-base.bin=$RUNS/mnist-lof-on-base-t{T}.bin"
    done
    # The paper's two-stage for it with the paper's stage 2 (`--stage2-loss bound`: the
    # lambda-weighted L_bound at its own levels, toward the data, instead of L_disc), both
    # seeds (~13 min of training).
    ft lof-2sb 10 --solver dpmpp2m-lof --mode two-stage --stage2-loss bound --rounds 4 \
        --stage1-steps 40 --stage2-steps 800
    for seed in 0 1; do
        learned_eval 10 "$seed" "lof-2sb-t10-seed$seed" \
            --tuned "DPM-Solver++(2M) first-order last step, two-stage with L_bound stage 2 (4 x (40 + 800))=$RUNS/mnist-lof-2sb-t{T}.bin"
    done
    # Its weights on EDM's levels (`sampler-cli --levels edm`, `trainer fid`).
    for seed in 0 1; do
        rm -rf "$RUNS/lof2sb-edm$seed-images"
        target/debug/sampler-cli --bundle "$RUNS/mnist-lof-2sb-t10.bin" --levels edm \
            --count 2000 --seed "$seed" --batch 50 --out-dir "$RUNS/lof2sb-edm$seed-images"
        "$T" fid --real mnist-test --fake "$RUNS/lof2sb-edm$seed-images" \
            --classifier "$RUNS/mnist-classifier.bin"
    done
    # The paper's stage 2 alone for it on EDM's levels (3,200 weight steps, ~11 min): it beat
    # the best free rows on both rulers and both seeds, and ships. Then the paper's ablation
    # at equal steps, EDM's loss weight instead of lambda.
    ft lof-s2b 10 --solver dpmpp2m-lof --mode stage2-only --stage2-loss bound --rounds 4 \
        --stage2-steps 800
    ft lof-edmwf 10 --solver dpmpp2m-lof --mode edm-weight-finetune --stage2-loss bound \
        --rounds 4 --stage2-steps 800
    for seed in 0 1; do
        learned_eval 10 "$seed" "lof-s2b-t10-seed$seed" \
            --tuned "DPM-Solver++(2M) first-order last step, stage 2 only (L_bound on EDM's levels, 4 x 800)=$RUNS/mnist-lof-s2b-t{T}.bin"
        learned_eval 10 "$seed" "lof-edmwf-t10-seed$seed" \
            --tuned "DPM-Solver++(2M) first-order last step, EDM-weight finetune (EDM's loss weight on EDM's levels, 4 x 800)=$RUNS/mnist-lof-edmwf-t{T}.bin"
    done
    "$T" export --run "$RUNS/mnist-lof-s2b-t10" --out bundles/mnist10-dpmpp.bin \
        --name mnist10-dpmpp --description "Class-conditional DDPM++ U-Net (16 channels, mult 1,2) on MNIST 28x28: mnist-base fine-tuned for DPM-Solver++(2M) with a first-order last step at T = 10 on EDM's levels (the paper's stage 2 alone: 3,200 steps of the lambda-weighted L_bound)"
    for levels in edm bundle; do
        rm -rf "$RUNS/lof-e2s10-$levels-images"
        target/debug/sampler-cli --bundle "$RUNS/mnist-euler-2s-xxl-t10.bin" --solver dpmpp2m-lof \
            --levels "$levels" --count 2000 --seed 0 --out-dir "$RUNS/lof-e2s10-$levels-images"
        "$T" fid --real mnist-test --fake "$RUNS/lof-e2s10-$levels-images" \
            --classifier "$RUNS/mnist-classifier.bin"
    done
    fid_csv
    ;;
fid-ode)
    # What no choice of levels on mnist-base.bin can beat by accuracy: its own ODE solved
    # near exactly (Heun, 127 evaluations on 64 of EDM's rho = 7 levels from 80 to 0.002;
    # 32 levels on seed 0 to check convergence), same noises, labels and clip as every row
    # of `fid`, 2,000 samples, under FID and FD-cls (`trainer fid`).
    for n in 64 32; do
        awk -v n="$n" 'BEGIN { a = 80 ^ (1 / 7); b = 0.002 ^ (1 / 7)
            for (i = 0; i < n; i++) printf "%.9g\n", (a + i / (n - 1) * (b - a)) ^ 7 }' \
            > "$RUNS/edm-levels-$n.txt"
    done
    for job in "64 0" "64 1" "32 0"; do
        set -- $job
        images="$RUNS/ode-heun$1-seed$2-images"
        rm -rf "$images"
        target/debug/sampler-cli --bundle bundles/mnist-base.bin --solver heun \
            --levels "$RUNS/edm-levels-$1.txt" --count 2000 --batch 100 --seed "$2" \
            --out-dir "$images"
        "$T" fid --real mnist-test --fake "$images" --classifier "$RUNS/mnist-classifier.bin"
    done
    ;;
cifar10)
    # Issue 21's natural-image benchmark: an unconditional DDPM++ U-Net (32 channels, mult
    # 1,2,2, two blocks per resolution, no attention, 1.7M parameters: 3,500 steps of 64 took
    # an hour and a quarter on two CPU cores with other jobs beside it, ~0.7 s a step alone)
    # on the 50,000 CIFAR-10 training images, then the training-free solvers on EDM's levels
    # in FID against the 10,000 test images.
    [ -f data/cifar10-train.fsd.gz ] || python3 data/fetch_data.py cifar10
    CIFAR_STEPS=${CIFAR_STEPS:-3500}
    "$T" pretrain --data cifar10 --run "$RUNS/cifar10-base" --model-channels 32 \
        --channel-mult 1,2,2 --num-blocks 2 --steps 7000 --stop-after "$CIFAR_STEPS" \
        --batch 64 --checkpoint-every 250 --seed 0 --quiet
    "$T" export --run "$RUNS/cifar10-base" --out "$RUNS/cifar10-base-f32.bin" --t 8 \
        --name cifar10-base --description "Unconditional DDPM++ U-Net (32 channels, mult 1,2,2, two blocks) on CIFAR-10 32x32, $CIFAR_STEPS pre-training steps of batch 64, EDM's levels"
    "$T" export --bundle "$RUNS/cifar10-base-f32.bin" --weights f16 --out bundles/cifar10-base.bin
    # CIFAR_COUNT samples a row (2,000 for issue 21's table; the first table, 2026-12-07,
    # was CIFAR_COUNT=1000 CIFAR_SEEDS=0 for lack of time), on the seeds CIFAR_SEEDS.
    for seed in ${CIFAR_SEEDS:-0 1}; do
        "$T" eval --base bundles/cifar10-base.bin --t 5,8,10 --solvers euler,dpmpp2m,ipndm \
            --real cifar10-test --fid --count "${CIFAR_COUNT:-2000}" --ref-count 4 \
            --seed "$seed" --grid 64 --title "CIFAR-10 32x32, noises image_seed($seed, k)" \
            --out "docs/results/cifar10/seed$seed" --quiet
    done
    # Learned rows: DPM-Solver++(2M) levels learned on the base network (stage 1 only, 150
    # steps, ~13 min a T), with the same samples and seeds as the free rows (committed:
    # CIFAR_COUNT=1000 CIFAR_SEEDS=0, like the first table).
    for t in 5 8 10; do
        "$T" finetune --base bundles/cifar10-base.bin --data cifar10 \
            --run "$RUNS/cifar10-dpmpp-t$t" --t "$t" --solver dpmpp2m --mode stage1-only \
            --rounds 1 --stage1-steps 150 --batch 32 --disc-batch 16 --teacher-steps 32 \
            --teacher-pool 64 --quiet
        "$T" export --run "$RUNS/cifar10-dpmpp-t$t" --out "$RUNS/cifar10-dpmpp-t$t.bin" \
            --name "cifar10-dpmpp-t$t"
        for seed in ${CIFAR_SEEDS:-0 1}; do
            "$T" eval --base bundles/cifar10-base.bin --t "$t" --solvers none \
                --tuned "DPM-Solver++(2M), learned levels (150 stage-1 steps)=$RUNS/cifar10-dpmpp-t{T}.bin" \
                --real cifar10-test --fid --count "${CIFAR_COUNT:-2000}" --ref-count 4 \
                --seed "$seed" --grid 64 \
                --title "CIFAR-10 32x32, learned levels at T = $t, noises image_seed($seed, k)" \
                --out "docs/results/cifar10/learned/t$t-seed$seed" --quiet
        done
    done
    # The base network's ODE end point under the same rulers: Heun with 20 levels (39
    # evaluations, within 0.012 RMSE of 256 levels), what stage 1 can at best match.
    "$T" eval --base bundles/cifar10-base.bin --t 40 --solvers heun --real cifar10-test --fid \
        --count "${CIFAR_COUNT:-2000}" --ref-count 4 --seed 0 --grid 64 \
        --title "CIFAR-10 32x32, the base network's ODE (Heun, 20 levels), noises image_seed(0, k)" \
        --out docs/results/cifar10/ode-seed0 --quiet
    # T = 5, where the learned levels won on seed 0: every row again on the noises of seed 1.
    "$T" eval --base bundles/cifar10-base.bin --t 5 --solvers euler,dpmpp2m,ipndm \
        --tuned "DPM-Solver++(2M), learned levels (150 stage-1 steps)=$RUNS/cifar10-dpmpp-t{T}.bin" \
        --real cifar10-test --fid --count "${CIFAR_COUNT:-2000}" --ref-count 4 --seed 1 \
        --grid 64 --title "CIFAR-10 32x32 at T = 5, noises image_seed(1, k)" \
        --out docs/results/cifar10/t5-seed1 --quiet
    # DPM-Solver++(2M) with a first-order last step (`fid-lof`), free, on the same noises:
    # seed 0 at every T, seed 1 at T = 5.
    "$T" eval --base bundles/cifar10-base.bin --t 5,8,10 --solvers dpmpp2m-lof \
        --real cifar10-test --fid --count "${CIFAR_COUNT:-2000}" --ref-count 4 --seed 0 \
        --grid 64 --title "CIFAR-10 32x32, DPM-Solver++(2M) with a first-order last step, noises image_seed(0, k)" \
        --out docs/results/cifar10/lof-seed0 --quiet
    "$T" eval --base bundles/cifar10-base.bin --t 5 --solvers dpmpp2m-lof \
        --real cifar10-test --fid --count "${CIFAR_COUNT:-2000}" --ref-count 4 --seed 1 \
        --grid 64 --title "CIFAR-10 32x32 at T = 5, DPM-Solver++(2M) with a first-order last step, noises image_seed(1, k)" \
        --out docs/results/cifar10/lof-t5-seed1 --quiet
    # The paper's two-stage Euler (2 x (40 + 600): 80 level steps, 1,200 weight steps, ~20
    # min a T here) at every T, and at T = 10 its ablation at equal weight steps (EDM's loss
    # weight on EDM's levels); stage 2 as MNIST's (lr 1e-4, EMA 0.98). Seed 0, CIFAR_COUNT.
    cifar_ft() {
        local name=$1 t=$2 label=$3
        shift 3
        "$T" finetune --base bundles/cifar10-base.bin --data cifar10 \
            --run "$RUNS/cifar10-$name-t$t" --t "$t" --batch 32 --disc-batch 16 \
            --teacher-steps 32 --teacher-pool 64 --lr-weights 1e-4 --ema-decay 0.98 --quiet "$@"
        "$T" export --run "$RUNS/cifar10-$name-t$t" --out "$RUNS/cifar10-$name-t$t.bin" \
            --name "cifar10-$name-t$t"
        "$T" eval --base bundles/cifar10-base.bin --t "$t" --solvers none \
            --tuned "$label=$RUNS/cifar10-$name-t{T}.bin" --real cifar10-test --fid \
            --count "${CIFAR_COUNT:-2000}" --ref-count 4 --seed 0 --grid 64 \
            --title "CIFAR-10 32x32, $label at T = $t, noises image_seed(0, k)" \
            --out "docs/results/cifar10/learned/$name-t$t-seed0" --quiet
    }
    for t in 10 5 8; do
        cifar_ft euler-2s "$t" "Euler two-stage (2 x (40 + 600))" --mode two-stage --rounds 2 \
            --stage1-steps 40 --stage2-steps 600
    done
    cifar_ft edm-wf 10 "EDM-weight finetune (1,200 weight steps, EDM's weight and levels)" \
        --mode edm-weight-finetune --rounds 1 --stage1-steps 0 --stage2-steps 1200
    # DPM-Solver++(2M), with either last step, on EDM's levels of those T = 10 networks
    # (sampler-cli's --solver and --levels, `trainer fid`; seed 0, CIFAR_COUNT).
    for job in "euler-2s dpmpp2m" "euler-2s dpmpp2m-lof" "edm-wf dpmpp2m"; do
        set -- $job
        images="$RUNS/cifar10-$1-t10-$2-images"
        rm -rf "$images"
        target/debug/sampler-cli --bundle "$RUNS/cifar10-$1-t10.bin" --solver "$2" --levels edm \
            --count "${CIFAR_COUNT:-2000}" --seed 0 --batch 50 --out-dir "$images"
        "$T" fid --real cifar10-test --fake "$images"
    done
    # Levels learned for DPM-Solver++(2M) on the T = 10 two-stage weights (stage 1 alone).
    "$T" finetune --base "$RUNS/cifar10-euler-2s-t10.bin" --data cifar10 \
        --run "$RUNS/cifar10-dpmpp-on-2s-t10" --t 10 --solver dpmpp2m --mode stage1-only \
        --rounds 1 --stage1-steps 150 --batch 32 --disc-batch 16 --teacher-steps 32 \
        --teacher-pool 64 --quiet
    "$T" export --run "$RUNS/cifar10-dpmpp-on-2s-t10" --out "$RUNS/cifar10-dpmpp-on-2s-t10.bin" \
        --name cifar10-dpmpp-on-2s-t10
    rm -rf "$RUNS/cifar10-dpmpp-on-2s-t10-images"
    target/debug/sampler-cli --bundle "$RUNS/cifar10-dpmpp-on-2s-t10.bin" \
        --count "${CIFAR_COUNT:-2000}" --seed 0 --batch 50 --out-dir "$RUNS/cifar10-dpmpp-on-2s-t10-images"
    "$T" fid --real cifar10-test --fake "$RUNS/cifar10-dpmpp-on-2s-t10-images"
    # The paper's stage 2 for DPM-Solver++(2M) itself (`--stage2-loss bound`) at T = 10, on
    # its learned levels and on EDM's (seed 0, CIFAR_COUNT; ~25 min of training).
    "$T" finetune --base bundles/cifar10-base.bin --data cifar10 \
        --run "$RUNS/cifar10-dpmpp-2sb-t10" --t 10 --batch 32 --disc-batch 16 \
        --teacher-steps 32 --teacher-pool 64 --lr-weights 1e-4 --ema-decay 0.98 --quiet \
        --solver dpmpp2m --mode two-stage --stage2-loss bound --rounds 2 --stage1-steps 40 \
        --stage2-steps 600
    "$T" export --run "$RUNS/cifar10-dpmpp-2sb-t10" --out "$RUNS/cifar10-dpmpp-2sb-t10.bin" \
        --name cifar10-dpmpp-2sb-t10
    for levels in bundle edm; do
        images="$RUNS/cifar10-dpmpp-2sb-t10-$levels-images"
        rm -rf "$images"
        target/debug/sampler-cli --bundle "$RUNS/cifar10-dpmpp-2sb-t10.bin" --levels "$levels" \
            --count "${CIFAR_COUNT:-2000}" --seed 0 --batch 50 --out-dir "$images"
        "$T" fid --real cifar10-test --fake "$images"
    done
    # The paper's stage 2 alone for it on EDM's levels (`--mode stage2-only`, 1,200 steps),
    # the recipe that won on MNIST at T = 10.
    "$T" finetune --base bundles/cifar10-base.bin --data cifar10 \
        --run "$RUNS/cifar10-dpmpp-s2b-t10" --t 10 --batch 32 --disc-batch 16 \
        --teacher-steps 32 --teacher-pool 64 --lr-weights 1e-4 --ema-decay 0.98 --quiet \
        --solver dpmpp2m --mode stage2-only --stage2-loss bound --rounds 2 --stage2-steps 600
    "$T" export --run "$RUNS/cifar10-dpmpp-s2b-t10" --out "$RUNS/cifar10-dpmpp-s2b-t10.bin" \
        --name cifar10-dpmpp-s2b-t10
    rm -rf "$RUNS/cifar10-dpmpp-s2b-t10-images"
    target/debug/sampler-cli --bundle "$RUNS/cifar10-dpmpp-s2b-t10.bin" \
        --count "${CIFAR_COUNT:-2000}" --seed 0 --batch 50 --out-dir "$RUNS/cifar10-dpmpp-s2b-t10-images"
    "$T" fid --real cifar10-test --fake "$RUNS/cifar10-dpmpp-s2b-t10-images"
    # Every row, ordered by seed and T: free, the ODE, learned.
    {
        head -n 1 docs/results/cifar10/seed0/rulers.csv
        d=docs/results/cifar10
        tail -q -n +2 "$d"/seed*/rulers.csv "$d/ode-seed0/rulers.csv" "$d/t5-seed1/rulers.csv" \
            "$d"/lof-*/rulers.csv "$d"/learned/*/rulers.csv | sort -s -t, -k1,1n -k2,2n
    } > docs/results/cifar10/results.csv
    ;;
*)
    echo "usage: scripts/results.sh digits|mnist|mnist-long|mnist-distill|faces|fid|fid-learned|fid-lof|cifar10" >&2
    exit 2
    ;;
esac
