//! The denoiser network F: one definition, used by the trainer (with autodiff) and by the
//! sampler (without). [`NetConfig`] is the serializable description a bundle carries;
//! [`Network`] is the burn module it builds; [`Preconditioned`] wraps it into the denoiser
//! `D(x, s)` of docs/method.md §1.

#[cfg(feature = "std")]
pub mod flex_ops;
#[cfg(feature = "std")]
mod kernels;
mod mlp;
mod unet;

pub use mlp::{Mlp, MlpConfig};
pub use unet::{SongUNet, UNetBlock, UNetConfig};

use alloc::string::String;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::precond::Precond;
use crate::solver::Denoiser;

/// Which network, with its hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NetConfig {
    /// EDM's DDPM++ U-Net (`SongUNet`), for images.
    UNet(UNetConfig),
    /// A residual MLP, for low-dimensional data.
    Mlp(MlpConfig),
}

impl NetConfig {
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

    /// Builds the module with freshly initialized weights (burn's initializers, seeded by
    /// the device's RNG). Call [`NetConfig::validate`] first.
    pub fn init(&self, device: &Device) -> Network {
        match self {
            NetConfig::UNet(c) => Network::UNet(c.init(device)),
            NetConfig::Mlp(c) => Network::Mlp(c.init(device)),
        }
    }
}

/// The raw network F(c_in x, c_noise [, label]).
// A process holds one or two networks: boxing the U-Net would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Network {
    /// See [`SongUNet`].
    UNet(SongUNet),
    /// See [`Mlp`].
    Mlp(Mlp),
}

impl Network {
    /// `F(x, c_noise, labels)` on flattened samples.
    ///
    /// # Shapes
    /// `x`: `[B, d]`, `c_noise`: `[B]`, `labels`: one-hot `[B, L]` -> `[B, d]`.
    pub fn forward(
        &self,
        x: Tensor<2>,
        c_noise: Tensor<1>,
        labels: Option<Tensor<2>>,
    ) -> Tensor<2> {
        match self {
            Network::UNet(n) => n.forward_flat(x, c_noise, labels),
            Network::Mlp(n) => n.forward(x, c_noise, labels),
        }
    }
}

/// The network with its preconditioning: the denoiser
/// `D(x, s) = c_skip x + c_out F(c_in x, c_noise)` (docs/method.md §1).
pub struct Preconditioned<'a> {
    /// The raw network F.
    pub net: &'a Network,
    /// How F is wrapped.
    pub precond: Precond,
    /// Dimension of one flattened sample.
    pub dim: usize,
}

impl Denoiser for Preconditioned<'_> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn denoise(&self, x: Tensor<2>, sigma: Tensor<1>, labels: Option<Tensor<2>>) -> Tensor<2> {
        let b = x.dims()[0];
        let c = self.precond.coeffs(sigma);
        let col = |t: Tensor<1>| t.reshape([b, 1]);
        let f = self.net.forward(x.clone() * col(c.c_in), c.c_noise, labels);
        x * col(c.c_skip) + f * col(c.c_out)
    }
}

/// `conv.forward(x)`, through the fast CPU path of [`flex_ops`] on hosts.
#[cfg(feature = "std")]
pub(crate) use flex_ops::conv2d;
/// `norm.forward(x)`, then SiLU when `silu`, fused on the fast CPU path on hosts.
#[cfg(feature = "std")]
pub(crate) use flex_ops::group_norm;

/// `conv.forward(x)` (microcontrollers: burn's own convolution).
#[cfg(not(feature = "std"))]
pub(crate) fn conv2d(conv: &burn::nn::conv::Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv.forward(x)
}

/// `norm.forward(x)`, then SiLU when `silu` (microcontrollers: burn's own ops).
#[cfg(not(feature = "std"))]
pub(crate) fn group_norm(norm: &burn::nn::GroupNorm, x: Tensor<4>, silu: bool) -> Tensor<4> {
    let y = norm.forward(x);
    if silu {
        burn::tensor::activation::silu(y)
    } else {
        y
    }
}

/// EDM's `PositionalEmbedding` (endpoint = true, max_positions = 10000) followed by the
/// `flip` of `SongUNet.forward`, so the layout is `[sin | cos]` as in EDM checkpoints.
///
/// # Shapes
/// `c_noise`: `[B]` -> `[B, channels]`.
pub(crate) fn positional_embedding(c_noise: Tensor<1>, channels: usize) -> Tensor<2> {
    let half = channels / 2;
    let b = c_noise.dims()[0];
    let denom = (half.max(2) - 1) as f64;
    let freqs: alloc::vec::Vec<f32> = (0..half)
        .map(|i| libm::pow(1.0 / 10_000.0, i as f64 / denom) as f32)
        .collect();
    let freqs = Tensor::<1>::from_data(
        burn::tensor::TensorData::new(freqs, [half]),
        (&c_noise.device(), c_noise.dtype()),
    );
    let arg = c_noise.reshape([b, 1]) * freqs.reshape([1, half]); // [B, half]
    Tensor::cat(alloc::vec![arg.clone().sin(), arg.cos()], 1)
}

/// EDM's noise/label mapping: `emb = silu(map_layer1(silu(map_layer0(pos(c_noise) + map_label(y)))))`.
pub(crate) fn embed(
    c_noise: Tensor<1>,
    labels: Option<Tensor<2>>,
    noise_channels: usize,
    map_label: Option<&Linear>,
    map_layer0: &Linear,
    map_layer1: Option<&Linear>,
) -> Tensor<2> {
    let mut emb = positional_embedding(c_noise, noise_channels);
    if let (Some(map_label), Some(y)) = (map_label, labels) {
        // EDM scales one-hot labels by sqrt(in_features).
        let scale = libm::sqrt(y.dims()[1] as f64);
        emb = emb + map_label.forward(y.mul_scalar(scale));
    }
    let emb = silu(map_layer0.forward(emb));
    match map_layer1 {
        Some(l) => silu(l.forward(emb)),
        None => emb,
    }
}

/// The weights of `net` as burnpack bytes (what a bundle stores).
pub fn weights_to_bytes(net: &Network) -> Result<alloc::vec::Vec<u8>, burn::store::RecordError> {
    Ok(net.clone().into_record().into_bytes()?.to_vec())
}

/// A network of architecture `config` with the weights of `bytes` (from
/// [`weights_to_bytes`]); every tensor must be present with its exact shape.
pub fn network_from_bytes(
    config: &NetConfig,
    bytes: &[u8],
    device: &Device,
) -> Result<Network, burn::store::RecordError> {
    network_from_vec(config, bytes.to_vec(), device)
}

/// [`network_from_bytes`] taking ownership of the bytes, so loading holds the weights once
/// less (what decides whether a model fits a microcontroller's RAM).
///
/// Before anything of the network's size is allocated, the weights' tensor table is checked
/// against `config` ([`check_weights`]); burn's loader then matches names and shapes.
pub fn network_from_vec(
    config: &NetConfig,
    bytes: alloc::vec::Vec<u8>,
    device: &Device,
) -> Result<Network, burn::store::RecordError> {
    let invalid = burn::store::RecordError::Validation;
    config.validate().map_err(invalid)?;
    // Shared: the check's reader and the loader view the same buffer, no copy.
    let bytes = burn::tensor::Bytes::from_bytes_vec(bytes).shared();
    let net = config.init(device); // parameters are lazy: nothing of their size yet
    check_weights(&net, bytes.clone()).map_err(invalid)?;
    let record = burn::store::ModuleRecord::from_bytes(bytes)?;
    Ok(owned_parameters(net.try_load_record(record)?))
}

/// Checks a burnpack against the (lazily initialized) network it is to be loaded into:
/// every tensor a float without NaN or infinity, and exactly as many values as the network's
/// parameters. Run
/// before loading because burn's loader allocates every parameter at the size the config
/// declares (an 80 KB file could ask for gigabytes) and panics on integer, boolean or
/// quantized tensors.
pub fn check_weights(net: &Network, bytes: burn::tensor::Bytes) -> Result<(), String> {
    let tensors = burn_pack::Reader::from_bytes(bytes)
        .and_then(|r| r.into_tensors())
        .map_err(|e| alloc::format!("the weights are not a readable burnpack: {e}"))?;
    let mut present: u64 = 0;
    for t in &tensors {
        let (name, dtype, shape) = (&t.name, t.dtype, &t.shape);
        use burn::tensor::DType;
        // Bytes per value and the test for a NaN or infinity in one value's bits.
        let (width, non_finite): (usize, fn(&[u8]) -> bool) = match dtype {
            DType::F32 => (4, |b| {
                !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite()
            }),
            DType::F64 => (8, |b| {
                !f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]).is_finite()
            }),
            DType::F16 => (2, |b| u16::from_le_bytes([b[0], b[1]]) & 0x7C00 == 0x7C00),
            DType::BF16 => (2, |b| u16::from_le_bytes([b[0], b[1]]) & 0x7F80 == 0x7F80),
            other => {
                return Err(alloc::format!(
                    "weight tensor '{name}' is {other:?}; network weights are floats"
                ));
            }
        };
        let n = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .ok_or_else(|| alloc::format!("weight tensor '{name}' has an impossible shape"))?;
        present = present.saturating_add(n);
        // A NaN or infinite weight makes every image NaN, which used to come out as a black
        // PNG with exit code 0.
        let data = t
            .to_bytes()
            .map_err(|e| alloc::format!("weight tensor '{name}': {e}"))?;
        if data.chunks_exact(width).any(non_finite) {
            return Err(alloc::format!(
                "weight tensor '{name}' holds NaN or infinite values"
            ));
        }
    }
    let expected = net.num_params() as u64;
    if present != expected {
        return Err(alloc::format!(
            "the weights hold {present} values but the network config describes {expected} \
             parameters"
        ));
    }
    Ok(())
}

/// Gives every parameter a buffer of its own. Loaded tensors are views into the one burnpack
/// buffer (padding included), which would otherwise stay allocated as long as the network:
/// on a microcontroller, RAM for the weights twice over.
fn owned_parameters(net: Network) -> Network {
    use burn::module::{ModuleMapper, Param};
    use burn::tensor::{DType, TensorData};
    struct Owned;
    impl ModuleMapper for Owned {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            // A new Param, not `param.map`: the loaded one's mapper keeps the view alive.
            let id = param.id;
            let t = param.val();
            drop(param);
            let device = t.device();
            let grad = t.is_require_grad();
            let data = t.into_data();
            let dtype = data.dtype();
            let shape = data.shape().clone();
            let copy = match dtype {
                DType::F64 => data.try_to_vec::<f64>().map(|v| TensorData::new(v, shape)),
                _ => data.try_to_vec::<f32>().map(|v| TensorData::new(v, shape)),
            };
            let owned = match copy {
                Ok(owned) => Tensor::from_data(owned, (&device, dtype)),
                // Unreachable for float parameters; keep the view rather than fail.
                Err(_) => Tensor::from_data(data, &device),
            };
            Param::initialized(id, if grad { owned.require_grad() } else { owned })
        }
    }
    net.map(&mut Owned)
}
