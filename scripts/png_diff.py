#!/usr/bin/env python3
"""Mean absolute pixel difference (in 1/255) between two folders of same-named 8-bit PNGs,
e.g. the images sampler-cli wrote with two engines. Standard library only (the project's
scripts need no numpy). Usage: png_diff.py DIR_A DIR_B -> prints mean and max per image."""
import os
import struct
import sys
import zlib


def decode(path):
    """The pixel bytes of a non-interlaced 8-bit gray/RGB/RGBA PNG, rows unfiltered."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        sys.exit(f"{path}: not a PNG")
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, color, _, _, interlace = ihdr
    bpp = {0: 1, 2: 3, 6: 4}.get(color)
    if depth != 8 or bpp is None or interlace:
        sys.exit(f"{path}: only 8-bit, non-interlaced gray/RGB/RGBA PNGs")
    raw, stride, out, prev = zlib.decompress(idat), w * bpp, bytearray(), bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return out


def main():
    a_dir, b_dir = sys.argv[1:3]
    names = sorted(n for n in os.listdir(a_dir) if n.endswith(".png"))
    total, count, worst = 0, 0, 0
    for n in names:
        a, b = decode(os.path.join(a_dir, n)), decode(os.path.join(b_dir, n))
        if len(a) != len(b):
            sys.exit(f"{n}: the images differ in size")
        d = [abs(x - y) for x, y in zip(a, b)]
        total, count, worst = total + sum(d), count + len(d), max(worst, max(d))
    print(f"images {len(names)} mean_abs {total / count:.4f} max_abs {worst}")


if __name__ == "__main__":
    main()
