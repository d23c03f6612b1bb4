#!/usr/bin/env python3
"""Computes FID the way pytorch-fid 0.3.0 does, to check `trainer fid` on images it never saw.

The fixture test (trainer/tests/inception.rs) holds our features and FID to pytorch-fid's
on 64 + 64 committed digits. This script is the wider check issue 20 asks for: any two sets,
typically 1,000 real digits against 2,000 a sampler just wrote, through pytorch-fid's own
code path (`ImagePathDataset`: PIL `convert("RGB")` + `ToTensor`, batches of 50,
`InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True)`,
`calculate_frechet_distance` on float64 mean and `np.cov`), with pytorch-fid's weight
download replaced by our safetensors file mapped as in scripts/make_fid_fixture.py (which
also proves that mapping equal to the TorchScript original).

Usage (venv as in make_fid_fixture.py):

    sampler-cli --bundle bundles/mnist8.bin --count 2000 --out-dir /tmp/fake
    /tmp/torchvenv/bin/python scripts/check_fid_pytorch.py data/mnist-test.fsd.gz /tmp/fake
    trainer fid --real data/mnist-test.fsd.gz --fake /tmp/fake

REAL and FAKE: a `.fsd.gz` (u8 / 255, exactly what the PNG path would give) or a folder of
PNGs. Prints one JSON object: fid, n_real, n_fake and the versions.
"""

import argparse
import gzip
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pytorch_fid
from pytorch_fid.fid_score import calculate_frechet_distance

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fetch_inception  # noqa: E402
from make_fid_fixture import (build_pytorch_fid, features, map_state_dict,  # noqa: E402
                              read_fsd, read_safetensors)


def load_set(path):
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() == ".png")
        if not files:
            sys.exit(f"{p}: no .png files")
        # pytorch-fid's ImagePathDataset: RGB conversion, then ToTensor (u8 / 255, CHW).
        arrs = [np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8) for f in files]
        x = np.stack(arrs).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
        return torch.from_numpy(np.ascontiguousarray(x))
    count = int.from_bytes(gzip.decompress(p.read_bytes())[8:12], "little")
    return read_fsd(p, count)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("real")
    ap.add_argument("fake")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=50, help="pytorch-fid's default")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = Path(os.environ.get("FEWSTEP_CACHE") or Path.home() / ".cache" / "fewstep")
    st = cache / fetch_inception.OUT_NAME
    if fetch_inception.sha256_file(st) != fetch_inception.OUT_SHA256:
        sys.exit(f"{st}: missing or wrong hash; run python3 scripts/fetch_inception.py first")
    tensors, _meta = read_safetensors(st)
    model = build_pytorch_fid(map_state_dict(tensors)[0])
    stats = []
    for path in (args.real, args.fake):
        act = features(model, load_set(path), batch=args.batch)
        stats.append((len(act), np.mean(act, axis=0), np.cov(act, rowvar=False)))
    (n_r, mu_r, s_r), (n_f, mu_f, s_f) = stats
    fid = float(calculate_frechet_distance(mu_r, s_r, mu_f, s_f))
    print(json.dumps({"fid": fid, "n_real": n_r, "n_fake": n_f, "torch": torch.__version__,
                      "pytorch_fid": pytorch_fid.__version__}))


if __name__ == "__main__":
    main()
