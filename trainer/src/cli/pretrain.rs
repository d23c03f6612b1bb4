//! `trainer pretrain`: EDM pre-training of the base network (docs/method.md §1). The flags
//! become a [`PretrainConfig`] together with the data, whose shape and classes size the
//! network.

use anyhow::{Context, Result, bail};
use clap::Args;
use sampler_core::bundle::ImageShape;
use sampler_core::model::{MlpConfig, NetConfig, UNetConfig};
use sampler_core::precond::{Precond, SIGMA_DATA};

use super::{DataArgs, RunArgs, batch_arg, list_default};
use crate::data::Dataset;
use crate::pretrain::PretrainConfig;
use crate::run::RunDir;

/// The defaults of the flags: [`PretrainConfig::new`]'s, and the networks' own.
pub(super) fn defaults() -> PretrainConfig {
    let none = ImageShape {
        channels: 0,
        height: 0,
        width: 0,
    };
    PretrainConfig::new(NetConfig::Mlp(mlp_defaults()), String::new(), none, 0)
}

fn unet_defaults() -> UNetConfig {
    UNetConfig::new(0, 0, 0)
}

fn mlp_defaults() -> MlpConfig {
    MlpConfig::new(0)
}

/// The flags of `trainer pretrain`.
#[derive(Args, Debug)]
pub(super) struct PretrainArgs {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Network: unet (EDM's DDPM++) or mlp.
    #[arg(long, default_value = "unet", value_parser = ["unet", "mlp"])]
    net: String,
    /// Named U-Net settings instead of the U-Net flags below: mnist (the shipped MNIST
    /// base: 16 channels, mult 1,2, one block) or cifar10 (EDM's DDPM++ CIFAR-10 network:
    /// 128 channels, mult 2,2,2, four blocks, attention at 16x16, dropout 0.13).
    #[arg(long, value_enum, conflicts_with_all = ["model_channels", "channel_mult", "num_blocks", "attn", "dropout"])]
    preset: Option<crate::model::Preset>,
    /// U-Net dropout before each block's second convolution (training only).
    #[arg(long, default_value_t = defaults().dropout)]
    dropout: f64,
    /// U-Net base channels.
    #[arg(long, default_value_t = unet_defaults().model_channels)]
    model_channels: usize,
    /// U-Net channel multipliers per resolution, comma-separated.
    #[arg(long, default_value = list_default(&unet_defaults().channel_mult), value_delimiter = ',')]
    channel_mult: Vec<usize>,
    /// U-Net residual blocks per resolution.
    #[arg(long, default_value_t = unet_defaults().num_blocks)]
    num_blocks: usize,
    /// Resolutions with self-attention, comma-separated (none by default).
    #[arg(long, value_delimiter = ',')]
    attn: Vec<usize>,
    /// MLP hidden width.
    #[arg(long, default_value_t = mlp_defaults().hidden)]
    hidden: usize,
    /// MLP residual blocks.
    #[arg(long, default_value_t = mlp_defaults().depth)]
    depth: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = defaults().steps)]
    steps: u64,
    /// Batch size.
    #[arg(long, default_value_t = defaults().batch, value_parser = batch_arg)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = defaults().lr)]
    lr: f64,
    /// EMA decay of the exported weights (warm-up: min(decay, (1+n)/(10+n))).
    #[arg(long, default_value_t = defaults().ema_decay)]
    ema_decay: f64,
    /// EDM's sigma_data.
    #[arg(long, default_value_t = SIGMA_DATA)]
    sigma_data: f32,
}

impl TryFrom<(&PretrainArgs, &Dataset)> for PretrainConfig {
    type Error = anyhow::Error;

    /// The run config of the flags for `data`: the network sized to its images and classes.
    fn try_from((a, data): (&PretrainArgs, &Dataset)) -> Result<PretrainConfig> {
        let net = match a.net.as_str() {
            "mlp" => NetConfig::Mlp(
                MlpConfig::new(data.dim())
                    .with_hidden(a.hidden)
                    .with_depth(a.depth)
                    .with_label_dim(data.label_count as usize),
            ),
            _ => {
                if data.shape.height != data.shape.width {
                    bail!(
                        "the U-Net needs square images, the data is {}x{}; pass --resize N",
                        data.shape.width,
                        data.shape.height
                    );
                }
                let (side, colors) = (data.shape.height as usize, data.shape.channels as usize);
                NetConfig::UNet(match a.preset {
                    Some(p) => p.unet(side, colors, data.label_count as usize),
                    None => UNetConfig::new(side, colors, colors)
                        .with_label_dim(data.label_count as usize)
                        .with_model_channels(a.model_channels)
                        .with_channel_mult(a.channel_mult.clone())
                        .with_num_blocks(a.num_blocks)
                        .with_attn_resolutions(a.attn.clone()),
                })
            }
        };
        if a.net == "mlp" && a.preset.is_some() {
            bail!("--preset names U-Net settings; it does not apply to --net mlp");
        }
        let dropout = a.preset.map_or(a.dropout, |p| p.dropout());
        net.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(PretrainConfig {
            net,
            precond: Precond::Edm {
                sigma_data: a.sigma_data,
            },
            steps: a.steps,
            batch: a.batch,
            lr: a.lr,
            ema_decay: a.ema_decay,
            seed: a.run.seed,
            checkpoint_every: a.run.checkpoint_every,
            dataset: data.name.clone(),
            image: data.shape,
            label_count: data.label_count,
            dropout,
        })
    }
}

/// Runs (or resumes) the pre-training and prints where it stands.
pub(super) fn run(a: PretrainArgs) -> Result<()> {
    let data = a.data.load()?.context("pre-training needs --data")?;
    let config = PretrainConfig::try_from((&a, &data))?;
    crate::memory::check(
        crate::memory::pretrain_bytes(&config),
        data.values.len() as u64 * 4,
        a.run.max_memory,
    )?;
    let devices = crate::devices(&a.run.device, a.run.devices as usize)?;
    let run_dir = RunDir::create(&a.run.run)?;
    let pt = crate::pretrain::run(
        &run_dir,
        config,
        &data,
        &devices,
        a.run.stop_after,
        a.run.quiet,
    )?;
    println!(
        "pre-training: {} of {} steps done; run directory {}",
        pt.step,
        pt.config.steps,
        run_dir.path.display()
    );
    Ok(())
}
