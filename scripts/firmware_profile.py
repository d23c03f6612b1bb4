#!/usr/bin/env python3
"""Where the firmware's instructions go: boots an ELF in qemu (as firmware-example's runner
does, `-icount shift=0`) with `-d in_asm,exec,nochain`, counts how often each translated
block runs times its instructions, and prints the functions and the blocks that cost the
most. Exact counts (qemu executes every block whole), unlike sampling qemu's PC through
its monitor, which is biased toward block starts. ~10x slower than a plain run: a few
minutes for mnist8. Usage:

    (cd firmware-example && FEWSTEP_BUNDLE=... cargo build --release)
    python3 scripts/firmware_profile.py firmware-example/target/thumbv7em-none-eabihf/release/firmware-example

Then `arm-none-eabi-objdump -d ELF --start-address=0x...` shows a hot block. Needs
qemu-system-arm and binutils-arm-none-eabi (arm-none-eabi-nm)."""
import bisect
import collections
import subprocess
import sys


def main():
    elf = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    cmd = ["qemu-system-arm", "-machine", "mps2-an386", "-cpu", "cortex-m4", "-nographic",
           "-icount", "shift=0", "-semihosting-config", "enable=on,target=native",
           "-kernel", elf, "-d", "in_asm,exec,nochain"]
    qemu = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    execs, blocks, start, collecting = collections.Counter(), {}, None, False
    for line in qemu.stderr:
        if line.startswith("Trace"):
            execs[int(line[line.index("[") + 1:].split("/")[1], 16)] += 1
        elif line.startswith("IN:"):
            collecting, start = True, None
        elif collecting and line.startswith("0x"):
            if start is None:
                start = int(line.split(":")[0], 16)
                blocks[start] = 0
            blocks[start] += 1
        elif collecting and not line.strip():
            collecting = False
    qemu.wait()
    nm = subprocess.run(["arm-none-eabi-nm", "-C", "-S", elf], capture_output=True,
                        text=True, check=True).stdout
    syms = sorted((int(p[0], 16), int(p[1], 16), p[3]) for p in
                  (l.split(None, 3) for l in nm.splitlines())
                  if len(p) == 4 and p[2] in "tT")
    starts = [s[0] for s in syms]

    def name(pc):
        i = bisect.bisect_right(starts, pc) - 1
        return syms[i][2] if i >= 0 and pc < syms[i][0] + syms[i][1] else "?"

    cost = {pc: n * blocks.get(pc, 1) for pc, n in execs.items()}
    total = sum(cost.values())
    by_fn = collections.Counter()
    for pc, c in cost.items():
        by_fn[name(pc)] += c
    print(f"instructions {total:,} (the whole run: boot, printing and checks too; the firmware's own count is the image alone)")
    print("| instructions | share | function |\n| ---: | ---: | --- |")
    for f, c in by_fn.most_common(top):
        print(f"| {c:,} | {100 * c / total:.1f}% | {f[:100]} |")
    print("\n| instructions | block | runs | size | function |\n| ---: | --- | ---: | ---: | --- |")
    for pc, c in sorted(cost.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| {c:,} | {pc:#x} | {execs[pc]:,} | {blocks.get(pc, 1)} | {name(pc)[:70]} |")


if __name__ == "__main__":
    main()
