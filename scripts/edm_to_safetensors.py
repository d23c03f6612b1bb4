#!/usr/bin/env python3
"""Turns an NVlabs/edm network snapshot into what `trainer import` reads.

    python3 scripts/edm_to_safetensors.py /path/to/edm-checkout network-snapshot-*.pkl out/edm-cifar10

writes `out/edm-cifar10.safetensors` (the EMA network's state dict, keys `model.*`) and
`out/edm-cifar10.json` (SongUNet's arguments and the preconditioning), then:

    cargo run --release -p trainer -- import --from out/edm-cifar10.safetensors \\
        --config out/edm-cifar10.json --out edm-cifar10.bin --t 8

Needs torch, numpy, safetensors and a checkout of NVlabs/edm (its pickles name EDM's own
classes, so the checkout is put on the import path to unpickle them; no EDM code is
copied). Only DDPM++ SongUNet networks (EDMPrecond or VPPrecond) are supported; the script
says so for others. The pickle may also be a URL EDM's dnnlib can open.
"""
import inspect
import json
import pickle
import sys
from pathlib import Path


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    edm, snapshot, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    sys.path.insert(0, str(edm))
    import dnnlib  # noqa: E402  (NVlabs/edm, from the checkout)
    from safetensors.torch import save_file  # noqa: E402
    from training.networks import SongUNet  # noqa: E402

    with dnnlib.util.open_url(snapshot) as f:
        net = pickle.load(f)["ema"]
    kind = type(net).__name__
    if kind not in ("EDMPrecond", "VPPrecond", "VEPrecond"):
        sys.exit(f"{snapshot}: the network is a {kind}; trainer import reads EDMPrecond/VPPrecond")
    if type(net.model).__name__ != "SongUNet":
        sys.exit(f"{snapshot}: the U-Net is a {type(net.model).__name__}; fewstep runs SongUNet")
    # SongUNet's arguments: its defaults, overridden by what the snapshot was built with.
    # (EDM's persistence decorator subclasses SongUNet; the signature is its base's.)
    init = next(c.__init__ for c in SongUNet.__mro__
                if "model_channels" in inspect.signature(c.__init__).parameters)
    args = {k: p.default for k, p in inspect.signature(init).parameters.items()
            if p.default is not inspect.Parameter.empty}
    args.update(net.model.init_kwargs)
    config = dict(
        precond={"EDMPrecond": "edm", "VPPrecond": "vp", "VEPrecond": "ve"}[kind],
        img_resolution=net.img_resolution, in_channels=net.img_channels,
        out_channels=net.img_channels, label_dim=net.label_dim,
    )
    if kind == "EDMPrecond":
        config.update(sigma_data=float(net.sigma_data), sigma_min=float(net.sigma_min),
                      sigma_max=float(net.sigma_max) if net.sigma_max != float("inf") else None)
    elif kind == "VPPrecond":
        config.update(beta_d=float(net.beta_d), beta_min=float(net.beta_min), M=int(net.M),
                      sigma_min=float(net.sigma_min), sigma_max=float(net.sigma_max))
    else:
        config.update(sigma_min=float(net.sigma_min), sigma_max=float(net.sigma_max))
    for k in ("augment_dim", "model_channels", "channel_mult", "channel_mult_emb",
              "num_blocks", "attn_resolutions", "dropout", "label_dropout", "embedding_type",
              "channel_mult_noise", "encoder_type", "decoder_type", "resample_filter"):
        v = args[k]
        config[k] = list(v) if isinstance(v, (list, tuple)) else v
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(out.with_suffix(".safetensors")))
    out.with_suffix(".json").write_text(json.dumps(config, indent=2) + "\n")
    n = sum(p.numel() for p in net.parameters())
    print(f"wrote {out.with_suffix('.safetensors')} ({n} parameters) and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
