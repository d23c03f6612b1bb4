//! The burn side of the denoiser: the [`Network`] module a [`NetConfig`] builds, its
//! preconditioned wrapper ([`Preconditioned`], the denoiser of docs/method.md §1), and the
//! weights' burnpack encoding that version-1 bundles carry.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::NetConfig;
use super::mlp::Mlp;
use super::unet::SongUNet;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use crate::config::noise_frequency;
use crate::denoiser::Denoiser;
use crate::precond::Precond;

impl NetConfig {
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

    /// The U-Net with training dropout `p` ([`SongUNet::with_dropout`]); the MLP has none
    /// and is returned as it is.
    pub fn with_dropout(self, p: f64) -> Self {
        match self {
            Network::UNet(n) => Network::UNet(n.with_dropout(p)),
            mlp => mlp,
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

/// EDM's `PositionalEmbedding` (endpoint = true, max_positions = 10000) followed by the
/// `flip` of `SongUNet.forward`, so the layout is `[sin | cos]` as in EDM checkpoints.
///
/// # Shapes
/// `c_noise`: `[B]` -> `[B, channels]`.
pub(crate) fn positional_embedding(c_noise: Tensor<1>, channels: usize) -> Tensor<2> {
    let half = channels / 2;
    let b = c_noise.dims()[0];
    let freqs: alloc::vec::Vec<f32> = (0..half).map(|i| noise_frequency(i, half)).collect();
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
    // Version-2 bundles carry a weights pack: dequantize it into a burnpack.
    let bytes = if bytes.starts_with(&crate::pack::PACK_MAGIC) {
        let burnpack = pack_to_burnpack(config, &bytes).map_err(invalid)?;
        drop(bytes);
        burnpack
    } else {
        bytes
    };
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

/// A weights pack's tensors, dequantized to f32, as a burnpack for burn's loader. The
/// pack's names and shapes are checked against `config` first.
pub fn pack_to_burnpack(config: &NetConfig, pack: &[u8]) -> Result<Vec<u8>, String> {
    let view = crate::pack::PackView::parse(pack).map_err(|e| e.to_string())?;
    config.check_pack(&view).map_err(|e| e.to_string())?;
    let tensors = view
        .tensors()
        .iter()
        .map(|t| {
            let bytes: Vec<u8> = t.to_vec().iter().flat_map(|v| v.to_le_bytes()).collect();
            burn_pack::Tensor::new(
                t.name.into(),
                burn_pack::DType::F32,
                burn_pack::Shape::from(t.shape().to_vec()),
                None,
                burn_pack::Bytes::from_bytes_vec(bytes),
            )
        })
        .collect();
    burn_pack::Writer::new(tensors)
        .into_bytes()
        .map(|b| b.to_vec())
        .map_err(|e| alloc::format!("could not re-encode the weights for burn: {e}"))
}

/// The weights of a burnpack (or a pack) as a weights pack with matrices and kernels
/// stored as `dtype`, tensors in the network's module order: what `trainer export
/// --weights` writes into a version-2 bundle. Every parameter of `config` must be present
/// with its shape, and nothing else.
pub fn weights_to_pack(
    config: &NetConfig,
    weights: &[u8],
    dtype: crate::pack::WeightDtype,
) -> Result<Vec<u8>, String> {
    use crate::pack::{PackTensor, encode};
    let params = config.parameters();
    let mut values: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    if weights.starts_with(&crate::pack::PACK_MAGIC) {
        let view = crate::pack::PackView::parse(weights).map_err(|e| e.to_string())?;
        config.check_pack(&view).map_err(|e| e.to_string())?;
        for t in view.tensors() {
            values.push((t.name.into(), t.shape().to_vec(), t.to_vec()));
        }
    } else {
        let tensors =
            burn_pack::Reader::from_bytes(burn::tensor::Bytes::from_bytes_vec(weights.to_vec()))
                .and_then(|r| r.into_tensors())
                .map_err(|e| alloc::format!("the weights are not a readable burnpack: {e}"))?;
        for t in tensors {
            let shape: Vec<usize> = t.shape.iter().copied().collect();
            let data = t
                .to_bytes()
                .map_err(|e| alloc::format!("weight tensor '{}': {e}", t.name))?;
            let v: Vec<f32> = match t.dtype {
                burn_pack::DType::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                burn_pack::DType::F64 => data
                    .chunks_exact(8)
                    .map(|b| {
                        f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                    })
                    .collect(),
                other => {
                    return Err(alloc::format!(
                        "weight tensor '{}' is {other:?}; export reads f32 or f64 weights",
                        t.name
                    ));
                }
            };
            values.push((t.name.clone(), shape, v));
        }
    }
    let mut ordered = Vec::with_capacity(params.len());
    for (name, shape) in &params {
        let Some(i) = values.iter().position(|(n, _, _)| n == name) else {
            return Err(alloc::format!("weight tensor '{name}' is missing"));
        };
        let (name, got, v) = values.swap_remove(i);
        if &got != shape {
            return Err(alloc::format!(
                "weight tensor '{name}' has shape {got:?}, the config needs {shape:?}"
            ));
        }
        ordered.push(PackTensor {
            name,
            shape: got,
            values: v,
        });
    }
    if let Some((name, _, _)) = values.first() {
        return Err(alloc::format!(
            "weight tensor '{name}' is not a parameter of this network"
        ));
    }
    encode(&ordered, dtype).map_err(|e| e.to_string())
}
