//! The micro runtime's memory: one caller-provided arena of `u32` words, split into an f32
//! scratch pool (accumulator bands, rows, the solver's state) and a pool of stored
//! activations (f32, f16 bits or int8 rows with a scale each, [`Store`]), both bump allocators with stack discipline.
//!
//! A dry run walks the network with empty pools and only counts: that is how
//! [`MicroSampler::arena_words`](super::MicroSampler::arena_words) plans the arena with the
//! same code that then runs in it.

use crate::pack::{f16_to_f32, f32_to_f16};

/// How activations are stored, a row at a time: the U-Net's maps are `channels x res` rows
/// of `res` values, and every producer writes (and every consumer reads) whole rows.
pub(super) trait Store: Copy + Default + bytemuck::Pod {
    /// Whether the rows are int8 with a scale each, whose GroupNorm moments are integer
    /// sums (`super::int::group_moments`).
    const INTEGER: bool = false;
    /// Whether convolutions and attention with int8 weights run as integer dot products on
    /// this storage (`super::int`), rather than on f32 values.
    const INT_CONVS: bool = false;
    /// Whether [`Store::save_row_max`] uses the row's largest magnitude (producers track it
    /// only then: ~3 instructions a value on the M4).
    const NEEDS_MAX: bool = false;
    /// Whether a stored row is its `r` values as f32 ([`Store::as_f32_mut`]), so a channel's
    /// rows are one f32 map.
    const F32_ROWS: bool = false;
    /// Storage units of one row of `r` values.
    fn row_units(r: usize) -> usize {
        r
    }
    /// Value `x` of a stored row.
    fn at(row: &[Self], x: usize) -> f32;
    /// One stored unit of a row's values as f32, before the row's factor
    /// ([`Store::scaled_values`]).
    fn value(v: Self) -> f32;
    /// A stored row of `r` values as a factor and the units that, times it, are the values:
    /// the integer path's staging folds the factor into its per-row affine.
    #[inline(always)]
    fn scaled_values(row: &[Self], r: usize) -> (f32, &[Self]) {
        (1.0, &row[..r])
    }
    /// A stored row as f32 values (`out.len()` of them).
    #[inline(always)]
    fn load_row(row: &[Self], out: &mut [f32]) {
        for (x, o) in out.iter_mut().enumerate() {
            *o = Self::at(row, x);
        }
    }
    /// [`Store::load_row`], then `v * scale + shift` (GroupNorm's affine) on each value.
    #[inline(always)]
    fn load_row_affine(row: &[Self], out: &mut [f32], scale: f32, shift: f32) {
        Self::load_row(row, out);
        out.iter_mut().for_each(|v| *v = *v * scale + shift);
    }
    /// `vals` into a stored row.
    fn save_row(vals: &[f32], row: &mut [Self]);
    /// [`Store::save_row`] given [`abs_max`] of `vals`, which a producer can track as it
    /// computes them (a pass over the row less).
    #[inline(always)]
    fn save_row_max(vals: &[f32], max: f32, row: &mut [Self]) {
        let _ = max;
        Self::save_row(vals, row);
    }
    /// Stored units as the f32 values they hold, where they are ([`Store::F32_ROWS`]).
    #[inline(always)]
    fn as_f32(units: &[Self]) -> Option<&[f32]> {
        let _ = units;
        None
    }
    /// A stored row as the f32 values it holds, where it is one (a producer then writes
    /// them in place, not through [`Store::save_row`]).
    #[inline(always)]
    fn as_f32_mut(row: &mut [Self]) -> Option<&mut [f32]> {
        let _ = row;
        None
    }
    /// An upper bound of `|value|` over a stored row of `r` values (non-finite if a value is).
    fn row_bound(row: &[Self], r: usize) -> f32 {
        (0..r).fold(0.0f32, |m, x| {
            let v = libm::fabsf(Self::at(row, x));
            if v.is_nan() { v } else { m.max(v) }
        })
    }
    /// [`Store::row_bound`] as an integer ordered as the bounds are (NaN above infinity), so
    /// the bound of many rows is an integer max ([`Store::key_bound`] turns it back): a
    /// float max with its NaN checks cost ~40 instructions a row on the M4.
    #[inline(always)]
    fn bound_key(row: &[Self], r: usize) -> u32 {
        // A bound is never negative, and a non-negative f32's bits order as its value.
        Self::row_bound(row, r).to_bits()
    }
    /// The bound of a [`Store::bound_key`].
    #[inline(always)]
    fn key_bound(key: u32) -> f32 {
        f32::from_bits(key)
    }
}

impl Store for f32 {
    #[inline(always)]
    fn at(row: &[Self], x: usize) -> f32 {
        row[x]
    }
    #[inline(always)]
    fn value(v: Self) -> f32 {
        v
    }
    #[inline(always)]
    fn save_row(vals: &[f32], row: &mut [Self]) {
        row[..vals.len()].copy_from_slice(vals);
    }
}

impl Store for u16 {
    #[inline(always)]
    fn at(row: &[Self], x: usize) -> f32 {
        f16_to_f32(row[x])
    }
    #[inline(always)]
    fn value(v: Self) -> f32 {
        f16_to_f32(v)
    }
    #[inline(always)]
    fn save_row(vals: &[f32], row: &mut [Self]) {
        for (o, &v) in row.iter_mut().zip(vals) {
            *o = f32_to_f16(v);
        }
    }
}

/// f32 values for the integer path ([`super::Activations::IntF32`]): convolutions and
/// attention with int8 weights stage these rows as 16-bit inputs as they do int8 rows, with
/// no row scale to make or apply and no rounding to 8 bits between layers; a separate type
/// so that plain f32 storage keeps the float path (the host's numbers).
#[derive(Clone, Copy, Default, Debug, PartialEq)]
#[repr(transparent)]
pub(super) struct IntF32(pub(super) f32);

// SAFETY: a transparent wrapper of an f32: every bit pattern is valid, zero bits are 0.0,
// no padding.
unsafe impl bytemuck::Zeroable for IntF32 {}
// SAFETY: as above.
unsafe impl bytemuck::Pod for IntF32 {}

impl Store for IntF32 {
    const INT_CONVS: bool = true;
    const F32_ROWS: bool = true;
    #[inline(always)]
    fn at(row: &[Self], x: usize) -> f32 {
        row[x].0
    }
    #[inline(always)]
    fn value(v: Self) -> f32 {
        v.0
    }
    #[inline(always)]
    fn save_row(vals: &[f32], row: &mut [Self]) {
        for (o, &v) in row.iter_mut().zip(vals) {
            *o = IntF32(v);
        }
    }
    #[inline(always)]
    fn as_f32(units: &[Self]) -> Option<&[f32]> {
        Some(bytemuck::cast_slice(units))
    }
    #[inline(always)]
    fn as_f32_mut(row: &mut [Self]) -> Option<&mut [f32]> {
        Some(bytemuck::cast_slice_mut(row))
    }
    /// The largest `|value|`'s bits, compared as integers ([`abs_max`]).
    #[inline(always)]
    fn bound_key(row: &[Self], r: usize) -> u32 {
        row[..r].iter().fold(0u32, |m, v| abs_max_bits(m, v.0))
    }
}

/// int8 with a scale per row (block floating point): a row is its scale as bfloat16 (the
/// top half of an f32, in two units, rounded up so that no value exceeds 127 steps) and
/// then `r` int8 values. The producer of a row knows the row's largest value when it
/// stores it, so every row uses its full 8 bits, without calibration data; the consumers
/// fold the scale into their per-row arithmetic.
impl Store for i8 {
    const INTEGER: bool = true;
    const INT_CONVS: bool = true;
    const NEEDS_MAX: bool = true;
    fn row_units(r: usize) -> usize {
        r + 2
    }
    #[inline(always)]
    fn at(row: &[Self], x: usize) -> f32 {
        row[2 + x] as f32 * row_scale(row)
    }
    #[inline(always)]
    fn value(v: Self) -> f32 {
        v as f32
    }
    #[inline(always)]
    fn scaled_values(row: &[Self], r: usize) -> (f32, &[Self]) {
        (row_scale(row), &row[2..2 + r])
    }
    #[inline(always)]
    fn load_row(row: &[Self], out: &mut [f32]) {
        let s = row_scale(row);
        for (o, &q) in out.iter_mut().zip(&row[2..]) {
            *o = q as f32 * s;
        }
    }
    /// One pass: the row's scale folded into the affine's (`q (s scale) + shift`; the
    /// product `s scale` is rounded once, where two passes round `q s` exactly and then
    /// `(q s) scale`).
    #[inline(always)]
    fn load_row_affine(row: &[Self], out: &mut [f32], scale: f32, shift: f32) {
        let s = row_scale(row) * scale;
        for (o, &q) in out.iter_mut().zip(&row[2..]) {
            *o = q as f32 * s + shift;
        }
    }
    fn save_row(vals: &[f32], row: &mut [Self]) {
        Self::save_row_max(vals, abs_max(vals), row);
    }
    #[inline(always)]
    fn save_row_max(vals: &[f32], max: f32, row: &mut [Self]) {
        let (scale_bits, inv) = if !max.is_finite() {
            // NaN loads back as NaN and infinity as infinity times the value: the sampler
            // reports a non-finite output as it would from f32 storage.
            (if max.is_nan() { 0x7FC0u16 } else { 0x7F80 }, 0.0)
        } else if max == 0.0 {
            (0, 0.0)
        } else {
            let bits = (max / 127.0).to_bits();
            // Round the scale up to bfloat16, so max / scale <= 127.
            let hi = (bits >> 16) + u32::from(bits & 0xFFFF != 0);
            (hi as u16, 1.0 / f32::from_bits(hi << 16))
        };
        let [lo, hi] = scale_bits.to_le_bytes();
        row[0] = lo as i8;
        row[1] = hi as i8;
        for (o, &v) in row[2..].iter_mut().zip(vals) {
            // |v| * inv <= 127 (the scale was rounded up), so no clamp.
            *o = round_even(v * inv) as i8;
        }
    }
    fn row_bound(row: &[Self], _r: usize) -> f32 {
        row_scale(row) * 127.0
    }
    /// The scale's bfloat16 bits (never negative: they order as the scales do).
    #[inline(always)]
    fn bound_key(row: &[Self], _r: usize) -> u32 {
        u32::from(u16::from_le_bytes([row[0] as u8, row[1] as u8]))
    }
    #[inline(always)]
    fn key_bound(key: u32) -> f32 {
        f32::from_bits(key << 16) * 127.0
    }
}

/// The largest `|v|`, NaN if any value is NaN: compared as integers (the bits of `|v|` order
/// as the values do, NaN above infinity), since f32::max is a library call on the M4.
#[inline(always)]
pub(super) fn abs_max(vals: &[f32]) -> f32 {
    f32::from_bits(vals.iter().fold(0u32, |m, &v| abs_max_bits(m, v)))
}

/// One step of [`abs_max`]: the larger of `m` and `|v|`'s bits.
#[inline(always)]
pub(super) fn abs_max_bits(m: u32, v: f32) -> u32 {
    m.max(v.to_bits() & 0x7FFF_FFFF)
}

/// The larger of two bounds, NaN if either is: a compare, where `f32::max` is a library
/// call on the M4 (~11 instructions, run for every stored row a convolution's bound reads).
#[inline(always)]
pub(super) fn bound_max(m: f32, b: f32) -> f32 {
    if b.is_nan() || m.is_nan() {
        f32::NAN
    } else if b > m {
        b
    } else {
        m
    }
}

/// The scale of an int8 row (its first two units, bfloat16 bits).
#[inline(always)]
pub(super) fn row_scale(row: &[i8]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes([row[0] as u8, row[1] as u8])) << 16)
}

/// `v` rounded to the nearest integer (ties to even) for `|v| < 2^22`: adding 1.5 * 2^23
/// leaves the rounded value in the low mantissa bits, the FPU's own rounding, the same on
/// every IEEE target and branch-free (the M4 has no rounding instruction). Larger values
/// and NaN give unspecified integers; callers clamp or never pass them.
#[inline(always)]
pub(super) fn round_even(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// Storage units of a map of `channels x res x res` values.
pub(super) fn units<S: Store>(channels: usize, res: usize) -> usize {
    channels * res * S::row_units(res)
}

/// A region of one of the arena's two pools.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Buf {
    pub(super) off: usize,
    pub(super) len: usize,
}

/// A bump allocator with stack discipline; in a dry run it only counts.
pub(super) struct Pool<'s, T> {
    pub(super) data: &'s mut [T],
    top: usize,
    pub(super) peak: usize,
}

impl<T> Pool<'_, T> {
    pub(super) fn alloc(&mut self, len: usize) -> Buf {
        let b = Buf { off: self.top, len };
        self.top += len;
        self.peak = self.peak.max(self.top);
        b
    }
    pub(super) fn mark(&self) -> usize {
        self.top
    }
    pub(super) fn release(&mut self, mark: usize) {
        self.top = mark;
    }
}

/// The arena of one run: f32 scratch (accumulator bands, rows, the sampler's state) and
/// stored activations.
pub(super) struct Ctx<'s, S> {
    pub(super) f: Pool<'s, f32>,
    pub(super) s: Pool<'s, S>,
    pub(super) dry: bool,
    /// Weights the integer path reorders for its blocked layout (`int::blocked`), kept
    /// in the f32 pool for the whole image: the first evaluation fills it, the others
    /// read it (every evaluation visits the convolutions in the same order).
    pub(super) weights: WeightCache,
    /// In a dry run, how far past their tops one evaluation of the network took the two
    /// pools, once measured: every evaluation allocates alike, so later ones only add it
    /// to the peaks (planning walked all T evaluations, ~2% of a digits8 image on the M4).
    pub(super) dry_extent: Option<(usize, usize)>,
}

/// The region of [`Ctx::weights`] and where the next convolution's part of it starts.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct WeightCache {
    pub(super) buf: Buf,
    /// Words of `buf` the convolutions of this evaluation have taken so far (in a dry run:
    /// have asked for).
    pub(super) at: usize,
    /// Whether an earlier evaluation filled `buf`.
    pub(super) filled: bool,
}

impl WeightCache {
    /// The next `words` words of the region (an empty buffer at its end in a dry run,
    /// which only counts), and whether they still need filling.
    pub(super) fn take(&mut self, words: usize, dry: bool) -> (Buf, bool) {
        let at = self.at;
        self.at += words;
        if dry {
            return (
                Buf {
                    off: self.buf.off,
                    len: 0,
                },
                false,
            );
        }
        assert!(
            self.at <= self.buf.len,
            "the weight cache was planned smaller"
        );
        (
            Buf {
                off: self.buf.off + at,
                len: words,
            },
            !self.filled,
        )
    }

    /// The start of an evaluation: the previous one filled what it took.
    pub(super) fn next_evaluation(&mut self) {
        if self.at > 0 {
            self.filled = true;
        }
        self.at = 0;
    }
}

impl<'s, S: Store> Ctx<'s, S> {
    /// Empty pools over `f` and `s`; `dry`: count only (`f` and `s` empty).
    pub(super) fn new(f: &'s mut [f32], s: &'s mut [S], dry: bool) -> Self {
        Ctx {
            f: Pool {
                data: f,
                top: 0,
                peak: 0,
            },
            s: Pool {
                data: s,
                top: 0,
                peak: 0,
            },
            dry,
            weights: WeightCache::default(),
            dry_extent: None,
        }
    }

    pub(super) fn fs(&mut self, b: Buf) -> &mut [f32] {
        &mut self.f.data[b.off..b.off + b.len]
    }
}

/// Disjoint mutable views of live buffers of one pool (the bump allocator never hands out
/// overlapping live buffers), returned in the order asked.
pub(super) fn disjoint<'d, T, const N: usize>(
    data: &'d mut [T],
    bufs: [Buf; N],
) -> [&'d mut [T]; N] {
    let mut order: [usize; N] = core::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| bufs[i].off);
    let mut out: [&'d mut [T]; N] = core::array::from_fn(|_| Default::default());
    let mut rest = data;
    let mut base = 0;
    for &i in &order {
        let b = bufs[i];
        let (_, tail) = core::mem::take(&mut rest).split_at_mut(b.off - base);
        let (mine, tail) = tail.split_at_mut(b.len);
        out[i] = mine;
        rest = tail;
        base = b.off + b.len;
    }
    out
}

/// Read access to the stored activations while one region (`gap`) is being written.
pub(super) struct View<'v, S> {
    below: &'v [S],
    above: &'v [S],
    gap_end: usize,
}

impl<'v, S: Store> View<'v, S> {
    /// All of `data`, nothing being written.
    pub(super) fn whole(data: &'v [S]) -> Self {
        View {
            below: data,
            above: &[],
            gap_end: usize::MAX,
        }
    }

    /// `data` but `gap`, and `gap` itself to write.
    pub(super) fn around(data: &'v mut [S], gap: Buf) -> (Self, &'v mut [S]) {
        let (below, rest) = data.split_at_mut(gap.off);
        let (mid, above) = rest.split_at_mut(gap.len);
        (
            View {
                below,
                above,
                gap_end: gap.off + gap.len,
            },
            mid,
        )
    }

    /// `len` units from `off` (never straddling the gap: rows lie within one buffer).
    #[inline(always)]
    pub(super) fn slice(&self, off: usize, len: usize) -> &'v [S] {
        if off < self.below.len() {
            &self.below[off..off + len]
        } else {
            &self.above[off - self.gap_end..off - self.gap_end + len]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An int8 row loads back within half a step of its scale, the scale is the smallest
    /// bfloat16 that keeps every value within 127 steps, and non-finite rows stay so.
    #[test]
    fn int8_rows_round_trip() {
        let vals: Vec<f32> = (0..28)
            .map(|i| ((i * 37 % 19) as f32 - 9.0) * 0.173)
            .collect();
        let mut row = vec![0i8; i8::row_units(28)];
        i8::save_row(&vals, &mut row);
        let s = row_scale(&row);
        let max = vals.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            s >= max / 127.0 && s <= max / 127.0 * (1.0 + 1.0 / 128.0),
            "{s}"
        );
        let mut back = vec![0.0f32; 28];
        i8::load_row(&row, &mut back);
        for (a, b) in vals.iter().zip(&back) {
            assert!((a - b).abs() <= s / 2.0 + 1e-7, "{a} {b}");
        }
        assert!(i8::row_bound(&row, 28) >= max);
        i8::save_row(&[0.0; 28], &mut row);
        assert_eq!(row_scale(&row), 0.0);
        let mut bad = vals.clone();
        bad[3] = f32::NAN;
        i8::save_row(&bad, &mut row);
        assert!(i8::at(&row, 0).is_nan());
        bad[3] = f32::INFINITY;
        i8::save_row(&bad, &mut row);
        assert!(!i8::at(&row, 0).is_finite() || vals[0] == 0.0);
    }

    #[test]
    fn rounding_and_abs_max_are_exact() {
        assert_eq!(round_even(2.5), 2);
        assert_eq!(round_even(3.5), 4);
        assert_eq!(round_even(-2.6), -3);
        assert_eq!(round_even(-0.4), 0);
        assert_eq!(round_even(4_000_000.4), 4_000_000);
        assert_eq!(abs_max(&[1.0, -3.5, 2.0]), 3.5);
        assert!(abs_max(&[1.0, f32::NAN]).is_nan());
        assert_eq!(abs_max(&[]), 0.0);
    }
}
