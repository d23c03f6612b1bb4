//! The network's operations on slices of the arena, as burn's modules compute them
//! (`model::unet`, `model::network`): convolutions with their resampling (EDM's 2x
//! nearest/box filters), GroupNorm (EDM's groups and epsilon), SiLU, Linear, and
//! single-head self-attention. Sums are accumulated in f32 over bands of [`BAND_ROWS`]
//! rows, so the arena never holds a full-size f32 accumulator.

use alloc::vec::Vec;

use super::arena::{Buf, Ctx, Store, View, disjoint, units};
use super::int;
use super::source::residual_row;
pub(super) use super::source::{Dst, SKIP_SCALE, Src, resampled, silu};
use super::weights::{Conv, Lin, Norm};
use crate::config::{GROUP_NORM_EPS, edm_groups};

/// Rows per band of the f32 accumulators.
const BAND_ROWS: usize = 4;
/// EDM's GroupNorm epsilon, rounded once to f32.
const NORM_EPS: f32 = GROUP_NORM_EPS as f32;

/// Per-channel `(scale, shift)` of a GroupNorm over `channels` maps of `res x res` values,
/// whose rows `rows(c, y, out)` loads: `y = x * scale + shift` is
/// `(x - mean) / sqrt(var + eps) * gamma + beta`. Returns an upper bound of `|y|` over every
/// value (from each channel's extremes), which the integer path scales its inputs by, and
/// the same of the source's own values (infinite on the float paths, which track none).
/// `int_rows`: on the integer path, the source whose stored rows the moments read in place
/// (int8 rows as integer sums), with each channel's bounds.
fn norm_affine<S: Store>(
    norm: &Norm<'_>,
    res: usize,
    rows: impl Fn(usize, usize, &mut [f32]),
    int_rows: Option<(&Src<'_>, &View<'_, S>)>,
    row: &mut [f32],
    out: &mut [f32],
) -> (f32, f32) {
    let c = norm.channels;
    let groups = edm_groups(c);
    let per = c / groups;
    let mut gamma = [0.0f32; MAX_GROUP_CHANNELS];
    let mut beta = [0.0f32; MAX_GROUP_CHANNELS];
    let (mut bound, mut raw) = (0.0f32, 0.0f32);
    for g in 0..groups {
        let count = (per * res * res) as f32;
        let chans = g * per..(g + 1) * per;
        // Each channel's bound of `|value|` (the float paths track none: infinite).
        let mut amax = [if int_rows.is_some() {
            0.0
        } else {
            f32::INFINITY
        }; MAX_GROUP_CHANNELS];
        let seen = |ch: usize, m: f32, amax: &mut [f32]| {
            let k = (ch - g * per) % MAX_GROUP_CHANNELS;
            amax[k] = super::arena::bound_max(amax[k], m);
        };
        let (mut mean, mut var) = match int_rows {
            Some((src, view)) if S::INTEGER => {
                super::int::group_moments(src, view, chans.clone(), count, |ch, m| {
                    seen(ch, m, &mut amax)
                })
            }
            Some((src, view)) => {
                super::int::group_moments_f32(src, view, chans.clone(), count, |ch, m| {
                    seen(ch, m, &mut amax)
                })
            }
            // The float paths need no bound: their first pass only sums.
            None => group_moments(&rows, row, chans.clone(), res, count, 1.0),
        };
        let mut unscale = 1.0f32;
        if !(mean.is_finite() && var.is_finite()) {
            // Finite activations whose f32 sums overflow (burn accumulates in f64 and
            // samples such a network): recompute on values scaled below 1 by a power of
            // two, then undo the scale on the mean and the standard deviation.
            let mut amax = 0.0f32;
            for ch in chans.clone() {
                for y in 0..res {
                    rows(ch, y, row);
                    amax = amax.max(super::arena::abs_max(&row[..res]));
                }
            }
            if amax.is_finite() && amax > 0.0 {
                let exponent = libm::ilogbf(amax) + 1;
                let scale = libm::ldexpf(1.0, -exponent);
                unscale = libm::ldexpf(1.0, exponent);
                (mean, var) = group_moments(&rows, row, chans, res, count, scale);
                mean *= unscale;
            }
        }
        // sqrt(var_true + eps) with var_true = var * unscale^2, kept finite.
        let rstd = 1.0 / (unscale * libm::sqrtf(var + NORM_EPS / (unscale * unscale)));
        for (ch, o) in out.chunks_exact_mut(2).enumerate().skip(g * per).take(per) {
            let k = (ch - g * per) % MAX_GROUP_CHANNELS;
            if k == 0 {
                // Up to a slot-full of the group's parameters a read (each read dispatches
                // on the stored type: per channel it cost ~60 instructions on the M4).
                let n = (g * per + per - ch).min(MAX_GROUP_CHANNELS);
                norm.gamma.read(ch, &mut gamma[..n]);
                norm.beta.read(ch, &mut beta[..n]);
            }
            let scale = gamma[k] * rstd;
            let shift = beta[k] - mean * scale;
            o[0] = scale;
            o[1] = shift;
            // The larger end of `[-m, m]` through the affine, `|scale| m + |shift|` (the
            // same rounding as the end where the signs agree).
            let end = libm::fabsf(scale) * amax[k] + libm::fabsf(shift);
            bound = super::arena::bound_max(bound, end);
            raw = super::arena::bound_max(raw, amax[k]);
        }
    }
    (bound, raw)
}

/// Channels per GroupNorm group whose extremes are tracked one by one (EDM's groups hold
/// at most 4 channels at the widths the runtime accepts; wider groups share slots, which
/// only loosens the bound).
const MAX_GROUP_CHANNELS: usize = 8;

/// Mean and variance of `value * scale` over the channels `chans` (`res` rows of `res`
/// values each, loaded by `rows` into `row`); `scale` a power of two, so scaling is exact
/// and changes nothing while the sums stay finite. Always inlined, so the common call with `scale = 1.0` multiplies by nothing
/// (a multiply there cost 3-8% of an image's instructions on the M4).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn group_moments(
    rows: &impl Fn(usize, usize, &mut [f32]),
    row: &mut [f32],
    chans: core::ops::Range<usize>,
    res: usize,
    count: f32,
    scale: f32,
) -> (f32, f32) {
    let row = &mut row[..res];
    let mut sum = 0.0f32;
    for ch in chans.clone() {
        for y in 0..res {
            rows(ch, y, row);
            for &v in row.iter() {
                sum += v * scale;
            }
        }
    }
    let mean = sum / count;
    let mut sq = 0.0f32;
    for ch in chans {
        for y in 0..res {
            rows(ch, y, row);
            for &v in row.iter() {
                let d = v * scale - mean;
                sq += d * d;
            }
        }
    }
    (mean, sq / count)
}

/// `out = lin(x)` (+ bias), f32 vectors; `row` holds at least one row of the weight, and
/// as many as fit are read at a time (a read dispatches on the stored type: ~100
/// instructions on the M4, for digits8's 8-value rows).
pub(super) fn linear(l: &Lin<'_>, x: &[f32], out: &mut [f32], row: &mut [f32]) {
    l.b.read(0, out);
    let n = l.outputs;
    if let Some(w) = l.w.int8_columns().filter(|w| w.columns == n) {
        // int8 weights: each output's sum of stored values times inputs, scaled once (a
        // read dequantizing each value cost ~17 instructions a weight on the M4, this ~6).
        let x = &x[..l.inputs.min(x.len()).min(w.values.len() / n)];
        for (o, out) in out[..n].iter_mut().enumerate() {
            let mut sum = 0.0f32;
            for (i, &xi) in x.iter().enumerate() {
                sum += w.values[i * n + o] as i8 as f32 * xi;
            }
            *out += sum * w.scale(o);
        }
        return;
    }
    let per = (row.len() / n.max(1)).max(1);
    let x = &x[..l.inputs.min(x.len())];
    for (c, xs) in x.chunks(per).enumerate() {
        let rows = &mut row[..xs.len() * n];
        l.w.read(c * per * n, rows);
        for (&xi, w) in xs.iter().zip(rows.chunks_exact(n)) {
            for (o, &w) in out.iter_mut().zip(w) {
                *o += w * xi;
            }
        }
    }
}

/// f32 values of the row buffer [`linear`] gets in a block: several rows of a small weight
/// a read.
pub(super) const LINEAR_ROW: usize = 64;

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
    tmp: &mut [f32],
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
            src.row(s, ci, y, &mut row[1..r + 1], tmp);
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

/// `dst = scale * (sum of terms + add[co])` at the output resolution of the terms' sources,
/// accumulated in f32 a band of rows at a time. A term is a convolution (with its bias) of
/// a source, or the source itself (an identity residual). On integer storage with int8
/// weights the convolutions run as integer dot products instead (`super::int`).
pub(super) fn run_conv<S: Store>(
    ctx: &mut Ctx<'_, S>,
    terms: &[(Option<&Conv<'_>>, &Src<'_>)],
    cout: usize,
    add: Option<Buf>,
    scale: f32,
    dst: Dst,
) {
    if S::INT_CONVS && int::runs(terms) {
        return int::run_conv(ctx, terms, cout, add, scale, dst);
    }
    let r = terms[0].1.res_out();
    let rows = BAND_ROWS.min(r);
    let mark = ctx.f.mark();
    let acc = ctx.f.alloc(cout * rows * r);
    let in_rows = ctx.f.alloc((rows + 2) * (r + 2));
    let filter = ctx.f.alloc(9);
    let bias = ctx.f.alloc(cout);
    let tmp = ctx
        .f
        .alloc(2 * terms.iter().map(|t| t.1.res_in).max().unwrap_or(0));
    if !ctx.dry {
        let dummy = Buf { off: 0, len: 0 };
        let (add_buf, out_f) = (
            add.unwrap_or(dummy),
            match dst {
                Dst::F32(b) => b,
                Dst::Stored(_) => Buf {
                    off: tmp.off + tmp.len,
                    len: 0,
                },
            },
        );
        let [acc, in_rows, filter, bias_v, addv, out_f, tmp] = disjoint(
            &mut *ctx.f.data,
            [acc, in_rows, filter, bias, add_buf, out_f, tmp],
        );
        let sdata = &mut *ctx.s.data;
        let (view, out_s): (View<'_, S>, &mut [S]) = match dst {
            Dst::Stored(b) => View::around(sdata, b),
            Dst::F32(_) => (View::whole(sdata), &mut []),
        };
        let units = S::row_units(r);
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
                        conv_band(cv, src, &view, y0, rows_here, acc, in_rows, filter, tmp);
                    }
                    None => {
                        for co in 0..cout {
                            for y in 0..rows_here {
                                let row = &mut in_rows[..r];
                                src.row(&view, co, (y0 + y) as isize, row, tmp);
                                let a = &mut acc[co * band + y * r..co * band + (y + 1) * r];
                                a.iter_mut().zip(row.iter()).for_each(|(a, v)| *a += v);
                            }
                        }
                    }
                }
            }
            for co in 0..cout {
                let extra = if add.is_some() { addv[co] } else { 0.0 };
                for y in 0..rows_here {
                    let a = &mut acc[co * band + y * r..co * band + (y + 1) * r];
                    a.iter_mut().for_each(|v| *v = (*v + extra) * scale);
                    let row = co * r + y0 + y;
                    match dst {
                        Dst::Stored(_) => {
                            S::save_row(a, &mut out_s[row * units..(row + 1) * units])
                        }
                        Dst::F32(_) => out_f[row * r..(row + 1) * r].copy_from_slice(a),
                    }
                }
            }
            y0 += rows_here;
        }
    }
    ctx.f.release(mark);
}

/// The per-channel affine of `norm` over the channels of `src` (before resampling), into the
/// f32 buffer `aff` (`2 C + 2` values: scale and shift per channel, then an upper bound of
/// the affine's `|output|` and one of the source's `|value|`).
pub(super) fn stats<S: Store>(ctx: &mut Ctx<'_, S>, norm: &Norm<'_>, src: &Src<'_>, aff: Buf) {
    let mark = ctx.f.mark();
    let row = ctx.f.alloc(src.res_in);
    if !ctx.dry {
        let view = View::whole(&*ctx.s.data);
        let [row, out] = disjoint(&mut *ctx.f.data, [row, aff]);
        let (pairs, bounds) = out.split_at_mut(2 * norm.channels);
        let (bound, raw) = norm_affine(
            norm,
            src.res_in,
            |c, y, out| S::load_row(src.stored(&view, c, y), &mut out[..src.res_in]),
            S::INT_CONVS.then_some((src, &view)),
            row,
            pairs,
        );
        bounds[0] = bound;
        bounds[1] = raw;
    }
    ctx.f.release(mark);
}

/// The f32 values an affine buffer of `channels` needs (see [`stats`]).
pub(super) fn affine_len(channels: usize) -> usize {
    2 * channels + 2
}

/// The bound of the normalized source's own values in an affine buffer (None in a dry
/// run): on the integer path what a convolution reading the source without the affine
/// (a block's skip) scales its inputs by, without a pass over the values of its own.
pub(super) fn source_bound_of<S: Store>(ctx: &Ctx<'_, S>, aff: Buf) -> Option<f32> {
    (!ctx.dry).then(|| ctx.f.data[aff.off + aff.len - 1])
}

/// The (scale, shift) pairs of an affine buffer and its bound, copied out of the arena (None
/// in a dry run). A block holds at most two of these at a time, `C` pairs each.
pub(super) fn affine_pairs<S: Store>(ctx: &Ctx<'_, S>, aff: Buf) -> Option<(Vec<(f32, f32)>, f32)> {
    (!ctx.dry).then(|| {
        let v = &ctx.f.data[aff.off..aff.off + aff.len];
        let (pairs, bound) = v.split_at(aff.len - 2);
        (
            pairs.chunks_exact(2).map(|p| (p[0], p[1])).collect(),
            bound[0],
        )
    })
}

/// Single-head self-attention on the stored `x` (`C` channels, `res x res`), in place:
/// `x <- (proj(v softmax(q^T k / sqrt C)) + x) / sqrt 2` with `q, k, v` interleaved in the
/// `qkv` output as SongUNet's reshape takes them (channel `3c + {0, 1, 2}`). Query `i` only
/// reads column `i` of `x` through `qkv`, computed beforehand, so a row of `x` is updated
/// as soon as its queries are done. On integer storage with int8 weights the products run
/// as integer dot products (`super::int`).
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
    let aff = ctx.f.alloc(affine_len(c));
    stats(ctx, norm2, &src, aff);
    let pairs = affine_pairs(ctx, aff);
    src.set_affine(pairs.as_ref());
    let qkv_buf = ctx.s.alloc(units::<S>(3 * c, res));
    run_conv(
        ctx,
        &[(Some(qkv), &src)],
        3 * c,
        None,
        1.0,
        Dst::Stored(qkv_buf),
    );
    drop(pairs);
    if S::INT_CONVS && int::attention_runs(proj, c) {
        int::attention_core(ctx, proj, x, qkv_buf, c, res);
        ctx.f.release(fmark);
        ctx.s.release(smark);
        return;
    }
    let logits = ctx.f.alloc(n);
    let q = ctx.f.alloc(c);
    let a = ctx.f.alloc(c);
    let wrow = ctx.f.alloc(c);
    let bias = ctx.f.alloc(c);
    let row = ctx.f.alloc(res);
    let outs = ctx.f.alloc(c * res);
    if !ctx.dry {
        let [logits, q, a, wrow, bias, row, outs] =
            disjoint(&mut *ctx.f.data, [logits, q, a, wrow, bias, row, outs]);
        let (lo, hi) = ctx.s.data.split_at_mut(qkv_buf.off);
        let units = S::row_units(res);
        let xs = &mut lo[x.off..x.off + x.len];
        let t = &hi[..qkv_buf.len];
        // Row `y` of channel `ch` of qkv.
        let t_row = |ch: usize, y: usize| &t[(ch * res + y) * units..(ch * res + y + 1) * units];
        let sqrt_c = libm::sqrt(c as f64) as f32;
        proj.b.read(0, bias);
        for qy in 0..res {
            for qx in 0..res {
                for (ch, qv) in q.iter_mut().enumerate() {
                    *qv = S::at(t_row(3 * ch, qy), qx);
                }
                // logits[j] = sum over channels of q k[j], in channel order.
                logits.iter_mut().for_each(|l| *l = 0.0);
                for (ch, &qv) in q.iter().enumerate() {
                    for y in 0..res {
                        S::load_row(t_row(3 * ch + 1, y), row);
                        for (l, &kv) in logits[y * res..(y + 1) * res].iter_mut().zip(row.iter()) {
                            *l += qv * kv;
                        }
                    }
                }
                let mut max = f32::NEG_INFINITY;
                for l in logits.iter_mut() {
                    *l /= sqrt_c;
                    max = max.max(*l);
                }
                let mut sum = 0.0f32;
                for l in logits.iter_mut() {
                    *l = libm::expf(*l - max);
                    sum += *l;
                }
                for (ch, av) in a.iter_mut().enumerate() {
                    let mut acc = 0.0f32;
                    for y in 0..res {
                        S::load_row(t_row(3 * ch + 2, y), row);
                        for (&v, &w) in row.iter().zip(&logits[y * res..(y + 1) * res]) {
                            acc += v * w;
                        }
                    }
                    *av = acc / sum;
                }
                for co in 0..c {
                    proj.w.read(co * c, wrow);
                    let mut o = bias[co];
                    for (w, av) in wrow.iter().zip(a.iter()) {
                        o += w * av;
                    }
                    outs[co * res + qx] = o;
                }
            }
            residual_row(xs, outs, c, res, qy, row);
        }
    }
    ctx.f.release(fmark);
    ctx.s.release(smark);
}
