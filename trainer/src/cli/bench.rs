//! `trainer bench`: seconds per step of pre-training, stage 2, and stage 1 with the exact and
//! the paper gradient at several T, on one small U-Net and batch; or (`--inception N`) the
//! images per second of FID's Inception-v3, set up as `scripts/torch_inception_bench.py`
//! times PyTorch's. A table, not a test.

use std::time::Instant;

use anyhow::Result;
use burn::module::Module;
use clap::Args;
use sampler_core::bundle::ImageShape;
use sampler_core::model::{NetConfig, UNetConfig};

use super::DEFAULT_DEVICE;
use crate::data::Dataset;
use crate::pretrain::{Pretrain, PretrainConfig};
use crate::two_stage::{DiscGrad, Finetune, FinetuneConfig, Mode};

/// The flags of `trainer bench`.
#[derive(Args, Debug)]
pub(super) struct BenchArgs {
    /// Values of T for stage 1.
    #[arg(long, default_value = "5,10,20", value_delimiter = ',')]
    t: Vec<usize>,
    /// Timed steps per row (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Batch size.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Rows of stage 1's L_disc (the exact gradient's unrolled sampler, the paper
    /// estimator's states); default: the batch size. `scripts/results.sh` trains with half.
    #[arg(long, value_name = "N")]
    disc_batch: Option<usize>,
    /// Image resolution of the default U-Net (16 channels, mult 1,2, one block per
    /// resolution, one color); ignored with --preset.
    #[arg(long, default_value_t = 16)]
    resolution: usize,
    /// A named network at its own image size instead: mnist (28x28x1, the shipped MNIST
    /// base) or cifar10 (32x32x3, EDM's DDPM++ CIFAR-10 network with dropout 0.13).
    #[arg(long, value_enum)]
    preset: Option<crate::model::Preset>,
    /// Split each pre-training and stage-2 batch over N devices of --device's kind (data
    /// parallel, as `--devices` in training).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=64))]
    devices: u64,
    /// Trajectory-cache rows: every pool entry (pool = one batch) re-simulated once every N
    /// steps; 0 leaves those rows out.
    #[arg(long, default_value_t = 8, value_name = "N")]
    traj_refresh: u64,
    /// Compute device: flex, vulkan or cuda.
    #[arg(long, default_value = DEFAULT_DEVICE)]
    device: String,
    /// Time only FID's Inception-v3 on the CPU: N random 28x28 gray images in batches of
    /// --inception-batch after one warm-up batch, as scripts/torch_inception_bench.py times
    /// pytorch-fid's.
    #[arg(long, value_name = "N")]
    inception: Option<usize>,
    /// Images per batch of --inception.
    #[arg(long, default_value_t = 50, value_name = "B")]
    inception_batch: usize,
}

/// `--inception`: images per second of the host executor.
fn inception(images: usize, batch: usize) -> Result<()> {
    let net = crate::inception::Inception::load_default()?;
    let batch = batch.max(1);
    // Uniform [0, 1) values from the portable generator, one 28x28 image after another.
    let x: Vec<f32> = (0..batch * 28 * 28)
        .map(|i| (sampler_core::rng::random_u64(0, i as u64) >> 40) as f32 / (1u64 << 24) as f32)
        .collect();
    let bar = indicatif::ProgressBar::hidden();
    net.features(&x, (1, 28, 28), &bar)?;
    let start = Instant::now();
    let mut done = 0;
    while done < images {
        let b = batch.min(images - done);
        net.features(&x[..b * 28 * 28], (1, 28, 28), &bar)?;
        done += b;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "Inception-v3 (FID features, 28x28 gray -> 299x299), batch {batch}, {} threads",
        rayon::current_num_threads()
    );
    println!("| images | s | images/s |");
    println!("| ---: | ---: | ---: |");
    println!("| {done} | {secs:.2} | {:.2} |", done as f64 / secs);
    Ok(())
}

/// Runs the benchmark and prints the table.
pub(super) fn run(a: BenchArgs) -> Result<()> {
    if let Some(n) = a.inception {
        return inception(n, a.inception_batch);
    }
    let devices = crate::devices(&a.device, a.devices as usize)?;
    let device = devices[0].clone();
    let disc_batch = a.disc_batch.unwrap_or(a.batch);
    if disc_batch == 0 || disc_batch > a.batch {
        anyhow::bail!("--disc-batch must be between 1 and --batch ({})", a.batch);
    }
    let (shape, net, dropout, what) = match a.preset {
        Some(p) => {
            let (shape, _) = p.data_shape();
            let (side, colors) = (shape.height as usize, shape.channels as usize);
            let net = NetConfig::UNet(p.unet(side, colors, 0));
            let what = format!("preset {p:?}, {side}x{side}x{colors}").to_lowercase();
            (shape, net, p.dropout(), what)
        }
        None => {
            let r = a.resolution;
            let shape = ImageShape {
                channels: 1,
                height: r as u32,
                width: r as u32,
            };
            let net = NetConfig::UNet(
                UNetConfig::new(r, 1, 1)
                    .with_model_channels(16)
                    .with_channel_mult(vec![1, 2])
                    .with_num_blocks(1),
            );
            let what = format!("U-Net {r}x{r}, 16 channels, mult [1, 2], 1 block/level");
            (shape, net, 0.0, what)
        }
    };
    let params = net.init(&burn::tensor::Device::flex()).num_params(); // lazy: no weights
    let mixture = sampler_core::gmm::Mixture::random(8, shape.values(), 1);
    let data = Dataset::from_mixture(&mixture, 256, 2, shape);
    let pretrain_config = PretrainConfig {
        steps: 1_000,
        batch: a.batch,
        checkpoint_every: 1_000,
        dropout,
        ..PretrainConfig::new(net, "bench".into(), shape, 0)
    };
    let mut pt = Pretrain::new(pretrain_config, None, &device)?.with_replicas(devices.clone())?;
    let mut rows: Vec<(String, f64)> = Vec::new();
    rows.push((
        "pretrain (EDM loss)".into(),
        time(a.steps, || pt.step_once(&data).map(|_| ()))?,
    ));

    let dir = std::env::temp_dir().join(format!("fewstep-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let base_path = dir.join("base.bin");
    std::fs::write(&base_path, pt.export(8, "bench")?.to_bytes()?)?;
    let finetune = |mode: Mode, t: usize, grad: DiscGrad, refresh: u64| -> Result<Finetune> {
        let mut c = FinetuneConfig::new(base_path.clone(), t);
        c.mode = mode;
        c.rounds = 1;
        c.stage1_steps = 1_000;
        c.stage2_steps = 1_000;
        c.batch = a.batch;
        c.disc_batch = disc_batch;
        c.disc_grad = grad;
        c.teacher_pool = a.batch;
        c.teacher_steps = 8;
        c.traj_refresh = refresh;
        Finetune::new(c, Some(data.clone()), None, &device)?.with_replicas(devices.clone())
    };
    let mut ft = finetune(Mode::Stage2Only, 8, DiscGrad::Exact, 0)?;
    rows.push((
        "stage 2 (L_bound, weights)".into(),
        time(a.steps, || ft.step_once().map(|_| ()))?,
    ));
    for &t in &a.t {
        let variants = [
            (DiscGrad::Exact, 0, "exact gradient".to_string()),
            (DiscGrad::Paper, 0, "paper gradient".to_string()),
            (
                DiscGrad::Paper,
                a.traj_refresh,
                format!(
                    "paper gradient, trajectory cache (refresh {})",
                    a.traj_refresh
                ),
            ),
        ];
        // --traj-refresh 0 leaves out the cached row (it would repeat the uncached one).
        for (k, (grad, refresh, what)) in variants.into_iter().enumerate() {
            if k == 2 && a.traj_refresh == 0 {
                continue;
            }
            let mut ft = finetune(Mode::Stage1Only, t, grad, refresh)?;
            let label = format!("stage 1, T = {t}, {what}");
            rows.push((label, time(a.steps, || ft.step_once().map(|_| ()))?));
        }
    }
    std::fs::remove_dir_all(&dir).ok();

    let base = rows[0].1;
    println!(
        "{what}, {params} parameters; batch {}, stage-1 disc batch {}; device {} x {}",
        a.batch, disc_batch, a.device, a.devices
    );
    println!("| step | s/step | x pretrain step |");
    println!("| --- | ---: | ---: |");
    for (name, secs) in &rows {
        println!("| {name} | {secs:.4} | {:.2} |", secs / base);
    }
    Ok(())
}

/// Mean seconds of `n` calls after one warm-up call.
fn time(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let start = Instant::now();
    for _ in 0..n.max(1) {
        f()?;
    }
    Ok(start.elapsed().as_secs_f64() / n.max(1) as f64)
}
