//! The network's operations on slices of the arena, as burn's modules compute them
//! (`model::unet`, `model::network`): convolutions with their resampling (EDM's 2x
//! nearest/box filters), GroupNorm (EDM's groups and epsilon), SiLU, Linear, and
//! single-head self-attention. Sums are accumulated in f32 over bands of [`BAND_ROWS`]
//! rows, so the arena never holds a full-size f32 accumulator.

use alloc::vec::Vec;

use super::arena::{Buf, Ctx, Store, View, disjoint};
use super::weights::{Conv, Lin, Norm};
use crate::config::Resample;
use crate::config::{GROUP_NORM_EPS, SKIP_SCALE as SKIP_SCALE_F64, edm_groups};

/// Rows per band of the f32 accumulators.
const BAND_ROWS: usize = 4;
/// EDM's residual scale, rounded once to the f32 the runtime computes in.
pub(super) const SKIP_SCALE: f32 = SKIP_SCALE_F64 as f32;
/// EDM's GroupNorm epsilon, rounded once to f32.
const NORM_EPS: f32 = GROUP_NORM_EPS as f32;

/// Per-channel `(scale, shift)` of a GroupNorm over `channels` values read by `value(c, i)`
/// (`n` per channel): `y = x * scale + shift` is `(x - mean) / sqrt(var + eps) * gamma + beta`.
fn norm_affine(
    norm: &Norm<'_>,
    n: usize,
    value: impl Fn(usize, usize) -> f32,
    out: &mut [(f32, f32)],
) {
    let c = norm.channels;
    let groups = edm_groups(c);
    let per = c / groups;
    let mut gamma = [0.0f32; 1];
    let mut beta = [0.0f32; 1];
    for g in 0..groups {
        let count = (per * n) as f32;
        let chans = g * per..(g + 1) * per;
        let (mut mean, mut var) = group_moments(&value, chans.clone(), n, count, 1.0);
        let mut unscale = 1.0f32;
        if !(mean.is_finite() && var.is_finite()) {
            // Finite activations whose f32 sums overflow (burn accumulates in f64 and
            // samples such a network): recompute on values scaled below 1 by a power of
            // two, then undo the scale on the mean and the standard deviation.
            let mut amax = 0.0f32;
            for ch in g * per..(g + 1) * per {
                for i in 0..n {
                    amax = amax.max(libm::fabsf(value(ch, i)));
                }
            }
            if amax.is_finite() && amax > 0.0 {
                let exponent = libm::ilogbf(amax) + 1;
                let scale = libm::ldexpf(1.0, -exponent);
                unscale = libm::ldexpf(1.0, exponent);
                (mean, var) = group_moments(&value, chans, n, count, scale);
                mean *= unscale;
            }
        }
        // sqrt(var_true + eps) with var_true = var * unscale^2, kept finite.
        let rstd = 1.0 / (unscale * libm::sqrtf(var + NORM_EPS / (unscale * unscale)));
        for (ch, o) in out.iter_mut().enumerate().skip(g * per).take(per) {
            norm.gamma.read(ch, &mut gamma);
            norm.beta.read(ch, &mut beta);
            let scale = gamma[0] * rstd;
            *o = (scale, beta[0] - mean * scale);
        }
    }
}

/// Mean and variance of `value * scale` over the channels `chans` (`n` values each);
/// `scale` a power of two, so scaling is exact and changes nothing while the sums stay
/// finite. Always inlined, so the common call with `scale = 1.0` multiplies by nothing
/// (a multiply there cost 3-8% of an image's instructions on the M4).
#[inline(always)]
fn group_moments(
    value: &impl Fn(usize, usize) -> f32,
    chans: core::ops::Range<usize>,
    n: usize,
    count: f32,
    scale: f32,
) -> (f32, f32) {
    let mut sum = 0.0f32;
    for ch in chans.clone() {
        for i in 0..n {
            sum += value(ch, i) * scale;
        }
    }
    let mean = sum / count;
    let mut sq = 0.0f32;
    for ch in chans {
        for i in 0..n {
            let d = value(ch, i) * scale - mean;
            sq += d * d;
        }
    }
    (mean, sq / count)
}

#[inline(always)]
pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
}

/// `out = lin(x)` (+ bias), f32 vectors.
pub(super) fn linear(l: &Lin<'_>, x: &[f32], out: &mut [f32], row: &mut [f32]) {
    l.b.read(0, out);
    for (i, &xi) in x.iter().enumerate().take(l.inputs) {
        l.w.read(i * l.outputs, &mut row[..l.outputs]);
        for (o, &w) in out.iter_mut().zip(row.iter()) {
            *o += w * xi;
        }
    }
}

/// The resolution after `r`.
pub(super) fn resampled(res: usize, r: Resample) -> usize {
    match r {
        Resample::None => res,
        Resample::Down => res / 2,
        Resample::Up => res * 2,
    }
}

/// The input of a block's convolution, as rows at the output resolution: channels of up to
/// two stored parts (the decoder's concatenation), each channel through an optional
/// per-channel affine (GroupNorm) and SiLU, then resampled.
pub(super) struct Src<'t> {
    pub(super) parts: [(Buf, usize); 2],
    pub(super) res_in: usize,
    pub(super) resample: Resample,
    pub(super) affine: Option<&'t [(f32, f32)]>,
    pub(super) silu: bool,
}

impl<'t> Src<'t> {
    /// `c` channels of the stored `x` at `res`, as they are.
    pub(super) fn plain(x: Buf, c: usize, res: usize) -> Self {
        Src {
            parts: [(x, c), (x, 0)],
            res_in: res,
            resample: Resample::None,
            affine: None,
            silu: false,
        }
    }

    pub(super) fn res_out(&self) -> usize {
        resampled(self.res_in, self.resample)
    }

    /// Value `i` of channel `c` before resampling, after the affine and SiLU.
    #[inline(always)]
    pub(super) fn at<S: Store>(&self, s: &View<'_, S>, c: usize, i: usize) -> f32 {
        let n = self.res_in * self.res_in;
        let (part, ch) = if c < self.parts[0].1 {
            (self.parts[0].0, c)
        } else {
            (self.parts[1].0, c - self.parts[0].1)
        };
        let mut v = s.get(part.off + ch * n + i).load();
        if let Some(a) = self.affine {
            v = v * a[c].0 + a[c].1;
        }
        if self.silu { silu(v) } else { v }
    }

    /// Row `y` (output resolution) of channel `c` into `out`; zeros outside the image.
    fn row<S: Store>(&self, s: &View<'_, S>, c: usize, y: isize, out: &mut [f32]) {
        let r = self.res_out();
        if y < 0 || y as usize >= r {
            out.iter_mut().for_each(|v| *v = 0.0);
            return;
        }
        let y = y as usize;
        let ri = self.res_in;
        match self.resample {
            Resample::None => {
                for (x, o) in out.iter_mut().enumerate() {
                    *o = self.at(s, c, y * ri + x);
                }
            }
            Resample::Up => {
                for (x, o) in out.iter_mut().enumerate() {
                    *o = self.at(s, c, (y / 2) * ri + x / 2);
                }
            }
            Resample::Down => {
                for (x, o) in out.iter_mut().enumerate() {
                    let i = 2 * y * ri + 2 * x;
                    let top = (self.at(s, c, i) + self.at(s, c, i + 1)) * 0.5;
                    let bottom = (self.at(s, c, i + ri) + self.at(s, c, i + ri + 1)) * 0.5;
                    *o = (top + bottom) * 0.5;
                }
            }
        }
    }
}

/// `acc[co][y - y0][x] += conv(src)[co][y][x]` for the rows `y0 .. y0 + rows` of a k x k
/// convolution (k = 1 or 3, zero padding), weights dequantized a filter at a time.
#[allow(clippy::too_many_arguments)]
fn conv_band<S: Store>(
    conv: &Conv<'_>,
    src: &Src<'_>,
    s: &View<'_, S>,
    y0: usize,
    rows: usize,
    acc: &mut [f32],
    in_rows: &mut [f32],
    filter: &mut [f32],
) {
    let r = src.res_out();
    let k = conv.k;
    let band = rows * r;
    // Input rows carry a zero column on each side (width r + 2), so the 3x3 taps of every
    // output column are in range without edge cases.
    let w2 = r + 2;
    for ci in 0..conv.cin {
        // The input rows y0 - pad .. y0 + rows + pad of channel ci.
        let pad = k / 2;
        for j in 0..rows + 2 * pad {
            let y = y0 as isize + j as isize - pad as isize;
            let row = &mut in_rows[j * w2..(j + 1) * w2];
            row[0] = 0.0;
            row[r + 1] = 0.0;
            src.row(s, ci, y, &mut row[1..r + 1]);
        }
        for co in 0..conv.cout {
            let f = &mut filter[..k * k];
            conv.w.read((co * conv.cin + ci) * k * k, f);
            let out = &mut acc[co * band..(co + 1) * band];
            if k == 3 {
                // All nine taps per output value: one load and store of the sum.
                let w = [f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]];
                for y in 0..rows {
                    let r0 = &in_rows[y * w2..(y + 1) * w2];
                    let r1 = &in_rows[(y + 1) * w2..(y + 2) * w2];
                    let r2 = &in_rows[(y + 2) * w2..(y + 3) * w2];
                    let dst = &mut out[y * r..(y + 1) * r];
                    for (x, d) in dst.iter_mut().enumerate() {
                        *d += w[0] * r0[x]
                            + w[1] * r0[x + 1]
                            + w[2] * r0[x + 2]
                            + w[3] * r1[x]
                            + w[4] * r1[x + 1]
                            + w[5] * r1[x + 2]
                            + w[6] * r2[x]
                            + w[7] * r2[x + 1]
                            + w[8] * r2[x + 2];
                    }
                }
            } else {
                // 1x1: the rows as they are (skipping the zero columns).
                let w = f[0];
                for y in 0..rows {
                    let src_row = &in_rows[y * w2 + 1..y * w2 + 1 + r];
                    let dst = &mut out[y * r..(y + 1) * r];
                    for (d, &v) in dst.iter_mut().zip(src_row) {
                        *d += w * v;
                    }
                }
            }
        }
    }
}

/// Where [`run_conv`] writes: a stored activation or an f32 buffer.
#[derive(Clone, Copy)]
pub(super) enum Dst {
    Stored(Buf),
    F32(Buf),
}

/// `dst = scale * (sum of terms + add[co])` at the output resolution of the terms' sources,
/// accumulated in f32 a band of rows at a time. A term is a convolution (with its bias) of
/// a source, or the source itself (an identity residual).
pub(super) fn run_conv<S: Store>(
    ctx: &mut Ctx<'_, S>,
    terms: &[(Option<&Conv<'_>>, &Src<'_>)],
    cout: usize,
    add: Option<Buf>,
    scale: f32,
    dst: Dst,
) {
    let r = terms[0].1.res_out();
    let rows = BAND_ROWS.min(r);
    let mark = ctx.f.mark();
    let acc = ctx.f.alloc(cout * rows * r);
    let in_rows = ctx.f.alloc((rows + 2) * (r + 2));
    let filter = ctx.f.alloc(9);
    let bias = ctx.f.alloc(cout);
    if !ctx.dry {
        let n = r * r;
        let dummy = Buf { off: 0, len: 0 };
        let (add_buf, out_f) = (
            add.unwrap_or(dummy),
            match dst {
                Dst::F32(b) => b,
                Dst::Stored(_) => Buf {
                    off: bias.off + bias.len,
                    len: 0,
                },
            },
        );
        let [acc, in_rows, filter, bias_v, addv, out_f] = disjoint(
            &mut *ctx.f.data,
            [acc, in_rows, filter, bias, add_buf, out_f],
        );
        let sdata = &mut *ctx.s.data;
        let (view, out_s): (View<'_, S>, &mut [S]) = match dst {
            Dst::Stored(b) => View::around(sdata, b),
            Dst::F32(_) => (View::whole(sdata), &mut []),
        };
        let mut y0 = 0;
        while y0 < r {
            let rows_here = rows.min(r - y0);
            let band = rows_here * r;
            acc[..cout * band].iter_mut().for_each(|v| *v = 0.0);
            for (conv, src) in terms {
                match conv {
                    Some(cv) => {
                        cv.b.read(0, bias_v);
                        for co in 0..cout {
                            acc[co * band..(co + 1) * band]
                                .iter_mut()
                                .for_each(|v| *v += bias_v[co]);
                        }
                        conv_band(cv, src, &view, y0, rows_here, acc, in_rows, filter);
                    }
                    None => {
                        for co in 0..cout {
                            for y in 0..rows_here {
                                let row = &mut in_rows[..r];
                                src.row(&view, co, (y0 + y) as isize, row);
                                let a = &mut acc[co * band + y * r..co * band + (y + 1) * r];
                                a.iter_mut().zip(row.iter()).for_each(|(a, v)| *a += v);
                            }
                        }
                    }
                }
            }
            for co in 0..cout {
                let extra = if add.is_some() { addv[co] } else { 0.0 };
                let a = &acc[co * band..(co + 1) * band];
                let at = co * n + y0 * r;
                match dst {
                    Dst::Stored(_) => {
                        for (o, &v) in out_s[at..at + band].iter_mut().zip(a) {
                            *o = S::save((v + extra) * scale);
                        }
                    }
                    Dst::F32(_) => {
                        for (o, &v) in out_f[at..at + band].iter_mut().zip(a) {
                            *o = (v + extra) * scale;
                        }
                    }
                }
            }
            y0 += rows_here;
        }
    }
    ctx.f.release(mark);
}

/// The per-channel affine of `norm` over the channels of `src` (before resampling), into the
/// f32 buffer `aff` (`2 C` values: scale, shift).
pub(super) fn stats<S: Store>(ctx: &mut Ctx<'_, S>, norm: &Norm<'_>, src: &Src<'_>, aff: Buf) {
    if ctx.dry {
        return;
    }
    let n = src.res_in * src.res_in;
    let view = View::whole(&*ctx.s.data);
    let mut pairs: Vec<(f32, f32)> = alloc::vec![(0.0, 0.0); norm.channels];
    norm_affine(norm, n, |c, i| src.at(&view, c, i), &mut pairs);
    let out = &mut ctx.f.data[aff.off..aff.off + aff.len];
    for (c, (a, b)) in pairs.into_iter().enumerate() {
        out[2 * c] = a;
        out[2 * c + 1] = b;
    }
}

/// The (scale, shift) pairs of an affine buffer, copied out of the arena (None in a dry
/// run). A block holds at most two of these at a time, `C` pairs each.
pub(super) fn affine_pairs<S: Store>(ctx: &Ctx<'_, S>, aff: Buf) -> Option<Vec<(f32, f32)>> {
    (!ctx.dry).then(|| {
        ctx.f.data[aff.off..aff.off + aff.len]
            .chunks_exact(2)
            .map(|p| (p[0], p[1]))
            .collect()
    })
}

/// Single-head self-attention on the stored `x` (`C` channels, `res x res`), in place:
/// `x <- (proj(v softmax(q^T k / sqrt C)) + x) / sqrt 2` with `q, k, v` interleaved in the
/// `qkv` output as SongUNet's reshape takes them (channel `3c + {0, 1, 2}`). Query `i` only
/// reads column `i` of `x` through `qkv`, computed beforehand, so column `i` is updated
/// as soon as it is done.
pub(super) fn attention<S: Store>(
    ctx: &mut Ctx<'_, S>,
    norm2: &Norm<'_>,
    qkv: &Conv<'_>,
    proj: &Conv<'_>,
    x: Buf,
    c: usize,
    res: usize,
) {
    let (fmark, smark) = (ctx.f.mark(), ctx.s.mark());
    let n = res * res;
    let mut src = Src::plain(x, c, res);
    let aff = ctx.f.alloc(2 * c);
    stats(ctx, norm2, &src, aff);
    let pairs = affine_pairs(ctx, aff);
    src.affine = pairs.as_deref();
    let qkv_buf = ctx.s.alloc(3 * c * n);
    run_conv(
        ctx,
        &[(Some(qkv), &src)],
        3 * c,
        None,
        1.0,
        Dst::Stored(qkv_buf),
    );
    drop(pairs);
    let logits = ctx.f.alloc(n);
    let q = ctx.f.alloc(c);
    let a = ctx.f.alloc(c);
    let wrow = ctx.f.alloc(c);
    let bias = ctx.f.alloc(c);
    if !ctx.dry {
        let [logits, q, a, wrow, bias] = disjoint(&mut *ctx.f.data, [logits, q, a, wrow, bias]);
        let (lo, hi) = ctx.s.data.split_at_mut(qkv_buf.off);
        let xs = &mut lo[x.off..x.off + x.len];
        let t = &hi[..qkv_buf.len];
        let sqrt_c = libm::sqrt(c as f64) as f32;
        proj.b.read(0, bias);
        for i in 0..n {
            for (ch, qv) in q.iter_mut().enumerate() {
                *qv = t[3 * ch * n + i].load();
            }
            let mut max = f32::NEG_INFINITY;
            for (j, l) in logits.iter_mut().enumerate() {
                let mut dot = 0.0f32;
                for (ch, &qv) in q.iter().enumerate() {
                    dot += qv * t[(3 * ch + 1) * n + j].load();
                }
                *l = dot / sqrt_c;
                max = max.max(*l);
            }
            let mut sum = 0.0f32;
            for l in logits.iter_mut() {
                *l = libm::expf(*l - max);
                sum += *l;
            }
            for (ch, av) in a.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for (j, &w) in logits.iter().enumerate() {
                    acc += t[(3 * ch + 2) * n + j].load() * w;
                }
                *av = acc / sum;
            }
            for co in 0..c {
                proj.w.read(co * c, wrow);
                let mut o = bias[co];
                for (w, av) in wrow.iter().zip(a.iter()) {
                    o += w * av;
                }
                let xv = &mut xs[co * n + i];
                *xv = S::save((o + xv.load()) * SKIP_SCALE);
            }
        }
    }
    ctx.f.release(fmark);
    ctx.s.release(smark);
}
