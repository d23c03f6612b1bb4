//! Data parallelism (`--devices`, `trainer/src/parallel.rs`): a batch split over two or three
//! replicas on flex devices gives the gradient of the same global batch on one device within
//! f32 round-off, and a few pre-training and stage-2 steps land on the same weights and
//! losses.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use sampler_core::bundle::{ImageShape, SolverKind};
use sampler_core::model::NetConfig;
use sampler_core::precond::Precond;
use trainer::pretrain::{Pretrain, PretrainConfig};
use trainer::run::RunDir;
use trainer::two_stage::{FinetuneConfig, Mode};

fn device() -> Device {
    Device::flex().autodiff()
}

/// Largest |a - b| over every parameter's gradient, and the largest |a|.
struct GradDiff<'a> {
    a: &'a GradientsParams,
    b: &'a GradientsParams,
    diff: f64,
    scale: f64,
    params: usize,
}

impl ModuleVisitor for GradDiff<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let get = |g: &GradientsParams| -> Option<Vec<f32>> {
            g.get::<D>(param.id)
                .map(|t| t.into_data().try_to_vec::<f32>().unwrap())
        };
        // Parameters the loss does not reach (an unused label embedding) have no gradient:
        // in both or in neither.
        let (a, b) = match (get(self.a), get(self.b)) {
            (Some(a), Some(b)) => (a, b),
            (None, None) => return,
            (a, b) => panic!(
                "gradient present in one only: {:?} {:?}",
                a.is_some(),
                b.is_some()
            ),
        };
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            self.diff = self.diff.max((x - y).abs() as f64);
            self.scale = self.scale.max(x.abs() as f64);
        }
        self.params += 1;
    }
}

fn pretrain_config(net: NetConfig, shape: ImageShape, batch: usize) -> PretrainConfig {
    PretrainConfig {
        net,
        precond: Precond::default(),
        steps: 3,
        batch,
        lr: 1e-3,
        ema_decay: 0.9,
        seed: 3,
        checkpoint_every: 100,
        dataset: "mixture".into(),
        image: shape,
        label_count: 0,
        dropout: 0.0,
    }
}

fn shape8() -> ImageShape {
    ImageShape {
        channels: 1,
        height: 8,
        width: 8,
    }
}

#[test]
fn shards_cover_the_batch_in_order() {
    use trainer::parallel::shards;
    assert_eq!(shards(7, 2), vec![0..4, 4..7]);
    assert_eq!(shards(9, 3), vec![0..3, 3..6, 6..9]);
    assert_eq!(shards(2, 4), vec![0..1, 1..2]);
    assert_eq!(shards(5, 1), vec![0..5]);
}

#[test]
fn split_gradients_equal_the_global_batch_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = common::unet_base(dir.path());
    // Batch 7: uneven shards (4 + 3, 3 + 2 + 2) test the weighting by each shard's share.
    let config = pretrain_config(common::unet_config(), shape8(), 7);
    // One run (parameter ids are drawn at initialization), re-split between measurements.
    let mut pt = Pretrain::new(config, None, &device()).unwrap();
    let (loss_one, grads_one) = pt.loss_and_grads(&data).unwrap();
    for n in [2, 3] {
        pt = pt.with_replicas(vec![device(); n]).unwrap();
        let (loss_split, grads_split) = pt.loss_and_grads(&data).unwrap();
        let mut d = GradDiff {
            a: &grads_one,
            b: &grads_split,
            diff: 0.0,
            scale: 0.0,
            params: 0,
        };
        pt.network().visit(&mut d);
        eprintln!(
            "{n} replicas: loss {loss_one} vs {loss_split}; {} parameters, max |grad diff| {:.3e} of max |grad| {:.3e}",
            d.params, d.diff, d.scale
        );
        assert!(d.params > 10 && d.scale > 0.0);
        assert!(
            d.diff <= 1e-5 * d.scale,
            "{n} replicas: {} vs {}",
            d.diff,
            d.scale
        );
        assert!(
            (loss_one - loss_split).abs() <= 1e-6 * loss_one,
            "{loss_one} vs {loss_split}"
        );
    }
}

#[test]
fn pretraining_on_two_devices_lands_on_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (_, data) = common::unet_base(dir.path());
    let config = pretrain_config(common::unet_config(), shape8(), 8);
    let run = |name: &str, devices: Vec<Device>| {
        let run_dir = RunDir::create(&dir.path().join(name)).unwrap();
        trainer::pretrain::run(&run_dir, config.clone(), &data, &devices, None, true).unwrap()
    };
    let one = run("one", vec![device()]);
    let two = run("two", vec![device(), device()]);
    let (a, b) = (common::values(one.network()), common::values(two.network()));
    assert_eq!(a.len(), b.len());
    // Adam divides by the gradient's running magnitude, so round-off in tiny gradients can
    // grow to a fraction of the step (lr = 1e-3): compare with the step size.
    let max = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    eprintln!("pre-training, 3 steps: max |weight diff| {max:.3e}");
    assert!(max <= 1e-4, "{max}");
    let init = common::values(
        &Pretrain::new(config, None, &device())
            .unwrap()
            .network()
            .clone(),
    );
    assert!(a != init, "the runs did not train");
}

#[test]
fn stage2_on_two_devices_follows_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let (base, data) = common::mlp_base(dir.path());
    for solver in [SolverKind::Euler, SolverKind::Ipndm] {
        let mut c = FinetuneConfig::new(base.clone(), 5);
        c.solver = solver;
        c.mode = Mode::TwoStage;
        c.rounds = 1;
        c.stage1_steps = 1;
        c.stage2_steps = 4;
        c.batch = 9;
        c.disc_batch = 7;
        c.teacher_pool = 32;
        c.teacher_steps = 16;
        let run = |name: String, devices: Vec<Device>| {
            let run_dir = RunDir::create(&dir.path().join(name)).unwrap();
            trainer::two_stage::run(
                &run_dir,
                c.clone(),
                Some(data.clone()),
                &devices,
                None,
                true,
            )
            .unwrap();
            std::fs::read_to_string(run_dir.path.join("log.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["loss"].as_f64().unwrap()
                })
                .collect::<Vec<f64>>()
        };
        let one = run(format!("{solver:?}-one"), vec![device()]);
        let two = run(format!("{solver:?}-two"), vec![device(), device()]);
        assert_eq!(one.len(), 5);
        for (k, (a, b)) in one.iter().zip(&two).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * a.abs(),
                "{solver:?} step {k}: {a} vs {b}"
            );
        }
    }
}
