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

/// [`image_features`] of a reference set, kept in the cache folder between calls: the
/// 10,000 CIFAR-10 test images cost minutes of Inception on a CPU, and every evaluation of
/// every seed compares with the same ones. The file is named by a hash of the 8-bit pixels
/// and the shape (the weights are fixed: `Inception::load` checks their sha256), so other
/// images never read it; a file of the wrong length is recomputed, and a cache that cannot
/// be written only costs the next call the same time again.
pub fn reference_features(
    inception: &Inception,
    values: &[f32],
    shape: ImageShape,
    bar: &ProgressBar,
) -> Result<Vec<f32>, FidError> {
    let dir = crate::inception::cache_dir();
    cached_features(
        &dir,
        &reference_key(values, shape),
        values.len() / shape.values().max(1),
        || image_features(inception, values, shape, bar),
    )
}

/// The cache key of [`reference_features`]: what the features are a function of.
fn reference_key(values: &[f32], shape: ImageShape) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"fewstep inception-2015-12-05 pool3 features, pytorch-fid feeding, v1\0");
    for d in [shape.channels, shape.height, shape.width] {
        h.update(u64::from(d).to_le_bytes());
    }
    let pixels: Vec<u8> = values
        .iter()
        .map(|&v| sampler_core::sampler::to_u8(v))
        .collect();
    h.update(&pixels);
    h.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `compute()`'s features of `n` images, read from `dir/features-{key}.f32` when that
/// holds exactly `n * 2048` little-endian f32 values, else computed and written there
/// (through a temporary file and a rename, so a killed run leaves no half file).
fn cached_features(
    dir: &std::path::Path,
    key: &str,
    n: usize,
    compute: impl FnOnce() -> Result<Vec<f32>, FidError>,
) -> Result<Vec<f32>, FidError> {
    let path = dir.join(format!("features-{key}.f32"));
    if let Ok(bytes) = std::fs::read(&path)
        && bytes.len() == n * FEATURES * 4
    {
        return Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect());
    }
    let features = compute()?;
    let bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
    let tmp = dir.join(format!("features-{key}.f32.{}.tmp", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, &bytes))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        eprintln!(
            "note: could not cache the reference features in {}: {e}",
            dir.display()
        );
    }
    Ok(features)
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
    fn reference_features_are_cached_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let shape = ImageShape {
            channels: 1,
            height: 2,
            width: 2,
        };
        let images = [0.0, 0.5, -1.0, 1.0, 0.2, 0.2, 0.2, 0.2];
        let key = reference_key(&images, shape);
        let calls = std::cell::Cell::new(0);
        let compute = || {
            calls.set(calls.get() + 1);
            Ok(rows(2, 7, 0.0))
        };
        let first = cached_features(dir.path(), &key, 2, compute).unwrap();
        let second = cached_features(dir.path(), &key, 2, compute).unwrap();
        assert_eq!(
            first, second,
            "the cache returns the computed features bit for bit"
        );
        assert_eq!(calls.get(), 1, "the second call reads the file");
        // A file of the wrong length (another count, a truncated write) is recomputed.
        let third = cached_features(dir.path(), &key, 3, || Ok(rows(3, 7, 0.0))).unwrap();
        assert_eq!(third.len(), 3 * FEATURES);
        // The key follows the 8-bit pixels: a change below one level keeps it, one above
        // changes it, as does the shape.
        let mut nudged = images;
        nudged[1] += 0.001;
        assert_eq!(reference_key(&nudged, shape), key);
        nudged[1] += 0.02;
        assert_ne!(reference_key(&nudged, shape), key);
        let wide = ImageShape {
            channels: 1,
            height: 1,
            width: 4,
        };
        assert_ne!(reference_key(&images, wide), key);
        // An unwritable folder still gives the features.
        let file = dir.path().join("not-a-folder");
        std::fs::write(&file, b"x").unwrap();
        let got = cached_features(&file, &key, 2, || Ok(rows(2, 7, 0.0))).unwrap();
        assert_eq!(got, first);
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
