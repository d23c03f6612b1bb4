#!/usr/bin/env bash
# docs/results/quantization/: what f16 and int8 weights cost in sample quality. Converts the
# shipped digits8 and mnist8 bundles (`trainer export --bundle --weights`) and evaluates the
# three encodings side by side at T = 8 with `trainer eval` (the host loads the dequantized
# weights; the firmware's f16 activations add at most ~4e-4 per value, see
# sampler-core/tests/micro.rs). Usage: scripts/quantization.sh [digits|mnist]  (~2 / ~15 min)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p trainer
T=target/release/trainer
work=${FEWSTEP_RUNS:-runs}/quantization
out=docs/results/quantization
mkdir -p "$work" "$out"
run() {
    local b=$1 real=$2 data=$3 count=$4 ref=$5
    for w in f16 int8; do
        "$T" export --bundle "bundles/$b.bin" --weights "$w" --out "$work/$b-$w.bin" >/dev/null
    done
    "$T" eval --base "bundles/$b.bin" --tuned "f32=bundles/$b.bin" \
        --tuned "f16=$work/$b-f16.bin" --tuned "int8=$work/$b-int8.bin" --t 8 \
        --real "$real" --classifier "$work/$data-classifier.bin" --classifier-data "$data" \
        --count "$count" --ref-count "$ref" --title "$b weights f32 / f16 / int8" \
        --out "$work/$b" --quiet
    sed '/^!\[/d' "$work/$b/results.md" >"$out/$data.md"
    cp "$work/$b/results.csv" "$out/$data.csv"
}
case "${1:-digits}" in
digits) run digits8 digits digits 1000 200 ;;
mnist) run mnist8 mnist-test mnist 500 64 ;;
*) echo "usage: $0 [digits|mnist]" >&2; exit 2 ;;
esac
