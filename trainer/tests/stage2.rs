//! Stage 2 (and the two-stage loop) on tiny networks: fine-tuning lowers L_bound, a run
//! resumed from its checkpoint equals an uninterrupted one, and an exported bundle loads in
//! sampler-core with the trainer's exact denoiser.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use sampler_core::bundle::SolverKind;
use sampler_core::solver::{Stop, heun, solve};
use sampler_core::{Bundle, Sampler, Schedule};
use trainer::data::noise;
use trainer::run::RunDir;
use trainer::run::scalar;
use trainer::two_stage::{DiscTarget, Finetune, FinetuneConfig, Mode, Stage2Loss, Teacher};

fn device() -> Device {
    Device::flex().autodiff()
}

#[test]
fn stage2_lowers_the_bound_within_a_few_dozen_steps() {
    let dir = tempfile::tempdir().unwrap();
    let (base, data) = common::mlp_base(dir.path());
    let mut c = FinetuneConfig::new(base, 6);
    c.mode = Mode::Stage2Only;
    c.rounds = 1;
    c.stage2_steps = 40;
    c.lr_weights = 3e-3;
    c.ema_decay = 0.0; // judge the trained weights themselves
    c.batch = 64;
    let mut ft = Finetune::new(c, Some(data), None, &device()).unwrap();
    let (before, _) = ft.objective(7, 128).unwrap();
    while ft.step < ft.config.total_steps() {
        ft.step_once().unwrap();
    }
    let (after, _) = ft.objective(7, 128).unwrap();
    eprintln!("stage 2: L_bound {before:.5} -> {after:.5}");
    assert!(after < 0.8 * before, "L_bound {before} -> {after}");
}

/// Stage 2 of a solver other than Euler fine-tunes the weights on that solver's L_disc (its
/// end point against the teacher's; method.md §4 has no bound for it): on frozen EDM levels
/// the 5-step iPNDM solution of held-out noises moves toward the base network's many-step
/// solution, and the log records the stage-2 loss as L_disc.
#[test]
fn stage2_of_ipndm_moves_its_endpoint_toward_the_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let (base, data) = common::mlp_base(dir.path());
    let mut c = FinetuneConfig::new(base, 5);
    c.solver = SolverKind::Ipndm;
    c.mode = Mode::TwoStage;
    c.rounds = 1;
    c.stage1_steps = 0;
    c.stage2_steps = 40;
    c.lr_weights = 1e-3;
    c.ema_decay = 0.0;
    c.disc_batch = 32;
    c.teacher_pool = 128;
    c.teacher_steps = 32;
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    let ft = trainer::two_stage::run(&run, c, Some(data), &[device()], None, true).unwrap();
    let mut fresh = ft.config.clone();
    fresh.stage2_steps = 0;
    let start = Finetune::new(fresh, Some(ft.data().clone()), None, &device()).unwrap();

    let plain = Device::flex();
    let (s_min, s_max) = (ft.config.s_min, ft.config.s_max);
    let x0 = noise(11, 1, 0, 256, 16, &plain).mul_scalar(s_max);
    let levels = Schedule::edm(5, s_min, s_max).unwrap().to_tensor(&plain);
    let reference = Schedule::edm(64, s_min, s_max).unwrap().to_tensor(&plain);
    let teacher = start.with_shipped(|d| heun(d, x0.clone(), reference, None, Stop::Min, |_| {}));
    let disc = |f: &Finetune| {
        let x = f.with_shipped(|d| {
            solve(
                SolverKind::Ipndm,
                d,
                x0.clone(),
                levels.clone(),
                None,
                Stop::Min,
                |_| {},
            )
        });
        scalar(&(x - teacher.clone()).powf_scalar(2.0).mean())
    };
    let (before, after) = (disc(&start), disc(&ft));
    eprintln!("iPNDM stage 2: held-out L_disc against the base teacher {before:.5} -> {after:.5}");
    assert!(after < 0.8 * before, "L_disc {before} -> {after}");
    let log = std::fs::read_to_string(run.log_path()).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["stage"], 2);
    assert!(last["l_bound"].is_null(), "{last}");
    assert_eq!(last["l_disc"].as_f64(), last["loss"].as_f64());
    assert_eq!(ft.export("x", "").unwrap().solver, SolverKind::Ipndm);
}

/// `--stage2-loss bound` gives a solver other than Euler the paper's stage 2: the same
/// lambda-weighted L_bound on the same draws, so its weights after stage 2 equal an Euler
/// run's on the same levels, the log records the loss as L_bound, and the bundle keeps the
/// solver.
#[test]
fn stage2_bound_of_dpmpp2m_trains_the_weights_as_eulers_does() {
    let dir = tempfile::tempdir().unwrap();
    let (base, data) = common::mlp_base(dir.path());
    let mut c = FinetuneConfig::new(base, 5);
    c.mode = Mode::TwoStage;
    c.rounds = 1;
    c.stage1_steps = 0;
    c.stage2_steps = 12;
    c.lr_weights = 1e-3;
    c.ema_decay = 0.5;
    c.batch = 16;
    c.disc_batch = 8;
    c.teacher_pool = 16;
    c.teacher_steps = 8;
    let mut runs = Vec::new();
    for (i, solver) in [SolverKind::Euler, SolverKind::DpmPp2m]
        .into_iter()
        .enumerate()
    {
        let mut c = c.clone();
        c.solver = solver;
        c.stage2_loss = Some(Stage2Loss::Bound);
        let run = RunDir::create(&dir.path().join(format!("run{i}"))).unwrap();
        let ft =
            trainer::two_stage::run(&run, c, Some(data.clone()), &[device()], None, true).unwrap();
        let log = std::fs::read_to_string(run.log_path()).unwrap();
        let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!(last["stage"], 2);
        assert!(last["l_disc"].is_null(), "{last}");
        assert_eq!(last["l_bound"].as_f64(), last["loss"].as_f64());
        let bundle = ft.export("x", "").unwrap();
        assert_eq!(bundle.solver, solver);
        runs.push((ft, bundle));
    }
    let plain = Device::flex();
    let x = noise(3, 1, 0, 64, 16, &plain).mul_scalar(2.0);
    let sigma = Tensor::<1>::from_data(TensorData::new(vec![1.5f32; 64], [64]), &plain);
    let denoised = |f: &Finetune| f.with_shipped(|d| d.denoise(x.clone(), sigma.clone(), None));
    let (euler, dpmpp) = (denoised(&runs[0].0), denoised(&runs[1].0));
    let start = Finetune::new(c, Some(data), None, &device()).unwrap();
    let moved = scalar(&(denoised(&start) - euler.clone()).abs().max());
    assert!(moved > 1e-3, "stage 2 barely moved the weights: {moved}");
    let diff = scalar(&(euler - dpmpp).abs().max());
    assert!(
        diff < 1e-6,
        "dpmpp2m's bound stage 2 left Euler's by {diff}"
    );
}

/// `--teacher base` freezes the teacher: after stage 2 has moved the weights, the next
/// round's targets are still the base network's Heun solutions of that round's noises, while
/// `--teacher shipped` follows the fine-tuned weights.
#[test]
fn frozen_teacher_keeps_the_base_networks_solution_after_stage2() {
    let dir = tempfile::tempdir().unwrap();
    let (base, data) = common::mlp_base(dir.path());
    let mut c = FinetuneConfig::new(base, 5);
    c.solver = SolverKind::Ipndm;
    c.mode = Mode::TwoStage;
    c.rounds = 2;
    c.stage1_steps = 0;
    c.stage2_steps = 15;
    c.lr_weights = 1e-2;
    c.ema_decay = 0.0;
    c.disc_batch = 16;
    c.teacher_pool = 32;
    c.teacher_steps = 16;
    let reference = Schedule::edm(16, c.s_min, c.s_max)
        .unwrap()
        .to_tensor(&Device::flex());
    let heun = |f: &Finetune, x0: &Tensor<2>| {
        f.with_shipped(|d| heun(d, x0.clone(), reference.clone(), None, Stop::Min, |_| {}))
    };
    let max_diff = |a: &Tensor<2>, b: &Tensor<2>| scalar(&(a.clone() - b.clone()).abs().max());
    let start = Finetune::new(c.clone(), Some(data.clone()), None, &device()).unwrap();
    for teacher in [Teacher::Base, Teacher::Shipped] {
        let mut c = c.clone();
        c.teacher = teacher;
        let mut ft = Finetune::new(c, Some(data.clone()), None, &device()).unwrap();
        for _ in 0..15 {
            ft.step_once().unwrap();
        }
        let (x0, target, _) = ft.teacher_pool(1).unwrap();
        let (of_base, of_shipped) = (heun(&start, &x0), heun(&ft, &x0));
        let moved = max_diff(&of_base, &of_shipped);
        assert!(moved > 1e-2, "stage 2 barely moved the solution: {moved}");
        let (followed, other) = match teacher {
            Teacher::Base => (of_base, of_shipped),
            Teacher::Shipped => (of_shipped, of_base),
        };
        assert!(max_diff(&target, &followed) < 1e-5, "{teacher:?}");
        assert!(max_diff(&target, &other) > 1e-2, "{teacher:?}");
    }
}

fn two_stage_config(base: std::path::PathBuf) -> FinetuneConfig {
    let mut c = FinetuneConfig::new(base, 5);
    c.rounds = 2;
    c.stage1_steps = 3;
    c.stage2_steps = 3;
    c.batch = 16;
    c.disc_batch = 8;
    c.teacher_pool = 16;
    c.teacher_steps = 8;
    c.checkpoint_every = 4;
    c.disc_target = DiscTarget::Teacher;
    c.lr_weights = 1e-3;
    c
}

fn log_losses(run: &RunDir) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.log_path())
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn without_time(bytes: &[u8]) -> Bundle {
    let mut b = Bundle::from_bytes(bytes).unwrap();
    b.provenance.created_unix = 0;
    b
}

/// A run stopped and resumed gives the same log and the same bundle as one that never
/// stopped, for every kind of state a run carries between steps: Euler two-stage (weights,
/// levels, optimizers); iPNDM two-stage with `--teacher shipped`, whose teacher pool of a
/// round comes from the weights at the round's start (stopped in stage 2, those weights are
/// gone); and the paper gradient's trajectory cache (`--traj-refresh 2`, stopped in stage 1,
/// its states were simulated under earlier levels).
#[test]
fn resumed_run_equals_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (base, data) = common::mlp_base(dir.path());
    let euler = two_stage_config(base);
    let mut ipndm = euler.clone();
    ipndm.solver = SolverKind::Ipndm;
    ipndm.teacher = Teacher::Shipped;
    let mut cached = euler.clone();
    cached.disc_grad = trainer::two_stage::DiscGrad::Paper;
    cached.traj_refresh = 2;
    for (name, c) in [("euler", euler), ("ipndm", ipndm), ("traj-cache", cached)] {
        resumes_bit_exactly(dir.path(), name, c, &data);
    }
}

fn resumes_bit_exactly(
    dir: &std::path::Path,
    name: &str,
    c: FinetuneConfig,
    data: &trainer::data::Dataset,
) {
    let whole = RunDir::create(&dir.join(format!("{name}-whole"))).unwrap();
    let a = trainer::two_stage::run(
        &whole,
        c.clone(),
        Some(data.clone()),
        &[device()],
        None,
        true,
    )
    .unwrap();

    // Stop in stage 2 of round 0 (step 5), then in stage 1 of round 1 (step 7), then finish.
    let parts = RunDir::create(&dir.join(format!("{name}-parts"))).unwrap();
    for stop in [5, 7] {
        trainer::two_stage::run(
            &parts,
            c.clone(),
            Some(data.clone()),
            &[device()],
            Some(stop),
            true,
        )
        .unwrap();
    }
    let b =
        trainer::two_stage::run(&parts, c, Some(data.clone()), &[device()], None, true).unwrap();

    let (la, lb) = (log_losses(&whole), log_losses(&parts));
    assert_eq!(la.len(), 12);
    assert_eq!(
        la.iter().map(|x| x.0).collect::<Vec<_>>(),
        lb.iter().map(|x| x.0).collect::<Vec<_>>()
    );
    for ((s, x), (_, y)) in la.iter().zip(&lb) {
        assert_eq!(x, y, "{name}: step {s}");
    }
    let ea = a.export("t", "").unwrap().to_bytes().unwrap();
    let eb = b.export("t", "").unwrap().to_bytes().unwrap();
    assert_eq!(without_time(&ea), without_time(&eb), "{name}");
}

/// `objective()` reports L_disc against the teacher the run optimizes: with `--teacher base`
/// the frozen base network's solution, not the solution of the weights stage 2 has moved.
#[test]
fn objective_measures_against_the_runs_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let (base, data) = common::mlp_base(dir.path());
    let mut c = FinetuneConfig::new(base, 5);
    c.solver = SolverKind::Ipndm;
    c.mode = Mode::TwoStage;
    c.rounds = 1;
    c.stage1_steps = 0;
    c.stage2_steps = 15;
    c.lr_weights = 1e-2;
    c.ema_decay = 0.0;
    c.disc_batch = 16;
    c.teacher_pool = 32;
    c.teacher_steps = 16;
    c.teacher = Teacher::Base;
    let start = Finetune::new(c.clone(), Some(data.clone()), None, &device()).unwrap();
    let mut ft = Finetune::new(c.clone(), Some(data), None, &device()).unwrap();
    for _ in 0..15 {
        ft.step_once().unwrap();
    }
    let (eval_seed, rows) = (7, 32);
    let (_, reported) = ft.objective(eval_seed, rows).unwrap();

    // Independently: the pool noise stream (purpose 5) of the evaluation seed, the trained
    // network's iPNDM end point on the run's levels, against either network's Heun solution.
    let plain = Device::flex();
    let x0 = noise(eval_seed, 5, 0, rows, 16, &plain).mul_scalar(c.s_max);
    let reference = Schedule::edm(16, c.s_min, c.s_max)
        .unwrap()
        .to_tensor(&plain);
    let heun = |f: &Finetune| {
        f.with_shipped(|d| heun(d, x0.clone(), reference.clone(), None, Stop::Min, |_| {}))
    };
    let levels = ft.schedule().unwrap().to_tensor(&plain);
    let end = ft.with_shipped(|d| {
        solve(
            SolverKind::Ipndm,
            d,
            x0.clone(),
            levels,
            None,
            Stop::Min,
            |_| {},
        )
    });
    let mse = |t: Tensor<2>| scalar(&(end.clone() - t).powf_scalar(2.0).mean());
    let (frozen, moving) = (mse(heun(&start)), mse(heun(&ft)));
    assert!(
        (frozen - moving).abs() > 1e-2 * frozen,
        "stage 2 barely moved the teacher: {frozen} vs {moving}"
    );
    assert!(
        (reported - frozen).abs() <= 1e-4 * frozen,
        "objective's L_disc {reported}, against the frozen base {frozen}, against the moved \
         weights {moving}"
    );
}

#[test]
fn exported_bundle_denoises_like_the_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let (base, data) = common::unet_base(dir.path());
    let mut c = two_stage_config(base);
    c.rounds = 1;
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    let ft = trainer::two_stage::run(&run, c, Some(data), &[device()], None, true).unwrap();
    let bytes = ft.export("unet", "").unwrap().to_bytes().unwrap();
    let plain = Device::flex();
    let sampler = Sampler::from_bundle(&bytes, &plain).unwrap();
    assert_eq!(sampler.bundle().schedule, ft.schedule().unwrap());
    let x = noise(3, 3, 0, 4, 64, &plain).mul_scalar(2.0);
    let sigma = Tensor::<1>::from_floats([80.0, 2.0, 0.3, 0.002], &plain);
    let want = ft
        .with_shipped(|d| d.denoise(x.clone(), sigma.clone(), None))
        .try_into_vec_as::<f32>()
        .unwrap();
    let got = sampler
        .with_denoiser(|d| d.denoise(x.clone(), sigma.clone(), None))
        .try_into_vec_as::<f32>()
        .unwrap();
    let worst = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "max |trainer - sampler| = {worst}");
}

#[test]
fn nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (base, data) = common::mlp_base(dir.path());
    let mut c = two_stage_config(base);
    c.checkpoint_every = 2;
    let run = RunDir::create(&dir.path().join("run")).unwrap();
    trainer::two_stage::run(
        &run,
        c.clone(),
        Some(data.clone()),
        &[device()],
        Some(4),
        true,
    )
    .unwrap();
    let good = run.load_checkpoint().unwrap().unwrap();
    assert_eq!(good.step, 4);
    // The same run continued on data that has gone bad.
    let mut poisoned = data;
    poisoned.values.iter_mut().for_each(|v| *v = f32::NAN);
    let err = trainer::two_stage::run(&run, c, Some(poisoned), &[device()], None, true)
        .err()
        .expect("a NaN loss must stop the run");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("NaN") && msg.contains("checkpoint of step 4 is kept"),
        "{msg}"
    );
    assert_eq!(run.load_checkpoint().unwrap().unwrap(), good);
}
