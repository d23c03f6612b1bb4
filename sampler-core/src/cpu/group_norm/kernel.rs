//! GroupNorm with an optional fused SiLU on plain `f32` slices, forward and backward: the
//! statistics in f64 lanes, the normalization vectorized (docs/performance.md).

use alloc::vec;
use alloc::vec::Vec;
use rayon::prelude::*;

use crate::cpu::gemm::par_zeroed;
use crate::cpu::simd::{exp_f32, lane_sum, simd, sum_and_dot};

/// Shape of a GroupNorm: `batch` samples of `channels` planes of `plane` values, in
/// `groups` groups of consecutive channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormGeom {
    /// Batch size.
    pub batch: usize,
    /// Channels (a multiple of `groups`).
    pub channels: usize,
    /// Values per channel (H*W).
    pub plane: usize,
    /// Number of groups.
    pub groups: usize,
}

impl NormGeom {
    fn group_len(&self) -> usize {
        self.channels / self.groups * self.plane
    }
    fn group_channels(&self) -> usize {
        self.channels / self.groups
    }
}

#[inline(always)]
fn sigmoid(y: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-y))
}

/// `silu(v) = v * sigmoid(v)` in place.
#[inline(always)]
fn silu_in_place(v: &mut [f32]) {
    for a in v {
        *a *= sigmoid(*a);
    }
}

/// `sum (a - c)^2`, lanes as in [`sum_and_dot`].
#[inline(always)]
fn centered_squares(a: &[f32], c: f32) -> f64 {
    let mut q = [0.0f32; 8];
    let ac = a.chunks_exact(8);
    let ar = ac.remainder();
    for x in ac {
        for i in 0..8 {
            let t = x[i] - c;
            q[i] += t * t;
        }
    }
    let mut sq: f64 = q.iter().map(|&v| v as f64).sum();
    for x in ar {
        let t = *x - c;
        sq += (t * t) as f64;
    }
    sq
}

/// GroupNorm forward, `silu(norm(x + shift))` when `silu`: returns `(y, mean, rstd)`, the
/// statistics one per (sample, group), for the backward pass. `shift` `[B, C]` is a value per
/// (sample, channel) added before the norm (the U-Net's embedding after `conv0`), so that
/// sum is never materialized; `None` adds nothing. The variance is the biased one, as in
/// burn's and PyTorch's GroupNorm; sums are accumulated in f64.
pub fn group_norm_forward(
    g: &NormGeom,
    x: &[f32],
    shift: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    silu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = g.group_len();
    let cg = g.group_channels();
    if let Some(s) = shift {
        assert_eq!(s.len(), g.batch * g.channels, "group norm shift: shape");
    }
    let mut y = par_zeroed(x.len());
    let stats: Vec<(f32, f32)> = y
        .par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .enumerate()
        .map(|(bg, (yg, xg))| {
            simd(
                #[inline(always)]
                || {
                    let (b, group) = (bg / g.groups, bg % g.groups);
                    let offset =
                        |j: usize| shift.map_or(0.0, |s| s[b * g.channels + group * cg + j]);
                    let shift_sum: f64 = (0..cg).map(|j| offset(j) as f64).sum();
                    let mean = (lane_sum(xg) + g.plane as f64 * shift_sum) / n as f64;
                    let var = (0..cg)
                        .map(|j| {
                            let xc = &xg[j * g.plane..(j + 1) * g.plane];
                            centered_squares(xc, (mean - offset(j) as f64) as f32)
                        })
                        .sum::<f64>()
                        / n as f64;
                    let rstd = 1.0 / libm::sqrt(var + epsilon);
                    for j in 0..cg {
                        let c = group * cg + j;
                        let a = rstd * gamma[c] as f64;
                        let shift = beta[c] as f64 + (offset(j) as f64 - mean) * a;
                        let (a, shift) = (a as f32, shift as f32);
                        let range = j * g.plane..(j + 1) * g.plane;
                        for (o, &v) in yg[range.clone()].iter_mut().zip(&xg[range]) {
                            *o = v * a + shift;
                        }
                    }
                    if silu {
                        silu_in_place(yg);
                    }
                    (mean as f32, rstd as f32)
                },
            )
        })
        .collect();
    let (mean, rstd) = stats.into_iter().unzip();
    (y, mean, rstd)
}

/// Gradients of [`group_norm_forward`] for `dy`: `(dx, dgamma, dbeta, dshift)`, `dshift`
/// `[B, C]` (the per-channel sums of `dx`) when a `shift` was given.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn group_norm_backward(
    g: &NormGeom,
    x: &[f32],
    shift: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    silu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let n = g.group_len();
    let cg = g.group_channels();
    let mut dx = par_zeroed(x.len());
    // Per (sample, group): the group's cg entries of dgamma, dbeta and dshift.
    let partial: Vec<(Vec<f64>, Vec<f64>, Vec<f32>)> = dx
        .par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .zip(dy.par_chunks(n))
        .enumerate()
        .map(|(bg, ((dxg, xg), dyg))| {
            simd(
                #[inline(always)]
                || {
                    let (b, group) = (bg / g.groups, bg % g.groups);
                    let offset =
                        |j: usize| shift.map_or(0.0, |s| s[b * g.channels + group * cg + j]);
                    let (mu, rs) = (mean[bg], rstd[bg]);
                    let mut dgamma = vec![0.0f64; cg];
                    let mut dbeta = vec![0.0f64; cg];
                    // Per channel: 1. the gradient at the affine output (through SiLU) into dxg;
                    // 2. its sums, which give dgamma, dbeta and the two group sums of the backward,
                    // since dxhat = d * gamma: sum dxhat = gamma sum d, sum dxhat xhat = gamma dgamma.
                    let (mut sum_g, mut sum_gx) = (0.0f64, 0.0f64);
                    let mut xhat = vec![0.0f32; g.plane];
                    for j in 0..cg {
                        let c = group * cg + j;
                        let (gm, bt) = (gamma[c], beta[c]);
                        let centre = mu - offset(j);
                        let range = j * g.plane..(j + 1) * g.plane;
                        for (h, &v) in xhat.iter_mut().zip(&xg[range.clone()]) {
                            *h = (v - centre) * rs;
                        }
                        let dxc = &mut dxg[range.clone()];
                        dxc.copy_from_slice(&dyg[range]);
                        if silu {
                            for (d, &h) in dxc.iter_mut().zip(&xhat) {
                                let t = h * gm + bt;
                                let s = sigmoid(t);
                                *d *= s * (1.0 + t * (1.0 - s));
                            }
                        }
                        let (db, dg) = sum_and_dot(dxc, &xhat);
                        dgamma[j] = dg;
                        dbeta[j] = db;
                        sum_g += gm as f64 * db;
                        sum_gx += gm as f64 * dg;
                    }
                    // 3. dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
                    let m1 = (sum_g / n as f64) as f32;
                    let m2 = (sum_gx / n as f64) as f32;
                    let mut dshift = Vec::new();
                    for j in 0..cg {
                        let gm = gamma[group * cg + j];
                        let centre = mu - offset(j);
                        let range = j * g.plane..(j + 1) * g.plane;
                        let dxc = &mut dxg[range.clone()];
                        for (o, &v) in dxc.iter_mut().zip(&xg[range]) {
                            let h = (v - centre) * rs;
                            *o = rs * (*o * gm - m1 - h * m2);
                        }
                        if shift.is_some() {
                            dshift.push(lane_sum(dxc) as f32);
                        }
                    }
                    (dgamma, dbeta, dshift)
                },
            )
        })
        .collect();
    let mut dgamma = vec![0.0f64; g.channels];
    let mut dbeta = vec![0.0f64; g.channels];
    for (bg, (dg, db, _)) in partial.iter().enumerate() {
        let first = (bg % g.groups) * cg;
        for j in 0..cg {
            dgamma[first + j] += dg[j];
            dbeta[first + j] += db[j];
        }
    }
    // Groups are consecutive channels of consecutive samples: the partials in order are
    // [B, C].
    let dshift = shift.map(|_| partial.iter().flat_map(|p| p.2.iter().copied()).collect());
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
    (dx, to_f32(dgamma), to_f32(dbeta), dshift)
}
