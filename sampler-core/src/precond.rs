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

#[cfg(test)]
mod tests {
    use super::*;

    /// The f64 evaluation (the micro runtime's) against EDM's closed forms, to f64 rounding.
    #[test]
    fn scalar_coefficients_are_edms_closed_forms() {
        let close = |got: Coeffs<f64>, want: [f64; 4], what: &str| {
            let got = [got.c_skip, got.c_out, got.c_in, got.c_noise];
            for (k, (g, w)) in got.into_iter().zip(want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-14 * w.abs().max(1.0),
                    "{what} coefficient {k}: {g} vs {w}"
                );
            }
        };
        for s in [0.002f64, 0.1, 0.5, 1.0, 7.0, 80.0] {
            let sd = 0.5f64;
            close(
                Precond::default().coeffs_of(s),
                [
                    sd * sd / (s * s + sd * sd),
                    s * sd / (s * s + sd * sd).sqrt(),
                    1.0 / (s * s + sd * sd).sqrt(),
                    s.ln() / 4.0,
                ],
                "edm",
            );
            let vp = Precond::Vp {
                beta_d: 19.9,
                beta_min: 0.1,
                m: 1000.0,
            };
            let (beta_d, beta_min) = (19.9f32 as f64, 0.1f32 as f64);
            let t =
                ((beta_min * beta_min + 2.0 * beta_d * (s * s).ln_1p()).sqrt() - beta_min) / beta_d;
            close(
                vp.coeffs_of(s),
                [1.0, -s, 1.0 / (s * s + 1.0).sqrt(), 999.0 * t],
                "vp",
            );
            close(
                Precond::Ve.coeffs_of(s),
                [1.0, s, 1.0, (0.5 * s).ln()],
                "ve",
            );
        }
    }

    /// burn's f32 tensors and the micro runtime's f64-then-f32 give the same coefficients
    /// to f32 rounding: the one formula, two roundings.
    #[cfg(feature = "burn")]
    #[test]
    fn both_engines_evaluate_the_same_formulas() {
        use burn::tensor::{Device, TensorData};
        let levels = [0.002f32, 0.03, 0.4, 1.0, 6.5, 80.0];
        let vp = Precond::Vp {
            beta_d: 19.9,
            beta_min: 0.1,
            m: 1000.0,
        };
        for p in [Precond::default(), vp, Precond::Ve] {
            let t = Tensor::<1>::from_data(TensorData::new(levels.to_vec(), [6]), &Device::flex());
            let c = p.coeffs(t);
            let read = |t: Tensor<1>| t.try_into_vec_as::<f32>().unwrap();
            let burn = [read(c.c_skip), read(c.c_out), read(c.c_in), read(c.c_noise)];
            for (i, &s) in levels.iter().enumerate() {
                let m = p.coeffs_of(s as f64);
                let micro = [m.c_skip, m.c_out, m.c_in, m.c_noise].map(|v| v as f32);
                for k in 0..4 {
                    let (b, m) = (burn[k][i], micro[k]);
                    assert!(
                        (b - m).abs() <= 4.0 * f32::EPSILON * m.abs().max(1.0),
                        "{} s = {s} coefficient {k}: burn {b} vs micro {m}",
                        p.name()
                    );
                }
            }
        }
    }
}
