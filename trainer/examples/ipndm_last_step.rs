//! iPNDM's last step (issue 24 item 6): the multistep formula all the way to `s = 0` (what
//! `solver::ipndm` does) against a plain denoiser call at `s_min`, `x_T = D(x_{T-1}, s_min)`
//! (what Euler, Heun and DPM-Solver++(2M) end with, and the diff-solvers reference's
//! `denoise_to_zero` option). Both spend T evaluations. On the shipped MNIST base, EDM's
//! levels: truncation RMSE against the 256-level Heun solution of the same noises, and, with
//! `--fid N`, Inception FID of N samples against the 1,000 mnist-test digits.
//!
//!     cargo run --release -p trainer --example ipndm_last_step -- [--fid 1000]

use anyhow::{Context, Result};
use burn::tensor::{Device, Tensor, TensorData};
use sampler_core::bundle::SolverKind;
use sampler_core::solver::{Denoiser, Stop, ipndm, solve};
use sampler_core::{Sampler, Schedule};

const TRUNC_ROWS: usize = 200;
const BATCH: usize = 100;

/// A sampler run: the image of `x0` (and labels) through a denoiser.
type SamplerRun<'a> = dyn Fn(&dyn Denoiser, Tensor<2>, Option<Tensor<2>>) -> Tensor<2> + Sync + 'a;

/// Images `0 .. n` of seed 0 (labels k mod 10) under `f(denoiser, x0, labels)`.
fn generate(sampler: &Sampler, n: usize, f: &SamplerRun) -> Result<Vec<f32>> {
    let device = Device::flex();
    let b = sampler.bundle();
    let (d, l) = (b.image.values(), b.label_count as usize);
    let mut out = Vec::with_capacity(n * d);
    for first in (0..n).step_by(BATCH) {
        let count = BATCH.min(n - first);
        let x0 = Tensor::<2>::from_data(
            TensorData::new(sampler.initial_noise(0, first as u64, count), [count, d]),
            &device,
        );
        let labels =
            sampler_core::denoiser::one_hot((first..first + count).map(|k| k % l), l, &device);
        let x = sampler_core::cpu::on_cpu_workers(|| {
            sampler.with_denoiser(|den| f(den, x0, Some(labels)))
        });
        out.extend(
            x.try_into_vec_as::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?
                .into_iter()
                .map(|v| v.clamp(-1.0, 1.0)),
        );
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let fid_n: usize = match args.iter().position(|a| a == "--fid") {
        Some(i) => args.get(i + 1).context("--fid N")?.parse()?,
        None => 0,
    };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let bytes = std::fs::read(format!("{root}/bundles/mnist-base.bin"))?;
    let device = Device::flex();
    let sampler = Sampler::from_bundle(&bytes, &device)?;
    let (s_min, s_max) = {
        let s = &sampler.bundle().schedule;
        (s.s_min() as f64, s.s_max() as f64)
    };
    let reference = Schedule::edm(256, s_min, s_max)?.to_tensor(&device);
    let exact = generate(&sampler, TRUNC_ROWS, &|den, x0, lab| {
        solve(
            SolverKind::Heun,
            den,
            x0,
            reference.clone(),
            lab,
            Stop::Zero,
            |_| {},
        )
    })?;
    let real = if fid_n > 0 {
        let inception = trainer::inception::Inception::load_default()?;
        let data = trainer::data::Dataset::load("mnist-test", &Default::default())?;
        let bar = indicatif::ProgressBar::hidden();
        let stats =
            trainer::fid::RealStats::new(trainer::fid::dataset_features(&inception, &data, &bar)?)?;
        Some((inception, stats))
    } else {
        None
    };
    println!("| T | last step | trunc RMSE ({TRUNC_ROWS} samples) | FID ({fid_n} samples) |");
    println!("| ---: | --- | ---: | ---: |");
    for t in [5usize, 8, 10] {
        let levels = Schedule::edm(t, s_min, s_max)?.to_tensor(&device);
        let multistep =
            |den: &dyn Denoiser, x0, lab| ipndm(den, x0, levels.clone(), lab, Stop::Zero, |_| {});
        let plain_last = |den: &dyn Denoiser, x0: Tensor<2>, lab: Option<Tensor<2>>| {
            let b = x0.dims()[0];
            let x = ipndm(den, x0, levels.clone(), lab.clone(), Stop::Min, |_| {});
            let s = levels.clone().slice(t - 1..t).expand([b]);
            den.denoise(x, s, lab)
        };
        let variants: [(&str, &SamplerRun); 2] =
            [("multistep to 0", &multistep), ("D(x, s_min)", &plain_last)];
        for (name, f) in variants {
            let x = generate(&sampler, TRUNC_ROWS, f)?;
            let mse = x
                .iter()
                .zip(&exact)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / x.len() as f64;
            let fid = match &real {
                Some((inception, stats)) => {
                    let fake = generate(&sampler, fid_n, f)?;
                    let bar = indicatif::ProgressBar::hidden();
                    let feats = trainer::fid::image_features(
                        inception,
                        &fake,
                        sampler.bundle().image,
                        &bar,
                    )?;
                    format!("{:.1}", stats.scores(&feats)?.fid)
                }
                None => "-".into(),
            };
            println!("| {t} | {name} | {:.4} | {fid} |", mse.sqrt());
        }
    }
    Ok(())
}
