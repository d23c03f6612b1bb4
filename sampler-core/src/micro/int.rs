//! The micro runtime's integer path, in the style of Arm's CMSIS-NN: int8 weights (a scale
//! per output channel, as the bundle stores them) times 16-bit fixed-point inputs, summed
//! exactly in i32 with the Cortex-M4's dual 16-bit multiply-accumulate (`SMLAD`, two MACs
//! an instruction), then scaled back to f32 where the network's other arithmetic stays
//! (bias, residual sums, GroupNorm, the solver).
//!
//! The inputs of each convolution are scaled by a bound of their own values, known before
//! the first row is read (GroupNorm's extremes, or the rows' stored scales), so no
//! calibration data is needed and no input saturates; the bound also leaves room for the
//! dot product of every output to fit an i32 (`qmax_for`). Integer sums are exact, so the
//! host (portable `dsp` functions) and the M4 (`SMLAD` through `asm!`) give the same bits.
//!
//! A convolution runs a row of outputs at a time: the input rows it needs (three for a 3x3
//! kernel) are staged as i16 once per row, then for each pair of output pixels their
//! receptive fields are gathered into two interleaved columns (im2col) and dotted with each
//! weight row (`dot1x2`: 16 MACs per 18 instructions, each weight word read once per pair
//! of pixels). The columns are gathered in the order `SXTB16` unpacks weights in (values 0,
//! 2 of each group of four, then 1, 3), so the weights need no reordering.

use alloc::vec::Vec;

use super::arena::{Buf, Ctx, Store, View, abs_max, disjoint, round_even};
use super::source::{Dst, SKIP_SCALE, Src};
use super::weights::Conv;
use crate::pack::Int8Rows;

/// The M4's DSP instructions, and portable functions with the same results elsewhere.
#[cfg(fewstep_dsp)]
mod dsp {
    /// Bytes 0 and 2 of `x`, sign-extended to halfwords.
    #[inline(always)]
    pub(super) fn sxtb16(x: u32) -> u32 {
        let r: u32;
        // SAFETY: a register-only instruction of the DSP extension this cfg implies.
        unsafe {
            core::arch::asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x,
                options(pure, nomem, nostack, preserves_flags));
        }
        r
    }
    /// Bytes 1 and 3 of `x`, sign-extended to halfwords.
    #[inline(always)]
    pub(super) fn sxtb16_ror8(x: u32) -> u32 {
        let r: u32;
        // SAFETY: as above.
        unsafe {
            core::arch::asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x,
                options(pure, nomem, nostack, preserves_flags));
        }
        r
    }
    /// `acc + a.lo * b.lo + a.hi * b.hi` (halfwords as i16), wrapping.
    #[inline(always)]
    pub(super) fn smlad(a: u32, b: u32, acc: i32) -> i32 {
        let r: i32;
        // SAFETY: as above (SMLAD only sets the sticky Q flag, which nothing reads).
        unsafe {
            core::arch::asm!("smlad {r}, {a}, {b}, {acc}", r = lateout(reg) r, a = in(reg) a,
                b = in(reg) b, acc = in(reg) acc, options(pure, nomem, nostack));
        }
        r
    }
    /// `acc + a.lo * b.lo + a.hi * b.hi` in 64 bits.
    #[inline(always)]
    pub(super) fn smlald(a: u32, b: u32, acc: i64) -> i64 {
        let (mut lo, mut hi) = (acc as u32, (acc >> 32) as u32);
        // SAFETY: as above.
        unsafe {
            core::arch::asm!("smlald {lo}, {hi}, {a}, {b}", lo = inout(reg) lo, hi = inout(reg) hi,
                a = in(reg) a, b = in(reg) b, options(pure, nomem, nostack, preserves_flags));
        }
        ((hi as u64) << 32 | lo as u64) as i64
    }
}

/// `sum over groups of w . x` and `w . y` for `groups` groups of four int8 weights `w` and
/// two interleaved columns (`[x 0 2, x 1 3, y 0 2, y 1 3]` words per group): the inner loop
/// of every convolution, 18 instructions per 16 MACs (two groups a turn, `LDM` for the four
/// column words).
#[cfg(fewstep_dsp)]
#[inline(always)]
fn groups_1x2(w: &[u8], cols: &[u32], groups: usize) -> (i32, i32) {
    assert!(w.len() >= 4 * groups && cols.len() >= 4 * groups);
    let (mut s0, mut s1) = (0i32, 0i32);
    let (mut pw, mut pc) = (w.as_ptr(), cols.as_ptr());
    if !groups.is_multiple_of(2) {
        let a = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        let (a02, a13) = (dsp::sxtb16(a), dsp::sxtb16_ror8(a));
        s0 = dsp::smlad(a13, cols[1], dsp::smlad(a02, cols[0], s0));
        s1 = dsp::smlad(a13, cols[3], dsp::smlad(a02, cols[2], s1));
        // SAFETY: within the slices (asserted above).
        unsafe {
            pw = pw.add(4);
            pc = pc.add(4);
        }
    }
    let pairs = groups / 2;
    if pairs > 0 {
        // SAFETY: reads `8 pairs` weight bytes (unaligned word loads, which the M4 allows)
        // and `8 pairs` column words (word-aligned: a u32 slice) inside the slices asserted
        // above; writes only the named registers.
        unsafe {
            core::arch::asm!(
                "2:",
                "ldr {w}, [{pw}], #4",
                "ldm {pc}!, {{r0, r1, r2, r3}}",
                "sxtb16 {t}, {w}",
                "sxtb16 {w}, {w}, ror #8",
                "smlad {s0}, {t}, r0, {s0}",
                "smlad {s0}, {w}, r1, {s0}",
                "smlad {s1}, {t}, r2, {s1}",
                "smlad {s1}, {w}, r3, {s1}",
                "ldr {w}, [{pw}], #4",
                "ldm {pc}!, {{r0, r1, r2, r3}}",
                "sxtb16 {t}, {w}",
                "sxtb16 {w}, {w}, ror #8",
                "smlad {s0}, {t}, r0, {s0}",
                "smlad {s0}, {w}, r1, {s0}",
                "smlad {s1}, {t}, r2, {s1}",
                "smlad {s1}, {w}, r3, {s1}",
                "subs {n}, {n}, #1",
                "bne 2b",
                pw = inout(reg) pw => _,
                pc = inout(reg) pc => _,
                n = inout(reg) pairs => _,
                w = out(reg) _,
                t = out(reg) _,
                s0 = inout(reg) s0,
                s1 = inout(reg) s1,
                out("r0") _,
                out("r1") _,
                out("r2") _,
                out("r3") _,
                options(nostack, readonly),
            );
        }
    }
    (s0, s1)
}

#[cfg(not(fewstep_dsp))]
#[inline(always)]
fn groups_1x2(w: &[u8], cols: &[u32], groups: usize) -> (i32, i32) {
    let (mut s0, mut s1) = (0i32, 0i32);
    for (a, c) in w[..4 * groups]
        .chunks_exact(4)
        .zip(cols[..4 * groups].chunks_exact(4))
    {
        let a = u32::from_le_bytes([a[0], a[1], a[2], a[3]]);
        let (a02, a13) = (dsp::sxtb16(a), dsp::sxtb16_ror8(a));
        s0 = dsp::smlad(a13, c[1], dsp::smlad(a02, c[0], s0));
        s1 = dsp::smlad(a13, c[3], dsp::smlad(a02, c[2], s1));
    }
    (s0, s1)
}

#[cfg(not(fewstep_dsp))]
mod dsp {
    #[inline(always)]
    pub(super) fn sxtb16(x: u32) -> u32 {
        let lo = x as u8 as i8 as i16 as u16 as u32;
        let hi = (x >> 16) as u8 as i8 as i16 as u16 as u32;
        lo | hi << 16
    }
    #[inline(always)]
    pub(super) fn sxtb16_ror8(x: u32) -> u32 {
        sxtb16(x.rotate_right(8))
    }
    #[inline(always)]
    fn halves(x: u32) -> (i32, i32) {
        (x as u16 as i16 as i32, (x >> 16) as u16 as i16 as i32)
    }
    #[inline(always)]
    pub(super) fn smlad(a: u32, b: u32, acc: i32) -> i32 {
        let ((a0, a1), (b0, b1)) = (halves(a), halves(b));
        acc.wrapping_add((a0 * b0).wrapping_add(a1 * b1))
    }
    #[inline(always)]
    pub(super) fn smlald(a: u32, b: u32, acc: i64) -> i64 {
        let ((a0, a1), (b0, b1)) = (halves(a), halves(b));
        acc.wrapping_add(a0 as i64 * b0 as i64 + a1 as i64 * b1 as i64)
    }
}

/// Where value `k` of a group of four sits in a column: `SXTB16` pairs weights 0 with 2 and
/// 1 with 3, so the column holds (0, 2, 1, 3). Its own inverse.
const PERM: [usize; 4] = [0, 2, 1, 3];

/// `k` rounded up to whole groups of four.
fn padded(k: usize) -> usize {
    k.next_multiple_of(4)
}

/// The largest |staged value| for dot products of `k` terms with int8 weights (|w| <= 127)
/// whose sums cannot leave an i32.
fn qmax_for(k: usize) -> f32 {
    (i32::MAX as u64 / (127 * k.max(1) as u64)).min(i16::MAX as u64) as f32
}

/// `(step, 1 / step)` of a fixed-point scale with `qmax` steps up to `bound`: a zero bound
/// stages zeros, a non-finite one poisons the outputs (as f32 arithmetic would).
fn fixed_point(bound: f32, qmax: f32) -> (f32, f32) {
    if !bound.is_finite() {
        (f32::NAN, 0.0)
    } else if bound > 0.0 {
        (bound / qmax, qmax / bound)
    } else {
        (0.0, 0.0)
    }
}

/// `v * inv` to the nearest integer (ties to even) within `+-qmax`. The clamp is what keeps
/// the i32 sums exact whatever the inputs (a bound is only as good as its arithmetic).
#[inline(always)]
fn quantize(v: f32, inv: f32, qmax: i32) -> i16 {
    round_even(v * inv).clamp(-qmax, qmax) as i16
}

/// Column values of four input channels of a 3x3 kernel at one pixel (`src`: their staged
/// rows from the window's top-left, 3 rows of `w2` per channel) into column `OFF / 4` of an
/// interleaved pair (`out`: 72 values): 36 loads and stores with constant destinations.
#[inline(always)]
fn gather3x3_block<const OFF: usize>(src: &[i16], w2: usize, out: &mut [i16]) {
    assert!(w2 >= 3 && src.len() >= 11 * w2 + 3 && out.len() >= 72);
    for c in 0..4 {
        for ky in 0..3 {
            for kx in 0..3 {
                let k = c * 9 + ky * 3 + kx;
                let d = (k & !3) | PERM[k & 3];
                // SAFETY: c*3*w2 + ky*w2 + kx <= 11*w2 + 2 < src.len(), and
                // 2*(d & !3) + (d & 3) + OFF <= 71 < out.len() (asserted above).
                unsafe {
                    *out.get_unchecked_mut(2 * (d & !3) + (d & 3) + OFF) =
                        *src.get_unchecked(c * 3 * w2 + ky * w2 + kx);
                }
            }
        }
    }
}

/// The same for a 1x1 kernel (`src`: one staged row per channel, the pixel at `1`).
#[inline(always)]
fn gather1x1_block<const OFF: usize>(src: &[i16], w2: usize, out: &mut [i16]) {
    let [a, b, c, d] = [src[1], src[w2 + 1], src[2 * w2 + 1], src[3 * w2 + 1]];
    let o = &mut out[OFF..OFF + 4];
    // PERM order: channels 0, 2, 1, 3.
    o[0] = a;
    o[1] = c;
    o[2] = b;
    o[3] = d;
}

/// `e^x` for `x <= 0` (`exp2f` of Cephes: `2^i 2^f`, `f` in [-1/2, 1/2] by a degree-6
/// polynomial): relative error ~2e-7 near 0, growing with the rounding of `x log2 e` to
/// 4e-6 at -80; `2^-126` times `e^0`'s value below that.
#[inline(always)]
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    let t = x * core::f32::consts::LOG2_E;
    let t = if t < -126.0 { -126.0 } else { t };
    let i = round_even(t);
    let f = t - i as f32;
    let p = (((((1.535_336_2e-4 * f + 1.339_887_4e-3) * f + 9.618_437e-3) * f + 5.550_332_5e-2)
        * f
        + 2.402_264_8e-1)
        * f
        + 6.931_472e-1)
        * f
        + 1.0;
    f32::from_bits((p.to_bits() as i32 + (i << 23)) as u32)
}

// SILU_TABLE: silu(-16 + i / 32) for i in 0..=1024, as f32 (build.rs, from libm in f64).
include!(concat!(env!("OUT_DIR"), "/silu_table.rs"));

/// SiLU by linear interpolation in [`SILU_TABLE`] (4 KB of flash): within 6.2e-5 of the
/// exact value (`h^2 max|silu''| / 8` with `h = 1/32`), below a step of the 16-bit inputs
/// it feeds, at a third of the instructions of an exponential and a division. `v` beyond
/// [-16, 16] is `v` or 0 (the exact values differ by < 2e-6).
#[inline(always)]
pub(super) fn silu_fast(v: f32) -> f32 {
    let t = v * 32.0 + 512.0;
    if (0.0..1024.0).contains(&t) {
        let i = t as usize;
        let f = t - i as f32;
        let a = SILU_TABLE[i];
        a + f * (SILU_TABLE[i + 1] - a)
    } else if t >= 1024.0 || v.is_nan() {
        v
    } else {
        0.0
    }
}

/// Dot products of the int8 weight row `w` (`k` values) with two columns interleaved a
/// group at a time (`padded(k)` words: per group of four, two words of the first column
/// then two of the second, each in [`PERM`] order): `[w x, w y]`.
#[inline(always)]
fn dot1x2(w: &[u8], cols: &[u32], k: usize) -> [i32; 2] {
    let whole = k / 4;
    let (mut s0, mut s1) = groups_1x2(w, cols, whole);
    if !k.is_multiple_of(4) {
        // The last, partial group: the weights zero-padded (the columns are).
        let mut a = [0u8; 4];
        a[..k % 4].copy_from_slice(&w[4 * whole..k]);
        let a = u32::from_le_bytes(a);
        let (a02, a13) = (dsp::sxtb16(a), dsp::sxtb16_ror8(a));
        let c = &cols[4 * whole..4 * whole + 4];
        s0 = dsp::smlad(a13, c[1], dsp::smlad(a02, c[0], s0));
        s1 = dsp::smlad(a13, c[3], dsp::smlad(a02, c[2], s1));
    }
    [s0, s1]
}

/// The int8 rows of a convolution's weight, if the integer path can read them.
fn rows_of<'a>(c: &Conv<'a>) -> Option<Int8Rows<'a>> {
    let w = c.w.int8_rows()?;
    (w.rows == c.cout && w.row_len == c.cin * c.k * c.k && c.k % 2 == 1).then_some(w)
}

/// Whether the terms' convolutions run on the integer path (int8 weights in rows of output
/// channels).
pub(super) fn runs(terms: &[(Option<&Conv<'_>>, &Src<'_>)]) -> bool {
    terms
        .iter()
        .all(|(c, _)| c.is_none_or(|c| rows_of(c).is_some()))
}

/// An upper bound of `|value|` over what `src` yields (after its affine and SiLU).
fn source_bound<S: Store>(src: &Src<'_>, view: &View<'_, S>) -> f32 {
    let bound = match src.affine {
        Some(_) => src.affine_bound,
        None => {
            let mut m = 0.0f32;
            for c in 0..src.channels() {
                for y in 0..src.res_in {
                    let b = S::row_bound(src.stored(view, c, y), src.res_in);
                    m = if b.is_nan() || m.is_nan() {
                        f32::NAN
                    } else {
                        m.max(b)
                    };
                }
            }
            m
        }
    };
    // |silu(z)| <= z for z >= 0, and < 0.2785 for z < 0.
    if src.silu { bound.max(0.2785) } else { bound }
}

/// One convolution term of [`run_conv`]: its weights, staged input rows and gather table.
struct Term<'w> {
    w: Int8Rows<'w>,
    k: usize,
    cin: usize,
    /// Values per column (`cin k k`) and the same in whole groups of four.
    kdim: usize,
    kpad: usize,
    /// `1 / step` of the staged values; `qmax` the largest staged magnitude.
    inv: f32,
    qmax: i32,
    /// Where column value `d` of a block of four input channels is in the staging buffer,
    /// relative to the block and the pixel.
    table: [u16; 36],
}

impl Term<'_> {
    /// Gathers the receptive field of output pixel `x` into column `which` (0 or 1) of the
    /// interleaved `cols` (`2 kpad` values, see [`dot1x2`]).
    #[inline(always)]
    fn gather(&self, staged: &[i16], w2: usize, x: usize, which: usize, cols: &mut [i16]) {
        let block = 4 * self.k * self.k;
        let stride = 4 * self.k * w2;
        let whole = self.cin / 4;
        let table = &self.table[..block];
        let span = table.iter().map(|&t| t as usize + 1).max().unwrap_or(0);
        let off = 4 * which;
        let blocks = cols[..2 * whole * block]
            .chunks_exact_mut(2 * block)
            .enumerate();
        if self.k == 3 || self.k == 1 {
            for (b, out) in blocks {
                let base = &staged[b * stride + x..];
                match (self.k, which) {
                    (3, 0) => gather3x3_block::<0>(base, w2, out),
                    (3, _) => gather3x3_block::<4>(base, w2, out),
                    (_, 0) => gather1x1_block::<0>(base, w2, out),
                    _ => gather1x1_block::<4>(base, w2, out),
                }
            }
        } else {
            for (b, out) in blocks {
                let base = &staged[b * stride + x..b * stride + x + span];
                for (o, t) in out.chunks_exact_mut(8).zip(table.chunks_exact(4)) {
                    // SAFETY: every table entry is below `span`, the length of `base`.
                    unsafe {
                        o[off] = *base.get_unchecked(t[0] as usize);
                        o[off + 1] = *base.get_unchecked(t[1] as usize);
                        o[off + 2] = *base.get_unchecked(t[2] as usize);
                        o[off + 3] = *base.get_unchecked(t[3] as usize);
                    }
                }
            }
        }
        // Channels past the last whole block of four, and the zero padding.
        for d in whole * block..self.kpad {
            let k = (d & !3) | PERM[d & 3];
            cols[2 * (d & !3) + off + (d & 3)] = if k < self.kdim {
                let (ci, tap) = (k / (self.k * self.k), k % (self.k * self.k));
                let at = (tap / self.k) * w2 + tap % self.k + usize::from(self.k == 1);
                staged[ci * self.k * w2 + x + at]
            } else {
                0
            };
        }
    }
}

/// [`super::ops::run_conv`] on the integer path: `dst = scale * (sum of terms + add[co])`,
/// a row of outputs at a time.
pub(super) fn run_conv<S: Store>(
    ctx: &mut Ctx<'_, S>,
    terms: &[(Option<&Conv<'_>>, &Src<'_>)],
    cout: usize,
    add: Option<Buf>,
    scale: f32,
    dst: Dst,
) {
    let r = terms[0].1.res_out();
    let w2 = r + 2;
    let res_in = terms.iter().map(|t| t.1.res_in).max().unwrap_or(0);
    let mark = ctx.f.mark();
    // Staged rows of every convolution term (i16, two to an f32 word), one region.
    let stage_words: usize = terms
        .iter()
        .filter_map(|t| t.0)
        .map(|cv| (cv.cin * cv.k * w2).div_ceil(2))
        .sum();
    let kpad_max = terms
        .iter()
        .filter_map(|t| t.0)
        .map(|cv| padded(cv.cin * cv.k * cv.k))
        .max()
        .unwrap_or(0);
    let stage = ctx.f.alloc(stage_words);
    let cols = ctx.f.alloc(kpad_max);
    let acc = ctx.f.alloc(cout * r);
    let row = ctx.f.alloc(r.max(res_in));
    let tmp = ctx.f.alloc(2 * res_in);
    let bias = ctx.f.alloc(cout);
    if ctx.dry {
        ctx.f.release(mark);
        return;
    }
    let out_f = match dst {
        Dst::F32(b) => b,
        Dst::Stored(_) => Buf {
            off: bias.off + bias.len,
            len: 0,
        },
    };
    let add_v: Vec<f32> = match add {
        Some(a) => ctx.f.data[a.off..a.off + a.len].to_vec(),
        None => Vec::new(),
    };
    let [stage, cols, acc, row, tmp, bias_v, out_f] =
        disjoint(&mut *ctx.f.data, [stage, cols, acc, row, tmp, bias, out_f]);
    let sdata = &mut *ctx.s.data;
    let (view, out_s): (View<'_, S>, &mut [S]) = match dst {
        Dst::Stored(b) => View::around(sdata, b),
        Dst::F32(_) => (View::whole(sdata), &mut []),
    };
    // The terms' plans: input scales from bounds over the whole inputs, before any row is
    // staged; per output channel the bias sum and each term's f32 scale of its sums.
    let mut plans: Vec<Option<Term<'_>>> = Vec::with_capacity(terms.len());
    let mut bias_sum = alloc::vec![0.0f32; cout];
    let mut out_scales: Vec<f32> = Vec::with_capacity(terms.len() * cout);
    for (conv, src) in terms {
        let Some(cv) = conv else {
            plans.push(None);
            continue;
        };
        let w = rows_of(cv).expect("runs() checked the weights");
        let kdim = cv.cin * cv.k * cv.k;
        let qmax = qmax_for(kdim);
        let (step, inv) = fixed_point(source_bound(src, &view), qmax);
        let kk = cv.k * cv.k;
        let mut table = [0u16; 36];
        for (d, t) in table.iter_mut().enumerate().take(4 * kk) {
            let k = (d & !3) | PERM[d & 3];
            let (ci, tap) = (k / kk, k % kk);
            let off = ci * cv.k * w2 + (tap / cv.k) * w2 + tap % cv.k;
            *t = (off + usize::from(cv.k == 1)) as u16;
        }
        cv.b.read(0, bias_v);
        bias_sum
            .iter_mut()
            .zip(bias_v.iter())
            .for_each(|(s, b)| *s += b);
        out_scales.extend((0..cout).map(|co| step * w.scale(co)));
        plans.push(Some(Term {
            w,
            k: cv.k,
            cin: cv.cin,
            kdim,
            kpad: padded(kdim),
            inv,
            qmax: qmax as i32,
            table,
        }));
    }
    let stage: &mut [i16] = bytemuck::cast_slice_mut(stage);
    stage.iter_mut().for_each(|v| *v = 0);
    let cols16: &mut [i16] = bytemuck::cast_slice_mut(cols);
    let units = S::row_units(r);
    for y in 0..r {
        for (co, a) in acc.chunks_exact_mut(r).enumerate() {
            a.iter_mut().for_each(|v| *v = bias_sum[co]);
        }
        let mut stage_at = 0;
        let mut scale_at = 0;
        for ((_, src), plan) in terms.iter().zip(&plans) {
            let Some(p) = plan else {
                // An identity residual: the source's row as it is.
                for (co, a) in acc.chunks_exact_mut(r).enumerate() {
                    src.row(&view, co, y as isize, row, tmp);
                    a.iter_mut().zip(row.iter()).for_each(|(a, v)| *a += v);
                }
                continue;
            };
            let len = p.cin * p.k * w2;
            let st = &mut stage[stage_at..stage_at + len];
            stage_at += len.next_multiple_of(2);
            let sc = &out_scales[scale_at..scale_at + cout];
            scale_at += cout;
            // Stage the rows this output row needs: y - 1 ..= y + 1 for a 3x3 kernel, all
            // three at the first row, then the two kept moved up and one new.
            let slots = p.k;
            let half = p.k / 2;
            let fresh = if y == 0 { 0..slots } else { slots - 1..slots };
            for ci in 0..p.cin {
                let ch = &mut st[ci * slots * w2..(ci + 1) * slots * w2];
                if y > 0 && slots > 1 {
                    ch.copy_within(w2.., 0);
                }
                for slot in fresh.clone() {
                    let yy = y as isize + slot as isize - half as isize;
                    src.row_with(&view, ci, yy, row, tmp, silu_fast);
                    let dst = &mut ch[slot * w2 + 1..slot * w2 + 1 + r];
                    for (d, &v) in dst.iter_mut().zip(row.iter()) {
                        *d = quantize(v, p.inv, p.qmax);
                    }
                }
            }
            // Pairs of output pixels against each output channel.
            let mut x = 0;
            while x < r {
                let x1 = (x + 1).min(r - 1);
                p.gather(st, w2, x, 0, cols16);
                p.gather(st, w2, x1, 1, cols16);
                let words: &[u32] = bytemuck::cast_slice(&cols16[..2 * p.kpad]);
                for (co, &scale_co) in sc.iter().enumerate() {
                    let [d0, d1] = dot1x2(p.w.row(co), words, p.kdim);
                    acc[co * r + x] += d0 as f32 * scale_co;
                    if x1 != x {
                        acc[co * r + x1] += d1 as f32 * scale_co;
                    }
                }
                x += 2;
            }
        }
        for (co, a) in acc.chunks_exact_mut(r).enumerate() {
            let extra = if add.is_some() { add_v[co] } else { 0.0 };
            a.iter_mut().for_each(|v| *v = (*v + extra) * scale);
            let at = co * r + y;
            match dst {
                Dst::Stored(_) => S::save_row(a, &mut out_s[at * units..(at + 1) * units]),
                Dst::F32(_) => out_f[at * r..(at + 1) * r].copy_from_slice(a),
            }
        }
    }
    ctx.f.release(mark);
}

/// `sum a[i] b[i]` of i16 pairs (`a`, `b` as words), in i32: the caller bounds the values.
#[inline(always)]
fn dot_i16(a: &[u32], b: &[u32]) -> i32 {
    a.iter().zip(b).fold(0, |s, (&x, &y)| dsp::smlad(x, y, s))
}

/// `sum a[i] b[i]` of i16 pairs in i64 (`SMLALD`): no bound needed.
#[inline(always)]
fn dot_i16_wide(a: &[u32], b: &[u32]) -> i64 {
    a.iter().zip(b).fold(0, |s, (&x, &y)| dsp::smlald(x, y, s))
}

/// Whether [`attention_core`] runs: int8 projection rows and an even channel count (the
/// query-key products are taken two channels to a word).
pub(super) fn attention_runs(proj: &Conv<'_>, c: usize) -> bool {
    rows_of(proj).is_some() && c.is_multiple_of(2)
}

/// [`super::ops::attention`] after the `qkv` convolution, on the integer path: keys (as
/// `[j][c]`) and values (as `[c][j]`) staged as i16 once; per query `q k^T` with `SMLAD`
/// (q and k scaled so `c` products fit an i32), softmax weights in f32 then as i16 steps of
/// 1/32767 (the largest is 1), `p v` with `SMLALD` (64-bit sums), and the projection as a
/// 1x1 convolution of int8 rows; `x <- (proj + x) / sqrt 2` a row of queries at a time.
pub(super) fn attention_core<S: Store>(
    ctx: &mut Ctx<'_, S>,
    proj: &Conv<'_>,
    x: Buf,
    qkv: Buf,
    c: usize,
    res: usize,
) {
    let n = res * res;
    let n2 = n.next_multiple_of(2);
    let cpad = padded(c);
    let (mark, smark) = (ctx.f.mark(), ctx.s.mark());
    // The staged keys sit in the stored pool and the values in the f32 pool: both pools
    // peak elsewhere (the decoder's full-resolution blocks, its widest convolution), so
    // split this way attention raises neither much.
    let i16_units = |values: usize| (2 * values).div_ceil(core::mem::size_of::<S>());
    // Word-aligned (the keys are read as u32 pairs); the pool itself starts on a word.
    let size = core::mem::size_of::<S>();
    let _ = ctx.s.alloc((4 - ctx.s.mark() * size % 4) % 4 / size);
    let keys = ctx.s.alloc(i16_units(n * c).next_multiple_of(4 / size));
    // The logits and the projected rows (f32) beside them, for the same reason.
    let logits = ctx.s.alloc(4 * n / size);
    let outs = ctx.s.alloc(4 * c * res / size);
    let vals = ctx.f.alloc(c * n2 / 2);
    let weights = ctx.f.alloc(n2 / 2);
    let q = ctx.f.alloc(c);
    let q16 = ctx.f.alloc(c / 2);
    let a16 = ctx.f.alloc(cpad);
    let row = ctx.f.alloc(res);
    let bias = ctx.f.alloc(c);
    if ctx.dry {
        ctx.f.release(mark);
        ctx.s.release(smark);
        return;
    }
    let [vals, weights, q, q16, a16, row, bias] =
        disjoint(&mut *ctx.f.data, [vals, weights, q, q16, a16, row, bias]);
    let w = rows_of(proj).expect("attention_runs() checked the weights");
    proj.b.read(0, bias);
    // x below qkv below the staged keys (stack order).
    let [xs, t, keys, logits, outs] = disjoint(&mut *ctx.s.data, [x, qkv, keys, logits, outs]);
    let logits: &mut [f32] = bytemuck::cast_slice_mut(logits);
    let outs: &mut [f32] = bytemuck::cast_slice_mut(outs);
    let keys: &mut [i16] = bytemuck::cast_slice_mut(&mut keys[..2 * n * c / size]);
    let vals: &mut [i16] = bytemuck::cast_slice_mut(vals);
    let units = S::row_units(res);
    let t = &*t;
    let t_row = |ch: usize, y: usize| &t[(ch * res + y) * units..(ch * res + y + 1) * units];
    let bound_of = |which: usize| {
        let mut m = 0.0f32;
        for ch in 0..c {
            for y in 0..res {
                let b = S::row_bound(t_row(3 * ch + which, y), res);
                m = if b.is_nan() || m.is_nan() {
                    f32::NAN
                } else {
                    m.max(b)
                };
            }
        }
        m
    };
    // q k over c channels in i32: |q|, |k| <= sqrt(i32::MAX / c).
    let qk_max = libm::floorf(libm::sqrtf(i32::MAX as f32 / c as f32)).min(32767.0);
    let (k_step, k_inv) = fixed_point(bound_of(1), qk_max);
    let (v_step, v_inv) = fixed_point(bound_of(2), 32767.0);
    {
        vals.iter_mut().for_each(|v| *v = 0);
        for ch in 0..c {
            for y in 0..res {
                S::load_row(t_row(3 * ch + 1, y), row);
                for (xx, &v) in row.iter().enumerate() {
                    keys[(y * res + xx) * c + ch] = quantize(v, k_inv, qk_max as i32);
                }
                S::load_row(t_row(3 * ch + 2, y), row);
                for (xx, &v) in row.iter().enumerate() {
                    vals[ch * n2 + y * res + xx] = quantize(v, v_inv, 32767);
                }
            }
        }
    }
    let keys: &[u32] = bytemuck::cast_slice(&*keys);
    let vals: &[u32] = bytemuck::cast_slice(&*vals);
    let proj_qmax = qmax_for(c);
    let proj_scales: Vec<f32> = (0..c).map(|co| w.scale(co)).collect();
    let sqrt_c = libm::sqrt(c as f64) as f32;
    for qy in 0..res {
        for qx in 0..res {
            // The query, scaled by its own largest value.
            for (ch, qv) in q.iter_mut().enumerate() {
                *qv = S::at(t_row(3 * ch, qy), qx);
            }
            let qb = abs_max(q);
            let (q_step, q_inv) = fixed_point(qb, qk_max);
            {
                let q16: &mut [i16] = bytemuck::cast_slice_mut(q16);
                for (o, &v) in q16.iter_mut().zip(q.iter()) {
                    *o = quantize(v, q_inv, qk_max as i32);
                }
            }
            let q16w: &[u32] = bytemuck::cast_slice(q16);
            let logit_scale = q_step * k_step / sqrt_c;
            let mut max = f32::NEG_INFINITY;
            for (j, l) in logits.iter_mut().enumerate() {
                *l = dot_i16(q16w, &keys[j * c / 2..(j + 1) * c / 2]) as f32 * logit_scale;
                if *l > max {
                    max = *l;
                }
            }
            let mut total = 0i64;
            {
                let p16: &mut [i16] = bytemuck::cast_slice_mut(weights);
                p16.iter_mut().for_each(|v| *v = 0);
                for (p, &l) in p16.iter_mut().zip(logits.iter()) {
                    *p = quantize(exp_nonpositive(l - max), 32767.0, 32767);
                    total += *p as i64;
                }
            }
            let p16w: &[u32] = bytemuck::cast_slice(weights);
            let a_scale = v_step / total as f32;
            // a = p v / sum p, then quantized for the projection.
            for (ch, av) in q.iter_mut().enumerate() {
                let row_v = &vals[ch * n2 / 2..(ch + 1) * n2 / 2];
                *av = dot_i16_wide(p16w, row_v) as f32 * a_scale;
            }
            let ab = abs_max(q);
            let (a_step, a_inv) = fixed_point(ab, proj_qmax);
            {
                // One column, written twice into dot1x2's interleaved pair.
                let cols: &mut [i16] = bytemuck::cast_slice_mut(a16);
                for d in 0..cpad {
                    let k = (d & !3) | PERM[d & 3];
                    let v = if k < c {
                        quantize(q[k], a_inv, proj_qmax as i32)
                    } else {
                        0
                    };
                    let at = 2 * (d & !3) + (d & 3);
                    cols[at] = v;
                    cols[at + 4] = v;
                }
            }
            let cols: &[u32] = bytemuck::cast_slice(a16);
            for (co, &s_co) in proj_scales.iter().enumerate() {
                let [d, _] = dot1x2(w.row(co), cols, c);
                outs[co * res + qx] = d as f32 * (a_step * s_co) + bias[co];
            }
        }
        // Row qy of every channel: (proj + x) / sqrt 2.
        for co in 0..c {
            let at = (co * res + qy) * units;
            let xr = &mut xs[at..at + units];
            S::load_row(xr, row);
            for (v, &o) in row.iter_mut().zip(&outs[co * res..(co + 1) * res]) {
                *v = (o + *v) * SKIP_SCALE;
            }
            S::save_row(row, xr);
        }
    }
    ctx.f.release(mark);
    ctx.s.release(smark);
}

/// GroupNorm's mean and variance over the stored int8 rows of `src`'s channels `chans`
/// (before resampling; `count` values in all): the first pass sums each row's
/// integers and scales once per row; the second takes `(x - mean)^2` in f32 as the float
/// path does. `seen(ch, v)` gets each channel's extremes.
pub(super) fn group_moments<S: Store>(
    src: &Src<'_>,
    view: &View<'_, S>,
    chans: core::ops::Range<usize>,
    count: f32,
    mut seen: impl FnMut(usize, f32),
) -> (f32, f32) {
    let res = src.res_in;
    let rows = |c: usize, y: usize| -> &[i8] { bytemuck::cast_slice(src.stored(view, c, y)) };
    let mut sum = 0.0f32;
    for ch in chans.clone() {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for y in 0..res {
            let stored = rows(ch, y);
            let s = super::arena::row_scale(stored);
            let (mut total, mut qlo, mut qhi) = (0i32, i32::MAX, i32::MIN);
            for &q in &stored[2..2 + res] {
                let q = q as i32;
                total += q;
                qlo = qlo.min(q);
                qhi = qhi.max(q);
            }
            sum += total as f32 * s;
            let (a, b) = (qlo as f32 * s, qhi as f32 * s);
            if a < lo {
                lo = a;
            }
            if b > hi {
                hi = b;
            }
        }
        seen(ch, lo);
        seen(ch, hi);
    }
    let mean = sum / count;
    let mut sq = 0.0f32;
    for ch in chans {
        for y in 0..res {
            let stored = rows(ch, y);
            let s = super::arena::row_scale(stored);
            for &q in &stored[2..2 + res] {
                let d = q as f32 * s - mean;
                sq += d * d;
            }
        }
    }
    (mean, sq / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator for test data.
    fn lcg(state: &mut u64) -> u32 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (*state >> 33) as u32
    }

    #[test]
    fn the_portable_dsp_functions_are_the_instructions_definitions() {
        // SXTB16: bytes 0 and 2, sign-extended into the halfwords.
        assert_eq!(dsp::sxtb16(0x80_7F_FF_01), 0x007F_0001);
        assert_eq!(dsp::sxtb16_ror8(0x80_7F_FF_01), 0xFF80_FFFF);
        // SMLAD: two signed 16-bit products added to the accumulator.
        let pack = |lo: i16, hi: i16| (lo as u16 as u32) | ((hi as u16 as u32) << 16);
        assert_eq!(dsp::smlad(pack(-3, 7), pack(5, -2), 100), 100 - 15 - 14);
        assert_eq!(
            dsp::smlald(pack(i16::MIN, i16::MIN), pack(i16::MIN, i16::MIN), 1),
            1 + 2 * (1i64 << 30)
        );
    }

    /// The integer kernel against a plain i64 dot product, for lengths with and without a
    /// partial last group, through the same gather order the convolutions use.
    #[test]
    fn dot1x2_is_the_exact_dot_product() {
        let mut s = 7u64;
        for k in [1usize, 3, 4, 9, 16, 27, 36, 144, 145] {
            let w: Vec<u8> = (0..k).map(|_| (lcg(&mut s) % 255) as u8).collect();
            let x: Vec<i16> = (0..k).map(|_| lcg(&mut s) as i16).collect();
            let y: Vec<i16> = (0..k).map(|_| lcg(&mut s) as i16).collect();
            let kp = padded(k);
            let mut cols = vec![0i16; 2 * kp];
            for d in 0..kp {
                let n = (d & !3) | PERM[d & 3];
                let at = 2 * (d & !3) + (d & 3);
                if n < k {
                    cols[at] = x[n];
                    cols[at + 4] = y[n];
                }
            }
            let words: Vec<u32> = cols
                .chunks_exact(2)
                .map(|p| (p[0] as u16 as u32) | ((p[1] as u16 as u32) << 16))
                .collect();
            let want = |c: &[i16]| -> i64 {
                w.iter()
                    .zip(c)
                    .map(|(&a, &b)| a as i8 as i64 * b as i64)
                    .sum()
            };
            let [a, b] = dot1x2(&w, &words, k);
            // Within i32 here (k <= 145): the sums must be exact.
            assert_eq!(a as i64, want(&x), "k = {k}");
            assert_eq!(b as i64, want(&y), "k = {k}");
        }
    }

    #[test]
    fn the_fixed_point_bound_keeps_every_sum_in_an_i32() {
        for k in [1usize, 9, 144, 576, 1152, 4608] {
            let q = qmax_for(k) as i64;
            assert!(
                q <= 32767 && q * 127 * k as i64 <= i32::MAX as i64,
                "k = {k}"
            );
        }
        assert_eq!(fixed_point(0.0, 100.0), (0.0, 0.0));
        assert!(fixed_point(f32::INFINITY, 100.0).0.is_nan());
    }

    #[test]
    fn quantize_rounds_to_nearest_and_clamps() {
        assert_eq!(quantize(2.4, 1.0, 100), 2);
        assert_eq!(quantize(-2.6, 1.0, 100), -3);
        assert_eq!(quantize(2.5, 1.0, 100), 2); // ties to even
        assert_eq!(quantize(1e9, 1.0, 100), 100);
        assert_eq!(quantize(-1e9, 1.0, 100), -100);
    }

    /// The fast exponential and SiLU against libm's in f64.
    #[test]
    fn exp_and_silu_match_libm() {
        let mut worst = 0.0f64;
        for i in 0..=20000 {
            let x = -80.0 + 80.0 * i as f32 / 20000.0;
            let want = libm::exp(x as f64);
            let got = exp_nonpositive(x) as f64;
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 5e-6, "exp: relative error {worst:e}");
        let mut worst = 0.0f64;
        for i in 0..=40000 {
            let v = -20.0 + 40.0 * i as f32 / 40000.0;
            let want = v as f64 / (1.0 + libm::exp(-(v as f64)));
            let got = silu_fast(v) as f64;
            // The interpolation's bound, plus f32 rounding of values up to 20.
            worst = worst.max((got - want).abs());
            assert!(
                (got - want).abs() <= 6.2e-5 + 4e-6,
                "silu({v}) = {got}, want {want}"
            );
        }
        assert!(
            worst > 1e-5,
            "the test does not exercise the interpolation ({worst:e})"
        );
        assert!(silu_fast(f32::NAN).is_nan());
        assert_eq!(
            exp_nonpositive(-200.0),
            libm::ldexpf(1.0, -126) * exp_nonpositive(0.0)
        );
    }
}
