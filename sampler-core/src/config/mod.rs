//! The networks' hyper-parameters: what a bundle carries to describe its denoiser, and the
//! one walk of the U-Net's architecture ([`UNetConfig::topology`]) that burn's module
//! (`model::unet`), the micro runtime (`crate::micro`) and the memory estimates all follow.
//! Free of burn and of both engines (a ground floor of the crate, under the bundle format),
//! so a microcontroller build decodes bundles without burn.

mod mlp;
mod parameters;
mod unet;

pub use mlp::MlpConfig;
pub(crate) use unet::{BlockSpec, edm_groups};
pub use unet::{Resample, UNetConfig};

use alloc::string::String;
use serde::{Deserialize, Serialize};

// EDM's constants of the DDPM++ network (NVlabs/edm, training/networks.py), shared by both
// engines: burn's modules (`model::unet`, `model::network`) and the micro runtime
// (`crate::micro`), which round them to f32 where they compute in f32.

/// GroupNorm's epsilon: SongUNet passes `eps=1e-6` to every `GroupNorm` (EDM's class
/// default is 1e-5).
pub const GROUP_NORM_EPS: f64 = 1e-6;
/// The residual scale of DDPM++'s `UNetBlock`, `skip_scale = sqrt(1/2)`: the block's sum
/// `conv1(..) + skip(x)` and its attention's `proj(..) + x` are scaled by it.
pub const SKIP_SCALE: f64 = core::f64::consts::FRAC_1_SQRT_2;
/// `max_positions` of EDM's `PositionalEmbedding`: the noise embedding's frequencies run
/// from 1 down to `1 / MAX_POSITIONS` (endpoint included).
pub const MAX_POSITIONS: f64 = 10_000.0;

/// Frequency `i` of the noise embedding's `half` sinusoids (EDM's `PositionalEmbedding`
/// with `endpoint=True`): `(1 / MAX_POSITIONS)^(i / (half - 1))`, in f64 and rounded once to
/// f32, the same in both engines.
pub fn noise_frequency(i: usize, half: usize) -> f32 {
    let denom = (half.max(2) - 1) as f64;
    libm::pow(1.0 / MAX_POSITIONS, i as f64 / denom) as f32
}

/// Which network, with its hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NetConfig {
    /// EDM's DDPM++ U-Net (`SongUNet`), for images.
    UNet(UNetConfig),
    /// A residual MLP, for low-dimensional data.
    Mlp(MlpConfig),
}

impl NetConfig {
    /// Multiply-accumulates of one denoiser evaluation of one sample: every weight of a
    /// linear layer once, every weight of a convolution once per output pixel, and
    /// attention's two products (`C N^2` each for `N` pixels). Normalization, activations
    /// and the preconditioning are left out (a few per value). Saturates instead of
    /// overflowing; call [`NetConfig::validate`] first.
    pub fn macs_per_evaluation(&self) -> u64 {
        match self {
            NetConfig::UNet(c) => c.macs_per_evaluation(),
            NetConfig::Mlp(c) => c.macs_per_evaluation(),
        }
    }

    /// Checks the hyper-parameters; `Err` says which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            NetConfig::UNet(c) => c.validate(),
            NetConfig::Mlp(c) => c.validate(),
        }
    }

    /// Dimension of one flattened sample.
    pub fn dim(&self) -> usize {
        match self {
            NetConfig::UNet(c) => c.in_channels * c.img_resolution * c.img_resolution,
            NetConfig::Mlp(c) => c.dim,
        }
    }

    /// Number of class labels it is conditioned on (0: unconditional).
    pub fn label_dim(&self) -> usize {
        match self {
            NetConfig::UNet(c) => c.label_dim,
            NetConfig::Mlp(c) => c.label_dim,
        }
    }

    /// An upper estimate of the activation bytes of one sample in a forward pass without
    /// gradients. Call [`NetConfig::validate`] first.
    pub fn activation_bytes(&self) -> u64 {
        match self {
            NetConfig::UNet(c) => c.activation_bytes(),
            NetConfig::Mlp(c) => c.activation_bytes(),
        }
    }
}
