//! Vector helpers shared by the kernels: running a closure under the CPU's widest SIMD
//! level, a fast `exp` for SiLU and softmax, and sums accumulated in f64 lanes (the
//! statistics of GroupNorm and softmax's normalizers).

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

/// Runs `f` compiled for AVX2 when the CPU has it, so the elementwise loops inlined into it
/// vectorize 8 wide instead of the baseline's 4 (SSE2). The results are the same bits either
/// way: Rust never fuses a multiply and an add, and every reduction here fixes its lane
/// order in the source.
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
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

#[inline(always)]
/// `(sum a, sum a * b)` over two slices, in eight f32 lanes (so it vectorizes), lanes summed
/// in f64.
pub(crate) fn sum_and_dot(a: &[f32], b: &[f32]) -> (f64, f64) {
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
pub(crate) fn lane_sum(a: &[f32]) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
