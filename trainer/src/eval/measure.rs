//! The rulers of `trainer eval` (docs/method.md §6): the truncation RMSE of a sampler
//! against a many-step Heun solution of the same network from the same noise, the Frechet
//! distances of a sample set to the real images (pixels and the project classifier's
//! features), and the classifier's accuracy on the requested labels. [`evaluate_schedule`]
//! is the truncation measurement for one schedule, plus the exact log-likelihood when the
//! model is an analytic mixture; `run.rs` applies the rest to every row.

use anyhow::Result;
use burn::tensor::{Device, Tensor};
use sampler_core::gmm::MixtureDenoiser;
use sampler_core::schedule::Schedule;
use sampler_core::solver::{Denoiser, Stop, euler, heun};

use crate::classifier::TrainedClassifier;
use crate::data::{Dataset, noise};
use crate::fid::{RealStats, reference_features};
use crate::frechet::{FrechetReference, Moments};
use crate::inception::Inception;
use crate::losses::row_mse;

/// Images per forward pass of the feature classifier when eval scores a set (FD-cls,
/// accuracy), written once for every set it scores.
pub const CLASSIFIER_BATCH: usize = 256;

/// What [`evaluate_schedule`] measures.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleEval {
    /// RMSE between Euler's output and the reference solution (per value).
    pub trunc_rmse: f64,
    /// Mean `ln p(x)` of Euler's samples under the mixture, when one is given.
    pub mean_loglik: Option<f64>,
}

/// Evaluates `schedule` on `n` initial noises of stream `seed` against a Heun reference with
/// `reference_steps` EDM levels over the same range.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_schedule(
    den: &dyn Denoiser,
    truth: Option<&MixtureDenoiser>,
    schedule: &Schedule,
    reference_steps: usize,
    n: usize,
    seed: u64,
    labels: Option<Tensor<2>>,
    device: &Device,
) -> Result<ScheduleEval> {
    let d = den.dim();
    let x0 = noise(seed, 0xE7A1, 0, n, d, device).mul_scalar(schedule.s_max() as f64);
    let out = euler(
        den,
        x0.clone(),
        schedule.to_tensor(device),
        labels.clone(),
        Stop::Zero,
        |_| {},
    );
    let reference_levels = Schedule::edm(
        reference_steps,
        schedule.s_min() as f64,
        schedule.s_max() as f64,
    )?;
    let reference = heun(
        den,
        x0,
        reference_levels.to_tensor(device),
        labels,
        Stop::Zero,
        |_| {},
    );
    let trunc_rmse = crate::run::scalar(&row_mse(out.clone(), reference).mean()).sqrt();
    let mean_loglik = truth.map(|m| {
        let zero = Tensor::<1>::zeros([n], device);
        crate::run::scalar(&m.log_density(out, zero).mean())
    });
    Ok(ScheduleEval {
        trunc_rmse,
        mean_loglik,
    })
}

/// The real images of the comparison with what the metrics need from them.
pub struct RealSet {
    /// Pixel-space moments.
    pub pixels: FrechetReference,
    /// Classifier-feature moments, when a classifier is given.
    pub features: Option<FrechetReference>,
    /// Inception statistics (FID, KID), when the feature network is given.
    pub inception: Option<RealStats>,
    /// Number of images.
    pub count: usize,
}

impl RealSet {
    /// Moments of `data` (and of its classifier features).
    pub fn new(
        data: &Dataset,
        classifier: Option<&TrainedClassifier>,
        inception: Option<&Inception>,
        device: &Device,
    ) -> Result<RealSet> {
        let inception = match inception {
            Some(net) => {
                eprintln!(
                    "Inception features of the {} real images (read from {} when computed before)",
                    data.len(),
                    crate::inception::cache_dir().display()
                );
                let bar = indicatif::ProgressBar::hidden();
                let f = reference_features(net, &data.values, data.shape, &bar)?;
                Some(RealStats::new(f)?)
            }
            None => None,
        };
        let pixels = FrechetReference::new(Moments::from_rows(&data.values, data.dim())?);
        let features = match classifier {
            Some(c) => {
                let p = c.predict(&data.values, CLASSIFIER_BATCH, device)?;
                Some(FrechetReference::new(Moments::from_rows(
                    &p.features,
                    c.config.features,
                )?))
            }
            None => None,
        };
        Ok(RealSet {
            pixels,
            features,
            inception,
            count: data.len(),
        })
    }
}

/// RMSE of two sample sets value by value, over the shorter one, summed in f64.
pub(super) fn rmse(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()).max(1);
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    (s / n as f64).sqrt()
}

/// `(FD-pixel, FD-cls, accuracy)` of clamped samples `[n, d]` against the real images (the
/// last two need the classifier; accuracy, a conditional model whose labels it knows: image
/// `k` asks for label `k mod L`).
pub(super) fn frechet_and_accuracy(
    clamped: &[f32],
    d: usize,
    real: Option<&RealSet>,
    classifier: Option<&TrainedClassifier>,
    label_count: u32,
    device: &Device,
) -> Result<(Option<f64>, Option<f64>, Option<f64>)> {
    let Some(r) = real else {
        return Ok((None, None, None));
    };
    let fd_pixel = r.pixels.distance(&Moments::from_rows(clamped, d)?)?;
    let Some(c) = classifier else {
        return Ok((Some(fd_pixel), None, None));
    };
    let p = c.predict(clamped, CLASSIFIER_BATCH, device)?;
    let fd_cls = match &r.features {
        Some(f) => Some(f.distance(&Moments::from_rows(&p.features, c.config.features)?)?),
        None => None,
    };
    let accuracy = (label_count > 0 && c.config.classes == label_count as usize).then(|| {
        let right = p
            .classes
            .iter()
            .enumerate()
            .filter(|(k, y)| **y as usize == k % label_count as usize)
            .count();
        right as f64 / p.classes.len() as f64
    });
    Ok((Some(fd_pixel), fd_cls, accuracy))
}
#[cfg(test)]
mod tests {
    use super::*;

    /// FD-pixel as eval computes it (real moments, then a sample set's), against the
    /// closed form of two Gaussians with diagonal covariances: |m1 - m2|^2 +
    /// sum_i (sqrt(v1_i) - sqrt(v2_i))^2. Real rows: the four points m1 +- (a, 0), m1 +-
    /// (0, b) twice over (covariance n/(n-1) diag(a^2/2, b^2/2)); samples the same with m2, a', b'.
    #[test]
    fn fd_pixel_is_the_closed_form_of_two_gaussians() {
        let cross = |m: [f64; 2], a: f64, b: f64| -> Vec<f32> {
            let pts = [[a, 0.0], [-a, 0.0], [0.0, b], [0.0, -b]];
            (0..2)
                .flat_map(|_| pts)
                .flat_map(|p| [(m[0] + p[0]) as f32, (m[1] + p[1]) as f32])
                .collect()
        };
        // Values exactly representable in f32, so the f64 closed form is exact.
        let (m1, a1, b1) = ([0.25, -0.5], 0.5, 0.25);
        let (m2, a2, b2) = ([-0.125, 0.375], 0.75, 0.125);
        let real = RealSet {
            pixels: FrechetReference::new(Moments::from_rows(&cross(m1, a1, b1), 2).unwrap()),
            features: None,
            inception: None,
            count: 8,
        };
        let (fd, cls, acc) =
            frechet_and_accuracy(&cross(m2, a2, b2), 2, Some(&real), None, 0, &Device::flex())
                .unwrap();
        // Sample covariance of the 8 points: sum of squares / (n - 1) per axis.
        let var = |a: f64| 4.0 * a * a / 7.0;
        let want = (m1[0] - m2[0]).powi(2)
            + (m1[1] - m2[1]).powi(2)
            + (var(a1).sqrt() - var(a2).sqrt()).powi(2)
            + (var(b1).sqrt() - var(b2).sqrt()).powi(2);
        let fd = fd.unwrap();
        assert!((fd - want).abs() <= 1e-9 * want, "{fd} vs {want}");
        assert_eq!((cls, acc), (None, None));
    }
}
