//! The raw network F on the arena: EDM's noise/label embedding, the residual MLP
//! (`model::mlp`) and the U-Net (`model::unet`'s `SongUNet`, walked through the same
//! [`UNetConfig::topology`](crate::config::UNetConfig::topology) as burn's module), built
//! from the slice operations of `super::ops`.

use alloc::vec::Vec;

use super::arena::{Buf, Ctx, Store, disjoint, units};
use super::ops::{
    Dst, LINEAR_ROW, SKIP_SCALE, Src, affine_len, affine_pairs, attention, linear, resampled,
    run_conv, silu, source_bound_of, stats,
};
use super::weights::{Block, Embedding, Mlp, Net, UNet};

impl Net<'_> {
    /// `out = F(c_in x, c_noise)` (f32 buffers of the scratch pool), conditioned on `label`.
    pub(super) fn forward<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        x: Buf,
        c_in: f32,
        c_noise: f32,
        label: Option<usize>,
        out: Buf,
    ) {
        let embedding = match self {
            Net::UNet(n) => &n.embedding,
            Net::Mlp(n) => &n.embedding,
        };
        let mark = ctx.f.mark();
        let emb = ctx.f.alloc(embedding.channels);
        embedding.forward(ctx, c_noise, label, emb);
        match self {
            Net::UNet(n) => n.forward(ctx, x, c_in, emb, out),
            Net::Mlp(n) => n.forward(ctx, x, c_in, emb, out),
        }
        ctx.f.release(mark);
    }
}

impl Embedding<'_> {
    /// EDM's noise/label mapping into `emb` (f32):
    /// `silu(map_layer1(silu(map_layer0(pos(c_noise) + map_label(y)))))`, `map_layer1`
    /// absent for the MLP.
    fn forward<S: Store>(
        &self,
        ctx: &mut Ctx<'_, S>,
        c_noise: f32,
        label: Option<usize>,
        emb: Buf,
    ) {
        let noise_channels = self.noise_channels;
        let mark = ctx.f.mark();
        let pos = ctx.f.alloc(noise_channels);
        let row = ctx.f.alloc(noise_channels.max(emb.len));
        let mid = ctx.f.alloc(emb.len);
        if !ctx.dry {
            let [e, p, r, m] = disjoint(&mut *ctx.f.data, [emb, pos, row, mid]);
            // EDM's PositionalEmbedding (endpoint) then SongUNet's flip: [sin | cos].
            let half = noise_channels / 2;
            for (i, &f) in self.freqs.iter().enumerate().take(half) {
                let a = c_noise * f;
                p[i] = libm::sinf(a);
                p[half + i] = libm::cosf(a);
            }
            if let (Some(ml), Some(y)) = (&self.map_label, label) {
                // One-hot y scaled by sqrt(L): row y of the weight, times sqrt(L), plus bias.
                let scale = libm::sqrt(ml.inputs as f64) as f32;
                ml.w.read(y * ml.outputs, &mut r[..ml.outputs]);
                let mut b = [0.0f32; 1];
                for (k, pv) in p.iter_mut().enumerate() {
                    ml.b.read(k, &mut b);
                    *pv += r[k] * scale + b[0];
                }
            }
            match &self.map_layer1 {
                Some(l1) => {
                    linear(&self.map_layer0, p, m, r);
                    m.iter_mut().for_each(|v| *v = silu(*v));
                    linear(l1, m, e, r);
                }
                None => linear(&self.map_layer0, p, e, r),
            }
            e.iter_mut().for_each(|v| *v = silu(*v));
        }
        ctx.f.release(mark);
    }
}

impl Mlp<'_> {
    /// `out = output(silu(h))` after the blocks `h <- h + W silu(h)` from
    /// `h = input(c_in x) + emb` (`emb` is overwritten with `h`).
    fn forward<S: Store>(&self, ctx: &mut Ctx<'_, S>, x: Buf, c_in: f32, emb: Buf, out: Buf) {
        let c = &self.config;
        let mark = ctx.f.mark();
        let inp = ctx.f.alloc(x.len);
        if !ctx.dry {
            let [xs, is] = disjoint(&mut *ctx.f.data, [x, inp]);
            is.iter_mut()
                .zip(xs.iter())
                .for_each(|(o, &v)| *o = v * c_in);
        }
        let t = ctx.f.alloc(c.hidden);
        let u = ctx.f.alloc(c.hidden);
        let row = ctx.f.alloc(c.hidden.max(c.dim));
        if !ctx.dry {
            let [x, hv, tv, uv, rv, ov] = disjoint(&mut *ctx.f.data, [inp, emb, t, u, row, out]);
            // h = input(x) + emb; h <- h + W silu(h); out = output(silu(h)).
            linear(&self.input, x, tv, rv);
            hv.iter_mut().zip(tv.iter()).for_each(|(a, b)| *a += b);
            for blk in &self.blocks {
                tv.iter_mut()
                    .zip(hv.iter())
                    .for_each(|(a, b)| *a = silu(*b));
                linear(blk, tv, uv, rv);
                hv.iter_mut().zip(uv.iter()).for_each(|(a, b)| *a += b);
            }
            tv.iter_mut()
                .zip(hv.iter())
                .for_each(|(a, b)| *a = silu(*b));
            linear(&self.output, tv, ov, rv);
        }
        ctx.f.release(mark);
    }
}

/// A stored activation with its channels and resolution.
#[derive(Clone, Copy)]
struct Act {
    buf: Buf,
    channels: usize,
    res: usize,
}

impl UNet<'_> {
    /// `out = F(c_in x)` given the embedding `emb` of the noise level and label.
    fn forward<S: Store>(&self, ctx: &mut Ctx<'_, S>, x: Buf, c_in: f32, emb: Buf, out: Buf) {
        let c = &self.config;
        let (fmark, smark) = (ctx.f.mark(), ctx.s.mark());
        let r = c.img_resolution;
        // 1. The network input as a stored activation, so conv_in reads it like any other.
        let x_in = ctx.s.alloc(units::<S>(c.in_channels, r));
        let scaled = ctx.f.alloc(r);
        if !ctx.dry {
            let [src, scaled] = disjoint(&mut *ctx.f.data, [x, scaled]);
            let stored = &mut ctx.s.data[x_in.off..x_in.off + x_in.len];
            for (row, out) in src
                .chunks_exact(r)
                .zip(stored.chunks_exact_mut(S::row_units(r)))
            {
                scaled.iter_mut().zip(row).for_each(|(o, &v)| *o = v * c_in);
                S::save_row(scaled, out);
            }
        }
        let first = Act {
            buf: ctx.s.alloc(units::<S>(c.model_channels, r)),
            channels: c.model_channels,
            res: r,
        };
        run_conv(
            ctx,
            &[(Some(&self.conv_in), &Src::plain(x_in, c.in_channels, r))],
            c.model_channels,
            None,
            1.0,
            Dst::Stored(first.buf),
        );
        // 2. Encoder: every output stays as a skip connection.
        let mut skips: Vec<Act> = alloc::vec![first];
        let mut x = first;
        for b in &self.enc {
            let res = resampled(x.res, b.resample);
            let o = Act {
                buf: ctx.s.alloc(units::<S>(b.cout, res)),
                channels: b.cout,
                res,
            };
            block(ctx, b, [(x.buf, x.channels), (x.buf, 0)], x.res, emb, o.buf);
            skips.push(o);
            x = o;
        }
        // 3. Decoder: after each block the inputs that died (a consumed skip, a previous
        // output) are reclaimed by moving the output down over them.
        for b in &self.dec {
            let x_is_skip = skips.last().is_some_and(|s| s.buf.off == x.buf.off);
            let (parts, dead_from) = match (b.takes_skip, skips.last().copied()) {
                (true, Some(s)) if !x_is_skip => {
                    skips.pop();
                    ([(x.buf, x.channels), (s.buf, s.channels)], Some(s.buf.off))
                }
                _ => (
                    [(x.buf, x.channels), (x.buf, 0)],
                    (!x_is_skip).then_some(x.buf.off),
                ),
            };
            let res = resampled(x.res, b.resample);
            let mut o = Act {
                buf: ctx.s.alloc(units::<S>(b.cout, res)),
                channels: b.cout,
                res,
            };
            block(ctx, b, parts, x.res, emb, o.buf);
            if let Some(off) = dead_from {
                if !ctx.dry {
                    ctx.s
                        .data
                        .copy_within(o.buf.off..o.buf.off + o.buf.len, off);
                }
                o.buf.off = off;
                ctx.s.release(off + o.buf.len);
            }
            x = o;
        }
        // 4. Output head: conv(silu(GroupNorm(x))) into the f32 output.
        let aff = ctx.f.alloc(affine_len(x.channels));
        let mut src = Src::plain(x.buf, x.channels, x.res);
        stats(ctx, &self.aux_norm, &src, aff);
        let pairs = affine_pairs(ctx, aff);
        src.set_affine(pairs.as_ref());
        src.silu = true;
        run_conv(
            ctx,
            &[(Some(&self.aux_conv), &src)],
            c.out_channels,
            None,
            1.0,
            Dst::F32(out),
        );
        ctx.f.release(fmark);
        ctx.s.release(smark);
    }
}

/// One `UNetBlock` (model::unet) from the stored input `parts` (concatenated channels) at
/// `res_in` into the stored `out`, as burn computes it:
/// `h = conv0(resample(silu(norm0(x)))) + affine(emb)`, `h = conv1(silu(norm1(h)))`,
/// `out = (h + skip(resample(x))) / sqrt 2`, then attention when the block has it.
fn block<S: Store>(
    ctx: &mut Ctx<'_, S>,
    b: &Block<'_>,
    parts: [(Buf, usize); 2],
    res_in: usize,
    emb: Buf,
    out: Buf,
) {
    let (fmark, smark) = (ctx.f.mark(), ctx.s.mark());
    let res = resampled(res_in, b.resample);
    // 1. GroupNorm statistics of the input, the embedding's projection.
    let mut src_in = Src {
        parts,
        res_in,
        resample: b.resample,
        affine: None,
        affine_bound: 0.0,
        stored_bound: None,
        silu: false,
    };
    let aff0 = ctx.f.alloc(affine_len(b.cin));
    stats(ctx, &b.norm0, &src_in, aff0);
    let add = ctx.f.alloc(b.cout);
    let row = ctx.f.alloc(b.cout.max(LINEAR_ROW));
    if !ctx.dry {
        let [e, a, r] = disjoint(&mut *ctx.f.data, [emb, add, row]);
        linear(&b.affine, e, a, r);
    }
    // 2. h = conv0(resample(silu(norm0(x)))) + affine(emb).
    let pairs0 = affine_pairs(ctx, aff0);
    src_in.set_affine(pairs0.as_ref());
    src_in.silu = true;
    let h = ctx.s.alloc(units::<S>(b.cout, res));
    run_conv(
        ctx,
        &[(Some(&b.conv0), &src_in)],
        b.cout,
        Some(add),
        1.0,
        Dst::Stored(h),
    );
    drop(pairs0);
    // 3. silu(norm1(h)): in place, or as conv1 reads h on int8 rows (one rounding to int8
    // fewer) and wherever conv1 runs on the integer path (its staging applies them).
    let mut src_h = Src::plain(h, b.cout, res);
    let aff1 = ctx.f.alloc(affine_len(b.cout));
    stats(ctx, &b.norm1, &src_h, aff1);
    let fused = S::INTEGER || (S::INT_CONVS && super::int::runs(&[(Some(&b.conv1), &src_h)]));
    let pairs1 = if fused { affine_pairs(ctx, aff1) } else { None };
    if fused {
        src_h.set_affine(pairs1.as_ref());
        src_h.silu = true;
    } else if !ctx.dry {
        let units = S::row_units(res);
        let pairs = &ctx.f.data[aff1.off..aff1.off + aff1.len];
        let hv = &mut ctx.s.data[h.off..h.off + h.len];
        let mut row = alloc::vec![0.0f32; res];
        for c in 0..b.cout {
            let (a, s) = (pairs[2 * c], pairs[2 * c + 1]);
            for y in 0..res {
                let stored = &mut hv[(c * res + y) * units..(c * res + y + 1) * units];
                S::load_row(stored, &mut row);
                row.iter_mut().for_each(|v| *v = silu(*v * a + s));
                S::save_row(&row, stored);
            }
        }
    }
    // 4. out = (conv1(h) + skip(resample(x))) / sqrt 2 (the skip an identity when the shape
    // does not change).
    let src_x = Src {
        parts,
        res_in,
        resample: b.resample,
        affine: None,
        affine_bound: 0.0,
        // Resampling (nearest, or a box's averages) keeps the values within x's bound.
        stored_bound: source_bound_of(ctx, aff0),
        silu: false,
    };
    run_conv(
        ctx,
        &[(Some(&b.conv1), &src_h), (b.skip.as_ref(), &src_x)],
        b.cout,
        None,
        SKIP_SCALE,
        Dst::Stored(out),
    );
    ctx.s.release(smark);
    ctx.f.release(fmark);
    if let Some((norm2, qkv, proj)) = &b.attention {
        attention(ctx, norm2, qkv, proj, out, b.cout, res);
    }
}
