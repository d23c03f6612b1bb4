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
//! kernel) are staged as i16 once per row, then for each four output pixels their
//! receptive fields are gathered into four interleaved columns (im2col) and dotted with
//! every weight row (`rows_1x4`: 16 MACs per 13 instructions, each weight word read once
//! per four pixels, the loop over rows inside the `asm!`); a row's last two pixels go in a
//! pair (`dot1x2`, 16 MACs per 18). The columns are gathered in the order `SXTB16` unpacks
//! weights in (values 0, 2 of each group of four, then 1, 3), so the weights need no
//! reordering.

use alloc::vec::Vec;

use super::arena::{Buf, Ctx, Store, View, abs_max, disjoint, round_even};
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

/// `out[r][j] += w_r . x_j` for `out.len()` consecutive weight rows of `k` bytes (`k` a
/// multiple of four, the rows contiguous in `w`) against four interleaved columns (`[x0
/// 02, x0 13, x1 02, x1 13, .., x3 13]`, eight words per group of four weights): the inner
/// loop of convolutions, 13 instructions per 16 MACs (one weight word, `LDM` of four column
/// words twice, 8 `SMLAD`). No loop counter: the 13-instruction body is written out
/// `UNROLLED_GROUPS` times, all in 32-bit encodings, and each row jumps to the body
/// `k / 4` from its end (Duff's device), so the twelve registers `asm!` may use hold the
/// four sums, the two unpacked weight halves, four column words and the two pointers. The
/// loop over rows is in the assembly too, its state on the stack, so a row costs 15
/// instructions besides its body (a call per row cost ~60); rows longer than the unrolled
/// body take several passes, each adding its part of every row to `out`.
#[cfg(fewstep_dsp)]
#[inline(never)]
fn rows_1x4(w: &[u8], k: usize, cols: &[u32], out: &mut [[i32; 4]]) {
    let rows = out.len();
    let groups = k / 4;
    assert!(k.is_multiple_of(4) && w.len() >= k * rows && cols.len() >= 8 * groups);
    if rows == 0 {
        return;
    }
    let mut done = 0;
    while done < groups {
        let n = (groups - done).min(UNROLLED_GROUPS);
        // The frame the loop keeps on the stack: jump target (computed in the asm from
        // `skip`), output pointer, rows left, column pointer of this pass, and the bytes
        // from the end of one row's pass to the start of the next row's.
        let skip = 52 * (UNROLLED_GROUPS - n);
        let frame: [usize; 4] = [
            out.as_mut_ptr() as usize,
            rows,
            cols[8 * done..].as_ptr() as usize,
            k - 4 * n,
        ];
        // SAFETY: for each of `rows` rows reads `4 n` weight bytes from `w[r k + 4 done..]`
        // (unaligned word loads, allowed on the M4) and `8 n` column words from
        // `cols[8 done..]` (asserted above), and reads and writes the four words of
        // `out[r]`; writes only the named registers, and restores `sp` (16 bytes pushed
        // and popped). The jump lands on a body boundary: every instruction of the body
        // has a 32-bit encoding (`.w`), 13 to a body.
        unsafe {
            core::arch::asm!(
                "ldm r10, {{r8, r9, r10, r11}}",
                "push {{r8, r9, r10, r11}}",
                "adr.w r8, 3f",
                "add r8, r8, lr",
                "orr r8, r8, #1",
                "push {{r8}}",
                // sp: [target, out, rows, cols, gap]
                "2:",
                "ldr r8, [sp, #4]",
                "ldm r8, {{r0, r1, r2, r3}}",
                "ldr lr, [sp, #12]",
                "ldr r8, [sp]",
                "bx r8",
                ".p2align 2",
                "3:",
                ".rept {groups}",
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
                ".endr",
                "ldr r8, [sp, #4]",
                "stmia r8!, {{r0, r1, r2, r3}}",
                "str r8, [sp, #4]",
                "ldr r8, [sp, #16]",
                "add r12, r12, r8",
                "ldr r8, [sp, #8]",
                "subs r8, r8, #1",
                "str r8, [sp, #8]",
                "bne 2b",
                "add sp, sp, #20",
                groups = const UNROLLED_GROUPS,
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
                inout("r12") w[4 * done..].as_ptr() => _,
                inout("lr") skip => _,
            );
        }
        done += n;
    }
}

#[cfg(not(fewstep_dsp))]
fn rows_1x4(w: &[u8], k: usize, cols: &[u32], out: &mut [[i32; 4]]) {
    for (r, s) in out.iter_mut().enumerate() {
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

/// [`quantize`] of `act` of a row, the scale and clamp in registers (8 instructions a
/// value on the M4 besides `act`; reading them through a reference each value took 15).
#[inline(always)]
fn quantize_row(src: &[f32], dst: &mut [i16], inv: f32, qmax: i32, act: impl Fn(f32) -> f32) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = round_even(act(v) * inv).max(-qmax).min(qmax) as i16;
    }
}

/// Column values of four input channels of a 3x3 kernel at one pixel (`src`: their staged
/// rows from the window's top-left, 3 rows of `w2` per channel) into column `off / 4` of
/// `N` interleaved columns (`out`: `36 N` values): 36 loads and stores at constant offsets.
#[inline(always)]
fn gather3x3_block<const N: usize>(src: &[i16], w2: usize, off: usize, out: &mut [i16]) {
    assert!(w2 >= 3 && src.len() >= 11 * w2 + 3 && out.len() >= 36 * N && off < 4 * N);
    let out = &mut out[off..];
    for c in 0..4 {
        for ky in 0..3 {
            for kx in 0..3 {
                let k = c * 9 + ky * 3 + kx;
                let d = (k & !3) | PERM[k & 3];
                // SAFETY: c*3*w2 + ky*w2 + kx <= 11*w2 + 2 < src.len(), and
                // N*(d & !3) + (d & 3) + off <= 32 N + 3 + off < 36 N (asserted above).
                unsafe {
                    *out.get_unchecked_mut(N * (d & !3) + (d & 3)) =
                        *src.get_unchecked(c * 3 * w2 + ky * w2 + kx);
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
fn gather3x3_quad(src: &[i16], w2: usize, out: &mut [i16]) {
    assert!(w2 >= 6 && src.len() >= 11 * w2 + 6 && out.len() >= 144);
    for c in 0..4 {
        for ky in 0..3 {
            // SAFETY: c*3*w2 + ky*w2 + 5 <= 11*w2 + 5 < src.len() (asserted above).
            let v: [i16; 6] =
                core::array::from_fn(|i| unsafe { *src.get_unchecked(c * 3 * w2 + ky * w2 + i) });
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

/// The same for a 1x1 kernel (`src`: one staged row per channel, the pixel at `1`).
#[inline(always)]
fn gather1x1_block(src: &[i16], w2: usize, off: usize, out: &mut [i16]) {
    let [a, b, c, d] = [src[1], src[w2 + 1], src[2 * w2 + 1], src[3 * w2 + 1]];
    let o = &mut out[off..off + 4];
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
        // SAFETY: 0 <= t < 1024, so i <= 1023 and i + 1 <= 1024 < SILU_TABLE.len().
        let (a, b) = unsafe {
            (
                *SILU_TABLE.get_unchecked(i),
                *SILU_TABLE.get_unchecked(i + 1),
            )
        };
        a + f * (b - a)
    } else if t >= 1024.0 || v.is_nan() {
        v
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
        let mut one = [[0i32; 4]];
        rows_1x4(&w[..4 * whole], 4 * whole, cols, &mut one);
        s.copy_from_slice(&one[0]);
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

/// [`dot`] of two columns (attention's projection, and the last pixels of a row).
#[inline(always)]
fn dot1x2(w: &[u8], cols: &[u32], k: usize) -> [i32; 2] {
    dot::<2>(w, cols, k)
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
    /// [`Term::gather`] of pixels `x .. x + 4` into the four columns of `cols`.
    #[inline(always)]
    fn gather_quad(&self, staged: &[i16], w2: usize, x: usize, cols: &mut [i16]) {
        if self.k != 3 {
            for j in 0..4 {
                self.gather::<4>(staged, w2, x + j, j, cols);
            }
            return;
        }
        let stride = 4 * 3 * w2;
        let whole = self.cin / 4;
        for (b, out) in cols[..4 * whole * 36].chunks_exact_mut(4 * 36).enumerate() {
            gather3x3_quad(&staged[b * stride + x..], w2, out);
        }
        // Channels past the last whole block of four, and the zero padding.
        for j in 0..4 {
            self.gather_tail::<4>(staged, w2, x + j, j, cols);
        }
    }

    /// Column values `whole blocks .. kpad` of [`Term::gather`]: channels past the last
    /// whole block of four, and the zero padding.
    #[inline(always)]
    fn gather_tail<const N: usize>(
        &self,
        staged: &[i16],
        w2: usize,
        x: usize,
        which: usize,
        cols: &mut [i16],
    ) {
        let off = 4 * which;
        for d in (self.cin / 4) * 4 * self.k * self.k..self.kpad {
            let k = (d & !3) | PERM[d & 3];
            cols[N * (d & !3) + off + (d & 3)] = if k < self.kdim {
                let (ci, tap) = (k / (self.k * self.k), k % (self.k * self.k));
                let at = (tap / self.k) * w2 + tap % self.k + usize::from(self.k == 1);
                staged[ci * self.k * w2 + x + at]
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
        x: usize,
        which: usize,
        cols: &mut [i16],
    ) {
        let block = 4 * self.k * self.k;
        let stride = 4 * self.k * w2;
        let whole = self.cin / 4;
        let table = &self.table[..block];
        let span = table.iter().map(|&t| t as usize + 1).max().unwrap_or(0);
        let off = 4 * which;
        let blocks = cols[..N * whole * block]
            .chunks_exact_mut(N * block)
            .enumerate();
        if self.k == 3 {
            for (b, out) in blocks {
                gather3x3_block::<N>(&staged[b * stride + x..], w2, off, out);
            }
        } else if self.k == 1 {
            for (b, out) in blocks {
                gather1x1_block(&staged[b * stride + x..], w2, off, out);
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
        self.gather_tail::<N>(staged, w2, x, which, cols);
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
    // Four interleaved columns of i16: two f32 words per value of a column.
    let cols = ctx.f.alloc(2 * kpad_max);
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
            let (inv, qmax) = (p.inv, p.qmax);
            // SiLU commutes with nearest-neighbour upsampling, not with the box filter.
            let late_silu = src.silu && src.resample != Resample::Down;
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
                    let dst = &mut ch[slot * w2 + 1..slot * w2 + 1 + r];
                    if late_silu {
                        // Affine only here, SiLU in the rounding pass (one pass less).
                        src.row_with(&view, ci, yy, row, tmp, |v| v);
                        quantize_row(&row[..r], dst, inv, qmax, silu_fast);
                    } else {
                        src.row_with(&view, ci, yy, row, tmp, silu_fast);
                        quantize_row(&row[..r], dst, inv, qmax, |v| v);
                    }
                }
            }
            // Four output pixels at a time against each output channel (three left: the
            // last one twice, cheaper than a pair and a single), then a pair or one.
            let mut x = 0;
            while r - x >= 3 {
                let used = (r - x).min(4);
                if used == 4 {
                    p.gather_quad(st, w2, x, cols16);
                } else {
                    for j in 0..4 {
                        p.gather::<4>(st, w2, (x + j).min(r - 1), j, cols16);
                    }
                }
                let words: &[u32] = bytemuck::cast_slice(&cols16[..4 * p.kpad]);
                if p.kdim.is_multiple_of(4) {
                    // Sixteen rows a call (256 bytes of sums on the stack).
                    let mut sums = [[0i32; 4]; 16];
                    for co0 in (0..cout).step_by(16) {
                        let n = (cout - co0).min(16);
                        let sums = &mut sums[..n];
                        sums.iter_mut().for_each(|s| *s = [0; 4]);
                        let w = &p.w.values[co0 * p.kdim..(co0 + n) * p.kdim];
                        rows_1x4(w, p.kdim, words, sums);
                        for (i, d) in sums.iter().enumerate() {
                            let co = co0 + i;
                            let a = &mut acc[co * r + x..co * r + x + used];
                            for (a, &d) in a.iter_mut().zip(d) {
                                *a += d as f32 * sc[co];
                            }
                        }
                    }
                } else {
                    for (co, &scale_co) in sc.iter().enumerate() {
                        let d = dot::<4>(p.w.row(co), words, p.kdim);
                        let a = &mut acc[co * r + x..co * r + x + used];
                        for (a, d) in a.iter_mut().zip(d) {
                            *a += d as f32 * scale_co;
                        }
                    }
                }
                x += used;
            }
            while x < r {
                let x1 = (x + 1).min(r - 1);
                p.gather::<2>(st, w2, x, 0, cols16);
                p.gather::<2>(st, w2, x1, 1, cols16);
                let words: &[u32] = bytemuck::cast_slice(&cols16[..2 * p.kpad]);
                for (co, &scale_co) in sc.iter().enumerate() {
                    let [d0, d1] = dot::<2>(p.w.row(co), words, p.kdim);
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
/// Four words a turn in two sums (query-key products: 2.5 instructions per MAC one word a
/// turn, ~1.4 so).
#[inline(always)]
fn dot_i16(a: &[u32], b: &[u32]) -> i32 {
    let n = a.len().min(b.len());
    let (a4, b4) = (a[..n].chunks_exact(4), b[..n].chunks_exact(4));
    let tail = a4.remainder().iter().zip(b4.remainder());
    let (mut s0, mut s1) = (0i32, 0i32);
    for (x, y) in a4.zip(b4) {
        s0 = dsp::smlad(x[1], y[1], dsp::smlad(x[0], y[0], s0));
        s1 = dsp::smlad(x[3], y[3], dsp::smlad(x[2], y[2], s1));
    }
    tail.fold(s0.wrapping_add(s1), |s, (&x, &y)| dsp::smlad(x, y, s))
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

/// `logits[j] = (q . key j) scale` for the keys stored one after another (`q.len()` words
/// each), and the largest logit. With whole groups of four words (every shipped network's
/// attention) the loop over a key has no tail to set up: per key the loop cost ~70
/// instructions besides its 1.5 a MAC before.
#[inline(always)]
fn logits_of(q: &[u32], keys: &[u32], logits: &mut [f32], scale: f32) -> f32 {
    let cw = q.len();
    let mut max = f32::NEG_INFINITY;
    let keys = keys.chunks_exact(cw.max(1));
    if cw.is_multiple_of(4) && cw > 0 {
        for (l, k) in logits.iter_mut().zip(keys) {
            let (mut s0, mut s1) = (0i32, 0i32);
            for (x, y) in q.chunks_exact(4).zip(k.chunks_exact(4)) {
                s0 = dsp::smlad(x[1], y[1], dsp::smlad(x[0], y[0], s0));
                s1 = dsp::smlad(x[3], y[3], dsp::smlad(x[2], y[2], s1));
            }
            *l = s0.wrapping_add(s1) as f32 * scale;
            max = if *l > max { *l } else { max };
        }
    } else {
        for (l, k) in logits.iter_mut().zip(keys) {
            *l = dot_i16(q, k) as f32 * scale;
            max = if *l > max { *l } else { max };
        }
    }
    max
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
            let max = logits_of(q16w, keys, logits, logit_scale);
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
            for (av, row_v) in q.iter_mut().zip(vals.chunks_exact(n2 / 2)) {
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
        residual_row(xs, outs, c, res, qy, row);
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
        let src: Vec<i16> = (0..12 * w2 + 8).map(|_| lcg(&mut s) as i16).collect();
        let mut quad = vec![0i16; 144];
        gather3x3_quad(&src, w2, &mut quad);
        let mut single = vec![0i16; 144];
        for j in 0..4 {
            gather3x3_block::<4>(&src[j..], w2, 4 * j, &mut single);
        }
        assert_eq!(quad, single);
        // And the columns are the windows: column j, value k = c*9 + ky*3 + kx.
        for j in 0..4 {
            for k in 0..36 {
                let d = (k & !3) | PERM[k & 3];
                let (c, ky, kx) = (k / 9, k % 9 / 3, k % 3);
                assert_eq!(
                    quad[4 * (d & !3) + 4 * j + (d & 3)],
                    src[c * 3 * w2 + ky * w2 + kx + j]
                );
            }
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
