//! The stride-1 convolution (3x3 with padding 1, and 1x1) on plain `f32` slices, forward
//! and backward; see docs/performance.md for why burn-flex's own path was slow here.
//!
//! Layout is NCHW throughout. A convolution of one image is one matrix product:
//! `Y_b [Cout, HW] = W [Cout, Cin*k*k] . cols_b [Cin*k*k, HW]`, with `cols_b` the image
//! unfolded (im2col; the image itself for 1x1). Its gradients: `dW += dY_b . cols_b^T`
//! (accumulated column-major, where gemm is fastest), and `dX_b` as the forward kernel
//! applied to `dY_b` with the flipped, transposed weights (no scatter-add of columns).
//! Images are split over the threads in contiguous chunks, each thread with its own buffers
//! and its own partial `dW`, summed at the end: nothing is shared while the products run.

use alloc::vec;
use alloc::vec::Vec;
use rayon::prelude::*;

use crate::cpu::gemm::{Mat, chunks, matmul, par_zeroed, parallelism, with_scratch};
use crate::cpu::simd::lane_sum;

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

/// Unfolds output rows `rows` of one image `x` `[Cin, H, W]` into `cols`
/// `[Cin*k*k, rows.len()*OW]`, zeros where the kernel reads padding. Row `(ci*k + kh)*k + kw`
/// matches the weight layout `[Cout, Cin, k, k]` flattened to `[Cout, Cin*k*k]`.
fn im2col(g: &ConvGeom, x: &[f32], rows: core::ops::Range<usize>, cols: &mut [f32]) {
    if g.ow() == g.w && g.oh() == g.h {
        return im2col_same(g, x, rows, cols);
    }
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

/// [`im2col`] when the output has the input's size (`k = 2 pad + 1`): each unfolded row is
/// the image shifted by `(kh - pad) * W + (kw - pad)` values, one block copy, after which the
/// columns that wrapped around a row edge and the rows past the top or bottom are zeroed.
fn im2col_same(g: &ConvGeom, x: &[f32], rows: core::ops::Range<usize>, cols: &mut [f32]) {
    let (h, w, plane) = (g.h, g.w, g.h * g.w);
    let band = rows.len() * w;
    for ci in 0..g.cin {
        let src = &x[ci * plane..(ci + 1) * plane];
        for kh in 0..g.k {
            for kw in 0..g.k {
                let row = (ci * g.k + kh) * g.k + kw;
                let dst = &mut cols[row * band..(row + 1) * band];
                // Output rows oy in `rows` read input row oy + kh - pad; the valid ones are
                // contiguous, [y0, y1).
                let y0 = rows.start.max(g.pad.saturating_sub(kh)).min(rows.end);
                let y1 = rows.end.min((h + g.pad).saturating_sub(kh)).max(y0);
                let (d0, d1) = ((y0 - rows.start) * w, (y1 - rows.start) * w);
                dst[..d0].fill(0.0);
                dst[d1..].fill(0.0);
                if y1 > y0 {
                    // dst[(oy - rows.start) * w + ox] = src[(oy + kh - pad) * w + ox + kw - pad];
                    // the shift may point one element before src or past its end at the
                    // block's ends: those entries are wrapped columns, zeroed below.
                    let start = ((y0 + kh - g.pad) * w) as isize + kw as isize - g.pad as isize;
                    let len = d1 - d0;
                    let lo = ((-start).max(0) as usize).min(len);
                    let hi = len.min((plane as isize - start).max(0) as usize).max(lo);
                    if hi > lo {
                        let s0 = (start + lo as isize) as usize;
                        dst[d0 + lo..d0 + hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                    }
                    dst[d0..d0 + lo].fill(0.0);
                    dst[d0 + hi..d1].fill(0.0);
                    // Columns ox < pad - kw and ox >= W + pad - kw read across a row edge.
                    let left = g.pad.saturating_sub(kw).min(w);
                    let right = (w + g.pad).saturating_sub(kw).clamp(left, w);
                    for r in dst[d0..d1].chunks_mut(w) {
                        // Mostly one value a side (pad 1): a store, not a call to memset.
                        let (head, rest) = r.split_at_mut(left);
                        let tail = &mut rest[right - left..];
                        for v in head.iter_mut().chain(tail.iter_mut()) {
                            *v = 0.0;
                        }
                    }
                }
            }
        }
    }
}

/// A residual added to a convolution's output before a scale: `y = scale * (conv(x) + r)`,
/// the U-Net's skip connections (`r` `[B, Cout, OH, OW]`, like the output).
#[derive(Clone, Copy)]
pub struct Residual<'a> {
    /// The residual, `[B, Cout, OH, OW]`.
    pub r: &'a [f32],
    /// The scale applied to the sum.
    pub scale: f32,
}

/// Convolution of output rows `rows` of one image: `out` `[Cout, rows.len()*OW]`;
/// `residual` is this image's `[Cout, OH, OW]` residual and its scale.
#[allow(clippy::too_many_arguments)]
fn conv_band(
    g: &ConvGeom,
    xb: &[f32],
    weight: &[f32],
    bias: &[f32],
    residual: Option<Residual<'_>>,
    rows: core::ops::Range<usize>,
    out: &mut [f32],
    par: gemm::Parallelism,
) {
    let (kdim, ow) = (g.kdim(), g.ow());
    let band = rows.len() * ow;
    let scale = residual.map_or(1.0, |r| r.scale);
    for (co, o) in out.chunks_mut(band).enumerate() {
        match residual {
            // scale * (bias + r) first; the product is added scaled by gemm.
            Some(res) => {
                let start = co * g.plane() + rows.start * ow;
                for (v, &r) in o.iter_mut().zip(&res.r[start..start + band]) {
                    *v = res.scale * (bias[co] + r);
                }
            }
            None => o.fill(bias[co]),
        }
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
        matmul(out, false, true, scale, lhs, rhs, (g.cout, band, kdim), par);
    } else {
        with_scratch(kdim * band, |cols| {
            im2col(g, xb, rows, cols);
            let rhs = Mat {
                data: cols,
                rs: band,
                cs: 1,
            };
            matmul(out, false, true, scale, lhs, rhs, (g.cout, band, kdim), par);
        });
    }
}

/// Convolution forward: `x` `[B, Cin, H, W]`, `weight` `[Cout, Cin, k, k]`, `bias` `[Cout]`
/// -> `[B, Cout, OH, OW]`, or `scale * (conv + r)` with a [`Residual`]. Batches at least as
/// large as the thread count are split by images; smaller ones (the sampler at batch 1) by
/// bands of output rows.
pub fn conv_forward(
    g: &ConvGeom,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    residual: Option<Residual<'_>>,
) -> Vec<f32> {
    let (plane, oh, ow) = (g.plane(), g.oh(), g.ow());
    let (in_len, out_len) = (g.in_len(), g.out_len());
    if let Some(res) = residual {
        assert_eq!(res.r.len(), g.batch * out_len, "conv residual: shape");
    }
    // This image's residual.
    let res_of = |b: usize| {
        residual.map(|res| Residual {
            r: &res.r[b * out_len..(b + 1) * out_len],
            scale: res.scale,
        })
    };
    let mut y = par_zeroed(g.batch * out_len);
    let threads = rayon::current_num_threads();
    let parts = chunks(g.batch);
    if parts.len() > 1 && g.batch >= threads {
        let per = parts[0].1 - parts[0].0;
        y.par_chunks_mut(per * out_len)
            .zip(x.par_chunks(per * in_len))
            .enumerate()
            .for_each(|(part, (ys, xs))| {
                let images = ys.chunks_mut(out_len).zip(xs.chunks(in_len));
                for (i, (yb, xb)) in images.enumerate() {
                    let r = res_of(part * per + i);
                    conv_band(g, xb, weight, bias, r, 0..oh, yb, gemm::Parallelism::None);
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
                let (r, rows) = (res_of(*b), rows.clone());
                conv_band(
                    g,
                    xb,
                    weight,
                    bias,
                    r,
                    rows,
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
        for (b, (yb, xb)) in y.chunks_mut(out_len).zip(x.chunks(in_len)).enumerate() {
            conv_band(
                g,
                xb,
                weight,
                bias,
                res_of(b),
                0..oh,
                yb,
                gemm::Parallelism::None,
            );
        }
    }
    y
}

/// Gradients of [`conv_forward`] (without a residual) for `dy` `[B, Cout, OH, OW]`:
/// `(dx, dweight, dbias)`, each computed only when asked for.
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
    if !need_x && !need_w && !need_b {
        return (None, None, None);
    }
    // W^T: element (i, co) of [Cin*k*k, Cout] is weight[co * kdim + i].
    let weight_t = Mat {
        data: weight,
        rs: 1,
        cs: kdim,
    };
    // The input gradient of a k x k convolution with padding p is a convolution of dY with
    // the flipped, transposed kernel and padding k-1-p: the forward kernel again, with no
    // scatter-add of unfolded columns.
    let flipped: Vec<f32> = if need_x && !g.pointwise() {
        let kk = g.k * g.k;
        let mut f = vec![0.0f32; g.cin * g.cout * kk];
        for co in 0..g.cout {
            for ci in 0..g.cin {
                for t in 0..kk {
                    f[(ci * g.cout + co) * kk + (kk - 1 - t)] = weight[(co * g.cin + ci) * kk + t];
                }
            }
        }
        f
    } else {
        Vec::new()
    };
    let back = ConvGeom {
        batch: 1,
        cin: g.cout,
        h: g.oh(),
        w: g.ow(),
        cout: g.cin,
        k: g.k,
        pad: g.k - 1 - g.pad,
    };
    let zero_bias = vec![0.0f32; g.cin];
    // Images start..end, their dx written in place: (their partial dW in column-major order,
    // where gemm runs that product twice as fast as into a row-major destination, and their
    // partial dbias). Every thread works on its own images: nothing serial but the sums of
    // the partials, which are the size of the weights.
    let run = |(start, end): (usize, usize), dx: &mut [f32], par: gemm::Parallelism| {
        let mut dw_cm = if need_w {
            vec![0.0f32; g.cout * kdim]
        } else {
            Vec::new()
        };
        let mut db = vec![0.0f64; if need_b { g.cout } else { 0 }];
        for b in start..end {
            let xb = &x[b * in_len..(b + 1) * in_len];
            let dyb_slice = &dy[b * out_len..(b + 1) * out_len];
            for (acc, d) in db.iter_mut().zip(dyb_slice.chunks(plane)) {
                *acc += lane_sum(d);
            }
            let dyb = Mat {
                data: dyb_slice,
                rs: plane,
                cs: 1,
            };
            if need_w {
                let product = |unfolded: &[f32], dw_cm: &mut [f32]| {
                    // cols^T: element (p, i) of [HW, Cin*k*k] is cols[i * plane + p].
                    let cols_t = Mat {
                        data: unfolded,
                        rs: 1,
                        cs: plane,
                    };
                    matmul(
                        dw_cm,
                        true,
                        true,
                        1.0,
                        dyb,
                        cols_t,
                        (g.cout, kdim, plane),
                        par,
                    );
                };
                if g.pointwise() {
                    product(xb, &mut dw_cm);
                } else {
                    with_scratch(kdim * plane, |cols| {
                        im2col(g, xb, 0..g.oh(), cols);
                        product(cols, &mut dw_cm);
                    });
                }
            }
            if need_x {
                let dxb = &mut dx[(b - start) * in_len..(b - start + 1) * in_len];
                if g.pointwise() {
                    matmul(
                        dxb,
                        false,
                        false,
                        1.0,
                        weight_t,
                        dyb,
                        (kdim, plane, g.cout),
                        par,
                    );
                } else {
                    let (f, zb) = (&flipped, &zero_bias);
                    conv_band(&back, dyb_slice, f, zb, None, 0..g.h, dxb, par);
                }
            }
        }
        (dw_cm, db)
    };
    let parts = chunks(g.batch);
    let mut dx = if need_x {
        par_zeroed(g.batch * in_len)
    } else {
        Vec::new()
    };
    let per = parts.first().map_or(1, |p| p.1 - p.0);
    let mut dx_parts: Vec<&mut [f32]> = if need_x {
        dx.chunks_mut(per * in_len).collect()
    } else {
        parts.iter().map(|_| &mut [][..]).collect()
    };
    let results: Vec<(Vec<f32>, Vec<f64>)> = if parts.len() > 1 {
        parts
            .into_par_iter()
            .zip(dx_parts.into_par_iter())
            .map(|(r, dxs)| run(r, dxs, gemm::Parallelism::None))
            .collect()
    } else {
        let par = parallelism(g.cout.max(kdim), plane.max(kdim), kdim.max(plane));
        parts
            .into_iter()
            .zip(dx_parts.iter_mut())
            .map(|(r, dxs)| run(r, dxs, par))
            .collect()
    };
    let mut dw_cm: Option<Vec<f32>> = None;
    let mut db = vec![0.0f64; if need_b { g.cout } else { 0 }];
    for (part_dw, part_db) in results {
        if need_w {
            match dw_cm.as_mut() {
                None => dw_cm = Some(part_dw),
                Some(acc) => acc.iter_mut().zip(&part_dw).for_each(|(a, p)| *a += p),
            }
        }
        db.iter_mut().zip(&part_db).for_each(|(a, p)| *a += p);
    }
    // Column-major [Cout, Cin*k*k] -> the weight's row-major layout.
    let dw = need_w.then(|| {
        let mut dw = vec![0.0f32; g.cout * kdim];
        if let Some(cm) = dw_cm {
            for co in 0..g.cout {
                for i in 0..kdim {
                    dw[co * kdim + i] = cm[i * g.cout + co];
                }
            }
        }
        dw
    });
    let dbias = need_b.then(|| db.into_iter().map(|v| v as f32).collect());
    (need_x.then_some(dx), dw, dbias)
}

/// `scale * v`, element by element, on all threads: the gradient of the residual (and of the
/// convolution's output) of `y = scale * (conv(x) + r)`.
pub fn scaled(v: &[f32], scale: f32) -> Vec<f32> {
    v.par_iter().map(|&a| scale * a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row-by-row unfolding, the reference for the block-copy one.
    fn im2col_rows(g: &ConvGeom, x: &[f32], rows: core::ops::Range<usize>, cols: &mut [f32]) {
        let ow = g.ow();
        let band = rows.len() * ow;
        for ci in 0..g.cin {
            for kh in 0..g.k {
                for kw in 0..g.k {
                    let row = (ci * g.k + kh) * g.k + kw;
                    for (r, oy) in rows.clone().enumerate() {
                        for ox in 0..ow {
                            let iy = (oy + kh) as isize - g.pad as isize;
                            let ix = (ox + kw) as isize - g.pad as isize;
                            let inside =
                                (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix);
                            cols[row * band + r * ow + ox] = if inside {
                                x[ci * g.h * g.w + iy as usize * g.w + ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn block_copy_unfolding_equals_the_definition() {
        for (h, w, k, pad) in [
            (5, 7, 3, 1),
            (1, 1, 3, 1),
            (2, 9, 3, 1),
            (6, 6, 5, 2),
            (4, 3, 1, 0),
            (1, 1, 5, 2),
            (3, 1, 5, 2),
            (1, 4, 5, 2),
        ] {
            let g = ConvGeom {
                batch: 1,
                cin: 2,
                h,
                w,
                cout: 1,
                k,
                pad,
            };
            let x = crate::rng::gaussian_vec(3, g.in_len());
            for rows in [0..h, 0..h.div_ceil(2), h / 2..h] {
                let n = g.kdim() * rows.len() * g.ow();
                // NaN-filled buffers: every entry must be written.
                let (mut fast, mut slow) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                im2col(&g, &x, rows.clone(), &mut fast);
                im2col_rows(&g, &x, rows.clone(), &mut slow);
                assert_eq!(
                    fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    slow.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "h {h} w {w} k {k} pad {pad} rows {rows:?}"
                );
            }
        }
    }
}
