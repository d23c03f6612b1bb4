//! Preconditioning coefficients against EDM's formulas (training/networks.py), in f64.

use sampler_core::burn::tensor::{Device, Tensor};
use sampler_core::precond::Precond;

fn coeffs(p: Precond, sigma: f64) -> [f64; 4] {
    let s = Tensor::<1>::from_floats([sigma as f32], &Device::flex());
    let c = p.coeffs(s);
    let v = |t: Tensor<1>| t.into_scalar::<f64>();
    [v(c.c_skip), v(c.c_out), v(c.c_in), v(c.c_noise)]
}

fn close(got: [f64; 4], want: [f64; 4], what: &str) {
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1e-3),
            "{what} coefficient {k}: {g} vs {w}"
        );
    }
}

#[test]
fn edm_vp_ve_match_closed_forms() {
    for sigma in [0.002f64, 0.1, 0.5, 1.0, 7.0, 80.0] {
        let s = sigma as f32 as f64;
        let sd = 0.5f64;
        close(
            coeffs(Precond::Edm { sigma_data: 0.5 }, sigma),
            [
                sd * sd / (s * s + sd * sd),
                s * sd / (s * s + sd * sd).sqrt(),
                1.0 / (s * s + sd * sd).sqrt(),
                s.ln() / 4.0,
            ],
            "edm",
        );
        let (beta_d, beta_min, m) = (19.9f64, 0.1f64, 1000.0f64);
        let t =
            ((beta_min * beta_min + 2.0 * beta_d * (1.0 + s * s).ln()).sqrt() - beta_min) / beta_d;
        close(
            coeffs(
                Precond::Vp {
                    beta_d: 19.9,
                    beta_min: 0.1,
                    m: 1000.0,
                },
                sigma,
            ),
            [1.0, -s, 1.0 / (s * s + 1.0).sqrt(), (m - 1.0) * t],
            "vp",
        );
        close(
            coeffs(Precond::Ve, sigma),
            [1.0, s, 1.0, (0.5 * s).ln()],
            "ve",
        );
    }
}

#[test]
fn edm_loss_weight_is_the_inverse_square_of_c_out() {
    // w(s) = (s^2 + sd^2) / (s sd)^2 = 1 / c_out^2: the effective target of F has unit weight.
    let p = Precond::default();
    for sigma in [0.01f32, 0.5, 3.0, 80.0] {
        let t = Tensor::<1>::from_floats([sigma], &Device::flex());
        let w = p.loss_weight(t.clone()).into_scalar::<f64>();
        let c_out = p.coeffs(t).c_out.into_scalar::<f64>();
        assert!(
            (w * c_out * c_out - 1.0).abs() < 1e-5,
            "sigma {sigma}: w c_out^2 = {}",
            w * c_out * c_out
        );
    }
}
