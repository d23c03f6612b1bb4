#!/usr/bin/env python3
"""Times PyTorch on the network and steps `trainer bench --preset cifar10` times.

NVlabs/edm's own DDPM++ CIFAR-10 network (`training/networks.py`: `EDMPrecond` around
`SongUNet` with `train.py --arch=ddpmpp`'s settings, augment_dim = 0, dropout 0.13), from a
checkout the caller gives (its code is never copied into this repository), in eager mode:

* pre-training step: EDM's loss (`training/loss.py` `EDMLoss`) at batch B, backward, Adam;
* stage 2 step: the same network's lambda-weighted diffusion loss over T - 1 levels (one
  level drawn per row), backward, Adam: the work of `trainer`'s stage 2;
* stage 1 exact step at T: the softmax-parameterized levels (rho = 7 warp, docs/method.md
  §3), the Euler unroll of T - 1 network evaluations from x0 = s_max * eps, its distance to
  a fixed target, backward to the T - 2 logits (network frozen), Adam on the logits.

One warm-up step, then the mean of --steps timed steps (CUDA synchronized). Prints a table
in the shape of `trainer bench`. `--count` prints the network's parameter count and its
multiply-accumulates per evaluation (PyTorch's flop counter) and exits.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy requests
    /tmp/torchvenv/bin/python scripts/torch_train_bench.py /path/to/edm --device cuda
"""

import argparse
import sys
import time
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("edm", help="NVlabs/edm checkout")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--disc-batch", type=int, default=None)
    ap.add_argument("--t", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--count", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    sys.path.insert(0, str(Path(a.edm).resolve()))
    import torch
    from training.networks import EDMPrecond  # noqa: E402  (the caller's checkout)
    from training.loss import EDMLoss  # noqa: E402

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=32, img_channels=3, label_dim=0, model_type="SongUNet",
                     embedding_type="positional", encoder_type="standard",
                     decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1],
                     model_channels=128, channel_mult=[2, 2, 2], dropout=0.13,
                     augment_dim=0).to(dev)
    params = sum(p.numel() for p in net.parameters())
    if a.count:
        # Parameters, and multiply-accumulates of one evaluation of one image as PyTorch's
        # flop counter sees them (convolutions, linear layers, attention's matrix products;
        # two flops per MAC).
        from torch.utils.flop_counter import FlopCounterMode
        net.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 3, 32, 32, device=dev), torch.ones(1, device=dev))
        print(f"parameters {params}")
        print(f"macs_per_evaluation {counter.get_total_flops() // 2}")
        return
    b, t = a.batch, a.t
    disc_b = a.disc_batch or b
    x = torch.randn(b, 3, 32, 32, device=dev).clamp(-1, 1)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)

    def timed(step):
        step()
        sync()
        start = time.perf_counter()
        for _ in range(a.steps):
            step()
        sync()
        return (time.perf_counter() - start) / a.steps

    rows = []
    net.train().requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-8)
    loss_fn = EDMLoss()

    def pretrain():
        opt.zero_grad(set_to_none=True)
        loss_fn(net=net, images=x).mean().backward()
        opt.step()
    rows.append(("pretrain (EDM loss)", timed(pretrain)))

    s_min, s_max, rho = 0.002, 80.0, 7.0
    logits = torch.zeros(t - 2, device=dev, requires_grad=True)

    def sigmas(v):
        w = torch.softmax(torch.cat([v, torch.zeros(1, device=dev)]), 0)
        lo, hi = s_min ** (1 / rho), s_max ** (1 / rho)
        u = hi - (hi - lo) * torch.cat([torch.zeros(1, device=dev), torch.cumsum(w, 0)])
        return u ** rho

    def stage2():
        s = sigmas(logits.detach())
        lam = s_min / s[1:] - s_min / s[:-1]
        i = torch.randint(0, t - 1, (b,), device=dev)
        sig = s[i].reshape(b, 1, 1, 1)
        n = torch.randn_like(x) * sig
        w = (t - 1) * lam[i].reshape(b, 1, 1, 1)
        opt.zero_grad(set_to_none=True)
        (w * (net(x + n, sig) - x) ** 2).mean().backward()
        opt.step()
    rows.append(("stage 2 (L_bound, weights)", timed(stage2)))

    net.eval().requires_grad_(False)
    opt_v = torch.optim.Adam([logits], lr=5e-2)
    x0 = torch.randn(disc_b, 3, 32, 32, device=dev) * s_max
    target = torch.randn(disc_b, 3, 32, 32, device=dev).clamp(-1, 1)

    def stage1():
        s = sigmas(logits)
        y = x0
        for k in range(t - 1):
            sk = s[k].reshape(1, 1, 1, 1).expand(disc_b, 1, 1, 1)
            d = (y - net(y, sk)) / s[k]
            y = y + (s[k + 1] - s[k]) * d
        opt_v.zero_grad(set_to_none=True)
        ((y - target) ** 2).mean().backward()
        opt_v.step()
    rows.append((f"stage 1, T = {t}, exact gradient", timed(stage1)))

    print(f"PyTorch {torch.__version__} eager, NVlabs/edm DDPM++ CIFAR-10 (EDMPrecond, "
          f"SongUNet, dropout 0.13), {params} parameters; batch {b}, stage-1 disc batch "
          f"{disc_b}; device {dev} ({torch.get_num_threads()} threads)")
    print("| step | s/step | x pretrain step |")
    print("| --- | ---: | ---: |")
    for name, secs in rows:
        print(f"| {name} | {secs:.4f} | {secs / rows[0][1]:.2f} |")


if __name__ == "__main__":
    main()
