#!/usr/bin/env python3
"""PyTorch CPU reference benchmark for fewstep: the same networks doing the same work.

This is a yardstick for `trainer bench` and for the sampler bench (`sampler-cli`). It
re-implements, in eager PyTorch on the CPU (float32), the network and the work that our
Rust/burn code runs, so the two speeds can be compared side by side:

* the DDPM++ U-Net of sampler-core/src/model/unet.rs (GroupNorm with min(32, C/4) groups,
  at least 1, eps 1e-6; SiLU; residual blocks with the embedding added after conv0;
  skip_scale 1/sqrt(2); 2x2 average-pool down and nearest-neighbour up sampling; one-head
  self-attention in the first decoder block of the lowest resolution and at
  `attn_resolutions`), the [sin | cos] positional noise embedding with endpoint=True
  frequencies, the embedding MLP and the label embedding scaled by sqrt(L)
  (sampler-core/src/model/mod.rs), wrapped in EDM preconditioning with sigma_data = 0.5
  (sampler-core/src/precond.rs);
* EDM's rho = 7 levels from the softmax-increment parameterization (logits v in R^(T-2)
  plus a fixed 0 logit, increments taken in u = s^(1/7); sampler-core/src/schedule.rs) and
  the Euler sampler whose last step to s = 0 returns D(x_{T-1}, s_min)
  (sampler-core/src/solver.rs).

Rows (one warm-up, then the median, or with --stat mean the mean, of --reps repetitions;
the sampler's warm-up is one batch, each of its repetitions generates all --images):

1. sampler: T = 8 Euler steps (s_max 80, s_min 0.002) under no_grad, --images images at
   batch 1 and 16, configs face8 and mnist8 (labels k mod 10, one-hot) -> images/s.
2. pretrain: one EDM-loss step (ln s ~ N(-1.2, 1.2^2), weight (s^2 + sd^2)/(s sd)^2, mean
   over dimensions), backward, Adam (lr 1e-3) and EMA update (decay min(0.999,
   (1+n)/(10+n))), batch 16 and 64, configs bench16 and bench28 -> seconds/step
   (trainer/src/pretrain.rs, trainer/src/losses.rs).
3. stage1: one stage-1 step with the exact gradient (trainer/src/finetune.rs): levels from
   the logits v (requires_grad), L_disc = MSE of the unrolled Euler iterate x_{T-1} (from
   x0 = 80 eps, through the frozen network) against a fixed teacher target, plus L_bound
   (one diffusion loss per sample at a uniformly drawn level i, weighted by (T-1) lambda_i,
   lambda_i = s_min/s_{i+1} - s_min/s_i), backward, Adam (lr 2e-2) on v; T = 5, 10, 20,
   batch 16, configs bench28 and bench16 -> seconds/step.

The "bench" configs are `trainer bench`'s U-Net (16 model channels, channel_mult [1, 2],
1 block per level, 1 channel), at 16x16 (its default) and 28x28; face8 and mnist8 are the
architectures of the shipped bundles. Weights are random: only speed is measured. The
parameter count of each config is printed so it can be checked against ours.

This file is our own code, written from the Rust sources above. The project never needs
Python to build, test or run; this script only exists for comparison. To run it, install
PyTorch in a throw-away virtual environment outside the repository, e.g.

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch        # the CPU-only build is enough
    nice -n 10 /tmp/torchvenv/bin/python scripts/torch_bench.py --threads 2

then delete the venv. Flags: --rows sampler,pretrain,stage1  --reps N  --images N
--threads N  --stat median|mean  --compile (try torch.compile on the network).
"""

import argparse
import math
import statistics
import sys
import time
import warnings

# torch warns at import when NumPy is absent; nothing here uses NumPy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SIGMA_DATA = 0.5
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0
P_MEAN = -1.2
P_STD = 1.2
SKIP_SCALE = math.sqrt(0.5)

# name: (img_resolution, in/out channels, model_channels, channel_mult, num_blocks, label_dim)
CONFIGS = {
    "bench16": dict(res=16, channels=1, model_channels=16, mult=(1, 2), num_blocks=1, label_dim=0),
    "bench28": dict(res=28, channels=1, model_channels=16, mult=(1, 2), num_blocks=1, label_dim=0),
    "face8": dict(res=24, channels=1, model_channels=16, mult=(1, 2), num_blocks=1, label_dim=0),
    "mnist8": dict(res=28, channels=1, model_channels=16, mult=(1, 2), num_blocks=1, label_dim=10),
}


# --------------------------------------------------------------------------- network


def group_norm(channels):
    return nn.GroupNorm(max(1, min(32, channels // 4)), channels, eps=1e-6)


def conv(cin, cout, kernel):
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2)


def resample(x, mode):
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":
        return F.interpolate(x, scale_factor=2, mode="nearest")
    return x


class Block(nn.Module):
    """Residual block: norm0-silu-resample-conv0, + affine(emb), norm1-silu-conv1, skip."""

    def __init__(self, cin, cout, emb, attention=False, mode="none", takes_skip=False):
        super().__init__()
        self.mode = mode
        self.takes_skip = takes_skip
        self.norm0 = group_norm(cin)
        self.conv0 = conv(cin, cout, 3)
        self.affine = nn.Linear(emb, cout)
        self.norm1 = group_norm(cout)
        self.conv1 = conv(cout, cout, 3)
        self.skip = conv(cin, cout, 1) if (cin != cout or mode != "none") else None
        self.attention = attention
        if attention:
            self.norm2 = group_norm(cout)
            self.qkv = conv(cout, 3 * cout, 1)
            self.proj = conv(cout, cout, 1)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(resample(F.silu(self.norm0(x)), self.mode))
        b, c, h, w = x.shape
        x = F.silu(self.norm1(x + self.affine(emb).reshape(b, c, 1, 1)))
        x = self.conv1(x)
        residual = self.skip(resample(orig, self.mode)) if self.skip is not None else orig
        x = (x + residual) * SKIP_SCALE
        if self.attention:
            n = h * w
            qkv = self.qkv(self.norm2(x)).reshape(b, c, 3, n)
            q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, C, N] each
            attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=2)  # [B, Nq, Nk]
            a = (v @ attn.transpose(1, 2)).reshape(b, c, h, w)
            x = (self.proj(a) + x) * SKIP_SCALE
        return x


class UNet(nn.Module):
    def __init__(self, res, channels, model_channels, mult, num_blocks, label_dim,
                 channel_mult_emb=4, channel_mult_noise=1, attn_resolutions=()):
        super().__init__()
        emb = model_channels * channel_mult_emb
        self.noise_channels = model_channels * channel_mult_noise
        self.map_label = nn.Linear(label_dim, self.noise_channels) if label_dim > 0 else None
        self.map_layer0 = nn.Linear(self.noise_channels, emb)
        self.map_layer1 = nn.Linear(emb, emb)
        half = self.noise_channels // 2
        denom = max(half, 2) - 1
        freqs = torch.tensor([(1.0 / 10000.0) ** (i / denom) for i in range(half)],
                             dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)

        self.conv_in = conv(channels, model_channels, 3)
        cout = model_channels
        skips = [cout]
        enc = []
        for level, m in enumerate(mult):
            r = res >> level
            if level > 0:
                enc.append(Block(cout, cout, emb, False, "down"))
                skips.append(cout)
            for _ in range(num_blocks):
                cin, cout = cout, model_channels * m
                enc.append(Block(cin, cout, emb, r in attn_resolutions))
                skips.append(cout)
        dec = []
        for level in reversed(range(len(mult))):
            r = res >> level
            if level == len(mult) - 1:
                dec.append(Block(cout, cout, emb, True))  # in0: always attention
                dec.append(Block(cout, cout, emb, False))  # in1
            else:
                dec.append(Block(cout, cout, emb, False, "up"))
            for idx in range(num_blocks + 1):
                cin = cout + (skips.pop() if skips else 0)
                cout = model_channels * mult[level]
                attn = idx == num_blocks and r in attn_resolutions
                dec.append(Block(cin, cout, emb, attn, takes_skip=True))
        self.enc = nn.ModuleList(enc)
        self.dec = nn.ModuleList(dec)
        self.aux_norm = group_norm(cout)
        self.aux_conv = conv(cout, channels, 3)

    def forward(self, x, c_noise, labels=None):
        arg = c_noise.reshape(-1, 1) * self.freqs.reshape(1, -1)
        emb = torch.cat([arg.sin(), arg.cos()], dim=1)
        if self.map_label is not None and labels is not None:
            emb = emb + self.map_label(labels * math.sqrt(labels.shape[1]))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))
        x = self.conv_in(x)
        skips = [x]
        for block in self.enc:
            x = block(x, emb)
            skips.append(x)
        for block in self.dec:
            if block.takes_skip and skips:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.aux_conv(F.silu(self.aux_norm(x)))


def denoise(net, x, sigma, labels=None):
    """EDM preconditioning: D(x, s) = c_skip x + c_out F(c_in x, ln(s)/4). sigma: [B]."""
    s = sigma.reshape(-1, 1, 1, 1)
    s2_sd2 = s * s + SIGMA_DATA ** 2
    c_skip = SIGMA_DATA ** 2 / s2_sd2
    c_out = s * SIGMA_DATA / s2_sd2.sqrt()
    c_in = 1.0 / s2_sd2.sqrt()
    return x * c_skip + net(x * c_in, sigma.log() / 4.0, labels) * c_out


# --------------------------------------------------------------------------- schedule / solver


def sigmas_from_logits(v, s_min=SIGMA_MIN, s_max=SIGMA_MAX):
    """Softmax-increment levels in u = s^(1/7); v: [T-2] -> [T], s_0 = s_max, s_{T-1} = s_min."""
    t = v.shape[0] + 2
    g_max, g_min = s_max ** (1.0 / RHO), s_min ** (1.0 / RHO)
    p = torch.softmax(torch.cat([v, v.new_zeros(1)]), dim=0)
    u = g_max - (g_max - g_min) * torch.cumsum(p[: t - 2], dim=0)
    return torch.cat([v.new_full((1,), s_max), u ** RHO, v.new_full((1,), s_min)])


def edm_sigmas(t):
    """EDM's rho = 7 levels: the parameterization at v = 0, in f64, rounded to f32."""
    return sigmas_from_logits(torch.zeros(t - 2, dtype=torch.float64)).float()


def lambda_weights(sigmas):
    inv = 1.0 / sigmas
    return (inv[1:] - inv[:-1]) * sigmas[-1]


def euler_to_min(net, x, sigmas, labels=None):
    b = x.shape[0]
    for i in range(sigmas.shape[0] - 1):
        d = denoise(net, x, sigmas[i].expand(b), labels)
        ratio = sigmas[i + 1] / sigmas[i]
        x = x * ratio + d * (1.0 - ratio)
    return x


def euler(net, x, sigmas, labels=None):
    x = euler_to_min(net, x, sigmas, labels)
    return denoise(net, x, sigmas[-1].expand(x.shape[0]), labels)


def row_mse(a, b):
    return (a - b).pow(2).flatten(1).mean(dim=1)


# --------------------------------------------------------------------------- work


def build(name, compile_net):
    c = CONFIGS[name]
    net = UNet(c["res"], c["channels"], c["model_channels"], c["mult"], c["num_blocks"],
               c["label_dim"])
    fn = net
    if compile_net:
        fn = torch.compile(net)
    return net, fn, c


def time_it(f, reps, stat, warm=None):
    (warm or f)()  # warm-up
    times = []
    for _ in range(max(1, reps)):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times) if stat == "median" else statistics.fmean(times)


def bench_sampler(name, batch, images, reps, stat, compile_net):
    net, fn, c = build(name, compile_net)
    net.eval()
    sigmas = edm_sigmas(8)
    shape = (c["channels"], c["res"], c["res"])
    label_dim = c["label_dim"]

    def generate(first, n):
        x0 = torch.randn(n, *shape) * SIGMA_MAX
        labels = None
        if label_dim > 0:
            ks = torch.arange(first, first + n) % label_dim
            labels = F.one_hot(ks, label_dim).float()
        return euler(fn, x0, sigmas, labels)

    def run_all():
        with torch.no_grad():
            first = 0
            while first < images:
                n = min(batch, images - first)
                generate(first, n)
                first += n

    def warm():
        with torch.no_grad():
            generate(0, batch)

    return images / time_it(run_all, reps, stat, warm=warm)


def bench_pretrain(name, batch, reps, stat, compile_net):
    torch.manual_seed(0)
    net, fn, c = build(name, compile_net)
    net.train()
    ema = [p.detach().clone() for p in net.parameters()]
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-8)
    shape = (batch, c["channels"], c["res"], c["res"])
    step = [0]

    def one():
        x = torch.randn(shape) * SIGMA_DATA  # stand-in for a data batch
        eps = torch.randn(shape)
        s = (P_MEAN + P_STD * torch.randn(batch)).exp()
        noisy = x + eps * s.reshape(-1, 1, 1, 1)
        per = row_mse(denoise(fn, noisy, s), x)
        weight = (s * s + SIGMA_DATA ** 2) / (s * SIGMA_DATA) ** 2
        loss = (per * weight).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n = step[0]
        decay = min(0.999, (1.0 + n) / (10.0 + n))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)
        step[0] += 1
        return loss.item()

    return time_it(one, reps, stat)


def bench_stage1(name, t, batch, reps, stat, compile_net):
    torch.manual_seed(0)
    net, fn, c = build(name, compile_net)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    v = torch.zeros(t - 2, requires_grad=True)
    opt = torch.optim.Adam([v], lr=2e-2, eps=1e-8)
    shape = (batch, c["channels"], c["res"], c["res"])
    # Fixed teacher pool: x0 = s_max eps and a reference solution at s_min (random here).
    x0_pool = torch.randn(shape) * SIGMA_MAX
    target_pool = torch.randn(shape) * SIGMA_DATA

    def one():
        x = torch.randn(shape) * SIGMA_DATA  # stand-in for a data batch
        eps = torch.randn(shape)
        levels = torch.randint(0, t - 1, (batch,))
        sigmas = sigmas_from_logits(v)
        lambdas = lambda_weights(sigmas)
        # L_bound: one level per sample, weighted by (T-1) lambda_i.
        s = sigmas[levels]
        per = row_mse(denoise(fn, x + eps * s.reshape(-1, 1, 1, 1), s), x)
        l_bound = (per * lambdas[levels] * (t - 1)).mean()
        # L_disc, exact gradient: through the unrolled Euler sampler.
        x_last = euler_to_min(fn, x0_pool, sigmas)
        l_disc = row_mse(x_last, target_pool).mean()
        loss = l_bound + l_disc
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return time_it(one, reps, stat)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="sampler,pretrain,stage1",
                    help="comma-separated subset of sampler,pretrain,stage1")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up")
    ap.add_argument("--images", type=int, default=256, help="images per sampler repetition")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--stat", choices=["median", "mean"], default="median")
    ap.add_argument("--t", default="5,10,20", help="values of T for stage 1")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - {"sampler", "pretrain", "stage1"}
    if unknown:
        sys.exit(f"unknown rows: {sorted(unknown)}")
    ts = [int(x) for x in args.t.split(",") if x.strip()]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU, "
          f"{'torch.compile' if args.compile else 'eager'}; {args.stat} of {args.reps} "
          f"reps after 1 warm-up")
    print()
    print("| config | parameters |")
    print("| --- | ---: |")
    for name in CONFIGS:
        net = UNet(**{k: CONFIGS[name][k] for k in
                      ("res", "channels", "model_channels", "mult", "num_blocks", "label_dim")})
        print(f"| {name} | {sum(p.numel() for p in net.parameters())} |")
    print()

    table = []

    def add(work, config, batch, value, unit):
        table.append((work, config, batch, value, unit))
        print(f"  {work} {config} batch {batch}: {value:.4f} {unit}", file=sys.stderr,
              flush=True)

    if "sampler" in rows:
        for name in ("face8", "mnist8"):
            for batch in (1, 16):
                ips = bench_sampler(name, batch, args.images, args.reps, args.stat, args.compile)
                add(f"sampler T=8 Euler, {args.images} images", name, batch, ips, "images/s")
    if "pretrain" in rows:
        for name in ("bench16", "bench28"):
            for batch in (16, 64):
                secs = bench_pretrain(name, batch, args.reps, args.stat, args.compile)
                add("pretrain step (EDM loss, Adam, EMA)", name, batch, secs, "s/step")
    if "stage1" in rows:
        for name in ("bench28", "bench16"):
            for t in ts:
                secs = bench_stage1(name, t, 16, args.reps, args.stat, args.compile)
                add(f"stage 1 step, T={t}, exact gradient", name, 16, secs, "s/step")

    print("| work | config | batch | value | unit |")
    print("| --- | --- | ---: | ---: | --- |")
    for work, config, batch, value, unit in table:
        fmt = f"{value:.1f}" if unit == "images/s" else f"{value:.4f}"
        print(f"| {work} | {config} | {batch} | {fmt} | {unit} |")


if __name__ == "__main__":
    main()
