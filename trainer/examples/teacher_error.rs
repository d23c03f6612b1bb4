//! The teacher's own error (issue 24 item 7): stage 1 and stage 2 pull a sampler's end point
//! at `s_min` toward the teacher, the Heun solution with `--teacher-steps` EDM levels, while
//! `trainer eval` measures truncation error against 256 levels. On the shipped MNIST base,
//! 200 noises of seed 0 (labels k mod 10): RMSE of the N-level Heun state at `s_min` against
//! the 256-level one, beside the few-step samplers' own errors on the same scale.
//!
//!     cargo run --release -p trainer --example teacher_error

use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use sampler_core::bundle::SolverKind;
use sampler_core::solver::{Stop, solve};
use sampler_core::{Sampler, Schedule};

const ROWS: usize = 200;

fn main() -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let device = Device::flex();
    let sampler = Sampler::from_bundle(
        &std::fs::read(format!("{root}/bundles/mnist-base.bin"))?,
        &device,
    )?;
    let b = sampler.bundle();
    let (d, l) = (b.image.values(), b.label_count as usize);
    let (s_min, s_max) = (b.schedule.s_min() as f64, b.schedule.s_max() as f64);
    let x0 = Tensor::<2>::from_data(
        TensorData::new(sampler.initial_noise(0, 0, ROWS), [ROWS, d]),
        &device,
    );
    let labels = sampler_core::denoiser::one_hot((0..ROWS).map(|k| k % l), l, &device);
    let at_min = |solver: Option<SolverKind>, levels: usize| -> Result<Vec<f32>> {
        let sigmas = Schedule::edm(levels, s_min, s_max)?.to_tensor(&device);
        let x = sampler_core::cpu::on_cpu_workers(|| {
            // `None`: the teacher, Heun.
            let kind = solver.unwrap_or(SolverKind::Heun);
            sampler.with_denoiser(|den| {
                solve(
                    kind,
                    den,
                    x0.clone(),
                    sigmas,
                    Some(labels.clone()),
                    Stop::Min,
                    |_| {},
                )
            })
        });
        x.try_into_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    let exact = at_min(None, 256)?;
    let rmse = |x: &[f32]| {
        (x.iter()
            .zip(&exact)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / x.len() as f64)
            .sqrt()
    };
    println!("| state at s_min | levels | evaluations | RMSE against 256-level Heun |");
    println!("| --- | ---: | ---: | ---: |");
    for n in [16usize, 32, 64, 128] {
        let x = at_min(None, n)?;
        println!("| Heun (teacher) | {n} | {} | {:.5} |", 2 * n - 2, rmse(&x));
    }
    for (kind, t) in [
        (SolverKind::Ipndm, 5usize),
        (SolverKind::Ipndm, 8),
        (SolverKind::DpmPp2m, 8),
        (SolverKind::Euler, 8),
    ] {
        let x = at_min(Some(kind), t)?;
        println!("| {} | {t} | {} | {:.5} |", kind.name(), t - 1, rmse(&x));
    }
    Ok(())
}
