//! Forward-only CPU kernels for the trainer's Inception-v3 feature network (FID and KID,
//! `trainer/src/inception.rs`): convolutions with rectangular kernels, strides and
//! per-axis padding (BatchNorm folded into a bias, ReLU fused), 3x3 max and average
//! pooling, PyTorch's bilinear resize and the global mean. One image at a time, on plain
//! `f32` slices in `[C, H, W]` layout; the caller spreads images over threads. They live
//! here, beside the U-Net kernels (whose matrix product and scratch buffer they share),
//! because this crate is built optimized even in dev builds.

use alloc::vec::Vec;

use super::gemm::{Mat, matmul, with_scratch};

/// Shape of an ungrouped, dilation-1 convolution of one `[cin, h, w]` image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels.
    pub cin: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Vertical and horizontal stride.
    pub stride: (usize, usize),
    /// Zero rows above and below, zero columns left and right.
    pub pad: (usize, usize),
}

impl ConvShape {
    /// Output height (0 when the kernel does not fit).
    pub fn oh(&self) -> usize {
        (self.h + 2 * self.pad.0)
            .checked_sub(self.kernel.0)
            .map_or(0, |d| d / self.stride.0 + 1)
    }
    /// Output width (0 when the kernel does not fit).
    pub fn ow(&self) -> usize {
        (self.w + 2 * self.pad.1)
            .checked_sub(self.kernel.1)
            .map_or(0, |d| d / self.stride.1 + 1)
    }
    /// Rows of the unfolded image, `cin * kh * kw`: the weight matrix's columns.
    fn kdim(&self) -> usize {
        self.cin * self.kernel.0 * self.kernel.1
    }
}

/// Unfolds `x` `[cin, h, w]` into `cols` `[cin*kh*kw, oh*ow]` (row `(ci*kh + i)*kw + j`, the
/// flattened weight layout `[cout, cin, kh, kw]`), zeros where the kernel reads padding.
fn im2col(s: &ConvShape, x: &[f32], cols: &mut [f32]) {
    let (oh, ow) = (s.oh(), s.ow());
    let (kh, kw) = s.kernel;
    let (sh, sw) = s.stride;
    let (ph, pw) = s.pad;
    let plane = oh * ow;
    for ci in 0..s.cin {
        let src = &x[ci * s.h * s.w..(ci + 1) * s.h * s.w];
        for i in 0..kh {
            for j in 0..kw {
                let row = (ci * kh + i) * kw + j;
                let dst = &mut cols[row * plane..(row + 1) * plane];
                // Output columns ox with 0 <= ox*sw + j - pw < w.
                let lo = pw.saturating_sub(j).div_ceil(sw).min(ow);
                let hi = (s.w + pw).saturating_sub(j).div_ceil(sw).clamp(lo, ow);
                for (oy, d) in dst.chunks_mut(ow).enumerate() {
                    let iy = (oy * sh + i).wrapping_sub(ph);
                    if iy >= s.h {
                        d.fill(0.0);
                        continue;
                    }
                    d[..lo].fill(0.0);
                    d[hi..].fill(0.0);
                    let line = &src[iy * s.w..(iy + 1) * s.w];
                    let first = lo * sw + j - pw;
                    if sw == 1 {
                        d[lo..hi].copy_from_slice(&line[first..first + (hi - lo)]);
                    } else {
                        for (v, ix) in d[lo..hi].iter_mut().zip((first..).step_by(sw)) {
                            *v = line[ix];
                        }
                    }
                }
            }
        }
    }
}

/// `out` `[cout, oh, ow]` = ReLU(conv(`x`) + `bias`) for one image `x` `[cin, h, w]`, with
/// `weight` `[cout, cin, kh, kw]`: a BatchNorm-folded convolution of Inception-v3.
///
/// # Panics
/// When a slice is shorter than the shape says.
pub fn conv_bias_relu(s: &ConvShape, x: &[f32], weight: &[f32], bias: &[f32], out: &mut [f32]) {
    let (kdim, plane) = (s.kdim(), s.oh() * s.ow());
    assert!(x.len() >= s.cin * s.h * s.w, "conv: input too short");
    assert!(
        weight.len() >= s.cout * kdim && bias.len() >= s.cout,
        "conv: weights too short"
    );
    assert!(out.len() >= s.cout * plane, "conv: output too short");
    let out = &mut out[..s.cout * plane];
    for (o, &b) in out.chunks_mut(plane.max(1)).zip(bias) {
        o.fill(b);
    }
    let lhs = Mat {
        data: weight,
        rs: kdim,
        cs: 1,
    };
    // out += W . cols, with cols the unfolded image `[kdim, plane]`.
    let product = |out: &mut [f32], cols: &[f32]| {
        let rhs = Mat {
            data: cols,
            rs: plane,
            cs: 1,
        };
        let dims = (s.cout, plane, kdim);
        matmul(
            out,
            false,
            true,
            1.0,
            lhs,
            rhs,
            dims,
            gemm::Parallelism::None,
        );
    };
    if s.kernel == (1, 1) && s.stride == (1, 1) && s.pad == (0, 0) {
        // The image is its own unfolding.
        product(out, x);
    } else {
        with_scratch(kdim * plane, |cols| {
            im2col(s, x, cols);
            product(out, cols);
        });
    }
    for v in out.iter_mut() {
        *v = v.max(0.0);
    }
}

/// Output side of a 3-wide pooling window with `stride` and `pad` over `n` values.
pub fn pool3_len(n: usize, stride: usize, pad: usize) -> usize {
    (n + 2 * pad).checked_sub(3).map_or(0, |d| d / stride + 1)
}

/// The input indices `[lo, hi)` a 3-wide window at output `o` covers (padding left out).
fn window(o: usize, stride: usize, pad: usize, n: usize) -> (usize, usize) {
    let start = o * stride;
    (
        start.saturating_sub(pad),
        (start + 3).saturating_sub(pad).min(n),
    )
}

/// 3x3 max pooling of `x` `[c, h, w]` with `stride` and `pad` (padding never wins, as in
/// PyTorch's -inf padding); returns `[c, oh, ow]`.
pub fn max_pool3(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    stride: usize,
    pad: usize,
) -> Vec<f32> {
    let (oh, ow) = (pool3_len(h, stride, pad), pool3_len(w, stride, pad));
    let mut out = Vec::with_capacity(c * oh * ow);
    for plane in x.chunks(h * w).take(c) {
        for oy in 0..oh {
            let (y0, y1) = window(oy, stride, pad, h);
            for ox in 0..ow {
                let (x0, x1) = window(ox, stride, pad, w);
                let mut m = f32::NEG_INFINITY;
                for row in plane[y0 * w..y1 * w].chunks(w) {
                    for &v in &row[x0..x1] {
                        m = m.max(v);
                    }
                }
                out.push(m);
            }
        }
    }
    out
}

/// 3x3 average pooling of `x` `[c, h, w]` with stride 1 and one value of padding, averaging
/// only the values inside the image (PyTorch's `count_include_pad=False`); same shape out.
pub fn avg_pool3_same(x: &[f32], (c, h, w): (usize, usize, usize)) -> Vec<f32> {
    let mut out = Vec::with_capacity(c * h * w);
    for plane in x.chunks(h * w).take(c) {
        for oy in 0..h {
            let (y0, y1) = window(oy, 1, 1, h);
            for ox in 0..w {
                let (x0, x1) = window(ox, 1, 1, w);
                let mut sum = 0.0f32;
                for row in plane[y0 * w..y1 * w].chunks(w) {
                    for &v in &row[x0..x1] {
                        sum += v;
                    }
                }
                out.push(sum / ((y1 - y0) * (x1 - x0)) as f32);
            }
        }
    }
    out
}

/// The mean of each `plane`-sized channel of `x` (global average pooling).
pub fn channel_means(x: &[f32], plane: usize) -> Vec<f32> {
    x.chunks(plane.max(1))
        .map(|p| p.iter().sum::<f32>() / plane as f32)
        .collect()
}

/// Source index and weight of output `o` of a bilinear resize from `n_in` to `n_out`
/// without corner alignment, PyTorch's `align_corners=False` arithmetic in `f32`.
fn bilinear_tap(o: usize, n_in: usize, n_out: usize) -> (usize, usize, f32) {
    let scale = n_in as f32 / n_out as f32;
    let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src as usize).min(n_in - 1);
    let i1 = (i0 + 1).min(n_in - 1);
    (i0, i1, src - i0 as f32)
}

/// Bilinear resize of `x` `[c, h, w]` to `[c, oh, ow]`, as `torch.nn.functional.interpolate`
/// with `mode='bilinear', align_corners=False` (what pytorch-fid feeds Inception).
pub fn resize_bilinear(
    x: &[f32],
    (c, h, w): (usize, usize, usize),
    (oh, ow): (usize, usize),
) -> Vec<f32> {
    let mut out = Vec::with_capacity(c * oh * ow);
    if h == 0 || w == 0 {
        out.resize(c * oh * ow, 0.0);
        return out;
    }
    let cols: Vec<_> = (0..ow).map(|o| bilinear_tap(o, w, ow)).collect();
    for plane in x.chunks(h * w).take(c) {
        for oy in 0..oh {
            let (y0, y1, ly) = bilinear_tap(oy, h, oh);
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for &(x0, x1, lx) in &cols {
                let top = (1.0 - lx) * r0[x0] + lx * r0[x1];
                let bottom = (1.0 - lx) * r1[x0] + lx * r1[x1];
                out.push((1.0 - ly) * top + ly * bottom);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// A deterministic pseudo-random vector in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    /// The convolution by its definition, in f64.
    fn conv_reference(s: &ConvShape, x: &[f32], wt: &[f32], b: &[f32]) -> Vec<f64> {
        let (oh, ow) = (s.oh(), s.ow());
        let (kh, kw) = s.kernel;
        let mut out = vec![0.0f64; s.cout * oh * ow];
        for co in 0..s.cout {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b[co] as f64;
                    for ci in 0..s.cin {
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (oy * s.stride.0 + i) as isize - s.pad.0 as isize;
                                let ix = (ox * s.stride.1 + j) as isize - s.pad.1 as isize;
                                if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                    continue;
                                }
                                let xv = x[(ci * s.h + iy as usize) * s.w + ix as usize];
                                let wv = wt[((co * s.cin + ci) * kh + i) * kw + j];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[(co * oh + oy) * ow + ox] = acc.max(0.0);
                }
            }
        }
        out
    }

    #[test]
    fn convolutions_match_their_definition() {
        // Every geometry Inception-v3 uses: 3x3 stride 2 without padding, 3x3 / 5x5 'same',
        // 1x7, 7x1, 1x3 and 3x1 with one-sided padding, and the pointwise product.
        let cases = [
            ((3, 3), (2, 2), (0, 0)),
            ((3, 3), (1, 1), (1, 1)),
            ((5, 5), (1, 1), (2, 2)),
            ((1, 7), (1, 1), (0, 3)),
            ((7, 1), (1, 1), (3, 0)),
            ((1, 3), (1, 1), (0, 1)),
            ((3, 1), (1, 1), (1, 0)),
            ((1, 1), (1, 1), (0, 0)),
            ((3, 3), (1, 1), (0, 0)),
        ];
        for (n, &(kernel, stride, pad)) in cases.iter().enumerate() {
            for (h, w) in [(9, 11), (8, 8), (17, 17)] {
                let s = ConvShape {
                    cin: 5,
                    h,
                    w,
                    cout: 6,
                    kernel,
                    stride,
                    pad,
                };
                let x = values(s.cin * h * w, n as u64);
                let wt = values(s.cout * s.kdim(), 100 + n as u64);
                let b = values(s.cout, 200 + n as u64);
                let mut out = vec![f32::NAN; s.cout * s.oh() * s.ow()];
                conv_bias_relu(&s, &x, &wt, &b, &mut out);
                let want = conv_reference(&s, &x, &wt, &b);
                assert_eq!(out.len(), want.len());
                for (a, e) in out.iter().zip(&want) {
                    assert!(
                        (*a as f64 - e).abs() < 1e-5,
                        "{kernel:?} {stride:?} {pad:?}: {a} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn output_sizes_follow_the_floor_formula() {
        let s = ConvShape {
            cin: 3,
            h: 299,
            w: 299,
            cout: 32,
            kernel: (3, 3),
            stride: (2, 2),
            pad: (0, 0),
        };
        assert_eq!((s.oh(), s.ow()), (149, 149));
        assert_eq!(pool3_len(147, 2, 0), 73);
        assert_eq!(pool3_len(17, 2, 0), 8);
        assert_eq!(pool3_len(8, 1, 1), 8);
    }

    #[test]
    fn pooling_matches_its_definition() {
        let (c, h, w) = (2, 7, 6);
        let x = values(c * h * w, 7);
        let at = |ch: usize, y: isize, xx: isize| -> Option<f32> {
            (y >= 0 && xx >= 0 && y < h as isize && xx < w as isize)
                .then(|| x[(ch * h + y as usize) * w + xx as usize])
        };
        for (stride, pad) in [(2, 0), (1, 1)] {
            let got = max_pool3(&x, (c, h, w), stride, pad);
            let (oh, ow) = (pool3_len(h, stride, pad), pool3_len(w, stride, pad));
            assert_eq!(got.len(), c * oh * ow);
            for ch in 0..c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let m = (0..9)
                            .filter_map(|k| {
                                let y = (oy * stride + k / 3) as isize - pad as isize;
                                let xx = (ox * stride + k % 3) as isize - pad as isize;
                                at(ch, y, xx)
                            })
                            .fold(f32::NEG_INFINITY, f32::max);
                        assert_eq!(got[(ch * oh + oy) * ow + ox], m);
                    }
                }
            }
        }
        let avg = avg_pool3_same(&x, (c, h, w));
        for ch in 0..c {
            for oy in 0..h {
                for ox in 0..w {
                    let inside: Vec<f32> = (0..9)
                        .filter_map(|k| at(ch, oy as isize + k / 3 - 1, ox as isize + k % 3 - 1))
                        .collect();
                    let want = inside.iter().sum::<f32>() / inside.len() as f32;
                    let got = avg[(ch * h + oy) * w + ox];
                    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
                }
            }
        }
        // Corners average 4 values, edges 6: count_include_pad=False.
        let ones = avg_pool3_same(&[1.0; 9], (1, 3, 3));
        assert!(ones.iter().all(|&v| (v - 1.0).abs() < 1e-7));
        assert_eq!(
            channel_means(&[1.0, 2.0, 3.0, 5.0, 7.0, 9.0], 3),
            vec![2.0, 7.0]
        );
    }

    #[test]
    fn bilinear_resize_reproduces_linear_ramps_and_pytorch_edges() {
        // Interior outputs of a linear ramp are the ramp at the source coordinate
        // (o + 0.5) * in / out - 0.5; outputs left of the first centre clamp to it.
        let (h, w) = (4, 5);
        let x: Vec<f32> = (0..h * w)
            .map(|k| (k % w) as f32 * 2.0 + (k / w) as f32)
            .collect();
        let (oh, ow) = (9, 13);
        let y = resize_bilinear(&x, (1, h, w), (oh, ow));
        let coord = |o: usize, n_in: usize, n_out: usize| {
            ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).clamp(0.0, (n_in - 1) as f64)
        };
        for oy in 0..oh {
            for ox in 0..ow {
                let want = coord(ox, w, ow) * 2.0 + coord(oy, h, oh);
                let got = y[oy * ow + ox] as f64;
                assert!((got - want).abs() < 1e-5, "({oy},{ox}): {got} vs {want}");
            }
        }
        // The same size is the identity.
        assert_eq!(resize_bilinear(&x, (1, h, w), (h, w)), x);
    }
}
