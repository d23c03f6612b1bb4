//! d(L_disc)/dv and d(L_bound)/dv from autodiff against central finite differences, in
//! float64 (this test binary configures the flex device to f64 before making any tensor),
//! on a small mixture and a tiny network, with L_disc unrolled through every solver stage 1
//! can learn levels for (Euler, Heun, DPM-Solver++(2M), iPNDM); and the paper's Eq. 14
//! estimator against the exact gradient.

use burn::tensor::{Device, FloatDType, Tensor};
use sampler_core::bundle::SolverKind;
use sampler_core::gmm::Mixture;
use sampler_core::model::{MlpConfig, NetConfig, Preconditioned};
use sampler_core::precond::Precond;
use sampler_core::schedule::{Warp, lambda_weights};
use sampler_core::solver::Denoiser;
use trainer::data::noise;
use trainer::losses::{Weighting, bound_loss, disc_loss_exact, disc_surrogate_paper};
use trainer::model::init_network;
use trainer::run::scalar;
use trainer::two_stage::ScheduleLogits;

const T: usize = 5;
const S_MIN: f64 = 0.002;
const S_MAX: f64 = 80.0;

fn f64_device() -> Device {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut d = Device::flex();
        d.configure(FloatDType::F64)
            .expect("configure before any tensor exists");
    });
    Device::flex()
}

struct Case {
    x: Tensor<2>,
    eps: Tensor<2>,
    x0: Tensor<2>,
    target: Tensor<2>,
    levels: Vec<usize>,
}

/// Every row at every level (an exact sum over i), fixed noise.
fn case(d: usize, rows: usize, device: &Device) -> Case {
    let base = noise(1, 1, 0, rows, d, device).mul_scalar(0.5);
    let x = Tensor::cat(vec![base; T - 1], 0);
    let eps = noise(1, 2, 0, rows * (T - 1), d, device);
    let x0 = noise(1, 3, 0, rows, d, device).mul_scalar(S_MAX);
    let target = noise(1, 4, 0, rows, d, device).mul_scalar(0.3);
    let levels = (0..T - 1)
        .flat_map(|i| std::iter::repeat_n(i, rows))
        .collect();
    Case {
        x,
        eps,
        x0,
        target,
        levels,
    }
}

/// (L_bound, L_disc through Euler) at logits `v`; autodiff when the device is.
fn losses(den: &dyn Denoiser, c: &Case, logits: &ScheduleLogits) -> (Tensor<1>, Tensor<1>) {
    losses_with(SolverKind::Euler, den, c, logits)
}

/// (L_bound, L_disc through `solver`'s unroll) at logits `v`.
fn losses_with(
    solver: SolverKind,
    den: &dyn Denoiser,
    c: &Case,
    logits: &ScheduleLogits,
) -> (Tensor<1>, Tensor<1>) {
    let sigmas = logits.sigmas(S_MIN, S_MAX, Warp::Rho7);
    let lambdas = lambda_weights(sigmas.clone());
    let lb = bound_loss(
        den,
        c.x.clone(),
        None,
        sigmas.clone(),
        lambdas,
        &c.levels,
        c.eps.clone(),
        Weighting::Lambda,
        Precond::default(),
    );
    let ld = disc_loss_exact(solver, den, c.x0.clone(), None, sigmas, c.target.clone());
    (lb, ld)
}

fn check(make_den: &dyn Fn(&Device) -> Box<dyn Denoiser>, d: usize, what: &str) {
    for solver in SolverKind::ALL {
        check_solver(make_den, d, &format!("{what} {}", solver.name()), solver);
    }
}

fn check_solver(
    make_den: &dyn Fn(&Device) -> Box<dyn Denoiser>,
    d: usize,
    what: &str,
    solver: SolverKind,
) {
    let losses =
        |den: &dyn Denoiser, c: &Case, logits: &ScheduleLogits| losses_with(solver, den, c, logits);
    let plain = f64_device();
    let ad = plain.clone().autodiff();
    let v0 = [0.3, -0.2, 0.5];
    let c_ad = case(d, 3, &ad);
    let den_ad = make_den(&ad);
    let logits = ScheduleLogits::new(&v0, &ad);
    let (lb, ld) = losses(den_ad.as_ref(), &c_ad, &logits);
    let g_bound = logits
        .v
        .grad(&lb.backward())
        .expect("grad")
        .try_into_vec_as::<f64>()
        .unwrap();
    let logits = ScheduleLogits::new(&v0, &ad);
    let (_, ld2) = losses(den_ad.as_ref(), &c_ad, &logits);
    let _ = ld;
    let g_disc = logits
        .v
        .grad(&ld2.backward())
        .expect("grad")
        .try_into_vec_as::<f64>()
        .unwrap();

    let c = case(d, 3, &plain);
    let den = make_den(&plain);
    let h = 1e-5;
    for j in 0..v0.len() {
        let at = |delta: f64| {
            let mut v = v0;
            v[j] += delta;
            let (lb, ld) = losses(den.as_ref(), &c, &ScheduleLogits::new(&v, &plain));
            (scalar(&lb), scalar(&ld))
        };
        let (p, m) = (at(h), at(-h));
        let fd_bound = (p.0 - m.0) / (2.0 * h);
        let fd_disc = (p.1 - m.1) / (2.0 * h);
        for (name, ad_g, fd) in [
            ("L_bound", g_bound[j], fd_bound),
            ("L_disc", g_disc[j], fd_disc),
        ] {
            let err = (ad_g - fd).abs() / fd.abs().max(1e-8);
            eprintln!(
                "{what} d{name}/dv_{j}: autodiff {ad_g:.9e} finite diff {fd:.9e} rel {err:.1e}"
            );
            assert!(
                err < 1e-5,
                "{what} d{name}/dv_{j}: autodiff {ad_g} vs finite difference {fd}"
            );
        }
    }
}

fn mixture() -> Mixture {
    Mixture {
        dim: 4,
        means: vec![
            0.5, -0.3, 0.1, 0.8, -0.6, 0.2, -0.4, 0.0, 0.3, 0.3, -0.7, -0.2,
        ],
        stds: vec![0.1, 0.2, 0.15],
        weights: vec![0.5, 0.3, 0.2],
    }
}

#[test]
fn schedule_gradients_match_finite_differences() {
    check(
        &|dev| Box::new(mixture().to_device(dev).unwrap()),
        4,
        "mixture",
    );
    let config = NetConfig::Mlp(
        MlpConfig::new(4)
            .with_hidden(16)
            .with_depth(1)
            .with_noise_channels(8),
    );
    // The network is a constant of the schedule gradient; its weights come from the seed.
    let net_plain = init_network(&config, 7, &f64_device());
    let bytes = sampler_core::model::weights_to_bytes(&net_plain).unwrap();
    let make = move |dev: &Device| -> Box<dyn Denoiser> {
        let net = sampler_core::model::network_from_bytes(&config, &bytes, dev).unwrap();
        Box::new(OwnedNet { net, dim: 4 })
    };
    check(&make, 4, "mlp");

    // Paper Eq. 14 (averaged over every t) against the exact gradient of L_disc.
    let ad = f64_device().autodiff();
    let den = mixture().to_device(&ad).unwrap();
    let c = case(4, 8, &ad);
    let v0 = [0.3, -0.2, 0.5];
    let logits = ScheduleLogits::new(&v0, &ad);
    let exact = {
        let (_, ld) = losses(&den, &c, &logits);
        logits
            .v
            .grad(&ld.backward())
            .unwrap()
            .try_into_vec_as::<f64>()
            .unwrap()
    };
    let logits = ScheduleLogits::new(&v0, &ad);
    let sigmas = logits.sigmas(S_MIN, S_MAX, Warp::Rho7);
    let all: Vec<usize> = (0..T - 1).collect();
    let (sur, _) = disc_surrogate_paper(&den, c.x0.clone(), None, sigmas, c.target.clone(), &all);
    let paper = logits
        .v
        .grad(&sur.backward())
        .unwrap()
        .try_into_vec_as::<f64>()
        .unwrap();
    let dot: f64 = exact.iter().zip(&paper).map(|(a, b)| a * b).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let cosine = dot / (norm(&exact) * norm(&paper));
    eprintln!("paper estimator vs exact: cosine {cosine:.4} (exact {exact:?}, paper {paper:?})");
    assert!(
        cosine > 0.0,
        "the paper estimator points away from the exact gradient: cosine {cosine}"
    );
}

struct OwnedNet {
    net: sampler_core::model::Network,
    dim: usize,
}

impl Denoiser for OwnedNet {
    fn dim(&self) -> usize {
        self.dim
    }
    fn denoise(&self, x: Tensor<2>, sigma: Tensor<1>, labels: Option<Tensor<2>>) -> Tensor<2> {
        Preconditioned {
            net: &self.net,
            precond: Precond::default(),
            dim: self.dim,
        }
        .denoise(x, sigma, labels)
    }
}

/// Paper Eq. 14 computed directly: for every level t < T - 1,
/// `dL/ds_t = 2 lambda_t <x_{T-1} - target, dD(x_t, s)/ds at s_t> / (B d)` (averaged over
/// the drawn t, here all of them), with `dD/ds` by central differences of the mixture's
/// exact denoiser at the Euler states `x_t`. The surrogate's autodiff gradient in the
/// levels must be that number, level by level; `s_min` gets none (lambda is held fixed).
#[test]
fn the_paper_surrogate_differentiates_to_eq_14() {
    use burn::tensor::TensorData;
    use trainer::losses::euler_states;
    let plain = f64_device();
    let ad = plain.clone().autodiff();
    let levels = [80.0f64, 9.0, 1.1, 0.09, 0.002];
    let all: Vec<usize> = (0..T - 1).collect();
    let c = case(4, 8, &ad);
    let sigmas = Tensor::<1>::from_data(TensorData::new(levels.to_vec(), [T]), &ad).require_grad();
    let den = mixture().to_device(&ad).unwrap();
    let (sur, _) = disc_surrogate_paper(
        &den,
        c.x0.clone(),
        None,
        sigmas.clone(),
        c.target.clone(),
        &all,
    );
    let grad = sigmas
        .grad(&sur.backward())
        .unwrap()
        .try_into_vec_as::<f64>()
        .unwrap();

    let den = mixture().to_device(&plain).unwrap();
    let c = case(4, 8, &plain);
    let (b, d) = (8usize, 4usize);
    let levels_t = Tensor::<1>::from_data(TensorData::new(levels.to_vec(), [T]), &plain);
    let (states, x_last) = euler_states(&den, c.x0.clone(), None, levels_t);
    let r = (x_last - c.target.clone())
        .try_into_vec_as::<f64>()
        .unwrap();
    let s_min = levels[T - 1];
    for t in 0..T - 1 {
        let lambda = s_min / levels[t + 1] - s_min / levels[t];
        let h = 1e-6 * levels[t];
        let at = |s: f64| {
            den.denoise(
                states[t].clone(),
                Tensor::<1>::from_data(TensorData::new(vec![s; b], [b]), &plain),
                None,
            )
            .try_into_vec_as::<f64>()
            .unwrap()
        };
        let (up, down) = (at(levels[t] + h), at(levels[t] - h));
        let inner: f64 = (0..b * d)
            .map(|k| r[k] * (up[k] - down[k]) / (2.0 * h))
            .sum();
        let direct = 2.0 * lambda * inner / (b * d) as f64;
        eprintln!(
            "level {t}: autodiff {:.6e}, Eq. 14 directly {direct:.6e}",
            grad[t]
        );
        assert!(
            (grad[t] - direct).abs() <= 1e-5 * direct.abs().max(1e-12),
            "level {t}: {} vs {direct}",
            grad[t]
        );
    }
    assert_eq!(grad[T - 1], 0.0, "s_min moved");
}
