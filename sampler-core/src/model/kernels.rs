//! CPU kernels for the U-Net's two dominant ops, on plain `f32` slices: the stride-1
//! convolution (3x3 with padding 1, and 1x1) and GroupNorm with an optional fused SiLU,
//! forward and backward. [`super::flex_ops`] plugs them into burn's `flex` backend and its
//! autodiff; see docs/performance.md for why burn-flex's own paths were slow here.
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

/// `n` zeros, written by all threads: one thread zeroing a step's activations before the
/// parallel kernels overwrite them was a twentieth of a training step.
pub(crate) fn par_zeroed(n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()
        .par_chunks_mut(1 << 15)
        .for_each(|c| c.fill(core::mem::MaybeUninit::new(0.0)));
    // SAFETY: all n values were initialized just above.
    unsafe { v.set_len(n) };
    v
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
pub(crate) struct Mat<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

/// `dst (+)= scale * lhs . rhs` for `dst` `[m, n]` in `dst` (row-major, or column-major when
/// `dst_col_major`), `lhs` `[m, k]`, `rhs` `[k, n]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    dst: &mut [f32],
    dst_col_major: bool,
    accumulate: bool,
    scale: f32,
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
    let (dst_rs, dst_cs) = if dst_col_major { (1, m) } else { (n, 1) };
    // SAFETY: every index gemm touches, `i * rs + j * cs` for i, j below the dimensions, is
    // in bounds by the asserts above; `dst` is exclusively borrowed and does not alias the
    // operands (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            scale,
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

std::thread_local! {
    /// Per-thread unfolding buffer, reused across calls: reallocating (and faulting in) a
    /// megabyte per convolution cost more than the copy into it.
    static SCRATCH: core::cell::RefCell<Vec<f32>> = const { core::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer grown to at least `len` values (contents
/// unspecified: callers overwrite what they read).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
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

/// Runs `f` compiled for AVX2 when the CPU has it, so the elementwise loops inlined into it
/// vectorize 8 wide instead of the baseline's 4 (SSE2). The results are the same bits either
/// way: Rust never fuses a multiply and an add, and every reduction here fixes its lane
/// order in the source.
#[inline(always)]
fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// `silu(v) = v * sigmoid(v)` in place.
#[inline(always)]
fn silu_in_place(v: &mut [f32]) {
    for a in v {
        *a *= sigmoid(*a);
    }
}

#[inline(always)]
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
#[inline(always)]
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

/// EDM's 2x resampling with `resample_filter = [1, 1]` on `[planes, H, W]` values: `up`
/// repeats each value over a 2x2 block (nearest), otherwise each 2x2 block is averaged
/// (`H` and `W` even), as `((a + b) / 2 + (c + d) / 2) / 2`: burn's two means, in order.
pub fn resample2(x: &[f32], (h, w): (usize, usize), up: bool) -> Vec<f32> {
    let (oh, ow) = if up { (2 * h, 2 * w) } else { (h / 2, w / 2) };
    let planes = x.len() / (h * w).max(1);
    let mut y = par_zeroed(planes * oh * ow);
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(yp, xp)| {
            for (oy, row) in yp.chunks_mut(ow).enumerate() {
                if up {
                    let src = &xp[(oy / 2) * w..(oy / 2 + 1) * w];
                    for (o, &v) in row.chunks_mut(2).zip(src) {
                        o.fill(v);
                    }
                } else {
                    let (r0, r1) = (&xp[2 * oy * w..], &xp[(2 * oy + 1) * w..]);
                    for (ox, o) in row.iter_mut().enumerate() {
                        let top = (r0[2 * ox] + r0[2 * ox + 1]) * 0.5;
                        let bottom = (r1[2 * ox] + r1[2 * ox + 1]) * 0.5;
                        *o = (top + bottom) * 0.5;
                    }
                }
            }
        });
    y
}

/// Gradient of [`resample2`] for `dy` (of the output's size; `(h, w)` the input's): the sum
/// over each 2x2 block when `up`, otherwise `dy / 4` spread over the block.
pub fn resample2_backward(dy: &[f32], (h, w): (usize, usize), up: bool) -> Vec<f32> {
    let (oh, ow) = if up { (2 * h, 2 * w) } else { (h / 2, w / 2) };
    let planes = dy.len() / (oh * ow).max(1);
    let mut dx = par_zeroed(planes * h * w);
    dx.par_chunks_mut(h * w)
        .zip(dy.par_chunks(oh * ow))
        .for_each(|(dxp, dyp)| {
            if up {
                for (iy, row) in dxp.chunks_mut(w).enumerate() {
                    let (r0, r1) = (&dyp[2 * iy * ow..], &dyp[(2 * iy + 1) * ow..]);
                    for (ix, o) in row.iter_mut().enumerate() {
                        *o = (r0[2 * ix] + r0[2 * ix + 1]) + (r1[2 * ix] + r1[2 * ix + 1]);
                    }
                }
            } else {
                for (iy, row) in dxp.chunks_mut(w).enumerate() {
                    let src = &dyp[(iy / 2) * ow..(iy / 2 + 1) * ow];
                    for (o, &v) in row.chunks_mut(2).zip(src) {
                        o.fill(v * 0.25);
                    }
                }
            }
        });
    dx
}

/// Softmax over the last axis (rows of `n` values), rows in parallel. `exp` is libm's, as in
/// the micro runtime: attention logits are few next to SiLU's inputs, and the two engines
/// stay within 1e-5 of each other on the same network.
pub fn softmax_rows(x: &[f32], n: usize) -> Vec<f32> {
    let mut y = par_zeroed(x.len());
    y.par_chunks_mut(n.max(1))
        .zip(x.par_chunks(n.max(1)))
        .for_each(|(yr, xr)| {
            simd(
                #[inline(always)]
                || {
                    let max = xr.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    for (o, &v) in yr.iter_mut().zip(xr) {
                        *o = libm::expf(v - max);
                    }
                    let inv = (1.0 / lane_sum(yr)) as f32;
                    for o in yr.iter_mut() {
                        *o *= inv;
                    }
                },
            )
        });
    y
}

/// Gradient of [`softmax_rows`] from its output `y`: `dx = y * (dy - sum(dy * y))` per row.
pub fn softmax_rows_backward(y: &[f32], dy: &[f32], n: usize) -> Vec<f32> {
    let mut dx = par_zeroed(y.len());
    dx.par_chunks_mut(n.max(1))
        .zip(y.par_chunks(n.max(1)).zip(dy.par_chunks(n.max(1))))
        .for_each(|(dxr, (yr, dyr))| {
            simd(
                #[inline(always)]
                || {
                    let (_, dot) = sum_and_dot(dyr, yr);
                    let dot = dot as f32;
                    for ((o, &yv), &d) in dxr.iter_mut().zip(yr).zip(dyr) {
                        *o = yv * (d - dot);
                    }
                },
            )
        });
    dx
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
}
