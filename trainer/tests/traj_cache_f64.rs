//! The trajectory cache refreshed every step against the uncached paper estimator, in
//! float64 (this binary configures the flex device to f64 before any tensor exists): the
//! two compute the same x_t and x_{T-1} for the picked rows, in different batch
//! compositions, so the learned levels must agree to float64 round-off, not to the 1e-4 an
//! f32 run allows.

use burn::tensor::{Device, FloatDType};
use sampler_core::bundle::Bundle;
use sampler_core::schedule::Schedule;
use trainer::two_stage::{DiscGrad, DiscTarget, Finetune, FinetuneConfig, Mode};

fn f64_device() -> Device {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut d = Device::flex();
        d.configure(FloatDType::F64)
            .expect("configure before any tensor exists");
    });
    Device::flex()
}

/// The learned logits `v` (float64) after 25 steps.
fn paper_run(base: std::path::PathBuf, refresh: u64) -> Vec<f64> {
    let mut c = FinetuneConfig::new(base, 5);
    c.mode = Mode::Stage1Only;
    c.rounds = 1;
    c.stage1_steps = 25;
    c.disc_target = DiscTarget::Teacher;
    c.disc_grad = DiscGrad::Paper;
    c.lr_schedule = 5e-2;
    c.batch = 64;
    c.disc_batch = 32;
    c.teacher_pool = 64;
    c.teacher_steps = 64;
    c.traj_refresh = refresh;
    let mut ft = Finetune::new(c, None, None, &f64_device().autodiff()).unwrap();
    while ft.step < ft.config.total_steps() {
        ft.step_once().unwrap();
    }
    ft.checkpoint().unwrap().logits.unwrap()
}

#[test]
fn refresh_every_step_is_the_uncached_estimator_to_f64_round_off() {
    let _ = f64_device();
    let dir = tempfile::tempdir().unwrap();
    let b = Bundle {
        name: "gmm".into(),
        description: String::new(),
        image: sampler_core::bundle::ImageShape {
            channels: 1,
            height: 1,
            width: 16,
        },
        label_count: 0,
        precond: Default::default(),
        schedule: Schedule::edm(5, 0.002, 80.0).unwrap(),
        solver: sampler_core::bundle::SolverKind::Euler,
        model: sampler_core::bundle::ModelSpec::Mixture(sampler_core::gmm::Mixture::random(
            4, 16, 3,
        )),
        provenance: Default::default(),
    };
    let base = dir.path().join("gmm.bin");
    std::fs::write(&base, b.to_bytes().unwrap()).unwrap();
    let plain = paper_run(base.clone(), 0);
    let cached = paper_run(base, 1);
    assert!(
        plain.iter().all(|v| v.abs() > 1e-3),
        "the run did not move the levels: {plain:?}"
    );
    for (a, b) in plain.iter().zip(&cached) {
        let rel = (a - b).abs() / a.abs();
        eprintln!("v: {a:.15e} vs {b:.15e}: rel {rel:.1e}");
        assert!(rel <= 1e-9, "{plain:?} vs {cached:?}");
    }
}
