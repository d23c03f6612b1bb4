//! Preconditioning of the raw network F into the denoiser
//! `D(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s))`: docs/method.md §1, with
//! NVlabs/edm's `EDMPrecond`, `VPPrecond` and `VEPrecond` formulas (training/networks.py).
//! The trainer and the sampler both call [`Precond::coeffs`]; nothing else writes them.

#[cfg(feature = "burn")]
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// EDM's default standard deviation of the data.
pub const SIGMA_DATA: f32 = 0.5;

/// How the raw network is wrapped into a denoiser.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Precond {
    /// EDM (Karras et al. 2022, Table 1), the default for networks trained here.
    Edm {
        /// Expected standard deviation of the training data.
        sigma_data: f32,
    },
    /// Variance preserving (Song et al. 2021), for imported VP checkpoints.
    Vp {
        /// Extent of the noise level schedule.
        beta_d: f32,
        /// Initial slope of the noise level schedule.
        beta_min: f32,
        /// Original number of timesteps in the DDPM formulation.
        m: f32,
    },
    /// Variance exploding (Song et al. 2021), for imported VE checkpoints.
    Ve,
}

impl Default for Precond {
    fn default() -> Self {
        Precond::Edm {
            sigma_data: SIGMA_DATA,
        }
    }
}

#[cfg(feature = "burn")]
/// The four coefficients at a batch of noise levels, each `[B]`.
#[derive(Clone, Debug)]
pub struct PrecondCoeffs {
    /// Weight of the skip connection.
    pub c_skip: Tensor<1>,
    /// Scale of the network output.
    pub c_out: Tensor<1>,
    /// Scale of the network input.
    pub c_in: Tensor<1>,
    /// The network's noise conditioning input.
    pub c_noise: Tensor<1>,
}

impl Precond {
    #[cfg(feature = "burn")]
    /// The coefficients at noise levels `sigma`.
    ///
    /// # Shapes
    /// `sigma`: `[B]` -> four `[B]` tensors.
    pub fn coeffs(&self, sigma: Tensor<1>) -> PrecondCoeffs {
        let s2 = sigma.clone().powi_scalar(2);
        match *self {
            Precond::Edm { sigma_data: sd } => {
                let sd = sd as f64;
                let s2_sd2 = s2.add_scalar(sd * sd); // s^2 + sd^2
                PrecondCoeffs {
                    c_skip: s2_sd2.clone().recip().mul_scalar(sd * sd),
                    c_out: sigma.clone().mul_scalar(sd) / s2_sd2.clone().sqrt(),
                    c_in: s2_sd2.sqrt().recip(),
                    c_noise: sigma.log().div_scalar(4.0),
                }
            }
            Precond::Vp {
                beta_d,
                beta_min,
                m,
            } => {
                let (beta_d, beta_min) = (beta_d as f64, beta_min as f64);
                // sigma_inv(s) = (sqrt(beta_min^2 + 2 beta_d ln(1 + s^2)) - beta_min) / beta_d
                // log1p: ln(1 + s^2) in f32 loses most digits for s near s_min.
                let t = s2
                    .clone()
                    .log1p()
                    .mul_scalar(2.0 * beta_d)
                    .add_scalar(beta_min * beta_min)
                    .sqrt()
                    .sub_scalar(beta_min)
                    .div_scalar(beta_d);
                PrecondCoeffs {
                    c_skip: sigma.ones_like(),
                    c_out: sigma.neg(),
                    c_in: s2.add_scalar(1.0).sqrt().recip(),
                    c_noise: t.mul_scalar(m as f64 - 1.0),
                }
            }
            Precond::Ve => PrecondCoeffs {
                c_skip: sigma.ones_like(),
                c_out: sigma.clone(),
                c_in: sigma.ones_like(),
                c_noise: sigma.mul_scalar(0.5).log(),
            },
        }
    }

    #[cfg(feature = "burn")]
    /// EDM's training weight `w(s) = (s^2 + sd^2) / (s sd)^2` (method.md §1), which makes
    /// the effective target of F unit-variance at every noise level.
    ///
    /// # Shapes
    /// `sigma`: `[B]` -> `[B]`.
    pub fn loss_weight(&self, sigma: Tensor<1>) -> Tensor<1> {
        let sd = match *self {
            Precond::Edm { sigma_data } => sigma_data as f64,
            // EDM trains VP/VE with their own weights; for fine-tuning here they are
            // weighted like EDM with the conventional sigma_data.
            _ => SIGMA_DATA as f64,
        };
        let s2 = sigma.powi_scalar(2);
        s2.clone().add_scalar(sd * sd) / s2.mul_scalar(sd * sd)
    }

    /// Short name for metadata and `--info`.
    pub fn name(&self) -> &'static str {
        match self {
            Precond::Edm { .. } => "edm",
            Precond::Vp { .. } => "vp",
            Precond::Ve => "ve",
        }
    }
}
