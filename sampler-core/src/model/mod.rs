//! The denoiser network F: one definition, used by the trainer (with autodiff) and by the
//! sampler (without). [`NetConfig`] is the serializable description a bundle carries;
//! [`Network`] is the burn module it builds; [`Preconditioned`] wraps it into the denoiser
//! `D(x, s)` of docs/method.md §1.

pub use crate::config::{MlpConfig, NetConfig, Resample, UNetConfig};

#[cfg(feature = "burn")]
mod mlp;
#[cfg(feature = "burn")]
mod network;
#[cfg(feature = "burn")]
pub mod ops;
#[cfg(feature = "burn")]
mod unet;

#[cfg(feature = "burn")]
pub use mlp::Mlp;
#[cfg(feature = "burn")]
pub(crate) use network::embed;
#[cfg(feature = "burn")]
pub use network::*;
#[cfg(feature = "burn")]
pub(crate) use ops::{
    conv2d, conv2d_residual, group_norm, group_norm_shifted, resample2, softmax_last,
};
#[cfg(feature = "burn")]
pub use unet::{SongUNet, UNetBlock};
