//! Pre-training's pieces against independent computations: EDM's loss in f64 by hand, the
//! EMA blend parameter by parameter, and the log-normal noise-level draw's moments.

use burn::tensor::{Device, Tensor, TensorData};
use sampler_core::model::{MlpConfig, NetConfig, weights_to_bytes, weights_to_pack};
use sampler_core::pack::{PackView, WeightDtype};
use sampler_core::precond::Precond;
use sampler_core::solver::Denoiser;
use trainer::losses::{Weighting, bound_loss, edm_loss};
use trainer::model::{init_network, update_ema};
use trainer::pretrain::{P_MEAN, P_STD, ln_sigma_draw};

/// `D(x, s) = k x`: a denoiser whose loss has a closed form.
struct Scale(f32, usize);

impl Denoiser for Scale {
    fn dim(&self) -> usize {
        self.1
    }
    fn denoise(&self, x: Tensor<2>, _s: Tensor<1>, _labels: Option<Tensor<2>>) -> Tensor<2> {
        x.mul_scalar(self.0)
    }
}

#[test]
fn edm_loss_is_the_weighted_denoising_error() {
    let device = Device::flex();
    let (b, d, k, sd) = (3usize, 4usize, 0.7f64, 0.5f64);
    let x: Vec<f32> = (0..b * d).map(|i| (i as f32 * 0.37).sin()).collect();
    let eps: Vec<f32> = (0..b * d).map(|i| (i as f32 * 1.3).cos()).collect();
    let ln_s = [-1.2f32, 0.3, 2.0];
    let loss = edm_loss(
        &Scale(k as f32, d),
        Tensor::from_data(TensorData::new(x.clone(), [b, d]), &device),
        None,
        Tensor::from_data(TensorData::new(ln_s.to_vec(), [b]), &device),
        Tensor::from_data(TensorData::new(eps.clone(), [b, d]), &device),
        Precond::Edm {
            sigma_data: sd as f32,
        },
    );
    let got = loss.into_data().try_to_vec::<f32>().unwrap()[0] as f64;
    // mean over rows of w(s) * mean_j (k (x + s eps) - x)^2, w = (s^2 + sd^2) / (s sd)^2.
    let mut want = 0.0;
    for r in 0..b {
        let s = (ln_s[r] as f64).exp();
        let w = (s * s + sd * sd) / (s * sd).powi(2);
        let mse: f64 = (0..d)
            .map(|j| {
                let (xv, ev) = (x[r * d + j] as f64, eps[r * d + j] as f64);
                (k * (xv + s * ev) - xv).powi(2)
            })
            .sum::<f64>()
            / d as f64;
        want += w * mse / b as f64;
    }
    assert!((got - want).abs() <= 1e-5 * want, "{got} vs {want}");
}

/// Every parameter of a network as f32 values, in the module's order.
fn values(net: &sampler_core::model::Network, config: &NetConfig) -> Vec<f32> {
    let pack = weights_to_pack(config, &weights_to_bytes(net).unwrap(), WeightDtype::F32).unwrap();
    PackView::parse(&pack)
        .unwrap()
        .tensors()
        .iter()
        .flat_map(|t| t.to_vec())
        .collect()
}

/// Adds 0.5 to every parameter, keeping its id (what a training step does).
struct Shift;

impl burn::module::ModuleMapper for Shift {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        param.map(|t| t.add_scalar(0.5))
    }
}

#[test]
fn update_ema_blends_every_parameter() {
    use burn::module::Module;
    let device = Device::flex();
    let config = NetConfig::Mlp(
        MlpConfig::new(6)
            .with_hidden(8)
            .with_depth(2)
            .with_label_dim(3),
    );
    let ema = init_network(&config, 1, &device);
    let net = ema.clone().map(&mut Shift);
    let (e, n) = (values(&ema, &config), values(&net, &config));
    assert!(e.iter().zip(&n).all(|(a, b)| (b - a - 0.5).abs() < 1e-6));
    let blended = values(&update_ema(ema.clone(), &net, 0.9), &config);
    assert_eq!(blended.len(), e.len());
    for (i, ((b, e), n)) in blended.iter().zip(&e).zip(&n).enumerate() {
        let want = 0.9 * *e as f64 + 0.1 * *n as f64;
        assert!(
            (*b as f64 - want).abs() <= 1e-6,
            "parameter {i}: {b} vs {want}"
        );
    }
    // Parameters pair by id, not by position: a network built apart leaves the EMA as is.
    let stranger = init_network(&config, 2, &device);
    assert_eq!(values(&update_ema(ema, &stranger, 0.9), &config), e);
}

#[test]
fn the_noise_level_draw_is_log_normal_and_seeded() {
    let n = 200_000;
    let v: Vec<f64> = ln_sigma_draw(7, 3, n).iter().map(|&x| x as f64).collect();
    let mean = v.iter().sum::<f64>() / n as f64;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
    // Standard errors at n = 200,000: 0.0027 for the mean, 0.0019 for the std.
    assert!((mean - P_MEAN).abs() < 0.012, "mean {mean}");
    assert!((std - P_STD).abs() < 0.01, "std {std}");
    let inside = v.iter().filter(|x| (*x - P_MEAN).abs() < P_STD).count() as f64 / n as f64;
    assert!((inside - 0.6827).abs() < 0.005, "within one std: {inside}");
    assert_eq!(ln_sigma_draw(7, 3, 10), ln_sigma_draw(7, 3, 10));
    assert_ne!(ln_sigma_draw(7, 3, 10), ln_sigma_draw(7, 4, 10));
    assert_ne!(ln_sigma_draw(7, 3, 10), ln_sigma_draw(8, 3, 10));
}

/// L_bound's two weightings against f64 by hand, on `D(x, s) = k x` at chosen levels:
/// the paper's `(T - 1) lambda_i` and EDM's `w(s_i)` give the numbers of their own formulas
/// (and differ), so stage 2 and the "original weight finetune" ablation cannot swap them.
#[test]
fn bound_loss_weights_each_level_by_lambda_or_by_edm() {
    let device = Device::flex();
    let (b, d, k, sd) = (4usize, 3usize, 0.8f64, 0.5f64);
    let sig = [80.0f64, 5.0, 0.4, 0.002];
    let t = sig.len();
    let s_min = sig[t - 1];
    // lambda_i = s_min / s_{i+1} - s_min / s_i, i = 0 .. T-2.
    let lambdas: Vec<f64> = (0..t - 1)
        .map(|i| s_min / sig[i + 1] - s_min / sig[i])
        .collect();
    let levels = [0usize, 2, 1, 2];
    let x: Vec<f32> = (0..b * d).map(|i| (i as f32 * 0.71).sin()).collect();
    let eps: Vec<f32> = (0..b * d).map(|i| (i as f32 * 0.29).cos()).collect();
    let run = |weighting| {
        let l = bound_loss(
            &Scale(k as f32, d),
            Tensor::from_data(TensorData::new(x.clone(), [b, d]), &device),
            None,
            Tensor::from_data(
                TensorData::new(sig.iter().map(|&v| v as f32).collect::<Vec<_>>(), [t]),
                &device,
            ),
            Tensor::from_data(
                TensorData::new(
                    lambdas.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                    [t - 1],
                ),
                &device,
            ),
            &levels,
            Tensor::from_data(TensorData::new(eps.clone(), [b, d]), &device),
            weighting,
            Precond::Edm {
                sigma_data: sd as f32,
            },
        );
        l.into_data().try_to_vec::<f32>().unwrap()[0] as f64
    };
    let by_hand = |weight: &dyn Fn(usize) -> f64| {
        (0..b)
            .map(|r| {
                let s = sig[levels[r]];
                let mse = (0..d)
                    .map(|j| {
                        let (xv, ev) = (x[r * d + j] as f64, eps[r * d + j] as f64);
                        (k * (xv + s * ev) - xv).powi(2)
                    })
                    .sum::<f64>()
                    / d as f64;
                weight(levels[r]) * mse
            })
            .sum::<f64>()
            / b as f64
    };
    let lambda = by_hand(&|i| (t - 1) as f64 * lambdas[i]);
    let edm = by_hand(&|i| (sig[i] * sig[i] + sd * sd) / (sig[i] * sd).powi(2));
    let (got_lambda, got_edm) = (run(Weighting::Lambda), run(Weighting::Edm));
    eprintln!("lambda: {got_lambda} vs {lambda}; edm: {got_edm} vs {edm}");
    assert!(
        (got_lambda - lambda).abs() <= 1e-5 * lambda,
        "{got_lambda} vs {lambda}"
    );
    assert!((got_edm - edm).abs() <= 1e-5 * edm, "{got_edm} vs {edm}");
    assert!(
        (lambda - edm).abs() > 0.5 * lambda.min(edm),
        "the weightings coincide here"
    );
}
