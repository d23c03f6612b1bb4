//! Stage 1 on an analytic mixture (no network error): the learned schedule against EDM's.

use sampler_core::bundle::{Bundle, SolverKind};
use sampler_core::schedule::Schedule;
use trainer::eval::{ScheduleEval, evaluate_schedule};
use trainer::two_stage::{DiscGrad, DiscTarget, Finetune, FinetuneConfig, Mode, Stage2Loss};

fn mixture_bundle(dir: &std::path::Path) -> std::path::PathBuf {
    let m = sampler_core::gmm::Mixture::random(4, 16, 3);
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
        model: sampler_core::bundle::ModelSpec::Mixture(m),
        provenance: Default::default(),
    };
    let p = dir.join("gmm.bin");
    std::fs::write(&p, b.to_bytes().unwrap()).unwrap();
    p
}

fn config(base: std::path::PathBuf, target: DiscTarget, gamma: f64) -> FinetuneConfig {
    let mut c = FinetuneConfig::new(base, 5);
    c.mode = Mode::Stage1Only;
    c.rounds = 1;
    c.stage1_steps = 120;
    c.gamma = gamma;
    c.disc_target = target;
    c.disc_grad = DiscGrad::Exact;
    c.lr_schedule = 5e-2;
    c.batch = 64;
    c.disc_batch = 64;
    c.teacher_pool = 512;
    c.teacher_steps = 128;
    c
}

/// Trains, then evaluates EDM's and the learned schedule on held-out noise.
fn train(c: FinetuneConfig) -> (Finetune, ScheduleEval, ScheduleEval, (f64, f64), (f64, f64)) {
    let device = burn::tensor::Device::flex().autodiff();
    let mut ft = Finetune::new(c, None, None, &device).unwrap();
    let before = ft.objective(999, 256).unwrap();
    while ft.step < ft.config.total_steps() {
        ft.step_once().unwrap();
    }
    let after = ft.objective(999, 256).unwrap();
    let plain = device.clone().without_autodiff();
    let truth = match sampler_core::Bundle::from_bytes(&std::fs::read(&ft.config.base).unwrap())
        .unwrap()
        .model
    {
        sampler_core::bundle::ModelSpec::Mixture(m) => m.to_device(&plain).unwrap(),
        _ => unreachable!(),
    };
    let edm = Schedule::edm(5, 0.002, 80.0).unwrap();
    let learned = ft.schedule().unwrap();
    let e = evaluate_schedule(&truth, Some(&truth), &edm, 512, 1024, 4242, None, &plain).unwrap();
    let l = evaluate_schedule(
        &truth,
        Some(&truth),
        &learned,
        512,
        1024,
        4242,
        None,
        &plain,
    )
    .unwrap();
    eprintln!(
        "{:?} gamma={}: levels {:?}\n  EDM     trunc {:.4} loglik {:.3}\n  learned trunc {:.4} loglik {:.3}\n  objective (L_bound, L_disc) {:?} -> {:?}",
        ft.config.disc_target,
        ft.config.gamma,
        learned.sigmas(),
        e.trunc_rmse,
        e.mean_loglik.unwrap(),
        l.trunc_rmse,
        l.mean_loglik.unwrap(),
        before,
        after
    );
    (ft, e, l, before, after)
}

#[test]
fn teacher_target_beats_edm_truncation_error_and_likelihood() {
    let dir = tempfile::tempdir().unwrap();
    let (_, edm, learned, _, _) =
        train(config(mixture_bundle(dir.path()), DiscTarget::Teacher, 1.0));
    assert!(
        learned.trunc_rmse <= 0.75 * edm.trunc_rmse,
        "truncation error {} not 25% below EDM's {}",
        learned.trunc_rmse,
        edm.trunc_rmse
    );
    assert!(
        learned.mean_loglik.unwrap() > edm.mean_loglik.unwrap(),
        "likelihood did not rise"
    );
}

#[test]
fn data_target_and_bound_alone_lower_their_objectives() {
    let dir = tempfile::tempdir().unwrap();
    let base = mixture_bundle(dir.path());
    let (_, _, _, before, after) = train(config(base.clone(), DiscTarget::Data, 1.0));
    assert!(
        after.0 + after.1 < before.0 + before.1,
        "data target: {before:?} -> {after:?}"
    );
    let (_, _, _, before, after) = train(config(base, DiscTarget::Data, 0.0));
    assert!(after.0 < before.0, "L_bound alone: {before:?} -> {after:?}");
}

/// Stage 1 for iPNDM and DPM-Solver++(2M): the exact gradient through the unrolled solver
/// lowers that solver's own truncation error against the teacher, and the levels it learns
/// differ from Euler's.
#[test]
fn stage1_learns_levels_for_the_higher_order_solvers() {
    let dir = tempfile::tempdir().unwrap();
    let base = mixture_bundle(dir.path());
    let device = burn::tensor::Device::flex().autodiff();
    let mut learned = Vec::new();
    for solver in [SolverKind::Euler, SolverKind::Ipndm, SolverKind::DpmPp2m] {
        let mut c = config(base.clone(), DiscTarget::Teacher, 1.0);
        c.solver = solver;
        c.stage1_steps = 60;
        let mut ft = Finetune::new(c, None, None, &device).unwrap();
        let (_, before) = ft.objective(999, 256).unwrap();
        while ft.step < ft.config.total_steps() {
            let rec = ft.step_once().unwrap();
            // The logged loss is the optimized one: L_bound + gamma L_disc for Euler, and
            // gamma L_disc for the solvers without a bound (L_bound is still reported).
            let disc = rec.l_disc.unwrap();
            let optimized = match solver {
                SolverKind::Euler => rec.l_bound + disc,
                _ => disc,
            };
            assert_eq!(rec.loss, optimized, "{}: step {}", solver.name(), rec.step);
            assert!(rec.l_bound > 0.0);
        }
        let (_, after) = ft.objective(999, 256).unwrap();
        let levels = ft.schedule().unwrap();
        eprintln!(
            "{}: held-out L_disc {before:.5} -> {after:.5}, levels {:?}",
            solver.name(),
            levels.sigmas()
        );
        assert!(
            after < 0.8 * before,
            "{}: {before} -> {after}",
            solver.name()
        );
        let bundle = ft.export("gmm-learned", "").unwrap();
        assert_eq!(bundle.solver, solver);
        learned.push(levels);
    }
    assert_ne!(learned[0], learned[1], "iPNDM learned Euler's levels");
    // Other solvers learn their levels on L_disc against the teacher with the exact
    // gradient (the paper gradient and the data target are Euler's); their stage 2 is L_disc
    // too unless --stage2-loss bound, which the weight-only ablations need.
    let mut c = config(base, DiscTarget::Teacher, 1.0);
    c.solver = SolverKind::Ipndm;
    c.mode = Mode::TwoStage;
    c.validate().unwrap();
    assert_eq!(c.stage2_loss(), Stage2Loss::Disc);
    for mode in [Mode::Stage2Only, Mode::EdmWeightFinetune] {
        let mut bad = c.clone();
        bad.mode = mode;
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("needs --stage2-loss bound"), "{err}");
        let mut good = bad;
        good.stage2_loss = Some(Stage2Loss::Bound);
        good.validate().unwrap();
    }
    let mut euler = c.clone();
    euler.solver = SolverKind::Euler;
    assert_eq!(euler.stage2_loss(), Stage2Loss::Bound);
    euler.mode = Mode::Stage2Only;
    euler.stage2_loss = Some(Stage2Loss::Disc);
    assert!(euler.validate().is_err());
    let mut bad = c.clone();
    bad.disc_grad = DiscGrad::Paper;
    assert!(bad.validate().is_err());
    let mut bad = c;
    bad.disc_target = DiscTarget::Data;
    assert!(bad.validate().is_err());
}

fn paper_run(base: std::path::PathBuf, refresh: u64, steps: u64) -> Finetune {
    let mut c = config(base, DiscTarget::Teacher, 1.0);
    c.disc_grad = DiscGrad::Paper;
    c.stage1_steps = steps;
    c.teacher_pool = 64;
    c.teacher_steps = 64;
    c.disc_batch = 32;
    c.traj_refresh = refresh;
    let device = burn::tensor::Device::flex().autodiff();
    let mut ft = Finetune::new(c, None, None, &device).unwrap();
    while ft.step < ft.config.total_steps() {
        ft.step_once().unwrap();
    }
    ft
}

#[test]
fn trajectory_cache_refreshed_every_step_is_the_uncached_estimator() {
    // Refresh 1 re-simulates the whole pool under the current levels at every step, so the
    // cached x_t and x_{T-1} are exactly what the uncached estimator computes for the picked
    // rows: the levels must follow the same path (up to f32 batch-composition round-off).
    let dir = tempfile::tempdir().unwrap();
    let base = mixture_bundle(dir.path());
    let plain = paper_run(base.clone(), 0, 25).schedule().unwrap();
    let cached = paper_run(base.clone(), 1, 25).schedule().unwrap();
    for (a, b) in plain.sigmas().iter().zip(cached.sigmas()) {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1e-3),
            "{plain:?} vs {cached:?}"
        );
    }
    // A stale cache (each entry re-simulated every 16 steps) follows another path (its
    // quality is measured by examples/traj_cache_mixture.rs, not asserted here), but the
    // levels it learns are valid and leave EDM's.
    let stale = paper_run(base, 16, 25).schedule().unwrap();
    let edm = Schedule::edm(5, 0.002, 80.0).unwrap();
    assert!(stale.sigmas().windows(2).all(|w| w[0] > w[1]));
    assert!(
        stale
            .sigmas()
            .iter()
            .zip(edm.sigmas())
            .any(|(a, b)| (a - b).abs() > 0.05 * b),
        "the cached run did not move the levels: {stale:?}"
    );
}
