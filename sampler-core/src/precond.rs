//! Preconditioning of the raw network F into the denoiser
//! `D(x, s) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s))`: docs/method.md §1, with
//! NVlabs/edm's `EDMPrecond`, `VPPrecond` and `VEPrecond` formulas (training/networks.py).
//!
//! The coefficients are written once, in [`Precond::coeffs_of`], over the arithmetic of a
//! [`Level`]: burn's engine (the trainer and `Sampler`) evaluates them on a batch of levels
//! as f32 tensors, differentiable in the levels ([`Precond::coeffs`]); the micro runtime
//! on one level in f64, rounded once to f32. Nothing else writes them.

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

/// A noise level `s` with the arithmetic the coefficient formulas use: one level as an
/// `f64` (the micro runtime) or a batch as a burn tensor. Each engine keeps its own
/// operations (`c / x` is one division in f64 and burn's `x.recip() * c` on tensors), so
/// the shared formulas give each engine the bits it always gave.
pub trait Level: Clone {
    /// `1` at every level.
    fn one(&self) -> Self;
    /// `-x`.
    fn negated(self) -> Self;
    /// `x^2`.
    fn square(self) -> Self;
    /// `sqrt(x)`.
    fn root(self) -> Self;
    /// `1 / x`.
    fn inverse(self) -> Self;
    /// `ln(x)`.
    fn ln(self) -> Self;
    /// `ln(1 + x)`, accurate for small `x`.
    fn ln_1p(self) -> Self;
    /// `x + c`.
    fn plus(self, c: f64) -> Self;
    /// `x - c`.
    fn minus(self, c: f64) -> Self;
    /// `x c`.
    fn times(self, c: f64) -> Self;
    /// `x / c`.
    fn divided(self, c: f64) -> Self;
    /// `c / x`.
    fn dividing(self, c: f64) -> Self;
    /// `x / y`.
    fn over(self, y: Self) -> Self;
}

impl Level for f64 {
    fn one(&self) -> Self {
        1.0
    }
    fn negated(self) -> Self {
        -self
    }
    fn square(self) -> Self {
        self * self
    }
    fn root(self) -> Self {
        libm::sqrt(self)
    }
    fn inverse(self) -> Self {
        1.0 / self
    }
    fn ln(self) -> Self {
        libm::log(self)
    }
    fn ln_1p(self) -> Self {
        libm::log1p(self)
    }
    fn plus(self, c: f64) -> Self {
        self + c
    }
    fn minus(self, c: f64) -> Self {
        self - c
    }
    fn times(self, c: f64) -> Self {
        self * c
    }
    fn divided(self, c: f64) -> Self {
        self / c
    }
    fn dividing(self, c: f64) -> Self {
        c / self
    }
    fn over(self, y: Self) -> Self {
        self / y
    }
}

#[cfg(feature = "burn")]
/// A batch of levels `[B]`; scalars are rounded to the tensor's dtype by burn.
impl Level for Tensor<1> {
    fn one(&self) -> Self {
        self.ones_like()
    }
    fn negated(self) -> Self {
        self.neg()
    }
    fn square(self) -> Self {
        self.powi_scalar(2)
    }
    fn root(self) -> Self {
        self.sqrt()
    }
    fn inverse(self) -> Self {
        self.recip()
    }
    fn ln(self) -> Self {
        self.log()
    }
    fn ln_1p(self) -> Self {
        self.log1p()
    }
    fn plus(self, c: f64) -> Self {
        self.add_scalar(c)
    }
    fn minus(self, c: f64) -> Self {
        self.sub_scalar(c)
    }
    fn times(self, c: f64) -> Self {
        self.mul_scalar(c)
    }
    fn divided(self, c: f64) -> Self {
        self.div_scalar(c)
    }
    fn dividing(self, c: f64) -> Self {
        self.recip().mul_scalar(c)
    }
    fn over(self, y: Self) -> Self {
        self / y
    }
}

/// The four coefficients at a level (or a batch of levels, each `[B]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coeffs<L> {
    /// Weight of the skip connection.
    pub c_skip: L,
    /// Scale of the network output.
    pub c_out: L,
    /// Scale of the network input.
    pub c_in: L,
    /// The network's noise conditioning input.
    pub c_noise: L,
}

#[cfg(feature = "burn")]
/// The coefficients at a batch of noise levels, each `[B]`.
pub type PrecondCoeffs = Coeffs<Tensor<1>>;

impl Precond {
    /// The coefficients at the noise level(s) `sigma`: the one home of docs/method.md §1's
    /// formulas.
    pub fn coeffs_of<L: Level>(&self, sigma: L) -> Coeffs<L> {
        // The order of the operations is burn's graph as it always was (its gradients in
        // the levels depend on it); see [`Level`] for the rounding.
        let s2 = sigma.clone().square();
        match *self {
            Precond::Edm { sigma_data: sd } => {
                let sd = sd as f64;
                let s2_sd2 = s2.plus(sd * sd); // s^2 + sd^2
                Coeffs {
                    c_skip: s2_sd2.clone().dividing(sd * sd),
                    c_out: sigma.clone().times(sd).over(s2_sd2.clone().root()),
                    c_in: s2_sd2.root().inverse(),
                    c_noise: sigma.ln().divided(4.0),
                }
            }
            Precond::Vp {
                beta_d,
                beta_min,
                m,
            } => {
                let (beta_d, beta_min) = (beta_d as f64, beta_min as f64);
                // sigma_inv(s) = (sqrt(beta_min^2 + 2 beta_d ln(1 + s^2)) - beta_min) / beta_d
                // ln_1p: ln(1 + s^2) in f32 loses most digits for s near s_min.
                let t = s2
                    .clone()
                    .ln_1p()
                    .times(2.0 * beta_d)
                    .plus(beta_min * beta_min)
                    .root()
                    .minus(beta_min)
                    .divided(beta_d);
                Coeffs {
                    c_skip: sigma.one(),
                    c_out: sigma.negated(),
                    c_in: s2.plus(1.0).root().inverse(),
                    c_noise: t.times(m as f64 - 1.0),
                }
            }
            Precond::Ve => Coeffs {
                c_skip: sigma.one(),
                c_out: sigma.clone(),
                c_in: sigma.one(),
                c_noise: sigma.times(0.5).ln(),
            },
        }
    }

    #[cfg(feature = "burn")]
    /// The coefficients at noise levels `sigma` ([`Precond::coeffs_of`] on tensors).
    ///
    /// # Shapes
    /// `sigma`: `[B]` -> four `[B]` tensors.
    pub fn coeffs(&self, sigma: Tensor<1>) -> PrecondCoeffs {
        self.coeffs_of(sigma)
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
