//! The rulers of fewstep's evaluation, on feature vectors: the Frechet distance of two
//! Gaussians (FID in Inception's features, FD-pixel, FD-cls in the project classifier's) and
//! KID (an unbiased MMD^2). The trainer computes the features; this crate only does the f64
//! linear algebra. It is its own crate so that dev builds (tests, `scripts/results.sh`)
//! compile nalgebra's generic eigensolver optimized: instantiated inside the trainer, which
//! dev builds leave unoptimized, one 2048-d FID took minutes instead of seconds.

pub mod frechet;
pub mod kid;
