//! Noise-level schedules: the EDM rho = 7 baseline, the softmax-increment
//! parameterization the trainer optimizes (docs/method.md §3, paper Eq. 13) and the
//! lambda weights of the unrolled Euler sampler (method.md §2, paper Eq. 8).
//!
//! The parameterization and the weights are written once, on burn tensors, so the trainer
//! differentiates exactly the formula the sampler uses. [`Schedule`] is the validated,
//! plain-number form that bundles carry; its helpers evaluate the tensor formulas in f64 on
//! the CPU.

use alloc::string::String;
#[cfg(feature = "burn")]
use alloc::vec;
use alloc::vec::Vec;
#[cfg(feature = "burn")]
use burn::tensor::activation::softmax;
#[cfg(feature = "burn")]
use burn::tensor::{DType, Device, Tensor, TensorCreationOptions, TensorData};
use serde::{Deserialize, Serialize};

/// EDM's default largest noise level (Karras et al. 2022).
pub const SIGMA_MAX: f64 = 80.0;
/// EDM's default smallest noise level.
pub const SIGMA_MIN: f64 = 0.002;
/// EDM's rho, the exponent of the default warp.
pub const RHO: f64 = 7.0;

/// The space `u = g(s)` in which the softmax increments are taken (method.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Warp {
    /// `g(s) = s^(1/7)`: `v = 0` is exactly EDM's rho = 7 schedule (the default).
    #[default]
    Rho7,
    /// `g(s) = ln s`: `v = 0` is a geometric schedule.
    Log,
    /// `g(s) = s`, as the paper literally writes Eq. 13: `v = 0` is a uniform schedule.
    Linear,
}

impl Warp {
    /// `g(s)` for one level.
    pub fn forward(self, s: f64) -> f64 {
        match self {
            Warp::Rho7 => libm::pow(s, 1.0 / RHO),
            Warp::Log => libm::log(s),
            Warp::Linear => s,
        }
    }

    #[cfg(feature = "burn")]
    /// `g^-1(u)` on a tensor.
    fn inverse_tensor(self, u: Tensor<1>) -> Tensor<1> {
        match self {
            Warp::Rho7 => u.powf_scalar(RHO),
            Warp::Log => u.exp(),
            Warp::Linear => u,
        }
    }

    /// The name used on command lines and in provenance.
    pub fn name(self) -> &'static str {
        match self {
            Warp::Rho7 => "rho7",
            Warp::Log => "log",
            Warp::Linear => "linear",
        }
    }
}

impl core::str::FromStr for Warp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rho7" => Ok(Warp::Rho7),
            "log" => Ok(Warp::Log),
            "linear" => Ok(Warp::Linear),
            other => Err(alloc::format!(
                "unknown warp '{other}': expected rho7, log or linear"
            )),
        }
    }
}

/// Why a list of noise levels is not a valid schedule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// Fewer than two levels.
    #[error("a schedule needs at least 2 noise levels, got {0}")]
    TooShort(usize),
    /// A level is NaN, infinite, zero or negative.
    #[error("noise level {index} is {value}: every level must be finite and positive")]
    NotPositive {
        /// Position of the level.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// Two consecutive levels do not decrease.
    #[error("noise levels must strictly decrease, but level {index} ({next}) >= level {prev_index} ({prev})", prev_index = index - 1)]
    NotDecreasing {
        /// Position of the offending level.
        index: usize,
        /// The level before it.
        prev: f32,
        /// The offending level.
        next: f32,
    },
    /// Logits of the wrong length for the requested T.
    #[error("a schedule of {t} levels has {expected} free logits, got {got}")]
    LogitCount {
        /// Number of levels.
        t: usize,
        /// T - 2.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// s_min >= s_max or not positive.
    #[error("need 0 < s_min < s_max, got s_min = {s_min}, s_max = {s_max}")]
    BadRange {
        /// Smallest level.
        s_min: f64,
        /// Largest level.
        s_max: f64,
    },
}

#[cfg(feature = "burn")]
/// The softmax-increment parameterization (method.md §3, paper Eq. 13):
///
/// ```text
/// v_bar = concat(v, 0)
/// u_i   = g(s_max) - (g(s_max) - g(s_min)) * sum_{j<i} softmax(v_bar)_j
/// s_i   = g^-1(u_i),   s_0 = s_max and s_{T-1} = s_min exactly
/// ```
///
/// Differentiable in `v`; runs in `v`'s dtype (f64 for exports, f32 in training).
///
/// # Shapes
/// `v`: `[T - 2]` (may be empty only through [`Schedule::from_logits`], which handles T = 2)
/// -> `[T]`.
pub fn sigmas_from_logits(v: Tensor<1>, s_min: f64, s_max: f64, warp: Warp) -> Tensor<1> {
    let device = v.device();
    let dtype = v.dtype();
    let free = v.dims()[0];
    let t = free + 2;
    let (g_max, g_min) = (warp.forward(s_max), warp.forward(s_min));
    let zero = Tensor::<1>::zeros([1], (&device, dtype));
    let v_bar = Tensor::cat(vec![v, zero], 0); // [T-1]
    let p = softmax(v_bar, 0);
    // Interior levels i = 1..T-2 use the partial sums of the first T-2 increments.
    let partial = p.slice(0..t - 2).cumsum(0); // [T-2]
    let u = partial.mul_scalar(-(g_max - g_min)).add_scalar(g_max);
    let interior = warp.inverse_tensor(u);
    let first = Tensor::<1>::full([1], s_max, (&device, dtype));
    let last = Tensor::<1>::full([1], s_min, (&device, dtype));
    Tensor::cat(vec![first, interior, last], 0)
}

#[cfg(feature = "burn")]
/// The weights of the unrolled Euler sampler (method.md §2, paper Eq. 8):
/// `lambda_i = s_min/s_{i+1} - s_min/s_i` for `i = 0 .. T-2`; they sum to
/// `1 - s_min/s_max`. Differentiable in the levels.
///
/// # Shapes
/// `sigmas`: `[T]` -> `[T - 1]`.
pub fn lambda_weights(sigmas: Tensor<1>) -> Tensor<1> {
    let t = sigmas.dims()[0];
    let s_min = sigmas.clone().slice(t - 1..t);
    let inv = sigmas.recip();
    let next = inv.clone().slice(1..t);
    let cur = inv.slice(0..t - 1);
    (next - cur) * s_min
}

/// A validated schedule: `T >= 2` finite, positive, strictly decreasing f32 levels
/// `s_0 = s_max > ... > s_{T-1} = s_min` (the sampler appends `s_T = 0` itself).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Schedule {
    sigmas: Vec<f32>,
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let sigmas = Vec::<f32>::deserialize(d)?;
        Schedule::new(sigmas).map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "burn")]
fn f64_device() -> (Device, DType) {
    (Device::flex(), DType::F64)
}

#[cfg(feature = "burn")]
fn tensor_f64(values: &[f64]) -> Tensor<1> {
    let (device, dtype) = f64_device();
    Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        TensorCreationOptions::new(device).with_dtype(dtype),
    )
}

#[cfg(feature = "burn")]
fn to_f64_vec(t: Tensor<1>) -> Vec<f64> {
    t.try_into_vec_as::<f64>().unwrap_or_default()
}

impl Schedule {
    /// Validates `sigmas`.
    pub fn new(sigmas: Vec<f32>) -> Result<Self, ScheduleError> {
        if sigmas.len() < 2 {
            return Err(ScheduleError::TooShort(sigmas.len()));
        }
        for (index, &value) in sigmas.iter().enumerate() {
            if !value.is_finite() || value <= 0.0 {
                return Err(ScheduleError::NotPositive { index, value });
            }
            if index > 0 && value >= sigmas[index - 1] {
                return Err(ScheduleError::NotDecreasing {
                    index,
                    prev: sigmas[index - 1],
                    next: value,
                });
            }
        }
        Ok(Schedule { sigmas })
    }

    #[cfg(feature = "burn")]
    /// The schedule of logits `v` (length `T - 2`) in `warp` space, evaluated in f64.
    pub fn from_logits(
        v: &[f64],
        s_min: f64,
        s_max: f64,
        warp: Warp,
    ) -> Result<Self, ScheduleError> {
        if !(s_min > 0.0 && s_min < s_max && s_max.is_finite()) {
            return Err(ScheduleError::BadRange { s_min, s_max });
        }
        let sigmas: Vec<f64> = if v.is_empty() {
            vec![s_max, s_min]
        } else {
            to_f64_vec(sigmas_from_logits(tensor_f64(v), s_min, s_max, warp))
        };
        Schedule::new(sigmas.iter().map(|&s| s as f32).collect())
    }

    #[cfg(feature = "burn")]
    /// EDM's rho = 7 schedule with `t` levels: the parameterization at `v = 0`.
    pub fn edm(t: usize, s_min: f64, s_max: f64) -> Result<Self, ScheduleError> {
        if t < 2 {
            return Err(ScheduleError::TooShort(t));
        }
        Schedule::from_logits(&vec![0.0; t - 2], s_min, s_max, Warp::Rho7)
    }

    /// The logits `v` (length `T - 2`) that reproduce this schedule in `warp` space: the
    /// inverse of [`Schedule::from_logits`], `v_j = ln(d_j / d_{T-2})` with `d_j` the warped
    /// increments.
    pub fn to_logits(&self, warp: Warp) -> Vec<f64> {
        let u: Vec<f64> = self
            .sigmas
            .iter()
            .map(|&s| warp.forward(s as f64))
            .collect();
        let d: Vec<f64> = u.windows(2).map(|w| w[0] - w[1]).collect();
        let last = d[d.len() - 1];
        d[..d.len() - 1]
            .iter()
            .map(|&dj| libm::log(dj / last))
            .collect()
    }

    /// The levels `s_0 .. s_{T-1}`.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// T, the number of levels (and of denoiser evaluations of Euler).
    pub fn len(&self) -> usize {
        self.sigmas.len()
    }

    /// Always false: a schedule has at least two levels.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// `s_0`.
    pub fn s_max(&self) -> f32 {
        self.sigmas[0]
    }

    /// `s_{T-1}`.
    pub fn s_min(&self) -> f32 {
        self.sigmas[self.sigmas.len() - 1]
    }

    #[cfg(feature = "burn")]
    /// The lambda weights of [`lambda_weights`], in f64.
    pub fn lambda_weights(&self) -> Vec<f64> {
        let s: Vec<f64> = self.sigmas.iter().map(|&s| s as f64).collect();
        to_f64_vec(lambda_weights(tensor_f64(&s)))
    }

    #[cfg(feature = "burn")]
    /// The levels as an f32 tensor on `device`.
    pub fn to_tensor(&self, device: &Device) -> Tensor<1> {
        Tensor::from_data(
            TensorData::new(self.sigmas.clone(), [self.sigmas.len()]),
            device,
        )
    }
}
