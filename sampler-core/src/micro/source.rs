//! What the network's operations read and write: a convolution's input as rows
//! ([`Src`]: stored maps through GroupNorm's affine, SiLU and EDM's resampling) and its
//! destination ([`Dst`]). Below both the float operations (`ops`) and the integer path
//! (`int`), which read sources the same way.

use alloc::vec::Vec;

use super::arena::{Buf, Store, View};
use crate::config::Resample;
use crate::config::SKIP_SCALE as SKIP_SCALE_F64;

/// EDM's residual scale, rounded once to the f32 the runtime computes in.
pub(super) const SKIP_SCALE: f32 = SKIP_SCALE_F64 as f32;

#[inline(always)]
pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + libm::expf(-x))
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
    /// With `affine`: an upper bound of `|value * scale + shift|` over the source (from
    /// [`stats`]), which the integer path scales its inputs by.
    pub(super) affine_bound: f32,
    /// Without `affine`: an upper bound of `|value|` over the stored source when one is
    /// known already (from GroupNorm's statistics of the same maps), else None.
    pub(super) stored_bound: Option<f32>,
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
            affine_bound: 0.0,
            stored_bound: None,
            silu: false,
        }
    }

    pub(super) fn res_out(&self) -> usize {
        resampled(self.res_in, self.resample)
    }

    /// The GroupNorm affine of [`affine_pairs`] (none in a dry run).
    pub(super) fn set_affine(&mut self, pairs: Option<&'t (Vec<(f32, f32)>, f32)>) {
        if let Some((p, bound)) = pairs {
            self.affine = Some(p);
            self.affine_bound = *bound;
        }
    }

    /// Channels of the source.
    pub(super) fn channels(&self) -> usize {
        self.parts[0].1 + self.parts[1].1
    }

    /// Stored row `y` (input resolution) of channel `c`.
    #[inline(always)]
    pub(super) fn stored<'v, S: Store>(&self, s: &View<'v, S>, c: usize, y: usize) -> &'v [S] {
        let units = S::row_units(self.res_in);
        s.slice(self.channel_at::<S>(c) + y * units, units)
    }

    /// The `res_in` stored rows of channel `c`, one after another: a loop over them finds
    /// the channel's part and checks its bounds once, not per row (~15 instructions a row
    /// on the M4).
    #[inline(always)]
    pub(super) fn stored_rows<'v, S: Store>(&self, s: &View<'v, S>, c: usize) -> &'v [S] {
        s.slice(
            self.channel_at::<S>(c),
            self.res_in * S::row_units(self.res_in),
        )
    }

    /// The stored rows of channels `chans`, as consecutive channels' rows in one slice per
    /// part (the second empty unless `chans` crosses into the second part), each with its
    /// first channel: a group's maps read with one bounds check, not one per channel.
    #[inline(always)]
    pub(super) fn stored_runs<'v, S: Store>(
        &self,
        s: &View<'v, S>,
        chans: core::ops::Range<usize>,
    ) -> [(usize, &'v [S]); 2] {
        let per = self.res_in * S::row_units(self.res_in);
        let split = chans.end.min(self.parts[0].1).max(chans.start);
        let first = s.slice(
            self.channel_at::<S>(chans.start),
            (split - chans.start) * per,
        );
        let second = if split < chans.end {
            s.slice(self.channel_at::<S>(split), (chans.end - split) * per)
        } else {
            &[]
        };
        [(chans.start, first), (split, second)]
    }

    /// Where channel `c`'s rows start in the stored pool.
    #[inline(always)]
    fn channel_at<S: Store>(&self, c: usize) -> usize {
        let (part, ch) = if c < self.parts[0].1 {
            (self.parts[0].0, c)
        } else {
            (self.parts[1].0, c - self.parts[0].1)
        };
        part.off + ch * self.res_in * S::row_units(self.res_in)
    }

    /// Row `y` (input resolution) of channel `c` after the affine and `act` (SiLU when the
    /// source has it), `res_in` values into `out`.
    #[inline(always)]
    fn row_in<S: Store>(
        &self,
        s: &View<'_, S>,
        c: usize,
        y: usize,
        out: &mut [f32],
        act: impl Fn(f32) -> f32,
    ) {
        let out = &mut out[..self.res_in];
        match self.affine {
            Some(a) => {
                let (scale, shift) = a[c];
                S::load_row_affine(self.stored(s, c, y), out, scale, shift);
            }
            None => S::load_row(self.stored(s, c, y), out),
        }
        if self.silu {
            out.iter_mut().for_each(|v| *v = act(*v));
        }
    }

    /// Row `y` (output resolution) of channel `c` into `out`, zeros outside the image;
    /// `tmp` holds `2 res_in` values for the box filter.
    pub(super) fn row<S: Store>(
        &self,
        s: &View<'_, S>,
        c: usize,
        y: isize,
        out: &mut [f32],
        tmp: &mut [f32],
    ) {
        self.row_with(s, c, y, out, tmp, silu)
    }

    /// [`Src::row`] with `act` in place of SiLU.
    #[inline(always)]
    pub(super) fn row_with<S: Store>(
        &self,
        s: &View<'_, S>,
        c: usize,
        y: isize,
        out: &mut [f32],
        tmp: &mut [f32],
        act: impl Fn(f32) -> f32 + Copy,
    ) {
        let r = self.res_out();
        let out = &mut out[..r];
        if y < 0 || y as usize >= r {
            out.iter_mut().for_each(|v| *v = 0.0);
            return;
        }
        let y = y as usize;
        let ri = self.res_in;
        match self.resample {
            Resample::None => self.row_in(s, c, y, out, act),
            Resample::Up => {
                self.row_in(s, c, y / 2, out, act);
                // Nearest neighbour, widened in place from the right.
                for x in (0..r).rev() {
                    out[x] = out[x / 2];
                }
            }
            Resample::Down => {
                let (t0, t1) = tmp[..2 * ri].split_at_mut(ri);
                self.row_in(s, c, 2 * y, t0, act);
                self.row_in(s, c, 2 * y + 1, t1, act);
                for (x, o) in out.iter_mut().enumerate() {
                    let top = (t0[2 * x] + t0[2 * x + 1]) * 0.5;
                    let bottom = (t1[2 * x] + t1[2 * x + 1]) * 0.5;
                    *o = (top + bottom) * 0.5;
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

/// Row `y` of every one of `c` stored channels of `xs` (rows of `res` values) becomes
/// `(out + x) / sqrt 2`: attention's residual, a row of queries at a time (`outs`: `c`
/// rows of `res` projected values; `row`: scratch of `res`).
pub(super) fn residual_row<S: Store>(
    xs: &mut [S],
    outs: &[f32],
    c: usize,
    res: usize,
    y: usize,
    row: &mut [f32],
) {
    let units = S::row_units(res);
    for co in 0..c {
        let at = (co * res + y) * units;
        let xr = &mut xs[at..at + units];
        S::load_row(xr, row);
        for (v, &o) in row.iter_mut().zip(&outs[co * res..(co + 1) * res]) {
            *v = (o + *v) * SKIP_SCALE;
        }
        S::save_row(row, xr);
    }
}
