#!/usr/bin/env bash
# docs/results/quantization/integer-path.md: what the micro runtime's integer path (int8
# weights x 16-bit fixed-point activations, int8 activation rows) costs in sample quality on
# mnist8. 1,000 images (seed 0, labels k mod 10) from burn's f32 sampler, from the micro
# runtime's integer path on the int8 conversion (on int8 rows, the default, and on f32
# rows, `--activations int-f32`), and from the same int8 weights on the f16 float path
# (the weights' share of the error); FID (Inception) and FD-cls (the project's
# feature classifier, trained once on mnist-train) against the 1,000 mnist-test digits, and
# the mean absolute difference of the 8-bit pixels from burn's f32 images. ~25 min on 2 cores
# (12 of them training the classifier the first time). Prints the table's rows.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p trainer -p sampler-cli
T=target/release/trainer S=target/release/sampler-cli
work=${FEWSTEP_RUNS:-runs}/integer-path
mkdir -p "$work"
n=${COUNT:-1000}
"$T" export --bundle bundles/mnist8.bin --weights int8 --out "$work/mnist8-int8.bin" >/dev/null
rm -rf "$work/burn-f32" "$work/micro-int8" "$work/micro-int8-f16" "$work/micro-int8-f32rows"
"$S" --bundle bundles/mnist8.bin --count "$n" --batch 100 --out-dir "$work/burn-f32" >/dev/null
"$S" --bundle "$work/mnist8-int8.bin" --engine micro --count "$n" --out-dir "$work/micro-int8" >/dev/null
"$S" --bundle "$work/mnist8-int8.bin" --engine micro --activations f16 --count "$n" \
    --out-dir "$work/micro-int8-f16" >/dev/null
"$S" --bundle "$work/mnist8-int8.bin" --engine micro --activations int-f32 --count "$n" \
    --out-dir "$work/micro-int8-f32rows" >/dev/null
echo "| engine | weights | activations | FID | FD-cls | mean abs diff vs burn f32 (1/255) | max |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: |"
for row in "burn-f32 burn f32 f32" "micro-int8-f16 micro int8 f16" "micro-int8 micro int8 int8" \
    "micro-int8-f32rows micro int8 int-f32"; do
    set -- $row
    j=$("$T" fid --real mnist-test --fake "$work/$1" --classifier "$work/mnist-classifier.bin" \
        --classifier-data mnist --json --quiet)
    num() { python3 -c "import json,sys; print(f'{json.loads(sys.argv[1])[sys.argv[2]]:.2f}')" "$j" "$1"; }
    if [ "$1" = burn-f32 ]; then diff="- | -"; else
        d=$(python3 scripts/png_diff.py "$work/burn-f32" "$work/$1")
        diff="$(awk '{printf "%.3f | %d", $4, $6}' <<<"$d")"
    fi
    echo "| $2 | $3 | $4 | $(num fid) | $(num fd_cls) | $diff |"
done
