//! Bundle -> images: the API that sampler-cli and the firmware call.
//!
//! Image `k` of a run with seed `seed` starts from `x_0 = s_max * eps`, where `eps` is
//! stream [`rng::image_seed`]`(seed, k)` of the portable generator in C*H*W order, so it is
//! the same on every target and whatever the batch size. The bundle's solver (Euler unless
//! it names another) then runs over its levels (docs/method.md §2).

#[cfg(feature = "burn")]
use alloc::string::ToString;
use alloc::vec::Vec;
#[cfg(feature = "burn")]
use burn::tensor::{Device, Tensor, TensorData};

use crate::bundle::ImageShape;
#[cfg(feature = "burn")]
use crate::bundle::{Bundle, BundleError, ModelSpec};
#[cfg(feature = "burn")]
use crate::denoiser::{Denoiser, Step, one_hot};
pub use crate::error::SamplerError;
#[cfg(feature = "burn")]
use crate::gmm::MixtureDenoiser;
#[cfg(feature = "burn")]
use crate::model::{Network, Preconditioned, network_from_vec};
#[cfg(feature = "burn")]
use crate::rng;
#[cfg(feature = "burn")]
use crate::solver::{Stop, solve};

// One per sampler, so its size does not matter; with the GPU backends compiled in, a
// device (which every tensor holds) grows and clippy finds the variants unequal.
#[cfg(feature = "burn")]
#[allow(clippy::large_enum_variant)]
enum LoadedModel {
    Network(Network),
    Mixture(MixtureDenoiser),
}

#[cfg(feature = "burn")]
/// A decoded bundle on a device, ready to generate.
pub struct Sampler {
    bundle: Bundle,
    model: LoadedModel,
    device: Device,
    memory_limit: u64,
    /// [`Bundle::memory_bytes`] as `(fixed, per image)`, taken before loading moved the
    /// weights out of the bundle.
    memory_estimate: (u64, u64),
}

/// The memory a [`Sampler`] may use unless told otherwise (sampler-cli's `--max-memory`
/// default): 4 GiB.
pub const DEFAULT_MEMORY_LIMIT: u64 = 4 << 30;

#[cfg(feature = "burn")]
/// Refuses `batch` images at once when the estimate `(fixed, per image)` exceeds `limit`.
fn check_memory(estimate: (u64, u64), batch: usize, limit: u64) -> Result<(), SamplerError> {
    let need = estimate
        .0
        .saturating_add(estimate.1.saturating_mul(batch as u64));
    if need > limit {
        return Err(SamplerError::Memory { need, batch, limit });
    }
    Ok(())
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

/// 8-bit pixels interleaved per pixel (`channels` values each), rows top to bottom: what an
/// image file stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pixels {
    /// Channels per pixel (1 gray, 3 RGB).
    pub channels: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `height * width * channels` bytes.
    pub data: Vec<u8>,
}

impl Pixels {
    /// Enlarged `factor` times by repeating pixels (nearest neighbour).
    pub fn scaled(&self, factor: u32) -> Pixels {
        let f = factor.max(1) as usize;
        let (c, w, h) = (
            self.channels as usize,
            self.width as usize,
            self.height as usize,
        );
        let mut data = Vec::with_capacity(self.data.len() * f * f);
        for y in 0..h * f {
            let row = &self.data[(y / f) * w * c..(y / f + 1) * w * c];
            for x in 0..w * f {
                data.extend_from_slice(&row[(x / f) * c..(x / f + 1) * c]);
            }
        }
        Pixels {
            channels: self.channels,
            width: (w * f) as u32,
            height: (h * f) as u32,
            data,
        }
    }
}

impl Images {
    /// Image `k` as 8-bit pixels (see [`to_u8`]).
    pub fn pixels(&self, k: usize) -> Pixels {
        let s = self.shape;
        let (c, h, w) = (s.channels as usize, s.height as usize, s.width as usize);
        let src = self.image(k);
        let mut data = alloc::vec![0u8; c * h * w];
        for ch in 0..c {
            for i in 0..h * w {
                data[i * c + ch] = to_u8(src[ch * h * w + i]);
            }
        }
        Pixels {
            channels: s.channels,
            width: s.width,
            height: s.height,
            data,
        }
    }

    /// All images in a grid of `cols` columns (a near-square one for `None`), image `k` at
    /// row `k / cols`, with a 2-pixel black border.
    pub fn grid(&self, cols: Option<usize>) -> Pixels {
        self.grid_spaced(cols, 1, 2)
    }

    /// [`Images::grid`] with each image upscaled `scale` times (nearest neighbour) and `gap`
    /// black pixels between and around the tiles (in output pixels).
    pub fn grid_spaced(&self, cols: Option<usize>, scale: usize, gap: usize) -> Pixels {
        let s = self.shape;
        let f = scale.max(1);
        let (c, h, w) = (
            s.channels as usize,
            s.height as usize * f,
            s.width as usize * f,
        );
        let cols = cols
            .unwrap_or_else(|| libm::ceil(libm::sqrt(self.count as f64)) as usize)
            .max(1);
        let rows = self.count.div_ceil(cols);
        let (gw, gh) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
        let mut data = alloc::vec![0u8; gw * gh * c];
        for k in 0..self.count {
            let img = self.pixels(k).scaled(f as u32);
            let (x0, y0) = (gap + (k % cols) * (w + gap), gap + (k / cols) * (h + gap));
            for y in 0..h {
                let dst = ((y0 + y) * gw + x0) * c;
                data[dst..dst + w * c].copy_from_slice(&img.data[y * w * c..(y + 1) * w * c]);
            }
        }
        Pixels {
            channels: s.channels,
            width: gw as u32,
            height: gh as u32,
            data,
        }
    }

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

#[cfg(feature = "burn")]
impl Sampler {
    /// Decodes `bytes` and loads the model onto `device`.
    pub fn from_bundle(bytes: &[u8], device: &Device) -> Result<Self, SamplerError> {
        Self::new(Bundle::from_bytes(bytes)?, device)
    }

    /// Loads a decoded bundle onto `device`.
    ///
    /// The serialized weights move into the network's tensors: afterwards
    /// [`Sampler::bundle`]'s `ModelSpec::Network::weights` is empty, so that RAM holds the
    /// weights once (on a microcontroller that decides which models fit).
    ///
    /// Refuses, before loading anything, a bundle that needs more than
    /// [`DEFAULT_MEMORY_LIMIT`] for one image; [`Sampler::with_memory_limit`] sets another
    /// limit.
    pub fn new(bundle: Bundle, device: &Device) -> Result<Self, SamplerError> {
        Self::with_memory_limit(bundle, device, DEFAULT_MEMORY_LIMIT)
    }

    /// [`Sampler::new`] with a memory limit in bytes, checked for one image here and for
    /// each batch that [`Sampler::generate_range`] is asked for.
    pub fn with_memory_limit(
        mut bundle: Bundle,
        device: &Device,
        memory_limit: u64,
    ) -> Result<Self, SamplerError> {
        bundle.validate()?;
        let fixed = bundle.memory_bytes(0);
        let memory_estimate = (fixed, bundle.memory_bytes(1).saturating_sub(fixed));
        check_memory(memory_estimate, 1, memory_limit)?;
        let model = match &mut bundle.model {
            ModelSpec::Network { config, weights } => LoadedModel::Network(
                network_from_vec(config, core::mem::take(weights), device)
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
            memory_limit,
            memory_estimate,
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
            (label, l) => Ok(Some(one_hot(
                (0..count)
                    .map(|k| label.unwrap_or(((first + k as u64) % l as u64) as u32) as usize),
                l as usize,
                &self.device,
            ))),
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
        on_step: impl FnMut(Step<'_>) + Send,
    ) -> Result<Images, SamplerError> {
        let d = self.bundle.image.values();
        let labels = self.labels(label, first, count)?;
        check_memory(self.memory_estimate, count, self.memory_limit)?;
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
        let kind = self.bundle.solver;
        let run =
            || self.with_denoiser(|den| solve(kind, den, x0, sigmas, labels, Stop::Zero, on_step));
        #[cfg(feature = "std")]
        let out = crate::cpu::on_cpu_workers(run);
        #[cfg(not(feature = "std"))]
        let out = run();
        let mut data = out
            .try_into_vec_as::<f32>()
            .map_err(|e| SamplerError::Readback(alloc::format!("{e:?}")))?;
        // A NaN pixel clamps to nothing sensible: say so instead of writing a black image.
        let bad = data.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            return Err(SamplerError::NonFinite(bad));
        }
        for v in &mut data {
            *v = v.clamp(-1.0, 1.0);
        }
        Ok(Images { shape, count, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(count: usize, c: u32, h: u32, w: u32) -> Images {
        let n = count * (c * h * w) as usize;
        Images {
            shape: ImageShape {
                channels: c,
                height: h,
                width: w,
            },
            count,
            data: (0..n).map(|i| i as f32 / n as f32 * 2.0 - 1.0).collect(),
        }
    }

    #[test]
    fn pixels_interleave_channels_and_scale_by_repetition() {
        let im = images(1, 3, 1, 2);
        let px = im.pixels(0);
        // Values (CHW): r = v0 v1, g = v2 v3, b = v4 v5 -> pixels r0 g0 b0 r1 g1 b1.
        let u: Vec<u8> = im.data.iter().map(|&v| to_u8(v)).collect();
        assert_eq!(px.data, [u[0], u[2], u[4], u[1], u[3], u[5]]);
        let big = px.scaled(2);
        assert_eq!((big.width, big.height, big.channels), (4, 2, 3));
        assert_eq!(big.data[0..3], big.data[3..6]);
        assert_eq!(&big.data[0..12], &big.data[12..24]);
        assert_eq!(&big.data[6..9], &px.data[3..6]);
    }

    #[test]
    fn grid_places_image_k_at_row_k_div_cols() {
        let im = images(5, 1, 2, 3);
        let g = im.grid(Some(2));
        // 2 columns x 3 rows of 3x2 images with 2-pixel borders.
        assert_eq!((g.width, g.height), (2 * 5 + 2, 3 * 4 + 2));
        let at = |x: usize, y: usize| g.data[y * g.width as usize + x];
        let first_of = |k: usize| to_u8(im.image(k)[0]);
        assert_eq!(at(2, 2), first_of(0));
        assert_eq!(at(2 + 5, 2), first_of(1));
        assert_eq!(at(2, 2 + 4 * 2), first_of(4));
        assert_eq!(at(0, 0), 0);
        assert_eq!(
            im.grid(None).width,
            3 * 5 + 2,
            "near-square: 5 images -> 3 columns"
        );
    }
}
