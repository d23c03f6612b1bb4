#!/usr/bin/env bash
# Prints the SHA-256 of the first 16 images of every shipped bundle (sampler-cli, seed 0),
# and of mnist-base under each solver on its own and on EDM's levels: a refactor that claims
# "no behaviour change" must leave this output identical. Usage:
#   bash scripts/image_hashes.sh > before.txt   (on the old commit)
#   bash scripts/image_hashes.sh | diff before.txt -   (on the new one)
# SAMPLER_CLI=path hashes with that binary instead (e.g. one built from the old commit).
# Hashes are of PNG bytes, so compare on one machine: other CPUs may take other SIMD paths.
set -euo pipefail
cd "$(dirname "$0")/.."
cli=${SAMPLER_CLI:-}
if [ -z "$cli" ]; then
    cargo build -q -p sampler-cli
    cli=target/debug/sampler-cli
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {
    local name=$1
    shift
    "$cli" --count 16 --seed 0 --out-dir "$work/$name" "$@" >/dev/null 2>&1
    (cd "$work/$name" && sha256sum -- *.png | sed "s|  |  $name/|")
}
for b in bundles/*.bin; do
    run "$(basename "$b" .bin)" --bundle "$b"
done
for s in euler heun dpmpp2m ipndm; do
    run "mnist-base-$s-bundle" --bundle bundles/mnist-base.bin --solver "$s" --levels bundle
    run "mnist-base-$s-edm" --bundle bundles/mnist-base.bin --solver "$s" --levels edm
done
