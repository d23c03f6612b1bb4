//! EDM pre-training of the base network from scratch (docs/method.md §1): Adam on
//! `w(s) ||D(x + s eps, s) - x||^2` with `ln s ~ N(-1.2, 1.2^2)`, an EMA of the weights for
//! export, periodic atomic checkpoints, resumable.

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use serde_json::json;

use sampler_core::bundle::{Bundle, ModelSpec, Provenance, SolverKind};
use sampler_core::model::{
    NetConfig, Network, Preconditioned, network_from_bytes, weights_to_bytes,
};
use sampler_core::precond::Precond;
use sampler_core::rng;
use sampler_core::schedule::{SIGMA_MAX, SIGMA_MIN, Schedule};

use crate::data::{Dataset, noise};
use crate::losses::edm_loss;
use crate::model::{adam, ema_decay_at, init_network, update_ema};
use crate::run::{Checkpoint, RunDir, Training, check_finite};

/// EDM's `P_mean`.
pub const P_MEAN: f64 = -1.2;
/// EDM's `P_std`.
pub const P_STD: f64 = 1.2;

/// EDM's training noise levels for step `step` of a run seeded `seed`: `ln s ~ N(P_MEAN,
/// P_STD^2)`, `batch` draws from the portable generator.
pub fn ln_sigma_draw(seed: u64, step: u64, batch: usize) -> Vec<f32> {
    let stream = rng::random_u64(seed ^ 12, step);
    rng::gaussian_vec(stream, batch)
        .iter()
        .map(|z| (P_MEAN + P_STD * *z as f64) as f32)
        .collect()
}

/// Everything that defines a pre-training run (its `config.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PretrainConfig {
    /// The network.
    pub net: NetConfig,
    /// Preconditioning (EDM with `sigma_data`).
    pub precond: Precond,
    /// Optimizer steps.
    pub steps: u64,
    /// Batch size.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// EMA decay (with warm-up).
    pub ema_decay: f64,
    /// Seed of initialization, batches and noise.
    pub seed: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: u64,
    /// Name of the data set, for provenance.
    pub dataset: String,
    /// Shape of one image of the data.
    pub image: sampler_core::bundle::ImageShape,
    /// Number of classes of the data (0: unconditional).
    pub label_count: u32,
    /// U-Net dropout before each block's second convolution (EDM's CIFAR-10 setting 0.13);
    /// masks from the device's generator, seeded from `seed` and the step.
    #[serde(default)]
    pub dropout: f64,
}

impl PretrainConfig {
    /// EDM pre-training of `net` on the images of `dataset` (`image`, `label_count`
    /// classes), every other field at its default (the `trainer pretrain` flags read theirs
    /// from here): EDM's preconditioning, 10,000 Adam steps of 64 at 0.001, EMA decay 0.999,
    /// a checkpoint every 100 steps, seed 0, no dropout.
    pub fn new(
        net: NetConfig,
        dataset: String,
        image: sampler_core::bundle::ImageShape,
        label_count: u32,
    ) -> Self {
        PretrainConfig {
            net,
            precond: Precond::default(),
            steps: 10_000,
            batch: 64,
            lr: 1e-3,
            ema_decay: 0.999,
            seed: 0,
            checkpoint_every: 100,
            dataset,
            image,
            label_count,
            dropout: 0.0,
        }
    }
}

/// A pre-training run in memory.
pub struct Pretrain {
    /// Its config.
    pub config: PretrainConfig,
    net: Network,
    ema: Network,
    optim: ModuleOptimizer,
    /// Steps done.
    pub step: u64,
    device: Device,
    /// Devices the batch is split over (`--devices`); the first is `device`, where the
    /// weights and the optimizer live.
    replicas: Vec<Device>,
}

impl Pretrain {
    /// A fresh run (or one continued from `checkpoint`).
    pub fn new(
        config: PretrainConfig,
        checkpoint: Option<Checkpoint>,
        device: &Device,
    ) -> Result<Self> {
        config
            .net
            .validate()
            .map_err(|e| anyhow::anyhow!("network config: {e}"))?;
        if config.batch == 0
            || config.lr.is_nan()
            || config.lr <= 0.0
            || !(0.0..1.0).contains(&config.ema_decay)
            || !(0.0..1.0).contains(&config.dropout)
        {
            bail!("--batch must be positive, --lr > 0, --ema-decay and --dropout in [0, 1)");
        }
        if config.dropout > 0.0 && matches!(config.net, NetConfig::Mlp(_)) {
            bail!("--dropout applies to the U-Net only");
        }
        let mut net = init_network(&config.net, config.seed, device);
        let mut ema = net.valid();
        let mut optim = adam();
        let mut step = 0;
        if let Some(ck) = checkpoint {
            step = ck.step;
            let load = |w: &Option<Vec<u8>>, what: &str| -> Result<Option<Network>> {
                w.as_ref()
                    .map(|w| {
                        network_from_bytes(&config.net, w, device)
                            .map_err(|e| anyhow::anyhow!("checkpoint {what}: {e}"))
                    })
                    .transpose()
            };
            if let Some(n) = load(&ck.net, "weights")? {
                net = n;
            }
            if let Some(e) = load(&ck.ema, "EMA weights")? {
                ema = e.valid();
            }
            if let Some(b) = ck.net_optim {
                optim = optim.from_bytes(burn::tensor::Bytes::from_bytes_vec(b))?;
            }
        }
        let net = net.with_dropout(config.dropout);
        Ok(Pretrain {
            config,
            net,
            ema,
            optim,
            step,
            device: device.clone(),
            replicas: vec![device.clone()],
        })
    }

    /// Splits each step's batch over `devices` (data parallel, [`crate::parallel`]); the
    /// first must be the run's device. The result equals one device's within f32 round-off.
    pub fn with_replicas(mut self, devices: Vec<Device>) -> Result<Self> {
        self.replicas = crate::parallel::replicas_of(&self.device, devices)?;
        Ok(self)
    }

    /// The global batch's loss at the current weights and its gradient (one step's, before
    /// the optimizer), over every replica.
    pub fn loss_and_grads(&self, data: &Dataset) -> Result<(f64, GradientsParams)> {
        sampler_core::cpu::on_cpu_workers(|| self.loss_and_grads_inner(data))
    }

    fn loss_and_grads_inner(&self, data: &Dataset) -> Result<(f64, GradientsParams)> {
        let c = &self.config;
        let d = data.dim();
        let (x, labels) = data.batch(c.seed, self.step, c.batch, &self.device);
        let eps = noise(c.seed, 11, self.step, c.batch, d, &self.device);
        let ln_sigma = ln_sigma_draw(c.seed, self.step, c.batch);
        let ln_sigma = Tensor::<1>::from_data(TensorData::new(ln_sigma, [c.batch]), &self.device);
        // Dropout's masks come from the devices' generators: seeded per step (and per
        // replica), so a resumed run draws the same masks.
        let _rng = (c.dropout > 0.0).then(crate::model::device_rng_lock);
        if c.dropout > 0.0 {
            for (k, device) in self.replicas.iter().enumerate() {
                device.seed(rng::random_u64(c.seed ^ 13, self.step).wrapping_add(k as u64));
            }
        }
        crate::parallel::loss_and_grads(&self.net, &self.replicas, c.batch, |net, rows, dev| {
            let den = Preconditioned {
                net,
                precond: c.precond,
                dim: d,
            };
            let on = |t: &Tensor<2>| crate::parallel::rows_on(t, rows.clone(), dev);
            Ok(edm_loss(
                &den,
                on(&x),
                labels.as_ref().map(on),
                crate::parallel::rows_on(&ln_sigma, rows.clone(), dev),
                on(&eps),
                c.precond,
            ))
        })
    }

    /// The weights being trained.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// Whether the trained and the EMA weights are all finite (checked before every
    /// checkpoint: one update can turn them NaN while the loss that led to it was finite).
    pub fn weights_finite(&self) -> bool {
        crate::model::network_finite(&self.net) && crate::model::network_finite(&self.ema)
    }

    /// One Adam step on a batch; returns the loss.
    pub fn step_once(&mut self, data: &Dataset) -> Result<f64> {
        sampler_core::cpu::on_cpu_workers(|| self.step_inner(data))
    }

    fn step_inner(&mut self, data: &Dataset) -> Result<f64> {
        let (loss, gp) = self.loss_and_grads_inner(data)?;
        check_finite(loss, self.step, None)?;
        let placeholder = self
            .config
            .net
            .init(&self.device.clone().without_autodiff());
        let net = std::mem::replace(&mut self.net, placeholder);
        self.net = self.optim.step(self.config.lr, net, gp);
        let decay = ema_decay_at(self.config.ema_decay, self.step);
        let placeholder = self
            .config
            .net
            .init(&self.device.clone().without_autodiff());
        let ema = std::mem::replace(&mut self.ema, placeholder);
        self.ema = update_ema(ema, &self.net, decay);
        self.step += 1;
        Ok(loss)
    }

    /// The state to save.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        Ok(Checkpoint {
            step: self.step,
            net: Some(weights_to_bytes(&self.net).map_err(|e| anyhow::anyhow!("{e}"))?),
            ema: Some(weights_to_bytes(&self.ema).map_err(|e| anyhow::anyhow!("{e}"))?),
            net_optim: Some(self.optim.into_bytes()?.to_vec()),
            logits: None,
            schedule_optim: None,
            resume: Default::default(),
        })
    }

    /// A bundle of the EMA weights with EDM's rho = 7 schedule of `t` levels.
    pub fn export(&self, t: usize, name: &str) -> Result<Bundle> {
        export_bundle(&self.config, &self.checkpoint()?, t, name)
    }
}

/// The bundle of a pre-training checkpoint: EMA weights, EDM's rho = 7 levels.
pub fn export_bundle(
    config: &PretrainConfig,
    ck: &Checkpoint,
    t: usize,
    name: &str,
) -> Result<Bundle> {
    let weights = ck
        .ema
        .clone()
        .context("the checkpoint has no EMA weights")?;
    let b = Bundle {
        name: name.to_string(),
        description: format!("EDM-pretrained {} on {}", kind(&config.net), config.dataset),
        image: config.image,
        label_count: config.label_count,
        precond: config.precond,
        schedule: Schedule::edm(t, SIGMA_MIN, SIGMA_MAX)?,
        solver: SolverKind::Euler,
        model: ModelSpec::Network {
            config: config.net.clone(),
            weights,
        },
        provenance: Provenance {
            dataset: config.dataset.clone(),
            training_steps: ck.step,
            schedule_method: "edm-rho7".into(),
            created_unix: crate::run::unix_now(),
        },
    };
    b.validate()?;
    Ok(b)
}

fn kind(n: &NetConfig) -> &'static str {
    match n {
        NetConfig::UNet(_) => "U-Net",
        NetConfig::Mlp(_) => "MLP",
    }
}

/// Runs pre-training to the end (or `stop_after` steps) with [`crate::run::train`]'s loop:
/// logging every step, checkpointing every `checkpoint_every` steps and at the end.
pub fn run(
    run_dir: &RunDir,
    config: PretrainConfig,
    data: &Dataset,
    devices: &[Device],
    stop_after: Option<u64>,
    quiet: bool,
) -> Result<Pretrain> {
    if config.image != data.shape || config.label_count != data.label_count {
        bail!("the config's image shape/classes differ from the data's");
    }
    if config.net.dim() != data.dim() {
        bail!(
            "the network expects {} values per sample but the data has {}",
            config.net.dim(),
            data.dim()
        );
    }
    if config.net.label_dim() != data.label_count as usize {
        bail!(
            "the network has {} label inputs but the data has {} classes",
            config.net.label_dim(),
            data.label_count
        );
    }
    let open = |config, checkpoint, device: &Device| -> Result<OnData> {
        let run = Pretrain::new(config, checkpoint, device)?.with_replicas(devices.to_vec())?;
        Ok(OnData { run, data })
    };
    let on = crate::run::train(run_dir, config, devices, stop_after, quiet, open)?;
    Ok(on.run)
}

/// A pre-training run with the data set it steps on, as [`crate::run::train`] drives it.
struct OnData<'a> {
    run: Pretrain,
    data: &'a Dataset,
}

impl Training for OnData<'_> {
    type Config = PretrainConfig;
    /// The step and its loss.
    type Record = (u64, f64);

    fn config(&self) -> &PretrainConfig {
        &self.run.config
    }

    fn steps_done(&self) -> u64 {
        self.run.step
    }

    fn total_steps(&self) -> u64 {
        self.run.config.steps
    }

    fn checkpoint_every(&self) -> u64 {
        self.run.config.checkpoint_every
    }

    fn train_step(&mut self) -> Result<(u64, f64)> {
        let step = self.run.step;
        Ok((step, self.run.step_once(self.data)?))
    }

    fn log_entry(&self, &(step, loss): &(u64, f64)) -> Result<serde_json::Value> {
        Ok(json!({"step": step, "loss": loss}))
    }

    fn progress(&self, &(_, loss): &(u64, f64)) -> String {
        format!("loss {loss:.4}")
    }

    fn save(&self) -> Result<Checkpoint> {
        self.run.checkpoint()
    }

    fn finite(&self) -> bool {
        self.run.weights_finite()
    }
}
