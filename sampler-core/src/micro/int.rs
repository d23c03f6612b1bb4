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
//! kernel, kept as a ring) are staged as i16 once per row straight from the stored int8
//! rows (GroupNorm's affine, SiLU and the rounding in one pass), then for each four output
//! pixels their receptive fields are gathered into four interleaved columns (im2col) and
//! dotted with every weight row (`rows_1x4`: 16 MACs per 13 instructions, each weight word
//! read once per four pixels, the loop over rows inside the `asm!`, the first term's sums
//! landing in the accumulator as they are); a row's last two pixels go in a pair
//! (`rows_1x2`, 8 MACs per 8). The columns are gathered in the order `SXTB16` unpacks
//! weights in (values 0, 2 of each group of four, then 1, 3), so the weights need no
//! reordering. Attention takes four queries at a time the same way (`rows_i16_1x4` for the
//! query-key products, `rows_1x4` for the projection), and GroupNorm's statistics are one
//! integer pass (`row_moments`).

use alloc::vec::Vec;

use super::arena::{Buf, Ctx, Store, View, abs_max, abs_max_bits, disjoint, round_even};
use super::source::{Dst, Src, residual_row};
use super::weights::Conv;
use crate::config::Resample;
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

/// Groups of four weights one pass of [`rows_1x4`]'s unrolled body covers (K up to 512;
/// longer rows take several passes, as mnist8's K = 576 does, so the firmware test runs
/// both). 52 bytes of code each: 6.7 KB of flash.
#[cfg(fewstep_dsp)]
const UNROLLED_GROUPS: usize = 128;

/// Groups of four channels one pass of [`rows_i16_1x4`] covers (attention up to 128
/// channels in one pass): 44 bytes of code each.
#[cfg(fewstep_dsp)]
const UNROLLED_I16_GROUPS: usize = 32;

/// A kernel `fn(w, k, cols, out, stride, rows)`: `out[r stride + j] += w_r . x_j` (`j <
/// 4`) for `rows` consecutive rows of `k` values (`k` a multiple of four, rows contiguous
/// in `w`, `group_bytes` bytes per four values) against four interleaved columns
/// (`col_words` column words per group of four values; a body that reads two columns
/// leaves sums 2 and 3 as they were). No loop counter: the body (`body_bytes` of
/// 32-bit encodings, one group) is written out `unroll` times and each row jumps to the
/// body `k / 4` groups from its end (Duff's device), so the twelve registers `asm!` may use
/// hold four sums, two weight registers (r4, r5), four column words (r8-r11) and the two
/// pointers (r12 weights, lr columns). The loop over rows is in the assembly too, its
/// state on the stack, so a row costs 17 instructions besides its body (a call per row
/// cost ~60); rows longer than the unrolled body take several passes, each adding its part
/// of every row to `out`.
#[cfg(fewstep_dsp)]
macro_rules! duff_kernel {
    ($(#[$m:meta])* fn $name:ident(w: &[$wt:ty]), group_bytes = $gb:expr, col_words = $cw:expr,
     unroll = $unroll:expr, body_bytes = $bb:expr, body = [$($body:literal),+ $(,)?]) => {
        $(#[$m])*
        #[inline(never)]
        fn $name(w: &[$wt], k: usize, cols: &[u32], out: &mut [i32], stride: usize, rows: usize) {
            const GROUP_BYTES: usize = $gb;
            const COL_WORDS: usize = $cw;
            let groups = k / 4;
            let w_bytes = core::mem::size_of_val(w);
            assert!(k.is_multiple_of(4) && w_bytes >= GROUP_BYTES * groups * rows);
            assert!(cols.len() >= COL_WORDS * groups);
            if rows == 0 {
                return;
            }
            assert!(stride >= 4 && out.len() >= (rows - 1) * stride + 4);
            let mut done = 0;
            while done < groups {
                let n = (groups - done).min($unroll);
                // The frame the loop keeps on the stack: jump target (computed in the asm
                // from `skip`), output pointer, rows left, column pointer of this pass, the
                // bytes from the end of one row's pass to the start of the next row's, and
                // the bytes between rows of `out`.
                let skip = $bb * ($unroll - n);
                let frame: [usize; 5] = [
                    out.as_mut_ptr() as usize,
                    rows,
                    cols[COL_WORDS * done..].as_ptr() as usize,
                    GROUP_BYTES * (groups - n),
                    4 * stride,
                ];
                // SAFETY: for each of `rows` rows reads `n` groups of weights from the row's
                // group `done` on (unaligned word loads where `w` is bytes, which the M4
                // allows) and `COL_WORDS n` column words from `cols[COL_WORDS done..]`
                // (asserted above), and
                // reads and writes the four words at `out[r stride..]`; writes only the
                // named registers, and restores `sp` (24 bytes pushed and popped). The jump
                // lands on a body boundary: every instruction of the body has a 32-bit
                // encoding.
                unsafe {
                    core::arch::asm!(
                        "ldr r8, [r10, #16]",
                        "push {{r8}}",
                        "ldm r10, {{r8, r9, r10, r11}}",
                        "push {{r8, r9, r10, r11}}",
                        "adr.w r8, 3f",
                        "add r8, r8, lr",
                        "orr r8, r8, #1",
                        "push {{r8}}",
                        // sp: [target, out, rows, cols, gap, stride]
                        "2:",
                        "ldr r8, [sp, #4]",
                        "ldm r8, {{r0, r1, r2, r3}}",
                        "ldr lr, [sp, #12]",
                        "ldr r8, [sp]",
                        "bx r8",
                        ".p2align 2",
                        "3:",
                        ".rept {groups}",
                        $($body,)+
                        ".endr",
                        "ldr r8, [sp, #4]",
                        "stm r8, {{r0, r1, r2, r3}}",
                        "ldr r9, [sp, #20]",
                        "add r8, r8, r9",
                        "str r8, [sp, #4]",
                        "ldr r8, [sp, #16]",
                        "add r12, r12, r8",
                        "ldr r8, [sp, #8]",
                        "subs r8, r8, #1",
                        "str r8, [sp, #8]",
                        "bne 2b",
                        "add sp, sp, #24",
                        groups = const $unroll,
                        out("r0") _,
                        out("r1") _,
                        out("r2") _,
                        out("r3") _,
                        out("r4") _,
                        out("r5") _,
                        out("r8") _,
                        out("r9") _,
                        inout("r10") frame.as_ptr() => _,
                        out("r11") _,
                        inout("r12") (w.as_ptr() as *const u8).add(GROUP_BYTES * done) => _,
                        inout("lr") skip => _,
                    );
                }
                done += n;
            }
        }
    };
}

#[cfg(fewstep_dsp)]
duff_kernel! {
    /// Int8 weight rows (`k` bytes each) against four interleaved columns (`[x0 02, x0 13,
    /// x1 02, .., x3 13]` per group, [`PERM`] order): the inner loop of convolutions, 13
    /// instructions per 16 MACs (one weight word unpacked by two `SXTB16`, `LDM` of four
    /// column words twice, 8 `SMLAD`).
    fn rows_1x4(w: &[u8]), group_bytes = 4, col_words = 8, unroll = UNROLLED_GROUPS,
    body_bytes = 52,
    body = [
        "ldr.w r5, [r12], #4",
        "sxtb16 r4, r5",
        "sxtb16 r5, r5, ror #8",
        "ldmia.w lr!, {{r8, r9, r10, r11}}",
        "smlad r0, r4, r8, r0",
        "smlad r0, r5, r9, r0",
        "smlad r1, r4, r10, r1",
        "smlad r1, r5, r11, r1",
        "ldmia.w lr!, {{r8, r9, r10, r11}}",
        "smlad r2, r4, r8, r2",
        "smlad r2, r5, r9, r2",
        "smlad r3, r4, r10, r3",
        "smlad r3, r5, r11, r3",
    ]
}

#[cfg(fewstep_dsp)]
duff_kernel! {
    /// Rows of i16 pairs (`k` values, `k / 2` words each: attention's keys) against four
    /// interleaved columns (`[x0 01, x0 23, x1 01, .., x3 23]` per group of four, natural
    /// order): 11 instructions per 16 MACs.
    fn rows_i16_1x4(w: &[u32]), group_bytes = 8, col_words = 8, unroll = UNROLLED_I16_GROUPS,
    body_bytes = 44,
    body = [
        "ldmia.w r12!, {{r4, r5}}",
        "ldmia.w lr!, {{r8, r9, r10, r11}}",
        "smlad r0, r4, r8, r0",
        "smlad r0, r5, r9, r0",
        "smlad r1, r4, r10, r1",
        "smlad r1, r5, r11, r1",
        "ldmia.w lr!, {{r8, r9, r10, r11}}",
        "smlad r2, r4, r8, r2",
        "smlad r2, r5, r9, r2",
        "smlad r3, r4, r10, r3",
        "smlad r3, r5, r11, r3",
    ]
}

#[cfg(fewstep_dsp)]
duff_kernel! {
    /// [`rows_1x4`] for two columns (`[x0 02, x0 13, x1 02, x1 13]` per group; sums 2 and 3
    /// untouched): a row's last two pixels, 8 instructions per 8 MACs.
    fn rows_1x2(w: &[u8]), group_bytes = 4, col_words = 4, unroll = UNROLLED_GROUPS,
    body_bytes = 32,
    body = [
        "ldr.w r5, [r12], #4",
        "sxtb16 r4, r5",
        "sxtb16 r5, r5, ror #8",
        "ldmia.w lr!, {{r8, r9, r10, r11}}",
        "smlad r0, r4, r8, r0",
        "smlad r0, r5, r9, r0",
        "smlad r1, r4, r10, r1",
        "smlad r1, r5, r11, r1",
    ]
}

#[cfg(not(fewstep_dsp))]
fn rows_1x2(w: &[u8], k: usize, cols: &[u32], out: &mut [i32], stride: usize, rows: usize) {
    for r in 0..rows {
        let (s0, s1) = groups_1x2(&w[r * k..(r + 1) * k], cols, k / 4);
        out[r * stride] = out[r * stride].wrapping_add(s0);
        out[r * stride + 1] = out[r * stride + 1].wrapping_add(s1);
    }
}

#[cfg(not(fewstep_dsp))]
fn rows_i16_1x4(w: &[u32], k: usize, cols: &[u32], out: &mut [i32], stride: usize, rows: usize) {
    for r in 0..rows {
        let s = &mut out[r * stride..r * stride + 4];
        for (a, c) in w[r * k / 2..(r + 1) * k / 2]
            .chunks_exact(2)
            .zip(cols[..2 * k].chunks_exact(8))
        {
            for (j, sj) in s.iter_mut().enumerate() {
                *sj = dsp::smlad(a[1], c[2 * j + 1], dsp::smlad(a[0], c[2 * j], *sj));
            }
        }
    }
}

#[cfg(not(fewstep_dsp))]
fn rows_1x4(w: &[u8], k: usize, cols: &[u32], out: &mut [i32], stride: usize, rows: usize) {
    for r in 0..rows {
        let s = &mut out[r * stride..r * stride + 4];
        for (a, c) in w[r * k..(r + 1) * k]
            .chunks_exact(4)
            .zip(cols[..2 * k].chunks_exact(8))
        {
            let a = u32::from_le_bytes([a[0], a[1], a[2], a[3]]);
            let (a02, a13) = (dsp::sxtb16(a), dsp::sxtb16_ror8(a));
            for (j, sj) in s.iter_mut().enumerate() {
                *sj = dsp::smlad(a13, c[2 * j + 1], dsp::smlad(a02, c[2 * j], *sj));
            }
        }
    }
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

/// The largest staged value for dot products of `k` terms with int8 weights (|w| <= 127)
/// whose sums cannot leave an i32: staged values lie in `[-qmax - 1, qmax]`
/// ([`clamp_staged`]), so `(qmax + 1) 127 k` must fit.
fn qmax_for(k: usize) -> f32 {
    (i32::MAX as u64 / (127 * k.max(1) as u64) - 1).min(i16::MAX as u64) as f32
}

/// A staged value: `x` within `[-qmax - 1, qmax]`, the two's complement range, which is
/// i16's whole range for `qmax = i16::MAX` (every convolution with `k <= 516`): one `SSAT`
/// on the M4 where a symmetric clamp takes two compares and two moves.
#[inline(always)]
fn clamp_staged<const FULL: bool>(x: i32, qmax: i32) -> i16 {
    if FULL {
        x.clamp(i16::MIN as i32, i16::MAX as i32) as i16
    } else {
        x.max(-qmax - 1).min(qmax) as i16
    }
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

/// `act` of a row, scaled, rounded and [`clamp_staged`], the scale and clamp in registers
/// (reading them through a reference each value took 15 instructions, not 8).
#[inline(always)]
fn quantize_row(src: &[f32], dst: &mut [i16], inv: f32, qmax: i32, act: impl Fn(f32) -> f32) {
    if qmax == i16::MAX as i32 {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = clamp_staged::<true>(round_even(act(v) * inv), qmax);
        }
    } else {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = clamp_staged::<false>(round_even(act(v) * inv), qmax);
        }
    }
}

/// The stored rows `ys` (input resolution) of channel `ci` of `src`, an int8-stored source
/// without the box filter, through its affine and SiLU and [`quantize`]d into `dst`, row
/// `ys.start + j` at `dst[j pitch..]` (an upsampled row's values twice each, side by side):
/// one pass from the stored bytes, each value computed as `load_row_affine` then
/// [`quantize_row`] compute it (the same bits), once. The choice of arithmetic is made once
/// for all the rows (a whole small map at a time: per row it cost as much as 8 values).
/// Consecutive values of a row lie `STEP` apart (4 in [`blocked`] staging).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn stage_stored<S: Store, const STEP: usize>(
    src: &Src<'_>,
    view: &View<'_, S>,
    ci: usize,
    ys: core::ops::Range<usize>,
    dst: &mut [i16],
    pitch: usize,
    inv: f32,
    qmax: i32,
) {
    let full = qmax == i16::MAX as i32;
    let (a, b) = src.affine.map_or((1.0, 0.0), |a| a[ci]);
    let units = S::row_units(src.res_in);
    let rows = &src.stored_rows(view, ci)[ys.start * units..ys.end * units];
    let table = core::hint::black_box(&SILU_TABLE);
    macro_rules! each_row {
        ($repeat:literal, $full:literal, $silu:literal) => {
            for (j, stored) in rows.chunks_exact(units).enumerate() {
                let (row_scale, q) = S::scaled_values(stored, src.res_in);
                let scale = row_scale * a;
                let d = &mut dst[j * pitch..j * pitch + $repeat * STEP * src.res_in];
                if $silu {
                    // SiLU's table position `32 v + 512` straight from the stored value, the
                    // affine folded in (two instructions a value fewer).
                    let (ts, tb) = (scale * 32.0, b * 32.0 + 512.0);
                    let act = |v: f32| silu_at(table, v * ts + tb);
                    quantize_stored::<S, $repeat, $full, STEP>(q, d, inv, qmax, act);
                } else {
                    // The affine and the staging's scale folded (one multiply-add a value).
                    let (si, bi) = (scale * inv, b * inv);
                    let act = |v: f32| v * si + bi;
                    quantize_stored::<S, $repeat, $full, STEP>(q, d, 1.0, qmax, act);
                }
            }
        };
    }
    if full && STEP == 4 {
        // f32 rows in blocked staging on the M4 (digits8's maps, which CI's firmware check
        // runs): the whole channel in one loop of its own.
        let k = if src.silu {
            [a * 32.0, b * 32.0 + 512.0, inv]
        } else {
            [a * inv, b * inv, 1.0]
        };
        let up = src.resample == Resample::Up;
        let done = match (S::as_f32(rows), up, src.silu) {
            (Some(v), false, true) => {
                stage_f32::<1, STEP, true>(v, src.res_in, pitch, dst, k, table)
            }
            (Some(v), true, true) => {
                stage_f32::<2, STEP, true>(v, src.res_in, pitch, dst, k, table)
            }
            (Some(v), false, false) => {
                stage_f32::<1, STEP, false>(v, src.res_in, pitch, dst, k, table)
            }
            (Some(v), true, false) => {
                stage_f32::<2, STEP, false>(v, src.res_in, pitch, dst, k, table)
            }
            (None, ..) => false,
        };
        if done {
            return;
        }
    }
    match (src.resample == Resample::Up, src.silu, full) {
        (false, false, true) => each_row!(1, true, false),
        (false, false, false) => each_row!(1, false, false),
        (false, true, true) => each_row!(1, true, true),
        (false, true, false) => each_row!(1, false, true),
        (true, false, true) => each_row!(2, true, false),
        (true, false, false) => each_row!(2, false, false),
        (true, true, true) => each_row!(2, true, true),
        (true, true, false) => each_row!(2, false, true),
    }
}

/// [`quantize_stored`] over the f32 rows `vals` (`res` values each, into `dst` rows `pitch`
/// apart) with a full-range [`clamp_staged`], as one loop of M4 code per channel: the same
/// operations in the same order (`VMLA` rounds its product, as the portable code's separate
/// multiply and add do; `VCVTR` rounds to nearest even as [`round_even`] does within the
/// staged range), so the same bits. With `SILU`, `k` holds the table position's scale and
/// offset and the staging's `1 / step` (~19 instructions a value, where the compiled rows
/// took ~27 with their setup); without, the folded affine `v k0 + k1` is the staged value
/// (~9). Blocked staging only (`STEP` 4, values a pixel of four channels apart): the layout
/// CI's firmware check runs (digits8), so every variant here is compared with the host's
/// bits. Returns whether it ran.
#[cfg(fewstep_dsp)]
#[inline(always)]
fn stage_f32<const REPEAT: usize, const STEP: usize, const SILU: bool>(
    vals: &[f32],
    res: usize,
    pitch: usize,
    dst: &mut [i16],
    k: [f32; 3],
    table: &[[f32; 2]; 1024],
) -> bool {
    let width = REPEAT * STEP * res;
    let rows = vals.len() / res.max(1);
    if res == 0 || rows == 0 {
        return true;
    }
    if pitch < width || dst.len() < (rows - 1) * pitch + width {
        return false;
    }
    let consts: [f32; 7] = [k[0], k[1], k[2], 1024.0, 512.0, 1.0 / 32.0, 0.0];
    macro_rules! kernel {
        (plain, $($store:literal),+) => {
            // SAFETY: as below, without the table.
            unsafe {
                core::arch::asm!(
                    "vpush {{s0-s15}}",
                    "vldmia {c}, {{s8-s9}}",
                    "1:",
                    "mov {n}, {res}",
                    "2:",
                    "vldmia {q}!, {{s0}}",
                    "vmov.f32 s1, s9",
                    "vmla.f32 s1, s0, s8",
                    "vcvtr.s32.f32 s1, s1",
                    "vmov {t}, s1",
                    "ssat {t}, #16, {t}",
                    $($store,)+
                    "subs {n}, {n}, #1",
                    "bne 2b",
                    "add {d}, {d}, {gap}",
                    "subs {rows}, {rows}, #1",
                    "bne 1b",
                    "vpop {{s0-s15}}",
                    q = inout(reg) vals.as_ptr() => _,
                    d = inout(reg) dst.as_mut_ptr() => _,
                    rows = inout(reg) rows => _,
                    n = out(reg) _,
                    t = out(reg) _,
                    res = in(reg) res,
                    gap = in(reg) 2 * (pitch - width),
                    c = in(reg) consts.as_ptr(),
                );
            }
        };
        (silu, $($store:literal),+) => {
            // SAFETY: reads the `rows res` values of `vals`, the seven constants and the
            // table entry of each in-range position (index < 1024 checked); writes
            // `dst[y pitch + j REPEAT STEP + i STEP]` (y < rows, j < res, i < REPEAT), within
            // `dst` (checked above); saves and restores the float registers it uses
            // (`asm!` cannot name them on this target without the unstable `vfp2`
            // feature); clobbers only the named core registers and the flags.
            unsafe {
                core::arch::asm!(
                    "vpush {{s0-s15}}",
                    "vldmia {c}, {{s8-s14}}",
                    "1:",
                    "mov {n}, {res}",
                    "2:",
                    "vldmia {q}!, {{s0}}",
                    "vmov.f32 s1, s9",
                    "vmla.f32 s1, s0, s8",
                    "vcvt.s32.f32 s2, s1",
                    "vmov {t}, s2",
                    "cmp {t}, #1024",
                    "bhs 4f",
                    "vcvt.f32.u32 s2, s2",
                    "add {t}, {tab}, {t}, lsl #3",
                    "vldmia {t}, {{s3, s4}}",
                    "vsub.f32 s1, s1, s2",
                    "vmla.f32 s3, s1, s4",
                    "3:",
                    "vmul.f32 s5, s3, s10",
                    "vcvtr.s32.f32 s5, s5",
                    "vmov {t}, s5",
                    "ssat {t}, #16, {t}",
                    $($store,)+
                    "subs {n}, {n}, #1",
                    "bne 2b",
                    "add {d}, {d}, {gap}",
                    "subs {rows}, {rows}, #1",
                    "bne 1b",
                    "b 6f",
                    // Past the table: v itself above it, 0 below.
                    "4:",
                    "vcmp.f32 s1, s11",
                    "vmrs APSR_nzcv, fpscr",
                    "bge 5f",
                    "vmov.f32 s3, s14",
                    "b 3b",
                    "5:",
                    "vsub.f32 s3, s1, s12",
                    "vmul.f32 s3, s3, s13",
                    "b 3b",
                    "6:",
                    "vpop {{s0-s15}}",
                    q = inout(reg) vals.as_ptr() => _,
                    d = inout(reg) dst.as_mut_ptr() => _,
                    rows = inout(reg) rows => _,
                    n = out(reg) _,
                    t = out(reg) _,
                    res = in(reg) res,
                    gap = in(reg) 2 * (pitch - width),
                    tab = in(reg) table.as_ptr(),
                    c = in(reg) consts.as_ptr(),
                );
            }
        };
    }
    match (REPEAT, STEP, SILU) {
        (1, 4, true) => kernel!(silu, "strh {t}, [{d}], #8"),
        (2, 4, true) => kernel!(silu, "strh {t}, [{d}, #8]", "strh {t}, [{d}], #16"),
        (1, 4, false) => kernel!(plain, "strh {t}, [{d}], #8"),
        (2, 4, false) => kernel!(plain, "strh {t}, [{d}, #8]", "strh {t}, [{d}], #16"),
        _ => return false,
    }
    true
}

/// The portable build stages through [`quantize_stored`].
#[cfg(not(fewstep_dsp))]
#[inline(always)]
fn stage_f32<const REPEAT: usize, const STEP: usize, const SILU: bool>(
    _vals: &[f32],
    _res: usize,
    _pitch: usize,
    _dst: &mut [i16],
    _k: [f32; 3],
    _table: &[[f32; 2]; 1024],
) -> bool {
    false
}

/// The whole input of term `p` at output resolution `r` ([`WHOLE_MAP_RES`]) staged into
/// `st` (zeros, which stay around the map): channel `ci` from `ci p.cs`, after `half` zero
/// rows and a zero column.
#[inline(never)]
fn stage_map<S: Store>(
    p: &Term<'_>,
    src: &Src<'_>,
    view: &View<'_, S>,
    st: &mut [i16],
    r: usize,
    row: &mut [f32],
    tmp: &mut [f32],
) {
    let (w2, half) = (r + 2, p.k / 2);
    if p.blocked {
        stage_map_blocked(p, src, view, st, r, row, tmp);
        return;
    }
    for ci in 0..p.cin {
        let ch = &mut st[ci * p.cs + half * w2 + 1..(ci + 1) * p.cs];
        if src.resample != Resample::Down {
            let up = src.resample == Resample::Up;
            let pitch = if up { 2 * w2 } else { w2 };
            stage_stored::<S, 1>(src, view, ci, 0..src.res_in, ch, pitch, p.inv, p.qmax);
            if up {
                for y2 in (0..r).step_by(2) {
                    ch.copy_within(y2 * w2..y2 * w2 + r, (y2 + 1) * w2);
                }
            }
        } else {
            for yy in 0..r {
                let dst = &mut ch[yy * w2..yy * w2 + r];
                stage_row(src, view, ci, yy as isize, dst, row, tmp, p.inv, p.qmax);
            }
        }
    }
}

/// [`stage_map`] for a [`blocked`] term: block `b` of four channels is a plane of `r + 2`
/// rows of `r + 2` pixels (zeros around the map), a pixel its four channels in [`PERM`]
/// order (two words: channels 0 and 2, then 1 and 3).
fn stage_map_blocked<S: Store>(
    p: &Term<'_>,
    src: &Src<'_>,
    view: &View<'_, S>,
    st: &mut [i16],
    r: usize,
    row: &mut [f32],
    tmp: &mut [f32],
) {
    let w2 = r + 2;
    let (plane, pitch) = (4 * w2 * w2, 4 * w2);
    let up = src.resample == Resample::Up;
    for ci in 0..p.cin {
        let (b, lane) = (ci / 4, PERM[ci % 4]);
        // Pixel (0, 0) of the map, after the zero row and column.
        let ch = &mut st[b * plane + pitch + 4 + lane..(b + 1) * plane];
        if src.resample != Resample::Down {
            let rows_apart = if up { 2 * pitch } else { pitch };
            stage_stored::<S, 4>(src, view, ci, 0..src.res_in, ch, rows_apart, p.inv, p.qmax);
        } else if let Some(vals) = S::as_f32(src.stored_rows(view, ci)) {
            stage_down_f32(src, ci, vals, r, (ch, pitch), (p.inv, p.qmax));
        } else {
            let mut vals = [0i16; WHOLE_MAP_RES];
            for yy in 0..r {
                let v = &mut vals[..r];
                stage_row(src, view, ci, yy as isize, v, row, tmp, p.inv, p.qmax);
                for (x, &v) in v.iter().enumerate() {
                    ch[yy * pitch + 4 * x] = v;
                }
            }
        }
        if up && (ci % 4 == 3 || ci + 1 == p.cin) {
            // The block's upsampled rows, each twice (its four channels at once).
            let pl = &mut st[b * plane..(b + 1) * plane];
            for y2 in (0..r).step_by(2) {
                let at = (1 + y2) * pitch;
                pl.copy_within(at..at + pitch, at + pitch);
            }
        }
    }
}

/// [`stage_map_blocked`]'s box-filtered channel `ci` from f32 rows `vals` (`2 r` rows of
/// `2 r` values), in one pass: [`Src::row`]'s operations (the affine, SiLU, the box's
/// three halvings) and [`quantize_row`]'s in the same order, so the same bits, without its
/// row copies (four passes a row of ~10 values each on the M4). Output pixel `(y, x)` at
/// `dst[y pitch + 4 x]`.
fn stage_down_f32(
    src: &Src<'_>,
    ci: usize,
    vals: &[f32],
    r: usize,
    (dst, pitch): (&mut [i16], usize),
    (inv, qmax): (f32, i32),
) {
    let ri = 2 * r;
    let table = core::hint::black_box(&SILU_TABLE);
    let affine = src.affine.map(|a| a[ci]);
    let value = |v: f32| {
        let v = affine.map_or(v, |(a, b)| v * a + b);
        if src.silu { silu_in(table, v) } else { v }
    };
    let full = qmax == i16::MAX as i32;
    for (y, rows) in vals[..ri * ri].chunks_exact(2 * ri).enumerate() {
        let (t0, t1) = rows.split_at(ri);
        let out = &mut dst[y * pitch..y * pitch + 4 * (r - 1) + 1];
        for x in 0..r {
            let top = (value(t0[2 * x]) + value(t0[2 * x + 1])) * 0.5;
            let bottom = (value(t1[2 * x]) + value(t1[2 * x + 1])) * 0.5;
            let q = round_even((top + bottom) * 0.5 * inv);
            out[4 * x] = if full {
                clamp_staged::<true>(q, qmax)
            } else {
                clamp_staged::<false>(q, qmax)
            };
        }
    }
}

/// Row `yy` (output resolution, zeros outside the map) of channel `ci` of `src`, staged
/// into `dst` (`r` values); `row` and `tmp` scratch for the float rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn stage_row<S: Store>(
    src: &Src<'_>,
    view: &View<'_, S>,
    ci: usize,
    yy: isize,
    dst: &mut [i16],
    row: &mut [f32],
    tmp: &mut [f32],
    inv: f32,
    qmax: i32,
) {
    let r = dst.len();
    if src.resample != Resample::Down {
        // Straight from the stored int8 row: no f32 row in between.
        if yy < 0 || yy as usize >= r {
            dst.iter_mut().for_each(|v| *v = 0);
            return;
        }
        let y_in = if src.resample == Resample::Up {
            yy as usize / 2
        } else {
            yy as usize
        };
        stage_stored::<S, 1>(src, view, ci, y_in..y_in + 1, dst, r, inv, qmax);
    } else if src.silu && src.resample != Resample::Down {
        // SiLU commutes with nearest-neighbour upsampling, not with the box filter: the
        // affine only here, SiLU in the rounding pass (one pass less).
        src.row_with(view, ci, yy, row, tmp, |v| v);
        quantize_row(&row[..r], dst, inv, qmax, silu_fast);
    } else {
        src.row_with(view, ci, yy, row, tmp, silu_fast);
        quantize_row(&row[..r], dst, inv, qmax, |v| v);
    }
}

/// `dst` = `act(q)` (the row's affine, and SiLU) scaled, rounded and [`clamp_staged`], each
/// value written `REPEAT` times, `STEP` apart.
#[inline(always)]
fn quantize_stored<S: Store, const REPEAT: usize, const FULL: bool, const STEP: usize>(
    q: &[S],
    dst: &mut [i16],
    inv: f32,
    qmax: i32,
    act: impl Fn(f32) -> f32,
) {
    for (d, &v) in dst.chunks_exact_mut(REPEAT * STEP).zip(q) {
        let o = clamp_staged::<FULL>(round_even(act(S::value(v)) * inv), qmax);
        d.iter_mut().step_by(STEP).for_each(|x| *x = o);
    }
}

/// Column values of four input channels of a 3x3 kernel at one pixel (`src`: their staged
/// rows from the window's left, rows of `w2` values, a channel every `cs` values, kernel
/// row `ky` at `rows[ky]` within a channel's) into column `off / 4` of `N` interleaved
/// columns (`out`: `36 N` values): 36 loads and stores.
#[inline(always)]
fn gather3x3_block<const N: usize>(
    src: &[i16],
    w2: usize,
    cs: usize,
    rows: &[usize; 3],
    off: usize,
    out: &mut [i16],
) {
    assert!(w2 >= 3 && cs >= 3 * w2 && out.len() >= 36 * N && off < 4 * N);
    assert!(src.len() >= 3 * cs + 2 * w2 + 3 && rows.iter().all(|&r| r <= 2 * w2));
    let out = &mut out[off..];
    for c in 0..4 {
        for (ky, &row) in rows.iter().enumerate() {
            for kx in 0..3 {
                let k = c * 9 + ky * 3 + kx;
                let d = (k & !3) | PERM[k & 3];
                // SAFETY: c*cs + row + kx <= 3*cs + 2*w2 + 2 < src.len(), and
                // N*(d & !3) + (d & 3) + off <= 32 N + 3 + off < 36 N (asserted above).
                unsafe {
                    *out.get_unchecked_mut(N * (d & !3) + (d & 3)) =
                        *src.get_unchecked(c * cs + row + kx);
                }
            }
        }
    }
}

/// [`gather3x3_block`] for four neighbouring pixels at once into four interleaved columns
/// (`src` from the first pixel's window; `out`: 144 values): each staged row of six values
/// the four windows share is read once, 18 loads and stores for 12 column values (36
/// loads and stores for 36 values one pixel at a time; the loads of overlapping windows
/// are the difference).
#[inline(always)]
fn gather3x3_quad(src: &[i16], w2: usize, cs: usize, rows: &[usize; 3], out: &mut [i16]) {
    assert!(w2 >= 6 && cs >= 3 * w2 && src.len() >= 3 * cs + 2 * w2 + 6 && out.len() >= 144);
    assert!(rows.iter().all(|&r| r <= 2 * w2));
    for c in 0..4 {
        for (ky, &row) in rows.iter().enumerate() {
            // SAFETY: c*cs + row + 5 <= 3*cs + 2*w2 + 5 < src.len() (asserted above).
            let v: [i16; 6] =
                core::array::from_fn(|i| unsafe { *src.get_unchecked(c * cs + row + i) });
            for kx in 0..3 {
                let k = c * 9 + ky * 3 + kx;
                let d = (k & !3) | PERM[k & 3];
                for j in 0..4 {
                    // SAFETY: 4*(d & !3) + (d & 3) + 4j <= 128 + 3 + 12 < 144 <= out.len().
                    unsafe {
                        *out.get_unchecked_mut(4 * (d & !3) + (d & 3) + 4 * j) = v[kx + j];
                    }
                }
            }
        }
    }
}

/// The same for a 1x1 kernel (`src`: the staged row of each channel, one every `cs` values,
/// the pixel at `1`).
#[inline(always)]
fn gather1x1_block(src: &[i16], cs: usize, off: usize, out: &mut [i16]) {
    let [a, b, c, d] = [src[1], src[cs + 1], src[2 * cs + 1], src[3 * cs + 1]];
    let o = &mut out[off..off + 4];
    // PERM order: channels 0, 2, 1, 3.
    o[0] = a;
    o[1] = c;
    o[2] = b;
    o[3] = d;
}

/// The four interleaved columns of output pixels `x .. x + 4` of row `y` from [`blocked`]
/// staging (`st`: `blocks` planes) for a `k x k` kernel: per block and tap the four pixels'
/// words are already side by side, eight words copied where [`gather3x3_quad`] moves 48
/// halfwords one at a time; each staged row of six pixels is read once for its three taps.
#[inline(always)]
fn gather_blocked(
    st: &[u32],
    w2: usize,
    k: usize,
    (y, x): (usize, usize),
    blocks: usize,
    cols: &mut [u32],
) {
    let plane = 2 * w2 * w2;
    if k == 1 {
        // One tap, the pixel itself (after the zero row and column).
        for (b, out) in cols[..8 * blocks].chunks_exact_mut(8).enumerate() {
            let at = b * plane + 2 * ((y + 1) * w2 + x + 1);
            let v: &[u32; 8] = st[at..at + 8].try_into().expect("8 words");
            out.copy_from_slice(v);
        }
        return;
    }
    for (b, out) in cols[..72 * blocks].chunks_exact_mut(72).enumerate() {
        let at = b * plane + 2 * (y * w2 + x);
        // The three staged rows of six pixels (twelve words) the quad's windows cover.
        let rows = &st[at..at + 2 * 2 * w2 + 12];
        taps3x3(rows, 2 * w2, out.try_into().expect("72 words"));
    }
}

/// The nine taps of [`gather_blocked`]'s 3x3 windows from one block: for each of three
/// staged rows (`rows[ky pitch..]`, twelve words each), the eight words at `2 kx`, in
/// `(ky, kx)` order. On the M4 each tap is one `LDM` and one `STM` of eight registers
/// (~30 instructions a block where word by word took ~145).
#[cfg(fewstep_dsp)]
#[inline(always)]
fn taps3x3(rows: &[u32], pitch: usize, out: &mut [u32; 72]) {
    assert!(rows.len() >= 2 * pitch + 12);
    // r10 walks the rows, r11 the output, r12 a window, lr is the row pitch in bytes.
    // SAFETY: reads words `ky pitch + 2 kx .. + 8` (ky, kx < 3) of `rows`, all below
    // `2 pitch + 12 <= rows.len()` (asserted), writes the 72 words of `out`; clobbers only
    // the named registers.
    unsafe {
        core::arch::asm!(
            "ldm r10, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "stm r11!, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "add r12, r10, #8",
            "ldm r12, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "stm r11!, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "add r12, r10, #16",
            "ldm r12, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "stm r11!, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "add r10, r10, lr",
            "ldm r10, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "stm r11!, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "add r12, r10, #8",
            "ldm r12, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "stm r11!, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "add r12, r10, #16",
            "ldm r12, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "stm r11!, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "add r10, r10, lr",
            "ldm r10, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "stm r11!, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "add r12, r10, #8",
            "ldm r12, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "stm r11!, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "add r12, r10, #16",
            "ldm r12, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            "stm r11!, {{r0, r1, r2, r3, r4, r5, r8, r9}}",
            inout("r10") rows.as_ptr() => _,
            inout("r11") out.as_mut_ptr() => _,
            out("r12") _,
            in("lr") 4 * pitch,
            out("r0") _,
            out("r1") _,
            out("r2") _,
            out("r3") _,
            out("r4") _,
            out("r5") _,
            out("r8") _,
            out("r9") _,
            options(nostack, preserves_flags),
        );
    }
}

/// [`taps3x3`] word by word (a slice copy here is a memmove call).
#[cfg(not(fewstep_dsp))]
#[inline(always)]
fn taps3x3(rows: &[u32], pitch: usize, out: &mut [u32; 72]) {
    for (ky, out) in out.chunks_exact_mut(24).enumerate() {
        let v: &[u32; 12] = rows[ky * pitch..ky * pitch + 12]
            .try_into()
            .expect("12 words");
        for (kx, o) in out.chunks_exact_mut(8).enumerate() {
            for (i, o) in o.iter_mut().enumerate() {
                *o = v[2 * kx + i];
            }
        }
    }
}

/// Weight rows (`cin` channels) in [`blocked`] order: value `ci 9 + tap` of a row
/// (PyTorch's `[ci][ky][kx]`) moves to `(9 (ci / 4) + tap) 4 + ci % 4`, so a group of four
/// is one tap of a block of four channels, as [`gather_blocked`] lays out the columns.
fn reorder_blocked(w: &[u8], out: &mut [u8], cin: usize) {
    if cin.is_multiple_of(4) {
        // Rows of whole blocks: 36 bytes in, 36 out.
        for (o, v) in out.chunks_exact_mut(36).zip(w.chunks_exact(36)) {
            for tap in 0..9 {
                for j in 0..4 {
                    o[4 * tap + j] = v[9 * j + tap];
                }
            }
        }
        return;
    }
    // The last block of each row padded with zero weights (its staged channels are zeros).
    let padded_row = 9 * cin.next_multiple_of(4);
    for (o, v) in out
        .chunks_exact_mut(padded_row)
        .zip(w.chunks_exact(9 * cin))
    {
        for (b, o) in o.chunks_exact_mut(36).enumerate() {
            for tap in 0..9 {
                for j in 0..4 {
                    let ci = 4 * b + j;
                    o[4 * tap + j] = if ci < cin { v[9 * ci + tap] } else { 0 };
                }
            }
        }
    }
}

/// Weight bytes up to which a convolution reorders its weights for [`blocked`] staging
/// (into the f32 pool, for the call).
const MAX_BLOCKED_WEIGHTS: usize = 4096;

/// Whether convolution `cv` at output resolution `r` runs blocked: a 3x3 or 1x1 kernel over
/// whole blocks of four channels, a whole map in rows of whole quads, and few enough outputs
/// that reordering a 3x3 kernel's weights each call (~2 instructions a byte; a 1x1 kernel's
/// are in order already) costs less than the gather it saves (~45 instructions per quad
/// and block of channels).
fn blocked(cv: &Conv<'_>, r: usize, cout: usize) -> bool {
    (cv.k == 3 || (cv.k == 1 && cv.cin.is_multiple_of(4)))
        && r <= WHOLE_MAP_RES
        && r.is_multiple_of(4)
        && cout * cv.cin.next_multiple_of(4) * 9 <= MAX_BLOCKED_WEIGHTS
        && r * r >= 2 * cout
}

/// Channels a term stages: a [`blocked`] 3x3 kernel's rounded up to whole blocks (zeros,
/// against zero weights: a 3x3 kernel on one channel, conv_in's, gathers four times the
/// values at a fifth of the cost of [`Term::gather_tail`]'s divisions).
fn staged_cin(cv: &Conv<'_>, r: usize, cout: usize) -> usize {
    if blocked(cv, r, cout) {
        cv.cin.next_multiple_of(4)
    } else {
        cv.cin
    }
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

// SILU_TABLE: for i in 0..1024, silu(-16 + i / 32) and the rise to silu(-16 + (i + 1) / 32),
// as f32 (build.rs, from libm in f64).
include!(concat!(env!("OUT_DIR"), "/silu_table.rs"));

/// SiLU by linear interpolation in [`SILU_TABLE`] (8 KB of flash, each segment's rise
/// stored, not subtracted per value): within 6.2e-5 of the
/// exact value (`h^2 max|silu''| / 8` with `h = 1/32`), below a step of the 16-bit inputs
/// it feeds, at a third of the instructions of an exponential and a division. `v` beyond
/// [-16, 16] is `v` or 0 (the exact values differ by < 2e-6). The segment comes from one
/// saturating conversion (`VCVT`: toward zero, NaN to 0) checked as an integer, where two
/// float range checks cost six instructions a value; `t` in (-1, 0) (`v` just below -16)
/// extrapolates the first segment (within 2e-6 of 0), and NaN stays NaN through `f`.
#[inline(always)]
pub(super) fn silu_fast(v: f32) -> f32 {
    silu_in(&SILU_TABLE, v)
}

/// [`silu_fast`] with the table's address in a register: a loop over values given it
/// through `black_box` keeps it there, where the constant was rebuilt (`MOVW` + `MOVT`)
/// for every value.
#[inline(always)]
fn silu_in(table: &[[f32; 2]; 1024], v: f32) -> f32 {
    silu_table(table, v * 32.0 + 512.0, || v)
}

/// [`silu_in`] from the table position `t = 32 v + 512` (the staging computes `t` from a
/// stored value in one multiply-add): beyond the table `v` as `(t - 512) / 32`, within
/// 2.4e-7 of `v` relative (the rounding of `t`; exact steps after it).
#[inline(always)]
fn silu_at(table: &[[f32; 2]; 1024], t: f32) -> f32 {
    silu_table(table, t, || (t - 512.0) * (1.0 / 32.0))
}

/// SiLU's interpolation at table position `t`, `above()` for positions past its end.
#[inline(always)]
fn silu_table(table: &[[f32; 2]; 1024], t: f32, above: impl FnOnce() -> f32) -> f32 {
    let i = t as i32;
    if (i as u32) < 1024 {
        let i = i as usize;
        let f = t - i as f32;
        // SAFETY: i <= 1023 < SILU_TABLE.len().
        let [a, rise] = unsafe { *table.get_unchecked(i) };
        a + f * rise
    } else if t >= 1024.0 {
        above()
    } else {
        0.0
    }
}

/// Dot products of the int8 weight row `w` (`k` values) with `N` (2 or 4) columns
/// interleaved a group at a time (`N padded(k) / 2` words: per group of four, two words of
/// each column in turn, in [`PERM`] order): `w x_j` for each column `j`.
#[inline(always)]
fn dot<const N: usize>(w: &[u8], cols: &[u32], k: usize) -> [i32; N] {
    let whole = k / 4;
    let mut s = [0i32; N];
    if N == 4 {
        let mut one = [0i32; 4];
        rows_1x4(&w[..4 * whole], 4 * whole, cols, &mut one, 4, 1);
        s.copy_from_slice(&one);
    } else {
        let (s0, s1) = groups_1x2(w, cols, whole);
        s[0] = s0;
        s[1] = s1;
    }
    if !k.is_multiple_of(4) {
        // The last, partial group: the weights zero-padded (the columns are).
        let mut a = [0u8; 4];
        a[..k % 4].copy_from_slice(&w[4 * whole..k]);
        let a = u32::from_le_bytes(a);
        let (a02, a13) = (dsp::sxtb16(a), dsp::sxtb16_ror8(a));
        let c = &cols[2 * N * whole..2 * N * (whole + 1)];
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = dsp::smlad(a13, c[2 * j + 1], dsp::smlad(a02, c[2 * j], *sj));
        }
    }
    s
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
    let bound = match (src.affine, src.stored_bound) {
        (Some(_), _) => src.affine_bound,
        (None, Some(known)) => known,
        (None, None) => {
            let mut key = 0u32;
            let units = S::row_units(src.res_in);
            for c in 0..src.channels() {
                for row in src.stored_rows(view, c).chunks_exact(units) {
                    key = key.max(S::bound_key(row, src.res_in));
                }
            }
            S::key_bound(key)
        }
    };
    // |silu(z)| <= z for z >= 0, and < 0.2785 for z < 0.
    if src.silu { bound.max(0.2785) } else { bound }
}

/// One convolution term of [`run_conv`]: its weights, staged input rows and gather table.
struct Term<'w> {
    w: Int8Rows<'w>,
    /// The weight rows the kernels read: `w`'s, or reordered for [`blocked`] staging.
    wv: &'w [u8],
    blocked: bool,
    k: usize,
    cin: usize,
    /// Channels staged ([`staged_cin`]).
    lanes: usize,
    /// Values per column (`lanes k k`) and the same in whole groups of four.
    kdim: usize,
    kpad: usize,
    /// Values between the staged rows of consecutive input channels.
    cs: usize,
    /// `1 / step` of the staged values; `qmax` the largest staged magnitude.
    inv: f32,
    qmax: i32,
    /// Where column value `d` of a block of four input channels is in the staging buffer,
    /// relative to the block and the pixel.
    table: [u16; 36],
}

impl Term<'_> {
    /// [`Term::gather`] of pixels `x .. x + 4` into the four columns of `cols`.
    #[inline(never)]
    fn gather_quad(
        &self,
        staged: &[i16],
        w2: usize,
        rows: &[usize; 3],
        x: usize,
        cols: &mut [i16],
    ) {
        if self.k != 3 {
            for j in 0..4 {
                self.gather::<4>(staged, w2, rows, x + j, j, cols);
            }
            return;
        }
        let stride = 4 * self.cs;
        let whole = self.cin / 4;
        for (b, out) in cols[..4 * whole * 36].chunks_exact_mut(4 * 36).enumerate() {
            gather3x3_quad(&staged[b * stride + x..], w2, self.cs, rows, out);
        }
        // Channels past the last whole block of four, and the zero padding.
        for j in 0..4 {
            self.gather_tail::<4>(staged, w2, rows, x + j, j, cols);
        }
    }

    /// Column values `whole blocks .. kpad` of [`Term::gather`]: channels past the last
    /// whole block of four, and the zero padding.
    #[inline(always)]
    fn gather_tail<const N: usize>(
        &self,
        staged: &[i16],
        w2: usize,
        rows: &[usize; 3],
        x: usize,
        which: usize,
        cols: &mut [i16],
    ) {
        let off = 4 * which;
        for d in (self.cin / 4) * 4 * self.k * self.k..self.kpad {
            let k = (d & !3) | PERM[d & 3];
            cols[N * (d & !3) + off + (d & 3)] = if k < self.kdim {
                let (ci, tap) = (k / (self.k * self.k), k % (self.k * self.k));
                let at = if self.k == 3 {
                    rows[tap / 3] + tap % 3
                } else {
                    (tap / self.k) * w2 + tap % self.k + usize::from(self.k == 1)
                };
                staged[ci * self.cs + x + at]
            } else {
                0
            };
        }
    }

    /// Gathers the receptive field of output pixel `x` into column `which` (below `N`) of
    /// the `N` interleaved columns `cols` (`N kpad` values, see [`dot`]).
    #[inline(always)]
    fn gather<const N: usize>(
        &self,
        staged: &[i16],
        w2: usize,
        rows: &[usize; 3],
        x: usize,
        which: usize,
        cols: &mut [i16],
    ) {
        let block = 4 * self.k * self.k;
        let stride = 4 * self.cs;
        let whole = self.cin / 4;
        let table = &self.table[..block];
        let span = table.iter().map(|&t| t as usize + 1).max().unwrap_or(0);
        let off = 4 * which;
        let blocks = cols[..N * whole * block]
            .chunks_exact_mut(N * block)
            .enumerate();
        if self.k == 3 {
            for (b, out) in blocks {
                gather3x3_block::<N>(&staged[b * stride + x..], w2, self.cs, rows, off, out);
            }
        } else if self.k == 1 {
            for (b, out) in blocks {
                gather1x1_block(&staged[b * stride + x..], self.cs, off, out);
            }
        } else {
            for (b, out) in blocks {
                let base = &staged[b * stride + x..b * stride + x + span];
                for (o, t) in out.chunks_exact_mut(4 * N).zip(table.chunks_exact(4)) {
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
        self.gather_tail::<N>(staged, w2, rows, x, which, cols);
    }
}

/// Terms of one [`run_conv`]: a block's second convolution and its skip.
const MAX_TERMS: usize = 2;

/// Bias sums and scales a convolution keeps on the stack (`cout (1 + terms)`: up to 32
/// output channels with a skip).
const STACK_SUMS: usize = 96;

/// Output maps up to this size have their whole input staged before the first output row
/// (all of it fits in a few KB): the staging then chooses its arithmetic once per channel
/// rather than once per row, computes an upsampled row once for its two output rows, and
/// skips the ring's bookkeeping, which on digits8's 8x8 and 4x4 maps cost as much as the
/// values themselves. Larger maps keep the rows a kernel needs as a ring.
const WHOLE_MAP_RES: usize = 8;

/// Rows staged per input channel for a `k x k` kernel at output resolution `r`: the whole
/// map with its zero rows above and below ([`WHOLE_MAP_RES`]), or the kernel's `k` rows.
fn staged_rows(k: usize, r: usize) -> usize {
    if r <= WHOLE_MAP_RES { r + k - 1 } else { k }
}

/// [`staged_rows`] of a term, whose [`blocked`] planes have a zero row above and below
/// whatever its kernel.
fn term_rows(cv: &Conv<'_>, r: usize, cout: usize) -> usize {
    if blocked(cv, r, cout) {
        r + 2
    } else {
        staged_rows(cv.k, r)
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
    let whole = r <= WHOLE_MAP_RES;
    let res_in = terms.iter().map(|t| t.1.res_in).max().unwrap_or(0);
    let mark = ctx.f.mark();
    // Staged rows of every convolution term (i16, two to an f32 word), one region.
    let stage_words: usize = terms
        .iter()
        .filter_map(|t| t.0)
        .map(|cv| (staged_cin(cv, r, cout) * term_rows(cv, r, cout) * w2).div_ceil(2))
        .sum();
    let kpad_max = terms
        .iter()
        .filter_map(|t| t.0)
        .map(|cv| padded(staged_cin(cv, r, cout) * cv.k * cv.k))
        .max()
        .unwrap_or(0);
    let stage = ctx.f.alloc(stage_words);
    // Reordered weights of the blocked terms, a whole number of words each, from the
    // image's weight cache (one region: the terms take consecutive parts).
    let mut reordered = Buf::default();
    let mut fill = false;
    for cv in terms.iter().filter_map(|t| t.0) {
        if cv.k == 3 && blocked(cv, r, cout) {
            let words = (cout * staged_cin(cv, r, cout) * 9).div_ceil(4);
            let (part, unfilled) = ctx.weights.take(words, ctx.dry);
            if reordered.len == 0 {
                reordered.off = part.off;
            }
            reordered.len += part.len;
            fill = unfilled;
        }
    }
    // Four interleaved columns of i16: two f32 words per value of a column.
    let cols = ctx.f.alloc(2 * kpad_max);
    // On f32 rows a small map's sums stay in the accumulator until its last row, then each
    // channel's map is finished in one pass (per row, the calls and loops cost as much as
    // the values on digits8's 8x8 and 4x4 maps); else a row at a time.
    let band = if S::F32_ROWS && whole { r } else { 1 };
    let pitch = band * r;
    let acc = ctx.f.alloc(cout * pitch);
    // A convolution and its skip convolution both leave their integer sums in place (the
    // skip's in `acc2`) when every quad is whole, converted together as the row finishes:
    // the same operations in the same order as converting the first term's and adding the
    // second's scaled, without the passes between. Small maps only: on mnist8's 28x28 the
    // second accumulator raised the arena's peak past 128 KiB of RAM.
    let in_place = |cv: &&Conv<'_>| (staged_cin(cv, r, cout) * cv.k * cv.k).is_multiple_of(4);
    let pair = r <= WHOLE_MAP_RES
        && r.is_multiple_of(4)
        && terms.len() == 2
        && terms.iter().all(|t| t.0.is_some_and(|cv| in_place(&cv)));
    let acc2 = ctx.f.alloc(if pair { cout * pitch } else { 0 });
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
    // The added vector read in place (a live buffer below this call's), not copied to the
    // heap: an allocation and its release cost ~180 instructions on the M4.
    let add_buf = add.unwrap_or(Buf {
        off: bias.off + bias.len,
        len: 0,
    });
    let [
        stage,
        reordered,
        cols,
        acc,
        acc2,
        row,
        tmp,
        bias_v,
        out_f,
        add_v,
    ] = disjoint(
        &mut *ctx.f.data,
        [
            stage, reordered, cols, acc, acc2, row, tmp, bias, out_f, add_buf,
        ],
    );
    let add_v = &*add_v;
    let acc2: &mut [i32] = bytemuck::cast_slice_mut(acc2);
    let mut reordered: &mut [u8] = bytemuck::cast_slice_mut(reordered);
    let sdata = &mut *ctx.s.data;
    let (view, out_s): (View<'_, S>, &mut [S]) = match dst {
        Dst::Stored(b) => View::around(sdata, b),
        Dst::F32(_) => (View::whole(sdata), &mut []),
    };
    // The terms' plans: input scales from bounds over the whole inputs, before any row is
    // staged; per output channel the bias sum and each term's f32 scale of its sums (on
    // the stack when they fit, else one heap block, and the plans on the stack: an
    // allocation costs ~180 instructions on the M4, and digits8 runs 184 convolutions an
    // image).
    assert!(
        terms.len() <= MAX_TERMS,
        "at most a convolution and its skip"
    );
    let mut plans: [Option<Term<'_>>; MAX_TERMS] = [None, None];
    let need = cout * (1 + terms.len());
    let mut on_stack = [0.0f32; STACK_SUMS];
    let mut on_heap = Vec::new();
    let sums: &mut [f32] = if need <= STACK_SUMS {
        &mut on_stack[..need]
    } else {
        on_heap.resize(need, 0.0);
        &mut on_heap
    };
    let (bias_sum, out_scales) = sums.split_at_mut(cout);
    let mut scales_at = 0;
    for ((conv, src), plan) in terms.iter().zip(plans.iter_mut()) {
        let Some(cv) = conv else {
            continue;
        };
        let w = rows_of(cv).expect("runs() checked the weights");
        let kdim = cv.cin * cv.k * cv.k;
        let is_blocked = blocked(cv, r, cout);
        // Blocked terms stage whole blocks of channels, the last one padded with zeros.
        let lanes = staged_cin(cv, r, cout);
        let kern = lanes * cv.k * cv.k;
        let wv: &[u8] = if is_blocked && cv.k == 3 {
            let words = (cout * kern).div_ceil(4);
            let (mine, rest) = core::mem::take(&mut reordered).split_at_mut(4 * words);
            reordered = rest;
            let mine = &mut mine[..cout * kern];
            if fill {
                reorder_blocked(w.values, mine, cv.cin);
            }
            &*mine
        } else {
            w.values
        };
        let qmax = qmax_for(kdim);
        let (step, inv) = fixed_point(source_bound(src, &view), qmax);
        let kk = cv.k * cv.k;
        let cs = term_rows(cv, r, cout) * w2;
        let mut table = [0u16; 36];
        // Only other kernel sizes gather through the table (its divisions cost ~50
        // instructions an entry on the M4).
        let generic = cv.k != 1 && cv.k != 3;
        for (d, t) in table
            .iter_mut()
            .enumerate()
            .take(4 * kk)
            .filter(|_| generic)
        {
            let k = (d & !3) | PERM[d & 3];
            let (ci, tap) = (k / kk, k % kk);
            let off = ci * cs + (tap / cv.k) * w2 + tap % cv.k;
            *t = (off + usize::from(cv.k == 1)) as u16;
        }
        cv.b.read(0, bias_v);
        bias_sum
            .iter_mut()
            .zip(bias_v.iter())
            .for_each(|(s, b)| *s += b);
        for (co, o) in out_scales[scales_at..scales_at + cout]
            .iter_mut()
            .enumerate()
        {
            *o = step * w.scale(co);
        }
        scales_at += cout;
        *plan = Some(Term {
            w,
            wv,
            blocked: is_blocked,
            k: cv.k,
            cin: cv.cin,
            lanes,
            kdim: kern,
            kpad: padded(kern),
            cs,
            inv,
            qmax: qmax as i32,
            table,
        });
    }
    let (bias_sum, out_scales) = (&*bias_sum, &*out_scales);
    let stage: &mut [i16] = bytemuck::cast_slice_mut(stage);
    stage.iter_mut().for_each(|v| *v = 0);
    let cols16: &mut [i16] = bytemuck::cast_slice_mut(cols);
    // The first term's integer sums go straight into the accumulator (as i32, converted
    // once a row: `bias + sum scale`, the bits the f32 accumulation gave); later terms add
    // their scaled sums in f32.
    let direct = plans.first().is_some_and(|p| p.is_some());
    for y in 0..r {
        // This row's sums at `yo` within each channel's `pitch` values of the accumulator.
        let yo = (y % band) * r;
        if yo == 0 {
            if direct {
                acc.iter_mut().for_each(|v| *v = 0.0);
                acc2.iter_mut().for_each(|v| *v = 0);
            } else {
                for (co, a) in acc.chunks_exact_mut(pitch).enumerate() {
                    a.iter_mut().for_each(|v| *v = bias_sum[co]);
                }
            }
        }
        let mut stage_at = 0;
        let mut scale_at = 0;
        for (term, ((_, src), plan)) in terms.iter().zip(&plans).enumerate() {
            let direct = direct && term == 0;
            let Some(p) = plan else {
                // An identity residual: the source's row as it is.
                for (co, a) in acc.chunks_exact_mut(pitch).enumerate() {
                    src.row(&view, co, y as isize, row, tmp);
                    let a = &mut a[yo..yo + r];
                    a.iter_mut().zip(row.iter()).for_each(|(a, v)| *a += v);
                }
                continue;
            };
            let len = p.lanes * p.cs;
            let st = &mut stage[stage_at..stage_at + len];
            stage_at += len.next_multiple_of(2);
            let sc = &out_scales[scale_at..scale_at + cout];
            scale_at += cout;
            let (inv, qmax) = (p.inv, p.qmax);
            let half = p.k / 2;
            // Blocked staging is read as words from its start; the other layouts as
            // halfwords from the rows output row y needs.
            let (blocks, st, rows): (&[u32], &[i16], _) = if whole {
                // The whole map at the first row ([`WHOLE_MAP_RES`]); output row y reads
                // rows y ..= y + k - 1 of each channel (its zero rows included).
                if y == 0 {
                    stage_map(p, src, &view, st, r, row, tmp);
                }
                if p.blocked {
                    (bytemuck::cast_slice(&*st), &[], [0; 3])
                } else {
                    (&[], &st[y * w2..], [0, w2, 2 * w2])
                }
            } else {
                // Stage the rows this output row needs: y - 1 ..= y + 1 for a 3x3 kernel,
                // all three at the first row, then one new. A 3x3 kernel's three rows are
                // a ring (input row y - 1 + ky in slot (y + ky) mod 3; moving two rows up
                // each output row cost 1.5% of mnist8's instructions); other sizes move
                // their rows up.
                let slots = p.k;
                let ring = p.k == 3;
                let rows = if ring {
                    [y % 3 * w2, (y + 1) % 3 * w2, (y + 2) % 3 * w2]
                } else {
                    [0, w2, 2 * w2]
                };
                let fresh = if y == 0 { 0..slots } else { slots - 1..slots };
                for ci in 0..p.cin {
                    let ch = &mut st[ci * slots * w2..(ci + 1) * slots * w2];
                    if y > 0 && slots > 1 && !ring {
                        ch.copy_within(w2.., 0);
                    }
                    for slot in fresh.clone() {
                        let yy = y as isize + slot as isize - half as isize;
                        let at = if ring { (y + slot) % 3 } else { slot };
                        let dst = &mut ch[at * w2 + 1..at * w2 + 1 + r];
                        stage_row(src, &view, ci, yy, dst, row, tmp, inv, qmax);
                    }
                }
                (&[], &*st, rows)
            };
            // Four output pixels at a time against each output channel (three left: the
            // last one twice, cheaper than a pair and a single), then a pair or one.
            let mut x = 0;
            while r - x >= 3 {
                let used = (r - x).min(4);
                if p.blocked {
                    let cols: &mut [u32] = bytemuck::cast_slice_mut(cols16);
                    gather_blocked(blocks, w2, p.k, (y, x), p.lanes / 4, cols);
                } else if used == 4 {
                    p.gather_quad(st, w2, &rows, x, cols16);
                } else {
                    for j in 0..4 {
                        p.gather::<4>(st, w2, &rows, (x + j).min(r - 1), j, cols16);
                    }
                }
                let words: &[u32] = bytemuck::cast_slice(&cols16[..4 * p.kpad]);
                if direct && used == 4 && p.kdim.is_multiple_of(4) {
                    // Every output channel in one call, the sums in place.
                    let acc_i: &mut [i32] = bytemuck::cast_slice_mut(&mut acc[yo + x..]);
                    rows_1x4(p.wv, p.kdim, words, acc_i, pitch, cout);
                } else if pair {
                    rows_1x4(p.wv, p.kdim, words, &mut acc2[yo + x..], pitch, cout);
                } else if p.kdim.is_multiple_of(4) {
                    // Sixteen rows a call (256 bytes of sums on the stack).
                    let mut sums = [0i32; 64];
                    for co0 in (0..cout).step_by(16) {
                        let n = (cout - co0).min(16);
                        let sums = &mut sums[..4 * n];
                        sums.iter_mut().for_each(|s| *s = 0);
                        let w = &p.wv[co0 * p.kdim..(co0 + n) * p.kdim];
                        rows_1x4(w, p.kdim, words, sums, 4, n);
                        for (i, d) in sums.chunks_exact(4).enumerate() {
                            let co = co0 + i;
                            let at = co * pitch + yo + x;
                            add_sums(&mut acc[at..at + used], d, sc[co], direct);
                        }
                    }
                } else {
                    for (co, &scale_co) in sc.iter().enumerate() {
                        let d = dot::<4>(p.w.row(co), words, p.kdim);
                        let at = co * pitch + yo + x;
                        add_sums(&mut acc[at..at + used], &d, scale_co, direct);
                    }
                }
                x += used;
            }
            while x < r {
                let x1 = (x + 1).min(r - 1);
                p.gather::<2>(st, w2, &rows, x, 0, cols16);
                p.gather::<2>(st, w2, &rows, x1, 1, cols16);
                let words: &[u32] = bytemuck::cast_slice(&cols16[..2 * p.kpad]);
                let used = if x1 != x { 2 } else { 1 };
                if p.kdim.is_multiple_of(4) {
                    let mut sums = [0i32; 64];
                    for co0 in (0..cout).step_by(16) {
                        let n = (cout - co0).min(16);
                        let sums = &mut sums[..4 * n];
                        sums.iter_mut().for_each(|s| *s = 0);
                        let w = &p.wv[co0 * p.kdim..(co0 + n) * p.kdim];
                        rows_1x2(w, p.kdim, words, sums, 4, n);
                        for (i, d) in sums.chunks_exact(4).enumerate() {
                            let co = co0 + i;
                            let at = co * pitch + yo + x;
                            add_sums(&mut acc[at..at + used], &d[..used], sc[co], direct);
                        }
                    }
                } else {
                    for (co, &scale_co) in sc.iter().enumerate() {
                        let d = dot::<2>(p.w.row(co), words, p.kdim);
                        let at = co * pitch + yo + x;
                        add_sums(&mut acc[at..at + used], &d[..used], scale_co, direct);
                    }
                }
                x += 2;
            }
            if direct && terms.len() > 1 && !pair {
                for (co, a) in acc.chunks_exact_mut(pitch).enumerate() {
                    let (b, s) = (bias_sum[co], sc[co]);
                    a[yo..yo + r]
                        .iter_mut()
                        .for_each(|v| *v = b + (v.to_bits() as i32) as f32 * s);
                }
            }
        }
        let sums = if direct && terms.len() == 1 {
            Some(Sums {
                bias: bias_sum,
                scales: out_scales,
                second: None,
            })
        } else if pair {
            let (first, second) = out_scales.split_at(cout);
            Some(Sums {
                bias: bias_sum,
                scales: first,
                second: Some((second, &*acc2)),
            })
        } else {
            None
        };
        if yo + r == pitch {
            let add = add.is_some().then_some(add_v);
            // Rows y + 1 - band ..= y, which lie one after another in an f32 channel map.
            let rows = (y + 1 - band, band);
            finish_row(acc, r, rows, add, sums, scale, dst, out_s, out_f);
        }
    }
    ctx.f.release(mark);
}

/// What an accumulator row still holding integer sums needs to become f32: per output
/// channel the bias sum and the scale of the first term's sums, and the second term's
/// scales and sums (`r` a channel) when it left them in place too.
struct Sums<'a> {
    bias: &'a [f32],
    scales: &'a [f32],
    second: Option<(&'a [f32], &'a [i32])>,
}

/// Output row `y` of every channel from the accumulator `acc` (`r` values a channel):
/// `(acc + add[co]) scale`, the accumulator first converted from integer sums when it still
/// holds them (`sums`, in the same pass), then stored in `dst` (`out_s` or `out_f`). Not
/// inlined: [`run_conv`]'s loops kept their registers better without it.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn finish_row<S: Store>(
    acc: &mut [f32],
    r: usize,
    (y, band): (usize, usize),
    add: Option<&[f32]>,
    sums: Option<Sums<'_>>,
    scale: f32,
    dst: Dst,
    out_s: &mut [S],
    out_f: &mut [f32],
) {
    let units = S::row_units(r);
    let pitch = band * r;
    for (co, a) in acc.chunks_exact_mut(pitch).enumerate() {
        let extra = add.map_or(0.0, |v| v[co]);
        // Per output channel: the bias sum, the first term's scale and the second term's
        // scale and sums, while the accumulator still holds integer sums.
        let int = sums.as_ref().map(|s| ChannelSums {
            bias: s.bias[co],
            scale: s.scales[co],
            second: s
                .second
                .map(|(s2, d2)| (s2[co], &d2[co * pitch..(co + 1) * pitch])),
        });
        let at = co * r + y;
        // Values go straight into an f32 destination row; otherwise back into `a`, with
        // their largest magnitude, for the stored row's scale.
        let out = match dst {
            Dst::Stored(_) => S::as_f32_mut(&mut out_s[at * units..(at + band) * units]),
            Dst::F32(_) => Some(&mut out_f[at * r..(at + band) * r]),
        };
        match out {
            Some(out) => {
                epilogue(
                    a.iter().copied().zip(out.iter_mut()),
                    int,
                    extra,
                    scale,
                    false,
                );
            }
            None => {
                debug_assert_eq!(band, 1, "rows of their own only");
                let pairs = a.iter_mut().map(|v| (*v, v));
                let m = epilogue(pairs, int, extra, scale, S::NEEDS_MAX);
                let row = &mut out_s[at * units..(at + 1) * units];
                S::save_row_max(a, f32::from_bits(m), row);
            }
        }
    }
}

/// One output channel of [`Sums`]: the bias sum, the first term's scale, and the second
/// term's scale and sums.
#[derive(Clone, Copy)]
struct ChannelSums<'a> {
    bias: f32,
    scale: f32,
    second: Option<(f32, &'a [i32])>,
}

/// [`finish_row`]'s arithmetic on one row: each accumulator value `v` (i32 bits while `int`,
/// the bias sum and scales, says it holds integer sums: converted in the same pass)
/// through `(v + extra) scale` into its output, the per-channel constants folded first
/// (`v (s scale) + (b + extra) scale`: one multiply-add a term); returns the bits of the
/// largest output magnitude when `track_max`, else 0.
#[inline(always)]
fn epilogue<'o>(
    vals: impl Iterator<Item = (f32, &'o mut f32)>,
    int: Option<ChannelSums<'_>>,
    extra: f32,
    scale: f32,
    track_max: bool,
) -> u32 {
    let mut m = 0u32;
    let mut put = |o: &mut f32, v: f32| {
        *o = v;
        if track_max {
            m = abs_max_bits(m, v);
        }
    };
    match int {
        Some(ChannelSums {
            bias: b,
            scale: s,
            second: None,
        }) => {
            let (b, s) = ((b + extra) * scale, s * scale);
            for (v, o) in vals {
                put(o, b + (v.to_bits() as i32) as f32 * s);
            }
        }
        Some(ChannelSums {
            bias: b,
            scale: s,
            second: Some((s2, d2)),
        }) => {
            let (b, s, s2) = ((b + extra) * scale, s * scale, s2 * scale);
            for ((v, o), &d) in vals.zip(d2) {
                put(o, b + (v.to_bits() as i32) as f32 * s + d as f32 * s2);
            }
        }
        None => {
            let b = extra * scale;
            for (v, o) in vals {
                put(o, v * scale + b);
            }
        }
    }
    m
}

/// Integer sums `d` of some output pixels into their accumulator `a`: as i32 bits while
/// the accumulator holds the first term's sums (`direct`), else scaled and added in f32.
#[inline(always)]
fn add_sums(a: &mut [f32], d: &[i32], scale: f32, direct: bool) {
    for (a, &d) in a.iter_mut().zip(d) {
        if direct {
            *a = f32::from_bits(d as u32);
        } else {
            *a += d as f32 * scale;
        }
    }
}

/// `sum a[i] b[i]` of i16 pairs in i64 (`SMLALD`): no bound needed. Four words a turn.
#[inline(always)]
fn dot_i16_wide(a: &[u32], b: &[u32]) -> i64 {
    let n = a.len().min(b.len());
    let (a4, b4) = (a[..n].chunks_exact(4), b[..n].chunks_exact(4));
    let tail = a4.remainder().iter().zip(b4.remainder());
    let mut s = 0i64;
    for (x, y) in a4.zip(b4) {
        s = dsp::smlald(
            x[3],
            y[3],
            dsp::smlald(
                x[2],
                y[2],
                dsp::smlald(x[1], y[1], dsp::smlald(x[0], y[0], s)),
            ),
        );
    }
    tail.fold(s, |s, (&x, &y)| dsp::smlald(x, y, s))
}

/// Whether [`attention_core`] runs: int8 projection rows and channels in whole groups of
/// four (the query-key products take two channels to a word, two words a group).
pub(super) fn attention_runs(proj: &Conv<'_>, c: usize) -> bool {
    rows_of(proj).is_some() && c.is_multiple_of(4)
}

/// [`super::ops::attention`] after the `qkv` convolution, on the integer path: keys (as
/// `[j][c]`) and values (as `[c][j]`) staged as i16 once; four queries at a time `q k^T`
/// ([`rows_i16_1x4`]: each key word read once for four queries; q and k scaled so `c`
/// products fit an i32), then per query softmax weights in f32 then as i16 steps of
/// 1/32767 (the largest is 1) and `p v` with `SMLALD` (64-bit sums); the four queries'
/// projections as a 1x1 convolution of int8 rows ([`rows_1x4`]); `x <- (proj + x) / sqrt
/// 2` a row of queries at a time.
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
    // Four queries' logits (the projection's sums after them) and the projected rows (f32)
    // beside them, for the same reason.
    let logits = ctx.s.alloc(4 * 4 * n.max(c) / size);
    let outs = ctx.s.alloc(4 * c * res / size);
    let vals = ctx.f.alloc(c * n2 / 2);
    let weights = ctx.f.alloc(n2 / 2);
    let q = ctx.f.alloc(c);
    // Four interleaved columns of i16 (two words per value of a column).
    let q16 = ctx.f.alloc(2 * c);
    let a16 = ctx.f.alloc(2 * cpad);
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
        let mut key = 0u32;
        for ch in 0..c {
            for y in 0..res {
                key = key.max(S::bound_key(t_row(3 * ch + which, y), res));
            }
        }
        S::key_bound(key)
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
        for qx0 in (0..res).step_by(4) {
            // Four queries (the last repeated past the row's end), each scaled by its own
            // largest value, interleaved as `rows_i16_1x4`'s columns.
            let used = (res - qx0).min(4);
            let mut q_steps = [0.0f32; 4];
            {
                let cols: &mut [i16] = bytemuck::cast_slice_mut(q16);
                for (j, q_step) in q_steps.iter_mut().enumerate() {
                    let qx = (qx0 + j).min(res - 1);
                    for (ch, qv) in q.iter_mut().enumerate() {
                        *qv = S::at(t_row(3 * ch, qy), qx);
                    }
                    let (step, inv) = fixed_point(abs_max(q), qk_max);
                    *q_step = step;
                    for (ch, &v) in q.iter().enumerate() {
                        cols[16 * (ch / 4) + 4 * j + ch % 4] = quantize(v, inv, qk_max as i32);
                    }
                }
            }
            {
                let sums: &mut [i32] = bytemuck::cast_slice_mut(&mut logits[..4 * n]);
                sums.iter_mut().for_each(|v| *v = 0);
                rows_i16_1x4(keys, c, bytemuck::cast_slice(q16), sums, 4, n);
            }
            // Each column's fixed-point step for the projection, as `q_steps` for the logits.
            let mut a_steps = [0.0f32; 4];
            for j in 0..used {
                let logit_scale = q_steps[j] * k_step / sqrt_c;
                let mut max = f32::NEG_INFINITY;
                for l in logits[..4 * n].chunks_exact_mut(4) {
                    let v = (l[j].to_bits() as i32) as f32 * logit_scale;
                    l[j] = v;
                    max = if v > max { v } else { max };
                }
                let mut total = 0i64;
                {
                    let p16: &mut [i16] = bytemuck::cast_slice_mut(weights);
                    p16.iter_mut().for_each(|v| *v = 0);
                    for (p, l) in p16.iter_mut().zip(logits.chunks_exact(4)) {
                        *p = quantize(exp_nonpositive(l[j] - max), 32767.0, 32767);
                        total += *p as i64;
                    }
                }
                let p16w: &[u32] = bytemuck::cast_slice(weights);
                let a_scale = v_step / total as f32;
                // a = p v / sum p, then quantized into the projection's column j.
                for (av, row_v) in q.iter_mut().zip(vals.chunks_exact(n2 / 2)) {
                    *av = dot_i16_wide(p16w, row_v) as f32 * a_scale;
                }
                let (a_step, a_inv) = fixed_point(abs_max(q), proj_qmax);
                a_steps[j] = a_step;
                let cols: &mut [i16] = bytemuck::cast_slice_mut(a16);
                for d in 0..cpad {
                    let k = (d & !3) | PERM[d & 3];
                    cols[4 * (d & !3) + 4 * j + (d & 3)] = if k < c {
                        quantize(q[k], a_inv, proj_qmax as i32)
                    } else {
                        0
                    };
                }
            }
            // The projection of the four columns (unused ones computed, not stored).
            let sums: &mut [i32] = bytemuck::cast_slice_mut(&mut logits[..4 * c]);
            sums.iter_mut().for_each(|v| *v = 0);
            rows_1x4(w.values, c, bytemuck::cast_slice(a16), sums, 4, c);
            for (co, &s_co) in proj_scales.iter().enumerate() {
                for j in 0..used {
                    let d = sums[4 * co + j];
                    outs[co * res + qx0 + j] = d as f32 * (a_steps[j] * s_co) + bias[co];
                }
            }
        }
        residual_row(xs, outs, c, res, qy, row);
    }
    ctx.f.release(mark);
    ctx.s.release(smark);
}

/// Sum and sum of squares of a row of int8 values, exactly (`q.len()` up to 133,000: `127^2
/// q.len()` fits an i32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RowMoments {
    sum: i32,
    sum_sq: i32,
}

/// [`RowMoments`] four values a word: `SXTB16` widens the bytes, `SMLAD` sums them (against
/// ones) and their squares. ~2 instructions a value where a scalar loop took ~7 (and the f32
/// second pass it replaces ~5 more).
#[cfg(fewstep_dsp)]
#[inline(always)]
fn row_moments(q: &[i8]) -> RowMoments {
    const ONES: u32 = 0x0001_0001;
    let words = q.len() / 4;
    let (mut sum, mut sum_sq) = (0i32, 0i32);
    let p = q.as_ptr();
    for i in 0..words {
        // SAFETY: bytes 4i .. 4i + 4 lie in `q` (i < q.len() / 4); the M4 allows unaligned
        // word loads.
        let w = unsafe { core::ptr::read_unaligned(p.add(4 * i) as *const u32) };
        let (a, b) = (dsp::sxtb16(w), dsp::sxtb16_ror8(w));
        sum_sq = dsp::smlad(b, b, dsp::smlad(a, a, sum_sq));
        sum = dsp::smlad(b, ONES, dsp::smlad(a, ONES, sum));
    }
    let mut m = RowMoments { sum, sum_sq };
    for &v in &q[4 * words..] {
        let v = v as i32;
        m.sum += v;
        m.sum_sq += v * v;
    }
    m
}

#[cfg(not(fewstep_dsp))]
fn row_moments(q: &[i8]) -> RowMoments {
    q.iter().fold(RowMoments { sum: 0, sum_sq: 0 }, |m, &v| {
        let v = v as i32;
        RowMoments {
            sum: m.sum + v,
            sum_sq: m.sum_sq + v * v,
        }
    })
}

/// GroupNorm's mean and variance over the stored int8 rows of `src`'s channels `chans`
/// (before resampling; `count` values in all), in one pass: each row's integer sums are
/// exact, so its own mean and sum of squared deviations follow without cancellation
/// (`n sum q^2 - (sum q)^2` in integers, then the row's scale squared), and the rows are
/// merged with Chan et al.'s pairwise update, as stable as a second pass over the values
/// and ~30 instructions a row instead of ~5 a value. `seen(ch, m)` gets a bound of each
/// channel's `|value|`: its largest row bound `m` (exact extremes cost ~35
/// instructions a row on the M4, a tenth of digits8's GroupNorm; the looser bound at most
/// doubles the staged step of a one-sided channel, of 16 bits).
pub(super) fn group_moments<S: Store>(
    src: &Src<'_>,
    view: &View<'_, S>,
    chans: core::ops::Range<usize>,
    count: f32,
    mut seen: impl FnMut(usize, f32),
) -> (f32, f32) {
    let res = src.res_in;
    let n = res as f32;
    let (mut total, mut mean, mut m2) = (0.0f32, 0.0f32, 0.0f32);
    for ch in chans {
        let mut key = 0u32;
        for row in src.stored_rows(view, ch).chunks_exact(S::row_units(res)) {
            key = key.max(S::bound_key(row, res));
            let stored: &[i8] = bytemuck::cast_slice(row);
            let s = super::arena::row_scale(stored);
            let m = row_moments(&stored[2..2 + res]);
            // `n sum q^2 - (sum q)^2`, in i32 where it cannot overflow (`res^2 128^2 <
            // 2^31`, rows up to 362 values): the same value and rounding, one `VCVT` where
            // an i64 conversion is a ~37-instruction library call on the M4.
            let dev = if res <= 362 {
                (res as i32 * m.sum_sq - m.sum * m.sum) as f32
            } else {
                (res as i64 * m.sum_sq as i64 - m.sum as i64 * m.sum as i64) as f32
            };
            let row_mean = m.sum as f32 * s / n;
            let row_m2 = dev * (s * s) / n;
            let merged = total + n;
            let delta = row_mean - mean;
            let w = n / merged;
            mean += delta * w;
            m2 += row_m2 + delta * delta * total * w;
            total = merged;
        }
        seen(ch, S::key_bound(key));
    }
    (mean, m2 / count)
}

/// [`group_moments`] on the integer path's f32 storage ([`super::arena::IntF32`]): one
/// pass over the stored channel maps in place (no row copies), summing each value's
/// deviation from the group's first value `k` and its square (shifted sums: the
/// cancellation of `sum d^2 - (sum d)^2 / n` is that of the distance from `k` to the mean,
/// a few standard deviations, not of the mean itself), and finding each channel's largest
/// `|value|` (for `seen`). ~9 instructions a value on the M4, where two
/// passes took ~13.
pub(super) fn group_moments_f32<S: Store>(
    src: &Src<'_>,
    view: &View<'_, S>,
    chans: core::ops::Range<usize>,
    count: f32,
    mut seen: impl FnMut(usize, f32),
) -> (f32, f32) {
    let runs = src.stored_runs(view, chans);
    let per = src.res_in * S::row_units(src.res_in);
    let k = runs
        .iter()
        .find_map(|(_, run)| run.first())
        .map_or(0.0, |&v| S::value(v));
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for (first, run) in runs {
        for (i, map) in run.chunks_exact(per).enumerate() {
            let mut m = 0u32;
            for &v in map {
                let v = S::value(v);
                let d = v - k;
                s1 += d;
                s2 += d * d;
                m = abs_max_bits(m, v);
            }
            seen(first + i, f32::from_bits(m));
        }
    }
    let shift = s1 / count;
    // Rounding can leave a constant group's variance just below 0; NaN stays NaN.
    let var = s2 / count - shift * shift;
    let var = if var < 0.0 { 0.0 } else { var };
    (k + shift, var)
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
    fn dot_is_the_exact_dot_product_for_two_and_four_columns() {
        fn check<const N: usize>(k: usize, s: &mut u64) {
            let w: Vec<u8> = (0..k).map(|_| (lcg(s) % 255) as u8).collect();
            let xs: Vec<Vec<i16>> = (0..N)
                .map(|_| (0..k).map(|_| lcg(s) as i16).collect())
                .collect();
            let kp = padded(k);
            let mut cols = vec![0i16; N * kp];
            for d in 0..kp {
                let n = (d & !3) | PERM[d & 3];
                for (j, x) in xs.iter().enumerate() {
                    if n < k {
                        cols[N * (d & !3) + 4 * j + (d & 3)] = x[n];
                    }
                }
            }
            let words: Vec<u32> = cols
                .chunks_exact(2)
                .map(|p| (p[0] as u16 as u32) | ((p[1] as u16 as u32) << 16))
                .collect();
            let got = dot::<N>(&w, &words, k);
            for (j, x) in xs.iter().enumerate() {
                let want: i64 = w
                    .iter()
                    .zip(x)
                    .map(|(&a, &b)| a as i8 as i64 * b as i64)
                    .sum();
                // These random sums stay far inside an i32 (~6e7 at k = 579): exact.
                assert_eq!(got[j] as i64, want, "N = {N}, k = {k}, column {j}");
            }
        }
        let mut s = 7u64;
        for k in [1usize, 3, 4, 9, 16, 27, 36, 144, 145, 576, 579] {
            check::<2>(k, &mut s);
            check::<4>(k, &mut s);
        }
    }

    #[test]
    fn the_quad_gather_writes_what_four_single_gathers_write() {
        let w2 = 9;
        let mut s = 3u64;
        // Channels three rows apart (a ring of a 3x3 kernel's rows) and a whole map's
        // rows apart (`staged_rows`).
        for cs in [3 * w2, staged_rows(3, w2 - 2) * w2] {
            let src: Vec<i16> = (0..4 * cs + 8).map(|_| lcg(&mut s) as i16).collect();
            let mut quad = vec![0i16; 144];
            // Rows in ring order: kernel row ky in slot (1 + ky) mod 3.
            let rows = [w2, 2 * w2, 0];
            gather3x3_quad(&src, w2, cs, &rows, &mut quad);
            let mut single = vec![0i16; 144];
            for j in 0..4 {
                gather3x3_block::<4>(&src[j..], w2, cs, &rows, 4 * j, &mut single);
            }
            assert_eq!(quad, single);
            // And the columns are the windows: column j, value k = c*9 + ky*3 + kx.
            for j in 0..4 {
                for k in 0..36 {
                    let d = (k & !3) | PERM[k & 3];
                    let (c, ky, kx) = (k / 9, k % 9 / 3, k % 3);
                    assert_eq!(
                        quad[4 * (d & !3) + 4 * j + (d & 3)],
                        src[c * cs + rows[ky] + kx + j]
                    );
                }
            }
        }
    }

    /// The row sums against plain loops, on rows of every length mod 4 and the extremes.
    #[test]
    fn row_moments_are_exact() {
        let mut s = 11u64;
        for len in [0usize, 1, 3, 4, 7, 8, 14, 28, 29, 64] {
            for _ in 0..20 {
                let mut q: Vec<i8> = (0..len).map(|_| lcg(&mut s) as i8).collect();
                if len > 2 {
                    q[0] = -128;
                    q[len - 1] = 127;
                }
                let want = RowMoments {
                    sum: q.iter().map(|&v| v as i32).sum(),
                    sum_sq: q.iter().map(|&v| v as i32 * v as i32).sum(),
                };
                assert_eq!(row_moments(&q), want, "{q:?}");
            }
        }
    }

    /// The one-pass group moments against float64 over the values the rows hold, for a
    /// centred group and for one whose mean is 100 standard deviations from zero (where
    /// `E[x^2] - E[x]^2` in f32 would lose every digit), and the channels' bounds (within the
    /// rounding of a row's scale of its largest magnitude).
    #[test]
    fn group_moments_match_float64_without_cancellation() {
        use crate::micro::arena::Store;
        let (c, res) = (3usize, 7usize);
        let mut s = 5u64;
        for offset in [0.0f32, 100.0] {
            let units = <i8 as Store>::row_units(res);
            let mut data = vec![0i8; c * res * units];
            for (i, row) in data.chunks_exact_mut(units).enumerate() {
                // Rows of different scales (their own spread and offset).
                let spread = 0.5 + (i % 5) as f32;
                let vals: Vec<f32> = (0..res)
                    .map(|_| offset + spread * ((lcg(&mut s) % 2001) as f32 / 1000.0 - 1.0))
                    .collect();
                <i8 as Store>::save_row(&vals, row);
            }
            let held: Vec<f64> = data
                .chunks_exact(units)
                .flat_map(|row| {
                    let sc = crate::micro::arena::row_scale(row) as f64;
                    row[2..].iter().map(move |&q| q as f64 * sc)
                })
                .collect();
            let n = held.len() as f64;
            let mean = held.iter().sum::<f64>() / n;
            let var = held.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let buf = Buf {
                off: 0,
                len: data.len(),
            };
            let src = Src::plain(buf, c, res);
            let view = View::whole(&data);
            let mut bounds = vec![None; c];
            let (m, v) = group_moments(&src, &view, 0..c, n as f32, |ch, b| {
                assert!(
                    bounds[ch].replace(b).is_none(),
                    "channel {ch} reported twice"
                );
            });
            assert!(
                ((m as f64 - mean) / mean.abs().max(1.0)).abs() < 1e-6,
                "{m} vs {mean}"
            );
            assert!(((v as f64 - var) / var).abs() < 1e-4, "{v} vs {var}");
            for (ch, b) in bounds.iter().enumerate() {
                let vals = &held[ch * res * res..(ch + 1) * res * res];
                let most = vals.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                // A row's largest value is 126 or 127 steps of its scale.
                let b = b.expect("every channel reported") as f64;
                assert!(b >= most && b <= most * 127.0 / 126.0, "{b} vs {most}");
            }
        }
    }

    #[test]
    fn f32_group_moments_match_float64_and_bound_each_channel() {
        use crate::micro::arena::IntF32;
        // Two parts (a decoder's concatenation), the group crossing from one to the other;
        // an offset of 1000 standard deviations, which the shifted sums must survive.
        let (res, mut s) = (6usize, 9u64);
        for offset in [0.0f32, 1000.0] {
            let data: Vec<IntF32> = (0..5 * res * res)
                .map(|_| IntF32(offset + ((lcg(&mut s) % 2001) as f32 / 1000.0 - 1.0)))
                .collect();
            let per = res * res;
            let mut src = Src::plain(
                Buf {
                    off: 0,
                    len: 2 * per,
                },
                2,
                res,
            );
            src.parts[1] = (
                Buf {
                    off: 3 * per,
                    len: 2 * per,
                },
                2,
            );
            let view = View::whole(&data);
            let held: Vec<f64> = data[..2 * per]
                .iter()
                .chain(&data[3 * per..5 * per])
                .map(|v| v.0 as f64)
                .collect();
            let chans = 1..4;
            let vals = &held[per..4 * per];
            let n = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / n;
            let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
            let mut bounds = [None; 4];
            let (m, v) = group_moments_f32(&src, &view, chans, n as f32, |ch, b| {
                assert!(
                    bounds[ch].replace(b).is_none(),
                    "channel {ch} reported twice"
                );
            });
            assert!(
                ((m as f64 - mean) / mean.abs().max(1.0)).abs() < 1e-6,
                "{m} vs {mean}"
            );
            assert!(
                ((v as f64 - var) / var).abs() < 1e-3,
                "{v} vs {var} (offset {offset})"
            );
            assert!(bounds[0].is_none());
            for ch in 1..4 {
                let most = held[ch * per..(ch + 1) * per]
                    .iter()
                    .fold(0.0f64, |m, v| m.max(v.abs()));
                assert_eq!(bounds[ch], Some(most as f32), "channel {ch}");
            }
        }
    }

    #[test]
    fn the_fixed_point_bound_keeps_every_sum_in_an_i32() {
        for k in [1usize, 9, 144, 576, 1152, 4608] {
            let q = qmax_for(k) as i64;
            assert!(
                q <= 32767 && (q + 1) * 127 * k as i64 <= i32::MAX as i64,
                "k = {k}"
            );
            // And no looser than it must be.
            assert!(
                q == 32767 || (q + 2) * 127 * k as i64 > i32::MAX as i64,
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
