//! Schedule parameterization against closed forms (docs/method.md §2-§3).

use sampler_core::rng;
use sampler_core::schedule::{Schedule, ScheduleError, Warp};

/// EDM's rho schedule in f64, written independently of the crate.
fn edm_reference(t: usize, s_min: f64, s_max: f64, rho: f64) -> Vec<f64> {
    (0..t)
        .map(|i| {
            let a = s_max.powf(1.0 / rho);
            let b = s_min.powf(1.0 / rho);
            (a + i as f64 / (t - 1) as f64 * (b - a)).powf(rho)
        })
        .collect()
}

#[test]
fn rho7_warp_at_zero_logits_is_edm() {
    for t in 2..=24 {
        for &(s_min, s_max) in &[(0.002, 80.0), (0.01, 10.0), (0.5, 1.0)] {
            let sched = Schedule::edm(t, s_min, s_max).unwrap();
            let want = edm_reference(t, s_min, s_max, 7.0);
            assert_eq!(sched.len(), t);
            for (i, (&got, &want)) in sched.sigmas().iter().zip(&want).enumerate() {
                let rel = ((got as f64 - want) / want).abs();
                assert!(rel < 1e-6, "T={t} i={i}: {got} vs {want} (rel {rel:e})");
            }
        }
    }
}

#[test]
fn random_logits_give_valid_schedules_with_exact_end_points() {
    let mut stream = 0u64;
    for warp in [Warp::Rho7, Warp::Log, Warp::Linear] {
        for t in [3usize, 5, 8, 10, 20] {
            for scale in [0.1f32, 1.0, 3.0] {
                stream += 1;
                let v: Vec<f64> = rng::gaussian_vec(stream, t - 2)
                    .iter()
                    .map(|&z| (z * scale) as f64)
                    .collect();
                let s = Schedule::from_logits(&v, 0.002, 80.0, warp).unwrap();
                assert_eq!(s.s_max(), 80.0f32, "{warp:?} T={t}");
                assert_eq!(s.s_min(), 0.002f32, "{warp:?} T={t}");
                assert!(
                    s.sigmas().windows(2).all(|w| w[0] > w[1]),
                    "{warp:?} T={t}: {:?}",
                    s.sigmas()
                );
            }
        }
    }
}

#[test]
fn logits_round_trip_through_the_inverse() {
    for warp in [Warp::Rho7, Warp::Log, Warp::Linear] {
        let v: Vec<f64> = rng::gaussian_vec(42, 6).iter().map(|&z| z as f64).collect();
        let s = Schedule::from_logits(&v, 0.002, 80.0, warp).unwrap();
        let back = Schedule::from_logits(&s.to_logits(warp), 0.002, 80.0, warp).unwrap();
        for (a, b) in s.sigmas().iter().zip(back.sigmas()) {
            assert!(((a - b) / a).abs() < 1e-5, "{warp:?}: {a} vs {b}");
        }
    }
}

#[test]
fn lambda_weights_match_definition_and_sum() {
    for t in [2usize, 3, 5, 10, 18] {
        let s = Schedule::edm(t, 0.002, 80.0).unwrap();
        let lam = s.lambda_weights();
        assert_eq!(lam.len(), t - 1);
        let sig: Vec<f64> = s.sigmas().iter().map(|&x| x as f64).collect();
        let s_min = sig[t - 1];
        for i in 0..t - 1 {
            let want = s_min / sig[i + 1] - s_min / sig[i];
            assert!((lam[i] - want).abs() < 1e-12, "T={t} i={i}");
            assert!(lam[i] > 0.0);
        }
        let sum: f64 = lam.iter().sum();
        assert!((sum - (1.0 - s_min / sig[0])).abs() < 1e-12, "T={t}: {sum}");
    }
}

#[test]
fn invalid_levels_are_rejected_with_reasons() {
    assert_eq!(Schedule::new(vec![1.0]), Err(ScheduleError::TooShort(1)));
    assert!(matches!(
        Schedule::new(vec![1.0, 1.0]),
        Err(ScheduleError::NotDecreasing { index: 1, .. })
    ));
    assert!(matches!(
        Schedule::new(vec![1.0, f32::NAN]),
        Err(ScheduleError::NotPositive { index: 1, .. })
    ));
    assert!(matches!(
        Schedule::new(vec![1.0, 0.0]),
        Err(ScheduleError::NotPositive { .. })
    ));
    assert!(matches!(
        Schedule::new(vec![f32::INFINITY, 1.0]),
        Err(ScheduleError::NotPositive { index: 0, .. })
    ));
    assert!(matches!(
        Schedule::from_logits(&[0.0], 1.0, 0.5, Warp::Rho7),
        Err(ScheduleError::BadRange { .. })
    ));
    let msg = Schedule::new(vec![2.0, 3.0]).unwrap_err().to_string();
    assert!(msg.contains("strictly decrease"), "{msg}");
}
