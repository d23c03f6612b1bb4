//! The stage-1 trajectory cache (issue 9) on an analytic mixture, where the denoiser is exact
//! and every run takes a second: stage 1 only, teacher target, the paper gradient without
//! the cache and with it at several refresh rates (the exact gradient as the reference), over
//! several seeds, T = 5 and 10. Prints a markdown table of the learned levels' truncation
//! error and sample log-likelihood (mean and standard deviation over seeds).
//!
//!     cargo run --release -p trainer --example traj_cache_mixture

use anyhow::Result;
use sampler_core::bundle::{Bundle, ImageShape, ModelSpec, SolverKind};
use sampler_core::schedule::{SIGMA_MAX, SIGMA_MIN, Schedule};
use trainer::eval::evaluate_schedule;
use trainer::two_stage::{DiscGrad, DiscTarget, Finetune, FinetuneConfig, Mode};

const SEEDS: u64 = 8;
/// The teacher pool = the disc batch: the cache re-simulates `POOL / refresh` entries a step,
/// `T * POOL / refresh` denoiser rows against the uncached estimator's `T * POOL`.
const POOL: usize = 32;

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("fewstep-traj-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mixture = sampler_core::gmm::Mixture::random(4, 16, 3);
    let bundle = Bundle {
        name: "gmm".into(),
        description: String::new(),
        image: ImageShape {
            channels: 1,
            height: 1,
            width: 16,
        },
        label_count: 0,
        precond: Default::default(),
        schedule: Schedule::edm(5, SIGMA_MIN, SIGMA_MAX)?,
        solver: SolverKind::Euler,
        model: ModelSpec::Mixture(mixture.clone()),
        provenance: Default::default(),
    };
    let base = dir.join("gmm.bin");
    std::fs::write(&base, bundle.to_bytes()?)?;
    let device = burn::tensor::Device::flex().autodiff();
    let plain = device.clone().without_autodiff();
    let truth = mixture.to_device(&plain)?;

    println!("4-component mixture in 16 dimensions, stage 1 only, teacher target, 120 steps,");
    println!(
        "batch 64, disc batch 32, teacher pool {POOL}; {SEEDS} seeds (mean ± sd); 1024 held-out noises."
    );
    println!("| T | gradient | trunc RMSE | mean log-lik | s_1 |");
    println!("| ---: | --- | ---: | ---: | ---: |");
    for t in [5usize, 10] {
        let edm = Schedule::edm(t, SIGMA_MIN, SIGMA_MAX)?;
        let e = evaluate_schedule(&truth, Some(&truth), &edm, 512, 1024, 4242, None, &plain)?;
        println!(
            "| {t} | (EDM's levels) | {:.4} | {:.2} | {:.3} |",
            e.trunc_rmse,
            e.mean_loglik.unwrap_or(f64::NAN),
            edm.sigmas()[1]
        );
        let variants: [(&str, DiscGrad, u64); 6] = [
            ("exact", DiscGrad::Exact, 0),
            ("paper, no cache", DiscGrad::Paper, 0),
            ("paper, cache refresh 2", DiscGrad::Paper, 2),
            ("paper, cache refresh 4", DiscGrad::Paper, 4),
            ("paper, cache refresh 8", DiscGrad::Paper, 8),
            ("paper, cache refresh 16", DiscGrad::Paper, 16),
        ];
        for (name, grad, refresh) in variants {
            let (mut trunc, mut loglik, mut s1) = (Vec::new(), Vec::new(), Vec::new());
            for seed in 0..SEEDS {
                let mut c = FinetuneConfig::new(base.clone(), t);
                c.mode = Mode::Stage1Only;
                c.rounds = 1;
                c.stage1_steps = 120;
                c.disc_target = DiscTarget::Teacher;
                c.disc_grad = grad;
                c.traj_refresh = refresh;
                c.batch = 64;
                c.disc_batch = 32;
                c.teacher_pool = POOL;
                c.teacher_steps = 128;
                c.seed = seed;
                let mut ft = Finetune::new(c, None, None, &device)?;
                while ft.step < ft.config.total_steps() {
                    ft.step_once()?;
                }
                let learned = ft.schedule()?;
                let l = evaluate_schedule(
                    &truth,
                    Some(&truth),
                    &learned,
                    512,
                    1024,
                    4242,
                    None,
                    &plain,
                )?;
                trunc.push(l.trunc_rmse);
                loglik.push(l.mean_loglik.unwrap_or(f64::NAN));
                s1.push(learned.sigmas()[1] as f64);
            }
            let (tm, ts) = mean_sd(&trunc);
            let (lm, ls) = mean_sd(&loglik);
            let (sm, ss) = mean_sd(&s1);
            println!(
                "| {t} | {name} | {tm:.4} ± {ts:.4} | {lm:.2} ± {ls:.2} | {sm:.2} ± {ss:.2} |"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
