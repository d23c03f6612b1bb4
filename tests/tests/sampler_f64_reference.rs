//! Bundle bytes -> Sampler -> images, against an independent float64 implementation of the
//! Gaussian-mixture denoiser and the Euler loop (docs/method.md §2), from the same noise.

use sampler_core::bundle::{Bundle, ImageShape, ModelSpec, Provenance, SolverKind};
use sampler_core::burn::tensor::Device;
use sampler_core::gmm::Mixture;
use sampler_core::precond::Precond;
use sampler_core::schedule::{Schedule, Warp};
use sampler_core::{Sampler, rng};

fn denoise_f64(m: &Mixture, x: &[f64], s: f64) -> Vec<f64> {
    let d = m.dim;
    let k = m.components();
    let total: f64 = m.weights.iter().map(|&w| w as f64).sum();
    let logs: Vec<f64> = (0..k)
        .map(|c| {
            let v = (m.stds[c] as f64).powi(2) + s * s;
            let dist: f64 = (0..d)
                .map(|j| (x[j] - m.means[c * d + j] as f64).powi(2))
                .sum();
            (m.weights[c] as f64 / total).ln() - 0.5 * d as f64 * v.ln() - dist / (2.0 * v)
        })
        .collect();
    let mx = logs.iter().cloned().fold(f64::MIN, f64::max);
    let z: f64 = logs.iter().map(|l| (l - mx).exp()).sum();
    (0..d)
        .map(|j| {
            (0..k)
                .map(|c| {
                    let r = (logs[c] - mx).exp() / z;
                    let c2 = (m.stds[c] as f64).powi(2);
                    let mu = m.means[c * d + j] as f64;
                    r * (mu + c2 / (c2 + s * s) * (x[j] - mu))
                })
                .sum()
        })
        .collect()
}

#[test]
fn sampler_matches_float64_euler_on_a_mixture() {
    let (c, h, w) = (1u32, 3u32, 3u32);
    let d = 9;
    let mixture = Mixture {
        dim: d,
        means: rng::gaussian_vec(100, 4 * d)
            .iter()
            .map(|v| (v * 0.5).clamp(-1.0, 1.0))
            .collect(),
        stds: vec![0.1, 0.2, 0.15, 0.3],
        weights: vec![0.4, 0.3, 0.2, 0.1],
    };
    let schedule =
        Schedule::from_logits(&[0.2, -0.4, 0.1, 0.5, -0.3], 0.002, 80.0, Warp::Rho7).unwrap();
    let bundle = Bundle {
        name: "ref".into(),
        description: String::new(),
        image: ImageShape {
            channels: c,
            height: h,
            width: w,
        },
        label_count: 0,
        precond: Precond::default(),
        schedule: schedule.clone(),
        solver: SolverKind::Euler,
        model: ModelSpec::Mixture(mixture.clone()),
        provenance: Provenance::default(),
    };
    let sampler = Sampler::from_bundle(&bundle.to_bytes().unwrap(), &Device::flex()).unwrap();
    let (seed, count) = (2024u64, 12usize);
    let images = sampler.generate(seed, count, None).unwrap();
    let sig: Vec<f64> = schedule.sigmas().iter().map(|&s| s as f64).collect();
    let mut worst = 0.0f64;
    for k in 0..count {
        let eps = rng::gaussian_vec(rng::image_seed(seed, k as u64), d);
        let mut x: Vec<f64> = eps.iter().map(|&e| e as f64 * sig[0]).collect();
        for i in 0..sig.len() {
            let den = denoise_f64(&mixture, &x, sig[i]);
            let next = if i + 1 < sig.len() { sig[i + 1] } else { 0.0 };
            let r = next / sig[i];
            x = x
                .iter()
                .zip(&den)
                .map(|(xi, di)| r * xi + (1.0 - r) * di)
                .collect();
        }
        for (got, want) in images.image(k).iter().zip(&x) {
            worst = worst.max((*got as f64 - want.clamp(-1.0, 1.0)).abs());
        }
    }
    assert!(worst < 2e-4, "max |sampler - f64 reference| = {worst:e}");
}
