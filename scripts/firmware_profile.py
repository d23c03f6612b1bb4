#!/usr/bin/env python3
"""Where the firmware's instructions go: boots an ELF in qemu (as firmware-example's runner
does, `-icount shift=0`) with `-d in_asm,exec,nochain`, counts how often each translated
block runs times its instructions, and prints the functions and the blocks that cost the
most. Exact counts (qemu executes every block whole), unlike sampling qemu's PC through
its monitor, which is biased toward block starts. ~10x slower than a plain run: a few
minutes for mnist8. Usage:

    (cd firmware-example && FEWSTEP_BUNDLE=... cargo build --release)
    python3 scripts/firmware_profile.py firmware-example/target/thumbv7em-none-eabihf/release/firmware-example

With `--lines` (an ELF built with `CARGO_PROFILE_RELEASE_DEBUG=line-tables-only`, which
changes no code) every instruction is charged to its source line, inlined frames included:
the table then says which line of which function the time goes to. Then `arm-none-eabi-objdump -d ELF --start-address=0x...` shows a hot block. Needs
qemu-system-arm and binutils-arm-none-eabi (arm-none-eabi-nm)."""
import bisect
import collections
import subprocess
import sys


def main():
    args = [a for a in sys.argv[1:] if a != "--lines"]
    lines = "--lines" in sys.argv
    elf = args[0]
    top = int(args[1]) if len(args) > 1 else 30
    cmd = ["qemu-system-arm", "-machine", "mps2-an386", "-cpu", "cortex-m4", "-nographic",
           "-icount", "shift=0", "-semihosting-config", "enable=on,target=native",
           "-kernel", elf, "-d", "in_asm,exec,nochain"]
    qemu = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    execs, blocks, start, collecting = collections.Counter(), {}, None, False
    pcs = collections.defaultdict(list)
    for line in qemu.stderr:
        if line.startswith("Trace"):
            execs[int(line[line.index("[") + 1:].split("/")[1], 16)] += 1
        elif line.startswith("IN:"):
            collecting, start = True, None
        elif collecting and line.startswith("0x"):
            pc = int(line.split(":")[0], 16)
            if start is None:
                start = pc
                blocks[start] = 0
                pcs[start] = []
            blocks[start] += 1
            pcs[start].append(pc)
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
    if lines:
        by_pc = collections.Counter()
        for b, n in execs.items():
            for pc in pcs.get(b, [b]):
                by_pc[pc] += n
        addrs = sorted(by_pc)
        out = subprocess.run(["arm-none-eabi-addr2line", "-i", "-a", "-e", elf],
                             input="\n".join(f"{a:#x}" for a in addrs), capture_output=True,
                             text=True, check=True).stdout
        # Each answer: the address, then its frames innermost first (file:line each).
        frames, cur = {}, None
        for l in out.splitlines():
            if l.startswith("0x"):
                cur = int(l, 16)
                frames[cur] = []
            elif cur is not None:
                frames[cur].append(l.split(" (discriminator")[0])
        # The project's own frames: not the standard library's (/rustc/) nor a crate's.
        own = lambda f: "/rustc/" not in f and "/.cargo/" not in f and "?" not in f
        short = lambda f: "/".join(f.rsplit("/", 2)[-2:])
        inner, chain = collections.Counter(), collections.Counter()
        for pc, n in by_pc.items():
            f = [short(x) for x in (frames.get(pc) or []) if own(x)] or ["(library code)"]
            inner[f[0]] += n
            chain[" < ".join(f[:3])] += n
        print("\n| instructions | share | own source line (innermost) |\n| ---: | ---: | --- |")
        for l, c in inner.most_common(top):
            print(f"| {c:,} | {100 * c / total:.1f}% | {l} |")
        print("\n| instructions | share | own source line < caller < caller |\n| ---: | ---: | --- |")
        for l, c in chain.most_common(top):
            print(f"| {c:,} | {100 * c / total:.1f}% | {l} |")
    print("\n| instructions | block | runs | size | function |\n| ---: | --- | ---: | ---: | --- |")
    for pc, c in sorted(cost.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| {c:,} | {pc:#x} | {execs[pc]:,} | {blocks.get(pc, 1)} | {name(pc)[:70]} |")


if __name__ == "__main__":
    main()
