#!/usr/bin/env python3
"""PyTorch CPU yardstick for fewstep's Inception FID feature extractor.

Times pytorch-fid's InceptionV3 (2048-d pool3 features, use_fid_inception=True,
resize_input=True, normalize_input=True) in eager PyTorch, float32, on the CPU, on 28x28
grayscale inputs repeated to 3 channels (the model resizes them to 299x299 itself), so the
Rust Inception's speed can be compared with it. Batches of --batch images under
torch.inference_mode(), one warm-up batch, then --images images timed. Prints one line:

    torch_inception images_per_s X threads N batch B

Weights come from $FEWSTEP_CACHE/inception-2015-12-05.safetensors (written by
scripts/fetch_inception.py; mapped as in scripts/make_fid_fixture.py) when it is there,
otherwise they are random: the speed is the same. The project never needs Python to build,
test or run; to run this, use a throw-away venv outside the repository, e.g.

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch torchvision pytorch-fid==0.3.0 scipy numpy
    nice -n 10 /tmp/torchvenv/bin/python scripts/torch_inception_bench.py --threads 2

then delete the venv. Flags: --threads N (default 2)  --images N (default 200)
--batch B (default 50).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import pytorch_fid.inception as pfi

sys.path.insert(0, str(Path(__file__).resolve().parent))


def build_model():
    cache = Path(os.environ.get("FEWSTEP_CACHE") or Path.home() / ".cache" / "fewstep")
    st = cache / "inception-2015-12-05.safetensors"
    if st.is_file():
        from make_fid_fixture import build_pytorch_fid, map_state_dict, read_safetensors
        tensors, _ = read_safetensors(st)
        return build_pytorch_fid(map_state_dict(tensors)[0]), "safetensors"
    # No weights file: build the same network but skip pytorch-fid's download and the load
    # (PyTorch's default initialization stays in place).
    orig_url, orig_load = pfi.load_state_dict_from_url, torch.nn.Module.load_state_dict
    pfi.load_state_dict_from_url = lambda *a, **k: {}
    torch.nn.Module.load_state_dict = lambda self, *a, **k: None
    try:
        model = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                                normalize_input=True, use_fid_inception=True)
    finally:
        pfi.load_state_dict_from_url, torch.nn.Module.load_state_dict = orig_url, orig_load
    return model.eval(), "random"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--batch", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, weights = build_model()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28, generator=gen).expand(args.batch, 3, 28, 28)
    with torch.inference_mode():
        model(x)  # warm-up
        done, t0 = 0, time.perf_counter()
        while done < args.images:
            b = min(args.batch, args.images - done)
            model(x[:b])
            done += b
        dt = time.perf_counter() - t0
    print(f"torch_inception images_per_s {done / dt:.2f} threads {args.threads} "
          f"batch {args.batch}", flush=True)
    print(f"(weights: {weights}, {done} images in {dt:.2f} s, torch {torch.__version__})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
