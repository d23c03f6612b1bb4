//! The pack's format: round trips per dtype, int8 scales, and corrupted bytes.

use super::encode::output_axis;
use super::*;

#[test]
fn f16_round_trips_every_half_and_rounds_to_nearest_even() {
    for h in 0..=u16::MAX {
        let f = f16_to_f32(h);
        if f.is_nan() {
            assert!(f32_to_f16(f) & 0x7c00 == 0x7c00 && f32_to_f16(f) & 0x3ff != 0);
            continue;
        }
        assert_eq!(f32_to_f16(f), h, "{h:#06x} -> {f}");
    }
    // Known values, independently: 1/3 rounds to 0x3555; 65520 overflows; 2^-25 ties
    // to even (zero), 3 * 2^-25 rounds up to 2^-23.
    assert_eq!(f32_to_f16(1.0 / 3.0), 0x3555);
    assert_eq!(f32_to_f16(65520.0), 0x7c00);
    assert_eq!(f32_to_f16(2f32.powi(-25)), 0);
    assert_eq!(f32_to_f16(3.0 * 2f32.powi(-25)), 0x0002);
    assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
    // Halfway between 1 and the next half (1 + 2^-10): ties to even (1.0).
    assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3c00);
    assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
}

fn sample() -> Vec<PackTensor> {
    let vals = |n: usize, k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect();
    alloc::vec![
        PackTensor {
            name: "a.weight".into(),
            shape: alloc::vec![3, 2, 3, 3],
            values: vals(54, 0.37),
        },
        PackTensor {
            name: "a.bias".into(),
            shape: alloc::vec![3],
            values: vals(3, 1.1),
        },
        PackTensor {
            name: "lin.weight".into(),
            shape: alloc::vec![5, 4],
            values: vals(20, 0.9),
        },
    ]
}

#[test]
fn each_dtype_round_trips_within_its_precision() {
    let tensors = sample();
    for (dtype, tol) in [
        (WeightDtype::F32, 0.0f32),
        (WeightDtype::F16, 1.0 / 2048.0),
        (WeightDtype::I8, 0.5 / 127.0),
    ] {
        let bytes = encode(&tensors, dtype).unwrap();
        let pack = PackView::parse(&bytes).unwrap();
        assert_eq!(pack.tensors().len(), 3);
        for t in &tensors {
            let v = pack.get(&t.name).unwrap();
            assert_eq!(v.shape(), t.shape.as_slice());
            let expect_dtype = if t.shape.len() == 1 {
                WeightDtype::F32
            } else {
                dtype
            };
            assert_eq!(v.dtype, expect_dtype);
            // int8: error <= half a step of the channel's own scale (max |w| / 127).
            let got = v.to_vec();
            for (i, (&g, &w)) in got.iter().zip(&t.values).enumerate() {
                let bound = match v.dtype {
                    WeightDtype::I8 => {
                        let axis = output_axis(&t.shape);
                        let inner: usize = t.shape[axis + 1..].iter().product();
                        let c = (i / inner) % t.shape[axis];
                        let max = t
                            .values
                            .iter()
                            .enumerate()
                            .filter(|(j, _)| (j / inner) % t.shape[axis] == c)
                            .fold(0.0f32, |m, (_, v)| m.max(v.abs()));
                        max * tol * 1.0001
                    }
                    _ => tol * w.abs().max(2f32.powi(-14)),
                };
                assert!(
                    (g - w).abs() <= bound,
                    "{dtype:?} {} [{i}]: {g} vs {w}",
                    t.name
                );
            }
            // Every sub-range reads the same values (int8 reads a run of a channel's
            // values per scale: runs cut at any start and length).
            for start in 0..got.len().min(40) {
                for len in [1, 2, 3, 5, 9, got.len() - start] {
                    let len = len.min(got.len() - start);
                    let mut part = alloc::vec![0.0; len];
                    v.read(start, &mut part);
                    assert_eq!(part.as_slice(), &got[start..start + len], "{}", t.name);
                }
            }
        }
    }
}

/// int8 scales per output channel: axis 0 of a convolution `[out, in, kh, kw]`, the last
/// axis of a Linear `[in, out]`. Output channels whose ranges differ by 10^3 steps keep
/// each its own relative precision (half a step of max |w| / 127 of that channel,
/// computed here in f64 from the layouts, not from the encoder's axis function); scaled
/// along any other axis, the small channels would round to zero.
#[test]
fn int8_scales_along_the_output_channels() {
    let (o, i) = (3usize, 4usize);
    let magnitude = |c: usize| 1000f64.powi(c as i32) * 1e-3; // 1e-3, 1, 1e3
    let value = |c: usize, k: usize| magnitude(c) * (0.3 + 0.7 * ((k * 7 + 3) % 11) as f64 / 10.0);
    // conv [o, i, 2, 2]: element (c, rest) at c * 16 + rest.
    let conv: Vec<f32> = (0..o * i * 4)
        .map(|e| value(e / 16, e % 16) as f32)
        .collect();
    // linear [i, o]: element (row, c) at row * o + c.
    let linear: Vec<f32> = (0..i * o).map(|e| value(e % o, e / o) as f32).collect();
    let tensors = alloc::vec![
        PackTensor {
            name: "conv".into(),
            shape: alloc::vec![o, i, 2, 2],
            values: conv
        },
        PackTensor {
            name: "lin".into(),
            shape: alloc::vec![i, o],
            values: linear
        },
    ];
    let bytes = encode(&tensors, WeightDtype::I8).unwrap();
    let pack = PackView::parse(&bytes).unwrap();
    for (t, channel_of) in tensors.iter().zip([
        &(|e: usize| e / 16) as &dyn Fn(usize) -> usize,
        &(|e: usize| e % o) as &dyn Fn(usize) -> usize,
    ]) {
        let got = pack.get(&t.name).unwrap().to_vec();
        let mut max = [0.0f64; 3];
        for (e, &w) in t.values.iter().enumerate() {
            max[channel_of(e)] = max[channel_of(e)].max((w as f64).abs());
        }
        for (e, (&g, &w)) in got.iter().zip(&t.values).enumerate() {
            let half_step = max[channel_of(e)] / 127.0 / 2.0;
            let err = (g as f64 - w as f64).abs();
            assert!(
                err <= half_step * 1.0001,
                "{} [{e}] (channel {}): {g} vs {w}, error {err:e} > half a step {half_step:e}",
                t.name,
                channel_of(e)
            );
        }
    }
}

#[test]
fn every_truncation_and_single_byte_edit_is_an_error_or_a_valid_pack() {
    let bytes = encode(&sample(), WeightDtype::I8).unwrap();
    // Cut anywhere, the table or the data runs out.
    for n in 0..bytes.len() {
        assert!(PackView::parse(&bytes[..n]).is_err(), "{n}");
    }
    for i in 0..bytes.len() {
        for v in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[i] = v;
            if let Ok(p) = PackView::parse(&b) {
                // Whatever parses can be read in full without a panic.
                for t in p.tensors() {
                    let _ = t.to_vec();
                }
            }
        }
    }
}
