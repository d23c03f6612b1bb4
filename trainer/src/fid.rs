//! FID and KID of generated images against real ones in the features of Inception-v3
//! ([`crate::inception`]), the field's rulers, computed as pytorch-fid does: images are
//! quantized to 8 bits first (what a PNG on disk holds), FID is the Frechet distance of the
//! two feature sets' Gaussians ([`crate::frechet`]), and KID is the unbiased MMD^2 with the
//! cubic polynomial kernel `k(x, y) = (x.y / 2048 + 1)^3` over the full sets (clean-fid and
//! torch-fidelity average it over random subsets instead, which only adds noise).

use indicatif::ProgressBar;
use sampler_core::bundle::ImageShape;

use crate::data::Dataset;
use fewstep_metrics::kid;

use crate::frechet::{FrechetError, FrechetReference, Moments};
use crate::inception::{FEATURES, Inception, InceptionError};

/// Why a score could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum FidError {
    #[error(transparent)]
    Inception(#[from] InceptionError),
    #[error(transparent)]
    Frechet(#[from] FrechetError),
}

/// Inception features of images in [-1, 1] (`n` images of `shape`), each quantized to 8
/// bits and scaled to [0, 1] as pytorch-fid reads a PNG.
pub fn image_features(
    inception: &Inception,
    values: &[f32],
    shape: ImageShape,
    bar: &ProgressBar,
) -> Result<Vec<f32>, FidError> {
    let pixels: Vec<f32> = values
        .iter()
        .map(|&v| sampler_core::sampler::to_u8(v) as f32 / 255.0)
        .collect();
    let s = shape;
    Ok(inception.features(
        &pixels,
        (s.channels as usize, s.height as usize, s.width as usize),
        bar,
    )?)
}

/// [`image_features`] of every image of `d`.
pub fn dataset_features(
    inception: &Inception,
    d: &Dataset,
    bar: &ProgressBar,
) -> Result<Vec<f32>, FidError> {
    image_features(inception, &d.values, d.shape, bar)
}

/// The fraction of values that quantize to 255: stroke pixels clipped at white, which
/// Inception reacts to on digits more than to their shape (issue 20).
pub fn saturated_fraction(values: &[f32]) -> f64 {
    let at_max = values
        .iter()
        .filter(|&&v| sampler_core::sampler::to_u8(v) == 255)
        .count();
    at_max as f64 / values.len().max(1) as f64
}

/// The real side of many comparisons: its Frechet moments (with `S^{1/2}`), its features and
/// the mean of its kernel over distinct pairs, each computed once.
pub struct RealStats {
    frechet: FrechetReference,
    features: Vec<f32>,
    kernel_mean: f64,
}

/// FID and KID of one fake set.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Scores {
    pub fid: f64,
    pub kid: f64,
    pub n_real: usize,
    pub n_fake: usize,
}

impl RealStats {
    /// Statistics of the real features (`n * 2048` values, `n >= 2`).
    pub fn new(features: Vec<f32>) -> Result<RealStats, FidError> {
        // Validates the rows (whole vectors, at least two) before the kernel sums.
        let moments = Moments::from_rows(&features, FEATURES)?;
        let kernel_mean = kid::self_mean(&features, FEATURES);
        Ok(RealStats {
            frechet: FrechetReference::new(moments),
            features,
            kernel_mean,
        })
    }

    /// Number of real images.
    pub fn count(&self) -> usize {
        self.features.len() / FEATURES
    }

    /// FID and KID of the fake features (`m * 2048` values, `m >= 2`).
    pub fn scores(&self, fake: &[f32]) -> Result<Scores, FidError> {
        let fake_moments = Moments::from_rows(fake, FEATURES)?;
        let (n, m) = (self.count(), fake_moments.count);
        let fid = self.frechet.distance(&fake_moments)?;
        let fake_mean = kid::self_mean(fake, FEATURES);
        let cross = kid::cross_mean(&self.features, fake, FEATURES);
        Ok(Scores {
            fid,
            kid: self.kernel_mean + fake_mean - 2.0 * cross,
            n_real: n,
            n_fake: m,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unbiased MMD^2 by its definition, pair by pair.
    fn kid_by_pairs(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
        let d = a[0].len() as f64;
        let k = |x: &[f64], y: &[f64]| {
            (x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>() / d + 1.0).powi(3)
        };
        let mean_distinct = |s: &[Vec<f64>]| {
            let mut t = 0.0;
            for (i, x) in s.iter().enumerate() {
                for (j, y) in s.iter().enumerate() {
                    if i != j {
                        t += k(x, y);
                    }
                }
            }
            t / (s.len() * (s.len() - 1)) as f64
        };
        let mut cross = 0.0;
        for x in a {
            for y in b {
                cross += k(x, y);
            }
        }
        mean_distinct(a) + mean_distinct(b) - 2.0 * cross / (a.len() * b.len()) as f64
    }

    fn rows(n: usize, seed: u32, shift: f32) -> Vec<f32> {
        (0..n * FEATURES)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8;
                (h as f32 / (1u32 << 24) as f32) + shift
            })
            .collect()
    }

    #[test]
    fn kid_is_the_pairwise_definition() {
        let (a, b) = (rows(7, 1, 0.0), rows(5, 2, 0.3));
        let as_f64 = |r: &[f32]| -> Vec<Vec<f64>> {
            r.chunks(FEATURES)
                .map(|c| c.iter().map(|&v| v as f64).collect())
                .collect()
        };
        let want = kid_by_pairs(&as_f64(&a), &as_f64(&b));
        let got = RealStats::new(a.clone()).unwrap().scores(&b).unwrap();
        assert!(
            (got.kid - want).abs() < 1e-9 * want.abs().max(1.0),
            "{} vs {want}",
            got.kid
        );
        assert!(want > 0.0, "shifted sets should be apart");
        assert_eq!((got.n_real, got.n_fake), (7, 5));
        // A set against itself: FID 0.
        let same = RealStats::new(a.clone()).unwrap().scores(&a).unwrap();
        assert!(same.fid.abs() < 1e-6, "{}", same.fid);
    }

    #[test]
    fn saturation_counts_values_that_round_to_255() {
        // to_u8 rounds (v + 1) * 127.5: 255 from v >= 1 - 0.5 / 127.5 = 0.996078...
        let v = [1.0, 3.0, 0.9961, 0.9960, 0.0, -1.0, -5.0, 0.5];
        assert_eq!(saturated_fraction(&v), 3.0 / 8.0);
        assert_eq!(saturated_fraction(&[]), 0.0);
    }

    #[test]
    fn too_few_or_ragged_features_are_errors() {
        assert!(RealStats::new(rows(1, 1, 0.0)).is_err());
        assert!(RealStats::new(vec![0.0; FEATURES + 1]).is_err());
        let real = RealStats::new(rows(3, 1, 0.0)).unwrap();
        assert!(real.scores(&rows(1, 2, 0.0)).is_err());
    }
}
