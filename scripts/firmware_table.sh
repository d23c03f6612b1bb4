#!/usr/bin/env bash
# The README's firmware table: for each shipped network bundle and weight type, converts the
# bundle (`trainer export --bundle --weights`), builds firmware-example with it embedded,
# runs it in qemu (mps2-an386, -icount shift=0) and prints flash, RAM (statics including
# the arena, plus the stack high-water), the arena, heap high-water, instructions and MACs
# per image (`NetConfig::macs_per_evaluation` times the evaluations), instructions per MAC
# and the time at 168 MHz for 1.0 to 1.5 cycles per instruction. A bundle whose statics do not fit memory.x's 256 KiB fails to link: "does not fit".
set -euo pipefail
cd "$(dirname "$0")/.."
# TRAINER=path uses a trainer already built (it only converts the weights).
T=${TRAINER:-target/release/trainer}
[ -n "${TRAINER:-}" ] || cargo build --release -q -p trainer
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| bundle | weights | activations | flash | RAM | arena | heap high-water | stack high-water | instructions per image | MACs per image | instructions per MAC | ms at 168 MHz |"
echo "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for b in digits8 mnist8 face8; do
    # int8 three times: the integer path on int8 rows (its default) and on f32 rows, and
    # the f16 float path it replaced.
    for wa in f32: f16: int8: int8:int-f32 int8:f16; do
        w=${wa%%:*} a=${wa#*:}
        [ -f "$tmp/$b-$w.bin" ] ||
            "$T" export --bundle "bundles/$b.bin" --weights "$w" --out "$tmp/$b-$w.bin" >/dev/null
        if ! out=$(cd firmware-example && FEWSTEP_BUNDLE="$tmp/$b-$w.bin" FEWSTEP_ACTIVATIONS="$a" cargo run --release -q 2>&1); then
            if grep -q "will not fit\|overflowed\|region .RAM." <<<"$out"; then
                echo "| $b | $w | | does not fit 256 KiB of RAM | | | | | | | | |"
                continue
            fi
            echo "$out" >&2
            exit 1
        fi
        get() { sed -n "s/^$1 //p" <<<"$out"; }
        act=$(sed -n 's/.* activations \([A-Za-z0-9]*\)$/\1/p' <<<"$out")
        statics=$(get statics_bytes)
        stack=$(get stack_high_water)
        echo "| $b | $w | $act | $(get flash_bytes) | $((statics + stack)) | $(get arena_bytes) | $(get heap_high_water) | $stack | $(get instructions_per_image) | $(get macs_per_image) | $(get instructions_per_mac) | $(get ms_at_168mhz) |"
    done
done
