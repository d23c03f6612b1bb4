//! Measurements of samplers (docs/method.md §6), behind `trainer eval`: for a base bundle
//! and its fine-tuned bundles, at several numbers of denoiser evaluations T, the truncation
//! error against the base network's many-step Heun solution from the same noise, Frechet
//! distances to held-out real images (pixels and a small classifier's features), the
//! classifier's accuracy on the requested labels, and wall time; then the table, CSV and
//! figures. [`evaluate_schedule`] is the same truncation measurement for one schedule, plus
//! the exact log-likelihood when the model is an analytic mixture.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::{Device, Tensor, TensorData};
use sampler_core::bundle::SolverKind;
use sampler_core::gmm::MixtureDenoiser;
use sampler_core::rng;
use sampler_core::schedule::Schedule;
use sampler_core::solver::{Denoiser, euler, heun};
use sampler_core::{Images, Sampler};

use crate::classifier::TrainedClassifier;
use crate::data::{Dataset, noise};
use crate::fid::{RealStats, image_features, saturated_fraction};
use crate::frechet::{FrechetReference, Moments};
use crate::inception::Inception;
use crate::two_stage::losses::row_mse;

/// What [`evaluate_schedule`] measures.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleEval {
    /// RMSE between Euler's output and the reference solution (per value).
    pub trunc_rmse: f64,
    /// Mean `ln p(x)` of Euler's samples under the mixture, when one is given.
    pub mean_loglik: Option<f64>,
}

/// Evaluates `schedule` on `n` initial noises of stream `seed` against a Heun reference with
/// `reference_steps` EDM levels over the same range.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_schedule(
    den: &dyn Denoiser,
    truth: Option<&MixtureDenoiser>,
    schedule: &Schedule,
    reference_steps: usize,
    n: usize,
    seed: u64,
    labels: Option<Tensor<2>>,
    device: &Device,
) -> Result<ScheduleEval> {
    let d = den.dim();
    let x0 = noise(seed, 0xE7A1, 0, n, d, device).mul_scalar(schedule.s_max() as f64);
    let out = euler(
        den,
        x0.clone(),
        schedule.to_tensor(device),
        labels.clone(),
        |_| {},
    );
    let reference_levels = Schedule::edm(
        reference_steps,
        schedule.s_min() as f64,
        schedule.s_max() as f64,
    )?;
    let reference = heun(den, x0, reference_levels.to_tensor(device), labels, |_| {});
    let trunc_rmse = crate::run::scalar(&row_mse(out.clone(), reference).mean()).sqrt();
    let mean_loglik = truth.map(|m| {
        let zero = Tensor::<1>::zeros([n], device);
        crate::run::scalar(&m.log_density(out, zero).mean())
    });
    Ok(ScheduleEval {
        trunc_rmse,
        mean_loglik,
    })
}

/// Name of a solver in tables.
pub fn solver_title(kind: SolverKind) -> &'static str {
    match kind {
        SolverKind::Euler => "Euler",
        SolverKind::Heun => "Heun",
        SolverKind::DpmPp2m => "DPM-Solver++(2M)",
        SolverKind::Ipndm => "iPNDM",
    }
}

/// Levels to use for a budget of `nfe` evaluations, and the evaluations they cost: Heun
/// gets the largest `n` with `2n - 1 <= nfe`.
pub fn levels_for(kind: SolverKind, nfe: usize) -> (usize, usize) {
    match kind {
        SolverKind::Heun => {
            let n = nfe.div_ceil(2).max(2);
            (n, kind.nfe(n))
        }
        _ => (nfe, kind.nfe(nfe)),
    }
}

/// What `trainer eval` compares and how much.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// The base (pre-trained) bundle: Euler / Heun / DPM-Solver++(2M) rows with EDM's
    /// rho = 7 levels over its `[s_min, s_max]`, and the truncation-error reference.
    pub base: PathBuf,
    /// Fine-tuned rows: (row name, bundle path where `{T}` stands for T). A missing file
    /// leaves that row out at that T.
    pub tuned: Vec<(String, String)>,
    /// Numbers of denoiser evaluations.
    pub ts: Vec<usize>,
    /// Images generated per row and T (FD and accuracy).
    pub count: usize,
    /// Images (the first of the same noises) compared with the reference solution.
    pub ref_count: usize,
    /// Levels of the reference Heun solve (EDM rho = 7; `2n - 1` evaluations).
    pub reference_steps: usize,
    /// Seed of the noises (image `k` uses stream `image_seed(seed, k)`, as sampler-cli).
    pub seed: u64,
    /// Images per batch.
    pub batch: usize,
    /// Images in each sample grid.
    pub grid: usize,
    /// The training-free solvers run on EDM's levels of the base network.
    pub solvers: Vec<SolverKind>,
}

/// One row of the results: one sampler at one T.
#[derive(Clone, Debug, PartialEq)]
pub struct RowResult {
    /// Row name (paper Table 1 naming for fine-tuned rows).
    pub row: String,
    /// Solver.
    pub solver: &'static str,
    /// The NFE budget T of the comparison.
    pub t: usize,
    /// Denoiser evaluations actually spent.
    pub nfe: usize,
    /// The levels used.
    pub sigmas: Vec<f32>,
    /// RMSE against the row's own network's many-step Heun solution from the same noise:
    /// the truncation error of the levels and solver alone.
    pub trunc_rmse: f64,
    /// RMSE against the base network's solution: for fine-tuned weights it adds how far
    /// the weights moved the endpoint.
    pub trunc_rmse_base: f64,
    /// Frechet distance to the real images in pixel space.
    pub fd_pixel: Option<f64>,
    /// Frechet distance in the classifier's penultimate-layer features.
    pub fd_cls: Option<f64>,
    /// Fraction of samples the classifier assigns to the requested label.
    pub accuracy: Option<f64>,
    /// FID against the real images (Inception-v3 features, pytorch-fid's conventions).
    pub fid: Option<f64>,
    /// KID (unbiased MMD^2, cubic kernel) in the same features.
    pub kid: Option<f64>,
    /// Fraction of sample values at 255 after 8-bit quantization.
    pub saturated: f64,
    /// Levels learned by the trainer (a tuned bundle's) rather than EDM's.
    pub learned_levels: bool,
    /// Weights other than the base bundle's.
    pub finetuned_weights: bool,
    /// Negative log-likelihood of the samples under the mixture, nats per image: `-mean ln
    /// p(x)` of the data density; for analytic mixture bases only (where it is exact).
    pub nll: Option<f64>,
    /// Wall time per image, milliseconds.
    pub ms_per_image: f64,
    /// Sample-grid file, relative to the output directory.
    pub grid: String,
}

/// The real images of the comparison with what the metrics need from them.
pub struct RealSet {
    /// Pixel-space moments.
    pub pixels: FrechetReference,
    /// Classifier-feature moments, when a classifier is given.
    pub features: Option<FrechetReference>,
    /// Inception statistics (FID, KID), when the feature network is given.
    pub inception: Option<RealStats>,
    /// Number of images.
    pub count: usize,
}

impl RealSet {
    /// Moments of `data` (and of its classifier features).
    pub fn new(
        data: &Dataset,
        classifier: Option<&TrainedClassifier>,
        inception: Option<&Inception>,
        device: &Device,
    ) -> Result<RealSet> {
        let inception = match inception {
            Some(net) => {
                eprintln!("{} real images through Inception", data.len());
                let bar = indicatif::ProgressBar::hidden();
                let f = image_features(net, &data.values, data.shape, &bar)?;
                Some(RealStats::new(f)?)
            }
            None => None,
        };
        let pixels = FrechetReference::new(Moments::from_rows(&data.values, data.dim())?);
        let features = match classifier {
            Some(c) => {
                let p = c.predict(&data.values, 256, device)?;
                Some(FrechetReference::new(Moments::from_rows(
                    &p.features,
                    c.config.features,
                )?))
            }
            None => None,
        };
        Ok(RealSet {
            pixels,
            features,
            inception,
            count: data.len(),
        })
    }
}

fn one_hot(first: usize, count: usize, label_count: u32, device: &Device) -> Option<Tensor<2>> {
    if label_count == 0 {
        return None;
    }
    let l = label_count as usize;
    let mut oh = vec![0f32; count * l];
    for k in 0..count {
        oh[k * l + (first + k) % l] = 1.0;
    }
    Some(Tensor::from_data(TensorData::new(oh, [count, l]), device))
}

/// Runs `solver` over `schedule` from the noises `eps` (`n * d`, unscaled), in batches;
/// returns the raw outputs and the seconds spent.
#[allow(clippy::too_many_arguments)]
fn generate(
    den: &dyn Denoiser,
    solver: SolverKind,
    schedule: &Schedule,
    eps: &[f32],
    label_count: u32,
    batch: usize,
    device: &Device,
) -> Result<(Vec<f32>, f64)> {
    let d = den.dim();
    let n = eps.len() / d;
    let start = Instant::now();
    let mut out = Vec::with_capacity(eps.len());
    let mut first = 0;
    while first < n {
        let b = batch.min(n - first);
        let x0 = Tensor::<2>::from_data(
            TensorData::new(eps[first * d..(first + b) * d].to_vec(), [b, d]),
            device,
        )
        .mul_scalar(schedule.s_max() as f64);
        let labels = one_hot(first, b, label_count, device);
        let x = sampler_core::solver::solve(
            solver,
            den,
            x0,
            schedule.to_tensor(device),
            labels,
            |_| {},
        );
        out.extend(
            x.try_into_vec_as::<f32>()
                .map_err(|e| anyhow!("reading samples back: {e:?}"))?,
        );
        first += b;
    }
    Ok((out, start.elapsed().as_secs_f64()))
}

fn rmse(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()).max(1);
    let s: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    (s / n as f64).sqrt()
}

/// A file-name-safe form of a row name.
pub fn slug(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    while s.contains("--") {
        s = s.replace("--", "-");
    }
    s.trim_matches('-').to_string()
}

/// What `trainer eval` measured: the rows, and the classifier's accuracy on the base
/// network's reference solutions (the ceiling any few-step row of the base approaches).
pub struct EvalResults {
    /// One entry per row and T.
    pub rows: Vec<RowResult>,
    /// Fraction of the reference images (`ref_count`, the base network's many-step Heun
    /// solutions) assigned to their requested label; conditional models with a classifier.
    pub reference_accuracy: Option<f64>,
    /// Frechet distances of the reference images themselves, `(FD-pixel, FD-cls)`, when
    /// there is one for every sample (`ref_count == count`, so the sample sizes match):
    /// what a solver that reproduced the ODE exactly would score.
    pub reference_fd: Option<(f64, Option<f64>)>,
}

/// Evaluates every row at every T of `config`, writing sample grids under `out/grids/`.
pub fn run_eval(
    config: &EvalConfig,
    real: Option<&RealSet>,
    classifier: Option<&TrainedClassifier>,
    inception: Option<&Inception>,
    out: &Path,
    quiet: bool,
) -> Result<EvalResults> {
    if config.ts.iter().any(|&t| t < 2) || config.ts.is_empty() {
        bail!("every T must be at least 2");
    }
    if config.count < 2 || config.batch == 0 || config.reference_steps < 2 {
        bail!("--count must be at least 2, --batch and --reference-steps positive");
    }
    let device = Device::flex();
    // A sampler and a fingerprint of its model (the loaded sampler no longer holds the
    // serialized weights): rows with the base's weights share its reference solution.
    let read = |path: &Path| -> Result<(Sampler, u64)> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let bundle = sampler_core::Bundle::from_bytes(&bytes)
            .with_context(|| format!("{}", path.display()))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hasher::write(&mut hasher, &postcard::to_allocvec(&bundle.model)?);
        let fingerprint = std::hash::Hasher::finish(&hasher);
        let sampler =
            Sampler::new(bundle, &device).with_context(|| format!("{}", path.display()))?;
        Ok((sampler, fingerprint))
    };
    let (base, base_fingerprint) = read(&config.base)?;
    let shape = base.bundle().image;
    let label_count = base.bundle().label_count;
    let (s_min, s_max) = (
        base.bundle().schedule.s_min() as f64,
        base.bundle().schedule.s_max() as f64,
    );
    let d = shape.values();
    let ref_count = config.ref_count.min(config.count);

    // The same noises for every row: image k is stream image_seed(seed, k), as sampler-cli.
    let mut eps = vec![0f32; config.count * d];
    for (k, chunk) in eps.chunks_mut(d).enumerate() {
        rng::fill_gaussian(rng::image_seed(config.seed, k as u64), 0, chunk);
    }

    let grids = out.join("grids");
    std::fs::create_dir_all(&grids)
        .with_context(|| format!("cannot create {}", grids.display()))?;

    eprintln!(
        "reference: {} images, Heun with {} levels ({} evaluations) of each row's network",
        ref_count,
        config.reference_steps,
        2 * config.reference_steps - 1
    );
    let reference_levels = Schedule::edm(config.reference_steps, s_min, s_max)?;
    let solve_reference = |sampler: &Sampler| {
        sampler.with_denoiser(|den| {
            generate(
                den,
                SolverKind::Heun,
                &reference_levels,
                &eps[..ref_count * d],
                label_count,
                config.batch,
                &device,
            )
            .map(|(x, _)| x)
        })
    };
    let reference = solve_reference(&base)?;
    let truth = match &base.bundle().model {
        sampler_core::bundle::ModelSpec::Mixture(m) => Some(
            m.to_device(&device)
                .map_err(|e| anyhow!("the base mixture: {e}"))?,
        ),
        _ => None,
    };
    let reference_accuracy = match classifier {
        Some(c) if label_count > 0 && c.config.classes == label_count as usize => {
            let clamped: Vec<f32> = reference.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
            let labels: Vec<u32> = (0..ref_count)
                .map(|k| (k % c.config.classes) as u32)
                .collect();
            Some(c.accuracy(&clamped, &labels, 256, &device)?)
        }
        _ => None,
    };
    let reference_fd = if ref_count == config.count {
        let clamped: Vec<f32> = reference.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
        let (pixel, cls, _) =
            frechet_and_accuracy(&clamped, d, real, classifier, label_count, &device)?;
        pixel.map(|p| (p, cls))
    } else {
        None
    };
    // One reference per distinct set of weights: the levels-only rows share the base's.
    let mut own_references: Vec<(u64, Vec<f32>)> = vec![(base_fingerprint, reference.clone())];

    struct Plan {
        row: String,
        solver: SolverKind,
        bundle: Option<PathBuf>,
    }
    let mut plans = vec![
        Plan {
            row: "Euler, EDM rho=7".into(),
            solver: SolverKind::Euler,
            bundle: None,
        },
        Plan {
            row: "Heun, EDM rho=7".into(),
            solver: SolverKind::Heun,
            bundle: None,
        },
        Plan {
            row: "DPM-Solver++(2M), EDM rho=7".into(),
            solver: SolverKind::DpmPp2m,
            bundle: None,
        },
        Plan {
            row: "iPNDM, EDM rho=7".into(),
            solver: SolverKind::Ipndm,
            bundle: None,
        },
    ];
    plans.retain(|p| config.solvers.contains(&p.solver));
    for (name, pattern) in &config.tuned {
        plans.push(Plan {
            row: name.clone(),
            // Replaced by each tuned bundle's own solver below.
            solver: SolverKind::Euler,
            bundle: Some(PathBuf::from(pattern)),
        });
    }

    let total = (config.ts.len() * plans.len()) as u64;
    let bar = crate::progress(total, quiet);
    let mut results = Vec::new();
    for &t in &config.ts {
        for plan in &plans {
            bar.set_message(format!("T={t} {}", plan.row));
            let tuned = match &plan.bundle {
                None => None,
                Some(pattern) => {
                    let path =
                        PathBuf::from(pattern.to_string_lossy().replace("{T}", &t.to_string()));
                    if !path.exists() {
                        bar.inc(1);
                        continue;
                    }
                    let (s, fingerprint) = read(&path)?;
                    if s.bundle().image != shape || s.bundle().label_count != label_count {
                        bail!(
                            "{} does not match the base bundle's image shape and labels",
                            path.display()
                        );
                    }
                    if s.bundle().schedule.len() != t {
                        bail!(
                            "{} has T = {}, expected {t}",
                            path.display(),
                            s.bundle().schedule.len()
                        );
                    }
                    Some((s, fingerprint))
                }
            };
            let (sampler, fingerprint) = match &tuned {
                Some((s, f)) => (s, *f),
                None => (&base, base_fingerprint),
            };
            let solver = tuned
                .as_ref()
                .map_or(plan.solver, |(s, _)| s.bundle().solver);
            let schedule = match &tuned {
                Some((s, _)) => s.bundle().schedule.clone(),
                None => Schedule::edm(levels_for(solver, t).0, s_min, s_max)?,
            };
            // What the levels cost with this solver: a bundle tuned for Heun with T levels
            // spends 2T - 1 evaluations, not T.
            let nfe = solver.nfe(schedule.len());
            let (samples, seconds) = sampler.with_denoiser(|den| {
                generate(
                    den,
                    solver,
                    &schedule,
                    &eps,
                    label_count,
                    config.batch,
                    &device,
                )
            })?;
            let trunc_rmse_base = rmse(&samples[..ref_count * d], &reference);
            if !own_references.iter().any(|(f, _)| *f == fingerprint) {
                bar.set_message(format!("T={t} {}: its network's reference", plan.row));
                own_references.push((fingerprint, solve_reference(sampler)?));
            }
            let own = own_references
                .iter()
                .find(|(f, _)| *f == fingerprint)
                .map_or(reference.as_slice(), |(_, r)| r.as_slice());
            let trunc_rmse = rmse(&samples[..ref_count * d], own);
            let nll = truth.as_ref().map(|m| {
                let n = samples.len() / d;
                let x = Tensor::<2>::from_data(TensorData::new(samples.clone(), [n, d]), &device);
                let zero = Tensor::<1>::zeros([n], &device);
                -crate::run::scalar(&m.log_density(x, zero).mean())
            });
            let clamped: Vec<f32> = samples.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
            let (fd_pixel, fd_cls, accuracy) =
                frechet_and_accuracy(&clamped, d, real, classifier, label_count, &device)?;
            let (fid, kid) = match (inception, real.and_then(|r| r.inception.as_ref())) {
                (Some(net), Some(stats)) => {
                    bar.set_message(format!("T={t} {}: Inception", plan.row));
                    let f =
                        image_features(net, &clamped, shape, &indicatif::ProgressBar::hidden())?;
                    let s = stats.scores(&f)?;
                    (Some(s.fid), Some(s.kid))
                }
                _ => (None, None),
            };
            let grid_name = format!("grids/{}-t{t}.png", slug(&plan.row));
            let shown = config.grid.min(config.count);
            if shown > 0 {
                let images = Images {
                    shape,
                    count: shown,
                    data: clamped[..shown * d].to_vec(),
                };
                let cols = if label_count > 0 {
                    Some(label_count as usize)
                } else {
                    None
                };
                // Small images are enlarged (nearest) to at least 48 pixels for viewing.
                let scale = (48 / shape.height.max(1)).max(1);
                sampler_core::fs::write_png(
                    &out.join(&grid_name),
                    &images.grid(cols).scaled(scale),
                )
                .with_context(|| format!("cannot write {}", out.join(&grid_name).display()))?;
            }
            results.push(RowResult {
                row: plan.row.clone(),
                solver: solver.name(),
                t,
                nfe,
                sigmas: schedule.sigmas().to_vec(),
                trunc_rmse,
                trunc_rmse_base,
                fd_pixel,
                fd_cls,
                accuracy,
                fid,
                kid,
                saturated: saturated_fraction(&clamped),
                learned_levels: tuned.is_some(),
                finetuned_weights: fingerprint != base_fingerprint,
                nll,
                ms_per_image: seconds * 1000.0 / config.count as f64,
                grid: grid_name,
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(EvalResults {
        rows: results,
        reference_accuracy,
        reference_fd,
    })
}

/// `(FD-pixel, FD-cls, accuracy)` of clamped samples `[n, d]` against the real images (the
/// last two need the classifier; accuracy, a conditional model whose labels it knows: image
/// `k` asks for label `k mod L`).
fn frechet_and_accuracy(
    clamped: &[f32],
    d: usize,
    real: Option<&RealSet>,
    classifier: Option<&TrainedClassifier>,
    label_count: u32,
    device: &Device,
) -> Result<(Option<f64>, Option<f64>, Option<f64>)> {
    let Some(r) = real else {
        return Ok((None, None, None));
    };
    let fd_pixel = r.pixels.distance(&Moments::from_rows(clamped, d)?)?;
    let Some(c) = classifier else {
        return Ok((Some(fd_pixel), None, None));
    };
    let p = c.predict(clamped, 256, device)?;
    let fd_cls = match &r.features {
        Some(f) => Some(f.distance(&Moments::from_rows(&p.features, c.config.features)?)?),
        None => None,
    };
    let accuracy = (label_count > 0 && c.config.classes == label_count as usize).then(|| {
        let right = p
            .classes
            .iter()
            .enumerate()
            .filter(|(k, y)| **y as usize == k % label_count as usize)
            .count();
        right as f64 / p.classes.len() as f64
    });
    Ok((Some(fd_pixel), fd_cls, accuracy))
}

/// A CSV field in quotes (inner quotes doubled, RFC 4180).
fn quoted(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_default()
}

/// The results as CSV (one line per row and T; levels space-separated).
pub fn to_csv(dataset: &str, results: &[RowResult]) -> String {
    let mut s = String::from(
        "dataset,row,solver,T,nfe,trunc_rmse,trunc_rmse_base,fd_pixel,fd_cls,accuracy,fid,kid,saturated,nll,ms_per_image,sigmas\n",
    );
    for r in results {
        let sigmas: Vec<String> = r.sigmas.iter().map(|v| format!("{v}")).collect();
        s.push_str(&format!(
            "{dataset},{},{},{},{},{:.6},{:.6},{},{},{},{},{},{:.5},{},{:.3},{}\n",
            quoted(&r.row),
            r.solver,
            r.t,
            r.nfe,
            r.trunc_rmse,
            r.trunc_rmse_base,
            opt(r.fd_pixel, 4),
            opt(r.fd_cls, 4),
            opt(r.accuracy, 4),
            opt(r.fid, 4),
            opt(r.kid, 6),
            r.saturated,
            opt(r.nll, 3),
            r.ms_per_image,
            sigmas.join(" ")
        ));
    }
    s
}

/// Every ruler side by side, one line per row and T (docs/results/fid/results.csv):
/// `seed,T,row,solver,levels,weights,nfe,n,fid,kid,fd_pixel,fd_cls,saturated`, with `levels`
/// `edm` or `learned` and `weights` `base` or `finetuned`; `header` adds the column line.
pub fn to_rulers_csv(seed: u64, n: usize, results: &[RowResult], header: bool) -> String {
    let mut s = String::new();
    if header {
        s.push_str("seed,T,row,solver,levels,weights,nfe,n,fid,kid,fd_pixel,fd_cls,saturated\n");
    }
    for r in results {
        s.push_str(&format!(
            "{seed},{},{},{},{},{},{},{n},{},{},{},{},{:.5}\n",
            r.t,
            quoted(&r.row),
            r.solver,
            if r.learned_levels { "learned" } else { "edm" },
            if r.finetuned_weights {
                "finetuned"
            } else {
                "base"
            },
            r.nfe,
            opt(r.fid, 4),
            opt(r.kid, 6),
            opt(r.fd_pixel, 4),
            opt(r.fd_cls, 4),
            r.saturated,
        ));
    }
    s
}

/// The results as a Markdown table grouped by T, the best value of each metric per T in bold.
pub fn to_markdown(results: &[RowResult]) -> String {
    // The NLL column only for mixture bases, which have an exact density.
    let with_nll = results.iter().any(|r| r.nll.is_some());
    let with_fid = results.iter().any(|r| r.fid.is_some());
    let mut s = format!(
        "| T | row | NFE | trunc RMSE | vs base net |{} FD-pixel | FD-cls | accuracy |{} ms/image |\n\
         |---:|---|---:|---:|---:|{}---:|---:|---:|{}---:|\n",
        if with_fid {
            " FID | KID | at 255 |"
        } else {
            ""
        },
        if with_nll { " NLL |" } else { "" },
        if with_fid { "---:|---:|---:|" } else { "" },
        if with_nll { "---:|" } else { "" },
    );
    let mut ts: Vec<usize> = results.iter().map(|r| r.t).collect();
    ts.dedup();
    for t in ts {
        let rows: Vec<&RowResult> = results.iter().filter(|r| r.t == t).collect();
        let best = |f: &dyn Fn(&RowResult) -> Option<f64>, lower: bool| -> Option<f64> {
            rows.iter()
                .filter_map(|r| f(r))
                .fold(None, |acc, v| match acc {
                    None => Some(v),
                    Some(a) if (lower && v < a) || (!lower && v > a) => Some(v),
                    a => a,
                })
        };
        let b_trunc = best(&|r| Some(r.trunc_rmse), true);
        let b_fdp = best(&|r| r.fd_pixel, true);
        let b_fdc = best(&|r| r.fd_cls, true);
        let b_acc = best(&|r| r.accuracy, false);
        let b_fid = best(&|r| r.fid, true);
        let b_kid = best(&|r| r.kid, true);
        let cell = |v: Option<f64>, b: Option<f64>, digits: usize| match v {
            None => "".to_string(),
            Some(x) if Some(x) == b => format!("**{x:.digits$}**"),
            Some(x) => format!("{x:.digits$}"),
        };
        for r in rows {
            let rulers = if with_fid {
                format!(
                    " {} | {} | {:.2}% |",
                    cell(r.fid, b_fid, 2),
                    cell(r.kid.map(|k| k * 1000.0), b_kid.map(|k| k * 1000.0), 2),
                    r.saturated * 100.0
                )
            } else {
                String::new()
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {:.4} |{rulers} {} | {} | {} |{} {:.1} |\n",
                r.t,
                r.row,
                r.nfe,
                cell(Some(r.trunc_rmse), b_trunc, 4),
                r.trunc_rmse_base,
                cell(r.fd_pixel, b_fdp, 2),
                cell(r.fd_cls, b_fdc, 3),
                cell(r.accuracy, b_acc, 3),
                if with_nll {
                    // Not ranked: samples collapsed toward the modes score below the
                    // mixture's entropy, so lower is not always better.
                    format!(" {} |", opt(r.nll, 2))
                } else {
                    String::new()
                },
                r.ms_per_image
            ));
        }
    }
    s
}

/// Draws the figures of the results into `out`: metrics against T (paper Fig. 2), the levels
/// of every row against EDM's (Fig. 3) and the lambda weights against EDM's weighting at the
/// same levels (Fig. 4). Returns the file names written.
pub fn plot_results(
    title: &str,
    results: &[RowResult],
    sigma_data: f64,
    out: &Path,
) -> Result<Vec<String>> {
    use crate::plots::{Series, line_chart};
    let mut rows: Vec<String> = Vec::new();
    for r in results {
        if !rows.contains(&r.row) {
            rows.push(r.row.clone());
        }
    }
    let mut written = Vec::new();
    // Errors span orders of magnitude (Heun with 2 levels diverges): log10 axes for them.
    type Metric<'a> = (
        &'a str,
        &'a str,
        bool,
        &'a dyn Fn(&RowResult) -> Option<f64>,
    );
    let metrics: [Metric; 5] = [
        ("fid", "FID (Inception-v3)", true, &|r| r.fid),
        (
            "trunc_rmse",
            "truncation RMSE vs the reference",
            true,
            &|r| Some(r.trunc_rmse),
        ),
        ("fd_pixel", "FD-pixel", true, &|r| r.fd_pixel),
        ("fd_cls", "FD-cls", true, &|r| r.fd_cls),
        ("accuracy", "classifier accuracy", false, &|r| r.accuracy),
    ];
    for (file, label, log, f) in metrics {
        let f = |r: &RowResult| f(r).map(|v| if log { v.max(1e-12).log10() } else { v });
        let series: Vec<Series> = rows
            .iter()
            .map(|row| Series {
                name: row.clone(),
                points: results
                    .iter()
                    .filter(|r| &r.row == row)
                    .filter_map(|r| f(r).map(|v| (r.t as f64, v)))
                    .collect(),
                dashed: !results.iter().any(|r| &r.row == row && r.solver == "Euler")
                    || row.contains("EDM"),
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        if series.is_empty() {
            continue;
        }
        let name = format!("{file}_vs_t.png");
        line_chart(
            &out.join(&name),
            &format!("{title}: {label}"),
            "T (denoiser evaluations)",
            &if log {
                format!("log10 {label}")
            } else {
                label.to_string()
            },
            &series,
        )?;
        written.push(name);
    }

    // Levels: ln(sigma_i) against i / (T - 1), EDM's rho = 7 dashed, for each fine-tuned
    // row whose levels differ from it.
    let mut level_series = Vec::new();
    let mut weight_series = Vec::new();
    let mut ts: Vec<usize> = results.iter().map(|r| r.t).collect();
    ts.dedup();
    for &t in &ts {
        let Some(edm) = results
            .iter()
            .find(|r| r.t == t && r.row.starts_with("Euler, EDM"))
        else {
            continue;
        };
        let learned: Vec<&RowResult> = results
            .iter()
            .filter(|r| r.t == t && r.solver == "Euler" && r.sigmas != edm.sigmas)
            .collect();
        if learned.is_empty() {
            continue;
        }
        let levels = |s: &[f32]| -> Vec<(f64, f64)> {
            s.iter()
                .enumerate()
                .map(|(i, &v)| (i as f64 / (s.len() - 1) as f64, (v as f64).ln()))
                .collect()
        };
        level_series.push(Series {
            name: format!("EDM rho=7, T={t}"),
            points: levels(&edm.sigmas),
            dashed: true,
        });
        for r in &learned {
            level_series.push(Series {
                name: format!("{}, T={t}", r.row),
                points: levels(&r.sigmas),
                dashed: false,
            });
            // Lambda_i against ln s_i, normalized to sum 1, beside EDM's w(s) at the same
            // levels normalized the same way: the relative weight each loss puts on a level.
            let s64: Vec<f64> = r.sigmas.iter().map(|&v| v as f64).collect();
            let lambdas = Schedule::new(r.sigmas.clone())?.lambda_weights();
            let total: f64 = lambdas.iter().sum();
            weight_series.push(Series {
                name: format!("lambda, {}, T={t}", r.row),
                points: lambdas
                    .iter()
                    .zip(&s64)
                    .map(|(l, s)| (s.ln(), (l / total).log10()))
                    .collect(),
                dashed: false,
            });
            let w: Vec<f64> = s64[..s64.len() - 1]
                .iter()
                .map(|s| (s * s + sigma_data * sigma_data) / (s * s * sigma_data * sigma_data))
                .collect();
            let wt: f64 = w.iter().sum();
            weight_series.push(Series {
                name: format!("EDM w(s), same levels, T={t}"),
                points: w
                    .iter()
                    .zip(&s64)
                    .map(|(w, s)| (s.ln(), (w / wt).log10()))
                    .collect(),
                dashed: true,
            });
        }
    }
    if !level_series.is_empty() {
        line_chart(
            &out.join("schedules.png"),
            &format!("{title}: learned levels vs EDM rho=7"),
            "i / (T - 1)",
            "ln sigma_i",
            &level_series,
        )?;
        written.push("schedules.png".into());
        line_chart(
            &out.join("lambda_weights.png"),
            &format!("{title}: lambda_i vs EDM weighting (each normalized to sum 1)"),
            "ln sigma_i",
            "log10 relative weight",
            &weight_series,
        )?;
        written.push("lambda_weights.png".into());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FD-pixel as eval computes it (real moments, then a sample set's), against the
    /// closed form of two Gaussians with diagonal covariances: |m1 - m2|^2 +
    /// sum_i (sqrt(v1_i) - sqrt(v2_i))^2. Real rows: the four points m1 +- (a, 0), m1 +-
    /// (0, b) twice over (covariance n/(n-1) diag(a^2/2, b^2/2)); samples the same with m2, a', b'.
    #[test]
    fn fd_pixel_is_the_closed_form_of_two_gaussians() {
        let cross = |m: [f64; 2], a: f64, b: f64| -> Vec<f32> {
            let pts = [[a, 0.0], [-a, 0.0], [0.0, b], [0.0, -b]];
            (0..2)
                .flat_map(|_| pts)
                .flat_map(|p| [(m[0] + p[0]) as f32, (m[1] + p[1]) as f32])
                .collect()
        };
        // Values exactly representable in f32, so the f64 closed form is exact.
        let (m1, a1, b1) = ([0.25, -0.5], 0.5, 0.25);
        let (m2, a2, b2) = ([-0.125, 0.375], 0.75, 0.125);
        let real = RealSet {
            pixels: FrechetReference::new(Moments::from_rows(&cross(m1, a1, b1), 2).unwrap()),
            features: None,
            inception: None,
            count: 8,
        };
        let (fd, cls, acc) =
            frechet_and_accuracy(&cross(m2, a2, b2), 2, Some(&real), None, 0, &Device::flex())
                .unwrap();
        // Sample covariance of the 8 points: sum of squares / (n - 1) per axis.
        let var = |a: f64| 4.0 * a * a / 7.0;
        let want = (m1[0] - m2[0]).powi(2)
            + (m1[1] - m2[1]).powi(2)
            + (var(a1).sqrt() - var(a2).sqrt()).powi(2)
            + (var(b1).sqrt() - var(b2).sqrt()).powi(2);
        let fd = fd.unwrap();
        assert!((fd - want).abs() <= 1e-9 * want, "{fd} vs {want}");
        assert_eq!((cls, acc), (None, None));
    }

    #[test]
    fn heun_gets_the_levels_that_fit_the_budget() {
        assert_eq!(levels_for(SolverKind::Heun, 5), (3, 5));
        assert_eq!(levels_for(SolverKind::Heun, 8), (4, 7));
        assert_eq!(levels_for(SolverKind::Heun, 3), (2, 3));
        assert_eq!(levels_for(SolverKind::Euler, 8), (8, 8));
        assert_eq!(levels_for(SolverKind::DpmPp2m, 12), (12, 12));
        assert_eq!(levels_for(SolverKind::Ipndm, 5), (5, 5));
    }

    #[test]
    fn slugs_and_the_best_cell_per_t() {
        assert_eq!(
            slug("DPM-Solver++(2M), EDM rho=7"),
            "dpm-solver-2m-edm-rho-7"
        );
        let row = |name: &str, t: usize, trunc: f64, acc: Option<f64>| RowResult {
            row: name.into(),
            solver: "Euler",
            t,
            nfe: t,
            sigmas: vec![80.0, 0.002],
            trunc_rmse: trunc,
            trunc_rmse_base: trunc + 0.5,
            fd_pixel: None,
            fd_cls: None,
            accuracy: acc,
            fid: None,
            kid: None,
            saturated: 0.0,
            learned_levels: false,
            finetuned_weights: false,
            nll: None,
            ms_per_image: 1.0,
            grid: String::new(),
        };
        let mut tuned = row("two-stage, \"x\"", 8, 0.1, None);
        (tuned.fid, tuned.kid, tuned.saturated) = (Some(18.25), Some(0.0123), 0.001);
        (tuned.learned_levels, tuned.finetuned_weights) = (true, true);
        tuned.fd_pixel = Some(3.5);
        let csv = to_rulers_csv(1, 2000, &[tuned.clone()], true);
        assert_eq!(
            csv,
            "seed,T,row,solver,levels,weights,nfe,n,fid,kid,fd_pixel,fd_cls,saturated\n\
             1,8,\"two-stage, \"\"x\"\"\",Euler,learned,finetuned,8,2000,18.2500,0.012300,3.5000,,0.00100\n"
        );
        let md = to_markdown(&[tuned]);
        assert!(
            md.contains("FID | KID | at 255") && md.contains("**18.25**"),
            "{md}"
        );
        let md = to_markdown(&[
            row("a", 5, 0.3, Some(0.5)),
            row("b", 5, 0.2, Some(0.4)),
            row("a", 8, 0.1, None),
        ]);
        assert!(
            md.contains("| 5 | a | 5 | 0.3000 | 0.8000 |  |  | **0.500** |"),
            "{md}"
        );
        assert!(
            md.contains("| 5 | b | 5 | **0.2000** | 0.7000 |  |  | 0.400 |"),
            "{md}"
        );
        assert!(md.contains("| 8 | a | 8 | **0.1000** |"), "{md}");
        let csv = to_csv("d", &[row("a", 5, 0.3, None)]);
        assert_eq!(
            csv.lines().nth(1),
            // fd_pixel, fd_cls, accuracy, fid, kid empty; saturated 0; nll empty.
            Some("d,\"a\",Euler,5,5,0.300000,0.800000,,,,,,0.00000,,1.000,80 0.002")
        );
    }
}
