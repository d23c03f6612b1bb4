//! CPU kernels for the U-Net's two dominant ops, on plain `f32` slices: the stride-1
//! convolution (3x3 with padding 1, and 1x1) and GroupNorm with an optional fused SiLU,
//! forward and backward. [`super::flex_ops`] plugs them into burn's `flex` backend and its
//! autodiff; see docs/performance.md for why burn-flex's own paths were slow here.
//!
//! Layout is NCHW throughout. A convolution of one image is one matrix product:
//! `Y_b [Cout, HW] = W [Cout, Cin*k*k] . cols_b [Cin*k*k, HW]`, with `cols_b` the image
//! unfolded (im2col; the image itself for 1x1). Its gradients are two more products:
//! `dW += dY_b . cols_b^T` and `dcols_b = W^T . dY_b`, folded back (col2im) into `dX_b`.
//! Images are split over the threads in contiguous chunks, each thread with its own buffers
//! and its own partial `dW`, summed at the end: nothing is shared while the products run.

use alloc::vec;
use alloc::vec::Vec;
use rayon::prelude::*;

/// Shape of a stride-1, dilation-1, ungrouped convolution with a square `k x k` kernel and
/// `pad` zeros on every side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Batch size.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel size.
    pub k: usize,
    /// Zero padding on each side.
    pub pad: usize,
}

impl ConvGeom {
    /// Output height.
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad + 1).saturating_sub(self.k)
    }
    /// Output width.
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad + 1).saturating_sub(self.k)
    }
    fn plane(&self) -> usize {
        self.oh() * self.ow()
    }
    /// Rows of the unfolded image: `Cin * k * k`.
    fn kdim(&self) -> usize {
        self.cin * self.k * self.k
    }
    fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.cout * self.plane()
    }
    /// A 1x1 convolution without padding reads the image as its own unfolding.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.pad == 0
    }
}

/// `[start, end)` image ranges, one per worker thread.
fn chunks(batch: usize) -> Vec<(usize, usize)> {
    let n = rayon::current_num_threads().clamp(1, batch.max(1));
    let per = batch.div_ceil(n);
    (0..n)
        .map(|i| (i * per, ((i + 1) * per).min(batch)))
        .filter(|(a, b)| a < b)
        .collect()
}

/// Whether one product is worth gemm's own threads (only used when the batch is not split).
fn parallelism(m: usize, n: usize, k: usize) -> gemm::Parallelism {
    if rayon::current_num_threads() > 1 && m * n * k >= 1 << 21 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// A matrix in a slice: element `(i, j)` at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// `dst (+)= lhs . rhs` for `dst` `[m, n]` row-major in `dst`, `lhs` `[m, k]`, `rhs` `[k, n]`.
fn matmul(
    dst: &mut [f32],
    accumulate: bool,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    (m, n, k): (usize, usize, usize),
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |mat: Mat<'_>, rows: usize, cols: usize| {
        (rows.max(1) - 1) * mat.rs + (cols.max(1) - 1) * mat.cs
    };
    assert!(dst.len() >= m * n, "matmul: destination too small");
    assert!(
        k == 0 || (last(lhs, m, k) < lhs.data.len() && last(rhs, k, n) < rhs.data.len()),
        "matmul: operand out of bounds"
    );
    // SAFETY: every index gemm touches, `i * rs + j * cs` for i, j below the dimensions, is
    // in bounds by the asserts above; `dst` is exclusively borrowed and does not alias the
    // operands (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Unfolds output rows `rows` of one image `x` `[Cin, H, W]` into `cols`
/// `[Cin*k*k, rows.len()*OW]`, zeros where the kernel reads padding. Row `(ci*k + kh)*k + kw`
/// matches the weight layout `[Cout, Cin, k, k]` flattened to `[Cout, Cin*k*k]`.
fn im2col(g: &ConvGeom, x: &[f32], rows: core::ops::Range<usize>, cols: &mut [f32]) {
    let ow = g.ow();
    let band = rows.len() * ow;
    for ci in 0..g.cin {
        let src_plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for kh in 0..g.k {
            for kw in 0..g.k {
                let row = (ci * g.k + kh) * g.k + kw;
                let row = &mut cols[row * band..(row + 1) * band];
                // Output columns ox with 0 <= ox + kw - pad < W.
                let lo = g.pad.saturating_sub(kw).min(ow);
                let hi = (g.w + g.pad).saturating_sub(kw).clamp(lo, ow);
                for (r, oy) in rows.clone().enumerate() {
                    let dst = &mut row[r * ow..(r + 1) * ow];
                    let iy = (oy + kh).wrapping_sub(g.pad);
                    if iy >= g.h {
                        dst.fill(0.0);
                        continue;
                    }
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    let src = &src_plane[iy * g.w..(iy + 1) * g.w];
                    let shift = lo + kw - g.pad;
                    dst[lo..hi].copy_from_slice(&src[shift..shift + (hi - lo)]);
                }
            }
        }
    }
}

std::thread_local! {
    /// Per-thread unfolding buffer, reused across calls: reallocating (and faulting in) a
    /// megabyte per convolution cost more than the copy into it.
    static SCRATCH: core::cell::RefCell<Vec<f32>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer grown to at least `len` values (contents
/// unspecified: callers overwrite what they read).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (rayon work-stealing inside f): a buffer of its own.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// The adjoint of [`im2col`]: adds `cols` back into the image `dx` `[Cin, H, W]`.
fn col2im_add(g: &ConvGeom, cols: &[f32], dx: &mut [f32]) {
    let (oh, ow, plane) = (g.oh(), g.ow(), g.plane());
    for ci in 0..g.cin {
        let dst_plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for kh in 0..g.k {
            for kw in 0..g.k {
                let row = (ci * g.k + kh) * g.k + kw;
                let row = &cols[row * plane..(row + 1) * plane];
                let lo = g.pad.saturating_sub(kw).min(ow);
                let hi = (g.w + g.pad).saturating_sub(kw).clamp(lo, ow);
                for oy in 0..oh {
                    let iy = (oy + kh).wrapping_sub(g.pad);
                    if iy >= g.h {
                        continue;
                    }
                    let src = &row[oy * ow + lo..oy * ow + hi];
                    let shift = lo + kw - g.pad;
                    let dst = &mut dst_plane[iy * g.w + shift..iy * g.w + shift + (hi - lo)];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += s;
                    }
                }
            }
        }
    }
}

/// Convolution of output rows `rows` of one image: `out` `[Cout, rows.len()*OW]`.
fn conv_band(
    g: &ConvGeom,
    xb: &[f32],
    weight: &[f32],
    bias: &[f32],
    rows: core::ops::Range<usize>,
    out: &mut [f32],
    par: gemm::Parallelism,
) {
    let (kdim, ow) = (g.kdim(), g.ow());
    let band = rows.len() * ow;
    for (co, o) in out.chunks_mut(band).enumerate() {
        o.fill(bias[co]);
    }
    let lhs = Mat {
        data: weight,
        rs: kdim,
        cs: 1,
    };
    if g.pointwise() {
        // The image is its own unfolding: rows of the band are columns of x.
        let rhs = Mat {
            data: &xb[rows.start * ow..],
            rs: g.h * g.w,
            cs: 1,
        };
        matmul(out, true, lhs, rhs, (g.cout, band, kdim), par);
    } else {
        with_scratch(kdim * band, |cols| {
            im2col(g, xb, rows, cols);
            let rhs = Mat {
                data: cols,
                rs: band,
                cs: 1,
            };
            matmul(out, true, lhs, rhs, (g.cout, band, kdim), par);
        });
    }
}

/// Convolution forward: `x` `[B, Cin, H, W]`, `weight` `[Cout, Cin, k, k]`, `bias` `[Cout]`
/// -> `[B, Cout, OH, OW]`. Batches at least as large as the thread count are split by
/// images; smaller ones (the sampler at batch 1) by bands of output rows.
pub fn conv_forward(g: &ConvGeom, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let (plane, oh, ow) = (g.plane(), g.oh(), g.ow());
    let (in_len, out_len) = (g.in_len(), g.out_len());
    let mut y = vec![0.0f32; g.batch * out_len];
    let threads = rayon::current_num_threads();
    let parts = chunks(g.batch);
    if parts.len() > 1 && g.batch >= threads {
        let per = parts[0].1 - parts[0].0;
        y.par_chunks_mut(per * out_len)
            .zip(x.par_chunks(per * in_len))
            .for_each(|(ys, xs)| {
                for (yb, xb) in ys.chunks_mut(out_len).zip(xs.chunks(in_len)) {
                    conv_band(g, xb, weight, bias, 0..oh, yb, gemm::Parallelism::None);
                }
            });
    } else if threads > 1 && g.cout * plane * g.kdim() >= 1 << 16 && oh >= 2 * threads {
        // Bands of output rows, each into its own buffer, copied into place.
        let per_band = oh.div_ceil(threads);
        let tasks: Vec<(usize, core::ops::Range<usize>)> = (0..g.batch)
            .flat_map(|b| {
                (0..oh)
                    .step_by(per_band)
                    .map(move |r| (b, r..(r + per_band).min(oh)))
            })
            .collect();
        let outs: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|(b, rows)| {
                let mut out = vec![0.0f32; g.cout * rows.len() * ow];
                let xb = &x[b * in_len..(b + 1) * in_len];
                conv_band(
                    g,
                    xb,
                    weight,
                    bias,
                    rows.clone(),
                    &mut out,
                    gemm::Parallelism::None,
                );
                out
            })
            .collect();
        for ((b, rows), out) in tasks.iter().zip(&outs) {
            let band = rows.len() * ow;
            for co in 0..g.cout {
                let dst = b * out_len + co * plane + rows.start * ow;
                y[dst..dst + band].copy_from_slice(&out[co * band..(co + 1) * band]);
            }
        }
    } else {
        for (yb, xb) in y.chunks_mut(out_len).zip(x.chunks(in_len)) {
            conv_band(g, xb, weight, bias, 0..oh, yb, gemm::Parallelism::None);
        }
    }
    y
}

/// Gradients of [`conv_forward`] for `dy` `[B, Cout, OH, OW]`: `(dx, dweight, dbias)`, each
/// computed only when asked for.
#[allow(clippy::type_complexity)]
pub fn conv_backward(
    g: &ConvGeom,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    (need_x, need_w, need_b): (bool, bool, bool),
) -> (Option<Vec<f32>>, Option<Vec<f32>>, Option<Vec<f32>>) {
    let (plane, kdim) = (g.plane(), g.kdim());
    let (in_len, out_len) = (g.in_len(), g.out_len());
    let dbias = need_b.then(|| {
        let mut db = vec![0.0f32; g.cout];
        for dyb in dy.chunks(out_len) {
            for (co, d) in dyb.chunks(plane).enumerate() {
                db[co] += d.iter().sum::<f32>();
            }
        }
        db
    });
    if !need_x && !need_w {
        return (None, None, dbias);
    }
    // W^T: element (i, co) of [Cin*k*k, Cout] is weight[co * kdim + i].
    let weight_t = Mat {
        data: weight,
        rs: 1,
        cs: kdim,
    };
    // Images start..end: (their dx, their partial dW).
    let run = |(start, end): (usize, usize), par: gemm::Parallelism| {
        let mut dx = if need_x {
            vec![0.0f32; (end - start) * in_len]
        } else {
            Vec::new()
        };
        let mut dw = if need_w {
            vec![0.0f32; g.cout * kdim]
        } else {
            Vec::new()
        };
        let mut cols = vec![0.0f32; if g.pointwise() { 0 } else { kdim * plane }];
        for b in start..end {
            let xb = &x[b * in_len..(b + 1) * in_len];
            let dyb = Mat {
                data: &dy[b * out_len..(b + 1) * out_len],
                rs: plane,
                cs: 1,
            };
            if need_w {
                let unfolded: &[f32] = if g.pointwise() {
                    xb
                } else {
                    im2col(g, xb, 0..g.oh(), &mut cols);
                    &cols
                };
                // cols^T: element (p, i) of [HW, Cin*k*k] is cols[i * plane + p].
                let cols_t = Mat {
                    data: unfolded,
                    rs: 1,
                    cs: plane,
                };
                matmul(&mut dw, true, dyb, cols_t, (g.cout, kdim, plane), par);
            }
            if need_x {
                let dxb = &mut dx[(b - start) * in_len..(b - start + 1) * in_len];
                if g.pointwise() {
                    matmul(dxb, false, weight_t, dyb, (kdim, plane, g.cout), par);
                } else {
                    matmul(&mut cols, false, weight_t, dyb, (kdim, plane, g.cout), par);
                    col2im_add(g, &cols, dxb);
                }
            }
        }
        (dx, dw)
    };
    let parts = chunks(g.batch);
    let results: Vec<(Vec<f32>, Vec<f32>)> = if parts.len() > 1 {
        parts
            .into_par_iter()
            .map(|r| run(r, gemm::Parallelism::None))
            .collect()
    } else {
        let par = parallelism(g.cout.max(kdim), plane.max(kdim), kdim.max(plane));
        parts.into_iter().map(|r| run(r, par)).collect()
    };
    let mut dx = need_x.then(|| Vec::with_capacity(g.batch * in_len));
    let mut dw: Option<Vec<f32>> = None;
    for (part_dx, part_dw) in results {
        if let Some(dx) = dx.as_mut() {
            dx.extend_from_slice(&part_dx);
        }
        if need_w {
            match dw.as_mut() {
                None => dw = Some(part_dw),
                Some(acc) => acc.iter_mut().zip(&part_dw).for_each(|(a, p)| *a += p),
            }
        }
    }
    if need_w && dw.is_none() {
        dw = Some(vec![0.0; g.cout * kdim]);
    }
    (dx, dw, dbias)
}

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

/// `e^x` for f32, to about 2 ulp on [-87, 88] (saturating outside), branch-free so that loops
/// over slices vectorize: `x = n ln2 + r`, `|r| <= ln2/2`, a degree-6 Taylor polynomial in
/// `r`, then `2^n` put into the exponent bits. libm's scalar `expf` made SiLU a fifth of a
/// training step.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    // ln 2 split so that n * LN2_HI is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // The integer n sits in the low bits of `shifted` (offset by 0x4B40_0000).
    let bits = (shifted.to_bits().wrapping_sub(0x4B40_0000) as i32).wrapping_add(127) << 23;
    p * f32::from_bits(bits as u32)
}

#[inline(always)]
fn sigmoid(y: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-y))
}

/// `silu(v) = v * sigmoid(v)` in place.
fn silu_in_place(v: &mut [f32]) {
    for a in v {
        *a *= sigmoid(*a);
    }
}

/// `(sum a, sum a * b)` over two slices, in eight f32 lanes (so it vectorizes), lanes summed
/// in f64.
fn sum_and_dot(a: &[f32], b: &[f32]) -> (f64, f64) {
    let (mut s, mut d) = ([0.0f32; 8], [0.0f32; 8]);
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            s[i] += x[i];
            d[i] += x[i] * y[i];
        }
    }
    let mut sum: f64 = s.iter().map(|&v| v as f64).sum();
    let mut dot: f64 = d.iter().map(|&v| v as f64).sum();
    for (x, y) in ar.iter().zip(br) {
        sum += *x as f64;
        dot += (*x * *y) as f64;
    }
    (sum, dot)
}

/// `sum a`, lanes as in [`sum_and_dot`].
fn lane_sum(a: &[f32]) -> f64 {
    let mut s = [0.0f32; 8];
    let ac = a.chunks_exact(8);
    let ar = ac.remainder();
    for x in ac {
        for i in 0..8 {
            s[i] += x[i];
        }
    }
    s.iter().chain(ar).map(|&v| v as f64).sum()
}

/// `sum (a - c)^2`, lanes as in [`sum_and_dot`].
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

/// GroupNorm forward, `silu(norm(x))` when `silu`: returns `(y, mean, rstd)`, the statistics
/// one per (sample, group), for the backward pass. The variance is the biased one, as in
/// burn's and PyTorch's GroupNorm; sums are accumulated in f64.
pub fn group_norm_forward(
    g: &NormGeom,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f64,
    silu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = g.group_len();
    let cg = g.group_channels();
    let mut y = vec![0.0f32; x.len()];
    let stats: Vec<(f32, f32)> = y
        .par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .enumerate()
        .map(|(bg, (yg, xg))| {
            let group = bg % g.groups;
            let mean = lane_sum(xg) / n as f64;
            let var = centered_squares(xg, mean as f32) / n as f64;
            let rstd = 1.0 / libm::sqrt(var + epsilon);
            for j in 0..cg {
                let c = group * cg + j;
                let a = (rstd * gamma[c] as f64) as f32;
                let shift = (beta[c] as f64 - mean * rstd * gamma[c] as f64) as f32;
                let range = j * g.plane..(j + 1) * g.plane;
                for (o, &v) in yg[range.clone()].iter_mut().zip(&xg[range]) {
                    *o = v * a + shift;
                }
            }
            if silu {
                silu_in_place(yg);
            }
            (mean as f32, rstd as f32)
        })
        .collect();
    let (mean, rstd) = stats.into_iter().unzip();
    (y, mean, rstd)
}

/// Gradients of [`group_norm_forward`] for `dy`: `(dx, dgamma, dbeta)`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_backward(
    g: &NormGeom,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dy: &[f32],
    silu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = g.group_len();
    let cg = g.group_channels();
    let mut dx = vec![0.0f32; x.len()];
    // Per (sample, group): the group's cg entries of dgamma and dbeta.
    let partial: Vec<(Vec<f64>, Vec<f64>)> = dx
        .par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .zip(dy.par_chunks(n))
        .enumerate()
        .map(|(bg, ((dxg, xg), dyg))| {
            let group = bg % g.groups;
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
                let range = j * g.plane..(j + 1) * g.plane;
                for (h, &v) in xhat.iter_mut().zip(&xg[range.clone()]) {
                    *h = (v - mu) * rs;
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
            for j in 0..cg {
                let gm = gamma[group * cg + j];
                let range = j * g.plane..(j + 1) * g.plane;
                for (o, &v) in dxg[range.clone()].iter_mut().zip(&xg[range]) {
                    let h = (v - mu) * rs;
                    *o = rs * (*o * gm - m1 - h * m2);
                }
            }
            (dgamma, dbeta)
        })
        .collect();
    let mut dgamma = vec![0.0f64; g.channels];
    let mut dbeta = vec![0.0f64; g.channels];
    for (bg, (dg, db)) in partial.iter().enumerate() {
        let first = (bg % g.groups) * cg;
        for j in 0..cg {
            dgamma[first + j] += dg[j];
            dbeta[first + j] += db[j];
        }
    }
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|a| a as f32).collect();
    (dx, to_f32(dgamma), to_f32(dbeta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_a_few_ulp_of_f64_exp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f64;
        while x <= 88.0 {
            let xf = x as f32;
            let want = (xf as f64).exp();
            let got = exp_f32(xf) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_7;
        }
        // 2^-23 = 1.19e-7 is one ulp at the top of a binade.
        assert!(worst < 3.0e-7, "worst relative error {worst:.3e}");
        assert_eq!(exp_f32(0.0), 1.0);
        // Saturation instead of inf/NaN far out (SiLU's sigmoid relies on it).
        assert!(exp_f32(-1e4) > 0.0 && exp_f32(-1e4) < 1e-37);
        assert!(exp_f32(1e4).is_finite());
        assert!(exp_f32(f32::NEG_INFINITY) >= 0.0);
    }

    #[test]
    fn im2col_and_col2im_are_adjoint() {
        // <im2col(x), c> == <x, col2im(c)> for random x, c: the identity the backward uses.
        let g = ConvGeom {
            batch: 1,
            cin: 2,
            h: 4,
            w: 5,
            cout: 1,
            k: 3,
            pad: 1,
        };
        let x = crate::rng::gaussian_vec(1, g.in_len());
        let c = crate::rng::gaussian_vec(2, g.kdim() * g.plane());
        let mut cols = vec![0.0; g.kdim() * g.plane()];
        im2col(&g, &x, 0..g.oh(), &mut cols);
        let mut back = vec![0.0; g.in_len()];
        col2im_add(&g, &c, &mut back);
        let lhs: f64 = cols
            .iter()
            .zip(&c)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        let rhs: f64 = x
            .iter()
            .zip(&back)
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum();
        assert!(
            (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
            "{lhs} vs {rhs}"
        );
    }
}
