#!/usr/bin/env python3
"""Makes the EDM interop fixtures of trainer/tests/edm_import.rs with NVlabs/edm's own code.

    python3 scripts/make_edm_fixture.py /path/to/edm-checkout tests/fixtures/edm

For each case (unconditional with attention, class-conditional) it builds NVlabs/edm's
`EDMPrecond(model_type='SongUNet')` with DDPM++ settings scaled down, gives every parameter
seeded random values (EDM initializes conv1/proj/aux_conv near zero, which would test
little), and writes:

- `<case>.safetensors` (and `cond.pt`): the state dict, as `network-snapshot-*.pkl` holds it
  under `ema` (keys `model.*`, the resample-filter buffers included);
- `<case>.json`: the config `trainer import --config` reads (the format
  scripts/edm_to_safetensors.py writes);
- `<case>-io.safetensors`: fixed inputs `x`, `sigma` (and `class_labels`) and EDM's output
  `D = net(x, sigma, class_labels)`, in float32 as the network runs.

Needs torch, numpy and safetensors. The EDM checkout is imported from the path given; none
of its code is copied into this repository (its license is non-commercial).
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    edm, out = Path(sys.argv[1]), Path(sys.argv[2])
    sys.path.insert(0, str(edm))
    from training.networks import EDMPrecond  # noqa: E402  (NVlabs/edm, from the checkout)

    out.mkdir(parents=True, exist_ok=True)
    cases = {
        "uncond": dict(img_resolution=16, img_channels=3, label_dim=0, model_channels=8,
                       channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8]),
        "cond": dict(img_resolution=8, img_channels=1, label_dim=4, model_channels=4,
                     channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[4]),
    }
    for seed, (name, c) in enumerate(cases.items()):
        torch.manual_seed(1000 + seed)
        net = EDMPrecond(img_resolution=c["img_resolution"], img_channels=c["img_channels"],
                         label_dim=c["label_dim"], sigma_min=0.002, sigma_max=80,
                         sigma_data=0.5, model_type="SongUNet", embedding_type="positional",
                         encoder_type="standard", decoder_type="standard",
                         channel_mult_noise=1, resample_filter=[1, 1],
                         model_channels=c["model_channels"], channel_mult=c["channel_mult"],
                         num_blocks=c["num_blocks"], attn_resolutions=c["attn_resolutions"],
                         dropout=0.0).eval()
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn_like(p) * 0.2)
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        save_file(state, str(out / f"{name}.safetensors"))
        if c["label_dim"]:
            torch.save(state, out / f"{name}.pt")  # the .pt path of `trainer import`, once
        config = dict(
            precond="edm", sigma_data=0.5, sigma_min=0.002, sigma_max=80.0,
            img_resolution=c["img_resolution"], in_channels=c["img_channels"],
            out_channels=c["img_channels"], label_dim=c["label_dim"], augment_dim=0,
            model_channels=c["model_channels"], channel_mult=c["channel_mult"],
            channel_mult_emb=4, num_blocks=c["num_blocks"],
            attn_resolutions=c["attn_resolutions"], embedding_type="positional",
            channel_mult_noise=1, encoder_type="standard", decoder_type="standard",
            resample_filter=[1, 1],
        )
        (out / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n")
        g = torch.Generator().manual_seed(7 + seed)
        b, ch, r = 3, c["img_channels"], c["img_resolution"]
        x = torch.randn(b, ch, r, r, generator=g) * torch.tensor([80.0, 2.0, 0.05]).reshape(b, 1, 1, 1)
        sigma = torch.tensor([80.0, 2.0, 0.05])
        io = dict(x=x, sigma=sigma)
        labels = None
        if c["label_dim"]:
            labels = torch.nn.functional.one_hot(torch.tensor([0, 3, 1]), c["label_dim"]).float()
            io["class_labels"] = labels
        with torch.no_grad():
            io["D"] = net(x, sigma, labels).contiguous()
        save_file(io, str(out / f"{name}-io.safetensors"))
        print(f"{name}: {sum(p.numel() for p in net.parameters())} parameters, "
              f"{len(state)} tensors")


if __name__ == "__main__":
    main()
