//! The exact denoiser of an isotropic Gaussian mixture `p(x) = sum_k pi_k N(x; mu_k, c_k^2 I)`:
//!
//! ```text
//! D(x, s) = sum_k r_k(x, s) (mu_k + c_k^2 / (c_k^2 + s^2) (x - mu_k))
//! r_k    ∝ pi_k N(x; mu_k, (c_k^2 + s^2) I)          (a softmax of log-densities)
//! ```
//!
//! A mixture whose means are a set of training images with tiny `c_k` is the optimal
//! denoiser of that data set, so this is a real, exact model: the reference against which
//! the solvers and the schedule optimization are checked without any network error
//! (docs/method.md §6). Written on burn tensors, hence differentiable in `x` and `s`.

use alloc::vec::Vec;
#[cfg(feature = "burn")]
use burn::tensor::activation::softmax;
#[cfg(feature = "burn")]
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

#[cfg(feature = "burn")]
use crate::denoiser::Denoiser;

/// Why mixture parameters are unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MixtureError {
    /// No component.
    #[error("a mixture needs at least one component")]
    Empty,
    /// Array lengths disagree.
    #[error(
        "mixture of {k} components in {dim} dimensions needs {k}x{dim} means, {k} stds and {k} weights; got {means}, {stds}, {weights}"
    )]
    Shape {
        /// Components (from the weights).
        k: usize,
        /// Dimension.
        dim: usize,
        /// Length of `means`.
        means: usize,
        /// Length of `stds`.
        stds: usize,
        /// Length of `weights`.
        weights: usize,
    },
    /// A std or weight that is not finite and positive, or a non-finite mean.
    #[error("mixture component {0} has a non-finite mean or a std/weight that is not positive")]
    BadValue(usize),
}

/// Parameters of an isotropic Gaussian mixture in `dim` dimensions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Mixture {
    /// Dimension of each point.
    pub dim: usize,
    /// Means, row-major `[K, dim]`.
    pub means: Vec<f32>,
    /// Standard deviation `c_k` of each component, `[K]`.
    pub stds: Vec<f32>,
    /// Mixture weights `pi_k`, `[K]` (normalized on use).
    pub weights: Vec<f32>,
}

impl Mixture {
    /// A random mixture of `k` components in `d` dimensions, for tests and benchmarks: means
    /// uniform in `[-1, 1]^d`, stds in `[0.05, 0.3]`, weights in `[0.5, 1.5]` (normalized on
    /// use), all drawn from the portable generator (`crate::rng`) under `seed`.
    pub fn random(k: usize, d: usize, seed: u64) -> Mixture {
        let u = |i: u64| (crate::rng::random_u64(seed, i) >> 11) as f64 / (1u64 << 53) as f64;
        Mixture {
            dim: d,
            means: (0..k * d)
                .map(|i| (2.0 * u(i as u64) - 1.0) as f32)
                .collect(),
            stds: (0..k)
                .map(|i| (0.05 + 0.25 * u(1_000_000 + i as u64)) as f32)
                .collect(),
            weights: (0..k)
                .map(|i| (0.5 + u(2_000_000 + i as u64)) as f32)
                .collect(),
        }
    }
}

impl Mixture {
    /// Checks shapes and values.
    pub fn validate(&self) -> Result<(), MixtureError> {
        let k = self.weights.len();
        if k == 0 {
            return Err(MixtureError::Empty);
        }
        if self.stds.len() != k
            || Some(self.means.len()) != k.checked_mul(self.dim)
            || self.dim == 0
        {
            return Err(MixtureError::Shape {
                k,
                dim: self.dim,
                means: self.means.len(),
                stds: self.stds.len(),
                weights: k,
            });
        }
        for i in 0..k {
            let ok = self.stds[i].is_finite()
                && self.stds[i] > 0.0
                && self.weights[i].is_finite()
                && self.weights[i] > 0.0
                && self.means[i * self.dim..(i + 1) * self.dim]
                    .iter()
                    .all(|m| m.is_finite());
            if !ok {
                return Err(MixtureError::BadValue(i));
            }
        }
        Ok(())
    }

    /// Number of components K.
    pub fn components(&self) -> usize {
        self.weights.len()
    }

    #[cfg(feature = "burn")]
    /// Puts the parameters on `device` as tensors for evaluation.
    pub fn to_device(&self, device: &Device) -> Result<MixtureDenoiser, MixtureError> {
        self.validate()?;
        let k = self.components();
        let total: f32 = self.weights.iter().sum();
        let log_pi: Vec<f32> = self.weights.iter().map(|w| libm::logf(w / total)).collect();
        let var: Vec<f32> = self.stds.iter().map(|c| c * c).collect();
        let means =
            Tensor::<2>::from_data(TensorData::new(self.means.clone(), [k, self.dim]), device);
        let mean_sq = means.clone().powi_scalar(2).sum_dim(1).reshape([1, k]);
        Ok(MixtureDenoiser {
            means,
            mean_sq,
            var: Tensor::from_data(TensorData::new(var, [1, k]), device),
            log_pi: Tensor::from_data(TensorData::new(log_pi, [1, k]), device),
            dim: self.dim,
        })
    }
}

#[cfg(feature = "burn")]
/// A [`Mixture`] on a device, ready to denoise.
#[derive(Clone, Debug)]
pub struct MixtureDenoiser {
    means: Tensor<2>,   // [K, D]
    mean_sq: Tensor<2>, // [1, K]  |mu_k|^2
    var: Tensor<2>,     // [1, K]  c_k^2
    log_pi: Tensor<2>,  // [1, K]
    dim: usize,
}

#[cfg(feature = "burn")]
impl MixtureDenoiser {
    /// The responsibilities `r_k(x, s)`.
    ///
    /// # Shapes
    /// `x`: `[B, D]`, `sigma`: `[B]` -> `[B, K]`.
    pub fn responsibilities(&self, x: Tensor<2>, sigma: Tensor<1>) -> Tensor<2> {
        self.log_densities(x, sigma).1
    }

    /// Returns (`ln sum_k pi_k N(x; mu_k, (c_k^2+s^2) I)` as `[B]`, responsibilities `[B, K]`).
    fn log_densities(&self, x: Tensor<2>, sigma: Tensor<1>) -> (Tensor<1>, Tensor<2>) {
        let b = x.dims()[0];
        let d = self.dim as f64;
        let s2 = sigma.powi_scalar(2).reshape([b, 1]);
        let total_var = self.var.clone() + s2; // [B, K]
        // ||x - mu_k||^2 = |x|^2 - 2 x.mu_k + |mu_k|^2; the matmul form keeps memory at B*K.
        let x_sq = x.clone().powi_scalar(2).sum_dim(1); // [B, 1]
        let cross = x.matmul(self.means.clone().transpose()); // [B, K]
        let dist = (x_sq - cross.mul_scalar(2.0) + self.mean_sq.clone()).clamp_min(0.0);
        let log_n = self.log_pi.clone()
            - total_var.clone().log().mul_scalar(0.5 * d)
            - dist / total_var.mul_scalar(2.0)
            - 0.5 * d * libm::log(2.0 * core::f64::consts::PI);
        let max = log_n.clone().max_dim(1).detach(); // [B, 1]
        let lse = (log_n.clone() - max.clone()).exp().sum_dim(1).log() + max;
        let r = softmax(log_n, 1);
        (lse.reshape([b]), r)
    }

    /// `ln p_s(x)`, the log-density of the mixture convolved with `N(0, s^2 I)`; at `s = 0`
    /// (pass a tiny positive level) the data log-likelihood used to score samples.
    ///
    /// # Shapes
    /// `x`: `[B, D]`, `sigma`: `[B]` -> `[B]`.
    pub fn log_density(&self, x: Tensor<2>, sigma: Tensor<1>) -> Tensor<1> {
        self.log_densities(x, sigma).0
    }
}

#[cfg(feature = "burn")]
impl Denoiser for MixtureDenoiser {
    fn dim(&self) -> usize {
        self.dim
    }

    fn denoise(&self, x: Tensor<2>, sigma: Tensor<1>, _labels: Option<Tensor<2>>) -> Tensor<2> {
        let b = x.dims()[0];
        let r = self.responsibilities(x.clone(), sigma.clone()); // [B, K]
        let s2 = sigma.powi_scalar(2).reshape([b, 1]);
        let a = self.var.clone() / (self.var.clone() + s2); // [B, K]  c_k^2 / (c_k^2 + s^2)
        // sum_k r_k (1 - a_k) mu_k + (sum_k r_k a_k) x
        let shrink = (r.clone() - r.clone() * a.clone()).matmul(self.means.clone()); // [B, D]
        let keep = (r * a).sum_dim(1); // [B, 1]
        shrink + x * keep
    }
}
