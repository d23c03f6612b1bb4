//! What the trainer optimizes: a base denoiser (a network with its EMA copy, or an exact
//! mixture), its initialization and EMA, and the named network presets. The schedule
//! logits stage 1 learns are in [`crate::two_stage::levels`].

use std::collections::HashMap;
use std::sync::Mutex;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamConfig, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use sampler_core::bundle::{Bundle, ModelSpec};
use sampler_core::gmm::{Mixture, MixtureDenoiser};
use sampler_core::model::{
    NetConfig, Network, Preconditioned, UNetConfig, network_from_bytes, weights_to_bytes,
};
use sampler_core::precond::Precond;
use sampler_core::solver::Denoiser;

/// Flex draws initial weights and dropout masks from one global RNG: seed and draw under one
/// lock so concurrent runs in one process cannot interleave their draws.
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Holds the device generators for a seed and the draws that follow it (initialization,
/// dropout).
pub fn device_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A freshly initialized network, identical for the same `seed`.
pub fn init_network(config: &NetConfig, seed: u64, device: &Device) -> Network {
    let _guard = device_rng_lock();
    device.seed(seed);
    let net = config.init(device);
    // Initializers are lazy: touch every parameter now, while the seed is ours.
    let bytes = weights_to_bytes(&net).expect("a fresh network serializes");
    network_from_bytes(config, &bytes, device).expect("a fresh network reloads")
}

/// The denoiser being fine-tuned.
// One per run: boxing the network variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Base {
    /// A network: the weights being trained, their EMA (what ships), the preconditioning.
    Network {
        /// Architecture.
        config: NetConfig,
        /// Trained weights (on the autodiff device).
        net: Network,
        /// Exponential moving average of `net` (no autodiff).
        ema: Network,
        /// Preconditioning.
        precond: Precond,
    },
    /// An exact Gaussian mixture: nothing to train but the schedule.
    Mixture {
        /// Parameters.
        mixture: Mixture,
        /// On the device.
        den: MixtureDenoiser,
    },
}

impl Base {
    /// Loads the model of `bundle`; networks land on `device` (autodiff for training).
    pub fn from_bundle(bundle: &Bundle, device: &Device) -> anyhow::Result<Base> {
        Ok(match &bundle.model {
            ModelSpec::Network { config, weights } => {
                let net = network_from_bytes(config, weights, device)
                    .map_err(|e| anyhow::anyhow!("base bundle weights: {e}"))?;
                Base::Network {
                    config: config.clone(),
                    ema: net.valid(),
                    net,
                    precond: bundle.precond,
                }
            }
            ModelSpec::Mixture(m) => Base::Mixture {
                mixture: m.clone(),
                den: m.to_device(device)?,
            },
        })
    }

    /// Dimension of one sample.
    pub fn dim(&self) -> usize {
        match self {
            Base::Network { config, .. } => config.dim(),
            Base::Mixture { mixture, .. } => mixture.dim,
        }
    }

    /// Runs `f` with the shipped denoiser (EMA weights, no autodiff on the weights).
    pub fn with_shipped<R>(&self, f: impl FnOnce(&dyn Denoiser) -> R) -> R {
        match self {
            Base::Network {
                ema,
                precond,
                config,
                ..
            } => f(&Preconditioned {
                net: ema,
                precond: *precond,
                dim: config.dim(),
            }),
            Base::Mixture { den, .. } => f(den),
        }
    }
}

/// Whether every parameter of `net` is finite.
pub fn network_finite(net: &Network) -> bool {
    struct Finite(bool);
    impl ModuleVisitor for Finite {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.0 {
                self.0 = param
                    .val()
                    .inner()
                    .try_into_vec_as::<f64>()
                    .is_ok_and(|v| v.iter().all(|x| x.is_finite()));
            }
        }
    }
    let mut f = Finite(true);
    net.visit(&mut f);
    f.0
}

/// `ema <- decay * ema + (1 - decay) * net`, matching parameters by id.
pub fn update_ema(ema: Network, net: &Network, decay: f64) -> Network {
    struct Collect(HashMap<ParamId, Tensor<1>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val().inner();
            let n = t.shape().num_elements();
            self.0.insert(param.id, t.reshape([n]));
        }
    }
    struct Blend(HashMap<ParamId, Tensor<1>>, f64);
    impl ModuleMapper for Blend {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let Some(src) = self.0.remove(&param.id) else {
                return param;
            };
            let decay = self.1;
            param.map(|e| {
                let dims = e.dims();
                e.mul_scalar(decay) + src.reshape(dims).mul_scalar(1.0 - decay)
            })
        }
    }
    let mut c = Collect(HashMap::new());
    net.visit(&mut c);
    ema.map(&mut Blend(c.0, decay))
}

/// The EMA's decay after `n` updates: `min(decay, (1 + n) / (10 + n))`, a warm-up so that
/// the average does not hold on to the first weights (pre-training and stage 2 alike).
pub fn ema_decay_at(decay: f64, n: u64) -> f64 {
    let n = n as f64;
    decay.min((1.0 + n) / (10.0 + n))
}

/// The optimizer of every trained parameter (weights and schedule logits): Adam with
/// PyTorch's epsilon, 1e-8, as EDM trains.
pub fn adam() -> ModuleOptimizer {
    AdamConfig::new().with_epsilon(1e-8).init()
}

/// Named network settings (`trainer pretrain --preset`, `trainer bench --preset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// The shipped MNIST base: 16 channels, mult 1,2, one block per resolution.
    Mnist,
    /// EDM's DDPM++ CIFAR-10 network (`edm/train.py --arch=ddpmpp`, 55.7M parameters at
    /// 32x32x3): 128 channels, mult 2,2,2, four blocks, attention at 16x16, dropout 0.13.
    Cifar10,
}

impl Preset {
    /// The U-Net for square images of `resolution` with `channels` colors and `labels`
    /// classes.
    pub fn unet(self, resolution: usize, channels: usize, labels: usize) -> UNetConfig {
        let c = UNetConfig::new(resolution, channels, channels).with_label_dim(labels);
        match self {
            Preset::Mnist => c
                .with_model_channels(16)
                .with_channel_mult(vec![1, 2])
                .with_num_blocks(1),
            Preset::Cifar10 => c
                .with_model_channels(128)
                .with_channel_mult(vec![2, 2, 2])
                .with_num_blocks(4)
                .with_attn_resolutions(vec![16]),
        }
    }

    /// Training dropout.
    pub fn dropout(self) -> f64 {
        match self {
            Preset::Mnist => 0.0,
            Preset::Cifar10 => 0.13,
        }
    }

    /// The image shape and classes the preset was made for (the benchmark's data).
    pub fn data_shape(self) -> (sampler_core::bundle::ImageShape, usize) {
        let (side, channels, labels) = match self {
            Preset::Mnist => (28, 1, 10),
            Preset::Cifar10 => (32, 3, 0),
        };
        let shape = sampler_core::bundle::ImageShape {
            channels,
            height: side,
            width: side,
        };
        (shape, labels)
    }
}
