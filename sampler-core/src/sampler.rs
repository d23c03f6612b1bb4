//! Bundle -> images: the API that sampler-cli and the firmware call.
//!
//! Image `k` of a run with seed `seed` starts from `x_0 = s_max * eps`, where `eps` is
//! stream [`rng::image_seed`]`(seed, k)` of the portable generator in C*H*W order, so it is
//! the same on every target and whatever the batch size. Euler then runs over the bundle's
//! levels (docs/method.md §2).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use burn::tensor::{Device, Tensor, TensorData};

use crate::bundle::{Bundle, BundleError, ImageShape, ModelSpec};
use crate::gmm::MixtureDenoiser;
use crate::model::{Network, Preconditioned, network_from_bytes};
use crate::rng;
use crate::solver::{Denoiser, Step, euler};

/// Why sampling failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// The bundle is unreadable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The weights do not fit the declared network.
    #[error("bundle weights do not match its network config: {0}")]
    Weights(String),
    /// A label outside `0..label_count`, or a label for an unconditional model.
    #[error("label {label} is out of range: {reason}")]
    Label {
        /// Requested label.
        label: u32,
        /// Why.
        reason: String,
    },
    /// The tensor backend returned data of an unexpected type.
    #[error("could not read the generated images back: {0}")]
    Readback(String),
}

enum LoadedModel {
    Network(Network),
    Mixture(MixtureDenoiser),
}

/// A decoded bundle on a device, ready to generate.
pub struct Sampler {
    bundle: Bundle,
    model: LoadedModel,
    device: Device,
}

/// Generated images, channels first, values in [-1, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    /// Shape of each image.
    pub shape: ImageShape,
    /// Number of images.
    pub count: usize,
    /// `count * C * H * W` values, image after image, clamped to [-1, 1].
    pub data: Vec<f32>,
}

/// [-1, 1] -> 0..=255 with rounding to nearest; the same arithmetic on every target.
pub fn to_u8(v: f32) -> u8 {
    let scaled = (v.clamp(-1.0, 1.0) + 1.0) * 127.5;
    libm::floorf(scaled + 0.5) as u8
}

impl Images {
    /// Image `k`'s values.
    pub fn image(&self, k: usize) -> &[f32] {
        let n = self.shape.values();
        &self.data[k * n..(k + 1) * n]
    }

    /// All values as bytes (see [`to_u8`]).
    pub fn to_u8(&self) -> Vec<u8> {
        self.data.iter().map(|&v| to_u8(v)).collect()
    }
}

impl Sampler {
    /// Decodes `bytes` and loads the model onto `device`.
    pub fn from_bundle(bytes: &[u8], device: &Device) -> Result<Self, SamplerError> {
        Self::new(Bundle::from_bytes(bytes)?, device)
    }

    /// Loads a decoded bundle onto `device`.
    pub fn new(bundle: Bundle, device: &Device) -> Result<Self, SamplerError> {
        bundle.validate()?;
        let model = match &bundle.model {
            ModelSpec::Network { config, weights } => LoadedModel::Network(
                network_from_bytes(config, weights, device)
                    .map_err(|e| SamplerError::Weights(e.to_string()))?,
            ),
            ModelSpec::Mixture(m) => LoadedModel::Mixture(
                m.to_device(device)
                    .map_err(|e| SamplerError::Bundle(BundleError::Inconsistent(e.to_string())))?,
            ),
        };
        Ok(Sampler {
            bundle,
            model,
            device: device.clone(),
        })
    }

    /// The bundle's metadata and levels.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// The denoiser `D(x, s)` of the bundle.
    pub fn with_denoiser<R>(&self, f: impl FnOnce(&dyn Denoiser) -> R) -> R {
        let dim = self.bundle.image.values();
        match &self.model {
            LoadedModel::Network(net) => f(&Preconditioned {
                net,
                precond: self.bundle.precond,
                dim,
            }),
            LoadedModel::Mixture(m) => f(m),
        }
    }

    /// `x_0 = s_max * eps` for images `first .. first + count` of run `seed`, flattened.
    pub fn initial_noise(&self, seed: u64, first: u64, count: usize) -> Vec<f32> {
        let d = self.bundle.image.values();
        let s_max = self.bundle.schedule.s_max();
        let mut x0 = alloc::vec![0.0f32; count * d];
        for (k, chunk) in x0.chunks_mut(d).enumerate() {
            rng::fill_gaussian(rng::image_seed(seed, first + k as u64), 0, chunk);
            for v in chunk.iter_mut() {
                *v *= s_max;
            }
        }
        x0
    }

    /// One-hot labels for images `first .. first + count`: `label` for all of them, or, for a
    /// conditional model without a requested label, `k mod label_count` for image `k`.
    fn labels(
        &self,
        label: Option<u32>,
        first: u64,
        count: usize,
    ) -> Result<Option<Tensor<2>>, SamplerError> {
        let l = self.bundle.label_count;
        match (label, l) {
            (None, 0) => Ok(None),
            (Some(label), 0) => Err(SamplerError::Label {
                label,
                reason: "this bundle's model is unconditional; omit the label".to_string(),
            }),
            (Some(label), l) if label >= l => Err(SamplerError::Label {
                label,
                reason: alloc::format!("this bundle has labels 0..={}", l - 1),
            }),
            (label, l) => {
                let mut one_hot = alloc::vec![0.0f32; count * l as usize];
                for k in 0..count {
                    let y = label.unwrap_or(((first + k as u64) % l as u64) as u32);
                    one_hot[k * l as usize + y as usize] = 1.0;
                }
                Ok(Some(Tensor::from_data(
                    TensorData::new(one_hot, [count, l as usize]),
                    &self.device,
                )))
            }
        }
    }

    /// Generates `count` images of run `seed` (images `0 .. count`).
    pub fn generate(
        &self,
        seed: u64,
        count: usize,
        label: Option<u32>,
    ) -> Result<Images, SamplerError> {
        self.generate_range(seed, 0, count, label, |_| {})
    }

    /// Generates images `first .. first + count` of run `seed` in one batch, reporting each
    /// Euler step.
    pub fn generate_range(
        &self,
        seed: u64,
        first: u64,
        count: usize,
        label: Option<u32>,
        on_step: impl FnMut(Step<'_>),
    ) -> Result<Images, SamplerError> {
        let d = self.bundle.image.values();
        let labels = self.labels(label, first, count)?;
        let shape = self.bundle.image;
        if count == 0 {
            return Ok(Images {
                shape,
                count,
                data: Vec::new(),
            });
        }
        let x0 = Tensor::<2>::from_data(
            TensorData::new(self.initial_noise(seed, first, count), [count, d]),
            &self.device,
        );
        let sigmas = self.bundle.schedule.to_tensor(&self.device);
        let out = self.with_denoiser(|den| euler(den, x0, sigmas, labels, on_step));
        let data = out
            .clamp(-1.0, 1.0)
            .try_into_vec_as::<f32>()
            .map_err(|e| SamplerError::Readback(alloc::format!("{e:?}")))?;
        Ok(Images { shape, count, data })
    }
}
